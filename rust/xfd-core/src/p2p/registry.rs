//! What a peer server may serve: the engine's list of verified chunks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;

use super::ChunkId;
use crate::hash::ChunkDigest;

/// Where a verified chunk's bytes lie on this node, and their digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedChunk {
    /// The file holding the chunk (usually the artifact being assembled).
    pub path: PathBuf,
    /// Offset of the chunk's first byte in `path`.
    pub offset: u64,
    /// Length of the chunk in bytes.
    pub length: u64,
    /// BLAKE3 digest of the whole chunk, sent to clients as `x-xfd-blake3`.
    pub digest: ChunkDigest,
}

/// The engine's answer to "may this chunk be served, and from where?".
///
/// The server never builds a path from a request: it parses a [`ChunkId`] and asks this registry,
/// which answers only for chunks whose bytes on disk were verified against their digest. It is called
/// on the server's async threads, so it must answer from memory, without blocking.
pub trait ChunkRegistry: Send + Sync + 'static {
    /// The location of `id` if it is verified on this node, `None` otherwise.
    fn verified(&self, id: &ChunkId) -> Option<ServedChunk>;
}

/// A thread-safe in-memory [`ChunkRegistry`]: the engine inserts a chunk once it is verified and
/// removes it before its file is moved or deleted.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    chunks: RwLock<HashMap<ChunkId, ServedChunk>>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `id` as verified at `chunk`; replaces an earlier location.
    pub fn insert(&self, id: ChunkId, chunk: ServedChunk) {
        self.write().insert(id, chunk);
    }

    /// Stops serving `id`; returns its location if it was served.
    pub fn remove(&self, id: &ChunkId) -> Option<ServedChunk> {
        self.write().remove(id)
    }

    /// Number of chunks served.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A panic while holding the lock cannot leave the map half-updated (every update is one map
    // operation), so a poisoned lock is still safe to use.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ChunkId, ServedChunk>> {
        self.chunks.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ChunkId, ServedChunk>> {
        self.chunks.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ChunkRegistry for MemoryRegistry {
    fn verified(&self, id: &ChunkId) -> Option<ServedChunk> {
        self.read().get(id).cloned()
    }
}

impl<R: ChunkRegistry> ChunkRegistry for std::sync::Arc<R> {
    fn verified(&self, id: &ChunkId) -> Option<ServedChunk> {
        (**self).verified(id)
    }
}
