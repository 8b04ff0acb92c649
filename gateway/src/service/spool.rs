//! The uplink's store-and-forward spool (`state_dir/spool/`): every result,
//! in order, in segment files of framed postcard records, until the upstream
//! broker has acknowledged it (PUBACK). Bounded by `[upstream] spool`; when
//! full it drops the oldest segment or refuses new results, as configured,
//! and counts what it lost. The delivered position is kept in `acked`
//! (replaced atomically), so after a restart delivery resumes where it was;
//! results sent but not yet acknowledged are sent again (same ids).
//!
//! `acked` holds the position and a CRC32 of it, and is checked against the
//! spool's range at start-up: a damaged or impossible position is reported
//! and delivery restarts from the oldest spooled result (duplicates carry
//! the ids they had; nothing is skipped). A damaged record is skipped, the
//! results it held counted as dropped (`damaged`) and logged, and the
//! damaged file kept aside. Appends go to a buffer in memory and reach the
//! file at [`Spool::flush`]; a flush that fails (a full disk) keeps them for
//! the next one.
//!
//! Two halves: [`Spool`], the writer, belongs to the engine thread (appends,
//! flushes, fsyncs, drops and deletes segments, saves the delivered
//! position); [`SpoolReader`] belongs to the uplink (reads what was flushed,
//! records what was delivered). They share three numbers and the list of
//! segments under a lock that is never held across IO, so the uplink never
//! waits for the writer's fsync and never fsyncs itself.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::config::FullPolicy;

use super::frame::{read_record, sync_dir, write_record};

/// What start-up found wrong with the spool.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpoolDamage {
    /// Undelivered results lost with damaged records.
    pub lost_results: u64,
    /// Damaged files, kept aside.
    pub kept: Vec<PathBuf>,
    /// Why the saved delivered position was not used, if it was not.
    pub acked_refused: Option<String>,
}

/// One result waiting for delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpoolRecord {
    /// Position in the spool (1, 2, …).
    pub seq: u64,
    /// The input (write-ahead log sequence) that produced it, and its index among that input's results.
    pub input_seq: u64,
    pub idx: u32,
    pub topic: String,
    // written as bytes at once (the same encoding as a sequence of u8 in postcard)
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

#[derive(Serialize)]
struct SpoolRecordRef<'a> {
    seq: u64,
    input_seq: u64,
    idx: u32,
    topic: &'a str,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

struct Segment {
    first: u64,
    bytes: u64,
}

/// What the writer and the reader share.
#[derive(Debug)]
struct Shared {
    /// First positions of the segment files, oldest first.
    firsts: VecDeque<u64>,
    /// Results below this position reached the files: the reader may read them.
    flushed: u64,
    /// Every result below this position is delivered.
    acked: u64,
}

/// The writing half (the engine thread's).
pub struct Spool {
    dir: PathBuf,
    budget: u64,
    segment_max: u64,
    policy: FullPolicy,
    segments: VecDeque<Segment>,
    /// Sum of the segments' bytes.
    bytes: u64,
    shared: SpoolState,
    /// The segment being written, and the records appended to it not yet written.
    file: File,
    pending: Vec<u8>,
    pending_count: u64,
    next_seq: u64,
    /// Readers see no result at or after this position (`u64::MAX`: no
    /// limit): results of inputs the write-ahead log has not fsynced yet are
    /// written to the file but held back ([`Spool::hold`]).
    limit: u64,
    last_input: Option<(u64, u32)>,
    acked_saved: u64,
    /// When the delivered position was last saved: at most once a second (an fsync
    /// per ack burst would stall the uplink), and at every checkpoint and stop. After
    /// a crash what was delivered since is sent again, with the same ids.
    acked_saved_at: std::time::Instant,
    /// Results dropped by the full policy (drop_oldest) and refused (refuse_new).
    pub dropped: u64,
    pub refused: u64,
    /// What start-up found wrong, for the service to report.
    pub damage: SpoolDamage,
    buf: Vec<u8>,
    /// Bytes written to segment files since start.
    pub bytes_written: u64,
}

