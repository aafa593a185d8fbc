//! The origin rate caps (`origin_rate`, `origin_request_rate`): cluster-wide, with no coordination.
//!
//! The run's scheduler lets at most [`Settings::origin_units`] origin transfers (chunks or bundles) run
//! at once across the cluster, and each makes at most `origin_chunk_streams` GETs at a time. So each
//! transfer gets its own [`Pace`], an equal share of each cap: the shares of the transfers running at
//! any moment add up to the cap at most, and to the cap itself while every origin slot is busy. No
//! node needs to know what the others do, and nothing travels over the control link for it.
//!
//! Both shares are paced on a timeline (as the peer server's egress limit is): an amount is reserved
//! after everything reserved before it, and the caller waits until its reservation has drained. Bytes
//! are charged as they arrive (the next piece of the body is read only once they are paid for: TCP's
//! flow control then holds the origin back); a request is charged before it is sent. A transfer waits
//! out its own reservations before it ends, so the next transfer in its slot starts with a clean budget
//! without ever exceeding the share.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use tokio::time::Instant;

use crate::plan::Settings;

/// How long one GET should last at its share of the byte cap: well inside the HTTP client's request
/// timeout (30 s by default), which covers the body too. Longer ranges are fetched as several GETs.
const GET_SECONDS: f64 = 10.0;

/// The smallest GET a long range is cut into, whatever the cap: below it, requests cost more than they carry.
const MIN_GET: u64 = 64 << 10;

/// Waiting is skipped while the budget is less than this far ahead: one timer per body piece (8-16 KiB)
/// would cost more than the pacing is worth, and 10 ms of traffic is no burst.
const SLACK: Duration = Duration::from_millis(10);

/// One origin transfer's share of the caps, shared by all of its GETs.
#[derive(Debug)]
pub struct Pace {
    bytes: Option<Timeline>,
    requests: Option<Timeline>,
    /// The longest GET at this pace (see [`GET_SECONDS`]); `u64::MAX` without a byte cap.
    max_get: u64,
}

impl Pace {
    /// A transfer's share of the plan's caps; `None` when the plan sets none.
    pub fn for_unit(settings: &Settings) -> Option<Arc<Pace>> {
        if settings.origin_rate == 0 && settings.origin_request_rate == 0 {
            return None;
        }
        let units = f64::from(settings.origin_units());
        let share = |cap: u64| (cap > 0).then(|| cap as f64 / units);
        Some(Arc::new(Pace::new(
            share(settings.origin_rate),
            share(settings.origin_request_rate),
            settings.origin_chunk_streams,
        )))
    }

    /// A pace of `bytes_per_sec` and `requests_per_sec` (`None`: that one uncapped) for a transfer of up
    /// to `streams` GETs at once.
    pub fn new(bytes_per_sec: Option<f64>, requests_per_sec: Option<f64>, streams: u32) -> Pace {
        // Each of the streams gets about an equal part of the byte share while all run.
        let max_get = bytes_per_sec.map_or(u64::MAX, |rate| {
            ((rate / f64::from(streams.max(1)) * GET_SECONDS) as u64).max(MIN_GET)
        });
        Pace {
            bytes: bytes_per_sec.map(Timeline::new),
            requests: requests_per_sec.map(Timeline::new),
            max_get,
        }
    }

    /// Waits until one more request may be sent.
    pub async fn request(&self) {
        if let Some(requests) = &self.requests {
            requests.take(1.0).await;
        }
    }

    /// Waits until `bytes` just received are paid for.
    pub async fn received(&self, bytes: usize) {
        if let Some(timeline) = &self.bytes {
            timeline.take(bytes as f64).await;
        }
    }

    /// Waits until everything reserved so far has drained, the slack included: a transfer ends within its
    /// share, so the next one in its slot may start at once.
    pub async fn settle(&self) {
        for timeline in [&self.bytes, &self.requests].into_iter().flatten() {
            timeline.settle().await;
        }
    }

    /// `store` with every GET paced by this transfer's share.
    pub fn store(self: &Arc<Self>, store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(PacedStore {
            inner: store,
            pace: self.clone(),
        })
    }
}

/// `store` as one origin transfer uses it: paced by the transfer's share of the caps, if there are any.
pub fn paced(store: Arc<dyn ObjectStore>, pace: Option<&Arc<Pace>>) -> Arc<dyn ObjectStore> {
    match pace {
        Some(pace) => pace.store(store),
        None => store,
    }
}

