//! The peer server under a low open-file limit. A test binary of its own with a single test, because it
//! lowers the limit of the whole process.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use xfd_core::ChunkDigest;
use xfd_core::p2p::{ChunkId, ClientConfig, MemoryRegistry, P2pClient, P2pServer, Segment, ServedChunk, ServerConfig};

const TOKEN: &str = "test-token-0123456789";

/// Every upload slot serving a bundle of 300 files at once needs a handful of descriptors, not 300 each:
/// a response opens a member's file only while it reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slot_serves_a_bundle_of_300_files_under_a_low_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bytes, mut segments) = (Vec::new(), Vec::new());
    for i in 0..300usize {
        let content = vec![i as u8; 1000 + i];
        let path = dir.path().join(format!("member-{i}"));
        std::fs::write(&path, &content).unwrap();
        let length = content.len() as u64;
        segments.push(Segment::new(path, 0, length));
        bytes.extend_from_slice(&content);
    }
    let id = ChunkId::from_bytes([0xc0; 16]);
    let digest = ChunkDigest::of_bytes(&bytes);
    let registry = MemoryRegistry::new();
    registry.insert(id, ServedChunk::in_files(segments, digest));
    let config = ServerConfig {
        token: TOKEN.into(),
        ..ServerConfig::default()
    };
    let slots = config.upload_slots;
    let server = P2pServer::start(config, registry).await.unwrap();
    let client = P2pClient::new(ClientConfig {
        token: TOKEN.into(),
        ..ClientConfig::default()
    })
    .unwrap();
    let destinations: Vec<_> = (0..slots).map(|_| Arc::new(tempfile::tempfile().unwrap())).collect();
    let length = bytes.len() as u64;

    // Room for the connections (two descriptors each here) and a few files, far from 300 per response.
    let limit = OpenFileLimit::lower_to(highest_open_descriptor() + 64);
    let fetches = destinations
        .iter()
        .map(|dest| client.fetch_chunk(server.local_addr(), &id, Some(digest), dest.clone(), 0, length));
    let results = futures::future::join_all(fetches).await;
    drop(limit);

    for (result, dest) in results.into_iter().zip(&destinations) {
        result.unwrap();
        let mut received = vec![0u8; bytes.len()];
        dest.read_exact_at(&mut received, 0).unwrap();
        assert!(received == bytes, "the bundle arrived altered");
    }
    let stats = server.stats();
    assert_eq!((stats.chunk_responses, stats.read_failures), (slots as u64, 0));
}

/// The highest descriptor this process has open: the open-file limit caps descriptor numbers.
fn highest_open_descriptor() -> u64 {
    let limit = OpenFileLimit::current();
    // SAFETY: F_GETFD only asks whether a descriptor is open; it changes nothing.
    (0..limit.rlim_cur.min(1 << 20) as libc::c_int)
        .rev()
        .find(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .map_or(0, |fd| fd as u64)
}

/// A lowered soft limit on open files, restored when dropped (also when the test fails).
struct OpenFileLimit(libc::rlimit);

impl OpenFileLimit {
    fn current() -> libc::rlimit {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        limit
    }

    fn lower_to(soft: u64) -> OpenFileLimit {
        let saved = OpenFileLimit::current();
        assert!(
            saved.rlim_cur > soft,
            "the open-file limit {} is already low",
            saved.rlim_cur
        );
        set_limit(&libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            ..saved
        });
        OpenFileLimit(saved)
    }
}

impl Drop for OpenFileLimit {
    fn drop(&mut self) {
        set_limit(&self.0);
    }
}

fn set_limit(limit: &libc::rlimit) {
    // SAFETY: setrlimit only reads the struct it is given.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) }, 0);
}
