//! The acknowledgement protocol with the source broker, without IO.
//!
//! In durable mode a message is acknowledged (PUBACK) only once it is in the
//! fsynced write-ahead log. An acknowledgement is never answered, so a
//! *barrier* proves the broker processed those sent before it: an
//! UNSUBSCRIBE of a filter never subscribed, answered by UNSUBACK in order on
//! the same connection. Until a barrier proves it, the gateway must still
//! recognise the broker's redeliveries of an acknowledged message (their
//! packet ids are not yet free for new messages).
//!
//! [`Acks`] is the ledger the engine thread keeps: which acknowledgements are
//! owed and in which order, what was handed to the MQTT client, and up to
//! which log position a barrier confirmed them. [`Barriers`] counts barriers
//! and their answers across reconnects. Both take events and answer
//! questions; the engine loop, the source task and the source filter perform the IO
//! (`try_ack`, `try_unsubscribe`) and report back. docs/SEMANTICS.md §9.1
//! states the promise this keeps.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Identifies one barrier: its number in the order the engine thread handed
/// barriers to the MQTT client (the first is 1).
pub type Ticket = u64;

/// Where a barrier stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarrierState {
    /// Its answer came, and the engine has checked every message that came
    /// before the answer: every acknowledgement sent before it is processed
    /// by the broker, or the broker's redelivery of its message was seen.
    Answered,
    /// Answered, but messages that came before the answer are still on
    /// their way to the engine: it proves nothing until they are checked.
    Unchecked,
    /// Not answered yet.
    Waiting,
    /// It went out on a connection that dropped before its answer: it will
    /// never be answered.
    Void,
}

/// Barriers handed to the client, written to a connection, and answered.
///
/// The client writes barriers in the order they were handed to it, each
/// once: one handed while the connection is down waits in its queue and is
/// written on the next connection (rumqttc keeps queued requests across a
/// reconnect). So the n-th UNSUBSCRIBE written is barrier n, and the k-th
/// UNSUBACK on a connection answers the k-th barrier written on it — not
/// the k-th handed since the reconnect (counting that way, the answer to a
/// barrier left over from before a reconnect was taken for the next one's).
///
/// An UNSUBACK comes after every message the broker sent before it, but the
/// source task sees it first: those messages are still on their way to the
/// engine thread (the source filter passed them to the intake before it
/// handed the UNSUBACK to the MQTT client). After a reconnect they include the broker's redeliveries
/// of messages whose acknowledgement the barrier "proves"; confirmed before
/// the engine checked them, they were taken for new messages and counted
/// twice (found by `faults.rs::a_source_outage_with_a_backlog_loses_nothing`).
/// So an answer also records how many messages the source filter had passed
/// on, and counts only once the engine has checked as many.
#[derive(Debug, Default)]
pub struct Barriers {
    /// Barriers handed to the client.
    sent: u64,
    /// Barriers the client wrote, on every connection.
    written: u64,
    /// Barriers written before the current connection.
    before_here: u64,
    /// Answers on the current connection.
    answers_here: u64,
    /// The last barrier answered.
    answered: u64,
    /// Messages passed to the engine before that answer came.
    mark: u64,
    /// Connections made.
    connections: u64,
}

impl Barriers {
    /// The filter a barrier unsubscribes from (never subscribed).
    pub const FILTER: &'static str = "edgejoin/barrier/never-subscribed";

    /// A barrier was handed to the client; its ticket.
    pub fn sent(&mut self) -> Ticket {
        self.sent += 1;
        self.sent
    }

    /// The client wrote a barrier (its `Outgoing::Unsubscribe` event).
    pub fn written(&mut self) {
        self.written += 1;
    }

    /// An UNSUBACK came, after `passed` messages were passed to the engine.
    pub fn answered(&mut self, passed: u64) {
        self.answers_here += 1;
        self.answered = (self.before_here + self.answers_here).min(self.written);
        self.mark = self.mark.max(passed);
    }

