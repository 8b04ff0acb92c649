//! The engine: pure, no IO, no clock reads. It is handed messages (or decoded
//! events) with the gateway's receive time, runs them through the pipeline
//! (stream watermarks and late policy → windows → rollups), and hands every
//! result to a [`Sink`]. All state is allocated in [`Engine::new`].

use crate::prelude::*;

use crate::decode::{DecodeError, Decoder};
use crate::event::{Event, Key, Values, MAX_VALUES};
use crate::join::{root_stream, JoinCounters, JoinCtx, JoinOp, JoinRecord, SideRecord};
use crate::manifest::{carry, Carry, Fate, Kind, Manifest};
use crate::plan::{Clock, Input, LatePolicy, Plan, WatermarkMode, WindowKind};
use crate::route::{route, Decoded};
use crate::skew::{SkewReport, SkewTable};
use crate::topic::TopicTemplate;
use crate::watermark::{is_idle, Arrival, DeviceWatermarks, Watermark, NO_WM};
use crate::window::{WindowCounters, WindowOp, WindowRecord};

/// A late event routed by `late = "route"` (docs/SEMANTICS.md §2.2).
#[derive(Clone, Debug, PartialEq)]
pub struct LateRecord {
    pub stream: u16,
    pub key: Key,
    pub ts: i64,
    pub recv_ms: i64,
    pub watermark: i64,
    pub values: Values,
}

/// Something the engine emits.
#[derive(Clone, Copy, Debug)]
pub enum Output<'a> {
    /// A closed window's row, and the topic it goes to.
    Window(&'a WindowRecord, &'a TopicTemplate),
    Join(&'a JoinRecord),
    Late(&'a LateRecord),
}

/// Receives the engine's results. `pipeline` resolves names.
pub trait Sink {
    fn emit(&mut self, pipeline: &Plan, out: Output<'_>);

    /// An event of a `clock = "corrected"` stream: its device's timestamp,
    /// receive time and the corrected time it got (what a clock report
    /// draws; nothing by default).
    fn corrected(&mut self, _device: &Key, _device_ts: i64, _recv_ms: i64, _corrected: i64) {}
}

impl<F: FnMut(&Plan, Output<'_>)> Sink for F {
    fn emit(&mut self, pipeline: &Plan, out: Output<'_>) {
        self(pipeline, out)
    }
}

/// Counters of one stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamCounters {
    /// Messages whose topic matched the stream.
    pub received: u64,
    /// Messages decoded into an event.
    pub decoded: u64,
    pub on_time: u64,
    pub late_dropped: u64,
    pub late_routed: u64,
    /// Skipped messages by [`DecodeError`] (indexed by [`DecodeError::index`]).
    pub decode_errors: [u64; DecodeError::ALL.len()],
    pub missing_value: u64,
    pub non_numeric_value: u64,
    /// Device timestamps more than `max_future` ahead, clamped to receive time.
    pub clamped_future: u64,
}

/// A message a stream skipped (it is counted in the stream's `decode_errors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The stream (index into the plan's streams).
    pub stream: usize,
    pub reason: DecodeError,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StreamState {
    wm: Watermark,
    last_spoke: i64,
    counters: StreamCounters,
    #[serde(skip)]
    windows: Vec<usize>,
    /// Joins reading this stream's raw events: (join, side).
    #[serde(skip)]
    joins: Vec<(usize, usize)>,
}

/// What a checkpoint holds: every piece of state the pipeline cannot rebuild.
#[derive(serde::Serialize)]
struct SnapshotRef<'a> {
    streams: &'a [StreamState],
    windows: &'a [WindowOp],
    rollup_wm: &'a [Watermark],
    joins: &'a [JoinOp],
    skew: &'a Option<SkewTable>,
    now: i64,
    started: bool,
    seq: u64,
    global: GlobalCounters,
}

