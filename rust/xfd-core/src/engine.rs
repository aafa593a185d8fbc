//! The node engine: everything one node does for a plan, behind a small API the runtime drives.
//!
//! - [`Engine::scan`] finds what this node already holds: published files whose record in the node
//!   store matches the plan (cache hits) and chunks of interrupted runs (resume). Held chunks are served
//!   to peers at once. It first removes what killed runs left beside any destination of the node.
//! - [`Engine::fetch_from_origin`] / [`Engine::fetch_from_peer`] bring one chunk into the part file.
//! - When every chunk of an object is in, the file is published (and copied to the object's other
//!   destinations); [`Engine::finish`] then runs the plan's unpacks.
//!
//! Each object has its own lock, so chunks of different objects never wait for each other; disk work
//! that syncs or hashes runs on tokio's blocking pool.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use serde::Serialize;

use crate::assembly::{self, CacheState, ChunkSpan, FileIdentity, FileRecord, FileTarget, PartFile};
use crate::error::{Error, Result};
use crate::faults::{Faults, Point};
use crate::hash::{ChunkDigest, hash_file_range};
use crate::origin::{self, ObjectIdentity, RetryPolicy, StoreConfig};
use crate::p2p::{ChunkId, ClientConfig, MemoryRegistry, P2pClient, P2pServer, ServedChunk, ServerConfig, ServerStats};
use crate::plan::{Plan, PlanChunk, PlanFile, PlanObject};
use crate::sink::FencedFile;
use crate::store::{self, DestinationLock, Store};
use crate::unpack::{self, ArchiveFormat, UnpackOptions};

mod bundle;
mod linked;
use bundle::{BundleSource, BundleWork};
pub use linked::{LinkedEngine, Running};

/// How one node runs a plan.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    /// The directory that stands for `/` on this node (`/` on a real cluster).
    pub node_root: PathBuf,
    /// Store name -> URL and resolved options (credentials included: they stay on this node).
    pub stores: BTreeMap<String, StoreConfig>,
    pub retry: RetryPolicy,
    /// Re-hash cache hits against their record before trusting them.
    pub deep_verify: bool,
    /// The run's secret for peer transfers: required by this node's server, sent to other nodes'.
    /// Empty: this engine neither serves nor fetches from peers.
    pub peer_token: String,
    /// Fault injection for the system tests (see [`crate::faults`]); empty otherwise.
    pub faults: Arc<Faults>,
    /// This node's Ray labels: files whose `nodes` selector they do not match are not for this node.
    pub node_labels: BTreeMap<String, String>,
    /// The node store's directory ([`crate::store`]): records of what xfd put at the destinations, resume
    /// records and destination locks, all kept out of the user's directories. Empty: `~/.cache/xfd`
    /// (`$HOME` of this process) under the node root, as the Python side passes it by default.
    pub state_dir: PathBuf,
}

impl EngineConfig {
    /// [`EngineConfig::state_dir`], or its default when empty.
    pub fn state_dir(&self) -> Result<PathBuf> {
        if !self.state_dir.as_os_str().is_empty() {
            return Ok(self.state_dir.clone());
        }
        let home = std::env::var("HOME").map_err(|_| {
            let reason = "HOME is not set: give the engine a state_dir (XFD_STATE_DIR)";
            Error::io(
                "locate",
                "~/.cache/xfd",
                std::io::Error::new(std::io::ErrorKind::NotFound, reason),
            )
        })?;
        localize(&self.node_root, &format!("{home}/.cache/xfd"))
    }
}

/// Where a chunk came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Origin,
    Peer,
    Cache,
}

/// Something that happened, for progress and reports. Plain data: the runtime forwards it as is.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A transfer into this node began (the chunk was missing and its region is now being written).
    ChunkStarted {
        chunk_id: String,
        object_id: String,
        source: Source,
        peer: Option<String>,
    },
    ChunkDone {
        chunk_id: String,
        object_id: String,
        bytes: u64,
        source: Source,
        peer: Option<String>,
        seconds: f64,
        digest: String,
    },
    ChunkFailed {
        chunk_id: String,
        object_id: String,
        source: Source,
        peer: Option<String>,
        error: String,
        /// See [`Error::kind`]: `fatal`, `integrity`, `peer`, `origin` or `busy`.
        error_kind: String,
    },
    FilePublished {
        object_id: String,
        destination: String,
        bytes: u64,
    },
    Unpacked {
        object_id: String,
        destination: String,
        files: u64,
        bytes: u64,
        skipped: bool,
    },
}

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

/// What [`Engine::scan`] found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScanReport {
    /// Chunk id -> digest of every chunk this node can serve now.
    pub held: BTreeMap<String, String>,
    /// Files found complete and valid from an earlier run.
    pub cached_files: u64,
    /// Chunks found in part files of interrupted runs.
    pub resumed_chunks: u64,
}

pub(crate) struct ObjectWork {
    /// The plan, shared with the engine and every other object's work: a copy of each object would
    /// double what a plan of 100,000 small files holds.
    plan: Arc<Plan>,
    /// This object's place in the plan's objects.
    index: usize,
    /// The object travels in a bundle: never fetched, resumed or served on its own.
    member: bool,
    /// Every destination of this object on this node; the first one is assembled, the others copied.
    targets: Vec<FileTarget>,
    /// Boxed, as `published`: most objects have neither while a plan of many files is scanned, and the
    /// work of each object is kept for the whole run.
    part: Option<Box<PartFile>>,
    published: Option<Box<FileRecord>>,
    /// The destinations' locks, held from the first look at them to the end of the run.
    locks: Vec<DestinationLock>,
}

