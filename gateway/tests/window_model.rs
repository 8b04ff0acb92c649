//! Property tests: the engine's windows, sessions and late handling against a
//! brute-force model (recompute every window from all on-time events, then
//! find the arrival at which the watermark first closes it) over random
//! event orders, rates, lateness, window shapes and pre-1970 timestamps.

use std::path::Path;

use edgejoin::config;
use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::Plan;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Ev {
    key: u8,
    ts: i64,
    v: Option<i64>,
    /// The device that stamped `ts` (per-device watermarks).
    dev: u8,
}

#[derive(Clone, Debug, PartialEq)]
enum Row {
    Window { key: String, start: i64, end: i64, count: u64, values: Vec<Option<f64>> },
    Late { key: String, ts: i64 },
}

const AGGS: &str = r#"{ n = "count()", nv = "count(v)", s = "sum(v)", lo = "min(v)", hi = "max(v)", f = "first(v)", l = "last(v)", m = "mean(v)", sd = "stddev(v)" }"#;
// BTreeMap order of the names above
const AGG_ORDER: [&str; 9] = ["f", "hi", "l", "lo", "m", "n", "nv", "s", "sd"];

fn pipeline(lateness: i64, window: &str) -> Plan {
    pipeline_with(lateness, window, "", "100y")
}

/// Per-device watermarks, with an idle timeout in ms (gateway time) or none.
fn device_pipeline(lateness: i64, window: &str, idle: Option<i64>) -> Plan {
    let idle = idle.map_or(String::new(), |t| format!("idle_timeout = \"{t}ms\"\n"));
    // a device may run up to max_future ahead of the one holding the stream: the ring covers that
    pipeline_with(lateness, window, &format!("watermark = \"device\"\n{idle}"), "1s")
}

fn pipeline_with(lateness: i64, window: &str, stream_extra: &str, max_future: &str) -> Plan {
    let text = format!(
        r#"
[gateway]
max_devices = 8

[[stream]]
name = "s"
topics = ["t/{{k}}/{{d}}"]
key = "{{k}}"
device = "{{d}}"
{stream_extra}lateness = "{lateness}ms"
late = "route"
max_future = "{max_future}"
values = ["v"]

[[window]]
name = "w"
input = "s"
{window}
aggregates = {AGGS}
topic = "w/{{key}}"
"#
    );
    config::parse(Path::new("model.toml"), &text).expect("valid config").plan
}

