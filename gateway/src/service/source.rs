//! The source connection: one MQTT session with `[source]` (QoS 1,
//! persistent session, manual acknowledgements in durable mode) through the
//! filter that cuts oversized payloads ([`super::source_proxy`]);
//! subscriptions from the streams' topic filters; reconnects with jittered
//! backoff. Messages go from the filter to the engine thread ([`Intake`])
//! over a channel bounded by count and by bytes (back-pressure: when the
//! engine is behind, the broker holds the messages); the MQTT client sees
//! every other packet. The client's UNSUBSCRIBEs and the broker's
//! UNSUBACKs are the acknowledgement barriers ([`super::acks`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgejoin_engine::route::{Decoded, Router};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS};
use tokio::sync::Notify;

use super::acks::SharedBarriers;
use super::clock::now_ms;
use super::counters::ServiceCounters;
use super::logging;
use super::message::Message;
use crate::backoff::Backoff;
use crate::config::Config;

/// Most messages the engine thread takes from the intake at a time (logs
/// and processes at once; one fsync carries up to 16 batches,
/// `engine_loop::UNSYNCED`). Its slots ([`Msg`], 144 bytes each) are the batch's
/// memory; 1,024 drains the bench's backlog as fast as 2,048 did.
pub(super) const BATCH: usize = 1024;

/// Messages waiting for the engine thread, at most (two batches: the source
/// fills the channel while the engine processes one — a smaller channel
/// slows a drain; the broker holds the rest). Each slot costs 144 bytes
/// once a backlog filled it.
pub(super) const INTAKE: usize = 2048;

/// Capacity of the source client's request queue (acknowledgements,
/// subscriptions, barriers). More acknowledgements than fit wait in the
/// engine thread's ledger (16 bytes each, not a ~100-byte request) and are
/// handed over as the client takes them, every millisecond while any wait.
pub(super) const SOURCE_REQUESTS: usize = 512;

/// Wakes the engine thread while it gathers a batch (group commit) once the
/// intake holds as many messages as it asked for, not at every message.
#[derive(Debug)]
pub(super) struct IntakeWake {
    /// Messages queued at which to wake the engine thread (`usize::MAX`: it is not waiting).
    pub at: AtomicUsize,
    pub notify: Notify,
}

impl Default for IntakeWake {
    fn default() -> Self {
        IntakeWake { at: AtomicUsize::new(usize::MAX), notify: Notify::new() }
    }
}

/// Whether the intake is behind — a backlog after an outage or a restart:
/// either a whole batch still waits after the engine thread took its own
/// (the engine is what is slow), or the source filter's last read filled its
/// buffer with many messages (the broker has more waiting for it) — while intake is not paused
/// and the spool is under half its budget. The uplink holds its sends then,
/// so that the CPU goes to taking the source broker's backlog — the broker's
/// queue is bounded and in memory, the spool is on disk — and sends a window
/// at least every [`super::uplink::HOLD_AT_MOST`] (docs/SERVICE.md, "Backlogs").
#[derive(Debug, Default)]
pub(super) struct Backlog {
    /// The engine thread: a whole batch waits after its take.
    queued: AtomicBool,
    /// The source filter: its last read filled its buffer with many messages.
    streaming: AtomicBool,
    /// The engine thread: intake is not paused, the spool is under half its budget.
    room: AtomicBool,
    /// Notified when the intake is no longer behind.
    pub cleared: Notify,
}

impl Backlog {
    /// The engine thread's turn: whether a whole batch still waits, and whether there is room.
    pub fn engine(&self, queued: bool, room: bool) {
        self.update(|b| {
            b.queued.store(queued, Ordering::Relaxed);
            b.room.store(room, Ordering::Relaxed);
        });
    }

    /// A read of the source filter: whether it filled the buffer with many messages.
    pub fn read(&self, full: bool) {
        if self.streaming.load(Ordering::Relaxed) != full {
            self.update(|b| b.streaming.store(full, Ordering::Relaxed));
        }
    }

