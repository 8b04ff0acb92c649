//! The metrics endpoint: Prometheus text on `GET /metrics`, from a small
//! bounded HTTP responder (the text is rendered by the engine thread at each
//! stats interval; serving it costs a copy).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::counters::ServiceCounters;
use super::logging;

/// Metrics connections served at once, at most; more are closed at once.
const METRICS_CONNECTIONS: usize = 16;

/// Serves the Prometheus text on `GET /metrics` (404 for other paths, 405
/// for other methods). Bounded: at most [`METRICS_CONNECTIONS`] at once,
/// each closed after 5 s whatever the client does, and a failing accept
/// (out of file descriptors) waits before trying again instead of spinning.
pub(super) async fn metrics_server(
    listener: tokio::net::TcpListener,
    text: Arc<Mutex<String>>,
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
        let text = text.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(Duration::from_secs(5), serve_metrics(sock, text)).await;
        });
    }
}

async fn serve_metrics(mut sock: tokio::net::TcpStream, text: Arc<Mutex<String>>) -> io::Result<()> {
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
    let (status, body) = if method != b"GET" && method != b"HEAD" {
        ("405 Method Not Allowed", String::from("only GET\n"))
    } else if path != b"/metrics" && path != b"/" {
        ("404 Not Found", String::from("metrics are at /metrics\n"))
    } else {
        ("200 OK", text.lock().map(|t| t.clone()).unwrap_or_default())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    if method != b"HEAD" {
        sock.write_all(body.as_bytes()).await?;
    }
    sock.shutdown().await
}
