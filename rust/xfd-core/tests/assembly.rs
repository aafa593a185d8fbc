//! Part files, resume, publish, sidecars and the cache states they give.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use xfd_core::assembly::{
    CacheState, ChunkSpan, FileIdentity, FileTarget, PartFile, deep_verify, inspect, part_path, publish_copy, seal,
    sidecar_path,
};
use xfd_core::{ChunkDigest, Error};

const CHUNK: u64 = 1000;

fn data(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 13 % 256) as u8).collect()
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

fn assemble(target: FileTarget, bytes: &[u8]) -> xfd_core::Result<xfd_core::assembly::Sidecar> {
    let mut part = PartFile::open(target)?;
    for chunk in part.missing() {
        write_chunk(&mut part, bytes, &chunk);
    }
    part.publish()
}

fn hidden_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn chunks_assemble_into_a_published_file_with_a_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("models/model.bin");
    let bytes = data(3500);
    let sidecar = assemble(target(&destination, 3500, "e1"), &bytes).unwrap();
    assert_eq!(fs::read(&destination).unwrap(), bytes);
    assert_eq!(sidecar.chunks.len(), 4);
    assert_eq!(
        hidden_files(&dir.path().join("models")),
        [".model.bin.xfd.json", "model.bin"]
    );
    assert!(matches!(
        inspect(&destination, &target(&destination, 3500, "e1").identity).unwrap(),
        CacheState::Hit(_)
    ));
}

#[test]
fn a_published_file_touched_since_must_prove_its_bytes_again() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("model.bin");
    let bytes = data(3500);
    let wanted = target(&destination, 3500, "e1");
    let sidecar = assemble(wanted.clone(), &bytes).unwrap();

    // Edited in place, same size: no longer a plain cache hit, and its bytes fail verification.
    let file = fs::OpenOptions::new().write(true).open(&destination).unwrap();
    file.write_all_at(b"edited", 100).unwrap();
    drop(file);
    let CacheState::Touched(recorded) = inspect(&destination, &wanted.identity).unwrap() else {
        panic!("an edited file must not be a cache hit")
    };
    assert!(!deep_verify(&destination, &wanted, &recorded).unwrap());

    // Put back byte for byte: touched, but verified, and a hit again once sealed anew.
    fs::write(&destination, &bytes).unwrap();
    let CacheState::Touched(recorded) = inspect(&destination, &wanted.identity).unwrap() else {
        panic!("a rewritten file must be verified before it is trusted")
    };
    assert!(deep_verify(&destination, &wanted, &recorded).unwrap());
    seal(&destination, &sidecar).unwrap();
    assert!(matches!(
        inspect(&destination, &wanted.identity).unwrap(),
        CacheState::Hit(_)
    ));
}

#[test]
fn an_incomplete_file_is_never_published() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("f");
    let bytes = data(2500);
    let mut part = PartFile::open(target(&destination, 2500, "e")).unwrap();
    let first = part.missing()[0].clone();
    write_chunk(&mut part, &bytes, &first);
    let error = part.publish().err().unwrap();
    assert!(error.to_string().contains("is missing"), "{error}");
    assert!(!destination.exists());
}

#[test]
fn a_user_file_at_the_destination_is_left_alone_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("f");
    fs::write(&destination, b"precious user data").unwrap();
    let error = assemble(target(&destination, 1500, "e"), &data(1500)).err().unwrap();
    assert!(matches!(error, Error::DestinationExists { .. }), "{error}");
    assert_eq!(fs::read(&destination).unwrap(), b"precious user data");
    assert!(!part_path(&destination).exists());

    let mut forced = target(&destination, 1500, "e");
    forced.overwrite = true;
    assemble(forced, &data(1500)).unwrap();
    assert_eq!(fs::read(&destination).unwrap(), data(1500));
}

#[test]
fn a_file_in_the_way_of_a_directory_is_named_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("models"), b"a user's file").unwrap();
    let destination = dir.path().join("models/sub/m.bin");
    let error = assemble(target(&destination, 1500, "e"), &data(1500)).err().unwrap();
    let Error::NotADirectory { blocker, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(blocker, &dir.path().join("models"));
    assert!(error.to_string().contains("is a file in the way"), "{error}");
    assert_eq!(fs::read(dir.path().join("models")).unwrap(), b"a user's file");
}

#[test]
fn a_file_xfd_wrote_for_an_older_version_is_stale_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("f");
    assemble(target(&destination, 1500, "old"), &data(1500)).unwrap();
    let new = target(&destination, 2000, "new");
    assert_eq!(inspect(&destination, &new.identity).unwrap(), CacheState::Stale);
    let bytes: Vec<u8> = data(2000).into_iter().rev().collect();
    assemble(new.clone(), &bytes).unwrap();
    assert_eq!(fs::read(&destination).unwrap(), bytes);
    assert!(matches!(
        inspect(&destination, &new.identity).unwrap(),
        CacheState::Hit(_)
    ));
}

