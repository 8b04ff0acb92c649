//! One fast clock among good ones (issue #20, docs/CLOCKS.md): three
//! devices with good clocks and one running 4 s ahead publish two streams at
//! 10 Hz with 20–200 ms of network delay; a 1-second window per device and a
//! ±500 ms tolerance join per device. With one watermark per stream the fast
//! device makes the others' events late; per-device watermarks and clock
//! correction lose nothing. The figures this prints are the ones in
//! docs/CLOCKS.md (`cargo test -p edgejoin --test device_watermarks -- --nocapture`).

use std::collections::BTreeSet;
use std::path::Path;

use edgejoin::config;
use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::Plan;

const SECONDS: i64 = 300;
const T0: i64 = 1_700_000_000_000;

/// (recv_ms, topic, payload, device, true ts), in arrival order.
fn fleet() -> Vec<(i64, String, String, u8)> {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut msgs = Vec::new();
    for dev in 0..4u8 {
        let offset = if dev == 3 { 4_000 } else { 0 };
        for stream in ["vib", "temp"] {
            for i in 0..SECONDS * 10 {
                let t = T0 + i * 100 + (dev as i64) * 7 + if stream == "temp" { 31 } else { 0 };
                let delay = 20 + (next() % 181) as i64;
                let payload = format!("{{\"ts\":{},\"v\":{}}}", t + offset, i % 17);
                msgs.push((t + delay, format!("plant/d{dev}/{stream}"), payload, dev));
            }
        }
    }
    msgs.sort_by_key(|m| m.0);
    msgs
}

fn config(clock: &str, watermark: &str) -> Plan {
    let stream = |name: &str| {
        format!(
            "[[stream]]\nname = \"{name}\"\ntopics = [\"plant/{{device}}/{name}\"]\nkey = \"{{device}}\"\nclock = \"{clock}\"\nwatermark = \"{watermark}\"\nlateness = \"1s\"\nidle_timeout = \"5s\"\ncapacity = 256\nvalues = [\"v\"]\n\n"
        )
    };
    let text = format!(
        "{}{}[[window]]\nname = \"vib_1s\"\ninput = \"vib\"\nsize = \"1s\"\naggregates = {{ n = \"count()\" }}\ntopic = \"w/{{key}}\"\n\n[[join]]\nname = \"vib_temp\"\nstrategy = \"tolerance\"\nleft = \"vib\"\nright = \"temp\"\ntype = \"inner\"\nlower = \"-500ms\"\nupper = \"500ms\"\nmax_matches = 32\ntopic = \"j/{{key}}\"\n",
        stream("vib"),
        stream("temp")
    );
    config::parse(Path::new("fleet.toml"), &text).expect("valid config").plan
}

#[derive(Debug, Default, PartialEq)]
struct Outcome {
    late_good: [u64; 2],
    windows_good: u64,
    joins_good: u64,
}

fn run(p: Plan, msgs: &[(i64, String, String, u8)]) -> Outcome {
    let mut e = Engine::new(p, 3);
    let mut out = Outcome::default();
    let fast = "d3";
    {
        let mut sink = |_: &Plan, o: Output<'_>| match o {
            Output::Window(r, _) if r.key.as_str() != fast => out.windows_good += 1,
            Output::Join(r) if r.key.as_str() != fast => out.joins_good += 1,
            _ => {}
        };
        for (recv, topic, payload, _) in msgs {
            e.ingest(*recv, topic, payload.as_bytes(), &mut sink);
        }
        e.flush(&mut sink);
    }
    // the fast device is never late (its delays vary by less than the lateness, and it leads):
    // every late event is a good device's
    for s in 0..2 {
        out.late_good[s] = e.stream_counters(s).late_dropped;
    }
    out
}

#[test]
fn one_fast_clock_costs_the_others_nothing_with_per_device_watermarks() {
    let msgs = fleet();
    // what a correct engine gives for the good devices: every event, every window, every match
    let good: Vec<_> = msgs.iter().filter(|m| m.3 != 3).collect();
    let windows: BTreeSet<(u8, i64)> = good
        .iter()
        .filter(|m| m.1.ends_with("/vib"))
        .map(|m| {
            let ts: i64 = m.2[6..m.2.find(',').unwrap()].parse().unwrap();
            (m.3, ts.div_euclid(1000))
        })
        .collect();
    let ts_of = |m: &&(i64, String, String, u8)| -> i64 { m.2[6..m.2.find(',').unwrap()].parse().unwrap() };
    let mut matches = 0u64;
    for l in good.iter().filter(|m| m.1.ends_with("/vib")) {
        matches += good
            .iter()
            .filter(|r| r.1.ends_with("/temp") && r.3 == l.3 && (ts_of(r) - ts_of(l)).abs() <= 500)
            .count() as u64;
    }
    let good_per_stream = 3 * (SECONDS * 10) as u64;

    let stream_wm = run(config("device", "stream"), &msgs);
    let device_wm = run(config("device", "device"), &msgs);
    let corrected = run(config("corrected", "stream"), &msgs);
    eprintln!(
        "good devices: {good_per_stream} events per stream, {} windows, {matches} join rows",
        windows.len()
    );
    for (name, o) in [
        ("watermark per stream", &stream_wm),
        ("watermark per device", &device_wm),
        ("clock corrected", &corrected),
    ] {
        eprintln!(
            "{name:<22} late {:>5} + {:>5}   windows {:>4}   join rows {:>6}",
            o.late_good[0], o.late_good[1], o.windows_good, o.joins_good
        );
    }
    // per-device watermarks: exactly what a correct engine gives
    assert_eq!(
        device_wm,
        Outcome { late_good: [0, 0], windows_good: windows.len() as u64, joins_good: matches }
    );
    // one watermark per stream: the fast device makes nearly all of the others' events late
    assert!(stream_wm.late_good.iter().all(|&l| l > good_per_stream * 9 / 10), "{stream_wm:?}");
    assert!(stream_wm.joins_good < matches / 100, "{stream_wm:?}");
    // clock correction maps the fast clock back: nothing late either
    assert_eq!(corrected.late_good, [0, 0], "{corrected:?}");
}
