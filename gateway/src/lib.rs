//! edgejoin, the gateway: the live service and the command line around the
//! pure engine ([`edgejoin_engine`]).
//!
//! Folders follow the data: [`config`] turns a TOML file into the engine's
//! plan and the service's deployment; [`sources`] holds inputs other than
//! MQTT (sensors on the local I2C bus); [`service`] is `edgejoin run` (source
//! connection and acknowledgements, write-ahead log, engine loop, spool and
//! uplink, checkpoints, metrics); [`cli`] is the three commands. See
//! docs/ARCHITECTURE.md for the map.

mod backoff;
pub mod cli;
pub mod clock_report;
pub mod config;
pub mod export;
#[doc(hidden)]
pub mod fuzz;
mod libcalls;
pub mod service;
pub mod sources;
#[cfg(test)]
pub(crate) mod test_util;