/// The delivered and flushed positions, cheap to ask and to move (no IO).
#[derive(Clone)]
pub struct SpoolState(Arc<Mutex<Shared>>);

impl SpoolState {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().expect("spool lock")
    }

    /// The delivered position.
    pub fn acked(&self) -> u64 {
        self.shared().acked
    }

    /// Whether a result at or after `from` was flushed and can be read.
    pub fn readable(&self, from: u64) -> bool {
        let sh = self.shared();
        from.max(sh.acked) < sh.flushed
    }

    /// Flushed results not yet delivered.
    pub fn depth(&self) -> u64 {
        let sh = self.shared();
        sh.flushed.saturating_sub(sh.acked)
    }

    /// Everything before `seq` is delivered (the writer deletes what that frees).
    pub fn ack(&self, seq: u64) {
        let mut sh = self.shared();
        sh.acked = sh.acked.max(seq.min(sh.flushed));
    }
}

/// The reading half (the uplink's): what was flushed, in order.
pub struct SpoolReader {
    dir: PathBuf,
    shared: SpoolState,
    /// The segment file being read: its first position, the file, the next position in it.
    file: Option<(u64, BufReader<File>, u64)>,
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
        let mut damage = SpoolDamage::default();
        let saved = read_acked(dir);
        let mut segments = VecDeque::new();
        let mut last_input = None;
        // seq of the last valid record, and the gaps damage left (position ranges lost)
        let mut prev: Option<u64> = None;
        let mut gaps: Vec<(u64, u64)> = Vec::new();
        let mut good = Vec::new();
        for first in firsts {
            let path = segment_path(dir, first);
            let mut f = File::open(&path)?;
            let len = f.metadata()?.len();
            good.clear();
            let mut seg_gaps = Vec::new();
            let mut seg_prev = prev;
            let scan = crate::service::frame::scan(&mut f, len, |bytes| {
                let Ok(rec) = postcard::from_bytes::<SpoolRecord>(bytes) else { return false };
                if seg_prev.is_some_and(|p| rec.seq <= p) || rec.seq < first {
                    return false;
                }
                let expected = seg_prev.map_or(first, |p| p + 1).max(first);
                if rec.seq > expected {
                    seg_gaps.push((expected, rec.seq));
                }
                seg_prev = Some(rec.seq);
                last_input = Some((rec.input_seq, rec.idx));
                let _ = write_record(&mut good, bytes);
                true
            })?;
            let valid = if !scan.damaged.is_empty() {
                // damage before the segment's end: what a later record proves lost
                gaps.extend(seg_gaps);
                damage.kept.push(crate::service::frame::rewrite_without_damage(&path, &good)?);
                good.len() as u64
            } else {
                if scan.tail > 0 {
                    OpenOptions::new().write(true).open(&path)?.set_len(scan.valid_end)?;
                }
                scan.valid_end
            };
            prev = seg_prev;
            segments.push_back(Segment { first, bytes: valid });
        }
        let next_seq = prev.map_or(1, |p| p + 1).max(segments.back().map_or(1, |s: &Segment| s.first));
        // the delivered position: checksummed, and within what the spool holds
        let lowest = segments.front().map_or(next_seq, |s| s.first);
        let acked = match saved {
            Ok(Some(a)) if segments.is_empty() && a >= 1 => a,
            Ok(Some(a)) if (lowest..=next_seq).contains(&a) => a,
            Ok(Some(a)) => {
                damage.acked_refused = Some(format!(
                    "delivered position {a} is outside the spool ({lowest}..={next_seq}): resending from {lowest}"
                ));
                lowest
            }
            Ok(None) => lowest.max(1),
            Err(why) => {
                damage.acked_refused = Some(format!("{why}: resending from {lowest}"));
                lowest.max(1)
            }
        };
        let next_seq = next_seq.max(acked);
        damage.lost_results = gaps.iter().map(|&(a, b)| b.saturating_sub(a.max(acked))).sum();
        let segment_max = (budget / 8).clamp(4 << 10, 4 << 20);
        let file = match segments.back() {
            Some(s) => OpenOptions::new().append(true).open(segment_path(dir, s.first))?,
            None => {
                segments.push_back(Segment { first: next_seq, bytes: 0 });
                OpenOptions::new().create(true).append(true).open(segment_path(dir, next_seq))?
            }
        };
        let shared = Shared { firsts: segments.iter().map(|s| s.first).collect(), flushed: next_seq, acked };
        Ok(Spool {
            dir: dir.to_path_buf(),
            budget,
            segment_max,
            policy,
            bytes: segments.iter().map(|s| s.bytes).sum(),
            segments,
            shared: SpoolState(Arc::new(Mutex::new(shared))),
            file,
            pending: super::wal::append_buffer(),
            pending_count: 0,
            next_seq,
            limit: u64::MAX,
            last_input,
            acked_saved: acked,
            acked_saved_at: std::time::Instant::now(),
            dropped: damage.lost_results,
            refused: 0,
            damage,
            buf: good,
            bytes_written: 0,
        })
    }

    /// The reading half, for the uplink.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader { dir: self.dir.clone(), shared: self.shared.clone(), file: None, buf: Vec::new() }
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.shared()
    }

    /// The (input, index) of the last result spooled, to resume after a crash without duplicates.
    pub fn last_input(&self) -> Option<(u64, u32)> {
        self.last_input
    }

    /// Undelivered results lost to damaged records found at start-up (also counted in `dropped`).
    pub fn damaged(&self) -> u64 {
        self.damage.lost_results
    }

    /// The sequence number the next appended result gets.
    pub fn end(&self) -> u64 {
        self.next_seq
    }

    /// Results not yet delivered.
    pub fn depth(&self) -> u64 {
        self.next_seq - self.acked()
    }

    /// Whether the spool's files take less than half its budget.
    pub fn under_half(&self) -> bool {
        self.disk_bytes() < self.budget / 2
    }

    pub fn disk_bytes(&self) -> u64 {
        self.bytes
    }

    /// The delivered position.
    pub fn acked(&self) -> u64 {
        self.shared().acked
    }

    /// Appends one result; `false` if the full policy refused it.
    pub fn append(&mut self, input_seq: u64, idx: u32, topic: &str, payload: &[u8]) -> io::Result<bool> {
        let rec = SpoolRecordRef { seq: self.next_seq, input_seq, idx, topic, payload };
        self.buf.clear();
        let bytes = postcard::to_extend(&rec, std::mem::take(&mut self.buf)).map_err(io::Error::other)?;
        let size = 8 + bytes.len() as u64;
        if self.bytes + size > self.budget {
            // delivered segments go first
            self.collect_delivered();
        }
        while self.bytes + size > self.budget {
            match self.policy {
                FullPolicy::RefuseNew => {
                    self.refused += 1;
                    self.buf = bytes;
                    return Ok(false);
                }
                FullPolicy::DropOldest => {
                    if self.segments.len() == 1 && self.start_segment().is_err() {
                        // the disk is full and the oldest segment is the one being written:
                        // over budget until it can be written out
                        break;
                    }
                    let old = self.segments.pop_front().expect("two segments");
                    self.bytes -= old.bytes;
                    let end = self.segments.front().map_or(self.next_seq, |s| s.first);
                    {
                        let mut sh = self.shared.shared();
                        sh.firsts.pop_front();
                        self.dropped += end.saturating_sub(old.first.max(sh.acked));
                        sh.acked = sh.acked.max(end);
                    }
                    let _ = fs::remove_file(segment_path(&self.dir, old.first));
                }
            }
        }
        if self.segments.back().is_some_and(|s| s.bytes > 0 && s.bytes + size > self.segment_max) {
            // when the disk is full the segment grows past its size until a flush succeeds
            let _ = self.start_segment();
        }
        if self.pending.len() >= super::wal::WRITE_AT {
            // bounds the buffer; a failure (a full disk) keeps it for the turn's flush
            let _ = self.flush();
        }
        write_record(&mut self.pending, &bytes)?;
        self.pending_count += 1;
        self.segments.back_mut().expect("a segment").bytes += size;
        self.bytes += size;
        self.next_seq += 1;
        self.last_input = Some((input_seq, idx));
        self.buf = bytes;
        Ok(true)
    }

    fn start_segment(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_data()?;
        self.file =
            OpenOptions::new().create(true).append(true).open(segment_path(&self.dir, self.next_seq))?;
        self.segments.push_back(Segment { first: self.next_seq, bytes: 0 });
        self.shared().firsts.push_back(self.next_seq);
        Ok(())
    }

    /// Deletes the segments every result of which is delivered (never the
    /// one being written).
    fn collect_delivered(&mut self) {
        let mut gone = Vec::new();
        {
            let mut sh = self.shared.shared();
            while self.segments.len() > 1 && self.segments[1].first <= sh.acked {
                let old = self.segments.pop_front().expect("checked");
                sh.firsts.pop_front();
                self.bytes -= old.bytes;
                gone.push(old.first);
            }
        }
        for first in gone {
            let _ = fs::remove_file(segment_path(&self.dir, first));
        }
    }

    /// Housekeeping between batches: deletes delivered segments and saves the
    /// delivered position, at most once a second (an fsync per PUBACK burst
    /// would cost the SD card; after a crash what was delivered since the
    /// last save is sent again, with the same ids).
    pub fn maintain(&mut self) -> io::Result<()> {
        self.collect_delivered();
        if self.acked() > self.acked_saved
            && self.acked_saved_at.elapsed() >= std::time::Duration::from_secs(1)
        {
            self.save_acked()?;
        }
        Ok(())
    }

    /// Hands appended results to readers (no fsync). On failure (a full disk)
    /// the file is cut back to its last whole record and the results stay
    /// pending for the next flush.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // the file holds the segment's bytes but the pending ones (no fstat per flush)
        let before = self.segments.back().map_or(0, |seg| seg.bytes) - self.pending.len() as u64;
        match self.file.write_all(&self.pending) {
            Ok(()) => {
                self.bytes_written += self.pending.len() as u64;
                super::wal::reset_append_buffer(&mut self.pending);
                self.pending_count = 0;
                self.shared().flushed = self.next_seq.min(self.limit);
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(before);
                Err(e)
            }
        }
    }

    /// From now on results appended reach the file but not the readers,
    /// until [`release`](Self::release): their inputs are not yet in the
    /// fsynced write-ahead log, and a crash could lose those inputs (start-up
    /// then cuts their results, [`cut_inputs_after`](Self::cut_inputs_after)).
    pub fn hold(&mut self) {
        self.limit = self.limit.min(self.next_seq);
    }

    /// The held results' inputs are durable: readers may read every result
    /// written to the file (and, after the next flush, the rest).
    pub fn release(&mut self) {
        self.limit = u64::MAX;
        let written = self.next_seq - self.pending_count;
        let mut sh = self.shared();
        sh.flushed = sh.flushed.max(written);
    }

    /// Start-up, after the write-ahead log was read up to input
    /// `last_input`: removes the results of later inputs — results written
    /// while held whose inputs the log lost (a power cut before its fsync, or
    /// a full disk that refused the log and not the spool). None of them was
    /// ever readable. Returns how many were removed.
    pub fn cut_inputs_after(&mut self, last_input: u64) -> io::Result<u64> {
        if self.last_input.is_none_or(|(i, _)| i <= last_input) {
            return Ok(0);
        }
        self.flush()?;
        let mut cut = 0u64;
        while let Some(seg) = self.segments.back() {
            let path = segment_path(&self.dir, seg.first);
            // the segment's records: where the first one to cut starts, and the last kept
            let mut r = BufReader::new(File::open(&path)?);
            let (mut offset, mut at, mut count) = (0u64, None, 0u64);
            let mut last_kept = None;
            while read_record(&mut r, &mut self.buf)? {
                let rec: SpoolRecord = postcard::from_bytes(&self.buf).map_err(io::Error::other)?;
                if at.is_none() && rec.input_seq > last_input {
                    at = Some(offset);
                }
                if at.is_some() {
                    count += 1;
                } else {
                    last_kept = Some((rec.input_seq, rec.idx, rec.seq));
                }
                offset += 8 + self.buf.len() as u64;
            }
            let Some(at) = at else {
                self.last_input = last_kept.map(|(i, x, _)| (i, x));
                break;
            };
            cut += count;
            let first = seg.first;
            if at == 0 && self.segments.len() > 1 {
                // the whole segment goes; the one before becomes the one written
                fs::remove_file(&path)?;
                let gone = self.segments.pop_back().expect("checked");
                self.bytes -= gone.bytes;
                self.shared().firsts.pop_back();
                let prev = self.segments.back().expect("checked").first;
                self.file = OpenOptions::new().append(true).open(segment_path(&self.dir, prev))?;
                self.next_seq = first;
                continue;
            }
            OpenOptions::new().write(true).open(&path)?.set_len(at)?;
            let seg = self.segments.back_mut().expect("checked");
            self.bytes -= seg.bytes - at;
            seg.bytes = at;
            self.file = OpenOptions::new().append(true).open(&path)?;
            self.next_seq = last_kept.map_or(first, |(_, _, seq)| seq + 1);
            self.last_input = last_kept.map(|(i, x, _)| (i, x));
            break;
        }
        let mut sh = self.shared();
        sh.flushed = self.next_seq;
        sh.acked = sh.acked.min(self.next_seq);
        drop(sh);
        if cut > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(cut)
    }

    /// Makes everything appended durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_data()?;
        self.save_acked()
    }

    /// Persists the delivered position (atomically), with its checksum.
    pub fn save_acked(&mut self) -> io::Result<()> {
        let acked = self.acked();
        let tmp = self.dir.join("acked.tmp");
        let mut f = File::create(&tmp)?;
        writeln!(f, "{} {:08x}", acked, crc32fast::hash(acked.to_string().as_bytes()))?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join("acked"))?;
        sync_dir(&self.dir)?;
        self.acked_saved = acked;
        self.acked_saved_at = std::time::Instant::now();
        Ok(())
    }
}

