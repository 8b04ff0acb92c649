//! The uplink's store-and-forward spool (`state_dir/spool/`): every result,
//! in order, in segment files of framed postcard records, until the upstream
//! broker has acknowledged it (PUBACK). Bounded by `[upstream] spool`; when
//! full it drops the oldest segment or refuses new results, as configured,
//! and counts what it lost. The delivered position is kept in `acked`
//! (replaced atomically), so after a restart delivery resumes where it was;
//! results sent but not yet acknowledged are sent again (same ids).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::frame::{read_record, sync_dir, write_record};

/// One result waiting for delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpoolRecord {
    /// Position in the spool (1, 2, …).
    pub seq: u64,
    /// The input (write-ahead log sequence) that produced it, and its index among that input's results.
    pub input_seq: u64,
    pub idx: u32,
    pub topic: String,
    pub payload: Vec<u8>,
}

#[derive(Serialize)]
struct SpoolRecordRef<'a> {
    seq: u64,
    input_seq: u64,
    idx: u32,
    topic: &'a str,
    payload: &'a [u8],
}

/// What a full spool does with a new result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Delete the oldest segment (its undelivered results are counted as dropped).
    DropOldest,
    /// Keep what is spooled; count and drop the new result.
    RefuseNew,
}

struct Segment {
    first: u64,
    bytes: u64,
}

pub struct Spool {
    dir: PathBuf,
    budget: u64,
    segment_max: u64,
    policy: FullPolicy,
    segments: VecDeque<Segment>,
    writer: BufWriter<File>,
    next_seq: u64,
    last_input: Option<(u64, u32)>,
    /// Every result with `seq < acked` is delivered.
    acked: u64,
    acked_saved: u64,
    /// When the delivered position was last saved: at most once a second (an fsync
    /// per ack burst would stall the uplink), and at every checkpoint and stop. After
    /// a crash what was delivered since is sent again, with the same ids.
    acked_saved_at: std::time::Instant,
    /// Results dropped by the full policy (drop_oldest) and refused (refuse_new).
    pub dropped: u64,
    pub refused: u64,
    reader: Option<(u64, BufReader<File>, u64)>,
    buf: Vec<u8>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.spool"))
}

