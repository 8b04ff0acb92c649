//! Entry points for fuzzing: each takes arbitrary bytes, drives one reader of
//! untrusted input the way the gateway does, and must never panic, hang or
//! grow memory without bound. The cargo-fuzz targets in `fuzz/` call them
//! (`scripts/torture.sh fuzz`), and so does a CI-sized run over the committed
//! corpora plus seeded mutations (`tests/tests/fuzz_smoke.rs`). Not part of
//! the product's interface.

use std::cell::RefCell;
use std::path::Path;

use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::topic::TopicPattern;
use edgejoin_engine::Plan;

use crate::config::FullPolicy;
use crate::service::{checkpoint, spool::Spool, wal::Wal};

/// The pipeline the payload target feeds: one stream per payload format
/// (JSON with payload keys and RFC 3339 or numeric time, a bare number,
/// postcard), clock correction and per-device watermarks, windows and joins.
pub const PIPELINE: &str = r#"
[gateway]
max_devices = 64

[[stream]]
name = "j"
topics = ["j/{d}"]
key = "$.k"
device = "{d}"
clock = "corrected"
watermark = "device"
idle_timeout = "1m"
lateness = "2s"
max_keys = 64
values = ["v", "w"]
late = "route"

[[stream]]
name = "n"
topics = ["n/{d}/#"]
key = "{d}"
format = "number"
max_keys = 64

[[stream]]
name = "p"
topics = ["p/+"]
key = "$.key"
device = "$.device"
format = "postcard"
time_unit = "us"
max_keys = 64
values = ["a", "b"]

[[window]]
name = "jw"
input = "j"
size = "10s"
slide = "5s"
aggregates = { s = "sum(v)", m = "max(w)", sd = "stddev(v)", n = "count()" }

[[window]]
name = "js"
input = "j"
gap = "3s"
aggregates = { f = "first(v)", l = "last(v)" }

[[window]]
name = "roll"
input = "jw"
size = "1m"
aggregates = { t = "sum(s)" }

[[join]]
name = "tol"
strategy = "tolerance"
left = "j"
right = "n"
lower = "-2s"
upper = "2s"
type = "left_outer"

[[join]]
name = "asof"
strategy = "asof"
left = "p"
right = "j"
tolerance = "5s"
"#;

fn pipeline() -> Plan {
    crate::config::parse(Path::new("fuzz.toml"), PIPELINE).expect("the fuzz pipeline is valid").plan
}

thread_local! {
    static ENGINE: RefCell<Option<(Engine, u64)>> = const { RefCell::new(None) };
}

/// Topics the payload target routes to (the first input byte picks one).
const TOPICS: [&str; 6] = ["j/dev1", "j/dev2", "n/dev1/x", "n/a/b/c", "p/1", "nomatch"];

/// A message to the payload decoders and everything after them: byte 0
/// picks the topic, bytes 1..9 the receive time; the rest is the payload.
/// The engine lives on (state accumulates over inputs, as in a service) and
/// starts again every 10,000 inputs.
pub fn payload(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let (recv, payload) = if rest.len() >= 8 {
        let (t, p) = rest.split_at(8);
        (i64::from_le_bytes(t.try_into().expect("8 bytes")), p)
    } else {
        (1_700_000_000_000, rest)
    };
    ENGINE.with(|e| {
        let mut e = e.borrow_mut();
        if e.as_ref().is_none_or(|(_, n)| *n >= 10_000) {
            *e = Some((Engine::new(pipeline(), 7), 0));
        }
        let (engine, n) = e.as_mut().expect("engine");
        *n += 1;
        let mut sink = |p: &Plan, o: Output<'_>| {
            let mut enc = edgejoin_engine::output::JsonEncoder::new();
            let _ = enc.encode(p, o);
        };
        let topic = TOPICS[pick as usize % TOPICS.len()];
        engine.ingest(recv, topic, payload, &mut sink);
        if pick & 0x80 != 0 {
            engine.tick(recv, &mut sink);
        }
    });
}

/// A topic pattern (before the first NUL) and a topic to match it against.
pub fn topic(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (pattern, topic) = text.split_once('\0').unwrap_or((&text, "a/b/c"));
    if let Ok(p) = TopicPattern::parse(pattern) {
        if let Some(caps) = p.matches(topic) {
            for i in 0..p.names().len() {
                let _ = caps.get(topic, i);
            }
        }
        let _ = p.matches_prefix_of(topic);
        let _ = p.filter();
    }
}

/// A config file, as `check-config` reads it (and, when valid, its report).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = crate::config::parse(Path::new("fuzz.toml"), &text) {
        let _ = crate::cli::describe_config(&c);
    }
}

/// A recording, as `edgejoin replay` reads it, through the payload pipeline.
pub fn replay(data: &[u8]) {
    let mut engine = Engine::new(pipeline(), 7);
    let _ = crate::cli::replay_into(&mut engine, data, std::io::sink());
}

/// A fresh directory under the system's temporary one, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Scratch {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("edgejoin-fuzz-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    Scratch(dir)
}

/// A checkpoint file, as start-up reads it.
pub fn checkpoint(data: &[u8]) {
    let dir = scratch();
    std::fs::write(checkpoint::path(dir.path()), data).expect("write");
    if let Ok(Some(l)) = checkpoint::load(dir.path(), &pipeline(), 7) {
        let _ = l.engine.save_state();
    }
}

