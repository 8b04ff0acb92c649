//! `[gateway]`, `[source]` and `[upstream]`: checked into the
//! [`Deployment`](super::Deployment)'s parts (identity, service intervals,
//! brokers, credentials, TLS files, spool).

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::check::{nonneg, positive, Checker, ConfigError, DEFAULT_MAX_DEVICES, MAX_KEYS, S};
use super::deployment::{
    Broker, Credentials, FileKey, FileRef, FullPolicy, Gateway, HomeAssistant, ServiceCfg, Source, TlsFiles,
    Upstream,
};
use super::raw::{RawGateway, RawHomeAssistant, RawSource, RawUpstream};
use super::units::parse_size;

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

/// Where the service keeps its state when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/edgejoin";

/// `[gateway]`: who the gateway is, how its service runs, and how many devices a stream tracks.
pub(super) fn build_gateway(
    ck: &Checker<'_>,
    g: Option<&RawGateway>,
    files: &mut Vec<FileRef>,
) -> Result<(Gateway, ServiceCfg, NonZeroU32), ConfigError> {
    let Some(g) = g else {
        let gw = Gateway { id: "edgejoin".into(), state_dir: DEFAULT_STATE_DIR.into() };
        files.push(FileRef { key: FileKey::StateDir, path: DEFAULT_STATE_DIR.into(), at: ck.at(0..0) });
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
        // a port alone listens on loopback: nothing is served beyond the Pi unless asked
        Some(a) if a.get_ref().trim_start_matches(':').parse::<u16>().is_ok() => {
            let port = a.get_ref().trim_start_matches(':').parse::<u16>().expect("checked");
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        }
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
    let (state_dir, at) = match &g.state_dir {
        Some(s) if s.get_ref().is_empty() => return Err(ck.err(s.span(), "state_dir may not be empty")),
        Some(s) => (PathBuf::from(s.get_ref()), ck.at(s.span())),
        None => (PathBuf::from(DEFAULT_STATE_DIR), ck.at(0..0)),
    };
    files.push(FileRef { key: FileKey::StateDir, path: state_dir.clone(), at });
    let gw = Gateway { id, state_dir };
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
        log_format: g.log_format.as_ref().map_or(d.log_format, |v| *v.get_ref()),
        shutdown: opt_duration(ck, g.shutdown_timeout.as_ref(), "shutdown_timeout", d.shutdown)?,
        commit_delay: match &g.commit_delay {
            Some(v) => {
                let ms = nonneg(ck, v, "commit_delay")?;
                if ms > 10_000 {
                    return Err(
                        ck.err(v.span(), "commit_delay: at most 10s (acknowledgements wait this long)")
                    );
                }
                Duration::from_millis(ms as u64)
            }
            None => d.commit_delay,
        },
        clock_trace: match &g.clock_trace {
            Some(v) if *v.get_ref() == 0 => 0,
            Some(v) => ck.count(v, "gateway: clock_trace", MAX_CLOCK_TRACE)?.get() as usize,
            None => d.clock_trace,
        },
    };
    Ok((gw, svc, max_devices))
}

