//! The engine as configured: overflowing aggregates and the state a
//! checkpoint carries, on pipelines built by the config reader.

use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::event::Key;
use edgejoin_engine::manifest::Fate;
use edgejoin_engine::Plan;

fn plan(cfg: &str) -> Plan {
    edgejoin::config::parse(std::path::Path::new("c.toml"), cfg).unwrap().plan
}

#[test]
fn a_sum_that_overflows_is_emitted_as_null_and_counted() {
    let cfg = "[[stream]]\nname = \"s\"\ntopics = [\"t/{k}\"]\nkey = \"{k}\"\nvalues = [\"v\"]\n\n[[window]]\nname = \"w\"\ninput = \"s\"\nsize = \"1s\"\naggregates = { s = \"sum(v)\", n = \"count()\" }\ntopic = \"w/{key}\"\n";
    let p = plan(cfg);
    let mut e = Engine::new(p, 1);
    let mut out = Vec::new();
    let mut enc = edgejoin_engine::output::JsonEncoder::new();
    let mut sink = |p: &Plan, o: Output<'_>| out.push(String::from_utf8(enc.encode(p, o).to_vec()).unwrap());
    e.ingest(1000, "t/a", br#"{"ts":1000,"v":1e308}"#, &mut sink);
    e.ingest(1001, "t/a", br#"{"ts":1001,"v":1e308}"#, &mut sink);
    e.ingest(1002, "t/b", br#"{"ts":1002,"v":1}"#, &mut sink);
    e.flush(&mut sink);
    assert_eq!(out.len(), 2);
    assert!(out[0].contains(r#""s":null"#), "{}", out[0]);
    assert!(out[1].contains(r#""s":1"#), "{}", out[1]);
    assert_eq!(e.window_counters(0).non_finite, 1);
}

#[test]
fn device_watermarks_survive_a_checkpoint() {
    let cfg = "[[stream]]\nname = \"s\"\ntopics = [\"t/{d}\"]\nkey = \"{d}\"\nwatermark = \"device\"\nvalues = [\"v\"]\n\n[[window]]\nname = \"w\"\ninput = \"s\"\nsize = \"1s\"\naggregates = { n = \"count()\" }\ntopic = \"w/{key}\"\n";
    let p = plan(cfg);
    let mut e = Engine::new(p.clone(), 1);
    let mut sink = |_: &Plan, _: Output<'_>| {};
    e.ingest(1000, "t/slow", br#"{"ts":1000,"v":1}"#, &mut sink);
    e.ingest(9000, "t/fast", br#"{"ts":9000,"v":1}"#, &mut sink);
    let (r, _) = Engine::restore(p.clone(), 1, &e.save_state()).unwrap();
    assert_eq!(r.save_state(), e.save_state());
    assert_eq!(r.stream_watermark(0), Some(1000));
    assert_eq!(r.device_watermarks(0).unwrap().device_wm(&Key::new("fast").unwrap()), Some(9000));
    // the same config with one watermark per stream starts the stream (and its window) empty
    let other = plan(&cfg.replace("watermark = \"device\"\n", ""));
    let (r, carry) = Engine::restore(other.clone(), 1, &e.save_state()).unwrap();
    assert_eq!(carry.list(Fate::Reset), "stream 's', window 'w'");
    assert_eq!(r.stream_watermark(0), None);
    assert!(r.device_watermarks(0).is_none());
}

fn results(e: &mut Engine, msgs: &[(i64, &str, String)], flush: bool) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut enc = edgejoin_engine::output::JsonEncoder::new();
    let mut sink = |p: &Plan, o: Output<'_>| out.push(serde_json::from_slice(enc.encode(p, o)).unwrap());
    for (recv, topic, payload) in msgs {
        e.ingest(*recv, topic, payload.as_bytes(), &mut sink);
    }
    if flush {
        e.flush(&mut sink);
    }
    out
}

fn rows<'a>(out: &'a [serde_json::Value], window: &str) -> Vec<&'a serde_json::Value> {
    out.iter().filter(|r| r["window"] == window).collect()
}

/// Editing one window's aggregates (and reordering, adding, removing others)
/// keeps the state of everything whose definition did not change.
#[test]
fn an_edited_config_keeps_the_state_of_what_did_not_change() {
    let stream = "[[stream]]\nname = \"s\"\ntopics = [\"t/{k}\"]\nkey = \"{k}\"\nvalues = [\"v\"]\nlateness = \"1s\"\n\n";
    let win = |name: &str, aggs: &str| {
        format!("[[window]]\nname = \"{name}\"\ninput = \"s\"\nsize = \"10s\"\naggregates = {{ {aggs} }}\ntopic = \"w/{name}/{{key}}\"\n\n")
    };
    let before = plan(&format!(
        "{stream}{}{}{}",
        win("sum", "total = \"sum(v)\", n = \"count()\""),
        win("edited", "n = \"count()\""),
        win("gone", "n = \"count()\"")
    ));
    // `sum` moves after the others, `edited` gains an aggregate, `gone` goes, `fresh` is new
    let after = plan(&format!(
        "{stream}{}{}{}",
        win("edited", "n = \"count()\", top = \"max(v)\""),
        win("fresh", "n = \"count()\""),
        win("sum", "total = \"sum(v)\", n = \"count()\"")
    ));
    let msg = |ts: i64, v: i64| (ts, "t/a", format!(r#"{{"ts":{ts},"v":{v}}}"#));
    let first = [msg(1000, 1), msg(2000, 2)];
    let second = [msg(3000, 4), msg(4000, 8), msg(15_000, 16)];

    let mut whole = Engine::new(before.clone(), 1);
    let mut expect = results(&mut whole, &first, false);
    expect.extend(results(&mut whole, &second, true));

    let mut e = Engine::new(before, 1);
    let mut out = results(&mut e, &first, false);
    assert!(out.is_empty());
    let (mut e, carry) = Engine::restore(after, 1, &e.save_state()).unwrap();
    assert_eq!(carry.list(Fate::Kept), "stream 's', window 'sum'");
    assert_eq!(carry.list(Fate::Reset), "window 'edited'");
    assert_eq!(carry.list(Fate::Added), "window 'fresh'");
    assert_eq!(carry.list(Fate::Removed), "window 'gone'");
    out.extend(results(&mut e, &second, true));

    // the kept window's rows are those of a run that never changed config
    assert_eq!(rows(&out, "sum"), rows(&expect, "sum"));
    assert_eq!(rows(&out, "sum")[0]["values"]["total"], 15.0);
    // the edited and the new one saw only what came after the change
    for w in ["edited", "fresh"] {
        let r = rows(&out, w);
        assert_eq!(r.len(), 2, "{w}: {out:?}");
        assert_eq!(r[0]["values"]["n"], 2, "{w}");
    }
    assert_eq!(rows(&out, "edited")[0]["values"]["top"], 8.0);
    assert!(rows(&out, "gone").is_empty());
    // the stream's watermark carried over: an event late before the change is late after it
    let (mut e2, _) = Engine::restore(
        plan(&format!("{stream}{}", win("sum", "total = \"sum(v)\", n = \"count()\""))),
        1,
        &e.save_state(),
    )
    .unwrap();
    let late = results(&mut e2, &[msg(500, 1)], true);
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(e2.stream_counters(0).late_dropped, 1);
}

/// The clock estimators carry over an edit that leaves `max_devices` alone,
/// and start again when it changes.
#[test]
fn clock_estimators_survive_an_edit_elsewhere() {
    let cfg = |agg: &str, devices: u32| {
        format!("[gateway]\nmax_devices = {devices}\n\n[[stream]]\nname = \"s\"\ntopics = [\"t/{{d}}\"]\nkey = \"{{d}}\"\nclock = \"corrected\"\nvalues = [\"v\"]\n\n[[window]]\nname = \"w\"\ninput = \"s\"\nsize = \"10s\"\naggregates = {{ {agg} }}\ntopic = \"w/{{key}}\"\n")
    };
    let mut e = Engine::new(plan(&cfg("n = \"count()\"", 64)), 1);
    let mut sink = |_: &Plan, _: Output<'_>| {};
    // a device 5 s behind, with a little network delay
    for i in 0..40i64 {
        let ts = 1_000_000 + i * 1000;
        e.ingest(ts + 5000 + (i % 3) * 7, "t/a", format!(r#"{{"ts":{ts},"v":1}}"#).as_bytes(), &mut sink);
    }
    let before = e.skew_reports();
    assert_eq!(before.len(), 1);
    let (r, carry) =
        Engine::restore(plan(&cfg("n = \"count()\", m = \"max(v)\"", 64)), 1, &e.save_state()).unwrap();
    assert_eq!(carry.list(Fate::Kept), "stream 's', the clock estimators");
    assert_eq!(carry.list(Fate::Reset), "window 'w'");
    assert_eq!(format!("{:?}", r.skew_reports()), format!("{before:?}"));
    let (r, carry) = Engine::restore(plan(&cfg("n = \"count()\"", 128)), 1, &e.save_state()).unwrap();
    assert!(carry.list(Fate::Reset).contains("the clock estimators"), "{}", carry.summary());
    assert!(r.skew_reports().is_empty());
}
