//! A sensor on the local I2C bus (driven through embedded-hal-mock's
//! recorded transactions) feeding a window and a join with an MQTT stream,
//! through the same engine path as MQTT messages; its bus errors are counted.

use std::path::Path;

use edgejoin::config;
use edgejoin::sources::i2c::{self, sht3x_crc, Backoff, Sht3x};
use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::Plan;
use embedded_hal_mock::eh1::delay::NoopDelay;
use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

const CONFIG: &str = r#"
[[stream]]
name = "room"
i2c = { bus = "/dev/i2c-1", sensor = "sht3x", period = "10s" }
lateness = "0s"
max_keys = 4

[[stream]]
name = "outdoor"
topics = ["weather/{station}/temp"]
clock = "receive"
values = ["celsius"]
max_keys = 4

[[window]]
name = "room_1m"
input = "room"
size = "1m"
aggregates = { t = "mean(celsius)", rh = "max(humidity)" }
topic = "w/{window}"

[[join]]
name = "outdoor_vs_room"
strategy = "asof"
left = "outdoor"
right = "room"
tolerance = "30s"
"#;

fn answer(t: u16, rh: u16) -> Vec<u8> {
    let (a, b) = (t.to_be_bytes(), rh.to_be_bytes());
    vec![a[0], a[1], sht3x_crc(&a), b[0], b[1], sht3x_crc(&b)]
}

#[test]
fn readings_flow_into_a_window_and_a_join() {
    let c = config::parse(Path::new("i2c.toml"), CONFIG).unwrap();
    let p = c.plan;
    assert_eq!(p.streams[0].values, ["celsius", "humidity"]);
    assert_eq!((c.deployment.i2c[0].stream, c.deployment.i2c[0].address), (0, 0x44));
    // 12 readings, 10 s apart; the third fails on the bus and is retried
    let mut tx = Vec::new();
    for i in 0..12u16 {
        tx.push(Transaction::write(0x44, vec![0x24, 0x00]));
        if i == 2 {
            tx.push(Transaction::read(0x44, vec![0; 6]).with_error(embedded_hal::i2c::ErrorKind::Bus));
            tx.push(Transaction::write(0x44, vec![0x24, 0x00]));
        }
        tx.push(Transaction::read(0x44, answer(0x6000 + i * 16, 0x8000)));
    }
    let mut sensor = Sht3x::new(Mock::new(&tx), NoopDelay, 0x44);
    let mut engine = Engine::new(p, 1);
    let mut windows = Vec::new();
    let mut joins = Vec::new();
    let mut sink = |p: &Plan, o: Output<'_>| match o {
        Output::Window(r, _) => windows.push((r.start, r.count, r.values.get(1).unwrap())), // aggregates by name: rh, t
        Output::Join(r) => {
            joins.push((r.left.t0, r.right.as_ref().map(|s| s.values.get(0).unwrap()), p.joins.len()))
        }
        Output::Late(_) => {}
    };
    let t0 = 1_767_600_000_000i64;
    let (mut backoff, mut errors) = (Backoff::default(), 0u64);
    let mut now = t0;
    let mut readings = 0;
    while readings < 12 {
        match i2c::poll(&mut sensor, &mut backoff, &mut errors) {
            Ok(payload) => {
                engine.ingest(now, &config::i2c_topic("room"), payload.as_bytes(), &mut sink);
                readings += 1;
                // an outdoor reading over MQTT 5 s after each room reading
                engine.ingest(now + 5_000, "weather/st-1/temp", br#"{"celsius":4.5}"#, &mut sink);
                now += 10_000;
            }
            Err(wait) => now += wait as i64,
        }
    }
    engine.flush(&mut sink);
    sensor.release().done();
    assert_eq!(errors, 1, "the bus error was counted");
    assert_eq!(engine.stream_counters(0).decoded, 12);
    // 120 s of readings at 10 s: two full minutes of 6 readings each
    assert_eq!(windows.iter().map(|w| w.1).sum::<u64>(), 12);
    assert!(windows.iter().all(|w| (20.0..25.0).contains(&w.2)), "{windows:?}");
    // every outdoor reading found the room reading 5 s before it
    assert_eq!(joins.len(), 12);
    assert!(joins.iter().all(|j| j.1.is_some_and(|t| (20.0..25.0).contains(&t))), "{joins:?}");
}

#[test]
fn an_i2c_stream_is_refused_with_mqtt_topics_or_wrong_values() {
    let bad = CONFIG.replace("i2c = { bus", "topics = [\"x\"]\ni2c = { bus");
    let err = config::parse(Path::new("i2c.toml"), &bad).unwrap_err().to_string();
    assert!(err.contains("an `i2c` stream has no topics"), "{err}");
    let bad = CONFIG.replace(
        "lateness = \"0s\"\nmax_keys = 4",
        "lateness = \"0s\"\nmax_keys = 4\nvalues = [\"pressure\"]",
    );
    let err = config::parse(Path::new("i2c.toml"), &bad).unwrap_err().to_string();
    assert!(err.contains("reads celsius and humidity, not `pressure`"), "{err}");
}