    fn update(&self, set: impl FnOnce(&Self)) {
        let was = self.behind();
        set(self);
        if was && !self.behind() {
            self.cleared.notify_one();
        }
    }

    pub fn behind(&self) -> bool {
        self.room.load(Ordering::Relaxed)
            && (self.queued.load(Ordering::Relaxed) || self.streaming.load(Ordering::Relaxed))
    }
}

/// A message on its way to the engine thread: the message, its event when
/// the source filter could decode it (the engine then does not: see
/// `edgejoin_engine::route`), its wall-clock receive time (the event clock of
/// `clock = "receive"` streams), the instant the broker delivered it (for the
/// result latency histogram), and its share of the intake's byte budget, held
/// until the engine is done with it.
pub(super) struct Msg {
    pub m: Message,
    pub decoded: Option<Decoded>,
    pub recv_ms: i64,
    pub at: Instant,
    /// Its share of the intake budget (the engine merges a batch's shares into one).
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What the source's messages may hold in memory between the broker and the
/// engine, in bytes, whatever their number: the intake channel and the batch
/// being processed. At least four of the largest messages the filter lets
/// through, and 1 MiB.
pub fn intake_budget(c: &Config) -> usize {
    (4 * max_message(c)).max(1 << 20)
}

/// The largest message the source filter lets through: `max_payload + 1`
/// bytes of payload (one more than the engine accepts, so an oversized one is
/// counted), a topic of up to 65,535 bytes and the packet's head.
pub fn max_message(c: &Config) -> usize {
    c.plan.max_payload + 1 + 65_535 + 16
}

/// Bytes of the source path outside the budget, at most: the filter's
/// 64 KiB read buffer and the stream it splits (a packet not yet whole, up to
/// the largest message, and the read it came with), and the MQTT client's
/// buffers (sized for the largest message, though it only meets the small
/// packets now).
pub fn source_buffers(c: &Config) -> usize {
    11 * max_message(c) + (128 << 10)
}

/// The intake's share of the budget a message takes.
fn intake_cost(m: &Message) -> u32 {
    (m.len() + 64).min(u32::MAX as usize) as u32
}

/// The engine thread's intake as the source filter feeds it: each PUBLISH
/// goes from the filter straight into the channel to the engine thread (the
/// MQTT client sees the other packets only), with its share of the byte
/// budget; back-pressure holds the filter's reads (the broker keeps the rest).
pub(super) struct Intake {
    pub tx: tokio::sync::mpsc::Sender<Msg>,
    pub budget: Arc<tokio::sync::Semaphore>,
    pub wake: Arc<IntakeWake>,
    pub counters: Arc<ServiceCounters>,
    pub barriers: Arc<SharedBarriers>,
    /// Messages passed to the engine thread: a barrier's answer counts once
    /// the engine checked as many.
    pub passed: AtomicU64,
    /// Fast mode: a QoS 1 message is acknowledged once passed on (durable
    /// mode: once in the fsynced log, by the engine thread).
    pub ack_on_pass: bool,
    /// The streams' patterns and decoders: the filter decodes what it passes.
    pub router: Router,
    /// The filter says whether its reads fill its buffer.
    pub backlog: Arc<Backlog>,
}

impl Intake {
    /// Passes a message on, waiting while the engine is behind; whether it
    /// went. Once the engine stopped taking messages they are left
    /// unacknowledged (the broker sends them again next time) while the
    /// connection stays up for the last acknowledgements. Decodes it first,
    /// on this thread, when it can (`scratch`: working space).
    pub async fn pass(
        &self,
        m: Message,
        recv_ms: i64,
        at: Instant,
        scratch: &mut edgejoin_engine::event::Event,
    ) -> bool {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let decoded = self.router.decode(m.topic(), m.payload(), scratch);
        let cost = intake_cost(&m);
        let permit = match self.budget.clone().try_acquire_many_owned(cost) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return false,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                // the byte budget is spent (large messages): a waiting engine takes what there is
                if self.wake.at.load(Ordering::Relaxed) != usize::MAX {
                    self.wake.notify.notify_one();
                }
                let Ok(p) = self.budget.clone().acquire_many_owned(cost).await else { return false };
                p
            }
        };
        let sent =
            self.counted(self.tx.send(Msg { m, decoded, recv_ms, at, permit: Some(permit) }).await.is_ok());
        if INTAKE - self.tx.capacity() >= self.wake.at.load(Ordering::Relaxed) {
            self.wake.notify.notify_one();
        }
        sent
    }

    /// Passes a reading of a local sensor from its own thread (outside the
    /// runtime), waiting for room; whether it went.
    #[cfg(feature = "i2c")]
    pub fn pass_blocking(&self, msg: Msg) -> bool {
        self.counted(self.tx.blocking_send(msg).is_ok())
    }

    /// Counts a message passed: a barrier's mark counts what the engine checks, whatever its source.
    fn counted(&self, sent: bool) -> bool {
        if sent {
            self.passed.fetch_add(1, Ordering::SeqCst);
        }
        sent
    }
}