impl Spool {
    /// Opens (or creates) the spool in `dir` with a budget of `budget` bytes.
    pub fn open(dir: &Path, budget: u64, policy: FullPolicy) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut firsts: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".spool")?.parse().ok())
            .collect();
        firsts.sort_unstable();
        let acked =
            fs::read_to_string(dir.join("acked")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1);
        let mut segments = VecDeque::new();
        let mut next_seq = acked.max(1);
        let mut last_input = None;
        let mut buf = Vec::new();
        for first in firsts {
            let path = segment_path(dir, first);
            let mut r = BufReader::new(File::open(&path)?);
            let mut valid = 0u64;
            while read_record(&mut r, &mut buf)? {
                match postcard::from_bytes::<SpoolRecord>(&buf) {
                    Ok(rec) => {
                        valid += 8 + buf.len() as u64;
                        next_seq = next_seq.max(rec.seq + 1);
                        last_input = Some((rec.input_seq, rec.idx));
                    }
                    Err(_) => break,
                }
            }
            if valid < fs::metadata(&path)?.len() {
                OpenOptions::new().write(true).open(&path)?.set_len(valid)?;
            }
            segments.push_back(Segment { first, bytes: valid });
        }
        let segment_max = (budget / 8).clamp(4 << 10, 4 << 20);
        let writer = match segments.back() {
            Some(s) => BufWriter::new(OpenOptions::new().append(true).open(segment_path(dir, s.first))?),
            None => {
                segments.push_back(Segment { first: next_seq, bytes: 0 });
                BufWriter::new(File::create(segment_path(dir, next_seq))?)
            }
        };
        Ok(Spool {
            dir: dir.to_path_buf(),
            budget,
            segment_max,
            policy,
            segments,
            writer,
            next_seq,
            last_input,
            acked: acked.max(1),
            acked_saved: acked.max(1),
            acked_saved_at: std::time::Instant::now(),
            dropped: 0,
            refused: 0,
            reader: None,
            buf,
        })
    }

    /// The (input, index) of the last result spooled, to resume after a crash without duplicates.
    pub fn last_input(&self) -> Option<(u64, u32)> {
        self.last_input
    }

    /// The sequence number the next appended result gets.
    pub fn end(&self) -> u64 {
        self.next_seq
    }

    /// Results not yet delivered.
    pub fn depth(&self) -> u64 {
        self.next_seq - self.acked
    }

    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Appends one result; `false` if the full policy refused it.
    pub fn append(&mut self, input_seq: u64, idx: u32, topic: &str, payload: &[u8]) -> io::Result<bool> {
        let rec = SpoolRecordRef { seq: self.next_seq, input_seq, idx, topic, payload };
        self.buf.clear();
        let bytes = postcard::to_extend(&rec, std::mem::take(&mut self.buf)).map_err(io::Error::other)?;
        let size = 8 + bytes.len() as u64;
        while self.disk_bytes() + size > self.budget {
            match self.policy {
                FullPolicy::RefuseNew => {
                    self.refused += 1;
                    self.buf = bytes;
                    return Ok(false);
                }
                FullPolicy::DropOldest => {
                    if self.segments.len() == 1 {
                        // the oldest is the one being written: start a new one first
                        self.start_segment()?;
                    }
                    let old = self.segments.pop_front().expect("two segments");
                    let end = self.segments.front().map_or(self.next_seq, |s| s.first);
                    self.dropped += end.saturating_sub(old.first.max(self.acked));
                    self.acked = self.acked.max(end);
                    let _ = fs::remove_file(segment_path(&self.dir, old.first));
                    if self.reader.as_ref().is_some_and(|r| r.0 == old.first) {
                        self.reader = None;
                    }
                }
            }
        }
        if self.segments.back().is_some_and(|s| s.bytes > 0 && s.bytes + size > self.segment_max) {
            self.start_segment()?;
        }
        write_record(&mut self.writer, &bytes)?;
        self.segments.back_mut().expect("a segment").bytes += size;
        self.next_seq += 1;
        self.last_input = Some((input_seq, idx));
        self.buf = bytes;
        Ok(true)
    }

    fn start_segment(&mut self) -> io::Result<()> {
        self.writer.flush()?;
        self.writer = BufWriter::new(File::create(segment_path(&self.dir, self.next_seq))?);
        self.segments.push_back(Segment { first: self.next_seq, bytes: 0 });
        Ok(())
    }

    /// Hands appended results to readers (no fsync).
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// Makes everything appended durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.writer.flush()?;
        self.writer.get_ref().sync_data()?;
        self.save_acked()
    }

    /// Reads up to `max` results from `from` on (`from >= acked`) into `out`.
    pub fn read(&mut self, from: u64, max: usize, out: &mut Vec<SpoolRecord>) -> io::Result<()> {
        self.writer.flush()?;
        let from = from.max(self.acked);
        if from >= self.next_seq {
            return Ok(());
        }
        let reposition = !matches!(&self.reader, Some((_, _, next)) if *next == from);
        if reposition {
            let seg = self
                .segments
                .iter()
                .rev()
                .find(|s| s.first <= from)
                .or(self.segments.front())
                .map(|s| s.first);
            let Some(first) = seg else { return Ok(()) };
            let mut r = BufReader::new(File::open(segment_path(&self.dir, first))?);
            r.seek(SeekFrom::Start(0))?;
            self.reader = Some((first, r, first));
        }
        let mut buf = Vec::new();
        while out.len() < max {
            let Some((first, r, next)) = self.reader.as_mut() else { break };
            if read_record(r, &mut buf)? {
                let rec: SpoolRecord = postcard::from_bytes(&buf).map_err(io::Error::other)?;
                *next = rec.seq + 1;
                if rec.seq >= from {
                    out.push(rec);
                }
                continue;
            }
            // end of this segment: on to the next one, if any
            let cur = *first;
            let Some(nxt) = self.segments.iter().find(|s| s.first > cur).map(|s| s.first) else { break };
            let r = BufReader::new(File::open(segment_path(&self.dir, nxt))?);
            self.reader = Some((nxt, r, nxt));
        }
        Ok(())
    }

    /// Everything before `seq` is delivered: frees the segments it covers.
    pub fn ack(&mut self, seq: u64) -> io::Result<()> {
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq.min(self.next_seq);
        while self.segments.len() > 1 && self.segments[1].first <= self.acked {
            let old = self.segments.pop_front().expect("checked");
            let _ = fs::remove_file(segment_path(&self.dir, old.first));
            if self.reader.as_ref().is_some_and(|r| r.0 == old.first) {
                self.reader = None;
            }
        }
        if self.acked > self.acked_saved && self.acked_saved_at.elapsed() >= std::time::Duration::from_secs(1)
        {
            self.save_acked()?;
        }
        Ok(())
    }

    /// The delivered position, as saved for a restart.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Persists the delivered position (atomically).
    pub fn save_acked(&mut self) -> io::Result<()> {
        let tmp = self.dir.join("acked.tmp");
        let mut f = File::create(&tmp)?;
        writeln!(f, "{}", self.acked)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join("acked"))?;
        sync_dir(&self.dir)?;
        self.acked_saved = self.acked;
        self.acked_saved_at = std::time::Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(s: &mut Spool, from: u64) -> Vec<u64> {
        let mut v = Vec::new();
        s.read(from, usize::MAX, &mut v).unwrap();
        v.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn append_read_ack_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, FullPolicy::DropOldest).unwrap();
        for i in 0..100u64 {
            assert!(s.append(i, 0, "r/t", format!("payload {i}").as_bytes()).unwrap());
        }
        assert_eq!(read_all(&mut s, 1), (1..=100).collect::<Vec<_>>());
        assert_eq!(read_all(&mut s, 51), (51..=100).collect::<Vec<_>>());
        s.ack(41).unwrap();
        s.sync().unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20, FullPolicy::DropOldest).unwrap();
        assert_eq!(s.acked(), 41);
        assert_eq!(s.depth(), 60);
        assert_eq!(s.last_input(), Some((99, 0)));
        assert_eq!(read_all(&mut s, 1), (41..=100).collect::<Vec<_>>());
    }

    #[test]
    fn full_spool_policies() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 40 << 10, FullPolicy::DropOldest).unwrap();
        let big = vec![b'x'; 1000];
        for i in 0..200u64 {
            s.append(i, 0, "r/t", &big).unwrap();
        }
        assert!(s.disk_bytes() <= 40 << 10, "{}", s.disk_bytes());
        assert!(s.dropped > 100);
        let left = read_all(&mut s, 1);
        assert_eq!(*left.last().unwrap(), 200);
        assert_eq!(left.len() as u64 + s.dropped, 200, "every result delivered or counted");

        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 40 << 10, FullPolicy::RefuseNew).unwrap();
        let mut accepted = 0;
        for i in 0..200u64 {
            accepted += s.append(i, 0, "r/t", &big).unwrap() as u64;
        }
        assert_eq!(accepted + s.refused, 200);
        assert_eq!(read_all(&mut s, 1), (1..=accepted).collect::<Vec<_>>());
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, FullPolicy::DropOldest).unwrap();
        for i in 0..3u64 {
            s.append(7, i as u32, "r/t", b"abc").unwrap();
        }
        s.sync().unwrap();
        drop(s);
        let seg = segment_path(dir.path(), 1);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 2).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, FullPolicy::DropOldest).unwrap();
        assert_eq!(s.last_input(), Some((7, 1)));
        assert_eq!(read_all(&mut s, 1), vec![1, 2]);
        s.append(8, 0, "r/t", b"d").unwrap();
        assert_eq!(read_all(&mut s, 1), vec![1, 2, 3]);
    }
}
