//! The uplink's MQTT 3.1.1 connection, without a client library's request
//! queue: packets are encoded (rumqttc's `mqttbytes`) into one buffer and
//! written with one call, so a burst of results goes out in a few writes
//! instead of one system call and one TCP segment per result (the MQTT
//! client wrote and flushed each request on its own); PUBACKs are parsed
//! from bulk reads. TCP, or TLS with the same rustls settings as the source.
//! Which result a packet id carries, and what is acknowledged, stays with
//! [`super::delivery`].

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, LastWill, Packet, Publish};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest packet the uplink sends or takes.
pub const MAX_PACKET: usize = 16 << 20;

/// How long a connect, a TLS handshake or a write may take before the connection counts as dead.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The MQTT keep-alive; a PINGREQ goes out at half of it.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The gateway's presence on the upstream broker (retained on the status
/// topic): said after each connect, and on a clean stop.
pub const ONLINE: &[u8] = b"online";
/// Said by the broker (the connection's will) when the gateway is gone without
/// a word, and by the gateway itself when it stops.
pub const OFFLINE: &[u8] = b"offline";

/// Why the connection failed, as the log says it.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("the broker refused the connection: {0:?}")]
    Refused(rumqttc::mqttbytes::v4::ConnectReturnCode),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("connection closed by the broker")]
    Closed,
    #[error("no answer to a ping within {0:?}")]
    PingTimeout(Duration),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where and how the uplink connects.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: Option<super::mqtt::ClientTls>,
    pub client_id: String,
    pub login: Option<(String, String)>,
    /// `<topic_prefix>/status`: retained `online`, and `offline` as the
    /// connection's will and at a clean stop.
    pub status_topic: String,
}

/// An open connection: what was read and not yet parsed, what is encoded and not yet written.
pub struct Conn {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_pkid: u16,
}

async fn timed<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T, ConnError> {
    tokio::time::timeout(IO_TIMEOUT, f).await.map_err(|_| ConnError::Timeout)?.map_err(ConnError::from)
}

