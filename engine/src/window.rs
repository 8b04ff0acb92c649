//! Windows per key: tumbling and hopping (`size`, `slide`, `offset`) and
//! session (`gap`) windows with their aggregates, on state allocated once from
//! the config. A window closes when the input watermark passes it (fixed:
//! `wm >= end`; session: `wm > last_ts + gap`); closed windows come out in
//! (end, start, key) order.

use crate::prelude::*;

use crate::aggregate::AggState;
use crate::event::{Key, Values, MAX_VALUES};
use crate::keytable::{Claim, KeyTable, SlotHeap};
use crate::plan::{AggFunc, WindowDef, WindowKind};

/// One window's position and size, per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Slot {
    start: i64,
    /// Session: the last event time. Fixed: unused.
    last: i64,
    /// Events in the window; 0 marks a free slot.
    count: u64,
    /// Closed by the last `advance`, not yet released.
    closing: bool,
}

const FREE: Slot = Slot { start: 0, last: 0, count: 0, closing: false };

/// A closed window, ready to emit.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowRecord {
    /// Index of the window in the pipeline.
    pub window: u16,
    pub key: Key,
    pub start: i64,
    pub end: i64,
    pub count: u64,
    /// The aggregates, positional as in the window's definition (NaN = null).
    pub values: Values,
    pub emitted_ms: i64,
}

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Closing {
    end: i64,
    start: i64,
    key: u32,
    slot: u32,
}

/// Counters of one window operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowCounters {
    pub emitted: u64,
    /// Keys evicted (least recently used) to make room for a new key.
    pub key_evictions: u64,
    /// Open windows lost with evicted keys.
    pub evicted_windows: u64,
    /// Open windows reclaimed because a key's slots were exhausted.
    pub capacity_evictions: u64,
    /// Records late for this window's own input (rollups only).
    pub late: u64,
    /// Aggregates that overflowed (a `sum` past ±1.8e308) and were emitted as
    /// null. Counted since start (not checkpointed).
    #[serde(skip)]
    pub non_finite: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct WindowOp {
    index: u16,
    kind: WindowKind,
    aggs: Box<[(AggFunc, Option<usize>)]>,
    /// Window slots per key.
    ring: usize,
    keys: KeyTable,
    slots: Box<[Slot]>,
    states: Box<[AggState]>,
    open: Box<[u32]>,
    heap: SlotHeap,
    #[serde(skip)]
    pending: Vec<Closing>,
    pub counters: WindowCounters,
}

/// Window slots per key needed so that every window that can be open at once
/// has its own: `ceil((lateness + size) / slide)` for fixed windows,
/// `ceil((lateness + gap) / gap)` for sessions (open sessions are more than
/// `gap` apart and all end after `wm - gap`).
pub fn ring_size(kind: WindowKind, lateness_ms: i64) -> usize {
    ring_len(kind, lateness_ms) as usize
}

/// [`ring_size`] as a number (config validation checks it fits before anything is allocated).
pub fn ring_len(kind: WindowKind, lateness_ms: i64) -> u64 {
    let (span, step) = match kind {
        WindowKind::Fixed { size_ms, slide_ms, .. } => (lateness_ms + size_ms, slide_ms),
        WindowKind::Session { gap_ms } => (lateness_ms + gap_ms, gap_ms),
    };
    ((span + step - 1) / step).max(1) as u64
}

impl WindowOp {
    /// Allocates the window's state once: `max_keys × ring` slots.
    pub fn new(index: usize, def: &WindowDef, hash_seed: u64) -> Self {
        let keys = def.max_keys.get() as usize;
        let ring = ring_size(def.kind, def.input_lateness_ms);
        let naggs = def.aggregates.len();
        WindowOp {
            index: index as u16,
            kind: def.kind,
            aggs: def.aggregates.iter().map(|a| (a.func, a.field)).collect(),
            ring,
            keys: KeyTable::new(keys, hash_seed),
            slots: vec![FREE; keys * ring].into_boxed_slice(),
            states: vec![AggState::EMPTY; keys * ring * naggs].into_boxed_slice(),
            open: vec![0; keys].into_boxed_slice(),
            heap: SlotHeap::new(keys),
            pending: Vec::with_capacity(keys * ring),
            counters: WindowCounters::default(),
        }
    }

