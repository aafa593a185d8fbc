//! Peer transfer between two engines on 127.0.0.1: a real server, a real client, real files.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xfd_core::p2p::{
    ChunkId, ClientConfig, MemoryRegistry, P2pClient, P2pServer, Segment, ServedChunk, ServerConfig, generate_token,
};
use xfd_core::{ChunkDigest, Error};

const TOKEN: &str = "test-token-0123456789";
const MIB: usize = 1 << 20;

/// A serving node: a directory of files, its registry and its server.
struct Node {
    dir: tempfile::TempDir,
    registry: Arc<MemoryRegistry>,
    server: P2pServer,
}

impl Node {
    async fn start() -> Node {
        Node::start_with(ServerConfig::default()).await
    }

    async fn start_with(config: ServerConfig) -> Node {
        let registry = Arc::new(MemoryRegistry::new());
        let config = ServerConfig {
            token: TOKEN.into(),
            ..config
        };
        let server = P2pServer::start(config, registry.clone()).await.unwrap();
        Node {
            dir: tempfile::tempdir().unwrap(),
            registry,
            server,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Writes `prefix` filler bytes then `bytes` to a new file and registers the chunk as verified.
    fn serve(&self, bytes: &[u8], prefix: usize) -> ChunkId {
        let id = next_id();
        let path = self.write_file(&id, bytes, prefix);
        self.registry
            .insert(id, served(path, prefix, bytes, ChunkDigest::of_bytes(bytes)));
        id
    }

    fn write_file(&self, id: &ChunkId, bytes: &[u8], prefix: usize) -> PathBuf {
        let path = self.dir.path().join(id.to_string());
        let mut content = vec![0x5a; prefix];
        content.extend_from_slice(bytes);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Writes one file per `(content, range)` and registers those ranges of them, one after the other, as
    /// one chunk (a bundle when each range is its whole file). Returns the id and the chunk's bytes.
    fn serve_files(&self, files: &[(Vec<u8>, Range<usize>)]) -> (ChunkId, Vec<u8>) {
        let id = next_id();
        let mut bytes = Vec::new();
        let mut segments = Vec::new();
        for (index, (content, range)) in files.iter().enumerate() {
            let path = self.member(&id, index);
            std::fs::write(&path, content).unwrap();
            bytes.extend_from_slice(&content[range.clone()]);
            let (offset, length) = (range.start as u64, range.len() as u64);
            segments.push(Segment::new(path, offset, length));
        }
        let chunk = ServedChunk::in_files(segments, ChunkDigest::of_bytes(&bytes));
        self.registry.insert(id, chunk);
        (id, bytes)
    }

    /// The file holding segment `index` of a chunk registered by [`Node::serve_files`].
    fn member(&self, id: &ChunkId, index: usize) -> PathBuf {
        self.dir.path().join(format!("{id}.{index}"))
    }
}

/// A file registered whole.
fn whole(content: Vec<u8>) -> (Vec<u8>, Range<usize>) {
    let range = 0..content.len();
    (content, range)
}

/// A whole file, a range inside a bigger file, an empty file and a small one: 1.8 MiB, so the first
/// block read ends inside the second segment.
fn mixed_segments() -> Vec<(Vec<u8>, Range<usize>)> {
    vec![
        whole(pattern(300_000, 1)),
        (pattern(2_000_000, 2), 12_345..1_512_345),
        whole(Vec::new()),
        whole(pattern(777, 3)),
    ]
}

fn served(path: PathBuf, offset: usize, bytes: &[u8], digest: ChunkDigest) -> ServedChunk {
    ServedChunk::in_file(path, offset as u64, bytes.len() as u64, digest)
}

fn next_id() -> ChunkId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut bytes = [0u8; 16];
    bytes[8..].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    bytes[0] = 0xc0;
    ChunkId::from_bytes(bytes)
}

fn pattern(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn client() -> P2pClient {
    client_with(ClientConfig::default())
}

fn client_with(config: ClientConfig) -> P2pClient {
    P2pClient::new(ClientConfig {
        token: TOKEN.into(),
        backoff_base: Duration::from_millis(10),
        ..config
    })
    .unwrap()
}

/// A destination file of `length` bytes of 0xAB.
fn destination(length: usize) -> Arc<File> {
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(&vec![0xab; length], 0).unwrap();
    Arc::new(file)
}

fn read_all(file: &File) -> Vec<u8> {
    let mut bytes = vec![0u8; file.metadata().unwrap().len() as usize];
    file.read_exact_at(&mut bytes, 0).unwrap();
    bytes
}

/// Polls `condition` until it holds; fails the test after 30 s.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a raw request (any target, any headers) and returns the status code and the whole response.
async fn raw_request(addr: SocketAddr, method: &str, target: &str, headers: &[&str]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: peer\r\nConnection: close\r\n");
    headers.iter().for_each(|h| head.push_str(&format!("{h}\r\n")));
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    (status_of(&text), text)
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}")
}

/// Opens a request and reads only the response head, leaving the body unread (a slow reader).
async fn open_without_reading(addr: SocketAddr, id: &ChunkId) -> (TcpStream, u16) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET /v1/chunks/{id} HTTP/1.1\r\nHost: peer\r\n{}\r\n\r\n", bearer());
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buffer = [0u8; 1024];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
        received.extend_from_slice(&buffer[..n]);
    }
    (stream, status_of(&String::from_utf8_lossy(&received)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_lands_byte_identical_at_its_offset_and_nothing_else_changes() {
    let node = Node::start().await;
    let bytes = pattern(100_000, 7);
    let id = node.serve(&bytes, 1000);
    let dest = destination(200_000);

    let report = client()
        .fetch_chunk(
            node.addr(),
            &id,
            Some(ChunkDigest::of_bytes(&bytes)),
            dest.clone(),
            777,
            bytes.len() as u64,
        )
        .await
        .unwrap();

    assert_eq!(report.bytes, bytes.len() as u64);
    assert_eq!(report.digest, ChunkDigest::of_bytes(&bytes));
    let content = read_all(&dest);
    assert_eq!(&content[777..777 + bytes.len()], &bytes[..]);
    assert!(content[..777].iter().all(|&b| b == 0xab));
    assert!(content[777 + bytes.len()..].iter().all(|&b| b == 0xab));
    assert_eq!(node.server.stats().bytes_served, bytes.len() as u64);
    assert_eq!(node.server.stats().chunk_responses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_range_is_served_with_206() {
    let node = Node::start().await;
    let bytes = pattern(10_000, 3);
    let id = node.serve(&bytes, 10);
    let dest = destination(6000);

    let report = client()
        .fetch_range(node.addr(), &id, 100..5000, dest.clone(), 50)
        .await
        .unwrap();

    assert_eq!(report.bytes, 4900);
    assert_eq!(report.digest, ChunkDigest::of_bytes(&bytes[100..5000]));
    let content = read_all(&dest);
    assert_eq!(&content[50..4950], &bytes[100..5000]);
    assert!(content[4950..].iter().all(|&b| b == 0xab));
    let (status, response) = raw_request(
        node.addr(),
        "GET",
        &format!("/v1/chunks/{id}"),
        &[&bearer(), "Range: bytes=-10"],
    )
    .await;
    assert_eq!(status, 206);
    assert!(response.contains("content-range: bytes 9990-9999/10000"), "{response}");
    assert!(
        response.contains(&format!("x-xfd-blake3: {}", ChunkDigest::of_bytes(&bytes))),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_small_chunks() {
    let node = Node::start_with(ServerConfig {
        upload_slots: 64,
        ..ServerConfig::default()
    })
    .await;
    let chunks: Vec<(ChunkId, Vec<u8>)> = (0..1000)
        .map(|i| {
            let bytes = pattern(1 + i * 7 % 4096, i as u8);
            (node.serve(&bytes, i % 3), bytes)
        })
        .collect();
    let total: usize = chunks.iter().map(|(_, b)| b.len()).sum();
    let dest = destination(total);
    let client = client();
    let mut workers = tokio::task::JoinSet::new();
    let mut offset = 0u64;
    let mut expected = Vec::new();
    for (worker, group) in chunks.chunks(125).enumerate() {
        let mut jobs = Vec::new();
        for (id, bytes) in group {
            jobs.push((*id, ChunkDigest::of_bytes(bytes), offset, bytes.len() as u64));
            expected.extend_from_slice(bytes);
            offset += bytes.len() as u64;
        }
        let (client, dest, peer) = (client.clone(), dest.clone(), node.addr());
        workers.spawn(async move {
            for (id, digest, offset, length) in jobs {
                let report = client
                    .fetch_chunk(peer, &id, Some(digest), dest.clone(), offset, length)
                    .await;
                assert_eq!(report.unwrap_or_else(|e| panic!("worker {worker}: {e}")).bytes, length);
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.unwrap();
    }
    assert_eq!(read_all(&dest), expected);
    assert_eq!(node.server.stats().chunk_responses, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_larger_than_the_block_size() {
    let node = Node::start().await;
    let bytes = pattern(3 * MIB + 12_345, 11);
    let id = node.serve(&bytes, 4096);
    let dest = destination(bytes.len() + 1);

    let report = client()
        .fetch_chunk(
            node.addr(),
            &id,
            Some(ChunkDigest::of_bytes(&bytes)),
            dest.clone(),
            1,
            bytes.len() as u64,
        )
        .await
        .unwrap();

    assert_eq!(report.bytes, bytes.len() as u64);
    assert_eq!(&read_all(&dest)[1..], &bytes[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_token_is_refused_without_serving_a_byte() {
    let node = Node::start().await;
    let bytes = pattern(5000, 1);
    let id = node.serve(&bytes, 0);
    let target = format!("/v1/chunks/{id}");

    let (status, response) = raw_request(node.addr(), "GET", &target, &[]).await;
    assert_eq!(status, 401);
    assert!(response.ends_with("\r\n\r\n"), "401 carries no body: {response}");
    let (status, _) = raw_request(node.addr(), "GET", &target, &["Authorization: Bearer "]).await;
    assert_eq!(status, 401);
    let (status, _) = raw_request(node.addr(), "GET", &target, &[&format!("Authorization: {TOKEN}")]).await;
    assert_eq!(status, 401);
    let (status, _) = raw_request(node.addr(), "GET", "/v1/health", &[]).await;
    assert_eq!(status, 401);
    let wrong = P2pClient::new(ClientConfig {
        token: format!("{TOKEN}x"),
        ..ClientConfig::default()
    })
    .unwrap();
    let err = wrong
        .fetch_chunk(node.addr(), &id, None, destination(5000), 0, 5000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PeerAuthRefused { chunk, .. } if chunk == id),
        "{err}"
    );

    let stats = node.server.stats();
    assert_eq!(stats.refused.unauthorized, 5);
    assert_eq!(stats.bytes_served, 0);
    assert_eq!(stats.chunk_responses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_with_the_token() {
    let node = Node::start().await;
    let (status, _) = raw_request(node.addr(), "GET", "/v1/health", &[&bearer()]).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_unverified_chunks_are_not_found() {
    let node = Node::start().await;
    let bytes = pattern(1000, 2);
    let unverified = next_id();
    node.write_file(&unverified, &bytes, 0);
    let removed = node.serve(&bytes, 0);
    node.registry.remove(&removed);
    let client = client();

    for id in [next_id(), unverified, removed] {
        let err = client
            .fetch_chunk(node.addr(), &id, None, destination(1000), 0, 1000)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::ChunkNotOnPeer { chunk, peer } if *chunk == id && *peer == node.addr()),
            "{err}"
        );
    }
    assert_eq!(node.server.stats().refused.not_found, 3);
    assert_eq!(node.server.stats().bytes_served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_like_and_malformed_ids_are_refused() {
    let node = Node::start().await;
    let id = node.serve(&pattern(100, 0), 0);
    let upper = id.to_string().to_uppercase();
    let targets = [
        "/v1/chunks/..%2f..%2fetc%2fpasswd".to_string(),
        "/v1/chunks/%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_string(),
        "/v1/chunks/../../x".to_string(),
        "/v1/chunks//etc/passwd".to_string(),
        format!("/v1/chunks/{}", node.dir.path().join(id.to_string()).display()),
        format!("/v1/chunks/{id}0"),
        format!("/v1/chunks/{upper}"),
        format!("/v1/chunks/{id}/"),
        "/v1/chunks/".to_string(),
    ];
    for target in &targets {
        let (status, _) = raw_request(node.addr(), "GET", target, &[&bearer()]).await;
        assert_eq!(status, 400, "{target}");
    }
    for target in ["/etc/passwd", "/v1/chunks", "/v1/../etc/passwd"] {
        let (status, _) = raw_request(node.addr(), "GET", target, &[&bearer()]).await;
        assert_eq!(status, 404, "{target}");
    }
    let stats = node.server.stats();
    assert_eq!(stats.refused.bad_request, targets.len() as u64);
    assert_eq!(stats.bytes_served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ranges_and_methods_are_refused() {
    let node = Node::start().await;
    let id = node.serve(&pattern(1000, 0), 0);
    let target = format!("/v1/chunks/{id}");
    let ranges = [
        "bytes=0-99999999999999",
        "bytes=0-18446744073709551616",
        "bytes=500-100",
        "bytes=1000-",
        "bytes=0-1,5-9",
        "lines=0-5",
    ];
    for range in ranges {
        let (status, response) =
            raw_request(node.addr(), "GET", &target, &[&bearer(), &format!("Range: {range}")]).await;
        assert_eq!(status, 416, "{range}");
        assert!(response.contains("content-range: bytes */1000"), "{response}");
    }
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        let (status, _) = raw_request(node.addr(), method, &target, &[&bearer()]).await;
        assert_eq!(status, 405, "{method}");
    }
    let err = client()
        .fetch_range(node.addr(), &id, 900..1100, destination(200), 0)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PeerProtocol { .. }), "{err}");
    let stats = node.server.stats();
    assert_eq!(stats.refused.range_not_satisfiable, ranges.len() as u64 + 1);
    assert_eq!(stats.refused.method_not_allowed, 4);
    assert_eq!(stats.bytes_served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_is_refused() {
    let node = Node::start().await;
    let huge = format!("X-Filler: {}", "a".repeat(32 * 1024));
    let (status, _) = raw_request(node.addr(), "GET", "/v1/health", &[&bearer(), &huge]).await;
    assert_eq!(status, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bytes_on_the_peer_are_a_digest_mismatch_naming_chunk_and_peer() {
    let node = Node::start().await;
    let bytes = pattern(2 * MIB + 5, 9);
    let id = node.serve(&bytes, 0);
    let path = node.dir.path().join(id.to_string());
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(b"corrupt", MIB as u64)
        .unwrap();

    let result = client()
        .fetch_chunk(
            node.addr(),
            &id,
            Some(ChunkDigest::of_bytes(&bytes)),
            destination(bytes.len()),
            0,
            bytes.len() as u64,
        )
        .await;

    let err = result.expect_err("a corrupt chunk is never reported as fetched");
    match &err {
        Error::PeerDigestMismatch {
            chunk, peer, expected, ..
        } => {
            assert_eq!((*chunk, *peer), (id, node.addr()));
            assert_eq!(*expected, ChunkDigest::of_bytes(&bytes));
        }
        other => panic!("unexpected {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&id.to_string()) && message.contains(&node.addr().to_string()),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_announcing_another_digest_is_refused_before_the_body() {
    let node = Node::start().await;
    let bytes = pattern(4 * MIB, 4);
    let id = node.serve(&bytes, 0);
    let other = ChunkDigest::of_bytes(b"something else");

    let err = client()
        .fetch_chunk(
            node.addr(),
            &id,
            Some(other),
            destination(bytes.len()),
            0,
            bytes.len() as u64,
        )
        .await
        .unwrap_err();

    assert!(
        matches!(err, Error::PeerDigestMismatch { expected, .. } if expected == other),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_whose_file_is_missing_or_too_short_is_not_found() {
    let node = Node::start().await;
    let bytes = pattern(3 * MIB, 5);
    let short_file = next_id();
    let path = node.write_file(&short_file, &bytes[..MIB + 10], 0);
    node.registry
        .insert(short_file, served(path, 0, &bytes, ChunkDigest::of_bytes(&bytes)));
    let files: Vec<_> = (0..3).map(|i| whole(pattern(5000, i))).collect();
    let (missing_member, members) = node.serve_files(&files);
    std::fs::remove_file(node.member(&missing_member, 1)).unwrap();
    let (short_member, _) = node.serve_files(&files);
    std::fs::write(node.member(&short_member, 1), pattern(4000, 1)).unwrap();

    for (id, bytes) in [
        (short_file, &bytes),
        (missing_member, &members),
        (short_member, &members),
    ] {
        let err = fetch_whole(&client(), &node, &id, bytes).await.unwrap_err();

        assert!(
            matches!(&err, Error::ChunkNotOnPeer { chunk, .. } if *chunk == id),
            "{err}"
        );
    }
    let stats = node.server.stats();
    assert_eq!(
        (stats.refused.not_found, stats.read_failures, stats.bytes_served),
        (3, 3, 0)
    );
}

/// A part file is renamed to its destination when published; the registry learns the new name only
/// afterwards. Requests that looked the chunk up in between, before the body or during it, read the
/// file under its new name instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_file_published_while_it_is_served_is_read_under_its_new_name() {
    let node = Node::start().await;
    let bytes = pattern(3 * MIB, 7);
    let (prefix, digest) = (1000, ChunkDigest::of_bytes(&bytes));
    let mut requests = Vec::new();
    for _ in 0..2 {
        let id = next_id();
        let written = node.write_file(&id, &bytes, prefix);
        let (part, published) = (written.with_extension("part"), written.with_extension("published"));
        std::fs::rename(&written, &part).unwrap();
        let chunk = ServedChunk::in_part_file(
            part.clone(),
            published.clone(),
            prefix as u64,
            bytes.len() as u64,
            digest,
        );
        node.registry.insert(id, chunk);
        requests.push((id, part, published));
    }
    let (mid_body, before) = (&requests[0], &requests[1]);
    let (mut stream, status) = open_without_reading(node.addr(), &mid_body.0).await;
    assert_eq!(status, 200);
    for (_, part, published) in &requests {
        std::fs::rename(part, published).unwrap();
    }

    fetch_whole(&client(), &node, &before.0, &bytes).await.unwrap();
    let tail = read_at_least(&mut stream, bytes.len() - 1024).await;
    assert!(
        tail.ends_with(&bytes[bytes.len() - 4096..]),
        "{} bytes received",
        tail.len()
    );
    std::fs::remove_file(&before.2).unwrap();
    let err = fetch_whole(&client(), &node, &before.0, &bytes).await.unwrap_err();
    assert!(matches!(err, Error::ChunkNotOnPeer { .. }), "{err}");
    assert_eq!(node.server.stats().read_failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shrinking_or_vanishing_mid_stream_aborts_the_body() {
    let node = Node::start().await;
    // Both chunks are larger than the socket buffers, so the server is still reading when a file changes.
    let length = 32 * MIB;
    let one_file = node.serve(&pattern(length, 5), 0);
    let one_file_path = node.dir.path().join(one_file.to_string());
    let members: Vec<_> = (0..32).map(|i| whole(pattern(MIB, i))).collect();
    let (bundle, _) = node.serve_files(&members);
    let last_member = node.member(&bundle, 31);
    let cases: [(ChunkId, Box<dyn FnOnce()>); 2] = [
        (one_file, Box::new(|| drop(File::create(one_file_path).unwrap()))),
        (bundle, Box::new(|| std::fs::remove_file(last_member).unwrap())),
    ];

    for (failures, (id, change_file)) in (1..).zip(cases) {
        let (mut stream, status) = open_without_reading(node.addr(), &id).await;
        assert_eq!(status, 200);
        change_file();
        let received = read_until_closed(&mut stream).await;

        // The head was read with up to 1 KiB of the body.
        assert!(received.len() + 1024 < length, "{} bytes received", received.len());
        wait_for("the read failure to be counted", || {
            node.server.stats().read_failures == failures
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_spread_over_several_files_is_served_in_order() {
    let node = Node::start().await;
    let (id, bytes) = node.serve_files(&mixed_segments());

    fetch_whole(&client(), &node, &id, &bytes).await.unwrap();

    assert_eq!(node.server.stats().bytes_served, bytes.len() as u64);
    assert_eq!(node.server.stats().chunk_responses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_across_segments_is_read_from_each_of_them() {
    let node = Node::start().await;
    let (id, bytes) = node.serve_files(&mixed_segments());
    let end = bytes.len() as u64;
    // First into second file; from inside the second file's range, past the empty file, into the last.
    for range in [299_000..301_000, 1_799_000..end - 100] {
        let dest = destination(2000);

        let report = client()
            .fetch_range(node.addr(), &id, range.clone(), dest.clone(), 0)
            .await
            .unwrap();

        let (start, end) = (range.start as usize, range.end as usize);
        assert_eq!(report.bytes, range.end - range.start);
        assert_eq!(read_all(&dest)[..end - start], bytes[start..end], "{range:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_of_300_small_files_is_served_as_one_chunk() {
    let node = Node::start().await;
    let files: Vec<_> = (0..300).map(|i| whole(pattern(1024, i as u8 ^ 0x40))).collect();
    let (id, bytes) = node.serve_files(&files);

    fetch_whole(&client(), &node, &id, &bytes).await.unwrap();

    assert_eq!(node.server.stats().bytes_served, 300 * 1024);
    assert_eq!(node.server.stats().chunk_responses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_peer_unreachable() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let gone = listener.local_addr().unwrap();
    drop(listener);
    let id = next_id();

    let err = client()
        .fetch_chunk(gone, &id, None, destination(10), 0, 10)
        .await
        .unwrap_err();

    assert!(
        matches!(&err, Error::PeerUnreachable { peer, chunk, .. } if *peer == gone && *chunk == id),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_server_is_peer_unreachable() {
    let node = Node::start().await;
    let bytes = pattern(1000, 6);
    let id = node.serve(&bytes, 0);
    let (addr, client) = (node.addr(), client());
    client
        .fetch_chunk(addr, &id, None, destination(1000), 0, 1000)
        .await
        .unwrap();

    node.server.shutdown(Duration::from_secs(5)).await;

    let err = client
        .fetch_chunk(addr, &id, None, destination(1000), 0, 1000)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PeerUnreachable { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_slots_are_respected() {
    // Slow responses (1 MiB/s for 8 MiB each) with readers that never read keep both slots busy.
    let node = Node::start_with(ServerConfig {
        upload_slots: 2,
        egress_bytes_per_sec: Some(MIB as u64),
        ..ServerConfig::default()
    })
    .await;
    let big = node.serve(&pattern(8 * MIB, 1), 0);
    let small = node.serve(&pattern(100, 2), 0);

    let (first, status_one) = open_without_reading(node.addr(), &big).await;
    let (second, status_two) = open_without_reading(node.addr(), &big).await;
    assert_eq!((status_one, status_two), (200, 200));
    assert_eq!(node.server.stats().active_uploads, 2);

    let err = client()
        .fetch_chunk(node.addr(), &small, None, destination(100), 0, 100)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PeerBusy { chunk, .. } if chunk == small), "{err}");
    let retries = ClientConfig::default().retries as u64;
    assert_eq!(node.server.stats().refused.busy, 1 + retries, "a 503 is tried again");

    // A slot freed while the client backs off: the fetch gets it.
    let patient = client_with(ClientConfig {
        retries: 10,
        backoff_max: Duration::from_millis(500),
        ..ClientConfig::default()
    });
    let fetch = patient.fetch_chunk(node.addr(), &small, None, destination(100), 0, 100);
    let free_a_slot = async {
        wait_for("the fetch to be turned away", || {
            node.server.stats().refused.busy > 1 + retries
        })
        .await;
        drop(first);
    };
    let (fetched, ()) = tokio::join!(fetch, free_a_slot);
    fetched.unwrap();
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_limit_paces_a_transfer() {
    let limit = MIB as u64;
    let node = Node::start_with(ServerConfig {
        egress_bytes_per_sec: Some(limit),
        ..ServerConfig::default()
    })
    .await;
    let bytes = pattern(2 * MIB, 8);
    let id = node.serve(&bytes, 0);

    let report = client()
        .fetch_chunk(node.addr(), &id, None, destination(bytes.len()), 0, bytes.len() as u64)
        .await
        .unwrap();

    // Unlimited, this takes milliseconds; at the limit, about 1.9 s (the first block goes at once).
    assert!(report.duration >= Duration::from_secs(1), "{:?}", report.duration);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_a_response_in_flight_finish() {
    let node = Node::start_with(ServerConfig {
        egress_bytes_per_sec: Some(MIB as u64),
        ..ServerConfig::default()
    })
    .await;
    let bytes = pattern(2 * MIB, 12);
    let id = node.serve(&bytes, 0);
    let (addr, dest) = (node.addr(), destination(bytes.len()));
    let length = bytes.len() as u64;
    let fetch = {
        let dest = dest.clone();
        tokio::spawn(async move { client().fetch_chunk(addr, &id, None, dest, 0, length).await })
    };
    wait_for("the response to start", || node.server.stats().active_uploads == 1).await;

    node.server.shutdown(Duration::from_secs(60)).await;

    let report = fetch.await.unwrap().unwrap();
    assert_eq!(report.bytes, length);
    assert_eq!(read_all(&dest), bytes);
    let err = client()
        .fetch_chunk(addr, &id, None, destination(1), 0, length)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PeerUnreachable { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_are_refused() {
    let registry = MemoryRegistry::new();
    let err = P2pServer::start(ServerConfig::default(), registry).await.err().unwrap();
    assert!(matches!(err, Error::InvalidP2pConfig { field: "token", .. }), "{err}");
    for config in [
        ServerConfig {
            token: "has space".into(),
            ..ServerConfig::default()
        },
        ServerConfig {
            token: TOKEN.into(),
            upload_slots: 0,
            ..ServerConfig::default()
        },
        ServerConfig {
            token: TOKEN.into(),
            egress_bytes_per_sec: Some(0),
            ..ServerConfig::default()
        },
    ] {
        let err = P2pServer::start(config, MemoryRegistry::new()).await.err().unwrap();
        assert!(matches!(err, Error::InvalidP2pConfig { .. }), "{err}");
    }
    let with = |edit: fn(&mut ServerConfig)| {
        let mut config = ServerConfig {
            token: TOKEN.into(),
            ..ServerConfig::default()
        };
        edit(&mut config);
        config
    };
    let zero_budgets = [
        ("auth_timeout", with(|c| c.auth_timeout = Duration::ZERO)),
        ("max_pending_connections", with(|c| c.max_pending_connections = 0)),
        ("max_pending_per_address", with(|c| c.max_pending_per_address = 0)),
        (
            "max_authenticated_connections",
            with(|c| c.max_authenticated_connections = 0),
        ),
    ];
    for (name, config) in zero_budgets {
        let err = P2pServer::start(config, MemoryRegistry::new()).await.err().unwrap();
        assert!(
            matches!(err, Error::InvalidP2pConfig { field, .. } if field == name),
            "{err}"
        );
    }
    let err = P2pClient::new(ClientConfig::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidP2pConfig { field: "token", .. }), "{err}");
}

#[test]
fn generated_tokens_are_long_and_distinct() {
    let (a, b) = (generate_token().unwrap(), generate_token().unwrap());
    assert_eq!(a.len(), 64);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
}

/// Fetches the whole chunk `id` (holding `bytes`) from `node` into a fresh destination.
async fn fetch_whole(client: &P2pClient, node: &Node, id: &ChunkId, bytes: &[u8]) -> xfd_core::Result<()> {
    let expected = Some(ChunkDigest::of_bytes(bytes));
    let length = bytes.len() as u64;
    client
        .fetch_chunk(node.addr(), id, expected, destination(bytes.len()), 0, length)
        .await
        .map(|_| ())
}

fn faulty(spec: &str) -> ServerConfig {
    ServerConfig {
        faults: Arc::new(spec.parse().unwrap()),
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_dying_mid_body_is_a_short_body_and_nothing_is_reported_fetched() {
    let node = Node::start_with(faulty("serve:truncate")).await;
    let bytes = pattern(3 * MIB, 4);
    let id = node.serve(&bytes, 0);
    let result = fetch_whole(&client(), &node, &id, &bytes).await;
    match result.expect_err("a truncated body is never a fetched chunk") {
        Error::PeerShortBody { received, expected, .. } => {
            assert!(received < expected, "{received} of {expected}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_peer_is_given_up_at_the_deadline() {
    let node = Node::start_with(faulty("serve:stall")).await;
    let bytes = pattern(2 * MIB, 5);
    let id = node.serve(&bytes, 0);
    let patient_for_one_second = ClientConfig {
        base_timeout: Duration::from_secs(1),
        retries: 0,
        ..ClientConfig::default()
    };
    let result = fetch_whole(&client_with(patient_for_one_second), &node, &id, &bytes).await;
    match result.expect_err("a stalled body is never a fetched chunk") {
        Error::PeerStalled { peer, .. } => assert_eq!(peer, node.addr()),
        other => panic!("unexpected {other}"),
    }
    // The stalled response let go of its upload slot when the client gave up.
    wait_for("the slot to be released", || node.server.stats().active_uploads == 0).await;
}

/// Reads until the server closes the connection; the bytes it sent first.
/// Reads until `length` bytes came (or the connection closed); returns them.
async fn read_at_least(stream: &mut TcpStream, length: usize) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    while received.len() < length {
        match stream.read(&mut buffer).await.unwrap() {
            0 => break,
            n => received.extend_from_slice(&buffer[..n]),
        }
    }
    received
}

async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut received)).await;
    assert!(outcome.is_ok(), "the server kept the connection open");
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_are_closed_and_real_requests_still_served() {
    let node = Node::start_with(ServerConfig {
        header_read_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    })
    .await;
    let bytes = pattern(1000, 6);
    let id = node.serve(&bytes, 0);
    let mut lorises = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(node.addr()).await.unwrap();
        // A head that never ends: one header line at a time, never the blank line.
        stream
            .write_all(format!("GET /v1/chunks/{id} HTTP/1.1\r\nHost: peer\r\n").as_bytes())
            .await
            .unwrap();
        lorises.push(stream);
    }
    let (status, _) = raw_request(node.addr(), "GET", "/v1/health", &[&bearer()]).await;
    assert_eq!(status, 200, "a real request is served while slow clients hang on");
    for stream in &mut lorises {
        let answer = read_until_closed(stream).await;
        assert!(
            !String::from_utf8_lossy(&answer).contains("200 OK"),
            "no chunk for a slow-loris client"
        );
    }
    assert_eq!(node.server.stats().bytes_served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_connections_beyond_their_budget_are_turned_away() {
    let node = Node::start_with(ServerConfig {
        max_authenticated_connections: 3,
        ..ServerConfig::default()
    })
    .await;
    let mut peers = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(node.addr()).await.unwrap();
        assert_eq!(health_on(&mut stream).await, 200);
        peers.push(stream);
    }
    // Connections without the token have a budget of their own: they do not count.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(node.addr()).await.unwrap());
    }
    let mut extra = TcpStream::connect(node.addr()).await.unwrap();
    assert_eq!(health_on(&mut extra).await, 503);
    assert!(
        read_until_closed(&mut extra).await.is_empty(),
        "the turned-away connection stays open"
    );
    let stats = node.server.stats();
    assert_eq!((stats.refused.connections, stats.authenticated_connections), (1, 3));
    for stream in &mut peers {
        assert_eq!(health_on(stream).await, 200, "admitted peers keep their place");
    }
    drop(peers);
    let mut served = false;
    for _ in 0..100 {
        // Closed sockets leave the server's budget as it notices them: retry until one gets in.
        let (status, _) = raw_request_lenient(node.addr(), "/v1/health").await;
        if status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "the server admits peers again once others closed");
}

/// Like `raw_request`, but a connection closed without an answer is status 0, not a panic.
async fn raw_request_lenient(addr: SocketAddr, target: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: peer\r\nConnection: close\r\n{}\r\n\r\n",
        bearer()
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    (status_of(&text), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_upload_slot() {
    let node = Node::start_with(ServerConfig {
        upload_slots: 1,
        send_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let big = node.serve(&pattern(32 * MIB, 7), 0);
    let (stuck, status) = open_without_reading(node.addr(), &big).await;
    assert_eq!(status, 200);
    wait_for("the stuck response to give its slot back", || {
        node.server.stats().active_uploads == 0
    })
    .await;
    let small = pattern(1000, 8);
    let id = node.serve(&small, 0);
    fetch_whole(&client(), &node, &id, &small).await.unwrap();
    drop(stuck);
}

/// Raises this process's soft limit on open files to at least `wanted`: each connection held by a
/// test costs two descriptors here (the client's end and the server's).
fn raise_open_file_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted && limit.rlim_max >= wanted {
            limit.rlim_cur = wanted;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= wanted,
        "this test holds {wanted} descriptors but the hard limit on open files is {}: raise it (ulimit -Hn)",
        limit.rlim_max
    );
}

/// Sends a health request with the token on an open keep-alive connection and reads the whole
/// response; its status.
async fn health_on(stream: &mut TcpStream) -> u16 {
    let head = format!("GET /v1/health HTTP/1.1\r\nHost: peer\r\n{}\r\n\r\n", bearer());
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut buffer = [0u8; 1024];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
        received.extend_from_slice(&buffer[..n]);
    };
    let text = String::from_utf8_lossy(&received[..end]).to_lowercase();
    let length: usize = text
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; (end + length).saturating_sub(received.len())];
    stream.read_exact(&mut body).await.unwrap();
    status_of(&text)
}

/// Connects to `server` from the local address `from` (any 127.x.y.z works on loopback).
async fn connect_from(from: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.into(), 0)).unwrap();
    socket.connect(server).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_without_the_token_does_not_delay_a_real_fetch() {
    const FLOOD: usize = 1000;
    raise_open_file_limit(4 * FLOOD as u64);
    let node = Node::start().await;
    let bytes = pattern(100_000, 13);
    let id = node.serve(&bytes, 0);
    // Connections that never send a byte, from the same address as the real client.
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(node.addr()).await.unwrap());
    }

    let client = client();
    let fetch = fetch_whole(&client, &node, &id, &bytes);
    let fetched = tokio::time::timeout(Duration::from_secs(10), fetch).await;

    assert!(
        matches!(fetched, Ok(Ok(()))),
        "the flood held off a real peer: {fetched:?}"
    );
    let limit = ServerConfig::default().max_pending_per_address;
    assert!(node.server.stats().pending_connections <= limit);
    for stream in &mut flood {
        assert!(
            read_until_closed(stream).await.is_empty(),
            "a client without the token got an answer"
        );
    }
    let stats = node.server.stats();
    let closed = stats.refused.unauthenticated_evicted + stats.refused.unauthenticated_timed_out;
    assert!(closed >= FLOOD as u64, "{stats:?}");
    assert_eq!(stats.bytes_served, bytes.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_the_token_is_closed_at_the_auth_deadline() {
    let node = Node::start_with(ServerConfig {
        auth_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let mut peer = TcpStream::connect(node.addr()).await.unwrap();
    assert_eq!(health_on(&mut peer).await, 200);
    let mut silent = TcpStream::connect(node.addr()).await.unwrap();
    let mut unfinished = TcpStream::connect(node.addr()).await.unwrap();
    unfinished.write_all(b"GET /v1/health HTTP/1.1\r\n").await.unwrap();

    // Well before `header_read_timeout` (10 s), which would close them otherwise.
    assert!(read_until_closed(&mut silent).await.is_empty());
    assert!(read_until_closed(&mut unfinished).await.is_empty());

    let stats = node.server.stats();
    assert_eq!(stats.refused.unauthenticated_timed_out, 2, "{stats:?}");
    assert_eq!(
        health_on(&mut peer).await,
        200,
        "the deadline does not apply once a connection showed the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_wrong_token_is_answered_401_and_closed() {
    // Deadlines far away: only the 401 itself may close these connections.
    let node = Node::start_with(ServerConfig {
        auth_timeout: Duration::from_secs(600),
        header_read_timeout: Duration::from_secs(600),
        max_authenticated_connections: 1,
        ..ServerConfig::default()
    })
    .await;
    let bytes = pattern(1000, 14);
    let id = node.serve(&bytes, 0);
    let mut wrong = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(node.addr()).await.unwrap();
        let head = format!("GET /v1/chunks/{id} HTTP/1.1\r\nHost: peer\r\nAuthorization: Bearer {TOKEN}x\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        wrong.push(stream);
    }

    for stream in &mut wrong {
        let answer = String::from_utf8_lossy(&read_until_closed(stream).await).into_owned();
        assert_eq!(status_of(&answer), 401, "{answer}");
    }
    wait_for("the refused connections to leave the budgets", || {
        let stats = node.server.stats();
        (stats.pending_connections, stats.authenticated_connections) == (0, 0)
    })
    .await;

    // The single authenticated place is still free for a real peer.
    fetch_whole(&client(), &node, &id, &bytes).await.unwrap();
    let stats = node.server.stats();
    assert_eq!(
        (stats.refused.unauthorized, stats.bytes_served),
        (20, bytes.len() as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_closes_only_its_own_connections_without_the_token() {
    // No deadline during the test: only the budgets may close a connection.
    let node = Node::start_with(ServerConfig {
        auth_timeout: Duration::from_secs(600),
        max_pending_connections: 16,
        max_pending_per_address: 4,
        ..ServerConfig::default()
    })
    .await;
    let flooder = Ipv4Addr::new(127, 0, 0, 1);
    let mut peer = connect_from(flooder, node.addr()).await;
    assert_eq!(health_on(&mut peer).await, 200);
    let mut slow_peer = connect_from(Ipv4Addr::new(127, 0, 0, 2), node.addr()).await;
    wait_for("the slow peer to be admitted", || {
        node.server.stats().pending_connections == 1
    })
    .await;

    let mut flood = Vec::new();
    for _ in 0..50 {
        flood.push(connect_from(flooder, node.addr()).await);
    }
    wait_for("the flood to be admitted", || {
        node.server.stats().refused.unauthenticated_evicted == 50 - 4
    })
    .await;

    assert_eq!(health_on(&mut peer).await, 200, "an authenticated peer was closed");
    assert_eq!(
        health_on(&mut slow_peer).await,
        200,
        "a peer on another address was closed"
    );
    assert_eq!(node.server.stats().pending_connections, 4);
}
