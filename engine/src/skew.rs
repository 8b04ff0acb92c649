//! Per-device clock correction (`clock = "corrected"`, docs/SEMANTICS.md §3): maps a
//! device's timestamps onto the gateway clock with an offset and a drift
//! term fitted to the *lower envelope* of `recv - device` — the samples that
//! met the path's minimum delay — so that delay spikes do not pull it.
//!
//! Each device keeps two online lower convex hulls of the points
//! `(x, y) = (device_ts, recv - device_ts)` (in exact integer coordinates
//! relative to the segment's first sample): an older one the estimate is
//! read from and a younger one that replaces it on an interval, so the fit
//! follows drift that changes with temperature and old samples age out. The
//! slope is that of the line supporting the older hull at its mean `x`
//! (Moon, Skelly & Towsley 1999; Zhang, Liu & Xia 2002: the line under every
//! sample closest to them); the level puts it through the lowest sample of
//! either hull, so extrapolating to new samples leans on recent minima. Memory per device is fixed
//! (at most [`HULL`] vertices per hull); each sample costs amortised O(1)
//! hull updates plus an O([`HULL`]) scan.
//!
//! Corrected time = device time + the line at that point, never later than
//! the receive time. The path's minimum one-way delay is part of the line
//! and cannot be separated from the offset with one-way measurements: a
//! corrected time is the true time plus (at least) that minimum delay.
//!
//! Samples far off the line wait, unfitted, in a small buffer: above it a
//! delay spike or a burst after an outage (off by varying amounts); below it
//! a lower envelope (fitted once that is clear); [`STEP_RUN`] of them moved
//! alike are a clock step (reboot to a boot-relative clock, an NTP step, a
//! replaced device): the estimator starts over from them, counts the step,
//! keeps the old line for stragglers stamped before it, and keeps the old
//! slope until the new segment has its own. The slope is held to ±600 ppm
//! (the contract's devices drift up to ±500), so a delayed first sample
//! cannot tilt the fit.

use crate::prelude::*;

use crate::event::Key;
use crate::keytable::{Claim, KeyTable};

/// Most vertices one hull keeps; older ones are dropped first.
pub const HULL: usize = 32;
/// Off-line samples shifted alike that make a clock step.
pub const STEP_RUN: usize = 4;
/// Off-line samples kept while deciding whether they are a step.
const OFF_LINE: usize = 8;
/// The younger hull replaces the older once it has this many samples…
const SWITCH_SAMPLES: u32 = 256;
/// …spanning at least this much device time (ms).
const SWITCH_SPAN_MS: i64 = 300_000;
/// Below the line by more than this (plus the drift allowance) is a forward step.
const STEP_BELOW_MS: i64 = 50;
/// How far off the fit may be for drift: its slope is held within ±600 ppm
/// of zero and devices drift up to ±500 ppm (docs/SEMANTICS.md §3), so it is off by at most
/// 1100 ppm of the distance to the newest fitted sample.
const DRIFT_ALLOWANCE_PPM: i64 = 1200;
/// Above the line by more than this (and more than 8 mean residuals) starts a step run.
const STEP_ABOVE_MS: i64 = 250;
/// Off the line by more than a day (no store-and-forward buffer holds a
/// reading that long), a sample is taken at its receive
/// time while the estimator decides whether its clock stepped (ms).
const CLOCK_JUMP_MS: i64 = 86_400_000;
/// A sample below the line that sits at most this far above the previous
/// segment's line is a straggler stamped before the step (ms).
const MAX_STRAGGLER_DELAY_MS: i64 = 600_000;
/// The steepest drift the fit believes (ppm): ±500 (docs/SEMANTICS.md §3).
const MAX_SLOPE_PPM: f64 = 600.0;
/// Samples a segment fits before its own slope replaces the one from before a step.
const PRIOR_SAMPLES: u32 = 32;
/// Samples a segment fits before a run of outliers counts as a clock step
/// (before that, the run only means the segment's first samples were delayed).
const WARM_SAMPLES: u32 = 8;
/// The least slope uncertainty (per ms) a step's samples are judged with (50 ppm).
const STEP_SLOPE_FLOOR: f64 = 50e-6;
/// A hull vertex this far (ms) below every other on the slope is not the envelope.
const OUTLIER_MS: f64 = 25.0;
/// A segment's own slope replaces the one from before its step once it is
/// known this well (per ms: 20 ppm).
const PRIOR_TRUST: f64 = 20e-6;
/// The slope's uncertainty: this many times the jitter over the samples and span.
const SLOPE_K: f64 = 8.0;
/// Below this many samples a segment's slope is less sure than [`SLOPE_K`]
/// says: its uncertainty is scaled by `YOUNG_SAMPLES / samples`. The chord of
/// a few dozen jittery samples leans on one or two near the minimum (a 0.5 Hz
/// device with 19 ms median jitter was 150 ppm off after 40 samples, where
/// the rule gave 70).
const YOUNG_SAMPLES: f64 = 64.0;
/// Samples of a step run agree within this (or 2 mean residuals).
const STEP_AGREE_MS: i64 = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
struct Pt {
    x: i64,
    y: i64,
}

