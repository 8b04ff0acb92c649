//! The engine as configured: overflowing aggregates and the state a
//! checkpoint carries, on pipelines built by the config reader.

use edgejoin_engine::engine::{Engine, Output, RestoreError};
use edgejoin_engine::event::Key;
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
    let r = Engine::restore(p.clone(), 1, &e.save_state()).unwrap();
    assert_eq!(r.save_state(), e.save_state());
    assert_eq!(r.stream_watermark(0), Some(1000));
    assert_eq!(r.device_watermarks(0).unwrap().device_wm(&Key::new("fast").unwrap()), Some(9000));
    // the same config with one watermark per stream does not take this state
    let other = plan(&cfg.replace("watermark = \"device\"\n", ""));
    assert!(matches!(Engine::restore(other, 1, &e.save_state()), Err(RestoreError::Shape(_))));
}
