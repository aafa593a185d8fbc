//! Byte-range locks on the store's `locks` file: byte 0 for the log, and one byte per live run.
//!
//! A run does not lock one byte per destination: the kernel keeps a file's byte-range locks in one list
//! that every lock request walks, so 100,000 locks cost 100,000^2 / 2 steps (measured in
//! docs/benchmarks.md, "Many small files distributed: bundles"). A run holds one byte of its own (its *run
//! slot*, random) and records in the store's log which destinations it claims; a claim counts while its
//! run's byte is held.
//!
//! Open file description locks (`F_OFD_SETLK`, Linux): the kernel drops them when the process dies, so a
//! killed run never leaves a stale lock behind, and they belong to one open of the file, so two engines
//! in one process (each with its own [`LockFile`]) exclude each other as two processes do. POSIX
//! `fcntl` locks (`lockf`) taken by another process conflict with them too, which is how a test can
//! tell from outside whether a destination is held.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The byte that guards the log: appends and compaction take it exclusively, for a few system calls.
pub(super) const LOG_SLOT: u64 = 0;

#[cfg(target_os = "linux")]
const SET_LOCK: libc::c_int = libc::F_OFD_SETLK;
#[cfg(target_os = "linux")]
const SET_LOCK_WAIT: libc::c_int = libc::F_OFD_SETLKW;
// Elsewhere, process-associated locks: runs in different processes still exclude each other.
#[cfg(not(target_os = "linux"))]
const SET_LOCK: libc::c_int = libc::F_SETLK;
#[cfg(not(target_os = "linux"))]
const SET_LOCK_WAIT: libc::c_int = libc::F_SETLKW;

/// A destination's number within one store: a hash of its path (two paths sharing one, odds 2^-62 per
/// pair, would only make one run refuse the other, never write the same file).
pub(super) fn slot_of(destination: &Path) -> u64 {
    let hash = blake3::hash(destination.as_os_str().as_encoded_bytes());
    let first = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
    1 + first % (1 << 62)
}

/// A new run's byte: random, above every destination number (which never reach 2^62 + 1).
pub(super) fn new_run_slot() -> u64 {
    (1 << 62) + 1 + getrandom::u64().unwrap_or_else(|_| std::process::id().into()) % (1 << 61)
}

/// One open of the locks file; every lock taken through it is this open's.
#[derive(Debug)]
pub(super) struct LockFile {
    file: File,
    path: PathBuf,
}

impl LockFile {
    pub(super) fn open(path: &Path) -> io::Result<LockFile> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        Ok(LockFile {
            file,
            path: path.to_owned(),
        })
    }

    /// Takes `slot` if no other open of the file holds it: `false` when one does.
    pub(super) fn try_lock(&self, slot: u64) -> io::Result<bool> {
        match self.fcntl(SET_LOCK, libc::F_WRLCK, slot) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Takes `slot`, waiting while another open holds it (for the log byte: held a few microseconds).
    pub(super) fn lock_wait(&self, slot: u64) -> io::Result<()> {
        loop {
            match self.fcntl(SET_LOCK_WAIT, libc::F_WRLCK, slot) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other.map(|_| ()),
            }
        }
    }

    /// Whether another open of the file (another run, in this process or another) holds `slot`.
    pub(super) fn held_elsewhere(&self, slot: u64) -> io::Result<bool> {
        #[cfg(target_os = "linux")]
        let command = libc::F_OFD_GETLK;
        #[cfg(not(target_os = "linux"))]
        let command = libc::F_GETLK;
        let lock = self.fcntl(command, libc::F_WRLCK, slot)?;
        Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
    }

    pub(super) fn unlock(&self, slot: u64) {
        let _ = self.fcntl(SET_LOCK, libc::F_UNLCK, slot);
    }

    /// `true` while the file at the path is still the one these locks are on: not once the store's
    /// directory was removed and a newer run made a new one (these locks then guard nothing).
    pub(super) fn still_here(&self) -> bool {
        match (self.file.metadata(), fs::metadata(&self.path)) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        }
    }

    fn fcntl(&self, command: libc::c_int, kind: libc::c_int, slot: u64) -> io::Result<libc::flock> {
        // SAFETY: a zeroed `flock` is valid (l_pid must be 0 for open file description locks).
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = kind as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = slot as libc::off_t;
        lock.l_len = 1;
        // SAFETY: the descriptor is open for the life of `self`; `lock` is a valid, initialized flock.
        let result = unsafe { libc::fcntl(self.file.as_raw_fd(), command, &mut lock) };
        if result == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(lock)
        }
    }
}
