//! Bringing one chunk into its part file, from the origin or from a peer. A bundle's id goes to its own
//! path ([`super::bundle`]); a chunk already being written by a slower peer transfer goes to the
//! endgame ([`super::endgame`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use object_store::ObjectStore;
use serde::Serialize;

use super::bundle::BundleSource;
use super::object::{ObjectWork, identity_of};
use super::{Engine, EngineConfig, Event, Source};
use crate::assembly;
use crate::error::{Error, Result};
use crate::faults::Point;
use crate::hash::ChunkDigest;
use crate::origin::{self, ObjectIdentity};
use crate::p2p::{ChunkId, ClientConfig, P2pClient};
use crate::plan::PlanChunk;
use crate::sink::FencedFile;

/// The result of bringing one chunk in.
#[derive(Clone, Debug, Serialize)]
pub struct ChunkDone {
    pub chunk_id: String,
    pub bytes: u64,
    pub digest: String,
    pub seconds: f64,
    /// `true` when the chunk was already held and nothing was transferred.
    pub already_held: bool,
}

/// What writing a missing chunk needs.
struct ToWrite {
    /// The open part file, and its path.
    file: Arc<std::fs::File>,
    path: PathBuf,
    /// What the origin must still be serving, and the name of its store.
    identity: ObjectIdentity,
    store: String,
}

impl Engine {
    /// Fetches one chunk from the origin into its part file. Failures are also emitted as events.
    pub async fn fetch_from_origin(&self, chunk_id: &str) -> Result<ChunkDone> {
        let result = match self.bundles.get(chunk_id) {
            Some(bundle) => self.fetch_bundle(bundle, BundleSource::Origin).await,
            None => self.origin_fetch(chunk_id).await,
        };
        self.outcome(chunk_id, Source::Origin, None, result)
    }

    /// Fetches one chunk from a peer that holds it, verifying it against `expected` (the digest the
    /// chunk had when it was first fetched from the origin). Failures are also emitted as events.
    pub async fn fetch_from_peer(
        &self,
        chunk_id: &str,
        peer: SocketAddr,
        expected: Option<ChunkDigest>,
    ) -> Result<ChunkDone> {
        let result = match self.bundles.get(chunk_id) {
            Some(bundle) => self.fetch_bundle(bundle, BundleSource::Peer(peer, expected)).await,
            None => self.peer_fetch(chunk_id, peer, expected).await,
        };
        self.outcome(chunk_id, Source::Peer, Some(peer.to_string()), result)
    }

    async fn origin_fetch(&self, chunk_id: &str) -> Result<ChunkDone> {
        let (work, chunk) = self.locate(chunk_id)?;
        let Some(to_write) = self.prepare(&work, &chunk)? else {
            return Ok(self.already_held(&work, &chunk));
        };
        let Some((_claim, fence)) = self.claims.claim(chunk_id, to_write.file.clone()) else {
            return Err(Error::ChunkBusy {
                chunk: chunk_id.to_owned(),
            });
        };
        let pace = origin::Pace::for_unit(&self.plan.settings);
        let store = origin::paced(self.stores.get(&to_write.store)?, pace.as_ref());
        self.started(&chunk, Source::Origin, None);
        self.config.faults.crash_point(Point::OriginFetch);
        let started = Instant::now();
        let fetched = self.fetch_chunk(store.as_ref(), &chunk, fence, to_write).await;
        if let Some(pace) = pace {
            pace.settle().await; // the next transfer in this origin slot starts within the caps
        }
        let digest = match fetched {
            Err(_) if self.holds(&work, &chunk) => return Ok(self.already_held(&work, &chunk)),
            other => other?,
        };
        self.complete(work, chunk, digest, Source::Origin, None, started.elapsed())
            .await
    }

