//! Unpacking tar, tar.gz and zip archives into a destination directory, safely and atomically.
//!
//! An archive comes from outside and is treated as hostile: every entry must land inside the
//! destination, no symlink may point out of it, nothing special (devices, fifos) is created, the bytes
//! written are capped (in total, per byte of archive, and by the free space that must remain) and so is
//! the number of entries. A refused archive leaves nothing behind.
//!
//! The tree is built in a staging directory beside the destination and renamed into place whole; the
//! node store ([`crate::store`]) records which archive identity is there, so a repeated unpack of the
//! same identity is skipped. See `docs/unpack.md`.

mod entry_path;
mod extract;
mod format;
mod from_tar;
mod from_zip;
mod limits;
mod publish;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use format::{ArchiveFormat, detect};

use crate::error::{Error, Result};
use crate::faults::Faults;
use crate::plan::{PlanUnpack, Settings};
use crate::store::Store;
use publish::Destination;

/// How to unpack. Every limit applies to the archive as it is read, not as it claims to be.
#[derive(Debug, Clone, PartialEq)]
pub struct UnpackOptions {
    /// The archive's format; `Auto` (the default) detects it from the content, never from the name.
    pub format: ArchiveFormat,
    /// Most bytes the archive may expand to, counted as they are read (manifest `unpack.max_size`).
    /// Default 64 GiB: larger than the model checkpoints and datasets xfd ships as one archive today,
    /// yet small enough that a decompression bomb is stopped before it fills a node's disk.
    pub max_total_bytes: u64,
    /// Most bytes the archive may expand to per byte of its size on disk (manifest `unpack.max_ratio`),
    /// enforced once more than [`RATIO_FLOOR`] bytes were read. Default 200: gzip of real data
    /// (weights, text, code) stays far below it, while a bomb that turns megabytes into gigabytes
    /// is refused long before `max_total_bytes`, whatever the disk.
    pub max_ratio: f64,
    /// Bytes of free space that must remain on the file system of the destination (manifest
    /// `settings.disk_reserve`), checked before the first entry and while writing; 0 turns the check
    /// off. Default 1 GiB: a node whose disk an unpack fills breaks the jobs that run on it next.
    pub disk_reserve: u64,
    /// Most entries (files, directories, links) the archive may hold. Default 1,000,000: ten times a
    /// large Python environment or dataset shard, while bounding the inodes and the time an archive of
    /// empty entries can cost.
    pub max_entries: u64,
    /// Replace a destination that xfd did not write. Default `false`: unpacking must never delete a
    /// user's data by surprise; a destination written by xfd is always replaced.
    pub overwrite: bool,
    /// The manifest artifact the archive belongs to, so that a refusal names the setting to raise;
    /// `None` outside a plan.
    pub artifact: Option<String>,
    /// Fault injection for the system tests (`unpack-entry:abort@n`); empty otherwise.
    pub faults: Arc<Faults>,
}

/// Bytes an archive may expand to whatever its ratio, so that a tiny archive of small files (a few
/// hundred bytes of gzip holding some kilobytes of text) is never refused as a bomb.
pub const RATIO_FLOOR: u64 = 1 << 20;

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            format: ArchiveFormat::Auto,
            max_total_bytes: 64 << 30,
            max_ratio: 200.0,
            disk_reserve: crate::plan::defaults::disk_reserve(),
            max_entries: 1_000_000,
            overwrite: false,
            artifact: None,
            faults: Arc::default(),
        }
    }
}

impl UnpackOptions {
    /// These options with the limits a plan sets for one unpack: its own `max_size` and `max_ratio`
    /// where given, the run's `disk_reserve`, and its artifact's name for the error messages.
    pub fn for_plan(&self, step: &PlanUnpack, settings: &Settings) -> UnpackOptions {
        UnpackOptions {
            max_total_bytes: step.max_size.unwrap_or(self.max_total_bytes),
            max_ratio: step.max_ratio.unwrap_or(self.max_ratio),
            disk_reserve: settings.disk_reserve,
            artifact: Some(step.artifact.clone()),
            ..self.clone()
        }
    }
}

/// What an unpack did. Counts describe the unpacked tree, not counting the destination directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackReport {
    /// The format the archive was read as (never `Auto`).
    pub format: ArchiveFormat,
    /// Entries read from the archive, of every kind.
    pub entries: u64,
    /// Regular files in the tree (hard links included).
    pub files: u64,
    /// Directories in the tree, whether the archive listed them or only implied them.
    pub dirs: u64,
    /// Symbolic links in the tree.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes_written: u64,
    /// `true` when the destination already held this identity and nothing was done; the counts are
    /// then those of the unpack that wrote it.
    #[serde(skip)]
    pub skipped: bool,
}

/// Unpacks `archive` into the directory `destination`, replacing what an earlier unpack put there.
///
/// `identity` names the archive's content (for example a plan's object id and etag); when `store` says
/// `destination` already holds it, the call returns at once with `skipped: true`. An empty identity
/// never matches. The destination is locked in `store` for the call (another run unpacking into it:
/// [`Error::DestinationBusy`]); what a crashed unpack of it left beside it is removed first. Blocking:
/// call it from a blocking thread (see [`unpack_async`]).
pub fn unpack(
    store: &Arc<Store>,
    archive: &Path,
    destination: &Path,
    identity: &str,
    options: &UnpackOptions,
) -> Result<UnpackReport> {
    let target = Destination::new(destination)?;
    let _lock = store.lock(target.path())?;
    store.refresh()?;
    target.import_legacy(store)?;
    // What a crashed unpack of this destination left: staging trees announced in the store, and those of
    // the previous layout, which were not (both have xfd's names, and the lock is this call's).
    target.remove_leftovers();
    if store.entry(target.path()).staging {
        target.forget_staging(store);
    }
    if let Some(report) = target.unpacked_report(store, identity) {
        return Ok(UnpackReport {
            skipped: true,
            ..report
        });
    }
    // Refuse a user's directory before spending time on the archive, and again before publishing.
    target.check_replaceable(store, options.overwrite)?;
    let staging = target.create_staging(store)?;
    let published = extract::extract(archive, options.format, staging.path(), options).and_then(|(format, counts)| {
        let report = UnpackReport {
            format,
            entries: counts.entries,
            files: counts.files,
            dirs: counts.dirs,
            symlinks: counts.symlinks,
            bytes_written: counts.bytes_written,
            skipped: false,
        };
        target.publish(store, staging, identity, &report, options.overwrite)?;
        Ok(report)
    });
    if published.is_err() {
        // The staging tree is gone (or, after a failed swap, kept on purpose and named in the error).
        target.forget_staging(store);
    }
    published
}

/// Removes what a crashed unpack into `destination` left beside it (staging trees, a replaced tree
/// not yet deleted). Call only while no other unpack into `destination` can run.
pub fn remove_leftovers(destination: &Path) -> Result<()> {
    Destination::new(destination)?.remove_leftovers();
    Ok(())
}

/// [`unpack`] on tokio's blocking pool, so async callers never stall a reactor thread on disk.
pub async fn unpack_async(
    store: Arc<Store>,
    archive: PathBuf,
    destination: PathBuf,
    identity: String,
    options: UnpackOptions,
) -> Result<UnpackReport> {
    tokio::task::spawn_blocking(move || unpack(&store, &archive, &destination, &identity, &options))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// Whether `destination` is the directory an unpack of `identity` put there (per `store`).
pub fn is_unpacked(store: &Store, destination: &Path, identity: &str) -> bool {
    Destination::new(destination).is_ok_and(|target| target.unpacked_report(store, identity).is_some())
}
