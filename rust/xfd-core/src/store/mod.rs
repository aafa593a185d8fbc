//! The node store: what xfd knows about the destinations of one node, kept in one directory of its own
//! (`state_dir`, by default `~/.cache/xfd` under the node root) and never beside the user's files.
//!
//! - `records.log`: append-only JSON lines, one [`Op`] each; replayed in order, they give each
//!   destination's [`Entry`]: the file xfd published there (identity, chunk digests, stamps), a publish
//!   in flight, the part file being assembled beside it and the chunks already in it, an unpacked tree.
//!   Each append is one `write` of whole lines; a line torn by a crash is skipped when read. The log is
//!   compacted (rewritten, synced, renamed) once it holds far more lines than live entries.
//! - `locks`: one byte-range lock (`F_OFD_SETLK`) per live run, its *run slot*; a run claims the
//!   destinations it writes in the log (`claim` lines naming its slot), and a claim holds while its run's
//!   byte is locked. The kernel drops a dead process's locks: there are no stale locks, and a dead run's
//!   claims mean nothing. (One kernel lock per destination was quadratic: see `locks.rs`.)
//!
//! A file at a destination is xfd's only when the store records it as published there and it is still
//! that file (same inode, same birth time where the file system keeps one): a record outlives the file
//! it describes when the user removes a directory, and must then not make the user's new file xfd's.
//!
//! Beside a destination `dir/name` there is only, while a run writes it, the part file
//! `dir/.name.xfd-part` (same file system: the finished file is renamed into place) and, while an
//! archive is unpacked, its staging tree. Both are announced in the log before they are created, so the
//! next run on the node, whatever its manifest, finds and removes what a killed run left.

mod inventory;
mod legacy;
mod locks;
mod log;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::assembly::FileIdentity;
use crate::error::{Error, Result};
use crate::unpack::UnpackReport;

pub use inventory::{
    CacheItem, ItemKind, ItemState, Keep, PruneAction, PruneItem, VerifyItem, VerifyOutcome, list, prune, verify,
};
pub use legacy::import_beside;
use locks::{LOG_SLOT, LockFile, new_run_slot, slot_of};
use log::Log;

/// What xfd put (or is putting) at a destination file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub identity: FileIdentity,
    /// Chunk id -> BLAKE3 hex digest of its bytes.
    pub chunks: BTreeMap<String, String>,
    /// The file's stamps: for a published file, taken once it was in place (a file whose stamps differ
    /// was touched since, and is re-hashed before it counts as a cache hit); for a publish in flight, the
    /// part file's (its inode is the destination's once the rename is done). Absent in records imported
    /// from sidecars written before stamps were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<FileStamp>,
    /// Where each chunk lies, for a file of more than one chunk (a chunk's id says nothing of its place):
    /// what lets `xfd cache verify` re-hash the file without its plan. Absent for a file of one chunk (it
    /// covers the whole file) and in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Box<ChunkLayout>>,
}

/// The chunks of a file in order, all `chunk_size` bytes but the last: as the planner cuts them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLayout {
    pub chunk_size: u64,
    /// Chunk ids in the order of their offsets.
    pub order: Vec<String>,
}

impl ChunkLayout {
    /// The layout of `spans` (ids, offsets and lengths): `None` for one chunk (nothing to say) or for
    /// spans that are not cut evenly from offset 0 (no plan makes those).
    pub fn of(spans: &[crate::assembly::ChunkSpan]) -> Option<Box<ChunkLayout>> {
        let chunk_size = spans.first()?.length;
        let even = spans.iter().enumerate().all(|(i, span)| {
            span.offset == i as u64 * chunk_size && (span.length == chunk_size || i + 1 == spans.len())
        });
        (spans.len() > 1 && even && chunk_size > 0).then(|| {
            Box::new(ChunkLayout {
                chunk_size,
                order: spans.iter().map(|s| s.id.clone()).collect(),
            })
        })
    }
}

/// What changes when a file's bytes may have: modification and status-change times, inode, size, and
/// the birth time where the file system keeps one. Times are nanoseconds since 1970 (an `i64` lasts until
/// 2262; serde cannot carry an `i128` through the log's tagged lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_ns: Option<i64>,
}

