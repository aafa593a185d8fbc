//! The one place where engine errors become Python exceptions.
//!
//! I/O errors become `OSError(errno, message, filename)`, which Python itself turns into the matching
//! builtin subclass (`FileNotFoundError`, `PermissionError`, ...); everything else maps to a class of
//! the package's hierarchy in `xfd/errors.py`, all subclasses of `xfd.errors.XfdError`.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use xfd_core::Error;

pyo3::import_exception!(xfd.errors, ArchiveError);
pyo3::import_exception!(xfd.errors, DestinationBusyError);
pyo3::import_exception!(xfd.errors, DestinationExistsError);
pyo3::import_exception!(xfd.errors, EngineError);
pyo3::import_exception!(xfd.errors, IntegrityError);
pyo3::import_exception!(xfd.errors, ObjectChangedError);
pyo3::import_exception!(xfd.errors, OriginError);
pyo3::import_exception!(xfd.errors, PeerError);
pyo3::import_exception!(xfd.errors, RangeError);
pyo3::import_exception!(xfd.errors, StorageError);
pyo3::import_exception!(xfd.errors, StoreConfigError);
pyo3::import_exception!(xfd.errors, UnsafeArchiveError);

pub(crate) fn to_py(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::Io { op, path, source } => io_error(op, &path.display().to_string(), source, message),
        Error::Storage { path, source, .. } => {
            StorageError::new_err((source.raw_os_error().unwrap_or(0), message, path.display().to_string()))
        }
        Error::DestinationBusy { .. } => DestinationBusyError::new_err(message),
        Error::RangeOutOfBounds { .. } => RangeError::new_err(message),
        Error::Origin { .. } | Error::OriginDenied { .. } => OriginError::new_err(message),
        Error::ObjectChanged { .. } => ObjectChangedError::new_err(message),
        Error::StoreConfig { .. } | Error::InvalidP2pConfig { .. } => StoreConfigError::new_err(message),
        Error::Sha256Mismatch { .. } | Error::PeerDigestMismatch { .. } => IntegrityError::new_err(message),
        Error::DestinationExists { .. } | Error::NotADirectory { .. } => DestinationExistsError::new_err(message),
        Error::InvalidArchiveFormat { .. } | Error::UnknownArchiveFormat { .. } | Error::ArchiveUnreadable { .. } => {
            ArchiveError::new_err(message)
        }
        Error::UnsafeArchiveEntry { .. } | Error::ArchiveLimit { .. } | Error::TooManyArchiveEntries { .. } => {
            UnsafeArchiveError::new_err(message)
        }
        Error::PeerUnreachable { .. }
        | Error::PeerStalled { .. }
        | Error::PeerAuthRefused { .. }
        | Error::ChunkNotOnPeer { .. }
        | Error::PeerBusy { .. }
        | Error::PeerProtocol { .. }
        | Error::PeerShortBody { .. } => PeerError::new_err(message),
        _ => EngineError::new_err(message),
    }
}

fn io_error(op: &str, path: &str, source: std::io::Error, message: String) -> PyErr {
    match source.raw_os_error() {
        Some(errno) => {
            // Rust appends " (os error N)"; Python prints the errno itself, so drop the suffix.
            let text = source.to_string();
            let reason = text.split(" (os error").next().unwrap_or(&text);
            PyOSError::new_err((errno, format!("cannot {op}: {reason}"), path.to_owned()))
        }
        None => PyOSError::new_err(message),
    }
}
