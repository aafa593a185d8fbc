//! The control plane: how the coordinator and the nodes talk during a run.
//!
//! Ray places one agent per node, starts and stops it, and hands it the coordinator's address and
//! the run's token; from then on a node and the coordinator speak over a control link of their own:
//! one long-lived TCP connection per node, opened with an authenticated HTTP/1.1 upgrade
//! ([`wire::PROTOCOL`]), then JSON lines each way. The node sends its outcomes in batches
//! ([`wire::Up`]); the coordinator sends each node its next transfers ([`wire::Down`]). No Ray call is
//! made per transfer, and the coordinator ([`server::Coordinator`]) is Rust on a thread of its own.
//!
//! - [`wire`]: the frames;
//! - [`link`]: a node's end (used by the engine, and by the benchmark's virtual nodes);
//! - [`core`]: the coordinator's state machine (the scheduler, names, progress), no I/O;
//! - [`progress`]: progress aggregated from the reports, as snapshots;
//! - [`server`]: the coordinator as a service: control server + its thread.

pub mod core;
pub mod link;
pub mod progress;
pub mod server;
pub mod wire;
