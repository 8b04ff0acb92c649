//! Engine throughput (criterion): events through tumbling-window
//! aggregation, a tolerance join at ~4 matches per left, the same with
//! JSON decoding in front, and the end-to-end bench's gateway
//! (`config/scenarios/bench-gateway.toml`) from MQTT payloads to encoded JSON
//! results — the engine thread's work per message in a backlog drain, less
//! its log and spool writes. `cargo bench -p edgejoin`; figures in
//! docs/BENCHMARKS.md.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use edgejoin::config;
use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::event::{Event, Key, Values};
use edgejoin_engine::output::JsonEncoder;
use edgejoin_engine::Plan;

const N: usize = 200_000;
const T0: i64 = 1_700_000_000_000;

fn engine(text: &str) -> Engine {
    Engine::new(config::parse(Path::new("bench.toml"), text).unwrap().plan, 1)
}

fn keys(n: usize) -> Vec<Key> {
    (0..n).map(|i| Key::new(&format!("dev-{i}")).unwrap()).collect()
}

fn event(stream: u16, key: &Key, ts: i64, v: f64) -> Event {
    let mut values = Values::ABSENT;
    values.0[0] = v;
    Event { stream, key: key.clone(), device: key.clone(), ts, recv_ms: ts + 5, values }
}

const WINDOW: &str = r#"
[[stream]]
name = "s"
topics = ["s/{k}"]
key = "{k}"
lateness = "2s"
max_keys = 1024
values = ["v"]

[[window]]
name = "w"
input = "s"
size = "10s"
aggregates = { n = "count()", sum = "sum(v)", mean = "mean(v)", max = "max(v)" }
topic = "w/{key}"
"#;

const JOIN: &str = r#"
[[stream]]
name = "l"
topics = ["l/{k}"]
key = "{k}"
lateness = "1s"
capacity = 64
max_keys = 1024
values = ["v"]

[[stream]]
name = "r"
topics = ["r/{k}"]
key = "{k}"
lateness = "1s"
capacity = 64
max_keys = 1024
values = ["v"]

[[join]]
name = "j"
strategy = "tolerance"
left = "l"
right = "r"
lower = "-2s"
upper = "2s"
max_matches = 16
"#;

fn bench(c: &mut Criterion) {
    let ks = keys(1000);
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);

    // 1000 keys, an event per key every 1 ms of event time overall
    let window_events: Vec<Event> =
        (0..N).map(|i| event(0, &ks[i % 1000], T0 + i as i64, (i % 97) as f64)).collect();
    g.bench_function("tumbling_window_aggregation", |b| {
        b.iter_batched_ref(
            || (engine(WINDOW), window_events.clone()),
            |(e, evs)| {
                let mut n = 0u64;
                let mut sink = |_: &Plan, _: Output<'_>| n += 1;
                for ev in evs.iter_mut() {
                    e.process(ev, &mut sink);
                }
                n
            },
            BatchSize::LargeInput,
        )
    });

    // per key: a left every 4 s and a right every second, ±2 s bounds: ~4 rights per left
    let join_events: Vec<Event> = (0..N)
        .map(|i| {
            let k = &ks[i % 1000];
            let round = (i / 1000) as i64;
            let ts = T0 + round * 1000 + (i % 1000) as i64;
            if round % 5 == 0 {
                event(0, k, ts, 1.0)
            } else {
                event(1, k, ts, 2.0)
            }
        })
        .collect();
    g.bench_function("tolerance_join_4_matches", |b| {
        b.iter_batched_ref(
            || (engine(JOIN), join_events.clone()),
            |(e, evs)| {
                let mut n = 0u64;
                let mut sink = |_: &Plan, _: Output<'_>| n += 1;
                for ev in evs.iter_mut() {
                    e.process(ev, &mut sink);
                }
                assert!(n > (N as u64) / 2);
                n
            },
            BatchSize::LargeInput,
        )
    });

    // the same window pipeline with routing and JSON decoding in front
    let messages: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            (
                format!("s/dev-{}", i % 1000),
                format!(r#"{{"ts":{},"v":{}}}"#, T0 + i as i64, i % 97).into_bytes(),
            )
        })
        .collect();
    g.bench_function("json_decode_and_window", |b| {
        b.iter_batched_ref(
            || engine(WINDOW),
            |e| {
                let mut n = 0u64;
                let mut sink = |_: &Plan, _: Output<'_>| n += 1;
                for (i, (topic, payload)) in messages.iter().enumerate() {
                    e.ingest(T0 + i as i64, topic, payload, &mut sink);
                }
                n
            },
            BatchSize::LargeInput,
        )
    });

    // the end-to-end bench's gateway and scenario: 4 streams × 1000 devices, a
    // reading each every 10 s ± 10 %, values with 3 decimals; every result encoded
    let gw = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios/bench-gateway.toml"),
    )
    .unwrap();
    let mut rng = 21u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut scenario: Vec<(i64, String, Vec<u8>)> = Vec::with_capacity(N);
    for round in 0..(N / 4000) as i64 {
        for d in 0..1000 {
            for s in ["a", "b", "c", "d"] {
                let ts = T0 + round * 10_000 + (next() % 2000) as i64 - 1000;
                let v = (next() % 100_000) as f64 / 1000.0;
                scenario.push((
                    ts + 5,
                    format!("bench/d{d}/{s}"),
                    format!(r#"{{"ts":{ts},"v":{v}}}"#).into_bytes(),
                ));
            }
        }
    }
    scenario.sort_by_key(|m| m.0);
    g.bench_function("bench_gateway_json_in_and_out", |b| {
        b.iter_batched_ref(
            || engine(&gw),
            |e| {
                let mut enc = JsonEncoder::new();
                let mut bytes = 0usize;
                let mut sink = |p: &Plan, o: Output<'_>| bytes += enc.encode(p, o).len();
                for (recv_ms, topic, payload) in &scenario {
                    e.ingest(*recv_ms, topic, payload, &mut sink);
                }
                assert!(bytes > N * 50);
                bytes
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
