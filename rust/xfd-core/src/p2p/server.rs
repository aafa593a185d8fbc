//! The peer server: serves verified chunks of this node to other nodes over HTTP/1.1.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
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

use super::admission::{Admission, Budgets, Ticket};
use super::body::{ChunkBody, ChunkSource, ServerBody};
use super::limiter::EgressLimiter;
use super::range::parse_range;
use super::{ChunkId, ChunkRegistry, DIGEST_HEADER, Segment, ServedChunk};
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
    /// Time a client has to send a complete request head; hyper starts the same timer when a keep-alive
    /// connection goes idle, so it is also the longest a connection waits between requests. Default
    /// 10 s: a real client sends its head in well under a millisecond, and a peer that fetched once
    /// asks again within seconds or not at all.
    pub header_read_timeout: Duration,
    /// Time a new connection has to send a request with the valid token; then it is closed. Default
    /// 3 s: a peer sends its request head right after connecting (well under a millisecond on a
    /// cluster network) and 3 s still covers two retransmissions of a lost packet, while a client
    /// without the token holds its socket no longer than this.
    pub auth_timeout: Duration,
    /// Connections that have not yet shown the token (pending), for the whole server. A new connection
    /// is always admitted: when this many are pending, the oldest pending one is closed to make room.
    /// Default 512: a peer is pending for well under a millisecond, so even a burst of a thousand nodes
    /// rarely has this many at once, and a flood without the token holds at most 512 sockets (8 MiB of
    /// request heads) whatever its size.
    pub max_pending_connections: usize,
    /// Pending connections from one client address; past it, that address's oldest pending connection
    /// is closed to make room, so a flood from one address never closes another address's connections.
    /// Default 128: a node opens at most a handful of streams to one server at once, and simulated nodes
    /// sharing one loopback address (8 nodes x 8 streams) still fit twice.
    pub max_pending_per_address: usize,
    /// Connections that have shown the token, open at once. They are never closed to make room; past
    /// this, a new connection's request is answered 503 and the connection closed. Default 8192: a
    /// thousand nodes with 8 streams each to this server at once; an idle one holds about 12 KiB, so
    /// 100 MiB if all are open. The open-file limit (`ulimit -n`) must allow as many sockets.
    pub max_authenticated_connections: usize,
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
            auth_timeout: Duration::from_secs(3),
            max_pending_connections: 512,
            max_pending_per_address: 128,
            max_authenticated_connections: 8192,
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
        if self.max_pending_connections == 0 {
            return invalid("max_pending_connections", "must be at least 1");
        }
        if self.max_pending_per_address == 0 {
            return invalid("max_pending_per_address", "must be at least 1");
        }
        if self.max_authenticated_connections == 0 {
            return invalid("max_authenticated_connections", "must be at least 1");
        }
        if self.header_read_timeout.is_zero() {
            return invalid("header_read_timeout", "must be positive");
        }
        if self.auth_timeout.is_zero() {
            return invalid("auth_timeout", "must be positive");
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
    /// 404: unknown path, or a chunk that is not verified here (or one of whose files is missing or
    /// shorter than the registry says).
    pub not_found: u64,
    /// 416: a `Range` header that is not one range inside the chunk.
    pub range_not_satisfiable: u64,
    /// 405: any method but GET.
    pub method_not_allowed: u64,
    /// 503: all upload slots taken.
    pub busy: u64,
    /// 503 and closed: a connection showed the token while `max_authenticated_connections` were open.
    pub connections: u64,
    /// Connections closed unanswered because they showed no valid token within `auth_timeout`.
    pub unauthenticated_timed_out: u64,
    /// Connections without the token closed unanswered to make room for newer ones
    /// (`max_pending_per_address` or `max_pending_connections` were pending).
    pub unauthenticated_evicted: u64,
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
            + self.unauthenticated_timed_out
            + self.unauthenticated_evicted
    }
}

/// A snapshot of a server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServerStats {
    /// Chunk bytes handed to the network (bodies only).
    pub bytes_served: u64,
    /// Chunk responses started (200 and 206).
    pub chunk_responses: u64,
    /// Chunk files missing or too short when a request came (answered 404), or that could not be
    /// opened or ended early while a response streamed (the response was aborted).
    pub read_failures: u64,
    /// Chunk responses streaming right now (upload slots in use).
    pub active_uploads: usize,
    /// Connections open now that have not yet shown the token.
    pub pending_connections: usize,
    /// Connections open now that have shown the token.
    pub authenticated_connections: usize,
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
    pub(crate) unauthenticated_timed_out: AtomicU64,
    pub(crate) unauthenticated_evicted: AtomicU64,
}

/// Why a request gets no chunk (`TooManyConnections`: `max_authenticated_connections` are open).
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Unauthorized,
    BadRequest,
    NotFound,
    RangeNotSatisfiable { chunk_length: u64 },
    MethodNotAllowed,
    Busy,
    TooManyConnections,
}

