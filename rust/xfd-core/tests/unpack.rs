//! Unpack: round trips, detection, and every way an archive may try to escape or exhaust a node.
//!
//! Hostile archives are written header by header: the `tar` crate's builder refuses `..` and absolute
//! names, which is exactly what these tests need to send.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::EntryType;
use xfd_core::store::{Store, UnpackRecord};
use xfd_core::{ArchiveFormat, Error, UnpackOptions, UnpackReport, is_unpacked, unpack, unpack_async};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

// ---------------------------------------------------------------------------------------------------
// A scene: archives, the destination's parent ("site"), a directory standing for "elsewhere", and the
// node store ("state", left out of snapshots: records may change, the file system around them not).

struct Scene {
    tmp: tempfile::TempDir,
    store: Arc<Store>,
}

impl Scene {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        for dir in ["archives", "site", "outside"] {
            fs::create_dir(tmp.path().join(dir)).unwrap();
        }
        let store = Store::open(&tmp.path().join("state")).unwrap();
        Scene { tmp, store }
    }

    fn record(&self) -> Option<UnpackRecord> {
        self.store.entry(&self.dest()).unpacked.map(|record| *record)
    }

    fn archive(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.tmp.path().join("archives").join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn dest(&self) -> PathBuf {
        self.tmp.path().join("site").join("dest")
    }

    fn site(&self) -> PathBuf {
        self.tmp.path().join("site")
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    /// Every path under the scene with its kind and size, read without following symlinks.
    fn snapshot(&self) -> BTreeSet<String> {
        let mut paths = BTreeSet::new();
        walk(self.tmp.path(), self.tmp.path(), &mut paths);
        paths
    }

    fn site_names(&self) -> BTreeSet<String> {
        fs::read_dir(self.site())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    fn unpack(&self, archive: &Path, identity: &str) -> xfd_core::Result<UnpackReport> {
        unpack(&self.store, archive, &self.dest(), identity, &UnpackOptions::default())
    }

    /// Unpacks `archive`, expects a refusal, and checks the file system is exactly as before: nothing
    /// beside the destination, nothing outside it.
    fn refuse_with(&self, archive: &Path, options: &UnpackOptions) -> Error {
        let before = self.snapshot();
        let err = unpack(&self.store, archive, &self.dest(), "id", options).expect_err("archive was accepted");
        assert_eq!(
            self.snapshot(),
            before,
            "a refused unpack changed the file system: {err}"
        );
        assert!(
            !self.store.entry(&self.dest()).staging,
            "a refused unpack left its staging record"
        );
        err
    }

    fn refuse(&self, archive: &Path) -> Error {
        self.refuse_with(archive, &UnpackOptions::default())
    }
}

fn walk(root: &Path, dir: &Path, paths: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path == root.join("state") {
            continue;
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        let relative = path.strip_prefix(root).unwrap().display().to_string();
        paths.insert(format!("{relative} {:?} {}", meta.file_type(), meta.len()));
        if meta.is_dir() {
            walk(root, &path, paths);
        }
    }
}

fn assert_unsafe(err: &Error, entry: &str, reason_part: &str) {
    match err {
        Error::UnsafeArchiveEntry { entry: got, reason, .. } => {
            assert_eq!(got, entry, "{err}");
            assert!(reason.contains(reason_part), "{err}");
        }
        other => panic!("expected an unsafe entry {entry:?}, got {other}"),
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

// ---------------------------------------------------------------------------------------------------
// Archive writers.

/// A tar written header by header, so names and types can be anything.
#[derive(Default)]
struct RawTar(Vec<u8>);

impl RawTar {
    fn entry(mut self, name: &str, kind: EntryType, mode: u32, link: &str, data: &[u8]) -> Self {
        let mut header = tar::Header::new_gnu();
        header.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        header.as_mut_bytes()[157..157 + link.len()].copy_from_slice(link.as_bytes());
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_entry_type(kind);
        header.set_cksum();
        self.0.extend_from_slice(header.as_bytes());
        self.push_data(data);
        self
    }

    fn push_data(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, EntryType::Regular, 0o644, "", data)
    }

    fn dir(self, name: &str) -> Self {
        self.entry(name, EntryType::Directory, 0o755, "", b"")
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Symlink, 0o777, target, b"")
    }

    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Link, 0o644, target, b"")
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn zip_of(build: impl FnOnce(&mut ZipWriter<Cursor<Vec<u8>>>)) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    build(&mut writer);
    writer.finish().unwrap().into_inner()
}

fn deflated(mode: u32) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .unix_permissions(mode)
}

fn zip_file(writer: &mut ZipWriter<Cursor<Vec<u8>>>, name: &str, mode: u32, data: &[u8]) {
    writer.start_file(name, deflated(mode)).unwrap();
    writer.write_all(data).unwrap();
}

// ---------------------------------------------------------------------------------------------------
// The sample tree every round trip writes and checks.

const LONG_DIR: &str = "a-directory-name-long-enough-that-the-path-needs-a-gnu-long-name-record";
const WEIGHTS_LEN: usize = 300 * 1024;

fn weights() -> Vec<u8> {
    (0..WEIGHTS_LEN).map(|i| (i * 7 % 251) as u8).collect()
}

