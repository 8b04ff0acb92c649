//! Clock reports: what the clock correction did, per device, as pictures a
//! person can read at a glance (docs/CLOCKS.md), from `edgejoin replay
//! --clock-report DIR` and from the live service at `/clocks/` on its metrics
//! address. One SVG per device of a `clock = "corrected"` stream:
//! 1. the offset applied (corrected − device time) as a line over the
//!    samples' receive − device time: drift is its slope, a step a jump;
//! 2. each sample's delay above the line (receive − corrected): the line is
//!    the lower envelope, spikes and store-and-forward bursts stand above it;
//! 3. for simulator recordings (their lines carry `truth.ts`), the error of
//!    each corrected time against the true time, with the contract's band
//!    (±(minimum delay + 2 ms), SPEC §4).
//!
//! Steps found are red verticals. `index.html` lists every device with its
//! estimate and links the pictures. Memory is bounded: a replay keeps at most
//! [`MAX_DEVICES`] devices and [`MAX_POINTS`] samples each over the whole
//! recording (past that, every other sample is kept, then every fourth…);
//! the live service keeps the last `clock_trace` samples of each device it
//! corrects (at most `max_devices`), in a ring allocated when the device is
//! first heard.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::Path;

use edgejoin_engine::skew::SkewReport;
use plotters::prelude::*;

/// Devices a replay draws at most (more are counted, not drawn).
pub const MAX_DEVICES: usize = 1024;
/// Samples a replay keeps per device.
pub const MAX_POINTS: usize = 20_000;
/// A jump of the applied offset larger than this between two samples is a step (ms).
const STEP_JUMP_MS: i64 = 100;
/// `truth` of a sample whose true time is not known.
const NO_TRUTH: i64 = i64::MIN;

/// One corrected event.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    recv: i64,
    device_ts: i64,
    corrected: i64,
    /// Its true time ([`NO_TRUTH`]: not known).
    truth: i64,
}

impl Sample {
    fn truth(&self) -> Option<i64> {
        (self.truth != NO_TRUTH).then_some(self.truth)
    }
}

#[derive(Debug)]
struct Device {
    samples: VecDeque<Sample>,
    /// Every `stride`-th sample is kept (a replay's whole history).
    stride: usize,
    seen: usize,
    /// The estimator's latest report.
    report: SkewReport,
}

/// Which samples a trace keeps.
#[derive(Clone, Copy, Debug)]
enum Keep {
    /// The whole recording, thinned to at most [`MAX_POINTS`] (replay).
    History,
    /// The last `n` samples (the live service).
    Last(usize),
}

/// The corrected samples per device, and the estimators' reports.
#[derive(Debug)]
pub struct ClockTrace {
    devices: BTreeMap<String, Device>,
    keep: Keep,
    max_devices: usize,
    /// Samples not drawn: of devices beyond the device bound (replay), or of
    /// devices that made room for newer ones (live).
    pub not_drawn: u64,
}

/// One device's samples and report, copied out of a trace to be drawn
/// without holding it.
pub struct DeviceTrace {
    pub name: String,
    samples: Vec<Sample>,
    report: SkewReport,
}

impl ClockTrace {
    /// A replay's trace: every device's whole recording, thinned.
    pub fn history() -> Self {
        ClockTrace { devices: BTreeMap::new(), keep: Keep::History, max_devices: MAX_DEVICES, not_drawn: 0 }
    }

    /// The live service's trace: the last `per_device` samples of at most
    /// `max_devices` devices.
    pub fn last(per_device: usize, max_devices: usize) -> Self {
        ClockTrace {
            devices: BTreeMap::new(),
            keep: Keep::Last(per_device.max(1)),
            max_devices,
            not_drawn: 0,
        }
    }

    /// Bytes a live trace may hold at most (for the printed memory bound).
    pub fn memory_bytes(per_device: usize, max_devices: usize) -> u64 {
        // the ring, the map's node and the device's name (a key of at most 64 bytes)
        (per_device * std::mem::size_of::<Sample>() + std::mem::size_of::<Device>() + 64 + 64) as u64
            * max_devices as u64
    }

