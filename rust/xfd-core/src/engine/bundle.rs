//! Bundles on a node: many small objects brought in, verified, published and served as one unit
//! (see [`PlanBundle`]).
//!
//! A bundle is gathered in memory (it is small by construction): from the origin with one GET per
//! member (members already published here are read back instead, after checking them against their
//! records), or from a peer as one chunk checked against the digest it had where the origin's bytes
//! were first hashed. Its members are then published together ([`assembly::publish_small`]), and it
//! is served to peers from the published files, one segment per member.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;

use super::object::{ObjectState, ObjectWork, identity_of};
use super::{ChunkDone, Engine, Event, ScanReport, Source};
use crate::assembly::{self, SmallFile};
use crate::error::{Error, Result};
use crate::faults::Point;
use crate::hash::ChunkDigest;
use crate::origin;
use crate::p2p::{ChunkId, Segment, ServedChunk};
use crate::plan::{Plan, PlanBundle, PlanIndex};
use crate::sink::{MemoryBuffer, PositionalWrite};
use crate::store::Store;

/// One bundle this node gets.
pub(crate) struct BundleWork {
    id: String,
    length: u64,
    members: Vec<Member>,
    /// Known once the bundle is whole here (published or found in the cache).
    digest: Mutex<Option<ChunkDigest>>,
    /// One commit at a time: a duplicate transfer of the bundle finds its members published.
    commit: Mutex<()>,
}

struct Member {
    work: Arc<Mutex<ObjectWork>>,
    /// Where the member's bytes start in the bundle.
    offset: u64,
}

/// Where a bundle is fetched from.
pub(crate) enum BundleSource {
    Origin,
    Peer(SocketAddr, Option<ChunkDigest>),
}

/// The bundles of `plan` whose members this node gets (those in `objects`), by id; their members' works
/// are marked as such. A node gets every member of a bundle or none: the planner groups members by node
/// selector.
pub(super) fn bundles_of(
    plan: &Plan,
    index: &PlanIndex<'_>,
    objects: &BTreeMap<String, Arc<Mutex<ObjectWork>>>,
) -> Result<HashMap<String, Arc<BundleWork>>> {
    let mut bundles = HashMap::new();
    for bundle in &plan.bundles {
        let here = bundle.members.iter().filter(|id| objects.contains_key(*id)).count();
        if here == 0 {
            continue;
        }
        if here != bundle.members.len() {
            return Err(Error::InvalidPlan(format!(
                "bundle {}: this node gets {here} of its {} members; a bundle's members must all go to the same nodes",
                bundle.id,
                bundle.members.len()
            )));
        }
        bundles.insert(bundle.id.clone(), Arc::new(BundleWork::new(bundle, index, objects)));
        for id in &bundle.members {
            objects[id].lock().unwrap().member = true;
        }
    }
    Ok(bundles)
}

impl BundleWork {
    fn new(
        bundle: &PlanBundle,
        index: &PlanIndex<'_>,
        objects: &BTreeMap<String, Arc<Mutex<ObjectWork>>>,
    ) -> BundleWork {
        let mut offset = 0;
        let members = bundle
            .members
            .iter()
            .map(|id| {
                let member = Member {
                    work: objects[id].clone(),
                    offset,
                };
                offset += index.object(id).map_or(0, |o| o.size);
                member
            })
            .collect();
        BundleWork {
            id: bundle.id.clone(),
            length: bundle.length,
            members,
            digest: Mutex::new(None),
            commit: Mutex::new(()),
        }
    }

    fn all_published(&self) -> bool {
        self.members.iter().all(|m| m.work.lock().unwrap().state.is_published())
    }

    /// The published members' files, in order: what peers are served.
    fn segments(&self) -> Vec<Segment> {
        self.members
            .iter()
            .map(|m| {
                let work = m.work.lock().unwrap();
                Segment::new(work.targets[0].destination.clone(), 0, work.object().size)
            })
            .collect()
    }

    /// The digest of a bundle whose members are all published here, from their files.
    fn digest_of_published(&self) -> Result<ChunkDigest> {
        let mut hasher = blake3::Hasher::new();
        for segment in self.segments() {
            let bytes = std::fs::read(&segment.path).map_err(|e| Error::io("read", &segment.path, e))?;
            if bytes.len() as u64 != segment.length {
                return Err(Error::io(
                    "read",
                    &segment.path,
                    std::io::Error::other(format!("{} bytes, the record says {}", bytes.len(), segment.length)),
                ));
            }
            hasher.update(&bytes);
        }
        Ok(ChunkDigest(*hasher.finalize().as_bytes()))
    }
}

