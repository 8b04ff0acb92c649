//! The one list of what edgejoin reports: every counter and gauge, with its
//! place in the stats JSON, its Prometheus name, its kind and its help, and
//! the code that reads it from the engine or the service. The stats topic
//! (and `replay --stats`) and the Prometheus text are both rendered from the
//! samples collected here ([`super::metrics`]), so they cannot drift apart.
//!
//! A family's JSON path and Prometheus name are templates: `{label}` is
//! replaced by the sample's label value; labels a Prometheus name does not
//! use become `{label="value"}` pairs.

use std::time::Duration;

use edgejoin_engine::decode::DecodeError;
use edgejoin_engine::engine::Engine;

use super::counters::{Counter, Ordering, ServiceCounters};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (restarts at 0 with the process or the state).
    Counter,
    /// A level: it goes up and down.
    Gauge,
}

/// The unit a family is kept in, and what Prometheus gets (base units,
/// named in the metric: `_seconds`, `_bytes`, `_ratio`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A count or a level without a unit.
    One,
    Bytes,
    /// Milliseconds (or Unix ms): seconds in Prometheus.
    Ms,
    /// Parts per million: a ratio in Prometheus.
    Ppm,
}

impl Unit {
    /// The factor from the kept value to the exported one.
    pub fn scale(self) -> f64 {
        match self {
            Unit::One | Unit::Bytes => 1.0,
            Unit::Ms => 1e-3,
            Unit::Ppm => 1e-6,
        }
    }
}

/// One metric family.
#[derive(Debug)]
pub struct Family {
    /// Where it sits in the stats JSON (dot-separated), if it does.
    pub json: Option<&'static str>,
    /// Its Prometheus name after `edgejoin_`, if it is exported there,
    /// without the unit and `_total` (the encoder adds them).
    pub prom: Option<&'static str>,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
}

/// A value as read.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    U(u64),
    I(i64),
    F(f64),
    /// Not known yet (JSON null; not exported to Prometheus).
    None,
    /// A name (JSON only).
    Text(String),
}