#[derive(serde::Deserialize)]
struct Snapshot {
    streams: Vec<StreamState>,
    windows: Vec<WindowOp>,
    rollup_wm: Vec<Watermark>,
    joins: Vec<JoinOp>,
    skew: Option<SkewTable>,
    now: i64,
    started: bool,
    seq: u64,
    global: GlobalCounters,
}

/// Why engine state could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("state does not decode: {0}")]
    Decode(#[from] postcard::Error),
    #[error("state does not fit this config: {0}")]
    Shape(String),
}

/// Engine-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GlobalCounters {
    /// Messages no stream's topics matched.
    pub unrouted: u64,
}

struct State {
    streams: Vec<StreamState>,
    decoders: Vec<Decoder>,
    windows: Vec<WindowOp>,
    /// Per window: windows that roll it up.
    rollups: Vec<Vec<usize>>,
    /// Per window: the watermark of its input when that input is a window.
    rollup_wm: Vec<Watermark>,
    /// Per window: joins reading its closed windows: (join, side).
    window_joins: Vec<Vec<(usize, usize)>>,
    joins: Vec<JoinOp>,
    /// Per-device clock estimators (streams with `clock = "corrected"`).
    skew: Option<SkewTable>,
    /// Per stream: its devices' watermarks (`watermark = "device"`).
    devices: Vec<Option<DeviceWatermarks>>,
    now: i64,
    started: bool,
    seq: u64,
    scratch: Event,
    global: GlobalCounters,
}

/// The gateway clock as the engine takes it: within the years event times
/// may have (±[`MAX_ABS_TS_MS`](crate::decode::MAX_ABS_TS_MS)). A wall clock
/// is always inside; a caller's absurd "now" (the fuzz harness draws it from
/// any 8 bytes) would otherwise reach arithmetic sized for real times —
/// found by the payload fuzz corpus of session 11 as overflows in debug builds.
fn clamp_clock(ms: i64) -> i64 {
    ms.clamp(-crate::decode::MAX_ABS_TS_MS, crate::decode::MAX_ABS_TS_MS)
}

pub struct Engine {
    p: Plan,
    st: State,
}

impl Engine {
    /// Builds the engine and allocates all of its state. `hash_seed` keys the
    /// key tables' hash (a random one protects a live gateway against
    /// crafted colliding keys; results do not depend on it).
    pub fn new(p: Plan, hash_seed: u64) -> Engine {
        let mut streams: Vec<StreamState> = p
            .streams
            .iter()
            .map(|s| StreamState {
                wm: Watermark::new(s.lateness_ms),
                last_spoke: 0,
                counters: StreamCounters::default(),
                windows: Vec::new(),
                joins: Vec::new(),
            })
            .collect();
        let mut window_joins = vec![Vec::new(); p.windows.len()];
        for (j, d) in p.joins.iter().enumerate() {
            for (side, input) in [d.left, d.right].into_iter().enumerate() {
                match input {
                    Input::Stream(s) => streams[s].joins.push((j, side)),
                    Input::Window(w) => window_joins[w].push((j, side)),
                }
            }
        }
        let mut rollups = vec![Vec::new(); p.windows.len()];
        for (i, w) in p.windows.iter().enumerate() {
            match w.input {
                Input::Stream(s) => streams[s].windows.push(i),
                Input::Window(src) => rollups[src].push(i),
            }
        }
        let st = State {
            decoders: p.streams.iter().map(Decoder::new).collect(),
            windows: p.windows.iter().enumerate().map(|(i, w)| WindowOp::new(i, w, hash_seed)).collect(),
            rollup_wm: p.windows.iter().map(|_| Watermark::new(0)).collect(),
            window_joins,
            joins: (0..p.joins.len()).map(|j| JoinOp::new(j, &p, hash_seed)).collect(),
            skew: p
                .streams
                .iter()
                .any(|s| s.clock == Clock::Corrected)
                .then(|| SkewTable::new(p.max_devices.get() as usize, hash_seed)),
            devices: p
                .streams
                .iter()
                .map(|s| {
                    (s.watermark == WatermarkMode::Device).then(|| {
                        DeviceWatermarks::new(
                            p.max_devices.get() as usize,
                            s.lateness_ms,
                            s.idle_timeout_ms,
                            hash_seed,
                        )
                    })
                })
                .collect(),
            rollups,
            streams,
            now: NO_WM,
            started: false,
            seq: 0,
            scratch: Event::blank(),
            global: GlobalCounters::default(),
        };
        Engine { p, st }
    }