/// Samples per device the live clock report keeps, at most.
const MAX_CLOCK_TRACE: u32 = 100_000;

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
    files: &mut Vec<FileRef>,
) -> Result<Option<Credentials>, ConfigError> {
    if let (None, Some(f)) = (username, password_file) {
        return Err(ck.err(
            f.span(),
            "password_file needs `username` as well (MQTT sends a password only with a user name)",
        ));
    }
    if let (Some(_), Some(f)) = (username, password_file) {
        files.push(FileRef { key: FileKey::PasswordFile, path: f.get_ref().into(), at: ck.at(f.span()) });
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
    files: &mut Vec<FileRef>,
) -> Result<(Source, usize), ConfigError> {
    let default_broker = Broker::parse("mqtt://127.0.0.1:1883").expect("valid default");
    let Some(s) = s else {
        let src = Source {
            url: "mqtt://127.0.0.1:1883".into(),
            broker: default_broker,
            client_id: format!("{}-in", g.id),
            credentials: None,
            tls: None,
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
    let url_span = s.url.as_ref().map_or(0..0, |u| u.span());
    let tls = tls_files(ck, b.tls, url_span, [&s.ca_file, &s.cert_file, &s.key_file], files)?;
    let src = Source {
        url,
        broker: b,
        client_id: client_id(ck, s.client_id.as_ref(), format!("{}-in", g.id))?,
        credentials: credentials(ck, &s.username, &s.password_file, files)?,
        tls,
    };
    Ok((src, max_payload))
}

/// The TLS files of a connection (`ca_file`, `cert_file`, `key_file`):
/// required with `mqtts://` (the CA), refused without it; noted in `files`.
fn tls_files(
    ck: &Checker<'_>,
    tls: bool,
    url_span: std::ops::Range<usize>,
    [ca, cert, key]: [&Option<S<String>>; 3],
    files: &mut Vec<FileRef>,
) -> Result<Option<TlsFiles>, ConfigError> {
    if !tls {
        if ca.is_some() || cert.is_some() || key.is_some() {
            return Err(ck.err(url_span, "ca_file, cert_file and key_file need an `mqtts://` url"));
        }
        return Ok(None);
    }
    if ca.is_none() {
        return Err(ck.err(
            url_span,
            "mqtts:// needs `ca_file`: the PEM file of the CA that signed the broker's certificate",
        ));
    }
    if cert.is_some() != key.is_some() {
        return Err(ck.err(url_span, "a client certificate needs both cert_file and key_file"));
    }
    let mut file = |f: &Option<S<String>>| {
        f.as_ref().map(|f| {
            files.push(FileRef { key: FileKey::Tls, path: f.get_ref().into(), at: ck.at(f.span()) });
            PathBuf::from(f.get_ref())
        })
    };
    Ok(Some(TlsFiles { ca_file: file(ca), cert_file: file(cert), key_file: file(key) }))
}

/// `[upstream]`: where results go (the source broker when absent).
pub(super) fn build_upstream(
    ck: &Checker<'_>,
    u: Option<&RawUpstream>,
    g: &Gateway,
    src: &Source,
    files: &mut Vec<FileRef>,
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
            tls: src.tls.clone(),
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
    let tls = tls_files(ck, b.tls, u.url.span(), [&u.ca_file, &u.cert_file, &u.key_file], files)?;
    Ok(Upstream {
        url: u.url.get_ref().clone(),
        broker: b,
        topic_prefix,
        spool,
        spool_full: u.spool_full.as_ref().map_or(FullPolicy::DropOldest, |p| *p.get_ref()),
        client_id: client_id(ck, u.client_id.as_ref(), format!("{}-out", g.id))?,
        credentials: credentials(ck, &u.username, &u.password_file, files)?,
        tls,
    })
}

/// `[homeassistant]`: discovery on or off, its prefix, the sensors' bound,
/// units by `output.value` or `value`, each naming a value some output carries.
pub(super) fn build_homeassistant(
    ck: &Checker<'_>,
    h: Option<&RawHomeAssistant>,
    p: &edgejoin_engine::plan::Plan,
) -> Result<Option<HomeAssistant>, ConfigError> {
    let Some(h) = h else { return Ok(None) };
    let prefix = match &h.prefix {
        Some(t) if t.get_ref().is_empty() || t.get_ref().contains(['+', '#']) => {
            return Err(ck.err(t.span(), "homeassistant prefix: a topic without `+` or `#`"))
        }
        Some(t) => t.get_ref().trim_end_matches('/').to_string(),
        None => "homeassistant".to_string(),
    };
    let max_sensors = match &h.max_sensors {
        Some(n) if !(1..=100_000).contains(n.get_ref()) => {
            return Err(ck.err(n.span(), "homeassistant max_sensors: 1 to 100000"))
        }
        Some(n) => *n.get_ref() as usize,
        None => 256,
    };
    let mut units = std::collections::BTreeMap::new();
    if let Some(u) = &h.units {
        let known = super::homeassistant::value_names(p);
        for (k, v) in u.get_ref() {
            let ok = match k.split_once('.') {
                Some((out, value)) => known.iter().any(|(o, n)| o == out && n == value),
                None => known.iter().any(|(_, n)| n == k),
            };
            if !ok {
                let list: Vec<String> = known.iter().map(|(o, n)| format!("{o}.{n}")).collect();
                return Err(ck.err(
                    u.span(),
                    format!(
                        "homeassistant units: `{k}` names no value of a window or join output (they are: {})",
                        list.join(", ")
                    ),
                ));
            }
            units.insert(k.clone(), v.clone());
        }
    }
    Ok(h.discovery.unwrap_or(false).then_some(HomeAssistant { prefix, max_sensors, units }))
}
