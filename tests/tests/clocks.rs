//! Clock correction on fleets the estimator was not tuned on (issue #15,
//! SPEC §4): fleets made by `sensors-sim` from scenario files — the fixed
//! one in config/scenarios/fleet.toml and random ones over many seeds and
//! scales (devices, rates, delays, drift, and which device has which fault:
//! reboots, clocks a day off, NTP steps, store-and-forward, bad links). Per
//! device, after 30 samples of each clock segment (in arrival order), p99 of
//! |corrected − true| must be at most the path's minimum one-way delay + 2 ms.
//! The worst margin is printed (`--nocapture`), and per device how many
//! samples came out early / late beyond the target and what an oracle that
//! knows the clock exactly (not the path) would have reached: where it is
//! within target and the estimator is not, the estimator lost the margin.
//! The issue's own simple estimator ([`Baseline`]) runs beside ours on the
//! issue's fleet (ours must do better) and, with `EDGEJOIN_FLEET_BASELINE=1`,
//! on the random fleets (docs/CLOCKS.md has the comparison).

use std::collections::BTreeMap;
use std::path::Path;

use edgejoin_engine::skew::Estimator;
use sensors_sim::gen::{generate, Msg};
use sensors_sim::rng::Rng;
use sensors_sim::scenario::{self, dur, Scenario};

/// One device's outcome.
#[derive(Debug)]
struct DeviceResult {
    device: String,
    /// p99 of |corrected − true| over samples past the 30th of their segment (ms).
    p99: i64,
    /// The path's minimum one-way delay (ms): the least delay its messages
    /// met (a lognormal jitter with a small sigma never comes near the
    /// configured `min`: its lower envelope is the path's real minimum).
    d_min: i64,
    measured: usize,
    steps_true: usize,
    steps_found: u64,
    /// Samples (past the 30th) that came out later than true + minimum delay by more than the reported uncertainty.
    beyond_uncertainty: usize,
    /// p99 of the same samples for an oracle that knows the device's clock
    /// exactly and only not the path: it places a reading at its true time
    /// plus the least delay its segment has shown so far (a diagnostic, not
    /// a bound: leaning early can beat it just after a step).
    oracle_p99: i64,
    /// p99 of the same samples for [`Baseline`], when it ran.
    baseline_p99: Option<i64>,
    /// Samples (past the 30th) more than the target early / late.
    early: usize,
    late: usize,
}

impl DeviceResult {
    /// Target − p99: how far inside the target (negative: missed).
    fn margin(&self) -> i64 {
        self.d_min + 2 - self.p99
    }
}

/// The simple estimator issue #15 compares with: drift from the lower convex
/// hull of the last 900 points (the hull's edge at their mean device time,
/// Moon, Skelly & Towsley 1999), offset as the lowest of the last 120 points
/// projected along that drift, history of its own for each true clock
/// segment (a favour: it is told where the steps are). It rebuilds a hull
/// per sample: run on the issue's fleet, and on random fleets with
/// `EDGEJOIN_FLEET_BASELINE=1`.
#[derive(Default)]
struct Baseline {
    pts: std::collections::VecDeque<(i64, i64)>,
}

