//! `edgejoin record`: captures the messages of the config's stream topics
//! from its source broker (its credentials and TLS) as a recording in the
//! replay format — one `{"recv_ms","topic","payload"}` line per message
//! (`payload_b64` when not UTF-8) — for `edgejoin replay` and for tests.
//! A separate clean session: the gateway's own session is not disturbed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use rumqttc::QoS;

use super::subscriber::{self, Stopped, Subscription};

use crate::config::{self, units};

/// One recorded message as a replay line.
pub fn line(recv_ms: i64, topic: &str, payload: &[u8]) -> String {
    let v = match std::str::from_utf8(payload) {
        Ok(text) => serde_json::json!({ "recv_ms": recv_ms, "topic": topic, "payload": text }),
        Err(_) => serde_json::json!({
            "recv_ms": recv_ms,
            "topic": topic,
            "payload_b64": base64::engine::general_purpose::STANDARD.encode(payload),
        }),
    };
    v.to_string()
}

pub fn run(
    path: &Path,
    duration: &str,
    output: &Path,
    max: Option<u64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let c = config::load(path)?;
    let ms = units::parse_duration_ms(duration).map_err(|e| format!("--duration: {e}"))?;
    if ms <= 0 {
        return Err("--duration: must be positive".into());
    }
    let src = &c.deployment.source;
    let filters = c.plan.topic_filters();
    if filters.is_empty() {
        return Err("the config has no MQTT stream topics to record".into());
    }
    let mut out: Box<dyn Write> = if output == Path::new("-") {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        let f = File::create(output).map_err(|e| format!("{}: {e}", output.display()))?;
        Box::new(BufWriter::new(f))
    };
    let sub = Subscription {
        name: "record",
        url: &src.url,
        broker: &src.broker,
        credentials: &src.credentials,
        tls: src.tls.as_ref(),
        filters: &filters,
        qos: QoS::AtLeastOnce,
    };
    let subscribed = || {
        eprintln!(
            "recording {} from {} for {} into {} (Ctrl-C stops early)",
            filters.join(", "),
            src.url,
            units::format_duration_ms(ms),
            output.display()
        )
    };
    let mut n = 0u64;
    let why = subscriber::run(&sub, Some(Duration::from_millis(ms as u64)), subscribed, |m| {
        writeln!(out, "{}", line(crate::service::now_ms(), &m.topic, &m.payload))?;
        n += 1;
        Ok(max.is_none_or(|max| n < max))
    })?;
    out.flush().map_err(|e| format!("{}: {e}", output.display()))?;
    let why = match why {
        Stopped::Interrupted => "interrupted",
        Stopped::TimeUp => "the duration is over",
        Stopped::Done => "the message count is reached",
    };
    eprintln!("recorded {n} messages into {} ({why})", output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_the_replay_format() {
        assert_eq!(line(5, "a/b", br#"{"ts":1}"#), r#"{"payload":"{\"ts\":1}","recv_ms":5,"topic":"a/b"}"#);
        assert_eq!(line(5, "a", &[0xff, 0]), r#"{"payload_b64":"/wA=","recv_ms":5,"topic":"a"}"#);
    }
}
