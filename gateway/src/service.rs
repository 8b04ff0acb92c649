//! `edgejoin run`: the live service, a thin IO shell around the engine.
//!
//! - **source task** (tokio): one MQTT connection to `[source]` (QoS 1,
//!   persistent session, manual acks), subscriptions from the streams' topic
//!   filters, reconnect with exponential backoff and jitter; messages go to
//!   the engine thread over a bounded channel (back-pressure: when the engine
//!   is behind, the broker holds the messages).
//! - **engine thread**: logs each batch of messages to the write-ahead log,
//!   fsyncs once, acknowledges them to the broker (durable mode), runs them
//!   through the engine, and appends the results to the spool; ticks the
//!   clock, checkpoints, publishes stats, pings the systemd watchdog.
//! - **uplink task** (tokio): its own MQTT connection to `[upstream]`,
//!   sends the spool in order with QoS 1 and advances the spool's delivered
//!   position only on PUBACK; resends from there after a reconnect.
//! - start-up restores the checkpoint and replays the write-ahead log after
//!   it, skipping results the spool already holds; SIGTERM/SIGINT stop the
//!   intake, checkpoint, and give the uplink `shutdown_timeout` to drain.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::checkpoint;
use crate::engine::{Engine, Output, Sink};
use crate::metrics::{self, ServiceCounters};
use crate::output::JsonEncoder;
use crate::pipeline::{Credentials, Delivery, LatePolicy, Pipeline, TlsFiles};
use crate::redelivery::Redeliveries;
use crate::spool::Spool;
use crate::topic::TemplateVars;
use crate::wal::{Wal, WalRecord};

/// Why the service could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("state_dir {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state_dir {path} is full ({source}): free some space; the service starts again by itself under systemd")]
    StateDirFull {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is locked by another edgejoin using the same state_dir ({source}); stop it, or give this one its own state_dir")]
    Locked {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Config(String),
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ServiceError {
    move |source| ServiceError::Io { what, source }
}

/// A rustls client configuration from PEM files: the CA to trust, and
/// optionally a client certificate and key (mutual TLS).
fn tls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, ServiceError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bad = |what: &str, f: &Path, e: &dyn std::fmt::Display| {
        ServiceError::Config(format!("{what} {}: {e}", f.display()))
    };
    let ca = files.ca_file.as_ref().ok_or_else(|| {
        ServiceError::Config("mqtts:// needs `ca_file` (the CA that signed the broker's certificate)".into())
    })?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| bad("ca_file", ca, &e))?;
    for cert in certs {
        roots.add(cert.map_err(|e| bad("ca_file", ca, &e))?).map_err(|e| bad("ca_file", ca, &e))?;
    }
    if roots.is_empty() {
        return Err(ServiceError::Config(format!("ca_file {}: no certificate in it", ca.display())));
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad("cert_file", cert, &e))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad("cert_file", cert, &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key_file", key, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ServiceError::Config(format!("client certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The MQTT options of one connection.
fn mqtt_options(
    client_id: &str,
    broker: &crate::pipeline::Broker,
    credentials: &Option<Credentials>,
    tls: Option<&TlsFiles>,
    max_packet: usize,
    clean: bool,
) -> Result<MqttOptions, ServiceError> {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    if broker.tls {
        let files = tls.ok_or_else(|| {
            ServiceError::Config(format!(
                "{}:{}: mqtts:// is supported for [upstream] (with ca_file); use mqtt:// for the source broker",
                broker.host, broker.port
            ))
        })?;
        let cfg = tls_config(files)?;
        o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(Arc::new(cfg))));
    }
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o.set_max_packet_size(max_packet, max_packet);
    o.set_inflight(UPLINK_WINDOW as u16);
    if let Some(c) = credentials {
        let password = match &c.password_file {
            Some(f) => {
                let f = match std::env::var_os("CREDENTIALS_DIRECTORY") {
                    Some(dir) if f.is_relative() => Path::new(&dir).join(f),
                    _ => f.clone(),
                };
                std::fs::read_to_string(&f)
                    .map_err(|e| ServiceError::Config(format!("password_file {}: {e}", f.display())))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string()
            }
            None => String::new(),
        };
        o.set_credentials(c.username.clone(), password);
    }
    Ok(o)
}

/// Exponential backoff with jitter, 100 ms doubling to 30 s.
struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    fn new(seed: u64) -> Self {
        Backoff { next: Duration::from_millis(100), seed: seed | 1 }
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
    fn wait(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(30));
        // 50..100 % of the step
        base / 2 + Duration::from_millis(self.seed % (base.as_millis() as u64 / 2 + 1))
    }
}

/// A message for the engine thread: the message, its wall-clock receive
/// time (the event clock of `clock = "receive"` streams) and the instant the
/// broker delivered it (for the result latency histogram).
enum Inbound {
    Message(Msg),
    Shutdown,
}

/// A message on its way to the engine, holding its share of the intake's
/// byte budget until the engine is done with it.
struct Msg {
    m: Publish,
    recv_ms: i64,
    at: Instant,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What the source's messages may hold in memory between the broker and the
/// engine, in bytes, whatever their number: the intake channel and the batch
/// being processed. At least four of the largest messages the filter lets
/// through, and 1 MiB.
pub fn intake_budget(p: &Pipeline) -> usize {
    (4 * max_message(p)).max(1 << 20)
}

/// The largest message the source filter lets through: `max_payload + 1`
/// bytes of payload (one more than the engine accepts, so an oversized one is
/// counted), a topic of up to 65,535 bytes and the packet's head.
pub fn max_message(p: &Pipeline) -> usize {
    p.source.max_payload + 1 + 65_535 + 16
}

/// Bytes of the source path outside the budget: the MQTT client's read
/// buffer and the up to 10 packets it parses per read, and the filter's two
/// 64 KiB buffers.
pub fn source_buffers(p: &Pipeline) -> usize {
    11 * max_message(p) + (128 << 10)
}

/// The intake's share of the budget a message takes.
fn intake_cost(m: &Publish) -> u32 {
    (m.payload.len() + m.topic.len() + 64).min(u32::MAX as usize) as u32
}

/// Spool writer used as the engine's sink: renders the topic, encodes the
/// row, appends it with (input, index) — or skips it while replaying what the
/// spool already holds.
struct SpoolSink<'a> {
    spool: &'a Mutex<Spool>,
    enc: &'a mut JsonEncoder,
    topic: &'a mut String,
    prefix: &'a str,
    gateway: &'a str,
    input_seq: u64,
    idx: u32,
    skip_through: Option<(u64, u32)>,
    counters: &'a ServiceCounters,
    /// Spool positions of the results appended through this sink (first, end).
    appended: Option<(u64, u64)>,
}

