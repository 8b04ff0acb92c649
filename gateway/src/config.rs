//! Reading a config file: TOML with the contract's names (SPEC §12), parsed
//! once and checked into a [`Pipeline`]. Every refusal names the file, the line
//! and a reason a user can act on.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::event::MAX_VALUES;
use crate::pipeline::*;
use crate::topic::{TopicPattern, TopicTemplate, Var};
use crate::units::{parse_duration_ms, parse_size};

/// The most engine state a config may imply (it is all allocated at start).
pub const MAX_STATE_BYTES: u64 = 2 << 30;
/// Largest `capacity` (slots per key) accepted.
pub const MAX_CAPACITY: u32 = 1 << 20;
/// Largest `max_keys` accepted.
pub const MAX_KEYS: u32 = 1 << 22;

const DEFAULT_MAX_DEVICES: NonZeroU32 = match NonZeroU32::new(1024) {
    Some(n) => n,
    None => unreachable!(),
};

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {reason}")]
    Invalid { path: PathBuf, line: usize, column: usize, reason: String },
}

impl ConfigError {
    /// The 1-based line the error points at (0 when it has none).
    pub fn line(&self) -> usize {
        match self {
            ConfigError::Read { .. } => 0,
            ConfigError::Invalid { line, .. } => *line,
        }
    }
}

// ---------- the file as written ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: Option<RawGateway>,
    source: Option<RawSource>,
    upstream: Option<RawUpstream>,
    #[serde(default)]
    stream: Vec<Spanned<RawStream>>,
    #[serde(default)]
    window: Vec<Spanned<RawWindow>>,
    #[serde(default)]
    join: Vec<Spanned<RawJoin>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    id: Option<Spanned<String>>,
    state_dir: Option<String>,
    max_devices: Option<Spanned<i64>>,
    checkpoint_interval: Option<Spanned<String>>,
    tick: Option<Spanned<String>>,
    stats_interval: Option<Spanned<String>>,
    stats_topic: Option<Spanned<String>>,
    metrics_addr: Option<Spanned<String>>,
    delivery: Option<Spanned<Delivery>>,
    shutdown_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: Option<Spanned<String>>,
    max_payload: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    username: Option<String>,
    password_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Spanned<String>,
    topic_prefix: Option<Spanned<String>>,
    spool: Option<Spanned<String>>,
    spool_full: Option<Spanned<crate::spool::FullPolicy>>,
    client_id: Option<Spanned<String>>,
    username: Option<String>,
    password_file: Option<Spanned<String>>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
}

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    name: S<String>,
    topics: Option<S<Vec<S<String>>>>,
    i2c: Option<S<RawI2c>>,
    key: Option<S<String>>,
    device: Option<S<String>>,
    format: Option<S<Format>>,
    time_field: Option<S<String>>,
    time_unit: Option<S<TimeUnit>>,
    clock: Option<S<Clock>>,
    watermark: Option<S<WatermarkMode>>,
    lateness: Option<S<String>>,
    idle_timeout: Option<S<String>>,
    max_future: Option<S<String>>,
    capacity: Option<S<i64>>,
    max_keys: Option<S<i64>>,
    late: Option<S<RawLate>>,
    late_topic: Option<S<String>>,
    values: Option<S<Vec<S<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawI2c {
    bus: String,
    sensor: crate::i2c::Model,
    address: Option<i64>,
    period: Option<S<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum RawLate {
    Drop,
    Route,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    name: S<String>,
    input: S<String>,
    size: Option<S<String>>,
    slide: Option<S<String>>,
    offset: Option<S<String>>,
    gap: Option<S<String>>,
    aggregates: Option<S<BTreeMap<String, S<String>>>>,
    topic: Option<S<String>>,
    max_keys: Option<S<i64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawStrategy {
    Tolerance,
    Asof,
    Bucket,
    Overlap,
    Session,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJoin {
    name: S<String>,
    strategy: S<RawStrategy>,
    left: S<String>,
    right: S<String>,
    #[serde(rename = "type")]
    kind: Option<S<JoinType>>,
    lower: Option<S<String>>,
    upper: Option<S<String>>,
    tolerance: Option<S<String>>,
    condition: Option<S<OverlapCondition>>,
    max_matches: Option<S<i64>>,
    topic: Option<S<String>>,
}

// ---------- checking ----------

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn err(&self, span: Range<usize>, reason: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid { path: self.path.to_path_buf(), line, column, reason: reason.into() }
    }

    fn duration(&self, s: &S<String>, what: &str) -> Result<i64, ConfigError> {
        parse_duration_ms(s.get_ref()).map_err(|e| self.err(s.span(), format!("{what}: {e}")))
    }

    fn count(&self, s: &S<i64>, what: &str, max: u32) -> Result<NonZeroU32, ConfigError> {
        let v = *s.get_ref();
        if v < 1 {
            return Err(self.err(s.span(), format!("{what} = {v}: it must be at least 1")));
        }
        if v > max as i64 {
            return Err(self.err(s.span(), format!("{what} = {v}: at most {max} is accepted")));
        }
        Ok(NonZeroU32::new(v as u32).expect("checked >= 1"))
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(path, &text)
}

/// Parses and checks config text; `path` is used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Pipeline, ConfigError> {
    let ck = Checker { path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ck.err(span, e.message().trim().to_string())
    })?;
    build(&ck, raw)
}

fn build(ck: &Checker<'_>, raw: RawConfig) -> Result<Pipeline, ConfigError> {
    // one namespace for streams, windows and joins: windows and joins refer to them by name
    let mut names: HashMap<String, &'static str> = HashMap::new();
    let mut claim = |n: &S<String>, what: &'static str| -> Result<(), ConfigError> {
        let name = n.get_ref();
        if name.is_empty() || name.contains(['/', '+', '#', '{', '}']) || name.trim() != name {
            return Err(ck.err(
                n.span(),
                format!("{what} name `{name}`: use a non-empty name without spaces at its ends, `/`, `+`, `#` or braces"),
            ));
        }
        if let Some(prev) = names.insert(name.clone(), what) {
            return Err(ck.err(
                n.span(),
                format!("duplicate name `{name}`: a {prev} already has it; streams, windows and joins need distinct names"),
            ));
        }
        Ok(())
    };
    for s in &raw.stream {
        claim(&s.get_ref().name, "stream")?;
    }
    for w in &raw.window {
        claim(&w.get_ref().name, "window")?;
    }
    for j in &raw.join {
        claim(&j.get_ref().name, "join")?;
    }

    let gateway = build_gateway(ck, raw.gateway.as_ref())?;
    let source = build_source(ck, raw.source.as_ref(), &gateway)?;
    let upstream = build_upstream(ck, raw.upstream.as_ref(), &gateway, &source)?;

    let mut streams = Vec::with_capacity(raw.stream.len());
    for s in &raw.stream {
        streams.push(build_stream(ck, s.get_ref())?);
    }
    let stream_index: HashMap<&str, usize> =
        streams.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();

    let windows = build_windows(ck, &raw, &streams, &stream_index)?;
    let window_index: HashMap<&str, usize> =
        windows.iter().enumerate().map(|(i, w)| (w.name.as_str(), i)).collect();

    let mut joins = Vec::with_capacity(raw.join.len());
    for j in &raw.join {
        joins.push(build_join(ck, j.get_ref(), &windows, &stream_index, &window_index)?);
    }

    let mut p = Pipeline { gateway, source, upstream, streams, windows, joins };
    // everything is allocated at start: refuse what could not be, before trying
    let bound = crate::engine::Engine::memory_bytes(&p);
    if bound > MAX_STATE_BYTES {
        return Err(ck.err(
            0..0,
            format!(
                "this config implies {} of engine state, more than the {} a gateway allocates at most; lower max_keys, capacity, or the windows' lateness/slide ratio (see check-config)",
                crate::units::format_bytes(bound),
                crate::units::format_bytes(MAX_STATE_BYTES)
            ),
        ));
    }
    // the gateway's own topics must not feed its streams (a loop)
    for st in &p.streams {
        for t in &st.topics {
            if p.source.broker == p.upstream.broker && t.matches_prefix_of(&p.upstream.topic_prefix) {
                return Err(ck.err(
                    0..0,
                    format!(
                        "stream `{}`: topic `{}` would also receive the gateway's own results under `{}` on the same broker",
                        st.name,
                        t.text(),
                        p.upstream.topic_prefix
                    ),
                ));
            }
        }
    }
    // a window nothing reads and without a topic is still shown (else it would be useless)
    let consumed: Vec<bool> = (0..p.windows.len())
        .map(|w| {
            p.windows.iter().any(|x| x.input == Input::Window(w))
                || p.joins.iter().any(|j| j.left == Input::Window(w) || j.right == Input::Window(w))
        })
        .collect();
    for (w, c) in p.windows.iter_mut().zip(consumed) {
        if w.topic.is_none() && !c {
            w.topic = Some(
                TopicTemplate::parse("windows/{window}/{key}", &[Var::Window, Var::Key])
                    .expect("default template is valid"),
            );
        }
    }
    Ok(p)
}

