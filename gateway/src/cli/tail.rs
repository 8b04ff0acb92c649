//! `edgejoin tail`: the results a gateway publishes, as they arrive, read
//! from its upstream broker with the config's own connection settings
//! (credentials, TLS) under its `topic_prefix`; one line each
//! ([`super::show`]) or the JSON rows as published (`--json`).

use std::io::Write;
use std::path::Path;

use rumqttc::{AsyncClient, Event, Incoming, QoS};

use crate::config;

pub fn run(path: &Path, json: bool, stats: bool) -> Result<(), Box<dyn std::error::Error>> {
    let c = config::load(path)?;
    let up = &c.deployment.upstream;
    let opts = crate::service::client_options(
        &format!("edgejoin-tail-{}", std::process::id()),
        &up.broker,
        &up.credentials,
        up.tls.as_ref(),
    )?;
    let filter = format!("{}/#", up.topic_prefix);
    let stats_topic = format!("{}/{}", up.topic_prefix, c.deployment.service.stats_topic);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let (client, mut events) = AsyncClient::new(opts, 16);
        let mut out = std::io::stdout().lock();
        loop {
            let ev = tokio::select! {
                ev = events.poll() => ev,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            match ev {
                Ok(Event::Incoming(Incoming::Publish(m))) => {
                    if m.topic == stats_topic && !stats {
                        continue;
                    }
                    let line = if json {
                        String::from_utf8_lossy(&m.payload).into_owned()
                    } else {
                        match serde_json::from_slice::<serde_json::Value>(&m.payload) {
                            Ok(v) if m.topic == stats_topic => format!("stats {v}"),
                            Ok(v) => super::show::describe(&v, crate::service::now_ms()),
                            Err(_) => format!("{}: {}", m.topic, String::from_utf8_lossy(&m.payload)),
                        }
                    };
                    // a closed pipe (`| head`) ends the tail
                    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        return Ok(());
                    }
                }
                // a clean session: subscribe on every connection
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    client.subscribe(&filter, QoS::AtMostOnce).await?
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    eprintln!("results published under {filter} on {} (times in UTC; Ctrl-C stops)", up.url)
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{}: {e}; retrying", up.url);
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    })
}
