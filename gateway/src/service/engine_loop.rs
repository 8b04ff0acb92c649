//! The engine thread: the one place messages become results. Each turn it
//! takes a batch from the source channel, appends it to the write-ahead log
//! and fsyncs once, hands the broker the batch's acknowledgements (durable
//! mode: only now), runs the batch through the engine into the spool, ticks
//! the engine's clock, and on their intervals checkpoints and publishes
//! stats. Storage that is full pauses intake instead of failing.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, watch, Notify};

use super::acks::{AckPipe, Acks, BarrierState, Barriers, SharedBarriers, Ticket};
use super::clock::now_ms;
use super::commit::{Gathered, GroupCommit, Next};
use super::counters::ServiceCounters;
use super::error::{io_err, ServiceError};
use super::metrics;
use super::redelivery::Redeliveries;
use super::results::ResultWriter;
use super::shutdown::Stage;
use super::source::{Backlog, IntakeWake, Msg, BATCH};
use super::spool::Spool;
use super::systemd::{self, Watchdog};
use super::uplink::LatencyMarks;
use super::wal::{Wal, WRITE_AT};
use super::{checkpoint, frame, logging};
use crate::config::{Delivery, Deployment};
use edgejoin_engine::engine::Engine;

/// WAL bytes (ticks, acknowledgement records) kept in memory before they are written without a batch.
const WAL_IDLE_WRITE: usize = 64 << 10;

/// The engine thread's links to the rest of the service.
pub(super) struct Links {
    pub rt: tokio::runtime::Handle,
    pub shutdown: watch::Receiver<Stage>,
    pub barriers: Arc<SharedBarriers>,
    /// Acknowledgements go out through it (written by the source filter).
    pub ack_pipe: Arc<AckPipe>,
    pub intake_wake: Arc<IntakeWake>,
    /// Tells the uplink when the intake is behind.
    pub backlog: Arc<Backlog>,
    /// The source client: acknowledgements and barriers go out through it.
    pub src: AsyncClient,
    pub spool: Arc<Mutex<Spool>>,
    /// Wakes the uplink when the spool has new results.
    pub spool_ready: Arc<Notify>,
    pub stats_tx: mpsc::Sender<(String, Vec<u8>)>,
    /// What `/metrics` and `/status` are rendered from, refreshed at each stats interval.
    pub snapshot: Arc<Mutex<metrics::Snapshot>>,
    /// The live clock trace (`/clocks/` on the metrics address), when kept.
    pub clocks: super::http::Clocks,
    /// Home Assistant discovery, when on (the uplink publishes what it notes).
    pub discovery: Option<Arc<Mutex<super::homeassistant::Discovery>>>,
    pub counters: Arc<ServiceCounters>,
    pub marks: Arc<LatencyMarks>,
}

/// What start-up hands the engine thread.
pub(super) struct Start {
    pub engine: Engine,
    /// Log position of the last input.
    pub seq: u64,
    pub wal: Option<Wal>,
    pub recent: Redeliveries,
}

/// Drops from a new batch the broker's redeliveries of messages logged
/// before (a crash, a reconnect), also of one earlier in this same batch; a
/// redelivery of a logged message is owed its acknowledgement again, one of a
/// message in this batch shares the acknowledgement its original gets once
/// the batch is fsynced. Notes each kept message at the log position it will
/// get. Returns how many were dropped.
fn drop_redeliveries(
    batch: &mut Vec<Msg>,
    recent: &mut Redeliveries,
    acks: &mut Acks,
    last_seq: u64,
    durable: bool,
) -> u64 {
    let (mut kept, mut skipped) = (0u64, 0u64);
    batch.retain(|b| match recent.original(b.m.dup, b.m.pkid, b.m.topic(), b.m.payload()) {
        Some(pos) => {
            skipped += 1;
            if durable && b.m.qos != QoS::AtMostOnce && pos <= last_seq {
                // owed once the log's fsync covers the original, after those held before it
                acks.hold(b.m.pkid, last_seq);
                // the entry lives until a barrier proves this acknowledgement processed, not the
                // first one's (lost with a connection, as the redelivery shows)
                recent.again(b.m.pkid, last_seq);
            }
            false
        }
        None => {
            kept += 1;
            recent.logged(b.m.pkid, last_seq + kept, b.m.topic(), b.m.payload());
            true
        }
    });
    skipped
}

/// Most messages processed between two fsyncs of the log (the QoS 1 ones
/// among them bounded by [`UNACKED`]): with at most 100 fsyncs a second, a
/// drain is bounded at 1,638,400 messages a second. At 8,192 the
/// bench's drain was held at that bound (~820,000 msg/s) once the engine
/// got faster than 1.2 µs a message.
const UNSYNCED: usize = 16 * BATCH;

