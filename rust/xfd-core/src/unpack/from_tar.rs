//! Reading tar (plain or gzip-compressed) entries for the extractor.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use tar::EntryType;

use super::extract::{EntryKind, Extractor};
use crate::error::Result;

/// Most metadata the tar reader may consume between two entries: GNU long names, pax records, sparse
/// maps and padding. The `tar` crate holds such metadata in memory whole, so without this cap a small
/// gzip could expand into a multi-gigabyte "long name". Real archives need a few kilobytes at most.
const METADATA_LIMIT: u64 = 1 << 20;

/// Byte offset of the type flag in a tar header.
const TYPEFLAG_OFFSET: usize = 156;

/// Unpacks every entry of a tar stream; `compressed` streams are read to their end so that their
/// trailing checksum is verified.
pub(super) fn extract(reader: impl Read, compressed: bool, extractor: &mut Extractor) -> Result<()> {
    let meter = Meter::default();
    let mut archive = tar::Archive::new(MeteredReader {
        inner: reader,
        meter: meter.clone(),
    });
    extract_entries(&mut archive, &meter, extractor)?;
    if compressed {
        extractor.drain_trailer(&mut archive.into_inner())?;
    }
    Ok(())
}

fn extract_entries<R: Read>(
    archive: &mut tar::Archive<MeteredReader<R>>,
    meter: &Meter,
    extractor: &mut Extractor,
) -> Result<()> {
    let mut entries = archive.entries().map_err(|e| extractor.unreadable(b"", e))?;
    loop {
        // Only the tar crate reads while the meter runs: we read every entry to its end ourselves, so
        // all it still has to read before the next entry is metadata.
        meter.start(METADATA_LIMIT);
        let next = entries.next();
        meter.stop();
        let Some(entry) = next else {
            return Ok(());
        };
        let mut entry = entry.map_err(|e| extractor.unreadable(b"", e))?;
        extract_entry(&mut entry, extractor)?;
    }
}

fn extract_entry<R: Read>(entry: &mut tar::Entry<R>, extractor: &mut Extractor) -> Result<()> {
    let name = entry.path_bytes().into_owned();
    let link = entry.link_name_bytes().map(|link| link.into_owned());
    let header = entry.header();
    let mode = header.mode().map_err(|e| extractor.unreadable(&name, e))?;
    let kind = entry_kind(header, &name);
    if matches!(kind, EntryKind::File) {
        // For a sparse file this is the expanded size, not the smaller size in the header.
        extractor.expect_bytes(entry.size())?;
    }
    extractor.entry(&name, kind, Some(mode), link.as_deref(), entry)
}

fn entry_kind(header: &tar::Header, name: &[u8]) -> EntryKind {
    match header.entry_type() {
        // Pre-POSIX tar marks a directory only by its trailing slash, with a NUL type flag.
        EntryType::Regular if header.as_bytes()[TYPEFLAG_OFFSET] == 0 && name.ends_with(b"/") => EntryKind::Dir,
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => EntryKind::File,
        EntryType::Directory => EntryKind::Dir,
        EntryType::Symlink => EntryKind::Symlink,
        EntryType::Link => EntryKind::Hardlink,
        EntryType::XGlobalHeader => EntryKind::Ignored,
        EntryType::Char => EntryKind::Special("character device"),
        EntryType::Block => EntryKind::Special("block device"),
        EntryType::Fifo => EntryKind::Special("fifo"),
        _ => EntryKind::Special("special file of an unsupported tar type"),
    }
}

/// How many bytes the reader may still deliver before failing; unlimited while `None`.
#[derive(Clone, Default)]
struct Meter(Rc<Cell<Option<u64>>>);

impl Meter {
    fn start(&self, limit: u64) {
        self.0.set(Some(limit));
    }

    fn stop(&self) {
        self.0.set(None);
    }
}

struct MeteredReader<R> {
    inner: R,
    meter: Meter,
}

impl<R: Read> Read for MeteredReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.meter.0.get() else {
            return self.inner.read(buf);
        };
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other(format!(
                "tar metadata between two entries exceeds {METADATA_LIMIT} bytes"
            )));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..want])?;
        self.meter.start(left - read as u64);
        Ok(read)
    }
}
