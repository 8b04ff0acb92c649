//! Group commit, without IO: when the engine thread should fsync the
//! write-ahead log (and then acknowledge, process) the batch it is gathering.
//!
//! One fsync per message costs a flash page per message and a system call
//! round trip; gathering messages for up to `commit_delay` (default 50 ms)
//! makes one fsync carry many. The rules:
//! - a message waits at most `commit_delay` for its fsync (plus the fsync);
//! - fsyncs start at least [`GAP`] apart (≤ 100 per second at any rate), unless
//!   `commit_delay` is smaller;
//! - a batch half full commits as soon as the gap allows (a flood); while it
//!   waits for the gap it goes on taking what arrives (woken every eighth of
//!   a batch), so the source is not held up, until the batch is full;
//! - the broker sends at most its in-flight window of QoS 1 messages before
//!   it waits for acknowledgements (Mosquitto: `max_inflight_messages`, 20 by
//!   default): once the batch holds as many unacknowledged messages as the
//!   largest window seen and arrivals stall for [`QUIET`], waiting longer
//!   gains nothing, so it commits. The window is learned: it is the most
//!   unacknowledged messages ever held at a commit.

use std::time::{Duration, Instant};

/// The least time between two fsyncs' starts (with the default delay).
pub const GAP: Duration = Duration::from_millis(10);

/// How long arrivals must stall before a full broker window is taken as full.
pub const QUIET: Duration = Duration::from_millis(2);

/// What the batch being gathered looks like.
#[derive(Clone, Copy, Debug)]
pub struct Gathered {
    pub len: usize,
    /// QoS 1 messages in it, and acknowledgements still owed: what the broker counts in flight.
    pub unacked: usize,
    pub first: Instant,
    pub last: Instant,
    /// No room for more before the fsync (messages or held results at their bound).
    pub full: bool,
}

/// What to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Commit,
    /// Wait until this instant, or until this many more messages arrive.
    Wait {
        until: Instant,
        more: usize,
    },
}

#[derive(Debug)]
pub struct GroupCommit {
    delay: Duration,
    gap: Duration,
    /// Messages a batch commits at anyway (half the batch).
    flood: usize,
    /// The most messages a batch holds.
    batch: usize,
    last_sync: Option<Instant>,
    window: usize,
}

impl GroupCommit {
    pub fn new(delay: Duration, batch: usize) -> Self {
        GroupCommit {
            delay,
            gap: delay.min(GAP),
            flood: (batch / 2).max(1),
            batch,
            last_sync: None,
            window: 0,
        }
    }

    /// The broker's in-flight window as learned so far (0: not yet).
    pub fn window(&self) -> usize {
        self.window
    }

    pub fn next(&self, now: Instant, b: Gathered) -> Next {
        if b.len == 0 {
            return Next::Wait { until: now + self.delay.max(GAP), more: 1 };
        }
        if self.delay.is_zero() {
            return Next::Commit;
        }
        let gap_at = self.last_sync.map_or(now, |t| t + self.gap);
        let due_at = (b.first + self.delay).max(gap_at);
        let full = b.full || b.len >= self.batch;
        if full || b.len >= self.flood {
            if now >= gap_at {
                return Next::Commit;
            }
            // a full batch waits for the gap (the source waits meanwhile); one that is not keeps taking
            let more = if full { usize::MAX } else { (self.batch / 8).max(1) };
            return Next::Wait { until: gap_at, more };
        }
        let window_full = self.window > 0 && b.unacked >= self.window;
        if window_full {
            let stalled_at = (b.last + QUIET).max(gap_at);
            if now >= stalled_at {
                return Next::Commit;
            }
            // another arrival means the window is larger than learned
            return Next::Wait { until: stalled_at.min(due_at), more: 1 };
        }
        if now >= due_at {
            return Next::Commit;
        }
        let mut more = self.flood - b.len;
        if self.window > 0 {
            more = more.min(self.window - b.unacked);
        }
        Next::Wait { until: due_at, more: more.max(1) }
    }

