//! Joins (docs/SEMANTICS.md §5): `tolerance` and `asof` over raw events
//! ([`raw`]), `bucket`, `overlap` and `session` over closed windows
//! ([`windowed`]); inner and left-outer. Each
//! side's elements wait per key in fixed-capacity buffers until the join's
//! watermark proves no element of the other side can still match them.
//!
//! The join's frontier `F` is the min over its non-idle inputs' progress
//! (never below what it already reached); an input below it is late for the
//! join (`late_after_idle`, only possible once idleness let it advance). Each
//! side's effective progress is `max(its progress, F)`:
//! - a stream input's progress is its watermark: every future on-time event
//!   has `ts >= W`;
//! - a window input's progress is its source watermark, `+1` for fixed
//!   windows: every window still to come has `end >= W`, so a fixed window
//!   still to come starts at `>= W - size`, and a session still to come starts
//!   at `>= min(W, earliest start of the key's open sessions)`.
//!
//! From that, each element gets a release threshold: once the *other* side's
//! effective progress reaches it, no element of the other side can match it
//! any more; it is released (a left-outer left without a match is emitted
//! then with `right: null`; an as-of left is answered then). This file holds
//! that mechanism; [`buffer`] the per-key element buffers.

use crate::prelude::*;

use crate::event::{Key, MAX_VALUES};
use crate::keytable::{Claim, KeyTable, SlotHeap};
use crate::plan::{Input, JoinDef, JoinType, Plan, Strategy};
use crate::window::WindowOp;

mod buffer;
mod raw;
mod windowed;

pub use buffer::SideRecord;
use buffer::{Elem, SideBuf, L, R};
use raw::{asof_best, asof_prune, asof_right_due};
use windowed::session_open_ok;

/// A join result.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinRecord {
    pub join: u16,
    pub key: Key,
    pub left: SideRecord,
    pub right: Option<SideRecord>,
    pub emitted_ms: i64,
}

/// Counters of one join.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinCounters {
    /// Matched rows emitted.
    pub matches: u64,
    /// Left-outer rows emitted with `right: null`.
    pub unmatched: u64,
    /// Matches beyond `max_matches` of a left, not emitted.
    pub dropped_matches: u64,
    /// Inputs below the join's frontier after an idle input let it advance (docs/SEMANTICS.md §5.5).
    pub late_after_idle: u64,
    /// Elements pushed out of a full per-key buffer before they were released (left, right).
    pub capacity_evictions: [u64; 2],
    /// Keys evicted (least recently used) to make room for a new key.
    pub key_evictions: u64,
    /// Buffered elements lost with evicted keys.
    pub evicted_elements: u64,
}

