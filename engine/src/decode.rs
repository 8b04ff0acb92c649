//! Turning an MQTT message into an [`Event`]: JSON objects (configured field
//! names; timestamps in s/ms/us/ns as integers or decimals, or RFC 3339),
//! bare numbers, and postcard. Nothing here allocates or panics: a message
//! that does not decode yields a [`DecodeError`] the engine counts by name.

use crate::prelude::*;

use serde::Deserialize;

use crate::event::{Event, Key, Values, MAX_VALUES};
use crate::json::{self, Raw};
use crate::plan::{Clock, FieldRef, Format, StreamDef, TimeUnit};
use crate::topic::Captures;

/// Timestamps further than this from the epoch (year 9999) are refused.
pub const MAX_ABS_TS_MS: i64 = 253_402_300_799_999;

/// Why a message was skipped. Counted per stream under [`DecodeError::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is larger than source.max_payload")]
    TooLarge,
    #[error("payload is not a JSON object")]
    InvalidJson,
    #[error("payload has no timestamp field")]
    MissingTime,
    #[error("timestamp field is not a number or RFC 3339 string in the configured unit")]
    BadTime,
    #[error("timestamp is before year 1 or after year 9999")]
    TimeOutOfRange,
    #[error("payload has no key field")]
    MissingKey,
    #[error("key is not a string or number")]
    BadKey,
    #[error("key or device is longer than 64 bytes")]
    KeyTooLong,
    #[error("payload has no device field")]
    MissingDevice,
    #[error("payload is not a finite number")]
    InvalidNumber,
    #[error("payload is not a valid postcard record")]
    InvalidPostcard,
}

impl DecodeError {
    pub const ALL: [DecodeError; 11] = [
        DecodeError::TooLarge,
        DecodeError::InvalidJson,
        DecodeError::MissingTime,
        DecodeError::BadTime,
        DecodeError::TimeOutOfRange,
        DecodeError::MissingKey,
        DecodeError::BadKey,
        DecodeError::KeyTooLong,
        DecodeError::MissingDevice,
        DecodeError::InvalidNumber,
        DecodeError::InvalidPostcard,
    ];