/// Amounts paced at `per_sec`, reserved one after another.
#[derive(Debug)]
struct Timeline {
    per_sec: f64,
    /// When everything reserved so far has drained.
    next_free: Mutex<Instant>,
}

impl Timeline {
    fn new(per_sec: f64) -> Timeline {
        Timeline {
            per_sec: per_sec.max(f64::MIN_POSITIVE),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Reserves `amount` and waits until it has drained (unless that is within [`SLACK`]).
    async fn take(&self, amount: f64) {
        let drained = self.reserve(amount);
        if drained > Instant::now() + SLACK {
            tokio::time::sleep_until(drained).await;
        }
    }

    /// The end of a reservation of `amount` made now: it starts when the previous ones have drained.
    fn reserve(&self, amount: f64) -> Instant {
        let drain = Duration::from_secs_f64((amount / self.per_sec).min(86_400.0 * 365.0));
        let mut next_free = self.next_free.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *next_free = (*next_free).max(Instant::now()) + drain;
        *next_free
    }

    async fn settle(&self) {
        let drained = *self.next_free.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tokio::time::sleep_until(drained).await;
    }
}

/// A store whose GETs are paced by one [`Pace`]; a bounded range longer than [`Pace::max_get`] is
/// fetched as consecutive GETs of at most that length, one body to the caller.
#[derive(Debug)]
struct PacedStore {
    inner: Arc<dyn ObjectStore>,
    pace: Arc<Pace>,
}

impl fmt::Display for PacedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Paced({})", self.inner)
    }
}

/// One paced GET: the request waits for its budget, each piece of the body for its bytes'.
async fn paced_get(
    inner: Arc<dyn ObjectStore>,
    pace: Arc<Pace>,
    location: Path,
    options: GetOptions,
) -> Result<GetResult> {
    pace.request().await;
    let result = inner.get_opts(&location, options).await?;
    let (meta, range, attributes, extensions) = (
        result.meta.clone(),
        result.range.clone(),
        result.attributes.clone(),
        result.extensions.clone(),
    );
    let body = result.into_stream().then(move |piece| {
        let pace = pace.clone();
        async move {
            if let Ok(bytes) = &piece {
                pace.received(bytes.len()).await;
            }
            piece
        }
    });
    Ok(GetResult {
        payload: GetResultPayload::Stream(body.boxed()),
        meta,
        range,
        attributes,
        extensions,
    })
}

/// `range` cut into consecutive parts of at most `most` bytes.
fn parts(range: Range<u64>, most: u64) -> Vec<Range<u64>> {
    let step = most.max(1);
    (range.start..range.end)
        .step_by(usize::try_from(step).unwrap_or(usize::MAX))
        .map(|start| start..(start + step).min(range.end))
        .collect()
}

