//! Content hashing of file ranges.
//!
//! BLAKE3 is the chunk hash: it is faster than memory bandwidth on one core, so hashing while streaming
//! never becomes the bottleneck of a transfer, and it is a cryptographic hash, so a peer cannot forge a
//! chunk that verifies.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Reads are done in blocks of this size: large enough for few syscalls, small enough that memory stays
/// flat whatever the size of the range.
const READ_BLOCK: usize = 1 << 20;

/// A 32-byte BLAKE3 digest of a chunk's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkDigest(pub [u8; 32]);

impl ChunkDigest {
    /// Digest of an in-memory byte slice.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        ChunkDigest(*blake3::hash(bytes).as_bytes())
    }

    /// Parses the hex form (64 hex digits); `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        blake3::Hash::from_hex(hex)
            .ok()
            .map(|hash| ChunkDigest(*hash.as_bytes()))
    }

    /// Lower-case hex form, the form used in plans, sidecars and on the wire.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkDigest({})", self.to_hex())
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Hashes `length` bytes of `path` starting at `offset` (`None`: to the end of the file).
///
/// Blocking: call it from a blocking thread (see [`hash_file_range_async`]). Positional reads leave no
/// shared file cursor behind, so several ranges of one file can be hashed at once.
pub fn hash_file_range(path: &Path, offset: u64, length: Option<u64>) -> Result<ChunkDigest> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let size = file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    let length = resolve_length(path, offset, length, size)?;
    hash_open_range(&file, path, offset, length)
}

/// Hashes `length` bytes of the open `file` from `offset` with positional reads (`path` names it in
/// errors). Blocking, like [`hash_file_range`].
pub fn hash_open_range(file: &File, path: &Path, offset: u64, length: u64) -> Result<ChunkDigest> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; READ_BLOCK.min(length as usize).max(1)];
    let mut done = 0u64;
    while done < length {
        let want = buffer.len().min((length - done) as usize);
        let read = file
            .read_at(&mut buffer[..want], offset + done)
            .map_err(|e| Error::io("read", path, e))?;
        if read == 0 {
            // The file shrank under us: report it as the range error it now is.
            return Err(Error::RangeOutOfBounds {
                path: path.to_owned(),
                offset,
                length,
                size: offset + done,
            });
        }
        hasher.update(&buffer[..read]);
        done += read as u64;
    }
    Ok(ChunkDigest(*hasher.finalize().as_bytes()))
}

/// [`hash_file_range`] on tokio's blocking pool, so async callers never stall a reactor thread on disk.
pub async fn hash_file_range_async(path: PathBuf, offset: u64, length: Option<u64>) -> Result<ChunkDigest> {
    tokio::task::spawn_blocking(move || hash_file_range(&path, offset, length))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

fn resolve_length(path: &Path, offset: u64, length: Option<u64>, size: u64) -> Result<u64> {
    let out_of_bounds = |length| Error::RangeOutOfBounds {
        path: path.to_owned(),
        offset,
        length,
        size,
    };
    match length {
        None if offset <= size => Ok(size - offset),
        None => Err(out_of_bounds(0)),
        Some(length) if offset.checked_add(length).is_some_and(|end| end <= size) => Ok(length),
        Some(length) => Err(out_of_bounds(length)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    #[test]
    fn range_hash_equals_hash_of_the_same_bytes() {
        let bytes: Vec<u8> = (0..3 * READ_BLOCK + 17).map(|i| (i * 31 % 251) as u8).collect();
        let file = file_with(&bytes);
        for (offset, length) in [(0, bytes.len()), (5, READ_BLOCK + 3), (bytes.len(), 0), (1, 0)] {
            let got = hash_file_range(file.path(), offset as u64, Some(length as u64)).unwrap();
            assert_eq!(got, ChunkDigest::of_bytes(&bytes[offset..offset + length]));
        }
    }

    #[test]
    fn open_ended_range_runs_to_the_end() {
        let file = file_with(b"hello world");
        let got = hash_file_range(file.path(), 6, None).unwrap();
        assert_eq!(got, ChunkDigest::of_bytes(b"world"));
    }

    #[test]
    fn range_past_the_end_is_refused() {
        let file = file_with(b"0123456789");
        let err = hash_file_range(file.path(), 8, Some(3)).unwrap_err();
        assert!(matches!(err, Error::RangeOutOfBounds { size: 10, .. }), "{err}");
        let err = hash_file_range(file.path(), 11, None).unwrap_err();
        assert!(matches!(err, Error::RangeOutOfBounds { .. }), "{err}");
        let err = hash_file_range(file.path(), u64::MAX, Some(2)).unwrap_err();
        assert!(matches!(err, Error::RangeOutOfBounds { .. }), "{err}");
    }

    #[test]
    fn missing_file_keeps_its_io_kind_and_path() {
        let err = hash_file_range(Path::new("/nonexistent/xfd"), 0, None).unwrap_err();
        match err {
            Error::Io { source, path, .. } => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
                assert_eq!(path, Path::new("/nonexistent/xfd"));
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[tokio::test]
    async fn async_twin_matches_blocking() {
        let file = file_with(b"abcdef");
        let blocking = hash_file_range(file.path(), 1, Some(4)).unwrap();
        let asynchronous = hash_file_range_async(file.path().to_owned(), 1, Some(4)).await.unwrap();
        assert_eq!(blocking, asynchronous);
    }
}
