//! Results as JSON (docs/SEMANTICS.md §8, §5.1): window rows and routed late events, one object
//! per line or MQTT message, each with a deterministic `id` — a hash of the
//! row's content without `emitted_ms` (xxh3-64, hex), so a redelivered input
//! yields an equal row with an equal id. Encoding reuses one buffer: no
//! allocation per row.

use crate::prelude::*;

use alloc::vec::Vec;
use core::fmt::Write as _;

use crate::engine::{LateRecord, Output};
use crate::event::Values;
use crate::join::{JoinRecord, SideRecord};
use crate::json::write_str;
use crate::plan::{Input, Plan};
use crate::window::WindowRecord;

/// Encodes rows into an internal buffer.
#[derive(Default)]
pub struct JsonEncoder {
    buf: Vec<u8>,
}

/// `write!` into a byte buffer (the engine has no `std::io`).
struct Bytes<'a>(&'a mut Vec<u8>);

impl core::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A finite number as Rust's `Display` writes it (the shortest digits that
/// read back to the same `f64`, never an exponent); `null` otherwise.
///
/// ryu finds the shortest digits several times faster than `core::fmt`, but
/// it breaks an exact tie between two shortest candidates to even where
/// `core::fmt` rounds up (`-16203748939416.062` / `…063`), writes `1.0` for
/// `1`, and an exponent outside 1e-5..1e16. A tie needs two candidates within
/// one ulp of the value, so at least 16 significant digits (at 15 digits
/// candidates lie 1e-15 apart, relatively, an ulp at most 2.2e-16): ryu's
/// text is kept when it has at most 15 digits and no exponent (a sensor's
/// reading, mostly), with a trailing `.0` cut; anything else goes to `Display`.
fn write_num(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(v).as_bytes();
    let s = s.strip_suffix(b".0").unwrap_or(s);
    let significant =
        s.iter().skip_while(|&&c| !matches!(c, b'1'..=b'9')).filter(|c| c.is_ascii_digit()).count();
    if significant <= 15 && !s.contains(&b'e') {
        out.extend_from_slice(s);
    } else {
        let _ = write!(Bytes(out), "{v}");
    }
}

fn write_int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn write_values<'a>(
    out: &mut Vec<u8>,
    names: impl Iterator<Item = &'a str>,
    values: &Values,
    skip_absent: bool,
) {
    out.push(b'{');
    let mut first = true;
    for (i, name) in names.enumerate() {
        let v = values.0[i];
        if skip_absent && v.is_nan() {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(out, name);
        out.push(b':');
        write_num(out, v);
    }
    out.push(b'}');
}

/// One side of a join row: `{"stream","ts","values"}` for a raw event
/// (absent values left out), `{"window","start","end","count","values"}` for a
/// window (undefined aggregates as null).
fn write_side(b: &mut Vec<u8>, p: &Plan, s: &SideRecord) {
    match s.input {
        Input::Stream(i) => {
            let def = &p.streams[i];
            b.extend_from_slice(b"{\"stream\":");
            write_str(b, &def.name);
            b.extend_from_slice(b",\"ts\":");
            write_int(b, s.t0);
            b.extend_from_slice(b",\"values\":");
            write_values(b, def.values.iter().map(String::as_str), &s.values, true);
        }
        Input::Window(i) => {
            let def = &p.windows[i];
            b.extend_from_slice(b"{\"window\":");
            write_str(b, &def.name);
            b.extend_from_slice(b",\"start\":");
            write_int(b, s.t0);
            b.extend_from_slice(b",\"end\":");
            write_int(b, s.t1);
            b.extend_from_slice(b",\"count\":");
            write_int(b, s.count as i64);
            b.extend_from_slice(b",\"values\":");
            write_values(b, def.aggregates.iter().map(|a| a.name.as_str()), &s.values, false);
        }
    }
    b.push(b'}');
}

/// Appends `,"id":"<16 hex>"}` closing the object.
fn write_id(out: &mut Vec<u8>, h: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b",\"id\":\"");
    out.extend((0..16).rev().map(|i| HEX[(h >> (4 * i)) as usize & 15]));
    out.extend_from_slice(b"\"}");
}

impl JsonEncoder {
    pub fn new() -> Self {
        JsonEncoder { buf: Vec::with_capacity(1024) }
    }

    /// Encodes one output as a JSON object (no newline).
    pub fn encode(&mut self, p: &Plan, out: Output<'_>) -> &[u8] {
        self.buf.clear();
        match out {
            Output::Window(r, _) => self.window(p, r),
            Output::Join(r) => self.join(p, r),
            Output::Late(r) => self.late(p, r),
        }
        &self.buf
    }

