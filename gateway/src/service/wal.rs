//! The input write-ahead log (`state_dir/wal/`): every message the gateway
//! accepts, and every clock tick, appended with a sequence number before the
//! broker is told the message arrived; and which acknowledgements the broker
//! has confirmed (so redeliveries are recognised exactly after a crash).
//! After a crash the log since the last checkpoint is replayed through the
//! engine, so an acknowledged message is never lost. Segment files are named
//! by their first sequence number; a checkpoint starts a new segment and
//! lets the older ones go.
//!
//! Appends go to a buffer in memory; [`Wal::sync`] writes it and fsyncs. A
//! write that fails (a full disk) is undone — the file is cut back to what
//! was written before — and the buffer kept, so the same sync can be tried
//! again once there is room. A damaged record found at start-up is skipped
//! (and reported with the inputs it held); the damaged file is kept aside.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::service::frame::{sync_dir, write_record};

/// A logged input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WalRecord {
    Message {
        seq: u64,
        recv_ms: i64,
        pkid: u16,
        topic: String,
        // written as bytes at once (the same encoding as a sequence of u8 in postcard)
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    Tick {
        seq: u64,
        now_ms: i64,
    },
    /// The source broker has processed the acknowledgements of every message
    /// logged up to `through` (proved by a barrier): it will not send them again.
    Acked {
        through: u64,
    },
    /// The source connection changed: acknowledgements of messages logged
    /// so far that no barrier proved are not proven by later barriers
    /// ([`super::redelivery::Redeliveries::pin`]).
    Reconnected,
}

/// The same encoding, borrowed, for appending without copies.
#[derive(Serialize)]
enum WalRecordRef<'a> {
    Message {
        seq: u64,
        recv_ms: i64,
        pkid: u16,
        topic: &'a str,
        #[serde(with = "serde_bytes")]
        payload: &'a [u8],
    },
    Tick {
        seq: u64,
        now_ms: i64,
    },
    Acked {
        through: u64,
    },
    Reconnected,
}

impl WalRecord {
    /// The input sequence number (`None` for a record that is not an input).
    pub fn seq(&self) -> Option<u64> {
        match self {
            WalRecord::Message { seq, .. } | WalRecord::Tick { seq, .. } => Some(*seq),
            WalRecord::Acked { .. } | WalRecord::Reconnected => None,
        }
    }
}

/// Damage found in the log at start-up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalDamage {
    /// Inputs lost with damaged records (gaps in the sequence numbers).
    pub lost_inputs: u64,
    /// Damaged bytes skipped.
    pub bytes: u64,
    /// Where the damaged files were kept.
    pub kept: Vec<PathBuf>,
}

/// Appended bytes beyond which they are written out before the batch ends
/// (a buffer kept this small bounds the memory a large batch takes; the
/// fsync still comes once, for the batch).
pub const WRITE_AT: usize = 64 << 10;

/// The append buffer of the log and of the spool: allocated once at this
/// size; one larger than [`WRITE_AT`] by a record or more (a large message)
/// is let go after the write and allocated again at this size.
pub fn append_buffer() -> Vec<u8> {
    Vec::with_capacity(2 * WRITE_AT)
}

/// After a write: a buffer grown past its size by a large record goes back to it.
pub fn reset_append_buffer(b: &mut Vec<u8>) {
    b.clear();
    if b.capacity() > 2 * WRITE_AT {
        *b = append_buffer();
    }
}

pub struct Wal {
    dir: PathBuf,
    file: File,
    /// Bytes of the current segment written to the file.
    written: u64,
    /// Records appended and not yet written.
    pending: Vec<u8>,
    /// Whether something was written since the last fsync.
    unsynced: bool,
    /// Segment first-sequence numbers, oldest first; the last is being written.
    segments: Vec<u64>,
    buf: Vec<u8>,
    /// Bytes written to segment files since start.
    pub bytes_written: u64,
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

fn open_segment(dir: &Path, first: u64) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(segment_path(dir, first))
}