fn run_engine(p: Plan, base: i64, evs: &[Ev]) -> Vec<Row> {
    let mut e = Engine::new(p, 42);
    let mut rows = Vec::new();
    let mut sink = |_: &Plan, o: Output<'_>| match o {
        Output::Window(r, _) => rows.push(Row::Window {
            key: r.key.to_string(),
            start: r.start,
            end: r.end,
            count: r.count,
            values: (0..AGG_ORDER.len()).map(|i| r.values.get(i)).collect(),
        }),
        Output::Late(r) => rows.push(Row::Late { key: r.key.to_string(), ts: r.ts }),
        Output::Join(_) => unreachable!("no joins configured"),
    };
    for (i, ev) in evs.iter().enumerate() {
        let payload = match ev.v {
            Some(v) => format!(r#"{{"ts":{},"v":{v}}}"#, base + ev.ts),
            None => format!(r#"{{"ts":{}}}"#, base + ev.ts),
        };
        e.ingest(
            2_000_000_000_000 + i as i64,
            &format!("t/k{}/d{}", ev.key, ev.dev),
            payload.as_bytes(),
            &mut sink,
        );
    }
    e.flush(&mut sink);
    // the ring bound holds: no open window was ever reclaimed early
    assert_eq!(e.window_counters(0).capacity_evictions, 0);
    assert_eq!(e.window_counters(0).key_evictions, 0);
    assert_eq!(e.window_occupancy(0), (0, 0), "flush closes everything and frees every key");
    rows
}

/// An on-time event in the model: (arrival index, ts, value).
type Member = (usize, i64, Option<i64>);

/// The aggregates of a set of members in AGG_ORDER.
fn aggregate(members: &[Member]) -> Vec<Option<f64>> {
    let vals: Vec<(usize, i64, f64)> =
        members.iter().filter_map(|&(a, t, v)| v.map(|v| (a, t, v as f64))).collect();
    let n = vals.len();
    let first = vals.iter().min_by_key(|(a, t, _)| (*t, *a)).map(|x| x.2);
    let last = vals.iter().max_by_key(|(a, t, _)| (*t, *a)).map(|x| x.2);
    let sum: f64 = vals.iter().map(|x| x.2).sum();
    let mean = (n > 0).then(|| sum / n as f64);
    let sd = (n >= 2).then(|| {
        let m = sum / n as f64;
        (vals.iter().map(|x| (x.2 - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    });
    let lo = vals.iter().map(|x| x.2).reduce(f64::min);
    let hi = vals.iter().map(|x| x.2).reduce(f64::max);
    vec![first, hi, last, lo, mean, Some(members.len() as f64), Some(n as f64), (n > 0).then_some(sum), sd]
}

enum Shape {
    Fixed { size: i64, slide: i64, offset: i64 },
    Session { gap: i64 },
}

/// Whose progress the watermark follows in the model.
#[derive(Clone, Copy, Debug)]
enum Progress {
    Stream,
    /// Per device (docs/SEMANTICS.md §2.4), with the idle timeout in gateway ms.
    Device(Option<i64>),
}

/// The brute-force model.
fn model(base: i64, lateness: i64, shape: &Shape, evs: &[Ev]) -> Vec<Row> {
    model_with(base, lateness, shape, evs, Progress::Stream)
}

fn model_with(base: i64, lateness: i64, shape: &Shape, evs: &[Ev], progress: Progress) -> Vec<Row> {
    // 1. late flags and the watermark after each arrival
    let mut late = vec![false; evs.len()];
    // on time for its device, below the stream's watermark: no window takes it
    let mut below = vec![false; evs.len()];
    let mut wm_after = vec![i64::MIN; evs.len()];
    match progress {
        Progress::Stream => {
            let mut max: Option<i64> = None;
            for (i, ev) in evs.iter().enumerate() {
                let ts = base + ev.ts;
                let wm = max.map_or(i64::MIN, |m| m - lateness);
                if ts < wm {
                    late[i] = true;
                } else {
                    max = Some(max.map_or(ts, |m| m.max(ts)));
                }
                wm_after[i] = max.map_or(i64::MIN, |m| m - lateness);
            }
        }
        Progress::Device(idle) => {
            let mut max: std::collections::BTreeMap<u8, i64> = Default::default();
            let mut heard: std::collections::BTreeMap<u8, i64> = Default::default();
            let mut frontier = i64::MIN;
            for (i, ev) in evs.iter().enumerate() {
                let ts = base + ev.ts;
                let now = i as i64;
                heard.insert(ev.dev, now);
                match max.get(&ev.dev) {
                    Some(&m) if ts < m - lateness => late[i] = true,
                    _ => {
                        let m = max.entry(ev.dev).or_insert(ts);
                        *m = (*m).max(ts);
                        below[i] = ts < frontier;
                    }
                }
                let active = max.iter().filter(|(d, _)| idle.is_none_or(|t| now - heard[d] < t));
                if let Some(min) = active.map(|(_, &m)| m - lateness).min() {
                    frontier = frontier.max(min);
                }
                wm_after[i] = frontier;
            }
        }
    }
    // 2. every window, from all on-time events
    // key, start, end, close_at, members
    let mut windows: Vec<(String, i64, i64, i64, Vec<Member>)> = Vec::new();
    for k in 0..4u8 {
        let mine: Vec<Member> = evs
            .iter()
            .enumerate()
            .filter(|(i, e)| e.key == k && !late[*i] && !below[*i])
            .map(|(i, e)| (i, base + e.ts, e.v))
            .collect();
        match *shape {
            Shape::Fixed { size, slide, offset } => {
                let mut starts: Vec<i64> = Vec::new();
                for &(_, ts, _) in &mine {
                    let off = offset.rem_euclid(slide);
                    let mut s = off + (ts - off).div_euclid(slide) * slide;
                    while s + size > ts {
                        starts.push(s);
                        s -= slide;
                    }
                }
                starts.sort();
                starts.dedup();
                for s in starts {
                    let m: Vec<_> =
                        mine.iter().copied().filter(|&(_, t, _)| s <= t && t < s + size).collect();
                    windows.push((format!("k{k}"), s, s + size, s + size, m));
                }
            }
            Shape::Session { gap } => {
                let mut sorted = mine.clone();
                sorted.sort_by_key(|&(a, t, _)| (t, a));
                let mut cur: Vec<Member> = Vec::new();
                for e in sorted {
                    if let Some(last) = cur.last() {
                        if e.1 - last.1 > gap {
                            let (f, l) = (cur[0].1, cur.last().unwrap().1);
                            windows.push((
                                format!("k{k}"),
                                f,
                                l + gap,
                                l + gap + 1,
                                std::mem::take(&mut cur),
                            ));
                        }
                    }
                    cur.push(e);
                }
                if let Some(last) = cur.last() {
                    let (f, l) = (cur[0].1, last.1);
                    windows.push((format!("k{k}"), f, l + gap, l + gap + 1, cur));
                }
            }
        }
    }
    // 3. when each closes: the first arrival whose watermark reaches close_at; else the flush
    let mut out: Vec<(usize, i64, i64, String, Row)> = Vec::new();
    for (key, start, end, close_at, m) in windows {
        // (a late event moves no stream watermark; with devices, time passing may)
        let at = (0..evs.len()).find(|&i| wm_after[i] >= close_at).unwrap_or(evs.len());
        let row = Row::Window { key: key.clone(), start, end, count: m.len() as u64, values: aggregate(&m) };
        out.push((at, end, start, key, row));
    }
    for (i, ev) in evs.iter().enumerate() {
        if late[i] {
            // a late event emits before anything at its own arrival (it moves no watermark)
            out.push((
                i,
                i64::MIN,
                i64::MIN,
                String::new(),
                Row::Late { key: format!("k{}", ev.key), ts: base + ev.ts },
            ));
        }
    }
    out.sort_by(|a, b| (a.0, a.1, a.2, &a.3).cmp(&(b.0, b.1, b.2, &b.3)));
    out.into_iter().map(|x| x.4).collect()
}

fn close(a: &[Row], b: &[Row]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (
                Row::Window { key: k1, start: s1, end: e1, count: c1, values: v1 },
                Row::Window { key: k2, start: s2, end: e2, count: c2, values: v2 },
            ) => {
                k1 == k2
                    && s1 == s2
                    && e1 == e2
                    && c1 == c2
                    && v1.iter().zip(v2).all(|(p, q)| match (p, q) {
                        (Some(p), Some(q)) => (p - q).abs() <= 1e-9 * (1.0 + p.abs().max(q.abs())),
                        (None, None) => true,
                        _ => false,
                    })
            }
            (x, y) => x == y,
        })
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    // bursts of in-order events with random jitter: realistic disorder, plus stragglers
    (1usize..160, 0i64..400).prop_flat_map(|(n, span)| {
        proptest::collection::vec(
            (
                0u8..4,
                0..=span,
                prop::option::weighted(0.85, -50i64..50),
                0i64..40,
                prop::bool::weighted(0.05),
            ),
            n,
        )
        .prop_map(move |raw| {
            let mut evs: Vec<(i64, Ev)> = raw
                .into_iter()
                .map(|(key, ts, v, jitter, straggler)| {
                    let arrive = ts + jitter + if straggler { 200 } else { 0 };
                    (arrive, Ev { key, ts, v, dev: 0 })
                })
                .collect();
            evs.sort_by_key(|e| e.0);
            evs.into_iter().map(|e| e.1).collect()
        })
    })
}

/// Events of up to four devices, each with its own clock offset (one may
/// run far ahead), arriving in order of true time plus jitter, with
/// stragglers and devices that fall silent for a while.
fn device_events() -> impl Strategy<Value = Vec<Ev>> {
    (1usize..160, 0i64..400, proptest::collection::vec(prop_oneof![3 => -20i64..20, 1 => 100i64..600], 4))
        .prop_flat_map(|(n, span, offsets)| {
            proptest::collection::vec(
                (
                    0u8..3,
                    0u8..4,
                    0..=span,
                    prop::option::weighted(0.85, -50i64..50),
                    0i64..40,
                    prop::bool::weighted(0.05),
                ),
                n,
            )
            .prop_map(move |raw| {
                let mut evs: Vec<(i64, Ev)> = raw
                    .into_iter()
                    .map(|(key, dev, t, v, jitter, straggler)| {
                        let arrive = t + jitter + if straggler { 200 } else { 0 };
                        (arrive, Ev { key, ts: t + offsets[dev as usize], v, dev })
                    })
                    .collect();
                evs.sort_by_key(|e| e.0);
                evs.into_iter().map(|e| e.1).collect()
            })
        })
}

fn bases() -> impl Strategy<Value = i64> {
    prop_oneof![Just(1_700_000_000_000i64), Just(0i64), Just(-86_400_000i64 * 400 - 7)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn fixed_windows_match_the_model(
        evs in events(), base in bases(), lateness in 0i64..60,
        size in 1i64..60, slide_pick in 0u8..3, slide_any in 1i64..80, offset in -100i64..100,
    ) {
        let slide = match slide_pick { 0 => size, 1 => (size / 3).max(1), _ => slide_any };
        let shape = Shape::Fixed { size, slide, offset };
        let p = pipeline(lateness, &format!("size = \"{size}ms\"\nslide = \"{slide}ms\"\noffset = \"{offset}ms\""));
        let got = run_engine(p, base, &evs);
        let want = model(base, lateness, &shape, &evs);
        prop_assert!(close(&got, &want), "size {size} slide {slide} offset {offset} lateness {lateness}\n got {got:#?}\nwant {want:#?}");
    }

    #[test]
    fn sessions_match_the_model(evs in events(), base in bases(), lateness in 0i64..60, gap in 1i64..40) {
        let p = pipeline(lateness, &format!("gap = \"{gap}ms\""));
        let got = run_engine(p, base, &evs);
        let want = model(base, lateness, &Shape::Session { gap }, &evs);
        prop_assert!(close(&got, &want), "gap {gap} lateness {lateness}\n got {got:#?}\nwant {want:#?}");
    }

    #[test]
    fn fixed_windows_over_device_watermarks_match_the_model(
        evs in device_events(), base in bases(), lateness in 0i64..60,
        size in 1i64..60, slide_pick in 0u8..3, slide_any in 1i64..80, offset in -100i64..100,
        idle in prop::option::of(1i64..60),
    ) {
        let slide = match slide_pick { 0 => size, 1 => (size / 3).max(1), _ => slide_any };
        let shape = Shape::Fixed { size, slide, offset };
        let p = device_pipeline(lateness, &format!("size = \"{size}ms\"\nslide = \"{slide}ms\"\noffset = \"{offset}ms\""), idle);
        let got = run_engine(p, base, &evs);
        let want = model_with(base, lateness, &shape, &evs, Progress::Device(idle));
        prop_assert!(close(&got, &want), "size {size} slide {slide} offset {offset} lateness {lateness} idle {idle:?}\n got {got:#?}\nwant {want:#?}");
    }

    #[test]
    fn sessions_over_device_watermarks_match_the_model(
        evs in device_events(), base in bases(), lateness in 0i64..60, gap in 1i64..40,
        idle in prop::option::of(1i64..60),
    ) {
        let p = device_pipeline(lateness, &format!("gap = \"{gap}ms\""), idle);
        let got = run_engine(p, base, &evs);
        let want = model_with(base, lateness, &Shape::Session { gap }, &evs, Progress::Device(idle));
        prop_assert!(close(&got, &want), "gap {gap} lateness {lateness} idle {idle:?}\n got {got:#?}\nwant {want:#?}");
    }
}