/// An online lower convex hull over points in (mostly) increasing `x`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Hull {
    v: [Pt; HULL],
    len: u8,
    count: u32,
    /// Sums of the samples' coordinates: no longer read (the slope is the
    /// hull's chord), kept so that checkpoints keep their format.
    sum_x: i128,
    sum_y: i128,
    min_x: i64,
    max_x: i64,
}

/// How far the fit may have drifted over `dx` ms of device time.
#[inline]
fn drift_allowance(dx: i64) -> f64 {
    dx.unsigned_abs() as f64 * DRIFT_ALLOWANCE_PPM as f64 / 1e6
}

/// The cross product of `o→a` and `o→b`. Differences are taken in i128
/// (points saturate at the ends of i64: absurd receive times reach them) and
/// the products saturate: never an overflow, exact for any sane clock.
#[inline]
fn cross(o: Pt, a: Pt, b: Pt) -> i128 {
    let d = |p: i64, q: i64| i128::from(p) - i128::from(q);
    d(a.x, o.x).saturating_mul(d(b.y, o.y)).saturating_sub(d(a.y, o.y).saturating_mul(d(b.x, o.x)))
}

impl Hull {
    const EMPTY: Hull = Hull {
        v: [Pt { x: 0, y: 0 }; HULL],
        len: 0,
        count: 0,
        sum_x: 0,
        sum_y: 0,
        min_x: i64::MAX,
        max_x: i64::MIN,
    };

    fn verts(&self) -> &[Pt] {
        &self.v[..self.len as usize]
    }

    fn push_vertex(&mut self, p: Pt) {
        if self.len as usize == HULL {
            self.v.copy_within(1.., 0);
            self.len -= 1;
        }
        self.v[self.len as usize] = p;
        self.len += 1;
    }

    fn add(&mut self, p: Pt) {
        self.count += 1;
        self.sum_x += p.x as i128;
        self.sum_y += p.y as i128;
        self.min_x = self.min_x.min(p.x);
        self.max_x = self.max_x.max(p.x);
        let n = self.len as usize;
        if n == 0 || p.x > self.v[n - 1].x {
            self.append(p);
        } else if p.x == self.v[n - 1].x {
            if p.y < self.v[n - 1].y {
                self.len -= 1;
                self.append(p);
            }
        } else if self.below(p) {
            self.insert_middle(p);
        }
    }

    /// Monotone-chain append: drop vertices the new point makes non-convex.
    fn append(&mut self, p: Pt) {
        while self.len >= 2 {
            let n = self.len as usize;
            if cross(self.v[n - 2], self.v[n - 1], p) <= 0 {
                self.len -= 1;
            } else {
                break;
            }
        }
        self.push_vertex(p);
    }

    /// Whether `p` (left of the last vertex) lies under the hull.
    fn below(&self, p: Pt) -> bool {
        let v = self.verts();
        if p.x < v[0].x {
            return true;
        }
        let i = v.partition_point(|q| q.x <= p.x);
        // v[i-1].x <= p.x < v[i].x
        let (a, b) = (v[i - 1], v[i]);
        if a.x == p.x {
            return p.y < a.y;
        }
        cross(a, b, p) < 0
    }