impl Engine {
    /// Serves and reports every bundle whose members the scan found published here.
    pub(super) async fn scan_bundles(&self, report: &mut ScanReport) -> Result<()> {
        for bundle in self.bundles.values() {
            if !bundle.all_published() {
                continue;
            }
            let whole = bundle.clone();
            let digest = tokio::task::spawn_blocking(move || whole.digest_of_published())
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
            self.bundle_in_place(bundle, digest);
            report.held.insert(bundle.id.clone(), digest.to_hex());
            self.emit(Event::ChunkDone {
                chunk_id: bundle.id.clone(),
                object_id: String::new(),
                bytes: bundle.length,
                source: Source::Cache,
                peer: None,
                seconds: 0.0,
                digest: digest.to_hex(),
            });
        }
        Ok(())
    }

    /// Brings a bundle in from `source` and publishes its members not published here yet.
    pub(super) async fn fetch_bundle(&self, bundle: &Arc<BundleWork>, source: BundleSource) -> Result<ChunkDone> {
        if let Some(done) = self.bundle_held(bundle) {
            return Ok(done);
        }
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Task("the run on this node has ended".into()));
        }
        let peer = match &source {
            BundleSource::Peer(address, _) => Some(address.to_string()),
            BundleSource::Origin => None,
        };
        let kind = if peer.is_some() { Source::Peer } else { Source::Origin };
        self.emit(Event::ChunkStarted {
            chunk_id: bundle.id.clone(),
            object_id: String::new(),
            source: kind.clone(),
            peer: peer.clone(),
        });
        let started = Instant::now();
        let buffer = Arc::new(MemoryBuffer::new(bundle.length as usize));
        // A peer's bytes are verified on arrival; the origin's are hashed here, once all are in.
        let verified = match source {
            BundleSource::Origin => {
                self.config.faults.crash_point(Point::OriginFetch);
                self.gather_from_origin(bundle, &buffer).await?;
                None
            }
            BundleSource::Peer(address, expected) => {
                let client = self.peers()?;
                let id = ChunkId::parse(&bundle.id)?;
                let dest: Arc<dyn PositionalWrite> = buffer.clone();
                Some(
                    client
                        .fetch_chunk(address, &id, expected, dest, 0, bundle.length)
                        .await?
                        .digest,
                )
            }
        };
        let (store, whole, faults) = (self.store.clone(), bundle.clone(), self.config.faults.clone());
        let (digest, published) = tokio::task::spawn_blocking(move || {
            let bytes = buffer.take();
            let digest = verified.unwrap_or_else(|| ChunkDigest::of_bytes(&bytes));
            commit(&store, &whole, &bytes, &faults).map(|published| (digest, published))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        self.config.faults.crash_point(Point::ChunkRecorded);
        self.bundle_in_place(bundle, digest);
        self.emit(Event::ChunkDone {
            chunk_id: bundle.id.clone(),
            object_id: String::new(),
            bytes: bundle.length,
            source: kind,
            peer,
            seconds: started.elapsed().as_secs_f64(),
            digest: digest.to_hex(),
        });
        for (object_id, destination, bytes) in published {
            let destination = destination.display().to_string();
            self.emit(Event::FilePublished {
                object_id,
                destination,
                bytes,
            });
        }
        Ok(ChunkDone {
            chunk_id: bundle.id.clone(),
            bytes: bundle.length,
            digest: digest.to_hex(),
            seconds: started.elapsed().as_secs_f64(),
            already_held: false,
        })
    }

    /// Every member's bytes into `buffer`: read back when published here and still as recorded, else
    /// one GET each, `origin_chunk_streams` at once.
    async fn gather_from_origin(&self, bundle: &BundleWork, buffer: &Arc<MemoryBuffer>) -> Result<()> {
        let streams = self.plan.settings.origin_chunk_streams.max(1) as usize;
        // One share of the rate caps for the whole bundle: it is one origin transfer.
        let pace = origin::Pace::for_unit(&self.plan.settings);
        // Collected first: a lazy `map` over the members inside this future makes it not `Send` for
        // every lifetime, which spawning it requires.
        let fetches: Vec<_> = bundle
            .members
            .iter()
            .map(|member| self.gather_member(member, buffer, pace.as_ref()))
            .collect();
        let mut running = futures::stream::iter(fetches).buffer_unordered(streams);
        let mut gathered = Ok(());
        while let Some(done) = running.next().await {
            if let Err(error) = done {
                gathered = Err(error);
                break;
            }
        }
        drop(running);
        if let Some(pace) = pace {
            pace.settle().await; // the next transfer in this origin slot starts within the caps
        }
        gathered
    }

    async fn gather_member(
        &self,
        member: &Member,
        buffer: &Arc<MemoryBuffer>,
        pace: Option<&Arc<origin::Pace>>,
    ) -> Result<()> {
        let (identity, store_name, local) = {
            let work = member.work.lock().unwrap();
            let object = work.object();
            let identity = identity_of(object);
            let local = work.state.record().and_then(|record| {
                let chunk = object.chunks.first()?;
                let digest = record.chunks.get(&chunk.id)?.clone();
                Some((work.targets[0].destination.clone(), digest))
            });
            (identity, object.store.clone(), local)
        };
        if let Some((path, digest)) = local {
            let (buffer, offset) = (buffer.clone(), member.offset);
            let read = tokio::task::spawn_blocking(move || read_if_as_recorded(&path, &digest, &buffer, offset))
                .await
                .map_err(|e| Error::Task(e.to_string()))?;
            if read {
                return Ok(());
            }
        }
        let store = origin::paced(self.stores.get(&store_name)?, pace);
        let dest: Arc<dyn PositionalWrite> = buffer.clone();
        origin::fetch_range(
            store.as_ref(),
            &identity,
            0,
            identity.size,
            dest,
            member.offset,
            &self.config.retry,
        )
        .await?;
        Ok(())
    }

    /// `Some` when every member is already published here (a duplicate transfer lost the race).
    fn bundle_held(&self, bundle: &BundleWork) -> Option<ChunkDone> {
        let digest = (*bundle.digest.lock().unwrap())?;
        bundle.all_published().then(|| ChunkDone {
            chunk_id: bundle.id.clone(),
            bytes: 0,
            digest: digest.to_hex(),
            seconds: 0.0,
            already_held: true,
        })
    }

    /// Records the bundle's digest and serves it from its members' files.
    fn bundle_in_place(&self, bundle: &BundleWork, digest: ChunkDigest) {
        *bundle.digest.lock().unwrap() = Some(digest);
        if let Ok(id) = ChunkId::parse(&bundle.id) {
            self.serving.serve(id, ServedChunk::in_files(bundle.segments(), digest));
        }
    }
}