/// Most QoS 1 messages processed between two fsyncs: each holds an entry in
/// the acknowledgement ledger and the redelivery ledger until the broker
/// confirms its PUBACK, so they are memory (the bench's QoS 1 drain peaked
/// 1.4 MiB above its QoS 0 one at 16,384); QoS 0 messages hold neither.
const UNACKED: usize = 8 * BATCH;

/// What waits for the log's next fsync: messages processed since the last
/// one (their acknowledgements and results held), redeliveries (their
/// acknowledgements held) and a tick that emitted results (held).
struct Waiting {
    processed: usize,
    redelivered: usize,
    ticks: usize,
    /// When the broker delivered the first and the last of them.
    first: Instant,
    last: Instant,
    /// The oldest receive time among them (the processing-delay gauge).
    oldest_recv_ms: i64,
}

impl Waiting {
    fn new(first: Instant) -> Self {
        Waiting { processed: 0, redelivered: 0, ticks: 0, first, last: first, oldest_recv_ms: i64::MAX }
    }

    fn len(&self) -> usize {
        self.processed + self.redelivered + self.ticks
    }
}

/// What the turn does after trying to commit.
enum Stored {
    Yes,
    /// The state directory is full: the turn starts over (intake paused).
    Paused,
    /// Full while stopping: the loop ends, what is not logged stays with the broker.
    GiveUp,
}

/// The engine thread: takes batches of messages from the source, logs them
/// (one fsync), acknowledges them, runs them through the engine into the
/// spool; ticks, checkpoints, publishes stats, pings the watchdog. One method
/// per step of a turn; [`EngineLoop::run`] is the turn.
pub(super) struct EngineLoop {
    d: Deployment,
    engine: Engine,
    seq: u64,
    wal: Option<Wal>,
    recent: Redeliveries,
    io: Links,
    durable: bool,
    batch: Vec<Msg>,
    /// The batch's share of the intake budget (its messages' shares, merged).
    permits: Option<tokio::sync::OwnedSemaphorePermit>,
    /// What waits for the log's next fsync (none: everything processed is durable).
    waiting: Option<Waiting>,
    acks: Acks,
    /// Messages taken from the intake (and checked for redeliveries): a
    /// barrier's answer counts once this reaches its mark.
    checked: u64,
    /// Source connections seen ([`Self::notice_reconnect`]).
    connection: u64,
    commit: GroupCommit,
    pause: Pause,
    out: ResultWriter,
    stats_topic: String,
    started_at: Instant,
    last_tick: Instant,
    last_ckpt: Instant,
    last_stats: Instant,
    watchdog: Watchdog,
    processed_at_stats: u64,
    /// Each stream's received count at the last stats interval (its rate on `/status`).
    stream_received_at_stats: Vec<u64>,
    spool_losses: (u64, u64),
    spool_log: logging::Every,
    skips: logging::SkipLog,
}

impl EngineLoop {
    pub(super) fn new(d: Deployment, start: Start, io: Links) -> Self {
        let now = Instant::now();
        let skips = logging::SkipLog::new(start.engine.pipeline().streams.len());
        let out = ResultWriter::new(&d, io.spool.clone(), io.counters.clone())
            .tracing_clocks(io.clocks.clone())
            .announcing(io.discovery.clone());
        let commit = GroupCommit::new(d.service.commit_delay, UNSYNCED);
        EngineLoop {
            durable: d.service.delivery == Delivery::Durable,
            stats_topic: format!("{}/{}", d.upstream.topic_prefix, d.service.stats_topic),
            d,
            engine: start.engine,
            seq: start.seq,
            wal: start.wal,
            recent: start.recent,
            io,
            batch: Vec::with_capacity(BATCH),
            permits: None,
            waiting: None,
            acks: Acks::with_capacity(AckPipe::HIGH + UNACKED + 2 * BATCH),
            checked: 0,
            connection: 0,
            commit,
            pause: Pause::new(),
            out,
            started_at: now,
            last_tick: now,
            last_ckpt: now,
            last_stats: now,
            watchdog: Watchdog::from_env(),
            processed_at_stats: 0,
            stream_received_at_stats: Vec::new(),
            spool_losses: (0, 0),
            spool_log: logging::Every::new(Duration::from_secs(30)),
            skips,
        }
    }

