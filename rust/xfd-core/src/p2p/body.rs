//! Response bodies of the peer server: a short fixed text, or a chunk streamed from disk.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::Segment;
use super::limiter::EgressLimiter;
use super::server::Counters;
use crate::faults::Action;

/// Largest block read from disk at once. With one block queued and one being read, a transfer holds
/// at most a few blocks in memory whatever the chunk's size.
pub(crate) const READ_BLOCK: usize = 1 << 20;

/// A response body.
pub(crate) enum ServerBody {
    Fixed(Option<Bytes>),
    Chunk(ChunkBody),
}

impl ServerBody {
    pub(crate) fn empty() -> Self {
        ServerBody::Fixed(None)
    }

    pub(crate) fn text(text: &'static str) -> Self {
        ServerBody::Fixed(Some(Bytes::from_static(text.as_bytes())))
    }
}

/// The bytes of one chunk range, read by a background task in bounded blocks.
///
/// The task holds the response's upload slot: it is freed when the last block is handed over, when the
/// client goes away (dropping the body is the cancellation), or when the client stops taking blocks
/// for `send_timeout` (a client that stops reading must not keep a slot from the others).
pub(crate) struct ChunkBody {
    blocks: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
    counters: Arc<Counters>,
}

/// Where a streamed range comes from: ranges of files, sent one after the other.
pub(crate) struct ChunkSource {
    /// Checked to exist and be long enough when the request came; opened only while a block is read.
    pub(crate) segments: Arc<[Segment]>,
    /// Longest wait for the client to take one block before the response is given up.
    pub(crate) send_timeout: Duration,
    /// Test fault injection (see [`crate::faults`]): how this response misbehaves, if at all.
    pub(crate) fault: Option<Action>,
}

impl ChunkSource {
    fn length(&self) -> u64 {
        self.segments.iter().map(|segment| segment.length).sum()
    }
}

impl ChunkBody {
    /// Starts reading `source` in the background and returns the body that yields it.
    pub(crate) fn spawn(
        source: ChunkSource,
        limiter: Option<Arc<EgressLimiter>>,
        counters: Arc<Counters>,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        // One block queued while the next is read: enough to keep the socket busy, and bounded.
        let (sender, blocks) = mpsc::channel(1);
        let remaining = source.length();
        tokio::spawn(read_blocks(source, limiter, sender, slot));
        ChunkBody {
            blocks,
            remaining,
            counters,
        }
    }
}

/// Reads `source` block by block into `sender`; stops early when the body is dropped.
async fn read_blocks(
    source: ChunkSource,
    limiter: Option<Arc<EgressLimiter>>,
    sender: mpsc::Sender<io::Result<Bytes>>,
    _slot: OwnedSemaphorePermit,
) {
    let block_size = limiter.as_ref().map_or(READ_BLOCK, |l| l.block_size(READ_BLOCK));
    let length = source.length();
    let (mut done, mut kept) = (0u64, None);
    while done < length {
        let want = (length - done).min(block_size as u64) as usize;
        if let Some(limiter) = &limiter {
            limiter.acquire(want as u64).await;
        }
        let read = read_block(source.segments.clone(), done, want, kept.take()).await;
        let mut block = read.map(|(bytes, still_open)| {
            kept = still_open;
            bytes
        });
        if source.fault == Some(Action::Corrupt) {
            block = block.map(flip_first_byte);
        }
        if let Some(fault @ (Action::Truncate | Action::Stall)) = source.fault {
            // A peer dying (truncate) or hanging (stall) mid-transfer: half a block, then the body
            // breaks off, or the connection stays open and silent until the client gives up.
            if let Ok(bytes) = block {
                let _ = sender.send(Ok(bytes.slice(..bytes.len() / 2))).await;
            }
            match fault {
                Action::Stall => sender.closed().await,
                _ => drop(sender.send(Err(truncated())).await),
            }
            return;
        }
        let failed = block.is_err();
        let sent = tokio::time::timeout(source.send_timeout, sender.send(block)).await;
        if !matches!(sent, Ok(Ok(()))) || failed {
            return;
        }
        done += want as u64;
    }
}

