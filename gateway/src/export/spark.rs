//! `edgejoin export spark`: a PySpark Structured Streaming job computing a config's pipeline —
//! per stream `withWatermark`, windows with `window(...)` / `session_window(...)`, rollups as the
//! guide's multi-level aggregation, every join strategy as a range join — and writing rows in
//! edgejoin's result format with the same ids. The job is this file's generated part (constants,
//! one function per stream, window and join, the outputs) after a fixed runtime
//! (`spark_runtime.py`: sources, the flush, payload decoding, rendering, the command line). Its
//! header lists every rule where Spark's semantics differ; docs/FLEET.md explains them.

use std::fmt::Write as _;

use edgejoin_engine::plan::{
    AggFunc, Clock, FieldRef, Format, Input, JoinDef, JoinType, LatePolicy, OverlapCondition, Plan, Strategy,
    StreamDef, TimeUnit, WatermarkMode, WindowDef, WindowKind,
};

use super::ExportError;
use crate::config::Config;

const RUNTIME: &str = include_str!("spark_runtime.py");

/// Sessions longer than this (default of `--max-session`, ms) may miss their partner in a session join.
pub const MAX_SESSION_MS: i64 = 86_400_000;

/// The rules where the job's results can differ from edgejoin's; the header prints them, the
/// comparison test (tests/tests/spark.rs) explains every difference by one of them.
pub const RULES: &[(&str, &str)] = &[
    (
        "R1 watermark",
        "Spark keeps one global watermark per query (the min over its streams) and moves it only between \
         micro-batches; edgejoin keeps one per stream and moves it with every event. So an event edgejoin \
         counts late can still enter Spark's windows and joins, and the reverse. Over a recording, the \
         data is one micro-batch: Spark drops nothing as late.",
    ),
    (
        "R2 late rows",
        "Spark drops late events without a trace: `late = \"route\"` rows (SPEC §9) are not produced.",
    ),
    (
        "R3 end of input",
        "Spark has no flush at the end of input. With --input the job adds one: a last micro-batch with one \
         event per stream in the year 9000, so every window, session and unmatched left closes as in \
         `edgejoin replay`. With Kafka there is no end: rows come out as the watermark passes.",
    ),
    (
        "R4 idleness",
        "Spark has no idle_timeout: a silent stream holds the global watermark, and so every output, \
         back until it speaks again.",
    ),
    (
        "R5 clocks",
        "No clock correction: clock = \"corrected\" falls back to device time (with the max_future clamp). \
         clock = \"receive\" uses each message's own receive time (edgejoin: the greatest so far; they differ \
         only where a recording's receive times go backwards).",
    ),
    ("R6 device watermarks", "watermark = \"device\" falls back to the stream's watermark."),
    ("R7 max_matches", "Spark has no max_matches: it emits every match of a left."),
    (
        "R8 bounds",
        "capacity, max_keys and max_devices do not apply: Spark's state grows with the data where edgejoin \
         evicts and counts.",
    ),
    (
        "R9 ties",
        "as-of (the latest right), first() and last() break ties by (event time, receive time); \
         edgejoin by arrival. Only events equal in both can differ. An as-of left is identified by its \
         key, time, receive time and values: two such equal lefts are one in Spark.",
    ),
    (
        "R10 float order",
        "sums and means of a stream's events add in the order Spark reads them; across several \
         micro-batches or partitions Spark adds partial sums, so a non-integral sum can differ in its last \
         bit, and then the row's id differs too. Over a recording read as one partition the order is \
         edgejoin's. stddev, and every fold of a rollup's records, runs over the values in edgejoin's \
         order (arrival; a rollup's records by start) and agrees to the bit.",
    ),
    ("R11 session joins", "a session join finds partners only for sessions up to --max-session long."),
    ("R12 emitted_ms", "emitted_ms is Spark's batch time (it is not part of the id)."),
    (
        "R13 payloads",
        "fields are read as text: a time sent as a JSON string of digits is read as a number (edgejoin: \
         as RFC 3339), a key sent as a JSON boolean is accepted, a leap second (:60) is refused.",
    ),
];

