//! The uplink: its own MQTT connection to `[upstream]` ([`super::uplink_conn`];
//! clean session: the spool, not the connection, keeps what is undelivered).
//! It sends the spool in order with QoS 1, at most a window in flight, as
//! many results per write as are ready, and advances the spool's delivered
//! position only over PUBACKs ([`super::delivery`] keeps that state); after
//! a reconnect it resends from there. Stats go out at QoS 0. At shutdown it
//! drains the spool for at most `shutdown_timeout`. Spool files are read on
//! a blocking thread; acknowledgements only move a number (the engine thread
//! deletes and fsyncs).

use super::homeassistant::Discovery;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::mqttbytes::v4::Packet;
use tokio::sync::{watch, Notify};

use super::clock::now_ms;
use super::counters::ServiceCounters;
use super::delivery::Delivery;
use super::logging;
use super::shutdown::Stage;
use super::source::Backlog;
use super::spool::{SpoolReader, SpoolState};
use super::uplink_conn::{Conn, ConnError, Target, KEEP_ALIVE, OFFLINE};
use crate::backoff::Backoff;

/// Which spool positions the results of each recent message got, and when
/// the broker delivered that message: the uplink turns them into the result
/// latency histogram. Bounded; when the uplink is behind, the oldest marks
/// go first (those results then go unmeasured, never undelivered).
pub(super) struct LatencyMarks(Mutex<VecDeque<(u64, u64, Instant)>>);

impl LatencyMarks {
    const CAP: usize = 4096;

    pub(super) fn new() -> Self {
        LatencyMarks(Mutex::new(VecDeque::with_capacity(Self::CAP)))
    }

    pub(super) fn mark(&self, first: u64, end: u64, delivered: Instant) {
        let mut m = self.0.lock().expect("latency marks lock");
        if m.len() == Self::CAP {
            m.pop_front();
        }
        m.push_back((first, end, delivered));
    }

    /// The delivery instant of the message whose result sits at spool position `seq`.
    pub(super) fn take(&self, seq: u64) -> Option<Instant> {
        let mut m = self.0.lock().expect("latency marks lock");
        while m.front().is_some_and(|&(_, end, _)| end <= seq) {
            m.pop_front();
        }
        m.front().filter(|&&(first, _, _)| first <= seq).map(|&(_, _, at)| at)
    }
}

/// Reads what the connection may take from the spool (on a blocking thread:
/// file IO stays off the async workers) and encodes it, in order.
async fn refill(
    d: &mut Delivery,
    c: &mut Conn,
    spool: &SpoolState,
    reader: &Arc<Mutex<SpoolReader>>,
    counters: &ServiceCounters,
    marks: &LatencyMarks,
) -> Result<(), ConnError> {
    loop {
        let Some((from, room)) = d.wanted(spool.acked()) else { return Ok(()) };
        if !spool.readable(from) {
            return Ok(());
        }
        let r = reader.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(room);
            let mut r = r.lock().unwrap_or_else(|e| e.into_inner());
            r.read(from, room, &mut out).map(|()| out)
        })
        .await;
        let recs = match read {
            Ok(Ok(recs)) => recs,
            Ok(Err(e)) => {
                tracing::error!("spool: cannot read: {e}");
                return Ok(());
            }
            Err(e) => {
                tracing::error!("spool: the read failed: {e}");
                return Ok(());
            }
        };
        if recs.is_empty() {
            return Ok(());
        }
        for rec in recs {
            if !d.offer(rec.seq) {
                continue;
            }
            let pkid = c.publish(rec.topic, rec.payload.into(), |id| d.in_flight(id))?;
            d.handed(rec.seq);
            if let Some(delivered) = d.went_out(pkid).and_then(|seq| marks.take(seq)) {
                counters.result_latency.observe(delivered.elapsed());
            }
            if c.buffered() >= WRITE_AT {
                // a window of large results would otherwise grow the buffer to ~½ MiB for good
                c.flush().await?;
            }
        }
    }
}

/// Encoded results are written out once this many bytes wait (the write
/// buffer's size: memory for good, since it keeps its capacity).
const WRITE_AT: usize = 64 << 10;