    /// A late-arriving (smaller `x`) point under the hull: rebuild from the
    /// vertices plus the point (at most `HULL + 1` points).
    fn insert_middle(&mut self, p: Pt) {
        let mut pts = [Pt::default(); HULL + 1];
        let mut n = 0;
        let mut placed = false;
        for &q in self.verts() {
            if !placed && p.x <= q.x {
                pts[n] = p;
                n += 1;
                placed = true;
            }
            if q.x == p.x {
                continue; // p is lower there
            }
            pts[n] = q;
            n += 1;
        }
        if !placed {
            pts[n] = p;
            n += 1;
        }
        self.len = 0;
        for &q in &pts[..n] {
            self.append(q);
        }
    }

    /// The hull's lower boundary at `x` (within its span).
    fn at(&self, x: i64) -> f64 {
        let v = self.verts();
        let i = v.partition_point(|q| q.x <= x).clamp(1, v.len() - 1);
        let (a, b) = (v[i - 1], v[i]);
        // differences in f64: exact for any sane clock, no overflow at the ends of i64
        a.y as f64 + (b.y as f64 - a.y as f64) * (x as f64 - a.x as f64) / (b.x as f64 - a.x as f64)
    }

    /// The hull's line: its mean slope over the middle half of its span,
    /// through its boundary there: `(y at x = 0, slope)`.
    fn line(&self) -> Option<(f64, f64)> {
        let v = self.verts();
        match v.len() {
            0 => None,
            1 => Some((v[0].y as f64, 0.0)),
            _ => {
                // the chord of the hull between a quarter and three quarters of
                // its span: its mean slope over the middle half (the edges near
                // the ends rest on few samples and lean up)
                let (lo, hi) = (v[0].x, v[v.len() - 1].x);
                let quarter = ((i128::from(hi) - i128::from(lo)) / 4) as i64;
                let (q1, q3) = (lo.saturating_add(quarter), hi.saturating_sub(quarter));
                if q3 <= q1 {
                    return Some((v[0].y as f64, 0.0));
                }
                let (y1, y3) = (self.at(q1), self.at(q3));
                let slope = (y3 - y1) / (q3 as f64 - q1 as f64);
                Some((y1 - slope * q1 as f64, slope))
            }
        }
    }
}

/// Keeps the two lowest values folded in, of two different vertices (the
/// hulls share vertices: `x` tells them apart).
#[inline]
fn lowest_two((a, ax, b): (f64, i64, f64), (v, x): (f64, i64)) -> (f64, i64, f64) {
    if x == ax {
        (a.min(v), ax, b)
    } else if v < a {
        (v, x, a)
    } else {
        (a, ax, b.min(v))
    }
}

/// The envelope's level from the two lowest vertices projected on the
/// slope: the lowest, unless it sits alone far below the next — one
/// sample that entered the hull without meeting the line, e.g. a sample
/// stamped before a clock step and delayed by about the step's size, which
/// joined the step's samples as one of them.
#[inline]
fn envelope((lowest, _, next): (f64, i64, f64)) -> f64 {
    if next != f64::MAX && next - lowest > OUTLIER_MS {
        next
    } else {
        lowest
    }
}

/// What an estimator reports about its device.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct SkewReport {
    /// Added to the device's newest timestamp to get gateway time (includes
    /// the path's minimum delay).
    pub offset_ms: f64,
    /// How much faster the gateway clock runs than the device's, in ppm.
    pub drift_ppm: f64,
    pub samples: u64,
    pub steps: u64,
    /// Typical distance of ordinary samples above the line (ms): delay jitter.
    pub spread_ms: f64,
    /// Corrected times clamped to their receive time.
    pub clamped: u64,
    /// How much later than the true time plus the path's minimum delay a
    /// corrected time may come out (ms): the envelope's own jitter
    /// (`spread` over the samples fitted), the slope's uncertainty over half
    /// the fitted span, and 1 ms of integer-millisecond rounding. Large
    /// while a clock segment is young, then about 1–2 ms.
    pub uncertainty_ms: f64,
}

/// An estimator's hulls, for diagnostics: vertices `(x, y)` relative to the
/// segment's first sample, and the slope and its uncertainty.
#[doc(hidden)]
#[derive(Debug)]
pub struct HullView {
    pub older: Vec<(i64, i64)>,
    pub younger: Vec<(i64, i64)>,
    pub slope_ppm: f64,
    pub uncertainty_ppm: f64,
}

/// A sample off the line, kept while it may be the start of a clock step.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct RunSample {
    device_ts: i64,
    recv_ms: i64,
    /// Distance from the line when it arrived (negative: below).
    r: f64,
}

