//! `edgejoin run`: the live service, a thin IO shell around the engine.
//!
//! The data path, one module per step:
//! - [`source`] (tokio task): the MQTT session with `[source]` through the
//!   payload filter ([`source_proxy`]); messages to the engine thread over a
//!   channel bounded by count and bytes.
//! - [`engine_loop`] (a thread): each batch into the write-ahead log
//!   ([`wal`], one fsync), acknowledged ([`acks`]: after the fsync, confirmed
//!   by barriers; [`redelivery`] recognises the broker's redeliveries), run
//!   through the engine, results encoded into the spool ([`results`],
//!   [`spool`], [`frame`]);
//!   ticks, [`checkpoint`]s, stats and [`metrics`] (what is counted:
//!   [`counters`], [`registry`]).
//! - [`uplink`] (tokio task): the spool sent upstream in order, advanced only
//!   over PUBACKs ([`delivery`]).
//! - [`recovery`] at start: checkpoint + log replay; [`state_dir`] locks and
//!   probes the directory; [`http`] serves the metrics; [`systemd`] says
//!   ready, status and watchdog; [`shutdown`] orders the stop; [`mqtt`] builds
//!   connection options (TLS, credentials); [`logging`] rate-limits warnings.

mod acks;
pub(crate) mod checkpoint;
mod clock;
mod commit;
mod counters;
mod delivery;
mod engine_loop;
mod error;
mod frame;
pub(crate) mod homeassistant;
mod http;
mod logging;
mod memory;
mod message;
pub(crate) mod metrics;
mod mqtt;
pub mod preflight;
mod process;
mod recovery;
mod redelivery;
mod registry;
mod results;
mod shutdown;
mod source;
mod source_proxy;
pub(crate) mod spool;
mod state_dir;
mod systemd;
mod uplink;
mod uplink_conn;
pub(crate) mod wal;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
#[cfg(feature = "i2c")]
use std::time::Instant;

use edgejoin_engine::route::Router;
use rumqttc::AsyncClient;
#[cfg(feature = "i2c")]
use rumqttc::QoS;
use tokio::sync::Notify;

use crate::clock_report::ClockTrace;
use crate::config::{Config, Delivery};
use acks::{AckPipe, SharedBarriers};
pub use checkpoint::CheckpointError;
pub use clock::now_ms;
use counters::ServiceCounters;
use engine_loop::{EngineLoop, Links, Start};
use error::io_err;
pub use error::ServiceError;
pub use memory::memory_bound;
use recovery::{recover, report_spool_damage, Recovered};
use shutdown::{Shutdown, Stage};
pub use source::{intake_budget, max_message, source_buffers};
use source::{Backlog, Intake, IntakeWake, Msg, INTAKE, SOURCE_REQUESTS};
use spool::Spool;

