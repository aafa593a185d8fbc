//! Writing entries into the staging directory, whatever the archive format.
//!
//! The format readers (`from_tar`, `from_zip`) only classify entries and hand over their bytes; every
//! safety rule and every limit lives here, once.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::bufread::MultiGzDecoder;

use super::entry_path::{check_symlink_chain, check_symlink_target, entry_path};
use super::format::{ArchiveFormat, detect};
use super::limits::Limits;
use super::{UnpackOptions, from_tar, from_zip};
use crate::error::{Error, Result};
use crate::faults::{Faults, Point};

/// Entry data moves through one buffer of this size: memory stays flat whatever the entry size.
const COPY_BUFFER: usize = 256 * 1024;
/// Modes xfd writes: owner-writable, never setuid, setgid or sticky, executable only if it was.
const EXECUTABLE_FILE_MODE: u32 = 0o755;
const PLAIN_FILE_MODE: u32 = 0o644;
const DIR_MODE_MASK: u32 = 0o755;
/// The owner must always be able to enter, fill and later delete a directory xfd made.
const DIR_OWNER_BITS: u32 = 0o700;

/// What an archive entry is, as far as unpacking cares.
pub(super) enum EntryKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    /// Metadata xfd does not apply (e.g. a pax global header); its bytes are read and dropped.
    Ignored,
    /// Devices, fifos, sockets and unknown types: never created.
    Special(&'static str),
}

/// Counts describing the unpacked tree (not counting the destination directory itself).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counts {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes_written: u64,
    /// Bytes of entry data read, written or not: what `max_total_bytes` and `max_ratio` cap.
    pub bytes_read: u64,
}

/// Unpacks `archive` into the empty directory `root` and returns the format it was read as.
pub(super) fn extract(
    archive: &Path,
    format: ArchiveFormat,
    root: &Path,
    options: &UnpackOptions,
) -> Result<(ArchiveFormat, Counts)> {
    if format == ArchiveFormat::Auto {
        return extract(archive, detect(archive)?, root, options);
    }
    let open = || File::open(archive).map_err(|e| Error::io("open", archive, e));
    let mut extractor = Extractor::new(archive, root, options)?;
    match format {
        ArchiveFormat::Auto => unreachable!("detected above"),
        ArchiveFormat::Tar => from_tar::extract(BufReader::new(open()?), false, &mut extractor)?,
        ArchiveFormat::TarGz => {
            let gunzip = MultiGzDecoder::new(BufReader::new(open()?));
            from_tar::extract(gunzip, true, &mut extractor)?
        }
        ArchiveFormat::Zip => from_zip::extract(open()?, &mut extractor)?,
    }
    Ok((format, extractor.finish()?))
}

/// Writes entries under `root`, enforcing the path rules and the limits.
pub(super) struct Extractor<'a> {
    archive: &'a Path,
    root: &'a Path,
    limits: Limits<'a>,
    max_entries: u64,
    counts: Counts,
    /// Regular files written so far: the only valid hard-link targets.
    regular_files: HashSet<PathBuf>,
    /// Directories known to be real directories (never replaced, so the knowledge stays true).
    known_dirs: HashSet<PathBuf>,
    /// Symlinks in the tree, checked once more as a whole when every entry is in place.
    symlinks: BTreeSet<PathBuf>,
    buffer: Box<[u8]>,
    faults: Arc<Faults>,
}

impl<'a> Extractor<'a> {
    /// Refuses before the first entry when the free-space reserve is not there.
    fn new(archive: &'a Path, root: &'a Path, options: &'a UnpackOptions) -> Result<Self> {
        Ok(Extractor {
            archive,
            root,
            limits: Limits::new(archive, root, options)?,
            max_entries: options.max_entries,
            counts: Counts::default(),
            regular_files: HashSet::new(),
            known_dirs: HashSet::from([PathBuf::new()]),
            symlinks: BTreeSet::new(),
            buffer: vec![0; COPY_BUFFER].into_boxed_slice(),
            faults: options.faults.clone(),
        })
    }

    /// Refuses early when the archive declares more entries than allowed (zip knows its count upfront).
    pub(super) fn expect_entries(&self, declared: u64) -> Result<()> {
        if declared > self.max_entries {
            return Err(self.too_many_entries());
        }
        Ok(())
    }