    /// The engine's state as bytes (postcard), for a checkpoint.
    pub fn save_state(&self) -> Vec<u8> {
        // the per-device watermarks follow the snapshot: a checkpoint from before them still restores
        let v = postcard::to_extend(&self.snapshot(), Vec::new()).expect("engine state serializes");
        let v = postcard::to_extend(&self.st.devices, v).expect("engine state serializes");
        // and the manifest: a later config matches its parts by name
        postcard::to_extend(&Manifest::of(&self.p), v).expect("engine state serializes")
    }

    /// Streams the engine's state (postcard, as [`save_state`](Self::save_state)) into `w`.
    #[cfg(feature = "std")]
    pub fn write_state(&self, w: impl std::io::Write) -> std::io::Result<()> {
        let err = |e| match e {
            postcard::Error::SerdeSerCustom => std::io::Error::other("engine state does not serialize"),
            other => std::io::Error::other(other),
        };
        let w = postcard::to_io(&self.snapshot(), w).map_err(err)?;
        let w = postcard::to_io(&self.st.devices, w).map_err(err)?;
        postcard::to_io(&Manifest::of(&self.p), w).map(|_| ()).map_err(err)
    }

    fn snapshot(&self) -> SnapshotRef<'_> {
        let st = &self.st;
        SnapshotRef {
            streams: &st.streams,
            windows: &st.windows,
            rollup_wm: &st.rollup_wm,
            joins: &st.joins,
            skew: &st.skew,
            now: st.now,
            started: st.started,
            seq: st.seq,
            global: st.global,
        }
    }

    /// An engine for `p` with the state from [`save_state`](Self::save_state),
    /// and what carried over. State saved with a manifest (see
    /// [`crate::manifest`]) is matched by name: each stream, window, join and
    /// the clock estimators keep their state when their definition is
    /// unchanged and start empty otherwise. Older state (no manifest) must
    /// fit `p` whole.
    pub fn restore(p: Plan, hash_seed: u64, bytes: &[u8]) -> Result<(Engine, Carry), RestoreError> {
        let mut e = Engine::new(p, hash_seed);
        let (snap, rest): (Snapshot, &[u8]) = postcard::take_from_bytes(bytes)?;
        let (devices, rest): (Option<Vec<Option<DeviceWatermarks>>>, &[u8]) = if rest.is_empty() {
            (None, rest)
        } else {
            postcard::take_from_bytes(rest).map(|(d, r)| (Some(d), r))?
        };
        let old: Option<Manifest> = if rest.is_empty() { None } else { Some(postcard::from_bytes(rest)?) };
        let new = Manifest::of(&e.p);
        // without a manifest, the state must fit whole, part for part
        let positional = old.is_none();
        let mut carry = match old {
            Some(old) => {
                if old.streams.len() != snap.streams.len()
                    || old.windows.len() != snap.windows.len()
                    || old.joins.len() != snap.joins.len()
                    || old.windows.len() != snap.rollup_wm.len()
                    || devices.as_ref().is_some_and(|d| d.len() != old.streams.len())
                    || old.clocks.is_some() != snap.skew.is_some()
                {
                    return Err(RestoreError::Shape("its parts do not match its manifest (corrupt)".into()));
                }
                carry(&old, &new)
            }
            None => {
                if snap.streams.len() != e.st.streams.len()
                    || snap.windows.len() != e.st.windows.len()
                    || snap.rollup_wm.len() != e.st.rollup_wm.len()
                    || snap.joins.len() != e.st.joins.len()
                    || snap.skew.is_some() != e.st.skew.is_some()
                    || devices.as_ref().is_some_and(|d| d.len() != e.st.streams.len())
                {
                    return Err(RestoreError::Shape(
                        "a different number of streams, windows or joins".into(),
                    ));
                }
                carry(&new, &new)
            }
        };
        let p = &e.p;
        let st = &mut e.st;
        let mut saved_streams: Vec<Option<StreamState>> = snap.streams.into_iter().map(Some).collect();
        let had_devices = devices.is_some();
        let mut saved_devices: Vec<Option<DeviceWatermarks>> = match devices {
            Some(d) => d,
            None => (0..saved_streams.len()).map(|_| None).collect(),
        };
        for s in 0..st.streams.len() {
            let Some(o) = carry.streams[s] else { continue };
            let def = &p.streams[s];
            let saved = saved_streams[o].take().expect("each old stream is taken once");
            let dev = saved_devices[o].take();
            let dev = match (dev, st.devices[s].is_some()) {
                (Some(mut d), true) if d.shape_matches(p.max_devices.get() as usize, def.lateness_ms) => {
                    d.after_restore(def.idle_timeout_ms);
                    Some(Some(d))
                }
                // saved before per-device watermarks were checkpointed: they start empty
                (None, true) if !had_devices => Some(None),
                (None, false) => Some(None),
                _ => None,
            };
            match dev {
                Some(d) => {
                    let fresh = &mut st.streams[s];
                    fresh.wm = saved.wm;
                    fresh.last_spoke = saved.last_spoke;
                    fresh.counters = saved.counters;
                    if let Some(d) = d {
                        st.devices[s] = Some(d);
                    }
                }
                None if positional => {
                    return Err(RestoreError::Shape(format!(
                        "stream '{}' has a different max_devices, lateness or watermark mode",
                        def.name
                    )))
                }
                None => carry.demote(Kind::Stream, s),
            }
        }
        let mut saved_windows: Vec<Option<WindowOp>> = snap.windows.into_iter().map(Some).collect();
        for w in 0..st.windows.len() {
            let Some(o) = carry.windows[w] else { continue };
            let mut saved = saved_windows[o].take().expect("each old window is taken once");
            saved.renumber(w);
            match saved.after_restore(w, &p.windows[w]) {
                Ok(()) => {
                    st.windows[w] = saved;
                    st.rollup_wm[w] = snap.rollup_wm[o];
                }
                Err(why) if positional => return Err(RestoreError::Shape(why)),
                Err(_) => carry.demote(Kind::Window, w),
            }
        }
        let mut saved_joins: Vec<Option<JoinOp>> = snap.joins.into_iter().map(Some).collect();
        for j in 0..st.joins.len() {
            let Some(o) = carry.joins[j] else { continue };
            let mut saved = saved_joins[o].take().expect("each old join is taken once");
            saved.renumber(j, p);
            match saved.after_restore(j, p) {
                Ok(()) => st.joins[j] = saved,
                Err(why) if positional => return Err(RestoreError::Shape(why)),
                Err(_) => carry.demote(Kind::Join, j),
            }
        }
        if carry.clocks_kept() {
            if let Some(mut t) = snap.skew {
                match t.after_restore(p.max_devices.get() as usize) {
                    Ok(()) => st.skew = Some(t),
                    Err(why) if positional => return Err(RestoreError::Shape(why)),
                    Err(_) => carry.clocks_fate = Some(Fate::Reset),
                }
            }
        }
        st.now = snap.now;
        st.started = snap.started;
        st.seq = snap.seq;
        st.global = snap.global;
        Ok((e, carry))
    }

    pub fn pipeline(&self) -> &Plan {
        &self.p
    }

    /// Bytes of state the engine allocated (fixed for its lifetime).
    pub fn memory_bytes(p: &Plan) -> u64 {
        let windows = p.windows.iter().map(WindowOp::memory_bytes).fold(0u64, u64::saturating_add);
        let joins = (0..p.joins.len()).map(|j| JoinOp::memory_bytes(p, j)).fold(0u64, u64::saturating_add);
        windows
            .saturating_add(joins)
            .saturating_add(Self::skew_memory_bytes(p))
            .saturating_add(Self::device_watermark_bytes(p))
            .saturating_add((p.streams.len() * core::mem::size_of::<StreamCounters>()) as u64)
    }

    /// Bytes of the per-device watermark tables (`watermark = "device"` streams).
    pub fn device_watermark_bytes(p: &Plan) -> u64 {
        let n = p.streams.iter().filter(|s| s.watermark == WatermarkMode::Device).count() as u64;
        n * DeviceWatermarks::memory_bytes(u64::from(p.max_devices.get()))
    }

    /// A `watermark = "device"` stream's device table.
    pub fn device_watermarks(&self, s: usize) -> Option<&DeviceWatermarks> {
        self.st.devices[s].as_ref()
    }

    /// Bytes of the per-device clock estimators (0 without `clock = "corrected"`).
    pub fn skew_memory_bytes(p: &Plan) -> u64 {
        if p.streams.iter().any(|s| s.clock == Clock::Corrected) {
            SkewTable::memory_bytes(u64::from(p.max_devices.get()))
        } else {
            0
        }
    }

    /// Clock estimates per device, most recently heard first.
    pub fn skew_reports(&self) -> Vec<(String, SkewReport)> {
        match &self.st.skew {
            Some(t) => t.reports().map(|(k, r)| (k.to_string(), r)).collect(),
            None => Vec::new(),
        }
    }

    /// Devices whose estimator was evicted for a new device.
    pub fn skew_evictions(&self) -> u64 {
        self.st.skew.as_ref().map_or(0, |t| t.evictions)
    }

    /// The gateway clock: the largest receive time seen.
    pub fn now(&self) -> i64 {
        self.st.now
    }

    pub fn stream_counters(&self, s: usize) -> &StreamCounters {
        &self.st.streams[s].counters
    }

    pub fn stream_watermark(&self, s: usize) -> Option<i64> {
        let w = self.st.stream_wm(s);
        (w != NO_WM).then_some(w)
    }

    pub fn window_counters(&self, w: usize) -> &WindowCounters {
        &self.st.windows[w].counters
    }

    pub fn window_occupancy(&self, w: usize) -> (usize, usize) {
        (self.st.windows[w].live_keys(), self.st.windows[w].open_windows())
    }

    pub fn join_counters(&self, j: usize) -> &JoinCounters {
        &self.st.joins[j].counters
    }

    /// Keys with buffered elements, and elements buffered per side.
    pub fn join_occupancy(&self, j: usize) -> (usize, usize, usize) {
        self.st.joins[j].occupancy()
    }

    /// The join's watermark (its frontier), if it has one.
    pub fn join_watermark(&self, j: usize) -> Option<i64> {
        let w = self.st.joins[j].watermark();
        (w > NO_WM.saturating_add(1)).then_some(w)
    }

    pub fn global_counters(&self) -> &GlobalCounters {
        &self.st.global
    }

    /// Advances the gateway clock (it never runs backwards); streams may turn
    /// idle and let joins advance.
    pub fn tick(&mut self, now_ms: i64, sink: &mut impl Sink) {
        let now_ms = clamp_clock(now_ms);
        let Engine { p, st } = self;
        st.set_now(now_ms);
        st.advance_device_streams(p, sink);
        st.advance_joins(p, sink);
    }

    /// One MQTT message received at `recv_ms`: routed to every stream whose
    /// topics match, decoded, and processed. Returns why a stream skipped
    /// it, if one did (also counted): for a log line a person can act on.
    pub fn ingest(
        &mut self,
        recv_ms: i64,
        topic: &str,
        payload: &[u8],
        sink: &mut impl Sink,
    ) -> Option<Skipped> {
        let recv_ms = clamp_clock(recv_ms);
        let Engine { p, st } = self;
        let mut skipped = None;
        st.set_now(recv_ms);
        let mut routed = false;
        for (s, pattern, caps) in route(&p.streams, topic) {
            routed = true;
            st.streams[s].counters.received += 1;
            if payload.len() > p.max_payload {
                st.streams[s].counters.decode_errors[DecodeError::TooLarge.index()] += 1;
                skipped.get_or_insert(Skipped { stream: s, reason: DecodeError::TooLarge });
                continue;
            }
            let mut ev = core::mem::replace(&mut st.scratch, Event::blank());
            match st.decoders[s].decode(topic, pattern, &caps, payload, &mut ev) {
                Ok(notes) => {
                    let c = &mut st.streams[s].counters;
                    c.missing_value += u64::from(notes.missing_values);
                    c.non_numeric_value += u64::from(notes.non_numeric_values);
                    ev.stream = s as u16;
                    ev.recv_ms = recv_ms;
                    st.process(p, &mut ev, sink);
                }
                Err(e) => {
                    st.streams[s].counters.decode_errors[e.index()] += 1;
                    skipped.get_or_insert(Skipped { stream: s, reason: e });
                }
            }
            st.scratch = ev;
        }
        if !routed {
            st.global.unrouted += 1;
        }
        // time moved: idleness may let streams and joins advance
        st.advance_device_streams(p, sink);
        st.advance_joins(p, sink);
        skipped
    }

    /// A message decoded by a [`Router`](crate::route::Router) off this
    /// thread: the same as [`ingest`](Self::ingest) of that message (which
    /// returns `None` for it: it decoded without error).
    pub fn apply(&mut self, recv_ms: i64, d: &Decoded, sink: &mut impl Sink) {
        let recv_ms = clamp_clock(recv_ms);
        let Engine { p, st } = self;
        st.set_now(recv_ms);
        let (missing, non_numeric) = d.notes();
        let c = &mut st.streams[d.stream()].counters;
        c.received += 1;
        c.missing_value += u64::from(missing);
        c.non_numeric_value += u64::from(non_numeric);
        let mut ev = core::mem::replace(&mut st.scratch, Event::blank());
        d.fill(&mut ev);
        ev.recv_ms = recv_ms;
        st.process(p, &mut ev, sink);
        st.scratch = ev;
        st.advance_device_streams(p, sink);
        st.advance_joins(p, sink);
    }

    /// One decoded event (its `ts` is the device's timestamp; the stream's
    /// clock mode is applied here). Advances the gateway clock to `recv_ms`.
    pub fn process(&mut self, ev: &mut Event, sink: &mut impl Sink) {
        let Engine { p, st } = self;
        st.set_now(ev.recv_ms);
        st.streams[ev.stream as usize].counters.received += 1;
        st.process(p, ev, sink);
        st.advance_device_streams(p, sink);
        st.advance_joins(p, sink);
    }

    /// End of input: every watermark passes all data, every open window closes.
    pub fn flush(&mut self, sink: &mut impl Sink) {
        let Engine { p, st } = self;
        for s in &mut st.streams {
            s.wm.close();
        }
        for d in st.devices.iter_mut().flatten() {
            d.close();
        }
        for w in 0..st.windows.len() {
            let wm = match p.windows[w].input {
                Input::Stream(s) => st.stream_wm(s),
                Input::Window(_) => {
                    st.rollup_wm[w].close();
                    st.rollup_wm[w].current()
                }
            };
            st.advance_window(p, w, wm, sink);
        }
        st.advance_joins(p, sink);
    }
}

