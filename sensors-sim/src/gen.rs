//! Generating a scenario: every message with its true event time, the
//! device's (wrong) timestamp, the network delay, and the time it reaches
//! the broker. Deterministic given the scenario, the start and the seed.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::rng::Rng;
use crate::scenario::{dur, signed_dur, ClockModel, DelayModel, Pair, Scenario, Sensor};

/// What really happened, recorded beside each message.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Truth {
    /// True event time on the gateway's clock.
    pub ts: i64,
    pub device: String,
    /// The device's timestamp minus the true time.
    pub offset_ms: i64,
    /// Arrival minus true time.
    pub delay_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Msg {
    /// When the message reaches the broker (the gateway's receive time).
    pub recv_ms: i64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub truth: Truth,
}

/// One device's clock: maps true time to its timestamp.
struct DeviceClock {
    base: i64,
    origin: i64,
    rate: f64,
    reboot_every: Option<i64>,
    boot_relative: bool,
    /// (when, by how much): an NTP step.
    step: Option<(i64, i64)>,
}

impl DeviceClock {
    fn new(m: &ClockModel, start: i64, rng: &mut Rng) -> Result<Self, String> {
        let offset = m.offset.as_deref().map(dur).transpose()?.unwrap_or(0);
        let spread = m.offset_spread.as_deref().map(dur).transpose()?.unwrap_or(0) as f64;
        let offset = offset + rng.range(-spread, spread) as i64;
        let rate = 1.0 + rng.range(-m.drift_ppm, m.drift_ppm) / 1e6;
        let uptime = rng.range(3_600_000.0, 3.0 * 86_400_000.0) as i64;
        let step = match (&m.step, &m.step_at) {
            (Some(by), Some(at)) => Some((start + dur(at)?, signed_dur(by)?)),
            (None, None) => None,
            _ => return Err("a clock step needs both `step` and `step_at`".into()),
        };
        Ok(DeviceClock {
            base: if m.boot_relative { uptime } else { start + offset },
            origin: start,
            rate,
            reboot_every: m.reboot_every.as_deref().map(dur).transpose()?,
            boot_relative: m.boot_relative,
            step,
        })
    }

    fn at(&self, t: i64) -> i64 {
        let since = t - self.origin;
        match self.reboot_every {
            Some(every) if every > 0 => {
                let n = since.div_euclid(every);
                if n == 0 {
                    self.base + (since as f64 * self.rate) as i64
                } else {
                    // after a reboot the clock counts from boot (a second before the first reading)
                    let boot_at = n * every;
                    1_000 + ((since - boot_at) as f64 * self.rate) as i64
                }
            }
            _ => self.base + (since as f64 * self.rate) as i64,
        }
        .saturating_add(match self.step {
            Some((at, by)) if t >= at => by,
            _ => 0,
        })
        .max(if self.boot_relative { 0 } else { i64::MIN })
    }
}

struct Network {
    min: f64,
    median: f64,
    sigma: f64,
    exponential: bool,
    spike_p: f64,
    /// `None`: 0.3 × `spike` (drawn as before it could be set: recordings stay the same).
    spike_min: Option<f64>,
    spike: f64,
    duplicate_p: f64,
    straggler_p: f64,
    straggler: f64,
}

impl Network {
    fn new(d: &DelayModel) -> Result<Self, String> {
        Ok(Network {
            min: dur(&d.min)? as f64,
            median: dur(&d.median)? as f64,
            sigma: d.sigma,
            exponential: match d.distribution.as_str() {
                "lognormal" => false,
                "exponential" => true,
                other => return Err(format!("delay distribution `{other}`: lognormal or exponential")),
            },
            spike_p: d.spike_p,
            spike_min: d.spike_min.as_deref().map(dur).transpose()?.map(|m| m as f64),
            spike: dur(&d.spike)? as f64,
            duplicate_p: d.duplicate_p,
            straggler_p: d.straggler_p,
            straggler: dur(&d.straggler)? as f64,
        })
    }

    fn delay(&self, rng: &mut Rng) -> i64 {
        let mut d = self.min
            + if self.exponential {
                self.median * -(1.0 - rng.unit()).ln() / std::f64::consts::LN_2
            } else {
                rng.lognormal(self.median, self.sigma)
            };
        if rng.chance(self.spike_p) {
            d += match self.spike_min {
                Some(lo) => rng.range(lo, self.spike),
                None => rng.range(0.3, 1.0) * self.spike,
            };
        }
        if rng.chance(self.straggler_p) {
            d += self.straggler;
        }
        d as i64
    }
}

fn walk(values: &BTreeMap<String, [f64; 2]>, state: &mut Vec<f64>, rng: &mut Rng) {
    if state.is_empty() {
        *state = values.values().map(|[lo, hi]| rng.range(*lo, *hi)).collect();
    }
    for (v, [lo, hi]) in state.iter_mut().zip(values.values()) {
        *v = (*v + rng.normal() * (hi - lo) * 0.05).clamp(*lo, *hi);
    }
}