impl ObjectWork {
    fn object(&self) -> &PlanObject {
        &self.plan.objects[self.index]
    }

    /// Takes the destinations' locks, if not held yet; `true` when they were taken now.
    fn lock_destinations(&mut self, store: &Arc<Store>) -> Result<bool> {
        if !self.locks.is_empty() {
            return Ok(false);
        }
        self.locks = self
            .targets
            .iter()
            .map(|t| store.lock(&t.destination))
            .collect::<Result<_>>()?;
        Ok(true)
    }
}

pub struct Engine {
    plan: Arc<Plan>,
    config: EngineConfig,
    /// This node's store: records, resume records and locks of the destinations (see [`crate::store`]).
    store: Arc<Store>,
    /// Opened when the engine is made; a store that cannot be opened fails only origin fetches, so a
    /// node that gets everything from peers (or its cache) does not need it.
    stores: BTreeMap<String, OpenedStore>,
    objects: BTreeMap<String, Arc<Mutex<ObjectWork>>>,
    /// Chunk id -> where the chunk is in the plan: `(object index, chunk index)`.
    chunks: HashMap<String, (usize, usize)>,
    /// This node's bundles of small objects, by id: scheduled, fetched and served as one chunk each.
    bundles: HashMap<String, Arc<BundleWork>>,
    registry: Arc<MemoryRegistry>,
    events: Arc<(Mutex<Vec<Event>>, Condvar)>,
    /// Where outcomes also go when the engine is on a control link (see [`Engine::tap_reports`]).
    tap: Mutex<Option<tokio::sync::mpsc::UnboundedSender<crate::control::wire::Report>>>,
    peers: Option<P2pClient>,
    server: Mutex<Option<P2pServer>>,
    /// Chunks being written now: a second fetch of one of them is refused, so a chunk's region in
    /// the part file never has two writers (one could overwrite the other's verified bytes).
    writing: Mutex<HashMap<String, Arc<FencedFile>>>,
    /// Objects whose part file the disk refused to write: discarded when the engine ends.
    unwritable: Mutex<BTreeSet<String>>,
    /// Set by [`Engine::close`]: no transfer may take the destinations again.
    closed: AtomicBool,
    /// Object bytes received from the origin by this engine, every attempt included.
    origin_received: Arc<AtomicU64>,
}

/// Removes a chunk from the writing set when its fetch ends, however it ends (error, cancellation).
struct WritingGuard<'a> {
    writing: &'a Mutex<HashMap<String, Arc<FencedFile>>>,
    chunk: String,
}

impl Drop for WritingGuard<'_> {
    fn drop(&mut self) {
        self.writing.lock().unwrap().remove(&self.chunk);
    }
}

