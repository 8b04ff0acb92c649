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
    /// Where results go (the source broker when the config has no `[upstream]`).
    pub upstream: Upstream,
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
    pub service: ServiceCfg,
}

/// How the live service (`edgejoin run`) behaves.
#[derive(Clone, Debug)]
pub struct ServiceCfg {
    pub checkpoint_ms: i64,
    /// How often time passing alone is handed to the engine (idleness).
    pub tick_ms: i64,
    pub stats_ms: i64,
    /// Stats topic, under the upstream prefix.
    pub stats_topic: String,
    /// Where Prometheus metrics are served (none: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub delivery: Delivery,
    /// How long a shutdown waits for the uplink to drain.
    pub shutdown_ms: i64,
}

impl Default for ServiceCfg {
    fn default() -> Self {
        ServiceCfg {
            checkpoint_ms: 30_000,
            tick_ms: 1_000,
            stats_ms: 10_000,
            stats_topic: "stats".into(),
            metrics_addr: None,
            delivery: Delivery::Durable,
            shutdown_ms: 10_000,
        }
    }
}

/// What the gateway promises about input it acknowledged to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Acknowledged only once in the fsynced write-ahead log: nothing is lost on a crash.
    Durable,
    /// Acknowledged on receipt, no write-ahead log: a crash loses what came since the last checkpoint.
    Fast,
}

/// A broker address from an `mqtt://` or `mqtts://` url.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Broker {
    pub fn parse(url: &str) -> Result<Broker, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!("`{url}`: write mqtt://host:port or mqtts://host:port"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("`{url}`: `{p}` is not a port"))?)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("`{url}`: no host"));
        }
        Ok(Broker { host: host.to_string(), port, tls })
    }
}

/// A username and where its password is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    /// Read at start (systemd's LoadCredential puts it in $CREDENTIALS_DIRECTORY).
    pub password_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Source {
    pub url: String,
    pub broker: Broker,
    /// Largest accepted payload in bytes; larger ones are counted and skipped.
    pub max_payload: usize,
    pub client_id: String,
    pub credentials: Option<Credentials>,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    pub url: String,
    pub broker: Broker,
    pub topic_prefix: String,
    /// Disk budget of the store-and-forward spool, in bytes.
    pub spool: u64,
    pub spool_full: crate::spool::FullPolicy,
    pub client_id: String,
    pub credentials: Option<Credentials>,
    pub tls: Option<TlsFiles>,
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

/// Whose progress a stream's watermark follows (SPEC §13.13).
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
    /// A sensor on the local I2C bus instead of MQTT topics.
    pub i2c: Option<I2cSource>,
}

/// A sensor on the gateway's own I2C bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I2cSource {
    /// e.g. `/dev/i2c-1`
    pub bus: PathBuf,
    pub model: crate::i2c::Model,
    pub address: u8,
    pub period_ms: i64,
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
