//! `check-config`'s report: the pipeline (streams → windows → joins →
//! outputs) and the memory bound its config implies.

use std::fmt::Write as _;

use edgejoin_engine::engine::Engine;
use edgejoin_engine::plan::*;
use std::path::Path;

use crate::config::units::{format_bytes, format_duration_ms as d};
use crate::config::Config;
use edgejoin_engine::window::{ring_size, WindowOp};

fn field(f: &FieldRef) -> String {
    match f {
        FieldRef::Capture { name, .. } => format!("{{{name}}}"),
        FieldRef::Payload(n) => format!("$.{n}"),
        FieldRef::Constant => "(one key)".into(),
    }
}

/// A human-readable description of the pipeline.
pub fn describe(c: &Config) -> String {
    let (p, dep) = (&c.plan, &c.deployment);
    let mut o = String::new();
    let _ = writeln!(o, "gateway `{}`, source {}", dep.gateway.id, dep.source.url);
    let u = &dep.upstream;
    let _ = writeln!(
        o,
        "upstream {} (prefix `{}`, spool {} {:?}), delivery {:?}{}",
        u.url,
        u.topic_prefix,
        format_bytes(u.spool),
        u.spool_full,
        dep.service.delivery,
        match dep.service.delivery {
            crate::config::Delivery::Durable =>
                format!(" (group commit within {})", d(dep.service.commit_delay.as_millis() as i64)),
            crate::config::Delivery::Fast => String::new(),
        }
    );
    let _ = writeln!(o, "\nstreams:");
    for s in &p.streams {
        let topics: Vec<&str> = s.topics.iter().map(|t| t.filter()).collect();
        let _ = writeln!(
            o,
            "  {:<16} ← {}  key {}  device {}  {:?}/{:?}  clock {:?}  watermark per {}  lateness {}{}  late {}  values [{}]",
            s.name,
            topics.join(", "),
            field(&s.key),
            field(&s.device),
            s.format,
            s.time_unit,
            s.clock,
            match s.watermark {
                WatermarkMode::Stream => "stream",
                WatermarkMode::Device => "device",
            },
            d(s.lateness_ms),
            s.idle_timeout_ms.map_or(String::new(), |t| format!("  idle after {}", d(t))),
            match &s.late {
                LatePolicy::Drop => "drop".to_string(),
                LatePolicy::Route(t) => format!("→ {}", t.text()),
            },
            s.values.join(", "),
        );
    }
    if !p.windows.is_empty() {
        let _ = writeln!(o, "\nwindows:");
    }
    for w in &p.windows {
        let kind = match w.kind {
            WindowKind::Fixed { size_ms, slide_ms, offset_ms } if size_ms == slide_ms => {
                format!("tumbling {} offset {}", d(size_ms), d(offset_ms))
            }
            WindowKind::Fixed { size_ms, slide_ms, offset_ms } => {
                format!("hopping {} every {} offset {}", d(size_ms), d(slide_ms), d(offset_ms))
            }
            WindowKind::Session { gap_ms } => format!("session gap {}", d(gap_ms)),
        };
        let aggs: Vec<String> = w
            .aggregates
            .iter()
            .map(|a| format!("{}={}({})", a.name, a.func.name(), a.field_name.as_deref().unwrap_or("")))
            .collect();
        let _ = writeln!(
            o,
            "  {:<16} ← {}{}  {}  [{}]  → {}",
            w.name,
            p.input_name(w.input),
            if matches!(w.input, Input::Window(_)) { " (rollup)" } else { "" },
            kind,
            aggs.join(", "),
            w.emit.as_ref().map_or("(internal)", |t| t.text()),
        );
    }
    if !p.joins.is_empty() {
        let _ = writeln!(o, "\njoins:");
    }
    for j in &p.joins {
        let cond = match j.strategy {
            Strategy::Tolerance { lower_ms, upper_ms } => {
                format!("{} <= right.ts - left.ts <= {}", d(lower_ms), d(upper_ms))
            }
            Strategy::Asof { tolerance_ms } => {
                format!("latest right with ts <= left.ts, within {}", d(tolerance_ms))
            }
            Strategy::Bucket => "same bucket".into(),
            Strategy::Overlap { condition } => format!("{condition:?}"),
            Strategy::Session { tolerance_ms } => {
                format!("sessions intersect (± {})", d(tolerance_ms))
            }
        };
        let _ = writeln!(
            o,
            "  {:<16} ← {} ⋈ {}  {} {:?}: {}  max_matches {}  → {}",
            j.name,
            p.input_name(j.left),
            p.input_name(j.right),
            j.strategy.name(),
            j.kind,
            cond,
            j.max_matches,
            j.topic.text(),
        );
    }
    let _ = writeln!(o, "\nmemory bound (engine state allocated once at start, and the intake's buffers):");
    for w in &p.windows {
        let ring = ring_size(w.kind, w.input_lateness_ms);
        let _ = writeln!(
            o,
            "  window {:<16} {} keys × {} open windows × {} aggregates = {}",
            w.name,
            w.max_keys,
            ring,
            w.aggregates.len(),
            format_bytes(WindowOp::memory_bytes(w))
        );
    }
    for (i, j) in p.joins.iter().enumerate() {
        let _ = writeln!(
            o,
            "  join   {:<16} {} + {} buffered per key = {}",
            j.name,
            edgejoin_engine::join::side_capacity(p, j.left),
            edgejoin_engine::join::side_capacity(p, j.right),
            format_bytes(edgejoin_engine::join::JoinOp::memory_bytes(p, i))
        );
    }
    let devices = Engine::device_watermark_bytes(p);
    if devices > 0 {
        let _ = writeln!(
            o,
            "  device watermarks      {} devices per stream = {}",
            p.max_devices,
            format_bytes(devices)
        );
    }
    let skew = Engine::skew_memory_bytes(p);
    if skew > 0 {
        let _ = writeln!(o, "  clock estimators       {} devices = {}", p.max_devices, format_bytes(skew));
    }
    let svc = &c.deployment.service;
    let trace = if skew > 0 && svc.metrics_addr.is_some() && svc.clock_trace > 0 {
        let bytes =
            crate::clock_report::ClockTrace::memory_bytes(svc.clock_trace, p.max_devices.get() as usize);
        let _ = writeln!(
            o,
            "  clock report trace     {} devices × {} samples = {} (as devices are heard)",
            p.max_devices,
            svc.clock_trace,
            format_bytes(bytes)
        );
        bytes
    } else {
        0
    };
    let engine = Engine::memory_bytes(p);
    let budget = crate::service::intake_budget(c) as u64;
    let buffers = crate::service::source_buffers(c) as u64;
    let _ = writeln!(
        o,
        "  intake                 {} (source messages on their way to the engine) + {} (MQTT client and filter buffers)",
        format_bytes(budget),
        format_bytes(buffers)
    );
    let total = engine + budget + buffers + trace;
    debug_assert_eq!(total, crate::service::memory_bound(c));
    let _ = writeln!(o, "  total {}", format_bytes(total));
    o
}

