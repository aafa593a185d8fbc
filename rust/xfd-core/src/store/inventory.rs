//! What xfd has published on a node, read from its store: list it, re-hash it, prune it.
//!
//! Pure store work, no plan and no network: a record says which file or tree xfd put at a destination,
//! its origin identity, its chunk digests and where they lie ([`super::ChunkLayout`]), and the artifact
//! and last run that used it ([`super::Usage`]). What is at the destination now decides its state; the
//! rule is the engine's: a file is xfd's only while it is the file xfd put there (same inode and birth
//! time), and a file put in its place is the user's, never removed.
//!
//! Prune removes what a set of kept destinations ([`Keep`], the manifests' declared ones) no longer
//! names, and only what is still xfd's: under the store's destination locks (a live run's destinations
//! are never touched), with the file's identity checked again right before it is unlinked (an unlink
//! removes a symlink, never what it points at), and a touched file only when its bytes are still the
//! recorded ones (an edit in place is the user's work).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{Entry, Facet, FileRecord, Op, Store};
use crate::assembly::FileIdentity;
use crate::engine::localize;
use crate::error::{Error, Result};
use crate::hash::hash_open_range;

/// What xfd put at a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// A file, published from its chunks.
    File,
    /// A directory tree unpacked from an archive.
    Tree,
}

/// What is at a recorded destination now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    /// What xfd put there, untouched since (a tree: the directory xfd put there).
    Intact,
    /// The file xfd put there, touched since (written, `touch`ed, chmod-ed): its bytes may differ from the
    /// record, and a run re-hashes it before using it.
    Touched,
    /// Nothing is there any more.
    Missing,
    /// Something else is there: a file put in its place, a directory, a symlink. The user's.
    Replaced,
}

/// One destination xfd published on this node.
#[derive(Clone, Debug, Serialize)]
pub struct CacheItem {
    /// The destination as manifests name it (the path below the node root, from `/`).
    pub destination: String,
    /// Where it is on this node.
    pub path: PathBuf,
    pub kind: ItemKind,
    /// The artifact the last run that used it was for; `None` when no run recorded it yet (files
    /// published before xfd kept it).
    pub artifact: Option<String>,
    /// A file's origin identity.
    pub identity: Option<FileIdentity>,
    /// A tree's archive identity.
    pub unpacked_from: Option<String>,
    /// Bytes: a file's size, a tree's unpacked bytes.
    pub size: u64,
    /// Files: 1, or those of the tree.
    pub files: u64,
    /// When xfd put it in place (nanoseconds since 1970), from its stamps.
    pub published_ns: Option<i64>,
    /// When a run last found it cached or put it there; at least `published_ns`.
    pub last_used_ns: Option<i64>,
    pub state: ItemState,
    /// A live run holds the destination now.
    pub held: bool,
}

/// What verifying one file found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyOutcome {
    /// Every byte hashes to the record.
    Ok,
    /// Bytes differ from the record (`detail` says where).
    Corrupt,
    /// Nothing at the destination.
    Missing,
    /// Something not xfd's at the destination: the user's, not checked.
    Replaced,
    /// The record cannot check it: a tree (checked through its archive), or a file of several chunks
    /// recorded before xfd kept where its chunks lie.
    Unverifiable,
    /// Reading it failed (`detail` says why).
    Unreadable,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyItem {
    pub item: CacheItem,
    pub outcome: VerifyOutcome,
    pub detail: String,
}

/// What prune does (or, in a dry run, would do) with one destination that nothing kept names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneAction {
    /// Remove the file or tree (xfd's, as published) and its record.
    Remove,
    /// Forget the record only: nothing of xfd's is there (missing, or the user's file put in its place).
    Forget,
    /// Left alone: a live run holds it.
    KeepHeld,
    /// Left alone: xfd's file, but its bytes were changed in place since (the user's edit).
    KeepModified,
    /// Removing it failed (`detail` says why); its record stays.
    Failed,
}

#[derive(Clone, Debug, Serialize)]
pub struct PruneItem {
    pub item: CacheItem,
    pub action: PruneAction,
    /// `true` once done; `false` in a dry run.
    pub applied: bool,
    pub detail: String,
}

/// What prune keeps: destinations as manifests name them. A file is kept when it is one of `files`, lies
/// below one of `dirs`, or holds one of them (a tree that a kept path lies in).
#[derive(Clone, Debug, Default)]
pub struct Keep {
    pub files: Vec<String>,
    pub dirs: Vec<String>,
    /// Prune looks only at or below this destination (`None`: the whole node).
    pub within: Option<String>,
}

