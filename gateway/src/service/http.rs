//! The HTTP endpoint (`metrics_addr`, 127.0.0.1 by default), served by
//! hyper: `GET /metrics` (Prometheus, via [`super::metrics`]), `GET /healthz`
//! (200 while subscribed to the source and the engine loop goes round, 503
//! otherwise), `GET /status` (JSON for people and scripts), `GET /` (the
//! status page, one self-contained HTML file that reads `/status`), and the
//! clock report at `GET /clocks/` (docs/CLOCKS.md). Other paths are 404,
//! other methods 405. Bounded: at most [`CONNECTIONS`] connections at once,
//! each closed after [`CONNECTION_TIME`] whatever the client does.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use super::counters::ServiceCounters;
use super::logging;
use super::metrics::{self, Snapshot};
use super::process;
use crate::clock_report::{self, ClockTrace};
use crate::config::Config;
use edgejoin_engine::join::side_capacity;
use edgejoin_engine::window::ring_size;

/// The live clock trace, when the service keeps one.
pub(super) type Clocks = Option<Arc<Mutex<ClockTrace>>>;

/// Connections served at once, at most; more are closed at once (counted).
const CONNECTIONS: usize = 16;
/// A connection's whole life, at most.
const CONNECTION_TIME: Duration = Duration::from_secs(10);

/// The status page: no external assets (the gateway may have no internet).
const STATUS_PAGE: &str = include_str!("status.html");

/// What the endpoint serves from.
pub(super) struct Site {
    pub registry: Registry,
    pub snapshot: Arc<Mutex<Snapshot>>,
    pub counters: Arc<ServiceCounters>,
    pub clocks: Clocks,
    /// The pipeline and its bounds, fixed for the run (`/status`'s `pipeline`).
    pub pipeline: Value,
    pub gateway_id: String,
    pub started: Instant,
}

type Answer = Response<Full<Bytes>>;

pub(super) async fn serve(listener: tokio::net::TcpListener, site: Site) {
    let site = Arc::new(site);
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    let mut log = logging::Every::new(Duration::from_secs(30));
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                if let Some(more) = log.ready() {
                    tracing::warn!("HTTP endpoint: cannot accept a connection: {e}{}", logging::more(more));
                }
                // out of file descriptors: wait instead of spinning
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            site.counters.metrics_connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(sock);
            continue;
        };
        let site = site.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let site = site.clone();
                async move { Ok::<_, Infallible>(site.answer(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .title_case_headers(true)
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(sock), service);
            let _ = tokio::time::timeout(CONNECTION_TIME, conn).await;
        });
    }
}

fn reply(status: StatusCode, kind: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

impl Site {
    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> Answer {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let path = req.uri().path().to_string();
        let r = match path.as_str() {
            "/metrics" => {
                let openmetrics = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|a| a.to_str().ok())
                    .is_some_and(|a| a.contains("application/openmetrics-text"));
                match metrics::expose(&self.registry, openmetrics) {
                    Ok(text) => reply(StatusCode::OK, metrics::content_type(openmetrics), text),
                    Err(_) => {
                        reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "metrics could not be encoded\n")
                    }
                }
            }
            "/healthz" => {
                let (ok, why) = self.health();
                let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                reply(status, TEXT, format!("{why}\n"))
            }
            "/status" => reply(StatusCode::OK, JSON, self.status().to_string()),
            "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
            "/clocks" => {
                let mut r = reply(StatusCode::MOVED_PERMANENTLY, TEXT, "/clocks/\n");
                r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/clocks/"));
                r
            }
            p if p.starts_with("/clocks/") => {
                let file = p["/clocks/".len()..].to_string();
                let clocks = self.clocks.clone();
                // drawn off the runtime's threads: a picture takes milliseconds
                match tokio::task::spawn_blocking(move || clock_page(clocks.as_deref(), &file)).await {
                    Ok((status, kind, body)) => reply(status, kind, body),
                    Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "drawing failed\n"),
                }
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                TEXT,
                "not here: the status page is at /, metrics at /metrics, health at /healthz, \
                 status at /status, the clock report at /clocks/\n",
            ),
        };
        // hyper leaves a HEAD answer's body out and keeps its length
        r
    }

    /// Healthy: subscribed to the source broker and the engine loop alive.
    fn health(&self) -> (bool, &'static str) {
        let c = &self.counters;
        if !c.engine_alive() {
            (false, "engine loop stalled or stopped")
        } else if c.source_connected.load(Ordering::Relaxed) == 0 {
            (false, "not subscribed to the source broker")
        } else {
            (true, "ok")
        }
    }

    /// `/status`: the stats as the engine thread saw them at its last
    /// interval (the stats topic's JSON), each stream's rate and watermark
    /// lag, health, memory against the printed bound, and the pipeline.
    fn status(&self) -> Value {
        let (mut v, rates) = match self.snapshot.lock() {
            Ok(s) => (metrics::to_json(&s.samples), s.stream_rates.clone()),
            Err(_) => (json!({}), Vec::new()),
        };
        let gateway_ms = v["service"]["gateway_ms"].as_i64();
        if let Some(streams) = v.get_mut("streams").and_then(Value::as_object_mut) {
            for (name, s) in streams.iter_mut() {
                let rate = rates.iter().find(|(n, _)| n == name).map_or(0.0, |r| r.1);
                s["rate_per_s"] = json!((rate * 10.0).round() / 10.0);
                let lag = match (gateway_ms, s["watermark"].as_i64()) {
                    (Some(now), Some(wm)) => json!(now.saturating_sub(wm)),
                    _ => Value::Null,
                };
                s["watermark_lag_ms"] = lag;
            }
        }
        let (healthy, why) = self.health();
        v["health"] = json!({
            "healthy": healthy,
            "reason": why,
            "source_connected": self.counters.source_connected.load(Ordering::Relaxed) == 1,
            "uplink_connected": self.counters.uplink_connected.load(Ordering::Relaxed) == 1,
            "engine_alive": self.counters.engine_alive(),
        });
        let p = process::read().unwrap_or_default();
        v["memory"] = json!({
            "rss_bytes": p.rss_bytes,
            "bound_bytes": self.pipeline["memory_bound_bytes"],
        });
        v["gateway"] = json!({
            "id": self.gateway_id,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
        });
        v["pipeline"] = self.pipeline.clone();
        v
    }
}

