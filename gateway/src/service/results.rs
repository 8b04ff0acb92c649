//! Results into the spool: the engine's [`Sink`] in the service. Each
//! result gets its topic (`<topic_prefix>/<rendered template>`) and its JSON
//! row, and is appended with its (input, index) position; while the log is
//! replayed at start, results the spool already holds are skipped. While
//! [held](ResultWriter::hold) (their inputs are not yet in the fsynced
//! write-ahead log) results wait in memory, encoded, and reach the spool at
//! [`ResultWriter::release`]: neither the spool file nor the upstream ever
//! holds a result of an input a crash could lose from the log.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::counters::ServiceCounters;
use super::homeassistant::Discovery;
use super::http::Clocks;
use super::spool::Spool;
use super::uplink::LatencyMarks;
use crate::config::Deployment;
use edgejoin_engine::engine::{Output, Sink};
use edgejoin_engine::event::Key;
use edgejoin_engine::output::JsonEncoder;
use edgejoin_engine::plan::{LatePolicy, Plan};
use edgejoin_engine::topic::TemplateVars;

/// Bytes of the held results' buffer kept between fsyncs (more is given back).
const HELD_KEEP: usize = 32 << 10;

/// Encodes results and appends them to the spool; reuses its buffers.
pub(super) struct ResultWriter {
    spool: Arc<Mutex<Spool>>,
    counters: Arc<ServiceCounters>,
    enc: JsonEncoder,
    topic: String,
    prefix: String,
    gateway: String,
    /// The live clock trace (`/clocks/`), when kept.
    clocks: Clocks,
    /// Home Assistant discovery, when on.
    discovery: Option<Arc<Mutex<Discovery>>>,
    /// Whether results wait in `held` instead of going to the spool.
    holding: bool,
    /// Held results, each: input (u64), index (u32), delivery instant (u64 ns
    /// after `base`), topic and payload (u32 length + bytes), little-endian.
    held: Vec<u8>,
    base: Instant,
}

impl ResultWriter {
    pub(super) fn new(d: &Deployment, spool: Arc<Mutex<Spool>>, counters: Arc<ServiceCounters>) -> Self {
        ResultWriter {
            spool,
            counters,
            enc: JsonEncoder::new(),
            topic: String::new(),
            prefix: d.upstream.topic_prefix.clone(),
            gateway: d.gateway.id.clone(),
            clocks: None,
            discovery: None,
            holding: false,
            held: Vec::new(),
            base: Instant::now(),
        }
    }

    /// From now on results wait in memory until [`release`](Self::release).
    pub(super) fn hold(&mut self) {
        self.holding = true;
    }

    /// Bytes of results held.
    pub(super) fn held_bytes(&self) -> usize {
        self.held.len()
    }

    /// The held results' inputs are durable: appends them to the spool, in
    /// order, and notes each input's results with its delivery instant for
    /// the latency histogram. Later results go straight to the spool.
    pub(super) fn release(&mut self, marks: &LatencyMarks) {
        self.holding = false;
        if self.held.is_empty() {
            return;
        }
        let mut spool = self.spool.lock().expect("spool lock");
        // the run of results of one input: (input, first, end, delivered)
        let mut run: Option<(u64, u64, u64, Instant)> = None;
        let mut rest = &self.held[..];
        while let Some(r) = HeldRecord::split(&mut rest) {
            let at = spool.end();
            if !append(&mut spool, &self.counters, r.input_seq, r.idx, r.topic, r.payload) {
                continue;
            }
            match run.as_mut() {
                Some((input, _, end, _)) if *input == r.input_seq => *end = at + 1,
                _ => {
                    if let Some((_, first, end, t)) = run {
                        marks.mark(first, end, t);
                    }
                    run =
                        Some((r.input_seq, at, at + 1, self.base + std::time::Duration::from_nanos(r.at_ns)));
                }
            }
        }
        if let Some((_, first, end, t)) = run {
            marks.mark(first, end, t);
        }
        self.held.clear();
        // a drain's burst does not stay resident
        self.held.shrink_to(HELD_KEEP);
    }

    /// Announces each output's sensors for each key to Home Assistant as well.
    pub(super) fn announcing(mut self, discovery: Option<Arc<Mutex<Discovery>>>) -> Self {
        self.discovery = discovery;
        self
    }

    /// Notes each corrected event into `clocks` as well.
    pub(super) fn tracing_clocks(mut self, clocks: Clocks) -> Self {
        self.clocks = clocks;
        self
    }

    /// A sink for the results of input `input_seq`, skipping those the spool
    /// already holds (`skip_through`, while replaying the log).
    pub(super) fn sink(&mut self, input_seq: u64, skip_through: Option<(u64, u32)>) -> SpoolSink<'_> {
        SpoolSink { w: self, input_seq, idx: 0, skip_through, appended: None, at: None }
    }

    /// A sink for the results of input `input_seq`, delivered by the broker
    /// at `at` (noted with them while they are held).
    pub(super) fn sink_at(&mut self, input_seq: u64, at: Instant) -> SpoolSink<'_> {
        SpoolSink { w: self, input_seq, idx: 0, skip_through: None, appended: None, at: Some(at) }
    }
}

/// One held result, as [`ResultWriter::release`] reads it back.
struct HeldRecord<'a> {
    input_seq: u64,
    idx: u32,
    at_ns: u64,
    topic: &'a str,
    payload: &'a [u8],
}

