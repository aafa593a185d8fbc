//! The peer server: serves verified chunks of this node to other nodes over HTTP/1.1.

use std::convert::Infallible;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::body::{ChunkBody, FileRange, ServerBody};
use super::limiter::EgressLimiter;
use super::range::parse_range;
use super::{ChunkId, ChunkRegistry, DIGEST_HEADER, ServedChunk};
use crate::error::{Error, Result};
use crate::faults::{Faults, Point};

/// Largest request head (request line and headers) accepted, in bytes; larger heads get 431. A chunk
/// request needs about 200 bytes; 16 KiB leaves room for proxies' extra headers and no room for abuse.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most headers accepted in one request; a chunk request sends four or five.
const MAX_HEADERS: usize = 32;

/// How the peer server listens and what it allows.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on. Default: 127.0.0.1, so nothing is exposed by accident; the engine passes
    /// the node's own cluster address, never a wildcard, so the server is reachable only where Ray is.
    pub bind: IpAddr,
    /// Port to listen on; 0 (the default) lets the OS pick a free one, read back with
    /// [`P2pServer::local_addr`] and published to the other nodes.
    pub port: u16,
    /// Shared secret every request must present as `Authorization: Bearer <token>`. No default: an
    /// empty token is refused by [`P2pServer::start`]. Use [`super::generate_token`] once per run.
    pub token: String,
    /// Chunk responses streamed at once; requests beyond are answered 503 at once. Default 8: a handful
    /// of streams already fill a datacenter NIC, and each holds a few MiB of buffers and a disk reader.
    pub upload_slots: usize,
    /// Total upload rate of this server in bytes per second, shared by all responses. Default `None`
    /// (unlimited): transfers are meant to use the network; set it when training traffic shares the link.
    pub egress_bytes_per_sec: Option<u64>,
    /// Time a client has to send a complete request head. Default 10 s: a real client sends it in well
    /// under a millisecond, and a slow-loris client holds a socket for at most this long.
    pub header_read_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted. Default 512: far more
    /// than a cluster's peers keep open (a few per node), and with heads capped at 16 KiB a flood of
    /// idle or slow-loris connections holds at most 8 MiB.
    pub max_connections: usize,
    /// Longest wait for a client to take one block (1 MiB) of a chunk response; then the response is
    /// given up and its upload slot freed. Default 30 s: a client that slow (35 KB/s) misses its own
    /// deadline anyway, and one that stopped reading must not hold a slot the other nodes need.
    pub send_timeout: Duration,
    /// Fault injection for tests of the whole system (`serve:corrupt`, `serve:truncate`,
    /// `serve:stall`: a rotting disk, a dying or a hung peer). Empty outside tests.
    pub faults: Arc<Faults>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            token: String::new(),
            upload_slots: 8,
            egress_bytes_per_sec: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 512,
            send_timeout: Duration::from_secs(30),
            faults: Arc::default(),
        }
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<()> {
        let invalid = |field, reason| Err(Error::InvalidP2pConfig { field, reason });
        if self.token.is_empty() {
            return invalid("token", "must not be empty");
        }
        if !self.token.bytes().all(|b| b.is_ascii_graphic()) {
            return invalid("token", "must be printable ASCII without spaces");
        }
        if self.upload_slots == 0 || self.upload_slots > Semaphore::MAX_PERMITS {
            return invalid("upload_slots", "must be at least 1");
        }
        if self.egress_bytes_per_sec == Some(0) {
            return invalid("egress_bytes_per_sec", "must be positive, or None for no limit");
        }
        if self.send_timeout.is_zero() {
            return invalid("send_timeout", "must be positive");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.header_read_timeout.is_zero() {
            return invalid("header_read_timeout", "must be positive");
        }
        Ok(())
    }
}

/// Requests refused, by reason (each reason is one status code).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RefusedCounts {
    /// 401: missing or wrong token.
    pub unauthorized: u64,
    /// 400: malformed chunk id.
    pub bad_request: u64,
    /// 404: unknown path, or a chunk that is not verified here (or whose file cannot be opened).
    pub not_found: u64,
    /// 416: a `Range` header that is not one range inside the chunk.
    pub range_not_satisfiable: u64,
    /// 405: any method but GET.
    pub method_not_allowed: u64,
    /// 503: all upload slots taken.
    pub busy: u64,
    /// Connections closed unanswered because `max_connections` were open.
    pub connections: u64,
}

impl RefusedCounts {
    pub fn total(&self) -> u64 {
        self.unauthorized
            + self.bad_request
            + self.not_found
            + self.range_not_satisfiable
            + self.method_not_allowed
            + self.busy
            + self.connections
    }
}

