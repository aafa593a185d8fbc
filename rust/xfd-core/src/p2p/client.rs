//! The peer client: fetches one chunk (or a range of one) from a peer into its place in a file.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};

use super::range::format_range;
use super::writer::RangeWriter;
use super::{ChunkId, DIGEST_HEADER};
use crate::error::{Error, Result};
use crate::hash::ChunkDigest;
use crate::sink::PositionalWrite;

/// How a [`P2pClient`] talks to peers.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The token of the run, sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// Time allowed to open a TCP connection. Default 3 s: peers share a datacenter network and connect
    /// in well under a millisecond; 3 s still covers one lost SYN (retransmitted after 1 s).
    pub connect_timeout: Duration,
    /// Fixed part of each request's deadline (first byte, scheduling hiccups). Default 10 s.
    pub base_timeout: Duration,
    /// Slowest transfer tolerated: a request's deadline is `base_timeout + length / this`. Default
    /// 2 MiB/s: far below what any healthy peer delivers (hundreds of MiB/s), so only a stalled or
    /// overloaded peer misses it, and then another source is the better choice.
    pub min_throughput_bytes_per_sec: u64,
    /// Extra attempts after a connection failure (refused, reset, connect timeout) or a busy answer
    /// (503). Default 2: enough to ride out a peer's restart, a full accept queue or a slot about to be
    /// freed, few enough to give up on a dead or overloaded node fast.
    pub retries: u32,
    /// Backoff before the first retry; doubles each retry, with jitter. Default 100 ms.
    pub backoff_base: Duration,
    /// Longest backoff. Default 2 s.
    pub backoff_max: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            token: String::new(),
            connect_timeout: Duration::from_secs(3),
            base_timeout: Duration::from_secs(10),
            min_throughput_bytes_per_sec: 2 << 20,
            retries: 2,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// What one successful fetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchReport {
    /// Bytes written to the destination.
    pub bytes: u64,
    /// BLAKE3 digest of those bytes (for a whole chunk: checked against the peer's and the caller's).
    pub digest: ChunkDigest,
    /// Wall time of the fetch, retries included.
    pub duration: Duration,
}

/// Fetches chunks from peers. Cheap to clone; connections to a peer are pooled and reused.
#[derive(Debug, Clone)]
pub struct P2pClient {
    http: reqwest::Client,
    authorization: HeaderValue,
    config: ClientConfig,
}

/// One fetch, as the attempts see it.
struct Transfer<'a> {
    peer: SocketAddr,
    id: &'a ChunkId,
    /// `None`: the whole chunk (verified); `Some`: a range of it (not verifiable on its own).
    range: Option<Range<u64>>,
    length: u64,
    expected: Option<ChunkDigest>,
    dest: Arc<dyn PositionalWrite>,
    dest_offset: u64,
}

/// A failed attempt, and whether trying the same peer again can help.
struct Failure {
    error: Error,
    retryable: bool,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            error,
            retryable: false,
        }
    }
}

