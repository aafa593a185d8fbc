//! What a peer server may serve: the engine's list of verified chunks.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::ChunkId;
use crate::hash::ChunkDigest;

/// One range of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub path: PathBuf,
    /// Offset of the range's first byte in `path`.
    pub offset: u64,
    pub length: u64,
    /// Where `path` is renamed to, byte for byte, when its file is published: a part file's
    /// destination. A request that looked the chunk up just before the rename finds `path` gone and
    /// reads here, so a publish never turns a peer's request away.
    pub renamed_to: Option<PathBuf>,
}

impl Segment {
    /// `length` bytes of `path` from `offset`, a file that stays where it is.
    pub fn new(path: PathBuf, offset: u64, length: u64) -> Segment {
        Segment {
            path,
            offset,
            length,
            renamed_to: None,
        }
    }

    /// Opens the segment's file, where it is now.
    pub fn open(&self) -> io::Result<File> {
        self.at_current_path(|path| File::open(path))
    }

    /// The metadata of the segment's file, where it is now.
    pub fn metadata(&self) -> io::Result<Metadata> {
        self.at_current_path(|path| std::fs::metadata(path))
    }

    /// `action` on `path`, or on `renamed_to` once `path` is gone. Renames are atomic, so one of the two
    /// names holds the file at every moment: `path` missing means the rename has happened.
    fn at_current_path<T>(&self, action: impl Fn(&Path) -> io::Result<T>) -> io::Result<T> {
        match (action(&self.path), &self.renamed_to) {
            (Err(error), Some(renamed)) if error.kind() == io::ErrorKind::NotFound => action(renamed),
            (result, _) => result,
        }
    }
}

/// Where a verified chunk's bytes lie on this node, and their digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedChunk {
    /// Where the chunk's bytes lie, in order: one range of one file for a chunk of a file; one whole file
    /// per member for a bundle of small files.
    pub segments: Vec<Segment>,
    /// Sum of the segments' lengths.
    pub length: u64,
    /// BLAKE3 digest of the whole chunk (the concatenation of its segments), sent to clients as
    /// `x-xfd-blake3`.
    pub digest: ChunkDigest,
}

impl ServedChunk {
    /// A chunk that is `length` bytes of `path` from `offset` (usually of the artifact being assembled).
    pub fn in_file(path: PathBuf, offset: u64, length: u64, digest: ChunkDigest) -> ServedChunk {
        ServedChunk::in_files(vec![Segment::new(path, offset, length)], digest)
    }

    /// A chunk that is `length` bytes from `offset` of the part file `part`, which becomes
    /// `destination` when published.
    pub fn in_part_file(
        part: PathBuf,
        destination: PathBuf,
        offset: u64,
        length: u64,
        digest: ChunkDigest,
    ) -> ServedChunk {
        let segment = Segment {
            renamed_to: Some(destination),
            ..Segment::new(part, offset, length)
        };
        ServedChunk::in_files(vec![segment], digest)
    }

    /// A chunk whose bytes are `segments` one after the other.
    pub fn in_files(segments: Vec<Segment>, digest: ChunkDigest) -> ServedChunk {
        let length = segments.iter().map(|segment| segment.length).sum();
        ServedChunk {
            segments,
            length,
            digest,
        }
    }
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

/// A thread-safe in-memory [`ChunkRegistry`]: the engine inserts a chunk once it is verified, and again
/// at the published file once its part file is renamed there ([`Segment::renamed_to`] covers the moment
/// between the two).
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