    /// Notes one corrected event (`truth`: its true time, when the recording has it).
    pub fn add(&mut self, device: &str, device_ts: i64, recv: i64, corrected: i64, truth: Option<i64>) {
        if !self.devices.contains_key(device) {
            let samples = match self.keep {
                Keep::History if self.devices.len() >= self.max_devices => {
                    self.not_drawn += 1;
                    return;
                }
                Keep::History => VecDeque::new(),
                // live, like the estimators: a new device takes the place (and
                // the ring) of the one heard least recently
                Keep::Last(_) if self.devices.len() >= self.max_devices => {
                    let Some(oldest) = self
                        .devices
                        .iter()
                        .min_by_key(|(_, d)| d.samples.back().map_or(i64::MIN, |s| s.recv))
                        .map(|(n, _)| n.clone())
                    else {
                        return;
                    };
                    self.not_drawn += self.devices.get(&oldest).map_or(0, |d| d.seen as u64);
                    let mut ring = self.devices.remove(&oldest).map(|d| d.samples).unwrap_or_default();
                    ring.clear();
                    ring
                }
                Keep::Last(n) => VecDeque::with_capacity(n),
            };
            // the name is allocated once per device, not per sample
            self.devices.insert(
                device.to_string(),
                Device { samples, stride: 1, seen: 0, report: SkewReport::default() },
            );
        }
        let Some(d) = self.devices.get_mut(device) else { return };
        d.seen += 1;
        if (d.seen - 1) % d.stride != 0 {
            return;
        }
        match self.keep {
            Keep::History if d.samples.len() >= MAX_POINTS => {
                let mut i = 0;
                d.samples.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                d.stride *= 2;
            }
            Keep::Last(n) if d.samples.len() >= n => {
                d.samples.pop_front();
            }
            _ => {}
        }
        d.samples.push_back(Sample { recv, device_ts, corrected, truth: truth.unwrap_or(NO_TRUTH) });
    }

    /// Keeps the estimators' latest reports (devices not traced are ignored).
    pub fn set_reports<'a>(&mut self, reports: impl IntoIterator<Item = (&'a str, SkewReport)>) {
        for (name, r) in reports {
            if let Some(d) = self.devices.get_mut(name) {
                d.report = r;
            }
        }
    }

    /// Devices traced.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// A copy of the device whose picture is `file` (as named on the index).
    pub fn device(&self, file: &str) -> Option<DeviceTrace> {
        self.devices.iter().find(|(n, _)| file_name(n) == file).map(|(n, d)| d.copy(n))
    }

    /// A copy of every device.
    pub fn devices(&self) -> Vec<DeviceTrace> {
        self.devices.iter().map(|(n, d)| d.copy(n)).collect()
    }

    /// Writes one SVG per device and `index.html` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let devices = self.devices();
        for d in &devices {
            let path = dir.join(d.file());
            std::fs::write(&path, d.svg()?).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let page = index_html(&devices, self.not_drawn, "");
        std::fs::write(dir.join("index.html"), page).map_err(|e| format!("{}: {e}", dir.display()))
    }
}

impl Device {
    fn copy(&self, name: &str) -> DeviceTrace {
        DeviceTrace {
            name: name.to_string(),
            samples: self.samples.iter().copied().collect(),
            report: self.report,
        }
    }
}

impl DeviceTrace {
    /// The picture's file name.
    pub fn file(&self) -> String {
        file_name(&self.name)
    }

    /// The picture.
    pub fn svg(&self) -> Result<String, String> {
        let mut out = String::new();
        draw(&mut out, &self.name, &self.samples, &self.report)?;
        Ok(out)
    }
}