/// What one connection's life ended with.
enum Ended {
    /// The stop's drain is over (spool empty or its time up): DISCONNECT was sent.
    Stopped,
    Failed(ConnError),
}

/// What the uplink task is handed: wake-ups, stats, the stop, counters.
pub(super) struct Links {
    pub spool_ready: Arc<Notify>,
    pub stats_rx: tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
    pub shutdown: watch::Receiver<Stage>,
    pub counters: Arc<ServiceCounters>,
    pub marks: Arc<LatencyMarks>,
    /// How long a stop waits for the spool to drain.
    pub drain_for: Duration,
    /// Home Assistant discovery messages to publish (retained), when on.
    pub discovery: Option<Arc<Mutex<Discovery>>>,
    /// Whether the intake is behind (sends are held then).
    pub backlog: Arc<Backlog>,
}

/// While the intake is behind, the uplink sends at most a window of results
/// this often (results keep moving through a long backlog).
pub(super) const HOLD_AT_MOST: Duration = Duration::from_secs(1);

/// The state the uplink keeps across connections.
struct Uplink {
    up: Delivery,
    spool: SpoolState,
    reader: Arc<Mutex<SpoolReader>>,
    io: Links,
    stop_deadline: Option<Instant>,
    draining: bool,
    status_topic: String,
    /// Discovery messages published on this connection (all go again after a connect).
    announced: usize,
}

impl Uplink {
    /// Whether the stop's drain is over; starts its clock when the stop begins.
    fn stop_due(&mut self) -> bool {
        if *self.io.shutdown.borrow() == Stage::DrainUplink && self.stop_deadline.is_none() {
            self.stop_deadline = Some(Instant::now() + self.io.drain_for);
        }
        let Some(d) = self.stop_deadline else { return false };
        let depth = self.spool.depth();
        if depth == 0 || Instant::now() >= d {
            if depth > 0 {
                tracing::warn!("shutdown: {depth} results still undelivered stay in the spool");
            }
            return true;
        }
        false
    }

    /// Publishes the discovery messages noted since the last call (retained, QoS 0).
    fn announce(&mut self, c: &mut Conn) -> Result<(), ConnError> {
        let Some(Ok(d)) = self.io.discovery.as_ref().map(|d| d.lock()) else { return Ok(()) };
        for (topic, payload) in &d.messages[self.announced.min(d.messages.len())..] {
            c.publish_qos0(topic.clone(), payload.clone(), true)?;
        }
        self.announced = d.messages.len();
        Ok(())
    }

    /// Serves one connection until it fails or the stop's drain is over.
    async fn serve(&mut self, c: &mut Conn) -> Ended {
        let mut ping = tokio::time::interval(KEEP_ALIVE / 2);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        let mut heard = Instant::now();
        let mut wakeup = Box::pin(tokio::time::sleep(Duration::from_millis(200)));
        self.announced = 0;
        let mut sent_at = Instant::now();
        loop {
            if self.stop_due() {
                // the engine's side saves the delivered position once this task is done; a
                // DISCONNECT discards the will, so the gateway says `offline` itself
                let _ = c.publish_qos0(self.status_topic.clone(), OFFLINE.to_vec(), true);
                let _ = c.disconnect();
                let _ = c.flush().await;
                return Ended::Stopped;
            }
            // sensors first: Home Assistant knows a state topic before its first value
            if let Err(e) = self.announce(c) {
                return Ended::Failed(e);
            }
            // the intake's backlog first (not at a stop): results wait in the spool, on disk
            let hold =
                self.stop_deadline.is_none() && self.io.backlog.behind() && sent_at.elapsed() < HOLD_AT_MOST;
            if !hold {
                if let Err(e) =
                    refill(&mut self.up, c, &self.spool, &self.reader, &self.io.counters, &self.io.marks)
                        .await
                {
                    return Ended::Failed(e);
                }
                sent_at = Instant::now();
            }
            if let Err(e) = c.flush().await {
                return Ended::Failed(e);
            }
            if self.draining && self.spool.depth() == 0 {
                self.draining = false;
                tracing::info!("uplink: the spool is drained");
            }
            tokio::select! {
                r = c.read() => match r {
                    Ok(packets) => {
                        heard = Instant::now();
                        for p in packets {
                            if let Packet::PubAck(ack) = p {
                                if let Some(through) = self.up.acknowledged(ack.pkid, self.spool.acked()) {
                                    self.spool.ack(through);
                                }
                            }
                        }
                    }
                    Err(e) => return Ended::Failed(e),
                },
                _ = self.io.spool_ready.notified() => {}
                _ = self.io.backlog.cleared.notified(), if hold => {}
                _ = tokio::time::sleep_until((sent_at + HOLD_AT_MOST).into()), if hold => {}
                _ = self.io.shutdown.changed() => {}
                Some((topic, payload)) = self.io.stats_rx.recv() => {
                    // retained: a dashboard that subscribes later sees the last figures at once
                    if let Err(e) = c.publish_qos0(topic, payload, true) {
                        return Ended::Failed(e);
                    }
                }
                _ = ping.tick() => {
                    if heard.elapsed() > KEEP_ALIVE {
                        return Ended::Failed(ConnError::PingTimeout(KEEP_ALIVE));
                    }
                    if let Err(e) = c.ping() {
                        return Ended::Failed(e);
                    }
                }
                _ = &mut wakeup => {
                    // a look now and then; often while draining at a stop
                    let next = if self.stop_deadline.is_some() { Duration::from_millis(200) } else { Duration::from_secs(2) };
                    wakeup.as_mut().reset(tokio::time::Instant::now() + next);
                }
            }
        }
    }
}

