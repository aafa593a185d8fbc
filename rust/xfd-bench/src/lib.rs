//! Benchmark tooling, kept out of the product crates.
//!
//! - [`proxy`]: the benchmark origin's front door: a reverse proxy that caps the origin's total egress
//!   with one token bucket shared by every client, and counts what the origin served.
//! - [`sim`]: the scale simulator: the real [`xfd_core::scheduler::Scheduler`] driven over modeled links.

pub mod proxy;
pub mod sim;