/// A clock segment's final line, kept after a step for stragglers stamped before it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct PrevLine {
    valid: bool,
    x0: i64,
    y0: i64,
    a: f64,
    b: f64,
}

impl PrevLine {
    const NONE: PrevLine = PrevLine { valid: false, x0: 0, y0: 0, a: 0.0, b: 0.0 };

    /// The sample's distance from this line, and its corrected time on it.
    fn residual(&self, device_ts: i64, recv_ms: i64) -> Option<(f64, i64)> {
        if !self.valid {
            return None;
        }
        let x = device_ts.saturating_sub(self.x0);
        let y = recv_ms.saturating_sub(device_ts).saturating_sub(self.y0);
        let line = self.a + self.b * x as f64;
        Some((y as f64 - line, crate::math::floor(device_ts as f64 + self.y0 as f64 + line) as i64))
    }
}

/// The clock estimator of one device.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Estimator {
    /// Segment origin: device time and `recv - device` of its first sample.
    x0: i64,
    y0: i64,
    started: bool,
    old: Hull,
    young: Hull,
    /// Consecutive samples off the line on the same side by about the same
    /// amount: a clock step once there are [`STEP_RUN`].
    run: [RunSample; OFF_LINE],
    run_len: u8,
    /// The line (level, slope) when the run began.
    run_line: (f64, f64),
    /// Samples since the run began that did not fit it.
    run_misses: u8,
    /// Exponential mean of ordinary samples' distance above the line.
    spread: f64,
    samples: u64,
    steps: u64,
    clamped: u64,
    last_x: i64,
    prev: PrevLine,
    /// The slope before the last step, used until the new segment has its own.
    prior_slope: Option<f64>,
}

impl Default for Estimator {
    fn default() -> Self {
        Estimator {
            x0: 0,
            y0: 0,
            started: false,
            old: Hull::EMPTY,
            young: Hull::EMPTY,
            run: [RunSample::default(); OFF_LINE],
            run_len: 0,
            run_line: (0.0, 0.0),
            run_misses: 0,
            spread: 0.0,
            samples: 0,
            steps: 0,
            clamped: 0,
            last_x: 0,
            prev: PrevLine::NONE,
            prior_slope: None,
        }
    }
}

impl Estimator {
    /// The estimate: the slope of [`Self::slope`], at the level of the
    /// lowest vertex under that slope in either hull ([`envelope`]).
    fn line(&self) -> Option<(f64, f64)> {
        let (b, _) = self.slope()?;
        Some((self.level_at(0, b, 0.0), b))
    }

    /// The envelope at `x` on slope `b`, leaning `u` per ms of distance from
    /// each vertex: the lowest value there through any vertex of either hull.
    fn level_at(&self, x: i64, b: f64, u: f64) -> f64 {
        let lowest = self
            .young
            .verts()
            .iter()
            .chain(self.old.verts())
            .map(|q| {
                let dx = (x - q.x) as f64;
                (q.y as f64 + b * dx - u * dx.abs(), q.x)
            })
            .fold((f64::MAX, i64::MIN, f64::MAX), lowest_two);
        envelope(lowest)
    }

    /// How far the older hull's slope may be off (per ms of device time):
    /// about the jitter over the number of samples and the span (the ends
    /// of the lower envelope are known to about `spread / samples`).
    fn slope_uncertainty(&self) -> f64 {
        let span = (self.old.max_x - self.old.min_x).max(1) as f64;
        let n = f64::from(self.old.count.max(1));
        // no worse than the most a fit can be off by (a segment's first samples)
        let young = (YOUNG_SAMPLES / n).max(1.0);
        (SLOPE_K * young * self.spread.max(1.0) / (n * span)).min(DRIFT_ALLOWANCE_PPM as f64 / 1e6)
    }

    /// The slope (drift) and how far it may be off. After a step the
    /// previous segment's slope is the better guess until the new segment's
    /// own is known as well: the oscillator did not change, and a few
    /// minutes of jittery samples say little (a slow device with tens of ms
    /// of jitter: ±200 ppm after 30 samples).
    fn slope(&self) -> Option<(f64, f64)> {
        let (_, own) = self.old.line()?;
        let u = self.slope_uncertainty();
        let (b, u) = match self.prior_slope {
            Some(prior) if self.old.count < PRIOR_SAMPLES || u > PRIOR_TRUST => (prior, u.min(PRIOR_TRUST)),
            _ => (own, u),
        };
        Some((b.clamp(-MAX_SLOPE_PPM / 1e6, MAX_SLOPE_PPM / 1e6), u))
    }

