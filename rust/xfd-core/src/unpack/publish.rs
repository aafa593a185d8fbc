//! Putting an unpacked tree in place atomically, and the store record that remembers what is there.
//!
//! Readers of a destination see either the previous tree or the new one, never a half-written one: the
//! tree is built in a staging directory beside the destination (same file system, so `rename` is
//! atomic) and swapped in whole. What is there is recorded in the node store ([`crate::store`]), not
//! beside the tree: after a successful unpack the destination's directory holds the tree and nothing
//! else of xfd's.

use std::ffi::OsString;
use std::fs::{self, File, Permissions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tempfile::TempDir;

use super::UnpackReport;
use crate::error::{Error, Result};
use crate::store::{Facet, FileStamp, Op, Store, UnpackRecord};

const STAGING_INFIX: &str = ".xfd-unpack-";
const REPLACED_INFIX: &str = ".xfd-unpack-old-";
/// The previous layout's record beside the tree, imported into the store once.
const LEGACY_SIDECAR_SUFFIX: &str = ".xfd-unpack.json";
const LEGACY_SIDECAR_VERSION: u32 = 1;
/// The published tree's top directory; the staging directory is created private (0700).
const PUBLISHED_DIR_MODE: u32 = 0o755;

/// The sidecar of the previous layout. `identity` is `None` while a publish was in flight.
#[derive(Debug, Deserialize)]
struct LegacySidecar {
    version: u32,
    identity: Option<String>,
    report: Option<UnpackReport>,
}

/// A destination directory and the names xfd uses beside it.
pub(super) struct Destination {
    path: PathBuf,
    parent: PathBuf,
    name: OsString,
}

impl Destination {
    pub(super) fn new(path: &Path) -> Result<Self> {
        let name = path.file_name().ok_or_else(|| Error::InvalidDestination {
            path: path.to_owned(),
            reason: "the path has no final component to publish under",
        })?;
        // Rebuilt from parent and name so that `a/b/.` or `a/b/` means the same as `a/b`.
        let (path, parent) = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => (parent.join(name), parent.to_owned()),
            _ => (PathBuf::from(name), PathBuf::from(".")),
        };
        Ok(Destination {
            path,
            parent,
            name: name.to_owned(),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The report of the unpack that wrote the destination, if it was for `identity` and the
    /// destination is still the tree it put there.
    pub(super) fn unpacked_report(&self, store: &Store, identity: &str) -> Option<UnpackReport> {
        if identity.is_empty() {
            return None;
        }
        let meta = fs::symlink_metadata(&self.path).ok().filter(fs::Metadata::is_dir)?;
        let record = store.entry(&self.path).unpacked?;
        let matches = record.identity.as_deref() == Some(identity) && record.owns(&meta);
        matches.then_some(record.report).flatten()
    }

    /// Refuses a destination that holds something xfd did not put there, unless `overwrite`.
    pub(super) fn check_replaceable(&self, store: &Store, overwrite: bool) -> Result<()> {
        match fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("stat", &self.path, e)),
            Ok(meta) if overwrite || store.entry(&self.path).unpacked.is_some_and(|r| r.owns(&meta)) => Ok(()),
            Ok(_) => Err(Error::DestinationExists {
                path: self.path.clone(),
            }),
        }
    }

    /// An empty directory beside the destination, removed when dropped unless published. Announced in
    /// the store before it is created, so a killed unpack's staging tree is found by the next run.
    pub(super) fn create_staging(&self, store: &Store) -> Result<TempDir> {
        crate::assembly::create_dirs(&self.parent)?;
        store.append(&[Op::Staging {
            dest: self.path.clone(),
        }])?;
        self.hidden_temp_dir(STAGING_INFIX)
    }

    /// Forgets the staging announcement once the staging tree is gone (a failed unpack).
    pub(super) fn forget_staging(&self, store: &Store) {
        let _ = store.append(&[Op::forget(&self.path, Facet::Staging)]);
    }

    /// Swaps the staging tree in as the destination and records `identity` in the store.
    pub(super) fn publish(
        &self,
        store: &Store,
        staging: TempDir,
        identity: &str,
        report: &UnpackReport,
        overwrite: bool,
    ) -> Result<()> {
        self.check_replaceable(store, overwrite)?;
        let previous = store.entry(&self.path).unpacked;
        let staged = fs::symlink_metadata(staging.path()).map_err(|e| Error::io("stat", staging.path(), e))?;
        let mut trees = vec![FileStamp::of(&staged)];
        if let Ok(current) = fs::symlink_metadata(&self.path) {
            trees.push(FileStamp::of(&current));
        }
        // Claim first (on disk before the swap): after a crash mid-swap, whichever of the two trees is
        // at the destination is still known to be xfd's.
        let claim = UnpackRecord {
            identity: None,
            report: None,
            trees,
        };
        store.append_durable(&[self.recorded(claim)])?;
        if let Err(e) = self.swap_in(staging) {
            self.restore_record(store, previous.map(|p| *p));
            return Err(e);
        }
        let published = fs::symlink_metadata(&self.path).map_err(|e| Error::io("stat", &self.path, e))?;
        let record = UnpackRecord {
            identity: Some(identity.to_owned()),
            report: Some(report.clone()),
            trees: vec![FileStamp::of(&published)],
        };
        store.append_durable(&[self.recorded(record)])
    }

    fn recorded(&self, record: UnpackRecord) -> Op {
        Op::Unpacked {
            dest: self.path.clone(),
            record,
        }
    }

    /// Best effort after a failed swap, whose error is the one to report: the destination is unchanged,
    /// so its record goes back to what it was (none for a user's tree, which must not look like xfd's).
    fn restore_record(&self, store: &Store, previous: Option<UnpackRecord>) {
        let _ = match previous {
            Some(previous) => store.append(&[self.recorded(previous)]),
            None => store.append(&[Op::forget(&self.path, Facet::Unpacked)]),
        };
    }

    /// Imports the previous layout's sidecar beside the tree (`.<name>.xfd-unpack.json`) into the store,
    /// then removes it. The caller holds the destination's lock.
    pub(super) fn import_legacy(&self, store: &Store) -> Result<()> {
        let path = self.parent.join(self.hidden_name(LEGACY_SIDECAR_SUFFIX));
        let Ok(bytes) = fs::read(&path) else {
            return Ok(());
        };
        let sidecar = serde_json::from_slice::<LegacySidecar>(&bytes).ok();
        if let Some(sidecar) = sidecar.filter(|s| s.version == LEGACY_SIDECAR_VERSION)
            && store.entry(&self.path).unpacked.is_none()
        {
            let record = UnpackRecord {
                identity: sidecar.identity,
                report: sidecar.report,
                trees: Vec::new(),
            };
            store.append_durable(&[self.recorded(record)])?;
        }
        fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))
    }

    fn swap_in(&self, staging: TempDir) -> Result<()> {
        fs::set_permissions(staging.path(), Permissions::from_mode(PUBLISHED_DIR_MODE))
            .map_err(|e| Error::io("chmod", staging.path(), e))?;
        if !exists(&self.path)? {
            match fs::rename(staging.path(), &self.path) {
                Ok(()) => {
                    let _ = staging.keep();
                    return sync_dir(&self.parent);
                }
                // Someone created the destination since we looked: replace it like any other.
                Err(e) if is_taken(&e) => {}
                Err(e) => return Err(Error::io("rename", &self.path, e)),
            }
        }
        self.replace(staging)
    }

    /// Moves the current destination aside, renames the staging tree in, then deletes the old tree.
    fn replace(&self, staging: TempDir) -> Result<()> {
        let trash = self.hidden_temp_dir(REPLACED_INFIX)?;
        let old = trash.path().join(&self.name);
        fs::rename(&self.path, &old).map_err(|e| Error::io("move aside", &self.path, e))?;
        if let Err(e) = fs::rename(staging.path(), &self.path) {
            return Err(self.restore(trash, &old, e));
        }
        let _ = staging.keep();
        sync_dir(&self.parent)?;
        let trash_path = trash.path().to_owned();
        trash
            .close()
            .map_err(|e| Error::io("remove replaced tree", trash_path, e))
    }

    /// Puts the previous tree back after a failed swap; if even that fails, keeps it where it is.
    fn restore(&self, trash: TempDir, old: &Path, cause: io::Error) -> Error {
        if fs::rename(old, &self.path).is_ok() {
            return Error::io("rename", &self.path, cause);
        }
        let kept = trash.keep().join(&self.name);
        let message = format!("{cause}; the previous content is kept at {}", kept.display());
        Error::io("rename", &self.path, io::Error::new(cause.kind(), message))
    }

    /// Removes staging and replaced trees (and the previous layout's sidecar temp files) a crashed unpack
    /// of this destination left beside it. Only for a caller that knows no other unpack of it runs now
    /// (it holds the destination's lock); the names are xfd's own (`.<name>.xfd-unpack-*`).
    pub(super) fn remove_leftovers(&self) {
        let staging = self.hidden_name(STAGING_INFIX);
        let sidecar_temp = self.hidden_name(&format!("{LEGACY_SIDECAR_SUFFIX}."));
        crate::assembly::remove_entries_named(&self.parent, &[&staging, &sidecar_temp]);
    }

    fn hidden_temp_dir(&self, infix: &str) -> Result<TempDir> {
        tempfile::Builder::new()
            .prefix(&self.hidden_name(infix))
            .tempdir_in(&self.parent)
            .map_err(|e| Error::io("create directory", &self.parent, e))
    }

    /// `.<destination name><suffix>`: hidden, and named after the destination it belongs to.
    fn hidden_name(&self, suffix: &str) -> OsString {
        let mut name = OsString::from(".");
        name.push(&self.name);
        name.push(suffix);
        name
    }
}

fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// `rename` onto something that is already there (anything but an empty directory).
fn is_taken(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::AlreadyExists | ErrorKind::DirectoryNotEmpty | ErrorKind::NotADirectory | ErrorKind::IsADirectory
    )
}

/// Makes renames in `dir` durable: without it a power cut can undo a publish that was reported done.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| Error::io("sync directory", dir, e))
}
