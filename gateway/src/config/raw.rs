//! The config file as written: the TOML shapes serde reads (contract names,
//! docs/CONFIG.md), each value with its span for line-precise errors. Nothing here
//! is checked yet; [`super`] turns it into a plan and a deployment.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::check::S;
use edgejoin_engine::plan::{Clock, Format, JoinType, OverlapCondition, TimeUnit, WatermarkMode};

use super::deployment::{Delivery, FullPolicy, LogFormat, SensorModel};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) gateway: Option<RawGateway>,
    pub(super) source: Option<RawSource>,
    pub(super) upstream: Option<RawUpstream>,
    pub(super) homeassistant: Option<RawHomeAssistant>,
    #[serde(default)]
    pub(super) stream: Vec<S<RawStream>>,
    #[serde(default)]
    pub(super) window: Vec<S<RawWindow>>,
    #[serde(default)]
    pub(super) join: Vec<S<RawJoin>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHomeAssistant {
    pub(super) discovery: Option<bool>,
    pub(super) prefix: Option<S<String>>,
    pub(super) max_sensors: Option<S<i64>>,
    pub(super) units: Option<S<std::collections::BTreeMap<String, String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) id: Option<S<String>>,
    pub(super) state_dir: Option<S<String>>,
    pub(super) max_devices: Option<S<i64>>,
    pub(super) checkpoint_interval: Option<S<String>>,
    pub(super) tick: Option<S<String>>,
    pub(super) stats_interval: Option<S<String>>,
    pub(super) stats_topic: Option<S<String>>,
    pub(super) metrics_addr: Option<S<String>>,
    pub(super) delivery: Option<S<Delivery>>,
    pub(super) shutdown_timeout: Option<S<String>>,
    pub(super) commit_delay: Option<S<String>>,
    pub(super) log_format: Option<S<LogFormat>>,
    pub(super) clock_trace: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) url: Option<S<String>>,
    pub(super) max_payload: Option<S<String>>,
    pub(super) client_id: Option<S<String>>,
    pub(super) username: Option<String>,
    pub(super) password_file: Option<S<String>>,
    pub(super) ca_file: Option<S<String>>,
    pub(super) cert_file: Option<S<String>>,
    pub(super) key_file: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) url: S<String>,
    pub(super) topic_prefix: Option<S<String>>,
    pub(super) spool: Option<S<String>>,
    pub(super) spool_full: Option<S<FullPolicy>>,
    pub(super) client_id: Option<S<String>>,
    pub(super) username: Option<String>,
    pub(super) password_file: Option<S<String>>,
    pub(super) ca_file: Option<S<String>>,
    pub(super) cert_file: Option<S<String>>,
    pub(super) key_file: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStream {
    pub(super) name: S<String>,
    pub(super) topics: Option<S<Vec<S<String>>>>,
    pub(super) i2c: Option<S<RawI2c>>,
    pub(super) key: Option<S<String>>,
    pub(super) device: Option<S<String>>,
    pub(super) format: Option<S<Format>>,
    pub(super) time_field: Option<S<String>>,
    pub(super) time_unit: Option<S<TimeUnit>>,
    pub(super) clock: Option<S<Clock>>,
    pub(super) watermark: Option<S<WatermarkMode>>,
    pub(super) lateness: Option<S<String>>,
    pub(super) idle_timeout: Option<S<String>>,
    pub(super) max_future: Option<S<String>>,
    pub(super) capacity: Option<S<i64>>,
    pub(super) max_keys: Option<S<i64>>,
    pub(super) late: Option<S<RawLate>>,
    pub(super) late_topic: Option<S<String>>,
    pub(super) values: Option<S<Vec<S<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawI2c {
    pub(super) bus: String,
    pub(super) sensor: SensorModel,
    pub(super) address: Option<i64>,
    pub(super) period: Option<S<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawLate {
    Drop,
    Route,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    pub(super) name: S<String>,
    pub(super) input: S<String>,
    pub(super) size: Option<S<String>>,
    pub(super) slide: Option<S<String>>,
    pub(super) offset: Option<S<String>>,
    pub(super) gap: Option<S<String>>,
    pub(super) aggregates: Option<S<BTreeMap<String, S<String>>>>,
    pub(super) topic: Option<S<String>>,
    pub(super) max_keys: Option<S<i64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawStrategy {
    Tolerance,
    Asof,
    Bucket,
    Overlap,
    Session,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJoin {
    pub(super) name: S<String>,
    pub(super) strategy: S<RawStrategy>,
    pub(super) left: S<String>,
    pub(super) right: S<String>,
    #[serde(rename = "type")]
    pub(super) kind: Option<S<JoinType>>,
    pub(super) lower: Option<S<String>>,
    pub(super) upper: Option<S<String>>,
    pub(super) tolerance: Option<S<String>>,
    pub(super) condition: Option<S<OverlapCondition>>,
    pub(super) max_matches: Option<S<i64>>,
    pub(super) topic: Option<S<String>>,
}

// ---------- checking ----------
