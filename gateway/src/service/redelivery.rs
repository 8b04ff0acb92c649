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
//! the log: every entry at or before it goes. A packet id has at most one
//! live entry (a new message under it ends the one before: the broker reuses
//! an id only once it has the acknowledgement), so the table is one slot per
//! id, 512 KiB allocated zeroed (pages appear as ids are used): a 32-bit
//! content hash and the low 32 bits of the log position (a live entry is
//! never 2^32 messages old), and one bit for entries pinned by a reconnect.
//! A confirmation walks the table (~65,536 slots, tens of microseconds, at
//! most once per barrier answer, not per message): a list of the live entries
//! in log order, kept before, held 512 KiB more at the peak of a QoS 1 drain
//! (Mosquitto answers a barrier only after the whole backlog it had queued,
//! so every id of the drain was live at once).
//! The hash only tells a redelivery from a *different* message that a
//! non-conforming broker flags DUP under a live packet id; 32 bits make that
//! mistake once in 4 billion such messages, and halve the table a drain
//! touches in full (a 64-bit hash cost 256 KiB more of resident memory).

/// Most entries live at once (one per packet id).
pub const MAX_LIVE: usize = 1 << 16;

pub struct Redeliveries {
    /// Content hash ([`short`]) of the live entry of each packet id; 0 = none.
    hash: Box<[u32]>,
    /// Low 32 bits of the log position of the live entry of each packet id.
    seq_lo: Box<[u32]>,
    /// One bit per packet id: its live entry's acknowledgement went out on an
    /// earlier connection (or an earlier run) and was not proven processed
    /// there; no barrier of a later connection proves it, so it is not
    /// confirmed by position. It goes when its packet id carries a new
    /// message, or when the broker sends it again (acknowledged again, it is
    /// confirmed by position once more).
    pinned: Box<[u64]>,
    /// Live entries, and those of them not pinned.
    live: usize,
    unpinned: usize,
    /// The latest log position noted: live positions are rebuilt from their low bits below it.
    last: u64,
}

impl Default for Redeliveries {
    fn default() -> Self {
        Redeliveries {
            hash: vec![0u32; MAX_LIVE].into_boxed_slice(),
            seq_lo: vec![0u32; MAX_LIVE].into_boxed_slice(),
            pinned: vec![0u64; MAX_LIVE / 64].into_boxed_slice(),
            live: 0,
            unpinned: 0,
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
            self.set(pkid, seq, short(message_hash(topic, payload)));
        }
    }

    /// Makes `(hash, seq)` the live, unpinned entry of `pkid` (ending any before it).
    fn set(&mut self, pkid: u16, seq: u64, hash: u32) {
        let p = pkid as usize;
        if self.hash[p] == 0 {
            self.live += 1;
            self.unpinned += 1;
        } else if self.is_pinned(p) {
            self.unpinned += 1;
        }
        self.pinned[p / 64] &= !(1 << (p % 64));
        self.hash[p] = hash;
        self.seq_lo[p] = seq as u32;
        self.last = self.last.max(seq);
    }

    fn is_pinned(&self, p: usize) -> bool {
        self.pinned[p / 64] & (1 << (p % 64)) != 0
    }

    /// The log position of packet id `pkid`'s live entry.
    fn seq_of(&self, pkid: u16) -> u64 {
        let back = (self.last as u32).wrapping_sub(self.seq_lo[pkid as usize]);
        self.last - u64::from(back)
    }

    /// The source connection changed: every entry not confirmed so far had its
    /// acknowledgement written (if at all) on a connection that is gone, and
    /// the barriers of the new one do not prove it. The broker may still send
    /// those messages again — Mosquitto, restarted, sends the redeliveries
    /// beyond its in-flight window only after answering the first barriers.
    pub fn pin(&mut self) {
        if self.unpinned == 0 {
            return;
        }
        for (p, &h) in self.hash.iter().enumerate() {
            if h != 0 {
                self.pinned[p / 64] |= 1 << (p % 64);
            }
        }
        self.unpinned = 0;
    }

