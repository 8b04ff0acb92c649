//! Group commit on a slow disk: every fsync made to take 30 ms (an SD
//! card's), injected into the real binary with an `LD_PRELOAD` shim around
//! `fdatasync`/`fsync`. At 1,000 messages a second the gateway keeps up —
//! one fsync carries many messages — and SIGKILLs in the middle lose
//! nothing and count nothing twice. And while an fsync hangs, nothing
//! processed ahead of it reaches upstream; after a power cut during it (the
//! log's unsynced tail cut off by the test) start-up removes the results
//! whose input the log lost. Real Mosquitto on a free port.

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
#include <stdio.h>
static void slow(void) {
    const char *ms = getenv("EDGEJOIN_TEST_FSYNC_MS");
    if (ms) usleep((useconds_t)atoi(ms) * 1000);
    /* or as a file says at the time of the call (a test turns it on and off) */
    const char *path = getenv("EDGEJOIN_TEST_FSYNC_MS_FILE");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (f) {
        int n = 0;
        if (fscanf(f, "%d", &n) == 1 && n > 0) usleep((useconds_t)n * 1000);
        fclose(f);
    }
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

/// A gateway on a disk whose fsyncs take as long as a file says (the shim
/// reads it at each call; 0 at first), counting readings of `load/<key>` in
/// 10-second windows per key, its results collected upstream.
struct SlowDisk {
    collector: Collector,
    path: PathBuf,
    mport: u16,
    delay: PathBuf,
    lib: PathBuf,
    work: tempfile::TempDir,
    broker: Broker,
}

/// [`SlowDisk`]'s pipeline: keys `load/{k}`, 10-second windows counting readings.
const LOAD_WINDOWS: &str = "[[stream]]\nname = \"s\"\ntopics = [\"load/{k}\"]\nkey = \"{k}\"\nlateness = \"0s\"\nvalues = [\"v\"]\n\n[[window]]\nname = \"w\"\ninput = \"s\"\nsize = \"10s\"\naggregates = { n = \"count()\" }\ntopic = \"w/{key}\"\n";

impl SlowDisk {
    fn new() -> SlowDisk {
        Self::with("", LOAD_WINDOWS)
    }

    /// With more `[gateway]` settings and another pipeline.
    fn with(gateway: &str, pipeline: &str) -> SlowDisk {
        let broker = Broker::start();
        let work = tempfile::tempdir().unwrap();
        let lib = shim(work.path());
        let delay = work.path().join("fsync_ms");
        std::fs::write(&delay, "0").unwrap();
        let mport = free_port();
        let cfg = format!("[gateway]\nmetrics_addr = \"127.0.0.1:{mport}\"\n{gateway}\n{pipeline}");
        let (path, _) = live_config_with(&cfg, &broker, &broker, &work.path().join("state"), "30s");
        let collector = Collector::start(broker.port, "gw/test/#");
        SlowDisk { collector, path, mport, delay, lib, work, broker }
    }

    /// Every fsync from now on takes `ms`.
    fn fsync_ms(&self, ms: u64) {
        std::fs::write(&self.delay, ms.to_string()).unwrap();
    }

    fn start(&self) -> Gateway {
        let mut cmd = Gateway::command(&self.path);
        cmd.env("LD_PRELOAD", &self.lib).env("EDGEJOIN_TEST_FSYNC_MS_FILE", &self.delay);
        Gateway::spawn(cmd).ready_within(20).unwrap_or_else(|(st, log)| panic!("not ready ({st:?}): {log:?}"))
    }

    fn rows(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        self.collector.rows.lock().unwrap().clone()
    }

    /// How many rows came per (window start, count).
    fn window_counts(&self) -> Vec<((u64, u64), usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for r in self.rows().values() {
            *counts.entry((r["start"].as_u64().unwrap(), r["values"]["n"].as_u64().unwrap())).or_insert(0) +=
                1;
        }
        counts.into_iter().collect()
    }
}

/// A reading of key `k<k>` at `ts`, for [`SlowDisk`].
fn load_reading(k: usize, ts: u64) -> (String, Vec<u8>) {
    (format!("load/k{k}"), format!("{{\"ts\":{ts},\"v\":1}}").into_bytes())
}

/// Processing runs ahead of the fsync; what it produces may not: while the log's fsync hangs
/// (4 s here), the result of a message it will make durable stays in the gateway — none
/// reaches upstream, where a crash could leave a result of an input the log lost — and goes
/// out once the fsync returns; a SIGKILL during such an fsync loses nothing and repeats
/// nothing: the restart replays what the log got, recognises the broker's redelivery, and
/// each window comes once.
#[test]
fn a_result_waits_for_the_fsync_of_its_input() {
    need_mosquitto!();
    let t = SlowDisk::new();

    // 1,000 keys' windows open; their results (~150 KiB) are more than the spool keeps in
    // memory before it writes them to its file, where the uplink reads
    let gw = t.start();
    publish(t.broker.port, &(0..1000).map(|k| load_reading(k, 1_000_000)).collect::<Vec<_>>());
    assert!(wait_until(10, || metric(t.mport, "edgejoin_processed_total") == Some(1000.0)));
    // from now on an fsync takes 4 s; the next reading closes the 1,000 windows (the metrics
    // page is rendered by the engine thread, which waits in the fsync: only time can tell)
    t.fsync_ms(4000);
    publish(t.broker.port, &[load_reading(0, 1_020_000)]);
    std::thread::sleep(Duration::from_millis(2000));
    let checked_ms = unix_ms() as u64;
    assert!(t.rows().is_empty(), "{} results went upstream before their input's fsync", t.rows().len());
    assert!(wait_until(10, || t.rows().len() == 1000), "{} of 1000", t.rows().len());
    let emitted = t.rows().values().map(|r| r["emitted_ms"].as_u64().unwrap()).max().unwrap();
    assert!(
        emitted < checked_ms,
        "computed at {emitted}, before the check at {checked_ms}: they waited for the fsync"
    );

    // the next window's result waits for its fsync too; the gateway dies meanwhile
    publish(t.broker.port, &[load_reading(0, 1_040_000)]);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(t.rows().len(), 1000);
    gw.kill();

    t.fsync_ms(0);
    let gw = t.start();
    publish(t.broker.port, &[load_reading(0, 1_060_000)]);
    assert!(wait_until(20, || t.rows().len() >= 1002), "{} of 1002", t.rows().len());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        t.window_counts(),
        [((1_000_000, 1), 1000), ((1_020_000, 1), 1), ((1_040_000, 1), 1)],
        "each window once, each reading counted once"
    );
    gw.stop();
}

