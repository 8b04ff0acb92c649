//! The source connection's byte filter: every packet the source broker
//! sends passes through here. A PUBLISH whose payload is larger than the
//! engine can use is cut down to `max_payload + 1` bytes (its topic, packet
//! id and flags intact) — one oversized QoS 1 message no longer drops the
//! connection, to be redelivered for ever, and the engine still sees a
//! payload over `max_payload`, so the message is logged, counted as
//! `payload_too_large` and acknowledged like any other. Then each PUBLISH
//! goes straight to the engine thread's intake ([`super::source::Intake`]),
//! with one receive time per read; the MQTT client gets every other packet
//! (CONNACK, SUBACK, UNSUBACK, PINGRESP) and never parses a message. Order
//! is kept where the barriers need it ([`super::acks`]): the messages of a
//! connection pass only once its CONNACK is counted, and an UNSUBACK
//! reaches the client only after the messages before it were passed. In the
//! other direction the engine's acknowledgements are written between the
//! client's packets. Memory per connection is one read buffer and one
//! packet, whatever the size of the message.
//!
//! [`PublishLimiter`] (the cut) and [`split`] (packets off the stream) have
//! no IO and are unit-tested; [`serve`] runs them between a Unix socket the
//! MQTT client connects to and the real broker over TCP.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::acks::AckPipe;
use super::clock::now_ms;
use super::counters::Ordering;
use super::message::Message;
use super::source::{Backlog, Intake};

/// PUBLISHes in a full read that tell a backlog (the broker has more waiting;
/// a read filled by a few large messages does not).
const BACKLOG_READ: usize = 16;

/// Bytes one read from the source broker takes at most.
const READ: usize = 64 << 10;

/// The split stream's starting size: a read and a small packet's part left
/// by the one before. (A `BytesMut` here grew by doubling, from the consumed
/// front it keeps until a reserve reclaims it, to 256 KiB resident in the
/// bench's drain.)
const STREAM_START: usize = READ + (4 << 10);

/// The MQTT packet type of PUBLISH (upper nibble of the first byte).
const PUBLISH: u8 = 3;

/// Largest remaining length MQTT can encode (4 bytes of 7 bits).
const MAX_REMAINING: usize = 268_435_455;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("malformed packet from the source broker: remaining length over 4 bytes")]
    RemainingLength,
    #[error("malformed PUBLISH from the source broker: its topic is longer than the packet")]
    Topic,
    #[error("malformed PUBLISH from the source broker: QoS {0} (the gateway subscribes with QoS 1)")]
    Qos(u8),
    #[error("a packet of {0} bytes from the source broker is over the client's limit")]
    TooLarge(usize),
}

/// A PUBLISH whose payload was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncated {
    pub topic: String,
    /// The payload's size as the broker sent it.
    pub payload_bytes: usize,
}

#[derive(Debug)]
enum State {
    /// Reading a fixed header (first byte + remaining length).
    Header,
    /// Reading a PUBLISH's topic and packet id.
    PublishHead { first: u8, remaining: usize },
    /// Forwarding `left` bytes, then skipping `skip` more.
    Pass { left: usize, skip: usize },
    /// Discarding `left` bytes.
    Skip { left: usize },
}

/// Streaming MQTT 3.1.1 packet filter (broker → client direction).
#[derive(Debug)]
pub struct PublishLimiter {
    keep: usize,
    state: State,
    head: Vec<u8>,
}

impl PublishLimiter {
    /// A filter that keeps at most `keep` payload bytes of each PUBLISH.
    pub fn new(keep: usize) -> Self {
        PublishLimiter { keep, state: State::Header, head: Vec::with_capacity(16) }
    }