impl FileStamp {
    pub fn of(meta: &fs::Metadata) -> FileStamp {
        let ns = |secs: i64, nanos: i64| secs.saturating_mul(1_000_000_000).saturating_add(nanos);
        FileStamp {
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
            size: meta.len(),
            birth_ns: meta
                .created()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        }
    }

    /// `true` when `meta` is the file these stamps were taken of (edited or not): same inode, and same
    /// birth time when both are known. A file removed and another created in its place is not.
    pub fn same_file(&self, meta: &fs::Metadata) -> bool {
        let now = FileStamp::of(meta);
        self.inode == now.inode && (self.birth_ns.is_none() || now.birth_ns.is_none() || self.birth_ns == now.birth_ns)
    }

    /// `true` when `meta` is that file, untouched since.
    pub fn unchanged(&self, meta: &fs::Metadata) -> bool {
        let now = FileStamp::of(meta);
        let birth = self.birth_ns.is_none() || self.birth_ns == now.birth_ns;
        birth
            && (self.mtime_ns, self.ctime_ns, self.inode, self.size)
                == (now.mtime_ns, now.ctime_ns, now.inode, now.size)
    }
}

/// A part file beside a destination and the chunks in it (their bytes synced before they were recorded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub path: PathBuf,
    pub identity: FileIdentity,
    pub chunks: BTreeMap<String, String>,
}

/// An unpacked tree at a destination directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnpackRecord {
    /// The archive identity unpacked there; `None` while a swap is in flight (the destination is then
    /// xfd's, holding no known content, and the next unpack replaces it).
    pub identity: Option<String>,
    pub report: Option<UnpackReport>,
    /// Stamps of the trees xfd put (or is putting) there: the destination is xfd's while it is one of
    /// them. Empty for a record imported from a sidecar of the previous layout (trusted by presence).
    #[serde(default)]
    pub trees: Vec<FileStamp>,
}

impl UnpackRecord {
    /// `true` when the directory `meta` describes is one of the trees this record claims.
    pub fn owns(&self, meta: &fs::Metadata) -> bool {
        self.trees.is_empty() || self.trees.iter().any(|t| t.same_file(meta))
    }
}

/// The last run that found a published file or unpacked tree in place (a cache hit) or put it there,
/// and the artifact it was for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub artifact: String,
    /// When that run ended, in nanoseconds since 1970.
    pub at_ns: i64,
}

/// Everything the store knows about one destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub published: Option<Box<FileRecord>>,
    /// A publish in flight: written (and synced) before the rename into place.
    pub publishing: Option<Box<FileRecord>>,
    pub part: Option<Box<PartRecord>>,
    pub unpacked: Option<Box<UnpackRecord>>,
    /// An unpack builds (or built, before a crash) staging trees beside the destination.
    pub staging: bool,
    /// The run slot of the last run that claimed the destination: it holds it while that slot is locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<u64>,
    /// The artifact the published file or unpacked tree is for, and when a run last used it. Not part of
    /// [`Entry::ops`]: compaction writes it as grouped [`Op::Used`] lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<Usage>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self == &Entry::default()
    }

    /// The lines that recreate this entry (for compaction).
    fn ops(&self, destination: &Path) -> Vec<Op> {
        let dest = destination.to_owned();
        let mut ops = Vec::new();
        if let Some(record) = &self.published {
            ops.push(Op::Published {
                dest: dest.clone(),
                record: FileRecord::clone(record),
            });
        }
        if let Some(record) = &self.publishing {
            ops.push(Op::Publishing {
                dest: dest.clone(),
                record: FileRecord::clone(record),
            });
        }
        if let Some(part) = &self.part {
            ops.push(Op::Partial {
                dest: dest.clone(),
                part: part.path.clone(),
                identity: part.identity.clone(),
            });
            if !part.chunks.is_empty() {
                ops.push(Op::Chunks {
                    dest: dest.clone(),
                    chunks: part.chunks.clone(),
                });
            }
        }
        if let Some(record) = &self.unpacked {
            ops.push(Op::Unpacked {
                dest: dest.clone(),
                record: UnpackRecord::clone(record),
            });
        }
        if self.staging {
            ops.push(Op::Staging { dest: dest.clone() });
        }
        if let Some(run) = self.claim {
            ops.push(Op::Claim { dest, run });
        }
        ops
    }
}

