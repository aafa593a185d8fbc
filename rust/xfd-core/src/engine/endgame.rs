//! The endgame: a peer transfer of a chunk that a slower transfer is already writing. The duplicate
//! goes to a scratch file; whichever copy verifies first is the one kept.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::object::{ObjectState, ObjectWork};
use super::publish::{Published, record_and_maybe_publish};
use super::serving::ChunkFile;
use super::{ChunkDone, Engine, Source};
use crate::error::{Error, Result};
use crate::hash::ChunkDigest;
use crate::p2p::{ChunkId, P2pClient};
use crate::plan::PlanChunk;

impl Engine {
    /// Endgame: the chunk is already being written by a slower transfer. Fetch it into a scratch file;
    /// if this copy verifies first, shut the slower writer out (its fence), put these bytes in place and
    /// record the chunk. Otherwise discard them.
    pub(super) async fn duplicate_fetch(
        &self,
        client: &P2pClient,
        work: Arc<Mutex<ObjectWork>>,
        chunk: PlanChunk,
        id: ChunkId,
        peer: SocketAddr,
        expected: Option<ChunkDigest>,
    ) -> Result<ChunkDone> {
        let destination = work.lock().unwrap().targets[0].destination.clone();
        let part_dir = destination.parent().map(Path::to_path_buf).unwrap_or_default();
        // Nameless (O_TMPFILE where the file system has it): a crash leaves nothing beside the destination.
        let scratch = tempfile::tempfile_in(&part_dir).map_err(|e| Error::io("create", &part_dir, e))?;
        let scratch = Arc::new(scratch);
        self.started(&chunk, Source::Peer, Some(peer.to_string()));
        let started = Instant::now();
        let report = client
            .fetch_chunk(peer, &id, expected, scratch.clone(), 0, chunk.length)
            .await?;
        let digest = report.digest;
        let committed = self.commit_duplicate(&work, &chunk, scratch, digest).await?;
        let Some((file, published)) = committed else {
            return Ok(self.already_held(&work, &chunk));
        };
        let object_id = work.lock().unwrap().object().id.clone();
        let peer = Some(peer.to_string());
        let elapsed = started.elapsed();
        Ok(self.announce(&object_id, chunk, digest, Source::Peer, peer, elapsed, &file, published))
    }

    /// Puts the verified scratch copy in place and records it, unless the slower transfer finished
    /// first (`None`: these bytes are not needed).
    async fn commit_duplicate(
        &self,
        work: &Arc<Mutex<ObjectWork>>,
        chunk: &PlanChunk,
        scratch: Arc<std::fs::File>,
        digest: ChunkDigest,
    ) -> Result<Option<(ChunkFile, Option<Published>)>> {
        let fence = self.claims.fence_of(&chunk.id);
        let (chunk_id, length, offset) = (chunk.id.clone(), chunk.length, chunk.offset);
        let (work, faults) = (work.clone(), self.config.faults.clone());
        tokio::task::spawn_blocking(move || {
            let mut work = work.lock().unwrap();
            let part = match &work.state {
                ObjectState::Assembling(part) if !part.done().contains_key(&chunk_id) => part.file(),
                _ => return Ok(None), // the slower transfer finished first
            };
            if let Some(fence) = fence {
                fence.close();
            }
            copy_region(&scratch, part.as_ref(), length, offset)?;
            record_and_maybe_publish(&mut work, &chunk_id, digest, &faults).map(Some)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }
}

/// Copies `length` bytes from the start of `scratch` to `offset` of `part`, in bounded blocks.
fn copy_region(scratch: &std::fs::File, part: &std::fs::File, length: u64, offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; (1 << 20).min(length as usize).max(1)];
    let mut done = 0u64;
    while done < length {
        let want = buffer.len().min((length - done) as usize);
        scratch
            .read_exact_at(&mut buffer[..want], done)
            .map_err(|e| Error::io("read", "<scratch>", e))?;
        part.write_all_at(&buffer[..want], offset + done)
            .map_err(|e| Error::io("write", crate::error::WRITTEN_FILE, e))?;
        done += want as u64;
    }
    Ok(())
}
