//! The memory bound of a config: what `check-config` prints as its total
//! and `/status` shows the resident size against.

use edgejoin_engine::engine::Engine;

use super::source::{intake_budget, source_buffers};
use crate::config::Config;

/// The memory bound `check-config` prints (its "total"): the engine's state,
/// the intake's buffers and the live clock trace.
pub fn memory_bound(c: &Config) -> u64 {
    let p = &c.plan;
    let svc = &c.deployment.service;
    let skew = Engine::skew_memory_bytes(p);
    let trace = if skew > 0 && svc.metrics_addr.is_some() && svc.clock_trace > 0 {
        crate::clock_report::ClockTrace::memory_bytes(svc.clock_trace, p.max_devices.get() as usize)
    } else {
        0
    };
    Engine::memory_bytes(p) + intake_budget(c) as u64 + source_buffers(c) as u64 + trace
}