fn opt_duration(
    ck: &Checker<'_>,
    s: Option<&S<String>>,
    what: &str,
    default: i64,
) -> Result<i64, ConfigError> {
    match s {
        Some(v) => positive(ck, v, what),
        None => Ok(default),
    }
}

fn build_gateway(ck: &Checker<'_>, g: Option<&RawGateway>) -> Result<Gateway, ConfigError> {
    let Some(g) = g else {
        return Ok(Gateway {
            id: "edgejoin".into(),
            state_dir: "/var/lib/edgejoin".into(),
            max_devices: DEFAULT_MAX_DEVICES,
            service: ServiceCfg::default(),
        });
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
    Ok(Gateway {
        id,
        state_dir: g.state_dir.clone().unwrap_or_else(|| "/var/lib/edgejoin".into()).into(),
        max_devices: match &g.max_devices {
            Some(m) => ck.count(m, "gateway: max_devices", MAX_KEYS)?,
            None => DEFAULT_MAX_DEVICES,
        },
        service: ServiceCfg {
            checkpoint_ms: opt_duration(
                ck,
                g.checkpoint_interval.as_ref(),
                "checkpoint_interval",
                d.checkpoint_ms,
            )?,
            tick_ms: opt_duration(ck, g.tick.as_ref(), "tick", d.tick_ms)?,
            stats_ms: opt_duration(ck, g.stats_interval.as_ref(), "stats_interval", d.stats_ms)?,
            stats_topic,
            metrics_addr,
            delivery: g.delivery.as_ref().map_or(d.delivery, |v| *v.get_ref()),
            shutdown_ms: opt_duration(ck, g.shutdown_timeout.as_ref(), "shutdown_timeout", d.shutdown_ms)?,
        },
    })
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

fn build_source(ck: &Checker<'_>, s: Option<&RawSource>, g: &Gateway) -> Result<Source, ConfigError> {
    let default_broker = Broker::parse("mqtt://127.0.0.1:1883").expect("valid default");
    let Some(s) = s else {
        return Ok(Source {
            url: "mqtt://127.0.0.1:1883".into(),
            broker: default_broker,
            max_payload: 64 << 10,
            client_id: format!("{}-in", g.id),
            credentials: None,
        });
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
    Ok(Source {
        url,
        broker: b,
        max_payload,
        client_id: client_id(ck, s.client_id.as_ref(), format!("{}-in", g.id))?,
        credentials: credentials(ck, &s.username, &s.password_file)?,
    })
}

fn build_upstream(
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
            spool_full: crate::spool::FullPolicy::DropOldest,
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
        spool_full: u.spool_full.as_ref().map_or(crate::spool::FullPolicy::DropOldest, |p| *p.get_ref()),
        client_id: client_id(ck, u.client_id.as_ref(), format!("{}-out", g.id))?,
        credentials: credentials(ck, &u.username, &u.password_file)?,
        tls,
    })
}

fn field_ref(
    ck: &Checker<'_>,
    spec: Option<&S<String>>,
    topics: &[TopicPattern],
    format: Format,
    what: &str,
) -> Result<Option<FieldRef>, ConfigError> {
    let Some(spec) = spec else { return Ok(None) };
    let text = spec.get_ref().trim();
    if let Some(name) = text.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        let mut index_per_topic = Vec::with_capacity(topics.len());
        for t in topics {
            match t.capture_index(name) {
                Some(i) => index_per_topic.push(i),
                None => {
                    return Err(ck.err(
                        spec.span(),
                        format!("{what} = \"{text}\": topic `{}` has no capture `{{{name}}}`", t.text()),
                    ))
                }
            }
        }
        return Ok(Some(FieldRef::Capture { name: name.to_string(), index_per_topic }));
    }
    if let Some(field) = text.strip_prefix("$.") {
        if field.is_empty() || field.contains(['.', '[', ']']) {
            return Err(ck.err(
                spec.span(),
                format!("{what} = \"{text}\": only a top-level payload field (`$.name`) is supported"),
            ));
        }
        match format {
            Format::Number => {
                return Err(ck.err(
                    spec.span(),
                    format!(
                        "{what} = \"{text}\": a `number` payload has no fields; take it from a topic capture"
                    ),
                ))
            }
            Format::Postcard if field != "key" && field != "device" => {
                return Err(ck.err(
                    spec.span(),
                    format!("{what} = \"{text}\": a postcard payload carries only `$.key` and `$.device`"),
                ))
            }
            _ => {}
        }
        return Ok(Some(FieldRef::Payload(field.to_string())));
    }
    Err(ck.err(
        spec.span(),
        format!("{what} = \"{text}\": write \"{{capture}}\" for a topic capture or \"$.field\" for a payload field"),
    ))
}