    /// The corrected line at `x`, leaning low where the slope is unsure: the
    /// lowest value at `x` of any slope within the uncertainty through any
    /// hull vertex. An estimate that is too early by a few ms stays within
    /// the contract (|corrected − true| ≤ minimum delay + 2 ms, and the
    /// line includes the minimum delay); one too late does not.
    fn cone_at(&self, x: i64) -> Option<f64> {
        let (b, u) = self.slope()?;
        Some(self.level_at(x, b, u))
    }

    fn line_at(&self, x: i64) -> Option<f64> {
        self.line().map(|(a, b)| a + b * x as f64)
    }

    fn restart(&mut self, device_ts: i64, recv_ms: i64) {
        self.x0 = device_ts;
        self.y0 = recv_ms.saturating_sub(device_ts);
        self.started = true;
        self.old = Hull::EMPTY;
        self.young = Hull::EMPTY;
        self.run_len = 0;
    }

    fn point(&self, device_ts: i64, recv_ms: i64) -> Pt {
        Pt {
            x: device_ts.saturating_sub(self.x0),
            y: recv_ms.saturating_sub(device_ts).saturating_sub(self.y0),
        }
    }

    fn fit(&mut self, device_ts: i64, recv_ms: i64) {
        let p = self.point(device_ts, recv_ms);
        self.old.add(p);
        self.young.add(p);
        self.last_x = p.x;
        if (self.young.count >= SWITCH_SAMPLES && self.young.max_x - self.young.min_x >= SWITCH_SPAN_MS)
            || self.young.count >= 100 * SWITCH_SAMPLES
        {
            self.old = self.young.clone();
            self.young = Hull::EMPTY;
        }
    }

    fn above_limit(&self, drift: f64) -> f64 {
        (STEP_ABOVE_MS as f64).max(8.0 * self.spread) + drift
    }

    /// Takes one sample and returns the corrected time of `device_ts`
    /// (never later than `recv_ms`).
    pub fn correct(&mut self, device_ts: i64, recv_ms: i64) -> i64 {
        self.samples += 1;
        if !self.started {
            self.restart(device_ts, recv_ms);
        }
        let p = self.point(device_ts, recv_ms);
        let Some(line) = self.line_at(p.x) else {
            self.fit(device_ts, recv_ms);
            return self.corrected(device_ts, recv_ms);
        };
        let r = p.y as f64 - line;
        let drift = drift_allowance(p.x - self.last_x);
        let below = r < -(STEP_BELOW_MS as f64 + drift);
        let above = r > self.above_limit(drift);
        if !(below || above) {
            self.spread += (r.max(0.0) - self.spread) / 16.0;
            self.fit(device_ts, recv_ms);
            if self.run_len > 0 {
                self.run_misses += 1;
                if self.run_misses as usize >= STEP_RUN {
                    self.flush_run();
                }
            }
            return self.corrected(device_ts, recv_ms);
        }
        // a straggler stamped before the last step fits the previous line
        if let Some((pr, c)) = self.prev.residual(device_ts, recv_ms) {
            let limit = if below { MAX_STRAGGLER_DELAY_MS as f64 } else { self.above_limit(0.0) };
            if pr >= -(STEP_BELOW_MS as f64) && pr <= limit {
                return self.clamp(c, recv_ms);
            }
        }
        // Off the line: a delay spike or a burst (above, by varying amounts),
        // a lower envelope (below), or a clock step: several samples moved
        // alike. Off-line samples wait (unfitted) in a small buffer, measured
        // against the line from before the first of them, until enough agree.
        if self.run_len == 0 {
            self.run_line = self.line().expect("a line exists");
            self.run_misses = 0;
        }
        let rr = p.y as f64 - (self.run_line.0 + self.run_line.1 * p.x as f64);
        if self.run_len as usize == OFF_LINE {
            // full: the oldest was no step; if below the line it was a lower envelope
            let q = self.run[0];
            self.run.copy_within(1.., 0);
            self.run_len -= 1;
            if q.r < 0.0 {
                self.fit(q.device_ts, q.recv_ms);
            }
        }
        self.run[self.run_len as usize] = RunSample { device_ts, recv_ms, r: rr };
        self.run_len += 1;
        let agree = (STEP_AGREE_MS as f64).max(2.0 * self.spread);
        let alike = |q: &RunSample| {
            let dx = q.device_ts.saturating_sub(device_ts);
            (q.r < 0.0) == (rr < 0.0) && (q.r - rr).abs() <= agree + drift_allowance(dx)
        };
        if self.run[..self.run_len as usize].iter().filter(|q| alike(q)).count() >= STEP_RUN {
            let mut group = [RunSample::default(); OFF_LINE];
            let mut n = 0;
            for q in &self.run[..self.run_len as usize] {
                if alike(q) {
                    group[n] = *q;
                    n += 1;
                }
            }
            self.step(&group[..n]);
            return self.corrected(device_ts, recv_ms);
        }
        if rr.abs() > CLOCK_JUMP_MS as f64 {
            // no delay is this long: the clock jumped, and the old line would put
            // the sample hours off; its receive time is the better guess
            return recv_ms;
        }
        self.corrected(device_ts, recv_ms)
    }

