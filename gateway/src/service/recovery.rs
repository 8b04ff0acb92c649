//! Start-up: the checkpoint restored (or set aside when unusable), then
//! the write-ahead log after it replayed through the engine, skipping results
//! the spool already holds; what was found damaged is logged and counted.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::checkpoint;
use super::counters::ServiceCounters;
use super::error::{io_err, ServiceError};
use super::redelivery::Redeliveries;
use super::results::ResultWriter;
use super::spool::Spool;
use super::wal::{Wal, WalRecord};
use crate::config::{Config, Delivery};
use edgejoin_engine::engine::Engine;
use edgejoin_engine::manifest::Carry;

/// What start-up recovered: the engine, the last input sequence number, the
/// log to append to, and recently logged messages (packet id, content hash)
/// to recognise the broker's redeliveries of them.
pub(super) struct Recovered {
    pub engine: Engine,
    pub last_seq: u64,
    pub wal: Option<Wal>,
    pub recent: Redeliveries,
    /// What of the checkpoint's state carried over to this config (`None`: no checkpoint).
    pub carry: Option<Carry>,
}

/// Recovery: checkpoint + write-ahead log replay.
pub(super) fn recover(
    c: &Config,
    seed: u64,
    spool: &Arc<Mutex<Spool>>,
    counters: &Arc<ServiceCounters>,
) -> Result<Recovered, ServiceError> {
    let (p, d) = (&c.plan, &c.deployment);
    let dir = &d.gateway.state_dir;
    let mut recent = Redeliveries::default();
    let mut carry = None;
    let (mut engine, ckpt_seq) = match checkpoint::load(dir, p, seed) {
        Ok(Some(l)) => {
            tracing::info!("restored the checkpoint covering input {}", l.input_seq);
            recent.restore(l.recent);
            carry = Some(l.carry);
            (l.engine, l.input_seq)
        }
        Ok(None) => (Engine::new(p.clone(), seed), 0),
        Err(e) => {
            let aside = checkpoint::set_aside(dir).map_err(io_err("setting the checkpoint aside"))?;
            tracing::error!(
                "checkpoint unusable ({e}); set aside as {}; starting from empty state",
                aside.display()
            );
            counters.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
            (Engine::new(p.clone(), seed), 0)
        }
    };
    if d.service.delivery == Delivery::Fast {
        return Ok(Recovered { engine, last_seq: ckpt_seq, wal: None, recent, carry });
    }
    let skip = spool.lock().expect("spool lock").last_input();
    let mut out = ResultWriter::new(d, spool.clone(), counters.clone());
    let mut replayed = 0u64;
    // confirmations are applied at the next reconnect or at the end, not at each record (each
    // walks the redelivery table): what is logged after an `Acked` record lies past its position
    let mut confirmed = None;
    let (wal, last, damage) = Wal::open(&dir.join("wal"), ckpt_seq, |rec| match rec {
        WalRecord::Acked { through } => confirmed = confirmed.max(Some(through)),
        WalRecord::Reconnected => {
            if let Some(through) = confirmed.take() {
                recent.confirmed(through);
            }
            recent.pin();
        }
        WalRecord::Message { seq, recv_ms, pkid, topic: t, payload } => {
            replayed += 1;
            recent.logged(pkid, seq, &t, &payload);
            engine.ingest(recv_ms, &t, &payload, &mut out.sink(seq, skip));
        }
        WalRecord::Tick { seq, now_ms } => {
            replayed += 1;
            engine.tick(now_ms, &mut out.sink(seq, skip));
        }
    })
    .map_err(io_err("write-ahead log"))?;
    if let Some(through) = confirmed {
        recent.confirmed(through);
    }
    if !damage.kept.is_empty() {
        counters.wal_lost_inputs.fetch_add(damage.lost_inputs, Ordering::Relaxed);
        let kept: Vec<String> = damage.kept.iter().map(|k| k.display().to_string()).collect();
        tracing::error!(
            "write-ahead log damaged: {} bytes unreadable, {} logged inputs lost with them; the rest was replayed; damaged files kept as {}",
            damage.bytes,
            damage.lost_inputs,
            kept.join(", ")
        );
    }
    if replayed > 0 {
        tracing::info!("replayed {replayed} logged inputs after the checkpoint (up to input {last})");
    }
    // results of inputs the log does not hold (written while held, their inputs lost before
    // the log's fsync) were never delivered; the broker sends those inputs again
    let cut =
        spool.lock().expect("spool lock").cut_inputs_after(last.max(ckpt_seq)).map_err(io_err("spool"))?;
    if cut > 0 {
        tracing::warn!(
            "spool: removed {cut} undelivered results of inputs after {} that the write-ahead log lost (a crash before its fsync); the broker redelivers what was not acknowledged",
            last.max(ckpt_seq)
        );
    }
    spool.lock().expect("spool lock").flush().map_err(io_err("spool"))?;
    Ok(Recovered { engine, last_seq: last.max(ckpt_seq), wal: Some(wal), recent, carry })
}

