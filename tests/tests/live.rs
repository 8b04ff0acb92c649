//! End-to-end tests of `edgejoin run` against real Mosquitto brokers started
//! here on free ports: what the gateway publishes equals what the engine
//! computes offline from the same messages, and nothing is lost when the
//! broker restarts mid-stream, the upstream is down for a while, or the
//! gateway is killed with SIGKILL and restarted.
//!
//! Needs `mosquitto` on PATH (`.ci/run` installs it); skipped with a notice
//! when it is missing.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};

#[test]
fn live_results_equal_the_engine_offline() {
    need_mosquitto!();
    for name in ["tolerance", "rollup", "session_join", "sessions"] {
        let broker = Broker::start();
        let work = tempfile::tempdir().unwrap();
        let (cfg, msgs) = example(name);
        let (path, p) = live_config(&cfg, &broker, &broker, &work.path().join("state"));
        let want = expected(&p, &msgs);
        assert!(!want.is_empty(), "{name}: the example produces results before its end");
        let collector = Collector::start(broker.port, "gw/test/#");
        let gw = Gateway::start(&path);
        publish(broker.port, &to_publish(&msgs));
        let got = collector.wait_for(&want, 20);
        assert_eq!(got, want, "{name}: live results differ from the engine's");
        gw.stop();
    }
}

#[test]
fn nothing_lost_when_the_broker_restarts_mid_stream() {
    need_mosquitto!();
    let mut broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (cfg, msgs) = example("tolerance");
    let (path, p) = live_config(&cfg, &broker, &broker, &work.path().join("state"));
    let want = expected(&p, &msgs);
    let collector = Collector::start(broker.port, "gw/test/#");
    let _gw = Gateway::start(&path);
    let half = msgs.len() / 2;
    publish(broker.port, &to_publish(&msgs[..half]));
    std::thread::sleep(Duration::from_millis(300));
    broker.down();
    std::thread::sleep(Duration::from_millis(500));
    broker.up();
    publish(broker.port, &to_publish(&msgs[half..]));
    let got = collector.wait_for(&want, 30);
    assert_eq!(got, want);
}

#[test]
fn results_wait_in_the_spool_while_the_upstream_is_down() {
    need_mosquitto!();
    let source = Broker::start();
    let mut upstream = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let (cfg, msgs) = example("tolerance");
    let (path, p) = live_config(&cfg, &source, &upstream, &state);
    let want = expected(&p, &msgs);
    let collector = Collector::start(upstream.port, "gw/test/#");
    let gw = Gateway::start(&path);
    upstream.down();
    publish(source.port, &to_publish(&msgs));
    std::thread::sleep(Duration::from_millis(1500));
    // the operator is told, with how much waits
    assert!(
        wait_until(10, || gw.log.lock().unwrap().iter().any(|l| l.contains(" WARN ")
            && l.contains("uplink broker: ")
            && l.contains(" results wait in the spool"))),
        "{:?}",
        gw.log.lock().unwrap()
    );
    // the results are on disk, undelivered
    let spooled: u64 = std::fs::read_dir(state.join("spool"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "spool"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(spooled > 0, "results spooled on disk during the outage");
    assert!(collector.distinct().is_empty());
    upstream.up();
    let got = collector.wait_for(&want, 30);
    assert_eq!(got, want, "every result delivered, in the end");
    assert!(wait_until(10, || gw.logged("uplink back after ") && gw.logged("uplink: the spool is drained")));
    // stderr is a pipe here: no colour codes
    assert!(gw.log.lock().unwrap().iter().all(|l| !l.contains('\u{1b}')));
}

#[test]
fn nothing_lost_when_the_gateway_is_killed() {
    need_mosquitto!();
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (cfg, msgs) = example("rollup");
    // no checkpoint before the kill: recovery has to come from the write-ahead log
    let (path, p) = live_config_with(&cfg, &broker, &broker, &work.path().join("state"), "1h");
    let want = expected(&p, &msgs);
    let collector = Collector::start(broker.port, "gw/test/#");
    let half = msgs.len() / 2;
    let gw = Gateway::start(&path);
    publish(broker.port, &to_publish(&msgs[..half]));
    std::thread::sleep(Duration::from_millis(200));
    gw.kill();
    // published while the gateway is dead: the broker keeps them for its session
    publish(broker.port, &to_publish(&msgs[half..half + 2]));
    let gw = Gateway::start(&path);
    publish(broker.port, &to_publish(&msgs[half + 2..]));
    let got = collector.wait_for(&want, 30);
    assert_eq!(got, want, "every result delivered after SIGKILL and restart");
    // duplicates (re-sent after the crash) carry the same ids: nothing unexpected arrived
    let all: BTreeMap<String, usize> =
        collector.ids.lock().unwrap().iter().fold(BTreeMap::new(), |mut m, id| {
            *m.entry(id.clone()).or_default() += 1;
            m
        });
    assert!(all.keys().all(|id| want.contains(id)));
    gw.stop();
}

#[test]
fn stats_topic_and_prometheus_metrics() {
    need_mosquitto!();
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (cfg, msgs) = example("tolerance");
    let metrics_port = free_port();
    let cfg =
        cfg.replace("[gateway]\n", &format!("[gateway]\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n"));
    let (path, _) = live_config(&cfg, &broker, &broker, &work.path().join("state"));
    // a raw subscriber for the stats topic
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let mut o = MqttOptions::new("stats-reader", "127.0.0.1", broker.port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(o, 10);
    client.subscribe("gw/test/stats", QoS::AtMostOnce).unwrap();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            if let Ok(Event::Incoming(Incoming::Publish(p))) = ev {
                let _ = tx.send(serde_json::from_slice(&p.payload).unwrap());
            }
        }
    });
    let gw = Gateway::start(&path);
    publish(broker.port, &to_publish(&msgs));
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let s = rx.recv_timeout(Duration::from_secs(5)).expect("a stats message");
        let done = s["service"]["processed"].as_u64() == Some(msgs.len() as u64)
            && s["service"]["result_latency_p99_us"].is_u64();
        if done || Instant::now() > deadline {
            break s;
        }
    };
    // results went upstream, each timed from its completing message's delivery
    let p99 = stats["service"]["result_latency_p99_us"].as_u64().expect("a latency p99 in the stats");
    assert!(p99 > 0 && p99 < 5_000_000, "{p99}");
    assert_eq!(stats["service"]["processed"], msgs.len() as u64);
    assert_eq!(stats["streams"]["payments"]["late_dropped"], 1);
    assert!(stats["joins"]["orders_payments"]["matches"].as_u64().unwrap() >= 5);
    // Prometheus text over HTTP
    let (status, _, body) = http(metrics_port, "GET /metrics");
    assert!(status.ends_with(" 200 OK"), "{status}");
    assert!(body.contains(&format!("edgejoin_processed_total {}", msgs.len())), "{body}");
    assert!(body.contains("edgejoin_stream_late_dropped_total{stream=\"payments\"} 1"), "{body}");
    assert!(body.contains("edgejoin_join_matches_total{join=\"orders_payments\"}"), "{body}");
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} in {body}"))
            .parse()
            .unwrap()
    };
    assert!(value("edgejoin_result_latency_seconds_count") >= 5.0, "{body}");
    let last = value("edgejoin_last_processed_timestamp_seconds") * 1000.0;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as f64;
    assert!(now - last >= 0.0 && now - last < 60_000.0, "{last} vs {now}");
    gw.stop();
}

