//! `edgejoin replay --clock-report DIR`: what the clock correction did, per
//! device, as pictures a person can read at a glance (docs/CLOCKS.md). One
//! SVG per device of a `clock = "corrected"` stream:
//! 1. the offset applied (corrected − device time) as a line over the
//!    samples' receive − device time: drift is its slope, a step a jump;
//! 2. each sample's delay above the line (receive − corrected): the line is
//!    the lower envelope, spikes and store-and-forward bursts stand above it;
//! 3. for simulator recordings (their lines carry `truth.ts`), the error of
//!    each corrected time against the true time, with the contract's band
//!    (±(minimum delay + 2 ms), SPEC §4).
//!
//! Steps found are red verticals. `index.html` lists every device with its
//! estimate and links the pictures. Memory is bounded: at most
//! [`MAX_DEVICES`] devices and [`MAX_POINTS`] samples each (past that, every
//! other sample is kept, then every fourth…).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use edgejoin_engine::skew::SkewReport;
use plotters::prelude::*;

/// Devices drawn at most (more are counted, not drawn).
pub const MAX_DEVICES: usize = 1024;
/// Samples kept per device.
pub const MAX_POINTS: usize = 20_000;
/// A jump of the applied offset larger than this between two samples is a step (ms).
const STEP_JUMP_MS: i64 = 100;

#[derive(Clone, Copy, Debug)]
struct Sample {
    recv: i64,
    device_ts: i64,
    corrected: i64,
    truth: Option<i64>,
}

#[derive(Debug)]
struct Device {
    samples: Vec<Sample>,
    /// Every `stride`-th sample is kept.
    stride: usize,
    seen: usize,
}

/// The corrected samples of a replay, per device.
#[derive(Debug, Default)]
pub struct ClockTrace {
    devices: BTreeMap<String, Device>,
    /// Samples of devices beyond [`MAX_DEVICES`].
    pub not_drawn: u64,
}

impl ClockTrace {
    /// Notes one corrected event (`truth`: its true time, when the recording has it).
    pub fn add(&mut self, device: &str, device_ts: i64, recv: i64, corrected: i64, truth: Option<i64>) {
        if !self.devices.contains_key(device) {
            if self.devices.len() >= MAX_DEVICES {
                self.not_drawn += 1;
                return;
            }
            // the name is allocated once per device, not per sample
            self.devices.insert(device.to_string(), Device { samples: Vec::new(), stride: 1, seen: 0 });
        }
        let Some(d) = self.devices.get_mut(device) else { return };
        d.seen += 1;
        if (d.seen - 1) % d.stride != 0 {
            return;
        }
        if d.samples.len() >= MAX_POINTS {
            let mut i = 0;
            d.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            d.stride *= 2;
        }
        d.samples.push(Sample { recv, device_ts, corrected, truth });
    }

