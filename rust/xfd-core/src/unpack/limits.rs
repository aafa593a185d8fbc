//! What unpacking one archive may cost: bytes in total (`max_size`), bytes per byte of archive
//! (`max_ratio`) and the free space that must remain on the destination's file system
//! (`disk_reserve`). Every refusal names the limit and the setting that raises it.

use std::ffi::CString;
use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{RATIO_FLOOR, UnpackOptions};
use crate::error::{Error, Result};

/// Bytes written between two looks at the free space: often enough that a reserve of a gigabyte is
/// never overrun by much, rarely enough that `statvfs` costs nothing next to the writes.
const SPACE_CHECK_INTERVAL: u64 = 64 << 20;

/// The byte limits of one archive and the free-space reserve of its destination.
pub(super) struct Limits<'a> {
    archive: &'a Path,
    /// The staging directory: on the destination's file system, which is the one that fills.
    root: &'a Path,
    options: &'a UnpackOptions,
    archive_size: u64,
    /// Most bytes of entry data that may be read: the smaller of the two byte limits.
    max_read: u64,
    /// Bytes that may still be written before the free space must be looked at again.
    unchecked_room: u64,
}

impl<'a> Limits<'a> {
    /// The limits of `archive`, unpacked under `root`; refuses at once when the reserve is not free.
    pub(super) fn new(archive: &'a Path, root: &'a Path, options: &'a UnpackOptions) -> Result<Self> {
        let archive_size = fs::metadata(archive).map_err(|e| Error::io("stat", archive, e))?.len();
        let mut limits = Limits {
            archive,
            root,
            options,
            archive_size,
            max_read: options.max_total_bytes.min(ratio_cap(archive_size, options.max_ratio)),
            unchecked_room: 0,
        };
        limits.check_space(0)?;
        Ok(limits)
    }

    /// Refuses once more entry data was read than the byte limits allow.
    pub(super) fn check_read(&self, bytes_read: u64) -> Result<()> {
        if bytes_read > self.max_read {
            return Err(self.too_large());
        }
        Ok(())
    }

    /// Refuses early when an entry declares more bytes than the limits leave, the free space included.
    /// Only an early exit: the bytes actually read and written are what count.
    pub(super) fn check_declared(&mut self, bytes_read: u64, declared: u64) -> Result<()> {
        if declared > self.max_read.saturating_sub(bytes_read) {
            return Err(self.too_large());
        }
        if declared > self.unchecked_room {
            self.check_space(declared)?;
        }
        Ok(())
    }

    /// Counts `written` bytes against the free space, looking at the file system when due.
    pub(super) fn wrote(&mut self, written: u64) -> Result<()> {
        self.unchecked_room = self.unchecked_room.saturating_sub(written);
        if self.unchecked_room == 0 {
            self.check_space(0)?;
        }
        Ok(())
    }

    /// Refuses when writing `upcoming` more bytes would leave less than the reserve free.
    fn check_space(&mut self, upcoming: u64) -> Result<()> {
        let reserve = self.options.disk_reserve;
        if reserve == 0 {
            self.unchecked_room = u64::MAX;
            return Ok(());
        }
        let free = free_space(self.root).map_err(|e| Error::io("statvfs", self.root, e))?;
        if free < reserve.saturating_add(upcoming) {
            return Err(self.no_room(free, upcoming));
        }
        self.unchecked_room = (free - reserve).min(SPACE_CHECK_INTERVAL);
        Ok(())
    }

    /// The byte limit that was hit: the ratio when it is the stricter of the two.
    fn too_large(&self) -> Error {
        let options = self.options;
        if self.max_read < options.max_total_bytes {
            let reason = format!(
                "it expands to more than {} times its own {}, a likely decompression bomb \
                 (max_ratio {}: at most {} unpacked)",
                options.max_ratio,
                human(self.archive_size),
                options.max_ratio,
                human(self.max_read),
            );
            return self.refusal("max_ratio", reason, "unpack.max_ratio");
        }
        let reason = format!("it expands to more than {} (max_size)", human(options.max_total_bytes));
        self.refusal("max_size", reason, "unpack.max_size")
    }

    fn no_room(&self, free: u64, upcoming: u64) -> Error {
        let place = self.root.parent().unwrap_or(self.root);
        let needs = if upcoming > 0 {
            format!(" with the next {} written", human(upcoming))
        } else {
            String::new()
        };
        let reason = format!(
            "the file system of {} has {} free, and {} must remain free{needs} (disk_reserve)",
            place.display(),
            human(free),
            human(self.options.disk_reserve),
        );
        let advice = match &self.options.artifact {
            Some(_) => "free space on that file system, or lower settings.disk_reserve in the manifest",
            None => "free space on that file system, or lower disk_reserve",
        };
        Error::ArchiveLimit {
            archive: self.archive.to_owned(),
            limit: "disk_reserve",
            reason,
            advice: advice.to_owned(),
        }
    }

