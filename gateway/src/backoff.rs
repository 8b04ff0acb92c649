//! How long to wait before trying again after a failure: from 100 ms,
//! doubling to 30 s, reset by a success. With jitter (the brokers: many
//! gateways must not reconnect in step) or exact (the I2C bus).

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);
const LAST: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    /// xorshift state for the jitter; 0: no jitter.
    seed: u64,
}

impl Default for Backoff {
    /// Exact steps: 100 ms, 200 ms, 400 ms, … 30 s.
    fn default() -> Self {
        Backoff { next: FIRST, seed: 0 }
    }
}

impl Backoff {
    /// Each wait drawn from 50–100 % of its step.
    pub fn jittered(seed: u64) -> Self {
        Backoff { next: FIRST, seed: seed | 1 }
    }

    /// A success: the next failure waits the first step again.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }

    /// A failure: how long to wait before the next attempt.
    pub fn wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(LAST);
        if self.seed == 0 {
            return base;
        }
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        base / 2 + Duration::from_millis(self.seed % (base.as_millis() as u64 / 2 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_steps_double_to_thirty_seconds_and_reset() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..11).map(|_| b.wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        b.reset();
        assert_eq!(b.wait(), FIRST);
    }

    #[test]
    fn jittered_waits_stay_within_half_to_all_of_each_step() {
        let mut b = Backoff::jittered(42);
        for step in [100u64, 200, 400, 800] {
            let w = b.wait().as_millis() as u64;
            assert!((step / 2..=step).contains(&w), "{w} for a {step} ms step");
        }
    }
}
