//! The uplink's delivery state, without IO: which spooled results were
//! handed to the MQTT client, in which order and under which packet id, which
//! the upstream broker acknowledged, and so how far the spool's delivered
//! position may advance. The uplink task ([`super::uplink`]) reads the spool,
//! talks to the client and reports each event here.
//!
//! The promise (docs/SEMANTICS.md §9.2): a result leaves the spool only after
//! the broker acknowledged it and every result before it; after a reconnect
//! everything from the delivered position goes again (the client's own queue
//! is dropped with its clean session), with the same ids.

use std::collections::{BTreeSet, HashMap, VecDeque};

/// Results handed to the uplink client and not yet acknowledged, at most.
pub const WINDOW: usize = 512;

#[derive(Debug)]
pub struct Delivery {
    connected: bool,
    /// Spool positions handed to the connection, not yet given a packet id.
    handed: VecDeque<u64>,
    by_pkid: HashMap<u16, u64>,
    /// Acknowledged positions above the spool's delivered position.
    done: BTreeSet<u64>,
    next_send: u64,
    inflight: usize,
}

impl Delivery {
    /// Nothing in flight; sending starts at `delivered` (the spool's delivered position).
    pub fn new(delivered: u64) -> Self {
        Delivery {
            connected: false,
            handed: VecDeque::with_capacity(WINDOW),
            by_pkid: HashMap::with_capacity(WINDOW),
            done: BTreeSet::new(),
            next_send: delivered,
            inflight: 0,
        }
    }

    /// CONNACK: send again everything from the delivered position.
    pub fn connected(&mut self, delivered: u64) {
        self.connected = true;
        self.forget_inflight(delivered);
    }

    /// The connection failed: the client drops what it holds at the next
    /// (clean-session) CONNACK, so it all goes again from `delivered`.
    pub fn disconnected(&mut self, delivered: u64) {
        self.connected = false;
        self.forget_inflight(delivered);
    }

    fn forget_inflight(&mut self, delivered: u64) {
        self.handed.clear();
        self.by_pkid.clear();
        self.inflight = 0;
        self.next_send = delivered;
    }

    /// How many more results the client may be handed now, and from which
    /// spool position to read them.
    pub fn wanted(&mut self, delivered: u64) -> Option<(u64, usize)> {
        self.next_send = self.next_send.max(delivered);
        (self.connected && self.inflight < WINDOW).then(|| (self.next_send, WINDOW - self.inflight))
    }

    /// The spooled result at `seq` was read: whether to hand it to the client
    /// (`false`: the broker already acknowledged it; it is passed over).
    pub fn offer(&mut self, seq: u64) -> bool {
        if self.done.contains(&seq) {
            self.next_send = seq + 1;
            return false;
        }
        true
    }

    /// The client took the result at `seq`.
    pub fn handed(&mut self, seq: u64) {
        self.handed.push_back(seq);
        self.next_send = seq + 1;
        self.inflight += 1;
    }

    /// Whether packet id `pkid` carries a result not yet acknowledged.
    pub fn in_flight(&self, pkid: u16) -> bool {
        self.by_pkid.contains_key(&pkid)
    }

    /// The result handed first went out with packet id `pkid`: the spool position it carries.
    pub fn went_out(&mut self, pkid: u16) -> Option<u64> {
        let seq = self.handed.pop_front()?;
        self.by_pkid.insert(pkid, seq);
        Some(seq)
    }

    /// PUBACK for `pkid`: the new delivered position for the spool when it
    /// moved (every result below it acknowledged), given the current one.
    pub fn acknowledged(&mut self, pkid: u16, delivered: u64) -> Option<u64> {
        let seq = self.by_pkid.remove(&pkid)?;
        self.inflight = self.inflight.saturating_sub(1);
        self.done.insert(seq);
        let mut through = delivered;
        while self.done.remove(&through) {
            through += 1;
        }
        if self.done.first().is_some_and(|&d| d < through) {
            self.done.retain(|&d| d >= through);
        }
        (through > delivered).then_some(through)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connects and hands `n` results from `delivered`, each going out with packet id seq + 1.
    fn send(d: &mut Delivery, delivered: u64, n: usize) {
        let (from, room) = d.wanted(delivered).expect("connected with room");
        for seq in from..from + n.min(room) as u64 {
            assert!(d.offer(seq));
            d.handed(seq);
            assert_eq!(d.went_out(seq as u16 + 1), Some(seq));
        }
    }

    #[test]
    fn nothing_is_handed_before_the_connection_is_up() {
        let mut d = Delivery::new(0);
        assert_eq!(d.wanted(0), None);
        d.connected(0);
        assert_eq!(d.wanted(0), Some((0, WINDOW)));
    }

    #[test]
    fn the_spool_advances_only_over_results_acknowledged_without_a_gap() {
        let mut d = Delivery::new(0);
        d.connected(0);
        send(&mut d, 0, 3);
        // the broker acknowledges 2 and 3 before 1
        assert_eq!(d.acknowledged(2, 0), None, "result 0 is not yet acknowledged");
        assert_eq!(d.acknowledged(3, 0), None);
        assert_eq!(d.acknowledged(1, 0), Some(3));
    }

    #[test]
    fn after_a_reconnect_everything_from_the_delivered_position_goes_again() {
        let mut d = Delivery::new(0);
        d.connected(0);
        send(&mut d, 0, 4);
        assert_eq!(d.acknowledged(1, 0), Some(1));
        d.disconnected(1);
        assert_eq!(d.wanted(1), None);
        d.connected(1);
        assert_eq!(d.wanted(1), Some((1, WINDOW)), "results 1..4 were never acknowledged");
        // a late PUBACK of the old connection changes nothing
        assert_eq!(d.acknowledged(3, 1), None);
    }

    #[test]
    fn at_most_a_window_of_results_is_in_flight() {
        let mut d = Delivery::new(0);
        d.connected(0);
        send(&mut d, 0, WINDOW);
        assert_eq!(d.wanted(0), None);
        assert_eq!(d.acknowledged(1, 0), Some(1));
        assert_eq!(d.wanted(1), Some((WINDOW as u64, 1)));
    }

    #[test]
    fn a_result_already_acknowledged_is_not_sent_twice() {
        let mut d = Delivery::new(0);
        d.connected(0);
        send(&mut d, 0, 2);
        assert_eq!(d.acknowledged(2, 0), None);
        // re-reading from the delivered position meets result 1 again: it is passed over
        assert!(d.offer(0));
        assert!(!d.offer(1));
    }

    #[test]
    fn packet_ids_in_flight_are_known_until_acknowledged() {
        let mut d = Delivery::new(0);
        d.connected(0);
        send(&mut d, 0, 2);
        assert!(d.in_flight(1) && d.in_flight(2) && !d.in_flight(3));
        assert_eq!(d.acknowledged(1, 0), Some(1));
        assert!(!d.in_flight(1));
        d.disconnected(1);
        assert!(!d.in_flight(2), "a new connection starts with no ids in use");
    }
}