/// What a join needs to know about its window inputs' open state.
#[derive(Clone, Copy, Default)]
pub struct JoinCtx<'a> {
    /// For session joins: the window operators of the left and right inputs.
    pub windows: [Option<&'a WindowOp>; 2],
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct JoinOp {
    index: u16,
    strategy: Strategy,
    kind: JoinType,
    max_matches: u32,
    /// Fixed window size per side (0 for streams and sessions).
    size: [i64; 2],
    sides: [SideBuf; 2],
    keys: KeyTable,
    /// Per side: keys by the earliest release among their elements of that side.
    heaps: [SlotHeap; 2],
    #[serde(skip)]
    pending: Vec<(i64, u32)>,
    /// The join's frontier: the highest combined watermark it has reached.
    frontier: i64,
    /// Per side: effective progress, `max(side progress, frontier)`.
    eff: [i64; 2],
    pub counters: JoinCounters,
}

/// Per-key buffer capacity of a join side: the `capacity` of the stream the
/// side reads (directly, or through its windows).
pub fn side_capacity(p: &Plan, i: Input) -> usize {
    p.streams[root_stream(p, i)].capacity.get() as usize
}

/// The stream an input ultimately reads.
pub fn root_stream(p: &Plan, mut i: Input) -> usize {
    loop {
        match i {
            Input::Stream(s) => return s,
            Input::Window(w) => i = p.windows[w].input,
        }
    }
}

fn join_keys(p: &Plan, d: &JoinDef) -> usize {
    let keys = |i: Input| match i {
        Input::Stream(s) => p.streams[s].max_keys.get(),
        Input::Window(w) => p.windows[w].max_keys.get(),
    };
    keys(d.left).max(keys(d.right)) as usize
}

fn nvals(p: &Plan, i: Input) -> usize {
    match i {
        Input::Stream(s) => p.streams[s].values.len(),
        Input::Window(w) => p.windows[w].aggregates.len(),
    }
}

fn fixed_size(p: &Plan, i: Input) -> i64 {
    match i {
        Input::Window(w) => match p.windows[w].kind {
            crate::plan::WindowKind::Fixed { size_ms, .. } => size_ms,
            crate::plan::WindowKind::Session { .. } => 0,
        },
        Input::Stream(_) => 0,
    }
}

impl JoinOp {
    pub fn new(index: usize, p: &Plan, hash_seed: u64) -> Self {
        let d = &p.joins[index];
        let keys = join_keys(p, d);
        JoinOp {
            index: index as u16,
            strategy: d.strategy,
            kind: d.kind,
            max_matches: d.max_matches.get(),
            size: [fixed_size(p, d.left), fixed_size(p, d.right)],
            sides: [
                SideBuf::new(d.left, side_capacity(p, d.left), nvals(p, d.left), keys),
                SideBuf::new(d.right, side_capacity(p, d.right), nvals(p, d.right), keys),
            ],
            keys: KeyTable::new(keys, hash_seed),
            heaps: [SlotHeap::new(keys), SlotHeap::new(keys)],
            pending: Vec::with_capacity(2 * keys),
            frontier: i64::MIN,
            eff: [i64::MIN; 2],
            counters: JoinCounters::default(),
        }
    }

    /// Moves saved state to join `index` of `p` (its definition unchanged,
    /// its inputs perhaps at other positions).
    pub fn renumber(&mut self, index: usize, p: &Plan) {
        let d = &p.joins[index];
        self.index = index as u16;
        self.sides[L].input = d.left;
        self.sides[R].input = d.right;
    }

    /// After a restore from a checkpoint: checks the state has the shape the
    /// pipeline implies and gives its buffers their full capacity again.
    pub fn after_restore(&mut self, index: usize, p: &Plan) -> Result<(), String> {
        let d = &p.joins[index];
        let keys = join_keys(p, d);
        let side_ok = |s: &SideBuf, i: Input| {
            s.input == i && s.cap == side_capacity(p, i) && s.nvals == nvals(p, i) && s.keys == keys
        };
        let ok = self.index as usize == index
            && self.strategy == d.strategy
            && self.kind == d.kind
            && self.max_matches == d.max_matches.get()
            && self.size == [fixed_size(p, d.left), fixed_size(p, d.right)]
            && side_ok(&self.sides[0], d.left)
            && side_ok(&self.sides[1], d.right)
            && self.keys.shape_matches(keys)
            && self.heaps.iter().all(|h| h.shape_matches(keys));
        if !ok {
            return Err(format!("join `{}` has a different shape", p.joins[index].name));
        }
        self.keys.after_restore();
        self.pending = Vec::with_capacity(2 * keys);
        Ok(())
    }

    /// Bytes allocated for join `index` of `p`.
    pub fn memory_bytes(p: &Plan, index: usize) -> u64 {
        let d = &p.joins[index];
        let keys = join_keys(p, d) as u64;
        let side = |i: Input| SideBuf::memory_bytes(side_capacity(p, i) as u64, nvals(p, i) as u64, keys);
        KeyTable::memory_bytes(keys)
            .saturating_add(2 * SlotHeap::memory_bytes(keys))
            .saturating_add(keys * 2 * 16)
            .saturating_add(side(d.left))
            .saturating_add(side(d.right))
    }

    /// The join's frontier (combined watermark).
    pub fn watermark(&self) -> i64 {
        self.frontier
    }

    /// Keys with buffered elements, and elements buffered per side.
    pub fn occupancy(&self) -> (usize, usize, usize) {
        let sum = |s: &SideBuf| s.len.iter().map(|&n| n as usize).sum();
        (self.keys.len(), sum(&self.sides[L]), sum(&self.sides[R]))
    }

    #[inline]
    fn matches(&self, l: &Elem, r: &Elem) -> bool {
        match self.strategy {
            Strategy::Tolerance { .. } | Strategy::Asof { .. } => raw::matches(self.strategy, l, r),
            _ => windowed::matches(self.strategy, l, r),
        }
    }

    #[inline]
    fn release_at(&self, side: usize, e: &Elem) -> i64 {
        release_at(self.strategy, self.size[1 - side], side, e)
    }

    /// When key `k`'s elements of `side` next need a look: the earliest
    /// release among them, against the other side's effective progress.
    fn key_due(&self, k: u32, side: usize) -> Option<i64> {
        let elems = self.sides[side].iter(k);
        match (self.strategy, side) {
            (Strategy::Asof { tolerance_ms }, R) => asof_right_due(elems, self.asof_bound(k), tolerance_ms),
            _ => elems.map(|e| self.release_at(side, e)).min(),
        }
    }

    /// As-of: every left still to be answered for key `k` has `ts >=` this.
    fn asof_bound(&self, k: u32) -> i64 {
        self.sides[L].iter(k).map(|e| e.t0).min().map_or(self.eff[L], |t| t.min(self.eff[L]))
    }

    fn key_slot(&mut self, key: &Key) -> u32 {
        let claim = self.keys.claim(key);
        if let Claim::Evicted(victim) = claim {
            self.counters.key_evictions += 1;
            for s in &mut self.sides {
                self.counters.evicted_elements += u64::from(s.len[victim as usize]);
                s.len[victim as usize] = 0;
            }
            self.heaps[L].remove(victim);
            self.heaps[R].remove(victim);
        }
        claim.slot()
    }

    /// One input element on `side` (0 = left, 1 = right): a raw event or a
    /// closed window. Emits the matches it completes.
    #[allow(clippy::too_many_arguments)]
    pub fn on_input(
        &mut self,
        p: &Plan,
        side: usize,
        key: &Key,
        rec: &SideRecord,
        seq: u64,
        now: i64,
        ctx: JoinCtx<'_>,
        sink: &mut impl FnMut(&Plan, &JoinRecord),
    ) {
        // an element the watermark already passed (possible only after idleness) is late here
        if rec.t1 < self.frontier {
            self.counters.late_after_idle += 1;
            return;
        }
        let k = self.key_slot(key);
        let e = Elem { t0: rec.t0, t1: rec.t1, count: rec.count, seq, matches: 0 };
        let mut e_matches = 0u32;
        if !matches!(self.strategy, Strategy::Asof { .. }) {
            // pair with every buffered element of the other side, in arrival order
            let other = 1 - side;
            for i in 0..self.sides[other].held(k) {
                let o = *self.sides[other].elem(k, i);
                let (l, r) = if side == L { (&e, &o) } else { (&o, &e) };
                if !self.matches(l, r) {
                    continue;
                }
                let left_matches = if side == L { e_matches } else { o.matches };
                if left_matches >= self.max_matches {
                    self.counters.dropped_matches += 1;
                    continue;
                }
                let orec = self.sides[other].record(k, i);
                let (left, right) = if side == L { (rec.clone(), orec) } else { (orec, rec.clone()) };
                self.emit(p, key, left, Some(right), now, sink);
                if side == L {
                    e_matches += 1;
                } else {
                    let slot = self.sides[L].slot(k, i);
                    self.sides[L].elems[slot].matches += 1;
                }
            }
        }
        let e = Elem { matches: e_matches, ..e };
        // an element already past its release point is not kept
        let done =
            self.release_at(side, &e) <= self.eff[1 - side] && self.open_min_allows(side, key, &e, ctx);
        if done && !matches!(self.strategy, Strategy::Asof { .. }) {
            if side == L && e_matches == 0 && self.kind == JoinType::LeftOuter {
                self.emit(p, key, rec.clone(), None, now, sink);
            }
        } else if self.sides[side].push(k, e, &rec.values) {
            self.counters.capacity_evictions[side] += 1;
        }
        self.check_key(p, k, now, ctx, sink);
    }

    /// Emits a row: a match, or (`right: None`) a left-outer left without one.
    fn emit(
        &mut self,
        p: &Plan,
        key: &Key,
        left: SideRecord,
        right: Option<SideRecord>,
        now: i64,
        sink: &mut impl FnMut(&Plan, &JoinRecord),
    ) {
        match right {
            Some(_) => self.counters.matches += 1,
            None => self.counters.unmatched += 1,
        }
        let row = JoinRecord { join: self.index, key: key.clone(), left, right, emitted_ms: now };
        sink(p, &row);
    }

    /// For session joins: the earliest start among the other side's open sessions of `key`.
    fn other_open_min(&self, side: usize, key: &Key, ctx: JoinCtx<'_>) -> Option<i64> {
        match self.strategy {
            Strategy::Session { .. } => ctx.windows[1 - side].and_then(|w| w.min_open_start(key)),
            _ => None,
        }
    }

    fn open_min_allows(&self, side: usize, key: &Key, e: &Elem, ctx: JoinCtx<'_>) -> bool {
        session_open_ok(self.strategy, self.other_open_min(side, key, ctx), e)
    }

    /// Takes the inputs' current progress and idleness, moves the frontier
    /// and each side's effective progress, and releases what they pass.
    pub fn advance(
        &mut self,
        p: &Plan,
        progress: [(i64, bool); 2],
        now: i64,
        ctx: JoinCtx<'_>,
        sink: &mut impl FnMut(&Plan, &JoinRecord),
    ) {
        self.frontier = crate::watermark::combined(progress, self.frontier);
        let eff = [progress[L].0.max(self.frontier), progress[R].0.max(self.frontier)];
        if eff == self.eff {
            return;
        }
        self.eff = eff;
        for side in [L, R] {
            let bound = eff[1 - side];
            while let Some((t, k)) = self.heaps[side].peek() {
                if t > bound {
                    break;
                }
                self.heaps[side].remove(k);
                self.pending.push((t, k));
            }
        }
        if self.pending.len() > 1 {
            let keys = &self.keys;
            self.pending
                .sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| keys.key(a.1).cmp(keys.key(b.1))));
        }
        // a key due on both sides is looked at twice: the second look finds nothing to release
        for i in 0..self.pending.len() {
            let k = self.pending[i].1;
            if self.keys.is_live(k) {
                self.check_key(p, k, now, ctx, sink);
            }
        }
        self.pending.clear();
    }

    /// Releases key `k`'s elements that the watermark has passed, emitting
    /// as-of results and unmatched left-outer rows; requeues or frees the key.
    fn check_key(
        &mut self,
        p: &Plan,
        k: u32,
        now: i64,
        ctx: JoinCtx<'_>,
        sink: &mut impl FnMut(&Plan, &JoinRecord),
    ) {
        let key = self.keys.key(k).clone();
        // left side, in arrival order
        let mut i = 0;
        while i < self.sides[L].held(k) {
            let e = *self.sides[L].elem(k, i);
            if self.release_at(L, &e) > self.eff[R] || !self.open_min_allows(L, &key, &e, ctx) {
                i += 1;
                continue;
            }
            let left = self.sides[L].record(k, i);
            if let Strategy::Asof { tolerance_ms } = self.strategy {
                match asof_best(self.sides[R].iter(k), e.t0, tolerance_ms) {
                    Some(j) => {
                        let right = self.sides[R].record(k, j);
                        self.emit(p, &key, left, Some(right), now, sink);
                    }
                    None if self.kind == JoinType::LeftOuter => self.emit(p, &key, left, None, now, sink),
                    None => {}
                }
            } else if e.matches == 0 && self.kind == JoinType::LeftOuter {
                self.emit(p, &key, left, None, now, sink);
            }
            self.sides[L].remove_where(k, |j, _| j == i);
        }
        // right side
        match self.strategy {
            Strategy::Asof { tolerance_ms } => {
                let bound = self.asof_bound(k);
                asof_prune(&mut self.sides[R], k, bound, tolerance_ms)
            }
            strategy => {
                let (size_l, eff_l) = (self.size[L], self.eff[L]);
                let open_min = self.other_open_min(R, &key, ctx);
                self.sides[R].remove_where(k, |_, e| {
                    release_at(strategy, size_l, R, e) <= eff_l && session_open_ok(strategy, open_min, e)
                });
            }
        }
        for side in [L, R] {
            match self.key_due(k, side) {
                Some(t) => self.heaps[side].set(k, t),
                None => self.heaps[side].remove(k),
            }
        }
        if self.sides[L].len[k as usize] == 0 && self.sides[R].len[k as usize] == 0 {
            self.keys.remove(k);
        }
    }
}

/// The watermark at which an element of `side` can match nothing more
/// (`other`: the other side's fixed window size, for window joins).
#[inline]
fn release_at(strategy: Strategy, other: i64, side: usize, e: &Elem) -> i64 {
    match strategy {
        Strategy::Tolerance { .. } | Strategy::Asof { .. } => raw::release_at(strategy, side, e),
        _ => windowed::release_at(strategy, other, side, e),
    }
}

const _: () = assert!(MAX_VALUES <= 64);