    /// A refusal by `limit`, whose manifest key is `key` of the archive's artifact.
    fn refusal(&self, limit: &'static str, reason: String, key: &str) -> Error {
        let advice = match &self.options.artifact {
            Some(artifact) => {
                format!("if the archive is trusted, raise {key} of artifact {artifact:?} in the manifest")
            }
            None => format!("if the archive is trusted, raise {limit}"),
        };
        Error::ArchiveLimit {
            archive: self.archive.to_owned(),
            limit,
            reason,
            advice,
        }
    }
}

/// Bytes an archive of `archive_size` bytes may expand to under `max_ratio`, never below the floor.
fn ratio_cap(archive_size: u64, max_ratio: f64) -> u64 {
    // `as` saturates: an infinite ratio means no cap, a NaN or negative one leaves only the floor.
    let cap = (archive_size as f64 * max_ratio) as u64;
    cap.max(RATIO_FLOOR)
}

/// Bytes an unprivileged writer may still use on the file system holding `path` (`statvfs`).
fn free_space(path: &Path) -> io::Result<u64> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    let mut stat = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and outlives the call; `stat` is writable memory of the type
    // statvfs fills, and it is read only when the call reports success.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        stat.assume_init()
    };
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// `bytes` for a message: exact below 1 KiB, else in the largest binary unit, e.g. `2.5 GiB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    format!("{} {}", text.strip_suffix(".0").unwrap_or(&text), UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_applies_above_its_floor_only() {
        assert_eq!(ratio_cap(1000, 200.0), RATIO_FLOOR);
        assert_eq!(ratio_cap(1 << 20, 200.0), 200 << 20);
        assert_eq!(ratio_cap(1 << 20, f64::INFINITY), u64::MAX);
        assert_eq!(ratio_cap(1 << 20, f64::NAN), RATIO_FLOOR);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(1 << 30), "1 GiB");
        assert_eq!(human(5 << 29), "2.5 GiB");
        assert_eq!(human(64 << 30), "64 GiB");
    }

    #[test]
    fn free_space_is_that_of_the_path_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).unwrap() > 0);
        let missing = free_space(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    fn limits_of<'a>(archive: &'a Path, root: &'a Path, options: &'a UnpackOptions) -> Result<Limits<'a>> {
        Limits::new(archive, root, options)
    }

    #[test]
    fn a_reserve_larger_than_the_free_space_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar");
        fs::write(&archive, [0; 1024]).unwrap();
        let options = UnpackOptions {
            disk_reserve: u64::MAX / 2,
            artifact: Some("models".into()),
            ..UnpackOptions::default()
        };
        let err = limits_of(&archive, dir.path(), &options)
            .err()
            .expect("reserve was granted");
        assert!(
            matches!(
                err,
                Error::ArchiveLimit {
                    limit: "disk_reserve",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("settings.disk_reserve"), "{err}");
    }

    #[test]
    fn an_entry_declaring_more_than_the_free_space_is_refused_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar");
        fs::write(&archive, [0; 1024]).unwrap();
        let free = free_space(dir.path()).unwrap();
        let options = UnpackOptions {
            max_total_bytes: u64::MAX,
            max_ratio: f64::INFINITY,
            disk_reserve: 1,
            ..UnpackOptions::default()
        };
        let mut limits = limits_of(&archive, dir.path(), &options).unwrap();
        limits.check_declared(0, 1 << 20).unwrap();
        let err = limits.check_declared(0, free).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ArchiveLimit {
                    limit: "disk_reserve",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("lower disk_reserve"), "{err}");
    }

    #[test]
    fn the_free_space_is_looked_at_again_once_the_room_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar");
        fs::write(&archive, [0; 1024]).unwrap();
        let options = UnpackOptions::default();
        let mut limits = limits_of(&archive, dir.path(), &options).unwrap();
        assert_eq!(limits.unchecked_room, SPACE_CHECK_INTERVAL);
        limits.wrote(SPACE_CHECK_INTERVAL - 1).unwrap();
        assert_eq!(limits.unchecked_room, 1);
        limits.wrote(1).unwrap();
        assert_eq!(
            limits.unchecked_room, SPACE_CHECK_INTERVAL,
            "no new look after the interval"
        );
    }
}
