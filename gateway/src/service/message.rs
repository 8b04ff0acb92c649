//! A source message as the intake carries it to the engine thread: topic
//! and payload in one shared buffer, packet id, QoS and DUP flag — 40 bytes
//! and no allocation of its own (a message held a `String` topic, allocated
//! by the source filter and freed by the engine thread, and a `Bytes`
//! payload: 64 bytes and one allocation each).

use bytes::{Bytes, BytesMut};
use rumqttc::QoS;

#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic's bytes, then the payload's.
    bytes: Bytes,
    /// Where the topic ends in `bytes`.
    topic_len: u32,
    pub pkid: u16,
    pub qos: QoS,
    pub dup: bool,
}

impl Message {
    /// A message of its own buffer (local sensors, tests).
    #[cfg(any(test, feature = "i2c"))]
    pub fn new(topic: &str, payload: &[u8], qos: QoS, pkid: u16, dup: bool) -> Message {
        Message::in_buffer(
            &mut BytesMut::with_capacity(topic.len() + payload.len()),
            topic,
            payload,
            qos,
            pkid,
            dup,
        )
    }

    /// A message whose bytes go at the end of `shared` (the buffer of one
    /// read's messages, sized for all of them beforehand) and are split off it.
    pub fn in_buffer(
        shared: &mut BytesMut,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        pkid: u16,
        dup: bool,
    ) -> Message {
        // an MQTT topic has at most 65,535 bytes; a longer one (a local sensor's
        // configured topic) keeps its first 4 GiB, which no config holds
        let topic_len = u32::try_from(topic.len()).unwrap_or(u32::MAX);
        let topic = &topic.as_bytes()[..topic_len as usize];
        shared.extend_from_slice(topic);
        shared.extend_from_slice(payload);
        Message { bytes: shared.split().freeze(), topic_len, pkid, qos, dup }
    }

    pub fn topic(&self) -> &str {
        let topic = &self.bytes[..self.topic_len as usize];
        // the constructors put a whole `&str` here, or its first 4 GiB (never cut: no topic is that long)
        std::str::from_utf8(topic).unwrap_or_default()
    }

    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.topic_len as usize..]
    }

    /// Bytes of topic and payload.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic())
            .field("payload", &String::from_utf8_lossy(self.payload()))
            .field("pkid", &self.pkid)
            .field("qos", &self.qos)
            .field("dup", &self.dup)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_one_buffer_keep_their_own_topic_and_payload() {
        let mut shared = BytesMut::with_capacity(64);
        let a = Message::in_buffer(&mut shared, "s/a", b"{\"v\":1}", QoS::AtLeastOnce, 7, true);
        let b = Message::in_buffer(&mut shared, "s/ü", b"", QoS::AtMostOnce, 0, false);
        assert_eq!(
            (a.topic(), a.payload(), a.pkid, a.qos, a.dup),
            ("s/a", &b"{\"v\":1}"[..], 7, QoS::AtLeastOnce, true)
        );
        assert_eq!((b.topic(), b.payload()), ("s/ü", &b""[..]));
        assert_eq!(a, Message::new("s/a", b"{\"v\":1}", QoS::AtLeastOnce, 7, true));
        assert_eq!(std::mem::size_of::<Message>(), 40);
    }
}