    /// Moves saved state to position `index` of a new plan (its definition unchanged).
    pub fn renumber(&mut self, index: usize) {
        self.index = index as u16;
    }

    /// After a restore from a checkpoint: checks the state has the shape `def`
    /// implies and gives its buffers their full capacity again.
    pub fn after_restore(&mut self, index: usize, def: &WindowDef) -> Result<(), String> {
        let keys = def.max_keys.get() as usize;
        let ring = ring_size(def.kind, def.input_lateness_ms);
        let naggs = def.aggregates.len();
        let ok = self.index as usize == index
            && self.kind == def.kind
            && self.ring == ring
            && self.aggs.len() == naggs
            && self.aggs.iter().zip(&def.aggregates).all(|(a, d)| a.0 == d.func && a.1 == d.field)
            && self.keys.shape_matches(keys)
            && self.heap.shape_matches(keys)
            && self.slots.len() == keys * ring
            && self.states.len() == keys * ring * naggs
            && self.open.len() == keys;
        if !ok {
            return Err(format!("window `{}` has a different shape", def.name));
        }
        self.keys.after_restore();
        self.pending = Vec::with_capacity(keys * ring);
        Ok(())
    }

    /// Bytes allocated for a window of this definition.
    pub fn memory_bytes(def: &WindowDef) -> u64 {
        let keys = u64::from(def.max_keys.get());
        let ring = ring_len(def.kind, def.input_lateness_ms);
        let per_slot = (core::mem::size_of::<Slot>()
            + core::mem::size_of::<Closing>()
            + def.aggregates.len() * core::mem::size_of::<AggState>()) as u64;
        KeyTable::memory_bytes(keys)
            .saturating_add(SlotHeap::memory_bytes(keys))
            .saturating_add(keys * 4)
            .saturating_add(keys.saturating_mul(ring).saturating_mul(per_slot))
    }

    /// Slots per key.
    pub fn ring(&self) -> usize {
        self.ring
    }

    /// Keys with open windows.
    pub fn live_keys(&self) -> usize {
        self.keys.len()
    }

    /// Open windows over all keys.
    pub fn open_windows(&self) -> usize {
        self.open.iter().map(|&n| n as usize).sum()
    }

    /// The earliest start among `key`'s open windows (session joins ask
    /// this: an open session may still match).
    pub fn min_open_start(&self, key: &Key) -> Option<i64> {
        let k = self.keys.get(key.as_str())?;
        let base = k as usize * self.ring;
        self.slots[base..base + self.ring].iter().filter(|s| s.count > 0 && !s.closing).map(|s| s.start).min()
    }

    #[inline]
    fn close_at(&self, s: &Slot) -> i64 {
        match self.kind {
            WindowKind::Fixed { size_ms, .. } => s.start.saturating_add(size_ms),
            WindowKind::Session { gap_ms } => s.last.saturating_add(gap_ms).saturating_add(1),
        }
    }

    #[inline]
    fn end(&self, s: &Slot) -> i64 {
        match self.kind {
            WindowKind::Fixed { size_ms, .. } => s.start.saturating_add(size_ms),
            WindowKind::Session { gap_ms } => s.last.saturating_add(gap_ms),
        }
    }

    fn key_close_at(&self, k: u32) -> Option<i64> {
        let base = k as usize * self.ring;
        self.slots[base..base + self.ring].iter().filter(|s| s.count > 0).map(|s| self.close_at(s)).min()
    }

