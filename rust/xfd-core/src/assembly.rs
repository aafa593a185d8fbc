//! Assembly and publish: chunks land in a part file beside the destination; the finished file is
//! renamed into place whole, then a cache sidecar records what it is.
//!
//! Beside a destination `dir/name` xfd keeps, all hidden:
//! - `dir/.name.xfd-part`: the file being assembled, preallocated to its final size;
//! - `dir/.name.xfd-state.json`: the chunks already in the part file, with their digests, so a later
//!   run resumes with only the missing ones (each recorded chunk is re-hashed before it is trusted);
//! - `dir/.name.xfd.json`: the sidecar of a published file (object identity, size, chunk digests);
//! - `dir/.name.xfd-publishing.json`: the sidecar-to-be, only while the file is renamed into place;
//! - `dir/.name.xfd-lock`: an empty file, locked (`flock`) by the run writing the destination while
//!   it runs, so two runs on one node never write the same part file.
//!   A destination with a sidecar was written by xfd; one without is the user's and is never replaced
//!   unless `overwrite` is set.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::faults::{Faults, Point};
use crate::hash::{ChunkDigest, hash_file_range};

pub const SIDECAR_FORMAT: &str = "xfd.file/1";

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

/// The record beside a published file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub format: String,
    pub identity: FileIdentity,
    /// Chunk id -> BLAKE3 hex digest of its bytes.
    pub chunks: BTreeMap<String, String>,
    /// The published file's stamps, taken once it was in place: a file whose stamps differ was touched
    /// since (edited in place keeping its size, replaced, restored from a backup) and is re-hashed
    /// before it counts as a cache hit. Absent in records written before stamps were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<FileStamp>,
}

/// What changes when a file's bytes may have: modification and status-change times, inode, size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub inode: u64,
    pub size: u64,
}

impl FileStamp {
    pub fn of(meta: &fs::Metadata) -> FileStamp {
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        FileStamp {
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
            size: meta.len(),
        }
    }
}

/// What is at a destination now, compared with what the plan wants there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheState {
    /// Nothing there yet.
    Absent,
    /// The wanted file, published by xfd and untouched since: its chunks can be served to peers at once.
    Hit(Sidecar),
    /// The wanted file as xfd published it, but touched since (or published before stamps were kept):
    /// a cache hit only if its bytes still hash to the sidecar's digests ([`deep_verify`]).
    Touched(Sidecar),
    /// A file xfd wrote for another identity (an older version): safe to replace.
    Stale,
    /// Something xfd did not write: replaced only with `overwrite`.
    Foreign,
}

pub fn sidecar_path(destination: &Path) -> PathBuf {
    hidden_beside(destination, ".xfd.json")
}

pub fn part_path(destination: &Path) -> PathBuf {
    hidden_beside(destination, ".xfd-part")
}

pub fn lock_path(destination: &Path) -> PathBuf {
    hidden_beside(destination, ".xfd-lock")
}

