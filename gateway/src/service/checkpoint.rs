//! Checkpoints: the engine's state saved to `state_dir/checkpoint.bin` —
//! a header (magic, format version, the input sequence number it covers),
//! the messages logged most recently (packet id and content hash: a broker
//! redelivering one after a crash is recognised even when the log before the
//! checkpoint is gone), the state in postcard compressed with LZ4, and a
//! CRC32 of everything after the magic. The state carries the pipeline's
//! manifest ([`edgejoin_engine::manifest`]): restored under an edited config,
//! what did not change keeps its state. Written to a
//! temporary file, fsynced and renamed over the old one, so a crash leaves
//! either the old checkpoint or the new one. A checkpoint that is corrupt or
//! does not fit the config is reported and set aside; start-up continues.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::service::frame::sync_dir;
use edgejoin_engine::engine::{Engine, RestoreError};
use edgejoin_engine::manifest::Carry;
use edgejoin_engine::Plan;

const MAGIC: &[u8; 8] = b"EJCKPT\r\n";
/// Bumped when the format changes. Version 3 adds each recent message's log
/// position; version 2 is still read (positions taken as the checkpoint's).
pub const VERSION: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: not an edgejoin checkpoint")]
    Magic(PathBuf),
    #[error("{path}: format version {found}, this build reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{0}: checksum mismatch (torn or corrupt)")]
    Checksum(PathBuf),
    #[error("{0}: its list of recently logged messages does not fit in it (corrupt)")]
    Recent(PathBuf),
    #[error("{path}: {source}")]
    Restore {
        path: PathBuf,
        #[source]
        source: RestoreError,
    },
}

struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("checkpoint.bin")
}

/// Most recently logged messages a checkpoint remembers.
pub const MAX_RECENT: usize = crate::service::redelivery::MAX_LIVE;

/// Saves `engine`'s state as covering inputs up to `input_seq`, with the
/// messages the broker may still send again (packet id, content hash, log position).
pub fn save(
    state_dir: &Path,
    engine: &Engine,
    input_seq: u64,
    recent: impl ExactSizeIterator<Item = (u16, u64, u64)>,
) -> io::Result<u64> {
    let tmp = state_dir.join("checkpoint.tmp");
    let file = File::create(&tmp)?;
    let mut w = io::BufWriter::new(file);
    w.write_all(MAGIC)?;
    let mut cw = CrcWriter { inner: w, crc: crc32fast::Hasher::new() };
    cw.write_all(&VERSION.to_le_bytes())?;
    cw.write_all(&input_seq.to_le_bytes())?;
    let skip = recent.len().saturating_sub(MAX_RECENT);
    cw.write_all(&((recent.len() - skip) as u32).to_le_bytes())?;
    for (pkid, hash, seq) in recent.skip(skip) {
        cw.write_all(&pkid.to_le_bytes())?;
        cw.write_all(&hash.to_le_bytes())?;
        cw.write_all(&seq.to_le_bytes())?;
    }
    {
        // 64 KiB blocks: the encoder's buffers stay small (left to choose, it took 4 MiB ones)
        let info = lz4_flex::frame::FrameInfo::new().block_size(lz4_flex::frame::BlockSize::Max64KB);
        let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, &mut cw);
        engine.write_state(&mut enc)?;
        enc.finish().map_err(io::Error::other)?;
    }
    let crc = cw.crc.finalize();
    let mut w = cw.inner;
    w.write_all(&crc.to_le_bytes())?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let size = file.metadata()?.len();
    drop(file);
    fs::rename(&tmp, path(state_dir))?;
    sync_dir(state_dir)?;
    Ok(size)
}

/// A loaded checkpoint.
pub struct Loaded {
    pub engine: Engine,
    /// What of the saved state carried over to this config.
    pub carry: Carry,
    /// The input sequence number it covers.
    pub input_seq: u64,
    /// Messages the broker may still send again (packet id, content hash, log position).
    pub recent: Vec<(u16, u64, u64)>,
}