/// Publishes one message at QoS 0 (lost for good if the gateway loses it).
fn publish_qos0(port: u16, topic: &str, payload: &[u8]) {
    use rumqttc::{Client, Event, MqttOptions, Outgoing, QoS};
    let o = MqttOptions::new(format!("qos0-{port}-{}", free_port()), "127.0.0.1", port);
    let (client, mut conn) = Client::new(o, 10);
    client.publish(topic, QoS::AtMostOnce, false, payload.to_vec()).unwrap();
    client.disconnect().unwrap();
    for ev in conn.iter() {
        if matches!(ev, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {
            break;
        }
    }
}

/// A power cut's effect on the log: the frames from the first one holding
/// `needle` on are gone (written, never fsynced). Returns the bytes cut.
fn cut_log_at(wal_dir: &Path, needle: &[u8]) -> u64 {
    let mut files: Vec<PathBuf> = std::fs::read_dir(wal_dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().rev() {
        let bytes = std::fs::read(f).unwrap();
        // frames: [u32 len][u32 crc][len bytes]
        let mut at = 0usize;
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let body = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
            if body.windows(needle.len()).any(|w| w == needle) {
                std::fs::OpenOptions::new().write(true).open(f).unwrap().set_len(at as u64).unwrap();
                return (bytes.len() - at) as u64;
            }
            at += 8 + len;
        }
    }
    panic!("no log record holds {:?}", String::from_utf8_lossy(needle));
}

/// A power cut while an fsync of the log is under way: the results computed
/// ahead of it are in the spool's file (held from the uplink), the input they
/// came from is not in the log any more. Start-up must remove those results:
/// here the input was QoS 0 (the broker does not send it again), so the
/// windows it closed stay open, take more readings, and close with other
/// counts — a held result let through would be a row that never was.
#[test]
fn a_power_cut_before_the_fsync_leaves_no_result_of_the_lost_input() {
    need_mosquitto!();
    let t = SlowDisk::new();

    // 1,000 windows at 1,000,000 closed by 1,000 readings at 1,020,000 (all durable, all out)
    let gw = t.start();
    publish(t.broker.port, &(0..1000).map(|k| load_reading(k, 1_000_000)).collect::<Vec<_>>());
    publish(t.broker.port, &(0..1000).map(|k| load_reading(k, 1_020_000)).collect::<Vec<_>>());
    assert!(wait_until(10, || t.rows().len() == 1000), "{} of 1000", t.rows().len());
    // the delivered position is saved (an fsync) at most once a second: let that one pass first
    std::thread::sleep(Duration::from_millis(1500));
    // the fsync now hangs; a QoS 0 reading closes the 1,000 windows at 1,020,000: their
    // results (~150 KiB) go to the spool's file, held; the power goes before the fsync ends
    t.fsync_ms(4000);
    publish_qos0(t.broker.port, "load/k0", br#"{"ts":1040000,"v":1}"#);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(t.rows().len(), 1000, "held results went upstream before their input's fsync");
    gw.kill();
    let cut = cut_log_at(&t.work.path().join("state/wal"), br#""ts":1040000"#);
    assert!(cut > 0);

    t.fsync_ms(0);
    let gw = t.start();
    assert!(
        gw.logged("spool: removed"),
        "start-up did not cut the held results: {:?}",
        gw.log.lock().unwrap()
    );
    // the lost reading never happened: each window at 1,020,000 takes one more and closes at 1,060,000
    publish(t.broker.port, &(0..1000).map(|k| load_reading(k, 1_020_500)).collect::<Vec<_>>());
    publish(t.broker.port, &[load_reading(0, 1_060_000)]);
    assert!(wait_until(20, || t.rows().len() >= 2000), "{} of 2000", t.rows().len());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        t.window_counts(),
        [((1_000_000, 1), 1000), ((1_020_000, 2), 1000)],
        "no row of the lost input's windows (n = 1 at 1,020,000)"
    );
    gw.stop();
}

/// Time alone closes windows too: on a stream with a watermark per device, a
/// device that falls silent leaves the minimum after `idle_timeout`, and the
/// tick that notices it closes the windows the others' readings passed. Such
/// a result waits for the fsync of the tick's log record like a message's:
/// before it, a power cut could take the tick from the log, late readings
/// after the restart would then enter those windows, and upstream would hold
/// a row the gateway never produces again.
#[test]
fn a_result_of_time_passing_waits_for_the_fsync_of_the_tick() {
    need_mosquitto!();
    let t = SlowDisk::with(
        "tick = \"100ms\"",
        &LOAD_WINDOWS
            .replace("lateness = \"0s\"", "lateness = \"0s\"\nwatermark = \"device\"\nidle_timeout = \"4s\""),
    );
    let gw = t.start();
    let t0 = std::time::Instant::now();
    publish(t.broker.port, &[load_reading(1, 1_000_000), load_reading(2, 1_000_000)]);
    std::thread::sleep(Duration::from_millis(1000));
    // k2's reading passes its window (a window's worth ahead: windows are kept for the
    // stream's lateness, not for a device far ahead); k1, silent, holds the watermark back
    publish(t.broker.port, &[load_reading(2, 1_010_000)]);
    assert!(wait_until(10, || metric(t.mport, "edgejoin_processed_total") == Some(3.0)));
    assert!(t0.elapsed() < Duration::from_millis(3500), "too slow to tell: {:?}", t0.elapsed());
    t.fsync_ms(5000);
    // ~4 s after its reading k1 is idle: a tick moves the watermark to k2's and closes both
    // windows; the tick's fsync then hangs 5 s
    std::thread::sleep(Duration::from_millis(5500).saturating_sub(t0.elapsed()));
    assert!(t.rows().is_empty(), "{} results of a tick went upstream before its fsync", t.rows().len());
    assert!(wait_until(15, || t.rows().len() == 2), "{} of 2: {:?}", t.rows().len(), t.rows());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(t.window_counts(), [((1_000_000, 1), 2)], "both windows, once each");
    t.fsync_ms(0);
    gw.stop();
}