/// A destination's lock: held while this value lives; the lock file is removed when it is dropped.
#[derive(Debug)]
pub struct DestinationLock {
    path: PathBuf,
    file: File,
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

/// Takes the destination's lock; refuses at once when another run holds it (waiting could outlast the
/// caller's patience without saying why).
pub fn lock_destination(destination: &Path) -> Result<DestinationLock> {
    let parent = destination.parent().unwrap_or(Path::new("/"));
    create_dirs(parent)?;
    let path = lock_path(destination);
    loop {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::DestinationBusy {
                    path: destination.to_owned(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
        // The holder removes the lock file as it lets go: a lock on a file no longer at `path` is
        // worthless (the next run would lock a new file there), so take the one that is there now.
        if same_file(&file, &path) {
            return Ok(DestinationLock { path, file });
        }
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

impl DestinationLock {
    /// `true` while the lock file at the destination is still the one this lock holds. It is not once
    /// the directory was cleared and a newer run locked a new file there: this lock then guards nothing,
    /// and what is at the destination's names is that run's.
    pub fn still_guards(&self) -> bool {
        same_file(&self.file, &self.path)
    }
}

impl Drop for DestinationLock {
    fn drop(&mut self) {
        // Removed while still locked, so no other run can be holding this file's lock meanwhile; and
        // only if it is still this lock's file, never a newer run's.
        if self.still_guards() {
            let _ = fs::remove_file(&self.path);
        }
        let _ = self.file.unlock();
    }
}

/// Removes an unpublished part file and its resume record: for a file whose writes the disk refused,
/// so a full disk gets its space back.
pub fn discard_part(destination: &Path) {
    let _ = fs::remove_file(part_path(destination));
    let _ = fs::remove_file(state_path(destination));
}

/// Name prefix of the scratch files an endgame duplicate of one of the destination's chunks uses.
pub fn duplicate_prefix(destination: &Path) -> String {
    hidden_name(destination, ".xfd-duplicate-")
}

/// Removes duplicate scratch files a crashed run left beside the destination; call with its lock held.
pub fn remove_duplicate_scratch(destination: &Path) {
    let parent = destination.parent().unwrap_or(Path::new("/"));
    remove_entries_named(parent, &[duplicate_prefix(destination).as_ref()]);
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

fn publishing_path(destination: &Path) -> PathBuf {
    hidden_beside(destination, ".xfd-publishing.json")
}

fn state_path(destination: &Path) -> PathBuf {
    hidden_beside(destination, ".xfd-state.json")
}

fn hidden_beside(destination: &Path, suffix: &str) -> PathBuf {
    destination.with_file_name(hidden_name(destination, suffix))
}

/// `.<destination's name><suffix>`: the name of everything xfd keeps beside a destination.
fn hidden_name(destination: &Path, suffix: &str) -> String {
    let name = destination.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    format!(".{name}{suffix}")
}

/// Compares the destination with `identity` by size and sidecar; cheap (no hashing).
pub fn inspect(destination: &Path, identity: &FileIdentity) -> Result<CacheState> {
    let meta = match fs::symlink_metadata(destination) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CacheState::Absent),
        Err(e) => return Err(Error::io("stat", destination, e)),
    };
    let Some(sidecar) = read_json::<Sidecar>(&sidecar_path(destination)) else {
        return Ok(CacheState::Foreign);
    };
    if !meta.is_file() {
        return Ok(CacheState::Foreign);
    }
    if sidecar.format == SIDECAR_FORMAT && &sidecar.identity == identity && meta.len() == identity.size {
        if sidecar.stamp == Some(FileStamp::of(&meta)) {
            Ok(CacheState::Hit(sidecar))
        } else {
            Ok(CacheState::Touched(sidecar))
        }
    } else {
        Ok(CacheState::Stale)
    }
}

/// Re-hashes every chunk of a cache hit against its sidecar: `true` when all match.
pub fn deep_verify(destination: &Path, target: &FileTarget, sidecar: &Sidecar) -> Result<bool> {
    for chunk in &target.chunks {
        let digest = hash_file_range(destination, chunk.offset, Some(chunk.length))?;
        if sidecar.chunks.get(&chunk.id) != Some(&digest.to_hex()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A file being assembled from chunks, in its part file beside the destination.
pub struct PartFile {
    target: FileTarget,
    file: Arc<File>,
    done: BTreeMap<String, ChunkDigest>,
}

#[derive(Serialize, Deserialize)]
struct PartState {
    identity: FileIdentity,
    chunks: BTreeMap<String, String>,
}

impl PartFile {
    /// Opens the part file, keeping the chunks an interrupted run recorded (after re-hashing them),
    /// or creates it preallocated. Refuses a destination that holds a user's file unless `overwrite`.
    pub fn open(target: FileTarget) -> Result<PartFile> {
        let parent = target.destination.parent().unwrap_or(Path::new("/"));
        create_dirs(parent)?;
        recover_interrupted_publish(&target)?;
        refuse_foreign(&target)?;
        let part = part_path(&target.destination);
        let resumed = resumable_chunks(&target, &part);
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
            target,
            file: Arc::new(file),
            done: resumed,
        })
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
    /// does, so a record never points at bytes a crash lost.
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
            // flushes of a one-chunk file (measured: a prefix of 500 small files).
            return Ok(());
        }
        self.file.sync_data().map_err(|e| Error::io("sync", self.path(), e))?;
        let state = PartState {
            identity: self.target.identity.clone(),
            chunks: self.done.iter().map(|(id, d)| (id.clone(), d.to_hex())).collect(),
        };
        write_json_atomically(&state_path(&self.target.destination), &state)
    }

    /// Verifies the optional whole-file SHA-256, then moves the file into place and writes its sidecar.
    /// Until this returns, the destination holds either its old content or nothing: never a partial file.
    pub fn publish(self) -> Result<Sidecar> {
        self.publish_with(&Faults::default())
    }

    /// [`PartFile::publish`], with the `publish` fault point just before the rename.
    pub fn publish_with(self, faults: &Faults) -> Result<Sidecar> {
        if let Some(missing) = self.missing().first() {
            return Err(Error::InvalidPlan(format!(
                "cannot publish {}: chunk {} is missing",
                self.target.destination.display(),
                missing.id
            )));
        }
        let part = self.path();
        if let Some(expected) = &self.target.sha256 {
            let actual = sha256_of(&part)?;
            if &actual != expected {
                // Which chunk is wrong cannot be known: start the file over on the next run.
                let _ = fs::remove_file(state_path(&self.target.destination));
                let _ = fs::remove_file(&part);
                return Err(Error::Sha256Mismatch {
                    path: self.target.destination.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        refuse_foreign(&self.target)?;
        self.file.sync_all().map_err(|e| Error::io("sync", &part, e))?;
        let destination = &self.target.destination;
        if fs::symlink_metadata(destination).is_ok_and(|m| m.is_dir()) {
            return Err(Error::DestinationExists {
                path: destination.clone(),
            });
        }
        let sidecar = Sidecar {
            format: SIDECAR_FORMAT.into(),
            identity: self.target.identity.clone(),
            chunks: self.done.iter().map(|(id, d)| (id.clone(), d.to_hex())).collect(),
            stamp: None,
        };
        put_in_place(&part, destination, &sidecar, faults)?;
        let _ = fs::remove_file(state_path(destination));
        Ok(sidecar)
    }
}

/// Renames `part` onto `destination` and records `sidecar` beside it, crash-safely. The sidecar is
/// written first under a "publishing" name: a crash between the rename and the sidecar would otherwise
/// leave a file without a sidecar, which the next run must treat as the user's. With the record, the
/// next run can prove the file is xfd's (every chunk re-hashed) and finish the publish instead.
fn put_in_place(part: &Path, destination: &Path, sidecar: &Sidecar, faults: &Faults) -> Result<()> {
    let publishing = publishing_path(destination);
    write_json_atomically(&publishing, sidecar)?;
    faults.crash_point(Point::Publish);
    fs::rename(part, destination).map_err(|e| Error::io("rename into place", destination, e))?;
    sync_directory(destination)?;
    seal(destination, sidecar)
}

/// Records `sidecar` as the published file's, with the file's stamps as they are now, and drops the
/// publishing record. A crash between the two leaves both, and the next run re-verifies and seals again.
pub fn seal(destination: &Path, sidecar: &Sidecar) -> Result<()> {
    let meta = fs::symlink_metadata(destination).map_err(|e| Error::io("stat", destination, e))?;
    let sealed = Sidecar {
        stamp: Some(FileStamp::of(&meta)),
        ..sidecar.clone()
    };
    write_json_atomically(&sidecar_path(destination), &sealed)?;
    let publishing = publishing_path(destination);
    match fs::remove_file(&publishing) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("remove", &publishing, e)),
        _ => {}
    }
    sync_directory(destination)
}

/// Finishes a publish that a crash interrupted between its rename and its sidecar (see
/// [`put_in_place`]): when the destination's bytes match the publishing record chunk by chunk, the
/// record becomes the sidecar. A record that does not match (the crash came before the rename) is
/// dropped. Cheap when there is no record: a failed `open`.
pub fn recover_interrupted_publish(target: &FileTarget) -> Result<()> {
    let publishing = publishing_path(&target.destination);
    let Some(record) = read_json::<Sidecar>(&publishing) else {
        if publishing.exists() {
            let _ = fs::remove_file(&publishing); // unreadable: a crash inside its own atomic write
        }
        return Ok(());
    };
    let size_matches =
        fs::symlink_metadata(&target.destination).is_ok_and(|m| m.is_file() && m.len() == target.identity.size);
    if record.identity == target.identity && size_matches && deep_verify(&target.destination, target, &record)? {
        let _ = fs::remove_file(state_path(&target.destination));
        return seal(&target.destination, &record);
    }
    fs::remove_file(&publishing).map_err(|e| Error::io("remove", &publishing, e))
}

/// Copies a published file to another destination of the same object (same checks, same sidecar).
pub fn publish_copy(source: &Path, sidecar: &Sidecar, target: &FileTarget) -> Result<()> {
    refuse_foreign(target)?;
    let parent = target.destination.parent().unwrap_or(Path::new("/"));
    create_dirs(parent)?;
    let part = part_path(&target.destination);
    // Removed first: `fs::copy` would write through a symlink planted at the part file's name.
    let _ = fs::remove_file(&part);
    fs::copy(source, &part).map_err(|e| Error::io("copy", &part, e))?;
    File::open(&part)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("sync", &part, e))?;
    put_in_place(&part, &target.destination, sidecar, &Faults::default())
}

fn refuse_foreign(target: &FileTarget) -> Result<()> {
    match inspect(&target.destination, &target.identity)? {
        CacheState::Foreign if !target.overwrite => Err(Error::DestinationExists {
            path: target.destination.clone(),
        }),
        _ => Ok(()),
    }
}

fn resumable_chunks(target: &FileTarget, part: &Path) -> BTreeMap<String, ChunkDigest> {
    let Some(state) = read_json::<PartState>(&state_path(&target.destination)) else {
        return BTreeMap::new();
    };
    let part_ok = fs::metadata(part).is_ok_and(|m| m.len() == target.identity.size);
    if state.identity != target.identity || !part_ok {
        return BTreeMap::new();
    }
    target
        .chunks
        .iter()
        .filter_map(|chunk| {
            let recorded = state.chunks.get(&chunk.id)?;
            let digest = hash_file_range(part, chunk.offset, Some(chunk.length)).ok()?;
            (&digest.to_hex() == recorded).then(|| (chunk.id.clone(), digest))
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

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Temp file + fsync + rename: a reader sees the old record or the new one, never half of one.
fn write_json_atomically<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let mut temp = tempfile::NamedTempFile::new_in(parent).map_err(|e| Error::io("create", parent, e))?;
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Task(e.to_string()))?;
    temp.write_all(&bytes).map_err(|e| Error::io("write", temp.path(), e))?;
    temp.as_file()
        .sync_all()
        .map_err(|e| Error::io("sync", temp.path(), e))?;
    temp.persist(path)
        .map_err(|e| Error::io("rename into place", path, e.error))?;
    Ok(())
}

fn sync_directory(path: &Path) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync", parent, e))
}