/// One line of the log: a change to one destination's entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// The file at `dest` is xfd's, as `record` says; ends a publish in flight.
    Published { dest: PathBuf, record: FileRecord },
    /// A publish is about to rename a part file (stamped in `record`) onto `dest`.
    Publishing { dest: PathBuf, record: FileRecord },
    /// A part file for `identity` is about to be created (or started over) at `part`: no chunk in it yet.
    Partial {
        dest: PathBuf,
        part: PathBuf,
        identity: FileIdentity,
    },
    /// These chunks are in the part file, their bytes synced.
    Chunks {
        dest: PathBuf,
        chunks: BTreeMap<String, String>,
    },
    /// The tree at `dest` (or a swap in flight) is xfd's, as `record` says; ends its staging.
    Unpacked { dest: PathBuf, record: UnpackRecord },
    /// An unpack is about to build a staging tree beside `dest`.
    Staging { dest: PathBuf },
    /// The run whose run slot is `run` writes `dest` for as long as it holds that slot.
    Claim { dest: PathBuf, run: u64 },
    /// `what` is over: the file or tree is no longer xfd's, the part file or staging tree is gone, the
    /// publish in flight did not happen.
    Forget { dest: PathBuf, what: Facet },
    /// A run that ended at `at_ns` used the published files and unpacked trees at `dests` (found them
    /// cached or put them there) for `artifact`. One line for many destinations: a run of 100,000 files
    /// appends a few lines, once, when it ends. Destinations with nothing published are left alone.
    Used {
        at_ns: i64,
        artifact: String,
        dests: Vec<PathBuf>,
    },
}

/// Destinations per [`Op::Used`] line: a run of 100,000 files writes 25 lines of about 200 KB.
pub(crate) const USED_PER_LINE: usize = 4096;

/// The [`Op::Used`] lines that record `uses` (artifact, destination) at `at_ns`, grouped by artifact.
pub fn used_ops(at_ns: i64, uses: Vec<(String, PathBuf)>) -> Vec<Op> {
    let mut by_artifact: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for (artifact, dest) in uses {
        by_artifact.entry(artifact).or_default().push(dest);
    }
    let mut ops = Vec::new();
    for (artifact, dests) in by_artifact {
        for part in dests.chunks(USED_PER_LINE) {
            ops.push(Op::Used {
                at_ns,
                artifact: artifact.clone(),
                dests: part.to_vec(),
            });
        }
    }
    ops
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Facet {
    Published,
    Publishing,
    Part,
    Unpacked,
    Staging,
}

fn apply(entries: &mut HashMap<PathBuf, Entry>, op: Op) {
    if let Op::Used { at_ns, artifact, dests } = op {
        for dest in dests {
            if let Some(entry) = entries.get_mut(&dest)
                && (entry.published.is_some() || entry.unpacked.is_some())
            {
                let artifact = artifact.clone();
                entry.used = Some(Usage { artifact, at_ns });
            }
        }
        return;
    }
    let Some(dest) = op.dest().map(Path::to_owned) else {
        return;
    };
    let entry = entries.entry(dest.clone()).or_default();
    match op {
        Op::Published { record, .. } => {
            entry.published = Some(Box::new(record));
            entry.publishing = None;
        }
        Op::Publishing { record, .. } => entry.publishing = Some(Box::new(record)),
        Op::Partial { part, identity, .. } => {
            entry.part = Some(Box::new(PartRecord {
                path: part,
                identity,
                chunks: BTreeMap::new(),
            }));
        }
        Op::Chunks { chunks, .. } => {
            if let Some(part) = &mut entry.part {
                part.chunks.extend(chunks);
            }
        }
        Op::Unpacked { record, .. } => {
            entry.unpacked = Some(Box::new(record));
            entry.staging = false;
        }
        Op::Staging { .. } => entry.staging = true,
        Op::Claim { run, .. } => entry.claim = Some(run),
        Op::Forget { what, .. } => match what {
            Facet::Published => (entry.published, entry.used) = (None, None),
            Facet::Publishing => entry.publishing = None,
            Facet::Part => entry.part = None,
            Facet::Unpacked => (entry.unpacked, entry.used) = (None, None),
            Facet::Staging => entry.staging = false,
        },
        Op::Used { .. } => unreachable!("applied above"),
    }
    if entry.is_empty() {
        entries.remove(&dest);
    }
}

impl Op {
    /// The one destination the op changes; `None` for [`Op::Used`], which names many.
    pub fn dest(&self) -> Option<&Path> {
        match self {
            Op::Published { dest, .. }
            | Op::Publishing { dest, .. }
            | Op::Partial { dest, .. }
            | Op::Chunks { dest, .. }
            | Op::Unpacked { dest, .. }
            | Op::Staging { dest }
            | Op::Claim { dest, .. }
            | Op::Forget { dest, .. } => Some(dest),
            Op::Used { .. } => None,
        }
    }

    pub fn forget(dest: &Path, what: Facet) -> Op {
        Op::Forget {
            dest: dest.to_owned(),
            what,
        }
    }
}

/// The store of one node, opened by one engine (or one unpack): its locks are this open's own.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    locks: LockFile,
    log: Mutex<Log>,
    /// The destinations this store holds, and the run slot it holds them under.
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// Destination numbers ([`slot_of`]): a destination is never taken twice through one store.
    destinations: HashSet<u64>,
    /// Locked while `destinations` is not empty; a new one for each stretch (the claims of a slot that
    /// was let go must never count again).
    run: Option<u64>,
}

