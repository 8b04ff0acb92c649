//! Recognising the source broker's redeliveries of messages already logged.
//!
//! A QoS 1 message is acknowledged only after the write-ahead log holds it; if
//! the gateway stops between the two, the broker sends it again with the DUP
//! flag and the same packet id. An entry (packet id → content hash and log
//! position) lives exactly as long as the broker may still send that message
//! again: from logging until a barrier proves the broker processed its
//! acknowledgement ([`Redeliveries::confirmed`]; the log records that too, so
//! it survives a crash). After that the broker may reuse the packet id for a
//! new message — even one with identical content — and it is never mistaken
//! for a redelivery. A message without DUP is always new.
//!
//! Acknowledgements go out in log order, so confirmation is a position in
//! the log: every entry at or before it goes. At most 65,535 messages can be
//! unacknowledged at once (one per packet id), so the table is bounded and
//! compact, 512 KiB allocated zeroed (pages appear as ids are used): per
//! packet id a 32-bit content hash and the low 32 bits of its log position
//! (a live entry is never 2^32 messages old); and the live entries in log
//! order (64 KiB, more only if the broker keeps more unconfirmed) as packet
//! id and log position packed in 64 bits (a gateway logs
//! fewer than 2^48 messages in its life: 8,900 years at 1,000,000 a second).
//! The hash only tells a redelivery from a *different* message that a
//! non-conforming broker flags DUP under a live packet id; 32 bits make that
//! mistake once in 4 billion such messages, and halve the table a drain
//! touches in full (a 64-bit hash cost 256 KiB more of resident memory).

use std::collections::VecDeque;

/// Most entries live at once (one per packet id a broker can have in flight).
pub const MAX_ORDER: usize = 1 << 16;

/// Room for live entries at start: those of the last barrier interval, as
/// the acknowledgement gate bounds them; `order` grows (to `MAX_ORDER`) only
/// under a broker that keeps more unconfirmed.
const ORDER_START: usize = 8192;

/// Log positions an entry of `order` can hold.
const SEQ_BITS: u32 = 48;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

pub struct Redeliveries {
    /// Content hash ([`short`]) of the live entry of each packet id; 0 = none.
    hash: Box<[u32]>,
    /// Low 32 bits of the log position of the live entry of each packet id.
    seq_lo: Box<[u32]>,
    /// Live entries in log order: packet id << 48 | log position.
    order: VecDeque<u64>,
    /// Live entries whose acknowledgement went out on an earlier connection
    /// (or an earlier run) and was not proven processed there: no barrier of
    /// a later connection proves it, so they are not confirmed by position.
    /// One goes when its packet id carries a new message, when the broker
    /// sends it again (it moves to `order`, acknowledged again) or, oldest
    /// first, when the table is full.
    pinned: VecDeque<u64>,
    /// The latest log position noted: live positions are rebuilt from their low bits below it.
    last: u64,
}

impl Default for Redeliveries {
    fn default() -> Self {
        Redeliveries {
            hash: vec![0u32; 1 << 16].into_boxed_slice(),
            seq_lo: vec![0u32; 1 << 16].into_boxed_slice(),
            order: VecDeque::with_capacity(ORDER_START),
            pinned: VecDeque::new(),
            last: 0,
        }
    }
}

/// The content hash of a message (never 0).
pub fn message_hash(topic: &str, payload: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(payload, xxhash_rust::xxh3::xxh3_64(topic.as_bytes())) | 1
}

/// The hash a table entry keeps (never 0): the low 32 bits of
/// [`message_hash`], as checkpoints written before they were cut still hold it.
fn short(hash: u64) -> u32 {
    hash as u32 | 1
}

impl Redeliveries {
    /// Notes a message logged at position `seq`. Packet id 0 is a QoS 0 message: never redelivered.
    pub fn logged(&mut self, pkid: u16, seq: u64, topic: &str, payload: &[u8]) {
        if pkid != 0 {
            self.logged_hash(pkid, seq, message_hash(topic, payload));
        }
    }

    fn logged_hash(&mut self, pkid: u16, seq: u64, hash: u64) {
        let seq = seq & SEQ_MASK;
        if self.order.len() + self.pinned.len() >= MAX_ORDER {
            // cannot happen with a conforming broker (65,535 ids); the oldest is the safest to forget
            if let Some(e) = self.pinned.pop_front().or_else(|| self.order.pop_front()) {
                self.forget(e);
            }
        }
        self.hash[pkid as usize] = short(hash);
        self.seq_lo[pkid as usize] = seq as u32;
        self.last = self.last.max(seq);
        self.order.push_back(u64::from(pkid) << SEQ_BITS | seq);
    }

    /// The log position of packet id `pkid`'s live entry.
    fn seq_of(&self, pkid: u16) -> u64 {
        let back = (self.last as u32).wrapping_sub(self.seq_lo[pkid as usize]);
        self.last - u64::from(back)
    }