    /// The connection (re)connected: barriers written before are answered or never will be.
    pub fn reconnected(&mut self) {
        self.before_here = self.written;
        self.answers_here = 0;
        self.connections += 1;
    }

    /// Connections made so far.
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// Where barrier `n` stands once the engine has checked `checked` messages.
    pub fn state(&self, n: Ticket, checked: u64) -> BarrierState {
        if n <= self.answered {
            if checked >= self.mark {
                BarrierState::Answered
            } else {
                BarrierState::Unchecked
            }
        } else if n <= self.before_here {
            BarrierState::Void
        } else {
            BarrierState::Waiting
        }
    }
}

/// [`Barriers`] shared by the source task (answers, reconnects) and the
/// engine thread (sends, checks), with a wake-up for whoever waits on one.
#[derive(Default)]
pub struct SharedBarriers {
    inner: Mutex<Barriers>,
    pub changed: Notify,
}

impl SharedBarriers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Barriers> {
        self.inner.lock().expect("barrier lock")
    }

    /// The engine thread sent a barrier: its ticket.
    pub fn sent(&self) -> Ticket {
        self.lock().sent()
    }

    /// The source task saw the client write a barrier.
    pub fn written(&self) {
        self.lock().written();
    }

    /// The source task saw an UNSUBACK after the filter passed `passed`
    /// messages to the engine: wakes whoever waits for an answer.
    pub fn answered(&self, passed: u64) {
        self.lock().answered(passed);
        self.changed.notify_one();
    }

    /// The source connection (re)connected: barriers in flight are void.
    pub fn reconnected(&self) {
        self.lock().reconnected();
        self.changed.notify_one();
    }

    /// Where barrier `t` stands once the engine has checked `checked` messages.
    pub fn state(&self, t: Ticket, checked: u64) -> BarrierState {
        self.lock().state(t, checked)
    }

    /// Connections made so far.
    pub fn connections(&self) -> u64 {
        self.lock().connections()
    }
}

/// The way acknowledgements leave: the engine thread queues them here and
/// the source filter ([`super::source_proxy`]) writes them to the broker in
/// bulk, between two of the MQTT client's packets — one write for hundreds
/// of PUBACKs, where the client would spend a turn of its loop and a system
/// call on each (its loop serves one request per turn against up to ten
/// incoming messages, so under a flood they fell ever further behind).
///
/// It also holds the flood back: a broker may send far beyond its in-flight
/// window (Mosquitto 2.0 sent 176,000 unacknowledged messages into a backlog
/// drain). When [`HIGH`](Self::HIGH) acknowledgements wait (queued here or
/// still in the engine's ledger) the filter stops reading from the broker —
/// TCP holds the rest there — until they are down to [`LOW`](Self::LOW).
#[derive(Debug, Default)]
pub struct AckPipe {
    queue: Mutex<Vec<u16>>,
    queued: AtomicUsize,
    /// Owed in the engine thread's ledger, not yet queued.
    in_ledger: AtomicUsize,
    /// Wakes the filter: acknowledgements to write.
    pub ready: Notify,
    open: Notify,
}

impl AckPipe {
    /// Waiting acknowledgements at which reading from the broker stops.
    pub const HIGH: usize = 2048;
    /// Waiting acknowledgements at which it resumes.
    pub const LOW: usize = Self::HIGH / 4;
    /// Most acknowledgements queued (the rest wait in the ledger, while the
    /// connection is down).
    pub const CAP: usize = 4 * Self::HIGH;

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u16>> {
        self.queue.lock().expect("ack queue lock")
    }

    /// The engine thread queues what its ledger owes, in order, as far as
    /// the queue has room; returns whether some had to stay in the ledger.
    pub fn push(&self, acks: &mut Acks) -> bool {
        let mut q = self.lock();
        let before = q.len();
        while q.len() < Self::CAP {
            let Some(pkid) = acks.next_ack() else { break };
            q.push(pkid);
            acks.handed();
        }
        self.queued.store(q.len(), Ordering::Release);
        self.in_ledger.store(acks.owed(), Ordering::Release);
        let pushed = q.len() > before;
        drop(q);
        if pushed {
            self.ready.notify_one();
        }
        acks.owed() > 0
    }