impl<'a> SpoolSink<'a> {
    /// A sink for the results of input `input_seq`, skipping those the spool
    /// already holds (`skip_through`, while replaying the log).
    fn new(
        p: &'a Pipeline,
        spool: &'a Mutex<Spool>,
        enc: &'a mut JsonEncoder,
        topic: &'a mut String,
        counters: &'a ServiceCounters,
        input_seq: u64,
        skip_through: Option<(u64, u32)>,
    ) -> Self {
        SpoolSink {
            spool,
            enc,
            topic,
            prefix: &p.upstream.topic_prefix,
            gateway: &p.gateway.id,
            input_seq,
            idx: 0,
            skip_through,
            counters,
            appended: None,
        }
    }
}

/// Which spool positions the results of each recent message got, and when
/// the broker delivered that message: the uplink turns them into the result
/// latency histogram. Bounded; when the uplink is behind, the oldest marks
/// go first (those results then go unmeasured, never undelivered).
struct LatencyMarks(Mutex<VecDeque<(u64, u64, Instant)>>);

impl LatencyMarks {
    const CAP: usize = 4096;

    fn new() -> Self {
        LatencyMarks(Mutex::new(VecDeque::with_capacity(Self::CAP)))
    }

    fn mark(&self, first: u64, end: u64, delivered: Instant) {
        let mut m = self.0.lock().expect("latency marks lock");
        if m.len() == Self::CAP {
            m.pop_front();
        }
        m.push_back((first, end, delivered));
    }

    /// The delivery instant of the message whose result sits at spool position `seq`.
    fn take(&self, seq: u64) -> Option<Instant> {
        let mut m = self.0.lock().expect("latency marks lock");
        while m.front().is_some_and(|&(_, end, _)| end <= seq) {
            m.pop_front();
        }
        m.front().filter(|&&(first, _, _)| first <= seq).map(|&(_, _, at)| at)
    }
}

impl Sink for SpoolSink<'_> {
    fn emit(&mut self, p: &Pipeline, out: Output<'_>) {
        let idx = self.idx;
        self.idx += 1;
        if self.skip_through.is_some_and(|last| (self.input_seq, idx) <= last) {
            return;
        }
        let (tpl, name, key) = match out {
            Output::Window(r) => {
                let d = &p.windows[r.window as usize];
                (d.topic.as_ref().expect("only windows with a topic are emitted"), &d.name, r.key.as_str())
            }
            Output::Join(r) => {
                let d = &p.joins[r.join as usize];
                (&d.topic, &d.name, r.key.as_str())
            }
            Output::Late(r) => {
                let d = &p.streams[r.stream as usize];
                match &d.late {
                    LatePolicy::Route(t) => (t, &d.name, r.key.as_str()),
                    LatePolicy::Drop => return,
                }
            }
        };
        self.topic.clear();
        self.topic.push_str(self.prefix);
        self.topic.push('/');
        tpl.render_append(&TemplateVars { name, key, gateway: self.gateway }, self.topic);
        let payload = self.enc.encode(p, out);
        let mut spool = self.spool.lock().expect("spool lock");
        let at = spool.end();
        match spool.append(self.input_seq, idx, self.topic, payload) {
            Ok(true) => {
                self.counters.results.fetch_add(1, Ordering::Relaxed);
                self.appended = Some((self.appended.map_or(at, |a| a.0), at + 1));
            }
            Ok(false) => {}
            Err(e) => {
                self.counters.spool_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("spool: cannot append a result: {e}");
            }
        }
    }
}

/// What start-up recovered: the engine, the last input sequence number, the
/// log to append to, and recently logged messages (packet id, content hash)
/// to recognise the broker's redeliveries of them.
struct Recovered {
    engine: Engine,
    last_seq: u64,
    wal: Option<Wal>,
    recent: Redeliveries,
}

/// Recovery: checkpoint + write-ahead log replay.
fn recover(
    p: &Pipeline,
    seed: u64,
    spool: &Mutex<Spool>,
    counters: &ServiceCounters,
) -> Result<Recovered, ServiceError> {
    let dir = &p.gateway.state_dir;
    let mut recent = Redeliveries::default();
    let (mut engine, ckpt_seq) = match checkpoint::load(dir, p, seed) {
        Ok(Some(l)) => {
            tracing::info!("restored the checkpoint covering input {}", l.input_seq);
            recent.restore(l.recent);
            (l.engine, l.input_seq)
        }
        Ok(None) => (Engine::new(p.clone(), seed).map_err(|e| ServiceError::Config(e.to_string()))?, 0),
        Err(e) => {
            let aside = checkpoint::set_aside(dir).map_err(io_err("setting the checkpoint aside"))?;
            tracing::error!(
                "checkpoint unusable ({e}); set aside as {}; starting from empty state",
                aside.display()
            );
            counters.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
            (Engine::new(p.clone(), seed).map_err(|e| ServiceError::Config(e.to_string()))?, 0)
        }
    };
    if p.gateway.service.delivery == Delivery::Fast {
        return Ok(Recovered { engine, last_seq: ckpt_seq, wal: None, recent });
    }
    let skip = spool.lock().expect("spool lock").last_input();
    let mut enc = JsonEncoder::new();
    let mut topic = String::new();
    let mut replayed = 0u64;
    let (wal, last, damage) = Wal::open(&dir.join("wal"), ckpt_seq, |rec| match rec {
        WalRecord::Acked { through } => recent.confirmed(through),
        WalRecord::Message { seq, recv_ms, pkid, topic: t, payload } => {
            replayed += 1;
            let mut sink = SpoolSink::new(p, spool, &mut enc, &mut topic, counters, seq, skip);
            recent.logged(pkid, seq, &t, &payload);
            engine.ingest(recv_ms, &t, &payload, &mut sink);
        }
        WalRecord::Tick { seq, now_ms } => {
            replayed += 1;
            let mut sink = SpoolSink::new(p, spool, &mut enc, &mut topic, counters, seq, skip);
            engine.tick(now_ms, &mut sink);
        }
    })
    .map_err(io_err("write-ahead log"))?;
    if !damage.kept.is_empty() {
        counters.wal_lost_inputs.fetch_add(damage.lost_inputs, Ordering::Relaxed);
        let kept: Vec<String> = damage.kept.iter().map(|k| k.display().to_string()).collect();
        tracing::error!(
            "write-ahead log damaged: {} bytes unreadable, {} logged inputs lost with them; the rest was replayed; damaged files kept as {}",
            damage.bytes,
            damage.lost_inputs,
            kept.join(", ")
        );
    }
    if replayed > 0 {
        tracing::info!("replayed {replayed} logged inputs after the checkpoint (up to input {last})");
    }
    spool.lock().expect("spool lock").flush().map_err(io_err("spool"))?;
    Ok(Recovered { engine, last_seq: last.max(ckpt_seq), wal: Some(wal), recent })
}

