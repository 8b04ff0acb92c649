//! The simulator: deterministic given its seed; rates, delays and clocks as
//! the scenario says; every use-case scenario replayed through edgejoin
//! gives its documented results; and it publishes live to Mosquitto exactly
//! what it records.

use std::path::{Path, PathBuf};

use edgejoin::engine::{Engine, Output};
use edgejoin::pipeline::Pipeline;
use sensors_sim::gen::{generate, record_line, Msg};
use sensors_sim::scenario::{self, dur};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios")
}

fn scenario_msgs(name: &str) -> (scenario::Scenario, Vec<Msg>) {
    let sc = scenario::load(&scenarios_dir().join(format!("{name}.toml"))).unwrap();
    let start = edgejoin::decode::rfc3339_to_ms(sc.scenario.start.as_deref().unwrap().as_bytes()).unwrap();
    let msgs = generate(&sc, start, sc.scenario.seed.unwrap()).unwrap();
    (sc, msgs)
}

#[test]
fn same_seed_same_recording() {
    let sc = scenario::load(&scenarios_dir().join("orders.toml")).unwrap();
    let a: Vec<String> = generate(&sc, 1_767_600_000_000, 5).unwrap().iter().map(record_line).collect();
    let b: Vec<String> = generate(&sc, 1_767_600_000_000, 5).unwrap().iter().map(record_line).collect();
    let c: Vec<String> = generate(&sc, 1_767_600_000_000, 6).unwrap().iter().map(record_line).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(
        a.windows(2).all(|w| {
            let t =
                |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap()["recv_ms"].as_i64().unwrap();
            t(&w[0]) <= t(&w[1])
        }),
        "recorded in arrival order"
    );
}

#[test]
fn rates_delays_and_pairs_follow_the_scenario() {
    let (sc, msgs) = scenario_msgs("orders");
    let p = &sc.pair[0];
    let duration = dur(&sc.scenario.duration).unwrap() as f64;
    let orders = msgs.iter().filter(|m| m.topic.ends_with("/orders")).count() as f64;
    let payments = msgs.iter().filter(|m| m.topic.ends_with("/payments")).count() as f64;
    let expected_orders = duration / dur(&p.every).unwrap() as f64 * f64::from(p.devices);
    // duplicates (1 %) are included; rates within 10 %
    assert!((orders / expected_orders - 1.0).abs() < 0.1, "{orders} orders vs {expected_orders}");
    assert!((payments / orders - p.follow_p).abs() < 0.06, "{payments} payments for {orders} orders");
    // delays: never below the minimum; median near minimum + median jitter
    let mut delays: Vec<i64> = msgs.iter().map(|m| m.truth.delay_ms).collect();
    delays.sort_unstable();
    assert!(delays[0] >= dur(&p.delay.min).unwrap());
    let median = delays[delays.len() / 2] as f64;
    let want = (dur(&p.delay.min).unwrap() + dur(&p.delay.median).unwrap()) as f64;
    assert!((median / want - 1.0).abs() < 0.2, "median delay {median} vs {want}");
    // spikes: about 5 % of messages took seconds
    let spiked = delays.iter().filter(|&&d| d > 1000).count() as f64 / delays.len() as f64;
    assert!((0.02..0.09).contains(&spiked), "{spiked}");
    // every payment follows its order within follow_after, on the true clock
    let ts_of = |topic: &str, id: &str| {
        msgs.iter()
            .find(|m| {
                m.topic.ends_with(topic)
                    && serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["order_id"] == id
            })
            .map(|m| m.truth.ts)
    };
    for m in msgs.iter().filter(|m| m.topic.ends_with("/payments")).take(50) {
        let id = serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["order_id"]
            .as_str()
            .unwrap()
            .to_string();
        let dt = m.truth.ts - ts_of("/orders", &id).unwrap();
        assert!((5_000..=180_000).contains(&dt), "{id}: {dt}");
    }
}