/// Drives the source client: connects, subscribes, counts barriers and their
/// answers; the messages themselves go through [`Intake`].
pub(super) async fn source_task(
    mut ev: EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    intake: Arc<Intake>,
    ready: Arc<Notify>,
) {
    let (counters, barriers) = (&intake.counters, &intake.barriers);
    let mut backoff = Backoff::jittered(now_ms() as u64);
    let mut announced = false;
    let mut log = logging::Every::new(Duration::from_secs(30));
    let mut down_since: Option<Instant> = None;
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                backoff.reset();
                // before any of the connection's messages reach the engine: the filter waits for it
                barriers.reconnected();
                counters.source_connects.fetch_add(1, Ordering::Relaxed);
                match down_since.take() {
                    Some(at) => tracing::info!(
                        "source connected after {:.1} s down (session present: {})",
                        at.elapsed().as_secs_f64(),
                        ack.session_present
                    ),
                    None => tracing::info!("source connected (session present: {})", ack.session_present),
                }
                log = logging::Every::new(Duration::from_secs(30));
                if ack.session_present && announced {
                    // the session kept the subscriptions
                    counters.source_connected.store(1, Ordering::Relaxed);
                } else {
                    let subs =
                        filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(subs) {
                        tracing::error!("cannot subscribe: {e}");
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Unsubscribe(_))) => barriers.written(),
            // the stop's disconnect went out: the broker closing the connection now is no fault
            // to log (the task is aborted next; on a busy machine it could poll once more first)
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            // the filter passed the messages before the UNSUBACK on before it handed the
            // UNSUBACK to the client (and maybe some after it: a later mark is only safe)
            Ok(Event::Incoming(Incoming::UnsubAck(_))) => {
                barriers.answered(intake.passed.load(Ordering::SeqCst))
            }
            Ok(Event::Incoming(Incoming::SubAck(_))) => {
                counters.source_connected.store(1, Ordering::Relaxed);
                if !announced {
                    announced = true;
                    ready.notify_one();
                }
            }
            Ok(_) => {}
            Err(e) => {
                counters.source_errors.fetch_add(1, Ordering::Relaxed);
                counters.source_connected.store(0, Ordering::Relaxed);
                let wait = backoff.wait();
                let since = *down_since.get_or_insert_with(Instant::now);
                if let Some(more) = log.ready() {
                    tracing::warn!(
                        "source broker: {e}; down for {:.0} s, reconnecting in {wait:?}{}",
                        since.elapsed().as_secs_f64(),
                        logging::more(more)
                    );
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_intake_slot_is_144_bytes() {
        // 3,072 of them (the intake and a batch) are resident in a backlog
        assert_eq!(std::mem::size_of::<super::Msg>(), 144);
    }
}