    /// Filters `input`, appending what the client may read to `out`; calls
    /// `cut` for each PUBLISH whose payload was cut.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut impl BufMut,
        mut cut: impl FnMut(Truncated),
    ) -> Result<(), FilterError> {
        while !input.is_empty() {
            match self.state {
                State::Header => {
                    let b = input[0];
                    input = &input[1..];
                    self.head.push(b);
                    if self.head.len() == 1 {
                        continue;
                    }
                    if b & 0x80 != 0 {
                        if self.head.len() == 5 {
                            return Err(FilterError::RemainingLength);
                        }
                        continue;
                    }
                    let remaining = self.head[1..]
                        .iter()
                        .enumerate()
                        .fold(0usize, |acc, (i, &b)| acc | (usize::from(b & 0x7f) << (7 * i)));
                    let first = self.head[0];
                    if first >> 4 == PUBLISH {
                        self.head.clear();
                        self.state = State::PublishHead { first, remaining };
                    } else {
                        out.put_slice(&self.head);
                        self.head.clear();
                        self.state = State::Pass { left: remaining, skip: 0 };
                    }
                }
                State::PublishHead { first, remaining } => {
                    if self.head.len() < 2 {
                        let take = (2 - self.head.len()).min(input.len());
                        self.head.extend_from_slice(&input[..take]);
                        input = &input[take..];
                        if self.head.len() < 2 {
                            continue;
                        }
                    }
                    let id_len = if (first >> 1) & 3 == 0 { 0 } else { 2 };
                    let need = 2 + usize::from(u16::from_be_bytes([self.head[0], self.head[1]])) + id_len;
                    if need > remaining {
                        return Err(FilterError::Topic);
                    }
                    let take = (need - self.head.len()).min(input.len());
                    self.head.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.head.len() < need {
                        continue;
                    }
                    let payload = remaining - need;
                    let kept = payload.min(self.keep);
                    if kept < payload {
                        let topic = String::from_utf8_lossy(&self.head[2..need - id_len]).into_owned();
                        cut(Truncated { topic, payload_bytes: payload });
                    }
                    out.put_u8(first);
                    encode_remaining(need + kept, out);
                    out.put_slice(&self.head);
                    self.head.clear();
                    self.state = State::Pass { left: kept, skip: payload - kept };
                }
                State::Pass { left, skip } => {
                    let n = left.min(input.len());
                    out.put_slice(&input[..n]);
                    input = &input[n..];
                    self.state = State::Pass { left: left - n, skip };
                }
                State::Skip { left } => {
                    let n = left.min(input.len());
                    input = &input[n..];
                    self.state = State::Skip { left: left - n };
                }
            }
            // a packet ends: on to the next header
            match self.state {
                State::Pass { left: 0, skip: 0 } | State::Skip { left: 0 } => self.state = State::Header,
                State::Pass { left: 0, skip } => self.state = State::Skip { left: skip },
                _ => {}
            }
        }
        Ok(())
    }
}

/// A whole packet taken off the front of the filtered stream.
#[derive(Debug, PartialEq)]
pub enum Split {
    /// For the engine thread's intake.
    Publish(Message),
    /// Any other packet, for the MQTT client; `connack` when it is a CONNACK.
    Other { bytes: Bytes, connack: bool },
}

/// A whole packet at the front of a stream, found without copying it.
enum Found {
    Other { total: usize, connack: bool },
    Publish { total: usize, first: u8, qos: QoS, topic: Range<usize>, pkid: u16, payload: Range<usize> },
}

/// The first whole packet of `stream`, if it holds one; a packet over `max`
/// bytes is an error as soon as its header is there.
fn find(stream: &[u8], max: usize) -> Result<Option<Found>, FilterError> {
    let mut remaining = 0usize;
    let mut head = 1;
    loop {
        let Some(&b) = stream.get(head) else { return Ok(None) };
        remaining |= usize::from(b & 0x7f) << (7 * (head - 1));
        head += 1;
        if b & 0x80 == 0 {
            break;
        }
        if head == 5 {
            return Err(FilterError::RemainingLength);
        }
    }
    let total = head + remaining;
    if total > max {
        return Err(FilterError::TooLarge(total));
    }
    if stream.len() < total {
        return Ok(None);
    }
    let first = stream[0];
    if first >> 4 != PUBLISH {
        return Ok(Some(Found::Other { total, connack: first >> 4 == 2 }));
    }
    let qos = match (first >> 1) & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        q => return Err(FilterError::Qos(q)),
    };
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let topic_len = match &stream[head..total] {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(FilterError::Topic),
    };
    let topic = head + 2..head + 2 + topic_len;
    let payload_at = topic.end + id_len;
    if payload_at > total {
        return Err(FilterError::Topic);
    }
    let pkid = if id_len == 0 { 0 } else { u16::from_be_bytes([stream[topic.end], stream[topic.end + 1]]) };
    Ok(Some(Found::Publish { total, first, qos, topic, pkid, payload: payload_at..total }))
}