/// The pipeline and its bounds as `/status` and the status page show them:
/// streams (topics, clock, watermark) → windows (input, kind, aggregates,
/// key bound) → joins (inputs, strategy, bounds) → outputs (topics).
pub(super) fn pipeline(c: &Config) -> Value {
    let p = &c.plan;
    let streams: Vec<Value> = p
        .streams
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "topics": s.topics.iter().map(|t| t.text()).collect::<Vec<_>>(),
                "clock": format!("{:?}", s.clock).to_lowercase(),
                "watermark": format!("{:?}", s.watermark).to_lowercase(),
                "lateness_ms": s.lateness_ms,
            })
        })
        .collect();
    let windows: Vec<Value> = p
        .windows
        .iter()
        .map(|w| {
            let ring = ring_size(w.kind, w.input_lateness_ms) as u64;
            json!({
                "name": w.name,
                "input": p.input_name(w.input),
                "kind": format!("{:?}", w.kind),
                "aggregates": w.aggregates.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
                "max_keys": w.max_keys.get(),
                "max_open_windows": u64::from(w.max_keys.get()) * ring,
                "topic": w.emit.as_ref().map(|t| t.text()),
            })
        })
        .collect();
    let joins: Vec<Value> = p
        .joins
        .iter()
        .map(|j| {
            json!({
                "name": j.name,
                "left": p.input_name(j.left),
                "right": p.input_name(j.right),
                "strategy": j.strategy.name(),
                "kind": format!("{:?}", j.kind).to_lowercase(),
                "buffered_per_key": [side_capacity(p, j.left), side_capacity(p, j.right)],
                "topic": j.topic.text(),
            })
        })
        .collect();
    json!({
        "streams": streams,
        "windows": windows,
        "joins": joins,
        "memory_bound_bytes": super::memory::memory_bound(c),
    })
}

/// `/clocks/` (the index) or `/clocks/<device>.svg`, drawn from a copy of
/// the trace (the engine thread holds its lock only while copying).
fn clock_page(clocks: Option<&Mutex<ClockTrace>>, file: &str) -> (StatusCode, &'static str, String) {
    let Some(clocks) = clocks else {
        return (
            StatusCode::NOT_FOUND,
            TEXT,
            String::from("no clock report: clock_trace = 0 in the config's [gateway]\n"),
        );
    };
    if file.is_empty() || file == "index.html" {
        let (devices, not_drawn) = match clocks.lock() {
            Ok(t) => (t.devices(), t.not_drawn),
            Err(_) => (Vec::new(), 0),
        };
        let mut note = String::from(
            "<p>Live: the last samples of each device the gateway corrects (<code>clock_trace</code> per device); \
             the estimates as of the last stats interval. Reload for newer ones.</p>\n",
        );
        if devices.is_empty() {
            note.push_str(
                "<p>No device yet: no stream has <code>clock = \"corrected\"</code>, or none has been heard.</p>\n",
            );
        }
        let page = clock_report::index_html(&devices, not_drawn, &note);
        return (StatusCode::OK, "text/html; charset=utf-8", page);
    }
    let device = clocks.lock().ok().and_then(|t| t.device(file));
    match device.map(|d| d.svg()) {
        Some(Ok(svg)) => (StatusCode::OK, "image/svg+xml", svg),
        Some(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
        None => (StatusCode::NOT_FOUND, TEXT, format!("no device drawn as {file}; see /clocks/\n")),
    }
}