impl State {
    fn set_now(&mut self, t: i64) {
        if !self.started {
            self.started = true;
            for s in &mut self.streams {
                s.last_spoke = t;
            }
        }
        if t > self.now {
            self.now = t;
        }
    }

    fn process(&mut self, p: &Plan, ev: &mut Event, sink: &mut impl Sink) {
        let s = ev.stream as usize;
        let def = &p.streams[s];
        match def.clock {
            Clock::Receive => ev.ts = self.now,
            Clock::Device => {
                if ev.ts > ev.recv_ms.saturating_add(def.max_future_ms) {
                    ev.ts = ev.recv_ms;
                    self.streams[s].counters.clamped_future += 1;
                }
            }
            Clock::Corrected => {
                let table = self.skew.as_mut().expect("built when a stream corrects its clock");
                let device_ts = ev.ts;
                ev.ts = table.correct(&ev.device, ev.ts, ev.recv_ms);
                sink.corrected(&ev.device, device_ts, ev.recv_ms, ev.ts);
            }
        }
        let now = self.now;
        let st = &mut self.streams[s];
        st.counters.decoded += 1;
        st.last_spoke = now;
        let (arrival, late_wm) = match &mut self.devices[s] {
            Some(d) => {
                let a = d.observe(&ev.device, ev.ts, now);
                (a, d.device_wm(&ev.device).unwrap_or(NO_WM))
            }
            None => {
                let late_wm = st.wm.current();
                (if st.wm.observe(ev.ts) { Arrival::OnTime } else { Arrival::Late }, late_wm)
            }
        };
        match arrival {
            Arrival::OnTime => {}
            // on time for its device, below what the stream's operators have passed: counted there
            Arrival::BelowStream => return,
            Arrival::Late => {
                match &def.late {
                    LatePolicy::Drop => st.counters.late_dropped += 1,
                    LatePolicy::Route(_) => {
                        st.counters.late_routed += 1;
                        let rec = LateRecord {
                            stream: ev.stream,
                            key: ev.key.clone(),
                            ts: ev.ts,
                            recv_ms: ev.recv_ms,
                            watermark: late_wm,
                            values: ev.values,
                        };
                        sink.emit(p, Output::Late(&rec));
                    }
                }
                return;
            }
        }
        st.counters.on_time += 1;
        let wm = match &mut self.devices[s] {
            Some(d) => d.advance(now),
            None => st.wm.current(),
        };
        self.seq += 1;
        for i in 0..self.streams[s].windows.len() {
            let w = self.streams[s].windows[i];
            self.advance_window(p, w, wm, sink);
            self.windows[w].insert(&ev.key, ev.ts, &ev.values, self.seq);
        }
        if !self.streams[s].joins.is_empty() {
            let rec =
                SideRecord { input: Input::Stream(s), t0: ev.ts, t1: ev.ts, count: 1, values: ev.values };
            for i in 0..self.streams[s].joins.len() {
                let (j, side) = self.streams[s].joins[i];
                let ctx = join_ctx(p, &self.windows, j);
                self.joins[j].on_input(p, side, &ev.key, &rec, self.seq, self.now, ctx, &mut |p, r| {
                    sink.emit(p, Output::Join(r))
                });
            }
        }
    }

