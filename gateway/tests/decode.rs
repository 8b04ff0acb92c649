//! Decoding as configured: payloads of every format through a stream built
//! by the config reader (keys from captures and fields, time units, values).

use edgejoin::config;
use edgejoin_engine::decode::*;
use edgejoin_engine::event::Event;
use edgejoin_engine::plan::{Clock, StreamDef};
use proptest::prelude::*;
use std::path::Path;

fn stream(extra: &str) -> StreamDef {
    let text =
        format!("[[stream]]\nname = \"s\"\ntopics = [\"x/{{dev}}/y\", \"z/{{site}}/{{dev}}\"]\n{extra}\n");
    config::parse(Path::new("t.toml"), &text).unwrap().plan.streams.remove(0)
}

fn blank() -> Event {
    Event::blank()
}

fn run(def: &StreamDef, topic: &str, payload: &[u8]) -> Result<(Event, Notes), DecodeError> {
    let d = Decoder::new(def);
    let (i, caps) =
        def.topics.iter().enumerate().find_map(|(i, t)| t.matches(topic).map(|c| (i, c))).unwrap();
    let mut ev = blank();
    d.decode(topic, i, &caps, payload, &mut ev).map(|n| (ev, n))
}

#[test]
fn json_fields_and_captures() {
    let def = stream(
        "key = \"$.id\"\ndevice = \"{dev}\"\nvalues = [\"a\", \"b\", \"c\", \"d\"]\ntime_unit = \"s\"",
    );
    let (ev, notes) = run(
        &def,
        "z/site1/dev-9",
        br#"{"b":"2.5","id":17,"ts":1700000000.5,"a":true,"c":"x","x":{"y":[1]}}"#,
    )
    .unwrap();
    assert_eq!(ev.key.as_str(), "17");
    assert_eq!(ev.device.as_str(), "dev-9"); // capture index differs per pattern
    assert_eq!(ev.ts, 1_700_000_000_500);
    assert_eq!((ev.values.get(0), ev.values.get(1), ev.values.get(2)), (Some(1.0), Some(2.5), None));
    assert_eq!(notes, Notes { missing_values: 1, non_numeric_values: 1 });
    let (ev, _) = run(&def, "x/d1/y", br#"{"id":"o-\u00e9","ts":"2023-11-14T22:13:20Z"}"#).unwrap();
    assert_eq!(ev.key.as_str(), "o-é");
    assert_eq!(ev.ts, 1_700_000_000_000);
}

#[test]
fn json_errors_are_named() {
    let def = stream("key = \"$.id\"");
    let long = format!(r#"{{"id":"{}","ts":1}}"#, "k".repeat(65));
    for (payload, want) in [
        (&b"{"[..], DecodeError::InvalidJson),
        (b"[1]", DecodeError::InvalidJson),
        (br#"{"id":"a"}"#, DecodeError::MissingTime),
        (br#"{"id":"a","ts":"yesterday"}"#, DecodeError::BadTime),
        (br#"{"id":"a","ts":1e30}"#, DecodeError::TimeOutOfRange),
        (br#"{"ts":1}"#, DecodeError::MissingKey),
        (br#"{"id":[1],"ts":1}"#, DecodeError::BadKey),
        (long.as_bytes(), DecodeError::KeyTooLong),
    ] {
        assert_eq!(
            run(&def, "x/d/y", payload).map(|_| ()),
            Err(want),
            "{}",
            String::from_utf8_lossy(payload)
        );
    }
}

#[test]
fn number_payloads() {
    let def = stream("format = \"number\"\nkey = \"{dev}\"");
    assert_eq!(def.clock, Clock::Receive);
    let (ev, _) = run(&def, "x/d1/y", b" 21.5\n").unwrap();
    assert_eq!((ev.key.as_str(), ev.values.get(0)), ("d1", Some(21.5)));
    assert_eq!(run(&def, "x/d1/y", b"NaN").map(|_| ()), Err(DecodeError::InvalidNumber));
    assert_eq!(run(&def, "x/d1/y", b"").map(|_| ()), Err(DecodeError::InvalidNumber));
}

#[test]
fn postcard_payloads() {
    let def = stream("format = \"postcard\"\nkey = \"$.key\"\ntime_unit = \"us\"\nvalues = [\"a\", \"b\"]");
    let mut values = heapless::Vec::new();
    values.push(Some(1.5)).unwrap();
    values.push(None).unwrap();
    let msg = PostcardPayload { ts: 1_700_000_000_123_999, key: Some("k1"), device: None, values };
    let bytes = postcard::to_stdvec(&msg).unwrap();
    let (ev, notes) = run(&def, "x/d1/y", &bytes).unwrap();
    assert_eq!((ev.key.as_str(), ev.ts, ev.values.get(0)), ("k1", 1_700_000_000_123, Some(1.5)));
    assert_eq!(notes.missing_values, 1);
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(run(&def, "x/d1/y", &trailing).map(|_| ()), Err(DecodeError::InvalidPostcard));
    assert_eq!(run(&def, "x/d1/y", &bytes[..3]).map(|_| ()), Err(DecodeError::InvalidPostcard));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), json in "\\{(\"[a-z]{1,3}\":(-?[0-9]{1,20}(\\.[0-9]{1,5})?|\"[^\"]{0,10}\"|null|true|\\[\\]),?){0,6}\\}") {
        for def in [stream("key = \"$.a\"\nvalues = [\"b\"]"), stream("format = \"postcard\"\nvalues = [\"b\"]")] {
            let _ = run(&def, "x/d/y", &bytes);
            let _ = run(&def, "x/d/y", json.as_bytes());
        }
    }
}