fn build_stream(ck: &Checker<'_>, s: &RawStream) -> Result<StreamDef, ConfigError> {
    let name = s.name.get_ref().clone();
    let ctx = |what: &str| format!("stream `{name}`: {what}");
    let i2c = match &s.i2c {
        Some(i) => {
            let r = i.get_ref();
            if let Some(t) = &s.topics {
                return Err(
                    ck.err(t.span(), ctx("an `i2c` stream has no topics: its readings come from the bus"))
                );
            }
            if s.clock.as_ref().is_some_and(|c| *c.get_ref() != Clock::Receive) {
                return Err(ck.err(
                    i.span(),
                    ctx("an `i2c` reading is stamped with its receive time: clock = \"receive\""),
                ));
            }
            let address = match r.address {
                Some(a) if (0x03..=0x77).contains(&a) => a as u8,
                Some(a) => {
                    return Err(ck.err(i.span(), ctx(&format!("i2c address {a:#x} is outside 0x03..0x77"))))
                }
                None => r.sensor.default_address(),
            };
            Some(I2cSource {
                bus: r.bus.clone().into(),
                model: r.sensor,
                address,
                period_ms: match &r.period {
                    Some(p) => positive(ck, p, &ctx("i2c period"))?,
                    None => 2_000,
                },
            })
        }
        None => None,
    };
    let mut topics = Vec::new();
    match (&s.topics, &i2c) {
        (Some(ts), _) => {
            if ts.get_ref().is_empty() {
                return Err(ck.err(ts.span(), ctx("`topics` needs at least one topic pattern")));
            }
            for t in ts.get_ref() {
                topics.push(TopicPattern::parse(t.get_ref()).map_err(|e| ck.err(t.span(), ctx(&e)))?);
            }
        }
        (None, Some(_)) => topics.push(
            TopicPattern::parse(&crate::i2c::topic(&name)).map_err(|e| ck.err(s.name.span(), ctx(&e)))?,
        ),
        (None, None) => {
            return Err(
                ck.err(s.name.span(), ctx("needs `topics` (MQTT) or `i2c` (a sensor on the local bus)"))
            )
        }
    }
    let format = s.format.as_ref().map_or(Format::Json, |f| *f.get_ref());
    let key = field_ref(ck, s.key.as_ref(), &topics, format, &ctx("key"))?.unwrap_or(FieldRef::Constant);
    let device =
        field_ref(ck, s.device.as_ref(), &topics, format, &ctx("device"))?.unwrap_or_else(|| key.clone());
    let time_unit = s.time_unit.as_ref().map_or(TimeUnit::Ms, |t| *t.get_ref());
    let clock = s.clock.as_ref().map_or(Clock::Device, |c| *c.get_ref());
    if format == Format::Number {
        if let Some(c) = &s.clock {
            if *c.get_ref() != Clock::Receive {
                return Err(
                    ck.err(c.span(), ctx("a `number` payload carries no timestamp: use clock = \"receive\""))
                );
            }
        }
    }
    if format == Format::Postcard && time_unit == TimeUnit::Rfc3339 {
        let t = s.time_unit.as_ref().expect("set when rfc3339");
        return Err(ck.err(t.span(), ctx("a postcard payload's `ts` is an integer: pick s, ms, us or ns")));
    }
    let clock = if format == Format::Number || i2c.is_some() { Clock::Receive } else { clock };
    let lateness_ms = match &s.lateness {
        Some(l) => nonneg(ck, l, &ctx("lateness"))?,
        None => 0,
    };
    let idle_timeout_ms = match &s.idle_timeout {
        Some(l) => {
            let v = ck.duration(l, &ctx("idle_timeout"))?;
            if v <= 0 {
                return Err(ck.err(
                    l.span(),
                    ctx("idle_timeout must be positive (omit it to never treat the stream as idle)"),
                ));
            }
            Some(v)
        }
        None => None,
    };
    let max_future_ms = match &s.max_future {
        Some(l) => nonneg(ck, l, &ctx("max_future"))?,
        None => 5_000,
    };
    let capacity = match &s.capacity {
        Some(c) => ck.count(c, &ctx("capacity"), MAX_CAPACITY)?,
        None => NonZeroU32::new(64).expect("non-zero"),
    };
    let max_keys = match &s.max_keys {
        Some(c) => ck.count(c, &ctx("max_keys"), MAX_KEYS)?,
        None => NonZeroU32::new(1024).expect("non-zero"),
    };
    let late = match &s.late {
        Some(l) if *l.get_ref() == RawLate::Route => {
            let text = s.late_topic.as_ref().map_or("late/{stream}/{key}", |t| t.get_ref().as_str());
            let tpl = TopicTemplate::parse(text, &[Var::Stream, Var::Key, Var::Gateway])
                .map_err(|e| ck.err(s.late_topic.as_ref().map_or(l.span(), |t| t.span()), ctx(&e)))?;
            LatePolicy::Route(tpl)
        }
        _ => {
            if let Some(t) = &s.late_topic {
                return Err(ck.err(t.span(), ctx("late_topic is only used with late = \"route\"")));
            }
            LatePolicy::Drop
        }
    };
    let values: Vec<String> = match &s.values {
        Some(v) => {
            if v.get_ref().len() > MAX_VALUES {
                return Err(ck.err(
                    v.span(),
                    ctx(&format!("{} values listed; at most {MAX_VALUES} per event", v.get_ref().len())),
                ));
            }
            let mut out: Vec<String> = Vec::new();
            for n in v.get_ref() {
                let n_s = n.get_ref();
                if n_s.is_empty() {
                    return Err(ck.err(n.span(), ctx("a value name may not be empty")));
                }
                if out.contains(n_s) {
                    return Err(ck.err(n.span(), ctx(&format!("value `{n_s}` is listed twice"))));
                }
                out.push(n_s.clone());
            }
            out
        }
        None if format == Format::Number => vec!["value".into()],
        None => match &i2c {
            Some(src) => src.model.fields().iter().map(|f| f.to_string()).collect(),
            None => Vec::new(),
        },
    };
    if let Some(src) = &i2c {
        if let Some(bad) = values.iter().find(|v| !src.model.fields().contains(&v.as_str())) {
            let sp = s.values.as_ref().map_or(s.name.span(), |v| v.span());
            return Err(ck.err(
                sp,
                ctx(&format!("a {:?} reads {}, not `{bad}`", src.model, src.model.fields().join(" and "))),
            ));
        }
    }
    if format == Format::Number && values.len() != 1 {
        let sp = s.values.as_ref().expect("checked").span();
        return Err(ck.err(sp, ctx("a `number` payload is one value: list exactly one name")));
    }
    let time_field = s.time_field.as_ref().map_or("ts".to_string(), |t| t.get_ref().clone());
    Ok(StreamDef {
        name,
        topics,
        key,
        device,
        device_named: s.device.is_some(),
        format,
        time_field,
        time_unit,
        clock,
        watermark: s.watermark.as_ref().map_or(WatermarkMode::Stream, |w| *w.get_ref()),
        lateness_ms,
        idle_timeout_ms,
        max_future_ms,
        capacity,
        max_keys,
        late,
        values,
        i2c,
    })
}

