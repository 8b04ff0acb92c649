//! Joins of raw events: `tolerance` (`lower <= right.ts - left.ts <=
//! upper`) and `asof` (the latest right at or before the left, within
//! `tolerance`), docs/SEMANTICS.md §5.3–5.4. What decides a match, when an
//! element can match nothing more, and how as-of keeps only the rights a
//! left can still pick.

use super::buffer::{Elem, SideBuf, L};
use crate::plan::Strategy;

#[inline]
pub(super) fn matches(strategy: Strategy, l: &Elem, r: &Elem) -> bool {
    match strategy {
        Strategy::Tolerance { lower_ms, upper_ms } => {
            let d = r.t0 - l.t0;
            lower_ms <= d && d <= upper_ms
        }
        // as-of picks one right per left (asof_best), never by pairs
        _ => false,
    }
}

/// The watermark at which an element of `side` can match nothing more.
#[inline]
pub(super) fn release_at(strategy: Strategy, side: usize, e: &Elem) -> i64 {
    match (strategy, side) {
        (Strategy::Tolerance { upper_ms, .. }, L) => e.t0.saturating_add(upper_ms).saturating_add(1),
        (Strategy::Tolerance { lower_ms, .. }, _) => e.t0.saturating_sub(lower_ms).saturating_add(1),
        _ => e.t0.saturating_add(1),
    }
}

/// The as-of match for a left at `ts`: the right with the greatest
/// `(ts, arrival)` such that `r.ts <= ts` and `ts - r.ts <= tolerance`.
pub(super) fn asof_best<'a>(
    rights: impl Iterator<Item = &'a Elem>,
    ts: i64,
    tolerance: i64,
) -> Option<usize> {
    let mut best: Option<(usize, (i64, u64))> = None;
    for (j, r) in rights.enumerate() {
        if r.t0 <= ts && ts - r.t0 <= tolerance && best.is_none_or(|(_, b)| (r.t0, r.seq) > b) {
            best = Some((j, (r.t0, r.seq)));
        }
    }
    best.map(|(j, _)| j)
}

/// Drops rights no pending or future left can pick: every left still to be
/// answered has `ts >= wm` (`wm` = [`JoinOp::asof_bound`]), so among rights
/// with `ts <= wm` only the latest can be chosen, and only while it is within
/// `tolerance` of `wm`.
pub(super) fn asof_prune(side: &mut SideBuf, k: u32, wm: i64, tolerance: i64) {
    let best = side
        .iter(k)
        .enumerate()
        .filter(|(_, r)| r.t0 <= wm)
        .max_by_key(|(_, r)| (r.t0, r.seq))
        .map(|(j, r)| (j, r.t0));
    if let Some((b, bts)) = best {
        let keep_best = bts.saturating_add(tolerance) >= wm;
        side.remove_where(k, |j, r| r.t0 <= wm && (j != b || !keep_best));
    }
}

/// When the rights of a key next need pruning.
pub(super) fn asof_right_due<'a>(
    rights: impl Iterator<Item = &'a Elem> + Clone,
    wm: i64,
    tolerance: i64,
) -> Option<i64> {
    // the next right above wm makes the current best obsolete once wm reaches it;
    // the best itself expires at ts + tolerance + 1
    let next_above = rights.clone().filter(|r| r.t0 > wm).map(|r| r.t0).min();
    let best_expiry = rights
        .filter(|r| r.t0 <= wm)
        .map(|r| r.t0)
        .max()
        .map(|t| t.saturating_add(tolerance).saturating_add(1));
    match (next_above, best_expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
