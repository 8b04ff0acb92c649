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

fn write_num(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = write!(Bytes(out), "{v}");
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_int(out: &mut Vec<u8>, v: i64) {
    let _ = write!(Bytes(out), "{v}");
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
    let _ = write!(Bytes(out), ",\"id\":\"{h:016x}\"}}");
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