/// glibc gives each thread that allocates its own arena (up to 8 per core),
/// each keeping freed memory for reuse: with four threads that is a few
/// hundred KiB apiece of resident memory the gateway does not need. Two
/// arenas are plenty: the engine thread does not allocate per event.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_ARENA_MAX: i32 = -8;
    // SAFETY: mallopt is thread-safe and only sets a limit for arenas created later.
    unsafe {
        mallopt(M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// Runs the service until SIGTERM/SIGINT.
pub fn run(p: Pipeline) -> Result<(), ServiceError> {
    limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("tokio runtime"))?;
    rt.block_on(run_async(p))
}

async fn run_async(p: Pipeline) -> Result<(), ServiceError> {
    #[cfg(not(feature = "i2c"))]
    if let Some(s) = p.streams.iter().find(|s| s.i2c.is_some()) {
        return Err(ServiceError::Config(format!(
            "stream `{}` reads an I2C sensor, and this build has no I2C support: build with `cargo build --release --features i2c`",
            s.name
        )));
    }
    // state files are the gateway's alone, also when not run by systemd (UMask=0077 there)
    crate::state_dir::restrict_umask();
    let dir = p.gateway.state_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| ServiceError::StateDir { path: dir.clone(), source })?;
    let _lock = crate::state_dir::lock(&dir)?;
    crate::state_dir::probe(&dir)?;
    let svc = p.gateway.service.clone();
    let counters = Arc::new(ServiceCounters::default());
    let spool = Spool::open(&dir.join("spool"), p.upstream.spool, p.upstream.spool_full)
        .map_err(|source| ServiceError::StateDir { path: dir.join("spool"), source })?;
    report_spool_damage(&spool, &counters);
    let spool = Arc::new(Mutex::new(spool));
    let seed = (now_ms() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(std::process::id());
    let Recovered { engine, last_seq, wal, recent } = recover(&p, seed, &spool, &counters)?;

    // the source connection, through the filter that cuts oversized payloads
    if p.source.broker.tls {
        return Err(ServiceError::Config(format!(
            "{}:{}: mqtts:// is supported for [upstream] (with ca_file); use mqtt:// for the source broker",
            p.source.broker.host, p.source.broker.port
        )));
    }
    let sock = crate::source_proxy::socket_path(&dir);
    if let Some(parent) = sock.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("source socket directory"))?;
    }
    let _ = std::fs::remove_file(&sock); // a stale one (the state_dir lock is ours)
    let listener = tokio::net::UnixListener::bind(&sock)
        .map_err(|source| ServiceError::StateDir { path: sock.clone(), source })?;
    let _sock_guard = RemoveOnDrop(sock.clone());
    tokio::spawn(crate::source_proxy::serve(
        listener,
        p.source.broker.host.clone(),
        p.source.broker.port,
        p.source.max_payload + 1,
        counters.clone(),
    ));
    let mut src_opts = mqtt_options(
        &p.source.client_id,
        &crate::pipeline::Broker { host: sock.display().to_string(), port: 0, tls: false },
        &p.source.credentials,
        None,
        max_message(&p),
        false,
    )?;
    src_opts.set_transport(rumqttc::Transport::Unix);
    src_opts.set_manual_acks(p.gateway.service.delivery == Delivery::Durable);
    let (src_client, src_loop) = AsyncClient::new(src_opts, SOURCE_REQUESTS);
    let filters: Vec<String> = {
        let mut f: Vec<String> =
            p.streams.iter().flat_map(|s| s.topics.iter().map(|t| t.filter().to_string())).collect();
        f.sort();
        f.dedup();
        f
    };

    // the uplink connection (clean session: the spool, not the client, keeps what is undelivered)
    let up_opts = mqtt_options(
        &p.upstream.client_id,
        &p.upstream.broker,
        &p.upstream.credentials,
        p.upstream.tls.as_ref(),
        16 << 20,
        true,
    )?;
    let (up_client, up_loop) = AsyncClient::new(up_opts, UPLINK_WINDOW + 64);

    let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Inbound>(INTAKE);
    let budget = Arc::new(tokio::sync::Semaphore::new(intake_budget(&p)));
    let notify = Arc::new(Notify::new());
    let stopping = Arc::new(AtomicBool::new(false));
    let engine_stop = Arc::new(AtomicBool::new(false));
    let (stats_tx, stats_rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(8);
    let metrics_text = Arc::new(Mutex::new(String::new()));
    let ready = Arc::new(Notify::new());
    let barrier = Arc::new(Barrier::default());
    let marks = Arc::new(LatencyMarks::new());
    // the engine thread says when it has started (it can write its state) and when it ends
    let (engine_started_tx, engine_started) = tokio::sync::oneshot::channel::<()>();
    let (engine_done_tx, mut engine_done) = tokio::sync::oneshot::channel::<()>();

    let source = tokio::spawn(source_task(
        src_loop,
        src_client.clone(),
        filters,
        in_tx.clone(),
        budget.clone(),
        counters.clone(),
        ready.clone(),
        barrier.clone(),
    ));
    let uplink = tokio::spawn(uplink_task(
        up_loop,
        up_client.clone(),
        spool.clone(),
        notify.clone(),
        stats_rx,
        stopping.clone(),
        counters.clone(),
        marks.clone(),
        svc.shutdown_ms,
    ));
    if let Some(addr) = svc.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(io_err("metrics_addr"))?;
        tracing::info!("serving Prometheus metrics on http://{addr}/metrics");
        tokio::spawn(metrics_server(listener, metrics_text.clone(), counters.clone()));
    }

    let engine_thread = {
        let p = p.clone();
        let spool = spool.clone();
        let notify = notify.clone();
        let counters = counters.clone();
        let metrics_text = metrics_text.clone();
        let src_client = src_client.clone();
        let rt = tokio::runtime::Handle::current();
        let engine_stop = engine_stop.clone();
        let barrier = barrier.clone();
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let r = EngineLoop {
                    p,
                    engine,
                    seq: last_seq,
                    wal,
                    recent,
                    rt,
                    engine_stop,
                    barrier,
                    src: src_client,
                    spool,
                    notify,
                    stats_tx,
                    metrics_text,
                    counters,
                    marks,
                }
                .run(in_rx, engine_started_tx);
                if let Err(e) = &r {
                    // at once, not when somebody stops the process
                    tracing::error!("engine stopped on an error: {e}");
                }
                let _ = engine_done_tx.send(());
                r
            })
            .map_err(io_err("engine thread"))?
    };

    // sensors on the local I2C bus: their readings enter like MQTT messages
    #[cfg(feature = "i2c")]
    for s in &p.streams {
        if let Some(src) = s.i2c.clone() {
            let tx = in_tx.clone();
            let counters = counters.clone();
            let name = s.name.clone();
            std::thread::Builder::new()
                .name(format!("i2c-{name}"))
                .spawn(move || {
                    crate::i2c::linux::run(
                        name,
                        src,
                        |topic, payload| {
                            let m = Publish::new(topic, QoS::AtMostOnce, payload.into_bytes());
                            let msg = Msg { m, recv_ms: now_ms(), at: Instant::now(), _permit: None };
                            tx.blocking_send(Inbound::Message(msg)).is_ok()
                        },
                        &counters.i2c_errors,
                    )
                })
                .map_err(io_err("i2c thread"))?;
        }
    }

    let join_engine = |t: std::thread::JoinHandle<Result<(), ServiceError>>| async move {
        match tokio::task::spawn_blocking(move || t.join()).await {
            Ok(Ok(r)) => r,
            _ => Err(ServiceError::Config("the engine thread failed".into())),
        }
    };
    // READY once subscriptions are confirmed and the engine runs
    let started = async {
        let _ = engine_started.await;
        ready.notified().await;
    };
    tokio::select! {
        _ = started => {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            tracing::info!("subscribed; ready");
        }
        _ = &mut engine_done => {
            stopping.store(true, Ordering::SeqCst);
            return join_engine(engine_thread).await.and(Err(ServiceError::Config("the engine stopped".into())));
        }
        _ = shutdown_signal() => {
            tracing::info!("stopping before the broker answered");
            stopping.store(true, Ordering::SeqCst);
            engine_stop.store(true, Ordering::SeqCst);
            let _ = in_tx.try_send(Inbound::Shutdown);
            return join_engine(engine_thread).await;
        }
    }
    let failed = tokio::select! {
        _ = shutdown_signal() => false,
        _ = &mut engine_done => true,
    };
    if failed {
        // the error is logged; systemd restarts the service (Restart=on-failure)
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let r = join_engine(engine_thread).await;
        return r.and(Err(ServiceError::Config("the engine stopped".into())));
    }
    tracing::info!("stopping: finishing in-flight work, checkpointing, draining the uplink");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // the engine stops taking messages, sends the acknowledgements it still owes (the source
    // connection stays up for them), checkpoints; then the source connection goes
    engine_stop.store(true, Ordering::SeqCst);
    let _ = in_tx.try_send(Inbound::Shutdown);
    let res = join_engine(engine_thread).await;
    let _ = src_client.try_disconnect();
    source.abort();
    stopping.store(true, Ordering::SeqCst);
    notify.notify_one();
    let _ = tokio::time::timeout(Duration::from_millis(svc.shutdown_ms as u64 + 1000), uplink).await;
    if let Ok(mut s) = spool.lock() {
        let _ = s.sync();
    }
    res
}

