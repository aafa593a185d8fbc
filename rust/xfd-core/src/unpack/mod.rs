//! Unpacking tar, tar.gz and zip archives into a destination directory, safely and atomically.
//!
//! An archive comes from outside and is treated as hostile: every entry must land inside the
//! destination, no symlink may point out of it, nothing special (devices, fifos) is created, and both
//! the bytes written and the number of entries are capped. A refused archive leaves nothing behind.
//!
//! The tree is built in a staging directory beside the destination and renamed into place whole; a
//! sidecar file beside it (`.<name>.xfd-unpack.json`) records which archive identity is there, so a
//! repeated unpack of the same identity is skipped. See `docs/unpack.md`.

mod entry_path;
mod extract;
mod format;
mod from_tar;
mod from_zip;
mod publish;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use format::{ArchiveFormat, detect};

use crate::error::{Error, Result};
use crate::faults::Faults;
use publish::Destination;

/// How to unpack. Every limit applies to the archive as it is read, not as it claims to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOptions {
    /// The archive's format; `Auto` (the default) detects it from the content, never from the name.
    pub format: ArchiveFormat,
    /// Most bytes the archive may expand to, counted as they are written. Default 64 GiB: larger than
    /// the model checkpoints and datasets xfd ships as one archive today, yet small enough that a
    /// decompression bomb is stopped before it fills a node's disk.
    pub max_total_bytes: u64,
    /// Most entries (files, directories, links) the archive may hold. Default 1,000,000: ten times a
    /// large Python environment or dataset shard, while bounding the inodes and the time an archive of
    /// empty entries can cost.
    pub max_entries: u64,
    /// Replace a destination that xfd did not write. Default `false`: unpacking must never delete a
    /// user's data by surprise; a destination written by xfd is always replaced.
    pub overwrite: bool,
    /// Fault injection for the system tests (`unpack-entry:abort@n`); empty otherwise.
    pub faults: Arc<Faults>,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            format: ArchiveFormat::Auto,
            max_total_bytes: 64 << 30,
            max_entries: 1_000_000,
            overwrite: false,
            faults: Arc::default(),
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
/// `identity` names the archive's content (for example a plan's object id and etag); when the sidecar
/// says `destination` already holds it, the call returns at once with `skipped: true`. An empty
/// identity never matches. Blocking: call it from a blocking thread (see [`unpack_async`]).
pub fn unpack(archive: &Path, destination: &Path, identity: &str, options: &UnpackOptions) -> Result<UnpackReport> {
    let target = Destination::new(destination)?;
    if let Some(report) = target.unpacked_report(identity) {
        return Ok(UnpackReport {
            skipped: true,
            ..report
        });
    }
    // Refuse a user's directory before spending time on the archive, and again before publishing.
    target.check_replaceable(options.overwrite)?;
    let staging = target.create_staging()?;
    let (format, counts) = extract::extract(archive, options.format, staging.path(), options)?;
    let report = UnpackReport {
        format,
        entries: counts.entries,
        files: counts.files,
        dirs: counts.dirs,
        symlinks: counts.symlinks,
        bytes_written: counts.bytes_written,
        skipped: false,
    };
    target.publish(staging, identity, &report, options.overwrite)?;
    Ok(report)
}

/// Removes what a crashed unpack into `destination` left beside it (staging trees, a replaced tree
/// not yet deleted). Call only while no other unpack into `destination` can run.
pub fn remove_leftovers(destination: &Path) -> Result<()> {
    Destination::new(destination)?.remove_leftovers();
    Ok(())
}

/// [`unpack`] on tokio's blocking pool, so async callers never stall a reactor thread on disk.
pub async fn unpack_async(
    archive: PathBuf,
    destination: PathBuf,
    identity: String,
    options: UnpackOptions,
) -> Result<UnpackReport> {
    tokio::task::spawn_blocking(move || unpack(&archive, &destination, &identity, &options))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// Whether `destination` is a directory that an unpack of `identity` wrote (per its sidecar).
pub fn is_unpacked(destination: &Path, identity: &str) -> bool {
    Destination::new(destination).is_ok_and(|target| target.unpacked_report(identity).is_some())
}