/// Takes every whole packet off the front of `stream` (the filter's output,
/// so a PUBLISH's payload is at most `keep` bytes) into `out`, in order, up to
/// the first malformed one (its error comes after them). The topics and
/// payloads of one call share one buffer of exactly their size: a message
/// waiting in the intake holds its own read's bytes, never the read buffer (a
/// slice of that would hold 64 KiB per read, outside the intake's byte
/// budget), and a read costs one allocation for its messages, not one or two each.
pub fn split(stream: &mut Vec<u8>, max: usize, out: &mut Vec<Split>) -> Result<(), FilterError> {
    // first the topics' and payloads' size, then the packets
    let (mut at, mut size, mut error) = (0, 0, None);
    loop {
        match find(&stream[at..], max) {
            Ok(Some(Found::Other { total, .. })) => at += total,
            Ok(Some(Found::Publish { total, topic, payload, .. })) => {
                size += topic.len() + payload.len();
                at += total;
            }
            Ok(None) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let (end, mut shared) = (at, BytesMut::with_capacity(size));
    at = 0;
    while at < end {
        let rest = &stream[at..end];
        // the first pass found whole packets up to `end`
        let Ok(Some(found)) = find(rest, max) else { break };
        match found {
            Found::Other { total, connack } => {
                out.push(Split::Other { bytes: Bytes::copy_from_slice(&rest[..total]), connack });
                at += total;
            }
            Found::Publish { total, first, qos, topic, pkid, payload } => {
                let raw = &rest[topic];
                // the broker checks topics are UTF-8; one that is not still reaches the
                // engine (as an unmatched topic, counted), not a reconnect for ever
                // (replacement characters longer than the bytes they replace grow `shared`)
                let topic = String::from_utf8_lossy(raw);
                let dup = first & 0x08 != 0;
                out.push(Split::Publish(Message::in_buffer(
                    &mut shared,
                    &topic,
                    &rest[payload],
                    qos,
                    pkid,
                    dup,
                )));
                at += total;
            }
        }
    }
    // what is left is a packet not yet whole: to the front, so the stream keeps its size
    stream.drain(..end);
    error.map_or(Ok(()), Err)
}

/// After a large packet has gone through the split stream, back to its usual size.
fn refit(stream: &mut Vec<u8>) {
    if stream.capacity() > 2 * STREAM_START && stream.len() < READ {
        stream.shrink_to(STREAM_START);
    }
}

/// Where the MQTT client's packets end in the bytes it sends (client →
/// broker), so that acknowledgements can be written between two of them.
#[derive(Debug, Default)]
pub struct PacketBounds {
    /// Remaining-length bytes read of the current packet's header; `None`: at its first byte.
    len: Option<(usize, u32)>,
    /// Body bytes left of the current packet.
    left: usize,
    in_body: bool,
    /// Packets complete so far (the first is CONNECT).
    pub packets: u64,
}

impl PacketBounds {
    /// Takes the next bytes of the stream; returns the first offset in them
    /// at which a packet boundary after at least one whole packet (CONNECT
    /// first) falls: 0 when the stream is already there.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<usize>, FilterError> {
        let mut first = self.at_boundary().then_some(0);
        let mut i = 0;
        while i < input.len() {
            if self.in_body {
                let n = self.left.min(input.len() - i);
                self.left -= n;
                i += n;
            } else {
                let b = input[i];
                i += 1;
                match self.len {
                    None => self.len = Some((0, 0)),
                    Some((value, shift)) => {
                        let value = value | (usize::from(b & 0x7f) << shift);
                        if b & 0x80 != 0 {
                            if shift == 21 {
                                return Err(FilterError::RemainingLength);
                            }
                            self.len = Some((value, shift + 7));
                        } else {
                            self.len = None;
                            self.in_body = true;
                            self.left = value;
                        }
                    }
                }
            }
            if self.in_body && self.left == 0 {
                self.in_body = false;
                self.packets += 1;
                if first.is_none() {
                    first = Some(i);
                }
            }
        }
        Ok(first)
    }

    /// Whether the stream is between two packets, after CONNECT.
    pub fn at_boundary(&self) -> bool {
        self.packets > 0 && !self.in_body && self.len.is_none()
    }
}

/// Writes every acknowledgement the engine queued, as PUBACKs in one write
/// (`pkids` and `bytes` are reused buffers).
async fn write_acks(
    pipe: &AckPipe,
    pkids: &mut Vec<u16>,
    bytes: &mut Vec<u8>,
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> std::io::Result<()> {
    pipe.take(pkids);
    if pkids.is_empty() {
        return Ok(());
    }
    bytes.clear();
    for &p in pkids.iter() {
        super::acks::puback(p, bytes);
    }
    w.write_all(bytes).await
}

fn encode_remaining(mut n: usize, out: &mut impl BufMut) {
    debug_assert!(n <= MAX_REMAINING);
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            return;
        }
    }
}

