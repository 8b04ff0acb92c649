//! Decoding off the engine's thread (`route::Router`, `Engine::apply`) changes
//! the engine exactly as `Engine::ingest` of the same messages: same results,
//! byte for byte, same counters — on messages of one stream, of two, of none,
//! with long keys, many values, soft problems and decode errors.

use std::path::Path;

use edgejoin::config;
use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::event::Event;
use edgejoin_engine::output::JsonEncoder;
use edgejoin_engine::route::Router;
use edgejoin_engine::Plan;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

const CONFIG: &str = r#"
[[stream]]
name = "s1"
topics = ["x/{dev}/y", "z/{site}/{dev}"]
key = "{dev}"
lateness = "1s"
values = ["a", "b"]

[[stream]]
name = "s2"
topics = ["x/+/y"]
lateness = "1s"
values = ["a"]

[[stream]]
name = "s3"
topics = ["w/{dev}"]
key = "$.id"
device = "{dev}"
lateness = "2s"
values = ["a", "b", "c", "d", "e", "f"]

[[window]]
name = "w1"
input = "s1"
size = "2s"
aggregates = { n = "count()", mean = "mean(a)", max = "max(b)" }
topic = "w/{window}/{key}"

[[join]]
name = "j"
strategy = "tolerance"
left = "s1"
right = "s3"
lower = "-1s"
upper = "1s"
type = "left_outer"
"#;

const T0: i64 = 1_700_000_000_000;

fn plan() -> Plan {
    config::parse(Path::new("route.toml"), CONFIG).unwrap().plan
}

/// Every result encoded, and every counter, after the messages.
fn run(msgs: &[(i64, String, Vec<u8>)], off_thread: bool) -> (Vec<Vec<u8>>, String, usize) {
    let p = plan();
    let router = Router::new(&p);
    let mut e = Engine::new(p, 7);
    let mut enc = JsonEncoder::new();
    let mut out = Vec::new();
    let mut sink = |p: &Plan, o: Output<'_>| out.push(enc.encode(p, o).to_vec());
    let mut scratch = Event::blank();
    let mut applied = 0;
    for (recv_ms, topic, payload) in msgs {
        match router.decode(topic, payload, &mut scratch).filter(|_| off_thread) {
            Some(d) => {
                applied += 1;
                e.apply(*recv_ms, &d, &mut sink);
            }
            None => {
                e.ingest(*recv_ms, topic, payload, &mut sink);
            }
        }
    }
    e.flush(&mut sink);
    let pl = e.pipeline();
    let counters = format!(
        "{:?} {:?} {:?} {:?}",
        (0..pl.streams.len()).map(|s| e.stream_counters(s)).collect::<Vec<_>>(),
        (0..pl.windows.len()).map(|w| e.window_counters(w)).collect::<Vec<_>>(),
        (0..pl.joins.len()).map(|j| e.join_counters(j)).collect::<Vec<_>>(),
        e.global_counters(),
    );
    (out, counters, applied)
}

