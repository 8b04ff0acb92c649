//! Event-time progress of one input: `wm = max ts seen - lateness`, the late
//! test (`ts < wm` on arrival, before the max moves), and idleness on the
//! gateway clock (docs/SEMANTICS.md §2.1, §2.3); and per-device watermarks
//! ([`DeviceWatermarks`], docs/SEMANTICS.md §2.4), where each device of a stream is
//! judged against its own progress and the stream advances on the slowest
//! device that is not idle.

use crate::prelude::*;

use crate::event::Key;
use crate::keytable::{Claim, KeyTable};

/// "No watermark yet": below every timestamp.
pub const NO_WM: i64 = i64::MIN;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Watermark {
    max_ts: i64,
    lateness: i64,
}

impl Watermark {
    pub const fn new(lateness: i64) -> Self {
        Watermark { max_ts: NO_WM, lateness }
    }

    /// The current watermark, [`NO_WM`] before the first event.
    #[inline]
    pub fn current(&self) -> i64 {
        if self.max_ts == NO_WM {
            NO_WM
        } else {
            self.max_ts.saturating_sub(self.lateness)
        }
    }

    /// The largest timestamp seen, if any.
    pub fn max_ts(&self) -> Option<i64> {
        (self.max_ts != NO_WM).then_some(self.max_ts)
    }

    /// Whether an event at `ts` arriving now is late.
    #[inline]
    pub fn is_late(&self, ts: i64) -> bool {
        ts < self.current()
    }

    /// Takes an event: returns `false` (and changes nothing) if it is late,
    /// else moves the max and returns `true`.
    #[inline]
    pub fn observe(&mut self, ts: i64) -> bool {
        if self.is_late(ts) {
            return false;
        }
        if ts > self.max_ts {
            self.max_ts = ts;
        }
        true
    }

    /// End of input: the watermark passes all data.
    pub fn close(&mut self) {
        self.max_ts = i64::MAX;
        self.lateness = 0;
    }
}

/// Whether a stream counts as idle: it has not spoken for `timeout` of
/// gateway time (`last_spoke` is the start time if it never spoke).
#[inline]
pub fn is_idle(timeout: Option<i64>, last_spoke: i64, now: i64) -> bool {
    match timeout {
        Some(t) => now.saturating_sub(last_spoke) >= t,
        None => false,
    }
}

/// The combined watermark of a multi-input operator: the min over inputs
/// that are not idle, never below `frontier` (what it has already passed). If
/// every input is idle, it stays at `frontier`.
pub fn combined(inputs: impl IntoIterator<Item = (i64, bool)>, frontier: i64) -> i64 {
    let mut min: Option<i64> = None;
    for (wm, idle) in inputs {
        if !idle {
            min = Some(min.map_or(wm, |m: i64| m.min(wm)));
        }
    }
    min.map_or(frontier, |m| m.max(frontier))
}

/// Per-device watermarks of one stream (`watermark = "device"`): each
/// device keeps `wm(d) = max ts from d − lateness`; an event is late iff it
/// is below its own device's watermark. The stream's watermark, as windows
/// and joins see it, is the minimum of `wm(d)` over the devices that spoke
/// within `idle_timeout`, never below what it already reached (its
/// frontier): an event on time for its device but below the frontier is
/// late for the stream's operators (`late_after_idle`). At most `capacity`
/// devices, in a fixed table; a new device beyond it evicts the least
/// recently heard one (`evictions`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct DeviceWatermarks {
    devices: KeyTable,
    wm: Box<[Watermark]>,
    last_heard: Box<[i64]>,
    /// The stream's watermark: the highest combined watermark reached.
    frontier: i64,
    lateness: i64,
    idle_timeout: Option<i64>,
    pub evictions: u64,
    /// Events on time for their device but below the stream's watermark.
    pub late_after_idle: u64,
    /// Gateway time of the last [`advance`](Self::advance) with nothing
    /// observed since: the minimum over devices needs no recount then.
    #[serde(skip)]
    advanced_at: Option<i64>,
}

/// What a device's event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// On time: for its device and for the stream's operators.
    OnTime,
    /// Below its device's watermark.
    Late,
    /// On time for its device, below the stream's watermark (counted in `late_after_idle`).
    BelowStream,
}

impl DeviceWatermarks {
    pub fn new(capacity: usize, lateness: i64, idle_timeout: Option<i64>, seed: u64) -> Self {
        DeviceWatermarks {
            devices: KeyTable::new(capacity, seed),
            wm: vec![Watermark::new(lateness); capacity].into_boxed_slice(),
            last_heard: vec![0; capacity].into_boxed_slice(),
            frontier: NO_WM,
            lateness,
            idle_timeout,
            evictions: 0,
            late_after_idle: 0,
            advanced_at: None,
        }
    }

    pub fn memory_bytes(capacity: u64) -> u64 {
        KeyTable::memory_bytes(capacity)
            + capacity * (core::mem::size_of::<Watermark>() + core::mem::size_of::<i64>()) as u64
    }

    /// Whether the table fits `capacity` (a restored checkpoint).
    pub fn shape_matches(&self, capacity: usize, lateness: i64) -> bool {
        self.devices.shape_matches(capacity) && self.wm.len() == capacity && self.lateness == lateness
    }

    pub fn after_restore(&mut self, idle_timeout: Option<i64>) {
        self.devices.after_restore();
        self.idle_timeout = idle_timeout;
    }

