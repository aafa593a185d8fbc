//! A store that counts the object bytes it receives: what the origin really served this node, retries,
//! resumed ranges and transfers cut short included. The report's origin figure comes from here, not from
//! the chunks that completed, so a node lost mid-chunk or an attempt that failed half-way still counts.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// What the origin did for one engine, shared by every store of it.
#[derive(Debug, Default)]
pub struct OriginCounts {
    /// Object bytes received.
    pub received: AtomicU64,
    /// GETs sent.
    pub requests: AtomicU64,
    /// GETs that failed, before or during their body (the engine retries most of them).
    pub failed: AtomicU64,
}

/// Wraps a store; its [`OriginCounts`] are shared by every store of one engine.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counts: Arc<OriginCounts>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, counts: Arc<OriginCounts>) -> CountingStore {
        CountingStore { inner, counts }
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        let mut result = self.inner.get_opts(location, options).await.inspect_err(|_| {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
        })?;
        result.payload = match result.payload {
            GetResultPayload::Stream(stream) => {
                let counts = self.counts.clone();
                let counted = stream.inspect(move |piece| match piece {
                    Ok(bytes) => {
                        counts.received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    }
                    // A stream ends at its first error: one failed request.
                    Err(_) => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
                GetResultPayload::Stream(counted.boxed())
            }
            // A local file is read in full by whoever takes it; there is no stream to count.
            file @ GetResultPayload::File(..) => {
                self.counts
                    .received
                    .fetch_add(result.range.end - result.range.start, Ordering::Relaxed);
                file
            }
        };
        Ok(result)
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
