//! The engine allocates nothing per event in steady state: a counting global
//! allocator watches 100,000 messages go through topic routing, JSON
//! decoding, watermarks, late routing, tumbling + hopping + session windows, a
//! rollup, key eviction, per-device clock correction, per-device watermarks
//! (with device evictions), tolerance / as-of /
//! session / overlap joins and result encoding.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use edgejoin::config;
use edgejoin_engine::engine::{Engine, Output};
use edgejoin_engine::output::JsonEncoder;
use edgejoin_engine::Plan;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONFIG: &str = r#"
[gateway]
max_devices = 64

[[stream]]
name = "vib"
topics = ["plant/{machine}/vib"]
key = "{machine}"
clock = "corrected"
watermark = "device"
idle_timeout = "2s"
lateness = "2s"
late = "route"
max_keys = 48
values = ["rms", "temp"]

[[stream]]
name = "orders"
topics = ["shop/orders"]
key = "$.order_id"
time_unit = "s"
lateness = "1s"
max_keys = 64
values = ["amount"]

[[window]]
name = "vib_1s"
input = "vib"
size = "1s"
aggregates = { n = "count()", rms = "mean(rms)", peak = "max(rms)", sd = "stddev(temp)", f = "first(temp)", l = "last(temp)" }
topic = "w/{window}/{key}"

[[window]]
name = "vib_5s"
input = "vib_1s"
size = "5s"
aggregates = { rms = "mean(rms)", n = "sum(n)" }

[[window]]
name = "vib_hop"
input = "vib"
size = "3s"
slide = "500ms"
offset = "-250ms"
aggregates = { s = "sum(rms)" }

[[window]]
name = "order_sessions"
input = "orders"
gap = "2s"
aggregates = { total = "sum(amount)", n = "count()" }

[[stream]]
name = "payments"
topics = ["shop/payments"]
key = "$.order_id"
lateness = "1s"
max_keys = 64
capacity = 8
values = ["amount"]

[[join]]
name = "paid"
strategy = "tolerance"
left = "orders"
right = "payments"
type = "left_outer"
lower = "-1s"
upper = "2s"
max_matches = 2

[[join]]
name = "latest_payment"
strategy = "asof"
left = "orders"
right = "payments"
type = "left_outer"
tolerance = "3s"

[[window]]
name = "payment_sessions"
input = "payments"
gap = "2s"
aggregates = { total = "sum(amount)" }

[[join]]
name = "sessions"
strategy = "session"
left = "order_sessions"
right = "payment_sessions"
type = "left_outer"

[[window]]
name = "vib_2s"
input = "vib"
size = "2s"
aggregates = { rms = "mean(rms)" }

[[join]]
name = "vib_minutes"
strategy = "overlap"
left = "vib_1s"
right = "vib_2s"
condition = "overlaps"
type = "left_outer"
"#;

#[test]
fn no_allocation_per_event() {
    let p: Plan = config::parse(Path::new("alloc.toml"), CONFIG).unwrap().plan;
    let mut engine = Engine::new(p, 7);
    // inputs prepared up front
    let t0 = 1_700_000_000_000i64;
    let total = 110_000usize;
    let mut msgs: Vec<(i64, String, Vec<u8>)> = Vec::with_capacity(total);
    for i in 0..total {
        let ts = t0 + (i as i64) * 3 - if i % 97 == 0 { 5_000 } else { (i as i64 * 7919) % 1500 };
        if i % 5 == 0 {
            let payload = format!(
                r#"{{"order_id":"o-{}","ts":{}.{:03},"amount":{}.5}}"#,
                i / 40,
                ts / 1000,
                ts % 1000,
                i % 50
            );
            msgs.push((ts + 20, "shop/orders".into(), payload.into_bytes()));
        } else if i % 7 == 0 {
            let payload = format!(r#"{{"order_id":"o-{}","ts":{ts},"amount":{}}}"#, i / 40, i % 50);
            msgs.push((ts + 20, "shop/payments".into(), payload.into_bytes()));
        } else {
            let payload = format!(
                r#"{{"ts":{ts},"rms":{}.25,"temp":{},"extra":[1,{{"x":null}}]}}"#,
                i % 13,
                20 + i % 7
            );
            // 40 machines, and now and then a burst of new ones: the key table (48) fills and evicts
            let machine =
                if (100..130).contains(&(i % 5000)) { format!("new-{i}") } else { format!("m{}", i % 40) };
            msgs.push((ts + 20, format!("plant/{machine}/vib"), payload.into_bytes()));
        }
    }
    msgs.push((t0, "no/such/topic".into(), b"{}".to_vec()));
    msgs.push((t0, "plant/m1/vib".into(), b"{not json".to_vec()));

    let mut enc = JsonEncoder::new();
    let mut bytes = 0usize;
    let mut rows = 0u64;
    let mut sink = |p: &Plan, o: Output<'_>| {
        bytes += enc.encode(p, o).len();
        rows += 1;
    };
    let warm = 10_000;
    for (recv, topic, payload) in &msgs[..warm] {
        engine.ingest(*recv, topic, payload, &mut sink);
    }
    COUNTING.with(|c| c.set(true));
    for (recv, topic, payload) in &msgs[warm..] {
        engine.ingest(*recv, topic, payload, &mut sink);
    }
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.with(Cell::get);

    let measured = msgs.len() - warm;
    assert!(measured >= 100_000);
    // the run did real work on every path
    let vib = engine.stream_counters(0);
    assert!(vib.on_time > 60_000 && vib.late_routed > 100, "{vib:?}");
    assert!(engine.window_counters(0).emitted > 1_000);
    assert!(engine.window_counters(1).emitted > 100, "rollup emits");
    assert!(engine.window_counters(2).emitted > 1_000);
    assert!(engine.window_counters(3).emitted > 100, "sessions close");
    assert!(engine.window_counters(0).key_evictions > 0, "key table full: evictions");
    for j in 0..4 {
        let c = engine.join_counters(j);
        assert!(c.matches > 100 && c.unmatched > 10, "join {j} did work: {c:?}");
    }
    assert_eq!(engine.global_counters().unrouted, 1);
    let devices = engine.device_watermarks(0).expect("vib has per-device watermarks");
    assert!(devices.evictions > 0, "the device table filled and evicted");
    assert!(engine.skew_reports().len() > 30, "clocks estimated per machine");
    assert!(rows > 1_000 && bytes > 100_000);
    assert_eq!(allocs, 0, "{allocs} heap allocations over {measured} events");
}