/// The job for `c`, read from `source` (its path, for the header).
pub fn job(c: &Config, source: &str) -> Result<String, ExportError> {
    let p = &c.plan;
    check(p)?;
    let mut o = String::new();
    header(&mut o, c, source);
    let _ = writeln!(o, "GATEWAY = {}", py(&c.deployment.gateway.id));
    let _ = writeln!(o, "TOPIC_PREFIX = {}", py(&c.deployment.upstream.topic_prefix));
    let names: Vec<String> = p.streams.iter().map(|s| py(&s.name)).collect();
    let _ = writeln!(o, "STREAMS = [{}]", names.join(", "));
    let _ = writeln!(o, "MAX_SESSION_MS = {MAX_SESSION_MS}");
    let _ = writeln!(o, "FLUSH_BATCHES = {}\n", depth(p) + 1);
    o.push_str(RUNTIME);
    o.push_str(
        "\n# ---------------------------------------------------------------------------\n\
         # The pipeline, generated from the config.\n\
         # ---------------------------------------------------------------------------\n",
    );
    for s in &p.streams {
        stream(&mut o, s);
    }
    let shifts = shifts(p);
    for (i, w) in p.windows.iter().enumerate() {
        window(&mut o, p, w, shifts[i]);
    }
    for j in &p.joins {
        join(&mut o, p, j, &shifts);
    }
    outputs(&mut o, p);
    o.push_str("\nif __name__ == \"__main__\":\n    sys.exit(main())\n");
    Ok(o)
}

/// Stateful operators on the longest path from a stream to an output (windows, joins, and the
/// as-of join's aggregation): the flush needs one micro-batch for each.
fn depth(p: &Plan) -> usize {
    let mut w: Vec<usize> = Vec::with_capacity(p.windows.len());
    let of = |w: &[usize], i: Input| match i {
        Input::Stream(_) => 0,
        Input::Window(x) => w[x],
    };
    for d in &p.windows {
        let x = of(&w, d.input) + 1;
        w.push(x);
    }
    let joins = p.joins.iter().map(|j| {
        of(&w, j.left).max(of(&w, j.right)) + if matches!(j.strategy, Strategy::Asof { .. }) { 2 } else { 1 }
    });
    joins.chain(w.iter().copied()).max().unwrap_or(0)
}

