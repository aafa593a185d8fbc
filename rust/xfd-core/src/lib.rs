//! xfd-core: the node-local engine behind xfd.
//!
//! Pure Rust (no Python): everything here is usable and tested with `cargo test` alone. The pyo3 crate
//! `xfd-py` only converts types and errors at the boundary.

pub mod assembly;
pub mod control;
pub mod engine;
pub mod error;
pub mod faults;
pub mod hash;
pub mod origin;
pub mod p2p;
pub mod plan;
pub mod scheduler;
pub mod sink;
pub mod store;
pub mod unpack;

pub use error::{Error, Result};
pub use hash::{ChunkDigest, hash_file_range, hash_file_range_async};
pub use unpack::{ArchiveFormat, UnpackOptions, UnpackReport, is_unpacked, unpack, unpack_async};

/// The engine's version, shared with the Python package (both come from the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
