//! `edgejoin tail`: the results a gateway publishes, as they arrive, read
//! from its upstream broker with the config's own connection settings
//! (credentials, TLS) under its `topic_prefix`; one line each
//! ([`super::show`]) or the JSON rows as published (`--json`).

use std::io::Write;
use std::path::Path;

use rumqttc::QoS;

use super::subscriber::{self, Subscription};
use crate::config;

pub fn run(path: &Path, json: bool, stats: bool) -> Result<(), Box<dyn std::error::Error>> {
    let c = config::load(path)?;
    let up = &c.deployment.upstream;
    let filters = [format!("{}/#", up.topic_prefix)];
    let stats_topic = format!("{}/{}", up.topic_prefix, c.deployment.service.stats_topic);
    let status_topic = format!("{}/status", up.topic_prefix);
    let sub = Subscription {
        name: "tail",
        url: &up.url,
        broker: &up.broker,
        credentials: &up.credentials,
        tls: up.tls.as_ref(),
        filters: &filters,
        qos: QoS::AtMostOnce,
    };
    let mut out = std::io::stdout().lock();
    let subscribed =
        || eprintln!("results published under {} on {} (times in UTC; Ctrl-C stops)", filters[0], up.url);
    subscriber::run(&sub, None, subscribed, |m| {
        if m.topic == stats_topic && !stats {
            return Ok(true);
        }
        let line = if m.topic == status_topic {
            // the gateway's presence (retained `online`, `offline` when it stops or is gone)
            format!("gateway {}", String::from_utf8_lossy(&m.payload))
        } else if json {
            String::from_utf8_lossy(&m.payload).into_owned()
        } else {
            match serde_json::from_slice::<serde_json::Value>(&m.payload) {
                Ok(v) if m.topic == stats_topic => format!("stats {v}"),
                Ok(v) => super::show::describe(&v, crate::service::now_ms()),
                Err(_) => format!("{}: {}", m.topic, String::from_utf8_lossy(&m.payload)),
            }
        };
        // a closed pipe (`| head`) ends the tail
        Ok(writeln!(out, "{line}").and_then(|_| out.flush()).is_ok())
    })?;
    Ok(())
}
