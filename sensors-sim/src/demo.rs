//! `sensors-sim demo`: an MQTT broker (embedded rumqttd, or `--broker`),
//! the simulator publishing a scenario in real time, and the edgejoin
//! gateway, all in this process; correlated results are printed as the
//! gateway publishes them. Ctrl-C stops everything.

use std::path::Path;
use std::time::Duration;

use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};

use crate::publish;
use sensors_sim::{gen, scenario};

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Starts rumqttd on a free local port; returns its url.
fn embedded_broker() -> Result<String, String> {
    let port = free_port()?;
    let text = format!(
        r#"
id = 0
[router]
max_connections = 64
max_outgoing_packet_count = 1000
max_segment_size = 10485760
max_segment_count = 10

[v4.1]
name = "demo"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 200
dynamic_filters = true
"#
    );
    let config: rumqttd::Config =
        toml::from_str(&text).map_err(|e| format!("embedded broker config: {e}"))?;
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                eprintln!("embedded broker stopped: {e}");
            }
        })
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return Err("the embedded broker did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(format!("mqtt://127.0.0.1:{port}"))
}

pub fn run(broker: Option<String>, scenario_path: &Path, gateway_path: &Path) -> Result<(), String> {
    let sc = scenario::load(scenario_path)?;
    let url = match broker {
        Some(u) => u,
        None => embedded_broker()?,
    };
    // the gateway's config, pointed at the broker, with its state in a fresh temporary directory
    let state = std::env::temp_dir().join(format!("edgejoin-demo-{}", std::process::id()));
    let load = {
        let (gateway_path, url, state) = (gateway_path.to_path_buf(), url.clone(), state.clone());
        move || -> Result<edgejoin::config::Config, String> {
            let text = std::fs::read_to_string(&gateway_path)
                .map_err(|e| format!("{}: {e}", gateway_path.display()))?;
            let text = format!(
                "{}\n[source]\nurl = \"{url}\"\n\n[upstream]\nurl = \"{url}\"\ntopic_prefix = \"gw/demo\"\n",
                text.replace("state_dir = \"DEMO\"", &format!("state_dir = \"{}\"", state.display()))
            );
            edgejoin::config::parse(&gateway_path, &text).map_err(|e| e.to_string())
        }
    };
    // SIGHUP reloads the demo's gateway config, as it does the service's
    let p = load()?;

    // print results as they arrive
    let (host, port) = crate::host_port(&url)?;
    let mut o = MqttOptions::new(format!("demo-printer-{}", std::process::id()), host, port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (printer, mut conn) = Client::new(o, 100);
    printer.subscribe("gw/demo/#", QoS::AtMostOnce).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Incoming::Publish(m))) => {
                    if m.topic.ends_with("/stats") {
                        continue;
                    }
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) {
                        println!("{}", edgejoin::cli::show::describe(&v, crate::now_ms()));
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
                _ => {}
            }
        }
    });

    eprintln!("edgejoin demo — scenario `{}`: {}", sc.scenario.name, sc.scenario.description);
    eprintln!(
        "broker {url}, gateway config {}, results under gw/demo/…  (Ctrl-C stops)",
        gateway_path.display()
    );
    let gateway = std::thread::Builder::new()
        .name("gateway".into())
        .spawn(move || edgejoin::service::run(p, load))
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(500));

    // the simulated sensors, in real time from now
    let msgs = gen::generate(&sc, crate::now_ms(), sc.scenario.seed.unwrap_or(1))?;
    let sim_url = url.clone();
    std::thread::spawn(move || {
        if let Err(e) = publish(&sim_url, &msgs, true, false) {
            eprintln!("simulator: {e}");
        }
    });

    let res = gateway.join().map_err(|_| "the gateway thread failed".to_string())?;
    let _ = std::fs::remove_dir_all(&state);
    res.map_err(|e| e.to_string())
}
