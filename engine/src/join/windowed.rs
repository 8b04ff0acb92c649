//! Joins of closed windows: `bucket` (equal tumbling windows), `overlap`
//! (`contained_start` or `overlaps`) and `session` (sessions within
//! `tolerance` of each other), docs/SEMANTICS.md §5.3–5.4. What decides a
//! match and when a window can match nothing more.

use super::buffer::{Elem, L};
use crate::plan::{OverlapCondition, Strategy};

#[inline]
pub(super) fn matches(strategy: Strategy, l: &Elem, r: &Elem) -> bool {
    match strategy {
        Strategy::Bucket => l.t0 == r.t0,
        Strategy::Overlap { condition: OverlapCondition::ContainedStart } => r.t0 <= l.t0 && l.t0 < r.t1,
        Strategy::Overlap { condition: OverlapCondition::Overlaps } => l.t0 < r.t1 && r.t0 < l.t1,
        Strategy::Session { tolerance_ms } => {
            l.t0.saturating_sub(tolerance_ms) < r.t1 && r.t0 < l.t1.saturating_add(tolerance_ms)
        }
        _ => false,
    }
}

/// The watermark at which a window of `side` can match nothing more (`other`
/// is the other side's fixed window size; for sessions, open sessions of the
/// other side may hold it longer: [`session_open_ok`]).
#[inline]
pub(super) fn release_at(strategy: Strategy, other: i64, side: usize, e: &Elem) -> i64 {
    match (strategy, side) {
        (Strategy::Overlap { condition: OverlapCondition::ContainedStart }, L) => {
            e.t0.saturating_add(other).saturating_add(1)
        }
        (Strategy::Overlap { .. }, _) => e.t1.saturating_add(other),
        (Strategy::Session { tolerance_ms }, _) => e.t1.saturating_add(tolerance_ms),
        // bucket
        _ => e.t0.saturating_add(other).saturating_add(1),
    }
}

/// Session joins: no open session of the other side (earliest start
/// `open_min`) may still reach `e`.
#[inline]
pub(super) fn session_open_ok(strategy: Strategy, open_min: Option<i64>, e: &Elem) -> bool {
    match (strategy, open_min) {
        (Strategy::Session { tolerance_ms }, Some(start)) => start >= e.t1.saturating_add(tolerance_ms),
        _ => true,
    }
}