/// Loads the checkpoint, if there is one.
pub fn load(state_dir: &Path, p: &Plan, hash_seed: u64) -> Result<Option<Loaded>, CheckpointError> {
    let path = path(state_dir);
    let io_err = |source| CheckpointError::Io { path: path.clone(), source };
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(io_err)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    if bytes.len() < 8 + 4 + 8 + 4 || &bytes[..8] != MAGIC {
        return Err(CheckpointError::Magic(path));
    }
    let body = &bytes[8..bytes.len() - 4];
    let crc = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc {
        return Err(CheckpointError::Checksum(path));
    }
    let version = u32::from_le_bytes(body[..4].try_into().expect("4 bytes"));
    if version != VERSION && version != 2 {
        return Err(CheckpointError::Version { path, found: version });
    }
    let entry = if version == 2 { 10 } else { 18 };
    let input_seq = u64::from_le_bytes(body[4..12].try_into().expect("8 bytes"));
    let n =
        body.get(12..16).map_or(usize::MAX, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    let state_at =
        n.checked_mul(entry).and_then(|b| b.checked_add(16)).filter(|&e| e <= body.len() && n <= MAX_RECENT);
    let Some(state_at) = state_at else { return Err(CheckpointError::Recent(path)) };
    let recent = body[16..state_at]
        .chunks_exact(entry)
        .map(|c| {
            let hash = u64::from_le_bytes(c[2..10].try_into().expect("8 bytes"));
            let seq = c.get(10..18).map_or(input_seq, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            (u16::from_le_bytes([c[0], c[1]]), hash, seq)
        })
        .collect();
    let mut state = Vec::new();
    lz4_flex::frame::FrameDecoder::new(&body[state_at..]).read_to_end(&mut state).map_err(io_err)?;
    let (engine, carry) = Engine::restore(p.clone(), hash_seed, &state)
        .map_err(|source| CheckpointError::Restore { path: path.clone(), source })?;
    Ok(Some(Loaded { engine, carry, input_seq, recent }))
}

/// Moves a checkpoint that could not be used out of the way (kept for inspection).
pub fn set_aside(state_dir: &Path) -> io::Result<PathBuf> {
    let from = path(state_dir);
    let to = crate::service::frame::unused_path(state_dir, "checkpoint.bad");
    fs::rename(&from, &to)?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "[[stream]]\nname = \"s\"\ntopics = [\"t/{k}\"]\nkey = \"{k}\"\nmax_keys = 8\nvalues = [\"v\"]\n\n[[window]]\nname = \"w\"\ninput = \"s\"\nsize = \"1s\"\naggregates = { s = \"sum(v)\" }\n";

    #[test]
    fn save_load_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let p = crate::config::parse(Path::new("c.toml"), CFG).unwrap().plan;
        let mut e = Engine::new(p.clone(), 5);
        let mut sink = |_: &Plan, _: edgejoin_engine::engine::Output<'_>| {};
        e.ingest(1000, "t/a", br#"{"ts":1000,"v":2}"#, &mut sink);
        assert!(load(dir.path(), &p, 5).unwrap().is_none());
        save(dir.path(), &e, 41, [(7u16, 99u64, 40u64), (8, 100, 41)].into_iter()).unwrap();
        let l = load(dir.path(), &p, 5).unwrap().unwrap();
        assert_eq!(l.input_seq, 41);
        assert_eq!(l.recent, vec![(7, 99, 40), (8, 100, 41)]);
        assert_eq!(l.engine.save_state(), e.save_state());

        // a flipped byte is caught, and the file can be set aside
        let f = path(dir.path());
        let mut bytes = fs::read(&f).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        fs::write(&f, &bytes).unwrap();
        assert!(matches!(load(dir.path(), &p, 5), Err(CheckpointError::Checksum(_))));
        let aside = set_aside(dir.path()).unwrap();
        assert!(aside.ends_with("checkpoint.bad-0"));
        assert!(load(dir.path(), &p, 5).unwrap().is_none());

        // under an edited config, what changed starts empty
        save(dir.path(), &e, 7, std::iter::empty()).unwrap();
        let other = crate::config::parse(Path::new("c.toml"), &CFG.replace("max_keys = 8", "max_keys = 9"))
            .unwrap()
            .plan;
        let l = load(dir.path(), &other, 5).unwrap().unwrap();
        assert_eq!(l.carry.summary(), "started empty (definition changed): stream 's', window 'w'");
        // state that does not decode is refused
        let mut bytes = fs::read(&f).unwrap();
        let n = bytes.len();
        bytes.truncate(n - 30);
        let crc = crc32fast::hash(&bytes[8..]);
        bytes.extend_from_slice(&crc.to_le_bytes());
        fs::write(&f, &bytes).unwrap();
        assert!(matches!(
            load(dir.path(), &p, 5),
            Err(CheckpointError::Restore { .. } | CheckpointError::Io { .. })
        ));
    }
}