    /// Fast mode: the filter queues the acknowledgement of a message it
    /// passed to the engine thread.
    pub fn push_id(&self, pkid: u16) {
        let mut q = self.lock();
        q.push(pkid);
        self.queued.store(q.len(), Ordering::Release);
        drop(q);
        self.ready.notify_one();
    }

    /// The filter takes every queued acknowledgement (into `out`, emptied first).
    pub fn take(&self, out: &mut Vec<u16>) {
        out.clear();
        std::mem::swap(&mut *self.lock(), out);
        self.queued.store(0, Ordering::Release);
        if self.in_ledger.load(Ordering::Acquire) <= Self::LOW {
            self.open.notify_waiters();
        }
    }

    fn waiting(&self) -> usize {
        self.queued.load(Ordering::Acquire) + self.in_ledger.load(Ordering::Acquire)
    }

    /// Whether reading from the broker should stop now.
    pub fn closed(&self) -> bool {
        self.waiting() >= Self::HIGH
    }

    /// Waits until the waiting acknowledgements are down to [`LOW`](Self::LOW).
    pub async fn reopened(&self) {
        loop {
            let open = self.open.notified();
            tokio::pin!(open);
            open.as_mut().enable();
            if self.waiting() <= Self::LOW {
                return;
            }
            open.await;
        }
    }
}

/// PUBACK for packet id `pkid`, as written to the broker.
pub fn puback(pkid: u16, out: &mut Vec<u8>) {
    let [hi, lo] = pkid.to_be_bytes();
    out.extend_from_slice(&[0x40, 0x02, hi, lo]);
}

/// The acknowledgements owed to the source broker: those not yet handed to
/// the client (in log order, each with the log position of its message), and
/// up to which log position a barrier proved the broker processed the handed
/// ones. A barrier goes out at most every [`Acks::BARRIER_EVERY`], only while
/// some handed acknowledgement is unproven.
#[derive(Debug, Default)]
pub struct Acks {
    /// In log order: the owed acknowledgements, then the `held` last ones —
    /// of messages (and redeliveries) not yet in the fsynced log, owed once
    /// the log's fsync covers them. One queue: an fsync moves nothing. Each
    /// is packet id << 48 | log position (8 bytes: a drain cycles through
    /// the whole ring, so all of it is resident; a gateway logs fewer than
    /// 2^48 messages in its life).
    queue: VecDeque<u64>,
    held: usize,
    /// Log position of the last acknowledgement handed to the client.
    handed: u64,
    /// Every acknowledgement up to this log position is processed by the broker.
    confirmed: u64,
    /// The barrier in flight: its ticket and the position handed before it.
    pending: Option<(Ticket, u64)>,
    last_barrier: Option<Instant>,
}

/// Log position bits of an [`Acks`] entry.
const POS_BITS: u32 = 48;
const POS_MASK: u64 = (1 << POS_BITS) - 1;

fn pack(pkid: u16, pos: u64) -> u64 {
    u64::from(pkid) << POS_BITS | pos & POS_MASK
}

impl Acks {
    pub const BARRIER_EVERY: Duration = Duration::from_millis(100);

    /// A ledger with room for `n` owed acknowledgements made at start (the
    /// engine thread's: they gather only while the source connection is down
    /// or the filter cannot write them out; reading stops at
    /// [`AckPipe::HIGH`], and what was already read still comes after).
    pub fn with_capacity(n: usize) -> Self {
        Acks { queue: VecDeque::with_capacity(n), ..Acks::default() }
    }

    /// The message with packet id `pkid` at log position `pos` is in the
    /// fsynced log (or is a redelivery of one that is): it is owed an
    /// acknowledgement.
    #[cfg(test)]
    pub fn owe(&mut self, pkid: u16, pos: u64) {
        assert_eq!(self.held, 0, "owed before held ones");
        self.queue.push_back(pack(pkid, pos));
    }