/// A write-ahead log segment, as start-up replays it.
pub fn wal(data: &[u8]) {
    let dir = scratch();
    let wal = dir.path().join("wal");
    std::fs::create_dir_all(&wal).expect("mkdir");
    std::fs::write(wal.join(format!("{:020}.wal", 1)), data).expect("write");
    let mut n = 0u64;
    let _ = Wal::open(&wal, 0, |_| n += 1);
}

/// A spool's delivered position (the first line) and a segment (the rest),
/// as start-up and the uplink read them.
pub fn spool(data: &[u8]) {
    let dir = scratch();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("mkdir");
    let cut = data.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let (acked, seg) = data.split_at(cut);
    std::fs::write(spool.join("acked"), acked).expect("write");
    std::fs::write(spool.join(format!("{:020}.spool", 0)), seg).expect("write");
    if let Ok(s) = Spool::open(&spool, 1 << 20, FullPolicy::DropOldest) {
        let mut r = s.reader();
        let mut out = Vec::new();
        let _ = r.read(s.acked(), 64, &mut out);
    }
}

/// A fuzz target: arbitrary bytes in, nothing out but not panicking.
pub type Target = fn(&[u8]);

/// Every target by name, for the smoke run and the script.
pub const TARGETS: [(&str, Target); 7] = [
    ("payload", payload),
    ("topic", topic),
    ("config", config),
    ("replay", replay),
    ("checkpoint", checkpoint),
    ("wal", wal),
    ("spool", spool),
];

/// Valid inputs for a target, made by the gateway's own writers: the seeds
/// of its corpus (`tests/fuzz_smoke.rs` writes them with `EDGEJOIN_WRITE_SEEDS=1`).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let payloads: Vec<(u8, Vec<u8>)> = vec![
        (0, br#"{"ts":1700000000000,"k":"a","v":1.5,"w":2}"#.to_vec()),
        (1, br#"{"ts":"2023-11-14T22:13:20.250Z","k":7,"v":"21.5","w":true}"#.to_vec()),
        (2, b"21.5".to_vec()),
        (3, b"-1e3".to_vec()),
        (4, {
            let mut values = heapless::Vec::new();
            let _ = values.push(Some(1.0));
            let _ = values.push(None);
            let p = edgejoin_engine::decode::PostcardPayload {
                ts: 1_700_000_000_000_000,
                key: Some("k1"),
                device: Some("d1"),
                values,
            };
            postcard::to_allocvec(&p).expect("postcard")
        }),
    ];
    match target {
        "payload" => payloads
            .iter()
            .map(|(pick, p)| {
                let mut v = vec![*pick];
                v.extend_from_slice(&1_700_000_001_000i64.to_le_bytes());
                v.extend_from_slice(p);
                v
            })
            .collect(),
        "topic" => [
            "sensors/{device}/temp\0sensors/d1/temp",
            "plant/+/{line}/#\0plant/a/l2/x/y",
            "#\0$SYS/x",
            "{a}/{b}\0x/y",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "config" => vec![PIPELINE.as_bytes().to_vec()],
        "replay" => {
            let mut rec = String::new();
            for (i, (pick, p)) in payloads.iter().enumerate() {
                let line = match std::str::from_utf8(p) {
                    Ok(text) => {
                        serde_json::json!({"recv_ms": 1_700_000_000_000i64 + i as i64, "topic": TOPICS[*pick as usize], "payload": text})
                    }
                    Err(_) => {
                        serde_json::json!({"recv_ms": 1_700_000_000_000i64 + i as i64, "topic": TOPICS[*pick as usize], "payload_b64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, p)})
                    }
                };
                rec.push_str(&line.to_string());
                rec.push('\n');
            }
            vec![rec.into_bytes()]
        }
        "checkpoint" => {
            let dir = scratch();
            let mut e = Engine::new(pipeline(), 7);
            let mut sink = |_: &Plan, _: Output<'_>| {};
            for (pick, p) in &payloads {
                e.ingest(1_700_000_001_000, TOPICS[*pick as usize], p, &mut sink);
            }
            checkpoint::save(dir.path(), &e, 5, [(1u16, 2u64, 3u64)].into_iter()).expect("save");
            vec![std::fs::read(checkpoint::path(dir.path())).expect("read")]
        }
        "wal" => {
            let dir = scratch();
            let (mut w, _, _) = Wal::open(dir.path(), 0, |_| {}).expect("open");
            for (i, (pick, p)) in payloads.iter().enumerate() {
                w.append_message(i as u64 + 1, 1_700_000_000_000, i as u16, TOPICS[*pick as usize], p)
                    .expect("append");
            }
            w.append_tick(9, 1_700_000_002_000).expect("tick");
            w.append_acked(3).expect("acked");
            w.write().expect("write");
            w.sync().expect("sync");
            drop(w);
            std::fs::read_dir(dir.path())
                .expect("list")
                .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .filter(|b| !b.is_empty())
                .collect()
        }
        "spool" => {
            let dir = scratch();
            let mut sp = Spool::open(dir.path(), 1 << 20, FullPolicy::DropOldest).expect("open");
            for (i, (pick, p)) in payloads.iter().enumerate() {
                sp.append(i as u64 + 1, 0, TOPICS[*pick as usize], p).expect("append");
            }
            sp.flush().expect("flush");
            sp.reader().state().ack(2);
            sp.save_acked().expect("acked");
            drop(sp);
            let acked = std::fs::read(dir.path().join("acked")).expect("acked");
            let seg = std::fs::read(dir.path().join(format!("{:020}.spool", 1)))
                .or_else(|_| std::fs::read(dir.path().join(format!("{:020}.spool", 0))))
                .unwrap_or_default();
            vec![[acked, seg].concat()]
        }
        _ => Vec::new(),
    }
}