    /// A run that fell apart: its below-line samples were a lower envelope after all.
    fn flush_run(&mut self) {
        let n = self.run_len as usize;
        self.run_len = 0;
        for i in 0..n {
            let q = self.run[i];
            if q.r < 0.0 {
                self.fit(q.device_ts, q.recv_ms);
            }
        }
    }

    /// [`STEP_RUN`] or more samples moved alike: the clock stepped. Starts
    /// over from them.
    fn step(&mut self, group: &[RunSample]) {
        if self.old.count >= WARM_SAMPLES {
            self.steps += 1;
            self.prev = match self.line() {
                Some((a, b)) => PrevLine { valid: true, x0: self.x0, y0: self.y0, a, b },
                None => PrevLine::NONE,
            };
            self.prior_slope = self.line().map(|l| l.1);
        }
        // else the segment never settled (its first samples were delayed):
        // start over without calling it a step.
        // The group agreed within the drift the old line might be off by; a
        // settled line is known better than that, and a sample from before
        // the step delayed by about the step's size may have joined. Only
        // the samples close to the group's median (on the old line) start the
        // new segment; the others wait like any off-line sample would.
        let mut rs = [0f64; OFF_LINE];
        for (r, q) in rs.iter_mut().zip(group) {
            *r = q.r;
        }
        let rs = &mut rs[..group.len()];
        rs.sort_unstable_by(f64::total_cmp);
        let median = rs[rs.len() / 2];
        let mid = group.iter().find(|q| q.r == median).map_or(group[0].device_ts, |q| q.device_ts);
        let u = self.slope_uncertainty().max(STEP_SLOPE_FLOOR);
        let tol = |q: &RunSample| {
            STEP_AGREE_MS as f64 / 2.0 + 2.0 * self.spread + u * q.device_ts.abs_diff(mid) as f64
        };
        let close = group.iter().filter(|q| (q.r - median).abs() <= tol(q)).count();
        let keep = |q: &RunSample| close < 2 || (q.r - median).abs() <= tol(q);
        let first = group.iter().find(|q| keep(q)).copied().unwrap_or(group[0]);
        let kept: [Option<RunSample>; OFF_LINE] =
            core::array::from_fn(|i| group.get(i).copied().filter(|q| keep(q)));
        self.restart(first.device_ts, first.recv_ms);
        self.spread = 0.0;
        for q in kept.iter().flatten() {
            self.fit(q.device_ts, q.recv_ms);
        }
    }

    fn corrected(&mut self, device_ts: i64, recv_ms: i64) -> i64 {
        let p = self.point(device_ts, recv_ms);
        let line = self.cone_at(p.x).unwrap_or(p.y as f64);
        let c = device_ts as f64 + self.y0 as f64 + line;
        let c = if c.is_finite() { crate::math::floor(c) as i64 } else { recv_ms };
        self.clamp(c, recv_ms)
    }

    fn clamp(&mut self, corrected: i64, recv_ms: i64) -> i64 {
        if corrected > recv_ms {
            self.clamped += 1;
            recv_ms
        } else {
            corrected
        }
    }

