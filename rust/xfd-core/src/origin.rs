//! Origin fetch: ranged GETs from object storage streamed straight into a file at their offset.
//!
//! Every request is pinned to the object identity of the plan (ETag `If-Match`, and the version id
//! where the store has versions), so an object replaced mid-download fails loudly instead of yielding
//! a file mixed from two versions. Bodies are streamed: memory per transfer is bounded by
//! [`WRITE_BLOCK`], whatever the chunk size. The chunk's BLAKE3 digest is computed on the way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStore};

use crate::error::{Error, Result};
use crate::hash::ChunkDigest;
use crate::sink::PositionalWrite;

mod counting;
mod rate;
mod stores;

pub use counting::{CountingStore, OriginCounts};
pub use rate::{Pace, paced};
pub use stores::{StoreConfig, open_store};

/// Bytes gathered before one positional write: few syscalls, and a bounded buffer per transfer.
pub const WRITE_BLOCK: usize = 4 << 20;

/// The object a chunk belongs to, as the plan resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectIdentity {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub version: Option<String>,
}

/// When and how long to retry a failed ranged GET. Requests that fail before a body starts are
/// first retried inside `object_store`'s own client; this policy covers what that cannot: a body
/// that breaks off half-way is resumed from the last byte received, and throttling backs off harder.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per range, the first included. 8 rides out a few seconds of origin trouble.
    pub max_attempts: u32,
    /// First backoff after an ordinary failure (connection reset, 5xx); doubled each time, jittered.
    pub base_backoff: Duration,
    /// First backoff after throttling (503 SlowDown, 429): the origin asked us to slow down, so wait
    /// ten times longer than for an ordinary failure.
    pub throttled_backoff: Duration,
    /// No single wait is longer than this.
    pub max_backoff: Duration,
    /// The whole range, all attempts and waits included, must be done by then: 10 minutes is ample
    /// for a 64 MiB chunk on any working link, and bounds how long a dead origin can stall a node.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    /// The plan settings' defaults (`origin_attempts`, `origin_backoff`, ...), defined once in `plan`.
    fn default() -> Self {
        use crate::plan::defaults;
        RetryPolicy::new(
            defaults::origin_attempts(),
            defaults::origin_backoff(),
            defaults::origin_max_backoff(),
            defaults::origin_timeout(),
        )
    }
}

impl RetryPolicy {
    /// The policy a plan's settings ask for.
    pub fn from_settings(settings: &crate::plan::Settings) -> Self {
        RetryPolicy::new(
            settings.origin_attempts,
            settings.origin_backoff,
            settings.origin_max_backoff,
            settings.origin_timeout,
        )
    }

    /// Times in seconds; throttling waits start ten times longer than other waits.
    fn new(attempts: u32, backoff: f64, max_backoff: f64, timeout: f64) -> Self {
        let seconds = |s: f64| Duration::from_secs_f64(s.clamp(0.0, 86_400.0));
        let max_backoff = seconds(max_backoff);
        RetryPolicy {
            max_attempts: attempts.max(1),
            base_backoff: seconds(backoff),
            throttled_backoff: (seconds(backoff) * 10).min(max_backoff),
            max_backoff,
            deadline: seconds(timeout),
        }
    }
}

/// What one ranged fetch did.
#[derive(Clone, Debug)]
pub struct RangeFetch {
    pub bytes: u64,
    pub digest: ChunkDigest,
    pub attempts: u32,
    pub duration: Duration,
}

/// Fetches bytes `[offset, offset + length)` of `object` and writes them at `dest_offset` in `dest`.
pub async fn fetch_range(
    store: &dyn ObjectStore,
    object: &ObjectIdentity,
    offset: u64,
    length: u64,
    dest: Arc<dyn PositionalWrite>,
    dest_offset: u64,
    policy: &RetryPolicy,
) -> Result<RangeFetch> {
    let started = Instant::now();
    let sink = RangeSink::new(dest, dest_offset, length, WRITE_BLOCK, true);
    let (sink, attempts) = fetch_into(store, object, offset, length, sink, policy).await?;
    let hasher = sink.hasher.expect("a lone range is hashed as it arrives");
    Ok(RangeFetch {
        bytes: sink.done,
        digest: ChunkDigest(*hasher.finalize().as_bytes()),
        attempts,
        duration: started.elapsed(),
    })
}

