//! Scenario files: which devices publish what, how often, with which
//! clocks and over which network. TOML; durations as in edgejoin's config.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub scenario: Meta,
    #[serde(default)]
    pub sensor: Vec<Sensor>,
    #[serde(default)]
    pub pair: Vec<Pair>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// How much simulated time to generate.
    pub duration: String,
    /// "now" (default) or an RFC 3339 time for reproducible recordings.
    pub start: Option<String>,
    pub seed: Option<u64>,
}

/// Readings from `devices` devices, one every `every`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Sensor {
    pub name: String,
    pub topic: String,
    #[serde(default = "one")]
    pub devices: u32,
    pub device_prefix: Option<String>,
    pub every: String,
    #[serde(default)]
    pub jitter: f64,
    /// Numeric fields and the range their random walk stays in.
    #[serde(default)]
    pub values: BTreeMap<String, [f64; 2]>,
    #[serde(default = "json")]
    pub format: String,
    #[serde(default = "ms")]
    pub time_unit: String,
    #[serde(default)]
    pub clock: ClockModel,
    #[serde(default)]
    pub delay: DelayModel,
    /// Bursty activity: on for `active`, silent for `idle`, repeatedly.
    pub session: Option<Session>,
    /// A silent period (e.g. a lost link) after which buffered readings arrive in a burst.
    pub outage: Option<Outage>,
}

/// A leader event per entity (an order) and, with probability `follow_p`, a
/// follower event with the same id (its payment) `follow_after` later.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    pub name: String,
    pub leader_topic: String,
    pub follower_topic: String,
    #[serde(default = "one")]
    pub devices: u32,
    pub device_prefix: Option<String>,
    pub every: String,
    #[serde(default)]
    pub jitter: f64,
    #[serde(default = "id_field")]
    pub id_field: String,
    #[serde(default = "id_prefix")]
    pub id_prefix: String,
    pub follow_p: f64,
    /// [min, max] of the follower's delay after the leader (durations; min may be negative).
    pub follow_after: [String; 2],
    #[serde(default)]
    pub values: BTreeMap<String, [f64; 2]>,
    #[serde(default)]
    pub clock: ClockModel,
    #[serde(default)]
    pub delay: DelayModel,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ClockModel {
    /// Offset of every device's clock, plus a random spread of ± `offset_spread`.
    pub offset: Option<String>,
    pub offset_spread: Option<String>,
    /// Clocks count from 0 at boot instead of the epoch.
    #[serde(default)]
    pub boot_relative: bool,
    /// Drift, ppm, each device drawn from ± this.
    #[serde(default)]
    pub drift_ppm: f64,
    /// A reboot (clock restarts) this often.
    pub reboot_every: Option<String>,
    /// An NTP-style step of the clock by `step` (may be negative, `"-4s"`) at `step_at` after the start.
    pub step: Option<String>,
    pub step_at: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct DelayModel {
    #[serde(default = "d20")]
    pub min: String,
    #[serde(default = "d5")]
    pub median: String,
    #[serde(default = "sigma")]
    pub sigma: f64,
    /// `"lognormal"` (with `sigma`) or `"exponential"`; `median` is the
    /// median of the jitter above `min` either way.
    #[serde(default = "lognormal")]
    pub distribution: String,
    #[serde(default)]
    pub spike_p: f64,
    /// A spike adds between `spike_min` (default 0.3 × `spike`) and `spike`.
    #[serde(default = "d3s")]
    pub spike: String,
    pub spike_min: Option<String>,
    #[serde(default)]
    pub duplicate_p: f64,
    /// A few readings arrive much later (beyond the gateway's lateness).
    #[serde(default)]
    pub straggler_p: f64,
    #[serde(default = "d60s")]
    pub straggler: String,
}

impl Default for DelayModel {
    fn default() -> Self {
        DelayModel {
            min: d20(),
            median: d5(),
            sigma: sigma(),
            distribution: lognormal(),
            spike_p: 0.0,
            spike: d3s(),
            spike_min: None,
            duplicate_p: 0.0,
            straggler_p: 0.0,
            straggler: d60s(),
        }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub active: String,
    pub idle: String,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// When, after the start.
    pub at: String,
    pub length: String,
    /// Again every so often (a store-and-forward device that holds its
    /// readings for `length` and sends them in a burst).
    pub every: Option<String>,
}

fn one() -> u32 {
    1
}
fn json() -> String {
    "json".into()
}
fn ms() -> String {
    "ms".into()
}
fn id_field() -> String {
    "id".into()
}
fn id_prefix() -> String {
    "e-".into()
}
fn d20() -> String {
    "20ms".into()
}
fn d5() -> String {
    "5ms".into()
}
fn d3s() -> String {
    "3s".into()
}
fn d60s() -> String {
    "60s".into()
}
fn lognormal() -> String {
    "lognormal".into()
}
fn sigma() -> f64 {
    0.8
}

/// Reads a scenario file.
pub fn load(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A duration in ms (edgejoin's syntax).
pub fn dur(s: &str) -> Result<i64, String> {
    edgejoin::config::units::parse_duration_ms(s)
}

/// A duration that may be negative (`"-4s"`).
pub fn signed_dur(s: &str) -> Result<i64, String> {
    match s.strip_prefix('-') {
        Some(rest) => dur(rest).map(|d| -d),
        None => dur(s),
    }
}
