//! How the gateway is deployed, as opposed to what it computes (the engine's
//! [`Plan`](edgejoin_engine::Plan)): its identity and state directory, the
//! source and upstream brokers with their TLS files and credentials, the
//! spool, the service's intervals, and sensors on the local I2C bus. Built
//! from `[gateway]`, `[source]`, `[upstream]` and the streams' `i2c` tables.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawGateway, RawSource, RawUpstream};
use super::streams::positive;
use super::units::parse_size;
use super::{Checker, ConfigError, DEFAULT_MAX_DEVICES, MAX_KEYS, S};

/// What a full spool does with a new result (`spool_full` in `[upstream]`, SPEC §11).
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
    /// Sensors on the local I2C bus, each feeding one stream.
    pub i2c: Vec<I2cSource>,
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
    /// How long a shutdown waits for the uplink to drain.
    pub shutdown: Duration,
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
            shutdown: Duration::from_secs(10),
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

fn opt_duration(
    ck: &Checker<'_>,
    s: Option<&S<String>>,
    what: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match s {
        Some(v) => Ok(Duration::from_millis(positive(ck, v, what)? as u64)),
        None => Ok(default),
    }
}

/// `[gateway]`: who the gateway is, how its service runs, and how many devices a stream tracks.
pub(super) fn build_gateway(
    ck: &Checker<'_>,
    g: Option<&RawGateway>,
) -> Result<(Gateway, ServiceCfg, NonZeroU32), ConfigError> {
    let Some(g) = g else {
        let gw = Gateway { id: "edgejoin".into(), state_dir: "/var/lib/edgejoin".into() };
        return Ok((gw, ServiceCfg::default(), DEFAULT_MAX_DEVICES));
    };
    let id = g.id.as_ref().map(|s| s.get_ref().clone()).unwrap_or_else(|| "edgejoin".into());
    if let Some(s) = &g.id {
        if id.is_empty() || id.contains(['/', '+', '#']) || id.len() > 64 {
            return Err(ck.err(
                s.span(),
                "gateway id must be 1-64 characters without `/`, `+` or `#` (it names the MQTT clients)",
            ));
        }
    }
    let d = ServiceCfg::default();
    let metrics_addr = match &g.metrics_addr {
        Some(a) => Some(a.get_ref().parse().map_err(|_| {
            ck.err(
                a.span(),
                format!(
                    "metrics_addr `{}`: write an address and port such as \"127.0.0.1:9108\"",
                    a.get_ref()
                ),
            )
        })?),
        None => None,
    };
    let stats_topic = match &g.stats_topic {
        Some(t) => {
            if t.get_ref().is_empty() || t.get_ref().contains(['+', '#']) {
                return Err(ck.err(t.span(), "stats_topic may not be empty or contain `+` or `#`"));
            }
            t.get_ref().clone()
        }
        None => d.stats_topic.clone(),
    };
    let gw =
        Gateway { id, state_dir: g.state_dir.clone().unwrap_or_else(|| "/var/lib/edgejoin".into()).into() };
    let max_devices = match &g.max_devices {
        Some(m) => ck.count(m, "gateway: max_devices", MAX_KEYS)?,
        None => DEFAULT_MAX_DEVICES,
    };
    let svc = ServiceCfg {
        checkpoint: opt_duration(ck, g.checkpoint_interval.as_ref(), "checkpoint_interval", d.checkpoint)?,
        tick: opt_duration(ck, g.tick.as_ref(), "tick", d.tick)?,
        stats: opt_duration(ck, g.stats_interval.as_ref(), "stats_interval", d.stats)?,
        stats_topic,
        metrics_addr,
        delivery: g.delivery.as_ref().map_or(d.delivery, |v| *v.get_ref()),
        shutdown: opt_duration(ck, g.shutdown_timeout.as_ref(), "shutdown_timeout", d.shutdown)?,
    };
    Ok((gw, svc, max_devices))
}

fn broker(ck: &Checker<'_>, url: &S<String>, what: &str) -> Result<Broker, ConfigError> {
    Broker::parse(url.get_ref()).map_err(|e| ck.err(url.span(), format!("{what}: {e}")))
}

fn client_id(ck: &Checker<'_>, v: Option<&S<String>>, default: String) -> Result<String, ConfigError> {
    match v {
        Some(c) if c.get_ref().is_empty() || c.get_ref().len() > 128 => {
            Err(ck.err(c.span(), "client_id must be 1-128 characters"))
        }
        Some(c) => Ok(c.get_ref().clone()),
        None => Ok(default),
    }
}