fn sample_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: EntryType, mode: u32, link: Option<&str>, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        match link {
            Some(target) => builder.append_link(&mut header, path, target).unwrap(),
            None => builder.append_data(&mut header, path, data).unwrap(),
        }
    };
    add("model/", EntryType::Directory, 0o755, None, b"");
    add(
        "model/nested/deep/weights.bin",
        EntryType::Regular,
        0o644,
        None,
        &weights(),
    );
    add("model/empty.txt", EntryType::Regular, 0o644, None, b"");
    add("model/run.sh", EntryType::Regular, 0o755, None, b"#!/bin/sh\n");
    let long = format!("model/{LONG_DIR}/{LONG_DIR}/notes.txt");
    add(&long, EntryType::Regular, 0o644, None, b"long");
    add(
        "model/latest",
        EntryType::Symlink,
        0o777,
        Some("nested/deep/weights.bin"),
        b"",
    );
    add(
        "model/copy.bin",
        EntryType::Link,
        0o644,
        Some("model/nested/deep/weights.bin"),
        b"",
    );
    builder.into_inner().unwrap()
}

fn assert_sample_tree(dest: &Path, with_hardlink: bool) {
    let model = dest.join("model");
    assert_eq!(fs::read(model.join("nested/deep/weights.bin")).unwrap(), weights());
    assert_eq!(fs::read(model.join("empty.txt")).unwrap(), b"");
    assert_eq!(fs::read(model.join("run.sh")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(mode_of(&model.join("run.sh")), 0o755);
    assert_eq!(mode_of(&model.join("empty.txt")), 0o644);
    assert_eq!(mode_of(&model.join("nested")), 0o755);
    assert_eq!(mode_of(dest), 0o755);
    let long = model.join(LONG_DIR).join(LONG_DIR).join("notes.txt");
    assert_eq!(fs::read(long).unwrap(), b"long");
    assert_eq!(
        fs::read_link(model.join("latest")).unwrap(),
        Path::new("nested/deep/weights.bin")
    );
    if with_hardlink {
        let copy = fs::metadata(model.join("copy.bin")).unwrap();
        let original = fs::metadata(model.join("nested/deep/weights.bin")).unwrap();
        assert_eq!(copy.ino(), original.ino(), "copy.bin is a hard link");
    }
}

fn sample_zip() -> Vec<u8> {
    zip_of(|zip| {
        zip.add_directory("model/", SimpleFileOptions::default()).unwrap();
        zip_file(zip, "model/nested/deep/weights.bin", 0o644, &weights());
        zip_file(zip, "model/empty.txt", 0o644, b"");
        zip_file(zip, "model/run.sh", 0o755, b"#!/bin/sh\n");
        let long = format!("model/{LONG_DIR}/{LONG_DIR}/notes.txt");
        zip_file(zip, &long, 0o644, b"long");
        zip.add_symlink("model/latest", "nested/deep/weights.bin", SimpleFileOptions::default())
            .unwrap();
    })
}

// ---------------------------------------------------------------------------------------------------
// Round trips.

#[test]
fn tar_round_trip_keeps_contents_modes_and_links() {
    let scene = Scene::new();
    let report = scene.unpack(&scene.archive("a.tar", &sample_tar()), "v1").unwrap();
    assert_sample_tree(&scene.dest(), true);
    let expected = UnpackReport {
        format: ArchiveFormat::Tar,
        entries: 7,
        files: 5,
        dirs: 5, // model, nested, deep, and the two long directories
        symlinks: 1,
        bytes_written: (WEIGHTS_LEN + 10 + 4) as u64,
        skipped: false,
    };
    assert_eq!(report, expected);
    let record = scene.record().unwrap();
    assert_eq!(record.identity.as_deref(), Some("v1"));
    assert_eq!(record.report.unwrap(), expected);
    assert_eq!(
        scene.site_names(),
        BTreeSet::from(["dest".into()]),
        "nothing of xfd's beside the tree"
    );
}

#[test]
fn tar_gz_round_trip() {
    let scene = Scene::new();
    let archive = scene.archive("a.tar.gz", &gzip(&sample_tar()));
    let report = scene.unpack(&archive, "v1").unwrap();
    assert_sample_tree(&scene.dest(), true);
    assert_eq!((report.format, report.files), (ArchiveFormat::TarGz, 5));
}

#[test]
fn zip_round_trip() {
    let scene = Scene::new();
    let report = scene.unpack(&scene.archive("a.zip", &sample_zip()), "v1").unwrap();
    assert_sample_tree(&scene.dest(), false);
    assert_eq!(report.format, ArchiveFormat::Zip);
    assert_eq!((report.entries, report.files, report.symlinks), (6, 4, 1));
    assert_eq!(report.bytes_written, (WEIGHTS_LEN + 10 + 4) as u64);
}

#[test]
fn empty_archives_unpack_to_an_empty_directory() {
    let empty_tar = tar::Builder::new(Vec::new()).into_inner().unwrap();
    let cases = [
        ("empty.tar", empty_tar.clone(), ArchiveFormat::Tar),
        ("empty.tgz", gzip(&empty_tar), ArchiveFormat::TarGz),
        ("empty.zip", zip_of(|_| {}), ArchiveFormat::Zip),
    ];
    for (name, bytes, format) in cases {
        let scene = Scene::new();
        let report = scene.unpack(&scene.archive(name, &bytes), "v1").unwrap();
        assert_eq!((report.format, report.entries, report.files), (format, 0, 0), "{name}");
        assert_eq!(fs::read_dir(scene.dest()).unwrap().count(), 0, "{name}");
    }
}

#[test]
fn formats_are_detected_by_content_not_by_name() {
    let cases = [
        ("looks-like.zip", sample_tar(), ArchiveFormat::Tar),
        ("looks-like.tar", gzip(&sample_tar()), ArchiveFormat::TarGz),
        ("looks-like.tar.gz", sample_zip(), ArchiveFormat::Zip),
        ("no-extension", sample_zip(), ArchiveFormat::Zip),
    ];
    for (name, bytes, format) in cases {
        let scene = Scene::new();
        let report = scene.unpack(&scene.archive(name, &bytes), "v1").unwrap();
        assert_eq!(report.format, format, "{name}");
        assert_eq!(xfd_core::unpack::detect(&scene.archive(name, &bytes)).unwrap(), format);
    }
}

#[test]
fn unknown_content_is_refused_naming_the_file() {
    let scene = Scene::new();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "notes.tar",
            b"just some text, long enough to not be anything\n".repeat(20),
            "none of",
        ),
        ("empty.zip", Vec::new(), "empty"),
        (
            "text.tar.gz",
            gzip(&b"plain text inside gzip\n".repeat(40)),
            "does not hold a tar",
        ),
    ];
    for (name, bytes, detail_part) in cases {
        let archive = scene.archive(name, &bytes);
        let err = scene.refuse(&archive);
        match &err {
            Error::UnknownArchiveFormat { path, detail } => {
                assert_eq!(path, &archive);
                assert!(detail.contains(detail_part), "{err}");
            }
            other => panic!("{name}: expected an unknown format, got {other}"),
        }
        assert!(err.to_string().contains(&archive.display().to_string()), "{err}");
    }
}

