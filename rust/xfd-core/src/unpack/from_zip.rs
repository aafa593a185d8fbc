//! Reading zip entries for the extractor.

use std::fs::File;
use std::io::{self, BufReader, Read};

use super::extract::{EntryKind, Extractor};
use crate::error::Result;

/// Longest symlink target accepted (Linux `PATH_MAX`); a zip symlink stores its target as entry data,
/// which is read into memory.
const MAX_LINK_TARGET: usize = 4096;

/// File-type bits of a Unix mode (`S_IFMT`) and the types xfd creates.
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFIFO: u32 = 0o010_000;
const S_IFSOCK: u32 = 0o140_000;

pub(super) fn extract(file: File, extractor: &mut Extractor) -> Result<()> {
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| extractor.unreadable(b"", e))?;
    extractor.expect_entries(archive.len() as u64)?;
    for index in 0..archive.len() {
        let error = match archive.by_index(index) {
            Ok(mut entry) => {
                extract_entry(&mut entry, extractor)?;
                continue;
            }
            Err(error) => error,
        };
        return Err(extractor.unreadable(name_of(&archive, index).as_bytes(), error));
    }
    Ok(())
}

/// The entry's name for an error message, when even that can be read.
fn name_of<R: Read + io::Seek>(archive: &zip::ZipArchive<R>, index: usize) -> String {
    archive
        .name_for_index(index)
        .and_then(|name| name.ok())
        .map(|name| name.into_owned())
        .unwrap_or_else(|| format!("#{index}"))
}

fn extract_entry<R: Read>(entry: &mut zip::read::ZipFile<R>, extractor: &mut Extractor) -> Result<()> {
    // `name()` decodes the stored bytes (UTF-8 or the legacy CP437) the way the archiver meant them.
    let name = entry
        .name()
        .map_err(|e| extractor.unreadable(entry.name_raw(), e))?
        .into_owned()
        .into_bytes();
    let mode = entry.unix_mode();
    let kind = entry_kind(mode, &name);
    match kind {
        EntryKind::File => {
            extractor.expect_bytes(entry.size())?;
            extractor.entry(&name, kind, mode, None, entry)
        }
        EntryKind::Symlink => {
            let target = read_link_target(entry)
                .map_err(|e| extractor.unreadable(&name, e))?
                .ok_or_else(|| extractor.refuse(&name, "is a symlink with an overlong target"))?;
            extractor.entry(&name, kind, mode, Some(&target), &mut io::empty())
        }
        _ => extractor.entry(&name, kind, mode, None, entry),
    }
}

/// Zip has no hard links. Without a Unix mode (archives made on Windows) only the trailing slash tells
/// a directory from a file.
fn entry_kind(mode: Option<u32>, name: &[u8]) -> EntryKind {
    let file_type = mode.map_or(0, |mode| mode & S_IFMT);
    match file_type {
        S_IFLNK => EntryKind::Symlink,
        S_IFDIR => EntryKind::Dir,
        0 | S_IFREG if name.ends_with(b"/") => EntryKind::Dir,
        0 | S_IFREG => EntryKind::File,
        S_IFCHR => EntryKind::Special("character device"),
        S_IFBLK => EntryKind::Special("block device"),
        S_IFIFO => EntryKind::Special("fifo"),
        S_IFSOCK => EntryKind::Special("socket"),
        _ => EntryKind::Special("special file of an unknown type"),
    }
}

fn read_link_target(data: &mut dyn Read) -> io::Result<Option<Vec<u8>>> {
    let mut target = Vec::new();
    data.take(MAX_LINK_TARGET as u64 + 1).read_to_end(&mut target)?;
    Ok((target.len() <= MAX_LINK_TARGET).then_some(target))
}