    /// Refuses early when an entry declares more bytes than the limits or the free space leave. Only
    /// an early exit: the bytes actually read are what count (see [`Self::copy_counted`]).
    pub(super) fn expect_bytes(&mut self, declared: u64) -> Result<()> {
        self.limits.check_declared(self.counts.bytes_read, declared)
    }

    /// Writes one entry. `data` is read to its end whatever the kind, and counted.
    pub(super) fn entry(
        &mut self,
        name: &[u8],
        kind: EntryKind,
        mode: Option<u32>,
        link: Option<&[u8]>,
        data: &mut dyn Read,
    ) -> Result<()> {
        self.counts.entries += 1;
        if self.counts.entries > self.max_entries {
            return Err(self.too_many_entries());
        }
        self.faults.crash_point(Point::UnpackEntry);
        match kind {
            EntryKind::File => return self.file(name, mode, data),
            EntryKind::Dir => self.directory(name, mode)?,
            EntryKind::Symlink => self.symlink(name, self.link_target(name, link)?)?,
            EntryKind::Hardlink => self.hardlink(name, self.link_target(name, link)?)?,
            EntryKind::Ignored => {}
            EntryKind::Special(what) => {
                return Err(self.refuse(name, format!("is a {what}, which xfd never creates")));
            }
        }
        // Anything stored after a non-file entry is read, counted and dropped.
        self.drain(name, data)
    }

