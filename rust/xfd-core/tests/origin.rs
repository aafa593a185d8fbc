//! Origin fetch against object_store's in-memory and local stores, and a store that breaks bodies.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use xfd_core::origin::{ObjectIdentity, RetryPolicy, StoreConfig, fetch_range, open_store};
use xfd_core::{ChunkDigest, Error};

fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 % 251) as u8).collect()
}

async fn put(store: &dyn ObjectStore, key: &str, data: &[u8]) -> ObjectIdentity {
    let result = store
        .put(&Path::from(key), PutPayload::from(data.to_vec()))
        .await
        .unwrap();
    ObjectIdentity {
        key: key.into(),
        size: data.len() as u64,
        etag: result.e_tag,
        version: result.version,
    }
}

fn destination(size: u64) -> (tempfile::NamedTempFile, Arc<File>) {
    let temp = tempfile::NamedTempFile::new().unwrap();
    let file = File::options().read(true).write(true).open(temp.path()).unwrap();
    file.set_len(size).unwrap();
    (temp, Arc::new(file))
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        base_backoff: Duration::from_millis(1),
        throttled_backoff: Duration::from_millis(2),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_range_lands_at_its_offset_with_its_digest() {
    let store = InMemory::new();
    let data = pattern(10 << 20);
    let object = put(&store, "dir/blob.bin", &data).await;
    let (_temp, file) = destination(32 << 20);
    let range = 3_000_000..9_500_000u64;
    let fetched = fetch_range(
        &store,
        &object,
        range.start,
        range.end - range.start,
        file.clone(),
        20 << 20,
        &quick(),
    )
    .await
    .unwrap();
    assert_eq!(fetched.bytes, range.end - range.start);
    assert_eq!(
        fetched.digest,
        ChunkDigest::of_bytes(&data[range.start as usize..range.end as usize])
    );
    let mut written = vec![0u8; fetched.bytes as usize];
    file.read_exact_at(&mut written, 20 << 20).unwrap();
    assert_eq!(written, &data[range.start as usize..range.end as usize]);
    let mut before = vec![1u8; 1024];
    file.read_exact_at(&mut before, (20 << 20) - 1024).unwrap();
    assert!(before.iter().all(|b| *b == 0), "bytes before the range were touched");
}

#[tokio::test]
async fn an_empty_range_fetches_nothing() {
    let store = InMemory::new();
    let object = put(&store, "k", b"abc").await;
    let (_temp, file) = destination(0);
    let fetched = fetch_range(&store, &object, 3, 0, file, 0, &quick()).await.unwrap();
    assert_eq!((fetched.bytes, fetched.digest), (0, ChunkDigest::of_bytes(b"")));
}

#[tokio::test]
async fn an_object_replaced_since_planning_is_refused() {
    let store = InMemory::new();
    let planned = put(&store, "k", &pattern(1000)).await;
    put(&store, "k", &pattern(999)).await;
    let (_temp, file) = destination(1000);
    let error = fetch_range(&store, &planned, 0, 1000, file, 0, &quick())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::ObjectChanged { ref key, .. } if key == "k"),
        "{error}"
    );
}

#[tokio::test]
async fn an_object_deleted_since_planning_is_refused() {
    let store = InMemory::new();
    let planned = put(&store, "k", &pattern(1000)).await;
    store.delete(&Path::from("k")).await.unwrap();
    let (_temp, file) = destination(1000);
    let error = fetch_range(&store, &planned, 0, 1000, file, 0, &quick())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::ObjectChanged { .. }), "{error}");
}

#[tokio::test]
async fn a_body_that_breaks_off_is_resumed_from_the_last_byte() {
    let inner = InMemory::new();
    let data = pattern(9 << 20);
    let object = put(&inner, "big", &data).await;
    let store = BreakingStore {
        inner,
        fail_after: 3_333_333,
        failures_left: AtomicUsize::new(2),
        requests: Default::default(),
    };
    let (_temp, file) = destination(data.len() as u64);
    let fetched = fetch_range(&store, &object, 0, data.len() as u64, file.clone(), 0, &quick())
        .await
        .unwrap();
    assert_eq!(fetched.digest, ChunkDigest::of_bytes(&data));
    assert_eq!(fetched.attempts, 3);
    let mut written = vec![0u8; data.len()];
    file.read_exact_at(&mut written, 0).unwrap();
    assert!(written == data, "resumed file differs");
    let ranges = store.requests.lock().unwrap().clone();
    assert_eq!(ranges, vec![0..9 << 20, 3_333_333..9 << 20, 6_666_666..9 << 20]);
}

