//! The simulator as a library: scenario files ([`scenario`]), deterministic
//! generation of what devices send and when it arrives ([`gen`]), and the
//! random numbers behind it ([`rng`]). The `sensors-sim` binary publishes
//! and records; tests and benchmarks generate in-process.

pub mod gen;
pub mod rng;
pub mod scenario;