    /// The message with packet id `pkid` is logged at `pos` (or is a
    /// redelivery of one logged at or before `pos`) but the log is not yet
    /// fsynced: its acknowledgement waits for [`synced`](Self::synced), behind
    /// those held before it.
    pub fn hold(&mut self, pkid: u16, pos: u64) {
        self.queue.push_back(pack(pkid, pos));
        self.held += 1;
    }

    /// Acknowledgements waiting for the log's fsync.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The log is fsynced through everything logged so far: the held
    /// acknowledgements are owed, in order.
    pub fn synced(&mut self) {
        self.held = 0;
    }

    /// Acknowledgements owed and not yet handed to the client.
    pub fn owed(&self) -> usize {
        self.queue.len() - self.held
    }

    /// The acknowledgement to hand the client next (the oldest owed).
    pub fn next_ack(&self) -> Option<u16> {
        self.queue.front().filter(|_| self.owed() > 0).map(|&e| (e >> POS_BITS) as u16)
    }

    /// The client took the acknowledgement [`next_ack`](Self::next_ack) named.
    pub fn handed(&mut self) {
        if self.owed() == 0 {
            return;
        }
        if let Some(e) = self.queue.pop_front() {
            self.handed = self.handed.max(e & POS_MASK);
        }
    }

    /// Takes the state of the barrier in flight; returns the newly confirmed
    /// log position when its answer came.
    pub fn answer(&mut self, state: impl FnOnce(Ticket) -> BarrierState) -> Option<u64> {
        let (ticket, handed) = self.pending?;
        match state(ticket) {
            BarrierState::Answered => {
                self.pending = None;
                self.confirmed = self.confirmed.max(handed);
                Some(self.confirmed)
            }
            // lost with a reconnect: another goes out
            BarrierState::Void => {
                self.pending = None;
                None
            }
            BarrierState::Waiting | BarrierState::Unchecked => None,
        }
    }

    /// Whether a barrier should go out now.
    pub fn barrier_due(&self, now: Instant) -> bool {
        self.pending.is_none()
            && self.unconfirmed()
            && self.last_barrier.is_none_or(|at| now.duration_since(at) >= Self::BARRIER_EVERY)
    }

    /// A barrier went out with `ticket`: it covers what was handed so far.
    pub fn barrier_sent(&mut self, ticket: Ticket, now: Instant) {
        self.pending = Some((ticket, self.handed));
        self.last_barrier = Some(now);
    }

    /// Whether some handed acknowledgement is not yet proven processed.
    pub fn unconfirmed(&self) -> bool {
        self.handed > self.confirmed
    }

    /// A barrier sent after the last handed acknowledgement was answered (at
    /// shutdown): everything handed is confirmed; returns that position.
    pub fn all_confirmed(&mut self) -> u64 {
        self.confirmed = self.handed;
        self.pending = None;
        self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hand_all(a: &mut Acks) -> Vec<u16> {
        let mut out = Vec::new();
        while let Some(p) = a.next_ack() {
            out.push(p);
            a.handed();
        }
        out
    }

    #[test]
    fn held_acknowledgements_are_owed_only_after_the_fsync_in_log_order() {
        let mut a = Acks::default();
        a.owe(1, 1);
        a.hold(2, 2);
        a.hold(9, 2); // a redelivery seen after message 2 was logged
        a.hold(3, 3);
        assert_eq!((a.owed(), a.held()), (1, 3));
        assert_eq!(hand_all(&mut a), [1], "what waits for the fsync is not handed");
        a.synced();
        assert_eq!(a.held(), 0);
        assert_eq!(hand_all(&mut a), [2, 9, 3]);
        assert!(a.unconfirmed());
    }

    #[test]
    fn the_pipe_queues_in_order_and_reading_stops_at_high_until_low() {
        let pipe = std::sync::Arc::new(AckPipe::default());
        let mut a = Acks::default();
        for i in 0..AckPipe::HIGH as u64 - 1 {
            a.owe((i % 60_000) as u16 + 1, i + 1);
        }
        assert!(!pipe.push(&mut a), "all queued");
        assert!(!pipe.closed());
        a.owe(7, 1_000_000);
        pipe.push(&mut a);
        assert!(pipe.closed(), "HIGH waiting: the filter stops reading");
        let mut out = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let waiter = tokio::spawn({
                let pipe = pipe.clone();
                async move { pipe.reopened().await }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!waiter.is_finished());
            pipe.take(&mut out);
            tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap();
        });
        assert_eq!(out.len(), AckPipe::HIGH);
        assert_eq!(out[..3], [1, 2, 3]);
        assert_eq!(out.last(), Some(&7));
        assert!(!pipe.closed());
        let mut bytes = Vec::new();
        puback(0x1234, &mut bytes);
        assert_eq!(bytes, [0x40, 0x02, 0x12, 0x34]);
    }

