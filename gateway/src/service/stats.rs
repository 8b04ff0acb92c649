//! The engine's counters by name, as one JSON object (for `replay --stats`
//! and, later, the metrics topic).

use serde_json::{json, Map, Value};

use edgejoin_engine::decode::DecodeError;
use edgejoin_engine::engine::Engine;

/// All counters of the engine, keyed by stream and window name.
pub fn snapshot(e: &Engine) -> Value {
    let p = e.pipeline();
    let mut streams = Map::new();
    for (i, s) in p.streams.iter().enumerate() {
        let c = e.stream_counters(i);
        let mut errors = Map::new();
        for d in DecodeError::ALL {
            let n = c.decode_errors[d.index()];
            if n > 0 {
                errors.insert(d.name().into(), n.into());
            }
        }
        streams.insert(
            s.name.clone(),
            json!({
                "received": c.received,
                "decoded": c.decoded,
                "on_time": c.on_time,
                "late_dropped": c.late_dropped,
                "late_routed": c.late_routed,
                "decode_errors": errors,
                "missing_value": c.missing_value,
                "non_numeric_value": c.non_numeric_value,
                "clamped_future": c.clamped_future,
                "watermark": e.stream_watermark(i),
            }),
        );
        if let Some(d) = e.device_watermarks(i) {
            let now = e.now();
            let mut lag = Map::new();
            let mut idle = 0u64;
            for (dev, wm, is_idle) in d.devices(now) {
                idle += u64::from(is_idle);
                if wm > i64::MIN {
                    lag.insert(dev.to_string(), now.saturating_sub(wm).into());
                }
            }
            streams[&s.name]["devices"] = json!({
                "count": lag.len(),
                "idle": idle,
                "holding": d.holding(now).map(|h| h.0.to_string()),
                "evictions": d.evictions,
                "late_after_idle": d.late_after_idle,
                "watermark_lag_ms": lag,
            });
        }
    }
    let mut windows = Map::new();
    for (i, w) in p.windows.iter().enumerate() {
        let c = e.window_counters(i);
        let (keys, open) = e.window_occupancy(i);
        windows.insert(
            w.name.clone(),
            json!({
                "emitted": c.emitted,
                "key_evictions": c.key_evictions,
                "evicted_windows": c.evicted_windows,
                "capacity_evictions": c.capacity_evictions,
                "late": c.late,
                "non_finite": c.non_finite,
                "live_keys": keys,
                "open_windows": open,
            }),
        );
    }
    let mut joins = Map::new();
    for (i, j) in p.joins.iter().enumerate() {
        let c = e.join_counters(i);
        let (keys, left, right) = e.join_occupancy(i);
        joins.insert(
            j.name.clone(),
            json!({
                "matches": c.matches,
                "unmatched": c.unmatched,
                "dropped_matches": c.dropped_matches,
                "late_after_idle": c.late_after_idle,
                "capacity_evictions": { "left": c.capacity_evictions[0], "right": c.capacity_evictions[1] },
                "key_evictions": c.key_evictions,
                "evicted_elements": c.evicted_elements,
                "watermark": e.join_watermark(i),
                "live_keys": keys,
                "buffered": { "left": left, "right": right },
            }),
        );
    }
    let mut devices = Map::new();
    for (name, r) in e.skew_reports() {
        devices.insert(
            name,
            json!({
                "offset_ms": (r.offset_ms * 1000.0).round() / 1000.0,
                "drift_ppm": (r.drift_ppm * 100.0).round() / 100.0,
                "samples": r.samples,
                "steps": r.steps,
                "spread_ms": (r.spread_ms * 1000.0).round() / 1000.0,
                "clamped": r.clamped,
            }),
        );
    }
    json!({
        "unrouted": e.global_counters().unrouted,
        "devices": devices,
        "device_evictions": e.skew_evictions(),
        "streams": streams,
        "windows": windows,
        "joins": joins,
    })
}
