//! What a checkpoint says about the pipeline that wrote it, so that state
//! survives an edit of the config: each stream's, window's and join's name
//! with a fingerprint of everything its state depends on, and the clock
//! estimators' capacity. Matched by name against a new plan ([`carry`]), it
//! decides which state carries over (same name, same fingerprint) and which
//! starts empty (a changed definition, or new).
//!
//! A fingerprint covers a component's own definition and, through its inputs'
//! fingerprints, everything upstream of it: a window over a stream whose key
//! or values changed starts empty, as does a join over a window whose
//! aggregates changed. Names of outputs, topics and emit topics are left out:
//! renaming where results go, or adding a topic to a stream, keeps state.

use crate::plan::{Input, Plan};
use crate::prelude::*;

/// One component of a pipeline: its name and the fingerprint of its definition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    pub name: String,
    pub fingerprint: u64,
}

/// A pipeline's components, as a checkpoint records them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub streams: Vec<Part>,
    pub windows: Vec<Part>,
    pub joins: Vec<Part>,
    /// Capacity of the clock estimators (`max_devices`) when a stream corrects clocks.
    pub clocks: Option<u32>,
}

/// FNV-1a, 64 bits: stable across builds and platforms (a checkpoint written
/// on one is read on another).
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

impl Manifest {
    /// The manifest of `p`.
    pub fn of(p: &Plan) -> Manifest {
        let streams: Vec<Part> = p
            .streams
            .iter()
            .map(|s| {
                let devices = (s.watermark == crate::plan::WatermarkMode::Device).then_some(p.max_devices);
                let text = format!(
                    "stream|{:?}|{:?}|{}|{:?}|{}|{:?}|{:?}|{:?}|{}|{:?}|{}|{}|{}|{:?}|{:?}",
                    s.key,
                    s.device,
                    s.device_named,
                    s.format,
                    s.time_field,
                    s.time_unit,
                    s.clock,
                    s.watermark,
                    s.lateness_ms,
                    s.idle_timeout_ms,
                    s.max_future_ms,
                    s.capacity,
                    s.max_keys,
                    s.values,
                    devices,
                );
                Part { name: s.name.clone(), fingerprint: fnv(&text) }
            })
            .collect();
        let mut windows: Vec<Part> = Vec::with_capacity(p.windows.len());
        // windows come in dependency order: an input window's fingerprint is known
        for w in &p.windows {
            let aggs: Vec<_> = w.aggregates.iter().map(|a| (a.func, a.field)).collect();
            let text = format!(
                "window|{}|{:?}|{:?}|{}|{}",
                input_fingerprint(&streams, &windows, w.input),
                w.kind,
                aggs,
                w.max_keys,
                w.input_lateness_ms
            );
            windows.push(Part { name: w.name.clone(), fingerprint: fnv(&text) });
        }
        let joins = p
            .joins
            .iter()
            .map(|j| {
                let text = format!(
                    "join|{}|{}|{:?}|{:?}|{}",
                    input_fingerprint(&streams, &windows, j.left),
                    input_fingerprint(&streams, &windows, j.right),
                    j.strategy,
                    j.kind,
                    j.max_matches
                );
                Part { name: j.name.clone(), fingerprint: fnv(&text) }
            })
            .collect();
        let clocks =
            p.streams.iter().any(|s| s.clock == crate::plan::Clock::Corrected).then_some(p.max_devices.get());
        Manifest { streams, windows, joins, clocks }
    }
}

fn input_fingerprint(streams: &[Part], windows: &[Part], i: Input) -> String {
    match i {
        Input::Stream(s) => format!("s{:016x}", streams[s].fingerprint),
        Input::Window(w) => format!("w{:016x}", windows[w].fingerprint),
    }
}

/// Which kind of component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stream,
    Window,
    Join,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Window => "window",
            Kind::Join => "join",
        }
    }
}

/// What happens to a component's state when a pipeline's state moves to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Same name, same definition: its state carries over.
    Kept,
    /// Same name, changed definition (its own or upstream): it starts empty.
    Reset,
    /// Only in the new pipeline: it starts empty.
    Added,
    /// Only in the old pipeline: its state is dropped.
    Removed,
}

impl Fate {
    /// Every fate, in the order a report lists them.
    pub const ALL: [Fate; 4] = [Fate::Kept, Fate::Reset, Fate::Added, Fate::Removed];

    /// How a report names it.
    pub fn label(self) -> &'static str {
        match self {
            Fate::Kept => "kept",
            Fate::Reset => "started empty (definition changed)",
            Fate::Added => "new, started empty",
            Fate::Removed => "dropped (no longer configured)",
        }
    }
}