/// What the filter lets through.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Payload bytes kept of a PUBLISH (`max_payload + 1`).
    pub keep: usize,
    /// The largest packet taken whole.
    pub max: usize,
}

/// Where the MQTT client finds the filter: `state_dir/source.sock`, or a
/// private directory under the temporary directory when that path is too
/// long for a Unix socket (108 bytes on Linux).
pub fn socket_path(state_dir: &Path) -> std::path::PathBuf {
    let p = state_dir.join("source.sock");
    if p.as_os_str().len() < 100 {
        return p;
    }
    std::env::temp_dir().join(format!("edgejoin-{}", std::process::id())).join("source.sock")
}

/// Accepts the MQTT client's connections on `listener` and pipes each to a
/// new TCP (or TLS over TCP) connection to `host:port`, filtering what comes back.
pub async fn serve(
    listener: tokio::net::UnixListener,
    host: String,
    port: u16,
    tls: Option<super::mqtt::ClientTls>,
    limits: Limits,
    intake: Arc<Intake>,
    gate: Arc<AckPipe>,
) {
    let counters = intake.counters.clone();
    let mut log = crate::service::logging::Every::new(Duration::from_secs(10));
    // the pipes end with the filter (a reload aborts it, and must find the broker connection closed)
    let mut pipes = tokio::task::JoinSet::new();
    loop {
        while pipes.try_join_next().is_some() {}
        let client = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::error!("source filter: cannot accept the MQTT client's connection: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let broker = match tokio::net::TcpStream::connect((host.as_str(), port)).await {
            Ok(b) => b,
            Err(e) => {
                counters.source_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(more) = log.ready() {
                    tracing::warn!("source broker {host}:{port}: {e}{}", crate::service::logging::more(more));
                }
                continue; // dropping the client's side: it reconnects after its backoff
            }
        };
        let _ = broker.set_nodelay(true);
        match &tls {
            None => {
                pipes.spawn(pipe(client, broker, limits, intake.clone(), gate.clone()));
            }
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                match connector.connect(name.clone(), broker).await {
                    Ok(stream) => {
                        pipes.spawn(pipe(client, stream, limits, intake.clone(), gate.clone()));
                    }
                    Err(e) => {
                        counters.source_errors.fetch_add(1, Ordering::Relaxed);
                        if let Some(more) = log.ready() {
                            tracing::warn!(
                                "source broker {host}:{port}: TLS: {e}{}",
                                crate::service::logging::more(more)
                            );
                        }
                        continue;
                    }
                }
            }
        }
        log = crate::service::logging::Every::new(Duration::from_secs(10));
    }
}