fn message() -> impl Strategy<Value = (i64, String, Vec<u8>)> {
    let topic = prop_oneof![
        (0..4u8).prop_map(|d| format!("z/site/d{d}")),
        (0..4u8).prop_map(|d| format!("x/d{d}/y")),
        (0..4u8).prop_map(|d| format!("w/d{d}")),
        Just("q/nobody".to_string()),
    ];
    let num = prop_oneof![
        (-100_000i64..100_000).prop_map(|v| format!("{}", v as f64 / 100.0)),
        (-100i64..100).prop_map(|v| v.to_string()),
        Just("1e400".to_string()),
        Just("\"3.5\"".to_string()),
        Just("\"x\"".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
    ];
    let ts = prop_oneof![
        8 => (-3_000i64..3_000).prop_map(|j| j.to_string()),
        1 => (-3_000i64..3_000).prop_map(|j| format!("{}.5", j)),
        1 => Just("later".to_string()),
    ];
    let id = prop_oneof![
        (0..3u8).prop_map(|k| format!("\"k{k}\"")),
        Just(format!("\"{}\"", "k".repeat(30))),
        Just("\"k\\u00e9\"".to_string()),
        Just("5".to_string()),
    ];
    (0i64..400, topic, ts, id, proptest::collection::vec((0..6usize, num), 0..7), 0..20u8).prop_map(
        |(step, topic, ts, id, values, shape)| {
            let names = ["a", "b", "c", "d", "e", "f"];
            let mut members = Vec::new();
            if shape != 1 {
                // the time relative to the receive time, which rises by `step` per message
                members.push(format!("\"ts\":@{ts}@"));
            }
            if shape != 2 {
                members.push(format!("\"id\":{id}"));
            }
            for (n, v) in values {
                members.push(format!("\"{}\":{v}", names[n]));
            }
            let mut payload = format!("{{{}}}", members.join(","));
            if shape == 3 {
                payload.pop(); // not JSON
            }
            (step, topic, payload.into_bytes())
        },
    )
}

/// Turns relative times into absolute ones along a rising receive clock.
fn absolute(raw: Vec<(i64, String, Vec<u8>)>) -> Vec<(i64, String, Vec<u8>)> {
    let mut recv = T0;
    raw.into_iter()
        .map(|(step, topic, payload)| {
            recv += step;
            let text = String::from_utf8(payload).unwrap();
            // `@rel@` stands for recv + rel; `@later@` for a time that is not one
            let text = match text.split_once('@') {
                Some((head, rest)) => {
                    let (rel, tail) = rest.split_once('@').unwrap();
                    let abs = match (rel.strip_suffix(".5"), rel.parse::<i64>()) {
                        (Some(whole), _) => format!("{}.5", recv + whole.parse::<i64>().unwrap()),
                        (None, Ok(r)) => (recv + r).to_string(),
                        (None, Err(_)) => format!("\"{rel}\""),
                    };
                    format!("{head}{abs}{tail}")
                }
                None => text,
            };
            (recv, topic, text.into_bytes())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn applying_what_the_router_decoded_is_ingesting(raw in proptest::collection::vec(message(), 1..300)) {
        let msgs = absolute(raw);
        let (want, want_counters, _) = run(&msgs, false);
        let (got, got_counters, _) = run(&msgs, true);
        prop_assert_eq!(got_counters, want_counters);
        prop_assert_eq!(got, want);
    }
}

#[test]
fn the_router_takes_the_common_case_and_leaves_the_rest() {
    let p = plan();
    let r = Router::new(&p);
    let mut scratch = Event::blank();
    let mut decoded =
        |topic: &str, payload: &str| r.decode(topic, payload.as_bytes(), &mut scratch).is_some();
    // one stream, short keys, few values
    assert!(decoded("z/site/d1", r#"{"ts":1700000000000,"a":1.5,"b":"x"}"#));
    assert!(decoded("w/d1", r#"{"ts":1700000000000,"id":"k1","a":1,"d":4}"#));
    // two streams (s1 and s2)
    assert!(!decoded("x/d1/y", r#"{"ts":1700000000000,"a":1.5}"#));
    // no stream
    assert!(!decoded("q/nobody", r#"{"ts":1700000000000}"#));
    // a decode error
    assert!(!decoded("z/site/d1", r#"{"a":1.5}"#));
    // a key longer than SHORT_KEY
    assert!(!decoded("w/d1", &format!(r#"{{"ts":1700000000000,"id":"{}"}}"#, "k".repeat(30))));
    // a value past FEW_VALUES
    assert!(!decoded("w/d1", r#"{"ts":1700000000000,"id":"k1","e":5}"#));
    // over max_payload
    assert!(!decoded("z/site/d1", &format!(r#"{{"ts":1700000000000,"pad":"{}"}}"#, "p".repeat(70_000))));
}

/// One per message in a backlog's intake: its size is the gateway's memory.
#[test]
fn a_decoded_event_is_64_bytes() {
    assert_eq!(std::mem::size_of::<Option<edgejoin_engine::route::Decoded>>(), 64);
}

/// The property above is not vacuous: most of its messages take the new path.
#[test]
fn most_generated_messages_are_decoded_off_thread() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let raw = proptest::collection::vec(message(), 2000).new_tree(&mut runner).unwrap().current();
    let msgs = absolute(raw);
    let (_, _, applied) = run(&msgs, true);
    assert!(applied > msgs.len() / 5, "{applied} of {}", msgs.len());
}