    pub(super) fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        started: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), ServiceError> {
        // `/metrics` and `/status` have every series from the first scrape (the service is
        // ready after this), not from the first stats interval
        self.render_metrics(0.0, None);
        let _ = started.send(());
        let mut stop = false;
        // `/healthz` reads the beat; the end is said however the loop ends
        struct Ended<'a>(&'a ServiceCounters);
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                self.0.engine_ended.store(1, Ordering::Relaxed);
            }
        }
        let counters = self.io.counters.clone();
        let _ended = Ended(&counters);
        counters.beat();
        while !stop {
            if self.durable {
                self.send_acks()?;
            }
            stop = *self.io.shutdown.borrow() >= Stage::StopIntake;
            if !stop && !self.pause.active() && self.room() {
                stop = self.take_batch(&mut rx);
                self.process_batch()?;
            }
            self.note_backlog(rx.len());
            match self.commit(stop, rx.len())? {
                Stored::Yes => {}
                Stored::Paused => continue,
                Stored::GiveUp => break,
            }
            if stop {
                // what is left in the channel was not logged: the broker sends it again next time
                rx.close();
                self.last_acks();
            }
            if self.waiting.is_none() {
                // everything processed is in the fsynced log: a checkpoint covers only what the
                // log holds, time may pass, results go out
                if self.last_ckpt.elapsed() >= self.d.service.checkpoint && !stop {
                    self.last_ckpt = Instant::now();
                    self.checkpoint();
                }
                self.tick(stop)?;
                if stop && self.waiting.is_some() {
                    // the last tick's results wait for its fsync: now, not at a next turn
                    if let Stored::GiveUp | Stored::Paused = self.commit(true, 0)? {
                        break;
                    }
                }
                self.flush_spool()?;
                self.io.spool_ready.notify_one();
                if stop {
                    self.checkpoint();
                }
            }
            if self.last_stats.elapsed() >= self.d.service.stats || stop {
                self.stats();
            }
            self.watchdog.ping();
            self.io.counters.beat();
        }
        tracing::info!(
            "engine stopped at input {}: {} messages processed, {} redeliveries skipped",
            self.seq,
            self.io.counters.processed.load(Ordering::Relaxed),
            self.io.counters.redeliveries_skipped.load(Ordering::Relaxed)
        );
        Ok(())
    }

    /// Queues the acknowledgements owed for the source filter to write, in
    /// order (while its queue is full the rest wait for the next turn,
    /// counted in `acks_deferred`: a lost PUBACK would hold the broker's
    /// in-flight window until the next reconnect); takes a barrier's answer
    /// and sends the next barrier when one is due.
    fn send_acks(&mut self) -> Result<(), ServiceError> {
        self.hand_acks();
        self.notice_reconnect()?;
        let barriers = &self.io.barriers;
        let checked = self.checked;
        if let Some(through) = self.acks.answer(|t| barriers.state(t, checked)) {
            // a reconnect just before the answer is noticed before the answer is applied
            self.notice_reconnect()?;
            tracing::debug!(
                "barrier answered: acknowledgements through input {through} are processed by the broker"
            );
            // the broker will not send these again: their ids may now carry new messages
            self.recent.confirmed(through);
            if let Some(w) = self.wal.as_mut() {
                w.append_acked(through).map_err(io_err("write-ahead log"))?;
            }
        }
        let now = Instant::now();
        if self.acks.barrier_due(now) {
            if let Some(ticket) = self.send_barrier() {
                self.acks.barrier_sent(ticket, now);
            }
        }
        Ok(())
    }

    /// Pins the unconfirmed redelivery entries when the source connection
    /// changed since the last look (and logs that, so a recovery pins them too).
    fn notice_reconnect(&mut self) -> Result<(), ServiceError> {
        let now = self.io.barriers.connections();
        if now != self.connection {
            self.connection = now;
            self.recent.pin();
            if let Some(w) = self.wal.as_mut() {
                w.append_reconnected().map_err(io_err("write-ahead log"))?;
            }
        }
        Ok(())
    }

    /// Sends a barrier through the source client; its ticket, if the client took it.
    fn send_barrier(&self) -> Option<Ticket> {
        self.io.src.try_unsubscribe(Barriers::FILTER).ok()?;
        Some(self.io.barriers.sent())
    }

    fn hand_acks(&mut self) {
        if self.io.ack_pipe.push(&mut self.acks) {
            self.io.counters.acks_deferred.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits for messages, then takes what waits in the intake (up to a
    /// batch) and drops redeliveries of messages logged before (acknowledged
    /// again once the log is fsynced, not processed twice). With nothing
    /// waiting for an fsync it waits for the first message at most a tick
    /// (1 ms while acknowledgements wait for room in the client; until a
    /// barrier's answer while one is out); while processed messages wait for
    /// their fsync it waits as the group commit says ([`GroupCommit`]): until
    /// the commit is due or enough more messages are queued. Returns whether
    /// the service is stopping.
    fn take_batch(&mut self, rx: &mut mpsc::Receiver<Msg>) -> bool {
        let mut shutdown = self.io.shutdown.clone();
        let mut stop = false;
        if rx.is_empty() {
            match self.waiting.as_ref().map(|w| self.gathered(w)) {
                None => {
                    let wait = if self.acks.owed() > 0 {
                        Duration::from_millis(1)
                    } else if self.acks.unconfirmed() {
                        self.d.service.tick.min(Acks::BARRIER_EVERY)
                    } else {
                        self.d.service.tick
                    };
                    let barriers = self.io.barriers.clone();
                    let first = self.io.rt.block_on(async {
                        tokio::select! {
                            m = tokio::time::timeout(wait, rx.recv()) => m.ok(),
                            _ = shutdown.wait_for(|s| *s >= Stage::StopIntake) => Some(None),
                            _ = barriers.changed.notified() => None,
                        }
                    });
                    match first {
                        Some(Some(m)) => {
                            self.checked += 1;
                            self.batch.push(m);
                            self.hold_permits(self.batch.len() - 1);
                        }
                        Some(None) => stop = true,
                        None => {}
                    }
                }
                Some(gathered) => {
                    if let Next::Wait { until, more } = self.commit.next(Instant::now(), gathered) {
                        let wake = &self.io.intake_wake;
                        // no more than a batch: the intake may not hold `more` (its slots, its
                        // byte budget); the source would wait for room, the engine for the deadline
                        let more = more.min(BATCH);
                        wake.at.store(more, Ordering::Relaxed);
                        // what arrived before `at` was set wakes it through the length check
                        if rx.len() < more {
                            stop = self.io.rt.block_on(async {
                                tokio::select! {
                                    _ = tokio::time::timeout_at(until.into(), wake.notify.notified()) => false,
                                    _ = shutdown.wait_for(|s| *s >= Stage::StopIntake) => true,
                                }
                            });
                        }
                        wake.at.store(usize::MAX, Ordering::Relaxed);
                    }
                }
            }
        }
        stop |= self.drain(rx);
        let skipped =
            drop_redeliveries(&mut self.batch, &mut self.recent, &mut self.acks, self.seq, self.durable);
        if skipped > 0 {
            self.io.counters.redeliveries_skipped.fetch_add(skipped, Ordering::Relaxed);
            if self.durable && self.acks.held() > 0 {
                // their acknowledgements wait for the fsync like those of new messages
                self.waiting.get_or_insert_with(|| Waiting::new(Instant::now())).redelivered +=
                    skipped as usize;
            }
        }
        stop
    }

    /// Takes what waits in the intake, up to a batch (and the room left
    /// before the next fsync), in one receive (the channel's room is given
    /// back at once: the source filter waiting on a full channel is woken
    /// once, not at every message); whether the intake is closed.
    fn drain(&mut self, rx: &mut mpsc::Receiver<Msg>) -> bool {
        let from = self.batch.len();
        let room = UNSYNCED
            .saturating_sub(self.waiting.as_ref().map_or(0, Waiting::len))
            .min(UNACKED.saturating_sub(self.acks.held()));
        let ready = rx.len().min(BATCH - from).min(room);
        let closed = if ready > 0 {
            // messages are waiting: this returns at once
            let n = self.io.rt.block_on(rx.recv_many(&mut self.batch, ready));
            self.checked += n as u64;
            n == 0
        } else {
            self.batch.len() < BATCH && rx.is_closed() && rx.is_empty()
        };
        self.hold_permits(from);
        closed
    }

    /// Merges the intake-budget shares of the messages taken from `from` on
    /// into the batch's one: released together when the batch is done, one
    /// wake-up of the source filter instead of one per message.
    fn hold_permits(&mut self, from: usize) {
        for b in &mut self.batch[from..] {
            if let Some(p) = b.permit.take() {
                match self.permits.as_mut() {
                    Some(all) => all.merge(p),
                    None => self.permits = Some(p),
                }
            }
        }
    }

    /// Tells the uplink whether the intake is behind: a whole batch still
    /// waits after this turn's take (a backlog: at a steady rate, however
    /// high, a turn takes what waits; the source filter says the other sign
    /// of one), and whether there is room for a hold: intake is not paused,
    /// and the spool is under half its budget (results never wait for room
    /// that the uplink would make). A whole batch taken is no backlog by itself: at 17,000
    /// messages a second one commit's worth is (the bench's latency p99 went
    /// from 97 to 180 ms while that held the uplink).
    fn note_backlog(&self, queued: usize) {
        let room = !self.pause.active() && self.io.spool.lock().is_ok_and(|s| s.under_half());
        self.io.backlog.engine(queued >= BATCH, room);
    }

    /// Whether intake may take more before the next fsync: the messages
    /// processed for it are bounded ([`UNSYNCED`]; their results wait in the
    /// spool's file, not in memory), the QoS 1 ones more tightly ([`UNACKED`]).
    fn room(&self) -> bool {
        self.waiting.as_ref().is_none_or(|w| w.len() < UNSYNCED) && self.acks.held() < UNACKED
    }

    /// What waits for the fsync, as the group commit sees it.
    fn gathered(&self, w: &Waiting) -> Gathered {
        Gathered {
            len: w.len(),
            unacked: self.acks.held() + self.acks.owed(),
            first: w.first,
            last: w.last,
            full: !self.room(),
        }
    }

    /// Appends the batch to the write-ahead log (written as its buffer fills,
    /// fsynced by [`commit`](Self::commit)) and runs it through the engine into
    /// the spool. In durable mode their acknowledgements and results are held
    /// until the fsync: nothing reaches the broker or the upstream before the
    /// log holds what it came from.
    fn process_batch(&mut self) -> Result<(), ServiceError> {
        let Some(first_at) = self.batch.first().map(|b| b.at) else { return Ok(()) };
        let first = self.seq + 1;
        if let Some(w) = self.wal.as_mut() {
            for (i, b) in self.batch.iter().enumerate() {
                w.append_message(first + i as u64, b.recv_ms, b.m.pkid, b.m.topic(), b.m.payload())
                    .map_err(io_err("write-ahead log"))?;
                if w.pending_bytes() >= WRITE_AT {
                    // a failure (a full disk) leaves them pending: the commit retries and pauses
                    let _ = w.write();
                }
            }
            self.out.hold();
            for (i, b) in self.batch.iter().enumerate() {
                if b.m.qos != QoS::AtMostOnce {
                    self.acks.hold(b.m.pkid, first + i as u64);
                }
            }
        }
        let mut oldest = i64::MAX;
        for i in 0..self.batch.len() {
            self.seq += 1;
            let b = &self.batch[i];
            oldest = oldest.min(b.recv_ms);
            let mut sink = self.out.sink(self.seq, None);
            let skipped = match &b.decoded {
                Some(d) => {
                    self.engine.apply(b.recv_ms, d, &mut sink);
                    None
                }
                None => self.engine.ingest(b.recv_ms, b.m.topic(), b.m.payload(), &mut sink),
            };
            if let Some((first, end)) = sink.appended {
                self.io.marks.mark(first, end, b.at);
            }
            if let Some(s) = skipped {
                let name = &self.engine.pipeline().streams[s.stream].name;
                if let Some(line) = self.skips.note(s, name, b.m.topic(), b.m.payload()) {
                    tracing::warn!("{line}");
                }
            }
        }
        let w = self.waiting.get_or_insert_with(|| Waiting::new(first_at));
        w.processed += self.batch.len();
        w.last = self.batch.last().map_or(w.last, |b| b.at);
        w.oldest_recv_ms = w.oldest_recv_ms.min(oldest);
        self.batch.clear();
        self.permits = None; // and with it, the messages' share of the intake budget
        Ok(())
    }

    /// When the group commit is due (at once in fast mode, or when intake
    /// has no room left, or stopping): fsyncs the log, then owes the held
    /// acknowledgements and lets the uplink read the held results (already
    /// in the spool's file). Pauses intake while the state directory is full.
    fn commit(&mut self, stop: bool, queued: usize) -> Result<Stored, ServiceError> {
        let Some(w) = self.waiting.as_ref() else { return self.idle_write(stop, queued) };
        if self.durable && !stop && !self.pause.active() {
            let now = Instant::now();
            if let Next::Wait { until, .. } = self.commit.next(now, self.gathered(w)) {
                if self.room() {
                    return Ok(Stored::Yes);
                }
                // nothing more can be taken before this fsync: intake waits for its gap
                std::thread::sleep(until.saturating_duration_since(now));
            }
        }
        let started = Instant::now();
        let unacked = self.acks.held() + self.acks.owed();
        let res = (|| {
            if let Some(w) = self.wal.as_mut() {
                w.sync().map_err(|e| ("write-ahead log", e))?;
            }
            self.out.release();
            self.io.spool.lock().expect("spool lock").flush().map_err(|e| ("spool", e))
        })();
        match res {
            Ok(()) => {
                self.pause.resume(&self.io.counters);
                let w = self.waiting.take().expect("checked above");
                let c = self.io.counters.clone();
                if self.durable {
                    tracing::debug!(
                        "group commit: {} messages logged, fsync {:.2} ms, {} acknowledgements owed",
                        w.len(),
                        started.elapsed().as_secs_f64() * 1e3,
                        self.acks.held() + self.acks.owed()
                    );
                    self.acks.synced();
                    self.hand_acks();
                    self.commit.synced(started, unacked);
                    c.commits.fetch_add(1, Ordering::Relaxed);
                    c.broker_window.store(self.commit.window() as u64, Ordering::Relaxed);
                }
                if w.processed > 0 {
                    c.processed.fetch_add(w.processed as u64, Ordering::Relaxed);
                    let now = now_ms();
                    c.last_processed_unix_ms.store(now as u64, Ordering::Relaxed);
                    c.processing_delay_ms
                        .store(now.saturating_sub(w.oldest_recv_ms).max(0) as u64, Ordering::Relaxed);
                }
                Ok(Stored::Yes)
            }
            Err((what, e)) => self.storage_failed(what, e, stop, queued),
        }
    }

    /// A turn with nothing waiting for an fsync: log bytes (ticks,
    /// acknowledgement records) are written once they are many, and the spool
    /// flushed.
    fn idle_write(&mut self, stop: bool, queued: usize) -> Result<Stored, ServiceError> {
        let res = (|| {
            if let Some(w) = self.wal.as_mut() {
                if w.pending_bytes() >= WAL_IDLE_WRITE {
                    w.write().map_err(|e| ("write-ahead log", e))?;
                }
            }
            self.io.spool.lock().expect("spool lock").flush().map_err(|e| ("spool", e))
        })();
        match res {
            Ok(()) => {
                self.pause.resume(&self.io.counters);
                Ok(Stored::Yes)
            }
            Err((what, e)) => self.storage_failed(what, e, stop, queued),
        }
    }

    /// Writing the state directory failed: when it is full, intake pauses
    /// (the turn starts over after a while) — or, stopping, the loop ends
    /// and what is not in the fsynced log stays with the broker.
    fn storage_failed(
        &mut self,
        what: &'static str,
        e: io::Error,
        stop: bool,
        queued: usize,
    ) -> Result<Stored, ServiceError> {
        if !frame::is_storage_full(&e) {
            return Err(ServiceError::StateDir {
                path: self.d.gateway.state_dir.join(if what == "spool" { "spool" } else { "wal" }),
                source: e,
            });
        }
        let unlogged = self.waiting.as_ref().map_or(0, |w| w.processed + w.redelivered);
        self.pause.full(&e, what, unlogged + queued, &self.io.counters);
        if stop {
            tracing::warn!(
                "stopping while state_dir is full: the messages not yet logged stay with the broker"
            );
            return Ok(Stored::GiveUp);
        }
        self.watchdog.ping();
        self.io.counters.beat();
        self.render_metrics(0.0, None);
        std::thread::sleep(Duration::from_millis(500));
        Ok(Stored::Paused)
    }

    /// Stopping: the acknowledgements still owed go out (the source
    /// connection stays up for them, 2 s at most), and a last barrier
    /// confirms them.
    fn last_acks(&mut self) {
        if !self.durable {
            return;
        }
        let until = Instant::now() + Duration::from_secs(2);
        while self.acks.owed() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
            self.hand_acks();
        }
        if self.acks.unconfirmed() && self.pass_barrier(Duration::from_secs(1)) {
            // what went out on a connection before the last is not proven by this barrier
            if let Err(e) = self.notice_reconnect() {
                tracing::warn!("{e}");
                return;
            }
            let through = self.acks.all_confirmed();
            self.recent.confirmed(through);
        }
    }

    /// Sends a barrier and waits up to `timeout` for its answer. Stopping,
    /// the engine takes no more messages: an answer after messages it will
    /// not check (redeliveries, perhaps) proves nothing, and the entries stay
    /// for the next start.
    fn pass_barrier(&self, timeout: Duration) -> bool {
        let Some(ticket) = self.send_barrier() else { return false };
        let barriers = &self.io.barriers;
        let deadline = tokio::time::Instant::now() + timeout;
        self.io.rt.block_on(async {
            loop {
                match barriers.state(ticket, self.checked) {
                    BarrierState::Answered => return true,
                    BarrierState::Void | BarrierState::Unchecked => return false,
                    BarrierState::Waiting => {}
                }
                if tokio::time::timeout_at(deadline, barriers.changed.notified()).await.is_err() {
                    return barriers.state(ticket, self.checked) == BarrierState::Answered;
                }
            }
        })
    }

    /// Time passing alone (idleness, ticks), logged like an input. Its
    /// results (windows an idle input lets close, join timeouts) wait for the
    /// fsync of its log record like a batch's: upstream must not see a row
    /// whose tick a power cut could take from the log, and late readings
    /// after a restart could then change.
    fn tick(&mut self, stop: bool) -> Result<(), ServiceError> {
        if self.last_tick.elapsed() < self.d.service.tick && !stop {
            return Ok(());
        }
        self.last_tick = Instant::now();
        self.seq += 1;
        let now = now_ms();
        // durable mode (fast mode has no log, and results do not wait)
        let logged = self.wal.is_some();
        if let Some(w) = self.wal.as_mut() {
            w.append_tick(self.seq, now).map_err(io_err("write-ahead log"))?;
            self.out.hold();
        }
        let mut sink = self.out.sink(self.seq, None);
        self.engine.tick(now, &mut sink);
        if logged {
            if sink.appended.is_some() {
                self.waiting.get_or_insert_with(|| Waiting::new(self.last_tick)).ticks += 1;
            } else {
                self.out.release();
            }
        }
        Ok(())
    }

    /// Hands the turn's results to the uplink, deletes what it delivered, saves
    /// its position now and then.
    fn flush_spool(&mut self) -> Result<(), ServiceError> {
        let mut spool = self.io.spool.lock().expect("spool lock");
        if let Err(e) = spool.maintain() {
            // what was delivered since the last save is sent again after a restart (same ids)
            if let Some(more) = self.spool_log.ready() {
                tracing::warn!("spool: cannot save the delivered position: {e}{}", logging::more(more));
            }
        }
        match spool.flush() {
            Ok(()) => Ok(()),
            // kept in memory; the next turn pauses intake until it is written
            Err(e) if frame::is_storage_full(&e) => Ok(()),
            Err(e) => Err(ServiceError::StateDir { path: self.d.gateway.state_dir.join("spool"), source: e }),
        }
    }

    /// Saves a checkpoint (and lets the log before it go). A failure is
    /// logged and counted; the log keeps everything until the next one.
    fn checkpoint(&mut self) {
        let started = Instant::now();
        let dir = &self.d.gateway.state_dir;
        // results of everything the checkpoint covers must be durable before the log goes
        let res = self.io.spool.lock().expect("spool lock").sync().map_err(|e| ("spool", e)).and_then(|()| {
            // with the messages the broker may still send again
            checkpoint::save(dir, &self.engine, self.seq, self.recent.live()).map_err(|e| ("checkpoint", e))
        });
        let c = &self.io.counters;
        match res {
            Ok(bytes) => {
                c.checkpoints.fetch_add(1, Ordering::Relaxed);
                c.checkpoint_bytes.store(bytes, Ordering::Relaxed);
                tracing::debug!(
                    "checkpoint at input {}: {bytes} bytes in {:.1} ms",
                    self.seq,
                    started.elapsed().as_secs_f64() * 1e3
                );
                if let Some(w) = self.wal.as_mut() {
                    if let Err(e) = w.checkpointed(self.seq) {
                        tracing::error!("write-ahead log: cannot start a segment after the checkpoint: {e}");
                    }
                }
            }
            Err((what, e)) => {
                c.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!("checkpoint failed ({what}: {e}); the write-ahead log keeps everything until the next one");
            }
        }
    }

    /// The stats message (upstream), the Prometheus text, the systemd status line.
    fn stats(&mut self) {
        let streams = &self.engine.pipeline().streams;
        for line in self.skips.summaries(Instant::now(), |i| streams[i].name.clone()) {
            tracing::warn!("{line}");
        }
        let secs = self.last_stats.elapsed().as_secs_f64().max(1e-3);
        self.last_stats = Instant::now();
        let c = &self.io.counters;
        let processed = c.processed.load(Ordering::Relaxed);
        let rate = (processed - self.processed_at_stats) as f64 / secs;
        self.processed_at_stats = processed;
        let (depth, disk, dropped, refused, state_bytes) = {
            let s = self.io.spool.lock().expect("spool lock");
            (s.depth(), s.disk_bytes(), s.dropped, s.refused, s.bytes_written)
        };
        if (dropped, refused) != self.spool_losses {
            if let Some(more) = self.spool_log.ready() {
                tracing::warn!(
                    "spool full ({} bytes): {} results dropped by drop_oldest and {} refused by refuse_new so far{}",
                    self.d.upstream.spool,
                    dropped,
                    refused,
                    logging::more(more)
                );
            }
            self.spool_losses = (dropped, refused);
        }
        c.spool_depth.store(depth, Ordering::Relaxed);
        c.spool_bytes.store(disk, Ordering::Relaxed);
        c.spool_dropped.store(dropped, Ordering::Relaxed);
        c.spool_refused.store(refused, Ordering::Relaxed);
        c.state_bytes_written
            .store(state_bytes + self.wal.as_ref().map_or(0, |w| w.bytes_written), Ordering::Relaxed);
        if let Some(Ok(d)) = self.io.discovery.as_ref().map(|d| d.lock()) {
            c.homeassistant_unannounced.store(d.unannounced, Ordering::Relaxed);
        }
        if let Some(Ok(mut t)) = self.io.clocks.as_ref().map(|t| t.lock()) {
            t.set_reports(self.engine.skew_reports().iter().map(|(n, r)| (n.as_str(), *r)));
        }
        let samples = metrics::samples(&self.engine, c, rate, self.started_at.elapsed());
        let snap = metrics::stats_json(&samples);
        let results = c.results.load(Ordering::Relaxed);
        // `/metrics` first: whoever has read a stats message finds it there at least as fresh
        self.render_metrics(secs, Some(samples));
        let _ = self.io.stats_tx.try_send((self.stats_topic.clone(), snap.into_bytes()));
        systemd::status(&format!("{rate:.0} msg/s, {results} results, spool depth {depth}"));
    }

    /// Refreshes the snapshot `/metrics` and `/status` read; `secs` since
    /// the last (0: not a stats interval, the stream rates stay).
    fn render_metrics(&mut self, secs: f64, samples: Option<super::registry::Samples>) {
        let samples = samples.unwrap_or_else(|| {
            metrics::samples(&self.engine, &self.io.counters, 0.0, self.started_at.elapsed())
        });
        let streams = &self.engine.pipeline().streams;
        let received: Vec<u64> =
            (0..streams.len()).map(|i| self.engine.stream_counters(i).received).collect();
        let rates = (secs > 0.0).then(|| {
            let prev = &self.stream_received_at_stats;
            let rates: Vec<(String, f64)> = streams
                .iter()
                .zip(&received)
                .enumerate()
                .map(|(i, (s, &n))| {
                    let was = prev.get(i).copied().unwrap_or(0).min(n);
                    (s.name.clone(), (n - was) as f64 / secs)
                })
                .collect();
            self.stream_received_at_stats = received;
            rates
        });
        if let Ok(mut m) = self.io.snapshot.lock() {
            m.samples = samples;
            if let Some(r) = rates {
                m.stream_rates = r;
            }
        }
    }
}

/// Intake paused because the state directory is full: said when it starts,
/// every few seconds while it lasts, and when it ends.
struct Pause {
    since: Option<Instant>,
    log: logging::Every,
}

impl Pause {
    fn new() -> Self {
        Pause { since: None, log: logging::Every::new(Duration::from_secs(5)) }
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
                self.log = logging::Every::new(Duration::from_secs(5));
                *self.since.insert(Instant::now())
            }
        };
        if self.log.ready().is_some() {
            tracing::warn!(
                "state_dir full ({what}: {e}): intake paused for {:.0} s, {waiting} messages not yet acknowledged wait with the broker; free some space and it resumes",
                since.elapsed().as_secs_f64()
            );
            systemd::status("paused: state_dir full");
        }
    }

    fn resume(&mut self, counters: &ServiceCounters) {
        if let Some(at) = self.since.take() {
            counters.storage_paused.store(0, Ordering::Relaxed);
            tracing::info!("state_dir has room again after {:.1} s: resuming", at.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::message::Message;

    fn msg(pkid: u16, dup: bool, payload: &str) -> Msg {
        let m = Message::new("s/a", payload.as_bytes(), QoS::AtLeastOnce, pkid, dup);
        Msg { m, decoded: None, recv_ms: 0, at: Instant::now(), permit: None }
    }

    #[test]
    fn a_redelivery_of_a_logged_message_is_acknowledged_again_not_processed() {
        let (mut recent, mut acks) = (Redeliveries::default(), Acks::default());
        recent.logged(5, 3, "s/a", b"x");
        let mut batch = vec![msg(5, true, "x"), msg(6, false, "y")];
        assert_eq!(drop_redeliveries(&mut batch, &mut recent, &mut acks, 3, true), 1);
        assert_eq!(batch.len(), 1);
        // owed once the log's next fsync covers everything logged so far, not before
        assert_eq!((acks.held(), acks.next_ack()), (1, None));
        acks.synced();
        assert_eq!(acks.next_ack(), Some(5));
    }

    #[test]
    fn a_redelivery_within_one_batch_is_processed_once_and_acknowledged_only_after_the_fsync() {
        let (mut recent, mut acks) = (Redeliveries::default(), Acks::default());
        let mut batch = vec![msg(5, false, "x"), msg(5, true, "x"), msg(7, false, "z")];
        assert_eq!(drop_redeliveries(&mut batch, &mut recent, &mut acks, 10, true), 1);
        assert_eq!(batch.iter().map(|b| b.m.pkid).collect::<Vec<_>>(), [5, 7]);
        // nothing is owed before the batch is in the log: the original's own acknowledgement answers both
        assert_eq!((acks.owed(), acks.held()), (0, 0));
        // the kept messages are noted at the positions they are logged at
        assert_eq!(recent.original(true, 5, "s/a", b"x"), Some(11));
        assert_eq!(recent.original(true, 7, "s/a", b"z"), Some(12));
    }

    #[test]
    fn a_redelivered_message_is_recognised_until_its_second_acknowledgement_is_confirmed() {
        let (mut recent, mut acks) = (Redeliveries::default(), Acks::default());
        recent.logged(5, 3, "s/a", b"x");
        // its first acknowledgement was lost with a connection: the broker sends it again at input 8
        let mut batch = vec![msg(5, true, "x")];
        assert_eq!(drop_redeliveries(&mut batch, &mut recent, &mut acks, 8, true), 1);
        // a barrier handed after the first acknowledgement (position 3), before the second (8)
        recent.confirmed(3);
        let mut again = vec![msg(5, true, "x")];
        assert_eq!(
            drop_redeliveries(&mut again, &mut recent, &mut acks, 9, true),
            1,
            "the second acknowledgement is not proven yet: still a redelivery"
        );
        recent.confirmed(9);
        assert_eq!(recent.original(true, 5, "s/a", b"x"), None);
    }

    #[test]
    fn a_message_without_dup_is_always_new() {
        let (mut recent, mut acks) = (Redeliveries::default(), Acks::default());
        recent.logged(5, 3, "s/a", b"x");
        let mut batch = vec![msg(5, false, "x")];
        assert_eq!(drop_redeliveries(&mut batch, &mut recent, &mut acks, 3, true), 0);
        assert_eq!(batch.len(), 1);
    }
}