#[test]
fn a_resumed_part_keeps_only_chunks_whose_bytes_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("f");
    let bytes = data(4000);
    {
        let mut part = PartFile::open(target(&destination, 4000, "e")).unwrap();
        let chunks = part.missing();
        write_chunk(&mut part, &bytes, &chunks[0]);
        write_chunk(&mut part, &bytes, &chunks[2]);
    } // the run is interrupted here
    let part = PartFile::open(target(&destination, 4000, "e")).unwrap();
    assert_eq!(part.done().keys().collect::<Vec<_>>(), ["e-0000", "e-0002"]);
    drop(part);

    // Damage chunk 2's bytes on disk: it must be fetched again.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(part_path(&destination))
        .unwrap();
    file.write_all_at(b"XXXX", 2100).unwrap();
    let part = PartFile::open(target(&destination, 4000, "e")).unwrap();
    assert_eq!(
        part.missing().iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["e-0001", "e-0002", "e-0003"]
    );
}

#[test]
fn a_part_for_another_identity_is_started_over() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("f");
    {
        let mut part = PartFile::open(target(&destination, 2000, "a")).unwrap();
        let first = part.missing()[0].clone();
        write_chunk(&mut part, &data(2000), &first);
    }
    let part = PartFile::open(target(&destination, 2000, "b")).unwrap();
    assert!(part.done().is_empty());
}

#[test]
fn a_wrong_sha256_refuses_publication_and_discards_the_part() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("f");
    let mut wrong = target(&destination, 1200, "e");
    wrong.sha256 = Some("0".repeat(64));
    let error = assemble(wrong, &data(1200)).err().unwrap();
    assert!(matches!(error, Error::Sha256Mismatch { .. }), "{error}");
    assert!(!destination.exists());
    assert!(hidden_files(dir.path()).is_empty(), "{:?}", hidden_files(dir.path()));

    let mut right = target(&destination, 3, "e");
    right.sha256 = Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()); // sha256("abc")
    assemble(right, b"abc").unwrap();
    assert_eq!(fs::read(&destination).unwrap(), b"abc");
}

#[test]
fn deep_verify_notices_content_changed_behind_the_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("f");
    let wanted = target(&destination, 2500, "e");
    let sidecar = assemble(wanted.clone(), &data(2500)).unwrap();
    assert!(deep_verify(&destination, &wanted, &sidecar).unwrap());
    let file = fs::OpenOptions::new().write(true).open(&destination).unwrap();
    file.write_all_at(b"!", 1234).unwrap();
    assert!(!deep_verify(&destination, &wanted, &sidecar).unwrap());
}

#[test]
fn an_empty_object_publishes_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("empty");
    let sidecar = assemble(target(&destination, 0, "e"), b"").unwrap();
    assert!(sidecar.chunks.is_empty());
    assert_eq!(fs::read(&destination).unwrap(), b"");
}

#[test]
fn copies_to_other_destinations_carry_the_same_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a/f");
    let sidecar = assemble(target(&first, 1500, "e"), &data(1500)).unwrap();
    let second = target(&dir.path().join("b/g"), 1500, "e");
    publish_copy(&first, &sidecar, &second).unwrap();
    assert_eq!(fs::read(&second.destination).unwrap(), data(1500));
    assert!(sidecar_path(&second.destination).exists());
    assert!(matches!(
        inspect(&second.destination, &second.identity).unwrap(),
        CacheState::Hit(_)
    ));
}

#[test]
fn a_symlink_planted_at_the_part_file_never_redirects_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("elsewhere.txt");
    fs::write(&victim, b"not xfd's").unwrap();
    let destination = dir.path().join("f");
    std::os::unix::fs::symlink(&victim, dir.path().join(".f.xfd-part")).unwrap();

    let opened = PartFile::open(target(&destination, 100, "e1"));

    assert!(opened.is_err(), "the part file was opened through a symlink");
    assert_eq!(fs::read(&victim).unwrap(), b"not xfd's");
}

#[test]
fn a_destination_lock_refuses_a_second_holder_and_goes_with_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("f");
    let first = xfd_core::assembly::lock_destination(&destination).unwrap();
    match xfd_core::assembly::lock_destination(&destination) {
        Err(Error::DestinationBusy { path }) => assert_eq!(path, destination),
        other => panic!("expected DestinationBusy, got {other:?}"),
    }
    drop(first);
    assert!(!dir.path().join(".f.xfd-lock").exists());
    xfd_core::assembly::lock_destination(&destination).unwrap();
}

#[test]
fn a_stale_lock_never_removes_a_newer_runs_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("f");
    let stale = xfd_core::assembly::lock_destination(&destination).unwrap();
    fs::remove_file(dir.path().join(".f.xfd-lock")).unwrap(); // the directory was cleared meanwhile
    let newer = xfd_core::assembly::lock_destination(&destination).unwrap();
    assert!(!stale.still_guards() && newer.still_guards());
    drop(stale);
    assert!(
        dir.path().join(".f.xfd-lock").exists(),
        "the stale lock removed the newer run's file"
    );
    assert!(matches!(
        xfd_core::assembly::lock_destination(&destination),
        Err(Error::DestinationBusy { .. })
    ));
}
