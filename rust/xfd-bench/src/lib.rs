//! Benchmark tooling, kept out of the product crates.
//!
//! - [`proxy`]: the benchmark origin's front door: a reverse proxy that caps the origin's total egress
//!   with one token bucket shared by every client, and counts what the origin served.
//! - [`sim`]: the scale simulator: the real [`xfd_core::scheduler::Scheduler`] driven over modeled links.
//! - [`fluid`]: the model of links both [`sim`] and [`fleet`] time transfers by.
//! - [`fleet`]: the control-plane benchmark: the real coordinator and its control links, with virtual
//!   nodes whose transfers the fluid model times in real time.

pub mod fleet;
pub mod fluid;
pub mod proxy;
pub mod sim;