/// Streams the range into `sink`, with retries and resume; returns the sink and the attempts made.
async fn fetch_into(
    store: &dyn ObjectStore,
    object: &ObjectIdentity,
    offset: u64,
    length: u64,
    mut sink: RangeSink,
    policy: &RetryPolicy,
) -> Result<(RangeSink, u32)> {
    let started = Instant::now();
    let mut attempts = 0;
    while sink.done < length {
        attempts += 1;
        let failure = match stream_once(store, object, offset + sink.done, offset + length, &mut sink).await {
            Ok(()) if sink.done == length => break,
            // The body ended early without an error: resume from where it stopped.
            Ok(()) => Failure::Transient(format!("body ended after {} of {length} bytes", sink.done)),
            Err(failure) => failure,
        };
        sink.flush().await?;
        let message = match failure {
            Failure::Fatal(error) => return Err(error),
            Failure::Throttled(message) | Failure::Transient(message) => message,
        };
        let wait = backoff(policy, attempts, message.contains("throttl"));
        if attempts >= policy.max_attempts || started.elapsed() + wait > policy.deadline {
            return Err(Error::Origin {
                key: object.key.clone(),
                message: format!("gave up after {attempts} attempts: {message}"),
            });
        }
        tokio::time::sleep(wait).await;
    }
    sink.flush().await?;
    Ok((sink, attempts))
}

/// Sub-ranges are never smaller than this: below it, a request's fixed cost (first-byte latency of an
/// S3-class store, tens of ms) outweighs its transfer time.
pub const MIN_SUBRANGE: u64 = 8 << 20;

/// Write block of each sub-range's sink: 1 MiB keeps a node's buffers small with many streams open.
const SUBRANGE_WRITE_BLOCK: usize = 1 << 20;

/// Fetches the `parts` of a range (from [`subranges`], relative to `offset`) in parallel, each written
/// at its place in `dest` with [`fetch_range`]'s retries and resume. Returns the attempts made in all.
///
/// One chunk then arrives in the time of one stream's share instead of all chunks in flight arriving
/// together at the end: peers can start sharing it early, while the origin stays just as busy. Nothing
/// is hashed on the way (a part's digest is no use for the chunk's): the caller hashes the written range.
pub async fn fetch_subranges(
    store: &dyn ObjectStore,
    object: &ObjectIdentity,
    offset: u64,
    parts: &[(u64, u64)],
    dest: Arc<dyn PositionalWrite>,
    policy: &RetryPolicy,
) -> Result<u32> {
    let fetches = parts.iter().map(|&(start, len)| {
        // Smaller blocks than a lone fetch: several sinks of one chunk buffer at once.
        let sink = RangeSink::new(dest.clone(), offset + start, len, SUBRANGE_WRITE_BLOCK, false);
        fetch_into(store, object, offset + start, len, sink, policy)
    });
    let done = futures::future::try_join_all(fetches).await?;
    Ok(done.iter().map(|(_, attempts)| attempts).sum())
}

/// `length` cut into at most `streams` contiguous parts of at least [`MIN_SUBRANGE`] (one part if it
/// is too short to cut), as `(start, length)`.
pub fn subranges(length: u64, streams: u32) -> Vec<(u64, u64)> {
    let count = (length / MIN_SUBRANGE).clamp(1, u64::from(streams.max(1)));
    let base = length / count;
    (0..count)
        .map(|i| {
            let start = i * base;
            let end = if i + 1 == count { length } else { start + base };
            (start, end - start)
        })
        .collect()
}

