//! One error type for the engine. Each variant names the path it concerns so that a message read in a
//! notebook, far from the node that raised it, still says where the problem is.

use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a local file; `source` keeps the kind (not found, permission, ...).
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A byte range that does not lie inside the file it addresses.
    #[error("range [{offset}, {offset}+{length}) is outside {path} (size {size} bytes)")]
    RangeOutOfBounds {
        path: PathBuf,
        offset: u64,
        length: u64,
        size: u64,
    },

    /// A background task died (panicked or was cancelled) before it produced its result.
    #[error("engine task failed: {0}")]
    Task(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
