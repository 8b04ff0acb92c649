//! `sensors-sim`: simulated sensor fleets for edgejoin — devices with their
//! own rates, wrong and drifting clocks, delayed, reordered and duplicated
//! delivery — published to an MQTT broker in real time or as fast as it
//! takes, and/or recorded (docs/SEMANTICS.md §10, with the truth per message). And
//! `sensors-sim demo`: a broker, the simulator and the gateway in one
//! process, printing correlated results as they appear.

mod demo;

use sensors_sim::{gen, scenario};

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};

#[derive(Parser)]
#[command(
    name = "sensors-sim",
    version,
    about = "Simulated MQTT sensor fleets for edgejoin",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The scenario (TOML).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Publish to this broker (mqtt://host:port). Without it, only --record.
    #[arg(long)]
    broker: Option<String>,
    #[arg(long)]
    seed: Option<u64>,
    /// Publish as fast as the broker takes (timestamps still follow the simulated clock).
    #[arg(long)]
    fast: bool,
    /// Publish at this steady rate (messages per second) instead of in real
    /// time (timestamps still follow the simulated clock).
    #[arg(long, conflicts_with = "fast")]
    rate: Option<f64>,
    /// Override the scenario's duration ("10m").
    #[arg(long)]
    duration: Option<String>,
    /// Simulated start: "now" or RFC 3339 (default: the scenario's, else now).
    #[arg(long)]
    start: Option<String>,
    /// Write what was published, with the truth per message, as JSON lines.
    #[arg(long)]
    record: Option<PathBuf>,
    #[arg(long, short)]
    quiet: bool,
    /// QoS of the publishes (0 or 1).
    #[arg(long, default_value_t = 1)]
    qos: u8,
}

#[derive(Subcommand)]
enum Cmd {
    /// A minimal subscriber that only counts messages (the benchmark's baseline).
    Count {
        #[arg(long)]
        broker: String,
        #[arg(long, default_value = "#")]
        topic: String,
        /// Stop after this many messages.
        #[arg(long)]
        n: u64,
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// Write "ready" to stdout once subscribed.
        #[arg(long)]
        announce: bool,
    },
    /// A broker (embedded, or --broker), the simulator and the gateway together, printing results.
    Demo {
        /// Use this broker instead of the embedded one.
        #[arg(long)]
        broker: Option<String>,
        /// The scenario to simulate.
        #[arg(long, default_value = "config/scenarios/demo.toml")]
        scenario: PathBuf,
        /// The gateway config that joins it.
        #[arg(long, default_value = "config/scenarios/demo-gateway.toml")]
        gateway: PathBuf,
    },
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Some(Cmd::Demo { broker, scenario, gateway }) => demo::run(broker, &scenario, &gateway),
        Some(Cmd::Count { broker, topic, n, qos, announce }) => count(&broker, &topic, n, qos, announce),
        None => run(cli.run),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sensors-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Counts messages; prints `<n> messages in <s> s = <rate>/s` (first to last
/// message), then `last_message_unix_us <t>`.
fn count(url: &str, topic: &str, n: u64, qos: u8, announce: bool) -> Result<(), String> {
    let (host, port) = host_port(url)?;
    let mut o = MqttOptions::new(format!("counter-{}", std::process::id()), host, port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_keep_alive(Duration::from_secs(60));
    let (client, mut conn) = Client::new(o, 1000);
    let q = if qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
    client.subscribe(topic, q).map_err(|e| e.to_string())?;
    let mut got = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut last_wall = SystemTime::now();
    loop {
        // give up after 10 s without a message once they flow (QoS 0 may lose some); before
        // the first, wait longer: a benchmark may hold this process stopped while it publishes
        let idle = if first.is_some() { Duration::from_secs(10) } else { Duration::from_secs(120) };
        let ev = match conn.recv_timeout(idle) {
            Ok(ev) => ev,
            Err(_) => break,
        };
        match ev.map_err(|e| e.to_string())? {
            Event::Incoming(Incoming::SubAck(_)) if announce => {
                println!("ready");
                let _ = std::io::stdout().flush();
            }
            Event::Incoming(Incoming::Publish(_)) => {
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                last_wall = SystemTime::now();
                got += 1;
                if got >= n {
                    break;
                }
            }
            _ => {}
        }
    }
    let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    println!("{got} messages in {secs:.3} s = {:.0}/s", got as f64 / secs.max(1e-9));
    // for scripts timing a drain: when the last message arrived (Unix µs)
    println!("last_message_unix_us {}", last_wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros()));
    Ok(())
}

/// Parses "now" or an RFC 3339 time.
fn start_ms(s: Option<&str>) -> Result<i64, String> {
    match s {
        None | Some("now") => Ok(now_ms()),
        Some(t) => edgejoin_engine::decode::rfc3339_to_ms(t.as_bytes())
            .map_err(|_| format!("start `{t}`: not RFC 3339")),
    }
}

fn run(a: RunArgs) -> Result<(), String> {
    let path = a.config.ok_or("--config SCENARIO is required (or `sensors-sim demo`)")?;
    let mut sc = scenario::load(&path)?;
    if let Some(d) = &a.duration {
        sc.scenario.duration = d.clone();
    }
    if a.broker.is_none() && a.record.is_none() {
        return Err("nothing to do: give --broker to publish and/or --record to write a recording".into());
    }
    if a.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate: a positive number of messages per second".into());
    }
    let real_time = a.broker.is_some() && !a.fast && a.rate.is_none();
    let start =
        if real_time { now_ms() } else { start_ms(a.start.as_deref().or(sc.scenario.start.as_deref()))? };
    let seed = a.seed.or(sc.scenario.seed).unwrap_or(1);
    let msgs = gen::generate(&sc, start, seed)?;
    if let Some(rec) = &a.record {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(rec).map_err(|e| format!("{}: {e}", rec.display()))?,
        );
        for m in &msgs {
            writeln!(f, "{}", gen::record_line(m)).map_err(|e| e.to_string())?;
        }
        f.flush().map_err(|e| e.to_string())?;
    }
    if let Some(url) = &a.broker {
        let progress = !a.quiet && std::io::stderr().is_terminal();
        let pace = match a.rate {
            Some(r) => Pace::Rate(r),
            None if real_time => Pace::RealTime,
            None => Pace::Fast,
        };
        publish_qos(url, &msgs, pace, progress, a.qos)?;
    }
    if !a.quiet {
        eprintln!("sensors-sim: {} messages from scenario `{}` (seed {seed})", msgs.len(), sc.scenario.name);
    }
    Ok(())
}

