//! `xfd cache`: listing what xfd published on a node, re-hashing it, pruning what no manifest names. A
//! user's file is never removed, a dry run changes nothing, a live run's destinations are left alone.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use xfd_core::ChunkDigest;
use xfd_core::assembly::{ChunkSpan, FileIdentity, FileStamp, FileTarget, PartFile};
use xfd_core::store::{
    ItemKind, ItemState, Keep, Op, PruneAction, PruneItem, Store, UnpackRecord, VerifyOutcome, list, prune, verify,
};

const CHUNK: u64 = 1000;

/// A node: its root (destinations below it) and its store.
struct Node {
    root: tempfile::TempDir,
    store: Arc<Store>,
}

fn node() -> Node {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(&root.path().join("state")).unwrap();
    Node { root, store }
}

fn data(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i * 13 % 251) as u8 ^ seed).collect()
}

impl Node {
    fn path(&self, destination: &str) -> PathBuf {
        self.root.path().join(destination.trim_start_matches('/'))
    }

    /// Publishes `bytes` at `destination` as a run does, chunk by chunk; ids that do not sort in offset
    /// order, so verify must know where each chunk lies.
    fn publish(&self, destination: &str, bytes: &[u8]) {
        let size = bytes.len() as u64;
        let chunks = (0..size.div_ceil(CHUNK))
            .map(|i| ChunkSpan {
                id: format!("{:x}", ChunkDigest::of_bytes(&i.to_le_bytes()).0[0] as u64 * 1000 + i),
                offset: i * CHUNK,
                length: CHUNK.min(size - i * CHUNK),
            })
            .collect();
        let target = FileTarget {
            destination: self.path(destination),
            identity: FileIdentity {
                store_url: "s3://bucket".into(),
                key: destination.trim_start_matches('/').into(),
                etag: Some("e1".into()),
                version: None,
                size,
            },
            chunks,
            sha256: None,
            overwrite: false,
        };
        let mut part = PartFile::open(&self.store, target).unwrap();
        for chunk in part.missing() {
            let range = chunk.offset as usize..(chunk.offset + chunk.length) as usize;
            part.file().write_all_at(&bytes[range.clone()], chunk.offset).unwrap();
            part.record(&chunk.id, ChunkDigest::of_bytes(&bytes[range])).unwrap();
        }
        part.publish().unwrap();
    }

    /// An unpacked tree at `destination`, recorded as the unpack records it.
    fn unpacked(&self, destination: &str) {
        let path = self.path(destination);
        fs::create_dir_all(&path).unwrap();
        fs::write(path.join("member.txt"), b"member").unwrap();
        let record = UnpackRecord {
            identity: Some("object-9:tar.gz".into()),
            report: None,
            trees: vec![FileStamp::of(&fs::symlink_metadata(&path).unwrap())],
        };
        self.store.append(&[Op::Unpacked { dest: path, record }]).unwrap();
    }

    fn use_all(&self, artifact: &str, destinations: &[&str]) {
        let uses = destinations
            .iter()
            .map(|d| (artifact.to_owned(), self.path(d)))
            .collect();
        self.store.record_use(uses).unwrap();
    }

    fn prune(&self, keep: &Keep, apply: bool) -> Vec<PruneItem> {
        prune(&self.store, self.root.path(), keep, apply).unwrap()
    }
}

fn keep(files: &[&str], dirs: &[&str]) -> Keep {
    Keep {
        files: files.iter().map(|f| f.to_string()).collect(),
        dirs: dirs.iter().map(|d| d.to_string()).collect(),
        within: None,
    }
}

fn actions(items: &[PruneItem]) -> Vec<(String, PruneAction)> {
    items.iter().map(|i| (i.item.destination.clone(), i.action)).collect()
}

