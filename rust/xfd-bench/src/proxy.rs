//! A throttling, byte-counting reverse proxy for benchmarks.
//!
//! Every request is forwarded unchanged (the `Host` header included, so S3 signatures still verify) to
//! the upstream server. Response bodies pass through one token bucket shared by all connections, so
//! every system under test faces the same origin capacity, measured where the origin is: at its side.
//! `GET /__xfd_proxy/stats` returns the counters as JSON; `POST /__xfd_proxy/reset` zeroes them;
//! `POST /__xfd_proxy/rate?bytes_per_sec=N` changes the cap (0: uncapped).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// Largest piece of a body released at once: small enough that many streams interleave fairly.
const PIECE: usize = 256 * 1024;

/// Bytes per second shared by all responses; 0 means no cap. The bucket holds at most 50 ms of credit,
/// so a stream that was idle cannot burst far past the cap.
pub struct TokenBucket {
    rate: AtomicU64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(bytes_per_sec: u64) -> Self {
        TokenBucket {
            rate: AtomicU64::new(bytes_per_sec),
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Takes `bytes` of credit now (going into debt if need be) and says how long to wait before sending
    /// them: callers that reserve in turn are served in turn, whatever their stream.
    pub fn reserve(&self, bytes: usize) -> Duration {
        let rate = self.rate.load(Ordering::Relaxed) as f64;
        if rate == 0.0 {
            return Duration::ZERO;
        }
        let mut state = self.state.lock().expect("token bucket lock");
        let now = Instant::now();
        let credit = (state.0 + rate * now.duration_since(state.1).as_secs_f64()).min(rate * 0.05);
        let left = credit - bytes as f64;
        *state = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / rate)
        }
    }
}

/// What the origin served since the start (or the last reset).
#[derive(Default)]
pub struct Counters {
    requests: AtomicU64,
    get_requests: AtomicU64,
    body_bytes: AtomicU64,
    object_get_bytes: AtomicU64,
}

#[derive(Serialize)]
struct CountersJson {
    requests: u64,
    get_requests: u64,
    body_bytes: u64,
    /// Body bytes of successful GETs of objects (paths below a bucket): what "origin bytes" means.
    object_get_bytes: u64,
    bytes_per_sec: u64,
}

pub struct Proxy {
    upstream: SocketAddr,
    bucket: TokenBucket,
    counters: Counters,
}

impl Proxy {
    pub fn new(upstream: SocketAddr, bytes_per_sec: u64) -> Arc<Self> {
        Arc::new(Proxy {
            upstream,
            bucket: TokenBucket::new(bytes_per_sec),
            counters: Counters::default(),
        })
    }

    /// Serves on `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| proxy.clone().handle(request));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        if request.uri().path().starts_with("/__xfd_proxy/") {
            return Ok(self.control(&request));
        }
        let counted = counted_as_object_get(&request);
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if request.method() == hyper::Method::GET {
            self.counters.get_requests.fetch_add(1, Ordering::Relaxed);
        }
        match self.forward(request).await {
            Ok(response) => {
                let counted = counted && response.status().is_success();
                let (parts, body) = response.into_parts();
                let body = Throttled::new(body, self.clone(), counted);
                Ok(Response::from_parts(parts, body.boxed()))
            }
            Err(error) => Ok(text(StatusCode::BAD_GATEWAY, format!("upstream: {error}"))),
        }
    }

    async fn forward(&self, request: Request<Incoming>) -> Result<Response<Incoming>, Box<dyn std::error::Error>> {
        let stream = TcpStream::connect(self.upstream).await?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender.send_request(request).await?)
    }

    fn control(&self, request: &Request<Incoming>) -> Response<ProxyBody> {
        let c = &self.counters;
        match request.uri().path() {
            "/__xfd_proxy/reset" => {
                for counter in [&c.requests, &c.get_requests, &c.body_bytes, &c.object_get_bytes] {
                    counter.store(0, Ordering::Relaxed);
                }
            }
            "/__xfd_proxy/rate" => {
                let rate = request.uri().query().and_then(|q| q.strip_prefix("bytes_per_sec="));
                match rate.and_then(|r| r.parse().ok()) {
                    Some(rate) => self.bucket.set_rate(rate),
                    None => return text(StatusCode::BAD_REQUEST, "use /__xfd_proxy/rate?bytes_per_sec=N".into()),
                }
            }
            "/__xfd_proxy/stats" => {}
            _ => return text(StatusCode::NOT_FOUND, "stats, reset or rate".into()),
        }
        let json = CountersJson {
            requests: c.requests.load(Ordering::Relaxed),
            get_requests: c.get_requests.load(Ordering::Relaxed),
            body_bytes: c.body_bytes.load(Ordering::Relaxed),
            object_get_bytes: c.object_get_bytes.load(Ordering::Relaxed),
            bytes_per_sec: self.bucket.rate.load(Ordering::Relaxed),
        };
        text(
            StatusCode::OK,
            serde_json::to_string(&json).expect("counters serialize"),
        )
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed();
    Response::builder().status(status).body(body).expect("static response")
}

/// A GET of an object (path-style `/bucket/key...`), not a bucket listing (`/bucket?list-type=2`).
fn counted_as_object_get(request: &Request<Incoming>) -> bool {
    request.method() == hyper::Method::GET && request.uri().path().trim_matches('/').contains('/')
}

/// A response body released through the shared token bucket, counted as it goes.
struct Throttled {
    inner: Incoming,
    proxy: Arc<Proxy>,
    object_get: bool,
    /// Bytes already read from upstream, waiting for their turn; released in pieces of [`PIECE`].
    pending: Bytes,
    wait: Option<Pin<Box<Sleep>>>,
}

impl Throttled {
    fn new(inner: Incoming, proxy: Arc<Proxy>, object_get: bool) -> Self {
        Throttled {
            inner,
            proxy,
            object_get,
            pending: Bytes::new(),
            wait: None,
        }
    }

    fn release(&mut self) -> Frame<Bytes> {
        let piece = self.pending.split_to(self.pending.len().min(PIECE));
        let counters = &self.proxy.counters;
        counters.body_bytes.fetch_add(piece.len() as u64, Ordering::Relaxed);
        if self.object_get {
            counters
                .object_get_bytes
                .fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
        Frame::data(piece)
    }
}

impl Body for Throttled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(wait) = this.wait.as_mut() {
                ready!(wait.as_mut().poll(cx));
                this.wait = None;
                return Poll::Ready(Some(Ok(this.release())));
            }
            if !this.pending.is_empty() {
                let delay = this.proxy.bucket.reserve(this.pending.len().min(PIECE));
                if delay.is_zero() {
                    return Poll::Ready(Some(Ok(this.release())));
                }
                this.wait = Some(Box::pin(tokio::time::sleep(delay)));
                continue;
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return Poll::Ready(other),
            }
        }
    }
}
