//! Putting an unpacked tree in place atomically, and the sidecar that remembers what is there.
//!
//! Readers of a destination see either the previous tree or the new one, never a half-written one: the
//! tree is built in a staging directory beside the destination (same file system, so `rename` is
//! atomic) and swapped in whole.

use std::ffi::OsString;
use std::fs::{self, File, Permissions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tempfile::TempDir;

use super::UnpackReport;
use crate::error::{Error, Result};

/// Bump when the sidecar's meaning changes; an older or newer sidecar then never matches an identity.
const SIDECAR_VERSION: u32 = 1;
const STAGING_INFIX: &str = ".xfd-unpack-";
const REPLACED_INFIX: &str = ".xfd-unpack-old-";
const SIDECAR_SUFFIX: &str = ".xfd-unpack.json";
/// The published tree's top directory; the staging directory is created private (0700).
const PUBLISHED_DIR_MODE: u32 = 0o755;
const SIDECAR_MODE: u32 = 0o644;

/// What the sidecar records. `identity` is `None` while a publish is in flight: the destination then
/// belongs to xfd but holds no known content, so the next unpack replaces it rather than refusing.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
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

    /// The report of the unpack that wrote the destination, if it was for `identity` and the
    /// destination is still a directory.
    pub(super) fn unpacked_report(&self, identity: &str) -> Option<UnpackReport> {
        if identity.is_empty() || !fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_dir()) {
            return None;
        }
        let sidecar = self.read_sidecar()?;
        let matches = sidecar.version == SIDECAR_VERSION && sidecar.identity.as_deref() == Some(identity);
        matches.then_some(sidecar.report).flatten()
    }

    /// Refuses a destination that holds something xfd did not write, unless `overwrite`.
    pub(super) fn check_replaceable(&self, overwrite: bool) -> Result<()> {
        match fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("stat", &self.path, e)),
            Ok(_) if overwrite || self.read_sidecar().is_some() => Ok(()),
            Ok(_) => Err(Error::DestinationExists {
                path: self.path.clone(),
            }),
        }
    }

    /// An empty directory beside the destination, removed when dropped unless published.
    pub(super) fn create_staging(&self) -> Result<TempDir> {
        crate::assembly::create_dirs(&self.parent)?;
        self.hidden_temp_dir(STAGING_INFIX)
    }

    /// Swaps the staging tree in as the destination and records `identity` in the sidecar.
    pub(super) fn publish(
        &self,
        staging: TempDir,
        identity: &str,
        report: &UnpackReport,
        overwrite: bool,
    ) -> Result<()> {
        self.check_replaceable(overwrite)?;
        let previous = self.read_sidecar();
        // Claim first: after a crash mid-swap the destination is still known to be xfd's.
        self.write_sidecar(&Sidecar {
            version: SIDECAR_VERSION,
            identity: None,
            report: None,
        })?;
        if let Err(e) = self.swap_in(staging) {
            self.restore_sidecar(previous);
            return Err(e);
        }
        self.write_sidecar(&Sidecar {
            version: SIDECAR_VERSION,
            identity: Some(identity.to_owned()),
            report: Some(report.clone()),
        })
    }

    /// Best effort after a failed swap, whose error is the one to report: the destination is unchanged,
    /// so its sidecar goes back to what it was (none for a user's tree, which must not look like xfd's).
    fn restore_sidecar(&self, previous: Option<Sidecar>) {
        if let Some(previous) = previous {
            let _ = self.write_sidecar(&previous);
        } else {
            let _ = fs::remove_file(self.sidecar_path());
        }
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

    /// Removes staging and replaced trees (and sidecar temp files) a crashed unpack of this destination
    /// left beside it. Only for a caller that knows no other unpack of it runs now (the engine holds
    /// the destination's lock); the names are xfd's own (`.<name>.xfd-unpack-*`).
    pub(super) fn remove_leftovers(&self) {
        let staging = self.hidden_name(STAGING_INFIX);
        let sidecar_temp = self.hidden_name(&format!("{SIDECAR_SUFFIX}."));
        crate::assembly::remove_entries_named(&self.parent, &[&staging, &sidecar_temp]);
    }

    fn read_sidecar(&self) -> Option<Sidecar> {
        let bytes = fs::read(self.sidecar_path()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the sidecar atomically: a temporary file, flushed to disk, renamed over the old one.
    fn write_sidecar(&self, sidecar: &Sidecar) -> Result<()> {
        let path = self.sidecar_path();
        let mut temp = tempfile::Builder::new()
            .prefix(&self.hidden_name(&format!("{SIDECAR_SUFFIX}.")))
            .tempfile_in(&self.parent)
            .map_err(|e| Error::io("create", &self.parent, e))?;
        let written = serde_json::to_writer_pretty(temp.as_file_mut(), sidecar)
            .map_err(io::Error::from)
            .and_then(|()| temp.as_file().set_permissions(Permissions::from_mode(SIDECAR_MODE)))
            .and_then(|()| temp.as_file().sync_all());
        written.map_err(|e| Error::io("write", temp.path(), e))?;
        temp.persist(&path).map_err(|e| Error::io("rename", &path, e.error))?;
        sync_dir(&self.parent)
    }

    fn sidecar_path(&self) -> PathBuf {
        self.parent.join(self.hidden_name(SIDECAR_SUFFIX))
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