#[tokio::test]
async fn retries_stop_at_the_attempt_limit_with_an_origin_error() {
    let inner = InMemory::new();
    let object = put(&inner, "k", &pattern(4096)).await;
    let store = BreakingStore {
        inner,
        fail_after: 10,
        failures_left: AtomicUsize::new(100),
        requests: Default::default(),
    };
    let (_temp, file) = destination(4096);
    let policy = RetryPolicy {
        max_attempts: 3,
        ..quick()
    };
    let error = fetch_range(&store, &object, 0, 4096, file, 0, &policy)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Origin { .. }), "{error}");
    assert!(error.to_string().contains("gave up after 3 attempts"), "{error}");
}

#[tokio::test]
async fn local_directories_open_as_stores_with_prefixes() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("models/7b")).unwrap();
    std::fs::write(root.path().join("models/7b/w.bin"), pattern(5000)).unwrap();
    let url = format!("file://{}/models", root.path().display());
    let store = open_store(&StoreConfig { url, options: vec![] }).unwrap();
    let meta = store.head(&Path::from("7b/w.bin")).await.unwrap();
    let object = ObjectIdentity {
        key: "7b/w.bin".into(),
        size: meta.size,
        etag: meta.e_tag,
        version: None,
    };
    let (_temp, file) = destination(5000);
    let fetched = fetch_range(store.as_ref(), &object, 0, 5000, file, 0, &quick())
        .await
        .unwrap();
    assert_eq!(fetched.digest, ChunkDigest::of_bytes(&pattern(5000)));
}

#[test]
fn unknown_store_options_and_schemes_are_refused_by_name() {
    let config = StoreConfig {
        url: "s3://bucket/p".into(),
        options: vec![("regoin".into(), "x".into())],
    };
    let error = open_store(&config).err().unwrap();
    assert_eq!(error.to_string(), "store s3://bucket/p: unknown option \"regoin\"");
    let config = StoreConfig {
        url: "ftp://host/x".into(),
        options: vec![],
    };
    assert!(
        open_store(&config)
            .err()
            .unwrap()
            .to_string()
            .contains("unsupported scheme ftp://")
    );
    let config = StoreConfig {
        url: "s3://bucket".into(),
        options: vec![
            ("allow_http".into(), "true".into()),
            ("region".into(), "us-east-1".into()),
        ],
    };
    assert!(open_store(&config).is_ok());
}

/// Delegates to an in-memory store, but the first `failures_left` bodies break after `fail_after` bytes.
#[derive(Debug)]
struct BreakingStore {
    inner: InMemory,
    fail_after: usize,
    failures_left: AtomicUsize,
    requests: std::sync::Mutex<Vec<Range<u64>>>,
}

impl std::fmt::Display for BreakingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BreakingStore")
    }
}

#[async_trait::async_trait]
impl ObjectStore for BreakingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let result = self.inner.get_opts(location, options).await?;
        self.requests.lock().unwrap().push(result.range.clone());
        let breaks = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let GetResultPayload::Stream(body) = result.payload else {
            unreachable!("memory stores stream")
        };
        let limit = self.fail_after;
        let body: BoxStream<'static, object_store::Result<Bytes>> = if breaks {
            let mut sent = 0usize;
            body.flat_map(move |piece| {
                let piece = piece.unwrap();
                let allowed = limit.saturating_sub(sent).min(piece.len());
                sent += allowed;
                let mut out = vec![Ok(piece.slice(..allowed))];
                if allowed < piece.len() {
                    out.push(Err(object_store::Error::Generic {
                        store: "test",
                        source: "connection reset".into(),
                    }));
                }
                futures::stream::iter(out)
            })
            .take_while({
                let mut failed = false;
                move |item| {
                    let keep = !failed;
                    failed |= item.is_err();
                    futures::future::ready(keep)
                }
            })
            .boxed()
        } else {
            body
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(body),
            ..result
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
