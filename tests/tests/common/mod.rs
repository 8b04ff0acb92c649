//! Shared by the live tests: real Mosquitto brokers on free ports, the
//! gateway as a child process, a result collector and a QoS 1 publisher.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use edgejoin::config;
use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::output::JsonEncoder;
use edgejoin_engine::Plan;
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};

pub fn mosquitto() -> Option<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Broker {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub extra: String,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with("")
    }

    /// A broker with extra lines in its mosquitto.conf.
    pub fn start_with(extra: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        // mosquitto started as root drops to its own user: it must be able to write its database here
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut b = Broker { port: free_port(), dir, child: None, extra: extra.to_string() };
        b.up();
        b
    }

    pub fn up(&mut self) {
        // a port free when picked can be taken before mosquitto binds it (another test's
        // connection draws its local port from the same range): a first start moves to
        // another port, a restart (which must keep its port) tries it again
        let conf = self.dir.path().join("mosquitto.conf");
        let first = !conf.exists();
        let mut tries = 0;
        loop {
            std::fs::write(
                &conf,
                format!(
                    "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\n{}",
                    self.port,
                    self.dir.path().display(),
                    self.extra
                ),
            )
            .unwrap();
            match start_mosquitto(&conf, &[self.port]) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if tries < 3 && e.contains("in use") => {
                    tries += 1;
                    if first {
                        self.port = free_port();
                    } else {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                Err(e) => panic!("mosquitto did not start on port {}: {e}", self.port),
            }
        }
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc_kill(c.id() as i32, 15) };
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// Starts mosquitto with `conf` and waits (5 s at most) until each of
/// `ports` takes a connection; else why not: its exit status and its log.
pub fn start_mosquitto(conf: &Path, ports: &[u16]) -> Result<Child, String> {
    let log_path = conf.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(mosquitto().unwrap())
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    for &port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().unwrap();
                let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                let how = if exited.is_some() { "exited" } else { "not listening after 5 s" };
                return Err(format!("{how} ({status}), port {port}; its log: {said}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(child)
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    pub fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub struct Gateway {
    pub child: Child,
    pub ready: mpsc::Receiver<()>,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Gateway {
    pub fn start(config: &Path) -> Gateway {
        Gateway::start_with(config, &[])
    }

    /// Starts `edgejoin run` with extra environment variables and waits until it is ready.
    pub fn start_with(config: &Path, env: &[(&str, &Path)]) -> Gateway {
        let mut cmd = Gateway::command(config);
        cmd.envs(env.iter().map(|(k, v)| (*k, *v)));
        Gateway::spawn(cmd).ready_within(15).unwrap_or_else(|(st, log)| panic!("not ready ({st:?}): {log:?}"))
    }

    /// `edgejoin run --config F`, logging at info to a pipe.
    pub fn command(config: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgejoin-under-test"));
        cmd.args(["run", "--config"]).arg(config).env("EDGEJOIN_LOG", "info");
        cmd
    }

    /// Spawns `cmd` (its stderr read into the log), without waiting.
    pub fn spawn(mut cmd: Command) -> Gateway {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, ready) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                log2.lock().unwrap().push(line.clone());
                if std::env::var_os("EDGEJOIN_TEST_LOG").is_some() {
                    eprintln!("gateway: {line}");
                }
                if line.contains("subscribed; ready") {
                    let _ = tx.send(());
                }
            }
        });
        Gateway { child, ready, log }
    }

    /// Waits until it says it is ready; `Err` with its exit status (if it
    /// ended) and its log when it does not within `secs`.
    pub fn ready_within(
        mut self,
        secs: u64,
    ) -> Result<Gateway, (Option<std::process::ExitStatus>, Vec<String>)> {
        if self.ready.recv_timeout(Duration::from_secs(secs)).is_ok() {
            return Ok(self);
        }
        // it may be on its way out: give it a moment
        let mut status = None;
        for _ in 0..30 {
            status = self.child.try_wait().ok().flatten();
            if status.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(200));
        Err((status, self.log.lock().unwrap().clone()))
    }

    /// Whether a log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub fn stop(mut self) {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let _ = self.child.wait();
    }

    /// Stops it; returns how many messages it processed (from its last log line).
    pub fn stop_counting(mut self) -> u64 {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let _ = self.child.wait();
        let count = |log: &[String]| -> Option<u64> {
            log.iter().find_map(|l| {
                l.split("engine stopped at input ")
                    .nth(1)?
                    .split(": ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
        };
        // the reader thread may still be catching up with the last lines
        for _ in 0..50 {
            if let Some(n) = count(&self.log.lock().unwrap()) {
                return n;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no final count in {:?}", self.log.lock().unwrap())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A QoS 1 subscriber with a persistent session, collecting result ids.
pub struct Collector {
    pub ids: Arc<Mutex<Vec<String>>>,
    /// Every result received: id → its JSON.
    pub rows: Arc<Mutex<BTreeMap<String, serde_json::Value>>>,
    _client: Client,
}

impl Collector {
    pub fn start(port: u16, filter: &str) -> Collector {
        let mut o = MqttOptions::new(format!("collector-{port}"), "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(o, 100);
        client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        let ids = Arc::new(Mutex::new(Vec::new()));
        let out = ids.clone();
        let rows = Arc::new(Mutex::new(BTreeMap::new()));
        let rows2 = rows.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut told = false;
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Incoming::SubAck(_))) if !told => {
                        told = true;
                        let _ = tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        // the gateway's stats and presence, not results
                        if p.topic.ends_with("/stats") || p.topic.ends_with("/status") {
                            continue;
                        }
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                        let id = v["id"].as_str().unwrap().to_string();
                        out.lock().unwrap().push(id.clone());
                        rows2.lock().unwrap().insert(id, v);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    _ => {}
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("subscribed");
        Collector { ids, rows, _client: client }
    }

    pub fn distinct(&self) -> BTreeSet<String> {
        self.ids.lock().unwrap().iter().cloned().collect()
    }

    /// Waits until every expected id arrived (or the time is up).
    pub fn wait_for(&self, want: &BTreeSet<String>, secs: u64) -> BTreeSet<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.distinct();
            if want.is_subset(&got) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Publishes messages with QoS 1, in order, and waits for the broker's PUBACKs.
pub fn publish(port: u16, msgs: &[(String, Vec<u8>)]) {
    let mut o = MqttOptions::new(format!("publisher-{port}-{}", free_port()), "127.0.0.1", port);
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut conn) = Client::new(o, 1000);
    let n = msgs.len();
    let (tx, rx) = mpsc::channel();
    let driver = std::thread::spawn(move || {
        let mut acks = 0;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Incoming::PubAck(_))) => {
                    acks += 1;
                    if acks == n {
                        let _ = tx.send(());
                        return;
                    }
                }
                Err(e) => panic!("publisher: {e}"),
                _ => {}
            }
        }
    });
    for (topic, payload) in msgs {
        client.publish(topic, QoS::AtLeastOnce, false, payload.clone()).unwrap();
    }
    if n > 0 {
        rx.recv_timeout(Duration::from_secs(30)).expect("all published");
    }
    let _ = client.disconnect();
    let _ = driver.join();
}

pub fn example(name: &str) -> (String, Vec<(i64, String, Vec<u8>)>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let cfg = std::fs::read_to_string(dir.join(format!("{name}.toml"))).unwrap();
    let msgs = std::fs::read_to_string(dir.join(format!("{name}.jsonl")))
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
        .collect();
    (cfg, msgs)
}

/// The example's config pointed at the brokers, with its state in `state`.
pub fn live_config(example_cfg: &str, source: &Broker, upstream: &Broker, state: &Path) -> (PathBuf, Plan) {
    live_config_with(example_cfg, source, upstream, state, "500ms")
}

pub fn live_config_with(
    example_cfg: &str,
    source: &Broker,
    upstream: &Broker,
    state: &Path,
    checkpoint: &str,
) -> (PathBuf, Plan) {
    let mut text = String::new();
    let mut in_gateway = false;
    // the state goes under the test's directory, also when the config has no [gateway] table
    let has_gateway = example_cfg.lines().any(|l| l.trim() == "[gateway]");
    let cfg = if has_gateway { example_cfg.to_string() } else { format!("[gateway]\n{example_cfg}") };
    for line in cfg.lines() {
        if line.trim_start().starts_with('[') {
            in_gateway = line.trim() == "[gateway]";
        }
        if in_gateway && (line.starts_with("state_dir") || line.starts_with("checkpoint_interval")) {
            continue;
        }
        text.push_str(line);
        text.push('\n');
        if line.trim() == "[gateway]" {
            text.push_str(&format!(
                "state_dir = \"{}\"\ncheckpoint_interval = \"{checkpoint}\"\nstats_interval = \"1s\"\n",
                state.display()
            ));
        }
    }
    text.push_str(&format!(
        "\n[source]\nurl = \"{}\"\n\n[upstream]\nurl = \"{}\"\ntopic_prefix = \"gw/test\"\nspool = \"4MiB\"\n",
        source.url(),
        upstream.url()
    ));
    let path = state.parent().unwrap().join("gateway.toml");
    std::fs::write(&path, &text).unwrap();
    let p = config::parse(&path, &text).unwrap().plan;
    (path, p)
}

/// What the engine computes offline from the same messages (no end-of-input flush: a live gateway
/// does not flush): its rows, in the order it emits them.
pub fn expected_rows(p: &Plan, msgs: &[(i64, String, Vec<u8>)]) -> Vec<serde_json::Value> {
    let mut e = Engine::new(p.clone(), 1);
    let mut enc = JsonEncoder::new();
    let mut rows = Vec::new();
    let mut sink = |p: &Plan, o: Output<'_>| rows.push(serde_json::from_slice(enc.encode(p, o)).unwrap());
    for (recv, topic, payload) in msgs {
        e.ingest(*recv, topic, payload, &mut sink);
    }
    rows
}

/// The ids of [`expected_rows`].
pub fn expected(p: &Plan, msgs: &[(i64, String, Vec<u8>)]) -> BTreeSet<String> {
    expected_rows(p, msgs).iter().map(|v| v["id"].as_str().unwrap().to_string()).collect()
}

pub fn to_publish(msgs: &[(i64, String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    msgs.iter().map(|(_, t, p)| (t.clone(), p.clone())).collect()
}

#[macro_export]
macro_rules! need_mosquitto {
    () => {
        if mosquitto().is_none() {
            // CI sets this: there a missing broker is a failure, not a skip
            assert!(
                std::env::var_os("EDGEJOIN_REQUIRE_MOSQUITTO").is_none(),
                "mosquitto is not installed and EDGEJOIN_REQUIRE_MOSQUITTO is set"
            );
            eprintln!("mosquitto not installed: live test skipped");
            return;
        }
    };
}

/// One HTTP/1.0 request to the gateway's metrics address: (status line, headers, body).
pub fn http(port: u16, request: &str) -> (String, String, String) {
    try_http(port, request).unwrap_or_else(|| panic!("{request} on port {port}: no answer"))
}

/// The same, `None` while nothing answers (a gateway starting).
pub fn try_http(port: u16, request: &str) -> Option<(String, String, String)> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    // the request line, then any header lines given after it
    let (line, headers) =
        request.split_once("\r\n").map_or((request, String::new()), |(l, h)| (l, format!("{h}\r\n")));
    sock.write_all(format!("{line} HTTP/1.0\r\n{headers}\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    sock.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Some((status.to_string(), headers.to_string(), body.to_string()))
}

/// `cfg` with the HTTP endpoint on a free loopback port, and the port.
pub fn with_metrics_addr(cfg: &str) -> (String, u16) {
    let port = free_port();
    (cfg.replace("[gateway]\n", &format!("[gateway]\nmetrics_addr = \"127.0.0.1:{port}\"\n")), port)
}

/// The gateway's `/status` JSON.
pub fn status_json(port: u16) -> serde_json::Value {
    serde_json::from_str(&http(port, "GET /status").2).unwrap()
}

/// A value from the gateway's Prometheus endpoint (`name` with its labels, as written).
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, _, body) = try_http(port, "GET /metrics")?;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until `cond` holds (or `secs` pass); whether it held.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process's peak resident memory (VmHWM), in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A TCP relay between the gateway and a broker that can stop passing on what the gateway sends
/// (its acknowledgements, barriers, pings) while still passing everything the broker sends: what a
/// broker that dies before reading its socket sees. Each accepted connection gets its own
/// connection to the broker; when either side closes, both do.
pub struct Relay {
    pub port: u16,
    hold: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub fn start(broker_port: u16) -> Relay {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(AtomicBool::new(false));
        let hold2 = hold.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(broker) = std::net::TcpStream::connect(("127.0.0.1", broker_port)) else {
                    continue; // the broker is down: the client sees its connection closed
                };
                let pipe = |mut from: std::net::TcpStream,
                            mut to: std::net::TcpStream,
                            hold: Option<Arc<AtomicBool>>| {
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if hold.as_ref().is_some_and(|h| h.load(Ordering::SeqCst)) {
                                        continue;
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                pipe(client.try_clone().unwrap(), broker.try_clone().unwrap(), Some(hold2.clone()));
                pipe(broker, client, None);
            }
        });
        Relay { port, hold }
    }

    /// While on, what clients send is dropped instead of passed to the broker.
    pub fn hold(&self, on: bool) {
        self.hold.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}
