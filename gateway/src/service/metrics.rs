//! The renderings of what edgejoin reports, all from the samples of
//! [`super::registry`]: the stats message (JSON, published on the stats topic;
//! its engine part is also `replay --stats`), and the Prometheus exposition
//! (prometheus-client: OpenMetrics or the classic text) with the build info
//! and the standard process metrics.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit as PromUnit};
use serde_json::{Map, Value};

use edgejoin_engine::engine::Engine;

use super::counters::ServiceCounters;
use super::process;
use super::registry::{Family, Kind, Sample, Samples, Unit, Val, ALL, STREAM_DECODE_ERRORS};

/// `template` with each `{label}` replaced by its value; the labels it did not use.
fn fill<'a>(
    template: &str,
    labels: &'a [(&'static str, String)],
) -> (String, Vec<&'a (&'static str, String)>) {
    let mut out = template.to_string();
    let mut rest = Vec::new();
    for l in labels {
        let slot = format!("{{{}}}", l.0);
        if out.contains(&slot) {
            out = out.replace(&slot, &l.1);
        } else {
            rest.push(l);
        }
    }
    (out, rest)
}

fn json_value(v: &Val) -> Value {
    match v {
        Val::U(n) => (*n).into(),
        Val::I(n) => (*n).into(),
        Val::F(x) => (*x).into(),
        Val::None => Value::Null,
        Val::Text(t) => t.clone().into(),
    }
}

/// The object at `path` (dot-separated) under `root`, created if missing.
fn object_at<'a>(root: &'a mut Value, path: &str) -> &'a mut Value {
    let mut node = root;
    for p in path.split('.') {
        node = node
            .as_object_mut()
            .expect("paths nest in objects")
            .entry(p)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    node
}

/// The samples as one JSON object, each at its family's path.
pub fn to_json(s: &Samples) -> Value {
    let mut root = Value::Object(Map::new());
    for path in &s.objects {
        object_at(&mut root, path);
    }
    for s in &s.samples {
        let Some(path) = s.family.json else { continue };
        // the per-reason decode errors list only the reasons that occurred
        if std::ptr::eq(s.family, &STREAM_DECODE_ERRORS) && s.val == Val::U(0) {
            continue;
        }
        let (path, _) = fill(path, &s.labels);
        let (parent, leaf) = path.rsplit_once('.').unwrap_or(("", &path));
        let node = if parent.is_empty() { &mut root } else { object_at(&mut root, parent) };
        node[leaf] = json_value(&s.val);
    }
    root
}

/// What the engine thread saw at its last stats interval: the samples
/// the Prometheus exposition and `/status` are rendered from (at request
/// time, on the HTTP task: the engine thread only copies them).
#[derive(Default, Debug)]
pub struct Snapshot {
    pub samples: Samples,
    /// Messages per second matched by each stream over the last interval.
    pub stream_rates: Vec<(String, f64)>,
}

