//! The input write-ahead log (`state_dir/wal/`): every message the gateway
//! accepts, and every clock tick, appended with a sequence number before the
//! broker is told the message arrived. After a crash the log since the last
//! checkpoint is replayed through the engine, so an acknowledged message is
//! never lost. Segment files are named by their first sequence number; a
//! checkpoint starts a new segment and lets the older ones go.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::frame::{read_record, sync_dir, write_record};

/// A logged input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WalRecord {
    Message { seq: u64, recv_ms: i64, pkid: u16, topic: String, payload: Vec<u8> },
    Tick { seq: u64, now_ms: i64 },
}

/// The same encoding, borrowed, for appending without copies.
#[derive(Serialize)]
enum WalRecordRef<'a> {
    Message { seq: u64, recv_ms: i64, pkid: u16, topic: &'a str, payload: &'a [u8] },
    Tick { seq: u64, now_ms: i64 },
}

impl WalRecord {
    pub fn seq(&self) -> u64 {
        match self {
            WalRecord::Message { seq, .. } | WalRecord::Tick { seq, .. } => *seq,
        }
    }
}

pub struct Wal {
    dir: PathBuf,
    writer: BufWriter<File>,
    /// Segment first-sequence numbers, oldest first; the last is being written.
    segments: Vec<u64>,
    buf: Vec<u8>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".wal")?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

impl Wal {
    /// Replays every record with `seq > after` to `f`, in order, and opens
    /// the log for appending from `next_seq` on (a new segment). Torn tails
    /// are cut off. Returns the log and the highest sequence number found.
    pub fn open(dir: &Path, after: u64, mut f: impl FnMut(WalRecord)) -> io::Result<(Wal, u64)> {
        fs::create_dir_all(dir)?;
        let segments = list_segments(dir)?;
        let mut last = after;
        let mut buf = Vec::new();
        for &first in &segments {
            let path = segment_path(dir, first);
            let mut r = BufReader::new(File::open(&path)?);
            let mut valid = 0u64;
            while read_record(&mut r, &mut buf)? {
                valid += 8 + buf.len() as u64;
                match postcard::from_bytes::<WalRecord>(&buf) {
                    Ok(rec) => {
                        let seq = rec.seq();
                        last = last.max(seq);
                        if seq > after {
                            f(rec);
                        }
                    }
                    Err(_) => break,
                }
            }
            let len = fs::metadata(&path)?.len();
            if valid < len {
                OpenOptions::new().write(true).open(&path)?.set_len(valid)?;
            }
        }
        let next = last + 1;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            writer: BufWriter::new(File::create(segment_path(dir, next))?),
            segments,
            buf,
        };
        if wal.segments.last() != Some(&next) {
            wal.segments.push(next);
        }
        sync_dir(dir)?;
        Ok((wal, last))
    }

    pub fn append_message(
        &mut self,
        seq: u64,
        recv_ms: i64,
        pkid: u16,
        topic: &str,
        payload: &[u8],
    ) -> io::Result<()> {
        self.append(&WalRecordRef::Message { seq, recv_ms, pkid, topic, payload })
    }

    pub fn append_tick(&mut self, seq: u64, now_ms: i64) -> io::Result<()> {
        self.append(&WalRecordRef::Tick { seq, now_ms })
    }

    fn append(&mut self, rec: &WalRecordRef<'_>) -> io::Result<()> {
        self.buf.clear();
        let bytes = postcard::to_extend(rec, std::mem::take(&mut self.buf)).map_err(io::Error::other)?;
        write_record(&mut self.writer, &bytes)?;
        self.buf = bytes;
        Ok(())
    }

    /// Makes everything appended so far durable (one fsync for the batch).
    pub fn sync(&mut self) -> io::Result<()> {
        self.writer.flush()?;
        self.writer.get_ref().sync_data()
    }

    /// After a checkpoint covering `seq`: starts a new segment at `seq + 1`
    /// and deletes the segments that hold nothing newer than `seq`.
    pub fn checkpointed(&mut self, seq: u64) -> io::Result<()> {
        self.sync()?;
        let next = seq + 1;
        if self.segments.last() != Some(&next) {
            self.writer = BufWriter::new(File::create(segment_path(&self.dir, next))?);
            self.segments.push(next);
        }
        let keep_from = self.segments.iter().rposition(|&first| first <= next).unwrap_or(0);
        for first in self.segments.drain(..keep_from) {
            let _ = fs::remove_file(segment_path(&self.dir, first));
        }
        sync_dir(&self.dir)
    }

    /// Bytes the log holds on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|&f| fs::metadata(segment_path(&self.dir, f)).ok())
            .map(|m| m.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(dir: &Path, after: u64) -> (Vec<WalRecord>, Wal, u64) {
        let mut v = Vec::new();
        let (w, last) = Wal::open(dir, after, |r| v.push(r)).unwrap();
        (v, w, last)
    }

    #[test]
    fn append_replay_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (v, mut w, last) = replay(dir.path(), 0);
        assert!(v.is_empty() && last == 0);
        w.append_message(1, 100, 7, "a/b", b"{}").unwrap();
        w.append_tick(2, 200).unwrap();
        w.append_message(3, 300, 8, "a/c", b"x").unwrap();
        w.sync().unwrap();
        drop(w);
        let (v, mut w, last) = replay(dir.path(), 1);
        assert_eq!(last, 3);
        assert_eq!(
            v,
            vec![
                WalRecord::Tick { seq: 2, now_ms: 200 },
                WalRecord::Message {
                    seq: 3,
                    recv_ms: 300,
                    pkid: 8,
                    topic: "a/c".into(),
                    payload: b"x".to_vec()
                }
            ]
        );
        w.append_message(4, 400, 9, "a/d", b"y").unwrap();
        w.checkpointed(4).unwrap();
        w.append_message(5, 500, 1, "a/e", b"z").unwrap();
        w.sync().unwrap();
        drop(w);
        // only what follows the checkpoint is left
        let (v, _, last) = replay(dir.path(), 4);
        assert_eq!(last, 5);
        assert_eq!(v.len(), 1);
        assert_eq!(list_segments(dir.path()).unwrap().len(), 2, "older segments deleted");
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut w, _) = replay(dir.path(), 0);
        w.append_message(1, 100, 7, "a/b", b"one").unwrap();
        w.append_message(2, 200, 8, "a/b", b"two").unwrap();
        w.sync().unwrap();
        drop(w);
        let seg = segment_path(dir.path(), 1);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 3).unwrap();
        let (v, _, last) = replay(dir.path(), 0);
        assert_eq!((v.len(), last), (1, 1));
    }
}