impl Conn {
    /// Connects (TCP, TLS when configured), sends CONNECT with a clean
    /// session and the will (retained `offline` on the status topic), waits
    /// for a successful CONNACK and encodes the retained `online`.
    pub async fn connect(t: &Target) -> Result<Conn, ConnError> {
        let tcp = timed(tokio::net::TcpStream::connect((t.host.as_str(), t.port))).await?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &t.tls {
            None => Box::new(tcp),
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                Box::new(timed(connector.connect(name.clone(), tcp)).await?)
            }
        };
        let mut c = Conn {
            io,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(4096),
            next_pkid: 0,
        };
        let mut connect = Connect::new(t.client_id.clone());
        connect.keep_alive = KEEP_ALIVE.as_secs() as u16;
        connect.clean_session = true;
        connect.last_will = Some(LastWill::new(t.status_topic.clone(), OFFLINE, QoS::AtLeastOnce, true));
        if let Some((user, password)) = &t.login {
            connect.set_login(user.clone(), password.clone());
        }
        connect.write(&mut c.wbuf).map_err(|e| ConnError::Protocol(e.to_string()))?;
        c.flush().await?;
        let first = tokio::time::timeout(IO_TIMEOUT, c.read()).await.map_err(|_| ConnError::Timeout)??;
        match first.first() {
            Some(Packet::ConnAck(ConnAck {
                code: rumqttc::mqttbytes::v4::ConnectReturnCode::Success,
                ..
            })) => {
                c.publish_qos0(t.status_topic.clone(), ONLINE.to_vec(), true)?;
                Ok(c)
            }
            Some(Packet::ConnAck(ack)) => Err(ConnError::Refused(ack.code)),
            other => Err(ConnError::Protocol(format!("expected CONNACK, got {other:?}"))),
        }
    }

    /// Encodes a QoS 1 PUBLISH under the next packet id not in use; returns that id.
    pub fn publish(
        &mut self,
        topic: String,
        payload: bytes::Bytes,
        in_use: impl Fn(u16) -> bool,
    ) -> Result<u16, ConnError> {
        let mut pkid = self.next_pkid;
        loop {
            pkid = pkid.wrapping_add(1).max(1);
            if !in_use(pkid) {
                break;
            }
        }
        self.next_pkid = pkid;
        let mut p = Publish::new(topic, QoS::AtLeastOnce, Vec::new());
        p.payload = payload;
        p.pkid = pkid;
        self.encode(&Packet::Publish(p))?;
        Ok(pkid)
    }

    /// Encodes a QoS 0 PUBLISH (the stats, the status), retained or not.
    pub fn publish_qos0(&mut self, topic: String, payload: Vec<u8>, retain: bool) -> Result<(), ConnError> {
        let mut p = Publish::new(topic, QoS::AtMostOnce, payload);
        p.retain = retain;
        self.encode(&Packet::Publish(p))
    }

    pub fn ping(&mut self) -> Result<(), ConnError> {
        self.encode(&Packet::PingReq)
    }

    pub fn disconnect(&mut self) -> Result<(), ConnError> {
        self.encode(&Packet::Disconnect)
    }

    fn encode(&mut self, p: &Packet) -> Result<(), ConnError> {
        p.write(&mut self.wbuf, MAX_PACKET).map(|_| ()).map_err(|e| ConnError::Protocol(e.to_string()))
    }

    /// Bytes encoded and not yet written.
    pub fn buffered(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes everything encoded, in as few writes as the socket takes.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        timed(async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        })
        .await?;
        self.wbuf.clear();
        Ok(())
    }

    /// Waits for bytes from the broker and returns the whole packets they
    /// complete (possibly none). Cancel-safe: what was read stays buffered.
    pub async fn read(&mut self) -> Result<Vec<Packet>, ConnError> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(4096);
        }
        let n = self.io.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(ConnError::Closed);
        }
        let mut out = Vec::new();
        loop {
            match Packet::read(&mut self.rbuf, MAX_PACKET) {
                Ok(p) => out.push(p),
                Err(MqttError::InsufficientBytes(_)) => return Ok(out),
                Err(e) => return Err(ConnError::Protocol(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker stand-in on a local socket: what the uplink writes is what MQTT says.
    #[tokio::test]
    async fn connect_publish_in_bulk_and_read_acks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let broker = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::with_capacity(1 << 16);
            let mut packets = Vec::new();
            let mut reads = 0;
            while packets.len() < 103 {
                s.read_buf(&mut buf).await.unwrap();
                reads += 1;
                while let Ok(p) = Packet::read(&mut buf, MAX_PACKET) {
                    if matches!(p, Packet::Connect(_)) {
                        let ack = ConnAck::new(rumqttc::mqttbytes::v4::ConnectReturnCode::Success, false);
                        let mut out = BytesMut::new();
                        ack.write(&mut out).unwrap();
                        s.write_all(&out).await.unwrap();
                    }
                    packets.push(p);
                }
            }
            // acknowledge two publishes in one write
            let mut out = BytesMut::new();
            rumqttc::mqttbytes::v4::PubAck::new(1).write(&mut out).unwrap();
            rumqttc::mqttbytes::v4::PubAck::new(2).write(&mut out).unwrap();
            s.write_all(&out).await.unwrap();
            (packets, reads)
        });
        let t = Target {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            client_id: "up".into(),
            login: Some(("u".into(), "p".into())),
            status_topic: "gw/status".into(),
        };
        let mut c = Conn::connect(&t).await.unwrap();
        for i in 0..100 {
            c.publish(format!("r/{i}"), bytes::Bytes::from(format!("{{\"i\":{i}}}")), |id| id == 3).unwrap();
        }
        c.publish_qos0("stats".into(), b"{}".to_vec(), true).unwrap();
        c.flush().await.unwrap();
        let (packets, reads) = broker.await.unwrap();
        let Packet::Connect(connect) = &packets[0] else { panic!("{:?}", packets[0]) };
        assert!(connect.clean_session && connect.client_id == "up" && connect.login.is_some());
        // presence: the will says `offline` (retained), the first publish `online` (retained)
        let will = connect.last_will.as_ref().expect("a will");
        assert_eq!((will.topic.as_str(), &will.message[..], will.retain), ("gw/status", OFFLINE, true));
        assert!(
            matches!(&packets[1], Packet::Publish(p) if p.topic == "gw/status" && p.retain && &p.payload[..] == ONLINE),
            "{:?}",
            packets[1]
        );
        let ids: Vec<u16> = packets[2..102]
            .iter()
            .map(|p| match p {
                Packet::Publish(p) if p.qos == QoS::AtLeastOnce => p.pkid,
                other => panic!("{other:?}"),
            })
            .collect();
        // ids in order, skipping the one in use
        assert_eq!(&ids[..4], &[1, 2, 4, 5]);
        assert!(matches!(&packets[102], Packet::Publish(p) if p.qos == QoS::AtMostOnce && p.retain));
        assert!(reads <= 3, "101 publishes reached the broker in {reads} reads");
        let mut acks = Vec::new();
        while acks.len() < 2 {
            acks.extend(c.read().await.unwrap());
        }
        assert!(
            matches!(acks[..], [Packet::PubAck(ref a), Packet::PubAck(ref b)] if a.pkid == 1 && b.pkid == 2)
        );
    }
}