fn nonneg(ck: &Checker<'_>, s: &S<String>, what: &str) -> Result<i64, ConfigError> {
    let v = ck.duration(s, what)?;
    if v < 0 {
        return Err(ck.err(s.span(), format!("{what} may not be negative")));
    }
    Ok(v)
}

fn positive(ck: &Checker<'_>, s: &S<String>, what: &str) -> Result<i64, ConfigError> {
    let v = ck.duration(s, what)?;
    if v <= 0 {
        return Err(ck.err(s.span(), format!("{what} must be longer than 0")));
    }
    Ok(v)
}

fn build_windows(
    ck: &Checker<'_>,
    raw: &RawConfig,
    streams: &[StreamDef],
    stream_index: &HashMap<&str, usize>,
) -> Result<Vec<WindowDef>, ConfigError> {
    let raw_index: HashMap<&str, usize> =
        raw.window.iter().enumerate().map(|(i, w)| (w.get_ref().name.get_ref().as_str(), i)).collect();
    // dependency order (inputs first), refusing cycles
    let n = raw.window.len();
    let mut order = Vec::with_capacity(n);
    let mut state = vec![0u8; n]; // 0 new, 1 on the path, 2 done
    for start in 0..n {
        let mut path = vec![start];
        while let Some(&w) = path.last() {
            if state[w] == 2 {
                path.pop();
                continue;
            }
            let rw = raw.window[w].get_ref();
            let input = rw.input.get_ref().as_str();
            let dep = raw_index.get(input).copied();
            if state[w] == 0 {
                state[w] = 1;
                if let Some(d) = dep {
                    if d == w {
                        return Err(ck.err(rw.input.span(), format!("window `{input}` reads itself")));
                    }
                    if state[d] == 1 {
                        let cycle: Vec<&str> = path
                            .iter()
                            .skip_while(|&&x| x != d)
                            .map(|&x| raw.window[x].get_ref().name.get_ref().as_str())
                            .collect();
                        return Err(
                            ck.err(rw.input.span(), format!("rollup cycle: {} → {input}", cycle.join(" → ")))
                        );
                    }
                    if state[d] == 0 {
                        path.push(d);
                        continue;
                    }
                }
            }
            state[w] = 2;
            order.push(w);
            path.pop();
        }
    }

    let mut out: Vec<WindowDef> = Vec::with_capacity(n);
    let mut new_index: HashMap<String, usize> = HashMap::new();
    for &w in &order {
        let rw = raw.window[w].get_ref();
        let name = rw.name.get_ref().clone();
        let ctx = |what: &str| format!("window `{name}`: {what}");
        let input_name = rw.input.get_ref();
        let (input, fields, max_keys_default, input_lateness_ms) =
            if let Some(&s) = stream_index.get(input_name.as_str()) {
                // with per-device watermarks the slowest active device holds the stream: a device
                // up to `max_future` ahead keeps windows open that much longer
                let span = match streams[s].watermark {
                    WatermarkMode::Stream => streams[s].lateness_ms,
                    WatermarkMode::Device => streams[s].lateness_ms.saturating_add(streams[s].max_future_ms),
                };
                (Input::Stream(s), streams[s].values.clone(), streams[s].max_keys, span)
            } else if let Some(&i) = new_index.get(input_name.as_str()) {
                (Input::Window(i), out[i].output_fields(), out[i].max_keys, 0)
            } else {
                return Err(ck.err(
                    rw.input.span(),
                    ctx(&format!("input `{input_name}` is neither a stream nor a window")),
                ));
            };
        let kind = match (&rw.size, &rw.gap) {
            (Some(_), Some(g)) => {
                return Err(ck
                    .err(g.span(), ctx("set either `size` (tumbling/hopping) or `gap` (session), not both")))
            }
            (None, None) => {
                return Err(ck.err(rw.name.span(), ctx("needs `size` (tumbling/hopping) or `gap` (session)")))
            }
            (Some(size), None) => {
                let size_ms = positive(ck, size, &ctx("size"))?;
                let slide_ms = match &rw.slide {
                    Some(s) => positive(ck, s, &ctx("slide"))?,
                    None => size_ms,
                };
                let offset_ms = match &rw.offset {
                    Some(o) => ck.duration(o, &ctx("offset"))?,
                    None => 0,
                };
                WindowKind::Fixed { size_ms, slide_ms, offset_ms: offset_ms.rem_euclid(slide_ms) }
            }
            (None, Some(gap)) => {
                for (f, v) in [("slide", &rw.slide), ("offset", &rw.offset)] {
                    if let Some(v) = v {
                        return Err(
                            ck.err(v.span(), ctx(&format!("`{f}` does not apply to a session window")))
                        );
                    }
                }
                WindowKind::Session { gap_ms: positive(ck, gap, &ctx("gap"))? }
            }
        };
        let mut aggregates = Vec::new();
        match &rw.aggregates {
            Some(a) => {
                if a.get_ref().len() > MAX_VALUES {
                    return Err(ck.err(
                        a.span(),
                        ctx(&format!("{} aggregates; at most {MAX_VALUES}", a.get_ref().len())),
                    ));
                }
                for (agg_name, spec) in a.get_ref() {
                    aggregates.push(parse_agg(ck, agg_name, spec, &fields, &ctx)?);
                }
            }
            None => aggregates.push(AggDef {
                name: "count".into(),
                func: AggFunc::Count,
                field: None,
                field_name: None,
            }),
        }
        if aggregates.iter().any(|a| a.name == "count")
            && raw.window.iter().any(|x| x.get_ref().input.get_ref() == &name)
        {
            let sp = rw.aggregates.as_ref().map_or(rw.name.span(), |a| a.span());
            return Err(ck.err(
                sp,
                ctx("an aggregate named `count` would clash with the `count` a rollup of this window reads"),
            ));
        }
        let max_keys = match &rw.max_keys {
            Some(m) => ck.count(m, &ctx("max_keys"), MAX_KEYS)?,
            None => max_keys_default,
        };
        let topic = match &rw.topic {
            Some(t) => Some(
                TopicTemplate::parse(t.get_ref(), &[Var::Window, Var::Key, Var::Gateway])
                    .map_err(|e| ck.err(t.span(), ctx(&e)))?,
            ),
            None => None,
        };
        new_index.insert(name.clone(), out.len());
        out.push(WindowDef { name, input, kind, aggregates, topic, max_keys, input_lateness_ms });
    }
    // a rolled-up window carries its aggregates plus `count` as values
    for (i, w) in out.iter().enumerate() {
        if out.iter().any(|x| x.input == Input::Window(i)) && w.aggregates.len() + 1 > MAX_VALUES {
            let rw = raw.window[raw_index[w.name.as_str()]].get_ref();
            let sp = rw.aggregates.as_ref().map_or(rw.name.span(), |a| a.span());
            return Err(ck.err(
                sp,
                format!(
                    "window `{}`: a rollup reads its {} aggregates plus `count`, more than {MAX_VALUES} values",
                    w.name,
                    w.aggregates.len()
                ),
            ));
        }
    }
    Ok(out)
}

