//! Offline replay of a recording (docs/SEMANTICS.md §10): each line's `recv_ms` is the
//! gateway clock, its `topic` and `payload` (or `payload_b64`) the message.
//! At the end of the input every watermark passes all data. Deterministic:
//! the same config and input give the same bytes.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;

use edgejoin_engine::engine::{Engine, Output, Sink};
use edgejoin_engine::event::Key;

use crate::clock_report::ClockTrace;
use edgejoin_engine::output::JsonEncoder;
use edgejoin_engine::Plan;

#[derive(Deserialize)]
struct Line {
    recv_ms: i64,
    topic: String,
    payload: Option<String>,
    payload_b64: Option<String>,
    /// What the simulator knows (`truth.ts`: the true event time), for the clock report.
    truth: Option<serde_json::Value>,
}

/// What the replay saw besides results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub lines: u64,
    pub messages: u64,
    /// Lines that are not a recorded message (counted, reported, skipped).
    pub bad_lines: u64,
    pub results: u64,
}

/// Writes each result as one JSON line; remembers the first write error;
/// traces corrected clocks when asked.
pub struct LineSink<'t, W: Write> {
    enc: JsonEncoder,
    out: W,
    err: Option<io::Error>,
    pub results: u64,
    trace: Option<&'t mut ClockTrace>,
    /// The true time of the message being ingested, if its line says.
    truth: Option<i64>,
}

impl<W: Write> LineSink<'_, W> {
    pub fn new(out: W) -> Self {
        LineSink { enc: JsonEncoder::new(), out, err: None, results: 0, trace: None, truth: None }
    }

    /// The first write error, if any.
    pub fn take_error(&mut self) -> io::Result<()> {
        self.err.take().map_or(Ok(()), Err)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Sink for LineSink<'_, W> {
    fn corrected(&mut self, device: &Key, device_ts: i64, recv_ms: i64, corrected: i64) {
        if let Some(t) = self.trace.as_deref_mut() {
            t.add(device.as_str(), device_ts, recv_ms, corrected, self.truth);
        }
    }

    fn emit(&mut self, p: &Plan, o: Output<'_>) {
        if self.err.is_some() {
            return;
        }
        let line = self.enc.encode(p, o);
        if let Err(e) = self.out.write_all(line).and_then(|_| self.out.write_all(b"\n")) {
            self.err = Some(e);
        }
        self.results += 1;
    }
}

/// Replays `input` through `engine`, writing one JSON result per line to
/// `out`. `on_bad_line(line_number, reason)` hears about unusable lines.
pub fn replay(
    engine: &mut Engine,
    input: impl BufRead,
    out: impl Write,
    trace: Option<&mut ClockTrace>,
    mut on_bad_line: impl FnMut(u64, &str),
) -> io::Result<ReplayStats> {
    let mut stats = ReplayStats::default();
    let mut sink = LineSink::new(io::BufWriter::new(out));
    sink.trace = trace;
    let mut input = input;
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if input.read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        stats.lines += 1;
        let Ok(line) = std::str::from_utf8(&raw) else {
            stats.bad_lines += 1;
            on_bad_line(stats.lines, "not UTF-8 (binary payloads go in `payload_b64`)");
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        let rec: Line = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                stats.bad_lines += 1;
                on_bad_line(stats.lines, &format!("not a recorded message: {e}"));
                continue;
            }
        };
        let payload: Vec<u8> = match (rec.payload, rec.payload_b64) {
            (Some(p), None) => p.into_bytes(),
            (None, Some(b)) => match base64::engine::general_purpose::STANDARD.decode(b.trim()) {
                Ok(v) => v,
                Err(e) => {
                    stats.bad_lines += 1;
                    on_bad_line(stats.lines, &format!("payload_b64 is not base64: {e}"));
                    continue;
                }
            },
            _ => {
                stats.bad_lines += 1;
                on_bad_line(stats.lines, "needs exactly one of `payload` or `payload_b64`");
                continue;
            }
        };
        if rec.recv_ms.unsigned_abs() > edgejoin_engine::decode::MAX_ABS_TS_MS.unsigned_abs() {
            stats.bad_lines += 1;
            on_bad_line(
                stats.lines,
                &format!(
                    "recv_ms {} is out of range (more than ±{} ms from 1970)",
                    rec.recv_ms,
                    edgejoin_engine::decode::MAX_ABS_TS_MS
                ),
            );
            continue;
        }
        stats.messages += 1;
        sink.truth = rec.truth.as_ref().and_then(|t| t.get("ts")).and_then(serde_json::Value::as_i64);
        engine.ingest(rec.recv_ms, &rec.topic, &payload, &mut sink);
        sink.take_error()?;
    }
    engine.flush(&mut sink);
    sink.take_error()?;
    stats.results = sink.results;
    sink.into_inner().flush()?;
    Ok(stats)
}