    /// Clears the entry `e` of `order` unless its packet id carries a later message now.
    fn forget(&mut self, e: u64) {
        if self.is_live(e) {
            self.hash[(e >> SEQ_BITS) as usize] = 0;
        }
    }

    /// Whether entry `e` is its packet id's live one.
    fn is_live(&self, e: u64) -> bool {
        let (pkid, seq) = ((e >> SEQ_BITS) as u16, e & SEQ_MASK);
        self.hash[pkid as usize] != 0 && self.seq_of(pkid) == seq
    }

    /// The source connection changed: every entry not confirmed so far had its
    /// acknowledgement written (if at all) on a connection that is gone, and
    /// the barriers of the new one do not prove it. The broker may still send
    /// those messages again — Mosquitto, restarted, sends the redeliveries
    /// beyond its in-flight window only after answering the first barriers.
    pub fn pin(&mut self) {
        let (mut pinned, mut order) = (std::mem::take(&mut self.pinned), std::mem::take(&mut self.order));
        pinned.retain(|&e| self.is_live(e));
        pinned.extend(order.drain(..).filter(|&e| self.is_live(e)));
        (self.pinned, self.order) = (pinned, order);
    }

    /// The live entry of `pkid` was redelivered and is acknowledged again at
    /// log position `seq`: it now lives until that acknowledgement is confirmed.
    pub fn again(&mut self, pkid: u16, seq: u64) {
        let hash = self.hash[pkid as usize];
        if hash != 0 && seq >= self.seq_of(pkid) {
            self.logged_hash(pkid, seq, u64::from(hash));
        }
    }

    /// The broker processed the acknowledgements of every message logged up to `through`.
    pub fn confirmed(&mut self, through: u64) {
        while let Some(&e) = self.order.front() {
            if e & SEQ_MASK > through {
                break;
            }
            self.order.pop_front();
            self.forget(e);
        }
    }

    /// The log position of the message this one (flagged DUP by the broker)
    /// redelivers, if it is one already logged and not yet confirmed.
    pub fn original(&self, dup: bool, pkid: u16, topic: &str, payload: &[u8]) -> Option<u64> {
        let hash = self.hash[pkid as usize];
        (dup && pkid != 0 && hash != 0 && hash == short(message_hash(topic, payload)))
            .then(|| self.seq_of(pkid))
    }

    /// Live entries (packet id, content hash, log position), oldest first: what a checkpoint keeps.
    pub fn live(&self) -> Live<'_> {
        Live { entries: self.pinned.iter().chain(self.order.iter()), left: self.len(), table: self }
    }

    /// Live entries (with any whose packet id carries a later message now).
    pub fn len(&self) -> usize {
        self.order.len() + self.pinned.len()
    }

    /// Restores the entries a checkpoint kept: pinned, as their
    /// acknowledgements went out before this run.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = (u16, u64, u64)>) {
        for (pkid, hash, seq) in entries {
            if pkid != 0 && hash != 0 {
                self.logged_hash(pkid, seq, hash);
            }
        }
        self.pin();
    }
}

/// [`Redeliveries::live`]: pinned entries, then the others, oldest first.
pub struct Live<'a> {
    entries: std::iter::Chain<
        std::collections::vec_deque::Iter<'a, u64>,
        std::collections::vec_deque::Iter<'a, u64>,
    >,
    left: usize,
    table: &'a Redeliveries,
}

