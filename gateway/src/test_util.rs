//! Helpers for the crate's unit tests.

use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::Plan;

/// `config/examples/<name>.toml`'s engine after its recording, each result handed to `sink`.
pub fn replay_example(name: &str, sink: &mut dyn FnMut(&Plan, Output<'_>)) -> Engine {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let c = crate::config::load(&dir.join(format!("{name}.toml"))).unwrap();
    let mut e = Engine::new(c.plan, 1);
    let text = std::fs::read_to_string(dir.join(format!("{name}.jsonl"))).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (recv, topic, payload) =
            (v["recv_ms"].as_i64().unwrap(), v["topic"].as_str().unwrap(), v["payload"].as_str().unwrap());
        e.ingest(recv, topic, payload.as_bytes(), &mut |p: &Plan, out: Output<'_>| sink(p, out));
    }
    e
}
