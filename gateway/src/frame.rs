//! Length-and-checksum framing for the append-only logs on disk (the input
//! write-ahead log and the uplink spool): `[u32 len][u32 crc32][len bytes]`,
//! little-endian. A torn or corrupt tail (a crash mid-write) ends the valid
//! part of a file; readers stop there and writers truncate it away.

use std::io::{self, Read, Write};

/// Largest record accepted back from disk (a corrupt length must not make us allocate gigabytes).
pub const MAX_RECORD: usize = 64 << 20;

/// Appends one framed record.
pub fn write_record(w: &mut impl Write, payload: &[u8]) -> io::Result<usize> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("record too large"))?;
    let crc = crc32fast::hash(payload);
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&crc.to_le_bytes())?;
    w.write_all(payload)?;
    Ok(8 + payload.len())
}

/// Reads the next record into `buf`. `Ok(false)` at the end of the valid
/// data: a clean end of file, or a torn or corrupt record.
pub fn read_record(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut head = [0u8; 8];
    match read_full(r, &mut head)? {
        0 => return Ok(false),
        8 => {}
        _ => return Ok(false), // torn header
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Ok(false);
    }
    buf.clear();
    buf.resize(len, 0);
    if read_full(r, buf)? != len || crc32fast::hash(buf) != crc {
        return Ok(false);
    }
    Ok(true)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Fsyncs a directory so that a rename or a new file in it is durable.
pub fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_tails() {
        let mut file = Vec::new();
        write_record(&mut file, b"one").unwrap();
        write_record(&mut file, b"").unwrap();
        write_record(&mut file, b"three").unwrap();
        let full = file.len();
        let mut buf = Vec::new();
        for cut in 0..=full {
            let mut r = &file[..cut];
            let mut got = Vec::new();
            while read_record(&mut r, &mut buf).unwrap() {
                got.push(buf.clone());
            }
            let want: &[&[u8]] = match cut {
                c if c < 11 => &[],
                c if c < 19 => &[b"one"],
                c if c < full => &[b"one", b""],
                _ => &[b"one", b"", b"three"],
            };
            assert_eq!(got, want, "cut {cut}");
        }
        // a flipped bit ends the valid data
        file[9] ^= 1;
        let mut r = &file[..];
        assert!(!read_record(&mut r, &mut buf).unwrap());
    }
}