    /// The chunk's bytes from the origin into the part file, and their digest: one ranged GET hashed as
    /// it arrives, or `origin_chunk_streams` in parallel then one hash of what they wrote.
    async fn fetch_chunk(
        &self,
        store: &dyn ObjectStore,
        chunk: &PlanChunk,
        fence: Arc<FencedFile>,
        to_write: ToWrite,
    ) -> Result<ChunkDigest> {
        let identity = &to_write.identity;
        let retry = &self.config.retry;
        let (offset, length) = (chunk.offset, chunk.length);
        let parts = origin::subranges(length, self.plan.settings.origin_chunk_streams);
        if parts.len() <= 1 {
            return Ok(
                origin::fetch_range(store, identity, offset, length, fence, offset, retry)
                    .await?
                    .digest,
            );
        }
        origin::fetch_subranges(store, identity, offset, &parts, fence, retry).await?;
        let ToWrite { file, path, .. } = to_write;
        tokio::task::spawn_blocking(move || crate::hash::hash_open_range(&file, &path, offset, length))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    async fn peer_fetch(&self, chunk_id: &str, peer: SocketAddr, expected: Option<ChunkDigest>) -> Result<ChunkDone> {
        let client = self.peers()?;
        let (work, chunk) = self.locate(chunk_id)?;
        let Some(to_write) = self.prepare(&work, &chunk)? else {
            return Ok(self.already_held(&work, &chunk));
        };
        let id = ChunkId::parse(chunk_id)?;
        let Some((_claim, fence)) = self.claims.claim(chunk_id, to_write.file) else {
            return self.duplicate_fetch(client, work, chunk, id, peer, expected).await;
        };
        self.started(&chunk, Source::Peer, Some(peer.to_string()));
        let started = Instant::now();
        let fetched = client
            .fetch_chunk(peer, &id, expected, fence, chunk.offset, chunk.length)
            .await;
        let report = match fetched {
            // A faster duplicate won and shut this transfer out: not a failure of the peer.
            Err(_) if self.holds(&work, &chunk) => return Ok(self.already_held(&work, &chunk)),
            other => other?,
        };
        let peer = Some(peer.to_string());
        let elapsed = started.elapsed();
        self.complete(work, chunk, report.digest, Source::Peer, peer, elapsed)
            .await
    }

    /// The client for peer transfers; an error when the run has none (no peer token).
    pub(super) fn peers(&self) -> Result<&P2pClient> {
        self.peers.as_ref().ok_or(Error::InvalidP2pConfig {
            field: "peer_token",
            reason: "is empty: peer transfers are off",
        })
    }

    /// What writing a chunk still missing needs (its part file opened if not yet); `None` when held.
    fn prepare(&self, work: &Arc<Mutex<ObjectWork>>, chunk: &PlanChunk) -> Result<Option<ToWrite>> {
        let mut work = work.lock().unwrap();
        if work.state.is_published() {
            return Ok(None);
        }
        if self.closed.load(Ordering::SeqCst) {
            // A transfer that outlived its run's cancel must not lock the destinations again.
            return Err(Error::Task("the run on this node has ended".into()));
        }
        if work.lock_destinations(&self.store)? {
            self.store.refresh()?; // their entries are final now that no other run can change them
        }
        work.open_part(&self.store)?;
        match work.state.part() {
            Some(part) if !part.done().contains_key(&chunk.id) => Ok(Some(ToWrite {
                file: part.file(),
                path: part.path(),
                identity: identity_of(work.object()),
                store: work.object().store.clone(),
            })),
            _ => Ok(None),
        }
    }

    pub(super) fn holds(&self, work: &Arc<Mutex<ObjectWork>>, chunk: &PlanChunk) -> bool {
        work.lock().unwrap().state.holds(&chunk.id)
    }

    pub(super) fn already_held(&self, work: &Arc<Mutex<ObjectWork>>, chunk: &PlanChunk) -> ChunkDone {
        ChunkDone {
            chunk_id: chunk.id.clone(),
            bytes: 0,
            digest: work.lock().unwrap().state.digest_of(&chunk.id),
            seconds: 0.0,
            already_held: true,
        }
    }

    /// Reports the outcome of a transfer the coordinator asked for: every one reports exactly once.
    /// A transfer that found its chunk already here (an earlier transfer of it finished first, one whose
    /// report the coordinator set aside because its source had been declared lost) reports done too:
    /// otherwise the coordinator would wait for it forever.
    fn outcome(
        &self,
        chunk_id: &str,
        source: Source,
        peer: Option<String>,
        result: Result<ChunkDone>,
    ) -> Result<ChunkDone> {
        match result {
            Ok(done) if done.already_held => {
                self.emit(Event::ChunkDone {
                    chunk_id: done.chunk_id.clone(),
                    object_id: self.object_id_of(chunk_id),
                    bytes: 0,
                    source,
                    peer,
                    seconds: 0.0,
                    digest: done.digest.clone(),
                });
                Ok(done)
            }
            Ok(done) => Ok(done),
            Err(error) => Err(self.failed(chunk_id, source, peer, error)),
        }
    }

    pub(super) fn started(&self, chunk: &PlanChunk, source: Source, peer: Option<String>) {
        self.emit(Event::ChunkStarted {
            chunk_id: chunk.id.clone(),
            object_id: self.object_id_of(&chunk.id),
            source,
            peer,
        });
    }

    /// Reports a failed transfer. A disk that refused the part file marks its object for removal at
    /// [`Engine::close`], and the error names the part file.
    fn failed(&self, chunk_id: &str, source: Source, peer: Option<String>, error: Error) -> Error {
        let object_id = self.object_id_of(chunk_id);
        let error = match self.objects.get(&object_id) {
            Some(work) if error.is_storage() => {
                self.unwritable.lock().unwrap().insert(object_id.clone());
                error.naming(&assembly::part_path(&work.lock().unwrap().targets[0].destination))
            }
            _ => error,
        };
        self.emit(Event::ChunkFailed {
            chunk_id: chunk_id.to_owned(),
            object_id,
            source,
            peer,
            error: error.to_string(),
            error_kind: error.kind().to_string(),
        });
        error
    }
}

/// The client of peer transfers; `None` when the run has no peer token.
pub(super) fn peer_client(config: &EngineConfig) -> Result<Option<P2pClient>> {
    if config.peer_token.is_empty() {
        return Ok(None);
    }
    Ok(Some(P2pClient::new(ClientConfig {
        token: config.peer_token.clone(),
        ..ClientConfig::default()
    })?))
}