/// `edgejoin replay`: the recording at `input` (`-`: stdin) through the
/// engine, results to `output` (default stdout), counters on stderr with `stats`.
pub fn run(
    config: &Path,
    input: &Path,
    output: Option<&Path>,
    want_stats: bool,
    clock_report: Option<&Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    let c = crate::config::load(config)?;
    // replay needs no protection against crafted keys: a fixed seed keeps runs identical
    let mut engine = Engine::new(c.plan, 0x6564_67656a6f696e);
    let reader: Box<dyn io::BufRead> = if input.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(BufReader::new(File::open(input).map_err(|e| format!("{}: {e}", input.display()))?))
    };
    let writer: Box<dyn Write> = match output {
        Some(o) => Box::new(File::create(o).map_err(|e| format!("{}: {e}", o.display()))?),
        None => Box::new(io::stdout().lock()),
    };
    let mut reported = 0;
    let name = input.display().to_string();
    let mut trace = clock_report.map(|_| ClockTrace::history());
    let st = replay(&mut engine, reader, writer, trace.as_mut(), |line, why| {
        reported += 1;
        if reported <= 10 {
            eprintln!("edgejoin: {name}:{line}: skipped: {why}");
        }
    })?;
    if st.bad_lines > 10 {
        eprintln!("edgejoin: {name}: {} lines skipped in all", st.bad_lines);
    }
    if let (Some(dir), Some(trace)) = (clock_report, trace.as_mut()) {
        let reports = engine.skew_reports();
        trace.set_reports(reports.iter().map(|(n, r)| (n.as_str(), *r)));
        trace.write(dir)?;
        eprintln!(
            "edgejoin: clock report of {} devices in {}",
            trace.len(),
            dir.join("index.html").display()
        );
        if trace.is_empty() {
            eprintln!("edgejoin: no stream has `clock = \"corrected\"`: nothing to draw");
        }
    }
    if want_stats {
        let mut s = crate::service::metrics::engine_stats(&engine);
        s["replay"] = serde_json::json!({
            "lines": st.lines, "messages": st.messages, "bad_lines": st.bad_lines, "results": st.results,
        });
        eprintln!("{}", serde_json::to_string_pretty(&s)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_lines_are_skipped_with_their_numbers_and_the_rest_replays() {
        let cfg =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples/bucket.toml"))
                .unwrap();
        let p = crate::config::parse(std::path::Path::new("bucket.toml"), &cfg).unwrap().plan;
        let good =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples/bucket.jsonl")).unwrap();
        let mut input = Vec::new();
        // a line whose receive time is near i64::MIN (it used to spin forever), and one not UTF-8
        input.extend_from_slice(
            br#"{"recv_ms":-9223372036854775000,"topic":"home/kitchen/indoor","payload":"{\"ts\": 1699999800000, \"celsius\": 20}"}"#,
        );
        input.extend_from_slice(b"\n{\"recv_ms\":1,\"topic\":\"\xff\xfe\",\"payload\":\"x\"}\n");
        input.extend_from_slice(&good);
        let mut bad = Vec::new();
        let mut out = Vec::new();
        let mut e = Engine::new(p.clone(), 1);
        let st = replay(&mut e, &input[..], &mut out, None, |n, why| bad.push((n, why.to_string()))).unwrap();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert_eq!(bad[0].0, 1);
        assert!(bad[0].1.contains("out of range"), "{bad:?}");
        assert_eq!(bad[1].0, 2);
        assert!(bad[1].1.contains("UTF-8"), "{bad:?}");
        // the rest gives exactly what the recording alone gives
        let mut alone = Vec::new();
        let mut e = Engine::new(p, 1);
        replay(&mut e, &good[..], &mut alone, None, |_, _| {}).unwrap();
        assert_eq!(out, alone);
        assert_eq!(st.bad_lines, 2);
    }
}