fn timestamp(unit: &str, ms: i64) -> serde_json::Value {
    match unit {
        "s" => serde_json::json!((ms as f64 / 1000.0 * 1000.0).round() / 1000.0),
        "rfc3339" => {
            let secs = ms.div_euclid(1000);
            let days = secs.div_euclid(86_400);
            let (y, m, d) = civil_from_days(days);
            let sod = secs.rem_euclid(86_400);
            serde_json::json!(format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                sod / 3600,
                sod % 3600 / 60,
                sod % 60,
                ms.rem_euclid(1000)
            ))
        }
        _ => serde_json::json!(ms),
    }
}

/// Civil date of days since 1970-01-01 (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn device_name(prefix: &Option<String>, name: &str, n: u32) -> String {
    format!("{}{}", prefix.clone().unwrap_or_else(|| format!("{name}-")), n + 1)
}

fn render(topic: &str, device: &str) -> String {
    topic.replace("{device}", device)
}

#[allow(clippy::too_many_arguments)]
fn emit(
    out: &mut Vec<(i64, u64, Msg)>,
    order: &mut u64,
    net: &Network,
    rng: &mut Rng,
    topic: String,
    payload: Vec<u8>,
    truth_ts: i64,
    device: &str,
    device_ts: i64,
    min_recv: i64,
) {
    let recv = (truth_ts + net.delay(rng)).max(min_recv);
    let truth = Truth {
        ts: truth_ts,
        device: device.to_string(),
        offset_ms: device_ts - truth_ts,
        delay_ms: recv - truth_ts,
    };
    let dup = rng.chance(net.duplicate_p);
    *order += 1;
    out.push((
        recv,
        *order,
        Msg { recv_ms: recv, topic: topic.clone(), payload: payload.clone(), truth: truth.clone() },
    ));
    if dup {
        let again = recv + 1 + (rng.unit() * 200.0) as i64;
        *order += 1;
        out.push((
            again,
            *order,
            Msg { recv_ms: again, topic, payload, truth: Truth { delay_ms: again - truth_ts, ..truth } },
        ));
    }
}

/// A device's clock is its own, whichever of its sensors stamps a reading:
/// drawn from the scenario seed and the device name only.
fn device_clock(m: &ClockModel, start: i64, seed: u64, device: &str) -> Result<DeviceClock, String> {
    let mut r = Rng::new(seed).fork(&format!("clock/{device}"));
    DeviceClock::new(m, start, &mut r)
}