/// What of the checkpoint's state an edited config kept, logged (nothing when
/// the config is unchanged).
pub(super) fn report_carry(c: &Carry) {
    if !c.all_kept() {
        log_carry("the config changed since the checkpoint:", c);
    }
}

/// What a reload kept and what it reset, always logged.
pub(super) fn report_reload(c: &Carry) {
    if c.all_kept() {
        tracing::info!("reloaded: the pipeline is unchanged, every stream, window and join kept its state");
    } else {
        log_carry("reloaded:", c);
    }
}

fn log_carry(head: &str, c: &Carry) {
    if c.discards() {
        tracing::warn!("{head} {}", c.summary());
    } else {
        tracing::info!("{head} {}", c.summary());
    }
}

/// What start-up found wrong with the spool, logged and counted.
pub(super) fn report_spool_damage(spool: &Spool, counters: &ServiceCounters) {
    let d = &spool.damage;
    if !d.kept.is_empty() {
        counters.spool_damaged.fetch_add(spool.damaged(), Ordering::Relaxed);
        let kept: Vec<String> = d.kept.iter().map(|k| k.display().to_string()).collect();
        tracing::error!(
            "spool damaged: {} undelivered results lost (counted in spool_dropped); the rest is delivered; damaged files kept as {}",
            spool.damaged(),
            kept.join(", ")
        );
    }
    if let Some(why) = &d.acked_refused {
        tracing::error!("spool: {why} (results already delivered go again, with the same ids)");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::FullPolicy;

    /// A crash after results were written (held) to the spool but before the
    /// log had their inputs: start-up replays the log and cuts those results,
    /// so the uplink never sends a result of an input nothing holds.
    #[test]
    fn start_up_cuts_results_whose_inputs_the_log_lost() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "[gateway]\nstate_dir = \"{}\"\n\n[[stream]]\nname = \"s\"\ntopics = [\"t/{{k}}\"]\nkey = \"{{k}}\"\nmax_keys = 8\nvalues = [\"v\"]\n\n[[window]]\nname = \"w\"\ninput = \"s\"\nsize = \"1s\"\naggregates = {{ s = \"sum(v)\" }}\n",
            dir.path().display()
        );
        let c = crate::config::parse(Path::new("c.toml"), &cfg).unwrap();
        // the log holds inputs 1..=5; the spool has results of inputs 1..=8
        let (mut wal, last, _) = Wal::open(&dir.path().join("wal"), 0, |_| {}).unwrap();
        assert_eq!(last, 0);
        for seq in 1..=5u64 {
            let payload = format!(r#"{{"ts":{},"v":1}}"#, seq * 1000);
            wal.append_message(seq, seq as i64 * 1000, 0, "t/a", payload.as_bytes()).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let mut spool = Spool::open(&dir.path().join("spool"), 1 << 20, FullPolicy::DropOldest).unwrap();
        for input in 1..=8u64 {
            spool.append(input, 0, "gw/w/a", b"{}").unwrap();
        }
        spool.flush().unwrap();
        drop(spool);

        let spool = Arc::new(Mutex::new(
            Spool::open(&dir.path().join("spool"), 1 << 20, FullPolicy::DropOldest).unwrap(),
        ));
        let counters = Arc::new(ServiceCounters::default());
        let r = recover(&c, 1, &spool, &counters).unwrap();
        assert_eq!(r.last_seq, 5);
        let s = spool.lock().unwrap();
        assert_eq!(s.last_input(), Some((5, 0)), "the results of inputs 6..=8 are gone");
        assert_eq!(s.end(), 6);
        let mut read = Vec::new();
        s.reader().read(1, usize::MAX, &mut read).unwrap();
        assert_eq!(read.iter().map(|r| r.input_seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    }
}