/// Reads a published member into the bundle's buffer if its bytes still match their record; `false`
/// (fetch it again) when the file was changed or cannot be read.
fn read_if_as_recorded(path: &std::path::Path, digest: &str, buffer: &MemoryBuffer, offset: u64) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    ChunkDigest::of_bytes(&bytes).to_hex() == digest && buffer.write_block_at(&bytes, offset).is_ok()
}

/// Publishes the members of `bundle` not yet published here, from the bundle's verified `bytes`; returns
/// what it published as `(object id, destination, bytes)`.
fn commit(
    store: &Arc<Store>,
    bundle: &BundleWork,
    bytes: &[u8],
    faults: &crate::faults::Faults,
) -> Result<Vec<(String, PathBuf, u64)>> {
    let _one = bundle.commit.lock().unwrap();
    let mut works: Vec<_> = bundle.members.iter().map(|m| m.work.lock().unwrap()).collect();
    let pending: Vec<usize> = (0..works.len()).filter(|&i| !works[i].state.is_published()).collect();
    let mut refresh = false;
    for &i in &pending {
        refresh |= works[i].lock_destinations(store)?;
        works[i].state = ObjectState::Missing; // members are written whole below, never resumed
    }
    if refresh {
        store.refresh()?; // their entries are final now that no other run can change them
    }
    let records = {
        let files: Vec<SmallFile<'_>> = pending
            .iter()
            .map(|&i| {
                let work = &works[i];
                let start = bundle.members[i].offset as usize;
                let content = &bytes[start..start + work.object().size as usize];
                let chunk_id = work.object().chunks[0].id.clone();
                SmallFile {
                    target: &work.targets[0],
                    bytes: content,
                    chunks: BTreeMap::from([(chunk_id, ChunkDigest::of_bytes(content).to_hex())]),
                }
            })
            .collect();
        assembly::publish_small(store, &files, faults)?
    };
    let mut published = Vec::with_capacity(pending.len());
    for (&i, record) in pending.iter().zip(records) {
        let work = &mut works[i];
        let primary = work.targets[0].destination.clone();
        for target in &work.targets[1..] {
            assembly::publish_copy(store, &primary, &record, target)?;
        }
        work.state = ObjectState::Published(Box::new(record));
        published.push((work.object().id.clone(), primary, work.object().size));
    }
    Ok(published)
}