/// What in a valid config is likely to surprise its user: said by
/// `check-config` and logged when the service starts.
pub fn warnings(c: &Config) -> Vec<String> {
    let p = &c.plan;
    let mut w = Vec::new();
    for s in &p.streams {
        // devices named by a topic segment (`sensors/{device}/temp`) or an explicit `device`
        // setting; a key from a payload field (an order id) is not taken for a clock
        let many_devices = match s.device {
            FieldRef::Capture { .. } => true,
            FieldRef::Payload(_) => s.device_named,
            FieldRef::Constant => false,
        };
        if s.clock == Clock::Device && s.watermark == WatermarkMode::Stream && many_devices {
            w.push(format!(
                "stream `{}` takes each device's own clock (clock = \"device\") from several devices ({}) under one watermark: a device whose clock runs ahead (up to max_future, {}) makes every other device's events late. Set watermark = \"device\" (each device judged by its own progress) or clock = \"corrected\" (clocks mapped onto the gateway's); see docs/CLOCKS.md",
                s.name,
                field(&s.device),
                d(s.max_future_ms)
            ));
        }
        if s.watermark == WatermarkMode::Device && s.idle_timeout_ms.is_none() {
            w.push(format!(
                "stream `{}` has per-device watermarks and no idle_timeout: a device that falls silent holds the stream's windows and joins until it speaks again or is evicted",
                s.name
            ));
        }
    }
    w
}

