//! The two renderings of what edgejoin reports, both from the samples of
//! [`super::registry`]: the stats message (JSON, published on the stats topic;
//! its engine part is also `replay --stats`) and the Prometheus text.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value};

use edgejoin_engine::engine::Engine;

use super::counters::ServiceCounters;
use super::registry::{Family, Kind, Sample, Samples, Val, ALL, STREAM_DECODE_ERRORS};

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

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The samples in Prometheus text format: each metric's lines together,
/// under its HELP and TYPE.
pub fn to_prometheus(samples: &[Sample], o: &mut String) {
    for &f in ALL {
        let Some(name) = f.prom else { continue };
        // a name template with a label in it (`join_buffered_{side}`) makes one metric per value
        let mut metrics: Vec<(String, String)> = Vec::new();
        for s in samples.iter().filter(|s| std::ptr::eq(s.family, f)) {
            let v = match &s.val {
                Val::U(n) => n.to_string(),
                Val::I(n) => n.to_string(),
                Val::F(x) => x.to_string(),
                Val::None | Val::Text(_) => continue,
            };
            let (metric, rest) = fill(name, &s.labels);
            let mut line = format!("edgejoin_{metric}");
            if !rest.is_empty() {
                let pairs: Vec<String> = rest.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
                let _ = write!(line, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(line, " {v}");
            match metrics.iter_mut().find(|(m, _)| *m == metric) {
                Some((_, lines)) => lines.push_str(&line),
                None => metrics.push((metric, line)),
            }
        }
        for (metric, lines) in metrics {
            header(o, f, &metric);
            o.push_str(&lines);
        }
    }
}

fn header(o: &mut String, f: &Family, name: &str) {
    let kind = match f.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    let _ = writeln!(o, "# HELP edgejoin_{name} {}", f.help);
    let _ = writeln!(o, "# TYPE edgejoin_{name} {kind}");
}

/// The engine's counters as JSON (`replay --stats`, and the stats message).
pub fn engine_stats(e: &Engine) -> Value {
    let mut s = Samples::default();
    s.engine(e);
    to_json(&s)
}

/// The stats message: the engine's counters and the service's, as JSON.
pub fn stats_json(e: &Engine, c: &ServiceCounters, rate: f64, uptime: Duration) -> String {
    let mut s = Samples::default();
    s.engine(e);
    s.service(c, rate, uptime, e.now());
    to_json(&s).to_string()
}

/// The same in Prometheus text format, with the result latency histogram.
pub fn prometheus(e: &Engine, c: &ServiceCounters) -> String {
    let mut s = Samples::default();
    s.service(c, 0.0, Duration::ZERO, e.now());
    s.engine(e);
    let mut o = String::new();
    to_prometheus(&s.samples, &mut o);
    c.result_latency.prometheus(&mut o);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use edgejoin_engine::engine::Output;
    use edgejoin_engine::Plan;

    fn engine() -> Engine {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
        let c = config::load(&dir.join("tolerance.toml")).unwrap();
        let mut e = Engine::new(c.plan, 1);
        let text = std::fs::read_to_string(dir.join("tolerance.jsonl")).unwrap();
        let mut sink = |_: &Plan, _: Output<'_>| {};
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let (recv, topic, payload) = (
                v["recv_ms"].as_i64().unwrap(),
                v["topic"].as_str().unwrap(),
                v["payload"].as_str().unwrap(),
            );
            e.ingest(recv, topic, payload.as_bytes(), &mut sink);
        }
        e
    }

    #[test]
    fn every_prometheus_line_has_its_help_and_type_and_each_metric_is_one_group() {
        let c = ServiceCounters::default();
        let text = prometheus(&engine(), &c);
        let mut seen = std::collections::BTreeSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(current.clone()), "{current} split in two groups");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(name == current || family == current, "{line} outside its group {current}");
        }
        for want in
            ["edgejoin_join_evicted_elements_total", "edgejoin_stream_received_total", "edgejoin_processed"]
        {
            assert!(seen.contains(want), "{want} missing");
        }
    }

    #[test]
    fn the_stats_json_and_prometheus_carry_the_same_numbers() {
        let e = engine();
        let mut s = Samples::default();
        s.engine(&e);
        let json = to_json(&s);
        let mut text = String::new();
        to_prometheus(&s.samples, &mut text);
        let mut checked = 0;
        for smp in &s.samples {
            let (Some(jp), Some(pp), Val::U(n)) = (smp.family.json, smp.family.prom, &smp.val) else {
                continue;
            };
            let (jp, _) = fill(jp, &smp.labels);
            let at = jp.split('.').fold(&json, |v, k| &v[k]);
            if std::ptr::eq(smp.family, &STREAM_DECODE_ERRORS) && *n == 0 {
                assert!(at.is_null());
            } else {
                assert_eq!(at.as_u64(), Some(*n), "{jp}");
            }
            let (metric, rest) = fill(pp, &smp.labels);
            let labels: Vec<String> = rest.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
            let line = if labels.is_empty() {
                format!("edgejoin_{metric} {n}\n")
            } else {
                format!("edgejoin_{metric}{{{}}} {n}\n", labels.join(","))
            };
            assert!(text.contains(&line), "{line}");
            checked += 1;
        }
        assert!(checked > 20, "{checked}");
    }
}
