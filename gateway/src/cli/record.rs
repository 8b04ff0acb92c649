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
use rumqttc::{AsyncClient, Event, Incoming, QoS, SubscribeFilter};

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
    let mut filters: Vec<String> =
        c.plan.streams.iter().flat_map(|s| s.topics.iter().map(|t| t.filter().to_string())).collect();
    filters.sort();
    filters.dedup();
    if filters.is_empty() {
        return Err("the config has no MQTT stream topics to record".into());
    }
    let opts = crate::service::client_options(
        &format!("edgejoin-record-{}", std::process::id()),
        &src.broker,
        &src.credentials,
        src.tls.as_ref(),
    )?;
    let mut out: Box<dyn Write> = if output == Path::new("-") {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        let f = File::create(output).map_err(|e| format!("{}: {e}", output.display()))?;
        Box::new(BufWriter::new(f))
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (n, why) = rt.block_on(async {
        let (client, mut events) = AsyncClient::new(opts, 16);
        let deadline = tokio::time::sleep(Duration::from_millis(ms as u64));
        tokio::pin!(deadline);
        let mut n = 0u64;
        let why = loop {
            let ev = tokio::select! {
                ev = events.poll() => ev,
                _ = &mut deadline => break "the duration is over",
                _ = tokio::signal::ctrl_c() => break "interrupted",
            };
            match ev {
                Ok(Event::Incoming(Incoming::Publish(m))) => {
                    writeln!(out, "{}", line(crate::service::now_ms(), &m.topic, &m.payload))?;
                    n += 1;
                    if max.is_some_and(|max| n >= max) {
                        break "the message count is reached";
                    }
                }
                // a clean session: subscribe on every connection
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    let subs = filters.iter().map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    client.subscribe_many(subs).await?;
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => eprintln!(
                    "recording {} from {} for {} into {} (Ctrl-C stops early)",
                    filters.join(", "),
                    src.url,
                    units::format_duration_ms(ms),
                    output.display()
                ),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{}: {e}; retrying", src.url);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let _ = client.try_disconnect();
        Ok::<_, Box<dyn std::error::Error>>((n, why))
    })?;
    out.flush().map_err(|e| format!("{}: {e}", output.display()))?;
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