/// `edgejoin check-config`: the config validated, the pipeline and its memory
/// bound printed, warnings after it.
pub fn run(path: &Path, portable: bool, against: Option<&Path>) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write as _;
    let c = crate::config::load(path)?;
    if !portable {
        // every check `run` makes before it touches the network
        crate::service::preflight::preflight(path, &c)?;
    }
    // a closed pipe (`| head`) is not an error worth a panic
    let mut out = std::io::stdout().lock();
    let mut text = describe(&c);
    for w in warnings(&c) {
        text.push_str(&format!("\nwarning: {w}\n"));
    }
    if let Some(dir) = against {
        text.push('\n');
        text.push_str(&against_report(dir, &c.plan)?);
    }
    let _ = write!(out, "{text}").and_then(|_| writeln!(out, "{}: OK", path.display()));
    Ok(())
}

/// What the state in `dir` would keep under this plan (`--against`).
fn against_report(dir: &Path, p: &Plan) -> Result<String, Box<dyn std::error::Error>> {
    if !dir.is_dir() {
        return Err(
            format!("--against {}: no such directory (the gateway's state_dir)", dir.display()).into()
        );
    }
    Ok(match crate::service::against_checkpoint(dir, p) {
        Ok(None) => format!("against {}: no checkpoint there; every part starts empty\n", dir.display()),
        Ok(Some((seq, carry))) => {
            let mut o = format!("against the checkpoint in {} (covering input {seq}):\n", dir.display());
            if carry.all_kept() {
                o.push_str("  the pipeline is unchanged: every part keeps its state\n");
            }
            for (fate, list) in carry.groups().into_iter().filter(|_| !carry.all_kept()) {
                let _ = writeln!(o, "  {}: {list}", fate.label());
            }
            if carry.discards() {
                o.push_str("  (state started empty or dropped is gone once the gateway runs this config)\n");
            }
            o
        }
        Err(crate::service::CheckpointError::Io { path, source }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(format!(
                "--against: cannot read {}: permission denied (the state belongs to the service: run as root, e.g. with sudo)",
                path.display()
            )
            .into())
        }
        Err(e) => format!(
            "against {}: the checkpoint is unusable ({e}); run would set it aside and start every part empty\n",
            dir.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(stream_extra: &str) -> Config {
        let text = format!(
            "[[stream]]\nname = \"s\"\ntopics = [\"p/{{device}}/t\"]\nkey = \"{{device}}\"\n{stream_extra}values = [\"v\"]\n"
        );
        crate::config::parse(std::path::Path::new("c.toml"), &text).unwrap()
    }

    #[test]
    fn check_config_warns_of_device_clocks_under_one_watermark() {
        let w = warnings(&parse(""));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("watermark = \"device\"") && w[0].contains("clock = \"corrected\""), "{w:?}");
        assert!(warnings(&parse("watermark = \"device\"\nidle_timeout = \"30s\"\n")).is_empty());
        assert!(warnings(&parse("clock = \"corrected\"\n")).is_empty());
        assert!(warnings(&parse("clock = \"receive\"\n")).is_empty());
        // per-device watermarks without idleness: a silent device holds the stream
        let w = warnings(&parse("watermark = \"device\"\n"));
        assert!(w.len() == 1 && w[0].contains("idle_timeout"), "{w:?}");
        assert!(describe(&parse("watermark = \"device\"\n")).contains("device watermarks"));
        // a key from a payload field (an order id) is no clock; a named device field is
        let keyed = |extra: &str| {
            let text = format!("[[stream]]\nname = \"o\"\ntopics = [\"shop/orders\"]\nkey = \"$.order_id\"\n{extra}values = [\"v\"]\n");
            warnings(&crate::config::parse(std::path::Path::new("c.toml"), &text).unwrap()).len()
        };
        assert_eq!(keyed(""), 0);
        assert_eq!(keyed("device = \"$.shop\"\n"), 1);
    }
}