    /// The counter name (`decode_errors.<name>` in stats).
    pub fn name(self) -> &'static str {
        match self {
            DecodeError::TooLarge => "payload_too_large",
            DecodeError::InvalidJson => "invalid_json",
            DecodeError::MissingTime => "missing_time",
            DecodeError::BadTime => "bad_time",
            DecodeError::TimeOutOfRange => "time_out_of_range",
            DecodeError::MissingKey => "missing_key",
            DecodeError::BadKey => "bad_key",
            DecodeError::KeyTooLong => "key_too_long",
            DecodeError::MissingDevice => "missing_device",
            DecodeError::InvalidNumber => "invalid_number",
            DecodeError::InvalidPostcard => "invalid_postcard",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Soft problems with a decoded event: it is kept, the problem is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notes {
    /// Configured values absent from the payload.
    pub missing_values: u32,
    /// Values present but not usable as a finite number.
    pub non_numeric_values: u32,
}

/// The postcard payload: `ts` in the stream's `time_unit`; `values`
/// positional, in the order of the stream's `values` list.
#[derive(Debug, Deserialize, serde::Serialize, PartialEq)]
pub struct PostcardPayload<'a> {
    pub ts: i64,
    #[serde(borrow)]
    pub key: Option<&'a str>,
    #[serde(borrow)]
    pub device: Option<&'a str>,
    pub values: heapless::Vec<Option<f64>, MAX_VALUES>,
}

/// Converts a JSON number's text into ms since the epoch, flooring
/// sub-millisecond parts, exactly (no float rounding).
pub fn number_to_ms(text: &str, unit: TimeUnit) -> Result<i64, DecodeError> {
    // what devices send: a plain integer, which fits an i64 at up to 18 digits
    let digits = text.strip_prefix('-').unwrap_or(text);
    if (1..=18).contains(&digits.len()) && digits.bytes().all(|c| c.is_ascii_digit()) {
        let v = digits.bytes().fold(0i64, |v, c| v * 10 + i64::from(c - b'0'));
        return number_to_ms_i64(if digits.len() < text.len() { -v } else { v }, unit);
    }
    number_to_ms_exact(text, unit)
}

/// [`number_to_ms`] for any JSON number: fractions, exponents, any length.
fn number_to_ms_exact(text: &str, unit: TimeUnit) -> Result<i64, DecodeError> {
    let shift: i32 = match unit {
        TimeUnit::S => 3,
        TimeUnit::Ms => 0,
        TimeUnit::Us => -3,
        TimeUnit::Ns => -6,
        TimeUnit::Rfc3339 => return Err(DecodeError::BadTime),
    };
    let b = text.as_bytes();
    let mut i = 0;
    let neg = b.first() == Some(&b'-');
    if neg {
        i = 1;
    }
    let mut mant: u128 = 0;
    let mut digits = 0u32;
    let mut exp: i32 = 0;
    let mut dropped_nonzero = false;
    let mut seen_digit = false;
    let mut in_frac = false;
    while i < b.len() {
        match b[i] {
            d @ b'0'..=b'9' => {
                seen_digit = true;
                if digits < 36 {
                    mant = mant * 10 + u128::from(d - b'0');
                    if mant != 0 {
                        digits += 1;
                    }
                    if in_frac {
                        exp -= 1;
                    }
                } else {
                    dropped_nonzero |= d != b'0';
                    if !in_frac {
                        exp += 1;
                    }
                }
            }
            b'.' if !in_frac => in_frac = true,
            b'e' | b'E' => {
                let e: i32 = text[i + 1..].parse().map_err(|_| DecodeError::BadTime)?;
                exp = exp.checked_add(e).ok_or(DecodeError::TimeOutOfRange)?;
                break;
            }
            _ => return Err(DecodeError::BadTime),
        }
        i += 1;
    }
    if !seen_digit {
        return Err(DecodeError::BadTime);
    }
    let e = exp + shift;
    let limit = MAX_ABS_TS_MS as u128;
    let (mut q, exact) = if mant == 0 {
        (0u128, !dropped_nonzero)
    } else if e >= 0 {
        if e > 20 {
            return Err(DecodeError::TimeOutOfRange);
        }
        let q = mant.checked_mul(10u128.pow(e as u32)).ok_or(DecodeError::TimeOutOfRange)?;
        (q, !dropped_nonzero)
    } else if e < -38 {
        (0, false)
    } else {
        let p = 10u128.pow((-e) as u32);
        (mant / p, mant % p == 0 && !dropped_nonzero)
    };
    if neg && !exact {
        q += 1; // floor towards negative infinity
    }
    if q > limit {
        return Err(DecodeError::TimeOutOfRange);
    }
    Ok(if neg { -(q as i64) } else { q as i64 })
}

fn two(b: &[u8], i: usize) -> Option<i64> {
    let d = b.get(i..i + 2)?;
    if d.iter().all(u8::is_ascii_digit) {
        Some(i64::from(d[0] - b'0') * 10 + i64::from(d[1] - b'0'))
    } else {
        None
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 timestamp (`2023-11-14T22:13:20.123Z`,
/// `2023-11-14 23:13:20+01:00`) into ms since the epoch, flooring sub-ms digits.
pub fn rfc3339_to_ms(s: &[u8]) -> Result<i64, DecodeError> {
    let bad = DecodeError::BadTime;
    if s.len() < 20 || !s[..4].iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    let year = s[..4].iter().fold(0i64, |a, &d| a * 10 + i64::from(d - b'0'));
    if s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't' | b' ') || s[13] != b':' || s[16] != b':'
    {
        return Err(bad);
    }
    let (mo, d, h, mi, se) = (
        two(s, 5).ok_or(bad)?,
        two(s, 8).ok_or(bad)?,
        two(s, 11).ok_or(bad)?,
        two(s, 14).ok_or(bad)?,
        two(s, 17).ok_or(bad)?,
    );
    let month_days = [
        31,
        if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo) || d < 1 || d > month_days[(mo - 1) as usize] || h > 23 || mi > 59 || se > 60 {
        return Err(bad);
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                frac_ms = frac_ms * 10 + i64::from(s[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return Err(bad);
        }
        for _ in n..3 {
            frac_ms *= 10;
        }
    }
    let offset_min = match s.get(i) {
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = two(s, i + 1).ok_or(bad)?;
            if s.get(i + 3) != Some(&b':') {
                return Err(bad);
            }
            let om = two(s, i + 4).ok_or(bad)?;
            if oh > 23 || om > 59 {
                return Err(bad);
            }
            i += 6;
            let m = oh * 60 + om;
            if sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return Err(bad),
    };
    if i != s.len() {
        return Err(bad);
    }
    let days = days_from_civil(year, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_min * 60;
    Ok(secs * 1000 + frac_ms)
}

/// What a payload's member is used for.
#[derive(Clone, Copy, Debug, Default)]
struct Roles {
    time: bool,
    key: bool,
    device: bool,
    value: Option<u8>,
}

/// Per-stream decoder, built once from the stream's definition.
#[derive(Debug)]
pub struct Decoder {
    format: Format,
    unit: TimeUnit,
    needs_time: bool,
    key: FieldRef,
    device: FieldRef,
    device_is_key: bool,
    n_values: usize,
    /// Payload member names and their roles (JSON).
    fields: Vec<(String, Roles)>,
}

/// Scratch for one JSON decode: the raw members found per role.
#[derive(Default)]
struct Found<'a> {
    time: Option<Raw<'a>>,
    key: Option<Raw<'a>>,
    device: Option<Raw<'a>>,
    values: [Option<Raw<'a>>; MAX_VALUES],
}

impl Decoder {
    pub fn new(s: &StreamDef) -> Self {
        let mut fields: Vec<(String, Roles)> = Vec::new();
        let mut role = |name: &str, f: &dyn Fn(&mut Roles)| {
            if let Some((_, r)) = fields.iter_mut().find(|(n, _)| n == name) {
                f(r)
            } else {
                let mut r = Roles::default();
                f(&mut r);
                fields.push((name.to_string(), r));
            }
        };
        let needs_time = s.clock != Clock::Receive;
        if needs_time {
            role(&s.time_field, &|r| r.time = true);
        }
        if let FieldRef::Payload(n) = &s.key {
            role(n, &|r| r.key = true);
        }
        if let FieldRef::Payload(n) = &s.device {
            role(n, &|r| r.device = true);
        }
        for (i, v) in s.values.iter().enumerate() {
            role(v, &|r| r.value = Some(i as u8));
        }
        Decoder {
            format: s.format,
            unit: s.time_unit,
            needs_time,
            key: s.key.clone(),
            device: s.device.clone(),
            device_is_key: s.device == s.key,
            n_values: s.values.len(),
            fields,
        }
    }

    /// Decodes one message of this stream. `pattern` is the index of the
    /// topic pattern that matched, `caps` its captures. The event's `ts` is the
    /// device's timestamp (the engine applies the stream's clock mode);
    /// `recv_ms` is left to the caller.
    pub fn decode(
        &self,
        topic: &str,
        pattern: usize,
        caps: &Captures,
        payload: &[u8],
        out: &mut Event,
    ) -> Result<Notes, DecodeError> {
        let mut notes = Notes::default();
        out.values = Values::ABSENT;
        out.ts = 0;
        match self.format {
            Format::Json => self.decode_json(topic, pattern, caps, payload, out, &mut notes)?,
            Format::Number => {
                let text = core::str::from_utf8(payload).map_err(|_| DecodeError::InvalidNumber)?.trim();
                let v: f64 = text.parse().map_err(|_| DecodeError::InvalidNumber)?;
                if !v.is_finite() || text.is_empty() {
                    return Err(DecodeError::InvalidNumber);
                }
                out.values.0[0] = v;
                self.key_from(&self.key, topic, pattern, caps, None, &mut out.key, DecodeError::MissingKey)?;
                self.device_from(topic, pattern, caps, None, out)?;
            }
            Format::Postcard => {
                let (p, rest): (PostcardPayload<'_>, &[u8]) =
                    postcard::take_from_bytes(payload).map_err(|_| DecodeError::InvalidPostcard)?;
                if !rest.is_empty() {
                    return Err(DecodeError::InvalidPostcard);
                }
                if self.needs_time {
                    out.ts = number_to_ms_i64(p.ts, self.unit)?;
                }
                let key_raw = p.key.map(|k| Raw::Str { raw: k.as_bytes(), escaped: false });
                let dev_raw = p.device.map(|k| Raw::Str { raw: k.as_bytes(), escaped: false });
                self.key_from(
                    &self.key,
                    topic,
                    pattern,
                    caps,
                    key_raw,
                    &mut out.key,
                    DecodeError::MissingKey,
                )?;
                let device_raw = match &self.device {
                    FieldRef::Payload(f) if f == "key" => key_raw,
                    _ => dev_raw,
                };
                self.device_from(topic, pattern, caps, device_raw, out)?;
                for i in 0..self.n_values {
                    match p.values.get(i).copied().flatten() {
                        Some(v) if v.is_finite() => out.values.0[i] = v,
                        Some(_) => notes.non_numeric_values += 1,
                        None => notes.missing_values += 1,
                    }
                }
            }
        }
        Ok(notes)
    }

    fn decode_json(
        &self,
        topic: &str,
        pattern: usize,
        caps: &Captures,
        payload: &[u8],
        out: &mut Event,
        notes: &mut Notes,
    ) -> Result<(), DecodeError> {
        let mut found = Found::default();
        json::for_each_member(payload, |name, esc, raw| {
            for (n, roles) in &self.fields {
                if json::name_eq(name, esc, n) {
                    if roles.time {
                        found.time = Some(raw);
                    }
                    if roles.key {
                        found.key = Some(raw);
                    }
                    if roles.device {
                        found.device = Some(raw);
                    }
                    if let Some(v) = roles.value {
                        found.values[v as usize] = Some(raw);
                    }
                    break;
                }
            }
        })
        .map_err(|_| DecodeError::InvalidJson)?;
        if self.needs_time {
            out.ts = match found.time {
                None | Some(Raw::Null) => return Err(DecodeError::MissingTime),
                Some(Raw::Number(t)) => number_to_ms(t, self.unit)?,
                Some(Raw::Str { raw, escaped: false }) => rfc3339_to_ms(raw)?,
                Some(_) => return Err(DecodeError::BadTime),
            };
            if out.ts.abs() > MAX_ABS_TS_MS {
                return Err(DecodeError::TimeOutOfRange);
            }
        }
        self.key_from(&self.key, topic, pattern, caps, found.key, &mut out.key, DecodeError::MissingKey)?;
        self.device_from(topic, pattern, caps, found.device, out)?;
        for i in 0..self.n_values {
            match found.values[i] {
                None | Some(Raw::Null) => notes.missing_values += 1,
                Some(Raw::Number(t)) => match parse_f64(t) {
                    Some(v) if v.is_finite() => out.values.0[i] = v,
                    _ => notes.non_numeric_values += 1,
                },
                Some(Raw::Bool(b)) => out.values.0[i] = if b { 1.0 } else { 0.0 },
                Some(Raw::Str { raw, escaped: false }) => {
                    match core::str::from_utf8(raw).ok().and_then(|s| s.trim().parse::<f64>().ok()) {
                        Some(v) if v.is_finite() => out.values.0[i] = v,
                        _ => notes.non_numeric_values += 1,
                    }
                }
                Some(_) => notes.non_numeric_values += 1,
            }
        }
        Ok(())
    }

    fn device_from(
        &self,
        topic: &str,
        pattern: usize,
        caps: &Captures,
        raw: Option<Raw<'_>>,
        out: &mut Event,
    ) -> Result<(), DecodeError> {
        if self.device_is_key {
            out.device.clone_from(&out.key);
            return Ok(());
        }
        self.key_from(&self.device, topic, pattern, caps, raw, &mut out.device, DecodeError::MissingDevice)
    }

    #[allow(clippy::too_many_arguments)]
    fn key_from(
        &self,
        spec: &FieldRef,
        topic: &str,
        pattern: usize,
        caps: &Captures,
        raw: Option<Raw<'_>>,
        out: &mut Key,
        missing: DecodeError,
    ) -> Result<(), DecodeError> {
        out.clear();
        match spec {
            FieldRef::Constant => Ok(()),
            FieldRef::Capture { index_per_topic, .. } => {
                out.push_str(caps.get(topic, index_per_topic[pattern])).map_err(|_| DecodeError::KeyTooLong)
            }
            FieldRef::Payload(_) => match raw {
                None | Some(Raw::Null) => Err(missing),
                Some(Raw::Number(t)) => out.push_str(t).map_err(|_| DecodeError::KeyTooLong),
                Some(Raw::Str { raw, escaped: false }) => {
                    let s = core::str::from_utf8(raw).map_err(|_| DecodeError::BadKey)?;
                    out.push_str(s).map_err(|_| DecodeError::KeyTooLong)
                }
                Some(Raw::Str { raw, escaped: true }) => {
                    let mut too_long = false;
                    json::unescape(raw, |c| {
                        out.push(c).map_err(|_| {
                            too_long = true;
                        })
                    })
                    .map_err(|_| {
                        if too_long {
                            DecodeError::KeyTooLong
                        } else {
                            DecodeError::BadKey
                        }
                    })
                }
                Some(_) => Err(DecodeError::BadKey),
            },
        }
    }
}

/// A JSON number's value, as `str::parse::<f64>` gives it. The common case,
/// `-?digits[.digits]` with at most 15 digits in all, is computed here at a
/// fraction of the cost: the digits as an integer (exact: below 2^53) divided
/// by a power of ten (exact up to 10^22) is one correctly rounded IEEE
/// operation, so the same `f64` (Clinger's fast path).
fn parse_f64(text: &str) -> Option<f64> {
    const POW10: [f64; 16] =
        [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
    let b = text.as_bytes();
    let neg = b.first() == Some(&b'-');
    let (mut m, mut digits, mut frac, mut dot) = (0u64, 0usize, 0usize, false);
    for &c in &b[usize::from(neg)..] {
        match c {
            b'0'..=b'9' => {
                m = m * 10 + u64::from(c - b'0');
                digits += 1;
                frac += usize::from(dot);
                if digits > 15 {
                    return text.parse().ok();
                }
            }
            b'.' if !dot => dot = true,
            _ => return text.parse().ok(),
        }
    }
    if digits == 0 || (dot && frac == 0) {
        return text.parse().ok();
    }
    let v = m as f64 / POW10[frac];
    Some(if neg { -v } else { v })
}

fn number_to_ms_i64(v: i64, unit: TimeUnit) -> Result<i64, DecodeError> {
    let ms = match unit {
        TimeUnit::S => v.checked_mul(1000).ok_or(DecodeError::TimeOutOfRange)?,
        TimeUnit::Ms => v,
        TimeUnit::Us => v.div_euclid(1000),
        TimeUnit::Ns => v.div_euclid(1_000_000),
        TimeUnit::Rfc3339 => return Err(DecodeError::BadTime),
    };
    if ms.abs() > MAX_ABS_TS_MS {
        return Err(DecodeError::TimeOutOfRange);
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The fast paths give exactly what the general ones give.
        #[test]
        fn fast_number_parsing_is_exact(
            int in "-?[0-9]{1,19}",
            dec in "-?[0-9]{0,17}(\\.[0-9]{0,17})?",
            any in "[-+.0-9eE]{0,20}",
            bits in any::<u64>(),
        ) {
            for unit in [TimeUnit::S, TimeUnit::Ms, TimeUnit::Us, TimeUnit::Ns] {
                prop_assert_eq!(number_to_ms(&int, unit), number_to_ms_exact(&int, unit));
            }
            let shown = format!("{}", f64::from_bits(bits));
            for t in [&int, &dec, &any, &shown] {
                let fast = parse_f64(t);
                let general = t.parse::<f64>().ok();
                prop_assert_eq!(fast.map(f64::to_bits), general.map(f64::to_bits), "{}", t);
            }
        }
    }

    #[test]
    fn numbers_to_ms_exactly() {
        use TimeUnit::*;
        assert_eq!(number_to_ms("1700000000123", Ms), Ok(1_700_000_000_123));
        assert_eq!(number_to_ms("1700000000.123", S), Ok(1_700_000_000_123));
        assert_eq!(number_to_ms("1700000000.1239", S), Ok(1_700_000_000_123));
        assert_eq!(number_to_ms("1.7000000001e12", Ms), Ok(1_700_000_000_100));
        assert_eq!(number_to_ms("1700000000123456", Us), Ok(1_700_000_000_123));
        assert_eq!(number_to_ms("1700000000123456789", Ns), Ok(1_700_000_000_123));
        assert_eq!(number_to_ms("-1.5", Ms), Ok(-2));
        assert_eq!(number_to_ms("-1500", Us), Ok(-2));
        assert_eq!(number_to_ms("-1000", Us), Ok(-1));
        assert_eq!(number_to_ms("0", S), Ok(0));
        assert_eq!(number_to_ms("-0.0", S), Ok(0));
        assert_eq!(number_to_ms("12.5", Ms), Ok(12));
        assert_eq!(number_to_ms("1e300", Ms), Err(DecodeError::TimeOutOfRange));
        assert_eq!(
            number_to_ms("99999999999999999999999999999999999999999999", Ms),
            Err(DecodeError::TimeOutOfRange)
        );
        assert_eq!(number_to_ms("1e-400", Ms), Ok(0));
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_to_ms(b"2023-11-14T22:13:20.123Z"), Ok(1_700_000_000_123));
        assert_eq!(rfc3339_to_ms(b"2023-11-14T23:13:20.1239+01:00"), Ok(1_700_000_000_123));
        assert_eq!(rfc3339_to_ms(b"2023-11-14 22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(rfc3339_to_ms(b"1969-12-31T23:59:59.999Z"), Ok(-1));
        assert_eq!(rfc3339_to_ms(b"2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        for bad in [
            &b"2023-02-29T00:00:00Z"[..],
            b"2023-11-14T22:13:20",
            b"2023-11-14T25:13:20Z",
            b"2023-11-14T22:13:20.Z",
            b"x",
        ] {
            assert_eq!(rfc3339_to_ms(bad), Err(DecodeError::BadTime), "{}", String::from_utf8_lossy(bad));
        }
    }
}
