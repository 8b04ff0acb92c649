//! The metrics endpoint: Prometheus text on `GET /metrics`, and the clock
//! report (docs/CLOCKS.md) at `GET /clocks/`, from a small bounded HTTP
//! responder. The Prometheus text is rendered by the engine thread at each
//! stats interval (serving it costs a copy); the clock pictures are drawn on
//! request, off the runtime's threads, from a copy of the live trace.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::counters::ServiceCounters;
use super::logging;
use crate::clock_report::{self, ClockTrace};

/// The live clock trace, when the service keeps one.
pub(super) type Clocks = Option<Arc<Mutex<ClockTrace>>>;

/// Metrics connections served at once, at most; more are closed at once.
const METRICS_CONNECTIONS: usize = 16;

/// Serves the Prometheus text on `GET /metrics` (404 for other paths, 405
/// for other methods). Bounded: at most [`METRICS_CONNECTIONS`] at once,
/// each closed after 5 s whatever the client does, and a failing accept
/// (out of file descriptors) waits before trying again instead of spinning.
pub(super) async fn metrics_server(
    listener: tokio::net::TcpListener,
    text: Arc<Mutex<String>>,
    clocks: Clocks,
    counters: Arc<ServiceCounters>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    let mut log = logging::Every::new(Duration::from_secs(30));
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                if let Some(more) = log.ready() {
                    tracing::warn!(
                        "metrics endpoint: cannot accept a connection: {e}{}",
                        logging::more(more)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.metrics_connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(sock);
            continue;
        };
        let (text, clocks) = (text.clone(), clocks.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(Duration::from_secs(5), serve(sock, text, clocks)).await;
        });
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn serve(mut sock: tokio::net::TcpStream, text: Arc<Mutex<String>>, clocks: Clocks) -> io::Result<()> {
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    // the request line and headers, up to 8 KiB
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && !req.windows(2).any(|w| w == b"\n\n") {
        let n = sock.read(&mut buf).await?;
        if n == 0 || req.len() > 8 << 10 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = req.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = String::from_utf8_lossy(path).into_owned();
    let mut extra = "";
    let (status, kind, body) = if method != b"GET" && method != b"HEAD" {
        ("405 Method Not Allowed", TEXT, String::from("only GET\n"))
    } else if path == "/metrics" || path == "/" {
        ("200 OK", "text/plain; version=0.0.4", text.lock().map(|t| t.clone()).unwrap_or_default())
    } else if path == "/clocks" {
        extra = "Location: /clocks/\r\n";
        ("301 Moved Permanently", TEXT, String::from("/clocks/\n"))
    } else if let Some(file) = path.strip_prefix("/clocks/") {
        let file = file.to_string();
        // drawn off the runtime's threads: a picture takes milliseconds
        tokio::task::spawn_blocking(move || clock_page(clocks.as_deref(), &file))
            .await
            .unwrap_or_else(|_| ("500 Internal Server Error", TEXT, String::from("drawing failed\n")))
    } else {
        ("404 Not Found", TEXT, String::from("metrics are at /metrics, the clock report at /clocks/\n"))
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    if method != b"HEAD" {
        sock.write_all(body.as_bytes()).await?;
    }
    sock.shutdown().await
}

/// `/clocks/` (the index) or `/clocks/<device>.svg`, drawn from a copy of
/// the trace (the engine thread holds its lock only while copying).
fn clock_page(clocks: Option<&Mutex<ClockTrace>>, file: &str) -> (&'static str, &'static str, String) {
    let Some(clocks) = clocks else {
        return (
            "404 Not Found",
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
        return ("200 OK", "text/html; charset=utf-8", page);
    }
    let device = clocks.lock().ok().and_then(|t| t.device(file));
    match device.map(|d| d.svg()) {
        Some(Ok(svg)) => ("200 OK", "image/svg+xml", svg),
        Some(Err(e)) => ("500 Internal Server Error", TEXT, format!("{e}\n")),
        None => ("404 Not Found", TEXT, format!("no device drawn as {file}; see /clocks/\n")),
    }
}