#[test]
fn ls_lists_what_xfd_published_with_its_artifact_size_and_last_use() {
    let node = node();
    node.publish("/models/a.bin", &data(2500, 1));
    node.publish("/models/b.bin", &data(10, 2));
    node.unpacked("/data/set");
    node.use_all("model-a", &["/models/a.bin", "/data/set"]);
    // A use of a destination with nothing published records nothing.
    node.use_all("ghost", &["/nowhere"]);

    let items = list(&node.store, node.root.path(), None).unwrap();
    let seen: Vec<_> = items
        .iter()
        .map(|i| (i.destination.as_str(), i.kind, i.artifact.as_deref(), i.size, i.state))
        .collect();
    assert_eq!(
        seen,
        [
            ("/data/set", ItemKind::Tree, Some("model-a"), 0, ItemState::Intact),
            (
                "/models/a.bin",
                ItemKind::File,
                Some("model-a"),
                2500,
                ItemState::Intact
            ),
            ("/models/b.bin", ItemKind::File, None, 10, ItemState::Intact),
        ]
    );
    let a = &items[1];
    assert_eq!(a.identity.as_ref().unwrap().key, "models/a.bin");
    assert!(a.last_used_ns.unwrap() >= a.published_ns.unwrap(), "{a:?}");
    // Never used by a run: last used is when it was published.
    assert_eq!(items[2].last_used_ns, items[2].published_ns);
    assert!(items.iter().all(|i| !i.held));
}

#[test]
fn ls_of_a_node_where_xfd_never_ran_makes_no_store() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    assert!(Store::open_existing(&state).unwrap().is_none());
    assert!(!state.exists(), "looking must not create the store");
}

#[test]
fn a_touched_file_shows_as_touched_and_verify_finds_the_flipped_byte() {
    let node = node();
    let bytes = data(3500, 3);
    node.publish("/m/big.bin", &bytes);
    node.publish("/m/small.bin", &data(100, 4));
    node.publish("/m/empty.bin", &[]);
    let all_ok = verify(&node.store, node.root.path(), None, 2).unwrap();
    assert!(all_ok.iter().all(|v| v.outcome == VerifyOutcome::Ok), "{all_ok:?}");

    // One byte flipped in the third chunk (bytes 2000..3000).
    let big = node.path("/m/big.bin");
    let file = fs::OpenOptions::new().write(true).open(&big).unwrap();
    file.write_all_at(&[bytes[2222] ^ 0xff], 2222).unwrap();
    drop(file);

    let items = list(&node.store, node.root.path(), None).unwrap();
    let state_of = |name: &str| items.iter().find(|i| i.destination == name).unwrap().state;
    assert_eq!(state_of("/m/big.bin"), ItemState::Touched);
    assert_eq!(state_of("/m/small.bin"), ItemState::Intact);

    let verified = verify(&node.store, node.root.path(), None, 2).unwrap();
    let bad: Vec<_> = verified
        .iter()
        .filter(|v| v.outcome != VerifyOutcome::Ok)
        .map(|v| (v.item.destination.as_str(), v.outcome, v.detail.as_str()))
        .collect();
    assert_eq!(
        bad,
        [(
            "/m/big.bin",
            VerifyOutcome::Corrupt,
            "bytes 2000..3000 differ from the published file"
        )]
    );

    // A user's file put in place of a published one is not xfd's: not checked, reported as replaced.
    let small = node.path("/m/small.bin");
    fs::remove_file(&small).unwrap();
    fs::write(&small, b"mine").unwrap();
    let verified = verify(&node.store, node.root.path(), None, 1).unwrap();
    let small = verified.iter().find(|v| v.item.destination == "/m/small.bin").unwrap();
    assert_eq!(
        (small.item.state, small.outcome),
        (ItemState::Replaced, VerifyOutcome::Replaced)
    );
}