/// Everything a request handler needs, shared by all connections.
struct State {
    registry: Box<dyn ChunkRegistry>,
    token_digest: blake3::Hash,
    slots: Arc<Semaphore>,
    slot_count: usize,
    limiter: Option<Arc<EgressLimiter>>,
    counters: Arc<Counters>,
    admission: Arc<Admission>,
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
        let counters = Arc::<Counters>::default();
        let state = Arc::new(State {
            registry: Box::new(registry),
            token_digest: blake3::hash(config.token.as_bytes()),
            slots: Arc::new(Semaphore::new(config.upload_slots)),
            slot_count: config.upload_slots,
            limiter: config
                .egress_bytes_per_sec
                .map(|rate| Arc::new(EgressLimiter::new(rate))),
            admission: Admission::new(budgets(&config), counters.clone()),
            counters,
            faults: config.faults.clone(),
            send_timeout: config.send_timeout,
        });
        let (stop, stopped) = watch::channel(None);
        let builder = http1_builder(&config);
        let accept_loop = tokio::spawn(accept_loop(listener, builder, state.clone(), stopped));
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
        let (pending_connections, authenticated_connections) = self.state.admission.open();
        ServerStats {
            bytes_served: load(&counters.bytes_served),
            chunk_responses: load(&counters.chunk_responses),
            read_failures: load(&counters.read_failures),
            active_uploads: self.state.slot_count - self.state.slots.available_permits(),
            pending_connections,
            authenticated_connections,
            refused: RefusedCounts {
                unauthorized: load(&counters.unauthorized),
                bad_request: load(&counters.bad_request),
                not_found: load(&counters.not_found),
                range_not_satisfiable: load(&counters.range_not_satisfiable),
                method_not_allowed: load(&counters.method_not_allowed),
                busy: load(&counters.busy),
                connections: load(&counters.connections),
                unauthenticated_timed_out: load(&counters.unauthenticated_timed_out),
                unauthenticated_evicted: load(&counters.unauthenticated_evicted),
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

fn budgets(config: &ServerConfig) -> Budgets {
    Budgets {
        pending: config.max_pending_connections,
        pending_per_address: config.max_pending_per_address,
        authenticated: config.max_authenticated_connections,
        auth_timeout: config.auth_timeout,
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
    state: Arc<State>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let ticket = state.admission.admit(client.ip());
                    let (state, handler_ticket) = (state.clone(), ticket.clone());
                    let service =
                        service_fn(move |request| handle(state.clone(), handler_ticket.clone(), request));
                    let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                    // Dropping the connection closes it: evicted, or no token in time.
                    connections.spawn(async move {
                        tokio::select! {
                            _ = connection => {}
                            () = ticket.must_close() => {}
                        }
                    });
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

async fn handle(
    state: Arc<State>,
    ticket: Arc<Ticket>,
    request: Request<Incoming>,
) -> Result<Response<ServerBody>, Infallible> {
    let response = match route(&state, &ticket, &request).await {
        Ok(response) => response,
        Err(refusal) => state.refuse(refusal),
    };
    Ok(response)
}

async fn route(state: &State, ticket: &Ticket, request: &Request<Incoming>) -> Result<Response<ServerBody>, Refusal> {
    // The token is checked first: a client without it learns nothing, not even which paths exist.
    if !state.is_authorized(request.headers()) {
        return Err(Refusal::Unauthorized);
    }
    if !ticket.authenticate() {
        return Err(Refusal::TooManyConnections);
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
        let segments = check_segments(segments_in(&chunk.segments, &span)).await.map_err(|_| {
            self.counters.read_failures.fetch_add(1, Ordering::Relaxed);
            Refusal::NotFound
        })?;
        let source = ChunkSource {
            segments: segments.into(),
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
            Refusal::TooManyConnections => &counters.connections,
        }
    }
}

/// An empty-bodied refusal: the status, and only the headers the standard asks for. A client without
/// the token, and a connection with no room among the authenticated ones, is also closed, so that it
/// keeps no socket.
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
        Refusal::Busy | Refusal::TooManyConnections => (
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
    if matches!(refusal, Refusal::Unauthorized | Refusal::TooManyConnections) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
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

/// The parts of `segments` that hold bytes `span` of the segments laid end to end, in order.
fn segments_in(segments: &[Segment], span: &Range<u64>) -> Vec<Segment> {
    let mut start = 0u64;
    let mut parts = Vec::new();
    for segment in segments {
        let end = start + segment.length;
        let (from, to) = (span.start.max(start), span.end.min(end));
        if from < to {
            parts.push(Segment {
                offset: segment.offset.saturating_add(from - start),
                length: to - from,
                ..segment.clone()
            });
        }
        start = end;
    }
    parts
}

/// Checks that the file of every segment exists and holds the segment's bytes, with one stat each, all
/// in one call on the blocking pool (a bundle has hundreds). The files are opened only later, while
/// the blocks that cover them are read, so a response never holds all of a bundle's files open.
async fn check_segments(segments: Vec<Segment>) -> io::Result<Vec<Segment>> {
    let check = move || {
        for segment in &segments {
            if segment.metadata()?.len() < segment.offset.saturating_add(segment.length) {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(segments)
    };
    tokio::task::spawn_blocking(check)
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join)))
}

/// A header value from text the server built itself (digits, hex, ASCII punctuation).
fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("server-built header values are ASCII")
}
