//! Rate-limited logging: a condition that may repeat thousands of times a
//! second (a flood of bad payloads, a broker that refuses every connection,
//! a full spool) is logged once, then at most once per interval with how
//! many were left unsaid in between.

use std::time::{Duration, Instant};

use edgejoin_engine::decode::DecodeError;
use edgejoin_engine::engine::Skipped;

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

/// Skipped input, said so an operator can act on it: the first message
/// each stream skips for each reason is logged with its topic and the start
/// of its payload; after that, one summary line per stream a minute with
/// the counts by reason. Memory: one slot per stream and reason, at start.
pub struct SkipLog {
    reasons: usize,
    /// Per stream × reason: logged once already, and skipped since the last summary.
    seen: Vec<bool>,
    since: Vec<u64>,
    last_summary: Instant,
    interval: Duration,
}

impl SkipLog {
    pub const INTERVAL: Duration = Duration::from_secs(60);

    pub fn new(streams: usize) -> Self {
        let reasons = DecodeError::ALL.len();
        SkipLog {
            reasons,
            seen: vec![false; streams * reasons],
            since: vec![0; streams * reasons],
            last_summary: Instant::now(),
            interval: Self::INTERVAL,
        }
    }

    /// A message on `topic` that `stream` (named `name`) skipped; returns
    /// the line to log when it is the first for that stream and reason.
    pub fn note(&mut self, s: Skipped, name: &str, topic: &str, payload: &[u8]) -> Option<String> {
        let i = s.stream * self.reasons + s.reason.index();
        if std::mem::replace(&mut self.seen[i], true) {
            self.since[i] += 1;
            return None;
        }
        Some(format!(
            "stream `{name}` skipped a message on `{topic}`: {} ({}, {} bytes: {}); more are counted in decode_errors.{} and summed up here once a minute",
            s.reason,
            s.reason.name(),
            payload.len(),
            excerpt(payload),
            s.reason.name()
        ))
    }

    /// Once an interval: a line per stream that skipped more since, with counts by reason.
    pub fn summaries(&mut self, now: Instant, name: impl Fn(usize) -> String) -> Vec<String> {
        if now.duration_since(self.last_summary) < self.interval {
            return Vec::new();
        }
        self.last_summary = now;
        let mut out = Vec::new();
        for (stream, counts) in self.since.chunks_mut(self.reasons).enumerate() {
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let by: Vec<String> = DecodeError::ALL
                .iter()
                .zip(counts.iter())
                .filter(|(_, &n)| n > 0)
                .map(|(r, &n)| format!("{} {n}", r.name()))
                .collect();
            out.push(format!(
                "stream `{}`: {total} more messages skipped in the last {} s ({})",
                name(stream),
                self.interval.as_secs(),
                by.join(", ")
            ));
            counts.fill(0);
        }
        out
    }
}

/// The start of a payload as a person can read it in a log line: up to 64
/// characters, control characters escaped, invalid UTF-8 replaced.
pub fn excerpt(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(&payload[..payload.len().min(256)]);
    let mut out: String = text.chars().take(64).flat_map(char::escape_debug).collect();
    if text.chars().count() > 64 || payload.len() > 256 {
        out.push('…');
    }
    format!("\"{out}\"")
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

    #[test]
    fn the_first_skip_per_stream_and_reason_is_logged_then_summed_up() {
        let mut l = SkipLog::new(2);
        let t0 = Instant::now();
        let bad = Skipped { stream: 1, reason: DecodeError::InvalidJson };
        let line = l.note(bad, "temp", "s/1/t", b"{not json\n").unwrap();
        assert!(
            line.contains("stream `temp`") && line.contains("`s/1/t`") && line.contains("invalid_json"),
            "{line}"
        );
        assert!(line.contains(r#""{not json\n""#), "{line}");
        for _ in 0..199 {
            assert!(l.note(bad, "temp", "s/1/t", b"x").is_none());
        }
        let other = Skipped { stream: 1, reason: DecodeError::MissingTime };
        assert!(l.note(other, "temp", "s/1/t", b"{}").is_some(), "a new reason is logged at once");
        assert!(l.note(other, "temp", "s/1/t", b"{}").is_none());
        assert!(l.summaries(t0, |_| "temp".into()).is_empty(), "not before the interval");
        let sums = l.summaries(t0 + SkipLog::INTERVAL * 2, |_| "temp".into());
        assert_eq!(
            sums,
            ["stream `temp`: 200 more messages skipped in the last 60 s (invalid_json 199, missing_time 1)"]
        );
        assert!(l.summaries(t0 + SkipLog::INTERVAL * 4, |_| "temp".into()).is_empty(), "nothing new");
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        assert_eq!(excerpt(b"{\"ts\":1}"), r#""{\"ts\":1}""#);
        let long = excerpt(&[b'a'; 1000]);
        assert!(long.ends_with("…\"") && long.len() < 80, "{long}");
        assert_eq!(excerpt(&[0xff, b'a']), "\"\u{fffd}a\"");
    }
}
