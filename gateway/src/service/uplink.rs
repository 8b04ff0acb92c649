//! The uplink: its own MQTT connection to `[upstream]` (clean session: the
//! spool, not the client, keeps what is undelivered). It sends the spool in
//! order with QoS 1, at most a window in flight, and advances the spool's
//! delivered position only over PUBACKs ([`super::delivery`] keeps that
//! state); after a reconnect it resends from there. Stats go out at QoS 0. At
//! shutdown it drains the spool for at most `shutdown_timeout`. Spool files
//! are read on a blocking thread; acknowledgements only move a number (the
//! engine thread deletes and fsyncs).

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
use super::spool::{SpoolReader, SpoolState};
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

/// Reads what the client may take from the spool (on a blocking thread:
/// file IO stays off the async workers) and hands it over.
async fn refill(
    d: &mut Delivery,
    client: &AsyncClient,
    spool: &SpoolState,
    reader: &Arc<Mutex<SpoolReader>>,
) {
    loop {
        let Some((from, room)) = d.wanted(spool.acked()) else { return };
        if !spool.readable(from) {
            return;
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
                return;
            }
            Err(e) => {
                tracing::error!("spool: the read failed: {e}");
                return;
            }
        };
        if recs.is_empty() {
            return;
        }
        for rec in recs {
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
    spool: &SpoolState,
    counters: &ServiceCounters,
    marks: &LatencyMarks,
) -> Result<(), Box<rumqttc::ConnectionError>> {
    match e.map_err(Box::new)? {
        Event::Incoming(Incoming::ConnAck(_)) => {
            counters.uplink_connects.fetch_add(1, Ordering::Relaxed);
            let from = spool.acked();
            d.connected(from);
            tracing::info!("uplink connected; resending from result {from}");
        }
        Event::Outgoing(Outgoing::Publish(pkid)) => {
            if let Some(delivered) = d.went_out(pkid).and_then(|seq| marks.take(seq)) {
                counters.result_latency.observe(delivered.elapsed());
            }
        }
        Event::Incoming(Incoming::PubAck(ack)) => {
            if let Some(through) = d.acknowledged(ack.pkid, spool.acked()) {
                spool.ack(through);
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
    reader: SpoolReader,
    spool_ready: Arc<Notify>,
    mut stats_rx: tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
    mut shutdown: watch::Receiver<Stage>,
    counters: Arc<ServiceCounters>,
    marks: Arc<LatencyMarks>,
    drain_for: Duration,
) {
    let mut backoff = Backoff::jittered(now_ms() as u64 ^ 0x5555);
    let spool = reader.state();
    let reader = Arc::new(Mutex::new(reader));
    let mut up = Delivery::new(spool.acked());
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
            let depth = spool.depth();
            if depth == 0 || Instant::now() >= d {
                if depth > 0 {
                    tracing::warn!("shutdown: {depth} results still undelivered stay in the spool");
                }
                // the engine's side saves the delivered position once this task is done
                let _ = client.try_disconnect();
                return;
            }
        }
        refill(&mut up, &client, &spool, &reader).await;
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
                // a look now and then (a publish the client's queue refused is retried); often while draining at a stop
                let next = if stop_deadline.is_some() { Duration::from_millis(200) } else { Duration::from_secs(2) };
                wakeup.as_mut().reset(tokio::time::Instant::now() + next);
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
                let depth = spool.depth();
                tracing::warn!(
                    "uplink broker: {e}; down for {:.0} s, {depth} results wait in the spool{}",
                    since.elapsed().as_secs_f64(),
                    logging::more(more)
                );
            }
            counters.uplink_errors.fetch_add(1, Ordering::Relaxed);
            // rumqttc moves everything unsent or unacknowledged to its pending list and
            // drops it at the next (clean-session) CONNACK: it is all sent again from the spool
            up.disconnected(spool.acked());
            if stop_deadline.is_some() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else {
                tokio::time::sleep(backoff.wait()).await;
            }
        } else if up.is_connected() {
            backoff.reset();
            if let Some(at) = down_since.take() {
                let depth = spool.depth();
                tracing::info!(
                    "uplink back after {:.1} s: {depth} spooled results to send",
                    at.elapsed().as_secs_f64()
                );
                draining = depth > 0;
            }
        }
        if draining && spool.depth() == 0 {
            draining = false;
            tracing::info!("uplink: the spool is drained");
        }
    }
}
