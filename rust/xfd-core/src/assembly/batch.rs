//! Batched publish: the members of a bundle of small files put in place together.
//!
//! The guarantees are a lone file's (see [`super::put_in_place`]): a destination holds its old content or
//! the whole new file, never a partial one; every part file is announced in the store before it is
//! created; the record of the publish in flight is on disk before any rename. What a batch saves is the
//! per-file cost around them: one announcement, one durable record and one final record for all the
//! files, one directory sync per directory, and the data syncs overlapped (write-behind).
//!
//! Data sync, measured with `xfd-sync-bench` (docs/benchmarks.md, "Publishing small files"): starting
//! each file's write-back as it is written (`sync_file_range`) and waiting for all of them before the
//! renames was within a few percent of one `syncfs` for 1 KiB files and the fastest for larger ones; a
//! `syncfs` would also wait for every other writer's dirty pages on the file system (a neighbour writing
//! checkpoints), which a publish must not depend on.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{FileRecord, FileStamp, FileTarget, check_destination, part_path};
use crate::error::{Error, Result};
use crate::faults::{Faults, Point};
use crate::store::{Facet, Op, Store};

/// One small file of a batch: its target and its whole content, already verified.
pub struct SmallFile<'a> {
    pub target: &'a FileTarget,
    pub bytes: &'a [u8],
    /// The file's chunk digests for its record (chunk id -> BLAKE3 hex).
    pub chunks: BTreeMap<String, String>,
}

/// Publishes `files` at their destinations and records them; returns their records in order. On an
/// error before the renames nothing changes at any destination and the part files are removed; a rename
/// that fails leaves the files renamed before it published and recorded.
pub fn publish_small(store: &Store, files: &[SmallFile<'_>], faults: &Faults) -> Result<Vec<FileRecord>> {
    check_all(store, files)?;
    let parts: Vec<PathBuf> = files.iter().map(|f| part_path(&f.target.destination)).collect();
    let announce: Vec<Op> = files
        .iter()
        .zip(&parts)
        .map(|(file, part)| Op::Partial {
            dest: file.target.destination.clone(),
            part: part.clone(),
            identity: file.target.identity.clone(),
        })
        .collect();
    store.append(&announce)?;
    let stamps = match write_durably(files, &parts) {
        Ok(stamps) => stamps,
        Err(error) => {
            discard(store, files, &parts);
            return Err(error);
        }
    };
    let records: Vec<FileRecord> = files
        .iter()
        .map(|file| FileRecord {
            identity: file.target.identity.clone(),
            chunks: file.chunks.clone(),
            stamp: None,
            layout: crate::store::ChunkLayout::of(&file.target.chunks),
        })
        .collect();
    let publishing: Vec<Op> = files
        .iter()
        .zip(&records)
        .zip(stamps)
        .map(|((file, record), stamp)| Op::Publishing {
            dest: file.target.destination.clone(),
            record: FileRecord {
                stamp: Some(stamp),
                ..record.clone()
            },
        })
        .collect();
    store.append_durable(&publishing)?;
    faults.crash_point(Point::Publish);
    let renamed = rename_all(files, &parts);
    let done = renamed.as_ref().map_or_else(|(done, _)| *done, |done| *done);
    let sealed = seal_all(store, &files[..done], &records[..done])?;
    renamed.map_err(|(_, error)| error)?;
    Ok(sealed)
}

/// What a lone publish checks first, for every file: its directory can be made, a publish a crash
/// interrupted is settled, no user's file is in the way, the optional SHA-256 matches.
fn check_all(store: &Store, files: &[SmallFile<'_>]) -> Result<()> {
    for file in files {
        let target = file.target;
        check_destination(store, target)?;
        if fs::symlink_metadata(&target.destination).is_ok_and(|m| m.is_dir()) {
            return Err(Error::DestinationExists {
                path: target.destination.clone(),
            });
        }
        if let Some(expected) = &target.sha256 {
            let actual: String = Sha256::digest(file.bytes).iter().map(|b| format!("{b:02x}")).collect();
            if &actual != expected {
                return Err(Error::Sha256Mismatch {
                    path: target.destination.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
    }
    Ok(())
}

/// Writes every part file, starting its write-back at once, then waits until all are on disk; returns
/// their stamps (taken from the open files: the same inodes the renames move).
fn write_durably(files: &[SmallFile<'_>], parts: &[PathBuf]) -> Result<Vec<FileStamp>> {
    let mut opened = Vec::with_capacity(files.len());
    for (file, part) in files.iter().zip(parts) {
        // Removed first, then created exclusively: nothing planted at the part file's name is written through.
        let _ = fs::remove_file(part);
        let mut out = File::options()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(part)
            .map_err(|e| Error::io("create", part, e))?;
        out.write_all(file.bytes).map_err(|e| Error::io("write", part, e))?;
        // SAFETY: a plain syscall on a file descriptor this function owns.
        let started = unsafe { libc::sync_file_range(out.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if started != 0 {
            return Err(Error::io("sync", part, std::io::Error::last_os_error()));
        }
        opened.push(out);
    }
    opened
        .iter()
        .zip(parts)
        .map(|(out, part)| {
            out.sync_data().map_err(|e| Error::io("sync", part, e))?;
            let meta = out.metadata().map_err(|e| Error::io("stat", part, e))?;
            Ok(FileStamp::of(&meta))
        })
        .collect()
}

/// Renames the part files into place in order, then syncs each directory once; on a failed rename,
/// how many were renamed before it and the error.
fn rename_all(files: &[SmallFile<'_>], parts: &[PathBuf]) -> std::result::Result<usize, (usize, Error)> {
    let mut directories = BTreeSet::new();
    for (done, (file, part)) in files.iter().zip(parts).enumerate() {
        let destination = &file.target.destination;
        if let Err(error) = fs::rename(part, destination) {
            return Err((done, Error::io("rename into place", destination, error)));
        }
        directories.insert(destination.parent().unwrap_or(Path::new("/")));
    }
    for directory in directories {
        File::open(directory)
            .and_then(|d| d.sync_all())
            .map_err(|e| (files.len(), Error::io("sync", directory, e)))?;
    }
    Ok(files.len())
}

/// Records the published files with their stamps as they are now, and that their part files are gone.
/// Not synced: the durable records of the publish in flight let the next run finish the job.
fn seal_all(store: &Store, files: &[SmallFile<'_>], records: &[FileRecord]) -> Result<Vec<FileRecord>> {
    let mut ops = Vec::with_capacity(2 * files.len());
    let mut sealed = Vec::with_capacity(files.len());
    for (file, record) in files.iter().zip(records) {
        let destination = &file.target.destination;
        let meta = fs::symlink_metadata(destination).map_err(|e| Error::io("stat", destination, e))?;
        let record = FileRecord {
            stamp: Some(FileStamp::of(&meta)),
            ..record.clone()
        };
        ops.push(Op::Published {
            dest: destination.clone(),
            record: record.clone(),
        });
        ops.push(Op::forget(destination, Facet::Part));
        sealed.push(record);
    }
    store.append(&ops)?;
    Ok(sealed)
}

/// Removes the part files of a batch that failed before its renames, and their announcements.
fn discard(store: &Store, files: &[SmallFile<'_>], parts: &[PathBuf]) {
    for part in parts {
        let _ = fs::remove_file(part);
    }
    let forget: Vec<Op> = files
        .iter()
        .map(|f| Op::forget(&f.target.destination, Facet::Part))
        .collect();
    let _ = store.append(&forget);
}