    /// Devices traced.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Writes one SVG per device and `index.html` into `dir` (created if
    /// missing); `reports` are the estimators' final reports by device.
    pub fn write(&self, dir: &Path, reports: &[(String, SkewReport)]) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut rows = String::new();
        let mut figures = String::new();
        for (name, d) in &self.devices {
            let file = file_name(name);
            let report = reports.iter().find(|(n, _)| n == name).map(|(_, r)| *r).unwrap_or_default();
            let summary = draw(&dir.join(&file), name, &d.samples, &report)?;
            let truth = match summary.error_p99 {
                Some((p99, target)) => {
                    let mark = if p99 <= target { "✓" } else { "✗" };
                    format!("{p99} ms (target ≤ {target}) {mark}")
                }
                None => "–".into(),
            };
            let _ = writeln!(
                rows,
                "<tr><td><a href=\"#{id}\">{n}</a></td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.2}</td><td>{:.1}</td><td>{truth}</td></tr>",
                report.samples,
                summary.steps,
                report.offset_ms,
                report.drift_ppm,
                report.uncertainty_ms,
                id = html(&file),
                n = html(name),
            );
            let _ = writeln!(
                figures,
                "<h2 id=\"{id}\">{n}</h2>\n<img src=\"{id}\" alt=\"clock of {n}\" width=\"960\">",
                id = html(&file),
                n = html(name)
            );
        }
        let note = if self.not_drawn > 0 {
            format!(
                "<p>{} samples of devices beyond the first {MAX_DEVICES} are not drawn.</p>",
                self.not_drawn
            )
        } else {
            String::new()
        };
        let page = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>edgejoin clock report</title>\n\
             <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
             td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:first-child{{text-align:left}}</style>\n\
             </head><body>\n<h1>Clock correction per device</h1>\n\
             <p>Offset: added to the device's newest time to reach gateway time (includes the path's minimum delay). \
             Drift: how much faster the gateway clock runs than the device's. Uncertainty: how much later than true time \
             + minimum delay a corrected time may be. Error (simulator recordings only): p99 of |corrected − true| after \
             30 samples of each clock segment, against the contract's target (minimum delay + 2 ms). See docs/CLOCKS.md.</p>\n{note}\
             <table>\n<tr><th>device</th><th>samples</th><th>steps</th><th>offset ms</th><th>drift ppm</th>\
             <th>uncertainty ms</th><th>error</th></tr>\n{rows}</table>\n{figures}</body></html>\n"
        );
        std::fs::write(dir.join("index.html"), page).map_err(|e| format!("{}: {e}", dir.display()))
    }
}

/// What a device's picture showed.
struct Summary {
    steps: usize,
    /// (p99 of |error| past the 30th sample of each segment, target), with truth.
    error_p99: Option<(i64, i64)>,
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

fn draw(path: &Path, name: &str, s: &[Sample], report: &SkewReport) -> Result<Summary, String> {
    let t0 = s.first().map_or(0, |x| x.recv);
    let minutes = |recv: i64| (recv - t0) as f64 / 60_000.0;
    let x_end = s.iter().map(|x| minutes(x.recv)).fold(0.0, f64::max).max(1e-3);
    // steps: jumps of the applied offset between consecutive samples (in arrival order)
    let mut steps = Vec::new();
    let mut segment_start = vec![0usize];
    for (i, w) in s.windows(2).enumerate() {
        let (a, b) = (w[0].corrected - w[0].device_ts, w[1].corrected - w[1].device_ts);
        if (b - a).abs() > STEP_JUMP_MS {
            steps.push(minutes(w[1].recv));
            segment_start.push(i + 1);
        }
    }
    let has_truth = s.iter().any(|x| x.truth.is_some());
    let rows = if has_truth { 3 } else { 2 };
    let root = SVGBackend::new(path, (960, 300 * rows as u32)).into_drawing_area();
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
    let mut error_p99 = None;
    if has_truth {
        let d_min = s.iter().filter_map(|x| x.truth.map(|t| x.recv - t)).min().unwrap_or(0);
        let target = d_min + 2;
        let mut errors = Vec::new();
        for (k, &from) in segment_start.iter().enumerate() {
            let to = segment_start.get(k + 1).copied().unwrap_or(s.len());
            errors
                .extend(s[from..to].iter().skip(30).filter_map(|x| x.truth.map(|t| (x.corrected - t).abs())));
        }
        errors.sort_unstable();
        let p99 = errors.get(errors.len() * 99 / 100).copied().unwrap_or(0);
        error_p99 = Some((p99, target));
        let bound = (target + 5) as f64;
        let y = -bound..bound;
        let err_pts: Vec<(f64, f64)> =
            s.iter().filter_map(|x| x.truth.map(|t| (minutes(x.recv), (x.corrected - t) as f64))).collect();
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
    Ok(Summary { steps: steps.len(), error_p99 })
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
        let mut t = ClockTrace::default();
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
}
