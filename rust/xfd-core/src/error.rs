//! One error type for the engine. Each variant names the path it concerns so that a message read in a
//! notebook, far from the node that raised it, still says where the problem is.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::hash::ChunkDigest;
use crate::p2p::ChunkId;
use crate::scheduler::FailureKind;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a local file; `source` keeps the kind (not found, permission, ...).
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The node's disk refused a write: full, read-only or over quota. Retrying on this node cannot
    /// help; `advice` says what the user can do. (A permission denied stays [`Error::Io`]: it can come
    /// from a read as well, and Python raises its own `PermissionError` for it.)
    #[error("{op} {path}: {source}; {advice}")]
    Storage {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
        advice: &'static str,
    },

    /// A file stands where a destination needs a directory.
    #[error(
        "cannot create directory {needed}: {blocker} is a file in the way (a directory is needed there); \
         move or remove that file, or choose another destination"
    )]
    NotADirectory { blocker: PathBuf, needed: PathBuf },

    /// Another xfd run on this node is writing the destination now (it holds the destination's lock).
    #[error(
        "destination {path} is being written by another xfd run on this node; wait for that run to end \
         (this one then finds the file in its cache) or stop it, then run again"
    )]
    DestinationBusy { path: PathBuf },

    /// A byte range that does not lie inside the file it addresses.
    #[error("range [{offset}, {offset}+{length}) is outside {path} (size {size} bytes)")]
    RangeOutOfBounds {
        path: PathBuf,
        offset: u64,
        length: u64,
        size: u64,
    },

    /// The origin could not deliver a range even after retries (or broke the protocol).
    #[error("origin fetch of {key:?} failed: {message}")]
    Origin { key: String, message: String },

    /// The origin refused this node's credentials or access to the object: retrying cannot help.
    #[error("the origin refused access to {key:?}: {message}; check this node's credentials for the store")]
    OriginDenied { key: String, message: String },

    /// The object at the origin is no longer the one the plan resolved: never mix two versions.
    #[error("object {key:?} changed at the origin since it was planned (expected {expected}); plan again")]
    ObjectChanged { key: String, expected: String },

    /// A store URL or option the engine cannot use.
    #[error("store {url}: {message}")]
    StoreConfig { url: String, message: String },

    /// A plan the engine cannot use (another format, or inconsistent).
    #[error("invalid plan: {0}")]
    InvalidPlan(String),

    /// The whole-file SHA-256 named in the manifest does not match what was assembled.
    #[error("{path}: sha256 is {actual}, the manifest expects {expected}; the file was not published")]
    Sha256Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    /// The chunk is already being fetched on this node: one writer per chunk region at a time.
    #[error("chunk {chunk} is already being fetched on this node")]
    ChunkBusy { chunk: String },

    /// A background task died (panicked or was cancelled) before it produced its result.
    #[error("engine task failed: {0}")]
    Task(String),

    /// The control link between a node and the coordinator failed (refused, broken, or a bad frame).
    #[error("control link: {0}")]
    Control(String),

    /// A string that names no archive format xfd knows.
    #[error("unknown archive format {value:?}; valid values are: auto, tar, tar.gz (or tgz), zip")]
    InvalidArchiveFormat { value: String },

    /// An archive whose content matches none of the formats xfd unpacks (detection never uses the name).
    #[error("cannot tell the format of archive {path}: {detail}")]
    UnknownArchiveFormat { path: PathBuf, detail: &'static str },

    /// An archive that cannot be read: corrupt, truncated, or using a feature xfd does not support.
    #[error("cannot read archive {path}{}: {source}", entry_suffix(.entry))]
    ArchiveUnreadable {
        path: PathBuf,
        entry: Option<String>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An entry that would write outside the destination, or create something xfd never creates. The
    /// whole archive is refused: a partial tree could be worse than none.
    #[error("refusing archive {archive}: entry {entry:?} {reason}")]
    UnsafeArchiveEntry {
        archive: PathBuf,
        entry: String,
        reason: String,
    },

    /// An archive refused by a limit on what unpacking it may cost: `limit` is `max_size` (bytes in
    /// total), `max_ratio` (bytes per byte of archive) or `disk_reserve` (free space that must remain).
    /// Bytes are counted as read, not as declared; nothing was published and the staging tree is gone.
    /// `advice` names the setting that raises the limit.
    #[error("refusing archive {archive}: {reason}; {advice}")]
    ArchiveLimit {
        archive: PathBuf,
        limit: &'static str,
        reason: String,
        advice: String,
    },

    /// An archive with more entries than allowed.
    #[error("refusing archive {archive}: it has more than {max_entries} entries (max_entries)")]
    TooManyArchiveEntries { archive: PathBuf, max_entries: u64 },

    /// A destination that holds something xfd did not write; it is left untouched.
    #[error(
        "destination {path} exists and was not written by xfd; to replace it, set `overwrite = true` under \
         [settings] in the manifest (builder: `.settings(overwrite=True)`), or remove it"
    )]
    DestinationExists { path: PathBuf },

    /// A destination path that cannot be unpacked into (for example `/` or a path ending in `..`).
    #[error("cannot unpack into {path}: {reason}")]
    InvalidDestination { path: PathBuf, reason: &'static str },

    /// A string that is not a chunk id (32 lower-case hex characters); `value` is cut to 64 characters.
    #[error("invalid chunk id {value:?}: expected 32 lower-case hex characters")]
    InvalidChunkId { value: String },

    /// A peer server or client setting that cannot work.
    #[error("invalid peer transfer setting {field}: {reason}")]
    InvalidP2pConfig { field: &'static str, reason: &'static str },

    /// The peer server cannot listen on its address.
    #[error("peer server cannot listen on {addr}: {source}")]
    P2pBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// A peer that cannot be reached or went away before answering in time (refused, reset, timed
    /// out). Connection failures were already retried; the scheduler should try another source.
    #[error("peer {peer} unreachable for chunk {chunk}: {reason}")]
    PeerUnreachable {
        peer: SocketAddr,
        chunk: ChunkId,
        reason: String,
    },

    /// A peer that gave no complete answer within the transfer's deadline: hung, or far too slow. Not
    /// retried against the same peer: the caller should avoid it (a hung peer costs a deadline each time).
    #[error("peer {peer} gave no complete answer for chunk {chunk} within {waited:?}")]
    PeerStalled {
        peer: SocketAddr,
        chunk: ChunkId,
        waited: std::time::Duration,
    },

    /// A peer that refused this run's token (a peer from another run, or a misconfigured one).
    #[error("peer {peer} refused the token (chunk {chunk})")]
    PeerAuthRefused { peer: SocketAddr, chunk: ChunkId },

    /// A peer that does not hold the chunk verified (yet, or any more).
    #[error("peer {peer} does not serve chunk {chunk}")]
    ChunkNotOnPeer { peer: SocketAddr, chunk: ChunkId },

    /// A peer whose upload slots are all in use; another source (or a later try) should be used.
    #[error("peer {peer} is busy (no free upload slot) for chunk {chunk}")]
    PeerBusy { peer: SocketAddr, chunk: ChunkId },

    /// A peer that answered outside the protocol (unexpected status, length or headers).
    #[error("peer {peer} answered badly for chunk {chunk}: {detail}")]
    PeerProtocol {
        peer: SocketAddr,
        chunk: ChunkId,
        detail: String,
    },

    /// A peer whose body ended before the announced length (it died, or its file was short).
    #[error("peer {peer} sent {received} of {expected} bytes of chunk {chunk}")]
    PeerShortBody {
        peer: SocketAddr,
        chunk: ChunkId,
        received: u64,
        expected: u64,
    },

    /// Bytes from a peer that do not hash to the chunk's digest. Never retried against the same peer:
    /// the caller should penalize it.
    #[error("chunk {chunk} from peer {peer} has digest {actual}, expected {expected}")]
    PeerDigestMismatch {
        chunk: ChunkId,
        peer: SocketAddr,
        expected: ChunkDigest,
        actual: ChunkDigest,
    },

    /// A write of fetched chunk bytes into the destination file that failed.
    #[error("cannot write chunk {chunk} at offset {offset} of its destination: {source}")]
    ChunkWrite {
        chunk: ChunkId,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

fn entry_suffix(entry: &Option<String>) -> String {
    entry
        .as_ref()
        .map(|name| format!(" (entry {name:?})"))
        .unwrap_or_default()
}

impl Error {
    /// An I/O error on a local path; a refused write ([`Error::Storage`]) gets advice.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match storage_advice(&source) {
            Some(advice) => Error::Storage {
                op,
                path,
                source,
                advice,
            },
            None => Error::Io { op, path, source },
        }
    }

    /// `true` for a write the node's disk refused (see [`Error::Storage`]).
    pub fn is_storage(&self) -> bool {
        match self {
            Error::Storage { .. } => true,
            Error::ChunkWrite { source, .. } => storage_advice(source).is_some(),
            _ => false,
        }
    }

    /// This error, naming `file` when it is a refused write that could not name its file itself (a
    /// write through an open handle knows no path: it says [`WRITTEN_FILE`]).
    pub(crate) fn naming(self, file: &std::path::Path) -> Self {
        match self {
            Error::Storage { op, path, source, .. } if path.as_os_str() == WRITTEN_FILE => Error::io(op, file, source),
            Error::ChunkWrite { source, .. } if storage_advice(&source).is_some() => Error::io("write", file, source),
            other => other,
        }
    }
}

