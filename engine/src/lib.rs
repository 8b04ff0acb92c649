//! edgejoin's engine: everything that computes, nothing that does IO.
//!
//! It is handed MQTT messages (topic, payload) or decoded events with the
//! gateway's receive time, and hands back results and counters. No sockets,
//! files, threads or clock reads: the service (`edgejoin`) and the replay
//! tool are shells around it. Without its default `std` feature it builds
//! `#![no_std]` with `alloc` (checked for `thumbv7em-none-eabihf`).
//!
//! The pipeline, in the order an event meets it:
//! [`topic`] (which stream) → [`decode`] / [`json`] (event) → [`skew`]
//! (clock correction) → [`watermark`] (late or on time) → [`window`] /
//! [`aggregate`] and [`join`] (results) → [`output`] (JSON rows), driven by
//! [`engine`] from a validated [`plan`]. [`keytable`] is the fixed-capacity
//! per-key slot table they share.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

mod aggregate;
pub mod decode;
pub mod engine;
pub mod event;
pub mod join;
mod json;
mod keytable;
pub mod manifest;
mod math;
pub mod output;
pub mod plan;
mod prelude;
pub mod route;
pub mod skew;
pub mod topic;
pub mod watermark;
pub mod window;

pub use engine::{Engine, Output, Sink};

pub use plan::Plan;
