//! Property tests: every join strategy, inner and left-outer, against a
//! brute-force reference (quadratic, obviously correct) over random streams:
//! random rates and keys, out-of-order arrival within and beyond lateness,
//! duplicates, several matches per key, negative bounds, `max_matches`, and
//! a stream that goes silent (idleness).

use std::collections::HashMap;
use std::path::Path;

use edgejoin::config;
use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::Plan;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Ev {
    right: bool,
    key: u8,
    ts: i64,
    v: i64,
    arrive: i64,
    /// The device that stamped `ts` (per-device watermarks).
    dev: u8,
}

/// A join row, comparable: (key, left (t0, t1, count, v), right).
type Side = (i64, i64, u64, i64);
type Row = (String, Side, Option<Side>);

const RECV0: i64 = 5_000_000_000_000;

fn engine_rows(text: &str, evs: &[Ev]) -> (Vec<(usize, Row)>, Engine) {
    let p = config::parse(Path::new("join.toml"), text).expect("valid config").plan;
    let mut e = Engine::new(p, 9);
    let mut rows = Vec::new();
    let step = std::cell::Cell::new(0usize);
    let side = |s: &edgejoin_engine::join::SideRecord| -> Side {
        let v = s.values.get(0).map_or(i64::MIN, |x| x as i64);
        (s.t0, s.t1, s.count, v)
    };
    {
        let mut sink = |_: &Plan, o: Output<'_>| {
            if let Output::Join(r) = o {
                rows.push((step.get(), (r.key.to_string(), side(&r.left), r.right.as_ref().map(side))));
            }
        };
        for (i, ev) in evs.iter().enumerate() {
            step.set(i);
            let topic = format!("{}/k{}/d{}", if ev.right { "b" } else { "a" }, ev.key, ev.dev);
            let payload = format!(r#"{{"ts":{},"v":{}}}"#, ev.ts, ev.v);
            e.ingest(RECV0 + ev.arrive, &topic, payload.as_bytes(), &mut sink);
        }
        step.set(evs.len());
        e.flush(&mut sink);
    }
    (rows, e)
}

fn streams(la: i64, lb: i64, idle_a: Option<i64>, idle_b: Option<i64>) -> String {
    streams_with(la, lb, idle_a, idle_b, "stream")
}

/// Both streams with `watermark = "stream"` or `"device"`.
fn streams_with(la: i64, lb: i64, idle_a: Option<i64>, idle_b: Option<i64>, mode: &str) -> String {
    let idle = |i: Option<i64>| i.map_or(String::new(), |t| format!("idle_timeout = \"{t}ms\"\n"));
    // device watermarks size window rings to cover max_future: keep it small there
    let future = if mode == "device" { "1s" } else { "100y" };
    format!(
        r#"
[gateway]
max_devices = 8

[[stream]]
name = "a"
topics = ["a/{{k}}/{{d}}"]
key = "{{k}}"
device = "{{d}}"
watermark = "{mode}"
lateness = "{la}ms"
{}max_future = "{future}"
capacity = 4096
max_keys = 16
values = ["v"]

[[stream]]
name = "b"
topics = ["b/{{k}}/{{d}}"]
key = "{{k}}"
device = "{{d}}"
watermark = "{mode}"
lateness = "{lb}ms"
{}max_future = "{future}"
capacity = 4096
max_keys = 16
values = ["v"]
"#,
        idle(idle_a),
        idle(idle_b)
    )
}

/// Stream-level and join-level acceptance, and the join watermark after
/// each arrival, exactly as docs/SEMANTICS.md §2.1, §2.3 and §5.5 define them.
struct Sim {
    /// Accepted by the join (on time for its stream and not below the frontier).
    accepted: Vec<bool>,
    /// Per side, its effective progress after each arrival: max(its watermark, frontier).
    eff_after: [Vec<i64>; 2],
}

