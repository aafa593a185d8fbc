//! The scan: what this node already holds when a run starts. Published files whose record matches the
//! plan are cache hits; part files of interrupted runs keep their verified chunks (resume).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::object::{ObjectState, ObjectWork};
use super::publish::publish;
use super::serving::ChunkFile;
use super::{Engine, Event, Source};
use crate::assembly::{self, CacheState, FileRecord, FileTarget, PartFile};
use crate::error::{Error, Result};
use crate::faults::Faults;
use crate::hash::{ChunkDigest, hash_file_range};
use crate::store::{self, Store};

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

/// What the scan of one object found.
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
        file: ChunkFile,
        digests: BTreeMap<String, ChunkDigest>,
        published: Option<Event>,
    },
}

impl Engine {
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
                self.register_all(&object_id, &ChunkFile::Placed(path), &digests, report);
            }
            ScanFound::Partial {
                file,
                digests,
                object_id,
                published,
            } => {
                report.resumed_chunks += digests.len() as u64;
                self.register_all(&object_id, &file, &digests, report);
                if let Some(event) = published {
                    self.emit(event);
                }
            }
        }
    }

    fn register_all(
        &self,
        object_id: &str,
        file: &ChunkFile,
        digests: &BTreeMap<String, ChunkDigest>,
        report: &mut ScanReport,
    ) {
        for (chunk_id, digest) in digests {
            self.register(chunk_id, file, *digest);
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
    if let Some((index, record)) = find_cache_hit(store, work, deep_verify)? {
        return take_cache_hit(store, work, index, record);
    }
    let target = &work.targets[0];
    let nothing_to_resume = store.entry(&target.destination).part.is_none();
    if member || (nothing_to_resume && !work.object().chunks.is_empty()) {
        // No part file (nor file descriptor) before a chunk arrives: a plan of 100,000 files must not
        // hold 100,000 open files. What opening it would refuse is refused now all the same.
        assembly::check_destination(store, target)?;
        return Ok(ScanFound::Missing);
    }
    let object_id = work.object().id.clone();
    let part = PartFile::open(store, target.clone())?;
    let digests = part.done().clone();
    if !part.is_complete() {
        let file = ChunkFile::Part(part.target().destination.clone());
        work.state = ObjectState::Assembling(Box::new(part));
        return Ok(ScanFound::Partial {
            object_id,
            file,
            digests,
            published: None,
        });
    }
    // An object with no missing chunks (empty, or fully resumed) is published right away.
    let (destination, _) = publish(work, Box::new(part), faults)?;
    let published = Event::FilePublished {
        object_id: object_id.clone(),
        destination: destination.display().to_string(),
        bytes: work.object().size,
    };
    Ok(ScanFound::Partial {
        object_id,
        file: ChunkFile::Placed(destination),
        digests,
        published: Some(published),
    })
}

/// Takes the file at `work.targets[index]`, a cache hit, as the object's: copied to the object's other
/// destinations that are not hits themselves, part files of other versions beside them removed.
fn take_cache_hit(store: &Arc<Store>, work: &mut ObjectWork, index: usize, record: FileRecord) -> Result<ScanFound> {
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
    work.state = ObjectState::Published(Box::new(record));
    Ok(ScanFound::Cached {
        object_id: work.object().id.clone(),
        path: source,
        digests,
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
