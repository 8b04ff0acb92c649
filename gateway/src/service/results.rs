//! Results into the spool: the engine's [`Sink`] in the service. Each
//! result gets its topic (`<topic_prefix>/<rendered template>`) and its JSON
//! row, and is appended with its (input, index) position; while the log is
//! replayed at start, results the spool already holds are skipped. While
//! [held](ResultWriter::hold) (their inputs are not yet in the fsynced
//! write-ahead log) results go to the spool's file at once but not to its
//! reader ([`Spool::hold`]): the upstream never gets a result of an input a
//! crash could lose from the log, and held results cost no memory.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::counters::ServiceCounters;
use super::homeassistant::Discovery;
use super::http::Clocks;
use super::spool::Spool;
use crate::config::Deployment;
use edgejoin_engine::engine::{Output, Sink};
use edgejoin_engine::event::Key;
use edgejoin_engine::output::JsonEncoder;
use edgejoin_engine::plan::{LatePolicy, Plan};
use edgejoin_engine::topic::TemplateVars;

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
        }
    }

    /// From now on results are held back from the uplink until [`release`](Self::release).
    pub(super) fn hold(&mut self) {
        self.spool.lock().expect("spool lock").hold();
    }

    /// The held results' inputs are durable: the uplink may read them.
    pub(super) fn release(&mut self) {
        self.spool.lock().expect("spool lock").release();
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
        SpoolSink { w: self, input_seq, idx: 0, skip_through, appended: None }
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
        let mut spool = w.spool.lock().expect("spool lock");
        let at = spool.end();
        match spool.append(self.input_seq, idx, &w.topic, payload) {
            Ok(true) => {
                w.counters.results.fetch_add(1, Ordering::Relaxed);
                self.appended = Some((self.appended.map_or(at, |a| a.0), at + 1));
            }
            Ok(false) => {}
            Err(e) => {
                w.counters.spool_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("spool: cannot append a result: {e}");
            }
        }
    }
}
