//! edgejoin: an edge stream-join gateway. The engine ([`engine`] and the
//! modules it uses) is pure: it takes messages and the gateway's receive
//! time and returns results and counters. The IO shell (the `edgejoin`
//! binary) reads configs and recordings and writes results.

pub mod aggregate;
pub mod checkpoint;
pub mod config;
pub mod decode;
pub mod describe;
pub mod engine;
pub mod event;
pub mod frame;
pub mod i2c;
pub mod join;
pub mod json;
pub mod keytable;
pub mod logging;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod redelivery;
pub mod replay;
pub mod service;
pub mod skew;
pub mod source_proxy;
pub mod spool;
pub mod state_dir;
pub mod stats;
pub mod topic;
pub mod units;
pub mod wal;
pub mod watermark;
pub mod window;
