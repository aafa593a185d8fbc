//! The one place where engine errors become Python exceptions.
//!
//! I/O errors become `OSError(errno, message, filename)`, which Python itself turns into the matching
//! builtin subclass (`FileNotFoundError`, `PermissionError`, ...); everything else maps to a class of
//! the package's hierarchy in `xfd/errors.py`.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use xfd_core::Error;

pyo3::import_exception!(xfd.errors, RangeError);
pyo3::import_exception!(xfd.errors, EngineError);

pub(crate) fn to_py(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::Io { op, path, source } => match source.raw_os_error() {
            Some(errno) => {
                // Rust appends " (os error N)"; Python prints the errno itself, so drop the suffix.
                let text = source.to_string();
                let reason = text.split(" (os error").next().unwrap_or(&text);
                let filename = path.display().to_string();
                PyOSError::new_err((errno, format!("cannot {op}: {reason}"), filename))
            }
            None => PyOSError::new_err(message),
        },
        Error::RangeOutOfBounds { .. } => RangeError::new_err(message),
        _ => EngineError::new_err(message),
    }
}
