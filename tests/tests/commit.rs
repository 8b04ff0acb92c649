//! Group commit on a slow disk: every fsync made to take 30 ms (an SD
//! card's), injected into the real binary with an `LD_PRELOAD` shim around
//! `fdatasync`/`fsync`. At 1,000 messages a second the gateway keeps up —
//! one fsync carries many messages — and SIGKILLs in the middle lose
//! nothing and count nothing twice. Real Mosquitto on a free port.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
static void slow(void) {
    const char *ms = getenv("EDGEJOIN_TEST_FSYNC_MS");
    if (ms) usleep((useconds_t)atoi(ms) * 1000);
}
int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow();
    return real(fd);
}
int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow();
    return real(fd);
}
"#;

/// Builds the shim with the system's C compiler.
fn shim(dir: &Path) -> PathBuf {
    let src = dir.join("slow_fsync.c");
    let lib = dir.join("slow_fsync.so");
    std::fs::write(&src, SHIM).unwrap();
    let st =
        Command::new("cc").args(["-shared", "-fPIC", "-O2", "-o"]).arg(&lib).arg(&src).arg("-ldl").status();
    assert!(st.is_ok_and(|s| s.success()), "cannot build the fsync shim with cc");
    lib
}

fn reading(i: usize) -> (String, Vec<u8>) {
    (format!("load/k{}", i % 7), format!("{{\"ts\":{},\"v\":{i}}}", 1_000_000 + i * 10).into_bytes())
}

/// Publishes `msgs` at about `rate` a second, in chunks every 50 ms.
fn paced(port: u16, msgs: &[(String, Vec<u8>)], rate: usize) {
    let chunk = (rate / 20).max(1);
    let start = Instant::now();
    for (n, c) in msgs.chunks(chunk).enumerate() {
        publish(port, c);
        let due = start + Duration::from_millis(50 * (n as u64 + 1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}

fn slow_gateway(cfg: &Path, lib: &Path) -> Gateway {
    let mut cmd = Gateway::command(cfg);
    cmd.env("LD_PRELOAD", lib).env("EDGEJOIN_TEST_FSYNC_MS", "30");
    Gateway::spawn(cmd).ready_within(20).unwrap_or_else(|(st, log)| panic!("not ready ({st:?}): {log:?}"))
}

#[test]
fn with_a_30_ms_fsync_the_gateway_keeps_up_at_1000_messages_a_second_and_loses_nothing() {
    need_mosquitto!();
    // a broker window of 100 unacknowledged messages (Mosquitto's default is 20: see docs/SERVICE.md)
    let broker = Broker::start_with("max_inflight_messages 100\n");
    let work = tempfile::tempdir().unwrap();
    let lib = shim(work.path());
    let mport = free_port();
    let cfg = format!(
        "[gateway]\nmetrics_addr = \"127.0.0.1:{mport}\"\n\n[[stream]]\nname = \"s\"\ntopics = [\"load/{{k}}\"]\nkey = \"{{k}}\"\nvalues = [\"v\"]\n\n[[window]]\nname = \"w\"\ninput = \"s\"\nsize = \"10s\"\naggregates = {{ n = \"count()\" }}\ntopic = \"w/{{key}}\"\n"
    );
    let (path, _) = live_config_with(&cfg, &broker, &broker, &work.path().join("state"), "2s");
    let collector = Collector::start(broker.port, "gw/test/#");
    let msgs: Vec<(String, Vec<u8>)> = (0..6000).map(reading).collect();

    // 3 s at 1,000 msg/s: processed as fast as they come, many per fsync
    let gw = slow_gateway(&path, &lib);
    paced(broker.port, &msgs[..3000], 1000);
    let published_ms = unix_ms();
    let caught_up = wait_until(10, || metric(mport, "edgejoin_processed_total").unwrap_or(0.0) >= 3000.0);
    assert!(caught_up, "processed {:?} of 3000", metric(mport, "edgejoin_processed_total"));
    // when the batch that completed the 3,000 was processed (the metrics page is rendered once a
    // second: its own time would add up to a second)
    let behind =
        metric(mport, "edgejoin_last_processed_timestamp_seconds").unwrap() * 1000.0 - published_ms as f64;
    assert!(behind < 1500.0, "{behind} ms behind the publisher");
    let commits = metric(mport, "edgejoin_commits_total").unwrap();
    assert!(commits <= 300.0, "{commits} fsyncs for 3000 messages: not grouped");
    let window = metric(mport, "edgejoin_broker_window").unwrap();
    assert!(window >= 2.0, "learned window {window}");

    // 3 s more with two SIGKILLs: everything counted exactly once
    let port = broker.port;
    let rest = msgs[3000..].to_vec();
    let publisher = std::thread::spawn(move || paced(port, &rest, 1000));
    let mut gw = gw;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1000));
        gw.kill();
        gw = slow_gateway(&path, &lib);
    }
    publisher.join().unwrap();
    // a reading far ahead closes every window
    publish(broker.port, &[("load/k0".into(), b"{\"ts\":9000000,\"v\":0}".to_vec())]);
    let counted =
        || -> u64 { collector.rows.lock().unwrap().values().map(|v| v["count"].as_u64().unwrap()).sum() };
    wait_until(30, || counted() >= 6000);
    std::thread::sleep(Duration::from_millis(500));
    let rows = collector.rows.lock().unwrap().len();
    assert_eq!(counted(), 6000, "every message counted exactly once ({rows} windows)");
    gw.stop();
}

#[test]
fn at_1000_messages_a_second_fsyncs_are_grouped_at_most_100_a_second() {
    need_mosquitto!();
    let broker = Broker::start_with("max_inflight_messages 100\n");
    let work = tempfile::tempdir().unwrap();
    let mport = free_port();
    let cfg = format!(
        "[gateway]\nmetrics_addr = \"127.0.0.1:{mport}\"\n\n[[stream]]\nname = \"s\"\ntopics = [\"load/{{k}}\"]\nkey = \"{{k}}\"\nvalues = [\"v\"]\n"
    );
    let (path, _) = live_config_with(&cfg, &broker, &broker, &work.path().join("state"), "30s");
    let gw = Gateway::start(&path);
    let before = metric(mport, "edgejoin_commits_total").unwrap_or(0.0);
    let msgs: Vec<(String, Vec<u8>)> = (0..3000).map(reading).collect();
    let t0 = Instant::now();
    paced(broker.port, &msgs, 1000);
    assert!(wait_until(10, || metric(mport, "edgejoin_processed_total").unwrap_or(0.0) >= 3000.0));
    let secs = t0.elapsed().as_secs_f64();
    let commits = metric(mport, "edgejoin_commits_total").unwrap() - before;
    // one fsync per message would be ~3,000; the cap is 100 a second
    assert!(commits <= 100.0 * secs + 5.0, "{commits} fsyncs in {secs:.1} s");
    assert!(commits >= 3000.0 / 500.0, "{commits} fsyncs: some batches must have been committed");
    gw.stop();
}