/// The exposition: every family of [`ALL`] exported to Prometheus, from the
/// last snapshot, in base units, with its HELP and TYPE (OpenMetrics via
/// prometheus-client: counters get `_total`, units their suffix).
#[derive(Debug)]
pub struct Exposition {
    pub snapshot: Arc<Mutex<Snapshot>>,
    pub counters: Arc<ServiceCounters>,
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let snap = self.snapshot.lock().map_err(|_| fmt::Error)?;
        // the samples grouped by family, in the families' order
        let position = |f: &Family| ALL.iter().position(|g| std::ptr::eq(*g, f)).unwrap_or(usize::MAX);
        let mut order: Vec<(usize, &Sample)> = snap
            .samples
            .samples
            .iter()
            .filter(|s| s.family.prom.is_some() && !matches!(s.val, Val::None | Val::Text(_)))
            .map(|s| (position(s.family), s))
            .collect();
        order.sort_by_key(|(i, _)| *i);
        for group in order.chunk_by(|a, b| a.0 == b.0) {
            let f = group[0].1.family;
            let name = f.prom.expect("filtered");
            let unit = prom_unit(f.unit);
            let kind = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut m = enc.encode_descriptor(name, f.help, unit.as_ref(), kind)?;
            for (_, s) in group {
                let labels: Vec<(&str, &str)> = s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let mut m = m.encode_family(&labels)?;
                let scale = f.unit.scale();
                match (f.kind, &s.val) {
                    (Kind::Counter, Val::U(n)) if scale == 1.0 => {
                        m.encode_counter::<NoLabelSet, _, u64>(n, None)?
                    }
                    (Kind::Counter, v) => {
                        m.encode_counter::<NoLabelSet, _, u64>(&(number(v) * scale), None)?
                    }
                    (Kind::Gauge, Val::U(n)) if scale == 1.0 => m.encode_gauge(n)?,
                    (Kind::Gauge, Val::I(n)) if scale == 1.0 => m.encode_gauge(n)?,
                    (Kind::Gauge, v) => m.encode_gauge(&(number(v) * scale))?,
                }
            }
        }
        drop(snap);
        let h = &self.counters.result_latency;
        let (sum, count, buckets) = h.snapshot();
        enc.encode_descriptor(
            "result_latency",
            "Broker delivery of a message to the publish of the results it completed.",
            Some(&PromUnit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

fn number(v: &Val) -> f64 {
    match v {
        Val::U(n) => *n as f64,
        Val::I(n) => *n as f64,
        Val::F(x) => *x,
        Val::None | Val::Text(_) => f64::NAN,
    }
}

fn prom_unit(u: Unit) -> Option<PromUnit> {
    match u {
        Unit::One => None,
        Unit::Bytes => Some(PromUnit::Bytes),
        Unit::Ms => Some(PromUnit::Seconds),
        Unit::Ppm => Some(PromUnit::Other("ratio".into())),
    }
}

/// `edgejoin_build_info{version, target}`: 1.
#[derive(Debug)]
struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let info = [("version", env!("CARGO_PKG_VERSION")), ("target", std::env::consts::ARCH)];
        enc.encode_descriptor(
            "build",
            "The running edgejoin's version and CPU architecture.",
            None,
            MetricType::Info,
        )?
        .encode_info(&info)
    }
}

/// The standard process metrics (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, …) from /proc/self, read at each scrape.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let Some(p) = process::read() else { return Ok(()) };
        enc.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent.",
            Some(&PromUnit::Seconds),
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&p.cpu_seconds, None)?;
        let (s, b) = (Some(PromUnit::Seconds), Some(PromUnit::Bytes));
        let gauges = [
            ("process_resident_memory", "Resident memory size.", &b, p.rss_bytes as f64),
            ("process_virtual_memory", "Virtual memory size.", &b, p.vsize_bytes as f64),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch.",
                &s,
                p.start_time_seconds,
            ),
            ("process_open_fds", "Open file descriptors.", &None, p.open_fds as f64),
            ("process_threads", "Threads of the process.", &None, p.threads as f64),
        ];
        let max_fds =
            p.max_fds.map(|m| ("process_max_fds", "The limit of open file descriptors.", &None, m as f64));
        for (name, help, unit, v) in gauges.into_iter().chain(max_fds) {
            enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?.encode_gauge(&v)?;
        }
        Ok(())
    }
}

/// The registry served on `/metrics`: edgejoin's families under `edgejoin_`,
/// the process metrics without a prefix.
pub fn registry(snapshot: Arc<Mutex<Snapshot>>, counters: Arc<ServiceCounters>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(Process));
    let sub = r.sub_registry_with_prefix("edgejoin");
    sub.register_collector(Box::new(BuildInfo));
    sub.register_collector(Box::new(Exposition { snapshot, counters }));
    r
}

/// The exposition in the format the scraper asked for: OpenMetrics when
/// its `Accept` names it (Prometheus does), else the classic text format.
pub fn expose(r: &Registry, openmetrics: bool) -> Result<String, fmt::Error> {
    let mut o = String::with_capacity(16 << 10);
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut o, r)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut o, r)?;
    }
    Ok(o)
}

/// The content type of [`expose`]'s output.
pub fn content_type(openmetrics: bool) -> &'static str {
    if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    }
}

#[cfg(test)]
/// The labels a family's samples carry: the placeholders of its JSON path
/// (the families only on `/metrics` say theirs here).
fn labels_of(f: &Family) -> Vec<&'static str> {
    match f.json {
        Some(path) => path.split('{').skip(1).filter_map(|p| p.split('}').next()).collect(),
        None if std::ptr::eq(f, &super::registry::STREAM_HOLDING_DEVICE) => vec!["stream", "device"],
        None => vec!["stream"],
    }
}