    /// An event of `device` at `ts`, heard at gateway time `now`.
    pub fn observe(&mut self, device: &Key, ts: i64, now: i64) -> Arrival {
        let d = match self.devices.claim(device) {
            Claim::Known(d) => d,
            claim => {
                self.evictions += u64::from(matches!(claim, Claim::Evicted(_)));
                self.wm[claim.slot() as usize] = Watermark::new(self.lateness);
                claim.slot()
            }
        };
        self.last_heard[d as usize] = now;
        self.advanced_at = None;
        if !self.wm[d as usize].observe(ts) {
            return Arrival::Late;
        }
        if ts < self.frontier {
            self.late_after_idle += 1;
            return Arrival::BelowStream;
        }
        Arrival::OnTime
    }

    /// The stream's watermark at gateway time `now`: the minimum over active
    /// devices, never below what it reached before. Moves the frontier.
    pub fn advance(&mut self, now: i64) -> i64 {
        if self.advanced_at == Some(now) {
            return self.frontier;
        }
        self.advanced_at = Some(now);
        let mut min: Option<i64> = None;
        for d in self.devices.iter_mru() {
            if is_idle(self.idle_timeout, self.last_heard[d as usize], now) {
                continue;
            }
            let w = self.wm[d as usize].current();
            min = Some(min.map_or(w, |m: i64| m.min(w)));
        }
        if let Some(m) = min {
            self.frontier = self.frontier.max(m);
        }
        self.frontier
    }

    /// A device's own watermark, if it is in the table.
    pub fn device_wm(&self, device: &Key) -> Option<i64> {
        self.devices.get(device.as_str()).map(|d| self.wm[d as usize].current())
    }

    /// The stream's watermark as last advanced.
    pub fn current(&self) -> i64 {
        self.frontier
    }

    /// End of input: every watermark passes all data.
    pub fn close(&mut self) {
        self.frontier = i64::MAX;
        for w in self.wm.iter_mut() {
            w.close();
        }
    }

    /// The active device with the lowest watermark at `now`: the one holding the stream.
    pub fn holding(&self, now: i64) -> Option<(&Key, i64)> {
        self.devices(now).filter(|d| !d.2).min_by_key(|d| d.1).map(|d| (d.0, d.1))
    }

    /// Per device, most recently heard first: (device, its watermark, idle at `now`).
    pub fn devices(&self, now: i64) -> impl Iterator<Item = (&Key, i64, bool)> + '_ {
        self.devices.iter_mru().map(move |d| {
            (
                self.devices.key(d),
                self.wm[d as usize].current(),
                is_idle(self.idle_timeout, self.last_heard[d as usize], now),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_is_strictly_below_wm() {
        let mut w = Watermark::new(10);
        assert!(w.observe(100)); // first event is never late
        assert_eq!(w.current(), 90);
        assert!(w.observe(90)); // ts == wm is on time
        assert!(!w.observe(89));
        assert_eq!(w.current(), 90);
        assert!(w.observe(95));
        assert_eq!(w.max_ts(), Some(100));
        w.close();
        assert_eq!(w.current(), i64::MAX);
    }

    #[test]
    fn combined_skips_idle_inputs() {
        assert_eq!(combined([(5, false), (9, false)], NO_WM), 5);
        assert_eq!(combined([(5, true), (9, false)], NO_WM), 9);
        assert_eq!(combined([(5, true), (9, true)], 7), 7);
        assert_eq!(combined([(5, false)], 7), 7);
        assert!(is_idle(Some(10), 0, 10));
        assert!(!is_idle(Some(10), 0, 9));
        assert!(!is_idle(None, 0, i64::MAX));
    }

    fn key(s: &str) -> Key {
        Key::new(s).unwrap()
    }

    #[test]
    fn a_device_ahead_does_not_make_the_others_late() {
        let mut d = DeviceWatermarks::new(4, 100, Some(1_000), 1);
        assert_eq!(d.observe(&key("fast"), 10_000, 0), Arrival::OnTime);
        assert_eq!(d.observe(&key("slow"), 6_000, 1), Arrival::OnTime);
        assert_eq!(d.advance(1), 5_900, "the slowest device holds the stream");
        assert_eq!(d.observe(&key("slow"), 6_050, 2), Arrival::OnTime, "late only against its own device");
        assert_eq!(d.observe(&key("slow"), 5_800, 3), Arrival::Late);
        // the slow device goes quiet: after idle_timeout the stream follows the fast one
        assert_eq!(d.advance(999), 5_950);
        assert_eq!(d.observe(&key("fast"), 10_000, 1_002), Arrival::OnTime);
        assert_eq!(d.advance(1_003), 9_900);
        // back, its next event is on time for itself but below the stream: late for the operators
        assert_eq!(d.observe(&key("slow"), 6_100, 1_004), Arrival::BelowStream);
        assert_eq!(d.late_after_idle, 1);
        assert_eq!(d.advance(1_004), 9_900, "never backwards");
    }

    #[test]
    fn devices_are_bounded_and_evictions_counted() {
        let mut d = DeviceWatermarks::new(2, 0, None, 1);
        d.observe(&key("a"), 1, 0);
        d.observe(&key("b"), 2, 0);
        d.observe(&key("c"), 3, 0);
        assert_eq!(d.evictions, 1);
        assert_eq!(d.devices(0).count(), 2);
        assert_eq!(d.advance(0), 2);
    }
}