#[test]
fn prune_dry_run_changes_nothing_and_apply_removes_only_what_is_xfds() {
    let node = node();
    node.publish("/m/kept.bin", &data(1500, 5));
    node.publish("/m/dropped.bin", &data(1500, 6));
    node.publish("/m/replaced.bin", &data(10, 7));
    node.publish("/m/edited.bin", &data(10, 8));
    node.publish("/m/touched.bin", &data(10, 9));
    node.publish("/p/sub/kept-by-prefix.bin", &data(10, 10));
    node.publish("/gone.bin", &data(10, 11));
    node.unpacked("/data/old-tree");
    // The user's own file beside xfd's, and one put in place of a file xfd published.
    fs::write(node.path("/m/users.txt"), b"the user's").unwrap();
    let replaced = node.path("/m/replaced.bin");
    fs::remove_file(&replaced).unwrap();
    fs::write(&replaced, b"the user's now").unwrap();
    // Edited in place (same inode): the user's work. Touched with the same bytes: still xfd's.
    let edited = fs::OpenOptions::new()
        .append(true)
        .open(node.path("/m/edited.bin"))
        .unwrap();
    (&edited).write_all(b"+").unwrap();
    let touched = node.path("/m/touched.bin");
    fs::write(&touched, data(10, 9)).unwrap();
    fs::remove_file(node.path("/gone.bin")).unwrap();

    let wanted = keep(&["/m/kept.bin"], &["/p"]);
    let expected = [
        ("/data/old-tree".to_owned(), PruneAction::Remove),
        ("/gone.bin".to_owned(), PruneAction::Forget),
        ("/m/dropped.bin".to_owned(), PruneAction::Remove),
        ("/m/edited.bin".to_owned(), PruneAction::KeepModified),
        ("/m/replaced.bin".to_owned(), PruneAction::Forget),
        ("/m/touched.bin".to_owned(), PruneAction::Remove),
    ];
    let log = node.root.path().join("state/records.log");
    let log_before = fs::read(&log).unwrap();
    let dry = node.prune(&wanted, false);
    assert_eq!(actions(&dry), expected);
    assert!(dry.iter().all(|i| !i.applied));
    assert!(node.path("/m/dropped.bin").exists() && node.path("/data/old-tree/member.txt").exists());
    assert_eq!(
        fs::read(&log).unwrap(),
        log_before,
        "a dry run writes nothing, not even to the log"
    );

    let done = node.prune(&wanted, true);
    assert_eq!(actions(&done), expected);
    for gone in ["/m/dropped.bin", "/m/touched.bin", "/data/old-tree"] {
        assert!(!node.path(gone).exists(), "{gone} was not removed");
    }
    assert_eq!(fs::read(node.path("/m/users.txt")).unwrap(), b"the user's");
    assert_eq!(fs::read(&replaced).unwrap(), b"the user's now");
    assert_eq!(fs::read(node.path("/m/edited.bin")).unwrap().len(), 11);
    assert!(node.path("/m/kept.bin").exists() && node.path("/p/sub/kept-by-prefix.bin").exists());
    assert!(node.path("/data").is_dir(), "directories stay");

    // Only the kept and the modified remain recorded; a second prune has nothing left to do but keep
    // the user's edit.
    let left: Vec<_> = list(&node.store, node.root.path(), None)
        .unwrap()
        .into_iter()
        .map(|i| i.destination)
        .collect();
    assert_eq!(left, ["/m/edited.bin", "/m/kept.bin", "/p/sub/kept-by-prefix.bin"]);
    let reopened = Store::open(&node.root.path().join("state")).unwrap();
    let again = prune(&reopened, node.root.path(), &wanted, true).unwrap();
    assert_eq!(
        actions(&again),
        [("/m/edited.bin".to_owned(), PruneAction::KeepModified)]
    );
}

#[test]
fn prune_keeps_a_tree_that_holds_a_kept_path_and_follows_no_symlink() {
    let node = node();
    node.unpacked("/data/set");
    node.publish("/elsewhere/target.bin", &data(10, 12));
    // A symlink put where xfd published a file: the link is the user's, and so is what it points at.
    node.publish("/m/link.bin", &data(10, 13));
    let link = node.path("/m/link.bin");
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(node.path("/elsewhere/target.bin"), &link).unwrap();

    let done = node.prune(&keep(&["/data/set/inside.bin", "/elsewhere/target.bin"], &[]), true);
    assert_eq!(actions(&done), [("/m/link.bin".to_owned(), PruneAction::Forget)]);
    assert!(node.path("/data/set/member.txt").exists());
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(node.path("/elsewhere/target.bin").exists());
}