    /// A stream's watermark as its windows and joins see it.
    fn stream_wm(&self, s: usize) -> i64 {
        match &self.devices[s] {
            Some(d) => d.current(),
            None => self.streams[s].wm.current(),
        }
    }

    /// Streams with per-device watermarks move on as time passes (a slow
    /// device turning idle): their windows close what the new watermark closes.
    fn advance_device_streams(&mut self, p: &Plan, sink: &mut impl Sink) {
        for s in 0..self.devices.len() {
            let Some(d) = self.devices[s].as_mut() else { continue };
            let before = d.current();
            let wm = d.advance(self.now);
            if wm > before {
                for i in 0..self.streams[s].windows.len() {
                    let w = self.streams[s].windows[i];
                    self.advance_window(p, w, wm, sink);
                }
            }
        }
    }

    /// A join side's progress and idleness (see `join.rs`).
    fn side_progress(&self, p: &Plan, input: Input) -> (i64, bool) {
        let root = root_stream(p, input);
        let def = &p.streams[root];
        let idle = is_idle(def.idle_timeout_ms, self.streams[root].last_spoke, self.now);
        let progress = match input {
            Input::Stream(s) => self.stream_wm(s),
            Input::Window(w) => {
                let wm = match p.windows[w].input {
                    Input::Stream(s) => self.stream_wm(s),
                    Input::Window(_) => self.rollup_wm[w].current(),
                };
                match p.windows[w].kind {
                    WindowKind::Fixed { .. } => wm.saturating_add(1),
                    WindowKind::Session { .. } => wm,
                }
            }
        };
        (progress, idle)
    }