/// The same with per-device watermarks on both streams (docs/SEMANTICS.md §2.4): a
/// side's watermark is the minimum over its devices heard within its idle
/// timeout, never moving back; an event below its device's watermark is
/// late, one below its stream's watermark is late for the join.
fn simulate_devices(evs: &[Ev], lat: [i64; 2], idle: [Option<i64>; 2]) -> (Sim, [u64; 2]) {
    use std::collections::BTreeMap;
    let mut dmax: [BTreeMap<u8, i64>; 2] = Default::default();
    let mut heard: [BTreeMap<u8, i64>; 2] = Default::default();
    let mut swm = [i64::MIN; 2];
    let start = evs.first().map_or(0, |e| e.arrive);
    let mut spoke = [start; 2];
    let mut frontier = i64::MIN;
    let mut below_stream = [0u64; 2];
    let mut accepted = vec![false; evs.len()];
    let mut eff_after = [vec![i64::MIN; evs.len()], vec![i64::MIN; evs.len()]];
    for (i, ev) in evs.iter().enumerate() {
        let s = ev.right as usize;
        let now = ev.arrive;
        spoke[s] = now;
        heard[s].insert(ev.dev, now);
        let on_time = dmax[s].get(&ev.dev).is_none_or(|&m| ev.ts >= m - lat[s]);
        if on_time {
            let m = dmax[s].entry(ev.dev).or_insert(ev.ts);
            *m = (*m).max(ev.ts);
            if ev.ts < swm[s] {
                below_stream[s] += 1;
            } else {
                accepted[i] = ev.ts >= frontier;
            }
        }
        // every stream's watermark at this gateway time
        for side in 0..2 {
            let active =
                dmax[side].iter().filter(|(d, _)| idle[side].is_none_or(|t| now - heard[side][d] < t));
            if let Some(m) = active.map(|(_, &m)| m - lat[side]).min() {
                swm[side] = swm[side].max(m);
            }
        }
        let mut min: Option<i64> = None;
        for side in 0..2 {
            let is_idle = idle[side].is_some_and(|t| now - spoke[side] >= t);
            if !is_idle {
                min = Some(min.map_or(swm[side], |m: i64| m.min(swm[side])));
            }
        }
        if let Some(m) = min {
            frontier = frontier.max(m);
        }
        for (side, eff) in eff_after.iter_mut().enumerate() {
            eff[i] = swm[side].max(frontier);
        }
    }
    (Sim { accepted, eff_after }, below_stream)
}

fn simulate(evs: &[Ev], lat: [i64; 2], idle: [Option<i64>; 2]) -> Sim {
    let mut max = [i64::MIN; 2];
    let wm = |max: &[i64; 2], s: usize| if max[s] == i64::MIN { i64::MIN } else { max[s] - lat[s] };
    let start = evs.first().map_or(0, |e| e.arrive);
    let mut spoke = [start; 2];
    let mut frontier = i64::MIN;
    let mut accepted = vec![false; evs.len()];
    let mut eff_after = [vec![i64::MIN; evs.len()], vec![i64::MIN; evs.len()]];
    for (i, ev) in evs.iter().enumerate() {
        let s = ev.right as usize;
        let now = ev.arrive;
        spoke[s] = now;
        if ev.ts >= wm(&max, s) {
            max[s] = max[s].max(ev.ts);
            accepted[i] = ev.ts >= frontier;
        }
        let mut min: Option<i64> = None;
        for side in 0..2 {
            let is_idle = idle[side].is_some_and(|t| now - spoke[side] >= t);
            if !is_idle {
                let w = wm(&max, side);
                min = Some(min.map_or(w, |m: i64| m.min(w)));
            }
        }
        if let Some(m) = min {
            frontier = frontier.max(m);
        }
        for (side, eff) in eff_after.iter_mut().enumerate() {
            eff[i] = wm(&max, side).max(frontier);
        }
    }
    Sim { accepted, eff_after }
}

/// The first arrival at or after `from` where the right side's effective progress reaches `at`; the flush otherwise.
fn when(sim: &Sim, from: usize, at: i64) -> usize {
    let eff = &sim.eff_after[1];
    (from..eff.len()).find(|&j| eff[j] >= at).unwrap_or(eff.len())
}

fn raw_side(e: &Ev) -> Side {
    (e.ts, e.ts, 1, e.v)
}

