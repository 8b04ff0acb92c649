//! The uplink: its own MQTT connection to `[upstream]` (clean session: the
//! spool, not the client, keeps what is undelivered). It sends the spool in
//! order with QoS 1, at most a window in flight, and advances the spool's
//! delivered position only over PUBACKs ([`super::delivery`] keeps that
//! state); after a reconnect it resends from there. Stats go out at QoS 0. At
//! shutdown it drains the spool for at most `shutdown_timeout`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS};
use tokio::sync::{watch, Notify};

use super::clock::now_ms;
use super::counters::ServiceCounters;
use super::delivery::{Delivery, WINDOW};
use super::logging;
use super::shutdown::Stage;
use super::spool::{Spool, SpoolRecord};
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

/// Reads what the client may take from the spool and hands it over.
fn refill(d: &mut Delivery, client: &AsyncClient, spool: &Mutex<Spool>, buf: &mut Vec<SpoolRecord>) {
    loop {
        buf.clear();
        {
            let mut s = spool.lock().expect("spool lock");
            let Some((from, room)) = d.wanted(s.acked()) else { return };
            if let Err(e) = s.read(from, room, buf) {
                tracing::error!("spool: cannot read: {e}");
                return;
            }
        }
        if buf.is_empty() {
            return;
        }
        for rec in buf.drain(..) {
            if !d.offer(rec.seq) {
                continue;
            }
            if client.try_publish(rec.topic, QoS::AtLeastOnce, false, rec.payload).is_err() {
                return;
            }
            d.handed(rec.seq);
        }
    }
}

/// One event of the connection, reported to the delivery state; `Err` when the connection failed.
fn on_event(
    d: &mut Delivery,
    e: Result<Event, rumqttc::ConnectionError>,
    spool: &Mutex<Spool>,
    counters: &ServiceCounters,
    marks: &LatencyMarks,
) -> Result<(), Box<rumqttc::ConnectionError>> {
    match e.map_err(Box::new)? {
        Event::Incoming(Incoming::ConnAck(_)) => {
            counters.uplink_connects.fetch_add(1, Ordering::Relaxed);
            let from = spool.lock().expect("spool lock").acked();
            d.connected(from);
            tracing::info!("uplink connected; resending from result {from}");
        }
        Event::Outgoing(Outgoing::Publish(pkid)) => {
            if let Some(delivered) = d.went_out(pkid).and_then(|seq| marks.take(seq)) {
                counters.result_latency.observe(delivered.elapsed());
            }
        }
        Event::Incoming(Incoming::PubAck(ack)) => {
            let mut s = spool.lock().expect("spool lock");
            let before = s.acked();
            if let Some(through) = d.acknowledged(ack.pkid, before) {
                if let Err(e) = s.ack(through) {
                    tracing::error!("spool: cannot record delivery: {e}");
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn uplink_task(
    mut ev: EventLoop,
    client: AsyncClient,
    spool: Arc<Mutex<Spool>>,
    spool_ready: Arc<Notify>,
    mut stats_rx: tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
    mut shutdown: watch::Receiver<Stage>,
    counters: Arc<ServiceCounters>,
    marks: Arc<LatencyMarks>,
    drain_for: Duration,
) {
    let mut backoff = Backoff::jittered(now_ms() as u64 ^ 0x5555);
    let mut up = Delivery::new(spool.lock().expect("spool lock").acked());
    let mut buf = Vec::new();
    let mut stop_deadline: Option<Instant> = None;
    let mut down_since: Option<Instant> = None;
    let mut draining = false;
    let mut log = logging::Every::new(Duration::from_secs(30));
    let mut wakeup = Box::pin(tokio::time::sleep(Duration::from_millis(200)));
    loop {
        if *shutdown.borrow() == Stage::DrainUplink && stop_deadline.is_none() {
            stop_deadline = Some(Instant::now() + drain_for);
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
        refill(&mut up, &client, &spool, &mut buf);
        let mut res = tokio::select! {
            e = ev.poll() => on_event(&mut up, e, &spool, &counters, &marks),
            _ = spool_ready.notified() => Ok(()),
            _ = shutdown.changed() => Ok(()),
            Some((topic, payload)) = stats_rx.recv() => {
                if up.is_connected() && client.try_publish(topic, QoS::AtMostOnce, false, payload).is_ok() {
                    up.handed_stats();
                }
                Ok(())
            }
            _ = &mut wakeup => {
                wakeup.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(200));
                Ok(())
            }
        };
        // then every event already waiting, without going round the loop for each
        for _ in 0..WINDOW {
            if res.is_err() {
                break;
            }
            let more = tokio::select! {
                biased;
                e = ev.poll() => Some(e),
                _ = std::future::ready(()) => None,
            };
            match more {
                Some(e) => res = on_event(&mut up, e, &spool, &counters, &marks),
                None => break,
            }
        }
        if let Err(e) = res {
            // every failure is worth a line (refused, TLS, authentication), once per 30 s at most
            let since = *down_since.get_or_insert_with(Instant::now);
            if up.is_connected() {
                log = logging::Every::new(Duration::from_secs(30));
            }
            if let Some(more) = log.ready() {
                let depth = spool.lock().map(|s| s.depth()).unwrap_or(0);
                tracing::warn!(
                    "uplink broker: {e}; down for {:.0} s, {depth} results wait in the spool{}",
                    since.elapsed().as_secs_f64(),
                    logging::more(more)
                );
            }
            counters.uplink_errors.fetch_add(1, Ordering::Relaxed);
            // rumqttc moves everything unsent or unacknowledged to its pending list and
            // drops it at the next (clean-session) CONNACK: it is all sent again from the spool
            up.disconnected(spool.lock().expect("spool lock").acked());
            if stop_deadline.is_some() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else {
                tokio::time::sleep(backoff.wait()).await;
            }
        } else if up.is_connected() {
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
