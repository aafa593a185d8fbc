//! The peer server's lifecycle beside the engine: the chunks this node can serve, and the server
//! that serves them once the runtime starts it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Engine;
use crate::assembly::part_path;
use crate::error::{Error, Result};
use crate::hash::ChunkDigest;
use crate::p2p::{ChunkId, MemoryRegistry, P2pServer, ServedChunk, ServerConfig, ServerStats};

/// The file a verified chunk of a file is read from.
#[derive(Debug, Clone)]
pub(super) enum ChunkFile {
    /// The part file of this destination, renamed to it when the file is published.
    Part(PathBuf),
    /// A file in place: published, or a cache hit.
    Placed(PathBuf),
}

/// The verified chunks of this node, and the server of them while it runs. Chunks are registered
/// from the scan on, before any server runs: a server started later serves them at once.
#[derive(Default)]
pub(super) struct Serving {
    registry: Arc<MemoryRegistry>,
    server: Mutex<Option<P2pServer>>,
}

impl Serving {
    /// Serves `chunk` as `id` from now on.
    pub(super) fn serve(&self, id: ChunkId, chunk: ServedChunk) {
        self.registry.insert(id, chunk);
    }

    /// Starts a server of the registry, replacing (and stopping at once) the one running before.
    async fn start(&self, config: ServerConfig) -> Result<SocketAddr> {
        let server = P2pServer::start(config, self.registry.clone()).await?;
        let address = server.local_addr();
        let previous = self.server.lock().unwrap().replace(server);
        if let Some(previous) = previous {
            previous.shutdown(Duration::ZERO).await;
        }
        Ok(address)
    }

    async fn stop(&self, grace: Duration) {
        let server = self.server.lock().unwrap().take();
        if let Some(server) = server {
            server.shutdown(grace).await;
        }
    }
}

impl Engine {
    /// The verified chunks this node can serve; hand it to a [`crate::p2p::P2pServer`].
    pub fn registry(&self) -> Arc<MemoryRegistry> {
        self.serving.registry.clone()
    }

    /// Starts serving this node's verified chunks to peers on `bind` (the node's own address) and
    /// `port` (0: chosen by the OS). Returns the address peers must use. `egress_bytes_per_sec` caps
    /// what the server sends; `None`: the plan's `upload_rate` (0 there: uncapped).
    pub async fn start_server(
        &self,
        bind: IpAddr,
        port: u16,
        upload_slots: usize,
        egress_bytes_per_sec: Option<u64>,
    ) -> Result<SocketAddr> {
        if self.config.peer_token.is_empty() {
            return Err(Error::InvalidP2pConfig {
                field: "peer_token",
                reason: "is empty: peer transfers are off",
            });
        }
        let config = ServerConfig {
            bind,
            port,
            token: self.config.peer_token.clone(),
            upload_slots,
            egress_bytes_per_sec: egress_bytes_per_sec
                .or(Some(self.plan.settings.upload_rate))
                .filter(|&rate| rate > 0),
            faults: self.config.faults.clone(),
            ..ServerConfig::default()
        };
        self.serving.start(config).await
    }

    /// Stops the peer server, letting in-flight uploads finish for up to `grace`.
    pub async fn stop_server(&self, grace: Duration) {
        self.serving.stop(grace).await;
    }

    /// The peer server's counters, if it runs.
    pub fn server_stats(&self) -> Option<ServerStats> {
        self.serving.server.lock().unwrap().as_ref().map(P2pServer::stats)
    }

    /// Serves the plan's chunk `chunk_id` from `file`, at the chunk's offset there. A chunk of a part
    /// file stays servable while the file is published: its segment knows the name it is renamed to.
    pub(super) fn register(&self, chunk_id: &str, file: &ChunkFile, digest: ChunkDigest) {
        let Some((_, chunk)) = self.chunk(chunk_id) else {
            return;
        };
        let Ok(id) = ChunkId::parse(chunk_id) else {
            return;
        };
        let (offset, length) = (chunk.offset, chunk.length);
        let served = match file {
            ChunkFile::Part(destination) => {
                ServedChunk::in_part_file(part_path(destination), destination.clone(), offset, length, digest)
            }
            ChunkFile::Placed(path) => ServedChunk::in_file(path.clone(), offset, length, digest),
        };
        self.serving.serve(id, served);
    }
}