/// A snapshot of a server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServerStats {
    /// Chunk bytes handed to the network (bodies only).
    pub bytes_served: u64,
    /// Chunk responses started (200 and 206).
    pub chunk_responses: u64,
    /// Chunk files that could not be opened, or ended early (the response was aborted).
    pub read_failures: u64,
    /// Chunk responses streaming right now (upload slots in use).
    pub active_uploads: usize,
    pub refused: RefusedCounts,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) bytes_served: AtomicU64,
    pub(crate) read_failures: AtomicU64,
    chunk_responses: AtomicU64,
    unauthorized: AtomicU64,
    bad_request: AtomicU64,
    not_found: AtomicU64,
    range_not_satisfiable: AtomicU64,
    method_not_allowed: AtomicU64,
    busy: AtomicU64,
    connections: AtomicU64,
}

/// Why a request gets no chunk.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Unauthorized,
    BadRequest,
    NotFound,
    RangeNotSatisfiable { chunk_length: u64 },
    MethodNotAllowed,
    Busy,
}

/// Everything a request handler needs, shared by all connections.
struct State {
    registry: Box<dyn ChunkRegistry>,
    token_digest: blake3::Hash,
    slots: Arc<Semaphore>,
    slot_count: usize,
    limiter: Option<Arc<EgressLimiter>>,
    counters: Arc<Counters>,
    faults: Arc<Faults>,
    send_timeout: Duration,
}

/// A running peer server. Dropping it stops the server at once; [`P2pServer::shutdown`] stops it
/// gracefully.
pub struct P2pServer {
    local_addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<Option<Duration>>,
    accept_loop: JoinHandle<()>,
}

impl P2pServer {
    /// Binds `config.bind:config.port` and starts serving `registry` on the current tokio runtime.
    pub async fn start(config: ServerConfig, registry: impl ChunkRegistry) -> Result<P2pServer> {
        config.validate()?;
        let addr = SocketAddr::new(config.bind, config.port);
        let bind_error = |source| Error::P2pBind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let state = Arc::new(State {
            registry: Box::new(registry),
            token_digest: blake3::hash(config.token.as_bytes()),
            slots: Arc::new(Semaphore::new(config.upload_slots)),
            slot_count: config.upload_slots,
            limiter: config
                .egress_bytes_per_sec
                .map(|rate| Arc::new(EgressLimiter::new(rate))),
            counters: Arc::default(),
            faults: config.faults.clone(),
            send_timeout: config.send_timeout,
        });
        let (stop, stopped) = watch::channel(None);
        let builder = http1_builder(&config);
        let accept_loop = tokio::spawn(accept_loop(
            listener,
            builder,
            config.max_connections,
            state.clone(),
            stopped,
        ));
        Ok(P2pServer {
            local_addr,
            state,
            stop,
            accept_loop,
        })
    }

    /// The address the server listens on, with the real port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        let counters = &self.state.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ServerStats {
            bytes_served: load(&counters.bytes_served),
            chunk_responses: load(&counters.chunk_responses),
            read_failures: load(&counters.read_failures),
            active_uploads: self.state.slot_count - self.state.slots.available_permits(),
            refused: RefusedCounts {
                unauthorized: load(&counters.unauthorized),
                bad_request: load(&counters.bad_request),
                not_found: load(&counters.not_found),
                range_not_satisfiable: load(&counters.range_not_satisfiable),
                method_not_allowed: load(&counters.method_not_allowed),
                busy: load(&counters.busy),
                connections: load(&counters.connections),
            },
        }
    }

    /// Stops accepting connections, closes idle ones, and lets responses in flight finish for up to
    /// `grace`; connections still open then are cut.
    pub async fn shutdown(self, grace: Duration) {
        // The loop may already be gone (it only ends on a stop signal), so a failed send is fine.
        let _ = self.stop.send(Some(grace));
        let _ = self.accept_loop.await;
    }
}

fn http1_builder(config: &ServerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    builder
}

/// Accepts connections until told to stop, then drains them for the grace period.
async fn accept_loop(
    listener: TcpListener,
    builder: http1::Builder,
    max_connections: usize,
    state: Arc<State>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.len() >= max_connections => {
                    state.counters.connections.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                }
                Ok((stream, _)) => {
                    let state = state.clone();
                    let service = service_fn(move |request| handle(state.clone(), request));
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    connections.spawn(graceful.watch(connection));
                }
                // Out of file descriptors and the like: back off instead of spinning on accept.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            Some(_) = connections.join_next() => {}
            // A dropped handle (no grace) stops at once, like a cancelled future.
            changed = stop.changed() => break changed.ok().and(*stop.borrow()).unwrap_or_default(),
        }
    };
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
    connections.shutdown().await;
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<Response<ServerBody>, Infallible> {
    let response = match route(&state, &request).await {
        Ok(response) => response,
        Err(refusal) => state.refuse(refusal),
    };
    Ok(response)
}