#[allow(clippy::too_many_arguments)]
fn tolerance_model(
    evs: &[Ev],
    sim: &Sim,
    lower: i64,
    upper: i64,
    outer: bool,
    max: usize,
) -> Vec<(usize, Row)> {
    let mut out = Vec::new();
    for (i, l) in evs.iter().enumerate() {
        if l.right || !sim.accepted[i] {
            continue;
        }
        let matches: Vec<usize> = (0..evs.len())
            .filter(|&j| {
                let r = &evs[j];
                r.right && sim.accepted[j] && r.key == l.key && (lower..=upper).contains(&(r.ts - l.ts))
            })
            .collect();
        for &j in matches.iter().take(max) {
            out.push((i.max(j), (format!("k{}", l.key), raw_side(l), Some(raw_side(&evs[j])))));
        }
        if matches.is_empty() && outer {
            out.push((when(sim, i, l.ts + upper + 1), (format!("k{}", l.key), raw_side(l), None)));
        }
    }
    out
}

fn asof_model(evs: &[Ev], sim: &Sim, tol: i64, outer: bool) -> Vec<(usize, Row)> {
    let mut out = Vec::new();
    for (i, l) in evs.iter().enumerate() {
        if l.right || !sim.accepted[i] {
            continue;
        }
        let best = (0..evs.len())
            .filter(|&j| {
                let r = &evs[j];
                r.right && sim.accepted[j] && r.key == l.key && r.ts <= l.ts && l.ts - r.ts <= tol
            })
            .max_by_key(|&j| (evs[j].ts, j));
        let at = when(sim, i, l.ts + 1);
        match best {
            Some(j) => out.push((at, (format!("k{}", l.key), raw_side(l), Some(raw_side(&evs[j]))))),
            None if outer => out.push((at, (format!("k{}", l.key), raw_side(l), None))),
            None => {}
        }
    }
    out
}

fn sorted(mut v: Vec<(usize, Row)>) -> Vec<(usize, Row)> {
    v.sort();
    v
}

fn gen_events() -> impl Strategy<Value = Vec<Ev>> {
    (2usize..120, 20i64..400, 0u8..3).prop_flat_map(|(n, span, silence)| {
        proptest::collection::vec(
            (
                any::<bool>(),
                0u8..3,
                0..=span,
                -20i64..20,
                0i64..30,
                prop::bool::weighted(0.06),
                prop::bool::weighted(0.05),
            ),
            n,
        )
        .prop_map(move |raw| {
            let mut evs = Vec::new();
            for (right, key, ts, v, jitter, straggler, dup) in raw {
                // silence 1: the right stream stops halfway; 2: it never speaks after its first events
                let cut = match silence {
                    1 => span / 2,
                    2 => span / 8,
                    _ => i64::MAX,
                };
                if right && ts > cut {
                    continue;
                }
                let arrive = ts + jitter + if straggler { 150 } else { 0 };
                evs.push(Ev { right, key, ts, v, arrive, dev: 0 });
                if dup {
                    evs.push(Ev { right, key, ts, v, arrive: arrive + 3, dev: 0 });
                }
            }
            evs.sort_by_key(|e| e.arrive);
            evs
        })
    })
}

/// Events of up to three devices per stream, each device with its own clock
/// offset (one may run far ahead), some falling silent: `gen_events`' shape.
fn gen_device_events() -> impl Strategy<Value = Vec<Ev>> {
    (gen_events(), proptest::collection::vec(prop_oneof![3 => -15i64..15, 1 => 60i64..300], 3), any::<u64>())
        .prop_map(|(mut evs, offsets, seed)| {
            let mut x = seed | 1;
            for e in &mut evs {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                e.dev = (x % 3) as u8;
                e.ts += offsets[e.dev as usize];
            }
            evs
        })
}