impl Wal {
    /// Replays every input with `seq > after` (and every [`WalRecord::Acked`] and [`WalRecord::Reconnected`])
    /// to `f`, in order, and opens the log for appending (a new segment).
    /// Torn tails are cut off; damaged records are skipped and reported.
    /// Returns the log, the highest sequence number found, and the damage.
    pub fn open(dir: &Path, after: u64, mut f: impl FnMut(WalRecord)) -> io::Result<(Wal, u64, WalDamage)> {
        fs::create_dir_all(dir)?;
        let segments = list_segments(dir)?;
        let mut last = after;
        let mut damage = WalDamage::default();
        let mut good = Vec::new();
        for &first in &segments {
            let path = segment_path(dir, first);
            let mut file = File::open(&path)?;
            let len = file.metadata()?.len();
            // the last input seen in this segment, to measure gaps left by damage
            let mut prev: Option<u64> = None;
            let mut gaps = 0u64;
            good.clear();
            let scan = crate::service::frame::scan(&mut file, len, |bytes| {
                let Ok(rec) = postcard::from_bytes::<WalRecord>(bytes) else { return false };
                if let Some(seq) = rec.seq() {
                    if prev.is_some_and(|p| seq <= p) {
                        return false; // out of sequence: not a record of this log
                    }
                    let expected = prev.map_or(first, |p| p + 1);
                    gaps += seq.saturating_sub(expected);
                    prev = Some(seq);
                    last = last.max(seq);
                }
                let _ = write_record(&mut good, bytes);
                if rec.seq().is_none_or(|seq| seq > after) {
                    f(rec);
                }
                true
            })?;
            if !scan.damaged.is_empty() {
                damage.lost_inputs += gaps;
                damage.bytes += scan.damaged.iter().map(|(a, b)| b - a).sum::<u64>() + scan.tail;
                damage.kept.push(crate::service::frame::rewrite_without_damage(&path, &good)?);
            } else if scan.tail > 0 {
                // a torn tail: the write a crash interrupted (never acknowledged)
                OpenOptions::new().write(true).open(&path)?.set_len(scan.valid_end)?;
            }
            // what a killed process wrote but did not fsync is replayed now, and its
            // results go out: it must outlast a power cut from here on
            file.sync_data()?;
        }
        let next = last + 1;
        let file = open_segment(dir, next)?;
        let written = file.metadata()?.len();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            file,
            written,
            pending: append_buffer(),
            unsynced: false,
            segments,
            buf: good,
            bytes_written: 0,
        };
        if wal.segments.last() != Some(&next) {
            wal.segments.push(next);
        }
        sync_dir(dir)?;
        Ok((wal, last, damage))
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

    /// Records that the broker confirmed the acknowledgements of the messages logged up to `through`.
    pub fn append_acked(&mut self, through: u64) -> io::Result<()> {
        self.append(&WalRecordRef::Acked { through })
    }

    pub fn append_reconnected(&mut self) -> io::Result<()> {
        self.append(&WalRecordRef::Reconnected)
    }

    fn append(&mut self, rec: &WalRecordRef<'_>) -> io::Result<()> {
        self.buf.clear();
        let bytes = postcard::to_extend(rec, std::mem::take(&mut self.buf)).map_err(io::Error::other)?;
        write_record(&mut self.pending, &bytes)?;
        self.buf = bytes;
        Ok(())
    }

    /// Bytes appended and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Writes what was appended (no fsync). On failure the file is cut back
    /// to what it held before and everything appended stays pending.
    pub fn write(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match self.file.write_all(&self.pending) {
            Ok(()) => {
                self.written += self.pending.len() as u64;
                self.bytes_written += self.pending.len() as u64;
                reset_append_buffer(&mut self.pending);
                self.unsynced = true;
                Ok(())
            }
            Err(e) => {
                // undo a partial write: the next attempt writes the same records again
                let _ = self.file.set_len(self.written);
                Err(e)
            }
        }
    }

