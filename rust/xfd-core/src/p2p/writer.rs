//! Writes a received byte stream to its place in a destination file, hashing it on the way.

use std::io;
use std::mem;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::sink::PositionalWrite;

/// Bytes gathered before one positional write: few syscalls, bounded memory (two blocks per transfer).
const WRITE_BLOCK: usize = 1 << 20;

/// The result of one block written on the blocking pool: the buffer comes back for reuse, and the
/// hasher, which has seen every byte written so far, in order.
type BlockDone = io::Result<(Vec<u8>, blake3::Hasher)>;

/// Gathers received pieces into blocks and writes each block with `write_all_at` on tokio's blocking
/// pool, hashing it there too. One block is written while the next one fills, so the network and the
/// disk work at the same time; the reactor never waits on the disk.
pub(crate) struct RangeWriter {
    file: Arc<dyn PositionalWrite>,
    /// Where the next submitted block goes.
    position: u64,
    filling: Vec<u8>,
    spare: Vec<u8>,
    hasher: Option<blake3::Hasher>,
    in_flight: Option<JoinHandle<BlockDone>>,
}

impl RangeWriter {
    /// A writer for `length` bytes at `offset` of `file`.
    pub(crate) fn new(file: Arc<dyn PositionalWrite>, offset: u64, length: u64) -> Self {
        let capacity = WRITE_BLOCK.min(usize::try_from(length).unwrap_or(usize::MAX));
        RangeWriter {
            file,
            position: offset,
            filling: Vec::with_capacity(capacity),
            spare: Vec::new(),
            hasher: Some(blake3::Hasher::new()),
            in_flight: None,
        }
    }

    /// Appends received bytes; writes a block whenever one is full.
    pub(crate) async fn push(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = WRITE_BLOCK - self.filling.len();
            let (now, later) = data.split_at(room.min(data.len()));
            self.filling.extend_from_slice(now);
            data = later;
            if self.filling.len() == WRITE_BLOCK {
                self.submit().await?;
            }
        }
        Ok(())
    }

    /// Writes what is left and returns the digest of every byte written.
    pub(crate) async fn finish(mut self) -> io::Result<blake3::Hash> {
        if !self.filling.is_empty() {
            self.submit().await?;
        }
        self.wait().await?;
        Ok(self.hasher.take().expect("hasher is back after wait").finalize())
    }

    /// Hands the filled block to the blocking pool, after the previous block is written.
    async fn submit(&mut self) -> io::Result<()> {
        self.wait().await?;
        let mut hasher = self.hasher.take().expect("hasher is back after wait");
        let block = mem::replace(&mut self.filling, mem::take(&mut self.spare));
        let (file, position) = (self.file.clone(), self.position);
        self.position += block.len() as u64;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            file.write_block_at(&block, position)?;
            hasher.update(&block);
            Ok((block, hasher))
        }));
        Ok(())
    }

    /// Waits for the block in flight, if any, and takes back its buffer and the hasher.
    async fn wait(&mut self) -> io::Result<()> {
        let Some(in_flight) = self.in_flight.take() else {
            return Ok(());
        };
        let (mut buffer, hasher) = in_flight.await.map_err(io::Error::other)??;
        buffer.clear();
        self.spare = buffer;
        self.hasher = Some(hasher);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    #[tokio::test]
    async fn pieces_land_at_the_offset_and_are_hashed_in_order() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        file.write_all_at(&[0xee; 10], 0).unwrap();
        let data: Vec<u8> = (0..2 * WRITE_BLOCK + 77).map(|i| (i % 253) as u8).collect();
        let mut writer = RangeWriter::new(file.clone(), 5, data.len() as u64);
        for piece in data.chunks(10_007) {
            writer.push(piece).await.unwrap();
        }
        let digest = writer.finish().await.unwrap();
        assert_eq!(digest, blake3::hash(&data));
        let mut back = vec![0u8; data.len() + 5];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back[..5], &[0xee; 5]);
        assert_eq!(&back[5..], &data[..]);
    }
}
