//! Assembly and publish: chunks land in a part file beside the destination; the finished file is
//! renamed into place whole, and the node store ([`crate::store`]) records what it is.
//!
//! Beside a destination `dir/name` xfd keeps one file, and only while a run writes it:
//! `dir/.name.xfd-part`, the file being assembled, preallocated to its final size (beside it so that the
//! rename into place is atomic). Everything else is in the store: the part file's announcement (made
//! before it is created, so a killed run's part file is found by the next run), the chunks already in
//! it with their digests (a later run resumes with only the missing ones; each recorded chunk is
//! re-hashed before it is trusted), the record of a publish in flight, the published file's record
//! (object identity, chunk digests, stamps), and the destination's lock.
//!
//! A file at a destination that the store does not record as published by xfd, or that is no longer the
//! file xfd published there (another inode), is the user's: never replaced unless `overwrite` is set.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::faults::{Faults, Point};
use crate::hash::{ChunkDigest, hash_file_range};
use crate::store::{Facet, Op, Store};

pub use crate::store::{FileRecord, FileStamp};

mod batch;
pub use batch::{SmallFile, publish_small};

/// Everything that makes a file "the same": where it came from and which version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub store_url: String,
    pub key: String,
    pub etag: Option<String>,
    pub version: Option<String>,
    pub size: u64,
}

/// One chunk of a file: its plan id and byte range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    pub id: String,
    pub offset: u64,
    pub length: u64,
}

/// A file this node must produce.
#[derive(Clone, Debug)]
pub struct FileTarget {
    pub destination: PathBuf,
    pub identity: FileIdentity,
    pub chunks: Vec<ChunkSpan>,
    pub sha256: Option<String>,
    pub overwrite: bool,
}

/// What is at a destination now, compared with what the plan wants there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheState {
    /// Nothing there yet.
    Absent,
    /// The wanted file, published by xfd and untouched since: its chunks can be served to peers at once.
    Hit(FileRecord),
    /// The wanted file as xfd published it, but touched since (or recorded before stamps were kept): a
    /// cache hit only if its bytes still hash to the record's digests ([`deep_verify`]).
    Touched(FileRecord),
    /// The file xfd published there for another identity (an older version): safe to replace.
    Stale,
    /// Something xfd did not put there: replaced only with `overwrite`.
    Foreign,
}

pub fn part_path(destination: &Path) -> PathBuf {
    destination.with_file_name(hidden_name(destination, ".xfd-part"))
}

/// Creates `dir` and its missing parents. A file where a directory must be (`/models` a file, for
/// `/models/m.bin`) is named as the obstacle it is, not as the bare `EEXIST`/`ENOTDIR` the OS gives.
pub(crate) fn create_dirs(dir: &Path) -> Result<()> {
    let error = match fs::create_dir_all(dir) {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    let blocker = dir
        .ancestors()
        .find(|a| fs::symlink_metadata(a).is_ok_and(|m| !m.is_dir()));
    match blocker {
        Some(blocker) => Err(Error::NotADirectory {
            blocker: blocker.to_owned(),
            needed: dir.to_owned(),
        }),
        None => Err(Error::io("create directory", dir, error)),
    }
}

/// Removes an unpublished part file, then its record: for a file whose writes the disk refused (so a
/// full disk gets its space back), a run that recorded nothing, or a part no longer wanted. Tidying
/// only: errors are ignored (a record left behind is forgotten by the next run that finds no file).
pub fn discard_part(store: &Store, destination: &Path) {
    let _ = fs::remove_file(part_path(destination));
    let _ = store.append(&[Op::forget(destination, Facet::Part)]);
}

/// Removes every file or tree in `dir` whose name starts with one of `prefixes`: for the leftovers of
/// a crashed run, named after the destination they belong to (errors ignored: it is tidying only).
pub(crate) fn remove_entries_named(dir: &Path, prefixes: &[&std::ffi::OsStr]) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if prefixes
            .iter()
            .any(|p| name.as_encoded_bytes().starts_with(p.as_encoded_bytes()))
        {
            let path = entry.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

/// `.<destination's name><suffix>`: the name of what xfd keeps beside a destination while it works.
fn hidden_name(destination: &Path, suffix: &str) -> String {
    let name = destination.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    format!(".{name}{suffix}")
}

/// Compares the destination with `identity` by size and the store's record; cheap (no hashing).
pub fn inspect(store: &Store, destination: &Path, identity: &FileIdentity) -> Result<CacheState> {
    let meta = match fs::symlink_metadata(destination) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CacheState::Absent),
        Err(e) => return Err(Error::io("stat", destination, e)),
    };
    let Some(record) = store.entry(destination).published else {
        return Ok(CacheState::Foreign);
    };
    if !meta.is_file() {
        return Ok(CacheState::Foreign);
    }
    if &record.identity == identity && meta.len() == identity.size {
        if record.stamp.is_some_and(|s| s.unchanged(&meta)) {
            Ok(CacheState::Hit(*record))
        } else {
            Ok(CacheState::Touched(*record))
        }
    } else if is_the_published_file(&record, &meta) {
        Ok(CacheState::Stale)
    } else {
        Ok(CacheState::Foreign)
    }
}