    #[test]
    fn a_full_queue_leaves_the_rest_in_the_ledger_in_order() {
        let pipe = AckPipe::default();
        let mut a = Acks::default();
        for i in 0..AckPipe::CAP as u64 + 3 {
            a.owe((i % 60_000) as u16 + 1, i + 1);
        }
        assert!(pipe.push(&mut a), "three stay in the ledger");
        assert_eq!(a.owed(), 3);
        let mut out = Vec::new();
        pipe.take(&mut out);
        assert!(!pipe.push(&mut a));
        pipe.take(&mut out);
        assert_eq!(
            out,
            [
                (AckPipe::CAP as u64 % 60_000) as u16 + 1,
                (AckPipe::CAP as u64 % 60_000) as u16 + 2,
                (AckPipe::CAP as u64 % 60_000) as u16 + 3
            ]
        );
    }

    #[test]
    fn acknowledgements_are_handed_in_log_order() {
        let mut a = Acks::default();
        for (pkid, pos) in [(7, 1), (3, 2), (9, 3)] {
            a.owe(pkid, pos);
        }
        assert_eq!(hand_all(&mut a), [7, 3, 9]);
        assert_eq!(a.owed(), 0);
    }

    #[test]
    fn an_acknowledgement_the_client_cannot_take_stays_first_and_is_never_dropped() {
        let mut a = Acks::default();
        a.owe(1, 1);
        a.owe(2, 2);
        // the client's queue is full: nothing is handed, the next turn asks again
        assert_eq!(a.next_ack(), Some(1));
        assert_eq!(a.next_ack(), Some(1));
        a.owe(3, 3);
        assert_eq!(hand_all(&mut a), [1, 2, 3]);
    }

    #[test]
    fn no_barrier_goes_out_while_nothing_handed_is_unproven() {
        let now = Instant::now();
        let mut a = Acks::default();
        assert!(!a.barrier_due(now));
        a.owe(1, 1);
        assert!(!a.barrier_due(now), "owed but not handed: nothing for a barrier to prove");
        a.handed();
        assert!(a.barrier_due(now));
    }

    /// A barrier handed to the client and written by it.
    fn barrier(a: &mut Acks, b: &mut Barriers, now: Instant) {
        a.barrier_sent(b.sent(), now);
        b.written();
    }

    #[test]
    fn a_barrier_confirms_what_was_handed_before_it_and_nothing_after() {
        let now = Instant::now();
        let (mut a, mut b) = (Acks::default(), Barriers::default());
        a.owe(1, 10);
        a.handed();
        barrier(&mut a, &mut b, now);
        a.owe(2, 11);
        a.handed();
        assert_eq!(a.answer(|t| b.state(t, 0)), None, "not answered yet");
        b.answered(0);
        assert_eq!(a.answer(|t| b.state(t, 0)), Some(10));
        assert!(a.unconfirmed(), "position 11 was handed after the barrier");
        assert!(a.barrier_due(now + Acks::BARRIER_EVERY));
    }

