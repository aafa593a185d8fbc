//! The node store: the log's lines survive reopening, crashes and compaction; locks exclude other runs;
//! what a killed run left beside a destination is found and removed by the next one.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use xfd_core::assembly::{FileIdentity, FileRecord, FileStamp, part_path};
use xfd_core::store::{Entry, Facet, Op, Store};

fn identity(etag: &str) -> FileIdentity {
    FileIdentity {
        store_url: "s3://b".into(),
        key: "k".into(),
        etag: Some(etag.into()),
        version: None,
        size: 10,
    }
}

fn published(dest: &Path, etag: &str) -> Op {
    let stamp = FileStamp {
        mtime_ns: 1_700_000_000_123_456_789,
        ctime_ns: 1_700_000_000_987_654_321,
        inode: 42,
        size: 10,
        birth_ns: Some(1_699_999_999_000_000_001),
    };
    Op::Published {
        dest: dest.to_owned(),
        record: FileRecord {
            identity: identity(etag),
            chunks: BTreeMap::from([("c0".to_string(), "ab".repeat(32))]),
            stamp: Some(stamp),
            layout: None,
        },
    }
}

fn log_of(dir: &Path) -> PathBuf {
    dir.join("records.log")
}

#[test]
fn records_survive_reopening_and_the_last_line_for_a_destination_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (f, g) = (Path::new("/n/f"), Path::new("/n/g"));
    let store = Store::open(dir.path()).unwrap();
    store.append(&[published(f, "v1"), published(g, "v1")]).unwrap();
    store.append_durable(&[published(f, "v2")]).unwrap();
    store
        .append(&[
            Op::Partial {
                dest: g.into(),
                part: part_path(g),
                identity: identity("v2"),
            },
            Op::Chunks {
                dest: g.into(),
                chunks: BTreeMap::from([("c0".into(), "00".into())]),
            },
            Op::Chunks {
                dest: g.into(),
                chunks: BTreeMap::from([("c1".into(), "11".into())]),
            },
        ])
        .unwrap();
    let before = store.entries();
    drop(store);

    let reopened = Store::open(dir.path()).unwrap();
    assert_eq!(reopened.entries(), before);
    assert_eq!(
        reopened.entry(f).published.unwrap().identity.etag.as_deref(),
        Some("v2")
    );
    let part = reopened.entry(g).part.unwrap();
    assert_eq!(part.chunks.len(), 2);
    assert_eq!(
        reopened.entry(g).published.unwrap().identity.etag.as_deref(),
        Some("v1")
    );
    reopened
        .append(&[Op::Forget {
            dest: g.into(),
            what: Facet::Part,
        }])
        .unwrap();
    reopened
        .append(&[Op::Forget {
            dest: g.into(),
            what: Facet::Published,
        }])
        .unwrap();
    assert_eq!(reopened.entry(g), Entry::default());
    assert_eq!(reopened.entries().len(), 1, "an entry with nothing left is gone");
}

#[test]
fn a_line_torn_by_a_crash_is_skipped_and_never_merged_with_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(&[published(Path::new("/n/f"), "v1")]).unwrap();
    drop(store);
    // A crash in the middle of a write: half a line, no newline.
    let mut log = fs::OpenOptions::new().append(true).open(log_of(dir.path())).unwrap();
    log.write_all(br#"{"op":"published","dest":"/n/g","rec"#).unwrap();
    drop(log);

    let next = Store::open(dir.path()).unwrap();
    assert_eq!(next.entries().len(), 1);
    next.append(&[published(Path::new("/n/h"), "v1")]).unwrap();
    drop(next);
    let again = Store::open(dir.path()).unwrap();
    let destinations: Vec<_> = again.entries().into_iter().map(|(d, _)| d).collect();
    assert_eq!(destinations, [PathBuf::from("/n/f"), PathBuf::from("/n/h")]);
}