    fn link_target<'t>(&self, name: &[u8], link: Option<&'t [u8]>) -> Result<&'t [u8]> {
        link.ok_or_else(|| self.unreadable(name, "link entry without a target"))
    }

    /// Reads what follows the last entry, so a compressed stream's trailing checksum gets verified.
    pub(super) fn drain_trailer(&mut self, data: &mut dyn Read) -> Result<()> {
        self.drain(b"", data)
    }

    fn finish(self) -> Result<Counts> {
        for link in &self.symlinks {
            let verdict = check_symlink_chain(self.root, link)
                .map_err(|e| Error::io("resolve symlink", self.root.join(link), e))?;
            verdict.map_err(|reason| self.refuse(link.as_os_str().as_encoded_bytes(), reason))?;
        }
        Ok(self.counts)
    }

    fn directory(&mut self, name: &[u8], mode: Option<u32>) -> Result<()> {
        let relative = self.safe_path(name)?;
        if relative.as_os_str().is_empty() {
            return Ok(()); // "./": the destination itself, whose mode xfd sets
        }
        self.make_parents(name, &relative)?;
        let path = self.root.join(&relative);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(self.refuse(name, "is a directory where an earlier entry put a file or symlink"));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => self.create_dir(&path)?,
            Err(e) => return Err(Error::io("stat", &path, e)),
        }
        set_mode(&path, dir_mode(mode))?;
        self.known_dirs.insert(relative);
        Ok(())
    }

    fn file(&mut self, name: &[u8], mode: Option<u32>, data: &mut dyn Read) -> Result<()> {
        let (relative, path) = self.prepare_slot(name)?;
        // create_new (O_EXCL) never opens through a symlink, even one raced into place.
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PLAIN_FILE_MODE)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        self.copy_counted(name, data, &mut out, &path)?;
        out.set_permissions(Permissions::from_mode(file_mode(mode)))
            .map_err(|e| Error::io("chmod", &path, e))?;
        self.counts.files += 1;
        self.regular_files.insert(relative);
        Ok(())
    }

    fn symlink(&mut self, name: &[u8], target: &[u8]) -> Result<()> {
        let relative = self.safe_path(name)?;
        check_symlink_target(&relative, target).map_err(|reason| self.refuse(name, reason))?;
        let (relative, path) = self.prepare_slot(name)?;
        let target = Path::new(OsStr::from_bytes(target));
        std::os::unix::fs::symlink(target, &path).map_err(|e| Error::io("symlink", &path, e))?;
        self.counts.symlinks += 1;
        self.symlinks.insert(relative);
        Ok(())
    }

    fn hardlink(&mut self, name: &[u8], target: &[u8]) -> Result<()> {
        let target =
            entry_path(target).map_err(|reason| self.refuse(name, format!("is a hard link whose target {reason}")))?;
        if !self.regular_files.contains(&target) {
            let reason = format!(
                "is a hard link to {:?}, which is not an earlier regular file of the archive",
                target
            );
            return Err(self.refuse(name, reason));
        }
        if self.safe_path(name)? == target {
            return Ok(()); // a link to itself changes nothing
        }
        let (relative, path) = self.prepare_slot(name)?;
        let source = self.root.join(&target);
        fs::hard_link(&source, &path).map_err(|e| Error::io("hard link", &path, e))?;
        self.counts.files += 1;
        self.regular_files.insert(relative);
        Ok(())
    }

    /// Validates the name, makes its parents, and frees its slot of an earlier file or symlink.
    fn prepare_slot(&mut self, name: &[u8]) -> Result<(PathBuf, PathBuf)> {
        let relative = self.safe_path(name)?;
        if relative.as_os_str().is_empty() {
            return Err(self.refuse(name, "names the destination itself"));
        }
        self.make_parents(name, &relative)?;
        let path = self.root.join(&relative);
        self.remove_earlier(name, &relative, &path)?;
        Ok((relative, path))
    }

    /// A later entry replaces an earlier file or symlink (like tar), by unlinking it: writing into it
    /// would write through a symlink or into every hard link of the old file.
    fn remove_earlier(&mut self, name: &[u8], relative: &Path, path: &Path) -> Result<()> {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        if meta.is_dir() {
            return Err(self.refuse(name, "would replace a directory of an earlier entry"));
        }
        fs::remove_file(path).map_err(|e| Error::io("remove", path, e))?;
        if meta.is_symlink() {
            self.counts.symlinks -= 1;
            self.symlinks.remove(relative);
        } else {
            self.counts.files -= 1;
            self.regular_files.remove(relative);
        }
        Ok(())
    }

    /// Makes every parent of `relative` a real directory, refusing to go through a symlink or a file:
    /// following a symlink an earlier entry planted is how archives write outside their destination.
    fn make_parents(&mut self, name: &[u8], relative: &Path) -> Result<()> {
        let mut parent = PathBuf::new();
        for component in relative.parent().into_iter().flat_map(Path::components) {
            parent.push(component);
            if self.known_dirs.contains(&parent) {
                continue;
            }
            let path = self.root.join(&parent);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(self.refuse(name, "goes through a symlink or file of an earlier entry"));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    self.create_dir(&path)?;
                    set_mode(&path, dir_mode(None))?;
                }
                Err(e) => return Err(Error::io("stat", &path, e)),
            }
            self.known_dirs.insert(parent.clone());
        }
        Ok(())
    }

    fn create_dir(&mut self, path: &Path) -> Result<()> {
        fs::create_dir(path).map_err(|e| Error::io("create directory", path, e))?;
        self.counts.dirs += 1;
        Ok(())
    }

    /// Streams `data` into `out`, counting every byte against the limits before writing it and
    /// against the free space after.
    fn copy_counted(&mut self, name: &[u8], data: &mut dyn Read, out: &mut File, path: &Path) -> Result<()> {
        loop {
            let read = self.read_counted(name, data)?;
            if read == 0 {
                return Ok(());
            }
            out.write_all(&self.buffer[..read])
                .map_err(|e| Error::io("write", path, e))?;
            self.counts.bytes_written += read as u64;
            self.limits.wrote(read as u64)?;
        }
    }

    fn drain(&mut self, name: &[u8], data: &mut dyn Read) -> Result<()> {
        while self.read_counted(name, data)? > 0 {}
        Ok(())
    }

    /// One read into the buffer, charged to the byte budget: headers can lie, bytes read cannot.
    fn read_counted(&mut self, name: &[u8], data: &mut dyn Read) -> Result<usize> {
        let read = loop {
            match data.read(&mut self.buffer) {
                Ok(read) => break read,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.unreadable(name, e)),
            }
        };
        self.counts.bytes_read += read as u64;
        self.limits.check_read(self.counts.bytes_read)?;
        Ok(read)
    }

    fn safe_path(&self, name: &[u8]) -> Result<PathBuf> {
        entry_path(name).map_err(|reason| self.refuse(name, reason))
    }

    pub(super) fn refuse(&self, name: &[u8], reason: impl Into<String>) -> Error {
        Error::UnsafeArchiveEntry {
            archive: self.archive.to_owned(),
            entry: String::from_utf8_lossy(name).into_owned(),
            reason: reason.into(),
        }
    }

    /// The archive cannot be read; `name` is the entry being read, empty between entries.
    pub(super) fn unreadable(&self, name: &[u8], source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::ArchiveUnreadable {
            path: self.archive.to_owned(),
            entry: (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned()),
            source: source.into(),
        }
    }

    fn too_many_entries(&self) -> Error {
        Error::TooManyArchiveEntries {
            archive: self.archive.to_owned(),
            max_entries: self.max_entries,
        }
    }
}