/// One reading of a family, for one owner.
#[derive(Clone, Debug)]
pub struct Sample {
    pub family: &'static Family,
    pub labels: Vec<(&'static str, String)>,
    pub val: Val,
}

macro_rules! families {
    ($($id:ident: $json:expr, $prom:expr, $kind:ident, $unit:ident, $help:expr;)*) => {
        $(pub static $id: Family = Family { json: $json, prom: $prom, kind: Kind::$kind, unit: Unit::$unit, help: $help };)*
        /// Every family, in the order Prometheus lists them.
        pub static ALL: &[&Family] = &[$(&$id),*];
    };
}

families! {
    // the service
    RECEIVED: Some("service.received"), Some("received"), Counter, One, "Messages received from the source broker.";
    PROCESSED: Some("service.processed"), Some("processed"), Counter, One, "Messages run through the engine (durable mode: counted once the log's fsync holds them and their results are spooled).";
    REDELIVERIES_SKIPPED: Some("service.redeliveries_skipped"), Some("redeliveries_skipped"), Counter, One, "Broker redeliveries of messages already logged: acknowledged again, not processed twice.";
    ACKS_DEFERRED: Some("service.acks_deferred"), Some("acks_deferred"), Counter, One, "Turns the acknowledgement queue was full and acknowledgements waited in the ledger (all are sent later, in order).";
    INTAKE_HELD: Some("service.intake_held"), Some("intake_held"), Counter, One, "Times reading from the source broker stopped until owed acknowledgements went out (a flood outran them).";
    RESULTS: Some("service.results"), Some("results"), Counter, One, "Results appended to the spool.";
    DELIVERED: Some("service.delivered"), Some("delivered"), Counter, One, "Results acknowledged by the upstream broker.";
    SPOOL_DEPTH: Some("service.spool_depth"), Some("spool_depth"), Gauge, One, "Results in the spool not yet delivered.";
    SPOOL_BYTES: Some("service.spool_bytes"), Some("spool"), Gauge, Bytes, "Bytes the spool takes on disk.";
    SPOOL_CAPACITY: Some("service.spool_capacity"), Some("spool_capacity"), Gauge, Bytes, "The spool's budget on disk ([upstream] spool): spool bytes against it say how full it is.";
    SPOOL_DROPPED: Some("service.spool_dropped"), Some("spool_dropped"), Counter, One, "Undelivered results dropped (drop_oldest, or damaged records).";
    SPOOL_REFUSED: Some("service.spool_refused"), Some("spool_refused"), Counter, One, "New results refused by a full spool (refuse_new).";
    SPOOL_ERRORS: Some("service.spool_errors"), Some("spool_errors"), Counter, One, "Results the spool could not append (IO errors).";
    CHECKPOINTS: Some("service.checkpoints"), Some("checkpoints"), Counter, One, "Checkpoints written.";
    CHECKPOINT_FAILURES: Some("service.checkpoint_failures"), Some("checkpoint_failures"), Counter, One, "Checkpoints that failed (written or read).";
    CHECKPOINT_BYTES: Some("service.checkpoint_bytes"), Some("checkpoint_size"), Gauge, Bytes, "Size of the last checkpoint in bytes.";
    SOURCE_CONNECTS: Some("service.source_connects"), Some("source_connects"), Counter, One, "Connections made to the source broker.";
    SOURCE_ERRORS: Some("service.source_errors"), Some("source_errors"), Counter, One, "Errors of the source connection.";
    UPLINK_CONNECTS: Some("service.uplink_connects"), Some("uplink_connects"), Counter, One, "Connections made to the upstream broker.";
    UPLINK_ERRORS: Some("service.uplink_errors"), Some("uplink_errors"), Counter, One, "Errors of the upstream connection.";
    PROCESSING_DELAY_MS: Some("service.processing_delay_ms"), Some("processing_delay"), Gauge, Ms, "Receipt of the oldest message of the last commit to its results spooled.";
    I2C_ERRORS: Some("service.i2c_errors"), Some("i2c_errors"), Counter, One, "Failed reads or opens of local I2C sensors.";
    LAST_PROCESSED_UNIX_MS: Some("service.last_processed_unix_ms"), Some("last_processed_timestamp"), Gauge, Ms, "Wall clock when the engine last spooled the results of messages (durable mode: at their fsync) (Unix time).";
    PAYLOAD_TRUNCATED: Some("service.payload_truncated"), Some("payload_truncated"), Counter, One, "Source messages over max_payload, cut before the MQTT client read them.";
    WAL_LOST_INPUTS: Some("service.wal_lost_inputs"), Some("wal_lost_inputs"), Counter, One, "Logged inputs lost to damaged write-ahead log records (found at start).";
    SPOOL_DAMAGED: Some("service.spool_damaged"), Some("spool_damaged"), Counter, One, "Undelivered results lost to damaged spool records (found at start).";
    STORAGE_FULL_PAUSES: Some("service.storage_full_pauses"), Some("storage_full_pauses"), Counter, One, "Times the state directory was full and intake paused.";
    STORAGE_PAUSED: Some("service.storage_paused"), Some("storage_paused"), Gauge, One, "1 while intake is paused because the state directory is full.";
    METRICS_REFUSED: Some("service.metrics_connections_refused"), Some("metrics_connections_refused"), Counter, One, "Metrics connections turned away (over the limit of open connections).";
    COMMITS: Some("service.commits"), Some("commits"), Counter, One, "Group commits: fsyncs of the write-ahead log that made the messages processed since the last durable (then acknowledged, their results spooled).";
    BROKER_WINDOW: Some("service.broker_window"), Some("broker_window"), Gauge, One, "The source broker's QoS 1 in-flight window as the group commit learned it (most unacknowledged messages held at a commit).";
    STATE_BYTES_WRITTEN: Some("service.state_bytes_written"), Some("state_written"), Counter, Bytes, "Bytes written to the write-ahead log and the spool (what reaches the disk is this plus the file system's overhead).";
    SOURCE_CONNECTED: Some("service.source_connected"), Some("source_connected"), Gauge, One, "1 while connected and subscribed to the source broker.";
    UPLINK_CONNECTED: Some("service.uplink_connected"), Some("uplink_connected"), Gauge, One, "1 while connected to the upstream broker.";
    HOMEASSISTANT_UNANNOUNCED: Some("service.homeassistant_unannounced"), Some("homeassistant_unannounced"), Counter, One, "Results of an output and key without a Home Assistant sensor: over [homeassistant] max_sensors.";
    RATE: Some("service.rate_per_s"), None, Gauge, One, "Messages processed per second over the last stats interval.";
    UPTIME: Some("service.uptime_s"), None, Gauge, One, "Seconds since the service started.";
    GATEWAY_MS: Some("service.gateway_ms"), Some("gateway_time"), Gauge, Ms, "The engine's gateway clock (Unix time).";
    LATENCY_P50: Some("service.result_latency_p50_us"), None, Gauge, One, "Median result latency in µs (see edgejoin_result_latency_seconds).";
    LATENCY_P99: Some("service.result_latency_p99_us"), None, Gauge, One, "99th percentile result latency in µs.";
    // the engine, globally
    UNROUTED: Some("unrouted"), Some("unrouted"), Counter, One, "Messages whose topic matched no stream.";
    DEVICE_EVICTIONS: Some("device_evictions"), Some("device_evictions"), Counter, One, "Devices whose clock estimate was evicted to make room for a new device.";
    // streams
    STREAM_RECEIVED: Some("streams.{stream}.received"), Some("stream_received"), Counter, One, "Messages whose topic matched the stream.";
    STREAM_DECODED: Some("streams.{stream}.decoded"), Some("stream_decoded"), Counter, One, "Messages decoded into an event.";
    STREAM_ON_TIME: Some("streams.{stream}.on_time"), Some("stream_on_time"), Counter, One, "Events at or above the watermark.";
    STREAM_LATE_DROPPED: Some("streams.{stream}.late_dropped"), Some("stream_late_dropped"), Counter, One, "Late events dropped (late = \"drop\").";
    STREAM_LATE_ROUTED: Some("streams.{stream}.late_routed"), Some("stream_late_routed"), Counter, One, "Late events routed to their topic (late = \"route\").";
    STREAM_DECODE_ERRORS: Some("streams.{stream}.decode_errors.{reason}"), Some("stream_decode_errors"), Counter, One, "Messages that did not decode, by reason.";
    STREAM_MISSING_VALUE: Some("streams.{stream}.missing_value"), Some("stream_missing_value"), Counter, One, "Configured values absent from a payload.";
    STREAM_NON_NUMERIC: Some("streams.{stream}.non_numeric_value"), Some("stream_non_numeric_value"), Counter, One, "Configured values that were not numbers.";
    STREAM_CLAMPED_FUTURE: Some("streams.{stream}.clamped_future"), Some("stream_clamped_future"), Counter, One, "Timestamps beyond max_future clamped.";
    STREAM_WATERMARK: Some("streams.{stream}.watermark"), Some("stream_watermark_timestamp"), Gauge, Ms, "The stream's watermark (Unix time; JSON null before its first event).";
    STREAM_WATERMARK_LAG: None, Some("stream_watermark_lag"), Gauge, Ms, "Gateway time minus the stream's watermark.";
    STREAM_DEVICES: Some("streams.{stream}.devices.count"), Some("stream_devices"), Gauge, One, "Devices with a watermark (watermark = \"device\").";
    STREAM_IDLE_DEVICES: Some("streams.{stream}.devices.idle"), Some("stream_idle_devices"), Gauge, One, "Devices idle past idle_timeout, not holding the stream.";
    STREAM_HOLDING: Some("streams.{stream}.devices.holding"), None, Gauge, One, "The device whose watermark holds the stream's.";
    STREAM_HOLDING_DEVICE: None, Some("stream_holding_device"), Gauge, One, "1 for the device whose watermark holds the stream's.";
    STREAM_DEVICE_EVICTIONS: Some("streams.{stream}.devices.evictions"), Some("stream_device_evictions"), Counter, One, "Devices evicted from the stream's device watermarks.";
    STREAM_LATE_AFTER_IDLE: Some("streams.{stream}.devices.late_after_idle"), Some("stream_late_after_idle"), Counter, One, "Events of a device below the stream after idleness let it advance.";
    STREAM_DEVICE_LAG: Some("streams.{stream}.devices.watermark_lag_ms.{device}"), Some("stream_device_watermark_lag"), Gauge, Ms, "Gateway time minus a device's watermark.";
    // windows
    WINDOW_EMITTED: Some("windows.{window}.emitted"), Some("window_emitted"), Counter, One, "Windows closed and emitted.";
    WINDOW_KEY_EVICTIONS: Some("windows.{window}.key_evictions"), Some("window_key_evictions"), Counter, One, "Keys evicted (least recently used) to make room for a new key.";
    WINDOW_EVICTED_WINDOWS: Some("windows.{window}.evicted_windows"), Some("window_evicted_windows"), Counter, One, "Open windows lost with evicted keys.";
    WINDOW_CAPACITY_EVICTIONS: Some("windows.{window}.capacity_evictions"), Some("window_capacity_evictions"), Counter, One, "Open windows pushed out of a full key's ring.";
    WINDOW_LATE: Some("windows.{window}.late"), Some("window_late"), Counter, One, "Inputs for windows already closed.";
    WINDOW_NON_FINITE: Some("windows.{window}.non_finite"), Some("window_non_finite"), Counter, One, "Aggregates that overflowed and were emitted as null.";
    WINDOW_LIVE_KEYS: Some("windows.{window}.live_keys"), Some("window_live_keys"), Gauge, One, "Keys with open windows.";
    WINDOW_OPEN: Some("windows.{window}.open_windows"), Some("window_open_windows"), Gauge, One, "Open windows.";
    // joins
    JOIN_MATCHES: Some("joins.{join}.matches"), Some("join_matches"), Counter, One, "Matched rows emitted.";
    JOIN_UNMATCHED: Some("joins.{join}.unmatched"), Some("join_unmatched"), Counter, One, "Left-outer rows emitted without a match.";
    JOIN_DROPPED_MATCHES: Some("joins.{join}.dropped_matches"), Some("join_dropped_matches"), Counter, One, "Matches over max_matches, dropped.";
    JOIN_LATE_AFTER_IDLE: Some("joins.{join}.late_after_idle"), Some("join_late_after_idle"), Counter, One, "Inputs below the join's frontier after an idle input let it advance.";
    JOIN_CAPACITY_EVICTIONS: Some("joins.{join}.capacity_evictions.{side}"), Some("join_capacity_evictions"), Counter, One, "Elements pushed out of a full per-key buffer before release.";
    JOIN_KEY_EVICTIONS: Some("joins.{join}.key_evictions"), Some("join_key_evictions"), Counter, One, "Keys evicted (least recently used) to make room for a new key.";
    JOIN_EVICTED_ELEMENTS: Some("joins.{join}.evicted_elements"), Some("join_evicted_elements"), Counter, One, "Buffered elements lost with evicted keys.";
    JOIN_WATERMARK: Some("joins.{join}.watermark"), Some("join_watermark_timestamp"), Gauge, Ms, "The join's frontier (Unix time; JSON null before both inputs progress).";
    JOIN_LIVE_KEYS: Some("joins.{join}.live_keys"), Some("join_live_keys"), Gauge, One, "Keys with buffered elements.";
    JOIN_BUFFERED: Some("joins.{join}.buffered.{side}"), Some("join_buffered"), Gauge, One, "Elements buffered, by side.";
    // device clocks (clock = "corrected")
    DEVICE_OFFSET: Some("devices.{device}.offset_ms"), Some("device_clock_offset"), Gauge, Ms, "Added to the device's time to get gateway time (includes the path's minimum delay).";
    DEVICE_DRIFT: Some("devices.{device}.drift_ppm"), Some("device_clock_drift"), Gauge, Ppm, "How much faster the gateway clock runs than the device's (JSON: ppm; Prometheus: a ratio).";
    DEVICE_SAMPLES: Some("devices.{device}.samples"), Some("device_clock_samples"), Counter, One, "Samples the device's clock estimate has seen.";
    DEVICE_STEPS: Some("devices.{device}.steps"), Some("device_clock_steps"), Counter, One, "Clock steps detected (reboots, NTP steps).";
    DEVICE_SPREAD: Some("devices.{device}.spread_ms"), Some("device_clock_spread"), Gauge, Ms, "Typical delay jitter above the fitted line.";
    DEVICE_CLAMPED: Some("devices.{device}.clamped"), Some("device_clock_clamped"), Counter, One, "Corrected times clamped to their receive time.";
    DEVICE_UNCERTAINTY: Some("devices.{device}.uncertainty_ms"), Some("device_clock_uncertainty"), Gauge, Ms, "How much later than true time + the path's minimum delay a corrected time may be (large while a clock segment is young).";
}

/// Collects samples, with the labels of the owner being read, and the JSON
/// objects that exist even when empty (a pipeline without joins still has
/// `"joins": {}`).
#[derive(Default, Debug)]
pub struct Samples {
    pub samples: Vec<Sample>,
    pub objects: Vec<String>,
}

impl Samples {
    fn add(&mut self, family: &'static Family, labels: &[(&'static str, &str)], val: Val) {
        let labels = labels.iter().map(|&(k, v)| (k, v.to_string())).collect();
        self.samples.push(Sample { family, labels, val });
    }

    /// Everything the engine counts.
    pub fn engine(&mut self, e: &Engine) {
        let p = e.pipeline();
        let now = e.now();
        self.objects.extend(["streams", "windows", "joins", "devices"].map(String::from));
        self.add(&UNROUTED, &[], Val::U(e.global_counters().unrouted));
        self.add(&DEVICE_EVICTIONS, &[], Val::U(e.skew_evictions()));
        for (i, s) in p.streams.iter().enumerate() {
            let c = e.stream_counters(i);
            let l = [("stream", s.name.as_str())];
            for (f, n) in [
                (&STREAM_RECEIVED, c.received),
                (&STREAM_DECODED, c.decoded),
                (&STREAM_ON_TIME, c.on_time),
                (&STREAM_LATE_DROPPED, c.late_dropped),
                (&STREAM_LATE_ROUTED, c.late_routed),
                (&STREAM_MISSING_VALUE, c.missing_value),
                (&STREAM_NON_NUMERIC, c.non_numeric_value),
                (&STREAM_CLAMPED_FUTURE, c.clamped_future),
            ] {
                self.add(f, &l, Val::U(n));
            }
            self.objects.push(format!("streams.{}.decode_errors", s.name));
            for d in DecodeError::ALL {
                let l = [("stream", s.name.as_str()), ("reason", d.name())];
                self.add(&STREAM_DECODE_ERRORS, &l, Val::U(c.decode_errors[d.index()]));
            }
            let wm = e.stream_watermark(i);
            self.add(&STREAM_WATERMARK, &l, wm.map_or(Val::None, Val::I));
            self.add(&STREAM_WATERMARK_LAG, &l, wm.map_or(Val::None, |w| Val::I(now.saturating_sub(w))));
            if let Some(d) = e.device_watermarks(i) {
                self.objects.push(format!("streams.{}.devices.watermark_lag_ms", s.name));
                let (mut idle, mut count) = (0u64, 0u64);
                for (dev, wm, is_idle) in d.devices(now) {
                    idle += u64::from(is_idle);
                    if wm > i64::MIN {
                        count += 1;
                        let l = [("stream", s.name.as_str()), ("device", dev.as_str())];
                        self.add(&STREAM_DEVICE_LAG, &l, Val::I(now.saturating_sub(wm)));
                    }
                }
                self.add(&STREAM_DEVICES, &l, Val::U(count));
                self.add(&STREAM_IDLE_DEVICES, &l, Val::U(idle));
                match d.holding(now) {
                    Some((dev, _)) => {
                        self.add(&STREAM_HOLDING, &l, Val::Text(dev.to_string()));
                        let l = [("stream", s.name.as_str()), ("device", dev.as_str())];
                        self.add(&STREAM_HOLDING_DEVICE, &l, Val::U(1));
                    }
                    None => self.add(&STREAM_HOLDING, &l, Val::None),
                }
                self.add(&STREAM_DEVICE_EVICTIONS, &l, Val::U(d.evictions));
                self.add(&STREAM_LATE_AFTER_IDLE, &l, Val::U(d.late_after_idle));
            }
        }
        for (i, w) in p.windows.iter().enumerate() {
            let c = e.window_counters(i);
            let (keys, open) = e.window_occupancy(i);
            let l = [("window", w.name.as_str())];
            for (f, n) in [
                (&WINDOW_EMITTED, c.emitted),
                (&WINDOW_KEY_EVICTIONS, c.key_evictions),
                (&WINDOW_EVICTED_WINDOWS, c.evicted_windows),
                (&WINDOW_CAPACITY_EVICTIONS, c.capacity_evictions),
                (&WINDOW_LATE, c.late),
                (&WINDOW_NON_FINITE, c.non_finite),
                (&WINDOW_LIVE_KEYS, keys as u64),
                (&WINDOW_OPEN, open as u64),
            ] {
                self.add(f, &l, Val::U(n));
            }
        }
        for (i, j) in p.joins.iter().enumerate() {
            let c = e.join_counters(i);
            let (keys, left, right) = e.join_occupancy(i);
            let l = [("join", j.name.as_str())];
            for (f, n) in [
                (&JOIN_MATCHES, c.matches),
                (&JOIN_UNMATCHED, c.unmatched),
                (&JOIN_DROPPED_MATCHES, c.dropped_matches),
                (&JOIN_LATE_AFTER_IDLE, c.late_after_idle),
                (&JOIN_KEY_EVICTIONS, c.key_evictions),
                (&JOIN_EVICTED_ELEMENTS, c.evicted_elements),
                (&JOIN_LIVE_KEYS, keys as u64),
            ] {
                self.add(f, &l, Val::U(n));
            }
            for (side, evicted, held) in
                [("left", c.capacity_evictions[0], left), ("right", c.capacity_evictions[1], right)]
            {
                let l = [("join", j.name.as_str()), ("side", side)];
                self.add(&JOIN_CAPACITY_EVICTIONS, &l, Val::U(evicted));
                self.add(&JOIN_BUFFERED, &l, Val::U(held as u64));
            }
            self.add(&JOIN_WATERMARK, &l, e.join_watermark(i).map_or(Val::None, Val::I));
        }
        for (dev, r) in e.skew_reports() {
            let l = [("device", dev.as_str())];
            let round = |v: f64, scale: f64| (v * scale).round() / scale;
            self.add(&DEVICE_OFFSET, &l, Val::F(round(r.offset_ms, 1000.0)));
            self.add(&DEVICE_DRIFT, &l, Val::F(round(r.drift_ppm, 100.0)));
            self.add(&DEVICE_SAMPLES, &l, Val::U(r.samples));
            self.add(&DEVICE_STEPS, &l, Val::U(r.steps));
            self.add(&DEVICE_SPREAD, &l, Val::F(round(r.spread_ms, 1000.0)));
            self.add(&DEVICE_CLAMPED, &l, Val::U(r.clamped));
            self.add(&DEVICE_UNCERTAINTY, &l, Val::F(round(r.uncertainty_ms, 1000.0)));
        }
    }

    /// Everything the live service counts; `rate` and `uptime` over the last stats interval.
    pub fn service(&mut self, c: &ServiceCounters, rate: f64, uptime: Duration, gateway_ms: i64) {
        let fields: [(&'static Family, &Counter); 35] = [
            (&RECEIVED, &c.received),
            (&PROCESSED, &c.processed),
            (&REDELIVERIES_SKIPPED, &c.redeliveries_skipped),
            (&ACKS_DEFERRED, &c.acks_deferred),
            (&INTAKE_HELD, &c.intake_held),
            (&RESULTS, &c.results),
            (&DELIVERED, &c.delivered),
            (&SPOOL_DEPTH, &c.spool_depth),
            (&SPOOL_BYTES, &c.spool_bytes),
            (&SPOOL_CAPACITY, &c.spool_capacity),
            (&SPOOL_DROPPED, &c.spool_dropped),
            (&SPOOL_REFUSED, &c.spool_refused),
            (&SPOOL_ERRORS, &c.spool_errors),
            (&CHECKPOINTS, &c.checkpoints),
            (&CHECKPOINT_FAILURES, &c.checkpoint_failures),
            (&CHECKPOINT_BYTES, &c.checkpoint_bytes),
            (&SOURCE_CONNECTS, &c.source_connects),
            (&SOURCE_ERRORS, &c.source_errors),
            (&UPLINK_CONNECTS, &c.uplink_connects),
            (&UPLINK_ERRORS, &c.uplink_errors),
            (&PROCESSING_DELAY_MS, &c.processing_delay_ms),
            (&I2C_ERRORS, &c.i2c_errors),
            (&LAST_PROCESSED_UNIX_MS, &c.last_processed_unix_ms),
            (&PAYLOAD_TRUNCATED, &c.payload_truncated),
            (&WAL_LOST_INPUTS, &c.wal_lost_inputs),
            (&SPOOL_DAMAGED, &c.spool_damaged),
            (&STORAGE_FULL_PAUSES, &c.storage_full_pauses),
            (&STORAGE_PAUSED, &c.storage_paused),
            (&METRICS_REFUSED, &c.metrics_connections_refused),
            (&COMMITS, &c.commits),
            (&BROKER_WINDOW, &c.broker_window),
            (&STATE_BYTES_WRITTEN, &c.state_bytes_written),
            (&SOURCE_CONNECTED, &c.source_connected),
            (&UPLINK_CONNECTED, &c.uplink_connected),
            (&HOMEASSISTANT_UNANNOUNCED, &c.homeassistant_unannounced),
        ];
        for (f, n) in fields {
            self.add(f, &[], Val::U(n.load(Ordering::Relaxed)));
        }
        self.add(&RATE, &[], Val::F((rate * 10.0).round() / 10.0));
        self.add(&UPTIME, &[], Val::U(uptime.as_secs()));
        self.add(&GATEWAY_MS, &[], Val::I(gateway_ms));
        for (f, q) in [(&LATENCY_P50, 0.5), (&LATENCY_P99, 0.99)] {
            if let Some(us) = c.result_latency.quantile_us(q) {
                self.add(f, &[], Val::U(us.round() as u64));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_somewhere_once_under_each_name() {
        let mut json = std::collections::BTreeSet::new();
        let mut prom = std::collections::BTreeSet::new();
        for f in ALL {
            assert!(f.json.is_some() || f.prom.is_some(), "{f:?}");
            assert!(!f.help.is_empty());
            if let Some(j) = f.json {
                assert!(json.insert(j), "{j} twice");
            }
            if let Some(p) = f.prom {
                assert!(prom.insert(p), "{p} twice");
                // the encoder adds `_total` and the unit
                assert!(!p.ends_with("_total") && !p.ends_with("_ms") && !p.ends_with("_bytes"), "{p}");
            }
        }
    }
}