#[async_trait]
impl ObjectStore for PacedStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let (inner, pace) = (self.inner.clone(), self.pace.clone());
        let range = match &options.range {
            Some(GetRange::Bounded(range)) if range.end - range.start > pace.max_get => range.clone(),
            _ => return paced_get(inner, pace, location.clone(), options).await,
        };
        let mut parts = parts(range.clone(), pace.max_get).into_iter();
        let with_range = move |part: Range<u64>| GetOptions {
            range: Some(GetRange::Bounded(part)),
            ..options.clone()
        };
        // The first part is asked for now, so that a refusal (a changed object, a denied key) is this
        // call's error, as it is without the cap; the rest follow as the body is read.
        let first = paced_get(
            inner.clone(),
            pace.clone(),
            location.clone(),
            with_range(parts.next().expect("a range longer than max_get has parts")),
        )
        .await?;
        let (meta, attributes, extensions) = (first.meta.clone(), first.attributes.clone(), first.extensions.clone());
        let location = location.clone();
        let rest = futures::stream::iter(parts)
            .then(move |part| paced_get(inner.clone(), pace.clone(), location.clone(), with_range(part)))
            .map_ok(GetResult::into_stream)
            .try_flatten();
        Ok(GetResult {
            payload: GetResultPayload::Stream(first.into_stream().chain(rest).boxed()),
            meta,
            range,
            attributes,
            extensions,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_range_is_cut_into_consecutive_parts() {
        assert_eq!(parts(10..35, 10), vec![10..20, 20..30, 30..35]);
        assert_eq!(parts(0..10, 10), vec![0..10]);
    }

    #[test]
    fn each_get_lasts_about_ten_seconds_at_its_share() {
        let pace = Pace::new(Some(8e6), None, 8);
        assert_eq!(pace.max_get, 10_000_000);
        assert_eq!(Pace::new(Some(1.0), None, 8).max_get, MIN_GET);
        assert_eq!(Pace::new(None, Some(5.0), 8).max_get, u64::MAX);
    }

    #[test]
    fn reservations_follow_one_another_at_the_rate() {
        let timeline = Timeline::new(1000.0);
        let first = timeline.reserve(500.0);
        assert_eq!(timeline.reserve(250.0) - first, Duration::from_millis(250));
        // Idle time is not saved up: a reservation after a pause drains from now.
        *timeline.next_free.lock().unwrap() = Instant::now() - Duration::from_secs(2);
        let now = Instant::now();
        assert!(timeline.reserve(100.0) >= now + Duration::from_millis(100));
    }

    /// InMemory, counting the GETs that reach it.
    #[derive(Debug, Default)]
    struct CountingGets {
        inner: object_store::memory::InMemory,
        gets: std::sync::atomic::AtomicUsize,
    }

    impl fmt::Display for CountingGets {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "CountingGets")
        }
    }

    #[async_trait]
    impl ObjectStore for CountingGets {
        async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.get_opts(location, options).await
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

    #[tokio::test]
    async fn a_range_too_long_for_one_get_at_the_cap_arrives_whole_over_several() {
        use object_store::ObjectStoreExt;
        let counting = Arc::new(CountingGets::default());
        let data: Vec<u8> = (0..3_000_005u32).map(|i| (i % 251) as u8).collect();
        let put = counting.inner.put(&Path::from("k"), data.clone().into()).await.unwrap();
        let object = crate::origin::ObjectIdentity {
            key: "k".into(),
            size: data.len() as u64,
            etag: put.e_tag,
            version: put.version,
        };
        // GETs of at most 1,000,000 bytes, as a cap of 100 KB/s gives one stream.
        let pace = Arc::new(Pace {
            bytes: Some(Timeline::new(1e12)),
            requests: None,
            max_get: 1_000_000,
        });
        let store = pace.store(counting.clone());
        let buffer = Arc::new(crate::sink::MemoryBuffer::new(data.len()));
        let policy = crate::origin::RetryPolicy::default();
        let length = data.len() as u64;
        let fetched = crate::origin::fetch_range(store.as_ref(), &object, 0, length, buffer.clone(), 0, &policy)
            .await
            .unwrap();
        assert_eq!(fetched.attempts, 1, "one body to the caller");
        assert_eq!(fetched.digest, crate::hash::ChunkDigest::of_bytes(&data));
        assert_eq!(counting.gets.load(std::sync::atomic::Ordering::SeqCst), 4);
        assert!(buffer.take() == data);
    }

    #[tokio::test]
    async fn a_refusal_of_the_first_part_is_the_calls_error() {
        let pace = Arc::new(Pace::new(Some(1e12), None, 1));
        let store = pace.store(Arc::new(CountingGets::default()));
        let options = GetOptions {
            range: Some(GetRange::Bounded(0..u64::MAX / 2)),
            ..GetOptions::default()
        };
        let error = store.get_opts(&Path::from("missing"), options).await.unwrap_err();
        assert!(matches!(error, object_store::Error::NotFound { .. }), "{error}");
    }

    #[test]
    fn a_units_share_is_the_cap_over_the_origin_units() {
        let mut settings: Settings = serde_json::from_str(
            r#"{"chunk_size": "auto", "node_parallelism": 8, "upload_slots": 8, "origin_parallelism": 32,
                "overwrite": false}"#,
        )
        .unwrap();
        assert!(Pace::for_unit(&settings).is_none(), "uncapped by default");
        settings.origin_rate = 80_000_000;
        settings.origin_request_rate = 100;
        let pace = Pace::for_unit(&settings).unwrap();
        assert_eq!(settings.origin_units(), 4);
        assert_eq!(pace.bytes.as_ref().unwrap().per_sec, 20e6);
        assert_eq!(pace.requests.as_ref().unwrap().per_sec, 25.0);
        settings.origin_request_rate = 0;
        assert!(Pace::for_unit(&settings).unwrap().requests.is_none());
    }
}
