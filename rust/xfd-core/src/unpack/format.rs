//! Archive formats: their names, and detection by content.
//!
//! Detection reads magic bytes, never the file name: artifacts reach a node under content-addressed or
//! user-chosen names, and a name that lies must not pick the parser.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::str::FromStr;

use flate2::bufread::MultiGzDecoder;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Size of a tar header block; detection looks at the first one.
pub(super) const TAR_BLOCK: usize = 512;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZIP_LOCAL_FILE: &[u8] = b"PK\x03\x04";
/// An empty zip is only its end-of-central-directory record.
const ZIP_EMPTY: &[u8] = b"PK\x05\x06";
const USTAR_MAGIC_OFFSET: usize = 257;
const CHECKSUM_FIELD: std::ops::Range<usize> = 148..156;

/// The archive formats xfd unpacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ArchiveFormat {
    /// Detect by content: gzip magic, zip magic, or a tar header.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// An uncompressed tar (ustar, GNU, pax or v7).
    #[serde(rename = "tar")]
    Tar,
    /// A gzip-compressed tar; also accepted as "tgz".
    #[serde(rename = "tar.gz")]
    TarGz,
    /// A zip whose entries are stored or deflated.
    #[serde(rename = "zip")]
    Zip,
}

impl ArchiveFormat {
    /// The canonical name, as accepted by [`FromStr`] and written to the sidecar.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveFormat::Auto => "auto",
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::TarGz => "tar.gz",
            ArchiveFormat::Zip => "zip",
        }
    }

    /// The concrete format of `archive`: `self` unless it is [`ArchiveFormat::Auto`], else detected.
    pub fn resolve(self, archive: &Path) -> Result<ArchiveFormat> {
        match self {
            ArchiveFormat::Auto => detect(archive),
            concrete => Ok(concrete),
        }
    }
}

impl fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ArchiveFormat {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self> {
        let known = [
            ("auto", ArchiveFormat::Auto),
            ("tar", ArchiveFormat::Tar),
            ("tar.gz", ArchiveFormat::TarGz),
            ("tgz", ArchiveFormat::TarGz),
            ("zip", ArchiveFormat::Zip),
        ];
        known
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(value.trim()))
            .map(|(_, format)| format)
            .ok_or_else(|| Error::InvalidArchiveFormat {
                value: value.to_owned(),
            })
    }
}

/// Detects the format of `archive` from its first bytes.
pub fn detect(archive: &Path) -> Result<ArchiveFormat> {
    let unknown = |detail| Error::UnknownArchiveFormat {
        path: archive.to_owned(),
        detail,
    };
    let file = File::open(archive).map_err(|e| Error::io("open", archive, e))?;
    let head = read_head(file).map_err(|e| Error::io("read", archive, e))?;
    if head.is_empty() {
        return Err(unknown("the file is empty"));
    }
    if head.starts_with(GZIP_MAGIC) {
        return match gzip_holds_tar(archive) {
            Ok(true) => Ok(ArchiveFormat::TarGz),
            Ok(false) => Err(unknown("it is gzip-compressed but does not hold a tar archive")),
            Err(_) => Err(unknown("it starts like gzip but cannot be decompressed")),
        };
    }
    if head.starts_with(ZIP_LOCAL_FILE) || head.starts_with(ZIP_EMPTY) {
        return Ok(ArchiveFormat::Zip);
    }
    if looks_like_tar(&head) {
        return Ok(ArchiveFormat::Tar);
    }
    Err(unknown(
        "its content is none of tar, gzip-compressed tar or zip (the file name is not used)",
    ))
}

fn gzip_holds_tar(archive: &Path) -> io::Result<bool> {
    let file = File::open(archive)?;
    let head = read_head(MultiGzDecoder::new(BufReader::new(file)))?;
    Ok(looks_like_tar(&head))
}

/// Reads up to one tar block; shorter only at end of input.
fn read_head(reader: impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(TAR_BLOCK);
    reader.take(TAR_BLOCK as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// A tar starts with a header block: ustar/GNU/pax carry the "ustar" magic, v7 only a valid checksum.
/// An all-zero block is the end-of-archive marker, so it starts an empty archive.
fn looks_like_tar(head: &[u8]) -> bool {
    if head.len() < TAR_BLOCK {
        return false;
    }
    head[USTAR_MAGIC_OFFSET..].starts_with(b"ustar") || head.iter().all(|&byte| byte == 0) || has_valid_checksum(head)
}

fn has_valid_checksum(block: &[u8]) -> bool {
    let field = &block[CHECKSUM_FIELD];
    let digits = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| (b'0'..=b'7').contains(&b));
    let mut recorded = 0u32;
    let mut any_digit = false;
    for &digit in digits {
        recorded = recorded.saturating_mul(8).saturating_add(u32::from(digit - b'0'));
        any_digit = true;
    }
    // The checksum is computed with its own field read as eight spaces.
    let computed: u32 = block[..TAR_BLOCK]
        .iter()
        .enumerate()
        .map(|(i, &b)| if CHECKSUM_FIELD.contains(&i) { 32 } else { u32::from(b) })
        .sum();
    any_digit && recorded == computed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_case_insensitively_and_tgz_is_tar_gz() {
        for (name, format) in [
            ("auto", ArchiveFormat::Auto),
            ("TAR", ArchiveFormat::Tar),
            ("tar.gz", ArchiveFormat::TarGz),
            ("tgz", ArchiveFormat::TarGz),
            (" zip ", ArchiveFormat::Zip),
        ] {
            assert_eq!(name.parse::<ArchiveFormat>().unwrap(), format, "{name}");
        }
    }

    #[test]
    fn every_canonical_name_parses_back() {
        for format in [
            ArchiveFormat::Auto,
            ArchiveFormat::Tar,
            ArchiveFormat::TarGz,
            ArchiveFormat::Zip,
        ] {
            assert_eq!(format.to_string().parse::<ArchiveFormat>().unwrap(), format);
        }
    }

    #[test]
    fn unknown_name_lists_the_valid_values() {
        let message = "rar".parse::<ArchiveFormat>().unwrap_err().to_string();
        assert_eq!(
            message,
            "unknown archive format \"rar\"; valid values are: auto, tar, tar.gz (or tgz), zip"
        );
    }

    #[test]
    fn v7_header_is_recognised_by_its_checksum() {
        let mut block = vec![0u8; TAR_BLOCK];
        block[..5].copy_from_slice(b"hello");
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum::<u32>() + 8 * 32;
        let field = format!("{sum:06o}\0 ");
        block[CHECKSUM_FIELD].copy_from_slice(field.as_bytes());
        assert!(looks_like_tar(&block));
        block[0] = b'j';
        assert!(!looks_like_tar(&block), "a wrong checksum is not a tar header");
    }
}