/// The error that aborts a body mid-way, as a peer dying mid-transfer would.
fn truncated() -> io::Error {
    io::Error::other("fault injection: body truncated")
}

fn flip_first_byte(block: Bytes) -> Bytes {
    let mut bytes = block.to_vec();
    if let Some(first) = bytes.first_mut() {
        *first ^= 0xFF;
    }
    Bytes::from(bytes)
}

/// The file of segment `index`, left open by a block that ended inside that segment for the next block.
struct KeptFile {
    index: usize,
    file: File,
}

/// Bytes `position..position + length` of the segments laid end to end, in one call on the blocking pool
/// however many segments they span (one block of a bundle covers hundreds of small files). Returns the
/// file the block ended inside, if any, to be passed back with the next block.
async fn read_block(
    segments: Arc<[Segment]>,
    position: u64,
    length: usize,
    kept: Option<KeptFile>,
) -> io::Result<(Bytes, Option<KeptFile>)> {
    let read = move || {
        let mut buffer = vec![0u8; length];
        let kept = read_span(&segments, position, &mut buffer, kept)?;
        Ok((Bytes::from(buffer), kept))
    };
    tokio::task::spawn_blocking(read)
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join)))
}

/// Positional reads filling `buffer` from `position` of the segments laid end to end.
///
/// Each file is opened when the block reaches it and closed when the block is done with it, so a
/// response holds at most one file open however many members its bundle has (8 upload slots x 256
/// files would exceed the usual limit of 1,024 open files). Only the file the block ends inside stays
/// open, returned for the next block: a large segment is read block after block from one open file.
/// A file missing or shorter than its segment is an error, never padding: the body is then aborted and
/// the client sees a truncated transfer.
fn read_span(
    segments: &[Segment],
    position: u64,
    buffer: &mut [u8],
    mut kept: Option<KeptFile>,
) -> io::Result<Option<KeptFile>> {
    let (mut skip, mut filled) = (position, 0);
    for (index, segment) in segments.iter().enumerate() {
        if filled == buffer.len() {
            break;
        }
        if skip >= segment.length {
            skip -= segment.length;
            continue;
        }
        let n = (segment.length - skip).min((buffer.len() - filled) as u64) as usize;
        let file = match kept.take() {
            Some(kept) if kept.index == index => kept.file,
            _ => segment.open()?,
        };
        file.read_exact_at(&mut buffer[filled..filled + n], segment.offset.saturating_add(skip))?;
        filled += n;
        if skip + (n as u64) < segment.length {
            // The buffer is full and this segment goes on: the next block starts in the same file.
            return Ok(Some(KeptFile { index, file }));
        }
        skip = 0;
    }
    // The source's length is the sum of its segments, so a block never reaches past the last one.
    debug_assert_eq!(filled, buffer.len());
    Ok(None)
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ServerBody::Fixed(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ServerBody::Chunk(chunk) => chunk.poll_block(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ServerBody::Fixed(bytes) => bytes.is_none(),
            ServerBody::Chunk(chunk) => chunk.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ServerBody::Fixed(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ServerBody::Chunk(chunk) => SizeHint::with_exact(chunk.remaining),
        }
    }
}

impl ChunkBody {
    fn poll_block(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.blocks.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(block))) => {
                self.remaining -= block.len() as u64;
                self.counters
                    .bytes_served
                    .fetch_add(block.len() as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(block))))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(self.abort(error)))),
            Poll::Ready(None) => {
                let error = io::Error::other("chunk reader stopped early");
                Poll::Ready(Some(Err(self.abort(error))))
            }
        }
    }

    fn abort(&mut self, error: io::Error) -> io::Error {
        self.counters.read_failures.fetch_add(1, Ordering::Relaxed);
        self.remaining = 0;
        error
    }
}