fn file_mode(mode: Option<u32>) -> u32 {
    match mode {
        Some(mode) if mode & 0o111 != 0 => EXECUTABLE_FILE_MODE,
        _ => PLAIN_FILE_MODE,
    }
}

fn dir_mode(mode: Option<u32>) -> u32 {
    (mode.unwrap_or(DIR_MODE_MASK) & DIR_MODE_MASK) | DIR_OWNER_BITS
}

/// Sets a directory's mode. Only called on a path just checked to be a real directory in the staging
/// tree, which nothing else writes to.
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|e| Error::io("chmod", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory holding an "archive" of `archive_size` bytes and the staging root.
    struct Scratch {
        dir: tempfile::TempDir,
    }

    impl Scratch {
        fn new(archive_size: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("a.tar"), vec![0; archive_size]).unwrap();
            fs::create_dir(dir.path().join("root")).unwrap();
            Scratch { dir }
        }

        fn archive(&self) -> PathBuf {
            self.dir.path().join("a.tar")
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }
    }

    fn options(max_total_bytes: u64) -> UnpackOptions {
        UnpackOptions {
            max_total_bytes,
            ..UnpackOptions::default()
        }
    }

    fn limit_of(err: &Error) -> &'static str {
        match err {
            Error::ArchiveLimit { limit, .. } => limit,
            other => panic!("expected a limit to be hit, got {other}"),
        }
    }

    #[test]
    fn bytes_are_counted_as_read_whatever_the_header_declared() {
        let scratch = Scratch::new(1 << 20);
        let (archive, root) = (scratch.archive(), scratch.root());
        let options = options(1 << 20);
        let mut extractor = Extractor::new(&archive, &root, &options).unwrap();
        // No expect_bytes call: only the counting stands between the entry and the disk.
        let mut endless = std::io::repeat(0).take(4 << 20);
        let err = extractor
            .entry(b"big", EntryKind::File, None, None, &mut endless)
            .unwrap_err();
        assert_eq!(limit_of(&err), "max_size", "{err}");
        let written = fs::metadata(root.join("big")).unwrap().len();
        assert!(written <= 1 << 20, "{written} bytes written past the limit");
    }

    #[test]
    fn dropped_bytes_count_too() {
        let scratch = Scratch::new(1 << 20);
        let (archive, root) = (scratch.archive(), scratch.root());
        let options = options(1000);
        let mut extractor = Extractor::new(&archive, &root, &options).unwrap();
        let mut payload = std::io::repeat(0).take(1001);
        let err = extractor
            .entry(b"d/", EntryKind::Dir, None, None, &mut payload)
            .unwrap_err();
        assert_eq!(limit_of(&err), "max_size", "{err}");
    }

    #[test]
    fn the_ratio_is_counted_as_read_against_the_archive_size() {
        let scratch = Scratch::new(10_000);
        let (archive, root) = (scratch.archive(), scratch.root());
        let options = UnpackOptions::default();
        let mut extractor = Extractor::new(&archive, &root, &options).unwrap();
        let mut bomb = std::io::repeat(0).take(4 << 20);
        let err = extractor
            .entry(b"big", EntryKind::File, None, None, &mut bomb)
            .unwrap_err();
        assert_eq!(limit_of(&err), "max_ratio", "{err}");
        let written = fs::metadata(root.join("big")).unwrap().len();
        assert!(written <= 200 * 10_000, "{written} bytes written past the ratio");
    }

    #[test]
    fn a_tiny_archive_may_expand_to_the_ratio_floor() {
        let scratch = Scratch::new(100);
        let (archive, root) = (scratch.archive(), scratch.root());
        let options = UnpackOptions::default();
        let mut extractor = Extractor::new(&archive, &root, &options).unwrap();
        let mut text = std::io::repeat(b'x').take(super::super::RATIO_FLOOR);
        extractor
            .entry(b"notes.txt", EntryKind::File, None, None, &mut text)
            .unwrap();
        let err = extractor
            .entry(
                b"more.txt",
                EntryKind::File,
                None,
                None,
                &mut std::io::repeat(b'x').take(1),
            )
            .unwrap_err();
        assert_eq!(limit_of(&err), "max_ratio", "{err}");
    }
}