fn sh(cmd: &str, dir: &Path) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{cmd}");
}

/// A CA, a server certificate for localhost and a client certificate, in a
/// directory Mosquitto can read; `None` when openssl or mosquitto_passwd is missing.
fn pki() -> Option<tempfile::TempDir> {
    if Command::new("openssl").arg("version").output().is_err()
        || !Path::new("/usr/bin/mosquitto_passwd").exists()
    {
        eprintln!("openssl or mosquitto_passwd missing: TLS test skipped");
        return None;
    }
    let pki = tempfile::tempdir().unwrap();
    let d = pki.path();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.crt", d);
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr", d);
    std::fs::write(d.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    sh("openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.crt", d);
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=gateway -keyout client.key -out client.csr", d);
    std::fs::write(d.join("client.ext"), "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n").unwrap();
    sh("openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.crt", d);
    sh("mosquitto_passwd -b -c passwd gw s3cret", d);
    for f in ["server.key", "passwd", "ca.crt", "server.crt"] {
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    Some(pki)
}

/// A broker with a plain listener (anonymous, for the test's own clients)
/// and a TLS one on the returned port that requires a client certificate,
/// and with `password`, user `gw` / `s3cret` as well.
fn tls_broker(d: &Path, password: bool) -> (Broker, u16) {
    use std::os::unix::fs::PermissionsExt;
    let mut b =
        Broker { port: free_port(), dir: tempfile::tempdir().unwrap(), child: None, extra: String::new() };
    std::fs::set_permissions(b.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let conf = b.dir.path().join("tls.conf");
    let auth = if password {
        format!("allow_anonymous false\npassword_file {}/passwd\n", d.display())
    } else {
        "allow_anonymous true\n".to_string()
    };
    // a port taken between its pick and the broker's bind: both picked again
    for _ in 0..3 {
        let tls_port = free_port();
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings true\nlistener {} 127.0.0.1\nallow_anonymous true\nlistener {tls_port} 127.0.0.1\n{auth}cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\nrequire_certificate true\n",
                b.port,
                d = d.display()
            ),
        )
        .unwrap();
        match start_mosquitto(&conf, &[tls_port, b.port]) {
            Ok(child) => {
                b.child = Some(child);
                return (b, tls_port);
            }
            Err(e) if e.contains("in use") => b.port = free_port(),
            Err(e) => panic!("TLS broker did not start: {e}"),
        }
    }
    panic!("TLS broker did not start: its ports were taken three times")
}

/// The source broker over mutual TLS (#19): the sensors publish on a plain
/// listener, the gateway subscribes over TLS with a client certificate
/// through its source filter, results go to a plain upstream.
#[test]
fn source_over_mutual_tls() {
    need_mosquitto!();
    let Some(pki) = pki() else { return };
    let d = pki.path();
    let (source, tls_port) = tls_broker(d, false);
    let upstream = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (cfg, msgs) = example("tolerance");
    let (path, p) = live_config(&cfg, &source, &upstream, &work.path().join("state"));
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("[source]\nurl = \"{}\"", source.url()),
        &format!(
            "[source]\nurl = \"mqtts://localhost:{tls_port}\"\nca_file = \"{d}/ca.crt\"\ncert_file = \"{d}/client.crt\"\nkey_file = \"{d}/client.key\"",
            d = d.display()
        ),
    );
    assert!(text.contains("mqtts://localhost"), "{text}");
    std::fs::write(&path, text).unwrap();
    let want = expected(&p, &msgs);
    let collector = Collector::start(upstream.port, "gw/test/#");
    let gw = Gateway::start(&path);
    assert!(gw.logged("source connected"));
    publish(source.port, &to_publish(&msgs));
    let got = collector.wait_for(&want, 20);
    gw.kill();
    assert_eq!(got, want, "results of messages taken over mutual TLS");
}