impl Baseline {
    fn correct(&mut self, device_ts: i64, recv_ms: i64) -> i64 {
        self.pts.push_back((device_ts, recv_ms - device_ts));
        if self.pts.len() > 900 {
            self.pts.pop_front();
        }
        if self.pts.len() < 2 {
            return recv_ms;
        }
        let x0 = self.pts[0].0;
        let mut v: Vec<(f64, f64)> = self.pts.iter().map(|&(x, y)| ((x - x0) as f64, y as f64)).collect();
        let mean = v.iter().map(|p| p.0).sum::<f64>() / v.len() as f64;
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut hull: Vec<(f64, f64)> = Vec::new();
        for p in v {
            if hull.last().is_some_and(|q| q.0 == p.0) {
                continue; // the lower of equal x came first
            }
            while hull.len() >= 2 {
                let (o, a) = (hull[hull.len() - 2], hull[hull.len() - 1]);
                if (a.0 - o.0) * (p.1 - o.1) - (a.1 - o.1) * (p.0 - o.0) <= 0.0 {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push(p);
        }
        let b = if hull.len() < 2 {
            0.0
        } else {
            let i = hull.partition_point(|q| q.0 <= mean).clamp(1, hull.len() - 1);
            let (a, c) = (hull[i - 1], hull[i]);
            ((c.1 - a.1) / (c.0 - a.0)).clamp(-600e-6, 600e-6)
        };
        let offset = self
            .pts
            .iter()
            .rev()
            .take(120)
            .map(|&(x, y)| y as f64 - b * (x - x0) as f64)
            .fold(f64::MAX, f64::min);
        let c = (device_ts as f64 + offset + b * (device_ts - x0) as f64).floor() as i64;
        c.min(recv_ms)
    }
}

/// Device name → minimum delay, from the scenario's sensors.
fn minimum_delays(sc: &Scenario) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for s in &sc.sensor {
        for n in 0..s.devices {
            let name =
                format!("{}{}", s.device_prefix.clone().unwrap_or_else(|| format!("{}-", s.name)), n + 1);
            m.insert(name, dur(&s.delay.min).unwrap());
        }
    }
    m
}

/// Runs every device's readings through its own estimator, in arrival order.
/// With `baseline`, each device also runs through [`Baseline`].
fn evaluate(sc: &Scenario, msgs: &[Msg], baseline: bool) -> Vec<DeviceResult> {
    let configured = minimum_delays(sc);
    let mut by_device: BTreeMap<&str, Vec<&Msg>> = BTreeMap::new();
    for m in msgs {
        by_device.entry(&m.truth.device).or_default().push(m);
    }
    let mut out = Vec::new();
    for (device, ms) in by_device {
        // clock segments from the truth: the offset jumps at a step (drift moves it < 1 ms a reading)
        let mut by_true: Vec<&Msg> = ms.clone();
        by_true.sort_by_key(|m| m.truth.ts);
        let mut segment_of = BTreeMap::new();
        let (mut seg, mut last) = (0usize, None::<i64>);
        for m in &by_true {
            if let Some(prev) = last {
                if (m.truth.offset_ms - prev).abs() > 100 {
                    seg += 1;
                }
            }
            last = Some(m.truth.offset_ms);
            segment_of.insert(m.truth.ts, seg);
        }
        let mut est = Estimator::default();
        // one per true segment: a straggler from before a step goes to its own
        let mut base =
            baseline.then(|| ((0..=seg).map(|_| Baseline::default()).collect::<Vec<_>>(), Vec::new()));
        let mut seen = vec![0usize; seg + 1];
        // SPEC §4 measures after 30 samples; `EDGEJOIN_FLEET_AFTER=N` to see how the misses go later
        let after: usize =
            std::env::var("EDGEJOIN_FLEET_AFTER").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
        let mut least_delay = vec![i64::MAX; seg + 1];
        let mut oracle = Vec::new();
        let (mut early, mut late) = (0usize, 0usize);
        let d_min_seen = ms.iter().map(|m| m.truth.delay_ms).min().unwrap_or(0);
        let mut beyond = 0usize;
        let mut errors = Vec::new();
        for m in &ms {
            let device_ts = m.truth.ts + m.truth.offset_ms;
            let c = est.correct(device_ts, m.recv_ms);
            assert!(c <= m.recv_ms, "{device}: corrected {c} later than received {}", m.recv_ms);
            let s = segment_of[&m.truth.ts];
            let mut base_err = None;
            if let Some((b, errs)) = &mut base {
                let e = b[s].correct(device_ts, m.recv_ms) - m.truth.ts;
                base_err = Some(e);
                if seen[s] >= after {
                    errs.push(e.abs());
                }
            }
            seen[s] += 1;
            least_delay[s] = least_delay[s].min(m.truth.delay_ms);
            if std::env::var("EDGEJOIN_FLEET_DEBUG").is_ok_and(|v| v == device) {
                let r = est.report();
                eprintln!(
                    "{device} #{} seg {s}/{} true {} delay {} least {} err {} (baseline {base_err:?}) off {:.1} drift {:.2} spread {:.1}",
                    seen[s],
                    seen.len(),
                    m.truth.ts - START,
                    m.truth.delay_ms,
                    least_delay[s],
                    c - m.truth.ts,
                    r.offset_ms,
                    r.drift_ppm,
                    r.spread_ms
                );
                if std::env::var("EDGEJOIN_FLEET_HULL").is_ok() {
                    eprintln!("   {:?}", est.hulls());
                }
            }
            if seen[s] > after {
                errors.push((c - m.truth.ts).abs());
                oracle.push(least_delay[s]);
                let e = c - m.truth.ts;
                early += usize::from(e < -(d_min_seen + 2));
                late += usize::from(e > d_min_seen + 2);
                // the reported uncertainty bounds how far above true + minimum delay it came out
                if c - m.truth.ts - d_min_seen > est.report().uncertainty_ms.ceil() as i64 {
                    beyond += 1;
                }
            }
        }
        errors.sort_unstable();
        oracle.sort_unstable();
        out.push(DeviceResult {
            early,
            late,
            oracle_p99: oracle.get(oracle.len() * 99 / 100).copied().unwrap_or(0),
            baseline_p99: base.map(|(_, mut e)| {
                e.sort_unstable();
                e.get(e.len() * 99 / 100).copied().unwrap_or(0)
            }),
            device: device.to_string(),
            p99: errors.get(errors.len() * 99 / 100).copied().unwrap_or(0),
            d_min: {
                assert!(d_min_seen >= configured[device], "{device}: a delay below the path's minimum");
                d_min_seen
            },
            beyond_uncertainty: beyond,
            measured: errors.len(),
            steps_true: seg,
            steps_found: est.report().steps,
        });
    }
    out
}

fn fleet_file() -> Scenario {
    scenario::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios/fleet.toml")).unwrap()
}

const START: i64 = 1_767_600_000_000; // 2026-01-05T08:00:00Z

#[test]
fn the_fleet_of_the_issue_within_target_on_every_device() {
    let sc = fleet_file();
    let mut worst: Option<(i64, String, u64)> = None;
    // summed p99 over every device of every seed: ours, and the issue's simple estimator's
    let (mut ours, mut simple, mut devices) = (0, 0, 0);
    for seed in [15u64, 1, 2, 3, 4, 5] {
        let msgs = generate(&sc, START, seed).unwrap();
        let results = evaluate(&sc, &msgs, true);
        assert_eq!(results.len(), 16);
        for r in &results {
            eprintln!(
                "seed {seed} {:>10}: p99 {:>3} ms (oracle {:>3}{}), target {:>3} ms, margin {:>3}, {} measured ({} early, {} late), steps {}/{}",
                r.device,
                r.p99,
                r.oracle_p99,
                r.baseline_p99.map_or(String::new(), |b| format!(", baseline {b:>3}")),
                r.d_min + 2,
                r.margin(),
                r.measured,
                r.early,
                r.late,
                r.steps_found,
                r.steps_true
            );
            if worst.as_ref().is_none_or(|w| r.margin() < w.0) {
                worst = Some((r.margin(), r.device.clone(), seed));
            }
        }
        let missed: Vec<_> = results.iter().filter(|r| r.margin() < 0).collect();
        assert!(missed.is_empty(), "seed {seed}: missed the target: {missed:#?}");
        for r in &results {
            assert_eq!(r.steps_found as usize, r.steps_true, "seed {seed}: {r:?}");
            // the issue's reference estimator, told where the steps are, is never closer to the target
            let base = r.baseline_p99.expect("the baseline ran");
            assert!(
                r.p99 <= base,
                "seed {seed}: the issue's simple estimator did better (p99 {base}): {r:?}"
            );
            (ours, simple, devices) = (ours + r.p99, simple + base, devices + 1);
            assert!(
                r.beyond_uncertainty * 100 <= r.measured,
                "seed {seed}: the uncertainty is too small: {r:?}"
            );
        }
    }
    eprintln!("worst margin {worst:?}; summed p99 {ours} ms, the issue's simple estimator {simple} ms");
    // and keeps more margin overall: 0.86 ms a device more (session 20), where
    // the same estimator without its lean early keeps 0.01 and with a 1-minute
    // hull period 0.17 (both fail this)
    assert!(
        (simple - ours) * 2 >= devices,
        "{devices} devices: summed p99 {ours} ms, less than 0.5 ms a device under the simple estimator's {simple} ms"
    );
}

/// Draws a fleet: the simulator's own generator, and a pick from a list.
struct Draw(Rng);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn unit(&mut self) -> f64 {
        self.0.unit()
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        self.0.range(lo, hi)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// Which fleets [`random_fleet`] draws.
#[derive(Clone, Copy)]
struct Family {
    /// The sites' minimum delays, ms.
    d_min_ms: (f64, f64),
    /// Only the issue's parameters: a reading a second, drift to ±300 ppm,
    /// store-and-forward of 12 s every 10 minutes, NTP steps of +2 s; the
    /// rest as in the wider family (jitter, spikes, reboots, a day off).
    issue: bool,
}

/// The family the CI test holds (and the surveys widen): rates of 200 ms–5 s,
/// drift to ±500 ppm, store-and-forward of 5–30 s, steps of −2…+5 s.
const WIDE: Family = Family { d_min_ms: (3.0, 40.0), issue: false };

/// A random fleet as a scenario file: sites of 1–3 devices sharing a
/// minimum delay, each device with its own rate, jitter, drift, and one
/// fault from the list for about half of them.
fn random_fleet(seed: u64, family: Family) -> (String, String) {
    let d_min_ms = family.d_min_ms;
    let mut d = Draw(Rng::new(seed).fork("fleet"));
    let hours = *d.pick(&[1u32, 2]);
    let mut t = format!(
        "[scenario]\nname = \"random-fleet-{seed}\"\nduration = \"{hours}h\"\nstart = \"2026-01-05T08:00:00Z\"\nseed = {seed}\n"
    );
    let mut summary = String::new();
    let sites = 2 + d.next() % 8;
    for site in 0..sites {
        let d_min = d.range(d_min_ms.0, d_min_ms.1) as i64;
        for dev in 0..1 + d.next() % 3 {
            // a reading every 5 s only in the longer fleets: a device that slow with
            // tens of ms of jitter needs ~50 readings before its line is within 2 ms
            // (docs/CLOCKS.md), and p99 over an hour would be mostly those
            let every = if hours == 2 {
                *d.pick(&["200ms", "500ms", "1s", "1s", "1s", "2s", "5s"])
            } else {
                *d.pick(&["200ms", "500ms", "1s", "1s", "1s", "2s"])
            };
            let every = if family.issue { "1s" } else { every };
            let drift = d.range(0.0, if family.issue { 300.0 } else { 500.0 }) as i64;
            let median = d.range(1.0, 20.0).round();
            // exponential jitter, as on the links the issue measured: a path's
            // delays reach near its minimum every so often (docs/CLOCKS.md says
            // what the target assumes of the delay distribution)
            let dist = "distribution = \"exponential\"";
            let spike_p = if d.unit() < 0.1 { d.range(0.04, 0.1) } else { d.range(0.0, 0.02) };
            let mut clock = format!("offset_spread = \"10m\", drift_ppm = {drift}");
            let mut outage = String::new();
            let fault =
                if d.unit() < 0.5 { *d.pick(&["reboot", "behind", "ahead", "step", "store"]) } else { "-" };
            match fault {
                "reboot" => {
                    clock = format!(
                        "boot_relative = true, drift_ppm = {drift}, reboot_every = \"{}m\"",
                        hours * 60 / 2
                    )
                }
                "behind" => clock = format!("offset = \"-1d\", drift_ppm = {drift}"),
                "ahead" => clock = format!("offset = \"1d\", drift_ppm = {drift}"),
                "step" => {
                    let by = *d.pick(&["2s", "-2s", "500ms", "5s", "-700ms"]);
                    let by = if family.issue { "2s" } else { by };
                    let at = d.range(10.0, hours as f64 * 60.0 - 10.0) as i64;
                    clock = format!(
                        "offset_spread = \"10m\", drift_ppm = {drift}, step = \"{by}\", step_at = \"{at}m\""
                    );
                }
                "store" if family.issue => {
                    outage = format!(
                        "outage = {{ at = \"{}m\", length = \"12s\", every = \"10m\" }}\n",
                        d.range(1.0, 10.0) as i64
                    )
                }
                "store" => {
                    outage = format!(
                        "outage = {{ at = \"{}m\", length = \"{}s\", every = \"{}m\" }}\n",
                        d.range(1.0, 10.0) as i64,
                        d.range(5.0, 30.0) as i64,
                        d.range(5.0, 15.0) as i64
                    )
                }
                _ => {}
            }
            summary += &format!("s{site}d{dev}1: every {every} d_min {d_min} median {median} {dist} spikes {spike_p:.3} drift ±{drift} {fault}\n");
            t += &format!(
                "\n[[sensor]]\nname = \"s{site}d{dev}\"\ntopic = \"f/{{device}}/r\"\ndevice_prefix = \"s{site}d{dev}\"\nevery = \"{every}\"\njitter = 0.05\nvalues = {{ v = [0.0, 1.0] }}\nclock = {{ {clock} }}\ndelay = {{ min = \"{d_min}ms\", median = \"{median}ms\", {dist}, spike_p = {spike_p:.4}, spike_min = \"500ms\", spike = \"6s\", duplicate_p = 0.005 }}\n{outage}"
            );
        }
    }
    (t, summary)
}

/// Random fleets over `seeds`: (devices, worst margin, the devices that missed).
fn random_fleets(seeds: u64, family: Family) -> (usize, Option<(i64, String, u64)>, Vec<String>) {
    let mut worst: Option<(i64, String, u64)> = None;
    let mut devices = 0;
    let mut failures = Vec::new();
    let mut baseline_missed = 0;
    // `EDGEJOIN_FLEET_SEED=N`: that fleet alone (with `EDGEJOIN_FLEET_DEBUG=device` to trace one device)
    let only: Option<u64> = std::env::var("EDGEJOIN_FLEET_SEED").ok().and_then(|s| s.parse().ok());
    // `EDGEJOIN_FLEET_FROM=N`: seeds N.. (a survey split over processes)
    let from: u64 = std::env::var("EDGEJOIN_FLEET_FROM").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    for seed in only.map_or(from..from + seeds, |s| s..s + 1) {
        let (text, summary) = random_fleet(seed, family);
        let sc: Scenario = toml::from_str(&text).unwrap();
        let msgs = generate(&sc, START, seed).unwrap();
        for r in evaluate(&sc, &msgs, std::env::var_os("EDGEJOIN_FLEET_BASELINE").is_some()) {
            devices += 1;
            if worst.as_ref().is_none_or(|w| r.margin() < w.0) {
                worst = Some((r.margin(), r.device.clone(), seed));
            }
            let line =
                summary.lines().find(|l| l.starts_with(&format!("{}:", r.device))).unwrap_or("").to_string();
            if let Some(b) = r.baseline_p99.filter(|&b| b > r.d_min + 2) {
                baseline_missed += 1;
                eprintln!(
                    "baseline missed: seed {seed} {} p99 {b} (ours {}) target {}",
                    r.device,
                    r.p99,
                    r.d_min + 2
                );
            }
            if r.margin() < 0 || r.steps_found as usize != r.steps_true {
                failures.push(format!("seed {seed}: {r:?} — {line}"));
            }
        }
    }
    if std::env::var_os("EDGEJOIN_FLEET_BASELINE").is_some() {
        eprintln!(
            "the baseline (issue #15's simple estimator) missed on {baseline_missed} of {devices} devices"
        );
    }
    (devices, worst, failures)
}

/// Fleets like the issue's (minimum delays 3–40 ms), drawn at random:
/// `EDGEJOIN_FLEETS=N` for other than the default 300 (about a minute).
#[test]
fn random_fleets_within_target_on_every_device() {
    let seeds = fleets();
    let (devices, worst, failures) = random_fleets(seeds, WIDE);
    eprintln!("{devices} devices over {seeds} fleets; worst margin {worst:?}");
    assert!(failures.is_empty(), "{} of {devices} devices missed:\n{}", failures.len(), failures.join("\n"));
}

/// Beyond the issue's fleets: minimum delays 1–60 ms (a 1 ms path with
/// tens of ms of jitter leaves 3 ms of room below the natural estimate).
/// Reports, does not assert: `cargo test --release -p edgejoin-tests --test
/// clocks survey -- --ignored --nocapture` (docs/CLOCKS.md has a run).
#[test]
#[ignore]
fn survey_wider_fleets() {
    survey(Family { d_min_ms: (1.0, 60.0), ..WIDE });
}

/// `EDGEJOIN_FLEETS` fleets of `family` (300 by default): reports each miss, asserts nothing.
fn survey(family: Family) {
    let seeds = fleets();
    let (devices, worst, failures) = random_fleets(seeds, family);
    eprintln!("{devices} devices over {seeds} fleets; worst margin {worst:?}; {} missed", failures.len());
    for f in failures {
        eprintln!("{f}");
    }
}

/// How many fleets: `EDGEJOIN_FLEETS`, or 300.
fn fleets() -> u64 {
    std::env::var("EDGEJOIN_FLEETS").ok().and_then(|s| s.parse().ok()).unwrap_or(300)
}

/// The issue's own family at random (a reading a second, drift to ±300 ppm,
/// store-and-forward of 12 s every 10 minutes, +2 s steps; jitter, spikes,
/// reboots and a day off as in the wider family). Reports, does not assert:
/// `cargo test --release -p edgejoin-tests --test clocks issue_family --
/// --ignored --nocapture` (docs/CLOCKS.md has a run of 2,000 fleets).
#[test]
#[ignore]
fn survey_issue_family() {
    survey(Family { issue: true, ..WIDE });
}

/// `edgejoin replay --clock-report DIR` over the fleet's recording (as
/// `sensors-sim --record` writes it, truth included): one SVG per device
/// and an index page that says which device met the target.
#[test]
fn the_clock_report_draws_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let sc = fleet_file();
    let msgs = generate(&sc, START, 15).unwrap();
    let rec = dir.path().join("fleet.jsonl");
    let lines: Vec<String> = msgs.iter().map(sensors_sim::gen::record_line).collect();
    std::fs::write(&rec, lines.join("\n") + "\n").unwrap();
    let report = dir.path().join("report");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgejoin-under-test"))
        .args(["replay", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios/fleet-gateway.toml"))
        .arg("--input")
        .arg(&rec)
        .arg("--output")
        .arg(dir.path().join("results.jsonl"))
        .arg("--clock-report")
        .arg(&report)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("clock report of 16 devices"), "{stderr}");
    let index = std::fs::read_to_string(report.join("index.html")).unwrap();
    let mut stepped = 0;
    for r in evaluate(&sc, &msgs, false) {
        let svg = std::fs::read_to_string(report.join(format!("{}.svg", r.device))).unwrap();
        assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{}", &svg[..60.min(svg.len())]);
        assert!(svg.contains(&r.device) && svg.contains("<circle"), "{}: no samples drawn", r.device);
        // the error panel and its target, as the test computes them
        assert!(svg.contains(&format!("target ≤ {}", r.d_min + 2)), "{}: no error panel", r.device);
        assert!(index.contains(&format!("<img src=\"{}.svg\"", r.device)));
        assert!(index.contains(&format!("(target ≤ {}) ✓", r.d_min + 2)), "{}: {r:?}", r.device);
        stepped += usize::from(svg.contains(&format!("{} steps", r.steps_true)) && r.steps_true > 0);
    }
    assert_eq!(stepped, 2, "the rebooting and the NTP-stepped device show their step");
}

/// The picture in docs/CLOCKS.md is what `edgejoin replay --clock-report`
/// draws from `config/scenarios/clock-picture.toml`, byte for byte
/// (`EDGEJOIN_UPDATE_DOCS=1` redraws it), and it shows what the page says:
/// the step, the error panel within its band.
#[test]
fn the_picture_in_clocks_md_is_drawn_from_its_scenario() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sc = scenario::load(&root.join("config/scenarios/clock-picture.toml")).unwrap();
    let msgs = sensors_sim::gen::generate_as_written(&sc).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("picture.jsonl");
    let lines: Vec<String> = msgs.iter().map(sensors_sim::gen::record_line).collect();
    std::fs::write(&rec, lines.join("\n") + "\n").unwrap();
    let report = dir.path().join("clocks");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgejoin-under-test"))
        .args(["replay", "--config"])
        .arg(root.join("config/scenarios/fleet-gateway.toml"))
        .arg("--input")
        .arg(&rec)
        .args(["--output", "/dev/null", "--clock-report"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let drawn = std::fs::read_to_string(report.join("pictured-1.svg")).unwrap();
    assert!(drawn.contains("pictured-1: 600 samples, 1 steps"), "{}", &drawn[..400.min(drawn.len())]);
    let index = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(index.contains("(target ≤ 14) ✓"), "within the contract's band: {index}");
    let doc = root.join("docs/img/clock-report.svg");
    if std::env::var_os("EDGEJOIN_UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(doc.parent().unwrap()).unwrap();
        std::fs::write(&doc, &drawn).unwrap();
    }
    let committed = std::fs::read_to_string(&doc).unwrap_or_default();
    assert!(committed == drawn, "docs/img/clock-report.svg is stale: EDGEJOIN_UPDATE_DOCS=1 cargo test -p edgejoin-tests --test clocks the_picture");
    let page = std::fs::read_to_string(root.join("docs/CLOCKS.md")).unwrap();
    assert!(page.contains("](img/clock-report.svg)"), "CLOCKS.md shows the picture");
}
