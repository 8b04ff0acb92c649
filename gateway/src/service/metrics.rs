//! What the service reports about itself: counters shared by its tasks, the
//! stats message published on the stats topic (JSON: the engine's counters
//! plus the service's), and the same in Prometheus text format.

use std::fmt::Write as _;
use std::time::Duration;

use edgejoin_engine::decode::DecodeError;
use edgejoin_engine::engine::Engine;

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

    fn prometheus(&self, o: &mut String) {
        let name = "edgejoin_result_latency_seconds";
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
    /// Times the MQTT client's request queue was full and acknowledgements had
    /// to wait (all are sent later, in order).
    pub acks_deferred: Counter,
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
    /// Broker delivery of a message → publish of the results it completed.
    pub result_latency: LatencyHistogram,
}

impl ServiceCounters {
    fn all(&self) -> [(&'static str, u64); 27] {
        let g = |a: &Counter| a.load(Ordering::Relaxed);
        [
            ("received", g(&self.received)),
            ("processed", g(&self.processed)),
            ("redeliveries_skipped", g(&self.redeliveries_skipped)),
            ("acks_deferred", g(&self.acks_deferred)),
            ("results", g(&self.results)),
            ("delivered", g(&self.delivered)),
            ("spool_depth", g(&self.spool_depth)),
            ("spool_bytes", g(&self.spool_bytes)),
            ("spool_dropped", g(&self.spool_dropped)),
            ("spool_refused", g(&self.spool_refused)),
            ("spool_errors", g(&self.spool_errors)),
            ("checkpoints", g(&self.checkpoints)),
            ("checkpoint_failures", g(&self.checkpoint_failures)),
            ("checkpoint_bytes", g(&self.checkpoint_bytes)),
            ("source_connects", g(&self.source_connects)),
            ("source_errors", g(&self.source_errors)),
            ("uplink_connects", g(&self.uplink_connects)),
            ("uplink_errors", g(&self.uplink_errors)),
            ("processing_delay_ms", g(&self.processing_delay_ms)),
            ("i2c_errors", g(&self.i2c_errors)),
            ("last_processed_unix_ms", g(&self.last_processed_unix_ms)),
            ("payload_truncated", g(&self.payload_truncated)),
            ("wal_lost_inputs", g(&self.wal_lost_inputs)),
            ("spool_damaged", g(&self.spool_damaged)),
            ("storage_full_pauses", g(&self.storage_full_pauses)),
            ("storage_paused", g(&self.storage_paused)),
            ("metrics_connections_refused", g(&self.metrics_connections_refused)),
        ]
    }
}

/// The stats message: the engine's counters and the service's, as JSON.
pub fn stats_json(e: &Engine, c: &ServiceCounters, rate: f64, uptime: Duration) -> String {
    let mut v = crate::service::stats::snapshot(e);
    let mut svc = serde_json::Map::new();
    for (k, n) in c.all() {
        svc.insert(k.into(), n.into());
    }
    svc.insert("rate_per_s".into(), ((rate * 10.0).round() / 10.0).into());
    svc.insert("uptime_s".into(), uptime.as_secs().into());
    svc.insert("gateway_ms".into(), e.now().into());
    for (name, q) in [("result_latency_p50_us", 0.5), ("result_latency_p99_us", 0.99)] {
        if let Some(us) = c.result_latency.quantile_us(q) {
            svc.insert(name.into(), (us.round() as u64).into());
        }
    }
    v["service"] = serde_json::Value::Object(svc);
    v.to_string()
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The same in Prometheus text format.
pub fn prometheus(e: &Engine, c: &ServiceCounters) -> String {
    let mut o = String::new();
    for (k, n) in c.all() {
        let _ = writeln!(
            o,
            "# TYPE edgejoin_{k} {}",
            if k.starts_with("spool_depth")
                || k == "storage_paused"
                || k.ends_with("bytes")
                || k.ends_with("_ms")
            {
                "gauge"
            } else {
                "counter"
            }
        );
        let _ = writeln!(o, "edgejoin_{k} {n}");
    }
    c.result_latency.prometheus(&mut o);
    let p = e.pipeline();
    let now = e.now();
    for (i, s) in p.streams.iter().enumerate() {
        let st = e.stream_counters(i);
        let l = label(&s.name);
        for (k, n) in [
            ("received", st.received),
            ("decoded", st.decoded),
            ("on_time", st.on_time),
            ("late_dropped", st.late_dropped),
            ("late_routed", st.late_routed),
            ("missing_value", st.missing_value),
            ("non_numeric_value", st.non_numeric_value),
            ("clamped_future", st.clamped_future),
        ] {
            let _ = writeln!(o, "edgejoin_stream_{k}_total{{stream=\"{l}\"}} {n}");
        }
        for d in DecodeError::ALL {
            let _ = writeln!(
                o,
                "edgejoin_stream_decode_errors_total{{stream=\"{l}\",reason=\"{}\"}} {}",
                d.name(),
                st.decode_errors[d.index()]
            );
        }
        if let Some(wm) = e.stream_watermark(i) {
            let _ =
                writeln!(o, "edgejoin_stream_watermark_lag_ms{{stream=\"{l}\"}} {}", now.saturating_sub(wm));
        }
        if let Some(d) = e.device_watermarks(i) {
            let mut idle = 0u64;
            for (dev, wm, is_idle) in d.devices(now) {
                idle += u64::from(is_idle);
                if wm > i64::MIN {
                    let _ = writeln!(
                        o,
                        "edgejoin_stream_device_watermark_lag_ms{{stream=\"{l}\",device=\"{}\"}} {}",
                        label(dev.as_str()),
                        now.saturating_sub(wm)
                    );
                }
            }
            if let Some((dev, _)) = d.holding(now) {
                let _ = writeln!(
                    o,
                    "edgejoin_stream_holding_device{{stream=\"{l}\",device=\"{}\"}} 1",
                    label(dev.as_str())
                );
            }
            let _ = writeln!(o, "edgejoin_stream_idle_devices{{stream=\"{l}\"}} {idle}");
            let _ = writeln!(o, "edgejoin_stream_device_evictions_total{{stream=\"{l}\"}} {}", d.evictions);
            let _ =
                writeln!(o, "edgejoin_stream_late_after_idle_total{{stream=\"{l}\"}} {}", d.late_after_idle);
        }
    }
    for (i, w) in p.windows.iter().enumerate() {
        let c = e.window_counters(i);
        let (keys, open) = e.window_occupancy(i);
        let l = label(&w.name);
        for (k, n) in [
            ("emitted_total", c.emitted),
            ("key_evictions_total", c.key_evictions),
            ("evicted_windows_total", c.evicted_windows),
            ("capacity_evictions_total", c.capacity_evictions),
            ("late_total", c.late),
            ("non_finite_total", c.non_finite),
            ("live_keys", keys as u64),
            ("open_windows", open as u64),
        ] {
            let _ = writeln!(o, "edgejoin_window_{k}{{window=\"{l}\"}} {n}");
        }
    }
    for (i, j) in p.joins.iter().enumerate() {
        let c = e.join_counters(i);
        let (keys, left, right) = e.join_occupancy(i);
        let l = label(&j.name);
        for (k, n) in [
            ("matches_total", c.matches),
            ("unmatched_total", c.unmatched),
            ("dropped_matches_total", c.dropped_matches),
            ("late_after_idle_total", c.late_after_idle),
            ("capacity_evictions_left_total", c.capacity_evictions[0]),
            ("capacity_evictions_right_total", c.capacity_evictions[1]),
            ("key_evictions_total", c.key_evictions),
            ("live_keys", keys as u64),
            ("buffered_left", left as u64),
            ("buffered_right", right as u64),
        ] {
            let _ = writeln!(o, "edgejoin_join_{k}{{join=\"{l}\"}} {n}");
        }
    }
    for (dev, r) in e.skew_reports() {
        let l = label(&dev);
        let _ = writeln!(o, "edgejoin_device_offset_ms{{device=\"{l}\"}} {:.3}", r.offset_ms);
        let _ = writeln!(o, "edgejoin_device_drift_ppm{{device=\"{l}\"}} {:.3}", r.drift_ppm);
        let _ = writeln!(o, "edgejoin_device_steps_total{{device=\"{l}\"}} {}", r.steps);
        let _ = writeln!(o, "edgejoin_device_spread_ms{{device=\"{l}\"}} {:.3}", r.spread_ms);
    }
    o
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