#[test]
fn a_long_log_is_compacted_to_its_live_entries_and_other_stores_follow() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reader = Store::open(dir.path()).unwrap(); // another engine on the node, opened before
    for round in 0..400 {
        let ops: Vec<_> = (0..5)
            .map(|i| published(&PathBuf::from(format!("/n/{i}")), &format!("v{round}")))
            .collect();
        store.append(&ops).unwrap();
    }
    let lines = fs::read_to_string(log_of(dir.path())).unwrap().lines().count();
    assert!(
        lines < 1100,
        "2,000 lines for 5 live entries were not compacted: {lines}"
    );
    assert_eq!(store.entries().len(), 5);
    assert_eq!(
        store
            .entry(Path::new("/n/3"))
            .published
            .unwrap()
            .identity
            .etag
            .as_deref(),
        Some("v399")
    );

    reader.refresh().unwrap();
    assert_eq!(
        reader.entries(),
        store.entries(),
        "a store opened before the compaction reads the new log"
    );
    reader.append(&[published(Path::new("/n/9"), "late")]).unwrap();
    assert_eq!(
        Store::open(dir.path()).unwrap().entries().len(),
        6,
        "its appends land in the new log"
    );
    assert!(!dir.path().join("records.log.compacting").exists());
}

#[test]
fn a_killed_runs_part_file_is_removed_by_the_next_run_but_a_live_runs_is_kept() {
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let (dead, alive) = (files.path().join("dead.bin"), files.path().join("alive.bin"));
    let live_run = Store::open(state.path()).unwrap();
    let _alive_lock = live_run.lock(&alive).unwrap();
    {
        let killed_run = Store::open(state.path()).unwrap();
        let _lock = killed_run.lock(&dead).unwrap();
        for (run, dest) in [(&killed_run, &dead), (&live_run, &alive)] {
            run.append(&[Op::Partial {
                dest: dest.clone(),
                part: part_path(dest),
                identity: identity("e"),
            }])
            .unwrap();
            fs::write(part_path(dest), b"half a file").unwrap();
        }
    } // killed: its locks go with it (the kernel drops them), its files and records stay

    let next_run = Store::open(state.path()).unwrap();
    assert_eq!(next_run.remove_leftovers().unwrap(), 1);

    assert!(!part_path(&dead).exists());
    assert!(next_run.entry(&dead).part.is_none());
    assert!(part_path(&alive).exists(), "a live run's part file was removed");
    assert!(next_run.entry(&alive).part.is_some());
}

#[test]
fn only_xfds_own_part_name_is_ever_removed() {
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let dest = files.path().join("f");
    let users = files.path().join("users-file");
    fs::write(&users, b"mine").unwrap();
    let store = Store::open(state.path()).unwrap();
    // A record naming another file (a damaged or hand-edited log) only ever loses the record.
    store
        .append(&[Op::Partial {
            dest: dest.clone(),
            part: users.clone(),
            identity: identity("e"),
        }])
        .unwrap();
    assert_eq!(store.remove_leftovers().unwrap(), 1);
    assert_eq!(fs::read(&users).unwrap(), b"mine");
    assert!(store.entry(&dest).part.is_none());
}

/// Kernel byte-range locks on `file` right now, from `/proc/locks` (its inode; one line per lock).
fn kernel_locks_on(file: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let inode = format!(":{} ", fs::metadata(file).unwrap().ino());
    let locks = fs::read_to_string("/proc/locks").unwrap();
    locks.lines().filter(|line| line.contains(&inode)).count()
}

#[test]
fn a_run_holds_many_destinations_with_one_kernel_lock_and_other_runs_are_refused_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let destinations: Vec<PathBuf> = (0..20_000)
        .map(|i| PathBuf::from(format!("/d/{}/f{i}", i % 20)))
        .collect();
    let paths: Vec<&Path> = destinations.iter().map(PathBuf::as_path).collect();
    let first = Store::open(dir.path()).unwrap();
    let held = first.try_lock_all(&paths).unwrap().unwrap();
    assert_eq!(held.len(), 20_000);
    // One lock per destination made every lock request walk all of them: 20,000 took 10 s.
    assert_eq!(kernel_locks_on(&dir.path().join("locks")), 1, "the run's own byte only");

    let second = Store::open(dir.path()).unwrap();
    let asked = [Path::new("/elsewhere"), paths[12_345]];
    assert_eq!(second.try_lock_all(&asked).unwrap().unwrap_err(), paths[12_345]);
    assert!(
        second.try_lock(Path::new("/elsewhere")).unwrap().is_some(),
        "refused ones take nothing"
    );
    assert!(second.try_lock(paths[7]).unwrap().is_none());
    assert!(
        first.try_lock(paths[7]).unwrap().is_none(),
        "never twice through one store"
    );

    drop(held); // the run ends: its claims mean nothing from now on
    assert!(second.try_lock(paths[7]).unwrap().is_some());
    let again = first.try_lock_all(&paths[8..]).unwrap();
    assert!(again.is_ok(), "the first store's new run takes what it let go");
}
