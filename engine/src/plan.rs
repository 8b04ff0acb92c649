//! The plan: what the engine computes (streams, windows, aggregates, joins),
//! validated. How the gateway is deployed (brokers, TLS, spool, intervals) is
//! not here: that is the gateway's `config::Deployment`.

use alloc::string::String;
use alloc::vec::Vec;
use core::num::NonZeroU32;

use crate::event::MAX_VALUES;
use crate::topic::{TopicPattern, TopicTemplate};

/// What the engine computes: the streams it reads, the windows and joins it
/// keeps, and the two limits of its input. Built only by the gateway's config
/// reader, so every value here has passed its checks (names resolve, durations
/// are in range, capacities are non-zero, windows are in dependency order).
#[derive(Clone, Debug)]
pub struct Plan {
    pub streams: Vec<StreamDef>,
    /// In dependency order: a rollup comes after the window it reads.
    pub windows: Vec<WindowDef>,
    pub joins: Vec<JoinDef>,
    /// Devices whose clocks (`clock = "corrected"`) or watermarks (`watermark = "device"`)
    /// are tracked at once per stream.
    pub max_devices: NonZeroU32,
    /// Largest accepted payload in bytes; larger ones are counted and skipped.
    pub max_payload: usize,
}

/// Where a key or device id comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldRef {
    /// A named capture of the topic pattern; its index in each of the stream's
    /// patterns (patterns may order their captures differently).
    Capture { name: String, index_per_topic: Vec<usize> },
    /// A top-level payload field (`$.order_id`).
    Payload(String),
    /// No setting: one constant (empty) key.
    Constant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Number,
    Postcard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    S,
    Ms,
    Us,
    Ns,
    Rfc3339,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    Device,
    Corrected,
    Receive,
}

/// Whose progress a stream's watermark follows (docs/SEMANTICS.md §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatermarkMode {
    /// One watermark for the stream: `max ts − lateness` over all its devices (§5).
    Stream,
    /// One per device; the stream advances on the slowest active device.
    Device,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LatePolicy {
    Drop,
    Route(TopicTemplate),
}

#[derive(Clone, Debug)]
pub struct StreamDef {
    pub name: String,
    pub topics: Vec<TopicPattern>,
    pub key: FieldRef,
    pub device: FieldRef,
    /// Whether `device` was set in the config (rather than defaulting to the key).
    pub device_named: bool,
    pub format: Format,
    pub time_field: String,
    pub time_unit: TimeUnit,
    pub clock: Clock,
    pub watermark: WatermarkMode,
    pub lateness_ms: i64,
    pub idle_timeout_ms: Option<i64>,
    pub max_future_ms: i64,
    pub capacity: NonZeroU32,
    pub max_keys: NonZeroU32,
    pub late: LatePolicy,
    /// Names of the numeric payload fields carried along (at most [`MAX_VALUES`]).
    pub values: Vec<String>,
}

/// What a window reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Input {
    Stream(usize),
    Window(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WindowKind {
    /// Tumbling when `slide == size`, hopping otherwise. `offset` is normalised
    /// into `[0, slide)`.
    Fixed {
        size_ms: i64,
        slide_ms: i64,
        offset_ms: i64,
    },
    Session {
        gap_ms: i64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AggFunc {
    Count,
    Sum,
    Min,
    Max,
    Mean,
    First,
    Last,
    Stddev,
}

impl AggFunc {
    /// Every function, each with the name a config writes it by.
    pub const ALL: [(AggFunc, &'static str); 8] = [
        (AggFunc::Count, "count"),
        (AggFunc::Sum, "sum"),
        (AggFunc::Min, "min"),
        (AggFunc::Max, "max"),
        (AggFunc::Mean, "mean"),
        (AggFunc::First, "first"),
        (AggFunc::Last, "last"),
        (AggFunc::Stddev, "stddev"),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(f, _)| *f == self).map_or("?", |(_, n)| n)
    }

    /// The function a config names (`avg` is `mean`).
    pub fn from_name(name: &str) -> Option<AggFunc> {
        let name = if name == "avg" { "mean" } else { name };
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggDef {
    /// The output name (key in `values`).
    pub name: String,
    pub func: AggFunc,
    /// Index into the input's value schema; `None` only for `count()`.
    pub field: Option<usize>,
    /// The field's name, for display.
    pub field_name: Option<String>,
}

#[derive(Clone, Debug)]
pub struct WindowDef {
    pub name: String,
    pub input: Input,
    pub kind: WindowKind,
    pub aggregates: Vec<AggDef>,
    /// Whether the window's rows are results, and under which topic: decided
    /// by the config reader (`Some` if a topic is set or nothing else reads the
    /// window, which would otherwise be useless); `None`: it only feeds
    /// rollups and joins.
    pub emit: Option<TopicTemplate>,
    pub max_keys: NonZeroU32,
    /// How far the window's input watermark may trail the newest event: the
    /// stream's lateness (plus its `max_future` with per-device watermarks,
    /// where a device may run that far ahead of the one holding the stream),
    /// 0 for a rollup (its watermark is the latest source-window start).
    pub input_lateness_ms: i64,
}

impl WindowDef {
    /// The value schema this window's records carry when they are another
    /// window's input: the aggregates by name, then `count`.
    pub fn output_fields(&self) -> Vec<String> {
        let mut v: Vec<String> = self.aggregates.iter().map(|a| a.name.clone()).collect();
        v.push("count".into());
        v
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinType {
    Inner,
    LeftOuter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapCondition {
    ContainedStart,
    Overlaps,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Strategy {
    /// `lower <= right.ts - left.ts <= upper` over raw events.
    Tolerance {
        lower_ms: i64,
        upper_ms: i64,
    },
    /// The latest right with `ts <= left.ts` and `left.ts - right.ts <= tolerance`.
    Asof {
        tolerance_ms: i64,
    },
    /// Equal tumbling windows on (key, start).
    Bucket,
    Overlap {
        condition: OverlapCondition,
    },
    Session {
        tolerance_ms: i64,
    },
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Tolerance { .. } => "tolerance",
            Strategy::Asof { .. } => "asof",
            Strategy::Bucket => "bucket",
            Strategy::Overlap { .. } => "overlap",
            Strategy::Session { .. } => "session",
        }
    }
}

#[derive(Clone, Debug)]
pub struct JoinDef {
    pub name: String,
    pub strategy: Strategy,
    pub left: Input,
    pub right: Input,
    pub kind: JoinType,
    pub max_matches: NonZeroU32,
    pub topic: TopicTemplate,
}

impl Plan {
    /// The MQTT subscriptions the streams need: every topic filter once, sorted.
    pub fn topic_filters(&self) -> Vec<String> {
        let mut f: Vec<String> =
            self.streams.iter().flat_map(|s| s.topics.iter().map(|t| String::from(t.filter()))).collect();
        f.sort();
        f.dedup();
        f
    }

    /// The name of an input.
    pub fn input_name(&self, i: Input) -> &str {
        match i {
            Input::Stream(s) => &self.streams[s].name,
            Input::Window(w) => &self.windows[w].name,
        }
    }
}

const _: () = assert!(MAX_VALUES <= 16);
