//! How the gateway is deployed, as opposed to what it computes (the engine's
//! [`Plan`](edgejoin_engine::Plan)): its identity and state directory, the
//! source and upstream brokers with their TLS files and credentials, the
//! spool, the service's intervals, and sensors on the local I2C bus. Built
//! from `[gateway]`, `[source]`, `[upstream]` and the streams' `i2c` tables.

use std::path::PathBuf;
use std::time::Duration;

/// What a full spool does with a new result (`spool_full` in `[upstream]`, docs/SEMANTICS.md §9.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Delete the oldest segment (its undelivered results are counted as dropped).
    DropOldest,
    /// Keep what is spooled; count and drop the new result.
    RefuseNew,
}

/// How the gateway runs, beside the plan the engine computes.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub gateway: Gateway,
    pub service: ServiceCfg,
    pub source: Source,
    /// Where results go (the source broker when the config has no `[upstream]`).
    pub upstream: Upstream,
    /// Home Assistant MQTT discovery, when on (`[homeassistant] discovery = true`).
    pub homeassistant: Option<HomeAssistant>,
    /// Sensors on the local I2C bus, each feeding one stream.
    pub i2c: Vec<I2cSource>,
    /// Every file and directory the config names, with where: what `run`
    /// reads or writes, checked before it touches the network (and by `check-config`).
    pub files: Vec<FileRef>,
}

/// `[homeassistant]`: announce each numeric value of each window and join
/// output, per key, as a Home Assistant sensor (docs/INTEGRATIONS.md).
#[derive(Clone, Debug)]
pub struct HomeAssistant {
    /// The discovery prefix (Home Assistant's default: `homeassistant`).
    pub prefix: String,
    /// Sensors announced at most; more are counted, not announced.
    pub max_sensors: usize,
    /// `unit_of_measurement` by `output.value` or by `value` (any output).
    pub units: std::collections::BTreeMap<String, String>,
}

/// A file or directory the config names.
#[derive(Clone, Debug)]
pub struct FileRef {
    pub key: FileKey,
    pub path: PathBuf,
    /// Where the config names it (for a default: its section, or the file's start).
    pub at: super::check::Location,
}

/// What the service does with a [`FileRef`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKey {
    /// `[gateway] state_dir`: created if missing, written.
    StateDir,
    /// `password_file` of `[source]` or `[upstream]`: read (relative to
    /// `$CREDENTIALS_DIRECTORY` when systemd passes credentials).
    PasswordFile,
    /// `[upstream] ca_file`, `cert_file`, `key_file`: PEM, read.
    Tls,
}

impl FileKey {
    pub fn name(self) -> &'static str {
        match self {
            FileKey::StateDir => "state_dir",
            FileKey::PasswordFile => "password_file",
            FileKey::Tls => "TLS file",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Gateway {
    pub id: String,
    pub state_dir: PathBuf,
}

/// How the live service (`edgejoin run`) behaves.
#[derive(Clone, Debug)]
pub struct ServiceCfg {
    pub checkpoint: Duration,
    /// How often time passing alone is handed to the engine (idleness).
    pub tick: Duration,
    pub stats: Duration,
    /// Stats topic, under the upstream prefix.
    pub stats_topic: String,
    /// Where Prometheus metrics are served (none: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub delivery: Delivery,
    /// Durable delivery: how long a message may wait for the fsync that logs
    /// it with others (group commit); zero: one fsync per batch taken.
    pub commit_delay: Duration,
    /// How long a shutdown waits for the uplink to drain.
    pub shutdown: Duration,
    /// How log lines are written (set at start; a reload does not change it).
    pub log_format: LogFormat,
    /// Samples per device of `clock = "corrected"` streams kept for the
    /// clock report at `/clocks/` on the metrics address (0: none kept).
    pub clock_trace: usize,
}

impl Default for ServiceCfg {
    fn default() -> Self {
        ServiceCfg {
            checkpoint: Duration::from_secs(30),
            tick: Duration::from_secs(1),
            stats: Duration::from_secs(10),
            stats_topic: "stats".into(),
            metrics_addr: None,
            delivery: Delivery::Durable,
            commit_delay: Duration::from_millis(50),
            shutdown: Duration::from_secs(10),
            log_format: LogFormat::Text,
            clock_trace: 256,
        }
    }
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: one line per event (no colours unless stderr is a terminal).
    Text,
    /// For log shippers: one JSON object per line (`timestamp`, `level`, `target`, `fields.message`).
    Json,
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
    pub client_id: String,
    pub credentials: Option<Credentials>,
    /// `mqtts://`: the CA to trust, and a client certificate for mutual TLS.
    pub tls: Option<TlsFiles>,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    pub url: String,
    pub broker: Broker,
    pub topic_prefix: String,
    /// Disk budget of the store-and-forward spool, in bytes.
    pub spool: u64,
    pub spool_full: FullPolicy,
    pub client_id: String,
    pub credentials: Option<Credentials>,
    pub tls: Option<TlsFiles>,
}

/// A sensor on the gateway's own I2C bus, feeding stream `stream` of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I2cSource {
    pub stream: usize,
    /// e.g. `/dev/i2c-1`
    pub bus: PathBuf,
    pub model: SensorModel,
    pub address: u8,
    pub period: Duration,
}

/// The sensor models edgejoin drives (`sensor = "sht3x"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SensorModel {
    /// Sensirion SHT3x (SHT30/31/35): temperature and relative humidity.
    Sht3x,
}

impl SensorModel {
    /// The values a reading carries, in order.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            SensorModel::Sht3x => &["celsius", "humidity"],
        }
    }

    pub fn default_address(self) -> u8 {
        match self {
            SensorModel::Sht3x => 0x44,
        }
    }
}

/// The internal topic an I2C stream's readings arrive on.
pub fn i2c_topic(stream: &str) -> String {
    format!("local/i2c/{stream}")
}