async fn pipe<B>(
    client: tokio::net::UnixStream,
    broker: B,
    Limits { keep, max }: Limits,
    intake: Arc<Intake>,
    gate: Arc<AckPipe>,
) where
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut broker_rd, mut broker_wr) = tokio::io::split(broker);
    // client → broker: the client's bytes as they come, and between two of its
    // packets the acknowledgements the engine queued, in bulk
    let up = async {
        let mut bounds = PacketBounds::default();
        let mut buf = vec![0u8; 16 << 10];
        let (mut pkids, mut acks) = (Vec::new(), Vec::new());
        loop {
            tokio::select! {
                r = client_rd.read(&mut buf) => {
                    let n = match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let Ok(cut) = bounds.feed(&buf[..n]) else { return };
                    // acknowledgements queued before a barrier the client sends go out before it
                    let cut = cut.unwrap_or(n);
                    if broker_wr.write_all(&buf[..cut]).await.is_err() {
                        return;
                    }
                    if (cut < n || bounds.at_boundary())
                        && write_acks(&gate, &mut pkids, &mut acks, &mut broker_wr).await.is_err()
                    {
                        return;
                    }
                    if cut < n && broker_wr.write_all(&buf[cut..n]).await.is_err() {
                        return;
                    }
                }
                _ = gate.ready.notified(), if bounds.at_boundary() => {
                    if write_acks(&gate, &mut pkids, &mut acks, &mut broker_wr).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    // broker → client: PUBLISHes (cut to `keep` bytes of payload) straight to the
    // engine thread's intake, in order; the other packets to the client
    let down = async {
        let c = &intake.counters;
        let mut limiter = PublishLimiter::new(keep);
        let mut buf = vec![0u8; READ];
        // a read and the part of a packet the last one left (more only for a large packet)
        let mut stream: Vec<u8> = Vec::with_capacity(STREAM_START);
        let mut fwd: Vec<u8> = Vec::with_capacity(1 << 10);
        let mut packets = Vec::new();
        let mut log = crate::service::logging::Every::new(Duration::from_secs(10));
        // the connection's CONNACK is counted (the source task) before its messages pass
        let before = intake.barriers.connections();
        let mut connected = false;
        // the decoder's working space (an event)
        let mut scratch = edgejoin_engine::event::Event::blank();
        // however the connection ends, its backlog is no longer being read
        struct Streaming<'a>(&'a Backlog);
        impl Drop for Streaming<'_> {
            fn drop(&mut self) {
                self.0.read(false);
            }
        }
        let _streaming = Streaming(&intake.backlog);
        loop {
            if gate.closed() {
                c.intake_held.fetch_add(1, Ordering::Relaxed);
                gate.reopened().await;
            }
            let n = match broker_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // one receive time for what one read brought
            let (recv_ms, at) = (now_ms(), std::time::Instant::now());
            // grows only for a large packet's part (a small one's part sits at the front)
            stream.reserve(n);
            let res = limiter.feed(&buf[..n], &mut stream, |t| {
                c.payload_truncated.fetch_add(1, Ordering::Relaxed);
                if let Some(more) = log.ready() {
                    tracing::warn!(
                        "a message of {} bytes on `{}` is over source.max_payload ({} bytes): counted as payload_too_large, acknowledged, skipped{}",
                        t.payload_bytes,
                        t.topic,
                        keep - 1,
                        crate::service::logging::more(more)
                    );
                }
            });
            if let Err(e) = res {
                tracing::error!("{e}; reconnecting");
                return;
            }
            let res = split(&mut stream, max, &mut packets);
            refit(&mut stream);
            // a full read of many messages: the broker has more for us (a backlog), the uplink
            // may wait (a full read of a few large ones is no backlog)
            let publishes = packets.iter().filter(|p| matches!(p, Split::Publish(_))).count();
            intake.backlog.read(n == buf.len() && publishes >= BACKLOG_READ);
            for p in packets.drain(..) {
                match p {
                    Split::Publish(m) => {
                        if !connected {
                            tracing::error!(
                                "the source broker sent a PUBLISH before its CONNACK; reconnecting"
                            );
                            return;
                        }
                        let (ack, pkid) = (m.qos == QoS::AtLeastOnce && intake.ack_on_pass, m.pkid);
                        if intake.pass(m, recv_ms, at, &mut scratch).await && ack {
                            gate.push_id(pkid);
                        }
                    }
                    Split::Other { bytes, connack } => {
                        fwd.extend_from_slice(&bytes);
                        if connack {
                            if client_wr.write_all(&fwd).await.is_err() {
                                return;
                            }
                            fwd.clear();
                            // a refused connection ends here: the client closes its side
                            while intake.barriers.connections() == before {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            connected = true;
                        }
                    }
                }
            }
            if let Err(e) = res {
                tracing::error!("{e}; reconnecting");
                return;
            }
            // after the messages before them (an UNSUBACK's mark counts them)
            if !fwd.is_empty() {
                if client_wr.write_all(&fwd).await.is_err() {
                    return;
                }
                fwd.clear();
                fwd.shrink_to(16 << 10);
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(qos: u8, pkid: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        body.extend_from_slice(payload);
        let mut p = vec![(PUBLISH << 4) | (qos << 1) | 0x08];
        encode_remaining(body.len(), &mut p);
        p.extend_from_slice(&body);
        p
    }

    fn run(keep: usize, input: &[u8], chunk: usize) -> (Vec<u8>, Vec<Truncated>) {
        let mut l = PublishLimiter::new(keep);
        let mut out = Vec::new();
        let mut cut = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            l.feed(c, &mut out, |t| cut.push(t)).unwrap();
        }
        (out, cut)
    }

    #[test]
    fn small_packets_pass_unchanged_in_any_chunking() {
        let mut stream = publish(1, 7, "s/a", b"{\"ts\":1}");
        stream.extend_from_slice(&[0x90, 0x03, 0x00, 0x01, 0x01]); // SUBACK
        stream.extend_from_slice(&publish(0, 0, "s/b", &[b'x'; 300]));
        stream.extend_from_slice(&[0xd0, 0x00]); // PINGRESP
        stream.extend_from_slice(&publish(1, 9, "s/c", b""));
        for chunk in [1, 2, 3, 7, 64, 10_000] {
            let (out, cut) = run(300, &stream, chunk);
            assert_eq!(out, stream, "chunk {chunk}");
            assert!(cut.is_empty());
        }
    }

    #[test]
    fn an_oversized_publish_keeps_its_head_and_the_first_bytes_of_its_payload() {
        let big = vec![7u8; 2_000_000];
        let mut stream = publish(1, 513, "shop/x/orders", &big);
        stream.extend_from_slice(&publish(1, 514, "shop/x/orders", b"ok"));
        for chunk in [1, 5, 4096, 1 << 20] {
            let (out, cut) = run(101, &stream, chunk);
            let mut want = publish(1, 513, "shop/x/orders", &big[..101]);
            want.extend_from_slice(&publish(1, 514, "shop/x/orders", b"ok"));
            assert_eq!(out, want, "chunk {chunk}");
            assert_eq!(cut, vec![Truncated { topic: "shop/x/orders".into(), payload_bytes: 2_000_000 }]);
        }
        // QoS 0: no packet id
        let (out, cut) = run(3, &publish(0, 0, "t", b"abcdef"), 2);
        assert_eq!(out, publish(0, 0, "t", b"abc"));
        assert_eq!(cut.len(), 1);
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let mut l = PublishLimiter::new(10);
        let mut out = Vec::new();
        assert_eq!(
            l.feed(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], &mut out, |_| {}),
            Err(FilterError::RemainingLength)
        );
        let mut l = PublishLimiter::new(10);
        // a topic length of 200 in a packet of 4 bytes
        assert_eq!(l.feed(&[0x32, 0x04, 0x00, 0xc8, 0x61, 0x62], &mut out, |_| {}), Err(FilterError::Topic));
    }

    proptest::proptest! {
        #[test]
        fn any_byte_stream_is_filtered_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400), keep in 0usize..50, chunk in 1usize..40) {
            let mut l = PublishLimiter::new(keep);
            let mut out = Vec::new();
            for c in bytes.chunks(chunk) {
                if l.feed(c, &mut out, |_| {}).is_err() {
                    break;
                }
            }
            proptest::prop_assert!(out.len() <= bytes.len() + 4 * (bytes.len() / 2 + 1));
        }
    }

    /// Every packet `split` takes off `stream` fed in chunks of `chunk` bytes.
    fn split_all(stream: &[u8], chunk: usize, max: usize) -> Result<Vec<Split>, FilterError> {
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        for c in stream.chunks(chunk.max(1)) {
            buf.extend_from_slice(c);
            split(&mut buf, max, &mut got)?;
        }
        assert!(buf.is_empty(), "a whole stream leaves nothing behind");
        Ok(got)
    }

    #[test]
    fn publishes_are_split_off_for_the_intake_and_the_rest_goes_to_the_client() {
        let connack = [0x20, 0x02, 0x00, 0x00];
        let suback = [0x90, 0x03, 0x00, 0x01, 0x01];
        let mut stream = connack.to_vec();
        stream.extend_from_slice(&suback);
        stream.extend_from_slice(&publish(1, 7, "s/a", b"{\"ts\":1}"));
        stream.extend_from_slice(&publish(0, 0, "s/b", &[b'x'; 300]));
        stream.extend_from_slice(&[0xd0, 0x00]); // PINGRESP
        stream.extend_from_slice(&publish(1, 9, "s/c", b""));
        let mut retained = publish(1, 65535, "s/d", b"r");
        retained[0] |= 0x01;
        stream.extend_from_slice(&retained);
        for chunk in [1, 2, 3, 7, 64, 10_000] {
            let got = split_all(&stream, chunk, 1 << 20).unwrap();
            let want = vec![
                Split::Other { bytes: Bytes::copy_from_slice(&connack), connack: true },
                Split::Other { bytes: Bytes::copy_from_slice(&suback), connack: false },
                Split::Publish(Message::new("s/a", b"{\"ts\":1}", QoS::AtLeastOnce, 7, true)),
                Split::Publish(Message::new("s/b", &[b'x'; 300], QoS::AtMostOnce, 0, true)),
                Split::Other { bytes: Bytes::from_static(&[0xd0, 0x00]), connack: false },
                Split::Publish(Message::new("s/c", b"", QoS::AtLeastOnce, 9, true)),
                Split::Publish(Message::new("s/d", b"r", QoS::AtLeastOnce, 65535, true)),
            ];
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn a_bad_packet_is_an_error_not_a_panic_nor_a_buffer_without_bound() {
        // over the client's limit: refused from its header, before its body is buffered
        let mut buf = vec![0x90, 0xff, 0xff, 0x03];
        assert_eq!(split(&mut buf, 1 << 16, &mut Vec::new()), Err(FilterError::TooLarge(65_535 + 4)));
        // the packets before a bad one still come out, then its error
        let mut buf = publish(0, 0, "t", b"1");
        buf.extend_from_slice(&[0x36, 0x00]);
        let mut got = Vec::new();
        assert_eq!(split(&mut buf, 1 << 10, &mut got), Err(FilterError::Qos(3)));
        assert!(matches!(got.as_slice(), [Split::Publish(p)] if p.topic() == "t"));
        assert_eq!(split_all(&publish(1, 1, "t", &[0; 100]), 3, 50), Err(FilterError::TooLarge(107)));
        // QoS 2 (never subscribed) and the reserved QoS 3
        let mut q2 = publish(1, 1, "t", b"x");
        q2[0] = (q2[0] & !0x06) | 0x04;
        assert_eq!(split_all(&q2, 100, 1 << 10), Err(FilterError::Qos(2)));
        q2[0] |= 0x06;
        assert_eq!(split_all(&q2, 100, 1 << 10), Err(FilterError::Qos(3)));
        // a topic (or packet id) longer than the packet
        assert_eq!(split_all(&[0x32, 0x03, 0x00, 0x01, 0x61], 100, 1 << 10), Err(FilterError::Topic));
        assert_eq!(split_all(&[0x30, 0x01, 0x00], 100, 1 << 10), Err(FilterError::Topic));
        assert_eq!(
            split_all(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 100, usize::MAX),
            Err(FilterError::RemainingLength)
        );
        // a topic that is not UTF-8 still passes (the engine counts it unmatched)
        let mut bad = publish(0, 0, "ab", b"1");
        bad[5] = 0xff;
        match split_all(&bad, 1, 1 << 10).unwrap().as_slice() {
            [Split::Publish(p)] => assert_eq!((p.topic(), p.payload()), ("a\u{fffd}", &b"1"[..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_waiting_message_holds_no_part_of_the_read_buffer() {
        // the next read reuses the buffer while the messages split off it still wait in the
        // intake: they hold copies, not slices of it (which would pin 64 KiB per read)
        let mut stream = Vec::with_capacity(STREAM_START);
        let mut waiting = Vec::new();
        for i in 0..1_000u16 {
            stream.extend_from_slice(&publish(1, i, "s/a", b"{\"ts\":1}"));
            stream.extend_from_slice(&[0xd0, 0x00]);
            split(&mut stream, 1 << 10, &mut waiting).unwrap();
            assert!(stream.is_empty());
        }
        assert_eq!(waiting.len(), 2_000);
    }

    #[test]
    fn the_stream_keeps_its_size_through_reads_that_end_inside_a_packet() {
        // full reads, each ending inside a packet: the part left goes to the front, the
        // stream does not grow (it doubled to 256 KiB from its consumed front before)
        let mut stream = Vec::with_capacity(STREAM_START);
        let packets: Vec<u8> =
            (0..20_000u16).flat_map(|i| publish(1, i, "s/a", b"{\"ts\":1,\"v\":2.5}")).collect();
        let (mut waiting, mut n) = (Vec::new(), 0);
        for read in packets.chunks(READ - 7) {
            stream.reserve(read.len());
            stream.extend_from_slice(read);
            split(&mut stream, 1 << 10, &mut waiting).unwrap();
            assert!(!stream.is_empty() || read.len() < READ - 7, "each read ends inside a packet");
            n += waiting.len();
            waiting.clear();
            assert_eq!(stream.capacity(), STREAM_START, "the stream keeps its size");
        }
        assert_eq!(n, 20_000);
        // a packet of 1 MiB grows it (by doubling: its reads are not copied over and over),
        // and once it is through the stream is back to its size
        let large = publish(0, 0, "s/large", &vec![b'x'; 1 << 20]);
        let mut reallocations = 0;
        for read in large.chunks(READ) {
            let before = stream.capacity();
            stream.reserve(read.len());
            reallocations += usize::from(stream.capacity() != before);
            stream.extend_from_slice(read);
            split(&mut stream, 2 << 20, &mut waiting).unwrap();
            refit(&mut stream);
        }
        assert!(reallocations <= 6, "{reallocations} reallocations for 17 reads");
        assert_eq!(waiting.len(), 1);
        assert_eq!(stream.capacity(), STREAM_START);
    }

    proptest::proptest! {
        #[test]
        fn any_byte_stream_is_split_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400), chunk in 1usize..40) {
            let mut buf = Vec::new();
            'feed: for c in bytes.chunks(chunk) {
                buf.extend_from_slice(c);
                if split(&mut buf, 200, &mut Vec::new()).is_err() {
                    break 'feed;
                }
            }
            proptest::prop_assert!(buf.len() <= bytes.len());
        }
    }

    /// A packet of type `t` with a body of `len` bytes.
    fn packet(t: u8, len: usize) -> Vec<u8> {
        let mut p = vec![t << 4];
        encode_remaining(len, &mut p);
        p.extend(std::iter::repeat_n(0xAAu8, len));
        p
    }

    /// The offsets at which packets end, after the first one.
    fn ends(packets: &[Vec<u8>]) -> Vec<usize> {
        let mut at = 0;
        packets
            .iter()
            .map(|p| {
                at += p.len();
                at
            })
            .collect()
    }

    #[test]
    fn acknowledgements_find_the_gaps_between_the_clients_packets() {
        // CONNECT, PINGREQ (no body), UNSUBSCRIBE
        let packets = [packet(1, 30), packet(12, 0), packet(10, 40)];
        let stream: Vec<u8> = packets.concat();
        let mut b = PacketBounds::default();
        // not before CONNECT is whole
        assert_eq!(b.feed(&stream[..10]).unwrap(), None);
        assert!(!b.at_boundary());
        // CONNECT ends at 32: acknowledgements may follow
        assert_eq!(b.feed(&stream[10..33]).unwrap(), Some(22));
        assert!(!b.at_boundary(), "inside the PINGREQ");
        assert_eq!(b.feed(&stream[33..40]).unwrap(), Some(1));
        assert!(!b.at_boundary());
        assert_eq!(b.feed(&stream[40..]).unwrap(), Some(stream.len() - 40));
        assert!(b.at_boundary());
        assert_eq!(b.feed(&packet(12, 0)).unwrap(), Some(0), "already between two packets");
        assert_eq!(b.packets, 4);
    }

    proptest::proptest! {
        #[test]
        fn every_chunk_reports_its_first_gap_after_connect(
            sizes in proptest::collection::vec(0usize..300, 1..20),
            chunk in 1usize..97,
        ) {
            let packets: Vec<Vec<u8>> = sizes.iter().map(|&n| packet(3, n)).collect();
            let stream = packets.concat();
            let ends = ends(&packets);
            let mut b = PacketBounds::default();
            let mut start = 0;
            for c in stream.chunks(chunk) {
                let got = b.feed(c).unwrap();
                let want = ends.iter().find(|&&e| e >= start && e <= start + c.len() && (e > start || start >= ends[0]))
                    .map(|&e| e - start);
                proptest::prop_assert_eq!(got, want, "chunk at {}", start);
                start += c.len();
            }
            proptest::prop_assert_eq!(b.packets as usize, packets.len());
            proptest::prop_assert!(b.at_boundary());
        }
    }
}
