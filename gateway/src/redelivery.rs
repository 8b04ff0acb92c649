//! Recognising the source broker's redeliveries of messages already logged.
//!
//! A QoS 1 message is acknowledged only after the write-ahead log holds it; if
//! the gateway stops between the two, the broker sends it again (DUP set)
//! with the same packet id. A broker never reuses a packet id while a message
//! with it is unacknowledged, so the last message logged under a packet id is
//! the only one a redelivery under that id can be: one content hash per
//! packet id (fixed 512 KiB table, allocated zeroed: pages appear as ids are
//! used) answers exactly, in O(1).
//!
//! Acknowledgements go out in log order, so the messages the broker may still
//! send again are the last ones logged: those whose acknowledgement the
//! gateway still holds or has just handed to its MQTT client. A checkpoint
//! keeps the entries of that many last QoS 1 messages (the log after the
//! checkpoint restores the rest); at most 65,535 can be unacknowledged at
//! once (one per packet id), so the record of the order is bounded too.

use std::collections::VecDeque;

/// Most QoS 1 messages whose order is kept (a broker never has more unacknowledged).
pub const MAX_ORDER: usize = 1 << 16;

pub struct Redeliveries {
    /// Content hash (never 0) of the last message logged under each packet id; 0 = none.
    by_pkid: Box<[u64]>,
    /// Packet ids of the last [`MAX_ORDER`] QoS 1 messages logged, oldest first.
    order: VecDeque<u16>,
}

impl Default for Redeliveries {
    fn default() -> Self {
        Redeliveries {
            by_pkid: vec![0u64; 1 << 16].into_boxed_slice(),
            order: VecDeque::with_capacity(MAX_ORDER),
        }
    }
}

/// The content hash of a message (never 0).
pub fn message_hash(topic: &str, payload: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(payload, xxhash_rust::xxh3::xxh3_64(topic.as_bytes())) | 1
}

impl Redeliveries {
    /// Notes a logged message. Packet id 0 is a QoS 0 message: never redelivered.
    pub fn logged(&mut self, pkid: u16, topic: &str, payload: &[u8]) {
        if pkid != 0 {
            self.logged_hash(pkid, message_hash(topic, payload));
        }
    }

    fn logged_hash(&mut self, pkid: u16, hash: u64) {
        self.by_pkid[pkid as usize] = hash;
        if self.order.len() == MAX_ORDER {
            self.order.pop_front();
        }
        self.order.push_back(pkid);
    }

    /// Whether a message (flagged DUP by the broker) is one already logged.
    pub fn is_redelivery(&self, dup: bool, pkid: u16, topic: &str, payload: &[u8]) -> bool {
        dup && pkid != 0 && self.by_pkid[pkid as usize] == message_hash(topic, payload)
    }

    /// The entries of the last `n` QoS 1 messages logged, oldest first (what a
    /// checkpoint keeps: `n` = acknowledgements not yet sent, with a margin).
    pub fn recent(&self, n: usize) -> impl ExactSizeIterator<Item = (u16, u64)> + '_ {
        self.order.iter().skip(self.order.len().saturating_sub(n)).map(|&p| (p, self.by_pkid[p as usize]))
    }

    /// Restores the entries a checkpoint kept.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = (u16, u64)>) {
        for (pkid, hash) in entries {
            if pkid != 0 && hash != 0 {
                self.logged_hash(pkid, hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_message_under_a_packet_id_is_recognised() {
        let mut r = Redeliveries::default();
        r.logged(7, "t/a", b"1");
        assert!(r.is_redelivery(true, 7, "t/a", b"1"));
        // not flagged DUP, another id, other content, or QoS 0: not a redelivery
        assert!(!r.is_redelivery(false, 7, "t/a", b"1"));
        assert!(!r.is_redelivery(true, 8, "t/a", b"1"));
        assert!(!r.is_redelivery(true, 7, "t/a", b"2"));
        assert!(!r.is_redelivery(true, 7, "t/b", b"1"));
        r.logged(0, "t/q0", b"x");
        assert!(!r.is_redelivery(true, 0, "t/q0", b"x"));
        // the id reused for a new message (the old one was acknowledged)
        r.logged(7, "t/a", b"3");
        assert!(!r.is_redelivery(true, 7, "t/a", b"1"));
        assert!(r.is_redelivery(true, 7, "t/a", b"3"));
    }

    #[test]
    fn checkpointed_entries_are_the_latest_and_restore() {
        let mut r = Redeliveries::default();
        let n = MAX_ORDER as u32 + 10;
        for i in 0..n {
            r.logged((i % 65535 + 1) as u16, "t", &i.to_le_bytes());
        }
        assert_eq!(r.recent(usize::MAX).len(), MAX_ORDER);
        let kept: Vec<_> = r.recent(100).collect();
        assert_eq!(kept.len(), 100);
        assert_eq!(kept[0].0, ((n - 100) % 65535 + 1) as u16);
        let mut s = Redeliveries::default();
        s.restore(kept);
        let last = n - 1;
        assert!(s.is_redelivery(true, (last % 65535 + 1) as u16, "t", &last.to_le_bytes()));
        assert!(!s.is_redelivery(true, 1, "t", &0u32.to_le_bytes()));
    }
}