    fn uncertainty_ms(&self) -> f64 {
        if !self.started {
            return 0.0;
        }
        let (_, u) = self.slope().unwrap_or((0.0, 0.0));
        let span = (self.old.max_x - self.old.min_x).max(0) as f64;
        1.0 + self.spread / f64::from(self.old.count.max(1)) + u * span / 2.0
    }

    /// For diagnostics (`tests/tests/clocks.rs`, `EDGEJOIN_FLEET_HULL=1`).
    #[doc(hidden)]
    pub fn hulls(&self) -> HullView {
        let (b, u) = self.slope().unwrap_or((0.0, 0.0));
        let verts = |h: &Hull| h.verts().iter().map(|p| (p.x, p.y)).collect();
        HullView {
            older: verts(&self.old),
            younger: verts(&self.young),
            slope_ppm: b * 1e6,
            uncertainty_ppm: u * 1e6,
        }
    }

    pub fn report(&self) -> SkewReport {
        let (offset_ms, drift_ppm) = match self.line() {
            Some((a, b)) => (self.y0 as f64 + a + b * self.last_x as f64, b * 1e6),
            None => (0.0, 0.0),
        };
        SkewReport {
            offset_ms,
            drift_ppm,
            samples: self.samples,
            steps: self.steps,
            spread_ms: self.spread,
            clamped: self.clamped,
            uncertainty_ms: self.uncertainty_ms(),
        }
    }
}

/// Estimators for up to `capacity` devices, least recently used evicted.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SkewTable {
    keys: KeyTable,
    est: Box<[Estimator]>,
    /// Devices evicted to make room for a new one (their estimate restarts if they return).
    pub evictions: u64,
}

impl SkewTable {
    pub fn new(capacity: usize, seed: u64) -> Self {
        SkewTable {
            keys: KeyTable::new(capacity, seed),
            est: vec![Estimator::default(); capacity].into_boxed_slice(),
            evictions: 0,
        }
    }

    pub fn memory_bytes(capacity: u64) -> u64 {
        KeyTable::memory_bytes(capacity)
            .saturating_add(capacity.saturating_mul(core::mem::size_of::<Estimator>() as u64))
    }

    /// After a restore from a checkpoint: checks the capacity and gives the
    /// key table its full free list again.
    pub fn after_restore(&mut self, capacity: usize) -> Result<(), String> {
        if !self.keys.shape_matches(capacity) || self.est.len() != capacity {
            return Err("the clock estimators have a different capacity (gateway.max_devices)".into());
        }
        self.keys.after_restore();
        Ok(())
    }

    /// Corrects `device_ts` of `device` received at `recv_ms`.
    pub fn correct(&mut self, device: &Key, device_ts: i64, recv_ms: i64) -> i64 {
        let slot = match self.keys.claim(device) {
            Claim::Known(s) => s,
            claim => {
                self.evictions += u64::from(matches!(claim, Claim::Evicted(_)));
                self.est[claim.slot() as usize] = Estimator::default();
                claim.slot()
            }
        };
        self.est[slot as usize].correct(device_ts, recv_ms)
    }

    /// Reports per device, most recently heard first.
    pub fn reports(&self) -> impl Iterator<Item = (&Key, SkewReport)> + '_ {
        self.keys.iter_mru().map(|s| (self.keys.key(s), self.est[s as usize].report()))
    }
}

#[cfg(test)]
mod overflow_tests {
    use super::*;

    /// Found by the fuzz corpus (session 11): receive and device times far
    /// apart made the hull's cross product overflow (a panic in debug builds,
    /// a wrong hull in release).
    #[test]
    fn absurd_receive_times_never_overflow_the_hull() {
        let far = Pt { x: i64::MAX, y: i64::MIN };
        assert!(cross(Pt { x: i64::MIN, y: i64::MAX }, far, Pt { x: 0, y: 0 }) != 0);
        // the engine takes times within ±year 9999 (event times by decoding, "now" by clamping)
        let m = crate::decode::MAX_ABS_TS_MS;
        let mut e = Estimator::default();
        for (i, recv) in [0, m, -m, 1, m - 1, -5, 1 - m, 7].into_iter().enumerate() {
            let ts = [-m, 0, m][i % 3];
            let c = e.correct(ts, recv);
            assert!(c <= recv, "a corrected time is never later than its receive time");
        }
    }
}