    /// Collects every window the watermark `wm` closes, in (end, start, key)
    /// order; read them with [`record`](Self::record), then call
    /// [`release`](Self::release). Returns how many closed.
    pub fn advance(&mut self, wm: i64) -> usize {
        debug_assert!(self.pending.is_empty(), "release() not called");
        while let Some((t, k)) = self.heap.peek() {
            if t > wm {
                break;
            }
            self.heap.remove(k);
            let base = k as usize * self.ring;
            for i in 0..self.ring {
                let s = self.slots[base + i];
                if s.count > 0 && self.close_at(&s) <= wm {
                    self.slots[base + i].closing = true;
                    self.pending.push(Closing { end: self.end(&s), start: s.start, key: k, slot: i as u32 });
                }
            }
        }
        if self.pending.len() > 1 {
            let keys = &self.keys;
            self.pending.sort_unstable_by(|a, b| {
                (a.end, a.start).cmp(&(b.end, b.start)).then_with(|| keys.key(a.key).cmp(keys.key(b.key)))
            });
        }
        self.pending.len()
    }

    /// The `i`-th window closed by the last [`advance`](Self::advance).
    pub fn record(&self, i: usize, emitted_ms: i64) -> WindowRecord {
        let c = self.pending[i];
        let idx = c.key as usize * self.ring + c.slot as usize;
        let s = &self.slots[idx];
        let mut values = Values::ABSENT;
        let n = self.aggs.len();
        for (a, (f, _)) in self.aggs.iter().enumerate() {
            if let Some(v) = self.states[idx * n + a].value(*f) {
                values.0[a] = v;
            }
        }
        WindowRecord {
            window: self.index,
            key: self.keys.key(c.key).clone(),
            start: c.start,
            end: c.end,
            count: s.count,
            values,
            emitted_ms,
        }
    }

    /// Frees the windows closed by the last [`advance`](Self::advance); a key
    /// left with no open window gives its place back.
    pub fn release(&mut self) {
        self.counters.emitted += self.pending.len() as u64;
        let n = self.aggs.len();
        for i in 0..self.pending.len() {
            let c = self.pending[i];
            let idx = c.key as usize * self.ring + c.slot as usize;
            for (a, (f, _)) in self.aggs.iter().enumerate() {
                if self.states[idx * n + a].value(*f).is_some_and(|v| !v.is_finite()) {
                    self.counters.non_finite += 1;
                }
            }
            self.clear_slot(c.key, c.slot as usize);
        }
        for i in 0..self.pending.len() {
            let k = self.pending[i].key;
            if !self.keys.is_live(k) {
                continue;
            }
            if self.open[k as usize] == 0 {
                self.keys.remove(k);
            } else if self.heap.get(k).is_none() {
                let t = self.key_close_at(k).expect("open windows exist");
                self.heap.set(k, t);
            }
        }
        self.pending.clear();
    }

    fn clear_slot(&mut self, k: u32, i: usize) {
        let idx = k as usize * self.ring + i;
        if self.slots[idx].count > 0 {
            self.open[k as usize] -= 1;
        }
        self.slots[idx] = FREE;
        let n = self.aggs.len();
        self.states[idx * n..(idx + 1) * n].fill(AggState::EMPTY);
    }

    fn key_slot(&mut self, key: &Key) -> u32 {
        let claim = self.keys.claim(key);
        if let Claim::Evicted(victim) = claim {
            self.counters.key_evictions += 1;
            self.counters.evicted_windows += u64::from(self.open[victim as usize]);
            for i in 0..self.ring {
                self.clear_slot(victim, i);
            }
            self.heap.remove(victim);
        }
        claim.slot()
    }