impl Engine {
    /// Checks the plan against this node's configuration and opens its stores (no network yet).
    pub fn new(plan: Plan, config: EngineConfig) -> Result<Engine> {
        let origin_received = Arc::new(AtomicU64::new(0));
        let store = Store::open(&config.state_dir()?)?;
        let stores = open_stores(&plan, &config, &origin_received)?;
        let plan = Arc::new(plan);
        let mut objects = BTreeMap::new();
        let mut chunks = HashMap::new();
        let index = plan.index();
        for (at, object) in plan.objects.iter().enumerate() {
            let targets = targets_of(&plan, object, index.files_of(&object.id), &config)?;
            if targets.is_empty() {
                continue;
            }
            for (position, chunk) in object.chunks.iter().enumerate() {
                chunks.insert(chunk.id.clone(), (at, position));
            }
            let work = ObjectWork {
                plan: plan.clone(),
                index: at,
                member: false,
                targets,
                part: None,
                published: None,
                locks: Vec::new(),
            };
            objects.insert(object.id.clone(), Arc::new(Mutex::new(work)));
        }
        let bundles = bundle::bundles_of(&plan, &index, &objects)?;
        drop(index);
        Ok(Engine {
            plan,
            store,
            stores,
            objects,
            chunks,
            bundles,
            registry: Arc::new(MemoryRegistry::new()),
            events: Arc::new((Mutex::new(Vec::new()), Condvar::new())),
            tap: Mutex::new(None),
            peers: peer_client(&config)?,
            server: Mutex::new(None),
            writing: Mutex::new(Default::default()),
            unwritable: Mutex::new(BTreeSet::new()),
            closed: AtomicBool::new(false),
            origin_received,
            config,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The verified chunks this node can serve; hand it to a [`crate::p2p::P2pServer`].
    pub fn registry(&self) -> Arc<MemoryRegistry> {
        self.registry.clone()
    }

    /// Locks this node's destinations of the plan, removes what killed runs left beside any destination
    /// of the node, then finds cache hits and resumable parts; publishes what is already complete.
    pub async fn scan(&self) -> Result<ScanReport> {
        let works: Vec<_> = self.objects.values().cloned().collect();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || take_destinations(&store, &works))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        let mut report = ScanReport::default();
        for work in self.objects.values() {
            let work = work.clone();
            let store = self.store.clone();
            let deep = self.config.deep_verify;
            let faults = self.config.faults.clone();
            let member = work.lock().unwrap().member;
            let found = tokio::task::spawn_blocking(move || {
                scan_object(&store, &mut work.lock().unwrap(), member, deep, &faults)
            })
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
            self.absorb(found, member, &mut report);
        }
        self.scan_bundles(&mut report).await?;
        Ok(report)
    }

    /// Serves and reports what the scan of one object found; a bundle's member is served and reported
    /// with its bundle ([`Engine::scan_bundles`]).
    fn absorb(&self, found: ScanFound, member: bool, report: &mut ScanReport) {
        match found {
            ScanFound::Missing => {}
            ScanFound::Cached { .. } if member => report.cached_files += 1,
            ScanFound::Cached {
                path,
                digests,
                object_id,
            } => {
                report.cached_files += 1;
                self.register_all(&object_id, &path, &digests, report);
            }
            ScanFound::Partial {
                path,
                digests,
                object_id,
                published,
            } => {
                report.resumed_chunks += digests.len() as u64;
                self.register_all(&object_id, &path, &digests, report);
                if let Some(event) = published {
                    self.emit(event);
                }
            }
        }
    }

    fn register_all(
        &self,
        object_id: &str,
        path: &Path,
        digests: &BTreeMap<String, ChunkDigest>,
        report: &mut ScanReport,
    ) {
        for (chunk_id, digest) in digests {
            self.register(chunk_id, path, *digest);
            report.held.insert(chunk_id.clone(), digest.to_hex());
            self.emit(Event::ChunkDone {
                chunk_id: chunk_id.clone(),
                object_id: object_id.to_owned(),
                bytes: self.chunk(chunk_id).map_or(0, |(_, chunk)| chunk.length),
                source: Source::Cache,
                peer: None,
                seconds: 0.0,
                digest: digest.to_hex(),
            });
        }
    }

    /// Fetches one chunk from the origin into its part file. Failures are also emitted as events.
    pub async fn fetch_from_origin(&self, chunk_id: &str) -> Result<ChunkDone> {
        let result = match self.bundles.get(chunk_id) {
            Some(bundle) => self.fetch_bundle(bundle, BundleSource::Origin).await,
            None => self.origin_fetch(chunk_id).await,
        };
        self.outcome(chunk_id, Source::Origin, None, result)
    }

    async fn origin_fetch(&self, chunk_id: &str) -> Result<ChunkDone> {
        let (work, chunk) = self.locate(chunk_id)?;
        let Some((file, identity, store_name)) = self.prepare(&work, &chunk)? else {
            return Ok(self.already_held(&work, &chunk));
        };
        let Some((_writing, fence)) = self.claim(chunk_id, file.clone()) else {
            return Err(Error::ChunkBusy {
                chunk: chunk_id.to_owned(),
            });
        };
        let store = self.store(&store_name)?;
        self.started(&chunk, Source::Origin, None);
        self.config.faults.crash_point(Point::OriginFetch);
        let started = Instant::now();
        let part_path = work
            .lock()
            .unwrap()
            .part
            .as_ref()
            .map(|part| part.path())
            .unwrap_or_default();
        let fetched = self
            .fetch_chunk(store.as_ref(), &identity, &chunk, fence, file, part_path)
            .await;
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
        identity: &ObjectIdentity,
        chunk: &PlanChunk,
        fence: Arc<FencedFile>,
        file: Arc<std::fs::File>,
        part_path: PathBuf,
    ) -> Result<ChunkDigest> {
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
        tokio::task::spawn_blocking(move || crate::hash::hash_open_range(&file, &part_path, offset, length))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
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

    async fn peer_fetch(&self, chunk_id: &str, peer: SocketAddr, expected: Option<ChunkDigest>) -> Result<ChunkDone> {
        let client = self.peers.as_ref().ok_or(Error::InvalidP2pConfig {
            field: "peer_token",
            reason: "is empty: peer transfers are off",
        })?;
        let (work, chunk) = self.locate(chunk_id)?;
        let Some((file, _, _)) = self.prepare(&work, &chunk)? else {
            return Ok(self.already_held(&work, &chunk));
        };
        let id = ChunkId::parse(chunk_id)?;
        let Some((_writing, fence)) = self.claim(chunk_id, file) else {
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
        self.complete(
            work,
            chunk,
            report.digest,
            Source::Peer,
            Some(peer.to_string()),
            started.elapsed(),
        )
        .await
    }

    /// Endgame: the chunk is already being written by a slower transfer. Fetch it into a scratch file;
    /// if this copy verifies first, shut the slower writer out (its fence), put these bytes in place and
    /// record the chunk. Otherwise discard them.
    async fn duplicate_fetch(
        &self,
        client: &P2pClient,
        work: Arc<Mutex<ObjectWork>>,
        chunk: PlanChunk,
        id: ChunkId,
        peer: SocketAddr,
        expected: Option<ChunkDigest>,
    ) -> Result<ChunkDone> {
        let destination = work.lock().unwrap().targets[0].destination.clone();
        let part_dir = destination.parent().map(Path::to_path_buf).unwrap_or_default();
        // Nameless (O_TMPFILE where the file system has it): a crash leaves nothing beside the destination.
        let scratch = tempfile::tempfile_in(&part_dir).map_err(|e| Error::io("create", &part_dir, e))?;
        let scratch_file = Arc::new(scratch);
        self.started(&chunk, Source::Peer, Some(peer.to_string()));
        let started = Instant::now();
        let report = client
            .fetch_chunk(peer, &id, expected, scratch_file.clone(), 0, chunk.length)
            .await?;
        let fence = self.writing.lock().unwrap().get(&chunk.id).cloned();
        let (chunk_id, length, offset) = (chunk.id.clone(), chunk.length, chunk.offset);
        let digest = report.digest;
        let committing = work.clone();
        let faults = self.config.faults.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let mut work = committing.lock().unwrap();
            if work.published.is_some() || work.part.as_ref().is_none_or(|p| p.done().contains_key(&chunk_id)) {
                return Ok(None); // the slower transfer finished first: these bytes are not needed
            }
            if let Some(fence) = fence {
                fence.close();
            }
            let part = work.part.as_ref().expect("checked above").file();
            copy_region(&scratch_file, part.as_ref(), length, offset)?;
            record_and_maybe_publish(&mut work, &chunk_id, digest, &faults).map(Some)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        match committed {
            None => Ok(self.already_held(&work, &chunk)),
            Some((path, published)) => {
                let object_id = work.lock().unwrap().object().id.clone();
                let peer = Some(peer.to_string());
                Ok(self.announce(
                    &object_id,
                    chunk,
                    digest,
                    Source::Peer,
                    peer,
                    started.elapsed(),
                    &path,
                    published,
                ))
            }
        }
    }

    fn holds(&self, work: &Arc<Mutex<ObjectWork>>, chunk: &PlanChunk) -> bool {
        let work = work.lock().unwrap();
        work.published.is_some() || work.part.as_ref().is_some_and(|p| p.done().contains_key(&chunk.id))
    }

    /// Starts serving this node's verified chunks to peers on `bind` (the node's own address) and
    /// `port` (0: chosen by the OS). Returns the address peers must use.
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
            egress_bytes_per_sec,
            faults: self.config.faults.clone(),
            ..ServerConfig::default()
        };
        let server = P2pServer::start(config, self.registry.clone()).await?;
        let address = server.local_addr();
        let previous = self.server.lock().unwrap().replace(server);
        if let Some(previous) = previous {
            previous.shutdown(Duration::ZERO).await;
        }
        Ok(address)
    }

    /// Stops the peer server, letting in-flight uploads finish for up to `grace`.
    pub async fn stop_server(&self, grace: Duration) {
        let server = self.server.lock().unwrap().take();
        if let Some(server) = server {
            server.shutdown(grace).await;
        }
    }

    /// The peer server's counters, if it runs.
    pub fn server_stats(&self) -> Option<ServerStats> {
        self.server.lock().unwrap().as_ref().map(P2pServer::stats)
    }

    /// Records a chunk whose bytes were written into the part file by someone else (the peer client).
    pub(crate) async fn complete(
        &self,
        work: Arc<Mutex<ObjectWork>>,
        chunk: PlanChunk,
        digest: ChunkDigest,
        source: Source,
        peer: Option<String>,
        elapsed: Duration,
    ) -> Result<ChunkDone> {
        let object_id = work.lock().unwrap().object().id.clone();
        let chunk_id = chunk.id.clone();
        let faults = self.config.faults.clone();
        let (path, published) = tokio::task::spawn_blocking(move || {
            record_and_maybe_publish(&mut work.lock().unwrap(), &chunk_id, digest, &faults)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        self.config.faults.crash_point(Point::ChunkRecorded);
        Ok(self.announce(&object_id, chunk, digest, source, peer, elapsed, &path, published))
    }

    /// Makes a recorded chunk servable and reports it (and the file, if this chunk completed it).
    #[allow(clippy::too_many_arguments)]
    fn announce(
        &self,
        object_id: &str,
        chunk: PlanChunk,
        digest: ChunkDigest,
        source: Source,
        peer: Option<String>,
        elapsed: Duration,
        path: &Path,
        published: Option<Published>,
    ) -> ChunkDone {
        self.register(&chunk.id, path, digest);
        self.emit(Event::ChunkDone {
            chunk_id: chunk.id.clone(),
            object_id: object_id.to_owned(),
            bytes: chunk.length,
            source,
            peer,
            seconds: elapsed.as_secs_f64(),
            digest: digest.to_hex(),
        });
        if let Some((destination, digests)) = published {
            for (id, digest) in digests {
                self.register(&id, &destination, digest);
            }
            let bytes = self.objects[object_id].lock().unwrap().object().size;
            self.emit(Event::FilePublished {
                object_id: object_id.to_owned(),
                destination: destination.display().to_string(),
                bytes,
            });
        }
        ChunkDone {
            chunk_id: chunk.id,
            bytes: chunk.length,
            digest: digest.to_hex(),
            seconds: elapsed.as_secs_f64(),
            already_held: false,
        }
    }

    /// Runs the plan's unpacks whose archives are published on this node.
    pub async fn finish(&self, options: UnpackOptions) -> Result<Vec<Event>> {
        let mut done = Vec::new();
        let index = self.plan.index();
        for step in &self.plan.unpacks {
            let Some(work) = self.objects.get(&step.object_id) else {
                continue;
            };
            let archive_here = index
                .files_of(&step.object_id)
                .iter()
                .any(|f| f.destination == step.archive && f.applies_to(&self.config.node_labels));
            if !archive_here {
                continue; // this archive's artifact targets other nodes
            }
            if work.lock().unwrap().published.is_none() {
                return Err(Error::InvalidPlan(format!(
                    "cannot unpack {}: the archive is not complete on this node",
                    step.archive
                )));
            }
            let archive = localize(&self.config.node_root, &step.archive)?;
            let destination = localize(&self.config.node_root, &step.to)?;
            let options = UnpackOptions {
                format: step.format.parse::<ArchiveFormat>()?,
                faults: self.config.faults.clone(),
                ..options.for_plan(step, &self.plan.settings)
            };
            let identity = format!("{}:{}", step.object_id, step.format);
            let (a, d, store) = (archive.clone(), destination.clone(), self.store.clone());
            // The unpack locks its destination in the store and removes what a crashed unpack left there.
            let report = tokio::task::spawn_blocking(move || unpack::unpack(&store, &a, &d, &identity, &options))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
            let event = Event::Unpacked {
                object_id: step.object_id.clone(),
                destination: destination.display().to_string(),
                files: report.files,
                bytes: report.bytes_written,
                skipped: report.skipped,
            };
            self.emit(event.clone());
            done.push(event);
        }
        Ok(done)
    }

    /// Ends this engine's hold on its destinations: gives a refusing disk its space back (the part
    /// files it could not complete are removed; the destinations were never touched), removes part files
    /// with nothing recorded, closes the others, puts the store's records on disk and lets go of every
    /// destination lock. Part files with recorded chunks stay for the next run to resume. Call once the
    /// transfers have ended ([`Engine::stop_server`] and the caller's cancel first): the next run on this
    /// node may start at once, in this very process, while something else still holds a reference to
    /// this engine. Idempotent; `Drop` calls it too.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let unwritable = std::mem::take(&mut *self.unwritable.lock().unwrap());
        for work in self.objects.values() {
            let mut work = work.lock().unwrap();
            // A part file with no chunk recorded (a refused or cancelled run opened it) holds nothing to
            // resume: it goes, so a run that did nothing leaves nothing beside the destinations.
            let nothing_to_resume = work.part.as_ref().is_some_and(|part| part.done().is_empty());
            let discard = (unwritable.contains(&work.object().id) || nothing_to_resume)
                && work.published.is_none()
                && !work.locks.is_empty()
                && work.locks.iter().all(DestinationLock::still_guards);
            work.part = None;
            if discard {
                assembly::discard_part(&self.store, &work.targets[0].destination);
            }
        }
        // Records appended without a sync (chunks, published files) reach the disk before the locks go.
        let _ = self.store.sync();
        for work in self.objects.values() {
            work.lock().unwrap().locks.clear();
        }
    }

    /// Object bytes this engine received from the origin so far: retries, resumed ranges and transfers
    /// cut short (cancelled, failed) included, so it is what the origin served to this node.
    pub fn origin_bytes(&self) -> u64 {
        self.origin_received.load(Ordering::Relaxed)
    }

    /// Takes every event so far (oldest first).
    pub fn drain_events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.0.lock().unwrap())
    }

    /// Waits up to `timeout` for at least one event, then takes them all.
    pub fn wait_events(&self, timeout: Duration) -> Vec<Event> {
        let (queue, ready) = &*self.events;
        let guard = queue.lock().unwrap();
        let (mut guard, _) = ready
            .wait_timeout_while(guard, timeout, |events| events.is_empty())
            .unwrap();
        std::mem::take(&mut *guard)
    }

    /// `true` when every file of the plan for this node is published.
    pub fn is_complete(&self) -> bool {
        self.objects.values().all(|w| w.lock().unwrap().published.is_some())
    }

    pub(crate) fn locate(&self, chunk_id: &str) -> Result<(Arc<Mutex<ObjectWork>>, PlanChunk)> {
        let (object, chunk) = self
            .chunk(chunk_id)
            .ok_or_else(|| Error::InvalidPlan(format!("unknown chunk {chunk_id}")))?;
        Ok((self.objects[&object.id].clone(), chunk.clone()))
    }

    /// The chunk `chunk_id` names on this node, and its object.
    fn chunk(&self, chunk_id: &str) -> Option<(&PlanObject, &PlanChunk)> {
        let &(object, chunk) = self.chunks.get(chunk_id)?;
        let object = &self.plan.objects[object];
        Some((object, &object.chunks[chunk]))
    }

    /// The id of the object of chunk `chunk_id`; empty when the chunk is not this node's.
    fn object_id_of(&self, chunk_id: &str) -> String {
        self.chunk(chunk_id)
            .map(|(object, _)| object.id.clone())
            .unwrap_or_default()
    }

    /// The part file and object identity for a chunk still missing; `None` when already held.
    pub(crate) fn prepare(
        &self,
        work: &Arc<Mutex<ObjectWork>>,
        chunk: &PlanChunk,
    ) -> Result<Option<(Arc<std::fs::File>, ObjectIdentity, String)>> {
        let mut work = work.lock().unwrap();
        if work.published.is_some() {
            return Ok(None);
        }
        if self.closed.load(Ordering::SeqCst) {
            // A transfer that outlived its run's cancel must not lock the destinations again.
            return Err(Error::Task("the run on this node has ended".into()));
        }
        if work.lock_destinations(&self.store)? {
            self.store.refresh()?; // their entries are final now that no other run can change them
        }
        if work.part.is_none() {
            work.part = Some(Box::new(PartFile::open(&self.store, work.targets[0].clone())?));
        }
        let part = work.part.as_ref().expect("opened above");
        if part.done().contains_key(&chunk.id) {
            return Ok(None);
        }
        Ok(Some((
            part.file(),
            identity_of(work.object()),
            work.object().store.clone(),
        )))
    }

    fn started(&self, chunk: &PlanChunk, source: Source, peer: Option<String>) {
        self.emit(Event::ChunkStarted {
            chunk_id: chunk.id.clone(),
            object_id: self.object_id_of(&chunk.id),
            source,
            peer,
        });
    }

    /// Makes this call the writer of the chunk's region; `None` when another call already is.
    fn claim(&self, chunk_id: &str, file: Arc<std::fs::File>) -> Option<(WritingGuard<'_>, Arc<FencedFile>)> {
        let mut writing = self.writing.lock().unwrap();
        if writing.contains_key(chunk_id) {
            return None;
        }
        let fence = Arc::new(FencedFile::new(file));
        writing.insert(chunk_id.to_owned(), fence.clone());
        let guard = WritingGuard {
            writing: &self.writing,
            chunk: chunk_id.to_owned(),
        };
        Some((guard, fence))
    }

    fn store(&self, name: &str) -> Result<Arc<dyn ObjectStore>> {
        match self.stores.get(name) {
            Some(Ok(store)) => Ok(store.clone()),
            Some(Err((url, message))) => Err(Error::StoreConfig {
                url: url.clone(),
                message: message.clone(),
            }),
            None => Err(Error::InvalidPlan(format!("unknown store {name:?}"))),
        }
    }

    pub(crate) fn already_held(&self, work: &Arc<Mutex<ObjectWork>>, chunk: &PlanChunk) -> ChunkDone {
        let work = work.lock().unwrap();
        let digest = match (&work.published, &work.part) {
            (Some(record), _) => record.chunks.get(&chunk.id).cloned().unwrap_or_default(),
            (None, Some(part)) => part.done().get(&chunk.id).map(|d| d.to_hex()).unwrap_or_default(),
            _ => String::new(),
        };
        ChunkDone {
            chunk_id: chunk.id.clone(),
            bytes: 0,
            digest,
            seconds: 0.0,
            already_held: true,
        }
    }

    pub(crate) fn failed(&self, chunk_id: &str, source: Source, peer: Option<String>, error: Error) -> Error {
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
            error_kind: error.kind().to_owned(),
        });
        error
    }

    fn register(&self, chunk_id: &str, path: &Path, digest: ChunkDigest) {
        let Some((_, chunk)) = self.chunk(chunk_id) else {
            return;
        };
        if let Ok(id) = ChunkId::parse(chunk_id) {
            let served = ServedChunk::in_file(path.to_owned(), chunk.offset, chunk.length, digest);
            self.registry.insert(id, served);
        }
    }

    fn emit(&self, event: Event) {
        if self.tap(&event) {
            // On a control link the outcomes go to the coordinator and nobody reads the queue: kept, a
            // run of 100,000 files would hold every event until the engine is dropped.
            return;
        }
        let (queue, ready) = &*self.events;
        queue.lock().unwrap().push(event);
        ready.notify_all();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

enum ScanFound {
    /// Not here yet; its part file is made when its first chunk arrives.
    Missing,
    Cached {
        object_id: String,
        path: PathBuf,
        digests: BTreeMap<String, ChunkDigest>,
    },
    Partial {
        object_id: String,
        path: PathBuf,
        digests: BTreeMap<String, ChunkDigest>,
        published: Option<Event>,
    },
}

/// Locks every destination of `works` (the run is refused when another run holds one), reads what other
/// runs recorded meanwhile, imports what the previous layout kept beside them, and removes what killed
/// runs left beside the node's other destinations.
fn take_destinations(store: &Arc<Store>, works: &[Arc<Mutex<ObjectWork>>]) -> Result<()> {
    let mut guards: Vec<_> = works.iter().map(|w| w.lock().unwrap()).collect();
    let destinations: Vec<PathBuf> = guards
        .iter()
        .filter(|w| w.locks.is_empty())
        .flat_map(|w| w.targets.iter().map(|t| t.destination.clone()))
        .collect();
    let paths: Vec<&Path> = destinations.iter().map(PathBuf::as_path).collect();
    // All at once: one pass over the store's log for the whole plan.
    let mut locks = store
        .try_lock_all(&paths)?
        .map_err(|path| Error::DestinationBusy { path })?
        .into_iter();
    for work in guards.iter_mut().filter(|w| w.locks.is_empty()) {
        work.locks = locks.by_ref().take(work.targets.len()).collect();
    }
    drop(guards);
    store.refresh()?;
    let destinations: Vec<&Path> = destinations.iter().map(PathBuf::as_path).collect();
    store::import_beside(store, &destinations)?;
    store.remove_leftovers()?;
    Ok(())
}

fn scan_object(
    store: &Arc<Store>,
    work: &mut ObjectWork,
    member: bool,
    deep_verify: bool,
    faults: &Faults,
) -> Result<ScanFound> {
    let object_id = work.object().id.clone();
    if let Some((index, record)) = find_cache_hit(store, work, deep_verify)? {
        let source = work.targets[index].destination.clone();
        let digests = chunk_digests(&source, &work.targets[index], &record)?;
        let record = FileRecord {
            chunks: digests.iter().map(|(k, v)| (k.clone(), v.to_hex())).collect(),
            ..record
        };
        for (other, target) in work.targets.iter().enumerate() {
            if other != index && cache_hit(store, target, false)?.is_none() {
                assembly::publish_copy(store, &source, &record, target)?;
            }
        }
        // A part file of another version beside a destination that is a cache hit is no longer wanted.
        for target in &work.targets {
            if store.entry(&target.destination).part.is_some() {
                assembly::discard_part(store, &target.destination);
            }
        }
        work.published = Some(Box::new(record));
        return Ok(ScanFound::Cached {
            object_id,
            path: source,
            digests,
        });
    }
    let target = &work.targets[0];
    let nothing_to_resume = store.entry(&target.destination).part.is_none();
    if member || (nothing_to_resume && !work.object().chunks.is_empty()) {
        // No part file (nor file descriptor) before a chunk arrives: a plan of 100,000 files must not
        // hold 100,000 open files. What opening it would refuse is refused now all the same.
        assembly::check_destination(store, target)?;
        return Ok(ScanFound::Missing);
    }
    let part = PartFile::open(store, target.clone())?;
    let digests = part.done().clone();
    let path = part.path();
    work.part = Some(Box::new(part));
    // An object with no missing chunks (empty, or fully resumed) is published right away.
    let published = if work.part.as_ref().is_some_and(|part| part.is_complete()) {
        let (destination, _) = publish(work, faults)?;
        Some(Event::FilePublished {
            object_id: object_id.clone(),
            destination: destination.display().to_string(),
            bytes: work.object().size,
        })
    } else {
        None
    };
    let path = if published.is_some() {
        work.targets[0].destination.clone()
    } else {
        path
    };
    Ok(ScanFound::Partial {
        object_id,
        path,
        digests,
        published,
    })
}

fn find_cache_hit(store: &Store, work: &ObjectWork, deep_verify: bool) -> Result<Option<(usize, FileRecord)>> {
    for (index, target) in work.targets.iter().enumerate() {
        if let Some(record) = cache_hit(store, target, deep_verify)? {
            return Ok(Some((index, record)));
        }
    }
    Ok(None)
}

/// The record of `target`'s file when it is a cache hit: untouched since it was published (re-hashed
/// first with `deep_verify`), or touched but still the same bytes (copied back, `touch`ed, chmod-ed),
/// then trusted again from now on. A publish a crash interrupted is finished (or dropped) first.
fn cache_hit(store: &Store, target: &FileTarget, deep_verify: bool) -> Result<Option<FileRecord>> {
    assembly::recover_interrupted_publish(store, target)?;
    let destination = &target.destination;
    match assembly::inspect(store, destination, &target.identity)? {
        CacheState::Hit(record) if !deep_verify || assembly::deep_verify(destination, target, &record)? => {
            Ok(Some(record))
        }
        CacheState::Touched(record) if assembly::deep_verify(destination, target, &record)? => {
            Ok(Some(assembly::seal(store, destination, &record)?))
        }
        _ => Ok(None),
    }
}

/// Digests of every chunk of a cached file: from its record, or re-hashed when the record was written
/// with another chunk size (its chunk ids differ from the plan's).
fn chunk_digests(path: &Path, target: &FileTarget, record: &FileRecord) -> Result<BTreeMap<String, ChunkDigest>> {
    target
        .chunks
        .iter()
        .map(|chunk| {
            let recorded = record.chunks.get(&chunk.id).and_then(|hex| ChunkDigest::from_hex(hex));
            let digest = match recorded {
                Some(digest) => digest,
                None => hash_file_range(path, chunk.offset, Some(chunk.length))?,
            };
            Ok((chunk.id.clone(), digest))
        })
        .collect()
}

type Published = (PathBuf, BTreeMap<String, ChunkDigest>);

/// Copies `length` bytes from the start of `scratch` to `offset` of `part`, in bounded blocks.
fn copy_region(scratch: &std::fs::File, part: &std::fs::File, length: u64, offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; (1 << 20).min(length as usize).max(1)];
    let mut done = 0u64;
    while done < length {
        let want = buffer.len().min((length - done) as usize);
        scratch
            .read_exact_at(&mut buffer[..want], done)
            .map_err(|e| Error::io("read", "<scratch>", e))?;
        part.write_all_at(&buffer[..want], offset + done)
            .map_err(|e| Error::io("write", crate::error::WRITTEN_FILE, e))?;
        done += want as u64;
    }
    Ok(())
}