/// The index page over `devices`; `note` is said under the heading (HTML).
pub fn index_html(devices: &[DeviceTrace], not_drawn: u64, note: &str) -> String {
    let mut rows = String::new();
    let mut figures = String::new();
    for d in devices {
        let file = d.file();
        let summary = summarize(&d.samples);
        let truth = match summary.error_p99 {
            Some((p99, target)) => {
                let mark = if p99 <= target { "✓" } else { "✗" };
                format!("{p99} ms (target ≤ {target}) {mark}")
            }
            None => "–".into(),
        };
        let r = &d.report;
        let _ = writeln!(
            rows,
            "<tr><td><a href=\"#{id}\">{n}</a></td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.2}</td><td>{:.1}</td><td>{truth}</td></tr>",
            r.samples,
            summary.steps.len(),
            r.offset_ms,
            r.drift_ppm,
            r.uncertainty_ms,
            id = html(&file),
            n = html(&d.name),
        );
        let _ = writeln!(
            figures,
            "<h2 id=\"{id}\">{n}</h2>\n<img src=\"{id}\" alt=\"clock of {n}\" width=\"960\">",
            id = html(&file),
            n = html(&d.name)
        );
    }
    let beyond = if not_drawn > 0 {
        format!(
            "<p>{not_drawn} samples of devices beyond the device bound (or that made room for newer ones) are not drawn.</p>"
        )
    } else {
        String::new()
    };
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>edgejoin clock report</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:first-child{{text-align:left}}</style>\n\
         </head><body>\n<h1>Clock correction per device</h1>\n{note}\
         <p>Offset: added to the device's newest time to reach gateway time (includes the path's minimum delay). \
         Drift: how much faster the gateway clock runs than the device's. Uncertainty: how much later than true time \
         + minimum delay a corrected time may be. Error (simulator recordings only): p99 of |corrected − true| after \
         30 samples of each clock segment, against the contract's target (minimum delay + 2 ms). See docs/CLOCKS.md.</p>\n{beyond}\
         <table>\n<tr><th>device</th><th>samples</th><th>steps</th><th>offset ms</th><th>drift ppm</th>\
         <th>uncertainty ms</th><th>error</th></tr>\n{rows}</table>\n{figures}</body></html>\n"
    )
}

/// What a device's samples show, drawn or not.
struct Summary {
    /// Where the applied offset jumped: indices of the samples that start a
    /// new clock segment (the first is 0).
    segment_start: Vec<usize>,
    /// Receive times of the steps (samples starting a segment after the first).
    steps: Vec<i64>,
    /// (p99 of |error| past the 30th sample of each segment, target), with truth.
    error_p99: Option<(i64, i64)>,
    /// The least delay a sample met (receive − true time), with truth.
    d_min: i64,
}

fn summarize(s: &[Sample]) -> Summary {
    // steps: jumps of the applied offset between consecutive samples (in arrival order)
    let mut steps = Vec::new();
    let mut segment_start = vec![0usize];
    for (i, w) in s.windows(2).enumerate() {
        let (a, b) = (w[0].corrected - w[0].device_ts, w[1].corrected - w[1].device_ts);
        if (b - a).abs() > STEP_JUMP_MS {
            steps.push(w[1].recv);
            segment_start.push(i + 1);
        }
    }
    let mut error_p99 = None;
    let d_min = s.iter().filter_map(|x| x.truth().map(|t| x.recv - t)).min().unwrap_or(0);
    if s.iter().any(|x| x.truth().is_some()) {
        let mut errors = Vec::new();
        for (k, &from) in segment_start.iter().enumerate() {
            let to = segment_start.get(k + 1).copied().unwrap_or(s.len());
            errors.extend(
                s[from..to].iter().skip(30).filter_map(|x| x.truth().map(|t| (x.corrected - t).abs())),
            );
        }
        errors.sort_unstable();
        let p99 = errors.get(errors.len() * 99 / 100).copied().unwrap_or(0);
        error_p99 = Some((p99, d_min + 2));
    }
    Summary { segment_start, steps, error_p99, d_min }
}

/// A file name for a device: its name with anything but letters, digits,
/// `-`, `_` and `.` replaced, plus `.svg`.
fn file_name(device: &str) -> String {
    let mut s: String = device
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert(0, '_');
    }
    s.push_str(".svg");
    s
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn err(e: impl std::fmt::Debug) -> String {
    format!("drawing the clock report: {e:?}")
}

/// A range around `lo..hi` with a margin, never empty.
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad)..(hi + pad)
}

