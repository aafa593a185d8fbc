//! The layout before the store: hidden files beside each destination `dir/name`. Read once (so caches
//! and resumable parts survive the upgrade), written into the log, then removed:
//! `.name.xfd.json` (a published file's sidecar), `.name.xfd-publishing.json` (a publish in flight),
//! `.name.xfd-state.json` (a part file's resume record); `.name.xfd-lock` and endgame scratch files
//! `.name.xfd-duplicate-*` are removed. (`.name.xfd-part` stays the part file's name; an unpacked tree's
//! `.name.xfd-unpack.json` is imported by the unpack itself.)

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{FileRecord, FileStamp, Op, Store};
use crate::assembly::{FileIdentity, part_path};
use crate::error::Result;

/// The only sidecar format there was.
const SIDECAR_FORMAT: &str = "xfd.file/1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sidecar,
    Publishing,
    State,
    Lock,
    Duplicate,
}

/// A sidecar as it was written (fields spelled out: `flatten` cannot carry the stamps' i128 values).
#[derive(Deserialize)]
struct Sidecar {
    format: String,
    identity: FileIdentity,
    chunks: BTreeMap<String, String>,
    #[serde(default)]
    stamp: Option<FileStamp>,
    /// Never written by the previous layout; read if present, as every other field of a record.
    #[serde(default)]
    layout: Option<Box<super::ChunkLayout>>,
}

#[derive(Deserialize)]
struct PartState {
    identity: FileIdentity,
    chunks: BTreeMap<String, String>,
}

/// Imports and removes the previous layout's files beside `destinations` (whose locks the caller holds).
/// One directory listing per distinct parent: a plan of many files in one directory costs one listing,
/// not one per file.
pub fn import_beside(store: &Store, destinations: &[&Path]) -> Result<()> {
    let mut by_dir: HashMap<&Path, HashMap<OsString, &Path>> = HashMap::new();
    for destination in destinations {
        if let (Some(parent), Some(name)) = (destination.parent(), destination.file_name()) {
            by_dir.entry(parent).or_default().insert(name.to_owned(), destination);
        }
    }
    for (dir, names) in by_dir {
        let found = legacy_files(dir, &names);
        if !found.is_empty() {
            import(store, &found)?;
        }
    }
    Ok(())
}

/// The previous layout's files in `dir` that belong to one of `names`.
fn legacy_files<'a>(dir: &Path, names: &HashMap<OsString, &'a Path>) -> Vec<(Kind, &'a Path, PathBuf)> {
    let Ok(listing) = fs::read_dir(dir) else {
        return Vec::new(); // not there yet: nothing to import
    };
    let mut found = Vec::new();
    for entry in listing.flatten() {
        let name = entry.file_name();
        let Some((kind, stem)) = classify(name.as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: `stem` is a sub-slice of an OsStr's bytes that ends right before an ASCII '.'.
        let stem = unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(stem) };
        if let Some(destination) = names.get(stem) {
            found.push((kind, *destination, entry.path()));
        }
    }
    found
}

/// `.NAME<suffix>` -> (kind, NAME).
fn classify(name: &[u8]) -> Option<(Kind, &[u8])> {
    let rest = name.strip_prefix(b".")?;
    const SUFFIXES: [(&[u8], Kind); 4] = [
        (b".xfd.json", Kind::Sidecar),
        (b".xfd-publishing.json", Kind::Publishing),
        (b".xfd-state.json", Kind::State),
        (b".xfd-lock", Kind::Lock),
    ];
    for (suffix, kind) in SUFFIXES {
        if let Some(stem) = rest.strip_suffix(suffix) {
            return Some((kind, stem));
        }
    }
    let marker: &[u8] = b".xfd-duplicate-";
    let at = rest.windows(marker.len()).position(|w| w == marker)?;
    Some((Kind::Duplicate, &rest[..at]))
}

fn import(store: &Store, found: &[(Kind, &Path, PathBuf)]) -> Result<()> {
    let mut ops = Vec::new();
    for (kind, destination, file) in found {
        let entry = store.entry(destination);
        let dest = destination.to_path_buf();
        match kind {
            Kind::Sidecar if entry.published.is_none() => {
                if let Some(record) = read_sidecar(file) {
                    ops.push(Op::Published { dest, record });
                }
            }
            Kind::Publishing if entry.publishing.is_none() => {
                if let Some(record) = read_sidecar(file) {
                    ops.push(Op::Publishing { dest, record });
                }
            }
            Kind::State if entry.part.is_none() => {
                if let Some(state) = read_json::<PartState>(file) {
                    ops.push(Op::Partial {
                        dest: dest.clone(),
                        part: part_path(destination),
                        identity: state.identity,
                    });
                    ops.push(Op::Chunks {
                        dest,
                        chunks: state.chunks,
                    });
                }
            }
            _ => {}
        }
    }
    // On disk before the files they were read from go.
    store.append_durable(&ops)?;
    for (_, _, file) in found {
        let _ = fs::remove_file(file);
    }
    Ok(())
}

fn read_sidecar(path: &Path) -> Option<FileRecord> {
    let sidecar = read_json::<Sidecar>(path)?;
    (sidecar.format == SIDECAR_FORMAT).then_some(FileRecord {
        identity: sidecar.identity,
        chunks: sidecar.chunks,
        stamp: sidecar.stamp,
        layout: sidecar.layout,
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}
