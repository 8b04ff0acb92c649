//! The MQTT subscriber `tail` and `record` share: a clean session to one of
//! the config's brokers (its credentials and TLS), subscribed again on every
//! connection, retrying a failed connection each second, until Ctrl-C, a
//! time limit, or the message handler says it is done.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, Publish, QoS, SubscribeFilter};

use crate::config::{Broker, Credentials, TlsFiles};

/// Which broker, how to log in, what to subscribe to.
pub struct Subscription<'a> {
    /// Names the client (`edgejoin-<name>-<pid>`).
    pub name: &'a str,
    pub url: &'a str,
    pub broker: &'a Broker,
    pub credentials: &'a Option<Credentials>,
    pub tls: Option<&'a TlsFiles>,
    pub filters: &'a [String],
    pub qos: QoS,
}

/// Why the subscriber stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    Interrupted,
    TimeUp,
    /// The handler returned `Ok(false)`.
    Done,
}

/// Runs the subscriber: `subscribed()` once the broker confirmed the
/// subscription, `on_message` for every message (`Ok(false)` stops).
pub fn run(
    s: &Subscription<'_>,
    limit: Option<Duration>,
    mut subscribed: impl FnMut(),
    mut on_message: impl FnMut(Publish) -> std::io::Result<bool>,
) -> Result<Stopped, Box<dyn std::error::Error>> {
    let opts = crate::service::client_options(
        &format!("edgejoin-{}-{}", s.name, std::process::id()),
        s.broker,
        s.credentials,
        s.tls,
    )?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (client, mut events) = AsyncClient::new(opts, 16);
        let deadline = tokio::time::sleep(limit.unwrap_or(Duration::MAX));
        tokio::pin!(deadline);
        let why = loop {
            let ev = tokio::select! {
                ev = events.poll() => ev,
                _ = &mut deadline, if limit.is_some() => break Stopped::TimeUp,
                _ = tokio::signal::ctrl_c() => break Stopped::Interrupted,
            };
            match ev {
                Ok(Event::Incoming(Incoming::Publish(m))) => {
                    if !on_message(m)? {
                        break Stopped::Done;
                    }
                }
                // a clean session: subscribe on every connection
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    let subs = s.filters.iter().map(|f| SubscribeFilter::new(f.clone(), s.qos));
                    client.subscribe_many(subs).await?;
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => subscribed(),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{}: {e}; retrying", s.url);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let _ = client.try_disconnect();
        Ok(why)
    })
}