    /// Hands every join its inputs' current progress (see `join.rs`).
    fn advance_joins(&mut self, p: &Plan, sink: &mut impl Sink) {
        for j in 0..self.joins.len() {
            let d = &p.joins[j];
            let progress = [self.side_progress(p, d.left), self.side_progress(p, d.right)];
            let ctx = join_ctx(p, &self.windows, j);
            self.joins[j].advance(p, progress, self.now, ctx, &mut |p, r| sink.emit(p, Output::Join(r)));
        }
    }

    /// Closes what `wm` closes in window `w`, emitting each record and feeding
    /// it to the windows that roll `w` up.
    fn advance_window(&mut self, p: &Plan, w: usize, wm: i64, sink: &mut impl Sink) {
        let n = self.windows[w].advance(wm);
        if n == 0 {
            return;
        }
        for i in 0..n {
            let rec = self.windows[w].record(i, self.now);
            if let Some(topic) = &p.windows[w].emit {
                sink.emit(p, Output::Window(&rec, topic));
            }
            for r in 0..self.rollups[w].len() {
                let up = self.rollups[w][r];
                self.rollup_input(p, up, &rec, sink);
            }
            if !self.window_joins[w].is_empty() {
                let side = SideRecord {
                    input: Input::Window(w),
                    t0: rec.start,
                    t1: rec.end,
                    count: rec.count,
                    values: rec.values,
                };
                self.seq += 1;
                for i in 0..self.window_joins[w].len() {
                    let (j, s) = self.window_joins[w][i];
                    let ctx = join_ctx(p, &self.windows, j);
                    self.joins[j].on_input(p, s, &rec.key, &side, self.seq, self.now, ctx, &mut |p, r| {
                        sink.emit(p, Output::Join(r))
                    });
                }
            }
        }
        self.windows[w].release();
    }

    /// A closed window of `rec.window` as an event of the rollup `up`: event
    /// time = its start; values = its aggregates, then `count`.
    fn rollup_input(&mut self, p: &Plan, up: usize, rec: &WindowRecord, sink: &mut impl Sink) {
        if !self.rollup_wm[up].observe(rec.start) {
            self.windows[up].counters.late += 1;
            return;
        }
        let naggs = p.windows[rec.window as usize].aggregates.len();
        let mut values = rec.values;
        if naggs < MAX_VALUES {
            values.0[naggs] = rec.count as f64;
        }
        let wm = self.rollup_wm[up].current();
        self.advance_window(p, up, wm, sink);
        self.seq += 1;
        self.windows[up].insert(&rec.key, rec.start, &values, self.seq);
    }
}

/// What join `j` may ask of its window inputs.
fn join_ctx<'a>(p: &Plan, windows: &'a [WindowOp], j: usize) -> JoinCtx<'a> {
    let d = &p.joins[j];
    let win = |i: Input| match i {
        Input::Window(w) => Some(&windows[w]),
        Input::Stream(_) => None,
    };
    JoinCtx { windows: [win(d.left), win(d.right)] }
}