/// The path an I/O error gives when the write went through an open handle whose path the writer does
/// not know; [`Error::naming`] replaces it with the file's name.
pub(crate) const WRITTEN_FILE: &str = "<the file being written>";

fn storage_advice(source: &std::io::Error) -> Option<&'static str> {
    use std::io::ErrorKind::*;
    match source.kind() {
        StorageFull | QuotaExceeded => {
            Some("free space on that file system, or choose another node root (XFD_NODE_ROOT), then run again")
        }
        ReadOnlyFilesystem => {
            Some("make that file system writable, or choose another node root (XFD_NODE_ROOT), then run again")
        }
        _ => None,
    }
}

impl Error {
    /// How a scheduler should react (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::PeerStalled { .. } => ErrorKind::Stalled,
            Error::PeerDigestMismatch { .. } | Error::PeerShortBody { .. } | Error::PeerProtocol { .. } => {
                ErrorKind::Integrity
            }
            Error::PeerUnreachable { .. }
            | Error::PeerAuthRefused { .. }
            | Error::ChunkNotOnPeer { .. }
            | Error::PeerBusy { .. }
            | Error::Task(_) => ErrorKind::Peer,
            Error::Origin { .. } => ErrorKind::Origin,
            Error::ChunkBusy { .. } => ErrorKind::Busy,
            _ => ErrorKind::Fatal,
        }
    }
}