/// Deletes a file when dropped (the source filter's socket).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What start-up found wrong with the spool, logged and counted.
fn report_spool_damage(spool: &Spool, counters: &ServiceCounters) {
    let d = &spool.damage;
    if !d.kept.is_empty() {
        counters.spool_damaged.fetch_add(spool.damaged(), Ordering::Relaxed);
        let kept: Vec<String> = d.kept.iter().map(|k| k.display().to_string()).collect();
        tracing::error!(
            "spool damaged: {} undelivered results lost (counted in spool_dropped); the rest is delivered; damaged files kept as {}",
            spool.damaged(),
            kept.join(", ")
        );
    }
    if let Some(why) = &d.acked_refused {
        tracing::error!("spool: {why} (results already delivered go again, with the same ids)");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[allow(clippy::too_many_arguments)]
async fn source_task(
    mut ev: EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    tx: tokio::sync::mpsc::Sender<Inbound>,
    budget: Arc<tokio::sync::Semaphore>,
    counters: Arc<ServiceCounters>,
    ready: Arc<Notify>,
    barrier: Arc<Barrier>,
) {
    let mut backoff = Backoff::new(now_ms() as u64);
    let mut announced = false;
    let mut log = crate::logging::Every::new(Duration::from_secs(30));
    let mut down_since: Option<Instant> = None;
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                backoff.reset();
                barrier.reconnected();
                counters.source_connects.fetch_add(1, Ordering::Relaxed);
                match down_since.take() {
                    Some(at) => tracing::info!(
                        "source connected after {:.1} s down (session present: {})",
                        at.elapsed().as_secs_f64(),
                        ack.session_present
                    ),
                    None => tracing::info!("source connected (session present: {})", ack.session_present),
                }
                log = crate::logging::Every::new(Duration::from_secs(30));
                if !ack.session_present || !announced {
                    let subs =
                        filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(subs) {
                        tracing::error!("cannot subscribe: {e}");
                    }
                }
            }
            Ok(Event::Incoming(Incoming::UnsubAck(_))) => barrier.answered(),
            Ok(Event::Incoming(Incoming::SubAck(_))) => {
                if !announced {
                    announced = true;
                    ready.notify_one();
                }
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                counters.received.fetch_add(1, Ordering::Relaxed);
                // back-pressure by bytes and by count: wait here while the engine is behind (the
                // broker holds the rest); once the engine stopped taking messages, they are left
                // unacknowledged (the broker sends them again next time) while the connection
                // stays up for its last acks
                let Ok(permit) = budget.clone().acquire_many_owned(intake_cost(&publish)).await else {
                    continue;
                };
                let msg = Msg { m: publish, recv_ms: now_ms(), at: Instant::now(), _permit: Some(permit) };
                let _ = tx.send(Inbound::Message(msg)).await;
            }
            Ok(_) => {}
            Err(e) => {
                counters.source_errors.fetch_add(1, Ordering::Relaxed);
                let wait = backoff.wait();
                let since = *down_since.get_or_insert_with(Instant::now);
                if let Some(more) = log.ready() {
                    tracing::warn!(
                        "source broker: {e}; down for {:.0} s, reconnecting in {wait:?}{}",
                        since.elapsed().as_secs_f64(),
                        crate::logging::more(more)
                    );
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Most messages the engine thread logs (one fsync), acknowledges and processes at a time.
const BATCH: usize = 1024;

/// Messages waiting for the engine thread, at most (one batch; the broker holds the rest).
const INTAKE: usize = BATCH;

/// Capacity of the source client's request queue (acknowledgements, subscriptions).
const SOURCE_REQUESTS: usize = 1024;

/// A round trip to the source broker that proves it has processed every
/// acknowledgement sent before: an UNSUBSCRIBE of a filter never subscribed,
/// answered by UNSUBACK in order on the same connection (acknowledgements
/// themselves are never answered).
/// Answers come in order, so the n-th answer is the n-th barrier's; a
/// reconnect voids the barriers in flight (a new epoch).
#[derive(Default)]
struct Barrier {
    sent: metrics::Counter,
    answers: metrics::Counter,
    epoch: metrics::Counter,
    notify: Notify,
}

impl Barrier {
    const FILTER: &'static str = "edgejoin/barrier/never-subscribed";

    /// The source task saw an UNSUBACK.
    fn answered(&self) {
        self.answers.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// The source connection (re)connected: barriers in flight will not be answered.
    fn reconnected(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.answers.store(self.sent.load(Ordering::SeqCst), Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Sends a barrier; returns the ticket [`Barrier::answered`] checks.
    fn send(&self, src: &AsyncClient) -> Option<(u64, u64)> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        src.try_unsubscribe(Self::FILTER).ok()?;
        Some((epoch, self.sent.fetch_add(1, Ordering::SeqCst) + 1))
    }

    /// `Some(true)`: answered; `Some(false)`: not yet; `None`: void (reconnected since).
    fn state(&self, (epoch, n): (u64, u64)) -> Option<bool> {
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return None;
        }
        Some(self.answers.load(Ordering::SeqCst) >= n)
    }

    /// Sends a barrier and waits up to `timeout` for its answer.
    fn pass(&self, src: &AsyncClient, rt: &tokio::runtime::Handle, timeout: Duration) -> bool {
        let Some(ticket) = self.send(src) else { return false };
        let deadline = tokio::time::Instant::now() + timeout;
        rt.block_on(async {
            loop {
                match self.state(ticket) {
                    Some(true) => return true,
                    None => return false,
                    Some(false) => {}
                }
                if tokio::time::timeout_at(deadline, self.notify.notified()).await.is_err() {
                    return self.state(ticket) == Some(true);
                }
            }
        })
    }
}

/// The acknowledgements owed to the source broker: those not yet handed to
/// the client (in log order, each with the log position of its message), and
/// up to which log position a barrier has proved the broker processed the
/// handed ones. Barriers go out without waiting, at most every 100 ms while
/// some handed acknowledgement is unproven.
#[derive(Default)]
struct Acks {
    unacked: VecDeque<(u16, u64)>,
    /// Log position of the last acknowledgement handed to the client.
    handed: u64,
    /// Every acknowledgement up to this log position is processed by the broker.
    confirmed: u64,
    /// A barrier in flight: (its ticket, the position handed before it).
    pending: Option<((u64, u64), u64)>,
    last_barrier: Option<Instant>,
}

impl Acks {
    /// Hands the client the acknowledgements it can take, in order; the rest
    /// wait for the next call (each time counted in `acks_deferred`).
    fn send(&mut self, src: &AsyncClient, counters: &ServiceCounters) {
        while let Some(&(pkid, pos)) = self.unacked.front() {
            let mut m = Publish::new("", QoS::AtLeastOnce, Vec::new());
            m.pkid = pkid;
            if src.try_ack(&m).is_err() {
                counters.acks_deferred.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.unacked.pop_front();
            self.handed = self.handed.max(pos);
        }
    }

    /// Takes a barrier's answer (the newly confirmed position, if any); sends
    /// the next barrier when one is due.
    fn track(&mut self, src: &AsyncClient, barrier: &Barrier) -> Option<u64> {
        let mut confirmed = None;
        if let Some((ticket, handed)) = self.pending {
            match barrier.state(ticket) {
                Some(true) => {
                    self.confirmed = self.confirmed.max(handed);
                    confirmed = Some(self.confirmed);
                    self.pending = None;
                }
                None => self.pending = None, // lost with a reconnect: send another
                Some(false) => {}
            }
        }
        let due = self.last_barrier.is_none_or(|at| at.elapsed() >= Duration::from_millis(100));
        if self.pending.is_none() && due && self.handed > self.confirmed {
            if let Some(ticket) = barrier.send(src) {
                self.pending = Some((ticket, self.handed));
                self.last_barrier = Some(Instant::now());
            }
        }
        confirmed
    }
}

/// Intake paused because the state directory is full: said when it starts,
/// every few seconds while it lasts, and when it ends.
struct Pause {
    since: Option<Instant>,
    log: crate::logging::Every,
}

impl Pause {
    fn new() -> Self {
        Pause { since: None, log: crate::logging::Every::new(Duration::from_secs(5)) }
    }

    fn active(&self) -> bool {
        self.since.is_some()
    }

    fn full(&mut self, e: &io::Error, what: &str, waiting: usize, counters: &ServiceCounters) {
        let since = match self.since {
            Some(at) => at,
            None => {
                counters.storage_full_pauses.fetch_add(1, Ordering::Relaxed);
                counters.storage_paused.store(1, Ordering::Relaxed);
                self.log = crate::logging::Every::new(Duration::from_secs(5));
                *self.since.insert(Instant::now())
            }
        };
        if self.log.ready().is_some() {
            tracing::warn!(
                "state_dir full ({what}: {e}): intake paused for {:.0} s, {waiting} messages not yet acknowledged wait with the broker; free some space and it resumes",
                since.elapsed().as_secs_f64()
            );
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("paused: state_dir full")]);
        }
    }

    fn resume(&mut self, counters: &ServiceCounters) {
        if let Some(at) = self.since.take() {
            counters.storage_paused.store(0, Ordering::Relaxed);
            tracing::info!("state_dir has room again after {:.1} s: resuming", at.elapsed().as_secs_f64());
        }
    }
}

/// The engine thread: takes batches of messages from the source, logs them
/// (one fsync), acknowledges them, runs them through the engine into the
/// spool; ticks, checkpoints, publishes stats, pings the watchdog.
struct EngineLoop {
    p: Pipeline,
    engine: Engine,
    /// Log position of the last input.
    seq: u64,
    wal: Option<Wal>,
    recent: Redeliveries,
    rt: tokio::runtime::Handle,
    engine_stop: Arc<AtomicBool>,
    barrier: Arc<Barrier>,
    src: AsyncClient,
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    stats_tx: tokio::sync::mpsc::Sender<(String, Vec<u8>)>,
    metrics_text: Arc<Mutex<String>>,
    counters: Arc<ServiceCounters>,
    marks: Arc<LatencyMarks>,
}

/// WAL bytes (ticks, acknowledgement records) kept in memory before they are written without a batch.
const WAL_IDLE_WRITE: usize = 64 << 10;

impl EngineLoop {
    /// Makes the log hold what it was given (`durable`: fsynced) and the spool
    /// take its results. `Err` names the store that failed.
    fn store(&mut self, durable: bool) -> Result<(), (&'static str, io::Error)> {
        if let Some(w) = self.wal.as_mut() {
            if durable {
                w.sync().map_err(|e| ("write-ahead log", e))?;
            } else if w.pending_bytes() >= WAL_IDLE_WRITE {
                w.write().map_err(|e| ("write-ahead log", e))?;
            }
        }
        self.spool.lock().expect("spool lock").flush().map_err(|e| ("spool", e))
    }

    fn run(
        mut self,
        mut rx: tokio::sync::mpsc::Receiver<Inbound>,
        started: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), ServiceError> {
        let svc = self.p.gateway.service.clone();
        let dir = self.p.gateway.state_dir.clone();
        let durable = svc.delivery == Delivery::Durable;
        let mut enc = JsonEncoder::new();
        let mut topic = String::new();
        let prefix = self.p.upstream.topic_prefix.clone();
        let stats_topic = format!("{prefix}/{}", svc.stats_topic);
        let mut batch: Vec<Msg> = Vec::with_capacity(BATCH);
        // whether the batch is appended to the log (not necessarily written yet)
        let mut batch_logged = false;
        // packet ids logged and due an acknowledgement the client could not take yet (its request
        // queue was full): retried before anything else, never dropped — a lost PUBACK would hold
        // the broker's in-flight window for this session until the next reconnect
        let mut acks = Acks::default();
        let mut pause = Pause::new();
        let tick = Duration::from_millis(svc.tick_ms as u64);
        let mut last_tick = Instant::now();
        let mut last_ckpt = Instant::now();
        let mut last_stats = Instant::now();
        let started_at = Instant::now();
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let mut last_watchdog = Instant::now();
        let mut processed_at_stats = 0u64;
        let mut spool_losses = (0u64, 0u64);
        let mut spool_log = crate::logging::Every::new(Duration::from_secs(30));
        let mut stop = false;
        let _ = started.send(());
        while !stop {
            if durable {
                acks.send(&self.src, &self.counters);
                if let Some(through) = acks.track(&self.src, &self.barrier) {
                    // the broker will not send these again: their ids may now carry new messages
                    self.recent.confirmed(through);
                    if let Some(w) = self.wal.as_mut() {
                        w.append_acked(through).map_err(io_err("write-ahead log"))?;
                    }
                }
            }
            if self.engine_stop.load(Ordering::SeqCst) {
                stop = true;
            } else if batch.is_empty() && !pause.active() {
                // a pending barrier's answer is taken at the next turn; only acknowledgements the
                // client could not take yet are worth a quick retry
                let wait = if acks.unacked.is_empty() {
                    tick.min(Duration::from_millis(250))
                } else {
                    Duration::from_millis(1)
                };
                match self.rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                    Ok(Some(Inbound::Message(m))) => batch.push(m),
                    Ok(Some(Inbound::Shutdown)) | Ok(None) => stop = true,
                    Err(_) => {}
                }
                while batch.len() < BATCH && !stop {
                    match rx.try_recv() {
                        Ok(Inbound::Message(m)) => batch.push(m),
                        Ok(Inbound::Shutdown) => stop = true,
                        Err(_) => break,
                    }
                }
                // a redelivery of a message logged before (a crash, a reconnect): acknowledge, do
                // not process twice
                let (recent, counters, seq) = (&self.recent, &self.counters, self.seq);
                batch.retain(|b| {
                    let dup = recent.is_redelivery(b.m.dup, b.m.pkid, &b.m.topic, &b.m.payload);
                    if dup {
                        counters.redeliveries_skipped.fetch_add(1, Ordering::Relaxed);
                        if durable && b.m.qos != QoS::AtMostOnce {
                            acks.unacked.push_back((b.m.pkid, seq));
                        }
                    }
                    !dup
                });
            }
            if !batch.is_empty() && !batch_logged {
                if let Some(w) = self.wal.as_mut() {
                    for (i, b) in batch.iter().enumerate() {
                        w.append_message(
                            self.seq + 1 + i as u64,
                            b.recv_ms,
                            b.m.pkid,
                            &b.m.topic,
                            &b.m.payload,
                        )
                        .map_err(io_err("write-ahead log"))?;
                    }
                }
                batch_logged = true;
            }
            // the log must hold the batch before it is acknowledged; the spool must take the results
            match self.store(!batch.is_empty()) {
                Ok(()) => pause.resume(&self.counters),
                Err((what, e)) if crate::frame::is_storage_full(&e) => {
                    pause.full(&e, what, batch.len() + rx.len(), &self.counters);
                    if stop {
                        tracing::warn!("stopping while state_dir is full: the messages not yet logged stay with the broker");
                        break;
                    }
                    self.ping_watchdog(watchdog, &mut last_watchdog);
                    if let Ok(mut m) = self.metrics_text.lock() {
                        *m = metrics::prometheus(&self.engine, &self.counters);
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
                Err((what, e)) => {
                    return Err(ServiceError::StateDir {
                        path: dir.join(if what == "spool" { "spool" } else { "wal" }),
                        source: e,
                    })
                }
            }
            if !batch.is_empty() {
                if durable {
                    let first = self.seq + 1;
                    acks.unacked.extend(
                        batch
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| b.m.qos != QoS::AtMostOnce)
                            .map(|(i, b)| (b.m.pkid, first + i as u64)),
                    );
                    acks.send(&self.src, &self.counters);
                }
                for b in &batch {
                    self.seq += 1;
                    self.recent.logged(b.m.pkid, self.seq, &b.m.topic, &b.m.payload);
                    let mut sink = SpoolSink::new(
                        &self.p,
                        &self.spool,
                        &mut enc,
                        &mut topic,
                        &self.counters,
                        self.seq,
                        None,
                    );
                    self.engine.ingest(b.recv_ms, &b.m.topic, &b.m.payload, &mut sink);
                    if let Some((first, end)) = sink.appended {
                        self.marks.mark(first, end, b.at);
                    }
                    self.counters.processed.fetch_add(1, Ordering::Relaxed);
                }
                self.counters.last_processed_unix_ms.store(now_ms() as u64, Ordering::Relaxed);
                if let Some(oldest) = batch.iter().map(|b| b.recv_ms).min() {
                    self.counters
                        .processing_delay_ms
                        .store(now_ms().saturating_sub(oldest).max(0) as u64, Ordering::Relaxed);
                }
                batch.clear(); // and with it, the messages' share of the intake budget
                batch_logged = false;
            }
            if stop {
                // what is left in the channel was not logged: the broker sends it again next time
                rx.close();
                let until = Instant::now() + Duration::from_secs(2);
                while durable && !acks.unacked.is_empty() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                    acks.send(&self.src, &self.counters);
                }
                if durable
                    && acks.handed > acks.confirmed
                    && self.barrier.pass(&self.src, &self.rt, Duration::from_secs(1))
                {
                    acks.confirmed = acks.handed;
                    self.recent.confirmed(acks.confirmed);
                }
            }
            if last_tick.elapsed() >= tick || stop {
                last_tick = Instant::now();
                self.seq += 1;
                let now = now_ms();
                if let Some(w) = self.wal.as_mut() {
                    w.append_tick(self.seq, now).map_err(io_err("write-ahead log"))?;
                }
                let mut sink = SpoolSink::new(
                    &self.p,
                    &self.spool,
                    &mut enc,
                    &mut topic,
                    &self.counters,
                    self.seq,
                    None,
                );
                self.engine.tick(now, &mut sink);
            }
            match self.spool.lock().expect("spool lock").flush() {
                Ok(()) => {}
                // kept in memory; the next turn pauses intake until it is written
                Err(e) if crate::frame::is_storage_full(&e) => {}
                Err(e) => return Err(ServiceError::StateDir { path: dir.join("spool"), source: e }),
            }
            self.notify.notify_one();
            if last_ckpt.elapsed() >= Duration::from_millis(svc.checkpoint_ms as u64) || stop {
                last_ckpt = Instant::now();
                self.checkpoint(&dir);
            }
            if last_stats.elapsed() >= Duration::from_millis(svc.stats_ms as u64) || stop {
                let secs = last_stats.elapsed().as_secs_f64().max(1e-3);
                last_stats = Instant::now();
                let processed = self.counters.processed.load(Ordering::Relaxed);
                let rate = (processed - processed_at_stats) as f64 / secs;
                processed_at_stats = processed;
                let (depth, disk, dropped, refused) = {
                    let s = self.spool.lock().expect("spool lock");
                    (s.depth(), s.disk_bytes(), s.dropped, s.refused)
                };
                if (dropped, refused) != spool_losses {
                    if let Some(more) = spool_log.ready() {
                        tracing::warn!(
                            "spool full ({} bytes): {} results dropped by drop_oldest and {} refused by refuse_new so far{}",
                            self.p.upstream.spool,
                            dropped,
                            refused,
                            crate::logging::more(more)
                        );
                    }
                    spool_losses = (dropped, refused);
                }
                let c = &self.counters;
                c.spool_depth.store(depth, Ordering::Relaxed);
                c.spool_bytes.store(disk, Ordering::Relaxed);
                c.spool_dropped.store(dropped, Ordering::Relaxed);
                c.spool_refused.store(refused, Ordering::Relaxed);
                let snap = metrics::stats_json(&self.engine, c, rate, started_at.elapsed());
                let _ = self.stats_tx.try_send((stats_topic.clone(), snap.into_bytes()));
                if let Ok(mut m) = self.metrics_text.lock() {
                    *m = metrics::prometheus(&self.engine, c);
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
                    "{rate:.0} msg/s, {} results, spool depth {depth}",
                    c.results.load(Ordering::Relaxed)
                ))]);
            }
            self.ping_watchdog(watchdog, &mut last_watchdog);
        }
        tracing::info!(
            "engine stopped at input {}: {} messages processed, {} redeliveries skipped",
            self.seq,
            self.counters.processed.load(Ordering::Relaxed),
            self.counters.redeliveries_skipped.load(Ordering::Relaxed)
        );
        Ok(())
    }

    /// Saves a checkpoint (and lets the log before it go). A failure is
    /// logged and counted; the log keeps everything until the next one.
    fn checkpoint(&mut self, dir: &Path) {
        // results of everything the checkpoint covers must be durable before the log goes
        let res = self.spool.lock().expect("spool lock").sync().map_err(|e| ("spool", e)).and_then(|()| {
            // with the messages the broker may still send again
            checkpoint::save(dir, &self.engine, self.seq, self.recent.live()).map_err(|e| ("checkpoint", e))
        });
        match res {
            Ok(bytes) => {
                self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.counters.checkpoint_bytes.store(bytes, Ordering::Relaxed);
                if let Some(w) = self.wal.as_mut() {
                    if let Err(e) = w.checkpointed(self.seq) {
                        tracing::error!("write-ahead log: cannot start a segment after the checkpoint: {e}");
                    }
                }
            }
            Err((what, e)) => {
                self.counters.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!("checkpoint failed ({what}: {e}); the write-ahead log keeps everything until the next one");
            }
        }
    }

    fn ping_watchdog(&self, every: Option<Duration>, last: &mut Instant) {
        if let Some(every) = every {
            if last.elapsed() >= every {
                *last = Instant::now();
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    }
}

/// Results handed to the uplink client and not yet acknowledged, at most.
const UPLINK_WINDOW: usize = 512;

/// The uplink's delivery state: what was handed to the client, in which
/// order, under which packet id, and what the broker acknowledged.
struct Uplink {
    connected: bool,
    /// Spool positions in the order they were handed to the client (u64::MAX: a stats message).
    sent_order: VecDeque<u64>,
    by_pkid: HashMap<u16, u64>,
    /// Acknowledged positions above the spool's delivered position.
    done: BTreeSet<u64>,
    next_send: u64,
    inflight: usize,
}

impl Uplink {
    /// Forgets everything in flight: the client drops it at the next (clean-session)
    /// CONNACK, so it is all sent again from the spool's delivered position.
    fn reset(&mut self, spool: &Mutex<Spool>) {
        self.sent_order.clear();
        self.by_pkid.clear();
        self.inflight = 0;
        self.next_send = spool.lock().expect("spool lock").acked();
    }

    /// Hands the client as many spooled results as the window allows.
    fn refill(
        &mut self,
        client: &AsyncClient,
        spool: &Mutex<Spool>,
        buf: &mut Vec<crate::spool::SpoolRecord>,
    ) {
        while self.connected && self.inflight < UPLINK_WINDOW {
            buf.clear();
            {
                let mut s = spool.lock().expect("spool lock");
                self.next_send = self.next_send.max(s.acked());
                if let Err(e) = s.read(self.next_send, UPLINK_WINDOW - self.inflight, buf) {
                    tracing::error!("spool: cannot read: {e}");
                    return;
                }
            }
            if buf.is_empty() {
                return;
            }
            for rec in buf.drain(..) {
                if self.done.contains(&rec.seq) {
                    self.next_send = rec.seq + 1;
                    continue;
                }
                if client.try_publish(rec.topic, QoS::AtLeastOnce, false, rec.payload).is_err() {
                    return;
                }
                self.sent_order.push_back(rec.seq);
                self.next_send = rec.seq + 1;
                self.inflight += 1;
            }
        }
    }

    /// One event of the connection; `Err` when the connection failed.
    fn on_event(
        &mut self,
        e: Result<Event, rumqttc::ConnectionError>,
        spool: &Mutex<Spool>,
        counters: &ServiceCounters,
        marks: &LatencyMarks,
    ) -> Result<(), Box<rumqttc::ConnectionError>> {
        match e.map_err(Box::new)? {
            Event::Incoming(Incoming::ConnAck(_)) => {
                self.connected = true;
                counters.uplink_connects.fetch_add(1, Ordering::Relaxed);
                self.reset(spool);
                tracing::info!("uplink connected; resending from result {}", self.next_send);
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(seq) = self.sent_order.pop_front() {
                    if seq != u64::MAX && pkid != 0 {
                        self.by_pkid.insert(pkid, seq);
                        if let Some(delivered) = marks.take(seq) {
                            counters.result_latency.observe(delivered.elapsed());
                        }
                    }
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(seq) = self.by_pkid.remove(&ack.pkid) {
                    self.inflight = self.inflight.saturating_sub(1);
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    self.done.insert(seq);
                    let mut s = spool.lock().expect("spool lock");
                    let mut acked = s.acked();
                    while self.done.remove(&acked) {
                        acked += 1;
                    }
                    if self.done.first().is_some_and(|&d| d < acked) {
                        self.done.retain(|&d| d >= acked);
                    }
                    if let Err(e) = s.ack(acked) {
                        tracing::error!("spool: cannot record delivery: {e}");
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn uplink_task(
    mut ev: EventLoop,
    client: AsyncClient,
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    mut stats_rx: tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
    stopping: Arc<AtomicBool>,
    counters: Arc<ServiceCounters>,
    marks: Arc<LatencyMarks>,
    shutdown_ms: i64,
) {
    let mut backoff = Backoff::new(now_ms() as u64 ^ 0x5555);
    let mut up = Uplink {
        connected: false,
        sent_order: VecDeque::new(),
        by_pkid: HashMap::new(),
        done: BTreeSet::new(),
        next_send: spool.lock().expect("spool lock").acked(),
        inflight: 0,
    };
    let mut buf = Vec::new();
    let mut stop_deadline: Option<Instant> = None;
    let mut down_since: Option<Instant> = None;
    let mut draining = false;
    let mut log = crate::logging::Every::new(Duration::from_secs(30));
    let mut wakeup = Box::pin(tokio::time::sleep(Duration::from_millis(200)));
    loop {
        if stopping.load(Ordering::SeqCst) && stop_deadline.is_none() {
            stop_deadline = Some(Instant::now() + Duration::from_millis(shutdown_ms as u64));
        }
        if let Some(d) = stop_deadline {
            let depth = spool.lock().expect("spool lock").depth();
            if depth == 0 || Instant::now() >= d {
                if depth > 0 {
                    tracing::warn!("shutdown: {depth} results still undelivered stay in the spool");
                }
                let _ = client.try_disconnect();
                if let Ok(mut s) = spool.lock() {
                    let _ = s.save_acked();
                }
                return;
            }
        }
        up.refill(&client, &spool, &mut buf);
        let mut res = tokio::select! {
            e = ev.poll() => up.on_event(e, &spool, &counters, &marks),
            _ = notify.notified() => Ok(()),
            Some((topic, payload)) = stats_rx.recv() => {
                if up.connected && client.try_publish(topic, QoS::AtMostOnce, false, payload).is_ok() {
                    up.sent_order.push_back(u64::MAX);
                }
                Ok(())
            }
            _ = &mut wakeup => {
                wakeup.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(200));
                Ok(())
            }
        };
        // then every event already waiting, without going round the loop for each
        for _ in 0..UPLINK_WINDOW {
            if res.is_err() {
                break;
            }
            let more = tokio::select! {
                biased;
                e = ev.poll() => Some(e),
                _ = std::future::ready(()) => None,
            };
            match more {
                Some(e) => res = up.on_event(e, &spool, &counters, &marks),
                None => break,
            }
        }
        if let Err(e) = res {
            // every failure is worth a line (refused, TLS, authentication), once per 30 s at most
            let since = *down_since.get_or_insert_with(Instant::now);
            if up.connected {
                log = crate::logging::Every::new(Duration::from_secs(30));
            }
            if let Some(more) = log.ready() {
                let depth = spool.lock().map(|s| s.depth()).unwrap_or(0);
                tracing::warn!(
                    "uplink broker: {e}; down for {:.0} s, {depth} results wait in the spool{}",
                    since.elapsed().as_secs_f64(),
                    crate::logging::more(more)
                );
            }
            up.connected = false;
            counters.uplink_errors.fetch_add(1, Ordering::Relaxed);
            // rumqttc moves everything unsent or unacknowledged to its pending list and
            // drops it at the next (clean-session) CONNACK: it is all sent again from the spool
            up.reset(&spool);
            if stop_deadline.is_some() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else {
                tokio::time::sleep(backoff.wait()).await;
            }
        } else if up.connected {
            backoff.reset();
            if let Some(at) = down_since.take() {
                let depth = spool.lock().map(|s| s.depth()).unwrap_or(0);
                tracing::info!(
                    "uplink back after {:.1} s: {depth} spooled results to send",
                    at.elapsed().as_secs_f64()
                );
                draining = depth > 0;
            }
        }
        if draining && spool.lock().map(|s| s.depth() == 0).unwrap_or(false) {
            draining = false;
            tracing::info!("uplink: the spool is drained");
        }
    }
}

/// Metrics connections served at once, at most; more are closed at once.
const METRICS_CONNECTIONS: usize = 16;

/// Serves the Prometheus text on `GET /metrics` (404 for other paths, 405
/// for other methods). Bounded: at most [`METRICS_CONNECTIONS`] at once,
/// each closed after 5 s whatever the client does, and a failing accept
/// (out of file descriptors) waits before trying again instead of spinning.
async fn metrics_server(
    listener: tokio::net::TcpListener,
    text: Arc<Mutex<String>>,
    counters: Arc<ServiceCounters>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    let mut log = crate::logging::Every::new(Duration::from_secs(30));
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                if let Some(more) = log.ready() {
                    tracing::warn!(
                        "metrics endpoint: cannot accept a connection: {e}{}",
                        crate::logging::more(more)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.metrics_connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(sock);
            continue;
        };
        let text = text.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(Duration::from_secs(5), serve_metrics(sock, text)).await;
        });
    }
}

async fn serve_metrics(mut sock: tokio::net::TcpStream, text: Arc<Mutex<String>>) -> io::Result<()> {
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    // the request line and headers, up to 8 KiB
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && !req.windows(2).any(|w| w == b"\n\n") {
        let n = sock.read(&mut buf).await?;
        if n == 0 || req.len() > 8 << 10 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = req.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (status, body) = if method != b"GET" && method != b"HEAD" {
        ("405 Method Not Allowed", String::from("only GET\n"))
    } else if path != b"/metrics" && path != b"/" {
        ("404 Not Found", String::from("metrics are at /metrics\n"))
    } else {
        ("200 OK", text.lock().map(|t| t.clone()).unwrap_or_default())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    if method != b"HEAD" {
        sock.write_all(body.as_bytes()).await?;
    }
    sock.shutdown().await
}