fn draw(out: &mut String, name: &str, s: &[Sample], report: &SkewReport) -> Result<(), String> {
    let t0 = s.first().map_or(0, |x| x.recv);
    let minutes = |recv: i64| (recv - t0) as f64 / 60_000.0;
    let x_end = s.iter().map(|x| minutes(x.recv)).fold(0.0, f64::max).max(1e-3);
    let summary = summarize(s);
    let segment_start = &summary.segment_start;
    let steps: Vec<f64> = summary.steps.iter().map(|&r| minutes(r)).collect();
    let rows = if summary.error_p99.is_some() { 3 } else { 2 };
    let root = SVGBackend::with_string(out, (960, 300 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "{name}: {} samples, {} steps, drift {:.1} ppm, uncertainty {:.1} ms",
        report.samples, report.steps, report.drift_ppm, report.uncertainty_ms
    );
    let root = root.titled(&title, ("sans-serif", 18)).map_err(err)?;
    let areas = root.split_evenly((rows, 1));

    // 1. the offset applied, over receive − device time, in s relative to the first sample's
    let base = s.first().map_or(0, |x| x.corrected - x.device_ts);
    let line: Vec<(f64, f64)> =
        s.iter().map(|x| (minutes(x.recv), (x.corrected - x.device_ts - base) as f64 / 1000.0)).collect();
    let (lo, hi) = line.iter().fold((f64::MAX, f64::MIN), |(l, h), p| (l.min(p.1), h.max(p.1)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 0.0) };
    let y = padded(lo, hi + 0.05);
    let caption = "offset applied (line) and receive − device time (dots), s from the first sample's";
    let mut c = panel(&areas[0], caption, x_end, &y, "s")?;
    c.draw_series(
        s.iter()
            .map(|x| (minutes(x.recv), (x.recv - x.device_ts - base) as f64 / 1000.0))
            .filter(|p| y.contains(&p.1))
            .map(|p| Circle::new(p, 1, BLACK.mix(0.3).filled())),
    )
    .map_err(err)?;
    // one line per segment (a step is a jump, not a slope)
    for (k, &from) in segment_start.iter().enumerate() {
        let to = segment_start.get(k + 1).copied().unwrap_or(line.len());
        c.draw_series(LineSeries::new(line[from..to].iter().copied(), BLUE.stroke_width(2))).map_err(err)?;
    }
    step_marks(&mut c, &steps, &y)?;

    // 2. each sample's delay above the line, ms
    let above: Vec<f64> = s.iter().map(|x| (x.recv - x.corrected) as f64).collect();
    let mut sorted = above.clone();
    sorted.sort_by(f64::total_cmp);
    let p95 = sorted.get(sorted.len() * 95 / 100).copied().unwrap_or(1.0);
    let y = padded(sorted.first().copied().unwrap_or(0.0).min(0.0), (p95 * 3.0).max(10.0));
    let clipped = above.iter().filter(|v| !y.contains(v)).count();
    let caption = format!(
        "delay above the line (receive − corrected), ms; {clipped} samples above the view (spikes, bursts)"
    );
    let mut c = panel(&areas[1], caption, x_end, &y, "ms")?;
    c.draw_series(
        s.iter()
            .zip(&above)
            .map(|(x, &v)| (minutes(x.recv), v))
            .filter(|p| y.contains(&p.1))
            .map(|p| Circle::new(p, 1, BLACK.mix(0.4).filled())),
    )
    .map_err(err)?;
    c.draw_series(LineSeries::new([(0.0, 0.0), (x_end, 0.0)], BLUE.stroke_width(2))).map_err(err)?;
    step_marks(&mut c, &steps, &y)?;

    // 3. the error against the truth, ms, with the contract's band
    if let Some((p99, target)) = summary.error_p99 {
        let d_min = summary.d_min;
        let bound = (target + 5) as f64;
        let y = -bound..bound;
        let err_pts: Vec<(f64, f64)> =
            s.iter().filter_map(|x| x.truth().map(|t| (minutes(x.recv), (x.corrected - t) as f64))).collect();
        let clipped = err_pts.iter().filter(|p| !y.contains(&p.1)).count();
        let caption = format!(
            "corrected − true, ms: p99 after 30 samples per segment {p99} ms, target ≤ {target} (minimum delay {d_min} + 2); {clipped} outside the view"
        );
        let mut c = panel(&areas[2], caption, x_end, &y, "ms")?;
        for v in [target as f64, -(target as f64)] {
            c.draw_series(LineSeries::new([(0.0, v), (x_end, v)], GREEN.stroke_width(1))).map_err(err)?;
        }
        c.draw_series(LineSeries::new([(0.0, d_min as f64), (x_end, d_min as f64)], BLUE.stroke_width(1)))
            .map_err(err)?;
        c.draw_series(
            err_pts
                .into_iter()
                .filter(|p| y.contains(&p.1))
                .map(|p| Circle::new(p, 1, RED.mix(0.5).filled())),
        )
        .map_err(err)?;
        step_marks(&mut c, &steps, &y)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// One panel over receive time (minutes) with its caption and y unit.
fn panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: impl AsRef<str>,
    x_end: f64,
    y: &std::ops::Range<f64>,
    unit: &str,
) -> Result<Chart<'a, 'b>, String> {
    let mut c = ChartBuilder::on(area)
        .margin(8)
        .caption(caption, ("sans-serif", 14))
        .x_label_area_size(28)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_end, y.clone())
        .map_err(err)?;
    c.configure_mesh().x_desc("minutes").y_desc(unit).draw().map_err(err)?;
    Ok(c)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn step_marks(c: &mut Chart<'_, '_>, steps: &[f64], y: &std::ops::Range<f64>) -> Result<(), String> {
    c.draw_series(
        steps.iter().map(|&x| PathElement::new(vec![(x, y.start), (x, y.end)], RED.stroke_width(1))),
    )
    .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe_and_memory_is_bounded() {
        assert_eq!(file_name("site1-a1"), "site1-a1.svg");
        assert_eq!(file_name("../etc/passwd"), "_.._etc_passwd.svg");
        assert_eq!(file_name(""), "_.svg");
        let mut t = ClockTrace::history();
        for i in 0..(3 * MAX_POINTS as i64) {
            t.add("d", i, i + 10, i + 5, None);
        }
        let d = &t.devices["d"];
        assert!(d.samples.len() <= MAX_POINTS, "{}", d.samples.len());
        assert!(d.samples.len() >= MAX_POINTS / 2);
        for i in 0..(MAX_DEVICES + 5) {
            t.add(&format!("x{i}"), 0, 0, 0, None);
        }
        assert_eq!(t.len(), MAX_DEVICES);
        assert_eq!(t.not_drawn, 6);
    }

    #[test]
    fn a_live_trace_keeps_the_last_samples_in_a_ring_it_never_grows() {
        let mut t = ClockTrace::last(8, 2);
        for i in 0..100 {
            t.add("d", i, i + 10, i + 5, None);
        }
        let d = &t.devices["d"];
        assert_eq!(d.samples.len(), 8);
        assert_eq!(d.samples.capacity(), 8, "allocated once, at the device's first sample");
        assert_eq!(d.samples.front().map(|s| s.device_ts), Some(92), "the newest eight");
        t.add("e", 0, 200, 0, None);
        t.add("f", 0, 300, 0, None);
        assert_eq!(t.len(), 2, "at most two devices");
        assert_eq!(t.not_drawn, 100, "d, heard least recently, made room for f");
        assert!(t.devices.contains_key("e") && t.devices.contains_key("f"));
        assert_eq!(t.devices["f"].samples.capacity(), 8, "f took d's ring");
        assert!(ClockTrace::memory_bytes(8, 2) >= 2 * 8 * std::mem::size_of::<Sample>() as u64);
    }

    #[test]
    fn pictures_and_index_name_each_device_and_its_steps() {
        let mut t = ClockTrace::last(600, 4);
        // a device 5 s behind, 100 ppm fast, stepped by +2 s at sample 300; 10 ms path
        for i in 0..600i64 {
            let recv = 1_000_000 + i * 1000 + 10;
            let device_ts = 1_000_000 + i * 1000 - 5000 + i / 10 + if i >= 300 { 2000 } else { 0 };
            t.add("site<1>", device_ts, recv, recv - 10, Some(recv - 10));
        }
        t.set_reports([("site<1>", SkewReport { samples: 600, steps: 1, ..SkewReport::default() })]);
        let d = t.device("site_1_.svg").expect("found by its file name");
        let svg = d.svg().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.contains("site&lt;1&gt;: 600 samples, 1 steps"), "the title, escaped");
        assert!(svg.contains("target ≤ 12"), "a third panel against the truth");
        let page = index_html(&t.devices(), 0, "");
        assert!(page.contains("<img src=\"site_1_.svg\""), "{page}");
        assert!(page.contains("<td>600</td><td>1</td>"), "samples and the one step found: {page}");
        assert!(page.contains("0 ms (target ≤ 12) ✓"), "{page}");
        assert!(t.device("nope.svg").is_none());
    }
}