impl SpoolReader {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.shared()
    }

    /// The positions, for the uplink's async side.
    pub fn state(&self) -> SpoolState {
        self.shared.clone()
    }

    /// Reads up to `max` flushed results from `from` on (at least the
    /// delivered position) into `out`. File IO: the uplink calls it off its
    /// async workers.
    pub fn read(&mut self, from: u64, max: usize, out: &mut Vec<SpoolRecord>) -> io::Result<()> {
        let (from, end, first) = {
            let sh = self.shared();
            let from = from.max(sh.acked);
            let first = sh.firsts.iter().rev().find(|&&f| f <= from).or(sh.firsts.front()).copied();
            (from, sh.flushed, first)
        };
        if from >= end {
            return Ok(());
        }
        if !matches!(&self.file, Some((_, _, next)) if *next == from) {
            let Some(first) = first else { return Ok(()) };
            match File::open(segment_path(&self.dir, first)) {
                Ok(f) => self.file = Some((first, BufReader::new(f), first)),
                // dropped by the writer (drop_oldest) since: the next call starts from what is left
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.file = None;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        while out.len() < max {
            let Some((first, r, next)) = self.file.as_mut() else { break };
            if *next < end && read_record(r, &mut self.buf)? {
                let rec: SpoolRecord = postcard::from_bytes(&self.buf).map_err(io::Error::other)?;
                *next = rec.seq + 1;
                if rec.seq >= from {
                    out.push(rec);
                }
                continue;
            }
            if *next >= end {
                break;
            }
            // end of this segment: on to the next one, if any
            let cur = *first;
            let nxt = self.shared().firsts.iter().find(|&&f| f > cur).copied();
            let Some(nxt) = nxt else { break };
            self.file = Some((nxt, BufReader::new(File::open(segment_path(&self.dir, nxt))?), nxt));
        }
        Ok(())
    }
}

/// The saved delivered position: `Ok(None)` when there is none, `Err` when
/// it is damaged (no number, or its checksum fails).
fn read_acked(dir: &Path) -> Result<Option<u64>, String> {
    let path = dir.join("acked");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut parts = text.split_whitespace();
    let (Some(num), crc) = (parts.next(), parts.next()) else {
        return Err(format!("{}: empty", path.display()));
    };
    let Ok(n) = num.parse::<u64>() else {
        return Err(format!("{}: not a position: {num:?}", path.display()));
    };
    match crc {
        Some(c) if u32::from_str_radix(c, 16).ok() == Some(crc32fast::hash(num.as_bytes())) => Ok(Some(n)),
        Some(_) => Err(format!("{}: checksum mismatch (damaged)", path.display())),
        // no checksum: written by hand or by an older edgejoin; unverifiable, so not trusted
        None => Err(format!("{}: {num} without a checksum", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(s: &mut Spool, from: u64) -> Vec<u64> {
        s.flush().unwrap();
        let mut v = Vec::new();
        s.reader().read(from, usize::MAX, &mut v).unwrap();
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
        s.reader().state().ack(41);
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

    /// Results of input i: i % 3 of them (some inputs have none).
    fn append_inputs(s: &mut Spool, inputs: std::ops::Range<u64>) {
        for i in inputs {
            for k in 0..i % 3 {
                assert!(s.append(i, k as u32, "r/t", &[b'x'; 200]).unwrap());
            }
        }
    }

    fn inputs_read(r: &mut SpoolReader, from: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        r.read(from, usize::MAX, &mut v).unwrap();
        v.iter().map(|x| (x.seq, x.input_seq)).collect()
    }

    #[test]
    fn held_results_reach_the_file_but_not_the_reader_until_released() {
        let dir = tempfile::tempdir().unwrap();
        // small segments (4 KiB): the held results span several
        let mut s = Spool::open(dir.path(), 32 << 10, FullPolicy::DropOldest).unwrap();
        let mut r = s.reader();
        append_inputs(&mut s, 1..4); // 0 + 1 + 2 + 0 results... inputs 1, 2, 3: 1 + 2 + 0
        s.flush().unwrap();
        assert_eq!(inputs_read(&mut r, 1), [(1, 1), (2, 2), (3, 2)]);
        s.hold();
        append_inputs(&mut s, 4..40);
        s.flush().unwrap();
        assert!(s.pending.is_empty(), "written to the file");
        assert!(inputs_read(&mut r, 4).is_empty(), "held: not readable");
        assert_eq!(r.state().depth(), 3, "the three released results only");
        s.hold(); // holding again does not move the limit
        s.release();
        let got = inputs_read(&mut r, 4);
        assert_eq!(got.len() as u64, s.end() - 4);
        assert_eq!(got.last().unwrap().1, 38);
        // released: later appends are readable at the next flush
        append_inputs(&mut s, 40..42);
        s.flush().unwrap();
        assert_eq!(inputs_read(&mut r, s.end() - 1), [(s.end() - 1, 41)]);
    }

    #[test]
    fn start_up_cuts_the_results_of_inputs_the_log_lost() {
        for last_logged in [0u64, 3, 17, 29, 50] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(dir.path(), 32 << 10, FullPolicy::DropOldest).unwrap();
            append_inputs(&mut s, 1..10);
            s.flush().unwrap();
            s.hold();
            append_inputs(&mut s, 10..30); // ~20 results of 218 bytes: several segments
            s.flush().unwrap();
            drop(s); // killed before the log's fsync: the log holds inputs up to `last_logged`
            let mut s = Spool::open(dir.path(), 32 << 10, FullPolicy::DropOldest).unwrap();
            let before = s.end() - 1;
            let cut = s.cut_inputs_after(last_logged).unwrap();
            let kept: Vec<(u64, u64)> = (1..30)
                .flat_map(|i| (0..i % 3).map(move |_| i))
                .filter(|&i| i <= last_logged)
                .zip(1..)
                .map(|(i, q)| (q, i))
                .collect();
            assert_eq!(cut, before - kept.len() as u64, "after input {last_logged}");
            let mut r = s.reader();
            assert_eq!(inputs_read(&mut r, 1), kept, "after input {last_logged}");
            assert_eq!(s.end(), kept.len() as u64 + 1);
            assert_eq!(s.last_input().map(|l| l.0), kept.last().map(|k| k.1));
            // the spool goes on from there, and a restart finds the same
            append_inputs(&mut s, 100..102);
            s.flush().unwrap();
            assert_eq!(inputs_read(&mut r, 1).len(), kept.len() + 3, "1 + 2 results of inputs 100 and 101");
            assert_eq!(
                s.disk_bytes(),
                s.segments
                    .iter()
                    .map(|g| fs::metadata(segment_path(dir.path(), g.first)).unwrap().len())
                    .sum::<u64>()
            );
            drop(s);
            let mut s = Spool::open(dir.path(), 32 << 10, FullPolicy::DropOldest).unwrap();
            assert_eq!(s.cut_inputs_after(101).unwrap(), 0);
            assert_eq!(inputs_read(&mut s.reader(), 1).last().map(|x| x.1), Some(101));
        }
    }

    fn spool_with(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, FullPolicy::DropOldest).unwrap();
        for i in 0..n {
            s.append(i, 0, "r/t", format!("result {i:04}").as_bytes()).unwrap();
        }
        s.sync().unwrap();
        let seg = segment_path(dir.path(), 1);
        (dir, seg)
    }

    #[test]
    fn a_damaged_record_loses_one_result_counted_and_kept_aside() {
        let (dir, seg) = spool_with(100);
        let mut bytes = fs::read(&seg).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x21;
        fs::write(&seg, &bytes).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, FullPolicy::DropOldest).unwrap();
        let left = read_all(&mut s, 1);
        assert_eq!(left.len(), 99, "only the damaged result is gone");
        assert_eq!(*left.last().unwrap(), 100);
        assert_eq!((s.damaged(), s.dropped), (1, 1));
        assert_eq!(s.damage.kept.len(), 1);
        assert_eq!(fs::read(&s.damage.kept[0]).unwrap(), bytes);
        // new results continue the numbering
        s.append(200, 0, "r/t", b"new").unwrap();
        assert_eq!(*read_all(&mut s, 1).last().unwrap(), 101);
    }

    #[test]
    fn a_damaged_or_impossible_delivered_position_resends_rather_than_skips() {
        for bad in ["18446744073709551615", "18446744073709551614", "1500", "50", "41 0badc0de", "x"] {
            let (dir, _) = spool_with(100);
            let mut s = Spool::open(dir.path(), 1 << 20, FullPolicy::DropOldest).unwrap();
            s.reader().state().ack(41);
            s.save_acked().unwrap();
            drop(s);
            fs::write(dir.path().join("acked"), format!("{bad}\n")).unwrap();
            let mut s = Spool::open(dir.path(), 1 << 20, FullPolicy::DropOldest).unwrap();
            assert!(s.damage.acked_refused.is_some(), "{bad}");
            assert_eq!(read_all(&mut s, 1), (1..=100).collect::<Vec<_>>(), "{bad}: everything is sent again");
        }
        // a sound position is used
        let (dir, _) = spool_with(100);
        let mut s = Spool::open(dir.path(), 1 << 20, FullPolicy::DropOldest).unwrap();
        s.reader().state().ack(41);
        s.save_acked().unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20, FullPolicy::DropOldest).unwrap();
        assert_eq!(s.damage.acked_refused, None);
        assert_eq!(read_all(&mut s, 1), (41..=100).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_disk_keeps_results_pending_until_a_flush_succeeds() {
        let (dir, seg) = spool_with(3);
        let mut s = Spool::open(dir.path(), 1 << 20, FullPolicy::DropOldest).unwrap();
        s.file = OpenOptions::new().append(true).open("/dev/full").unwrap();
        s.append(9, 0, "r/t", b"while full").unwrap();
        assert!(crate::service::frame::is_storage_full(&s.flush().unwrap_err()));
        let mut v = Vec::new();
        s.reader().read(1, 10, &mut v).unwrap();
        assert_eq!(v.len(), 3, "a pending result is not readable yet");
        s.file = OpenOptions::new().append(true).open(&seg).unwrap();
        assert_eq!(read_all(&mut s, 1), vec![1, 2, 3, 4]);
    }

    #[test]
    fn the_reader_sees_only_what_was_flushed_and_frees_segments_by_acknowledging() {
        let dir = tempfile::tempdir().unwrap();
        // small segments (4 KiB): several of them
        let mut s = Spool::open(dir.path(), 32 << 10, FullPolicy::DropOldest).unwrap();
        let mut r = s.reader();
        for i in 0..10u64 {
            s.append(i, 0, "r/t", &[b'x'; 200]).unwrap();
        }
        let mut v = Vec::new();
        r.read(1, 100, &mut v).unwrap();
        assert!(v.is_empty(), "nothing flushed yet");
        s.flush().unwrap();
        r.read(1, 100, &mut v).unwrap();
        assert_eq!(v.len(), 10);
        // more than a segment's worth: the writer starts new segments (flushing the last)
        for i in 10..60u64 {
            s.append(i, 0, "r/t", &[b'x'; 200]).unwrap();
        }
        s.flush().unwrap();
        r.read(11, 100, &mut v).unwrap();
        assert_eq!(v.iter().map(|x| x.seq).collect::<Vec<_>>(), (1..=60).collect::<Vec<_>>());
        let files = || {
            fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "spool"))
                .count()
        };
        let before = files();
        assert!(before > 2, "{before} segments");
        r.state().ack(61);
        assert_eq!((r.state().depth(), s.depth()), (0, 0));
        s.maintain().unwrap();
        assert_eq!(files(), 1, "only the segment being written is left");
        assert_eq!(
            s.disk_bytes(),
            fs::metadata(segment_path(dir.path(), s.segments[0].first)).unwrap().len()
        );
    }

    #[test]
    fn a_reader_keeps_up_when_the_writer_drops_the_oldest_segment_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 40 << 10, FullPolicy::DropOldest).unwrap();
        let mut r = s.reader();
        let mut seen = Vec::new();
        for i in 0..400u64 {
            s.append(i, 0, "r/t", &[b'y'; 300]).unwrap();
            if i % 50 == 0 {
                s.flush().unwrap();
                let mut v = Vec::new();
                r.read(seen.last().map_or(1, |l: &u64| l + 1), 20, &mut v).unwrap();
                seen.extend(v.iter().map(|x| x.seq));
            }
        }
        s.flush().unwrap();
        let mut v = Vec::new();
        r.read(seen.last().map_or(1, |l| l + 1), usize::MAX, &mut v).unwrap();
        seen.extend(v.iter().map(|x| x.seq));
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
        assert_eq!(*seen.last().unwrap(), 400);
        // a result read but not yet acknowledged is still undelivered: dropping it counts it
        assert!(seen.len() as u64 + s.dropped >= 400, "every result read or counted as dropped");
        assert!(s.dropped > 200 && s.disk_bytes() <= 40 << 10);
    }
}