#[test]
fn prune_leaves_what_a_live_run_holds() {
    let node = node();
    node.publish("/m/busy.bin", &data(10, 14));
    node.publish("/m/free.bin", &data(10, 15));
    let run = Store::open(&node.root.path().join("state")).unwrap();
    let held = run.lock(&node.path("/m/busy.bin")).unwrap();

    let listed = list(&node.store, node.root.path(), None).unwrap();
    assert_eq!(listed.iter().map(|i| i.held).collect::<Vec<_>>(), [true, false]);
    let done = node.prune(&keep(&[], &[]), true);
    assert_eq!(
        actions(&done),
        [
            ("/m/busy.bin".to_owned(), PruneAction::KeepHeld),
            ("/m/free.bin".to_owned(), PruneAction::Remove),
        ]
    );
    assert!(node.path("/m/busy.bin").exists() && !node.path("/m/free.bin").exists());

    drop(held); // the run ended: the next prune removes it
    let done = node.prune(&keep(&[], &[]), true);
    assert_eq!(actions(&done), [("/m/busy.bin".to_owned(), PruneAction::Remove)]);
    assert!(!node.path("/m/busy.bin").exists());
}

#[test]
fn last_use_survives_compaction_and_old_logs_stay_readable() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    fs::create_dir_all(&state).unwrap();
    // A line as xfd wrote it before it kept artifacts, uses and chunk layouts.
    let dest = root.path().join("old.bin");
    fs::write(&dest, b"0123456789").unwrap();
    let stamp = FileStamp::of(&fs::metadata(&dest).unwrap());
    let digest = ChunkDigest::of_bytes(b"0123456789").to_hex();
    let old = serde_json::json!({
        "op": "published", "dest": dest,
        "record": {"identity": {"store_url": "s3://b", "key": "old.bin", "etag": null, "version": null, "size": 10},
                   "chunks": {"c0": digest}, "stamp": stamp},
    });
    fs::write(state.join("records.log"), format!("{old}\n")).unwrap();

    let store = Store::open(&state).unwrap();
    let items = list(&store, root.path(), None).unwrap();
    assert_eq!(
        (items.len(), items[0].state, items[0].artifact.as_deref()),
        (1, ItemState::Intact, None)
    );
    assert_eq!(
        verify(&store, root.path(), None, 1).unwrap()[0].outcome,
        VerifyOutcome::Ok
    );

    store.record_use(vec![("legacy".into(), dest.clone())]).unwrap();
    // Enough lines that change nothing for the log to be compacted.
    let noise: Vec<Op> = (0..1500)
        .map(|i| Op::forget(&root.path().join(format!("n{i}")), xfd_core::store::Facet::Part))
        .collect();
    store.append(&noise).unwrap();
    store.append(&noise[..1]).unwrap(); // the append after which compaction runs
    let lines = fs::read_to_string(state.join("records.log")).unwrap().lines().count();
    assert!(lines < 10, "the log was not compacted: {lines} lines");

    let reopened = Store::open(&state).unwrap();
    let items = list(&reopened, root.path(), None).unwrap();
    assert_eq!(items[0].artifact.as_deref(), Some("legacy"));
    assert!(items[0].last_used_ns.unwrap() > 0);
}

#[test]
fn a_run_of_many_files_records_its_use_in_a_few_lines() {
    let node = node();
    let uses: Vec<(String, PathBuf)> = (0..10_000)
        .map(|i| ("many".to_owned(), node.path(&format!("/many/f{i}"))))
        .collect();
    let log = node.root.path().join("state/records.log");
    let before = fs::read_to_string(&log).unwrap_or_default().lines().count();
    node.store.record_use(uses).unwrap();
    let after = fs::read_to_string(&log).unwrap().lines().count();
    assert_eq!(after - before, 3, "10,000 destinations at 4,096 a line");
}

#[test]
fn within_limits_what_is_listed_and_pruned() {
    let node = node();
    node.publish("/team-a/x.bin", &data(10, 16));
    node.publish("/team-b/y.bin", &data(10, 17));
    let listed = list(&node.store, node.root.path(), Some("/team-a")).unwrap();
    assert_eq!(
        listed.iter().map(|i| i.destination.as_str()).collect::<Vec<_>>(),
        ["/team-a/x.bin"]
    );
    assert_eq!(list(&node.store, node.root.path(), Some("/")).unwrap().len(), 2);
    let nothing_kept = Keep {
        within: Some("/team-a".into()),
        ..keep(&[], &[])
    };
    let done = node.prune(&nothing_kept, true);
    assert_eq!(actions(&done), [("/team-a/x.bin".to_owned(), PruneAction::Remove)]);
    assert!(node.path("/team-b/y.bin").exists());
}