fn parse_agg(
    ck: &Checker<'_>,
    name: &str,
    spec: &S<String>,
    fields: &[String],
    ctx: &dyn Fn(&str) -> String,
) -> Result<AggDef, ConfigError> {
    let text = spec.get_ref().trim();
    let bad = || {
        ck.err(
            spec.span(),
            ctx(&format!(
                "aggregate `{name} = \"{text}\"`: write func(field) with func one of count, sum, min, max, mean, first, last, stddev (count() takes no field)"
            )),
        )
    };
    let open = text.find('(').ok_or_else(bad)?;
    let arg = text[open + 1..].strip_suffix(')').ok_or_else(bad)?.trim();
    let func = match text[..open].trim() {
        "count" => AggFunc::Count,
        "sum" => AggFunc::Sum,
        "min" => AggFunc::Min,
        "max" => AggFunc::Max,
        "mean" | "avg" => AggFunc::Mean,
        "first" => AggFunc::First,
        "last" => AggFunc::Last,
        "stddev" => AggFunc::Stddev,
        _ => return Err(bad()),
    };
    if name.is_empty() {
        return Err(ck.err(spec.span(), ctx("an aggregate needs a name")));
    }
    let field = if arg.is_empty() || (func == AggFunc::Count && arg == "*") {
        if func != AggFunc::Count {
            return Err(bad());
        }
        None
    } else {
        match fields.iter().position(|f| f == arg) {
            Some(i) => Some(i),
            None => {
                return Err(ck.err(
                    spec.span(),
                    ctx(&format!(
                        "aggregate `{name}` reads `{arg}`, which the input does not carry (it has: {})",
                        if fields.is_empty() {
                            "no values; list them in the stream's `values`".to_string()
                        } else {
                            fields.join(", ")
                        }
                    )),
                ))
            }
        }
    };
    Ok(AggDef { name: name.to_string(), func, field, field_name: field.map(|_| arg.to_string()) })
}