pub(super) async fn uplink_task(target: Target, reader: SpoolReader, io: Links) {
    let mut backoff = Backoff::jittered(now_ms() as u64 ^ 0x5555);
    let spool = reader.state();
    let mut u = Uplink {
        up: Delivery::new(spool.acked()),
        spool,
        reader: Arc::new(Mutex::new(reader)),
        io,
        stop_deadline: None,
        draining: false,
        status_topic: target.status_topic.clone(),
        announced: 0,
    };
    let mut down_since: Option<Instant> = None;
    let mut log = logging::Every::new(Duration::from_secs(30));
    loop {
        if u.stop_due() {
            return;
        }
        let err = match tokio::select! {
            c = Conn::connect(&target) => Some(c),
            // a stop does not wait for a connection attempt
            _ = u.io.shutdown.changed() => None,
        } {
            None => continue,
            Some(Ok(mut c)) => {
                u.io.counters.uplink_connects.fetch_add(1, Ordering::Relaxed);
                u.io.counters.uplink_connected.store(1, Ordering::Relaxed);
                let from = u.spool.acked();
                u.up.connected(from);
                tracing::info!("uplink connected; resending from result {from}");
                backoff.reset();
                if let Some(at) = down_since.take() {
                    let depth = u.spool.depth();
                    tracing::info!(
                        "uplink back after {:.1} s: {depth} spooled results to send",
                        at.elapsed().as_secs_f64()
                    );
                    u.draining = depth > 0;
                }
                log = logging::Every::new(Duration::from_secs(30));
                match u.serve(&mut c).await {
                    Ended::Stopped => return,
                    Ended::Failed(e) => e,
                }
            }
            Some(Err(e)) => e,
        };
        // every failure is worth a line (refused, TLS, authentication), once per 30 s at most
        let since = *down_since.get_or_insert_with(Instant::now);
        if let Some(more) = log.ready() {
            let depth = u.spool.depth();
            tracing::warn!(
                "uplink broker: {err}; down for {:.0} s, {depth} results wait in the spool{}",
                since.elapsed().as_secs_f64(),
                logging::more(more)
            );
        }
        u.io.counters.uplink_errors.fetch_add(1, Ordering::Relaxed);
        u.io.counters.uplink_connected.store(0, Ordering::Relaxed);
        // what was written and not acknowledged goes again from the spool
        u.up.disconnected(u.spool.acked());
        let wait = if u.stop_deadline.is_some() { Duration::from_millis(200) } else { backoff.wait() };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = u.io.shutdown.changed() => {}
        }
    }
}
