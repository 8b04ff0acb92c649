//! Event-time progress of one input: `wm = max ts seen - lateness`, the late
//! test (`ts < wm` on arrival, before the max moves), and idleness on the
//! gateway clock (SPEC §5, §13.4).

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
}
