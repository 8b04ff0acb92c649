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
use crate::event::{Event, Key, Values};
use crate::plan::{Plan, StreamDef};
use crate::topic::Captures;

/// Longest key or device id a [`Decoded`] holds, in bytes.
pub const SHORT_KEY: usize = 24;
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
/// `ingest` would have decoded it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub(crate) stream: u16,
    pub(crate) missing_values: u8,
    pub(crate) non_numeric_values: u8,
    pub(crate) ts: i64,
    pub(crate) key: heapless::String<SHORT_KEY>,
    /// `None`: the device is the key.
    pub(crate) device: Option<heapless::String<SHORT_KEY>>,
    pub(crate) values: [f64; FEW_VALUES],
}

impl Decoded {
    /// Writes the event into `ev` (its `recv_ms` left as it is).
    pub(crate) fn fill(&self, ev: &mut Event) {
        ev.stream = self.stream;
        ev.ts = self.ts;
        ev.key.clear();
        // cannot fail: SHORT_KEY < KEY_CAP
        let _ = ev.key.push_str(&self.key);
        ev.device.clear();
        let _ = ev.device.push_str(self.device.as_deref().unwrap_or(&self.key));
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
        let short = |k: &Key| heapless::String::try_from(k.as_str()).ok();
        let device = if scratch.device == scratch.key { None } else { Some(short(&scratch.device)?) };
        let mut values = [0.0; FEW_VALUES];
        values.copy_from_slice(&scratch.values.0[..FEW_VALUES]);
        Some(Decoded {
            stream: s as u16,
            missing_values: u8::try_from(notes.missing_values).ok()?,
            non_numeric_values: u8::try_from(notes.non_numeric_values).ok()?,
            ts: scratch.ts,
            key: short(&scratch.key)?,
            device,
            values,
        })
    }
}