fn record_and_maybe_publish(
    work: &mut ObjectWork,
    chunk_id: &str,
    digest: ChunkDigest,
    faults: &Faults,
) -> Result<(PathBuf, Option<Published>)> {
    if let Some(record) = &work.published {
        // Published meanwhile (a duplicate transfer won the race): nothing left to record.
        let path = work.targets[0].destination.clone();
        debug_assert!(record.chunks.contains_key(chunk_id));
        return Ok((path, None));
    }
    let part = work
        .part
        .as_mut()
        .ok_or_else(|| Error::InvalidPlan("chunk recorded before its part file was opened".into()))?;
    if part.done().contains_key(chunk_id) {
        return Ok((part.path(), None));
    }
    part.record(chunk_id, digest)?;
    if !part.is_complete() {
        return Ok((part.path(), None));
    }
    let published = publish(work, faults)?;
    Ok((published.0.clone(), Some(published)))
}

fn publish(work: &mut ObjectWork, faults: &Faults) -> Result<Published> {
    let part = work.part.take().expect("publish needs a part file");
    let digests = part.done().clone();
    let store = part.store().clone();
    let record = part.publish_with(faults)?;
    let primary = work.targets[0].destination.clone();
    for target in &work.targets[1..] {
        assembly::publish_copy(&store, &primary, &record, target)?;
    }
    work.published = Some(Box::new(record));
    Ok((primary, digests))
}