/// Where each component of the new pipeline takes its state from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carry {
    /// Per new stream, window and join: the old one whose state it keeps.
    pub streams: Vec<Option<usize>>,
    pub windows: Vec<Option<usize>>,
    pub joins: Vec<Option<usize>>,
    /// Every component of both pipelines with its fate, new ones in their
    /// order, then the removed ones.
    pub report: Vec<(Kind, String, Fate)>,
    /// The clock estimators' fate (`None` when neither pipeline corrects clocks).
    pub clocks_fate: Option<Fate>,
}

impl Carry {
    /// Components with the given fate, as `kind 'name'`, comma-separated.
    pub fn list(&self, fate: Fate) -> String {
        let mut out = String::new();
        for (k, n, f) in &self.report {
            if *f == fate {
                if !out.is_empty() {
                    out.push_str(", ");
                }
                out.push_str(&format!("{} '{}'", k.name(), n));
            }
        }
        if self.clocks_fate == Some(fate) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str("the clock estimators");
        }
        out
    }

    /// Each fate that some component met, with the list of those components.
    pub fn groups(&self) -> Vec<(Fate, String)> {
        Fate::ALL.iter().map(|&f| (f, self.list(f))).filter(|(_, l)| !l.is_empty()).collect()
    }

    /// One line: `kept: stream 's', window 'w'; started empty (definition changed): …`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self.groups().iter().map(|(f, l)| format!("{}: {l}", f.label())).collect();
        parts.join("; ")
    }

    /// Whether the clock estimators carry over.
    pub fn clocks_kept(&self) -> bool {
        self.clocks_fate == Some(Fate::Kept)
    }

    /// Whether everything carries over and nothing was added or removed.
    pub fn all_kept(&self) -> bool {
        self.report.iter().all(|r| r.2 == Fate::Kept) && self.clocks_fate.is_none_or(|f| f == Fate::Kept)
    }

    /// Whether some state is dropped (reset or removed).
    pub fn discards(&self) -> bool {
        self.report.iter().any(|r| matches!(r.2, Fate::Reset | Fate::Removed))
            || matches!(self.clocks_fate, Some(Fate::Reset | Fate::Removed))
    }

    /// Marks a component that matched but whose saved state turned out not to
    /// fit as reset.
    pub fn demote(&mut self, kind: Kind, index: usize) {
        let slot = match kind {
            Kind::Stream => &mut self.streams[index],
            Kind::Window => &mut self.windows[index],
            Kind::Join => &mut self.joins[index],
        };
        *slot = None;
        if let Some(r) = self.report.iter_mut().filter(|r| r.0 == kind).nth(index) {
            r.2 = Fate::Reset;
        }
    }
}

/// Matches an old pipeline's components with a new one's by name.
pub fn carry(old: &Manifest, new: &Manifest) -> Carry {
    let mut report = Vec::new();
    let mut side = |kind: Kind, old: &[Part], new: &[Part]| -> Vec<Option<usize>> {
        let map: Vec<Option<usize>> = new
            .iter()
            .map(|n| {
                let o = old.iter().position(|o| o.name == n.name);
                let fate = match o {
                    Some(o) if old[o].fingerprint == n.fingerprint => Fate::Kept,
                    Some(_) => Fate::Reset,
                    None => Fate::Added,
                };
                report.push((kind, n.name.clone(), fate));
                o.filter(|_| fate == Fate::Kept)
            })
            .collect();
        map
    };
    let streams = side(Kind::Stream, &old.streams, &new.streams);
    let windows = side(Kind::Window, &old.windows, &new.windows);
    let joins = side(Kind::Join, &old.joins, &new.joins);
    for (kind, o, n) in [
        (Kind::Stream, &old.streams, &new.streams),
        (Kind::Window, &old.windows, &new.windows),
        (Kind::Join, &old.joins, &new.joins),
    ] {
        for part in o.iter().filter(|o| !n.iter().any(|n| n.name == o.name)) {
            report.push((kind, part.name.clone(), Fate::Removed));
        }
    }
    let clocks_fate = match (old.clocks, new.clocks) {
        (Some(a), Some(b)) if a == b => Some(Fate::Kept),
        (Some(_), Some(_)) => Some(Fate::Reset),
        (None, Some(_)) => Some(Fate::Added),
        (Some(_), None) => Some(Fate::Removed),
        (None, None) => None,
    };
    // report: the new components in order (streams, windows, joins), then the removed ones
    report.sort_by_key(|r| r.2 == Fate::Removed);
    Carry { streams, windows, joins, report, clocks_fate }
}