impl Iterator for Live<'_> {
    type Item = (u16, u64, u64);

    fn next(&mut self) -> Option<Self::Item> {
        let &e = self.entries.next()?;
        self.left -= 1;
        let pkid = (e >> SEQ_BITS) as u16;
        let seq = e & SEQ_MASK;
        // an entry whose id carries a later message now: its hash is gone with it
        let t = self.table;
        let hash = if t.seq_of(pkid) == seq { u64::from(t.hash[pkid as usize]) } else { 0 };
        Some((pkid, hash, seq))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Live<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_message_flagged_dup_is_a_redelivery_until_its_ack_is_confirmed() {
        let mut r = Redeliveries::default();
        r.logged(7, 1, "t/a", b"1");
        assert!(r.original(true, 7, "t/a", b"1").is_some());
        // not flagged DUP, another id, other content, or QoS 0: not a redelivery
        assert!(r.original(false, 7, "t/a", b"1").is_none());
        assert!(r.original(true, 8, "t/a", b"1").is_none());
        assert!(r.original(true, 7, "t/a", b"2").is_none());
        assert!(r.original(true, 7, "t/b", b"1").is_none());
        r.logged(0, 2, "t/q0", b"x");
        assert!(r.original(true, 0, "t/q0", b"x").is_none());
        r.confirmed(1);
        assert!(
            r.original(true, 7, "t/a", b"1").is_none(),
            "the broker may reuse id 7 for a new, equal message"
        );
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn an_identical_message_under_a_reused_id_is_new_once_the_first_is_confirmed() {
        let mut r = Redeliveries::default();
        r.logged(7, 10, "t", b"1");
        r.logged(8, 11, "t", b"1");
        r.confirmed(10);
        r.logged(7, 12, "t", b"1"); // id 7 reused: the broker had the first acknowledgement
        assert!(r.original(true, 7, "t", b"1").is_some());
        assert!(r.original(true, 8, "t", b"1").is_some());
        // confirming up to 11 must not forget the second message under id 7 (position 12)
        r.confirmed(11);
        assert!(r.original(true, 7, "t", b"1").is_some());
        assert!(r.original(true, 8, "t", b"1").is_none());
        r.confirmed(12);
        assert!(r.original(true, 7, "t", b"1").is_none());
    }

    #[test]
    fn live_entries_checkpoint_and_restore() {
        let mut r = Redeliveries::default();
        for i in 1..=100u64 {
            r.logged(i as u16, i, "t", &i.to_le_bytes());
        }
        r.confirmed(60);
        let kept: Vec<_> = r.live().collect();
        assert_eq!(kept.len(), 40);
        assert_eq!(kept[0].2, 61);
        let mut s = Redeliveries::default();
        s.restore(kept);
        assert!(s.original(true, 100, "t", &100u64.to_le_bytes()).is_some());
        assert!(s.original(true, 60, "t", &60u64.to_le_bytes()).is_none());
        // their acknowledgements went out in an earlier run: no barrier of this one proves them
        s.confirmed(100);
        assert_eq!(s.len(), 40);
        assert!(s.original(true, 100, "t", &100u64.to_le_bytes()).is_some());
    }

    #[test]
    fn entries_of_an_earlier_connection_outlive_the_later_connections_barriers() {
        let mut r = Redeliveries::default();
        for i in 1..=10u64 {
            r.logged(i as u16, i, "t", &i.to_le_bytes());
        }
        r.confirmed(4);
        r.pin();
        r.logged(11, 11, "t", b"new");
        // a barrier of the new connection covers positions 1..=11
        r.confirmed(11);
        assert!(r.original(true, 11, "t", b"new").is_none(), "acknowledged on this connection: proven");
        for i in 5..=10u64 {
            assert_eq!(r.original(true, i as u16, "t", &i.to_le_bytes()), Some(i), "pinned {i}");
        }
        // 5 comes again and is acknowledged again at 12: once that is proven, it goes
        r.again(5, 12);
        r.confirmed(12);
        assert!(r.original(true, 5, "t", &5u64.to_le_bytes()).is_none());
        // 6's id carries a new message: the pinned entry is gone with the next pin
        r.logged(6, 13, "t", b"other");
        r.confirmed(13);
        r.pin();
        assert_eq!(r.live().map(|(p, _, _)| p).collect::<Vec<_>>(), [7, 8, 9, 10]);
    }

    #[test]
    fn log_positions_past_32_bits_come_back_whole() {
        let mut r = Redeliveries::default();
        let base = (1u64 << 33) + 5;
        r.logged(9, base, "t", b"a");
        r.logged(10, base + (1 << 20), "t", b"b");
        assert_eq!(r.original(true, 9, "t", b"a"), Some(base));
        assert_eq!(r.original(true, 10, "t", b"b"), Some(base + (1 << 20)));
        r.confirmed(base);
        assert_eq!(r.original(true, 9, "t", b"a"), None);
        assert_eq!(
            r.live().collect::<Vec<_>>(),
            [(10, u64::from(short(message_hash("t", b"b"))), base + (1 << 20))]
        );
    }

    #[test]
    fn a_checkpoint_holding_a_whole_64_bit_hash_still_matches() {
        // checkpoints written before the table kept 32 bits hold the whole hash
        let full = message_hash("t", b"x");
        let mut s = Redeliveries::default();
        s.restore([(5, full, 3)]);
        assert_eq!(s.original(true, 5, "t", b"x"), Some(3));
        assert_eq!(s.original(true, 5, "t", b"y"), None);
    }

    #[test]
    fn an_entry_whose_id_carries_a_later_message_is_not_checkpointed_with_its_hash() {
        let mut r = Redeliveries::default();
        r.logged(7, 1, "t", b"old");
        r.logged(7, 2, "t", b"new");
        let kept: Vec<_> = r.live().collect();
        assert_eq!(kept, [(7, 0, 1), (7, u64::from(short(message_hash("t", b"new"))), 2)]);
        let mut s = Redeliveries::default();
        s.restore(kept);
        assert_eq!(s.original(true, 7, "t", b"new"), Some(2));
        assert_eq!(s.original(true, 7, "t", b"old"), None);
        // confirming the older entry leaves the later message under the same id
        r.confirmed(1);
        assert_eq!(r.original(true, 7, "t", b"new"), Some(2));
    }
}
