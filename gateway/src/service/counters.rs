//! The live service's counters, shared by its tasks: plain numbers that
//! the tasks update and [`super::registry`] reads (names, kinds and help
//! live there), and the result latency histogram.

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

    /// Sum (s), count and per-bucket counts with their upper bounds (s),
    /// the last bucket's bound +Inf.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let bound = LATENCY_BOUNDS_US.get(i).map_or(f64::INFINITY, |&b| b as f64 / 1e6);
                (bound, c.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        (self.sum_us.load(Ordering::Relaxed) as f64 / 1e6, count, buckets)
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
    /// The spool's budget on disk (`[upstream] spool`).
    pub spool_capacity: Counter,
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
    /// 1 while connected and subscribed to the source broker (`/healthz`).
    pub source_connected: Counter,
    /// Results without a Home Assistant sensor: over `[homeassistant] max_sensors`.
    pub homeassistant_unannounced: Counter,
    /// 1 while connected to the upstream broker.
    pub uplink_connected: Counter,
    /// Monotonic ms (since the service started) when the engine loop last
    /// went round (`/healthz`: it is alive while this keeps moving).
    pub engine_heartbeat_ms: Counter,
    /// 1 once the engine thread has ended.
    pub engine_ended: Counter,
    /// Broker delivery of a message → publish of the results it completed.
    pub result_latency: LatencyHistogram,
}

/// Milliseconds on a monotonic clock that starts with the process.
fn mono_ms() -> u64 {
    static T0: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    T0.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// The engine loop is called stalled when it has not gone round for this long
/// (it goes round at least every `tick`; systemd's watchdog allows 30 s).
pub const ENGINE_STALL: Duration = Duration::from_secs(30);

impl ServiceCounters {
    /// The engine loop went round.
    pub fn beat(&self) {
        self.engine_heartbeat_ms.store(mono_ms().max(1), Ordering::Relaxed);
    }

    /// Whether the engine loop is running and went round within [`ENGINE_STALL`].
    pub fn engine_alive(&self) -> bool {
        self.engine_alive_at(mono_ms())
    }

    fn engine_alive_at(&self, now_ms: u64) -> bool {
        // a beat at 0 ms is taken as one (`max(1)`): 0 means none yet
        let beat = self.engine_heartbeat_ms.load(Ordering::Relaxed);
        self.engine_ended.load(Ordering::Relaxed) == 0
            && beat > 0
            && Duration::from_millis(now_ms.saturating_sub(beat)) <= ENGINE_STALL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_is_alive_while_it_beats_and_not_after_it_ended() {
        let c = ServiceCounters::default();
        assert!(!c.engine_alive(), "not before its first beat");
        c.beat();
        assert!(c.engine_alive());
        c.engine_heartbeat_ms.store(1_000, Ordering::Relaxed);
        assert!(c.engine_alive_at(1_000 + 30_000), "went round 30 s ago");
        assert!(!c.engine_alive_at(1_000 + 30_001), "stalled for longer than ENGINE_STALL");
        c.beat();
        c.engine_ended.store(1, Ordering::Relaxed);
        assert!(!c.engine_alive(), "ended");
    }

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
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 101);
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 101);
        assert_eq!(buckets[0], (0.000025, 98));
        assert_eq!(buckets.last().copied(), Some((f64::INFINITY, 1)));
        assert!(sum >= 5.0, "{sum}");
    }
}