    fn window(&mut self, p: &Plan, r: &WindowRecord) {
        let def = &p.windows[r.window as usize];
        let b = &mut self.buf;
        b.extend_from_slice(b"{\"window\":");
        write_str(b, &def.name);
        b.extend_from_slice(b",\"key\":");
        write_str(b, r.key.as_str());
        b.extend_from_slice(b",\"start\":");
        write_int(b, r.start);
        b.extend_from_slice(b",\"end\":");
        write_int(b, r.end);
        b.extend_from_slice(b",\"count\":");
        write_int(b, r.count as i64);
        b.extend_from_slice(b",\"values\":");
        write_values(b, def.aggregates.iter().map(|a| a.name.as_str()), &r.values, false);
        let h = xxhash_rust::xxh3::xxh3_64(b);
        b.extend_from_slice(b",\"emitted_ms\":");
        write_int(b, r.emitted_ms);
        write_id(b, h);
    }

    fn join(&mut self, p: &Plan, r: &JoinRecord) {
        let b = &mut self.buf;
        b.extend_from_slice(b"{\"join\":");
        write_str(b, &p.joins[r.join as usize].name);
        b.extend_from_slice(b",\"key\":");
        write_str(b, r.key.as_str());
        b.extend_from_slice(b",\"left\":");
        write_side(b, p, &r.left);
        b.extend_from_slice(b",\"right\":");
        match &r.right {
            Some(side) => write_side(b, p, side),
            None => b.extend_from_slice(b"null"),
        }
        let h = xxhash_rust::xxh3::xxh3_64(b);
        b.extend_from_slice(b",\"emitted_ms\":");
        write_int(b, r.emitted_ms);
        write_id(b, h);
    }

    fn late(&mut self, p: &Plan, r: &LateRecord) {
        let def = &p.streams[r.stream as usize];
        let b = &mut self.buf;
        b.extend_from_slice(b"{\"late\":true,\"stream\":");
        write_str(b, &def.name);
        b.extend_from_slice(b",\"key\":");
        write_str(b, r.key.as_str());
        b.extend_from_slice(b",\"ts\":");
        write_int(b, r.ts);
        b.extend_from_slice(b",\"values\":");
        write_values(b, def.values.iter().map(String::as_str), &r.values, true);
        // the id covers the event (stream, key, ts, values), not when it arrived
        let h = xxhash_rust::xxh3::xxh3_64(b);
        b.extend_from_slice(b",\"recv_ms\":");
        write_int(b, r.recv_ms);
        b.extend_from_slice(b",\"watermark\":");
        write_int(b, r.watermark);
        write_id(b, h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use proptest::prelude::*;

    fn num(v: f64) -> String {
        let mut out = Vec::new();
        write_num(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    /// Results must not change by a byte: numbers print as `Display` does.
    #[test]
    fn numbers_print_as_display_does() {
        let edges = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            0.2 + 0.1,
            27.656,
            1e15,
            9_999_999_999_999_998.0,
            1e16,
            1.5e16,
            1e21,
            1e22,
            1e-5,
            0.00001234,
            1e-6,
            1e-7,
            1.5e-7,
            123_456_789_012_345_680.0,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            5e-324,
            -5e-324,
            (1u64 << 53) as f64,
            ((1u64 << 53) + 2) as f64,
        ];
        for v in edges {
            assert_eq!(num(v), format!("{v}"), "{v:e}");
        }
        assert_eq!(num(f64::NAN), "null");
        assert_eq!(num(f64::INFINITY), "null");
        for e in -330..310 {
            for m in [1.0, 1.5, 2.5, 9.999_999_999_999_999, core::f64::consts::PI] {
                let v = m * 10f64.powi(e);
                if v.is_finite() {
                    assert_eq!(num(v), format!("{v}"), "{v:e}");
                }
            }
        }
    }

    #[test]
    fn integers_and_ids_print_as_display_does() {
        for v in [0, 1, -1, 9, 10, -10, 1_767_600_000_007, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_int(&mut out, v);
            assert_eq!(out, format!("{v}").into_bytes());
        }
        for h in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            let mut out = Vec::new();
            write_id(&mut out, h);
            assert_eq!(out, format!(",\"id\":\"{h:016x}\"}}").into_bytes());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn any_number_prints_as_display_does(
            bits in any::<u64>(),
            millis in -10_000_000i64..10_000_000,
            (m, e) in (100_000_000_000_000u64..1_000_000_000_000_000, -40i32..40),
        ) {
            let v = f64::from_bits(bits);
            if v.is_finite() {
                prop_assert_eq!(num(v), format!("{}", v));
            }
            // the values sensors send: a few decimals
            let v = millis as f64 / 1000.0;
            prop_assert_eq!(num(v), format!("{}", v));
            // 15 digits, at the edge of the fast path
            let v = m as f64 * 10f64.powi(e);
            prop_assert_eq!(num(v), format!("{}", v));
        }
    }
}