/// The class of an engine error, as it travels to the coordinator (the `error_kind` of a
/// `chunk_failed` event, the kind of a control link's failure frame). The one home of these names
/// and of what the scheduler makes of each ([`ErrorKind::failure`]); `tests/test_one_home.py`
/// checks that Python's vocabulary matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retrying cannot help (the object changed, a destination is refused).
    Fatal,
    /// The source served bad bytes: penalize it.
    Integrity,
    /// The source hung until the deadline: avoid it.
    Stalled,
    /// A peer could not deliver (gone, refused): try again, elsewhere if possible.
    Peer,
    /// A duplicate request for a chunk already being fetched: drop it.
    Busy,
    /// The origin could not deliver even after retries: try again.
    Origin,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Fatal,
        ErrorKind::Integrity,
        ErrorKind::Stalled,
        ErrorKind::Peer,
        ErrorKind::Busy,
        ErrorKind::Origin,
    ];

    /// The name on the wire and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Fatal => "fatal",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Stalled => "stalled",
            ErrorKind::Peer => "peer",
            ErrorKind::Busy => "busy",
            ErrorKind::Origin => "origin",
        }
    }

    /// The kind a name stands for; a name this build does not know (a newer node's) is fatal, as
    /// retrying what is not understood could go on forever.
    pub fn parse(name: &str) -> ErrorKind {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .unwrap_or(ErrorKind::Fatal)
    }

    /// What the scheduler makes of it. A peer that hung until the deadline is penalized like one that
    /// served bad bytes: retrying it costs a whole deadline each time.
    pub fn failure(self) -> FailureKind {
        match self {
            ErrorKind::Fatal => FailureKind::Fatal,
            ErrorKind::Integrity | ErrorKind::Stalled => FailureKind::Integrity,
            ErrorKind::Peer | ErrorKind::Busy => FailureKind::Peer,
            ErrorKind::Origin => FailureKind::Origin,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(kind.as_str()), kind);
            assert_eq!(kind.as_str(), format!("{kind:?}").to_lowercase());
        }
        assert_eq!(ErrorKind::parse("from a newer node"), ErrorKind::Fatal);
    }

    #[test]
    fn every_failure_kind_reads_back_from_its_name() {
        for kind in FailureKind::ALL {
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.as_str(), format!("{kind:?}").to_lowercase());
        }
        assert_eq!(FailureKind::parse("stalled"), None);
    }
}