/// [`Keep`] localized under a node root, as sets: each question costs the depth of a path.
struct KeepSet {
    exact: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
    /// Every directory some kept path lies in.
    ancestors: HashSet<PathBuf>,
}

impl KeepSet {
    fn new(keep: &Keep, node_root: &Path) -> Result<KeepSet> {
        let localized =
            |paths: &[String]| -> Result<HashSet<PathBuf>> { paths.iter().map(|p| localize(node_root, p)).collect() };
        let (exact, dirs) = (localized(&keep.files)?, localized(&keep.dirs)?);
        let ancestors = exact
            .iter()
            .chain(&dirs)
            .flat_map(|p| p.ancestors().skip(1).map(Path::to_owned))
            .collect();
        Ok(KeepSet { exact, dirs, ancestors })
    }

    fn keeps(&self, path: &Path) -> bool {
        self.exact.contains(path) || self.ancestors.contains(path) || path.ancestors().any(|a| self.dirs.contains(a))
    }
}

/// Every file and tree xfd published on the node of `store` (whose `/` is `node_root`) at or below
/// `within` (a destination as manifests name it; `None`: everywhere), sorted by destination.
pub fn list(store: &Store, node_root: &Path, within: Option<&str>) -> Result<Vec<CacheItem>> {
    let within = within.map(|w| localize_within(node_root, w)).transpose()?;
    store.refresh()?;
    let mut held = HeldCache::default();
    store
        .entries()
        .into_iter()
        .filter(|(_, e)| e.published.is_some() || e.unpacked.is_some())
        .filter(|(path, _)| within.as_ref().is_none_or(|w| path.starts_with(w)))
        .map(|(path, entry)| item_of(store, node_root, path, &entry, &mut held))
        .collect()
}

/// `within` under the node root; `/` is the node root itself.
fn localize_within(node_root: &Path, within: &str) -> Result<PathBuf> {
    if within.trim_end_matches('/').is_empty() {
        return Ok(node_root.to_owned());
    }
    localize(node_root, within)
}