    /// The live entry of `pkid` was redelivered and is acknowledged again at
    /// log position `seq`: it now lives until that acknowledgement is confirmed.
    pub fn again(&mut self, pkid: u16, seq: u64) {
        let hash = self.hash[pkid as usize];
        if hash != 0 && seq >= self.seq_of(pkid) {
            self.set(pkid, seq, hash);
        }
    }

    /// The broker processed the acknowledgements of every message logged up to `through`.
    pub fn confirmed(&mut self, through: u64) {
        if self.unpinned == 0 {
            return;
        }
        for p in 0..MAX_LIVE {
            if self.hash[p] != 0 && !self.is_pinned(p) && self.seq_of(p as u16) <= through {
                self.hash[p] = 0;
                self.live -= 1;
                self.unpinned -= 1;
            }
        }
    }

    /// The log position of the message this one (flagged DUP by the broker)
    /// redelivers, if it is one already logged and not yet confirmed.
    pub fn original(&self, dup: bool, pkid: u16, topic: &str, payload: &[u8]) -> Option<u64> {
        let hash = self.hash[pkid as usize];
        (dup && pkid != 0 && hash != 0 && hash == short(message_hash(topic, payload)))
            .then(|| self.seq_of(pkid))
    }

    /// Live entries (packet id, content hash, log position) in packet id order: what a checkpoint keeps.
    pub fn live(&self) -> Live<'_> {
        Live { next: 0, left: self.live, table: self }
    }

    /// Live entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live
    }

    /// Restores the entries a checkpoint kept: pinned, as their
    /// acknowledgements went out before this run.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = (u16, u64, u64)>) {
        for (pkid, hash, seq) in entries {
            if pkid != 0 && hash != 0 {
                self.set(pkid, seq, short(hash));
            }
        }
        self.pin();
    }
}

/// [`Redeliveries::live`]: the live entries in packet id order.
pub struct Live<'a> {
    next: usize,
    left: usize,
    table: &'a Redeliveries,
}

