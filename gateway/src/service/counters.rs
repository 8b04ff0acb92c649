//! The live service's counters, shared by its tasks: plain numbers that
//! the tasks update and [`super::registry`] reads (names, kinds and help
//! live there), and the result latency histogram.

use std::fmt::Write as _;
use std::time::Duration;

/// A counter several tasks update: a 64-bit atomic where the target has
/// them, a mutex where it does not (so 32-bit ARM without 64-bit atomics
/// builds too).
#[derive(Default, Debug)]
pub struct Counter(
    #[cfg(target_has_atomic = "64")] std::sync::atomic::AtomicU64,
    #[cfg(not(target_has_atomic = "64"))] std::sync::Mutex<u64>,
);

/// The ordering argument of [`Counter`]'s methods (kept for readability at call sites).
pub use std::sync::atomic::Ordering;

impl Counter {
    #[cfg(target_has_atomic = "64")]
    pub fn fetch_add(&self, n: u64, o: Ordering) -> u64 {
        self.0.fetch_add(n, o)
    }
    #[cfg(target_has_atomic = "64")]
    pub fn load(&self, o: Ordering) -> u64 {
        self.0.load(o)
    }
    #[cfg(target_has_atomic = "64")]
    pub fn store(&self, n: u64, o: Ordering) {
        self.0.store(n, o)
    }
    #[cfg(not(target_has_atomic = "64"))]
    pub fn fetch_add(&self, n: u64, _: Ordering) -> u64 {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let old = *v;
        *v = old.wrapping_add(n);
        old
    }
    #[cfg(not(target_has_atomic = "64"))]
    pub fn load(&self, _: Ordering) -> u64 {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    #[cfg(not(target_has_atomic = "64"))]
    pub fn store(&self, n: u64, _: Ordering) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = n;
    }
}

/// Upper bounds (µs) of the result-latency histogram's buckets (then +Inf).
pub const LATENCY_BOUNDS_US: [u64; 20] = [
    25, 50, 100, 150, 200, 300, 400, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000, 25_000, 50_000,
    100_000, 250_000, 1_000_000,
];

/// Latency of results from the broker's delivery of the message that
/// completed them to the publish of the result upstream: the time edgejoin
/// itself adds on top of the watermark's hold.
#[derive(Default, Debug)]
pub struct LatencyHistogram {
    buckets: [Counter; LATENCY_BOUNDS_US.len() + 1],
    sum_us: Counter,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let b = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The `q` quantile in µs, interpolated linearly within its bucket (as
    /// Prometheus' `histogram_quantile` does); `None` before any observation.
    /// Past the last bound it answers that bound.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &n) in counts.iter().enumerate() {
            if n > 0 && (seen + n) as f64 >= rank {
                let lo = if i == 0 { 0.0 } else { LATENCY_BOUNDS_US[i - 1] as f64 };
                let Some(&hi) = LATENCY_BOUNDS_US.get(i) else { return Some(lo) };
                return Some(lo + (hi as f64 - lo) * ((rank - seen as f64) / n as f64).clamp(0.0, 1.0));
            }
            seen += n;
        }
        Some(*LATENCY_BOUNDS_US.last().expect("bounds") as f64)
    }

    pub(super) fn prometheus(&self, o: &mut String) {
        let name = "edgejoin_result_latency_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Broker delivery of a message to the publish of the results it completed."
        );
        let _ = writeln!(o, "# TYPE {name} histogram");
        let mut cum = 0u64;
        for (i, c) in self.buckets.iter().enumerate() {
            cum += c.load(Ordering::Relaxed);
            match LATENCY_BOUNDS_US.get(i) {
                Some(b) => {
                    let _ = writeln!(o, "{name}_bucket{{le=\"{}\"}} {cum}", *b as f64 / 1e6);
                }
                None => {
                    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {cum}");
                }
            }
        }
        let _ = writeln!(o, "{name}_sum {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(o, "{name}_count {cum}");
    }
}

/// Counters of the live service (several tasks update them).
#[derive(Default, Debug)]
pub struct ServiceCounters {
    pub received: Counter,
    pub processed: Counter,
    pub redeliveries_skipped: Counter,
    /// Turns the acknowledgement queue ([`super::acks::AckPipe`]) was full
    /// and acknowledgements waited in the ledger (all are sent later, in order).
    pub acks_deferred: Counter,
    /// Times the source filter stopped reading from the broker until owed
    /// acknowledgements went out ([`super::acks::AckPipe`]).
    pub intake_held: Counter,
    pub results: Counter,
    pub delivered: Counter,
    pub spool_depth: Counter,
    pub spool_bytes: Counter,
    pub spool_dropped: Counter,
    pub spool_refused: Counter,
    pub spool_errors: Counter,
    pub checkpoints: Counter,
    pub checkpoint_failures: Counter,
    pub checkpoint_bytes: Counter,
    pub source_connects: Counter,
    pub source_errors: Counter,
    pub uplink_connects: Counter,
    pub uplink_errors: Counter,
    /// Receipt of a batch's oldest message to its results spooled (ms), last batch.
    pub processing_delay_ms: Counter,
    /// Failed reads or opens of local I2C sensors.
    pub i2c_errors: Counter,
    /// Wall clock (Unix ms) when the engine last finished a batch of messages.
    pub last_processed_unix_ms: Counter,
    /// Source messages whose payload was over `max_payload`, cut before the MQTT client read them.
    pub payload_truncated: Counter,
    /// Logged inputs lost to damaged write-ahead log records (found at start-up).
    pub wal_lost_inputs: Counter,
    /// Undelivered results lost to damaged spool records (found at start-up).
    pub spool_damaged: Counter,
    /// Times the state directory was full and intake paused until it had room.
    pub storage_full_pauses: Counter,
    /// 1 while intake is paused because the state directory is full.
    pub storage_paused: Counter,
    /// Metrics connections turned away (over the limit of open connections).
    pub metrics_connections_refused: Counter,
    /// Group commits: fsyncs of the write-ahead log that made a batch durable.
    pub commits: Counter,
    /// The source broker's in-flight window as learned by the group commit.
    pub broker_window: Counter,
    /// Bytes written to the write-ahead log and the spool.
    pub state_bytes_written: Counter,
    /// Broker delivery of a message → publish of the results it completed.
    pub result_latency: LatencyHistogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_interpolate_within_buckets() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile_us(0.99), None);
        // 98 fast results (10 µs: first bucket), 2 slow (1.2 ms: the 1..1.5 ms bucket)
        for _ in 0..98 {
            h.observe(Duration::from_micros(10));
        }
        for _ in 0..2 {
            h.observe(Duration::from_micros(1200));
        }
        assert_eq!(h.count(), 100);
        let p50 = h.quantile_us(0.5).unwrap();
        assert!(p50 > 0.0 && p50 <= 25.0, "{p50}");
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((1000.0..=1500.0).contains(&p99), "{p99}");
        // past the last bound: the last bound
        h.observe(Duration::from_secs(5));
        assert_eq!(h.quantile_us(1.0), Some(1e6));
        let mut o = String::new();
        h.prometheus(&mut o);
        assert!(o.contains("edgejoin_result_latency_seconds_bucket{le=\"0.000025\"} 98\n"), "{o}");
        assert!(o.contains("edgejoin_result_latency_seconds_bucket{le=\"+Inf\"} 101\n"), "{o}");
        assert!(o.contains("edgejoin_result_latency_seconds_count 101\n"), "{o}");
    }
}
