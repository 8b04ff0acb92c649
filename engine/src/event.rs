//! The engine's unit of input: one decoded event `(stream, key, device, ts, values)`,
//! with fixed-size keys and value sets so that an event never touches the heap.

use core::fmt;

/// Longest key or device id, in bytes. Longer ones are a decode error (`key_too_long`).
pub const KEY_CAP: usize = 64;
/// Most values one event (or one window's aggregates) can carry.
pub const MAX_VALUES: usize = 16;

/// A key would exceed [`KEY_CAP`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyFull;

/// A key or device id: a short UTF-8 string stored inline.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Key(heapless::String<KEY_CAP>);

impl Key {
    /// The empty key (streams without a `key` setting group everything under it).
    pub const fn empty() -> Self {
        Key(heapless::String::new())
    }

    /// Copies `s` into a key; `None` if it is longer than [`KEY_CAP`].
    pub fn new(s: &str) -> Option<Self> {
        let mut k = heapless::String::new();
        k.push_str(s).ok()?;
        Some(Key(k))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Appends `s`; `Err` when the key would exceed [`KEY_CAP`].
    pub fn push_str(&mut self, s: &str) -> Result<(), KeyFull> {
        self.0.push_str(s).map_err(|_| KeyFull)
    }

    pub fn push(&mut self, c: char) -> Result<(), KeyFull> {
        self.0.push(c).map_err(|_| KeyFull)
    }

    pub fn clear(&mut self) {
        self.0.clear()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Up to [`MAX_VALUES`] numbers, positional per the stream's `values` list
/// (or a window's aggregates). `NaN` marks an absent value: the decoder never
/// lets a non-finite number in, so NaN is free to mean "missing".
#[derive(Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Values(pub [f64; MAX_VALUES]);

impl Values {
    pub const ABSENT: Values = Values([f64::NAN; MAX_VALUES]);

    #[inline]
    pub fn get(&self, i: usize) -> Option<f64> {
        let v = self.0[i];
        if v.is_nan() {
            None
        } else {
            Some(v)
        }
    }
}

impl Default for Values {
    fn default() -> Self {
        Values::ABSENT
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|v| if v.is_nan() { None } else { Some(*v) })).finish()
    }
}

/// One decoded input event.
#[derive(Clone, Debug)]
pub struct Event {
    /// Index of the stream in the pipeline.
    pub stream: u16,
    pub key: Key,
    /// Whose clock stamped `ts` (defaults to the key).
    pub device: Key,
    /// Event time, ms since the Unix epoch (after the stream's clock mode).
    pub ts: i64,
    /// Gateway receive time, ms since the Unix epoch.
    pub recv_ms: i64,
    pub values: Values,
}

impl Event {
    /// An empty event of stream 0, to decode into.
    pub fn blank() -> Self {
        Event {
            stream: 0,
            key: Key::empty(),
            device: Key::empty(),
            ts: 0,
            recv_ms: 0,
            values: Values::ABSENT,
        }
    }
}