async fn route(state: &State, request: &Request<Incoming>) -> Result<Response<ServerBody>, Refusal> {
    // The token is checked first: a client without it learns nothing, not even which paths exist.
    if !state.is_authorized(request.headers()) {
        return Err(Refusal::Unauthorized);
    }
    if request.method() != Method::GET {
        return Err(Refusal::MethodNotAllowed);
    }
    let path = request.uri().path();
    if path == "/v1/health" {
        return Ok(Response::new(ServerBody::text("ok\n")));
    }
    let id = path.strip_prefix("/v1/chunks/").ok_or(Refusal::NotFound)?;
    let id = ChunkId::parse(id).map_err(|_| Refusal::BadRequest)?;
    state.serve_chunk(&id, request.headers()).await
}

impl State {
    /// Compares digests of the tokens: `blake3::Hash` equality is constant-time, and hashing first
    /// hides the token's length as well.
    fn is_authorized(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        blake3::hash(presented) == self.token_digest
    }

    async fn serve_chunk(&self, id: &ChunkId, headers: &HeaderMap) -> Result<Response<ServerBody>, Refusal> {
        let chunk = self.registry.verified(id).ok_or(Refusal::NotFound)?;
        let span = requested_span(headers, chunk.length)?;
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| Refusal::Busy)?;
        let file = open_chunk_file(chunk.path.clone()).await.map_err(|_| {
            self.counters.read_failures.fetch_add(1, Ordering::Relaxed);
            Refusal::NotFound
        })?;
        let source = FileRange {
            file: Arc::new(file),
            offset: chunk.offset.saturating_add(span.start),
            length: span.end - span.start,
            send_timeout: self.send_timeout,
            fault: self.faults.at(Point::Serve),
        };
        let body = ChunkBody::spawn(source, self.limiter.clone(), self.counters.clone(), slot);
        let partial = headers.contains_key(header::RANGE);
        let response = chunk_response(&chunk, &span, partial, ServerBody::Chunk(body));
        self.counters.chunk_responses.fetch_add(1, Ordering::Relaxed);
        Ok(response)
    }

    fn refuse(&self, refusal: Refusal) -> Response<ServerBody> {
        self.refusal_counter(refusal).fetch_add(1, Ordering::Relaxed);
        refusal_response(refusal)
    }

    fn refusal_counter(&self, refusal: Refusal) -> &AtomicU64 {
        let counters = &self.counters;
        match refusal {
            Refusal::Unauthorized => &counters.unauthorized,
            Refusal::BadRequest => &counters.bad_request,
            Refusal::NotFound => &counters.not_found,
            Refusal::RangeNotSatisfiable { .. } => &counters.range_not_satisfiable,
            Refusal::MethodNotAllowed => &counters.method_not_allowed,
            Refusal::Busy => &counters.busy,
        }
    }
}

/// An empty-bodied refusal: the status, and only the headers the standard asks for.
fn refusal_response(refusal: Refusal) -> Response<ServerBody> {
    let (status, extra) = match refusal {
        Refusal::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            Some((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))),
        ),
        Refusal::BadRequest => (StatusCode::BAD_REQUEST, None),
        Refusal::NotFound => (StatusCode::NOT_FOUND, None),
        Refusal::RangeNotSatisfiable { chunk_length } => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            Some((header::CONTENT_RANGE, header_value(format!("bytes */{chunk_length}")))),
        ),
        Refusal::MethodNotAllowed => (
            StatusCode::METHOD_NOT_ALLOWED,
            Some((header::ALLOW, HeaderValue::from_static("GET"))),
        ),
        Refusal::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some((header::RETRY_AFTER, HeaderValue::from_static("1"))),
        ),
    };
    let mut response = Response::new(ServerBody::empty());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    if let Some((name, value)) = extra {
        headers.insert(name, value);
    }
    response
}

/// The 200 (whole chunk) or 206 (`partial`) response for `span` of `chunk`.
fn chunk_response(chunk: &ServedChunk, span: &Range<u64>, partial: bool, body: ServerBody) -> Response<ServerBody> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(span.end - span.start));
    let octets = HeaderValue::from_static("application/octet-stream");
    headers.insert(header::CONTENT_TYPE, octets);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(DIGEST_HEADER, header_value(chunk.digest.to_hex()));
    if partial {
        let content_range = format!("bytes {}-{}/{}", span.start, span.end - 1, chunk.length);
        headers.insert(header::CONTENT_RANGE, header_value(content_range));
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    response
}

/// The part of the chunk to send: all of it, or the one range asked for.
fn requested_span(headers: &HeaderMap, chunk_length: u64) -> Result<Range<u64>, Refusal> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(0..chunk_length);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| parse_range(text, chunk_length))
        .ok_or(Refusal::RangeNotSatisfiable { chunk_length })
}

async fn open_chunk_file(path: PathBuf) -> std::io::Result<File> {
    tokio::task::spawn_blocking(move || File::open(path))
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join)))
}

/// A header value from text the server built itself (digits, hex, ASCII punctuation).
fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("server-built header values are ASCII")
}