impl<'a> HeldRecord<'a> {
    fn put(out: &mut Vec<u8>, input_seq: u64, idx: u32, at_ns: u64, topic: &str, payload: &[u8]) {
        out.extend_from_slice(&input_seq.to_le_bytes());
        out.extend_from_slice(&idx.to_le_bytes());
        out.extend_from_slice(&at_ns.to_le_bytes());
        out.extend_from_slice(&(topic.len() as u32).to_le_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
    }

    /// The next record of `buf` (written by [`put`](Self::put) in this process).
    fn split(buf: &mut &'a [u8]) -> Option<Self> {
        fn take<'b>(buf: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
            let (head, rest) = buf.split_at_checked(n)?;
            *buf = rest;
            Some(head)
        }
        fn num<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
            take(buf, N)?.try_into().ok()
        }
        let input_seq = u64::from_le_bytes(num(buf)?);
        let idx = u32::from_le_bytes(num(buf)?);
        let at_ns = u64::from_le_bytes(num(buf)?);
        let topic_len = u32::from_le_bytes(num(buf)?) as usize;
        let topic = std::str::from_utf8(take(buf, topic_len)?).ok()?;
        let payload_len = u32::from_le_bytes(num(buf)?) as usize;
        let payload = take(buf, payload_len)?;
        Some(HeldRecord { input_seq, idx, at_ns, topic, payload })
    }
}

/// Appends one result to the spool, counting it (or the error); whether it is in.
fn append(
    spool: &mut Spool,
    counters: &ServiceCounters,
    input_seq: u64,
    idx: u32,
    topic: &str,
    payload: &[u8],
) -> bool {
    match spool.append(input_seq, idx, topic, payload) {
        Ok(true) => {
            counters.results.fetch_add(1, Ordering::Relaxed);
            true
        }
        Ok(false) => false,
        Err(e) => {
            counters.spool_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("spool: cannot append a result: {e}");
            false
        }
    }
}

/// The results of one input on their way into the spool.
pub(super) struct SpoolSink<'a> {
    w: &'a mut ResultWriter,
    input_seq: u64,
    idx: u32,
    skip_through: Option<(u64, u32)>,
    /// Spool positions of the results appended through this sink (first, end).
    pub(super) appended: Option<(u64, u64)>,
    /// When the broker delivered the input (noted with held results).
    at: Option<Instant>,
}

impl Sink for SpoolSink<'_> {
    fn corrected(&mut self, device: &Key, device_ts: i64, recv_ms: i64, corrected: i64) {
        if let Some(Ok(mut t)) = self.w.clocks.as_ref().map(|c| c.lock()) {
            t.add(device.as_str(), device_ts, recv_ms, corrected, None);
        }
    }

    fn emit(&mut self, p: &Plan, out: Output<'_>) {
        let idx = self.idx;
        self.idx += 1;
        if self.skip_through.is_some_and(|last| (self.input_seq, idx) <= last) {
            return;
        }
        let (tpl, name, key) = match out {
            Output::Window(r, topic) => (topic, &p.windows[r.window as usize].name, r.key.as_str()),
            Output::Join(r) => {
                let d = &p.joins[r.join as usize];
                (&d.topic, &d.name, r.key.as_str())
            }
            Output::Late(r) => {
                let d = &p.streams[r.stream as usize];
                match &d.late {
                    LatePolicy::Route(t) => (t, &d.name, r.key.as_str()),
                    LatePolicy::Drop => return,
                }
            }
        };
        let w = &mut *self.w;
        w.topic.clear();
        w.topic.push_str(&w.prefix);
        w.topic.push('/');
        tpl.render_append(&TemplateVars { name, key, gateway: &w.gateway }, &mut w.topic);
        if let Some(Ok(mut d)) = w.discovery.as_ref().map(|d| d.lock()) {
            d.note(p, &out, &w.topic);
        }
        let payload = w.enc.encode(p, out);
        if w.holding {
            let at_ns = self.at.map_or(0, |at| at.saturating_duration_since(w.base).as_nanos() as u64);
            HeldRecord::put(&mut w.held, self.input_seq, idx, at_ns, &w.topic, payload);
            return;
        }
        let mut spool = w.spool.lock().expect("spool lock");
        let at = spool.end();
        if append(&mut spool, &w.counters, self.input_seq, idx, &w.topic, payload) {
            self.appended = Some((self.appended.map_or(at, |a| a.0), at + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HeldRecord;

    #[test]
    fn held_records_read_back_as_written_and_a_cut_one_is_not_read() {
        let mut buf = Vec::new();
        HeldRecord::put(&mut buf, 7, 0, 1_000, "gw/a/k1", b"{\"v\":1}");
        HeldRecord::put(&mut buf, 7, 1, 1_000, "", b"");
        HeldRecord::put(&mut buf, u64::MAX, u32::MAX, u64::MAX, "gw/\u{e9}", &[0xff; 300]);
        let mut rest = &buf[..];
        let mut got = Vec::new();
        while let Some(r) = HeldRecord::split(&mut rest) {
            got.push((r.input_seq, r.idx, r.at_ns, r.topic.to_string(), r.payload.to_vec()));
        }
        assert_eq!(
            got,
            [
                (7, 0, 1_000, "gw/a/k1".to_string(), b"{\"v\":1}".to_vec()),
                (7, 1, 1_000, String::new(), Vec::new()),
                (u64::MAX, u32::MAX, u64::MAX, "gw/\u{e9}".to_string(), vec![0xff; 300]),
            ]
        );
        let mut cut = &buf[..buf.len() - 1];
        let mut n = 0;
        while HeldRecord::split(&mut cut).is_some() {
            n += 1;
        }
        assert_eq!(n, 2);
    }
}