    /// Makes everything appended so far durable (one fsync for the batch).
    pub fn sync(&mut self) -> io::Result<()> {
        self.write()?;
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// After a checkpoint covering `seq`: starts a new segment at `seq + 1`
    /// and deletes the segments that hold nothing newer than `seq`.
    pub fn checkpointed(&mut self, seq: u64) -> io::Result<()> {
        self.sync()?;
        let next = seq + 1;
        if self.segments.last() != Some(&next) {
            self.file = open_segment(&self.dir, next)?;
            self.written = self.file.metadata()?.len();
            self.segments.push(next);
        }
        let keep_from = self.segments.iter().rposition(|&first| first <= next).unwrap_or(0);
        for first in self.segments.drain(..keep_from) {
            let _ = fs::remove_file(segment_path(&self.dir, first));
        }
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Payloads are written as bytes at once, and the files are what they
    /// were when they were written as sequences of u8 (logs and spools
    /// written before read the same).
    #[test]
    fn payload_bytes_keep_the_encoding_of_a_sequence() {
        #[derive(Serialize)]
        enum Before<'a> {
            Message { seq: u64, recv_ms: i64, pkid: u16, topic: &'a str, payload: &'a [u8] },
        }
        let payload: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let old = postcard::to_allocvec(&Before::Message {
            seq: 7,
            recv_ms: -3,
            pkid: 9,
            topic: "a/b",
            payload: &payload,
        })
        .unwrap();
        let new = postcard::to_allocvec(&WalRecordRef::Message {
            seq: 7,
            recv_ms: -3,
            pkid: 9,
            topic: "a/b",
            payload: &payload,
        })
        .unwrap();
        assert_eq!(new, old);
        let back: WalRecord = postcard::from_bytes(&old).unwrap();
        assert_eq!(back, WalRecord::Message { seq: 7, recv_ms: -3, pkid: 9, topic: "a/b".into(), payload });
        #[derive(Serialize)]
        struct SpoolBefore<'a> {
            seq: u64,
            input_seq: u64,
            idx: u32,
            topic: &'a str,
            payload: &'a [u8],
        }
        let rec = super::super::spool::SpoolRecord {
            seq: 1,
            input_seq: 2,
            idx: 3,
            topic: "t".into(),
            payload: b"{\"x\":1}".to_vec(),
        };
        let old = postcard::to_allocvec(&SpoolBefore {
            seq: 1,
            input_seq: 2,
            idx: 3,
            topic: "t",
            payload: &rec.payload,
        })
        .unwrap();
        assert_eq!(postcard::to_allocvec(&rec).unwrap(), old);
        assert_eq!(postcard::from_bytes::<super::super::spool::SpoolRecord>(&old).unwrap(), rec);
    }

    fn replay(dir: &Path, after: u64) -> (Vec<WalRecord>, Wal, u64) {
        let mut v = Vec::new();
        let (w, last, damage) = Wal::open(dir, after, |r| v.push(r)).unwrap();
        assert_eq!(damage, WalDamage::default());
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

    #[test]
    fn a_reconnect_record_is_replayed_in_its_place_whatever_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut w, _) = replay(dir.path(), 0);
        w.append_message(1, 1, 7, "a/b", b"x").unwrap();
        w.append_reconnected().unwrap();
        w.append_acked(1).unwrap();
        w.sync().unwrap();
        drop(w);
        let (v, _, _) = replay(dir.path(), 1);
        assert_eq!(v, [WalRecord::Reconnected, WalRecord::Acked { through: 1 }]);
    }

    #[test]
    fn one_damaged_record_loses_that_input_only_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut w, _) = replay(dir.path(), 0);
        for i in 1..=100u64 {
            w.append_message(i, i as i64, i as u16, "a/b", format!("payload {i}").as_bytes()).unwrap();
        }
        w.append_acked(40).unwrap();
        w.sync().unwrap();
        drop(w);
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(&seg, &bytes).unwrap();
        let mut v = Vec::new();
        let (_, last, damage) = Wal::open(dir.path(), 0, |r| v.push(r)).unwrap();
        assert_eq!(last, 100);
        assert_eq!(damage.lost_inputs, 1, "{damage:?}");
        assert_eq!(v.len(), 100, "99 inputs and the acknowledgement record");
        assert!(v.contains(&WalRecord::Acked { through: 40 }));
        assert_eq!(damage.kept.len(), 1);
        assert_eq!(fs::read(&damage.kept[0]).unwrap(), bytes, "the damaged file is kept as it was");
        // the log was rewritten without the damage: a second start finds none
        let (v2, _, _) = replay(dir.path(), 0);
        assert_eq!(v2.len(), 100);
    }

    #[test]
    fn a_full_disk_keeps_the_records_for_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut w, _) = replay(dir.path(), 0);
        w.append_message(1, 1, 1, "a", b"x").unwrap();
        w.sync().unwrap();
        // writes to /dev/full fail with ENOSPC, as on a full disk
        let real = std::mem::replace(&mut w.file, OpenOptions::new().append(true).open("/dev/full").unwrap());
        w.append_message(2, 2, 2, "a", b"y").unwrap();
        w.append_tick(3, 3).unwrap();
        let e = w.sync().unwrap_err();
        assert!(crate::service::frame::is_storage_full(&e), "{e}");
        assert!(w.pending_bytes() > 0, "nothing appended is forgotten");
        // room again: the same records go out once
        w.file = real;
        w.sync().unwrap();
        assert_eq!(w.pending_bytes(), 0);
        drop(w);
        let (v, _, last) = replay(dir.path(), 0);
        assert_eq!((v.len(), last), (3, 3));
    }
}