#[test]
fn a_forced_format_that_does_not_match_is_unreadable() {
    let scene = Scene::new();
    let options = UnpackOptions {
        format: ArchiveFormat::Tar,
        ..UnpackOptions::default()
    };
    let err = scene.refuse_with(&scene.archive("a.zip", &sample_zip()), &options);
    assert!(matches!(err, Error::ArchiveUnreadable { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------------
// Entries that would land outside the destination.

#[test]
fn parent_directory_entries_are_refused_in_tar_and_zip() {
    let scene = Scene::new();
    for name in ["../escaped.txt", "ok/../../escaped.txt"] {
        let tar = RawTar::default().file("fine.txt", b"ok").file(name, b"pwned").finish();
        let err = scene.refuse(&scene.archive("slip.tar", &tar));
        assert_unsafe(&err, name, "`..`");
    }
    let zip = zip_of(|zip| zip_file(zip, "../escaped.txt", 0o644, b"pwned"));
    let err = scene.refuse(&scene.archive("slip.zip", &zip));
    assert_unsafe(&err, "../escaped.txt", "`..`");
}

#[test]
fn absolute_and_windows_rooted_entries_are_refused() {
    let scene = Scene::new();
    let absolute = scene.outside().join("absolute.txt").display().to_string();
    let tar = RawTar::default().file(&absolute, b"pwned").finish();
    assert_unsafe(&scene.refuse(&scene.archive("abs.tar", &tar)), &absolute, "absolute");
    let cases = [
        (absolute.as_str(), "absolute"),
        ("C:\\evil.txt", "drive"),
        ("\\\\server\\share\\evil.txt", "UNC"),
        ("x\\..\\..\\evil.txt", "`..`"),
    ];
    for (name, reason) in cases {
        let zip = zip_of(|zip| zip_file(zip, name, 0o644, b"pwned"));
        assert_unsafe(&scene.refuse(&scene.archive("abs.zip", &zip)), name, reason);
    }
    assert!(!scene.outside().join("absolute.txt").exists());
}

#[test]
fn symlinks_leaving_the_destination_are_refused() {
    let scene = Scene::new();
    let outside = scene.outside().display().to_string();
    let cases = [
        ("link", outside.as_str(), "absolute target"),
        ("link", "../../outside", "leaves the destination"),
        ("a/b/link", "../../../x", "leaves the destination"),
    ];
    for (name, target, reason) in cases {
        let tar = RawTar::default().symlink(name, target).finish();
        assert_unsafe(&scene.refuse(&scene.archive("link.tar", &tar)), name, reason);
        let zip = zip_of(|zip| {
            zip.add_symlink(name, target, SimpleFileOptions::default()).unwrap();
        });
        assert_unsafe(&scene.refuse(&scene.archive("link.zip", &zip)), name, reason);
    }
}

#[test]
fn symlink_chains_that_leave_the_destination_are_refused() {
    // Each link looks inside on its own: d/up is the root, d/b is "d/up/.." = "d" lexically, but
    // resolving d/up first makes it the root's parent.
    let scene = Scene::new();
    let tar = RawTar::default()
        .dir("d")
        .symlink("d/up", "..")
        .symlink("d/b", "up/..")
        .finish();
    assert_unsafe(
        &scene.refuse(&scene.archive("chain.tar", &tar)),
        "d/b",
        "through other symlinks",
    );
}

#[test]
fn writing_through_an_archive_symlink_is_refused() {
    let scene = Scene::new();
    // The classic: plant a link to elsewhere, then write "into" it.
    let outside = scene.outside().display().to_string();
    let tar = RawTar::default()
        .symlink("link", &outside)
        .file("link/evil.txt", b"pwned")
        .finish();
    scene.refuse(&scene.archive("through.tar", &tar));
    assert!(!scene.outside().join("evil.txt").exists());
    // Even a link that stays inside is never written through.
    let tar = RawTar::default()
        .dir("sub")
        .symlink("link", "sub")
        .file("link/evil.txt", b"x")
        .finish();
    let err = scene.refuse(&scene.archive("through-inside.tar", &tar));
    assert_unsafe(&err, "link/evil.txt", "goes through a symlink");
    let zip = zip_of(|zip| {
        zip.add_directory("sub/", SimpleFileOptions::default()).unwrap();
        zip.add_symlink("link", "sub", SimpleFileOptions::default()).unwrap();
        zip_file(zip, "link/evil.txt", 0o644, b"x");
    });
    let err = scene.refuse(&scene.archive("through.zip", &zip));
    assert_unsafe(&err, "link/evil.txt", "goes through a symlink");
}

#[test]
fn hard_links_must_name_an_earlier_regular_file_inside() {
    let scene = Scene::new();
    let secret = scene.outside().join("secret");
    fs::write(&secret, b"secret").unwrap();
    let secret = secret.display().to_string();
    let cases = [
        ("../outside/secret", "`..`"),
        (secret.as_str(), "absolute"),
        ("later.txt", "not an earlier regular file"),
        ("link", "not an earlier regular file"),
        ("dir", "not an earlier regular file"),
    ];
    for (target, reason) in cases {
        let tar = RawTar::default()
            .file("file.txt", b"ok")
            .symlink("link", "file.txt")
            .dir("dir")
            .hardlink("hard", target)
            .file("later.txt", b"later")
            .finish();
        assert_unsafe(&scene.refuse(&scene.archive("hard.tar", &tar)), "hard", reason);
    }
}

#[test]
fn devices_fifos_and_sockets_are_refused() {
    let scene = Scene::new();
    let kinds = [
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "fifo"),
    ];
    for (kind, what) in kinds {
        let tar = RawTar::default().entry("special", kind, 0o644, "", b"").finish();
        assert_unsafe(&scene.refuse(&scene.archive("dev.tar", &tar)), "special", what);
    }
    for (mode, what) in [(0o010_644, "fifo"), (0o140_644, "socket"), (0o020_644, "character")] {
        let zip = zip_of(|zip| {
            let options = SimpleFileOptions::default().external_attributes(mode << 16);
            zip.start_file("special", options).unwrap();
        });
        assert_unsafe(&scene.refuse(&scene.archive("dev.zip", &zip)), "special", what);
    }
}

// ---------------------------------------------------------------------------------------------------
// Limits: bytes are counted as read, never taken from headers.

/// A 1 MiB `max_size`, with the ratio out of the way.
fn small_limit() -> UnpackOptions {
    UnpackOptions {
        max_total_bytes: 1 << 20,
        max_ratio: f64::INFINITY,
        ..UnpackOptions::default()
    }
}

/// No byte limit but `max_size`: for archives that expand far on purpose.
fn no_ratio() -> UnpackOptions {
    UnpackOptions {
        max_ratio: f64::INFINITY,
        ..UnpackOptions::default()
    }
}

/// The limit an error says was hit, and its message.
fn limit_hit(err: &Error) -> (&'static str, String) {
    match err {
        Error::ArchiveLimit { limit, .. } => (limit, err.to_string()),
        other => panic!("expected a limit to be hit, got {other}"),
    }
}

/// 8 MiB of zeros in a tar.gz or zip of a few kilobytes: a thousand times its size.
fn gzip_bomb() -> Vec<u8> {
    let bomb = gzip(&RawTar::default().file("zeros.bin", &vec![0; 8 << 20]).finish());
    assert!(
        bomb.len() < 40 * 1024,
        "the test archive is a bomb: {} bytes",
        bomb.len()
    );
    bomb
}

fn zip_bomb() -> Vec<u8> {
    let bomb = zip_of(|zip| zip_file(zip, "zeros.bin", 0o644, &vec![0; 8 << 20]));
    assert!(
        bomb.len() < 40 * 1024,
        "the test archive is a bomb: {} bytes",
        bomb.len()
    );
    bomb
}

#[test]
fn a_gzip_bomb_is_stopped_at_max_size() {
    let scene = Scene::new();
    let archive = scene.archive("bomb.tar.gz", &gzip_bomb());
    let options = UnpackOptions {
        artifact: Some("models".into()),
        ..small_limit()
    };
    let (limit, message) = limit_hit(&scene.refuse_with(&archive, &options));
    assert_eq!(limit, "max_size", "{message}");
    assert!(message.contains(&archive.display().to_string()), "{message}");
    assert!(message.contains("more than 1 MiB"), "{message}");
    assert!(
        message.contains(r#"raise unpack.max_size of artifact "models""#),
        "{message}"
    );
}

#[test]
fn archive_bombs_are_refused_by_the_default_ratio() {
    let scene = Scene::new();
    let archives = [
        scene.archive("bomb.tar.gz", &gzip_bomb()),
        scene.archive("bomb.zip", &zip_bomb()),
    ];
    for archive in archives {
        let options = UnpackOptions {
            artifact: Some("models".into()),
            ..UnpackOptions::default()
        };
        // The scene is unchanged: no staging tree, nothing at the destination, no sidecar.
        let (limit, message) = limit_hit(&scene.refuse_with(&archive, &options));
        assert_eq!(limit, "max_ratio", "{message}");
        assert!(message.contains(&archive.display().to_string()), "{message}");
        assert!(message.contains("more than 200 times"), "{message}");
        assert!(
            message.contains(r#"raise unpack.max_ratio of artifact "models""#),
            "{message}"
        );
        assert!(scene.site_names().is_empty(), "{:?}", scene.site_names());
    }
}

#[test]
fn a_raised_max_ratio_lets_a_trusted_archive_through() {
    let scene = Scene::new();
    let trusted = UnpackOptions {
        max_ratio: 5000.0,
        overwrite: true,
        ..UnpackOptions::default()
    };
    for archive in [
        scene.archive("bomb.tar.gz", &gzip_bomb()),
        scene.archive("bomb.zip", &zip_bomb()),
    ] {
        let identity = archive.display().to_string();
        let report = unpack(&scene.store, &archive, &scene.dest(), &identity, &trusted).unwrap();
        assert_eq!(report.bytes_written, 8 << 20);
        assert_eq!(fs::metadata(scene.dest().join("zeros.bin")).unwrap().len(), 8 << 20);
    }
}

#[test]
fn real_archives_stay_far_below_the_default_ratio() {
    let scene = Scene::new();
    // Words picked at random (a fixed LCG): text, which gzip shrinks a few times, never hundreds.
    let words = [
        "the ", "weights ", "of ", "layer ", "0.125 ", "-3.5e-2 ", "bias\n", "model ",
    ];
    let mut state: u64 = 1;
    let mut text = Vec::new();
    while text.len() < 4 << 20 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.extend_from_slice(words[(state >> 61) as usize].as_bytes());
    }
    let archive = scene.archive(
        "text.tar.gz",
        &gzip(&RawTar::default().file("notes.txt", &text).finish()),
    );
    let ratio = text.len() as f64 / archive.metadata().unwrap().len() as f64;
    assert!(ratio > 2.0 && ratio < 20.0, "ratio {ratio}");
    assert_eq!(scene.unpack(&archive, "v1").unwrap().bytes_written, text.len() as u64);
}

#[test]
fn a_disk_reserve_larger_than_the_free_space_is_refused_before_extraction() {
    let scene = Scene::new();
    let archive = scene.archive("model.tar", &sample_tar());
    for artifact in [None, Some("models".to_owned())] {
        let options = UnpackOptions {
            disk_reserve: u64::MAX / 2,
            artifact: artifact.clone(),
            ..UnpackOptions::default()
        };
        let (limit, message) = limit_hit(&scene.refuse_with(&archive, &options));
        assert_eq!(limit, "disk_reserve", "{message}");
        assert!(message.contains(&archive.display().to_string()), "{message}");
        assert!(message.contains(&scene.site().display().to_string()), "{message}");
        let key = if artifact.is_some() {
            "settings.disk_reserve in the manifest"
        } else {
            "disk_reserve"
        };
        assert!(message.contains(&format!("lower {key}")), "{message}");
    }
    // A reserve of 0 turns the check off; the default reserve fits this disk.
    let off = UnpackOptions {
        disk_reserve: 0,
        ..UnpackOptions::default()
    };
    unpack(&scene.store, &archive, &scene.dest(), "v1", &off).unwrap();
}

#[test]
fn plan_limits_reach_the_unpack_options() {
    let plan = |settings_extra: &str, unpack_extra: &str| {
        let text = format!(
            r#"{{"format": "xfd.plan/1", "settings": {{"chunk_size": "auto", "node_parallelism": 8,
            "upload_slots": 8, "origin_parallelism": 32, "overwrite": false{settings_extra}}}, "stores": {{}},
            "objects": [{{"id": "o1", "store": "s", "key": "k", "size": 10, "etag": null, "version": null,
            "last_modified": null, "chunks": []}}], "files": [], "unpacks": [{{"object_id": "o1",
            "archive": "m.tar.gz", "format": "auto", "to": "m", "artifact": "models"{unpack_extra}}}]}}"#
        );
        xfd_core::plan::Plan::from_json(&text)
    };
    let defaults = UnpackOptions::default();
    // Older plans (and null fields) keep the engine's defaults.
    for (settings, unpack_extra) in [("", ""), ("", r#", "max_size": null, "max_ratio": null"#)] {
        let plan = plan(settings, unpack_extra).unwrap();
        let options = defaults.for_plan(&plan.unpacks[0], &plan.settings);
        assert_eq!(options.max_total_bytes, 64 << 30);
        assert_eq!(options.max_ratio, 200.0);
        assert_eq!(options.disk_reserve, 1 << 30);
        assert_eq!(options.artifact.as_deref(), Some("models"));
    }
    let set = plan(r#", "disk_reserve": 5"#, r#", "max_size": 1024, "max_ratio": 1000.5"#).unwrap();
    let options = defaults.for_plan(&set.unpacks[0], &set.settings);
    assert_eq!(
        (options.max_total_bytes, options.max_ratio, options.disk_reserve),
        (1024, 1000.5, 5)
    );
    for bad in [
        r#", "max_ratio": 0"#,
        r#", "max_ratio": -1"#,
        r#", "max_size": -1"#,
        r#", "max_ratio": "big""#,
    ] {
        let err = plan("", bad).expect_err(bad);
        assert!(matches!(err, Error::InvalidPlan(_)), "{err}");
    }
    assert!(
        plan(r#", "disk_reserve": "1 GiB""#, "").is_err(),
        "disk_reserve is bytes in a plan"
    );
}

/// A GNU sparse entry whose header says 512 bytes but which expands to `real_size`.
fn sparse_tar(real_size: u64) -> Vec<u8> {
    fn octal(field: &mut [u8], value: u64) {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    }
    let mut header = tar::Header::new_gnu();
    header.as_mut_bytes()[..10].copy_from_slice(b"sparse.bin");
    header.set_mode(0o644);
    header.set_entry_type(EntryType::GNUSparse);
    header.set_size(512);
    let gnu = header.as_gnu_mut().unwrap();
    octal(&mut gnu.sparse[0].offset, real_size - 512);
    octal(&mut gnu.sparse[0].numbytes, 512);
    octal(&mut gnu.realsize, real_size);
    header.set_cksum();
    let mut tar = RawTar(header.as_bytes().to_vec());
    tar.push_data(&[7; 512]);
    tar.finish()
}

#[test]
fn an_entry_larger_than_its_header_size_is_still_counted() {
    let scene = Scene::new();
    let archive = scene.archive("sparse.tar", &sparse_tar(16 << 20));
    let err = scene.refuse_with(&archive, &small_limit());
    assert_eq!(limit_hit(&err).0, "max_size", "{err}");
    // The default ratio stops it too: 16 MiB out of 2 KiB.
    assert_eq!(limit_hit(&scene.refuse(&archive)).0, "max_ratio");
    // Within the limits the same entry expands to its real size.
    let report = unpack(&scene.store, &archive, &scene.dest(), "v1", &no_ratio()).unwrap();
    let data = fs::read(scene.dest().join("sparse.bin")).unwrap();
    assert_eq!((data.len(), report.bytes_written), (16 << 20, 16 << 20));
    assert!(data[..(16 << 20) - 512].iter().all(|&b| b == 0) && data.ends_with(&[7; 512]));
}

#[test]
fn a_zip_understating_its_sizes_is_refused() {
    let scene = Scene::new();
    let mut zip = zip_of(|zip| zip_file(zip, "big.bin", 0o644, &vec![0; 4 << 20]));
    // Claim 100 bytes in the local header (offset 22) and the central directory (offset 24).
    patch_u32_after(&mut zip, b"PK\x03\x04", 22, 100);
    patch_u32_after(&mut zip, b"PK\x01\x02", 24, 100);
    let err = scene.refuse_with(&scene.archive("lying.zip", &zip), &small_limit());
    assert!(
        matches!(err, Error::ArchiveLimit { .. } | Error::ArchiveUnreadable { .. }),
        "{err}"
    );
}

fn patch_u32_after(bytes: &mut [u8], signature: &[u8], offset: usize, value: u32) {
    let start = bytes.windows(4).position(|w| w == signature).unwrap();
    bytes[start + offset..start + offset + 4].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn max_entries_counts_every_entry() {
    let scene = Scene::new();
    let mut tar = RawTar::default().dir("d");
    for i in 0..4 {
        tar = tar.file(&format!("d/{i}"), b"x");
    }
    let tar = scene.archive("five.tar", &tar.finish());
    let zip = zip_of(|zip| (0..5).for_each(|i| zip_file(zip, &i.to_string(), 0o644, b"x")));
    let zip = scene.archive("five.zip", &zip);
    let four = UnpackOptions {
        max_entries: 4,
        ..UnpackOptions::default()
    };
    for archive in [&tar, &zip] {
        let err = scene.refuse_with(archive, &four);
        assert!(
            matches!(err, Error::TooManyArchiveEntries { max_entries: 4, .. }),
            "{err}"
        );
        let five = UnpackOptions {
            max_entries: 5,
            overwrite: true,
            ..UnpackOptions::default()
        };
        let identity = archive.display().to_string();
        assert_eq!(
            unpack(&scene.store, archive, &scene.dest(), &identity, &five)
                .unwrap()
                .entries,
            5
        );
    }
}

#[test]
fn oversized_tar_metadata_is_refused_before_it_is_held_in_memory() {
    let scene = Scene::new();
    let long_name = vec![b'a'; 2 << 20];
    let tar = RawTar::default()
        .entry("././@LongLink", EntryType::GNULongName, 0o644, "", &long_name)
        .file("after", b"x")
        .finish();
    let err = scene.refuse(&scene.archive("long.tar.gz", &gzip(&tar)));
    assert!(matches!(err, Error::ArchiveUnreadable { .. }), "{err}");
    assert!(err.to_string().contains("metadata"), "{err}");
}

#[test]
fn a_truncated_archive_is_refused_and_leaves_nothing() {
    let scene = Scene::new();
    let whole = gzip(&sample_tar());
    let err = scene.refuse(&scene.archive("cut.tar.gz", &whole[..whole.len() / 2]));
    assert!(matches!(err, Error::ArchiveUnreadable { .. }), "{err}");
}

#[test]
fn a_corrupt_gzip_checksum_is_caught_after_the_last_entry() {
    let scene = Scene::new();
    let mut archive = gzip(&sample_tar());
    let crc = archive.len() - 8; // the gzip trailer: CRC-32, then the length
    archive[crc] ^= 0xff;
    let err = scene.refuse(&scene.archive("crc.tar.gz", &archive));
    assert!(matches!(err, Error::ArchiveUnreadable { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------------
// Entries and modes.

#[test]
fn a_later_duplicate_wins_and_never_writes_through_a_symlink() {
    let scene = Scene::new();
    let tar = RawTar::default()
        .file("f.txt", b"first")
        .file("f.txt", b"second")
        .file("target.txt", b"keep")
        .symlink("link", "target.txt")
        .file("link", b"replaced the link")
        .finish();
    let report = scene.unpack(&scene.archive("dup.tar", &tar), "v1").unwrap();
    let dest = scene.dest();
    assert_eq!(fs::read(dest.join("f.txt")).unwrap(), b"second");
    assert_eq!(fs::read(dest.join("target.txt")).unwrap(), b"keep");
    assert!(fs::symlink_metadata(dest.join("link")).unwrap().is_file());
    assert_eq!((report.files, report.symlinks), (3, 0));
}

#[test]
fn a_directory_is_never_replaced_by_a_later_entry() {
    let scene = Scene::new();
    let tar = RawTar::default()
        .dir("d")
        .file("d/in.txt", b"x")
        .file("d", b"file")
        .finish();
    assert_unsafe(&scene.refuse(&scene.archive("dir.tar", &tar)), "d", "directory");
}

#[test]
fn modes_are_masked_and_special_bits_dropped() {
    let scene = Scene::new();
    let tar = RawTar::default()
        .entry("setuid", EntryType::Regular, 0o4755, "", b"x")
        .entry("private", EntryType::Regular, 0o600, "", b"x")
        .entry("sticky/", EntryType::Directory, 0o1777, "", b"")
        .entry("readonly/", EntryType::Directory, 0o500, "", b"")
        .finish();
    scene.unpack(&scene.archive("modes.tar", &tar), "v1").unwrap();
    let dest = scene.dest();
    assert_eq!(mode_of(&dest.join("setuid")), 0o755);
    assert_eq!(mode_of(&dest.join("private")), 0o644);
    assert_eq!(mode_of(&dest.join("sticky")), 0o755);
    assert_eq!(mode_of(&dest.join("readonly")), 0o700);
}

// ---------------------------------------------------------------------------------------------------
// The destination: refusal, replacement, idempotency.

#[test]
fn a_users_destination_is_refused_untouched_unless_overwrite() {
    for user_made_a_file in [false, true] {
        let scene = Scene::new();
        let dest = scene.dest();
        if user_made_a_file {
            fs::write(&dest, b"mine").unwrap();
        } else {
            fs::create_dir(&dest).unwrap();
            fs::write(dest.join("mine.txt"), b"mine").unwrap();
        }
        let archive = scene.archive("a.tar", &sample_tar());
        let err = scene.refuse(&archive);
        assert!(
            matches!(&err, Error::DestinationExists { path } if path == &dest),
            "{err}"
        );
        assert!(
            err.to_string().contains("set `overwrite = true` under [settings]"),
            "{err}"
        );

        let overwrite = UnpackOptions {
            overwrite: true,
            ..UnpackOptions::default()
        };
        unpack(&scene.store, &archive, &dest, "v1", &overwrite).unwrap();
        assert_sample_tree(&dest, true);
        assert!(!dest.join("mine.txt").exists());
        assert_eq!(scene.site_names().len(), 1, "{:?}", scene.site_names());
    }
}

#[test]
fn the_same_identity_is_skipped_and_a_new_one_replaces() {
    let scene = Scene::new();
    let first = scene
        .unpack(&scene.archive("a.tar", &sample_tar()), "object-1@etag-a")
        .unwrap();
    assert!(is_unpacked(&scene.store, &scene.dest(), "object-1@etag-a"));

    // Skipping must not even open the archive.
    let missing = scene.tmp.path().join("archives/gone.tar");
    let again = scene.unpack(&missing, "object-1@etag-a").unwrap();
    assert_eq!(again, UnpackReport { skipped: true, ..first });

    let second = RawTar::default().file("other.txt", b"v2").finish();
    let report = scene
        .unpack(&scene.archive("b.tar", &second), "object-1@etag-b")
        .unwrap();
    assert!(!report.skipped);
    assert_eq!(fs::read(scene.dest().join("other.txt")).unwrap(), b"v2");
    assert!(!scene.dest().join("model").exists(), "the previous tree is gone");
    assert!(is_unpacked(&scene.store, &scene.dest(), "object-1@etag-b"));
    assert!(!is_unpacked(&scene.store, &scene.dest(), "object-1@etag-a"));
    assert_eq!(scene.site_names().len(), 1, "{:?}", scene.site_names());
}

#[test]
fn a_refused_update_keeps_the_previous_unpack() {
    let scene = Scene::new();
    scene.unpack(&scene.archive("a.tar", &sample_tar()), "v1").unwrap();
    let evil = RawTar::default()
        .file("fine.txt", b"ok")
        .file("../x", b"pwned")
        .finish();
    let evil = scene.archive("evil.tar", &evil);
    let before = scene.snapshot();
    let err = scene.unpack(&evil, "v2").unwrap_err();
    assert!(matches!(err, Error::UnsafeArchiveEntry { .. }), "{err}");
    assert_eq!(scene.snapshot(), before);
    assert!(is_unpacked(&scene.store, &scene.dest(), "v1"));
    assert_sample_tree(&scene.dest(), true);
}

#[test]
fn is_unpacked_needs_the_directory_and_a_non_empty_identity() {
    let scene = Scene::new();
    scene.unpack(&scene.archive("a.tar", &sample_tar()), "").unwrap();
    assert!(
        !is_unpacked(&scene.store, &scene.dest(), ""),
        "an empty identity never matches"
    );
    scene.unpack(&scene.archive("a.tar", &sample_tar()), "v1").unwrap();
    fs::remove_dir_all(scene.dest()).unwrap();
    assert!(!is_unpacked(&scene.store, &scene.dest(), "v1"));
    let report = scene.unpack(&scene.archive("a.tar", &sample_tar()), "v1").unwrap();
    assert!(!report.skipped, "a removed destination is unpacked again");
}

#[test]
fn missing_parent_directories_are_created() {
    let scene = Scene::new();
    let dest = scene.site().join("deep/er/dest");
    unpack(
        &scene.store,
        &scene.archive("a.tar", &sample_tar()),
        &dest,
        "v1",
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_sample_tree(&dest, true);
}

#[tokio::test]
async fn the_async_twin_unpacks_on_the_blocking_pool() {
    let scene = Scene::new();
    let archive = scene.archive("a.zip", &sample_zip());
    let options = UnpackOptions::default();
    let report = unpack_async(scene.store.clone(), archive, scene.dest(), "v1".into(), options)
        .await
        .unwrap();
    assert_eq!(report.format, ArchiveFormat::Zip);
    assert_sample_tree(&scene.dest(), false);
}

// ---------------------------------------------------------------------------------------------------
// The node store: records kept out of the destination's directory.

#[test]
fn the_previous_layouts_sidecar_is_imported_once_and_removed() {
    let scene = Scene::new();
    let first = scene.unpack(&scene.archive("a.tar", &sample_tar()), "v1").unwrap();
    // As the previous layout left it: a sidecar beside the tree, a staging tree of a crashed unpack,
    // and a store that knows nothing (the upgrade).
    let sidecar = json_sidecar("v1", &first);
    fs::write(scene.site().join(".dest.xfd-unpack.json"), sidecar).unwrap();
    fs::create_dir(scene.site().join(".dest.xfd-unpack-Ab12")).unwrap();
    let upgraded = Store::open(&scene.tmp.path().join("state-after-upgrade")).unwrap();

    let missing = scene.tmp.path().join("archives/gone.tar");
    let again = unpack(&upgraded, &missing, &scene.dest(), "v1", &UnpackOptions::default()).unwrap();

    assert!(again.skipped, "the imported record makes it a cache hit");
    assert_eq!(scene.site_names(), BTreeSet::from(["dest".into()]));
    assert_eq!(
        upgraded.entry(&scene.dest()).unpacked.unwrap().identity.as_deref(),
        Some("v1")
    );
}

fn json_sidecar(identity: &str, report: &UnpackReport) -> Vec<u8> {
    let report = serde_json::to_value(report).unwrap();
    serde_json::to_vec(&serde_json::json!({"version": 1, "identity": identity, "report": report})).unwrap()
}

#[test]
fn a_users_tree_put_where_an_unpacked_one_was_is_never_replaced() {
    let scene = Scene::new();
    scene.unpack(&scene.archive("a.tar", &sample_tar()), "v1").unwrap();
    // The user removes the tree and puts their own there (made first: a new inode, not the old one's).
    let mine = scene.site().join("mine");
    fs::create_dir(&mine).unwrap();
    fs::write(mine.join("mine.txt"), b"mine").unwrap();
    fs::remove_dir_all(scene.dest()).unwrap();
    fs::rename(&mine, scene.dest()).unwrap();
    assert!(
        scene.record().is_some(),
        "the store still remembers the tree it put there"
    );

    let err = scene.refuse(&scene.archive("b.tar", &sample_tar()));

    assert!(matches!(&err, Error::DestinationExists { .. }), "{err}");
    assert_eq!(fs::read(scene.dest().join("mine.txt")).unwrap(), b"mine");
    assert!(!is_unpacked(&scene.store, &scene.dest(), "v1"));
}

#[test]
fn an_unpack_into_a_destination_another_run_holds_is_refused() {
    let scene = Scene::new();
    let other_run = Store::open(&scene.tmp.path().join("state")).unwrap();
    let _held = other_run.lock(&scene.dest()).unwrap();
    let err = scene.unpack(&scene.archive("a.tar", &sample_tar()), "v1").unwrap_err();
    assert!(
        matches!(&err, Error::DestinationBusy { path } if path == &scene.dest()),
        "{err}"
    );
    assert!(!scene.dest().exists());
}

#[test]
fn a_killed_unpacks_staging_tree_is_removed_by_the_next_unpack() {
    let scene = Scene::new();
    {
        // A run announces its staging tree, builds part of it, and dies (its store is dropped unclosed).
        let killed = Store::open(&scene.tmp.path().join("state")).unwrap();
        let _lock = killed.lock(&scene.dest()).unwrap();
        killed
            .append(&[xfd_core::store::Op::Staging { dest: scene.dest() }])
            .unwrap();
        fs::create_dir_all(scene.site().join(".dest.xfd-unpack-x1/model")).unwrap();
    }
    scene.store.refresh().unwrap();
    assert!(scene.store.entry(&scene.dest()).staging);

    scene.unpack(&scene.archive("a.tar", &sample_tar()), "v1").unwrap();

    assert_eq!(scene.site_names(), BTreeSet::from(["dest".into()]));
    assert!(!scene.store.entry(&scene.dest()).staging);
}