/// A destination held by one store: no other run writes it while this lives. Dropping it lets go.
#[derive(Debug)]
pub struct DestinationLock {
    store: Arc<Store>,
    slot: u64,
}

impl DestinationLock {
    /// `true` while the lock still means something: not once the store's directory was removed and a
    /// newer run made a new one, whose locks know nothing of this one.
    pub fn still_guards(&self) -> bool {
        self.store.locks.still_here()
    }
}

impl Drop for DestinationLock {
    fn drop(&mut self) {
        // Under the set's lock: a destination taken meanwhile must not find its run slot let go.
        let mut held = self.store.held.lock().unwrap();
        held.destinations.remove(&self.slot);
        if held.destinations.is_empty()
            && let Some(run) = held.run.take()
        {
            self.store.locks.unlock(run);
        }
    }
}

impl Store {
    /// Opens (creating it if needed) the store in `dir` and reads its log.
    pub fn open(dir: &Path) -> Result<Arc<Store>> {
        crate::assembly::create_dirs(dir)?;
        let locks_path = dir.join("locks");
        let locks = LockFile::open(&locks_path).map_err(|e| Error::io("open", &locks_path, e))?;
        let log_path = dir.join("records.log");
        let log = Log::open(&log_path).map_err(|e| Error::io("read", &log_path, e))?;
        Ok(Arc::new(Store {
            dir: dir.to_owned(),
            locks,
            log: Mutex::new(log),
            held: Mutex::new(Held::default()),
        }))
    }