#[cfg(test)]
/// The reference table of every metric on `/metrics` (docs/SERVICE.md
/// carries it; a test keeps the two equal).
pub fn reference() -> String {
    let mut o = String::from("| metric | type | labels | what |\n|---|---|---|---|\n");
    let row = |o: &mut String, name: &str, kind: &str, labels: &str, help: &str| {
        o.push_str(&format!("| `{name}` | {kind} | {labels} | {help} |\n"));
    };
    for f in ALL {
        let Some(name) = f.prom else { continue };
        let unit = prom_unit(f.unit).map(|u| format!("_{}", u.as_str())).unwrap_or_default();
        let (kind, total) = match f.kind {
            Kind::Counter => ("counter", "_total"),
            Kind::Gauge => ("gauge", ""),
        };
        let labels: Vec<String> = labels_of(f).iter().map(|l| format!("`{l}`")).collect();
        let json = f.json.map(|j| format!(" (stats JSON: `{j}`)")).unwrap_or_default();
        row(
            &mut o,
            &format!("edgejoin_{name}{unit}{total}"),
            kind,
            &labels.join(", "),
            &format!("{}{json}", f.help),
        );
    }
    row(
        &mut o,
        "edgejoin_result_latency_seconds",
        "histogram",
        "",
        "Broker delivery of a message to the publish of the results it completed (below).",
    );
    row(
        &mut o,
        "edgejoin_build_info",
        "info",
        "`version`, `target`",
        "The running edgejoin's version and CPU architecture (value 1).",
    );
    for (name, kind, what) in [
        ("process_cpu_seconds_total", "counter", "User and system CPU time spent."),
        ("process_resident_memory_bytes", "gauge", "Resident memory size."),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size."),
        ("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch."),
        ("process_open_fds", "gauge", "Open file descriptors."),
        ("process_max_fds", "gauge", "The limit of open file descriptors."),
        ("process_threads", "gauge", "Threads of the process."),
    ] {
        row(&mut o, name, kind, "", what);
    }
    o
}

/// The engine's counters as JSON (`replay --stats`, and the stats message).
pub fn engine_stats(e: &Engine) -> Value {
    let mut s = Samples::default();
    s.engine(e);
    to_json(&s)
}

/// The stats message: the engine's counters and the service's, as JSON.
pub fn stats_json(s: &Samples) -> String {
    to_json(s).to_string()
}