fn build_join(
    ck: &Checker<'_>,
    j: &RawJoin,
    windows: &[WindowDef],
    stream_index: &HashMap<&str, usize>,
    window_index: &HashMap<&str, usize>,
) -> Result<JoinDef, ConfigError> {
    let name = j.name.get_ref().clone();
    let ctx = |what: &str| format!("join `{name}`: {what}");
    let strat = *j.strategy.get_ref();
    let wants_streams = matches!(strat, RawStrategy::Tolerance | RawStrategy::Asof);
    let resolve = |side: &S<String>, which: &str| -> Result<Input, ConfigError> {
        let n = side.get_ref().as_str();
        if wants_streams {
            match stream_index.get(n) {
                Some(&s) => Ok(Input::Stream(s)),
                None if window_index.contains_key(n) => Err(ck.err(
                    side.span(),
                    ctx(&format!(
                        "{which} `{n}` is a window; a {} join reads raw events of a stream",
                        strategy_name(strat)
                    )),
                )),
                None => Err(ck.err(side.span(), ctx(&format!("{which} `{n}` is not a stream")))),
            }
        } else {
            match window_index.get(n) {
                Some(&w) => Ok(Input::Window(w)),
                None if stream_index.contains_key(n) => Err(ck.err(
                    side.span(),
                    ctx(&format!(
                        "{which} `{n}` is a stream; a {} join reads windows: define a [[window]] over it",
                        strategy_name(strat)
                    )),
                )),
                None => Err(ck.err(side.span(), ctx(&format!("{which} `{n}` is not a window")))),
            }
        }
    };
    let left = resolve(&j.left, "left")?;
    let right = resolve(&j.right, "right")?;
    let only = |field: &Option<S<String>>, fname: &str, allowed: bool| -> Result<(), ConfigError> {
        match field {
            Some(f) if !allowed => Err(ck.err(
                f.span(),
                ctx(&format!("`{fname}` does not apply to strategy = \"{}\"", strategy_name(strat))),
            )),
            _ => Ok(()),
        }
    };
    only(&j.lower, "lower", strat == RawStrategy::Tolerance)?;
    only(&j.upper, "upper", strat == RawStrategy::Tolerance)?;
    only(&j.tolerance, "tolerance", matches!(strat, RawStrategy::Asof | RawStrategy::Session))?;
    if let Some(c) = &j.condition {
        if strat != RawStrategy::Overlap {
            return Err(ck.err(c.span(), ctx("`condition` applies only to strategy = \"overlap\"")));
        }
    }
    let win = |i: Input| match i {
        Input::Window(w) => &windows[w],
        Input::Stream(_) => unreachable!("window strategies resolve windows"),
    };
    let strategy = match strat {
        RawStrategy::Tolerance => {
            let lower_ms = match &j.lower {
                Some(l) => ck.duration(l, &ctx("lower"))?,
                None => 0,
            };
            let upper = j.upper.as_ref().ok_or_else(|| {
                ck.err(
                    j.name.span(),
                    ctx("a tolerance join needs `upper` (and optionally `lower`, default 0s)"),
                )
            })?;
            let upper_ms = ck.duration(upper, &ctx("upper"))?;
            if lower_ms > upper_ms {
                return Err(ck.err(
                    upper.span(),
                    ctx(&format!(
                        "lower ({}) is greater than upper ({})",
                        j.lower.as_ref().map_or("0s", |l| l.get_ref().as_str()),
                        upper.get_ref()
                    )),
                ));
            }
            Strategy::Tolerance { lower_ms, upper_ms }
        }
        RawStrategy::Asof => {
            let t = j.tolerance.as_ref().ok_or_else(|| {
                ck.err(j.name.span(), ctx("an asof join needs `tolerance` (how old the right event may be)"))
            })?;
            Strategy::Asof { tolerance_ms: nonneg(ck, t, &ctx("tolerance"))? }
        }
        RawStrategy::Bucket => {
            let (l, r) = (win(left), win(right));
            match (l.kind, r.kind) {
                (
                    WindowKind::Fixed { size_ms: ls, slide_ms: lsl, offset_ms: lo },
                    WindowKind::Fixed { size_ms: rs, slide_ms: rsl, offset_ms: ro },
                ) if ls == lsl && rs == rsl => {
                    if ls != rs || lo != ro {
                        return Err(ck.err(
                            j.right.span(),
                            ctx(&format!(
                                "a bucket join needs equal windows: `{}` is {} at offset {}, `{}` is {} at offset {}; use strategy = \"overlap\" for windows of different sizes or offsets",
                                l.name, crate::units::format_duration_ms(ls), crate::units::format_duration_ms(lo),
                                r.name, crate::units::format_duration_ms(rs), crate::units::format_duration_ms(ro)
                            )),
                        ));
                    }
                }
                _ => {
                    return Err(ck.err(
                        j.left.span(),
                        ctx("a bucket join joins two tumbling windows (size = slide); use \"overlap\" for hopping windows or \"session\" for sessions"),
                    ))
                }
            }
            Strategy::Bucket
        }
        RawStrategy::Overlap => {
            for (side, i) in [(&j.left, left), (&j.right, right)] {
                if matches!(win(i).kind, WindowKind::Session { .. }) {
                    return Err(ck.err(
                        side.span(),
                        ctx(&format!("`{}` is a session window; use strategy = \"session\"", win(i).name)),
                    ));
                }
            }
            Strategy::Overlap {
                condition: j.condition.as_ref().map_or(OverlapCondition::ContainedStart, |c| *c.get_ref()),
            }
        }
        RawStrategy::Session => {
            for (side, i) in [(&j.left, left), (&j.right, right)] {
                if !matches!(win(i).kind, WindowKind::Session { .. }) {
                    return Err(ck.err(
                        side.span(),
                        ctx(&format!("`{}` is not a session window (it has no `gap`)", win(i).name)),
                    ));
                }
            }
            Strategy::Session {
                tolerance_ms: match &j.tolerance {
                    Some(t) => nonneg(ck, t, &ctx("tolerance"))?,
                    None => 0,
                },
            }
        }
    };
    let max_matches = match &j.max_matches {
        Some(m) => ck.count(m, &ctx("max_matches"), MAX_CAPACITY)?,
        None => NonZeroU32::new(16).expect("non-zero"),
    };
    let topic = match &j.topic {
        Some(t) => TopicTemplate::parse(t.get_ref(), &[Var::Join, Var::Key, Var::Gateway])
            .map_err(|e| ck.err(t.span(), ctx(&e)))?,
        None => TopicTemplate::parse("results/{join}/{key}", &[Var::Join, Var::Key]).expect("valid default"),
    };
    Ok(JoinDef {
        name,
        strategy,
        left,
        right,
        kind: j.kind.as_ref().map_or(JoinType::Inner, |k| *k.get_ref()),
        max_matches,
        topic,
    })
}

