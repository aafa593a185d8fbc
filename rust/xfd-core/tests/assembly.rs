//! Part files, resume, publish, the node store's records and the cache states they give.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use xfd_core::assembly::{
    CacheState, ChunkSpan, FileIdentity, FileRecord, FileTarget, PartFile, deep_verify, inspect, part_path,
    publish_copy, seal,
};
use xfd_core::store::{Facet, Op, Store};
use xfd_core::{ChunkDigest, Error};

const CHUNK: u64 = 1000;

fn data(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 13 % 256) as u8).collect()
}

/// A node: a directory for the destinations and the node store, in a directory of its own.
struct Node {
    files: tempfile::TempDir,
    state: tempfile::TempDir,
    store: Arc<Store>,
}

fn node() -> Node {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path()).unwrap();
    Node {
        files: tempfile::tempdir().unwrap(),
        state,
        store,
    }
}

impl Node {
    fn path(&self) -> &Path {
        self.files.path()
    }

    fn assemble(&self, target: FileTarget, bytes: &[u8]) -> xfd_core::Result<FileRecord> {
        let mut part = PartFile::open(&self.store, target)?;
        for chunk in part.missing() {
            write_chunk(&mut part, bytes, &chunk);
        }
        part.publish()
    }
}

fn target(destination: &Path, size: u64, etag: &str) -> FileTarget {
    let chunks = (0..size.div_ceil(CHUNK))
        .map(|i| ChunkSpan {
            id: format!("{etag}-{i:04}"),
            offset: i * CHUNK,
            length: CHUNK.min(size - i * CHUNK),
        })
        .collect();
    FileTarget {
        destination: destination.to_owned(),
        identity: FileIdentity {
            store_url: "s3://b".into(),
            key: "k".into(),
            etag: Some(etag.into()),
            version: None,
            size,
        },
        chunks,
        sha256: None,
        overwrite: false,
    }
}

