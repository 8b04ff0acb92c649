//! Issue #17, part 2: floods of bad input against the live gateway on real
//! Mosquitto — new keys, new topics, oversized and deeply nested payloads,
//! non-finite values, absurd timestamps, one device in 2099 among correct
//! ones — while good traffic flows on its own stream. Each attack is counted
//! by name, peak memory stays within what `check-config` prints, and the good
//! traffic's results are exactly an uninterrupted offline run's.
//!
//! CI runs a small flood; `scripts/torture.sh floods` the campaign
//! (EDGEJOIN_TORTURE_FLOOD_KEYS, EDGEJOIN_TORTURE_FLOOD_TOPICS).

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const CFG: &str = r#"[gateway]

[[stream]]
name = "g"
topics = ["g/{k}"]
key = "{k}"
values = ["v"]

[[window]]
name = "gw"
input = "g"
size = "1s"
aggregates = { n = "count()", v = "sum(v)" }
topic = "gw/{key}"

[[stream]]
name = "s"
topics = ["s/{k}"]
key = "{k}"
values = ["v"]
max_keys = 1024

[[window]]
name = "sw"
input = "s"
size = "10s"
max_keys = 1024
aggregates = { n = "count()" }
topic = "sw/{key}"

[[stream]]
name = "t"
topics = ["t/#"]
key = "$.k"
values = ["v"]

[[stream]]
name = "x"
topics = ["x/{k}"]
key = "{k}"
values = ["v"]

[[stream]]
name = "d"
topics = ["d/{dev}"]
key = "{dev}"
values = ["v"]
lateness = "2s"
watermark = "device"

[[stream]]
name = "c"
topics = ["c/{dev}"]
key = "{dev}"
values = ["v"]
lateness = "2s"
clock = "corrected"
"#;

const BASE: i64 = 1_700_000_000_000;