fn peer_client(config: &EngineConfig) -> Result<Option<P2pClient>> {
    if config.peer_token.is_empty() {
        return Ok(None);
    }
    Ok(Some(P2pClient::new(ClientConfig {
        token: config.peer_token.clone(),
        ..ClientConfig::default()
    })?))
}

/// A store, or why it could not be opened: `(url, message)`.
type OpenedStore = std::result::Result<Arc<dyn ObjectStore>, (String, String)>;

fn open_stores(
    plan: &Plan,
    config: &EngineConfig,
    origin_received: &Arc<AtomicU64>,
) -> Result<BTreeMap<String, OpenedStore>> {
    plan.stores
        .iter()
        .map(|(name, store)| {
            let configured = config.stores.get(name).cloned().unwrap_or_else(|| StoreConfig {
                url: store.url.clone(),
                options: Vec::new(),
            });
            if configured.url != store.url {
                return Err(Error::StoreConfig {
                    url: store.url.clone(),
                    message: format!("this node's store {name:?} is {}", configured.url),
                });
            }
            let opened = origin::open_store(&configured)
                .map(|opened| -> Arc<dyn ObjectStore> {
                    Arc::new(origin::CountingStore::new(opened, origin_received.clone()))
                })
                .map_err(|error| match error {
                    Error::StoreConfig { url, message } => (url, message),
                    other => (store.url.clone(), other.to_string()),
                });
            Ok((name.clone(), opened))
        })
        .collect()
}