fn check(p: &Plan) -> Result<(), ExportError> {
    for s in &p.streams {
        if s.format == Format::Postcard {
            return Err(ExportError::Postcard { stream: s.name.clone() });
        }
    }
    for w in &p.windows {
        if let Input::Window(i) = w.input {
            if matches!(p.windows[i].kind, WindowKind::Session { .. }) {
                return Err(ExportError::RollupOfSession {
                    window: w.name.clone(),
                    input: p.windows[i].name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// A Python string literal (JSON's escapes are Python's).
fn py(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// A Spark SQL expression reading payload field `name` as text.
fn field(name: &str) -> String {
    format!("fields['{}']", name.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn ident(prefix: &str, name: &str) -> String {
    let mut s = String::from(prefix);
    s.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }));
    s
}

fn fn_name(p: &Plan, i: Input) -> String {
    match i {
        Input::Stream(s) => ident("stream_", &p.streams[s].name),
        Input::Window(w) => ident("window_", &p.windows[w].name),
    }
}

fn df_name(p: &Plan, i: Input) -> String {
    match i {
        Input::Stream(s) => ident("s_", &p.streams[s].name),
        Input::Window(w) => ident("w_", &p.windows[w].name),
    }
}

fn header(o: &mut String, c: &Config, source: &str) {
    let p = &c.plan;
    let _ = writeln!(o, "#!/usr/bin/env python3");
    let mut doc = format!(
        "edgejoin pipeline \"{}\" as a PySpark Structured Streaming job.\n\n\
         Generated by `edgejoin export spark` {} from {source}; edit the config and export again\n\
         rather than editing this file. docs/FLEET.md explains the rules below.\n\n\
         Run over a recording in the replay format (processes it, then stops):\n\
         \x20   spark-submit job.py --input events.jsonl --output DIR     (or python3 job.py … with pyspark)\n\
         Rows land as JSON lines in DIR/<output>/part-*.txt, one subdirectory per output.\n\
         Run against Kafka (one Kafka topic per stream, the record key = the MQTT topic):\n\
         \x20   spark-submit --packages org.apache.spark:spark-sql-kafka-0-10_2.13:<spark version> job.py \\\n\
         \x20       --kafka-bootstrap HOST:PORT {} --output-topic T\n\
         Needs pyspark >= 3.5 (tested with 4.3) and the xxhash package (ids) on driver and executors.\n\n\
         Outputs: {}.\n\n\
         Where Spark's semantics differ from edgejoin's (rows and ids are otherwise the same):\n",
        c.deployment.gateway.id,
        env!("CARGO_PKG_VERSION"),
        p.streams.iter().map(|s| format!("--topic {}=KAFKA_TOPIC", s.name)).collect::<Vec<_>>().join(" "),
        output_names(p).join(", "),
    );
    for (name, text) in RULES {
        let _ = writeln!(doc, "  {name}: {}", wrap(text, 96, "      ", name.len() + 4));
    }
    let notes = notes(p);
    if !notes.is_empty() {
        doc.push_str("\nIn this pipeline:\n");
        for n in notes {
            let _ = writeln!(doc, "  - {}", wrap(&n, 96, "    ", 4));
        }
    }
    let _ = writeln!(o, "\"\"\"{}\"\"\"\n", doc.replace('\\', "\\\\").replace("\"\"\"", "\\\"\\\"\\\""));
}

/// `text` folded at `width` columns, continuation lines indented; the first line starts at `first`.
fn wrap(text: &str, width: usize, indent: &str, first: usize) -> String {
    let mut out = String::new();
    let mut line = first;
    let mut empty = true;
    for w in text.split_whitespace() {
        if !empty && line + 1 + w.len() > width {
            out.push('\n');
            out.push_str(indent);
            line = indent.len();
        } else if !empty {
            out.push(' ');
            line += 1;
        }
        out.push_str(w);
        line += w.len();
        empty = false;
    }
    out
}

/// The rules that apply to this config in particular.
fn notes(p: &Plan) -> Vec<String> {
    let mut n = Vec::new();
    for s in &p.streams {
        match s.clock {
            Clock::Corrected => n.push(format!(
                "R5: stream \"{}\" corrects its clocks on the gateway; here it uses device time",
                s.name
            )),
            Clock::Receive => n.push(format!("R5: stream \"{}\" uses receive time", s.name)),
            Clock::Device => {}
        }
        if s.watermark == WatermarkMode::Device {
            n.push(format!("R6: stream \"{}\" has per-device watermarks; here one for the stream", s.name));
        }
        if matches!(s.late, LatePolicy::Route(_)) {
            n.push(format!("R2: stream \"{}\" routes its late events; Spark does not", s.name));
        }
        if s.idle_timeout_ms.is_some() {
            n.push(format!("R4: stream \"{}\" has an idle_timeout; Spark waits for it", s.name));
        }
    }
    for j in &p.joins {
        if matches!(j.strategy, Strategy::Tolerance { .. }) {
            n.push(format!(
                "R7: join \"{}\" keeps at most {} matches per left; Spark keeps all",
                j.name, j.max_matches
            ));
        }
        if matches!(j.strategy, Strategy::Session { .. }) {
            n.push(format!("R11: join \"{}\" joins sessions", j.name));
        }
    }
    n
}

fn output_names(p: &Plan) -> Vec<String> {
    let mut v: Vec<String> = p.windows.iter().filter(|w| w.emit.is_some()).map(|w| w.name.clone()).collect();
    v.extend(p.joins.iter().map(|j| j.name.clone()));
    v
}

fn stream(o: &mut String, s: &StreamDef) {
    let _ = writeln!(o, "\n\ndef {}(raw):", ident("stream_", &s.name));
    let topics: Vec<&str> = s.topics.iter().map(|t| t.text()).collect();
    let _ = writeln!(
        o,
        "    \"\"\"stream {}: {}; lateness {} ms.\"\"\"",
        py(&s.name).replace('\\', "\\\\"),
        topics.join(", ").replace('\\', "\\\\").replace('"', "'"),
        s.lateness_ms
    );
    let _ = writeln!(o, "    topic = F.col(\"topic\")");
    let mut matched = Vec::new();
    for (i, t) in s.topics.iter().enumerate() {
        let (re, _) = t.regex();
        let _ = writeln!(o, "    p{i} = {}", py(&re));
        matched.push(format!("topic.rlike(p{i})"));
    }
    let _ = writeln!(o, "    matched = {}", matched.join(" | "));
    let key = match &s.key {
        FieldRef::Capture { index_per_topic, .. } => {
            let mut k = String::from("F");
            for (i, t) in s.topics.iter().enumerate() {
                let (_, groups) = t.regex();
                let g = groups[index_per_topic[i]];
                let _ = write!(k, ".when(topic.rlike(p{i}), F.regexp_extract(\"topic\", p{i}, {g}))");
            }
            k
        }
        FieldRef::Payload(f) => format!("F.expr({})", py(&field(f))),
        FieldRef::Constant => "F.lit(\"\")".into(),
    };
    let _ = writeln!(o, "    key = {key}");
    let ts = match (s.format, s.clock) {
        (Format::Number, _) | (_, Clock::Receive) => "F.col(\"recv_ms\")".to_string(),
        _ => {
            let unit = match s.time_unit {
                TimeUnit::S => "s",
                TimeUnit::Ms => "ms",
                TimeUnit::Us => "us",
                TimeUnit::Ns => "ns",
                TimeUnit::Rfc3339 => "rfc3339",
            };
            format!("device_time(time_ms({}, \"{unit}\"), {})", py(&field(&s.time_field)), s.max_future_ms)
        }
    };
    let _ = writeln!(o, "    ts = {ts}");
    let values: Vec<String> = match s.format {
        Format::Number => vec!["number(\"payload\")".into()],
        _ => s.values.iter().map(|v| format!("number({})", py(&field(v)))).collect(),
    };
    let _ = writeln!(o, "    values = [{}]  # {}", values.join(", "), s.values.join(", "));
    let _ =
        writeln!(o, "    return decode(raw, {}, matched, key, ts, values, {})", py(&s.name), s.lateness_ms);
}

/// Per window, how far its Spark event time runs ahead of the true one (µs): 0 over a stream;
/// over another window's results, Spark's `window_time` (end − 1 µs) instead of the start.
fn shifts(p: &Plan) -> Vec<i64> {
    let mut v: Vec<i64> = Vec::with_capacity(p.windows.len());
    for w in &p.windows {
        let s = match w.input {
            Input::Stream(_) => 0,
            Input::Window(i) => match p.windows[i].kind {
                WindowKind::Fixed { size_ms, .. } => v[i] + size_ms * 1000 - 1,
                WindowKind::Session { .. } => unreachable!("refused by check"),
            },
        };
        v.push(s);
    }
    v
}

fn agg_expr(w: &WindowDef, a: &edgejoin_engine::plan::AggDef) -> String {
    let col = a.field.map(|f| format!("\"v{f}\"")).unwrap_or_default();
    // a rollup's records reach Spark in its state store's order: order-dependent folds sort them
    let by_time = if matches!(w.input, Input::Window(_)) { "True" } else { "False" };
    match a.func {
        AggFunc::Count if a.field.is_none() => "F.count(F.lit(1))".into(),
        AggFunc::Count => format!("F.count({col})"),
        AggFunc::Sum => format!("sum_in_order({col}, {by_time})"),
        AggFunc::Min => format!("F.min({col})"),
        AggFunc::Max => format!("F.max({col})"),
        AggFunc::Mean => format!("mean_in_order({col}, {by_time})"),
        AggFunc::First => format!("first_by_time({col})"),
        AggFunc::Last => format!("last_by_time({col})"),
        AggFunc::Stddev => format!("stddev_welford({col}, {by_time})"),
    }
}

fn window(o: &mut String, p: &Plan, w: &WindowDef, shift: i64) {
    let input = df_name(p, w.input);
    let _ = writeln!(o, "\n\ndef {}({input}):", ident("window_", &w.name));
    let aggs: Vec<String> = w.aggregates.iter().map(|a| format!("{} = {}", a.name, a.func.name())).collect();
    let _ = writeln!(
        o,
        "    \"\"\"window {}: {}.\"\"\"",
        py(&w.name).replace('\\', "\\\\"),
        aggs.join(", ").replace('"', "'")
    );
    let ev = match w.input {
        Input::Stream(_) => input.clone(),
        Input::Window(i) => {
            let _ = writeln!(o, "    ev = records({input}, {})", p.windows[i].aggregates.len());
            "ev".into()
        }
    };
    let win = match w.kind {
        WindowKind::Fixed { size_ms, slide_ms, offset_ms } => {
            format!("fixed_window({size_ms}, {slide_ms}, {offset_ms}, {shift})")
        }
        WindowKind::Session { gap_ms } => {
            format!("F.session_window(\"et\", \"{} microseconds\")", gap_ms * 1000)
        }
    };
    let exprs: Vec<String> = w.aggregates.iter().map(|a| agg_expr(w, a)).collect();
    let _ = writeln!(o, "    return aggregate({ev}, {win}, [{}], {shift})", exprs.join(", "));
}

/// `et − end` of a window's results in µs (`shift − 1`); 0 for a stream (`et = ts`).
fn et_offset(i: Input, shifts: &[i64]) -> i64 {
    match i {
        Input::Stream(_) => 0,
        Input::Window(w) => shifts[w] - 1,
    }
}

fn size_of(p: &Plan, i: Input) -> i64 {
    match i {
        Input::Window(w) => match p.windows[w].kind {
            WindowKind::Fixed { size_ms, .. } => size_ms,
            WindowKind::Session { .. } => 0,
        },
        Input::Stream(_) => 0,
    }
}

fn join(o: &mut String, p: &Plan, j: &JoinDef, shifts: &[i64]) {
    let (l, r) = (df_name(p, j.left), df_name(p, j.right));
    let _ = writeln!(o, "\n\ndef {}({l}, {r}, args):", ident("join_", &j.name));
    let kind = match j.kind {
        JoinType::Inner => "inner",
        JoinType::LeftOuter => "left_outer",
    };
    let _ = writeln!(
        o,
        "    \"\"\"join {}: {} {kind}.\"\"\"",
        py(&j.name).replace('\\', "\\\\"),
        j.strategy.name()
    );
    // r_et − l_et = (r.end − l.end) + d, for windows; r.ts − l.ts for streams
    let d = et_offset(j.right, shifts) - et_offset(j.left, shifts);
    let (ls, rs) = (size_of(p, j.left) * 1000, size_of(p, j.right) * 1000);
    match j.strategy {
        Strategy::Tolerance { lower_ms, upper_ms } => {
            let _ = writeln!(o, "    # lower <= right.ts - left.ts <= upper, both inclusive");
            let _ = writeln!(
                o,
                "    return spark_join({l}, {r}, et_between({}, {}), \"{kind}\")",
                lower_ms * 1000,
                upper_ms * 1000
            );
        }
        Strategy::Asof { tolerance_ms } => {
            let _ = writeln!(o, "    return asof_join({l}, {r}, {tolerance_ms}, \"{kind}\")");
        }
        Strategy::Bucket => {
            let _ = writeln!(o, "    # the same bucket: equal start (both windows have one size and offset)");
            let _ = writeln!(o, "    return spark_join({l}, {r}, et_between({d}, {d}), \"{kind}\")");
        }
        Strategy::Overlap { condition } => {
            match condition {
                OverlapCondition::ContainedStart => {
                    let _ = writeln!(
                        o,
                        "    # the guide's rule: left.start in [right.start, right.end), as a range of"
                    );
                    let _ = writeln!(
                        o,
                        "    # r_et - l_et (Spark evicts state by it; start columns in it break Spark 4.3)"
                    );
                    let _ = writeln!(o, "    cond = et_between({}, {})", d - ls + 1, d + rs - ls);
                }
                OverlapCondition::Overlaps => {
                    let _ = writeln!(
                        o,
                        "    # the intervals intersect (touching ones do not), as a range of r_et - l_et"
                    );
                    let _ = writeln!(o, "    cond = et_between({}, {})", d - ls + 1, d + rs - 1);
                }
            }
            let _ = writeln!(o, "    return spark_join({l}, {r}, cond, \"{kind}\")");
        }
        Strategy::Session { tolerance_ms } => {
            let _ = writeln!(o, "    # the sessions intersect, each widened by tolerance");
            let _ = writeln!(o, "    tol = {tolerance_ms}");
            let _ = writeln!(
                o,
                "    cond = opaque((F.col(\"l_start\") - tol < F.col(\"r_end\")) & (F.col(\"r_start\") < F.col(\"l_end\") + tol))"
            );
            let _ = writeln!(o, "    reach = (args.max_session + tol) * 1000  # R11");
            let _ = writeln!(o, "    cond = cond & et_between({d} - reach, {d} + reach)");
            let _ = writeln!(o, "    return spark_join({l}, {r}, cond, \"{kind}\")");
        }
    }
}

fn side_spec(p: &Plan, i: Input) -> String {
    match i {
        Input::Stream(s) => {
            let d = &p.streams[s];
            let names: Vec<String> = d.values.iter().map(|v| py(v)).collect();
            format!("(\"stream\", {}, [{}])", py(&d.name), names.join(", "))
        }
        Input::Window(w) => {
            let d = &p.windows[w];
            let names: Vec<String> = d.aggregates.iter().map(|a| py(&a.name)).collect();
            format!("(\"window\", {}, [{}])", py(&d.name), names.join(", "))
        }
    }
}

fn outputs(o: &mut String, p: &Plan) {
    let _ = writeln!(o, "\n\ndef outputs(raw, args):");
    let _ = writeln!(o, "    \"\"\"Every output of the pipeline: name -> DataFrame of (topic, value).\"\"\"");
    for (i, _) in p.streams.iter().enumerate() {
        let _ = writeln!(o, "    {} = {}(raw)", df_name(p, Input::Stream(i)), fn_name(p, Input::Stream(i)));
    }
    for (i, w) in p.windows.iter().enumerate() {
        let _ = writeln!(
            o,
            "    {} = {}({})",
            df_name(p, Input::Window(i)),
            fn_name(p, Input::Window(i)),
            df_name(p, w.input)
        );
    }
    let _ = writeln!(o, "    out = {{}}");
    for (i, w) in p.windows.iter().enumerate() {
        if let Some(t) = &w.emit {
            let names: Vec<String> = w.aggregates.iter().map(|a| py(&a.name)).collect();
            let _ = writeln!(
                o,
                "    out[{}] = window_rows({}, {}, [{}], {})",
                py(&w.name),
                df_name(p, Input::Window(i)),
                py(&w.name),
                names.join(", "),
                py(t.text())
            );
        }
    }
    for j in &p.joins {
        let _ = writeln!(
            o,
            "    out[{}] = join_rows({}({}, {}, args), {}, {}, {}, {})",
            py(&j.name),
            ident("join_", &j.name),
            df_name(p, j.left),
            df_name(p, j.right),
            py(&j.name),
            side_spec(p, j.left),
            side_spec(p, j.right),
            py(j.topic.text())
        );
    }
    let _ = writeln!(o, "    return out");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(std::path::Path::new("t.toml"), text).unwrap()
    }

    const TWO: &str = r#"
[gateway]
id = "t"
[[stream]]
name = "a"
topics = ["x/{k}/a", "y/+/{k}/#"]
key = "{k}"
values = ["v"]
[[stream]]
name = "b"
topics = ["x/{k}/b"]
key = "{k}"
values = ["w"]
"#;

    #[test]
    fn what_spark_cannot_express_is_refused_with_the_reason() {
        let c = config(&TWO.replace("values = [\"w\"]", "values = [\"w\"]\nformat = \"postcard\""));
        let e = job(&c, "t.toml").unwrap_err();
        assert_eq!(e, ExportError::Postcard { stream: "b".into() });
        assert!(e.to_string().contains("format = \"postcard\" cannot be exported"), "{e}");
        let c = config(&format!(
            "{TWO}[[window]]\nname = \"s\"\ninput = \"a\"\ngap = \"1m\"\naggregates = {{ n = \"count()\" }}\n\
             [[window]]\nname = \"r\"\ninput = \"s\"\nsize = \"5m\"\naggregates = {{ n = \"sum(n)\" }}\ntopic = \"w/{{key}}\"\n"
        ));
        let e = job(&c, "t.toml").unwrap_err();
        assert_eq!(e, ExportError::RollupOfSession { window: "r".into(), input: "s".into() });
    }

    #[test]
    fn every_pattern_and_capture_of_a_stream_is_read() {
        let j = job(&config(TWO), "t.toml").unwrap();
        // both patterns, each with its capture's group
        assert!(j.contains(r#"p0 = "^x/([^/]*)/a$""#), "{j}");
        assert!(j.contains(r#"p1 = "^y/[^/]*/([^/]*)(?:/.*)?$""#), "{j}");
        assert!(j.contains("F.when(topic.rlike(p0), F.regexp_extract(\"topic\", p0, 1)).when(topic.rlike(p1), F.regexp_extract(\"topic\", p1, 1))"), "{j}");
        assert!(j.contains("GATEWAY = \"t\"") && j.contains("STREAMS = [\"a\", \"b\"]"), "{j}");
        // the header reads in a terminal: its rules folded under 100 columns
        let header = &j[..j.find("\"\"\"\n\nGATEWAY").unwrap()];
        assert!(header.lines().all(|l| l.chars().count() <= 100), "{header}");
        assert!(header.contains("R10 float order:") && header.contains("R13 payloads:"));
    }

    #[test]
    fn the_flush_has_a_micro_batch_per_stateful_operator() {
        let j = format!(
            "{TWO}[[window]]\nname = \"m1\"\ninput = \"a\"\nsize = \"1m\"\naggregates = {{ n = \"count()\" }}\n\
             [[window]]\nname = \"m5\"\ninput = \"m1\"\nsize = \"5m\"\naggregates = {{ n = \"sum(n)\" }}\n\
             [[window]]\nname = \"b5\"\ninput = \"b\"\nsize = \"5m\"\naggregates = {{ n = \"count()\" }}\n\
             [[join]]\nname = \"j\"\nstrategy = \"bucket\"\nleft = \"m5\"\nright = \"b5\"\n"
        );
        let c = config(&j);
        assert_eq!(depth(&c.plan), 3, "window, rollup, join");
        let out = job(&c, "t.toml").unwrap();
        assert!(out.contains("FLUSH_BATCHES = 4\n"));
        // the rollup's windows are shifted by the 1-minute windows' window_time (end - 1 µs)
        assert!(out.contains("fixed_window(300000, 300000, 0, 59999999)"), "{out}");
        // the bucket join: equal start, as a range of event times (the rollup's run 1 min − 1 µs ahead)
        assert!(out.contains("et_between(-59999999, -59999999)"), "{out}");
    }
}