impl Iterator for Live<'_> {
    type Item = (u16, u64, u64);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let t = self.table;
        let p = self.next + t.hash[self.next..].iter().position(|&h| h != 0)?;
        self.next = p + 1;
        self.left -= 1;
        Some((p as u16, u64::from(t.hash[p]), t.seq_of(p as u16)))
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
        assert_eq!(kept, [(7, u64::from(short(message_hash("t", b"new"))), 2)]);
        let mut s = Redeliveries::default();
        s.restore(kept);
        assert_eq!(s.original(true, 7, "t", b"new"), Some(2));
        assert_eq!(s.original(true, 7, "t", b"old"), None);
        // confirming the older entry leaves the later message under the same id
        r.confirmed(1);
        assert_eq!(r.original(true, 7, "t", b"new"), Some(2));
    }

    #[test]
    fn a_drain_that_cycles_every_id_keeps_one_entry_per_id() {
        // Mosquitto answers the barrier only after the backlog: 200,000 messages, ids cycling
        let mut r = Redeliveries::default();
        for seq in 1..=200_000u64 {
            r.logged((seq % 65_535) as u16 + 1, seq, "t", &seq.to_le_bytes());
        }
        assert_eq!(r.len(), 65_535);
        let last = 200_000u64;
        assert_eq!(r.original(true, (last % 65_535) as u16 + 1, "t", &last.to_le_bytes()), Some(last));
        let older = last - 65_535;
        assert_eq!(r.original(true, (older % 65_535) as u16 + 1, "t", &older.to_le_bytes()), None);
        r.confirmed(last - 10);
        assert_eq!(r.len(), 10);
        assert_eq!(r.live().count(), 10);
    }

    /// One operation on the table, for the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Logged(u16, u8),
        Again(u16),
        Confirmed(u8),
        Pin,
        Checkpoint,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u16..6, 0u8..3).prop_map(|(p, c)| Op::Logged(p, c)),
            1 => (1u16..6).prop_map(Op::Again),
            2 => (0u8..8).prop_map(Op::Confirmed),
            1 => Just(Op::Pin),
            1 => Just(Op::Checkpoint),
        ]
    }

    proptest::proptest! {
        /// The table against a brute-force model: per packet id its live entry
        /// (content, position, pinned); a confirmation through a position ends
        /// every unpinned entry at or before it; a new message or a redelivery
        /// acknowledged again makes the id's entry unpinned at its position.
        #[test]
        fn the_table_is_a_map_from_id_to_its_last_unconfirmed_message(ops in proptest::collection::vec(op(), 1..80)) {
            use std::collections::HashMap;
            let mut r = Redeliveries::default();
            let mut model: HashMap<u16, (u8, u64, bool)> = HashMap::new();
            let mut seq = 0u64;
            for o in ops {
                match o {
                    Op::Logged(p, c) => {
                        seq += 1;
                        r.logged(p, seq, "t", &[c]);
                        if p != 0 {
                            model.insert(p, (c, seq, false));
                        }
                    }
                    Op::Again(p) => {
                        seq += 1;
                        r.again(p, seq);
                        if let Some(e) = model.get_mut(&p) {
                            (e.1, e.2) = (seq, false);
                        }
                    }
                    Op::Confirmed(back) => {
                        let through = seq.saturating_sub(u64::from(back));
                        r.confirmed(through);
                        model.retain(|_, &mut (_, s, pinned)| pinned || s > through);
                    }
                    Op::Pin => {
                        r.pin();
                        model.values_mut().for_each(|e| e.2 = true);
                    }
                    Op::Checkpoint => {
                        let kept: Vec<_> = r.live().collect();
                        r = Redeliveries::default();
                        r.restore(kept);
                        model.values_mut().for_each(|e| e.2 = true);
                    }
                }
                proptest::prop_assert_eq!(r.len(), model.len());
                proptest::prop_assert_eq!(r.live().len(), model.len());
                for p in 0..6u16 {
                    for c in 0..3u8 {
                        let want = model.get(&p).filter(|e| e.0 == c).map(|e| e.1);
                        proptest::prop_assert_eq!(r.original(true, p, "t", &[c]), want, "id {} content {}", p, c);
                    }
                }
                let mut live: Vec<_> = r.live().collect();
                let mut want: Vec<_> = model.iter().map(|(&p, &(c, s, _))| (p, u64::from(short(message_hash("t", &[c]))), s)).collect();
                live.sort_unstable();
                want.sort_unstable();
                proptest::prop_assert_eq!(live, want);
            }
        }
    }

    proptest::proptest! {
        /// What recovery relies on: confirmations applied at the next pin (or
        /// at the end) leave the table as applying each one does, for a log
        /// in order (each confirmed position at most the last logged one).
        #[test]
        fn confirmations_held_until_the_next_pin_change_nothing(ops in proptest::collection::vec((0u8..4, 0u16..6, 0u8..4), 1..80)) {
            let (mut each, mut held) = (Redeliveries::default(), Redeliveries::default());
            let (mut seq, mut pending) = (0u64, None);
            for (kind, p, back) in ops {
                match kind {
                    0 | 1 => {
                        seq += 1;
                        each.logged(p, seq, "t", &[back]);
                        held.logged(p, seq, "t", &[back]);
                    }
                    2 => {
                        let through = seq.saturating_sub(u64::from(back));
                        each.confirmed(through);
                        pending = pending.max(Some(through));
                    }
                    _ => {
                        each.pin();
                        if let Some(t) = pending.take() {
                            held.confirmed(t);
                        }
                        held.pin();
                    }
                }
            }
            if let Some(t) = pending {
                held.confirmed(t);
            }
            proptest::prop_assert_eq!(each.live().collect::<Vec<_>>(), held.live().collect::<Vec<_>>());
            proptest::prop_assert_eq!((each.live, each.unpinned), (held.live, held.unpinned));
        }
    }
}