/// glibc gives each thread that allocates its own arena (up to 8 per core),
/// each keeping freed memory for reuse: with four threads that is a few
/// hundred KiB apiece of resident memory the gateway does not need. One
/// arena is enough: the engine thread does not allocate per event, so the
/// only threads that allocate per message are the two tokio workers (a drain
/// of the bench ran as fast with one arena as with two, 0.3 MiB smaller).
/// The mmap threshold is fixed at 64 KiB (glibc otherwise raises it to the
/// largest block freed, up to 32 MiB, and big buffers then stay in the heap
/// after they are freed), and the heap's free top is given back above
/// 128 KiB: bursts (a drain's held results, the uplink's buffers) do not
/// leave their peak resident (0.2–0.3 MiB less at a drain's peak).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_ARENA_MAX: i32 = -8;
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt is thread-safe and only sets limits for what is allocated later.
    unsafe {
        mallopt(M_ARENA_MAX, 1);
        mallopt(M_MMAP_THRESHOLD, 64 << 10);
        mallopt(M_TRIM_THRESHOLD, 128 << 10);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// What of the checkpoint in `state_dir` a pipeline `p` would keep
/// (`check-config --against`): `None` without a checkpoint, else the input
/// it covers and what carries over; an error when it is unusable (`run`
/// would set it aside and start empty).
pub fn against_checkpoint(
    state_dir: &std::path::Path,
    p: &edgejoin_engine::Plan,
) -> Result<Option<(u64, edgejoin_engine::manifest::Carry)>, checkpoint::CheckpointError> {
    Ok(checkpoint::load(state_dir, p, 0)?.map(|l| (l.input_seq, l.carry)))
}

/// MQTT options for a client of one of the config's brokers, with its
/// credentials and TLS (`tail`, `record`): clean session, large packets.
pub fn client_options(
    client_id: &str,
    broker: &crate::config::Broker,
    credentials: &Option<crate::config::Credentials>,
    tls: Option<&crate::config::TlsFiles>,
) -> Result<rumqttc::MqttOptions, ServiceError> {
    mqtt::mqtt_options(client_id, broker, credentials, tls, 16 << 20, true)
}

/// How one run of the pipeline ended.
enum Ended {
    /// SIGTERM or SIGINT: the process exits.
    Stopped,
    /// SIGHUP with a config that passed every check: the pipeline starts again with it.
    Reload(Box<Config>),
}

/// Runs the service until SIGTERM/SIGINT. On SIGHUP, `reload` reads and
/// checks the config again: a good one replaces the running one (state that
/// did not change carries over through the checkpoint), a bad one is logged
/// and the running one stays.
pub fn run(c: Config, reload: impl Fn() -> Result<Config, String>) -> Result<(), ServiceError> {
    tune_malloc();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // one thread for blocking work: the uplink's spool reads (more would only add stacks and arenas)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .map_err(io_err("tokio runtime"))?;
    rt.block_on(async {
        let mut signals = Signals::new()?;
        let mut c = c;
        let mut reloaded = false;
        loop {
            match run_async(c, &mut signals, &reload, reloaded).await? {
                Ended::Stopped => return Ok(()),
                Ended::Reload(next) => {
                    c = *next;
                    reloaded = true;
                }
            }
        }
    })
}

async fn run_async(
    c: Config,
    signals: &mut Signals,
    reload: &impl Fn() -> Result<Config, String>,
    reloaded: bool,
) -> Result<Ended, ServiceError> {
    let (p, d) = (&c.plan, &c.deployment);
    #[cfg(not(feature = "i2c"))]
    if let Some(s) = d.i2c.first() {
        return Err(ServiceError::Config(format!(
            "stream `{}` reads an I2C sensor, and this build has no I2C support: build with `cargo build --release --features i2c`",
            p.streams[s.stream].name
        )));
    }
    // state files are the gateway's alone, also when not run by systemd (UMask=0077 there)
    state_dir::restrict_umask();
    let dir = d.gateway.state_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| ServiceError::StateDir { path: dir.clone(), source })?;
    let _lock = state_dir::lock(&dir)?;
    state_dir::probe(&dir)?;
    let svc = d.service.clone();
    let counters = Arc::new(ServiceCounters::default());
    counters.spool_capacity.store(d.upstream.spool, std::sync::atomic::Ordering::Relaxed);
    let spool = Spool::open(&dir.join("spool"), d.upstream.spool, d.upstream.spool_full)
        .map_err(|source| ServiceError::StateDir { path: dir.join("spool"), source })?;
    report_spool_damage(&spool, &counters);
    let spool = Arc::new(Mutex::new(spool));
    let seed = (now_ms() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(std::process::id());
    let Recovered { engine, last_seq, wal, recent, carry } = recover(&c, seed, &spool, &counters)?;
    match &carry {
        Some(carry) if reloaded => recovery::report_reload(carry),
        Some(carry) => recovery::report_carry(carry),
        None if reloaded => tracing::warn!("reloaded; no checkpoint was found, every part started empty"),
        None => {}
    }
    // what this run spawned ends with it (a reload starts them again)
    let mut tasks = Tasks::default();

    // the source connection, through the filter that cuts oversized payloads
    let sock = source_proxy::socket_path(&dir);
    if let Some(parent) = sock.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("source socket directory"))?;
    }
    let _ = std::fs::remove_file(&sock); // a stale one (the state_dir lock is ours)
    let listener = tokio::net::UnixListener::bind(&sock)
        .map_err(|source| ServiceError::StateDir { path: sock.clone(), source })?;
    let _sock_guard = RemoveOnDrop(sock.clone());
    let ack_pipe = Arc::new(AckPipe::default());
    let source_tls =
        d.source.tls.as_ref().map(|files| mqtt::client_tls(&d.source.broker, files)).transpose()?;
    let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Msg>(INTAKE);
    let barriers = Arc::new(SharedBarriers::default());
    let intake_wake = Arc::new(IntakeWake::default());
    let backlog = Arc::new(Backlog::default());
    let intake = Arc::new(Intake {
        tx: in_tx,
        budget: Arc::new(tokio::sync::Semaphore::new(intake_budget(&c))),
        wake: intake_wake.clone(),
        counters: counters.clone(),
        barriers: barriers.clone(),
        passed: AtomicU64::new(0),
        ack_on_pass: svc.delivery == Delivery::Fast,
        router: Router::new(p),
        backlog: backlog.clone(),
    });
    tasks.spawn(source_proxy::serve(
        listener,
        d.source.broker.host.clone(),
        d.source.broker.port,
        source_tls,
        source_proxy::Limits { keep: p.max_payload + 1, max: max_message(&c) },
        intake.clone(),
        ack_pipe.clone(),
    ));
    let mut src_opts = mqtt::mqtt_options(
        &d.source.client_id,
        &crate::config::Broker { host: sock.display().to_string(), port: 0, tls: false },
        &d.source.credentials,
        None,
        max_message(&c),
        false,
    )?;
    src_opts.set_transport(rumqttc::Transport::Unix);
    src_opts.set_manual_acks(svc.delivery == Delivery::Durable);
    let (src_client, src_loop) = AsyncClient::new(src_opts, SOURCE_REQUESTS);
    let filters = p.topic_filters();

    // the uplink connection (clean session: the spool keeps what is undelivered)
    let up = &d.upstream;
    let up_target = uplink_conn::Target {
        host: up.broker.host.clone(),
        port: up.broker.port,
        // the config has TLS files exactly for an mqtts:// url
        tls: up.tls.as_ref().map(|files| mqtt::client_tls(&up.broker, files)).transpose()?,
        client_id: up.client_id.clone(),
        login: mqtt::login(&up.credentials)?,
        status_topic: format!("{}/status", up.topic_prefix),
    };

    let discovery = d.homeassistant.clone().map(|h| {
        Arc::new(Mutex::new(homeassistant::Discovery::new(h, &d.gateway.id, &d.upstream.topic_prefix)))
    });
    let spool_ready = Arc::new(Notify::new());
    let shutdown = Shutdown::default();
    let (stats_tx, stats_rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(8);
    let snapshot = Arc::new(Mutex::new(metrics::Snapshot::default()));
    let ready = Arc::new(Notify::new());
    let marks = Arc::new(uplink::LatencyMarks::new());
    // the engine thread says when it has started (it can write its state) and when it ends
    let (engine_started_tx, engine_started) = tokio::sync::oneshot::channel::<()>();
    let (engine_done_tx, mut engine_done) = tokio::sync::oneshot::channel::<()>();

    let source = tasks.spawn(source::source_task(
        src_loop,
        src_client.clone(),
        filters,
        intake.clone(),
        ready.clone(),
    ));
    let uplink = tasks.spawn(uplink::uplink_task(
        up_target,
        spool.lock().expect("spool lock").reader(),
        uplink::Links {
            spool_ready: spool_ready.clone(),
            stats_rx,
            shutdown: shutdown.watch(),
            counters: counters.clone(),
            marks: marks.clone(),
            drain_for: svc.shutdown,
            discovery: discovery.clone(),
            backlog: backlog.clone(),
        },
    ));
    // the live clock report's trace: kept where it can be seen
    let clocks = (svc.metrics_addr.is_some() && svc.clock_trace > 0)
        .then(|| Arc::new(Mutex::new(ClockTrace::last(svc.clock_trace, p.max_devices.get() as usize))));
    if let Some(addr) = svc.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(io_err("metrics_addr"))?;
        tracing::info!(
            "serving the status page on http://{addr}/ (metrics at /metrics, health at /healthz, the clock report at /clocks/)"
        );
        let site = http::Site {
            registry: metrics::registry(snapshot.clone(), counters.clone()),
            snapshot: snapshot.clone(),
            counters: counters.clone(),
            clocks: clocks.clone(),
            pipeline: http::pipeline(&c),
            gateway_id: d.gateway.id.clone(),
            started: std::time::Instant::now(),
        };
        tasks.spawn(http::serve(listener, site));
    }

    let engine_thread = {
        let d = d.clone();
        let links = Links {
            rt: tokio::runtime::Handle::current(),
            shutdown: shutdown.watch(),
            barriers: barriers.clone(),
            ack_pipe,
            intake_wake: intake_wake.clone(),
            backlog,
            src: src_client.clone(),
            spool: spool.clone(),
            spool_ready: spool_ready.clone(),
            stats_tx,
            snapshot: snapshot.clone(),
            clocks,
            discovery,
            counters: counters.clone(),
            marks,
        };
        let start = Start { engine, seq: last_seq, wal, recent };
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let r = EngineLoop::new(d, start, links).run(in_rx, engine_started_tx);
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
    for src in d.i2c.iter().cloned() {
        {
            let intake = intake.clone();
            let name = p.streams[src.stream].name.clone();
            std::thread::Builder::new()
                .name(format!("i2c-{name}"))
                .spawn(move || {
                    crate::sources::i2c::linux::run(
                        name,
                        src,
                        |topic, payload| {
                            let m =
                                message::Message::new(&topic, payload.as_bytes(), QoS::AtMostOnce, 0, false);
                            let msg =
                                Msg { m, decoded: None, recv_ms: now_ms(), at: Instant::now(), permit: None };
                            intake.pass_blocking(msg)
                        },
                        |n| {
                            intake.counters.i2c_errors.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        },
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
            systemd::ready();
            tracing::info!("subscribed; ready");
        }
        _ = &mut engine_done => {
            shutdown.advance(Stage::DrainUplink);
            return join_engine(engine_thread).await.and(Err(ServiceError::Config("the engine stopped".into())));
        }
        _ = signals.stop() => {
            tracing::info!("stopping before the broker answered");
            shutdown.advance(Stage::DrainUplink);
            return join_engine(engine_thread).await.map(|()| Ended::Stopped);
        }
    }
    let next = loop {
        tokio::select! {
            hup = signals.next() => if !hup { break None } else {
                match reload() {
                    Ok(next) => break Some(next),
                    Err(e) => tracing::error!("reload refused, the running config stays: {e}"),
                }
            },
            _ = &mut engine_done => {
                // the error is logged; systemd restarts the service (Restart=on-failure)
                systemd::stopping();
                let r = join_engine(engine_thread).await;
                return r.and(Err(ServiceError::Config("the engine stopped".into())));
            }
        }
    };
    let Some(next) = next else {
        tracing::info!("stopping: finishing in-flight work, checkpointing, draining the uplink");
        systemd::stopping();
        // the engine stops taking messages, sends the acknowledgements it still owes (the source
        // connection stays up for them), checkpoints; then the source connection goes
        shutdown.advance(Stage::StopIntake);
        let res = join_engine(engine_thread).await;
        let _ = src_client.try_disconnect();
        source.abort();
        shutdown.advance(Stage::DrainUplink);
        let _ = tokio::time::timeout(svc.shutdown + Duration::from_secs(1), uplink).await;
        if let Ok(mut s) = spool.lock() {
            let _ = s.sync();
        }
        return res.map(|()| Ended::Stopped);
    };
    // a reload: as a stop, up to the checkpoint; what is undelivered stays in the spool
    // for the next uplink (results in flight go again, with the same ids)
    tracing::info!("reloading the config: finishing in-flight work, checkpointing");
    systemd::reloading();
    shutdown.advance(Stage::StopIntake);
    let res = join_engine(engine_thread).await;
    let _ = src_client.try_disconnect();
    tasks.stop().await;
    if let Ok(mut s) = spool.lock() {
        s.sync().map_err(io_err("spool"))?;
    }
    res.map(|()| Ended::Reload(Box::new(next)))
}

/// The tasks one run of the pipeline spawned: aborted when it ends, so that
/// a reload finds its sockets and listeners free.
#[derive(Default)]
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Tasks {
    fn spawn<T: Send + 'static>(
        &mut self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        let h = tokio::spawn(f);
        self.0.push(h.abort_handle());
        h
    }

    /// Aborts every task and waits until each has ended.
    async fn stop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
        while self.0.iter().any(|h| !h.is_finished()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.0.clear();
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Deletes a file when dropped (the source filter's socket).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The signals the service answers, registered once for the whole process:
/// SIGTERM and SIGINT stop it, SIGHUP reloads the config.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, ServiceError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(io_err("SIGTERM handler"))?,
            int: signal(SignalKind::interrupt()).map_err(io_err("SIGINT handler"))?,
            hup: signal(SignalKind::hangup()).map_err(io_err("SIGHUP handler"))?,
        })
    }

    /// SIGTERM or SIGINT.
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }

    /// The next signal: `true` for SIGHUP, `false` for a stop.
    async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.term.recv() => false,
            _ = self.int.recv() => false,
            _ = self.hup.recv() => true,
        }
    }
}