fn write_chunk(part: &mut PartFile, bytes: &[u8], chunk: &ChunkSpan) {
    let range = chunk.offset as usize..(chunk.offset + chunk.length) as usize;
    part.file().write_all_at(&bytes[range.clone()], chunk.offset).unwrap();
    part.record(&chunk.id, ChunkDigest::of_bytes(&bytes[range])).unwrap();
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn chunks_assemble_into_a_published_file_recorded_in_the_store_not_beside_it() {
    let node = node();
    let destination = node.path().join("models/model.bin");
    let bytes = data(3500);
    let record = node.assemble(target(&destination, 3500, "e1"), &bytes).unwrap();
    assert_eq!(fs::read(&destination).unwrap(), bytes);
    assert_eq!(record.chunks.len(), 4);
    assert_eq!(names_in(&node.path().join("models")), ["model.bin"]);
    let entry = node.store.entry(&destination);
    assert_eq!(entry.published, Some(Box::new(record)));
    assert!(entry.part.is_none() && entry.publishing.is_none(), "{entry:?}");
    assert!(matches!(
        inspect(&node.store, &destination, &target(&destination, 3500, "e1").identity).unwrap(),
        CacheState::Hit(_)
    ));
}

#[test]
fn a_published_file_touched_since_must_prove_its_bytes_again() {
    let node = node();
    let destination = node.path().join("model.bin");
    let bytes = data(3500);
    let wanted = target(&destination, 3500, "e1");
    let record = node.assemble(wanted.clone(), &bytes).unwrap();

    // Edited in place, same size: no longer a plain cache hit, and its bytes fail verification.
    let file = fs::OpenOptions::new().write(true).open(&destination).unwrap();
    file.write_all_at(b"edited", 100).unwrap();
    drop(file);
    let CacheState::Touched(recorded) = inspect(&node.store, &destination, &wanted.identity).unwrap() else {
        panic!("an edited file must not be a cache hit")
    };
    assert!(!deep_verify(&destination, &wanted, &recorded).unwrap());

    // Put back byte for byte: touched, but verified, and a hit again once sealed anew.
    fs::write(&destination, &bytes).unwrap();
    let CacheState::Touched(recorded) = inspect(&node.store, &destination, &wanted.identity).unwrap() else {
        panic!("a rewritten file must be verified before it is trusted")
    };
    assert!(deep_verify(&destination, &wanted, &recorded).unwrap());
    seal(&node.store, &destination, &record).unwrap();
    assert!(matches!(
        inspect(&node.store, &destination, &wanted.identity).unwrap(),
        CacheState::Hit(_)
    ));
}

#[test]
fn an_incomplete_file_is_never_published() {
    let node = node();
    let destination = node.path().join("f");
    let bytes = data(2500);
    let mut part = PartFile::open(&node.store, target(&destination, 2500, "e")).unwrap();
    let first = part.missing()[0].clone();
    write_chunk(&mut part, &bytes, &first);
    let error = part.publish().err().unwrap();
    assert!(error.to_string().contains("is missing"), "{error}");
    assert!(!destination.exists());
}

#[test]
fn a_user_file_at_the_destination_is_left_alone_unless_overwrite() {
    let node = node();
    let destination = node.path().join("f");
    fs::write(&destination, b"precious user data").unwrap();
    let error = node
        .assemble(target(&destination, 1500, "e"), &data(1500))
        .err()
        .unwrap();
    assert!(matches!(error, Error::DestinationExists { .. }), "{error}");
    assert_eq!(fs::read(&destination).unwrap(), b"precious user data");
    assert!(!part_path(&destination).exists());

    let mut forced = target(&destination, 1500, "e");
    forced.overwrite = true;
    node.assemble(forced, &data(1500)).unwrap();
    assert_eq!(fs::read(&destination).unwrap(), data(1500));
}

/// Puts a user's file at `destination` in place of what is there: made first, so it is a new inode.
fn replace_by_users_file(destination: &Path, bytes: &[u8]) {
    let mine = destination.with_file_name("mine.tmp");
    fs::write(&mine, bytes).unwrap();
    fs::rename(&mine, destination).unwrap();
}

#[test]
fn a_users_file_put_where_xfd_published_one_is_never_replaced() {
    let node = node();
    let destination = node.path().join("f");
    node.assemble(target(&destination, 1500, "v1"), &data(1500)).unwrap();
    // The store still records v1 at `f`; the user replaces the file (a copy, a save that renames).
    replace_by_users_file(&destination, &[7u8; 1500]);

    for wanted in [target(&destination, 1500, "v1"), target(&destination, 2000, "v2")] {
        let error = node.assemble(wanted, &data(2000)).err().unwrap();
        assert!(matches!(error, Error::DestinationExists { .. }), "{error}");
        assert_eq!(fs::read(&destination).unwrap(), [7u8; 1500]);
    }
    assert_eq!(names_in(node.path()), ["f"]);
}

#[test]
fn a_published_file_restored_from_a_copy_is_a_cache_hit_once_its_bytes_verify() {
    let node = node();
    let destination = node.path().join("f");
    let wanted = target(&destination, 1500, "v1");
    node.assemble(wanted.clone(), &data(1500)).unwrap();
    replace_by_users_file(&destination, &data(1500)); // the same bytes, another inode
    let CacheState::Touched(recorded) = inspect(&node.store, &destination, &wanted.identity).unwrap() else {
        panic!("a replaced file must prove its bytes")
    };
    assert!(deep_verify(&destination, &wanted, &recorded).unwrap());
    seal(&node.store, &destination, &recorded).unwrap();
    assert!(matches!(
        inspect(&node.store, &destination, &wanted.identity).unwrap(),
        CacheState::Hit(_)
    ));
}

#[test]
fn a_file_in_the_way_of_a_directory_is_named_and_left_alone() {
    let node = node();
    fs::write(node.path().join("models"), b"a user's file").unwrap();
    let destination = node.path().join("models/sub/m.bin");
    let error = node
        .assemble(target(&destination, 1500, "e"), &data(1500))
        .err()
        .unwrap();
    let Error::NotADirectory { blocker, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(blocker, &node.path().join("models"));
    assert!(error.to_string().contains("is a file in the way"), "{error}");
    assert_eq!(fs::read(node.path().join("models")).unwrap(), b"a user's file");
}

#[test]
fn a_file_xfd_wrote_for_an_older_version_is_stale_and_replaced() {
    let node = node();
    let destination = node.path().join("f");
    node.assemble(target(&destination, 1500, "old"), &data(1500)).unwrap();
    let new = target(&destination, 2000, "new");
    assert_eq!(
        inspect(&node.store, &destination, &new.identity).unwrap(),
        CacheState::Stale
    );
    let bytes: Vec<u8> = data(2000).into_iter().rev().collect();
    node.assemble(new.clone(), &bytes).unwrap();
    assert_eq!(fs::read(&destination).unwrap(), bytes);
    assert!(matches!(
        inspect(&node.store, &destination, &new.identity).unwrap(),
        CacheState::Hit(_)
    ));
}

#[test]
fn a_resumed_part_keeps_only_chunks_whose_bytes_still_verify() {
    let node = node();
    let destination = node.path().join("f");
    let bytes = data(4000);
    {
        let mut part = PartFile::open(&node.store, target(&destination, 4000, "e")).unwrap();
        let chunks = part.missing();
        write_chunk(&mut part, &bytes, &chunks[0]);
        write_chunk(&mut part, &bytes, &chunks[2]);
    } // the run is interrupted here
    let resumed = Store::open(node.state.path()).unwrap(); // as the next run opens it
    let part = PartFile::open(&resumed, target(&destination, 4000, "e")).unwrap();
    assert_eq!(part.done().keys().collect::<Vec<_>>(), ["e-0000", "e-0002"]);
    drop(part);

    // Damage chunk 2's bytes on disk: it must be fetched again.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(part_path(&destination))
        .unwrap();
    file.write_all_at(b"XXXX", 2100).unwrap();
    let part = PartFile::open(&resumed, target(&destination, 4000, "e")).unwrap();
    assert_eq!(
        part.missing().iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["e-0001", "e-0002", "e-0003"]
    );
    let recorded = resumed.entry(&destination).part.unwrap();
    assert_eq!(
        recorded.chunks.keys().collect::<Vec<_>>(),
        ["e-0000"],
        "the damaged chunk's record goes"
    );
}

#[test]
fn a_part_for_another_identity_is_started_over() {
    let node = node();
    let destination = node.path().join("f");
    {
        let mut part = PartFile::open(&node.store, target(&destination, 2000, "a")).unwrap();
        let first = part.missing()[0].clone();
        write_chunk(&mut part, &data(2000), &first);
    }
    let part = PartFile::open(&node.store, target(&destination, 2000, "b")).unwrap();
    assert!(part.done().is_empty());
    assert_eq!(
        node.store.entry(&destination).part.unwrap().identity.etag.as_deref(),
        Some("b")
    );
}

#[test]
fn a_wrong_sha256_refuses_publication_and_discards_the_part() {
    let node = node();
    let destination = node.path().join("f");
    let mut wrong = target(&destination, 1200, "e");
    wrong.sha256 = Some("0".repeat(64));
    let error = node.assemble(wrong, &data(1200)).err().unwrap();
    assert!(matches!(error, Error::Sha256Mismatch { .. }), "{error}");
    assert!(!destination.exists());
    assert!(names_in(node.path()).is_empty(), "{:?}", names_in(node.path()));
    assert!(node.store.entry(&destination).part.is_none());

    let mut right = target(&destination, 3, "e");
    right.sha256 = Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()); // sha256("abc")
    node.assemble(right, b"abc").unwrap();
    assert_eq!(fs::read(&destination).unwrap(), b"abc");
}

#[test]
fn deep_verify_notices_content_changed_behind_the_record() {
    let node = node();
    let destination = node.path().join("f");
    let wanted = target(&destination, 2500, "e");
    let record = node.assemble(wanted.clone(), &data(2500)).unwrap();
    assert!(deep_verify(&destination, &wanted, &record).unwrap());
    let file = fs::OpenOptions::new().write(true).open(&destination).unwrap();
    file.write_all_at(b"!", 1234).unwrap();
    assert!(!deep_verify(&destination, &wanted, &record).unwrap());
}

#[test]
fn an_empty_object_publishes_an_empty_file() {
    let node = node();
    let destination = node.path().join("empty");
    let record = node.assemble(target(&destination, 0, "e"), b"").unwrap();
    assert!(record.chunks.is_empty());
    assert_eq!(fs::read(&destination).unwrap(), b"");
}

#[test]
fn copies_to_other_destinations_carry_the_same_record() {
    let node = node();
    let first = node.path().join("a/f");
    let record = node.assemble(target(&first, 1500, "e"), &data(1500)).unwrap();
    let second = target(&node.path().join("b/g"), 1500, "e");
    publish_copy(&node.store, &first, &record, &second).unwrap();
    assert_eq!(fs::read(&second.destination).unwrap(), data(1500));
    assert_eq!(
        node.store.entry(&second.destination).published.unwrap().chunks,
        record.chunks
    );
    assert_eq!(names_in(&node.path().join("b")), ["g"]);
    assert!(matches!(
        inspect(&node.store, &second.destination, &second.identity).unwrap(),
        CacheState::Hit(_)
    ));
}

#[test]
fn a_symlink_planted_at_the_part_file_never_redirects_the_writes() {
    let node = node();
    let victim = node.path().join("elsewhere.txt");
    fs::write(&victim, b"not xfd's").unwrap();
    let destination = node.path().join("f");
    std::os::unix::fs::symlink(&victim, node.path().join(".f.xfd-part")).unwrap();

    let opened = PartFile::open(&node.store, target(&destination, 100, "e1"));

    assert!(opened.is_err(), "the part file was opened through a symlink");
    assert_eq!(fs::read(&victim).unwrap(), b"not xfd's");
}

#[test]
fn a_destination_lock_refuses_a_second_holder_and_goes_with_the_first() {
    let node = node();
    let destination = node.path().join("f");
    let other_run = Store::open(node.state.path()).unwrap(); // another engine, in this process or not
    let first = node.store.lock(&destination).unwrap();
    for second in [&node.store, &other_run] {
        match second.lock(&destination) {
            Err(Error::DestinationBusy { path }) => assert_eq!(path, destination),
            other => panic!("expected DestinationBusy, got {other:?}"),
        }
    }
    other_run
        .lock(&node.path().join("g"))
        .expect("another destination is free");
    drop(first);
    other_run.lock(&destination).unwrap();
    assert!(
        names_in(node.path()).is_empty(),
        "a lock leaves nothing beside the destination"
    );
}

#[test]
fn a_lock_in_a_removed_store_no_longer_guards() {
    let node = node();
    let stale = node.store.lock(&node.path().join("f")).unwrap();
    assert!(stale.still_guards());
    fs::remove_dir_all(node.state.path()).unwrap(); // the cache directory was cleared meanwhile
    let newer = Store::open(node.state.path()).unwrap();
    let _held = newer.lock(&node.path().join("f")).unwrap();
    assert!(!stale.still_guards());
}

#[test]
fn a_publish_interrupted_after_its_rename_is_finished_and_one_before_it_is_dropped() {
    let node = node();
    let destination = node.path().join("f");
    let wanted = target(&destination, 2500, "e");
    let record = node.assemble(wanted.clone(), &data(2500)).unwrap();
    // After the rename, before the final record: the record of the publish in flight names this file.
    node.store
        .append(&[
            Op::Publishing {
                dest: destination.clone(),
                record: record.clone(),
            },
            Op::Forget {
                dest: destination.clone(),
                what: Facet::Published,
            },
        ])
        .unwrap();
    assert_eq!(
        inspect(&node.store, &destination, &wanted.identity).unwrap(),
        CacheState::Foreign
    );
    xfd_core::assembly::recover_interrupted_publish(&node.store, &wanted).unwrap();
    assert!(matches!(
        inspect(&node.store, &destination, &wanted.identity).unwrap(),
        CacheState::Hit(_)
    ));

    // Before the rename: the record names a part file that never reached the destination.
    let elsewhere = node.path().join("other");
    fs::write(&elsewhere, data(2500)).unwrap();
    let in_flight = FileRecord {
        stamp: Some(xfd_core::assembly::FileStamp::of(&fs::metadata(&elsewhere).unwrap())),
        ..record
    };
    node.store
        .append(&[
            Op::Publishing {
                dest: destination.clone(),
                record: in_flight,
            },
            Op::Forget {
                dest: destination.clone(),
                what: Facet::Published,
            },
        ])
        .unwrap();
    xfd_core::assembly::recover_interrupted_publish(&node.store, &wanted).unwrap();
    let entry = node.store.entry(&destination);
    assert!(entry.publishing.is_none() && entry.published.is_none(), "{entry:?}");
}

#[test]
fn the_previous_layouts_files_are_imported_once_and_removed() {
    let node = node();
    let destination = node.path().join("m.bin");
    let wanted = target(&destination, 2500, "e");
    let record = node.assemble(wanted.clone(), &data(2500)).unwrap();
    // As a previous version left it: a sidecar, a lock file, endgame scratch, and a resume record.
    let mut sidecar = serde_json::to_value(&record).unwrap();
    sidecar["format"] = "xfd.file/1".into();
    fs::write(node.path().join(".m.bin.xfd.json"), sidecar.to_string()).unwrap();
    fs::write(node.path().join(".m.bin.xfd-lock"), b"").unwrap();
    fs::write(node.path().join(".m.bin.xfd-duplicate-Xy12"), b"scratch").unwrap();
    let other = node.path().join("n.bin");
    let state = serde_json::json!({"identity": target(&other, 2000, "n").identity, "chunks": {"n-0000": "ab"}});
    fs::write(node.path().join(".n.bin.xfd-state.json"), state.to_string()).unwrap();
    let upgraded = Store::open(&node.state.path().join("after-upgrade")).unwrap();

    xfd_core::store::import_beside(&upgraded, &[destination.as_path(), other.as_path()]).unwrap();

    assert_eq!(names_in(node.path()), ["m.bin"]);
    assert_eq!(upgraded.entry(&destination).published, Some(Box::new(record)));
    assert!(matches!(
        inspect(&upgraded, &destination, &wanted.identity).unwrap(),
        CacheState::Hit(_)
    ));
    let resumable = upgraded.entry(&other).part.unwrap();
    assert_eq!((resumable.path, resumable.chunks.len()), (part_path(&other), 1));
}
