//! Peer-to-peer chunk transfer: each node serves the chunks it has verified, and fetches the chunks it
//! lacks from other nodes instead of from object storage.
//!
//! - [`P2pServer`] answers `GET /v1/chunks/{id}` for chunks a [`ChunkRegistry`] reports as verified,
//!   streaming them from disk in bounded blocks. Connections that have not shown the run's token have
//!   budgets and a deadline of their own, so they never take a place a peer needs (`admission.rs`).
//! - [`P2pClient`] fetches a chunk from a peer straight into its place in a destination file, hashing
//!   while it streams, and classifies failures so the scheduler knows whether to retry, switch peers, or
//!   penalize one.
//!
//! The protocol, the security model and the limits are described in `docs/p2p.md`.

mod admission;
mod body;
mod chunk_id;
mod client;
mod limiter;
mod range;
mod registry;
mod server;
mod writer;

pub use chunk_id::ChunkId;
pub use client::{ClientConfig, FetchReport, P2pClient};
pub use registry::{ChunkRegistry, MemoryRegistry, Segment, ServedChunk};
pub use server::{P2pServer, RefusedCounts, ServerConfig, ServerStats};

/// Response header carrying the BLAKE3 digest (lower-case hex) of the whole chunk, also on 206.
pub const DIGEST_HEADER: &str = "x-xfd-blake3";

/// A fresh random token for one run: 32 bytes from the OS generator, as 64 hex characters.
pub fn generate_token() -> crate::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| crate::Error::Task(format!("no OS randomness: {e}")))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}