/// The samples for `/metrics` and `/status`: the service's and the engine's.
pub fn samples(e: &Engine, c: &ServiceCounters, rate: f64, uptime: Duration) -> Samples {
    let mut s = Samples::default();
    s.engine(e);
    s.service(c, rate, uptime, e.now());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        crate::test_util::replay_example("tolerance", &mut |_, _| {})
    }

    fn exposition(openmetrics: bool) -> (Samples, String) {
        let c = Arc::new(ServiceCounters::default());
        c.received.store(7, std::sync::atomic::Ordering::Relaxed);
        c.processing_delay_ms.store(1500, std::sync::atomic::Ordering::Relaxed);
        let s = samples(&engine(), &c, 0.0, Duration::ZERO);
        let snapshot =
            Arc::new(Mutex::new(Snapshot { samples: Samples::default(), stream_rates: Vec::new() }));
        snapshot.lock().unwrap().samples = samples(&engine(), &c, 0.0, Duration::ZERO);
        let text = expose(&registry(snapshot, c), openmetrics).unwrap();
        (s, text)
    }

    /// Every metric under its HELP and TYPE, each family one group, in
    /// both formats; OpenMetrics ends with `# EOF`.
    #[test]
    fn every_metric_has_its_help_and_type_and_each_family_is_one_group() {
        for openmetrics in [true, false] {
            let (_, text) = exposition(openmetrics);
            let mut seen = std::collections::BTreeMap::new();
            let mut helped = std::collections::BTreeSet::new();
            let mut current = String::new();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    helped.insert(rest.split(' ').next().unwrap().to_string());
                    continue;
                }
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let mut it = rest.split(' ');
                    current = it.next().unwrap().to_string();
                    assert!(helped.contains(&current), "{current} has no HELP");
                    let kind = it.next().unwrap().to_string();
                    assert!(seen.insert(current.clone(), kind).is_none(), "{current} split in two groups");
                    continue;
                }
                if line.starts_with('#') {
                    assert!(openmetrics && line == "# EOF" || line.starts_with("# UNIT "), "{line}");
                    continue;
                }
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_total", "_bucket", "_sum", "_count", "_info"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| *b == current))
                    .unwrap_or(name);
                assert_eq!(base, current, "{line} outside its group");
            }
            assert_eq!(text.lines().last() == Some("# EOF"), openmetrics);
            let kind = |m: &str| seen.get(m).map(String::as_str);
            // counters end in _total (the TYPE names the family without it in OpenMetrics)
            let received = if openmetrics { "edgejoin_received" } else { "edgejoin_received_total" };
            assert_eq!(kind(received), Some("counter"), "{text}");
            assert!(text.contains("\nedgejoin_received_total 7\n"), "{text}");
            // base units: ms become seconds, in the name
            assert_eq!(kind("edgejoin_processing_delay_seconds"), Some("gauge"));
            assert!(text.contains("\nedgejoin_processing_delay_seconds 1.5\n"), "{text}");
            assert_eq!(kind("edgejoin_result_latency_seconds"), Some("histogram"));
            assert!(text.contains("edgejoin_result_latency_seconds_bucket{le=\"+Inf\"} 0"), "{text}");
            // the side is a label, not part of the name
            assert!(
                text.contains("edgejoin_join_buffered{join=\"orders_payments\",side=\"left\"}"),
                "{text}"
            );
            assert!(text.contains("edgejoin_build_info{version=\""), "{text}");
            assert_eq!(kind("process_resident_memory_bytes"), Some("gauge"));
            let cpu = if openmetrics { "process_cpu_seconds" } else { "process_cpu_seconds_total" };
            assert_eq!(kind(cpu), Some("counter"));
            for m in ["edgejoin_unrouted", "edgejoin_device_evictions"] {
                let m = if openmetrics { m.to_string() } else { format!("{m}_total") };
                assert_eq!(kind(&m), Some("counter"), "{m}");
            }
        }
    }

    /// docs/SERVICE.md lists every metric `/metrics` serves, as [`reference`]
    /// writes it (`EDGEJOIN_UPDATE_DOCS=1` rewrites the table), and every
    /// family the exposition carries is in it.
    #[test]
    fn every_metric_is_documented_in_service_md() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SERVICE.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let (begin, end) = ("<!-- metrics:begin -->\n", "<!-- metrics:end -->");
        let (a, b) =
            (doc.find(begin).expect("begin marker") + begin.len(), doc.find(end).expect("end marker"));
        let table = reference();
        if std::env::var("EDGEJOIN_UPDATE_DOCS").is_ok() {
            std::fs::write(&path, format!("{}{table}{}", &doc[..a], &doc[b..])).unwrap();
        } else {
            assert_eq!(doc[a..b], table, "docs/SERVICE.md's metrics table is stale: EDGEJOIN_UPDATE_DOCS=1 cargo test -p edgejoin --lib metrics");
        }
        let (_, text) = exposition(false);
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(table.contains(&format!("`{name}`")), "{name} is not in the table");
        }
    }

    /// The stats JSON and the exposition say the same, in their units.
    #[test]
    fn the_stats_json_and_prometheus_carry_the_same_numbers() {
        let (s, text) = exposition(true);
        let json = to_json(&s);
        let mut checked = 0;
        for smp in &s.samples {
            let (Some(jp), Some(pp)) = (smp.family.json, smp.family.prom) else { continue };
            let n = match smp.val {
                Val::U(n) => n as f64,
                Val::I(n) => n as f64,
                _ => continue,
            };
            let (jp, rest) = fill(jp, &smp.labels);
            if !(std::ptr::eq(smp.family, &STREAM_DECODE_ERRORS) && n == 0.0) {
                let at = jp.split('.').fold(&json, |v, k| &v[k]);
                assert_eq!(at.as_f64(), Some(n), "{jp}");
            }
            let unit = prom_unit(smp.family.unit).map(|u| format!("_{}", u.as_str())).unwrap_or_default();
            let total = if smp.family.kind == Kind::Counter { "_total" } else { "" };
            let labels: Vec<String> = smp.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
            let v = n * smp.family.unit.scale();
            let line = format!("edgejoin_{pp}{unit}{total}{labels} ");
            let found =
                text.lines().find(|l| l.starts_with(&line)).unwrap_or_else(|| panic!("{line} in {text}"));
            let got: f64 = found[line.len()..].parse().unwrap();
            assert!((got - v).abs() <= 1e-9 * v.abs().max(1.0), "{found} vs {v}");
            let _ = rest;
            checked += 1;
        }
        assert!(checked > 20, "{checked}");
    }
}
