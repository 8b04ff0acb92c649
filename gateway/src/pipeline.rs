//! The validated pipeline: what the engine runs. Built only by
//! [`crate::config`], so every value here has passed its checks (names resolve,
//! durations are in range, capacities are non-zero, windows are in dependency
//! order).

use std::num::NonZeroU32;
use std::path::PathBuf;

use crate::event::MAX_VALUES;
use crate::topic::{TopicPattern, TopicTemplate};

#[derive(Clone, Debug)]
pub struct Pipeline {
    pub gateway: Gateway,
    pub source: Source,
    pub upstream: Option<Upstream>,
    pub streams: Vec<StreamDef>,
    /// In dependency order: a rollup comes after the window it reads.
    pub windows: Vec<WindowDef>,
    pub joins: Vec<JoinDef>,
}

#[derive(Clone, Debug)]
pub struct Gateway {
    pub id: String,
    pub state_dir: PathBuf,
    /// Devices whose clocks are estimated at once (`clock = "corrected"`).
    pub max_devices: NonZeroU32,
}

#[derive(Clone, Debug)]
pub struct Source {
    pub url: String,
    /// Largest accepted payload in bytes; larger ones are counted and skipped.
    pub max_payload: usize,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    pub url: String,
    pub topic_prefix: String,
    /// Disk budget of the store-and-forward spool, in bytes.
    pub spool: u64,
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
    pub format: Format,
    pub time_field: String,
    pub time_unit: TimeUnit,
    pub clock: Clock,
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
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Count => "count",
            AggFunc::Sum => "sum",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Mean => "mean",
            AggFunc::First => "first",
            AggFunc::Last => "last",
            AggFunc::Stddev => "stddev",
        }
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
    /// Where results go: `Some` if a topic is set or nothing else consumes the
    /// window (an unconsumed window without a topic would be useless).
    pub topic: Option<TopicTemplate>,
    pub max_keys: NonZeroU32,
    /// Lateness of the window's input watermark: the stream's for a stream
    /// input, 0 for a rollup (its watermark is the latest source-window start).
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

    /// Whether the join reads raw events (else closed windows).
    pub fn reads_streams(&self) -> bool {
        matches!(self, Strategy::Tolerance { .. } | Strategy::Asof { .. })
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

impl Pipeline {
    /// The name of an input.
    pub fn input_name(&self, i: Input) -> &str {
        match i {
            Input::Stream(s) => &self.streams[s].name,
            Input::Window(w) => &self.windows[w].name,
        }
    }

    /// The value schema (field names) of an input.
    pub fn input_fields(&self, i: Input) -> Vec<String> {
        match i {
            Input::Stream(s) => self.streams[s].values.clone(),
            Input::Window(w) => self.windows[w].output_fields(),
        }
    }
}

const _: () = assert!(MAX_VALUES <= 16);
