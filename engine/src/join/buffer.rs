//! A join side's buffers: up to `capacity` elements per key slot, in
//! arrival order, values stored compactly beside them; checkpointed as only
//! what they hold.

use crate::prelude::*;

use crate::event::{Values, MAX_VALUES};
use crate::plan::Input;

/// The left side's index.
pub(super) const L: usize = 0;
/// The right side's index.
pub(super) const R: usize = 1;

/// One side of a join row: a raw event (`t0 = t1 = ts`) or a closed window
/// (`t0 = start`, `t1 = end`).
#[derive(Clone, Debug, PartialEq)]
pub struct SideRecord {
    pub input: Input,
    pub t0: i64,
    pub t1: i64,
    /// Events in the window (1 for a raw event).
    pub count: u64,
    /// A stream's values (NaN = absent) or a window's aggregates.
    pub values: Values,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, bytemuck::Zeroable,
)]
pub(super) struct Elem {
    pub(super) t0: i64,
    pub(super) t1: i64,
    pub(super) count: u64,
    /// Arrival order (ties of as-of; emission order of matches).
    pub(super) seq: u64,
    pub(super) matches: u32,
}

/// One side's buffers: up to `cap` elements per key slot, values stored
/// compactly beside them.
///
/// The layout is slot-major — element `i` of key `k` lives at `i * keys + k` —
/// and the arrays are allocated zeroed, so the operating system maps a page
/// only once an element lands on it: resident memory follows how deep the
/// buffers actually get (in steps of one page ≈ 100 keys × one element), while
/// [`JoinOp::memory_bytes`] stays the bound if every key fills up. Nothing is
/// allocated after construction.
#[derive(serde::Deserialize)]
#[serde(try_from = "SideBufData")]
pub(super) struct SideBuf {
    pub(super) input: Input,
    pub(super) cap: usize,
    pub(super) nvals: usize,
    pub(super) keys: usize,
    pub(super) elems: Box<[Elem]>,
    pub(super) vals: Box<[f64]>,
    pub(super) len: Box<[u32]>,
}

/// A side's buffers as checkpointed: only the elements held, key by key.
#[derive(serde::Serialize, serde::Deserialize)]
struct SideBufData {
    input: Input,
    cap: usize,
    nvals: usize,
    len: Vec<u32>,
    elems: Vec<Elem>,
    vals: Vec<f64>,
}

impl serde::Serialize for SideBuf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SideBufData::from(self).serialize(s)
    }
}

impl From<&SideBuf> for SideBufData {
    fn from(s: &SideBuf) -> Self {
        let held: usize = s.len.iter().map(|&n| n as usize).sum();
        let mut elems = Vec::with_capacity(held);
        let mut vals = Vec::with_capacity(held * s.nvals);
        for k in 0..s.keys as u32 {
            for i in 0..s.len[k as usize] as usize {
                elems.push(*s.elem(k, i));
                vals.extend_from_slice(s.vals_of(k, i));
            }
        }
        SideBufData { input: s.input, cap: s.cap, nvals: s.nvals, len: s.len.to_vec(), elems, vals }
    }
}

impl TryFrom<SideBufData> for SideBuf {
    type Error = String;
    fn try_from(d: SideBufData) -> Result<Self, String> {
        let held: usize = d.len.iter().map(|&n| n as usize).sum();
        if d.cap == 0
            || d.nvals > MAX_VALUES
            || d.len.iter().any(|&n| n as usize > d.cap)
            || d.elems.len() != held
            || d.vals.len() != held * d.nvals
        {
            return Err("join buffers do not add up".into());
        }
        let mut s = SideBuf::new(d.input, d.cap, d.nvals, d.len.len());
        let mut at = 0;
        for (k, &n) in d.len.iter().enumerate() {
            for i in 0..n as usize {
                let slot = s.slot(k as u32, i);
                s.elems[slot] = d.elems[at];
                s.vals[slot * s.nvals..(slot + 1) * s.nvals]
                    .copy_from_slice(&d.vals[at * d.nvals..(at + 1) * d.nvals]);
                at += 1;
            }
        }
        s.len.copy_from_slice(&d.len);
        Ok(s)
    }
}

impl SideBuf {
    pub(super) fn new(input: Input, cap: usize, nvals: usize, keys: usize) -> Self {
        SideBuf {
            input,
            cap,
            nvals,
            keys,
            elems: bytemuck::zeroed_slice_box(keys * cap),
            vals: bytemuck::zeroed_slice_box(keys * cap * nvals),
            len: bytemuck::zeroed_slice_box(keys),
        }
    }

    pub(super) fn memory_bytes(cap: u64, nvals: u64, keys: u64) -> u64 {
        keys.saturating_mul(
            cap.saturating_mul(core::mem::size_of::<Elem>() as u64 + nvals * 8).saturating_add(4),
        )
    }

    /// Where element `i` of key `k` lives.
    #[inline]
    pub(super) fn slot(&self, k: u32, i: usize) -> usize {
        i * self.keys + k as usize
    }