    #[test]
    fn barriers_go_out_at_most_every_100_ms() {
        let t0 = Instant::now();
        let (mut a, mut b) = (Acks::default(), Barriers::default());
        a.owe(1, 1);
        a.handed();
        barrier(&mut a, &mut b, t0);
        b.answered(0);
        a.answer(|t| b.state(t, 0));
        a.owe(2, 2);
        a.handed();
        assert!(!a.barrier_due(t0 + Duration::from_millis(99)));
        assert!(a.barrier_due(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn an_entry_keeps_its_packet_id_and_a_position_past_32_bits() {
        let mut a = Acks::default();
        let pos = (1 << 40) + 7;
        a.owe(0xfedc, pos);
        assert_eq!(a.next_ack(), Some(0xfedc));
        a.handed();
        assert!(a.unconfirmed());
        assert_eq!(a.all_confirmed(), pos);
    }

    #[test]
    fn only_one_barrier_is_in_flight_at_a_time() {
        let t0 = Instant::now();
        let (mut a, mut b) = (Acks::default(), Barriers::default());
        a.owe(1, 1);
        a.handed();
        barrier(&mut a, &mut b, t0);
        a.owe(2, 2);
        a.handed();
        assert!(!a.barrier_due(t0 + Duration::from_secs(5)), "the first is still unanswered");
    }

    #[test]
    fn a_reconnect_voids_the_barrier_written_before_it_and_a_new_one_goes_out() {
        let t0 = Instant::now();
        let (mut a, mut b) = (Acks::default(), Barriers::default());
        a.owe(1, 1);
        a.handed();
        barrier(&mut a, &mut b, t0);
        b.reconnected();
        assert_eq!(a.answer(|t| b.state(t, 0)), None);
        assert!(a.unconfirmed(), "a voided barrier proves nothing");
        let later = t0 + Acks::BARRIER_EVERY;
        assert!(a.barrier_due(later));
        barrier(&mut a, &mut b, later);
        b.answered(0);
        assert_eq!(a.answer(|t| b.state(t, 0)), Some(1));
    }

    #[test]
    fn a_barrier_left_over_from_before_a_reconnect_is_answered_as_itself() {
        let mut b = Barriers::default();
        // handed while the connection was down: the client writes it on the next one
        let stale = b.sent();
        b.reconnected();
        b.written();
        let fresh = b.sent();
        b.written();
        b.answered(0);
        assert_eq!(b.state(stale, 0), BarrierState::Answered);
        assert_eq!(b.state(fresh, 0), BarrierState::Waiting, "the first answer was the left-over's");
        b.answered(0);
        assert_eq!(b.state(fresh, 0), BarrierState::Answered);
    }

    #[test]
    fn an_answer_counts_once_the_engine_checked_what_came_before_it() {
        let mut b = Barriers::default();
        let t = b.sent();
        b.written();
        // 120 messages (redeliveries among them) came before the UNSUBACK
        b.answered(120);
        assert_eq!(b.state(t, 119), BarrierState::Unchecked);
        assert_eq!(b.state(t, 120), BarrierState::Answered);
    }

    #[test]
    fn answers_are_matched_to_barriers_in_order() {
        let mut b = Barriers::default();
        let (first, second) = (b.sent(), b.sent());
        b.written();
        b.written();
        b.answered(0);
        assert_eq!(b.state(first, 0), BarrierState::Answered);
        assert_eq!(b.state(second, 0), BarrierState::Waiting);
        let third = b.sent();
        b.reconnected();
        assert_eq!(b.state(second, 0), BarrierState::Void, "written before the reconnect, never answered");
        assert_eq!(
            b.state(third, 0),
            BarrierState::Waiting,
            "not written yet: it goes out on this connection"
        );
        b.written();
        b.answered(0);
        assert_eq!(b.state(third, 0), BarrierState::Answered);
    }

    #[test]
    fn a_final_barrier_confirms_everything_handed() {
        let mut a = Acks::default();
        a.owe(1, 4);
        a.owe(2, 9);
        hand_all(&mut a);
        assert_eq!(a.all_confirmed(), 9);
        assert!(!a.unconfirmed());
    }
}
