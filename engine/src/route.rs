//! Which streams a message belongs to, and decoding it away from the engine.
//!
//! [`route`] matches a topic against every stream's patterns (the engine's
//! `ingest` uses it). [`Router`] is a read-only copy of the streams' patterns
//! and decoders that another thread — the one reading the source — can use to
//! turn a message into a [`Decoded`] event, which [`Engine::apply`] takes
//! without routing or decoding again: the engine's thread is what bounds a
//! backlog's drain, decoding is a quarter of its work per message, and the
//! reading thread has CPU to spare. A `Decoded` holds the common case only —
//! one stream, decoded without error, keys of at most [`SHORT_KEY`] bytes, at
//! most [`FEW_VALUES`] values — small enough that the intake holding one per
//! message stays within the gateway's memory budget; for anything else
//! [`Router::decode`] says `None` and the message goes through `ingest`, which
//! routes, decodes and counts it as always. Applying a `Decoded` changes the
//! engine exactly as `ingest` of its message would (a property test holds
//! the two to it).
//!
//! [`Engine::apply`]: crate::engine::Engine::apply

use crate::prelude::*;

use crate::decode::Decoder;
use crate::event::{Event, Values};
use crate::plan::{Plan, StreamDef};
use crate::topic::Captures;

/// Most bytes of key and device id (the device's only when it differs from
/// the key) a [`Decoded`] holds.
pub const SHORT_KEY: usize = 18;
/// Most values a [`Decoded`] holds.
pub const FEW_VALUES: usize = 4;

/// The streams whose patterns match `topic`: (stream, pattern, captures),
/// the first matching pattern of each.
pub fn route<'a>(
    streams: &'a [StreamDef],
    topic: &'a str,
) -> impl Iterator<Item = (usize, usize, Captures)> + 'a {
    streams.iter().enumerate().filter_map(move |(s, def)| {
        def.topics.iter().enumerate().find_map(|(i, t)| t.matches(topic).map(|c| (s, i, c)))
    })
}

/// An event decoded from a message of exactly one stream, as the engine's
/// `ingest` would have decoded it: 64 bytes (`Option<Decoded>` too), one per
/// message in the intake — 3,072 of them in a backlog (its channel and the
/// batch being processed), so every byte here is 3 KiB of the gateway's RSS.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    ts: i64,
    values: [f64; FEW_VALUES],
    /// The stream's index + 1 (the zero lets `Option<Decoded>` cost nothing).
    stream: core::num::NonZeroU16,
    missing_values: u8,
    non_numeric_values: u8,
    key_len: u8,
    /// `SAME`: the device is the key.
    device_len: u8,
    /// The key's bytes, then the device's.
    text: [u8; SHORT_KEY],
}

/// `device_len` of a device that is the key.
const SAME: u8 = u8::MAX;

impl Decoded {
    pub(crate) fn stream(&self) -> usize {
        usize::from(self.stream.get() - 1)
    }

    pub(crate) fn notes(&self) -> (u8, u8) {
        (self.missing_values, self.non_numeric_values)
    }

    /// Writes the event into `ev` (its `recv_ms` left as it is).
    pub(crate) fn fill(&self, ev: &mut Event) {
        let k = usize::from(self.key_len);
        let key = &self.text[..k];
        let device = match self.device_len {
            SAME => key,
            d => &self.text[k..k + usize::from(d)],
        };
        ev.stream = self.stream.get() - 1;
        ev.ts = self.ts;
        // cannot fail: the bytes came from keys (UTF-8, shorter than KEY_CAP)
        for (to, from) in [(&mut ev.key, key), (&mut ev.device, device)] {
            to.clear();
            let _ = to.push_str(core::str::from_utf8(from).unwrap_or_default());
        }
        ev.values = Values::ABSENT;
        ev.values.0[..FEW_VALUES].copy_from_slice(&self.values);
    }
}

/// The streams' patterns and decoders, for decoding off the engine's thread.
pub struct Router {
    streams: Vec<StreamDef>,
    decoders: Vec<Decoder>,
    max_payload: usize,
}

impl Router {
    pub fn new(p: &Plan) -> Router {
        Router {
            streams: p.streams.clone(),
            decoders: p.streams.iter().map(Decoder::new).collect(),
            max_payload: p.max_payload,
        }
    }

    /// The message's event, when it is of the common kind (see the module's
    /// doc); `scratch` is working space.
    pub fn decode(&self, topic: &str, payload: &[u8], scratch: &mut Event) -> Option<Decoded> {
        let mut routes = route(&self.streams, topic);
        let (s, pattern, caps) = routes.next()?;
        if routes.next().is_some() || payload.len() > self.max_payload {
            return None;
        }
        let notes = self.decoders[s].decode(topic, pattern, &caps, payload, scratch).ok()?;
        if scratch.values.0[FEW_VALUES..].iter().any(|v| !v.is_nan()) {
            return None;
        }
        let (key, device) = (scratch.key.as_str().as_bytes(), scratch.device.as_str().as_bytes());
        let device_len = if scratch.device == scratch.key { SAME } else { device.len() as u8 };
        let stored = key.len() + if device_len == SAME { 0 } else { device.len() };
        if stored > SHORT_KEY {
            return None;
        }
        let mut text = [0u8; SHORT_KEY];
        text[..key.len()].copy_from_slice(key);
        if device_len != SAME {
            text[key.len()..stored].copy_from_slice(device);
        }
        let mut values = [0.0; FEW_VALUES];
        values.copy_from_slice(&scratch.values.0[..FEW_VALUES]);
        Some(Decoded {
            ts: scratch.ts,
            values,
            stream: u16::try_from(s + 1).ok().and_then(core::num::NonZeroU16::new)?,
            missing_values: u8::try_from(notes.missing_values).ok()?,
            non_numeric_values: u8::try_from(notes.non_numeric_values).ok()?,
            key_len: key.len() as u8,
            device_len,
            text,
        })
    }
}