/// [`list`], each file re-hashed against its record (streamed, on up to `threads` threads).
pub fn verify(store: &Store, node_root: &Path, within: Option<&str>, threads: usize) -> Result<Vec<VerifyItem>> {
    let items = list(store, node_root, within)?;
    let records: Vec<Option<Box<FileRecord>>> = items.iter().map(|i| store.entry(&i.path).published).collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<(VerifyOutcome, String)>>> = Mutex::new(vec![None; items.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, 64).min(items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let at = next.fetch_add(1, Ordering::Relaxed);
                    if at >= items.len() {
                        break;
                    }
                    let outcome = verify_one(&items[at], records[at].as_deref());
                    results.lock().unwrap()[at] = Some(outcome);
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    Ok(items
        .into_iter()
        .zip(results)
        .map(|(item, result)| {
            let (outcome, detail) = result.expect("every item verified");
            VerifyItem { item, outcome, detail }
        })
        .collect())
}

/// Removes (with `apply`; otherwise only says what it would remove) every file and tree xfd published
/// on this node that `keep` does not name and that is still xfd's, and forgets the records of those
/// that are gone or the user's. Only destinations at or below `keep.within` are looked at. Returns one
/// line per destination not kept, sorted by destination.
pub fn prune(store: &Arc<Store>, node_root: &Path, keep: &Keep, apply: bool) -> Result<Vec<PruneItem>> {
    let candidates: Vec<CacheItem> = list(store, node_root, keep.within.as_deref())?;
    let keep = KeepSet::new(keep, node_root)?;
    let candidates: Vec<CacheItem> = candidates.into_iter().filter(|item| !keep.keeps(&item.path)).collect();
    if !apply {
        return Ok(candidates.into_iter().map(|item| decide(store, item, false)).collect());
    }
    let (free, busy): (Vec<_>, Vec<_>) = candidates.into_iter().partition(|item| !item.held);
    let mut out: Vec<PruneItem> = busy.into_iter().map(|item| decide(store, item, true)).collect();
    let (_locks, free, raced) = lock_free(store, free)?;
    out.extend(raced.into_iter().map(|item| decide(store, item, true)));
    store.refresh()?; // what the destinations are now that no run can change them
    let mut held = HeldCache::default();
    let mut forget = Vec::new();
    for stale in free {
        let entry = store.entry(&stale.path);
        if entry.published.is_none() && entry.unpacked.is_none() {
            continue; // a run published nothing there any more meanwhile
        }
        let mut item = item_of(store, node_root, stale.path, &entry, &mut held)?;
        item.held = false; // held by this prune, now
        let mut done = decide(store, item, true);
        if matches!(done.action, PruneAction::Remove)
            && let Err(error) = remove(&done.item, &entry)
        {
            (done.action, done.applied, done.detail) = (PruneAction::Failed, false, error.to_string());
        }
        if matches!(done.action, PruneAction::Remove | PruneAction::Forget) {
            let facet = match done.item.kind {
                ItemKind::File => Facet::Published,
                ItemKind::Tree => Facet::Unpacked,
            };
            forget.push(Op::forget(&done.item.path, facet));
        }
        out.push(done);
    }
    // One append for every record prune ends; leftovers of killed runs go as a run's scan removes them.
    store.append(&forget)?;
    store.sync()?;
    store.remove_leftovers()?;
    out.sort_by(|a, b| a.item.path.cmp(&b.item.path));
    Ok(out)
}

/// Takes the destinations of `items` in one claim; those a run took meanwhile are handed back apart.
fn lock_free(
    store: &Arc<Store>,
    mut items: Vec<CacheItem>,
) -> Result<(Vec<super::DestinationLock>, Vec<CacheItem>, Vec<CacheItem>)> {
    let mut raced = Vec::new();
    loop {
        let paths: Vec<&Path> = items.iter().map(|i| i.path.as_path()).collect();
        match store.try_lock_all(&paths)? {
            Ok(locks) => return Ok((locks, items, raced)),
            Err(busy) => {
                let at = items
                    .iter()
                    .position(|i| i.path == busy)
                    .expect("a destination asked for");
                let mut item = items.remove(at);
                item.held = true;
                raced.push(item);
            }
        }
    }
}

/// What prune does with `item`, from its state (a touched file is re-hashed: only xfd's bytes go).
fn decide(store: &Store, item: CacheItem, applied: bool) -> PruneItem {
    let (action, detail) = match (item.held, item.state) {
        (true, _) => (PruneAction::KeepHeld, "a running distribution holds it".to_owned()),
        (false, ItemState::Missing) => (PruneAction::Forget, "nothing there any more".to_owned()),
        (false, ItemState::Replaced) => (
            PruneAction::Forget,
            "not xfd's any more (put there since): left as it is".to_owned(),
        ),
        (false, ItemState::Intact) => (PruneAction::Remove, String::new()),
        (false, ItemState::Touched) => match verify_one(&item, store.entry(&item.path).published.as_deref()) {
            (VerifyOutcome::Ok, _) => (PruneAction::Remove, "touched, bytes as published".to_owned()),
            (_, detail) => (
                PruneAction::KeepModified,
                format!("changed since xfd published it ({detail}): left as it is"),
            ),
        },
    };
    PruneItem {
        item,
        action,
        applied: applied && !matches!(action, PruneAction::KeepHeld | PruneAction::KeepModified),
        detail,
    }
}

/// Removes what prune decided to, after checking once more that it is what xfd put there.
fn remove(item: &CacheItem, entry: &Entry) -> Result<()> {
    let path = &item.path;
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
    let ours = match (item.kind, &entry.published, &entry.unpacked) {
        (ItemKind::File, Some(record), _) => meta.is_file() && record.stamp.is_none_or(|s| s.same_file(&meta)),
        (ItemKind::Tree, _, Some(record)) => meta.is_dir() && record.owns(&meta),
        _ => false,
    };
    if !ours {
        return Err(Error::io(
            "remove",
            path,
            std::io::Error::other("replaced while prune ran: left as it is"),
        ));
    }
    match item.kind {
        // Neither follows symlinks: a link is removed, never what it points at.
        ItemKind::File => fs::remove_file(path),
        ItemKind::Tree => fs::remove_dir_all(path),
    }
    .map_err(|e| Error::io("remove", path, e))
}

/// Whether another run holds a destination, asked once per run slot.
#[derive(Default)]
struct HeldCache(HashMap<Option<u64>, bool>);

impl HeldCache {
    fn held(&mut self, store: &Store, path: &Path, entry: &Entry) -> Result<bool> {
        if let Some(known) = self.0.get(&entry.claim) {
            return Ok(*known);
        }
        let held = store.held_elsewhere(path)?;
        self.0.insert(entry.claim, held);
        Ok(held)
    }
}

fn item_of(store: &Store, node_root: &Path, path: PathBuf, entry: &Entry, held: &mut HeldCache) -> Result<CacheItem> {
    let meta = fs::symlink_metadata(&path).ok();
    let destination = match path.strip_prefix(node_root) {
        Ok(below) => format!("/{}", below.display()),
        Err(_) => path.display().to_string(),
    };
    let used = entry.used.as_ref();
    let mut item = CacheItem {
        destination,
        kind: ItemKind::File,
        artifact: used.map(|u| u.artifact.clone()),
        identity: None,
        unpacked_from: None,
        size: 0,
        files: 1,
        published_ns: None,
        last_used_ns: None,
        state: ItemState::Missing,
        held: held.held(store, &path, entry)?,
        path,
    };
    if let Some(record) = &entry.published {
        item.identity = Some(record.identity.clone());
        item.size = record.identity.size;
        item.published_ns = record.stamp.map(|s| s.ctime_ns);
        item.state = match &meta {
            None => ItemState::Missing,
            Some(meta) if !meta.is_file() => ItemState::Replaced,
            Some(meta) => match record.stamp {
                Some(stamp) if stamp.unchanged(meta) => ItemState::Intact,
                Some(stamp) if !stamp.same_file(meta) => ItemState::Replaced,
                _ => ItemState::Touched,
            },
        };
    } else if let Some(record) = &entry.unpacked {
        item.kind = ItemKind::Tree;
        item.unpacked_from = record.identity.clone();
        item.size = record.report.as_ref().map_or(0, |r| r.bytes_written);
        item.files = record.report.as_ref().map_or(0, |r| r.files);
        item.published_ns = record.trees.last().map(|s| s.ctime_ns);
        item.state = match &meta {
            None => ItemState::Missing,
            Some(meta) if meta.is_dir() && record.owns(meta) => ItemState::Intact,
            Some(_) => ItemState::Replaced,
        };
    }
    item.last_used_ns = match (used.map(|u| u.at_ns), item.published_ns) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Ok(item)
}

/// Re-hashes one file against its record: opened without following a symlink, checked to be the file
/// xfd put there, read in blocks (never whole).
fn verify_one(item: &CacheItem, record: Option<&FileRecord>) -> (VerifyOutcome, String) {
    match (item.kind, item.state, record) {
        (ItemKind::Tree, ItemState::Missing, _) => return (VerifyOutcome::Missing, String::new()),
        (ItemKind::Tree, ItemState::Replaced, _) => return (VerifyOutcome::Replaced, String::new()),
        (ItemKind::Tree, ..) => {
            let why = "an unpacked tree is checked through its archive";
            return (VerifyOutcome::Unverifiable, why.to_owned());
        }
        (_, ItemState::Missing, _) => return (VerifyOutcome::Missing, String::new()),
        (_, ItemState::Replaced, _) => return (VerifyOutcome::Replaced, String::new()),
        (_, _, None) => return (VerifyOutcome::Missing, "no record any more".to_owned()),
        _ => {}
    }
    let record = record.expect("checked above");
    match hash_against(&item.path, record) {
        Ok(None) => (VerifyOutcome::Ok, String::new()),
        Ok(Some((outcome, detail))) => (outcome, detail),
        Err(error) => (VerifyOutcome::Unreadable, error.to_string()),
    }
}

/// `None` when the file's bytes are the record's; else what differs.
fn hash_against(path: &Path, record: &FileRecord) -> Result<Option<(VerifyOutcome, String)>> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if record.stamp.is_some_and(|s| !s.same_file(&meta)) {
        return Ok(Some((VerifyOutcome::Replaced, String::new())));
    }
    let size = record.identity.size;
    if meta.len() != size {
        let detail = format!("{} bytes, {} published", meta.len(), size);
        return Ok(Some((VerifyOutcome::Corrupt, detail)));
    }
    let spans: Vec<(u64, u64, &String)> = match (&record.layout, record.chunks.len()) {
        (_, 0) if size == 0 => Vec::new(),
        (_, 1) => vec![(0, size, record.chunks.values().next().expect("one chunk"))],
        (Some(layout), n) if layout.order.len() == n => layout
            .order
            .iter()
            .enumerate()
            .filter_map(|(i, id)| {
                let offset = i as u64 * layout.chunk_size;
                let length = layout.chunk_size.min(size.saturating_sub(offset));
                record.chunks.get(id).map(|digest| (offset, length, digest))
            })
            .collect(),
        _ => {
            let why = "recorded before xfd kept where its chunks lie; a run with deep_verify re-hashes it";
            return Ok(Some((VerifyOutcome::Unverifiable, why.to_owned())));
        }
    };
    for (offset, length, digest) in spans {
        if &hash_open_range(&file, path, offset, length)?.to_hex() != digest {
            let detail = format!("bytes {offset}..{} differ from the published file", offset + length);
            return Ok(Some((VerifyOutcome::Corrupt, detail)));
        }
    }
    Ok(None)
}