fn idle_opt() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![Just(None), (5i64..80).prop_map(Some)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn tolerance_matches_the_reference(
        evs in gen_events(), la in 0i64..40, lb in 0i64..40, ia in idle_opt(), ib in idle_opt(),
        lower in -40i64..40, width in 0i64..60, outer in any::<bool>(), max in 1usize..4,
    ) {
        let upper = lower + width;
        let kind = if outer { "left_outer" } else { "inner" };
        let text = format!("{}\n[[join]]\nname = \"j\"\nstrategy = \"tolerance\"\nleft = \"a\"\nright = \"b\"\ntype = \"{kind}\"\nlower = \"{lower}ms\"\nupper = \"{upper}ms\"\nmax_matches = {max}\n", streams(la, lb, ia, ib));
        let (got, e) = engine_rows(&text, &evs);
        let sim = simulate(&evs, [la, lb], [ia, ib]);
        let want = tolerance_model(&evs, &sim, lower, upper, outer, max);
        let late_after_idle = (0..evs.len()).filter(|&i| !sim.accepted[i]).count() as u64
            - e.stream_counters(0).late_dropped - e.stream_counters(1).late_dropped;
        prop_assert_eq!(e.join_counters(0).late_after_idle, late_after_idle);
        prop_assert_eq!(e.join_occupancy(0), (0, 0, 0));
        prop_assert_eq!(e.join_counters(0).capacity_evictions, [0, 0]);
        prop_assert_eq!(sorted(got), sorted(want));
    }

    #[test]
    fn asof_matches_the_reference(
        evs in gen_events(), la in 0i64..40, lb in 0i64..40, ia in idle_opt(), ib in idle_opt(),
        tol in 0i64..80, outer in any::<bool>(),
    ) {
        let kind = if outer { "left_outer" } else { "inner" };
        let text = format!("{}\n[[join]]\nname = \"j\"\nstrategy = \"asof\"\nleft = \"a\"\nright = \"b\"\ntype = \"{kind}\"\ntolerance = \"{tol}ms\"\n", streams(la, lb, ia, ib));
        let (got, e) = engine_rows(&text, &evs);
        let sim = simulate(&evs, [la, lb], [ia, ib]);
        let want = asof_model(&evs, &sim, tol, outer);
        prop_assert_eq!(e.join_occupancy(0), (0, 0, 0));
        prop_assert_eq!(sorted(got), sorted(want));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn tolerance_over_device_watermarks_matches_the_reference(
        evs in gen_device_events(), la in 0i64..40, lb in 0i64..40, ia in idle_opt(), ib in idle_opt(),
        lower in -40i64..40, width in 0i64..60, outer in any::<bool>(), max in 1usize..4,
    ) {
        let upper = lower + width;
        let kind = if outer { "left_outer" } else { "inner" };
        let text = format!("{}\n[[join]]\nname = \"j\"\nstrategy = \"tolerance\"\nleft = \"a\"\nright = \"b\"\ntype = \"{kind}\"\nlower = \"{lower}ms\"\nupper = \"{upper}ms\"\nmax_matches = {max}\n", streams_with(la, lb, ia, ib, "device"));
        let (got, e) = engine_rows(&text, &evs);
        let (sim, below) = simulate_devices(&evs, [la, lb], [ia, ib]);
        let want = tolerance_model(&evs, &sim, lower, upper, outer, max);
        for (s, below) in below.iter().enumerate() {
            prop_assert_eq!(e.device_watermarks(s).unwrap().late_after_idle, *below);
        }
        let late_after_idle = (0..evs.len()).filter(|&i| !sim.accepted[i]).count() as u64
            - e.stream_counters(0).late_dropped - e.stream_counters(1).late_dropped - below[0] - below[1];
        prop_assert_eq!(e.join_counters(0).late_after_idle, late_after_idle);
        prop_assert_eq!(e.join_occupancy(0), (0, 0, 0));
        prop_assert_eq!(e.join_counters(0).capacity_evictions, [0, 0]);
        prop_assert_eq!(sorted(got), sorted(want));
    }

    #[test]
    fn asof_over_device_watermarks_matches_the_reference(
        evs in gen_device_events(), la in 0i64..40, lb in 0i64..40, ia in idle_opt(), ib in idle_opt(),
        tol in 0i64..80, outer in any::<bool>(),
    ) {
        let kind = if outer { "left_outer" } else { "inner" };
        let text = format!("{}\n[[join]]\nname = \"j\"\nstrategy = \"asof\"\nleft = \"a\"\nright = \"b\"\ntype = \"{kind}\"\ntolerance = \"{tol}ms\"\n", streams_with(la, lb, ia, ib, "device"));
        let (got, e) = engine_rows(&text, &evs);
        let (sim, _) = simulate_devices(&evs, [la, lb], [ia, ib]);
        let want = asof_model(&evs, &sim, tol, outer);
        prop_assert_eq!(e.join_occupancy(0), (0, 0, 0));
        prop_assert_eq!(sorted(got), sorted(want));
    }
}

// ---------- window joins ----------

#[derive(Clone, Copy, Debug)]
enum Shape {
    Fixed { size: i64, slide: i64, offset: i64 },
    Session { gap: i64 },
}

impl Shape {
    fn toml(&self) -> String {
        match *self {
            Shape::Fixed { size, slide, offset } => {
                format!("size = \"{size}ms\"\nslide = \"{slide}ms\"\noffset = \"{offset}ms\"")
            }
            Shape::Session { gap } => format!("gap = \"{gap}ms\""),
        }
    }
}

/// A closed window in the model: key, start, end, count, sum, and its delivery position.
#[derive(Clone, Debug)]
struct Win {
    key: u8,
    start: i64,
    end: i64,
    count: u64,
    sum: i64,
    pos: (usize, usize, i64, i64, u8),
}

/// Brute-force windows of one side from the events on time for its stream.
fn windows_of(evs: &[Ev], right: bool, lateness: i64, shape: Shape, op: usize) -> Vec<Win> {
    windows_of_mode(evs, right, lateness, shape, op, false)
}

/// The same, with per-device watermarks when `devices` (no idleness: every
/// device holds its stream; an event below the stream's watermark is late
/// for the window).
fn windows_of_mode(
    evs: &[Ev],
    right: bool,
    lateness: i64,
    shape: Shape,
    op: usize,
    devices: bool,
) -> Vec<Win> {
    let mut max = i64::MIN;
    let mut dmax: std::collections::BTreeMap<u8, i64> = Default::default();
    let mut on_time = Vec::new();
    let mut wm_after = Vec::new();
    let mut wm = i64::MIN;
    for (i, e) in evs.iter().enumerate() {
        if e.right == right {
            if devices {
                if dmax.get(&e.dev).is_none_or(|&m| e.ts >= m - lateness) {
                    let m = dmax.entry(e.dev).or_insert(e.ts);
                    *m = (*m).max(e.ts);
                    if e.ts >= wm {
                        on_time.push(i);
                    }
                }
                wm = wm.max(dmax.values().map(|m| m - lateness).min().unwrap_or(i64::MIN));
            } else {
                let w = if max == i64::MIN { i64::MIN } else { max - lateness };
                if e.ts >= w {
                    max = max.max(e.ts);
                    on_time.push(i);
                }
                wm = if max == i64::MIN { i64::MIN } else { max - lateness };
            }
        }
        wm_after.push(wm);
    }
    let close =
        |at: i64| (0..evs.len()).find(|&j| evs[j].right == right && wm_after[j] >= at).unwrap_or(evs.len());
    let mut out = Vec::new();
    for key in 0..3u8 {
        let mine: Vec<&Ev> = on_time.iter().map(|&i| &evs[i]).filter(|e| e.key == key).collect();
        let mut spans: Vec<(i64, i64, i64, Vec<&Ev>)> = Vec::new(); // start, end, close_at, members
        match shape {
            Shape::Fixed { size, slide, offset } => {
                let off = offset.rem_euclid(slide);
                let mut starts: Vec<i64> = Vec::new();
                for e in &mine {
                    let mut s = off + (e.ts - off).div_euclid(slide) * slide;
                    while s + size > e.ts {
                        starts.push(s);
                        s -= slide;
                    }
                }
                starts.sort();
                starts.dedup();
                for s in starts {
                    let m: Vec<&Ev> = mine.iter().copied().filter(|e| s <= e.ts && e.ts < s + size).collect();
                    spans.push((s, s + size, s + size, m));
                }
            }
            Shape::Session { gap } => {
                let mut sorted = mine.clone();
                sorted.sort_by_key(|e| e.ts);
                let mut cur: Vec<&Ev> = Vec::new();
                for e in sorted {
                    if cur.last().is_some_and(|l| e.ts - l.ts > gap) {
                        let (f, l) = (cur[0].ts, cur.last().unwrap().ts);
                        spans.push((f, l + gap, l + gap + 1, std::mem::take(&mut cur)));
                    }
                    cur.push(e);
                }
                if let Some(l) = cur.last() {
                    let f = cur[0].ts;
                    let l = l.ts;
                    spans.push((f, l + gap, l + gap + 1, cur));
                }
            }
        }
        for (start, end, close_at, m) in spans {
            let step = close(close_at);
            out.push(Win {
                key,
                start,
                end,
                count: m.len() as u64,
                sum: m.iter().map(|e| e.v).sum(),
                pos: (step, op, end, start, key),
            });
        }
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum WinStrategy {
    Bucket,
    Contained,
    Overlaps,
    Session(i64),
}

fn window_join_model(l: &[Win], r: &[Win], strat: WinStrategy, outer: bool, max: usize) -> Vec<Row> {
    let side = |w: &Win| (w.start, w.end, w.count, w.sum);
    let mut out = Vec::new();
    for lw in l {
        let mut ms: Vec<&Win> = r
            .iter()
            .filter(|rw| {
                rw.key == lw.key
                    && match strat {
                        WinStrategy::Bucket => lw.start == rw.start,
                        WinStrategy::Contained => rw.start <= lw.start && lw.start < rw.end,
                        WinStrategy::Overlaps => lw.start < rw.end && rw.start < lw.end,
                        WinStrategy::Session(t) => lw.start - t < rw.end && rw.start < lw.end + t,
                    }
            })
            .collect();
        ms.sort_by_key(|w| w.pos);
        for rw in ms.iter().take(max) {
            out.push((format!("k{}", lw.key), side(lw), Some(side(rw))));
        }
        if ms.is_empty() && outer {
            out.push((format!("k{}", lw.key), side(lw), None));
        }
    }
    out.sort();
    out
}

fn fixed_shape() -> impl Strategy<Value = Shape> {
    (1i64..50, 0u8..3, 1i64..60, -60i64..60).prop_map(|(size, pick, any_slide, offset)| {
        let slide = match pick {
            0 => size,
            1 => (size / 2).max(1),
            _ => any_slide,
        };
        Shape::Fixed { size, slide, offset }
    })
}

#[allow(clippy::too_many_arguments)]
fn run_window_join(
    evs: &[Ev],
    la: i64,
    lb: i64,
    ls: Shape,
    rs: Shape,
    join: &str,
    outer: bool,
    max: usize,
) -> (Vec<Row>, Engine) {
    run_window_join_mode(evs, la, lb, ls, rs, join, outer, max, "stream")
}

#[allow(clippy::too_many_arguments)]
fn run_window_join_mode(
    evs: &[Ev],
    la: i64,
    lb: i64,
    ls: Shape,
    rs: Shape,
    join: &str,
    outer: bool,
    max: usize,
    mode: &str,
) -> (Vec<Row>, Engine) {
    let kind = if outer { "left_outer" } else { "inner" };
    let text = format!(
        "{}\n[[window]]\nname = \"wl\"\ninput = \"a\"\n{}\naggregates = {{ s = \"sum(v)\" }}\n\n[[window]]\nname = \"wr\"\ninput = \"b\"\n{}\naggregates = {{ s = \"sum(v)\" }}\n\n[[join]]\nname = \"j\"\nleft = \"wl\"\nright = \"wr\"\ntype = \"{kind}\"\nmax_matches = {max}\n{join}\n",
        streams_with(la, lb, None, None, mode),
        ls.toml(),
        rs.toml()
    );
    let (rows, e) = engine_rows(&text, evs);
    let mut rows: Vec<Row> = rows.into_iter().map(|r| r.1).collect();
    rows.sort();
    (rows, e)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn bucket_matches_the_reference(evs in gen_events(), la in 0i64..40, lb in 0i64..40, size in 1i64..50, offset in -60i64..60, outer in any::<bool>()) {
        let shape = Shape::Fixed { size, slide: size, offset };
        let (got, e) = run_window_join(&evs, la, lb, shape, shape, "strategy = \"bucket\"", outer, 4);
        let want = window_join_model(&windows_of(&evs, false, la, shape, 0), &windows_of(&evs, true, lb, shape, 1), WinStrategy::Bucket, outer, 4);
        prop_assert_eq!(e.join_occupancy(0), (0, 0, 0));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn overlap_matches_the_reference(
        evs in gen_events(), la in 0i64..40, lb in 0i64..40, ls in fixed_shape(), rs in fixed_shape(),
        contained in any::<bool>(), outer in any::<bool>(), max in 1usize..4,
    ) {
        let (cond, strat) = if contained { ("contained_start", WinStrategy::Contained) } else { ("overlaps", WinStrategy::Overlaps) };
        let (got, e) = run_window_join(&evs, la, lb, ls, rs, &format!("strategy = \"overlap\"\ncondition = \"{cond}\""), outer, max);
        let want = window_join_model(&windows_of(&evs, false, la, ls, 0), &windows_of(&evs, true, lb, rs, 1), strat, outer, max);
        prop_assert_eq!(e.join_occupancy(0), (0, 0, 0));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn session_matches_the_reference(
        evs in gen_events(), la in 0i64..40, lb in 0i64..40, gl in 1i64..30, gr in 1i64..30,
        tol in 0i64..20, outer in any::<bool>(), max in 1usize..4,
    ) {
        let (ls, rs) = (Shape::Session { gap: gl }, Shape::Session { gap: gr });
        let (got, e) = run_window_join(&evs, la, lb, ls, rs, &format!("strategy = \"session\"\ntolerance = \"{tol}ms\""), outer, max);
        let want = window_join_model(&windows_of(&evs, false, la, ls, 0), &windows_of(&evs, true, lb, rs, 1), WinStrategy::Session(tol), outer, max);
        prop_assert_eq!(e.join_occupancy(0), (0, 0, 0));
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn window_joins_over_device_watermarks_match_the_reference(
        evs in gen_device_events(), la in 0i64..40, lb in 0i64..40, ls in fixed_shape(), rs in fixed_shape(),
        pick in 0u8..4, gl in 1i64..30, gr in 1i64..30, tol in 0i64..20, outer in any::<bool>(), max in 1usize..4,
    ) {
        let (ls, rs, join, strat) = match pick {
            0 => {
                let b = match ls { Shape::Fixed { size, offset, .. } => Shape::Fixed { size, slide: size, offset }, s => s };
                (b, b, "strategy = \"bucket\"".to_string(), WinStrategy::Bucket)
            }
            1 => (ls, rs, "strategy = \"overlap\"\ncondition = \"contained_start\"".to_string(), WinStrategy::Contained),
            2 => (ls, rs, "strategy = \"overlap\"\ncondition = \"overlaps\"".to_string(), WinStrategy::Overlaps),
            _ => (Shape::Session { gap: gl }, Shape::Session { gap: gr }, format!("strategy = \"session\"\ntolerance = \"{tol}ms\""), WinStrategy::Session(tol)),
        };
        let (got, e) = run_window_join_mode(&evs, la, lb, ls, rs, &join, outer, max, "device");
        let want = window_join_model(
            &windows_of_mode(&evs, false, la, ls, 0, true),
            &windows_of_mode(&evs, true, lb, rs, 1, true),
            strat, outer, max,
        );
        prop_assert_eq!(e.join_occupancy(0), (0, 0, 0));
        prop_assert_eq!(e.window_counters(0).capacity_evictions + e.window_counters(1).capacity_evictions, 0);
        prop_assert_eq!(got, want);
    }
}

#[test]
fn reference_helpers_agree_on_a_hand_case() {
    // orders at 0 and 10; payments at 30 and 150; tolerance 0..140
    let evs = vec![
        Ev { right: false, key: 0, ts: 0, v: 1, arrive: 0, dev: 0 },
        Ev { right: false, key: 0, ts: 10, v: 2, arrive: 10, dev: 0 },
        Ev { right: true, key: 0, ts: 30, v: 3, arrive: 30, dev: 0 },
        Ev { right: true, key: 0, ts: 150, v: 4, arrive: 150, dev: 0 },
    ];
    let sim = simulate(&evs, [0, 0], [None, None]);
    let rows = tolerance_model(&evs, &sim, 0, 140, true, 4);
    let m: HashMap<i64, usize> = rows.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.1 .1 .0).or_default() += 1;
        m
    });
    assert_eq!(m[&0], 1); // 30 matches 0; 150 is 150 after
    assert_eq!(m[&10], 2); // 30 and 150 (140 after) both match 10
}
