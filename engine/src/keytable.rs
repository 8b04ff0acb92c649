//! A fixed-capacity key table: maps a key to a dense slot index in
//! `0..capacity`, keeps slots in least-recently-used order, and never
//! allocates after construction. Operators index their per-key state by slot.

use crate::prelude::*;

use crate::event::Key;

const NONE: u32 = u32::MAX;

/// How a key got its slot from [`KeyTable::claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key had it.
    Known(u32),
    /// A free slot.
    New(u32),
    /// The least recently used key's slot: that key is evicted.
    Evicted(u32),
}

impl Claim {
    pub fn slot(self) -> u32 {
        match self {
            Claim::Known(s) | Claim::New(s) | Claim::Evicted(s) => s,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct KeyTable {
    keys: Box<[Key]>,
    hashes: Box<[u64]>,
    /// Open addressing with linear probing; holds slot indices.
    index: Box<[u32]>,
    mask: usize,
    free: Vec<u32>,
    live: Box<[bool]>,
    /// LRU list over live slots: `head` is the most recently touched.
    prev: Box<[u32]>,
    next: Box<[u32]>,
    head: u32,
    tail: u32,
    len: usize,
    seed: u64,
}

impl KeyTable {
    /// A table for at most `capacity` keys; `seed` keys the hash (pick it at
    /// random in a service exposed to untrusted keys).
    pub fn new(capacity: usize, seed: u64) -> Self {
        let size = (capacity * 2).next_power_of_two().max(4);
        KeyTable {
            keys: vec![Key::empty(); capacity].into_boxed_slice(),
            hashes: vec![0; capacity].into_boxed_slice(),
            index: vec![NONE; size].into_boxed_slice(),
            mask: size - 1,
            free: (0..capacity as u32).rev().collect(),
            live: vec![false; capacity].into_boxed_slice(),
            prev: vec![NONE; capacity].into_boxed_slice(),
            next: vec![NONE; capacity].into_boxed_slice(),
            head: NONE,
            tail: NONE,
            len: 0,
            seed,
        }
    }

    /// After a restore from a checkpoint: gives the free list its full
    /// capacity again, so it never grows while running.
    pub fn after_restore(&mut self) {
        let cap = self.keys.len();
        self.free.reserve_exact(cap.saturating_sub(self.free.len()));
    }

    /// Whether the table was restored with this capacity.
    pub fn shape_matches(&self, capacity: usize) -> bool {
        self.keys.len() == capacity
            && self.hashes.len() == capacity
            && self.live.len() == capacity
            && self.prev.len() == capacity
            && self.next.len() == capacity
            && self.index.len() == (capacity * 2).next_power_of_two().max(4)
            && self.free.len() + self.len == capacity
    }

    /// Bytes this table allocated.
    pub fn memory_bytes(capacity: u64) -> u64 {
        let size = (capacity.saturating_mul(2)).checked_next_power_of_two().unwrap_or(u64::MAX).max(4);
        capacity
            .saturating_mul((core::mem::size_of::<Key>() + 8 + 4 + 1 + 4 + 4) as u64)
            .saturating_add(size.saturating_mul(4))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    #[inline]
    fn hash(&self, key: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), self.seed)
    }

    /// The slot of `key`, if present.
    #[inline]
    pub fn get(&self, key: &str) -> Option<u32> {
        let h = self.hash(key);
        let mut i = h as usize & self.mask;
        loop {
            let s = self.index[i];
            if s == NONE {
                return None;
            }
            if self.hashes[s as usize] == h && self.keys[s as usize].as_str() == key {
                return Some(s);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Inserts a key that is not present; `None` when the table is full.
    pub fn insert(&mut self, key: &Key) -> Option<u32> {
        let slot = self.free.pop()?;
        let h = self.hash(key.as_str());
        let mut i = h as usize & self.mask;
        while self.index[i] != NONE {
            i = (i + 1) & self.mask;
        }
        self.index[i] = slot;
        self.keys[slot as usize].clone_from(key);
        self.hashes[slot as usize] = h;
        self.live[slot as usize] = true;
        self.len += 1;
        self.link_front(slot);
        Some(slot)
    }

    /// The slot of `key`, marked most recently used. A new key takes a free
    /// slot or, when the table is full, the slot of the least recently used
    /// key, which is evicted: the owner's state in that slot is still the
    /// evicted key's, to be counted and cleared ([`Claim::Evicted`]). The one
    /// eviction rule of windows, joins, clocks and device watermarks.
    pub fn claim(&mut self, key: &Key) -> Claim {
        if let Some(s) = self.get(key.as_str()) {
            self.touch(s);
            return Claim::Known(s);
        }
        if let Some(s) = self.insert(key) {
            return Claim::New(s);
        }
        let victim = self.lru().expect("a full table has a least recently used key");
        self.remove(victim);
        let s = self.insert(key).expect("a slot was freed");
        debug_assert_eq!(s, victim, "the freed slot is the one taken");
        Claim::Evicted(s)
    }

    /// Removes the key in `slot`, freeing the slot.
    pub fn remove(&mut self, slot: u32) {
        let h = self.hashes[slot as usize];
        let mut i = h as usize & self.mask;
        while self.index[i] != slot {
            debug_assert!(self.index[i] != NONE, "slot not in the index");
            i = (i + 1) & self.mask;
        }
        // backward-shift deletion keeps probe chains intact without tombstones
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let s = self.index[j];
            if s == NONE {
                break;
            }
            let ideal = self.hashes[s as usize] as usize & self.mask;
            let movable = if i <= j { ideal <= i || ideal > j } else { ideal <= i && ideal > j };
            if movable {
                self.index[i] = s;
                i = j;
            }
        }
        self.index[i] = NONE;
        self.unlink(slot);
        self.keys[slot as usize].clear();
        self.live[slot as usize] = false;
        self.free.push(slot);
        self.len -= 1;
    }

    /// Whether `slot` holds a key.
    pub fn is_live(&self, slot: u32) -> bool {
        self.live[slot as usize]
    }

    pub fn key(&self, slot: u32) -> &Key {
        &self.keys[slot as usize]
    }

    /// Marks `slot` as the most recently used.
    #[inline]
    pub fn touch(&mut self, slot: u32) {
        if self.head != slot {
            self.unlink(slot);
            self.link_front(slot);
        }
    }

    /// The least recently used live slot.
    pub fn lru(&self) -> Option<u32> {
        (self.tail != NONE).then_some(self.tail)
    }

    /// Live slots, most recently used first.
    pub fn iter_mru(&self) -> impl Iterator<Item = u32> + '_ {
        let mut cur = self.head;
        core::iter::from_fn(move || {
            if cur == NONE {
                return None;
            }
            let s = cur;
            cur = self.next[s as usize];
            Some(s)
        })
    }

    fn link_front(&mut self, s: u32) {
        self.prev[s as usize] = NONE;
        self.next[s as usize] = self.head;
        if self.head != NONE {
            self.prev[self.head as usize] = s;
        }
        self.head = s;
        if self.tail == NONE {
            self.tail = s;
        }
    }

    fn unlink(&mut self, s: u32) {
        let (p, n) = (self.prev[s as usize], self.next[s as usize]);
        if p != NONE {
            self.next[p as usize] = n;
        } else {
            self.head = n;
        }
        if n != NONE {
            self.prev[n as usize] = p;
        } else {
            self.tail = p;
        }
        self.prev[s as usize] = NONE;
        self.next[s as usize] = NONE;
    }
}

/// An indexed binary min-heap of key slots by a time (e.g. when a key's
/// earliest window closes), with update and removal by slot. Fixed capacity.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SlotHeap {
    heap: Box<[(i64, u32)]>,
    len: usize,
    pos: Box<[u32]>,
}

impl SlotHeap {
    /// Whether the heap was restored with this capacity.
    pub fn shape_matches(&self, capacity: usize) -> bool {
        self.heap.len() == capacity && self.pos.len() == capacity && self.len <= capacity
    }

    pub fn new(capacity: usize) -> Self {
        SlotHeap {
            heap: vec![(0, 0); capacity].into_boxed_slice(),
            len: 0,
            pos: vec![NONE; capacity].into_boxed_slice(),
        }
    }

    pub fn memory_bytes(capacity: u64) -> u64 {
        capacity.saturating_mul(16 + 4)
    }

    pub fn peek(&self) -> Option<(i64, u32)> {
        (self.len > 0).then(|| self.heap[0])
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The time of `slot`, if queued.
    pub fn get(&self, slot: u32) -> Option<i64> {
        let p = self.pos[slot as usize];
        (p != NONE).then(|| self.heap[p as usize].0)
    }

    /// Queues `slot` at time `t`, or moves it there.
    pub fn set(&mut self, slot: u32, t: i64) {
        let p = self.pos[slot as usize];
        if p == NONE {
            let i = self.len;
            self.len += 1;
            self.heap[i] = (t, slot);
            self.pos[slot as usize] = i as u32;
            self.up(i);
        } else {
            let i = p as usize;
            let old = self.heap[i].0;
            self.heap[i].0 = t;
            if t < old {
                self.up(i);
            } else {
                self.down(i);
            }
        }
    }

    /// Takes `slot` out of the heap if it is queued.
    pub fn remove(&mut self, slot: u32) {
        let p = self.pos[slot as usize];
        if p == NONE {
            return;
        }
        let i = p as usize;
        self.len -= 1;
        self.pos[slot as usize] = NONE;
        if i != self.len {
            self.heap[i] = self.heap[self.len];
            self.pos[self.heap[i].1 as usize] = i as u32;
            self.up(i);
            self.down(i);
        }
    }

    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].0 <= self.heap[i].0 {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut m = i;
            if l < self.len && self.heap[l].0 < self.heap[m].0 {
                m = l;
            }
            if r < self.len && self.heap[r].0 < self.heap[m].0 {
                m = r;
            }
            if m == i {
                break;
            }
            self.swap(i, m);
            i = m;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1 as usize] = a as u32;
        self.pos[self.heap[b].1 as usize] = b as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        #[test]
        fn table_matches_a_hashmap(ops in proptest::collection::vec((0u8..3, 0u16..40), 1..400)) {
            let mut t = KeyTable::new(16, 7);
            let mut m: HashMap<String, u32> = HashMap::new();
            for (op, k) in ops {
                let key = Key::new(&format!("k{k}")).unwrap();
                match op {
                    0 => if t.get(key.as_str()).is_none() {
                        match t.insert(&key) {
                            Some(s) => { m.insert(key.to_string(), s); }
                            None => prop_assert_eq!(m.len(), 16),
                        }
                    },
                    1 => if let Some(s) = t.get(key.as_str()) {
                        t.remove(s);
                        m.remove(key.as_str());
                    },
                    _ => if let Some(s) = t.get(key.as_str()) { t.touch(s) },
                }
                prop_assert_eq!(t.len(), m.len());
                for (k, s) in &m {
                    prop_assert_eq!(t.get(k), Some(*s));
                    prop_assert_eq!(t.key(*s).as_str(), k.as_str());
                }
                prop_assert_eq!(t.iter_mru().count(), m.len());
            }
        }

        #[test]
        fn heap_pops_in_order(ops in proptest::collection::vec((0u8..2, 0u32..32, -50i64..50), 1..300)) {
            let mut h = SlotHeap::new(32);
            let mut m: HashMap<u32, i64> = HashMap::new();
            for (op, s, t) in ops {
                if op == 0 { h.set(s, t); m.insert(s, t); } else { h.remove(s); m.remove(&s); }
                prop_assert_eq!(h.len(), m.len());
                let min = m.values().min().copied();
                prop_assert_eq!(h.peek().map(|p| p.0), min);
                if let Some((t, s)) = h.peek() { prop_assert_eq!(m[&s], t); }
            }
        }
    }

    #[test]
    fn lru_order() {
        let mut t = KeyTable::new(3, 1);
        let a = t.insert(&Key::new("a").unwrap()).unwrap();
        let b = t.insert(&Key::new("b").unwrap()).unwrap();
        let _c = t.insert(&Key::new("c").unwrap()).unwrap();
        assert!(t.is_full());
        assert_eq!(t.lru(), Some(a));
        t.touch(a);
        assert_eq!(t.lru(), Some(b));
        t.remove(b);
        assert!(t.insert(&Key::new("d").unwrap()).is_some());
        assert!(t.insert(&Key::new("e").unwrap()).is_none());
    }
}