/// systemd's notify protocol: READY=1 once subscribed, STATUS= lines, and
/// STOPPING=1 on SIGTERM, sent to $NOTIFY_SOCKET; `delivery = "fast"` runs too.
#[test]
fn systemd_notify_and_fast_delivery() {
    need_mosquitto!();
    use std::os::unix::net::UnixDatagram;
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (cfg, msgs) = example("tolerance");
    let cfg = cfg.replace("[gateway]\n", "[gateway]\ndelivery = \"fast\"\n");
    let (path, p) = live_config(&cfg, &broker, &broker, &work.path().join("state"));
    let sock_path = work.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let want = expected(&p, &msgs);
    let collector = Collector::start(broker.port, "gw/test/#");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgejoin-under-test"))
        .args(["run", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        let n = sock.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    publish(broker.port, &to_publish(&msgs));
    assert_eq!(collector.wait_for(&want, 20), want, "fast delivery delivers too");
    // a reload: RELOADING=1 with the monotonic time systemd asks for, then READY=1 again
    let before = seen.len();
    unsafe { libc_kill(child.id() as i32, 1) };
    while !seen[before..].iter().any(|m| m.contains("READY=1")) {
        let n = sock.recv(&mut buf).expect("READY again after SIGHUP");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let reloading = seen[before..].iter().position(|m| m.contains("RELOADING=1")).expect("RELOADING=1");
    let ready = seen[before..].iter().position(|m| m.contains("READY=1")).unwrap();
    assert!(reloading < ready, "{seen:?}");
    assert!(seen[before + reloading].contains("MONOTONIC_USEC="), "{seen:?}");
    unsafe { libc_kill(child.id() as i32, 15) };
    while !seen.iter().any(|m| m.contains("STOPPING=1")) {
        let n = sock.recv(&mut buf).expect("STOPPING after SIGTERM");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM");
    sock.set_nonblocking(true).unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen.iter().any(|m| m.contains("STATUS=") && m.contains("msg/s")), "{seen:?}");
    assert!(work.path().join("state/checkpoint.bin").exists(), "checkpoint written at shutdown");
}

/// A large backlog at QoS 1 (the gateway paused while it piles up, as after an
/// outage) drains completely: acknowledgements the MQTT client cannot take at
/// once wait and go later — a lost one would hold the broker's in-flight
/// window and stall the session. Stopped in the middle of it and started
/// again, the gateway processes every message exactly once.
#[test]
fn a_qos1_backlog_drains_without_losing_acknowledgements() {
    need_mosquitto!();
    let broker = Broker::start_with("max_inflight_messages 100\n");
    let work = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let cfg = format!(
        "[gateway]\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n\n[[stream]]\nname = \"s\"\ntopics = [\"load/{{k}}\"]\nkey = \"{{k}}\"\nvalues = [\"v\"]\nlateness = \"1s\"\n\n[[window]]\nname = \"w\"\ninput = \"s\"\nsize = \"10s\"\naggregates = {{ n = \"count(v)\" }}\ntopic = \"w/{{key}}\"\n"
    );
    let (path, _) = live_config(&cfg, &broker, &broker, &work.path().join("state"));
    let gw = Gateway::start(&path);
    unsafe { libc_kill(gw.child.id() as i32, 19) }; // SIGSTOP
    const N: usize = 60_000;
    let msgs: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            (format!("load/k{}", i % 50), format!("{{\"ts\":{},\"v\":{i}}}", 1_000_000 + i * 10).into_bytes())
        })
        .collect();
    publish(broker.port, &msgs);
    unsafe { libc_kill(gw.child.id() as i32, 18) }; // SIGCONT
    std::thread::sleep(Duration::from_millis(40));
    let first = gw.stop_counting();
    let gw = Gateway::start(&path);
    let rest = N as u64 - first;
    let metric = |name: &str| -> Option<u64> {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).ok()?;
        sock.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        sock.read_to_string(&mut body).ok()?;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && metric("edgejoin_processed_total").unwrap_or(0) < rest {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let seen = metric("edgejoin_processed_total").unwrap_or(0);
    assert_eq!(seen, rest, "{first} processed before the stop, {seen} after: the backlog is {N}");
    gw.stop();
    // restarted, the gateway processes nothing twice: whatever the broker sends again is recognised
    let gw = Gateway::start(&path);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(metric("edgejoin_processed_total"), Some(0), "a message was processed twice");
    gw.stop();
}

/// SIGHUP reloads the config: a bad one is refused and the running one stays;
/// a good one keeps the state of what did not change, starts the edited
/// window empty, and says which is which; the process and its results go on.
#[test]
fn sighup_reloads_the_config_keeping_unchanged_state() {
    need_mosquitto!();
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let mport = free_port();
    let cfg = |edited: &str| {
        format!(
            "[gateway]\nmetrics_addr = \"127.0.0.1:{mport}\"\n\n[[stream]]\nname = \"s\"\ntopics = [\"r/{{k}}\"]\nkey = \"{{k}}\"\nvalues = [\"v\"]\n\n\
             [[window]]\nname = \"sum\"\ninput = \"s\"\nsize = \"10s\"\naggregates = {{ total = \"sum(v)\" }}\ntopic = \"sum/{{key}}\"\n\n\
             [[window]]\nname = \"edited\"\ninput = \"s\"\nsize = \"10s\"\naggregates = {{ {edited} }}\ntopic = \"edited/{{key}}\"\n"
        )
    };
    let (path, _) = live_config(&cfg("n = \"count()\""), &broker, &broker, &work.path().join("state"));
    let original = std::fs::read_to_string(&path).unwrap();
    let collector = Collector::start(broker.port, "gw/test/#");
    let gw = Gateway::start(&path);
    let pid = gw.child.id() as i32;
    let ev = |ts: i64, v: i64| ("r/a".to_string(), format!(r#"{{"ts":{ts},"v":{v}}}"#).into_bytes());
    publish(broker.port, &[ev(1000, 1), ev(2000, 2)]);
    assert!(wait_until(10, || metric(mport, "edgejoin_processed_total").unwrap_or(0.0) >= 2.0));

    // a config with a mistake: refused, the running pipeline stays
    std::fs::write(&path, original.replace("size = \"10s\"", "size = \"5M\"")).unwrap();
    unsafe { libc_kill(pid, 1) };
    assert!(
        wait_until(10, || gw.logged("reload refused, the running config stays")),
        "{:?}",
        gw.log.lock().unwrap()
    );
    assert!(gw.logged("months"), "the refusal says why");

    // one window edited
    std::fs::write(&path, original.replace("n = \"count()\"", "n = \"count()\", top = \"max(v)\"")).unwrap();
    unsafe { libc_kill(pid, 1) };
    let want =
        "reloaded: kept: stream 's', window 'sum'; started empty (definition changed): window 'edited'";
    assert!(wait_until(15, || gw.logged(want)), "{:?}", gw.log.lock().unwrap());
    assert!(wait_until(15, || gw
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("subscribed; ready"))
        .count()
        == 2));
    publish(broker.port, &[ev(3000, 4), ev(15_000, 16)]);
    let row = |window: &str| {
        let rows = collector.rows.lock().unwrap();
        rows.values().find(|r| r["window"] == window && r["start"] == 0).cloned()
    };
    assert!(
        wait_until(15, || row("sum").is_some() && row("edited").is_some()),
        "{:?}",
        collector.rows.lock().unwrap()
    );
    // the kept window has every value, the edited one only those after the reload
    assert_eq!(row("sum").unwrap()["values"]["total"], 7.0);
    let edited = row("edited").unwrap();
    assert_eq!(edited["values"]["n"], 1);
    assert_eq!(edited["values"]["top"], 4.0);
    assert_eq!(gw.child.id() as i32, pid);
    gw.stop();

    // check-config --against says beforehand what an edit would keep
    let state = work.path().join("state");
    let against = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_edgejoin-under-test"))
            .args(["check-config", "--config"])
            .arg(&path)
            .arg("--against")
            .arg(&state)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let now = original.replace("n = \"count()\"", "n = \"count()\", top = \"max(v)\"");
    assert!(against(&now).contains("the pipeline is unchanged: every part keeps its state"));
    let i = now.find("[[window]]\nname = \"sum\"").unwrap();
    let j = now[i..].find("\n\n").unwrap() + i + 2;
    let out = against(&format!("{}{}", &now[..i], &now[j..]));
    assert!(out.contains("  kept: stream 's', window 'edited'\n"), "{out}");
    assert!(out.contains("  dropped (no longer configured): window 'sum'\n"), "{out}");
    let out = against(&now.replace("key = \"{k}\"", "key = \"$.k\""));
    assert!(
        out.contains("  started empty (definition changed): stream 's', window 'sum', window 'edited'\n"),
        "{out}"
    );
}

/// `log_format = "json"`: every line the service writes is one JSON object
/// with its level and message, and no colour codes.
#[test]
fn json_logs_are_one_object_per_line() {
    need_mosquitto!();
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = "[gateway]\nlog_format = \"json\"\n\n[[stream]]\nname = \"s\"\ntopics = [\"j/{k}\"]\nkey = \"{k}\"\nvalues = [\"v\"]\nwatermark = \"device\"\nidle_timeout = \"1m\"\n";
    let (path, _) = live_config(cfg, &broker, &broker, &work.path().join("state"));
    let gw = Gateway::start(&path);
    publish(broker.port, &[("j/a".into(), b"{oops".to_vec())]);
    assert!(wait_until(10, || gw.logged("skipped a message")));
    let log = gw.log.clone();
    gw.stop();
    let lines = log.lock().unwrap().clone();
    assert!(lines.len() >= 4, "{lines:?}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
        assert!(v["fields"]["message"].is_string(), "{l}");
        assert!(!l.contains('\u{1b}'), "{l}");
    }
    assert!(lines.iter().any(|l| l.contains(r#""level":"WARN""#) && l.contains("j/a")));
}

/// `edgejoin record` captures the configured topics as a recording that
/// `edgejoin replay` reads; `edgejoin tail` prints the gateway's results as
/// they are published, one readable line each, times in UTC.
#[test]
fn record_and_tail_as_a_user_runs_them() {
    need_mosquitto!();
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = "[[stream]]\nname = \"s\"\ntopics = [\"rec/{k}\"]\nkey = \"{k}\"\nvalues = [\"v\"]\n\n[[window]]\nname = \"w10\"\ninput = \"s\"\nsize = \"10s\"\naggregates = { total = \"sum(v)\" }\ntopic = \"w/{key}\"\n";
    let (path, _) = live_config(cfg, &broker, &broker, &work.path().join("state"));
    let gw = Gateway::start(&path);
    let bin = env!("CARGO_BIN_EXE_edgejoin-under-test");
    let spawn = |args: &[&str]| {
        let mut child = Command::new(bin)
            .args(args)
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // each says so on stderr once subscribed
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first).unwrap();
        (child, first, err)
    };
    let rec = work.path().join("rec.jsonl");
    let (mut recorder, said, mut rec_err) =
        spawn(&["record", "--duration", "30s", "--max-messages", "3", "--output", rec.to_str().unwrap()]);
    assert!(said.starts_with("recording rec/+ from mqtt://"), "{said}");
    let (mut tail, said, _tail_err) = spawn(&["tail"]);
    assert!(said.contains("gw/test/#") && said.contains("UTC"), "{said}");
    let msgs: Vec<(String, Vec<u8>)> = [(1000, 1), (2000, 2), (12_000, 4)]
        .iter()
        .map(|(ts, v)| ("rec/a".to_string(), format!(r#"{{"ts":{ts},"v":{v}}}"#).into_bytes()))
        .collect();
    publish(broker.port, &msgs);

    // the recorder stops after three messages, each a replay line
    let st = recorder.wait().unwrap();
    let mut last = String::new();
    rec_err.read_to_string(&mut last).unwrap();
    assert!(st.success(), "{last}");
    assert!(
        last.contains("recorded 3 messages into") && last.contains("(the message count is reached)"),
        "{last}"
    );
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&rec).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    for (l, (topic, payload)) in lines.iter().zip(&msgs) {
        assert_eq!(l["topic"], topic.as_str());
        assert_eq!(l["payload"], std::str::from_utf8(payload).unwrap());
        assert!(l["recv_ms"].as_i64().unwrap() > 1_700_000_000_000);
    }
    let out =
        Command::new(bin).args(["replay", "--config"]).arg(&path).arg("--input").arg(&rec).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let replayed = String::from_utf8(out.stdout).unwrap();
    assert!(replayed.contains(r#""window":"w10""#) && replayed.contains(r#""total":3"#), "{replayed}");

    // tail printed the gateway's presence (retained), then its window as a line a person reads
    let mut stdout = BufReader::new(tail.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "gateway online\n");
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "▣ w10                      a          [1970-01-01 00:00:00.000Z–1970-01-01 00:00:10.000Z) n=2 total=3\n");
    unsafe { libc_kill(tail.id() as i32, 2) }; // Ctrl-C
    assert!(tail.wait().unwrap().success());
    gw.stop();
}

/// A gateway on the `skewed` example (two `corrected` devices) with its
/// metrics address and `extra` lines in `[gateway]`: (gateway, metrics
/// port).
fn skewed_gateway(broker: &Broker, work: &Path, extra: &str) -> (Gateway, u16) {
    let (cfg, mport) =
        with_metrics_addr(&example("skewed").0.replace("[gateway]\n", &format!("[gateway]\n{extra}")));
    let (path, _) = live_config(&cfg, broker, broker, &work.join("state"));
    (Gateway::start(&path), mport)
}

/// The live service draws the clock of each device it corrects at
/// `/clocks/` (docs/CLOCKS.md): an index, one SVG per device from the last
/// `clock_trace` samples, nothing for names it has not drawn.
#[test]
fn the_live_clock_report_draws_each_corrected_device() {
    need_mosquitto!();
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (gw, mport) = skewed_gateway(&broker, work.path(), "clock_trace = 8\n");
    let msgs = example("skewed").1;
    publish(broker.port, &to_publish(&msgs));
    let devices = ["door", "fridge"];
    let drawn = wait_until(30, || {
        let (_, _, index) = http(mport, "GET /clocks/");
        devices.iter().all(|d| index.contains(&format!("<img src=\"{d}.svg\"")))
            && index.contains(&format!("<td>{}</td>", msgs.iter().filter(|m| m.1.contains("/door/")).count()))
    });
    let (status, headers, index) = http(mport, "GET /clocks/");
    assert!(drawn, "every device and its estimate on the index (as of a stats interval): {index}");
    assert!(status.ends_with("200 OK") && headers.contains("Content-Type: text/html"), "{status} {headers}");
    assert!(index.contains("Live: the last samples"), "{index}");
    for d in devices {
        let (status, headers, svg) = http(mport, &format!("GET /clocks/{d}.svg"));
        assert!(status.ends_with("200 OK"), "{d}: {status}");
        assert!(headers.contains("Content-Type: image/svg+xml"), "{headers}");
        assert!(
            svg.starts_with("<svg") && svg.contains(&format!("{d}: ")),
            "{d}: {}",
            &svg[..80.min(svg.len())]
        );
        // two panels (no truth live), at most the ring's 8 samples in each
        let dots = svg.matches("<circle").count();
        assert!(dots > 0 && dots <= 2 * 8, "{d}: {dots} dots drawn from a ring of 8");
        assert!(!svg.contains("corrected − true"), "no truth panel live");
    }
    let (status, headers, _) = http(mport, "GET /clocks");
    assert!(status.contains("301") && headers.contains("Location: /clocks/"), "{status} {headers}");
    for path in ["/clocks/nobody.svg", "/clocks/../etc/passwd", "/elsewhere"] {
        let (status, _, _) = http(mport, &format!("GET {path}"));
        assert!(status.contains("404"), "{path}: {status}");
    }
    let (status, _, _) = http(mport, "POST /clocks/");
    assert!(status.contains("405"), "{status}");
    gw.stop();
}

/// Each corrected device's clock estimate, live (issue #15, docs/CLOCKS.md
/// "Seeing it"): in the stats topic under `devices.<device>` and on
/// `/metrics` as `edgejoin_device_clock_*{device=…}`, the same figures. Two
/// devices publish in real time: one a day behind, one on a boot-relative
/// clock that reboots halfway.
#[test]
fn each_device_clock_estimate_is_in_the_stats_and_the_metrics() {
    need_mosquitto!();
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (gw, mport) = skewed_gateway(&broker, work.path(), "");
    let mut o = MqttOptions::new("clocks", "127.0.0.1", broker.port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(o, 100);
    std::thread::spawn(move || for _ in conn.iter() {});
    let now =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    const DAY: i64 = 86_400_000;
    let (n, booted, rebooted) = (40, now() - 263_444_369, now() + 1_000);
    for i in 0..n {
        let t = now();
        let door = if i < n / 2 { t - booted } else { t - rebooted + 5_000 };
        for (device, ts) in [("fridge", t - DAY), ("door", door)] {
            let payload = format!("{{\"ts\": {ts}, \"celsius\": 4.0}}");
            client.publish(format!("home/{device}/temperature"), QoS::AtLeastOnce, false, payload).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stats = serde_json::Value::Null;
    let seen = wait_until(15, || {
        stats = retained(broker.port, "gw/test/stats")
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null);
        ["fridge", "door"].iter().all(|d| stats["devices"][d]["samples"] == n)
    });
    assert!(seen, "every sample of both devices in the stats: {stats}");
    let fridge = &stats["devices"]["fridge"];
    let offset = fridge["offset_ms"].as_f64().unwrap();
    // a day, plus the path's delay here (well under a second)
    assert!((DAY as f64..DAY as f64 + 1_000.0).contains(&offset), "{fridge}");
    assert_eq!(fridge["steps"], 0, "{fridge}");
    let door = &stats["devices"]["door"];
    assert_eq!(door["steps"], 1, "the door rebooted once: {door}");
    for d in [fridge, door] {
        assert!(d["drift_ppm"].as_f64().unwrap().abs() <= 600.0, "{d}");
        let u = d["uncertainty_ms"].as_f64().unwrap();
        assert!(u.is_finite() && u >= 1.0, "at least the 1 ms of rounding: {d}");
    }
    // /metrics says the same, in seconds and as a ratio
    for (device, d) in [("fridge", fridge), ("door", door)] {
        let served = |name: &str| {
            let series = format!("edgejoin_device_clock_{name}{{device=\"{device}\"}}");
            metric(mport, &series).unwrap_or_else(|| panic!("{series} on /metrics"))
        };
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-3 * b.abs().max(1.0);
        assert!(close(served("offset_seconds") * 1e3, d["offset_ms"].as_f64().unwrap()), "{device}");
        assert!(close(served("drift_ratio") * 1e6, d["drift_ppm"].as_f64().unwrap()), "{device}");
        assert!(
            close(served("uncertainty_seconds") * 1e3, d["uncertainty_ms"].as_f64().unwrap()),
            "{device}"
        );
        assert_eq!(served("samples_total"), n as f64, "{device}");
        assert_eq!(served("steps_total"), d["steps"].as_f64().unwrap(), "{device}");
    }
    gw.stop();
}

/// The retained message on `topic` of the broker at `port`, if one comes
/// within 3 s to a new subscriber.
fn retained(port: u16, topic: &str) -> Option<String> {
    let got = listen_until(port, topic, 3.0, |m| m.2);
    got.into_iter().find(|m| m.2).map(|m| String::from_utf8_lossy(&m.1).into_owned())
}

/// Presence on the upstream broker: a retained `online` on
/// `<topic_prefix>/status` while the gateway runs; `offline` after a clean
/// stop (the gateway says it) and after a SIGKILL (the connection's will);
/// the last stats message retained for a dashboard that subscribes later.
#[test]
fn the_gateway_says_online_and_offline_on_its_status_topic() {
    need_mosquitto!();
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (cfg, msgs) = example("tolerance");
    let (path, _) = live_config(&cfg, &broker, &broker, &work.path().join("state"));
    assert_eq!(retained(broker.port, "gw/test/status"), None);
    let gw = Gateway::start(&path);
    assert!(wait_until(10, || retained(broker.port, "gw/test/status").as_deref() == Some("online")));
    publish(broker.port, &to_publish(&msgs));
    let stats_seen = wait_until(10, || {
        retained(broker.port, "gw/test/stats")
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| v["service"]["processed"] == msgs.len() as u64)
    });
    assert!(stats_seen, "the stats retained, with every message processed");
    gw.stop();
    assert_eq!(retained(broker.port, "gw/test/status").as_deref(), Some("offline"), "said at a clean stop");
    let gw = Gateway::start(&path);
    assert!(wait_until(10, || retained(broker.port, "gw/test/status").as_deref() == Some("online")));
    gw.kill();
    assert!(
        wait_until(10, || retained(broker.port, "gw/test/status").as_deref() == Some("offline")),
        "the will, when the gateway is gone without a word"
    );
}

/// `/metrics` has the engine's series from the first scrape after a start,
/// not only after the first stats interval (an hour here), with the
/// counters the restored state carries.
#[test]
fn metrics_have_every_series_from_the_first_scrape() {
    need_mosquitto!();
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (cfg, _) = example("tolerance");
    let (cfg, mport) = with_metrics_addr(&cfg);
    let (path, _) = live_config(&cfg, &broker, &broker, &work.path().join("state"));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("stats_interval = \"1s\"", "stats_interval = \"1h\"")).unwrap();
    let gw = Gateway::start(&path);
    let (status, _, body) = http(mport, "GET /metrics");
    assert!(status.ends_with(" 200 OK"), "{status}");
    for series in [
        "edgejoin_processed_total 0",
        "edgejoin_stream_late_dropped_total{stream=\"payments\"} 0",
        "edgejoin_join_matches_total{join=\"orders_payments\"} 0",
    ] {
        assert!(body.lines().any(|l| l == series), "{series} in {body}");
    }
    gw.stop();
}

/// The HTTP endpoint (issue #18): `/healthz` follows the source broker,
/// `/status` says what the page shows, `/` is the self-contained page,
/// `/metrics` answers Prometheus (OpenMetrics when asked) and HEAD; other
/// paths 404, other methods 405.
#[test]
fn the_http_endpoint_serves_health_status_the_page_and_metrics() {
    need_mosquitto!();
    let mut broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (cfg, msgs) = example("tolerance");
    let (cfg, mport) = with_metrics_addr(&cfg);
    let (path, _) = live_config(&cfg, &broker, &broker, &work.path().join("state"));
    let gw = Gateway::start(&path);
    let healthy =
        || try_http(mport, "GET /healthz").is_some_and(|(s, _, b)| s.ends_with("200 OK") && b == "ok\n");
    assert!(wait_until(10, healthy), "{:?}", try_http(mport, "GET /healthz"));
    publish(broker.port, &to_publish(&msgs));
    assert!(wait_until(20, || metric(mport, "edgejoin_processed_total") == Some(msgs.len() as f64)));

    // /status: as of the last stats interval (1 s in the test config)
    let status = || status_json(mport);
    assert!(wait_until(5, || status()["service"]["processed"] == msgs.len() as u64));
    let s = status();
    assert_eq!(s["health"]["healthy"], true, "{s}");
    assert_eq!(s["health"]["source_connected"], true, "{s}");
    assert_eq!(s["health"]["uplink_connected"], true, "{s}");
    assert_eq!(s["streams"]["payments"]["late_dropped"], 1, "{s}");
    for stream in ["orders", "payments"] {
        assert!(s["streams"][stream]["rate_per_s"].is_number(), "{s}");
        assert!(s["streams"][stream]["watermark_lag_ms"].as_i64().is_some(), "{s}");
    }
    let names = |k: &str| -> Vec<String> {
        s["pipeline"][k].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names("streams"), ["orders", "payments"]);
    assert_eq!(names("joins"), ["orders_payments"]);
    assert!(s["memory"]["rss_bytes"].as_u64().unwrap() > 1 << 20, "{s}");
    let bound = s["memory"]["bound_bytes"].as_u64().unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_edgejoin-under-test"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("total ").map(String::from));
    assert!(printed.is_some() && bound > 0, "check-config's total {printed:?}, /status {bound}");
    assert!(s["service"]["spool_depth"].is_u64() && s["gateway"]["version"].is_string(), "{s}");

    // the page: HTML with its script inline and nothing fetched from elsewhere
    let (st, headers, page) = http(mport, "GET /");
    assert!(st.ends_with("200 OK") && headers.contains("Content-Type: text/html"), "{st} {headers}");
    assert!(page.contains("<script>") && page.contains("fetch(\"status\""), "{page}");
    for external in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!page.contains(external), "the page loads {external}…");
    }

    // metrics: the classic text by default, OpenMetrics when asked; HEAD has no body
    let (st, headers, body) = http(mport, "GET /metrics");
    assert!(st.ends_with("200 OK") && headers.contains("text/plain; version=0.0.4"), "{headers}");
    assert!(body.contains("# TYPE edgejoin_processed_total counter\n"), "{body}");
    let (_, headers, body) =
        http(mport, "GET /metrics\r\nAccept: application/openmetrics-text; version=1.0.0");
    assert!(headers.contains("application/openmetrics-text"), "{headers}");
    assert!(body.ends_with("# EOF\n") && body.contains("# TYPE edgejoin_processed counter\n"), "{body}");
    let (st, headers, body) = http(mport, "HEAD /metrics");
    assert!(st.ends_with("200 OK") && body.is_empty(), "{st} {body}");
    let len: usize = headers
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(len > 1000, "{headers}");
    let (st, headers, _) = http(mport, "POST /metrics");
    assert!(st.contains("405") && headers.contains("Allow: GET, HEAD"), "{st} {headers}");
    for p in ["/nope", "/metrics/x", "/status.json"] {
        assert!(http(mport, &format!("GET {p}")).0.contains("404"), "{p}");
    }

    // the source broker goes away: unhealthy (503) until it is back
    broker.down();
    let down = wait_until(15, || try_http(mport, "GET /healthz").is_some_and(|(s, _, _)| s.contains("503")));
    let (_, _, why) = http(mport, "GET /healthz");
    assert!(down && why.contains("not subscribed"), "{why}");
    assert_eq!(status()["health"]["healthy"], false);
    broker.up();
    assert!(wait_until(30, healthy), "healthy again once the broker is back");
    gw.stop();
}

/// Every publish on `filter` for `secs` (topic, payload, retained): what a
/// new subscriber gets, retained messages first.
fn listen(port: u16, filter: &str, secs: f64) -> Vec<(String, Vec<u8>, bool)> {
    listen_until(port, filter, secs, |_| false)
}

/// [`listen`], ending early at the first message `done` accepts (or a connection error).
fn listen_until(
    port: u16,
    filter: &str,
    secs: f64,
    done: impl Fn(&(String, Vec<u8>, bool)) -> bool,
) -> Vec<(String, Vec<u8>, bool)> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!("listener-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(o, 100);
    client.subscribe(filter, QoS::AtMostOnce).unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        match conn.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                got.push((p.topic.clone(), p.payload.to_vec(), p.retain));
                if done(got.last().unwrap()) {
                    break;
                }
            }
            Ok(Err(_)) => break,
            _ => {}
        }
    }
    let _ = client.disconnect();
    got
}

/// Home Assistant MQTT discovery (issue #18): with `[homeassistant]
/// discovery = true` each numeric value of each output and key is a sensor
/// announced retained under `homeassistant/sensor/…/config`, in the shape
/// Home Assistant documents for MQTT sensors, tied to the gateway as its
/// device and to its presence topic; each sensor's template reads its value
/// from the results on its state topic.
#[test]
fn home_assistant_discovers_a_sensor_per_output_key_and_value() {
    need_mosquitto!();
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let (cfg, msgs) = example("rollup");
    let cfg = format!(
        "{cfg}\n[homeassistant]\ndiscovery = true\nunits = {{ \"activity_5m.worst_minute_lat\" = \"ms\" }}\n"
    );
    let (path, p) = live_config(&cfg, &broker, &broker, &work.path().join("state"));
    let want = expected(&p, &msgs);
    let results = Collector::start(broker.port, "gw/#");
    let gw = Gateway::start(&path);
    publish(broker.port, &to_publish(&msgs));
    let got = results.wait_for(&want, 30);
    assert!(want.is_subset(&got), "results: {} of {}: {:?}", got.len(), want.len(), gw.log.lock().unwrap());

    // a new subscriber (Home Assistant starting later) gets every config, retained
    let configs: Vec<(String, serde_json::Value)> = listen(broker.port, "homeassistant/#", 2.0)
        .into_iter()
        .map(|(t, payload, retained)| {
            assert!(retained, "{t} not retained");
            (t, serde_json::from_slice(&payload).unwrap())
        })
        .collect();
    let rows: Vec<serde_json::Value> = results.rows.lock().unwrap().values().cloned().collect();
    let devices: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["key"].as_str().unwrap()).collect();
    // per user: clicks, events, minutes, worst_minute_lat and count
    assert_eq!(configs.len(), 5 * devices.len(), "{configs:?}");
    let status = retained(broker.port, "gw/test/status");
    assert_eq!(status.as_deref(), Some("online"));
    for (topic, c) in &configs {
        // Home Assistant's MQTT sensor: <prefix>/sensor/<object id>/config, object ids [a-zA-Z0-9_-]
        let id = c["unique_id"].as_str().unwrap();
        assert!(id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'), "{id}");
        assert_eq!(topic, &format!("homeassistant/sensor/{id}/config"));
        for field in ["name", "state_topic", "value_template", "availability_topic", "device"] {
            assert!(!c[field].is_null(), "{field} missing in {c}");
        }
        assert_eq!(c["availability_topic"], "gw/test/status", "the gateway's will and presence");
        assert_eq!(
            (c["payload_available"].as_str(), c["payload_not_available"].as_str()),
            (Some("online"), Some("offline"))
        );
        assert_eq!(c["device"]["identifiers"][0], "edgejoin_example-rollup");
        assert_eq!(c["device"]["manufacturer"], "edgejoin");
        let name = c["name"].as_str().unwrap();
        assert_eq!(
            c["unit_of_measurement"].as_str(),
            name.ends_with(" worst_minute_lat").then_some("ms"),
            "{name}"
        );
        // the state topic carries results whose value the template reads
        let (_, key, value) = {
            let mut it = name.rsplitn(3, ' ');
            let (v, k, o) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
            (o, k, v)
        };
        assert_eq!(c["state_topic"], format!("gw/test/windows/activity_5m/{key}"));
        let template = c["value_template"].as_str().unwrap();
        let read = if value == "count" {
            "value_json['count']".to_string()
        } else {
            format!("value_json['values']['{value}']")
        };
        assert_eq!(template, format!("{{{{ {read} }}}}"));
        assert!(rows.iter().any(|r| r["key"] == key
            && (if value == "count" { &r["count"] } else { &r["values"][value] }).is_number()));
    }
    gw.stop();
}

/// Results go upstream over mutual TLS (rustls) with a username and a
/// password read from a file, as systemd's LoadCredential provides it; and
/// issue #17's security review, live: the state directory and every file in
/// it are the gateway's alone (0700 / 0600, whatever the caller's umask);
/// TLS verification refuses a broker its `ca_file` did not sign (there is
/// no switch to turn it off); and the password, read from a file, never
/// reaches the log, even at debug level (the MQTT client's lines included).
#[test]
fn state_is_private_tls_is_verified_and_no_secret_is_logged() {
    need_mosquitto!();
    let Some(pki) = pki() else { return };
    let d = pki.path();
    let source = Broker::start();
    let (upstream, tls_port) = tls_broker(d, true);
    let work = tempfile::tempdir().unwrap();
    let (cfg, msgs) = example("tolerance");
    let state = work.path().join("state");
    let (path, p) = live_config(&cfg, &source, &source, &state);
    let text = std::fs::read_to_string(&path).unwrap();
    let with_ca = |ca: &str| {
        let upstream_section = format!(
            "[upstream]\nurl = \"mqtts://localhost:{tls_port}\"\ntopic_prefix = \"gw/test\"\nusername = \"gw\"\npassword_file = \"upstream-password\"\nca_file = \"{d}/{ca}\"\ncert_file = \"{d}/client.crt\"\nkey_file = \"{d}/client.key\"\n",
            d = d.display()
        );
        text[..text.find("[upstream]").unwrap()].to_string() + &upstream_section
    };
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("upstream-password"), "s3cret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(creds.path().join("upstream-password"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    let env = [("CREDENTIALS_DIRECTORY", creds.path()), ("EDGEJOIN_LOG", Path::new("debug"))];

    // a CA that did not sign the broker's certificate: refused, and said so
    std::fs::write(&path, with_ca("client.crt")).unwrap();
    let gw = Gateway::start_with(&path, &env);
    assert!(wait_until(10, || gw.logged("uplink broker:")), "{:?}", gw.log.lock().unwrap());
    std::thread::sleep(Duration::from_millis(500));
    assert!(!gw.logged("uplink connected"), "connected to a broker its CA did not sign");
    let said = gw.log.lock().unwrap().iter().find(|l| l.contains("uplink broker:")).cloned().unwrap();
    assert!(said.to_lowercase().contains("certificate") || said.contains("UnknownIssuer"), "{said}");
    gw.stop();

    // the right CA: results flow; the log at debug level holds no password
    std::fs::write(&path, with_ca("ca.crt")).unwrap();
    let want = expected(&p, &msgs);
    let collector = Collector::start(upstream.port, "gw/test/#");
    let gw = Gateway::start_with(&path, &env);
    publish(source.port, &to_publish(&msgs));
    assert_eq!(collector.wait_for(&want, 20), want);
    let log = gw.log.lock().unwrap().clone();
    gw.stop();
    assert!(log.iter().filter(|l| l.contains("DEBUG")).count() >= 5, "a debug log: {log:?}");
    assert!(!log.iter().any(|l| l.contains("s3cret")), "the password was logged");

    // the state: a private directory of private files
    let mut seen = 0;
    let mut stack = vec![state.clone()];
    while let Some(dir) = stack.pop() {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", dir.display());
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let mode = e.metadata().unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{} is {mode:o}", e.path().display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 3, "the WAL, the spool and a checkpoint at least: {seen} files");
}