#[test]
fn device_clocks_are_wrong_as_configured() {
    let (_, msgs) = scenario_msgs("iot");
    // boot-relative clocks: device time is far below true time; each device is one clock across its sensors
    for dev in ["machine-1", "machine-2", "machine-3", "machine-4"] {
        let mine: Vec<&Msg> = msgs.iter().filter(|m| m.truth.device == dev).collect();
        assert!(mine.iter().all(|m| m.truth.offset_ms < -1_000_000_000_000), "{dev}");
        // drift within ±300 ppm between two samples 5 minutes apart, before the reboot at 20 minutes
        let a = mine.iter().find(|m| m.truth.ts - mine[0].truth.ts > 60_000).unwrap();
        let b = mine.iter().find(|m| m.truth.ts - a.truth.ts > 300_000).unwrap();
        let drift =
            ((b.truth.offset_ms - a.truth.offset_ms) as f64) / ((b.truth.ts - a.truth.ts) as f64) * 1e6;
        assert!(drift.abs() <= 305.0, "{dev}: {drift} ppm");
        // after the reboot the clock restarts near zero
        let after = mine.iter().find(|m| m.truth.ts - mine[0].truth.ts > 21 * 60_000).unwrap();
        let payload: serde_json::Value = serde_json::from_slice(&after.payload).unwrap();
        assert!(payload["ts"].as_i64().unwrap() < 120_000, "{dev} rebooted: {payload}");
    }
}

/// Replays a scenario through edgejoin with its gateway config: (results, matches, unmatched).
fn replay(name: &str) -> (usize, u64, u64, Engine) {
    let (_, msgs) = scenario_msgs(name);
    let p = edgejoin::config::load(&scenarios_dir().join(format!("{name}-gateway.toml"))).unwrap();
    let mut e = Engine::new(p, 1).unwrap();
    let mut n = 0usize;
    let mut sink = |_: &Pipeline, _: Output<'_>| n += 1;
    for m in &msgs {
        e.ingest(m.recv_ms, &m.topic, &m.payload, &mut sink);
    }
    e.flush(&mut sink);
    let c = *e.join_counters(0);
    (n, c.matches, c.unmatched, e)
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
fn publishes_live_what_it_records() {
    let Some(mosquitto) =
        ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].iter().map(PathBuf::from).find(|p| p.exists())
    else {
        eprintln!("mosquitto not installed: live simulator test skipped");
        return;
    };
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(dir.path().join("m.conf"), format!("listener {port} 127.0.0.1\nallow_anonymous true\n"))
        .unwrap();
    let mut broker = Command::new(mosquitto)
        .arg("-c")
        .arg(dir.path().join("m.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // a subscriber collecting everything
    let mut o = rumqttc::MqttOptions::new("sim-test-sub", "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = rumqttc::Client::new(o, 100);
    client.subscribe("#", rumqttc::QoS::AtLeastOnce).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(_))) => {
                    let _ = tx.send(());
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                    g.lock().unwrap().push((p.topic.clone(), p.payload.to_vec()))
                }
                Err(_) => return,
                _ => {}
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
    for name in ["iot", "orders", "web", "rfid", "gaming"] {
        got.lock().unwrap().clear();
        let rec = dir.path().join(format!("{name}.jsonl"));
        let st = Command::new(env!("CARGO_BIN_EXE_sensors-sim"))
            .args(["--config"])
            .arg(scenarios_dir().join(format!("{name}.toml")))
            .args(["--fast", "--quiet", "--duration", "3m", "--broker"])
            .arg(format!("mqtt://127.0.0.1:{port}"))
            .arg("--record")
            .arg(&rec)
            .status()
            .unwrap();
        assert!(st.success(), "{name}");
        let recorded: Vec<(String, Vec<u8>)> = std::fs::read_to_string(&rec)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["topic"].as_str().unwrap().to_string(), v["payload"].as_str().unwrap().as_bytes().to_vec())
            })
            .collect();
        assert!(!recorded.is_empty(), "{name}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.lock().unwrap().len() < recorded.len() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(
            *got.lock().unwrap(),
            recorded,
            "{name}: the broker saw exactly the recorded messages, in order"
        );
    }
    let _ = broker.kill();
    let _ = broker.wait();
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
    let p = edgejoin::config::parse(Path::new("shapes-gateway.toml"), &text).unwrap();
    let mut e = Engine::new(p, 1).unwrap();
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    let mut sink = |p: &Pipeline, o: Output<'_>| {
        if let Output::Window(r) = o {
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