/// `true` when `meta` is the file `record` describes (edited or not), not one put in its place since:
/// a record outlives its file when the user removes a directory, and must not make the user's next
/// file at that name xfd's. Records imported from sidecars without stamps are trusted by presence.
fn is_the_published_file(record: &FileRecord, meta: &fs::Metadata) -> bool {
    record.stamp.is_none_or(|stamp| stamp.same_file(meta))
}

/// Re-hashes every chunk of a cache hit against its record: `true` when all match.
pub fn deep_verify(destination: &Path, target: &FileTarget, record: &FileRecord) -> Result<bool> {
    for chunk in &target.chunks {
        let digest = hash_file_range(destination, chunk.offset, Some(chunk.length))?;
        if record.chunks.get(&chunk.id) != Some(&digest.to_hex()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What must hold before a file is assembled for `target`: its directory exists (made now), a publish a
/// crash interrupted is settled, and no user's file is in the way (unless `overwrite`).
pub fn check_destination(store: &Store, target: &FileTarget) -> Result<()> {
    let parent = target.destination.parent().unwrap_or(Path::new("/"));
    create_dirs(parent)?;
    recover_interrupted_publish(store, target)?;
    refuse_foreign(store, target)
}

/// A file being assembled from chunks, in its part file beside the destination.
pub struct PartFile {
    store: Arc<Store>,
    target: FileTarget,
    file: Arc<File>,
    done: BTreeMap<String, ChunkDigest>,
}

impl PartFile {
    /// Opens the part file, keeping the chunks an interrupted run recorded (after re-hashing them),
    /// or creates it preallocated, announced in the store first. Refuses a destination that holds a
    /// user's file unless `overwrite`. The caller holds the destination's lock.
    pub fn open(store: &Arc<Store>, target: FileTarget) -> Result<PartFile> {
        check_destination(store, &target)?;
        let part = part_path(&target.destination);
        let recorded = store.entry(&target.destination).part;
        let resumed = resumable_chunks(&target, &part, recorded.as_deref());
        let unchanged = recorded
            .as_ref()
            .is_some_and(|r| r.path == part && r.identity == target.identity && r.chunks.keys().eq(resumed.keys()));
        if !unchanged {
            // Announced before the file is created (or started over): a run killed from here on leaves
            // a part file the next run knows about.
            let dest = target.destination.clone();
            let mut ops = vec![Op::Partial {
                dest: dest.clone(),
                part: part.clone(),
                identity: target.identity.clone(),
            }];
            if !resumed.is_empty() {
                let chunks = resumed.iter().map(|(id, d)| (id.clone(), d.to_hex())).collect();
                ops.push(Op::Chunks { dest, chunks });
            }
            store.append(&ops)?;
        }
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(resumed.is_empty())
            .custom_flags(libc::O_NOFOLLOW)
            .open(&part)
            .map_err(|e| Error::io("create", &part, e))?;
        file.set_len(target.identity.size)
            .map_err(|e| Error::io("preallocate", &part, e))?;
        Ok(PartFile {
            store: store.clone(),
            target,
            file: Arc::new(file),
            done: resumed,
        })
    }

    /// The store this part file is recorded in.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The open part file, for positional writes of chunks.
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn path(&self) -> PathBuf {
        part_path(&self.target.destination)
    }

    pub fn target(&self) -> &FileTarget {
        &self.target
    }

    /// Chunks already in the part file (resumed or recorded), with their digests.
    pub fn done(&self) -> &BTreeMap<String, ChunkDigest> {
        &self.done
    }

    pub fn missing(&self) -> Vec<ChunkSpan> {
        self.target
            .chunks
            .iter()
            .filter(|c| !self.done.contains_key(&c.id))
            .cloned()
            .collect()
    }

    pub fn is_complete(&self) -> bool {
        self.target.chunks.iter().all(|c| self.done.contains_key(&c.id))
    }

    /// Records that a chunk's bytes are in the part file. Its data reaches the disk before the record
    /// is written, so a record never points at bytes a crash lost. The record itself need not be synced:
    /// losing it only costs the chunk's transfer again.
    pub fn record(&mut self, chunk_id: &str, digest: ChunkDigest) -> Result<()> {
        if !self.target.chunks.iter().any(|c| c.id == chunk_id) {
            return Err(Error::InvalidPlan(format!(
                "chunk {chunk_id} is not part of {}",
                self.target.destination.display()
            )));
        }
        let completes = !self.done.contains_key(chunk_id) && self.done.len() + 1 == self.target.chunks.len();
        self.done.insert(chunk_id.to_owned(), digest);
        if completes {
            // The file is published right after this: publish syncs it, and a crash before that only
            // costs this one chunk again. Skipping the sync and the resume record here halves the disk
            // flushes of a one-chunk file (docs/benchmarks.md, "Chunk size on one 1 GiB file": small files).
            return Ok(());
        }
        self.file.sync_data().map_err(|e| Error::io("sync", self.path(), e))?;
        self.store.append(&[Op::Chunks {
            dest: self.target.destination.clone(),
            chunks: BTreeMap::from([(chunk_id.to_owned(), digest.to_hex())]),
        }])
    }

    /// Verifies the optional whole-file SHA-256, then moves the file into place and records it.
    /// Until this returns, the destination holds either its old content or nothing: never a partial file.
    pub fn publish(self) -> Result<FileRecord> {
        self.publish_with(&Faults::default())
    }

    /// [`PartFile::publish`], with the `publish` fault point just before the rename.
    pub fn publish_with(self, faults: &Faults) -> Result<FileRecord> {
        if let Some(missing) = self.missing().first() {
            return Err(Error::InvalidPlan(format!(
                "cannot publish {}: chunk {} is missing",
                self.target.destination.display(),
                missing.id
            )));
        }
        let part = self.path();
        let destination = &self.target.destination;
        if let Some(expected) = &self.target.sha256 {
            let actual = sha256_of(&part)?;
            if &actual != expected {
                // Which chunk is wrong cannot be known: start the file over on the next run.
                discard_part(&self.store, destination);
                return Err(Error::Sha256Mismatch {
                    path: destination.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        refuse_foreign(&self.store, &self.target)?;
        self.file.sync_all().map_err(|e| Error::io("sync", &part, e))?;
        if fs::symlink_metadata(destination).is_ok_and(|m| m.is_dir()) {
            return Err(Error::DestinationExists {
                path: destination.clone(),
            });
        }
        let record = FileRecord {
            identity: self.target.identity.clone(),
            chunks: self.done.iter().map(|(id, d)| (id.clone(), d.to_hex())).collect(),
            stamp: None,
            layout: crate::store::ChunkLayout::of(&self.target.chunks),
        };
        put_in_place(&self.store, &part, destination, record, faults)
    }
}

/// Renames `part` onto `destination` and records it, crash-safely: the record of the publish in flight
/// (with the part file's stamps) is on disk before the rename. A crash between the rename and the final
/// record would otherwise leave a file the store does not know, which the next run must treat as the
/// user's; with it, the next run sees that the file at the destination is that part file (same inode)
/// and finishes the publish, or drops the record when it is not.
fn put_in_place(
    store: &Store,
    part: &Path,
    destination: &Path,
    record: FileRecord,
    faults: &Faults,
) -> Result<FileRecord> {
    let meta = fs::symlink_metadata(part).map_err(|e| Error::io("stat", part, e))?;
    let publishing = FileRecord {
        stamp: Some(FileStamp::of(&meta)),
        ..record.clone()
    };
    store.append_durable(&[Op::Publishing {
        dest: destination.to_owned(),
        record: publishing,
    }])?;
    faults.crash_point(Point::Publish);
    fs::rename(part, destination).map_err(|e| Error::io("rename into place", destination, e))?;
    sync_directory(destination)?;
    sealed(store, destination, &record, &[Op::forget(destination, Facet::Part)])
}

/// Records `record` as the published file's, with the file's stamps as they are now (for a file that
/// was touched but whose bytes verified: trusted again from now on).
pub fn seal(store: &Store, destination: &Path, record: &FileRecord) -> Result<FileRecord> {
    sealed(store, destination, record, &[])
}

fn sealed(store: &Store, destination: &Path, record: &FileRecord, also: &[Op]) -> Result<FileRecord> {
    let meta = fs::symlink_metadata(destination).map_err(|e| Error::io("stat", destination, e))?;
    let sealed = FileRecord {
        stamp: Some(FileStamp::of(&meta)),
        ..record.clone()
    };
    let mut ops = vec![Op::Published {
        dest: destination.to_owned(),
        record: sealed.clone(),
    }];
    ops.extend_from_slice(also);
    // Not synced: if lost, the record of the publish in flight (synced) is still there and the next
    // run finishes the publish again.
    store.append(&ops)?;
    Ok(sealed)
}

/// Finishes a publish that a crash interrupted between its rename and its record (see
/// [`put_in_place`]): when the file at the destination is the part file the record of the publish in
/// flight describes (same inode), the record becomes the published file's (a cache hit once its bytes
/// are re-hashed: the rename changed its status time). Otherwise the rename did not happen, or the file
/// was replaced since, and the record is dropped. Free when there is no such record.
pub fn recover_interrupted_publish(store: &Store, target: &FileTarget) -> Result<()> {
    let destination = &target.destination;
    let Some(record) = store.entry(destination).publishing else {
        return Ok(());
    };
    let meta = fs::symlink_metadata(destination).ok().filter(fs::Metadata::is_file);
    let renamed = match (&record.stamp, &meta) {
        (Some(stamp), Some(meta)) => stamp.same_file(meta),
        // From a sidecar of the previous layout (no stamps): the bytes must prove it.
        (None, Some(meta)) => {
            record.identity == target.identity
                && meta.len() == target.identity.size
                && deep_verify(destination, target, &record)?
        }
        (_, None) => false,
    };
    if !renamed {
        return store.append(&[Op::forget(destination, Facet::Publishing)]);
    }
    if record.stamp.is_none() {
        sealed(store, destination, &record, &[Op::forget(destination, Facet::Part)])?;
        return Ok(());
    }
    store.append(&[
        Op::Published {
            dest: destination.clone(),
            record: *record,
        },
        Op::forget(destination, Facet::Part),
    ])
}

/// Copies a published file to another destination of the same object (same checks, same record).
pub fn publish_copy(store: &Store, source: &Path, record: &FileRecord, target: &FileTarget) -> Result<FileRecord> {
    refuse_foreign(store, target)?;
    let parent = target.destination.parent().unwrap_or(Path::new("/"));
    create_dirs(parent)?;
    let part = part_path(&target.destination);
    store.append(&[Op::Partial {
        dest: target.destination.clone(),
        part: part.clone(),
        identity: target.identity.clone(),
    }])?;
    // Removed first: `fs::copy` would write through a symlink planted at the part file's name.
    let _ = fs::remove_file(&part);
    fs::copy(source, &part).map_err(|e| Error::io("copy", &part, e))?;
    File::open(&part)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("sync", &part, e))?;
    let record = FileRecord {
        stamp: None,
        ..record.clone()
    };
    put_in_place(store, &part, &target.destination, record, &Faults::default())
}

/// Refuses to replace a user's file: one the store does not record as xfd's, or a file put in place of
/// the one xfd published (whose bytes, or the scan would have found a cache hit, are not the wanted ones).
fn refuse_foreign(store: &Store, target: &FileTarget) -> Result<()> {
    if target.overwrite {
        return Ok(());
    }
    let users = match inspect(store, &target.destination, &target.identity)? {
        CacheState::Foreign => true,
        CacheState::Touched(record) => {
            fs::symlink_metadata(&target.destination).is_ok_and(|meta| !is_the_published_file(&record, &meta))
        }
        _ => false,
    };
    if users {
        return Err(Error::DestinationExists {
            path: target.destination.clone(),
        });
    }
    Ok(())
}

/// The recorded chunks of the part file that still hash to their digests, if the record is for this
/// part file and identity.
fn resumable_chunks(
    target: &FileTarget,
    part: &Path,
    recorded: Option<&crate::store::PartRecord>,
) -> BTreeMap<String, ChunkDigest> {
    let Some(recorded) = recorded else {
        return BTreeMap::new();
    };
    let part_ok = fs::symlink_metadata(part).is_ok_and(|m| m.is_file() && m.len() == target.identity.size);
    if recorded.path != part || recorded.identity != target.identity || !part_ok {
        return BTreeMap::new();
    }
    target
        .chunks
        .iter()
        .filter_map(|chunk| {
            let digest = recorded.chunks.get(&chunk.id)?;
            let actual = hash_file_range(part, chunk.offset, Some(chunk.length)).ok()?;
            (&actual.to_hex() == digest).then(|| (chunk.id.clone(), actual))
        })
        .collect()
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(|e| Error::io("read", path, e))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn sync_directory(path: &Path) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync", parent, e))
}