/// The destinations of `object` on this node: those of its `files` (from [`Plan::index`], so that
/// making the targets of every object reads each file once) whose node selector this node matches.
fn targets_of(plan: &Plan, object: &PlanObject, files: &[&PlanFile], config: &EngineConfig) -> Result<Vec<FileTarget>> {
    let store_url = plan
        .stores
        .get(&object.store)
        .map(|s| s.url.clone())
        .unwrap_or_default();
    let identity = FileIdentity {
        store_url,
        key: object.key.clone(),
        etag: object.etag.clone(),
        version: object.version.clone(),
        size: object.size,
    };
    let spans: Vec<ChunkSpan> = object
        .chunks
        .iter()
        .map(|c| ChunkSpan {
            id: c.id.clone(),
            offset: c.offset,
            length: c.length,
        })
        .collect();
    let mut targets = files
        .iter()
        .filter(|f| f.applies_to(&config.node_labels))
        .map(|file| {
            let mut destination = localize(&config.node_root, &file.destination)?;
            destination.shrink_to_fit();
            Ok(FileTarget {
                destination,
                identity: identity.clone(),
                chunks: spans.clone(),
                sha256: file.sha256.clone(),
                overwrite: plan.settings.overwrite,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Kept for the whole run: a filtered `collect` starts with room for 4 targets, and most objects
    // have one (with 100,000 objects, 55 MB of nothing).
    targets.shrink_to_fit();
    Ok(targets)
}

/// What the origin must still be serving for `object`'s bytes to be the plan's.
fn identity_of(object: &PlanObject) -> ObjectIdentity {
    ObjectIdentity {
        key: object.key.clone(),
        size: object.size,
        etag: object.etag.clone(),
        version: object.version.clone(),
    }
}

/// `destination` (absolute, from the plan) under the node root; never outside it.
pub fn localize(node_root: &Path, destination: &str) -> Result<PathBuf> {
    let path = Path::new(destination);
    let mut out = node_root.to_path_buf();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => out.push(part),
            _ => {
                return Err(Error::InvalidPlan(format!(
                    "destination {destination:?} must be absolute and free of '..'"
                )));
            }
        }
    }
    if !path.is_absolute() || out == node_root {
        return Err(Error::InvalidPlan(format!(
            "destination {destination:?} must be an absolute path below /"
        )));
    }
    Ok(out)
}
