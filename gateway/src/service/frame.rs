//! Length-and-checksum framing for the append-only logs on disk (the input
//! write-ahead log and the uplink spool): `[u32 len][u32 crc32][len bytes]`,
//! little-endian. [`scan`] reads a whole file back: a record whose checksum
//! fails is skipped and reading resynchronises on the next valid frame, so
//! one damaged byte costs one record, not the rest of the file; what follows
//! the last valid frame is a torn tail (a crash mid-write) to cut away.

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

/// What [`scan`] found in a file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// End of the last valid record: the file's good length.
    pub valid_end: u64,
    /// Damaged regions (start, end) skipped between valid records.
    pub damaged: Vec<(u64, u64)>,
    /// Bytes after the last valid record (a torn tail or damage at the end).
    pub tail: u64,
}

/// Reads every valid record of `file` (of length `len`) in order, handing
/// each to `accept`, which says whether it is valid in content too (decodes,
/// comes in sequence). An invalid frame or record is skipped by looking for
/// the next valid one byte by byte.
pub fn scan(file: &mut std::fs::File, len: u64, mut accept: impl FnMut(&[u8]) -> bool) -> io::Result<Scan> {
    use std::io::{BufReader, Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::with_capacity(64 << 10, file);
    let mut buf = Vec::new();
    let mut out = Scan::default();
    let mut pos = 0u64;
    let mut bad_from: Option<u64> = None;
    while pos < len {
        let frame = frame_at(&mut r, len - pos, &mut buf)?;
        match frame {
            Some(n) if accept(&buf) => {
                if let Some(b) = bad_from.take() {
                    out.damaged.push((b, pos));
                }
                pos += n;
                out.valid_end = pos;
            }
            _ => {
                bad_from.get_or_insert(pos);
                pos += 1;
                r.seek(SeekFrom::Start(pos))?;
            }
        }
    }
    out.tail = len - out.valid_end;
    Ok(out)
}

/// Reads one frame at the reader's position into `buf`; its length if it is
/// whole and its checksum holds.
fn frame_at(r: &mut impl Read, left: u64, buf: &mut Vec<u8>) -> io::Result<Option<u64>> {
    let mut head = [0u8; 8];
    if left < 8 || read_full(r, &mut head)? != 8 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD || len as u64 > left - 8 {
        return Ok(None);
    }
    buf.clear();
    buf.resize(len, 0);
    if read_full(r, buf)? != len || crc32fast::hash(buf) != crc {
        return Ok(None);
    }
    Ok(Some(8 + len as u64))
}

/// Replaces a damaged file by its valid records: the original is kept
/// beside it as `<name>.damaged-<n>` for inspection, the clean copy is
/// written to a temporary file, fsynced and renamed over it. Returns the
/// path of the kept original.
pub fn rewrite_without_damage(path: &std::path::Path, records: &[u8]) -> io::Result<std::path::PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let kept = unused_path(dir, &format!("{name}.damaged"));
    std::fs::copy(path, &kept)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(records)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)?;
    Ok(kept)
}

/// The first of `dir/<stem>-0`, `dir/<stem>-1`, … that does not exist: where
/// a file set aside for inspection goes without replacing an earlier one.
pub fn unused_path(dir: &std::path::Path, stem: &str) -> std::path::PathBuf {
    (0u32..).map(|n| dir.join(format!("{stem}-{n}"))).find(|p| !p.exists()).expect("some number is free")
}

/// Whether an IO error means the disk (or the user's quota) is full: a
/// condition that passes when space is freed, not a reason to stop.
pub fn is_storage_full(e: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
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
        // a flipped bit ends the valid data for the sequential reader
        file[9] ^= 1;
        let mut r = &file[..];
        assert!(!read_record(&mut r, &mut buf).unwrap());
    }

    fn scan_bytes(bytes: &[u8]) -> (Vec<Vec<u8>>, Scan) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, bytes).unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        let mut got = Vec::new();
        let s = scan(&mut f, bytes.len() as u64, |r| {
            got.push(r.to_vec());
            true
        })
        .unwrap();
        (got, s)
    }

    #[test]
    fn a_damaged_record_costs_only_itself() {
        let mut file = Vec::new();
        for i in 0..5u8 {
            write_record(&mut file, &[i; 20]).unwrap();
        }
        let clean = file.clone();
        // a flipped payload byte in the second record (its length intact)
        file[28 + 8 + 3] ^= 0x10;
        let (got, s) = scan_bytes(&file);
        assert_eq!(got, vec![vec![0u8; 20], vec![2; 20], vec![3; 20], vec![4; 20]]);
        assert_eq!(s.damaged, vec![(28, 56)]);
        assert_eq!((s.valid_end, s.tail), (140, 0));
        // a flipped length byte: resynchronised on the next frame
        let mut file = clean.clone();
        file[56] ^= 0x40;
        let (got, s) = scan_bytes(&file);
        assert_eq!(got.len(), 4);
        assert_eq!(s.damaged, vec![(56, 84)]);
        // damage in the last record: a tail, nothing after it to save
        let mut file = clean.clone();
        file[130] ^= 1;
        let (got, s) = scan_bytes(&file);
        assert_eq!(got.len(), 4);
        assert_eq!((s.valid_end, s.tail, s.damaged.len()), (112, 28, 0));
    }

    #[test]
    fn storage_full_is_recognised() {
        assert!(is_storage_full(&io::Error::from_raw_os_error(28)));
        assert!(!is_storage_full(&io::Error::from_raw_os_error(24))); // EMFILE
        assert!(!is_storage_full(&io::Error::other("x")));
    }
}