fn strategy_name(s: RawStrategy) -> &'static str {
    match s {
        RawStrategy::Tolerance => "tolerance",
        RawStrategy::Asof => "asof",
        RawStrategy::Bucket => "bucket",
        RawStrategy::Overlap => "overlap",
        RawStrategy::Session => "session",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[gateway]
id = "t"

[[stream]]
name = "a"
topics = ["s/{dev}/a"]
key = "{dev}"
values = ["v"]
"#;

    fn err(extra: &str) -> (usize, String) {
        let text = format!("{BASE}{extra}");
        match parse(Path::new("gw.toml"), &text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("gw.toml:"), "{msg}");
                (e.line(), msg)
            }
        }
    }

    /// The 1-based line of the first occurrence of `needle` in BASE + extra.
    fn line_of(extra: &str, needle: &str) -> usize {
        let text = format!("{BASE}{extra}");
        text[..text.find(needle).expect("needle")].matches('\n').count() + 1
    }

    #[test]
    fn base_is_valid() {
        let p = parse(Path::new("gw.toml"), BASE).unwrap();
        assert_eq!(p.streams[0].values, ["v"]);
        assert_eq!(p.streams[0].capacity.get(), 64);
    }

    #[test]
    fn a_password_file_without_a_username_is_refused() {
        let extra = "\n[upstream]\nurl = \"mqtt://127.0.0.1:1884\"\npassword_file = \"pw\"\n";
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "password_file"));
        assert!(msg.contains("password_file needs `username`"), "{msg}");
        let extra = "\n[source]\npassword_file = \"pw\"\n";
        let (line, _) = err(extra);
        assert_eq!(line, line_of(extra, "password_file"));
    }

    #[test]
    fn unknown_field() {
        let extra = "\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"1m\"\nsizee = \"2m\"\n";
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "sizee"));
        assert!(msg.contains("unknown field `sizee`"), "{msg}");
    }

    #[test]
    fn unknown_name() {
        let extra = "\n[[window]]\nname = \"w\"\ninput = \"nope\"\nsize = \"1m\"\n";
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "\"nope\""));
        assert!(msg.contains("input `nope` is neither a stream nor a window"), "{msg}");
    }

    #[test]
    fn duplicate_name() {
        let extra = "\n[[window]]\nname = \"a\"\ninput = \"a\"\nsize = \"1m\"\n";
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "name = \"a\"\ninput"));
        assert!(msg.contains("duplicate name `a`: a stream already has it"), "{msg}");
    }

    #[test]
    fn rollup_cycle() {
        let extra = "\n[[window]]\nname = \"x\"\ninput = \"y\"\nsize = \"1m\"\n\n[[window]]\nname = \"y\"\ninput = \"x\"\nsize = \"5m\"\n";
        let (line, msg) = err(extra);
        assert!(msg.contains("rollup cycle: x → y → x") || msg.contains("rollup cycle: y → x → y"), "{msg}");
        assert!(line == line_of(extra, "input = \"y\"") || line == line_of(extra, "input = \"x\""));
    }

    #[test]
    fn bucket_join_of_unequal_windows() {
        let extra = r#"
[[stream]]
name = "b"
topics = ["s/{dev}/b"]
key = "{dev}"

[[window]]
name = "a1"
input = "a"
size = "1m"

[[window]]
name = "b5"
input = "b"
size = "5m"

[[join]]
name = "j"
strategy = "bucket"
left = "a1"
right = "b5"
"#;
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "right = \"b5\""));
        assert!(msg.contains("a bucket join needs equal windows"), "{msg}");
        assert!(msg.contains("use strategy = \"overlap\""), "{msg}");
    }

    #[test]
    fn capacity_zero() {
        let extra = "\n[[stream]]\nname = \"b\"\ntopics = [\"x\"]\ncapacity = 0\n";
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "capacity = 0"));
        assert!(msg.contains("stream `b`: capacity = 0: it must be at least 1"), "{msg}");
    }

    #[test]
    fn too_many_values() {
        let vals: Vec<String> = (0..17).map(|i| format!("\"v{i}\"")).collect();
        let extra = format!("\n[[stream]]\nname = \"b\"\ntopics = [\"x\"]\nvalues = [{}]\n", vals.join(", "));
        let (line, msg) = err(&extra);
        assert_eq!(line, line_of(&extra, "values = [\"v0"));
        assert!(msg.contains("17 values listed; at most 16 per event"), "{msg}");
    }

    #[test]
    fn bad_duration() {
        let extra = "\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"5 fortnights\"\n";
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "5 fortnights"));
        assert!(msg.contains("window `w`: size: `5 fortnights` is not a duration"), "{msg}");
    }

    #[test]
    fn state_too_large_to_allocate() {
        // 1 ms slides with a day of lateness: 86 million windows per key
        let extra = "\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"1s\"\nslide = \"1ms\"\n";
        let text =
            format!("{BASE}{extra}").replace("values = [\"v\"]", "values = [\"v\"]\nlateness = \"1d\"");
        let err = parse(Path::new("gw.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("of engine state, more than the 2.0 GiB"), "{err}");
    }

    #[test]
    fn other_refusals() {
        for (extra, want) in [
            ("\n[[join]]\nname = \"j\"\nstrategy = \"tolerance\"\nleft = \"a\"\nright = \"a\"\nlower = \"1m\"\nupper = \"-1m\"\n", "is greater than upper"),
            ("\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"1m\"\naggregates = { x = \"median(v)\" }\n", "aggregate `x = \"median(v)\"`"),
            ("\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"1m\"\naggregates = { x = \"sum(nope)\" }\n", "reads `nope`, which the input does not carry"),
            ("\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"1m\"\ngap = \"1m\"\n", "either `size`"),
            ("\n[[stream]]\nname = \"b\"\ntopics = [\"x/{d}\"]\nkey = \"{dev}\"\n", "has no capture `{dev}`"),
            ("\n[[stream]]\nname = \"b\"\ntopics = [\"x/#/y\"]\n", "`#` may only be the last level"),
            ("\n[[stream]]\nname = \"b\"\ntopics = [\"x\"]\nclock = \"sundial\"\n", "unknown variant `sundial`"),
            ("\n[[join]]\nname = \"j\"\nstrategy = \"bucket\"\nleft = \"a\"\nright = \"a\"\n", "is a stream; a bucket join reads windows"),
        ] {
            let (_, msg) = err(extra);
            assert!(msg.contains(want), "{msg} lacks {want}");
        }
    }
}