    /// An fsync started at `at` with `unacked` messages in flight: learns the window.
    pub fn synced(&mut self, at: Instant, unacked: usize) {
        self.last_sync = Some(at);
        self.window = self.window.max(unacked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn gathered(t0: Instant, len: usize, first_ms: u32, last_ms: u32) -> Gathered {
        Gathered { len, unacked: len, first: t0 + first_ms * MS, last: t0 + last_ms * MS, full: false }
    }

    #[test]
    fn a_lone_message_waits_at_most_the_commit_delay() {
        let t0 = Instant::now();
        let g = GroupCommit::new(50 * MS, 4096);
        let b = gathered(t0, 1, 0, 0);
        assert!(matches!(g.next(t0 + 10 * MS, b), Next::Wait { until, .. } if until == t0 + 50 * MS));
        assert_eq!(g.next(t0 + 50 * MS, b), Next::Commit);
    }

    #[test]
    fn fsyncs_start_at_least_10_ms_apart_even_in_a_flood() {
        let t0 = Instant::now();
        let mut g = GroupCommit::new(50 * MS, 4096);
        g.synced(t0, 0);
        let flood = gathered(t0, 3000, 0, 3);
        // it keeps taking what arrives, woken every eighth of a batch
        assert_eq!(g.next(t0 + 3 * MS, flood), Next::Wait { until: t0 + 10 * MS, more: 512 });
        assert_eq!(g.next(t0 + 10 * MS, flood), Next::Commit);
        // a full batch only waits
        let full = gathered(t0, 4096, 0, 5);
        assert_eq!(g.next(t0 + 5 * MS, full), Next::Wait { until: t0 + 10 * MS, more: usize::MAX });
        assert_eq!(g.next(t0 + 10 * MS, full), Next::Commit);
    }

    #[test]
    fn a_batch_with_no_room_left_waits_only_for_the_gap() {
        let t0 = Instant::now();
        let mut g = GroupCommit::new(50 * MS, 4096);
        g.synced(t0, 0);
        // few messages, but their held results fill the room: nothing more is taken before the fsync
        let b = Gathered { full: true, ..gathered(t0, 10, 0, 1) };
        assert_eq!(g.next(t0 + MS, b), Next::Wait { until: t0 + 10 * MS, more: usize::MAX });
        assert_eq!(g.next(t0 + 10 * MS, b), Next::Commit);
    }

    #[test]
    fn a_half_full_batch_commits_without_waiting_for_the_delay() {
        let t0 = Instant::now();
        let g = GroupCommit::new(50 * MS, 4096);
        assert_eq!(g.next(t0 + MS, gathered(t0, 2048, 0, 1)), Next::Commit);
        assert!(matches!(g.next(t0 + MS, gathered(t0, 100, 0, 1)), Next::Wait { more: 1948, .. }));
    }

    #[test]
    fn a_full_broker_window_commits_once_arrivals_stall() {
        let t0 = Instant::now();
        let mut g = GroupCommit::new(50 * MS, 4096);
        // the first batch waits the whole delay: 20 messages came (Mosquitto's default window)
        assert_eq!(g.next(t0 + 50 * MS, gathered(t0, 20, 0, 19)), Next::Commit);
        g.synced(t0 + 50 * MS, 20);
        assert_eq!(g.window(), 20);
        // later batches commit as soon as the window is full and nothing more arrives
        let t1 = t0 + 100 * MS;
        let b = gathered(t1, 20, 0, 19);
        assert_eq!(g.next(t1 + 20 * MS, b), Next::Wait { until: t1 + 21 * MS, more: 1 });
        assert_eq!(g.next(t1 + 21 * MS, b), Next::Commit);
        // a larger window shows as arrivals that go on: it keeps gathering and learns it
        let b = gathered(t1, 30, 0, 29);
        assert_eq!(g.next(t1 + 29 * MS, b), Next::Wait { until: t1 + 31 * MS, more: 1 });
        g.synced(t1 + 50 * MS, 30);
        assert_eq!(g.window(), 30);
    }

    #[test]
    fn below_the_window_a_batch_is_woken_when_it_fills() {
        let t0 = Instant::now();
        let mut g = GroupCommit::new(50 * MS, 4096);
        g.synced(t0, 100);
        assert_eq!(
            g.next(t0 + 20 * MS, gathered(t0 + 20 * MS, 40, 0, 0)),
            Next::Wait { until: t0 + 70 * MS, more: 60 }
        );
    }

    #[test]
    fn a_zero_delay_commits_every_batch_at_once() {
        let t0 = Instant::now();
        let mut g = GroupCommit::new(Duration::ZERO, 4096);
        g.synced(t0, 1);
        assert_eq!(g.next(t0, gathered(t0, 1, 0, 0)), Next::Commit);
    }
}
