//! Simulator to gateway: every use-case scenario replayed through edgejoin
//! gives its documented results, and every payload shape the simulator
//! writes decodes in edgejoin.

use std::path::{Path, PathBuf};

use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::Plan;
use sensors_sim::gen::{generate, generate_as_written, Msg};
use sensors_sim::scenario;

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios")
}

fn scenario_msgs(name: &str) -> (scenario::Scenario, Vec<Msg>) {
    let sc = scenario::load(&scenarios_dir().join(format!("{name}.toml"))).unwrap();
    let msgs = generate_as_written(&sc).unwrap();
    (sc, msgs)
}

/// Replays a scenario through edgejoin with its gateway config: (results, matches, unmatched).
fn replay(name: &str) -> (usize, u64, u64, Engine) {
    let (n, e) = run(name, &scenario_msgs(name).1);
    let c = *e.join_counters(0);
    (n, c.matches, c.unmatched, e)
}

/// Runs `msgs` through the scenario's gateway config: (results, the engine after the flush).
fn run(name: &str, msgs: &[Msg]) -> (usize, Engine) {
    let p = edgejoin::config::load(&scenarios_dir().join(format!("{name}-gateway.toml"))).unwrap().plan;
    let mut e = Engine::new(p, 1);
    let mut n = 0usize;
    let mut sink = |_: &Plan, _: Output<'_>| n += 1;
    for m in msgs {
        e.ingest(m.recv_ms, &m.topic, &m.payload, &mut sink);
    }
    e.flush(&mut sink);
    (n, e)
}

#[test]
fn each_scenario_replays_to_its_documented_results() {
    // (scenario, results, matches, unmatched) — docs/SCENARIOS.md
    for (name, results, matches, unmatched) in [
        ("iot", 7211, 7009, 202),
        ("orders", 547, 291, 256),
        ("web", 120, 120, 0),
        ("rfid", 37, 24, 0),
        ("gaming", 29, 24, 5),
    ] {
        let (n, m, u, e) = replay(name);
        assert_eq!((n, m, u), (results, matches, unmatched), "{name}");
        assert_eq!(e.join_counters(0).capacity_evictions, [0, 0], "{name}: sized for its rates");
    }
    // the documented figures make sense: iot steps one reboot per machine, orders pay ~56 % within 2 minutes
    let (_, _, _, iot) = replay("iot");
    assert!(iot.skew_reports().iter().all(|(_, r)| r.steps == 1));
    let (n, m, _, _) = replay("orders");
    let paid = m as f64 / n as f64;
    assert!((0.5..0.62).contains(&paid), "{paid}");
}

#[test]
fn payload_shapes_decode_in_edgejoin() {
    // json with s / rfc3339 timestamps, bare numbers, postcard: every reading decodes and lands in a window
    let dir = tempfile::tempdir().unwrap();
    let sc = dir.path().join("shapes.toml");
    std::fs::write(
        &sc,
        r#"
[scenario]
name = "shapes"
duration = "2m"
start = "2026-01-05T08:00:00Z"
seed = 3

[[sensor]]
name = "a"
topic = "s/{device}/a"
every = "1s"
time_unit = "s"
values = { v = [0.0, 1.0] }

[[sensor]]
name = "b"
topic = "s/{device}/b"
every = "1s"
time_unit = "rfc3339"
values = { v = [0.0, 1.0] }

[[sensor]]
name = "c"
topic = "s/{device}/c"
every = "1s"
format = "number"
values = { v = [0.0, 1.0] }

[[sensor]]
name = "d"
topic = "s/{device}/d"
every = "1s"
format = "postcard"
values = { v = [0.0, 1.0] }
"#,
    )
    .unwrap();
    let s = scenario::load(&sc).unwrap();
    let msgs = generate(&s, 1_767_600_000_000, 3).unwrap();
    let mut text = String::new();
    for (name, extra) in [
        ("a", "time_unit = \"s\""),
        ("b", "time_unit = \"rfc3339\""),
        ("c", "format = \"number\""),
        ("d", "format = \"postcard\""),
    ] {
        text.push_str(&format!(
            "[[stream]]\nname = \"{name}\"\ntopics = [\"s/{{device}}/{name}\"]\nkey = \"{{device}}\"\n{extra}\nvalues = [\"v\"]\n\n[[window]]\nname = \"w{name}\"\ninput = \"{name}\"\nsize = \"10m\"\naggregates = {{ n = \"count()\", v = \"mean(v)\" }}\n\n"
        ));
    }
    let p = edgejoin::config::parse(Path::new("shapes-gateway.toml"), &text).unwrap().plan;
    let mut e = Engine::new(p, 1);
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    let mut sink = |p: &Plan, o: Output<'_>| {
        if let Output::Window(r, _) = o {
            *counts.entry(p.windows[r.window as usize].name.clone()).or_default() += r.count;
        }
    };
    for m in &msgs {
        e.ingest(m.recv_ms, &m.topic, &m.payload, &mut sink);
    }
    e.flush(&mut sink);
    for s in 0..4 {
        let c = e.stream_counters(s);
        assert_eq!(c.decode_errors.iter().sum::<u64>(), 0, "stream {s}: {c:?}");
        assert_eq!(
            c.decoded,
            msgs.iter().filter(|m| m.topic.ends_with(["a", "b", "c", "d"][s])).count() as u64
        );
    }
    assert_eq!(counts.len(), 4);
    assert!(counts.values().all(|&n| (110..=130).contains(&n)), "{counts:?}");
}

#[test]
fn the_fleet_scenario_replays_to_its_documented_results() {
    // docs/SCENARIOS.md: 1-minute windows per device on corrected clocks; the
    // rebooting and the NTP-stepped devices each show one step, no other does
    let (_, msgs) = scenario_msgs("fleet");
    assert_eq!(msgs.len(), 57710);
    let (n, e) = run("fleet", &msgs);
    assert_eq!(n, 961);
    let mut steps: Vec<_> =
        e.skew_reports().into_iter().filter(|(_, r)| r.steps > 0).map(|(d, r)| (d, r.steps)).collect();
    steps.sort();
    assert_eq!(steps, [("site2-a1".to_string(), 1), ("site4-a1".to_string(), 1)]);
}