    /// Adds an on-time event (`ts >= wm`, after [`advance`](Self::advance) and
    /// [`release`](Self::release) for the current watermark). `seq` is the
    /// arrival sequence (ties of first/last).
    pub fn insert(&mut self, key: &Key, ts: i64, values: &Values, seq: u64) {
        match self.kind {
            WindowKind::Fixed { size_ms, slide_ms, offset_ms } => {
                let mut w = (ts - offset_ms).div_euclid(slide_ms);
                if offset_ms + w * slide_ms + size_ms <= ts {
                    // slide > size: the event falls between windows
                    return;
                }
                let k = self.key_slot(key);
                loop {
                    let start = offset_ms + w * slide_ms;
                    if start + size_ms <= ts {
                        break;
                    }
                    let i = w.rem_euclid(self.ring as i64) as usize;
                    let idx = k as usize * self.ring + i;
                    if self.slots[idx].count > 0 && self.slots[idx].start != start {
                        // cannot happen while the ring bound holds; never silent if it does
                        self.counters.capacity_evictions += 1;
                        self.clear_slot(k, i);
                    }
                    if self.slots[idx].count == 0 {
                        self.slots[idx].start = start;
                        self.open[k as usize] += 1;
                        let close = start + size_ms;
                        if self.heap.get(k).is_none_or(|t| close < t) {
                            self.heap.set(k, close);
                        }
                    }
                    self.add(idx, ts, values, seq);
                    w -= 1;
                }
            }
            WindowKind::Session { gap_ms } => {
                let k = self.key_slot(key);
                let base = k as usize * self.ring;
                let mut target: Option<usize> = None;
                for i in 0..self.ring {
                    let s = self.slots[base + i];
                    if s.count == 0
                        || s.start > ts.saturating_add(gap_ms)
                        || ts > s.last.saturating_add(gap_ms)
                    {
                        continue;
                    }
                    match target {
                        None => target = Some(i),
                        Some(t) => self.merge_slots(k, t, i),
                    }
                }
                let t = match target {
                    Some(t) => t,
                    None => {
                        let free = (0..self.ring).find(|&i| self.slots[base + i].count == 0);
                        let t = match free {
                            Some(f) => f,
                            None => {
                                // cannot happen while the ring bound holds; never silent if it does
                                let oldest = (0..self.ring)
                                    .min_by_key(|&i| (self.slots[base + i].last, i))
                                    .expect("ring >= 1");
                                self.counters.capacity_evictions += 1;
                                self.clear_slot(k, oldest);
                                oldest
                            }
                        };
                        self.slots[base + t] = Slot { start: ts, last: ts, count: 0, closing: false };
                        self.open[k as usize] += 1;
                        t
                    }
                };
                let s = &mut self.slots[base + t];
                s.start = s.start.min(ts);
                s.last = s.last.max(ts);
                self.add(base + t, ts, values, seq);
                let close = self.key_close_at(k).expect("just inserted");
                self.heap.set(k, close);
            }
        }
    }

    fn merge_slots(&mut self, k: u32, into: usize, from: usize) {
        let base = k as usize * self.ring;
        let (a, b) = (self.slots[base + into], self.slots[base + from]);
        self.slots[base + into] = Slot {
            start: a.start.min(b.start),
            last: a.last.max(b.last),
            count: a.count + b.count,
            closing: false,
        };
        let n = self.aggs.len();
        for (j, (f, _)) in self.aggs.iter().enumerate() {
            let o = self.states[(base + from) * n + j];
            self.states[(base + into) * n + j].merge(*f, &o);
        }
        self.clear_slot(k, from);
    }

    #[inline]
    fn add(&mut self, idx: usize, ts: i64, values: &Values, seq: u64) {
        self.slots[idx].count += 1;
        let n = self.aggs.len();
        let states = &mut self.states[idx * n..(idx + 1) * n];
        for (st, (f, field)) in states.iter_mut().zip(self.aggs.iter()) {
            match field {
                None => st.n += 1,
                Some(i) => {
                    let v = values.0[*i];
                    if !v.is_nan() {
                        st.add(*f, v, ts, seq);
                    }
                }
            }
        }
    }
}

const _: () = assert!(MAX_VALUES <= u16::MAX as usize);