/// A broker url's host and port.
pub fn host_port(url: &str) -> Result<(String, u16), String> {
    let b = edgejoin::config::Broker::parse(url)?;
    if b.tls {
        return Err("the simulator publishes over plain mqtt://".into());
    }
    Ok((b.host, b.port))
}

/// Publishes with QoS 1 in order; real time waits for each message's arrival time.
pub fn publish(url: &str, msgs: &[gen::Msg], real_time: bool, progress: bool) -> Result<(), String> {
    publish_qos(url, msgs, if real_time { Pace::RealTime } else { Pace::Fast }, progress, 1)
}

/// When messages are published.
#[derive(Clone, Copy)]
pub enum Pace {
    /// At each message's simulated arrival time.
    RealTime,
    /// As fast as the broker takes them.
    Fast,
    /// At a steady rate (messages per second).
    Rate(f64),
}

/// Publishes in order with the given pace and QoS (0 or 1).
pub fn publish_qos(url: &str, msgs: &[gen::Msg], pace: Pace, progress: bool, qos: u8) -> Result<(), String> {
    let q = if qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
    let (host, port) = host_port(url)?;
    let mut o = MqttOptions::new(format!("sensors-sim-{}", std::process::id()), host, port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = Client::new(o, 1000);
    let (acks_tx, acks_rx) = mpsc::channel::<()>();
    let (err_tx, err_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut failures = 0;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Incoming::PubAck(_))) => {
                    failures = 0;
                    if acks_tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    if failures > 50 {
                        let _ = err_tx.send(format!("broker {e}"));
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    });
    let wall0 = now_ms();
    let sim0 = msgs.first().map_or(0, |m| m.recv_ms);
    let started = Instant::now();
    let mut per_topic: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut last_report = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        if let Ok(e) = err_rx.try_recv() {
            return Err(e);
        }
        match pace {
            Pace::RealTime => {
                let due = wall0 + (m.recv_ms - sim0);
                let wait = due - now_ms();
                if wait > 0 {
                    std::thread::sleep(Duration::from_millis(wait as u64));
                }
            }
            Pace::Rate(r) => {
                let due = started + Duration::from_secs_f64(i as f64 / r);
                let now = Instant::now();
                if due > now + Duration::from_micros(500) {
                    std::thread::sleep(due - now);
                }
            }
            Pace::Fast => {}
        }
        client.publish(m.topic.clone(), q, false, m.payload.clone()).map_err(|e| e.to_string())?;
        let stream = m.topic.rsplit('/').next().unwrap_or("").to_string();
        *per_topic.entry(stream).or_default() += 1;
        if progress && last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let rate = (i + 1) as f64 / started.elapsed().as_secs_f64().max(1e-3);
            let streams: Vec<String> = per_topic.iter().map(|(k, v)| format!("{k} {v}")).collect();
            eprint!("\rsent {}/{} ({rate:.0}/s)  {}   ", i + 1, msgs.len(), streams.join("  "));
        }
    }
    let expected_acks = if qos == 0 { 0 } else { msgs.len() };
    for _ in 0..expected_acks {
        match acks_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(()) => {}
            Err(_) => return Err("the broker stopped acknowledging".into()),
        }
    }
    if progress {
        eprintln!();
    }
    let _ = client.disconnect();
    Ok(())
}