    #[inline]
    pub(super) fn held(&self, k: u32) -> usize {
        self.len[k as usize] as usize
    }

    #[inline]
    pub(super) fn elem(&self, k: u32, i: usize) -> &Elem {
        &self.elems[self.slot(k, i)]
    }

    #[inline]
    pub(super) fn vals_of(&self, k: u32, i: usize) -> &[f64] {
        let at = self.slot(k, i) * self.nvals;
        &self.vals[at..at + self.nvals]
    }

    /// Key `k`'s elements, in arrival order.
    #[inline]
    pub(super) fn iter(&self, k: u32) -> impl Iterator<Item = &Elem> + Clone + '_ {
        (0..self.held(k)).map(move |i| self.elem(k, i))
    }

    pub(super) fn record(&self, k: u32, i: usize) -> SideRecord {
        let e = *self.elem(k, i);
        let mut values = Values::ABSENT;
        values.0[..self.nvals].copy_from_slice(self.vals_of(k, i));
        SideRecord { input: self.input, t0: e.t0, t1: e.t1, count: e.count, values }
    }

    /// Appends; when full, the oldest arrival is pushed out first (returns true).
    pub(super) fn push(&mut self, k: u32, e: Elem, values: &Values) -> bool {
        let mut evicted = false;
        if self.held(k) == self.cap {
            self.remove_where(k, |i, _| i == 0);
            evicted = true;
        }
        let slot = self.slot(k, self.held(k));
        self.elems[slot] = e;
        self.vals[slot * self.nvals..(slot + 1) * self.nvals].copy_from_slice(&values.0[..self.nvals]);
        self.len[k as usize] += 1;
        evicted
    }

    /// Removes the elements for which `f(index, elem)` holds, keeping the order of the rest.
    pub(super) fn remove_where(&mut self, k: u32, mut f: impl FnMut(usize, &Elem) -> bool) -> usize {
        let n = self.held(k);
        let mut w = 0;
        for r in 0..n {
            let src = self.slot(k, r);
            if f(r, &self.elems[src]) {
                continue;
            }
            if w != r {
                let dst = self.slot(k, w);
                self.elems[dst] = self.elems[src];
                let nv = self.nvals;
                self.vals.copy_within(src * nv..src * nv + nv, dst * nv);
            }
            w += 1;
        }
        self.len[k as usize] = w as u32;
        n - w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elem(t: i64, seq: u64) -> Elem {
        Elem { t0: t, t1: t, count: 1, seq, matches: 0 }
    }

    fn vals(v: f64) -> Values {
        let mut x = Values::ABSENT;
        x.0[0] = v;
        x.0[1] = -v;
        x
    }

    #[test]
    fn side_buffers_keep_each_keys_order_and_checkpoint_only_what_they_hold() {
        let mut s = SideBuf::new(Input::Stream(0), 4, 2, 3);
        for (k, t) in [(0u32, 10), (2, 20), (0, 11), (2, 21), (0, 12)] {
            assert!(!s.push(k, elem(t, t as u64), &vals(t as f64)));
        }
        let ts = |s: &SideBuf, k| s.iter(k).map(|e| e.t0).collect::<Vec<_>>();
        assert_eq!((ts(&s, 0), ts(&s, 1), ts(&s, 2)), (vec![10, 11, 12], vec![], vec![20, 21]));
        assert_eq!(s.record(0, 1).values.0[..2], [11.0, -11.0]);
        // removal keeps the order of the rest, values move with their elements
        assert_eq!(s.remove_where(0, |_, e| e.t0 == 11), 1);
        assert_eq!(ts(&s, 0), vec![10, 12]);
        assert_eq!(s.record(0, 1).values.0[..2], [12.0, -12.0]);
        // full: the oldest arrival goes
        for t in [13, 14, 15] {
            s.push(0, elem(t, t as u64), &vals(t as f64));
        }
        assert_eq!(ts(&s, 0), vec![12, 13, 14, 15]);

        let data = SideBufData::from(&s);
        assert_eq!(data.elems.len(), 6, "only the held elements");
        assert_eq!(data.vals.len(), 12);
        let back = SideBuf::try_from(data).unwrap();
        for k in 0..3 {
            assert_eq!(ts(&back, k), ts(&s, k));
            for i in 0..back.held(k) {
                let (a, b) = (back.record(k, i), s.record(k, i));
                assert_eq!(
                    (a.t0, a.count, a.values.0[..2].to_vec()),
                    (b.t0, b.count, b.values.0[..2].to_vec())
                );
            }
        }
        // a checkpoint whose counts do not add up is refused
        let mut bad = SideBufData::from(&s);
        bad.len[1] = 1;
        assert!(SideBuf::try_from(bad).is_err());
        let mut bad = SideBufData::from(&s);
        bad.len[0] = 5;
        assert!(SideBuf::try_from(bad).is_err());
        let mut bad = SideBufData::from(&s);
        bad.vals.pop();
        assert!(SideBuf::try_from(bad).is_err());
    }
}