#[allow(clippy::too_many_arguments)]
fn sensor(
    s: &Sensor,
    start: i64,
    end: i64,
    seed: u64,
    rng: &mut Rng,
    out: &mut Vec<(i64, u64, Msg)>,
    order: &mut u64,
) -> Result<(), String> {
    let every = dur(&s.every)?.max(1) as f64;
    let net = Network::new(&s.delay)?;
    let session = match &s.session {
        Some(x) => Some((dur(&x.active)?, dur(&x.idle)?)),
        None => None,
    };
    let outage = match &s.outage {
        Some(o) => Some((start + dur(&o.at)?, dur(&o.length)?, o.every.as_deref().map(dur).transpose()?)),
        None => None,
    };
    for n in 0..s.devices {
        let device = device_name(&s.device_prefix, &s.name, n);
        let mut r = rng.fork(&format!("{}/{device}", s.name));
        let clock = device_clock(&s.clock, start, seed, &device)?;
        let mut vals = Vec::new();
        let session_phase = r.range(0.0, 1.0);
        let mut t = start as f64 + r.range(0.0, every);
        while (t as i64) < end {
            let ti = t as i64;
            t += every * (1.0 + r.range(-s.jitter, s.jitter));
            if let Some((active, idle)) = session {
                let cycle = (active + idle) as f64;
                let pos = ((ti - start) as f64 + session_phase * cycle).rem_euclid(cycle);
                if pos >= active as f64 {
                    continue;
                }
            }
            walk(&s.values, &mut vals, &mut r);
            let dev_ts = clock.at(ti);
            let payload = if s.format == "number" {
                format!("{:.3}", vals.first().copied().unwrap_or(0.0)).into_bytes()
            } else if s.format == "postcard" {
                // edgejoin's postcard payload: ts in ms, values positional (sorted by name)
                let mut values = heapless::Vec::new();
                for v in vals.iter().take(edgejoin_engine::event::MAX_VALUES) {
                    let _ = values.push(Some((v * 1000.0).round() / 1000.0));
                }
                let p =
                    edgejoin_engine::decode::PostcardPayload { ts: dev_ts, key: None, device: None, values };
                postcard::to_stdvec(&p).map_err(|e| e.to_string())?
            } else {
                let mut obj = serde_json::Map::new();
                obj.insert("ts".into(), timestamp(&s.time_unit, dev_ts));
                for (k, v) in s.values.keys().zip(&vals) {
                    obj.insert(k.clone(), serde_json::json!((v * 1000.0).round() / 1000.0));
                }
                serde_json::Value::Object(obj).to_string().into_bytes()
            };
            let min_recv = match outage {
                Some((at, len, every)) => {
                    // the outage this reading falls in, if any (the latest one begun)
                    let at = match every {
                        Some(e) if e > 0 && ti >= at => at + (ti - at) / e * e,
                        _ => at,
                    };
                    if ti >= at && ti < at + len {
                        at + len + (ti - at) / 1000
                    } else {
                        i64::MIN
                    }
                }
                None => i64::MIN,
            };
            emit(out, order, &net, &mut r, render(&s.topic, &device), payload, ti, &device, dev_ts, min_recv);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn pair(
    pr: &Pair,
    start: i64,
    end: i64,
    seed: u64,
    rng: &mut Rng,
    out: &mut Vec<(i64, u64, Msg)>,
    order: &mut u64,
) -> Result<(), String> {
    let every = dur(&pr.every)?.max(1) as f64;
    let net = Network::new(&pr.delay)?;
    let (lo, hi) = (dur(&pr.follow_after[0])? as f64, dur(&pr.follow_after[1])? as f64);
    let mut id = 0u64;
    for n in 0..pr.devices {
        let device = device_name(&pr.device_prefix, &pr.name, n);
        let mut r = rng.fork(&format!("{}/{device}", pr.name));
        let clock = device_clock(&pr.clock, start, seed, &device)?;
        let mut vals = Vec::new();
        let mut t = start as f64 + r.range(0.0, every);
        while (t as i64) < end {
            let ti = t as i64;
            t += every * (1.0 + r.range(-pr.jitter, pr.jitter));
            id += 1;
            let eid = format!("{}{}-{id}", pr.id_prefix, n + 1);
            walk(&pr.values, &mut vals, &mut r);
            let body = |ts_dev: i64| {
                let mut obj = serde_json::Map::new();
                obj.insert(pr.id_field.clone(), serde_json::json!(eid));
                obj.insert("ts".into(), serde_json::json!(ts_dev));
                for (k, v) in pr.values.keys().zip(&vals) {
                    obj.insert(k.clone(), serde_json::json!((v * 100.0).round() / 100.0));
                }
                serde_json::Value::Object(obj).to_string().into_bytes()
            };
            let dev = clock.at(ti);
            emit(
                out,
                order,
                &net,
                &mut r,
                render(&pr.leader_topic, &device),
                body(dev),
                ti,
                &device,
                dev,
                i64::MIN,
            );
            if r.chance(pr.follow_p) {
                let tf = ti + r.range(lo, hi) as i64;
                let devf = clock.at(tf);
                emit(
                    out,
                    order,
                    &net,
                    &mut r,
                    render(&pr.follower_topic, &device),
                    body(devf),
                    tf,
                    &device,
                    devf,
                    i64::MIN,
                );
            }
        }
    }
    Ok(())
}

/// Every message of the scenario from its own `start` with its own `seed`
/// (a recording anyone can make again).
pub fn generate_as_written(sc: &Scenario) -> Result<Vec<Msg>, String> {
    let start = sc.scenario.start.as_deref().ok_or("the scenario sets no `start`")?;
    let start = edgejoin_engine::decode::rfc3339_to_ms(start.as_bytes())
        .map_err(|_| format!("start `{start}`: not RFC 3339"))?;
    generate(sc, start, sc.scenario.seed.ok_or("the scenario sets no `seed`")?)
}

/// Every message of the scenario from `start_ms` on, in order of arrival.
pub fn generate(sc: &Scenario, start_ms: i64, seed: u64) -> Result<Vec<Msg>, String> {
    let end = start_ms + dur(&sc.scenario.duration)?;
    let mut rng = Rng::new(seed);
    let mut all = Vec::new();
    let mut order = 0u64;
    for s in &sc.sensor {
        let mut r = rng.fork(&s.name);
        sensor(s, start_ms, end, seed, &mut r, &mut all, &mut order)?;
    }
    for p in &sc.pair {
        let mut r = rng.fork(&p.name);
        pair(p, start_ms, end, seed, &mut r, &mut all, &mut order)?;
    }
    all.sort_by_key(|(recv, order, _)| (*recv, *order));
    Ok(all.into_iter().map(|x| x.2).collect())
}

/// The §10 recording line of a message (with its truth).
pub fn record_line(m: &Msg) -> String {
    let mut v = serde_json::json!({"recv_ms": m.recv_ms, "topic": m.topic, "truth": m.truth});
    match std::str::from_utf8(&m.payload) {
        Ok(s) => v["payload"] = serde_json::json!(s),
        Err(_) => {
            use base64::Engine as _;
            v["payload_b64"] = serde_json::json!(base64::engine::general_purpose::STANDARD.encode(&m.payload))
        }
    }
    v.to_string()
}
