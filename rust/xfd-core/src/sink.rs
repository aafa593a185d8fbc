//! Where transferred bytes are written: a file at a position, optionally behind a fence.
//!
//! A chunk's region in a part file has one writer at a time. When a faster duplicate transfer of the
//! same chunk wins (the endgame), the slower writer must be stopped before the winner's bytes are put in
//! place, or a late block of the loser (possibly bad bytes from a bad peer) could land over them. A
//! [`FencedFile`] gives that guarantee: once [`FencedFile::close`] returns, no write through the fence
//! can happen any more, and a write that was in progress has finished.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, RwLock};

/// Positional writes, as `pwrite`: the destination of origin and peer transfers.
pub trait PositionalWrite: Send + Sync + 'static {
    fn write_block_at(&self, block: &[u8], position: u64) -> io::Result<()>;
}

impl PositionalWrite for File {
    fn write_block_at(&self, block: &[u8], position: u64) -> io::Result<()> {
        self.write_all_at(block, position)
    }
}

/// Bytes gathered in memory at their positions: a bundle of small objects, held until it is verified
/// whole and its members are published (a bundle is at most a few MiB).
pub struct MemoryBuffer {
    bytes: std::sync::Mutex<Vec<u8>>,
}

impl MemoryBuffer {
    pub fn new(length: usize) -> Self {
        MemoryBuffer {
            bytes: std::sync::Mutex::new(vec![0; length]),
        }
    }

    /// The bytes written so far (zeros where nothing was written), leaving the buffer empty.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

impl PositionalWrite for MemoryBuffer {
    fn write_block_at(&self, block: &[u8], position: u64) -> io::Result<()> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let start = usize::try_from(position).map_err(io::Error::other)?;
        let region = start
            .checked_add(block.len())
            .and_then(|end| bytes.get_mut(start..end))
            .ok_or_else(|| io::Error::other("write past the end of the buffer"))?;
        region.copy_from_slice(block);
        Ok(())
    }
}

/// A file whose writers can be shut out for good. See the module documentation.
pub struct FencedFile {
    file: Arc<File>,
    closed: RwLock<bool>,
}

impl FencedFile {
    pub fn new(file: Arc<File>) -> Self {
        FencedFile {
            file,
            closed: RwLock::new(false),
        }
    }

    /// Shuts every writer out; blocks until a write in progress has finished.
    pub fn close(&self) {
        *self.closed.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
    }
}

impl PositionalWrite for FencedFile {
    fn write_block_at(&self, block: &[u8], position: u64) -> io::Result<()> {
        // The read guard is held for the whole write: `close` waits for it.
        let closed = self.closed.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *closed {
            return Err(io::Error::other("superseded: a faster transfer of this chunk won"));
        }
        self.file.write_all_at(block, position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_buffer_takes_writes_at_their_positions_and_refuses_writes_past_its_end() {
        let buffer = MemoryBuffer::new(6);
        buffer.write_block_at(b"def", 3).unwrap();
        buffer.write_block_at(b"abc", 0).unwrap();
        assert!(buffer.write_block_at(b"xy", 5).is_err());
        assert_eq!(buffer.take(), b"abcdef");
    }

    #[test]
    fn a_closed_fence_refuses_every_later_write() {
        let temp = tempfile::tempfile().unwrap();
        let fenced = FencedFile::new(Arc::new(temp));
        fenced.write_block_at(b"before", 0).unwrap();
        fenced.close();
        let error = fenced.write_block_at(b"after!", 0).unwrap_err();
        assert!(error.to_string().contains("superseded"));
        let mut read = [0u8; 6];
        fenced.file.read_exact_at(&mut read, 0).unwrap();
        assert_eq!(&read, b"before");
    }
}