fn credentials(
    ck: &Checker<'_>,
    username: &Option<String>,
    password_file: &Option<Spanned<String>>,
) -> Result<Option<Credentials>, ConfigError> {
    if let (None, Some(f)) = (username, password_file) {
        return Err(ck.err(
            f.span(),
            "password_file needs `username` as well (MQTT sends a password only with a user name)",
        ));
    }
    Ok(username.as_ref().map(|u| Credentials {
        username: u.clone(),
        password_file: password_file.as_ref().map(|f| PathBuf::from(f.get_ref())),
    }))
}

/// `[source]`, and the largest payload the engine accepts from it.
pub(super) fn build_source(
    ck: &Checker<'_>,
    s: Option<&RawSource>,
    g: &Gateway,
) -> Result<(Source, usize), ConfigError> {
    let default_broker = Broker::parse("mqtt://127.0.0.1:1883").expect("valid default");
    let Some(s) = s else {
        let src = Source {
            url: "mqtt://127.0.0.1:1883".into(),
            broker: default_broker,
            client_id: format!("{}-in", g.id),
            credentials: None,
        };
        return Ok((src, 64 << 10));
    };
    let max_payload = match &s.max_payload {
        Some(m) => {
            let v = parse_size(m.get_ref()).map_err(|e| ck.err(m.span(), format!("max_payload: {e}")))?;
            if !(16..=256 << 20).contains(&v) {
                return Err(ck.err(m.span(), "max_payload must be between 16 B and 256 MiB"));
            }
            v as usize
        }
        None => 64 << 10,
    };
    let (url, b) = match &s.url {
        Some(u) => (u.get_ref().clone(), broker(ck, u, "source url")?),
        None => ("mqtt://127.0.0.1:1883".into(), default_broker),
    };
    let src = Source {
        url,
        broker: b,
        client_id: client_id(ck, s.client_id.as_ref(), format!("{}-in", g.id))?,
        credentials: credentials(ck, &s.username, &s.password_file)?,
    };
    Ok((src, max_payload))
}

/// `[upstream]`: where results go (the source broker when absent).
pub(super) fn build_upstream(
    ck: &Checker<'_>,
    u: Option<&RawUpstream>,
    g: &Gateway,
    src: &Source,
) -> Result<Upstream, ConfigError> {
    let prefix_default = format!("gw/{}", g.id);
    let Some(u) = u else {
        return Ok(Upstream {
            url: src.url.clone(),
            broker: src.broker.clone(),
            topic_prefix: prefix_default,
            spool: 64 << 20,
            spool_full: FullPolicy::DropOldest,
            client_id: format!("{}-out", g.id),
            credentials: src.credentials.clone(),
            tls: None,
        });
    };
    let b = broker(ck, &u.url, "upstream url")?;
    let topic_prefix = match &u.topic_prefix {
        Some(t) if t.get_ref().contains(['+', '#']) => {
            return Err(ck.err(t.span(), "topic_prefix may not contain `+` or `#`"))
        }
        Some(t) => t.get_ref().trim_end_matches('/').to_string(),
        None => prefix_default,
    };
    let spool = match &u.spool {
        Some(s) => {
            let v = parse_size(s.get_ref()).map_err(|e| ck.err(s.span(), format!("spool: {e}")))?;
            if v < 64 << 10 {
                return Err(ck.err(s.span(), "spool must be at least 64KiB"));
            }
            v
        }
        None => 64 << 20,
    };
    let tls = if b.tls {
        Some(TlsFiles {
            ca_file: u.ca_file.as_ref().map(PathBuf::from),
            cert_file: u.cert_file.as_ref().map(PathBuf::from),
            key_file: u.key_file.as_ref().map(PathBuf::from),
        })
    } else {
        if u.ca_file.is_some() || u.cert_file.is_some() || u.key_file.is_some() {
            return Err(ck.err(u.url.span(), "ca_file, cert_file and key_file need an `mqtts://` url"));
        }
        None
    };
    if u.cert_file.is_some() != u.key_file.is_some() {
        return Err(ck.err(u.url.span(), "a client certificate needs both cert_file and key_file"));
    }
    Ok(Upstream {
        url: u.url.get_ref().clone(),
        broker: b,
        topic_prefix,
        spool,
        spool_full: u.spool_full.as_ref().map_or(FullPolicy::DropOldest, |p| *p.get_ref()),
        client_id: client_id(ck, u.client_id.as_ref(), format!("{}-out", g.id))?,
        credentials: credentials(ck, &u.username, &u.password_file)?,
        tls,
    })
}