impl P2pClient {
    pub fn new(config: ClientConfig) -> Result<Self> {
        let invalid = |field, reason| Error::InvalidP2pConfig { field, reason };
        if config.token.is_empty() || !config.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("token", "must be non-empty printable ASCII without spaces"));
        }
        if config.min_throughput_bytes_per_sec == 0 {
            return Err(invalid("min_throughput_bytes_per_sec", "must be positive"));
        }
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", config.token))
            .map_err(|_| invalid("token", "must be printable ASCII"))?;
        authorization.set_sensitive(true);
        // Peers are reached directly: never through a proxy from the environment, never redirected.
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .http1_only()
            .build()
            .map_err(|_| invalid("client", "cannot build the HTTP client"))?;
        Ok(P2pClient {
            http,
            authorization,
            config,
        })
    }

    /// Fetches the whole chunk `id` (`length` bytes) from `peer` into `dest` at `dest_offset`.
    ///
    /// The bytes are written as they arrive and hashed on the way; the result is `Ok` only when the
    /// length is right and the digest matches both the peer's `x-xfd-blake3` header and `expected`
    /// (when given). On any error the destination range holds unverified bytes and must not be marked
    /// done. Bytes outside `[dest_offset, dest_offset + length)` are never written.
    pub async fn fetch_chunk(
        &self,
        peer: SocketAddr,
        id: &ChunkId,
        expected: Option<ChunkDigest>,
        dest: Arc<dyn PositionalWrite>,
        dest_offset: u64,
        length: u64,
    ) -> Result<FetchReport> {
        let transfer = Transfer {
            peer,
            id,
            range: None,
            length,
            expected,
            dest,
            dest_offset,
        };
        self.fetch(transfer).await
    }

    /// Fetches bytes `range` of chunk `id` into `dest` at `dest_offset`. The length is checked; the
    /// digest cannot be (it covers the whole chunk), so the caller verifies the chunk once complete.
    pub async fn fetch_range(
        &self,
        peer: SocketAddr,
        id: &ChunkId,
        range: Range<u64>,
        dest: Arc<dyn PositionalWrite>,
        dest_offset: u64,
    ) -> Result<FetchReport> {
        if range.is_empty() {
            let digest = ChunkDigest::of_bytes(&[]);
            let (bytes, duration) = (0, Duration::ZERO);
            return Ok(FetchReport {
                bytes,
                digest,
                duration,
            });
        }
        let transfer = Transfer {
            peer,
            id,
            length: range.end - range.start,
            range: Some(range),
            expected: None,
            dest,
            dest_offset,
        };
        self.fetch(transfer).await
    }

    /// Runs attempts until one succeeds, one fails for good, or the retries are spent.
    async fn fetch(&self, transfer: Transfer<'_>) -> Result<FetchReport> {
        let started = Instant::now();
        let mut retry = 0;
        loop {
            match self.attempt(&transfer).await {
                Ok((bytes, digest)) => {
                    let duration = started.elapsed();
                    return Ok(FetchReport {
                        bytes,
                        digest,
                        duration,
                    });
                }
                Err(failure) if failure.retryable && retry < self.config.retries => {
                    tokio::time::sleep(self.backoff(retry)).await;
                    retry += 1;
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// One request, bounded by a deadline that grows with the length.
    async fn attempt(&self, transfer: &Transfer<'_>) -> Result<(u64, ChunkDigest), Failure> {
        let deadline = self.deadline(transfer.length);
        match tokio::time::timeout(deadline, self.request(transfer)).await {
            Ok(result) => result,
            // A peer this slow is better replaced than retried: not retryable.
            Err(_) => Err(Error::PeerStalled {
                peer: transfer.peer,
                chunk: *transfer.id,
                waited: deadline,
            }
            .into()),
        }
    }

    async fn request(&self, transfer: &Transfer<'_>) -> Result<(u64, ChunkDigest), Failure> {
        let url = format!("http://{}/v1/chunks/{}", transfer.peer, transfer.id);
        let mut request = self
            .http
            .get(url)
            .header(header::AUTHORIZATION, self.authorization.clone());
        if let Some(range) = &transfer.range {
            request = request.header(header::RANGE, format_range(range));
        }
        // Nothing was received yet: a connection failure here is worth another try.
        let response = request.send().await.map_err(|e| Failure {
            error: transfer.unreachable(error_chain(&e)),
            retryable: true,
        })?;
        let advertised = transfer.check_head(&response).map_err(|error| {
            // A full server frees a slot within moments: a transfer there ends, or the slower copy of an
            // endgame race (which the scheduler counts free as soon as the faster one is in) finishes.
            // So a 503 is worth another try after the backoff, as its `Retry-After` says.
            let retryable = matches!(error, Error::PeerBusy { .. });
            Failure { error, retryable }
        })?;
        let (bytes, digest) = transfer.receive(response).await?;
        transfer.verify(advertised, digest)?;
        Ok((bytes, digest))
    }

    fn deadline(&self, length: u64) -> Duration {
        let rate = self.config.min_throughput_bytes_per_sec as f64;
        self.config.base_timeout + Duration::from_secs_f64(length as f64 / rate)
    }

    /// Exponential backoff with jitter in [half, full], so clients that failed together spread out.
    fn backoff(&self, retry: u32) -> Duration {
        let full = self
            .config
            .backoff_base
            .saturating_mul(1u32 << retry.min(16))
            .min(self.config.backoff_max);
        let fraction = getrandom::u64().unwrap_or(0) as f64 / u64::MAX as f64;
        full.mul_f64(0.5 + 0.5 * fraction)
    }
}

impl Transfer<'_> {
    /// Classifies the status and checks the head; returns the digest the peer announces.
    fn check_head(&self, response: &reqwest::Response) -> Result<Option<ChunkDigest>> {
        let wanted = if self.range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        match response.status() {
            status if status == wanted => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.error(Kind::AuthRefused));
            }
            StatusCode::NOT_FOUND => return Err(self.error(Kind::NotFound)),
            StatusCode::SERVICE_UNAVAILABLE => return Err(self.error(Kind::Busy)),
            status => return Err(self.protocol(format!("unexpected status {status}"))),
        }
        if response.content_length() != Some(self.length) {
            let announced = response.content_length();
            let detail = format!("announces {announced:?} bytes, expected {}", self.length);
            return Err(self.protocol(detail));
        }
        if self.range.is_some() {
            return Ok(None);
        }
        let advertised =
            parse_digest_header(response).ok_or_else(|| self.protocol(format!("no valid {DIGEST_HEADER} header")))?;
        // The peer announces another chunk's content: refuse before downloading it.
        self.check_digest(self.expected, advertised)?;
        Ok(Some(advertised))
    }

    /// Streams the body into the destination; returns the byte count and digest.
    async fn receive(&self, mut response: reqwest::Response) -> Result<(u64, ChunkDigest)> {
        let mut writer = RangeWriter::new(self.dest.clone(), self.dest_offset, self.length);
        let mut received = 0u64;
        while let Some(piece) = response.chunk().await.map_err(|_| self.short_body(received))? {
            if received + piece.len() as u64 > self.length {
                return Err(self.protocol(format!("sends more than {} bytes", self.length)));
            }
            let offset = self.dest_offset + received;
            writer
                .push(&piece)
                .await
                .map_err(|source| self.write_error(offset, source))?;
            received += piece.len() as u64;
        }
        if received < self.length {
            return Err(self.short_body(received));
        }
        let digest = writer
            .finish()
            .await
            .map_err(|source| self.write_error(self.dest_offset, source))?;
        Ok((received, ChunkDigest(*digest.as_bytes())))
    }

    fn verify(&self, advertised: Option<ChunkDigest>, actual: ChunkDigest) -> Result<()> {
        self.check_digest(advertised, actual)?;
        self.check_digest(self.expected, actual)
    }

    fn check_digest(&self, expected: Option<ChunkDigest>, actual: ChunkDigest) -> Result<()> {
        match expected {
            Some(expected) if expected != actual => Err(Error::PeerDigestMismatch {
                chunk: *self.id,
                peer: self.peer,
                expected,
                actual,
            }),
            _ => Ok(()),
        }
    }

    fn error(&self, kind: Kind) -> Error {
        let (peer, chunk) = (self.peer, *self.id);
        match kind {
            Kind::AuthRefused => Error::PeerAuthRefused { peer, chunk },
            Kind::NotFound => Error::ChunkNotOnPeer { peer, chunk },
            Kind::Busy => Error::PeerBusy { peer, chunk },
        }
    }

    fn unreachable(&self, reason: String) -> Error {
        Error::PeerUnreachable {
            peer: self.peer,
            chunk: *self.id,
            reason,
        }
    }

    fn protocol(&self, detail: String) -> Error {
        Error::PeerProtocol {
            peer: self.peer,
            chunk: *self.id,
            detail,
        }
    }

    fn short_body(&self, received: u64) -> Error {
        Error::PeerShortBody {
            peer: self.peer,
            chunk: *self.id,
            received,
            expected: self.length,
        }
    }

    fn write_error(&self, offset: u64, source: std::io::Error) -> Error {
        Error::ChunkWrite {
            chunk: *self.id,
            offset,
            source,
        }
    }
}

/// Status classes that carry nothing but the peer and the chunk.
enum Kind {
    AuthRefused,
    NotFound,
    Busy,
}

fn parse_digest_header(response: &reqwest::Response) -> Option<ChunkDigest> {
    let text = response.headers().get(DIGEST_HEADER)?.to_str().ok()?;
    let lower = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let hash = blake3::Hash::from_hex(text).ok().filter(|_| lower)?;
    Some(ChunkDigest(*hash.as_bytes()))
}

/// An error with its causes ("error sending request: connection refused"), since reqwest's own message
/// hides the cause that tells refused from reset.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
