//! Saving the engine's state mid-stream and restoring it into a new engine
//! gives exactly the results of an uninterrupted run, for every example
//! config and many cut points; a checkpoint of another config keeps only
//! what the two share.

use std::path::{Path, PathBuf};

use edgejoin::config;
use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::manifest::{Fate, Manifest};
use edgejoin_engine::output::JsonEncoder;
use edgejoin_engine::Plan;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

fn messages(recording: &Path) -> Vec<(i64, String, Vec<u8>)> {
    std::fs::read_to_string(recording)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["recv_ms"].as_i64().unwrap(),
                v["topic"].as_str().unwrap().to_string(),
                v["payload"].as_str().unwrap().as_bytes().to_vec(),
            )
        })
        .collect()
}

fn run(engine: &mut Engine, msgs: &[(i64, String, Vec<u8>)], out: &mut Vec<String>, flush: bool) {
    let mut enc = JsonEncoder::new();
    let mut sink = |p: &Plan, o: Output<'_>| out.push(String::from_utf8(enc.encode(p, o).to_vec()).unwrap());
    for (recv, topic, payload) in msgs {
        engine.ingest(*recv, topic, payload, &mut sink);
    }
    if flush {
        engine.flush(&mut sink);
    }
}

#[test]
fn restored_engine_continues_exactly() {
    for cfg in examples() {
        let p = config::load(&cfg).unwrap().plan;
        let msgs = messages(&cfg.with_extension("jsonl"));
        let mut whole = Vec::new();
        run(&mut Engine::new(p.clone(), 3), &msgs, &mut whole, true);
        for cut in (0..=msgs.len()).step_by((msgs.len() / 7).max(1)) {
            let mut out = Vec::new();
            let mut first = Engine::new(p.clone(), 3);
            run(&mut first, &msgs[..cut], &mut out, false);
            let bytes = first.save_state();
            drop(first);
            let (mut second, carry) = Engine::restore(p.clone(), 3, &bytes).unwrap();
            assert!(carry.all_kept());
            run(&mut second, &msgs[cut..], &mut out, true);
            assert_eq!(out, whole, "{} cut at {cut}", cfg.display());
        }
    }
}

#[test]
fn a_checkpoint_of_another_config_keeps_only_what_they_share() {
    let a =
        config::load(&examples().into_iter().find(|p| p.ends_with("tolerance.toml")).unwrap()).unwrap().plan;
    let b =
        config::load(&examples().into_iter().find(|p| p.ends_with("sliding.toml")).unwrap()).unwrap().plan;
    let bytes = Engine::new(a.clone(), 1).save_state();
    let (_, carry) = Engine::restore(b.clone(), 1, &bytes).unwrap();
    let has = |p: &Plan, name: &str| {
        let names = p.streams.iter().map(|s| &s.name);
        names
            .chain(p.windows.iter().map(|w| &w.name))
            .chain(p.joins.iter().map(|j| &j.name))
            .any(|n| n == name)
    };
    // every part of b is new or reset, every part of a not in b is dropped
    for (kind, name, fate) in &carry.report {
        let (in_a, in_b) = (has(&a, name), has(&b, name));
        let want = match (in_a, in_b) {
            (true, true) => Fate::Reset,
            (false, true) => Fate::Added,
            (true, false) => Fate::Removed,
            (false, false) => unreachable!(),
        };
        if *fate != Fate::Kept {
            assert_eq!(*fate, want, "{kind:?} {name}");
        }
    }
    assert!(carry.discards());
    assert!(Engine::restore(a.clone(), 1, &bytes[..bytes.len() / 2]).is_err());
    assert!(Engine::restore(a.clone(), 1, &bytes).unwrap().1.all_kept());
    // state saved before checkpoints carried a manifest must fit whole
    let manifest = postcard::to_allocvec(&Manifest::of(&a)).unwrap().len();
    let legacy = &bytes[..bytes.len() - manifest];
    assert!(Engine::restore(a, 1, legacy).unwrap().1.all_kept());
    assert!(Engine::restore(b, 1, legacy).is_err());
}