enum Failure {
    Fatal(Error),
    Throttled(String),
    Transient(String),
}

async fn stream_once(
    store: &dyn ObjectStore,
    object: &ObjectIdentity,
    start: u64,
    end: u64,
    sink: &mut RangeSink,
) -> std::result::Result<(), Failure> {
    let options = GetOptions {
        range: Some(GetRange::Bounded(start..end)),
        if_match: object.etag.clone(),
        version: object.version.clone(),
        ..GetOptions::default()
    };
    let location = StorePath::from(object.key.as_str());
    let result = store
        .get_opts(&location, options)
        .await
        .map_err(|e| classify(object, e))?;
    let mut body = result.into_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| classify(object, e))?;
        sink.accept(piece).await.map_err(Failure::Fatal)?;
    }
    Ok(())
}

fn classify(object: &ObjectIdentity, error: object_store::Error) -> Failure {
    match error {
        object_store::Error::Precondition { .. } => Failure::Fatal(Error::ObjectChanged {
            key: object.key.clone(),
            expected: object.etag.clone().or(object.version.clone()).unwrap_or_default(),
        }),
        object_store::Error::NotFound { .. } => Failure::Fatal(Error::ObjectChanged {
            key: object.key.clone(),
            expected: "an object that no longer exists".into(),
        }),
        denied @ (object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }) => {
            Failure::Fatal(Error::OriginDenied {
                key: object.key.clone(),
                message: denied.to_string(),
            })
        }
        other => {
            let message = format!("{other}");
            if message.contains("SlowDown") || message.contains("503") || message.contains("429") {
                Failure::Throttled(format!("throttled by the origin: {message}"))
            } else {
                Failure::Transient(message)
            }
        }
    }
}

fn backoff(policy: &RetryPolicy, attempt: u32, throttled: bool) -> Duration {
    let base = if throttled {
        policy.throttled_backoff
    } else {
        policy.base_backoff
    };
    let ceiling = base.saturating_mul(1 << attempt.min(16)).min(policy.max_backoff);
    // Full jitter: nodes that failed together do not retry together.
    let unit = getrandom::u64().unwrap_or(u64::MAX / 2) as f64 / u64::MAX as f64;
    ceiling.mul_f64(unit)
}

/// Receives the body: hashes each piece, batches pieces into positional writes.
struct RangeSink {
    dest: Arc<dyn PositionalWrite>,
    dest_offset: u64,
    length: u64,
    done: u64,
    written: u64,
    buffer: BytesMut,
    block: usize,
    /// `None` for the parts of a parallel fetch, whose range is hashed once it is all written.
    hasher: Option<blake3::Hasher>,
}

impl RangeSink {
    fn new(dest: Arc<dyn PositionalWrite>, dest_offset: u64, length: u64, block: usize, hash: bool) -> Self {
        RangeSink {
            dest,
            dest_offset,
            length,
            done: 0,
            written: 0,
            buffer: BytesMut::with_capacity(block),
            block,
            hasher: hash.then(blake3::Hasher::new),
        }
    }

    async fn accept(&mut self, piece: Bytes) -> Result<()> {
        if self.done + piece.len() as u64 > self.length {
            return Err(Error::Origin {
                key: String::new(),
                message: format!("origin sent more than the {} bytes asked for", self.length),
            });
        }
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&piece);
        }
        self.done += piece.len() as u64;
        self.buffer.extend_from_slice(&piece);
        if self.buffer.len() >= self.block {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what is buffered at its position, on the blocking pool (disk never stalls the reactor).
    async fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let block = self.buffer.split().freeze();
        let (file, position) = (self.dest.clone(), self.dest_offset + self.written);
        self.written += block.len() as u64;
        tokio::task::spawn_blocking(move || file.write_block_at(&block, position))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(|e| Error::io("write", crate::error::WRITTEN_FILE, e))
    }
}
