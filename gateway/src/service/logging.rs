//! Rate-limited logging: a condition that may repeat thousands of times a
//! second (a flood of bad payloads, a broker that refuses every connection,
//! a full spool) is logged once, then at most once per interval with how
//! many were left unsaid in between.

use std::time::{Duration, Instant};

/// Lets a log line through at most once per interval.
#[derive(Debug)]
pub struct Every {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Every {
    pub fn new(interval: Duration) -> Self {
        Every { interval, last: None, suppressed: 0 }
    }

    /// `Some(n)` when a line may be logged now (`n`: occurrences not logged
    /// since the last line); `None` when this one is to be left unsaid.
    pub fn ready(&mut self) -> Option<u64> {
        self.ready_at(Instant::now())
    }

    pub fn ready_at(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|at| now.duration_since(at) < self.interval) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The suffix of a rate-limited line: `" (and 12 more since the last report)"`, or nothing.
pub fn more(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" (and {n} more since the last report)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_rest() {
        let mut e = Every::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(e.ready_at(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(e.ready_at(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(e.ready_at(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(e.ready_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(more(0), "");
        assert_eq!(more(3), " (and 3 more since the last report)");
    }
}