    /// The store in `dir` when one was ever made there (a node where xfd never ran has none: looking at
    /// it must not make one).
    pub fn open_existing(dir: &Path) -> Result<Option<Arc<Store>>> {
        match fs::symlink_metadata(dir.join("records.log")) {
            Ok(_) => Store::open(dir).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", dir.join("records.log"), e)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records that a run that ends now used these (artifact, destination) pairs: one append, a few
    /// lines ([`used_ops`]), whatever their number.
    pub fn record_use(&self, uses: Vec<(String, PathBuf)>) -> Result<()> {
        let at_ns = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        self.append(&used_ops(at_ns, uses))
    }

    /// Whether a live run of another store holds `destination` now (its last claim's run slot is
    /// locked). Reads only: nothing is claimed.
    pub fn held_elsewhere(&self, destination: &Path) -> Result<bool> {
        let claim = self.entry(destination).claim;
        let held = self.held.lock().unwrap();
        match claim {
            Some(run) if held.run == Some(run) => Ok(true),
            Some(run) => self
                .locks
                .held_elsewhere(run)
                .map_err(|e| Error::io("lock", self.dir.join("locks"), e)),
            None => Ok(false),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("records.log")
    }

    /// Takes the destination's lock; refuses at once when another run (or this store) holds it:
    /// waiting could outlast the caller's patience without saying why.
    pub fn lock(self: &Arc<Self>, destination: &Path) -> Result<DestinationLock> {
        self.try_lock(destination)?.ok_or_else(|| Error::DestinationBusy {
            path: destination.to_owned(),
        })
    }

    /// The destination's lock, or `None` when someone holds it.
    pub fn try_lock(self: &Arc<Self>, destination: &Path) -> Result<Option<DestinationLock>> {
        Ok(self
            .try_lock_all(&[destination])?
            .ok()
            .and_then(|mut locks| locks.pop()))
    }

    /// Takes every destination's lock together, in one pass over the log: `Err(path)` names the first
    /// one another live run (or this store) holds, and then none is taken.
    pub fn try_lock_all(
        self: &Arc<Self>,
        destinations: &[&Path],
    ) -> Result<std::result::Result<Vec<DestinationLock>, PathBuf>> {
        let mut held = self.held.lock().unwrap();
        let slots: Vec<u64> = destinations.iter().map(|d| slot_of(d)).collect();
        let mut asked = HashSet::with_capacity(slots.len());
        if let Some(i) = (0..slots.len()).find(|&i| held.destinations.contains(&slots[i]) || !asked.insert(slots[i])) {
            return Ok(Err(destinations[i].to_owned()));
        }
        let run = match held.run {
            Some(run) => run,
            None => self.take_run_slot()?,
        };
        let claimed = self
            .with_log(|log| self.claim(log, destinations, run))
            .map_err(|e| Error::io("lock", self.log_path(), e));
        if !matches!(claimed, Ok(None)) {
            if held.run.is_none() {
                self.locks.unlock(run); // taken for this request only
            }
            return claimed.map(|busy| Err(busy.expect("checked above")));
        }
        held.run = Some(run);
        held.destinations.extend(slots.iter().copied());
        let locks = slots.into_iter().map(|slot| DestinationLock {
            store: self.clone(),
            slot,
        });
        Ok(Ok(locks.collect()))
    }

    /// Locks a new run slot (random: two stores never pick the same one but by a 2^-61 chance, retried).
    fn take_run_slot(&self) -> Result<u64> {
        let path = self.dir.join("locks");
        loop {
            let slot = new_run_slot();
            if self.locks.try_lock(slot).map_err(|e| Error::io("lock", &path, e))? {
                return Ok(slot);
            }
        }
    }

    /// Under the log's lock: `None` once every destination is claimed for `run`, or the first one a live
    /// run of another store claims (nothing claimed then).
    fn claim(&self, log: &mut Log, destinations: &[&Path], run: u64) -> std::io::Result<Option<PathBuf>> {
        log.refresh()?;
        let mut alive: HashMap<u64, bool> = HashMap::new();
        for destination in destinations {
            let Some(other) = log.entries.get(*destination).and_then(|e| e.claim) else {
                continue;
            };
            if other == run {
                continue;
            }
            let live = match alive.get(&other) {
                Some(live) => *live,
                None => *alive.entry(other).or_insert(self.locks.held_elsewhere(other)?),
            };
            if live {
                return Ok(Some(destination.to_path_buf()));
            }
        }
        let claims: Vec<Op> = destinations
            .iter()
            .map(|d| Op::Claim {
                dest: d.to_path_buf(),
                run,
            })
            .collect();
        log.append(&claims)?;
        Ok(None)
    }

    /// What the store knows about `destination` (an empty entry when nothing).
    pub fn entry(&self, destination: &Path) -> Entry {
        let log = self.log.lock().unwrap();
        log.entries.get(destination).cloned().unwrap_or_default()
    }

    /// Every destination with something recorded, and its entry.
    pub fn entries(&self) -> Vec<(PathBuf, Entry)> {
        let log = self.log.lock().unwrap();
        let mut all: Vec<_> = log
            .entries
            .iter()
            .filter(|(_, e)| !e.is_empty())
            .map(|(d, e)| (d.clone(), e.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Appends `ops` as one write. They reach the disk with a later [`Store::append_durable`] or
    /// [`Store::sync`], or with the kernel's writeback: enough for records whose loss only costs work
    /// (a chunk fetched again, a file re-hashed), never a wrong answer.
    pub fn append(&self, ops: &[Op]) -> Result<()> {
        self.write(ops).map(|_| ())
    }

    /// Appends `ops` and returns once they are on disk: for records that must precede a change of the
    /// destination (a publish in flight, before its rename).
    pub fn append_durable(&self, ops: &[Op]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let file = self.write(ops)?;
        file.sync_data().map_err(|e| Error::io("sync", self.log_path(), e))
    }

    /// Puts every record appended so far on disk (the end of a run).
    pub fn sync(&self) -> Result<()> {
        let file = self.log.lock().unwrap().file();
        file.sync_data().map_err(|e| Error::io("sync", self.log_path(), e))
    }

    /// Reads what other runs appended since this store last looked (call after locking destinations:
    /// their entries are then final until the locks go).
    pub fn refresh(&self) -> Result<()> {
        let mut log = self.log.lock().unwrap();
        log.refresh().map_err(|e| Error::io("read", self.log_path(), e))
    }

    /// Removes what killed runs left beside destinations no live run holds: the part files and unpack
    /// staging trees the log announced, then their records. Destinations this store holds are its
    /// caller's own (resumed, not removed). Only xfd's own names beside each destination are removed
    /// (a part path that is not `.name.xfd-part` is only forgotten). Tidying: a file that cannot be
    /// removed keeps its record for a later run. Returns how many destinations were cleaned.
    pub fn remove_leftovers(self: &Arc<Self>) -> Result<usize> {
        let candidates: Vec<PathBuf> = {
            let log = self.log.lock().unwrap();
            let mut found: Vec<_> = log
                .entries
                .iter()
                .filter(|(_, e)| e.part.is_some() || e.staging)
                .map(|(d, _)| d.clone())
                .collect();
            found.sort();
            found
        };
        let mut cleaned = 0;
        for destination in candidates {
            let Some(_lock) = self.try_lock(&destination)? else {
                continue; // a live run's (or this store's own)
            };
            self.refresh()?; // what it is now that no one else can change it
            let entry = self.entry(&destination);
            let mut ops = Vec::new();
            if let Some(part) = &entry.part {
                let ours = part.path == crate::assembly::part_path(&destination);
                let gone = || match fs::remove_file(&part.path) {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                };
                if !ours || gone() {
                    ops.push(Op::forget(&destination, Facet::Part));
                }
            }
            if entry.staging && crate::unpack::remove_leftovers(&destination).is_ok() {
                ops.push(Op::forget(&destination, Facet::Staging));
            }
            if !ops.is_empty() {
                self.append(&ops)?;
                cleaned += 1;
            }
        }
        Ok(cleaned)
    }

    fn write(&self, ops: &[Op]) -> Result<Arc<std::fs::File>> {
        let written = self.with_log(|log| log.append(ops).map(|()| log.file()));
        written.map_err(|e| Error::io("write", self.log_path(), e))
    }

    /// Runs `work` on the log with the log's lock held (other processes' appends wait), then compacts
    /// the log if it grew far past its live entries.
    fn with_log<T>(&self, work: impl FnOnce(&mut Log) -> std::io::Result<T>) -> std::io::Result<T> {
        let mut log = self.log.lock().unwrap();
        self.locks.lock_wait(LOG_SLOT)?;
        let done = work(&mut log);
        if done.is_ok() && log.needs_compaction() {
            // Best effort: a failed compaction leaves the complete log as it was.
            let _ = log.compact();
        }
        self.locks.unlock(LOG_SLOT);
        done
    }
}