fn env(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The "total" of `check-config`'s memory bound, in KiB.
fn printed_bound_kib(cfg: &std::path::Path) -> f64 {
    let out = Command::new(env!("CARGO_BIN_EXE_edgejoin-under-test"))
        .args(["check-config", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let total =
        text.lines().find_map(|l| l.trim().strip_prefix("total ")).unwrap_or_else(|| panic!("{text}"));
    let (n, unit) = total.split_once(' ').unwrap();
    let n: f64 = n.parse().unwrap();
    match unit {
        "KiB" => n,
        "MiB" => n * 1024.0,
        "GiB" => n * 1024.0 * 1024.0,
        u => panic!("unit {u}"),
    }
}

fn json(ts: impl std::fmt::Display, v: impl std::fmt::Display) -> Vec<u8> {
    format!("{{\"ts\":{ts},\"v\":{v}}}").into_bytes()
}

#[test]
fn floods_are_counted_bounded_and_leave_good_traffic_exact() {
    need_mosquitto!();
    let keys = env("EDGEJOIN_TORTURE_FLOOD_KEYS", 20_000);
    let topics = env("EDGEJOIN_TORTURE_FLOOD_TOPICS", 20_000);
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (cfg, mport) = with_metrics_addr(CFG);
    let (path, p) = live_config(&cfg, &broker, &broker, &work.path().join("state"));
    // room for the deeply nested payloads to reach the JSON reader
    let text =
        std::fs::read_to_string(&path).unwrap().replace("[source]\n", "[source]\nmax_payload = \"768KiB\"\n");
    std::fs::write(&path, text).unwrap();
    let bound = printed_bound_kib(&path);

    // the attacks, with one good reading (10 keys, 1 a second of event time) after every `every`
    let mut attacks: Vec<(String, Vec<u8>)> = Vec::new();
    attacks.extend((0..keys).map(|i| (format!("s/n{i}"), json(BASE + (i * 9_999 / keys) as i64, 1))));
    attacks.extend(
        (0..topics)
            .map(|i| (format!("t/{i}/x"), format!("{{\"ts\":{BASE},\"k\":\"a\",\"v\":1}}").into_bytes())),
    );
    attacks.extend((0..2).map(|_| ("s/big".to_string(), vec![b'{'; 1_000_000])));
    let deep = 100_000;
    attacks.push(("s/deep".into(), ["[".repeat(deep), "]".repeat(deep)].concat().into_bytes()));
    attacks.push((
        "s/deep".into(),
        [r#"{"a":"#.repeat(deep), "1".into(), "}".repeat(deep)].concat().into_bytes(),
    ));
    // x: one good reading sets the watermark, then the bad values and times
    let x = [
        json(BASE + 60_000, 1),
        json(BASE + 60_000, "NaN"),
        json(BASE + 60_000, "Infinity"),
        json(BASE + 60_000, "-Infinity"),
        json(BASE + 60_000, "1e400"),
        json(BASE + 60_000, "\"NaN\""),
        json("4070908800000", 1), // 2099
        json(0, 1),               // 1970
        json(-5, 1),
        json("1e30", 1),
    ];
    attacks.extend(x.iter().map(|pl| ("x/a".to_string(), pl.clone())));
    let good: Vec<(i64, String, Vec<u8>)> = (0..60)
        .flat_map(|j| (0..10).map(move |k| (j, k)))
        .map(|(j, k)| {
            let ts = BASE + j * 1000 + k;
            (ts, format!("g/k{k}"), json(ts, (j + k) % 7))
        })
        .collect();
    let every = attacks.len() / good.len() + 1;
    let mut msgs: Vec<(String, Vec<u8>)> = Vec::with_capacity(attacks.len() + good.len());
    let mut g = good.iter();
    for (i, a) in attacks.into_iter().enumerate() {
        if i % every == 0 {
            if let Some((_, t, pl)) = g.next() {
                msgs.push((t.clone(), pl.clone()));
            }
        }
        msgs.push(a);
    }
    msgs.extend(g.map(|(_, t, pl)| (t.clone(), pl.clone())));
    let want: BTreeSet<String> = expected_rows(&p, &good)
        .iter()
        .filter(|r| r["window"] == "gw")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(want.len(), 590, "59 closed seconds × 10 keys");

    let collector = Collector::start(broker.port, "gw/test/gw/#");
    let mut gw = Gateway::start(&path);
    let pid = gw.child.id();
    let at_ready = vm_hwm_kib(pid);
    let started = Instant::now();
    publish(broker.port, &msgs);
    // one device in 2099 among five correct ones, in device and in corrected mode, 1 s apart
    let rounds = 20;
    for r in 0..rounds {
        let mut round = Vec::new();
        for mode in ["d", "c"] {
            for dev in 0..5 {
                round.push((format!("{mode}/dev{dev}"), json(now_ms(), r)));
            }
            round.push((format!("{mode}/ahead"), json(4_070_908_800_000i64 + r * 1000, r)));
        }
        publish(broker.port, &round);
        std::thread::sleep(Duration::from_millis(100));
    }
    let total = (msgs.len() + rounds as usize * 12) as f64;
    assert!(
        wait_until(120, || metric(mport, "edgejoin_processed_total") == Some(total)),
        "every message processed: {:?} of {total}",
        metric(mport, "edgejoin_processed_total")
    );
    let took = started.elapsed();
    let got = collector.wait_for(&want, 30);
    let peak = vm_hwm_kib(pid);
    let m = |name: &str| metric(mport, name).unwrap_or(0.0);
    let decode = |s: &str, r: &str| {
        m(&format!("edgejoin_stream_decode_errors_total{{stream=\"{s}\",reason=\"{r}\"}}"))
    };
    let evicted = m("edgejoin_window_key_evictions_total{window=\"sw\"}");
    eprintln!(
        "floods: {keys} keys, {topics} topics, 2 × 1 MB, 2 × {deep} levels, 9 bad values/times, a device in 2099 ×{rounds} in 2 modes, with 600 good readings: {} messages in {took:.1?}; peak RSS {peak} KiB ({} KiB over ready, bound printed {bound:.0} KiB); evicted keys {evicted}, too large {}, invalid json s {} x {}, non-numeric {}, clamped {}, late x {}, out of range {}, late d {}, late c {}; good results {} of {}",
        msgs.len(),
        peak.saturating_sub(at_ready),
        decode("s", "payload_too_large"),
        decode("s", "invalid_json"),
        decode("x", "invalid_json"),
        m("edgejoin_stream_non_numeric_value_total{stream=\"x\"}"),
        m("edgejoin_stream_clamped_future_total{stream=\"x\"}"),
        m("edgejoin_stream_late_dropped_total{stream=\"x\"}"),
        decode("x", "time_out_of_range") + decode("x", "bad_time"),
        m("edgejoin_stream_late_dropped_total{stream=\"d\"}"),
        m("edgejoin_stream_late_dropped_total{stream=\"c\"}"),
        got.intersection(&want).count(),
        want.len()
    );
    // good traffic: exact
    assert_eq!(got, want, "the good stream's results, exactly");
    // memory: what the flood added stays within the printed bound
    assert!((peak.saturating_sub(at_ready) as f64) < bound, "peak grew by {} KiB", peak - at_ready);
    // each attack counted by name
    assert_eq!(evicted, (keys - 1024) as f64, "one key evicted per new key past max_keys");
    assert_eq!(m("edgejoin_stream_decoded_total{stream=\"t\"}"), topics as f64);
    assert_eq!(decode("s", "payload_too_large"), 2.0);
    assert_eq!(decode("s", "invalid_json"), 2.0, "nesting 100,000 deep is refused, not recursed");
    assert_eq!(m("edgejoin_stream_clamped_future_total{stream=\"x\"}"), 1.0);
    assert_eq!(m("edgejoin_stream_late_dropped_total{stream=\"x\"}"), 2.0, "1970 and before");
    assert_eq!(decode("x", "time_out_of_range") + decode("x", "bad_time"), 1.0, "1e30");
    let bad_values = decode("x", "invalid_json") + m("edgejoin_stream_non_numeric_value_total{stream=\"x\"}");
    assert_eq!(bad_values, 5.0, "NaN, ±Infinity, 1e400, \"NaN\"");
    // one device in 2099: no other device's events late, in either mode
    for s in ["d", "c"] {
        assert_eq!(m(&format!("edgejoin_stream_late_dropped_total{{stream=\"{s}\"}}")), 0.0, "stream {s}");
        assert_eq!(
            m(&format!("edgejoin_stream_on_time_total{{stream=\"{s}\"}}")),
            (rounds * 6) as f64,
            "stream {s}"
        );
    }
    assert!(gw.child.try_wait().unwrap().is_none(), "alive");
    gw.stop();
}
