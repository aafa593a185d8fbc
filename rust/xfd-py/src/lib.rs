//! pyo3 bindings for xfd-core, built into `xfd._core`. Conversion of types and errors only: no logic.

use std::path::PathBuf;

use pyo3::prelude::*;

mod cache;
mod coordinator;
mod engine;
mod error;
mod scheduler;

/// BLAKE3 hex digest of `length` bytes of the file at `path` from `offset` (`None`: to the end).
///
/// The GIL is released while the file is read.
#[pyfunction]
#[pyo3(signature = (path, offset = 0, length = None))]
fn hash_file_range(py: Python<'_>, path: PathBuf, offset: u64, length: Option<u64>) -> PyResult<String> {
    py.detach(|| xfd_core::hash_file_range(&path, offset, length))
        .map(|digest| digest.to_hex())
        .map_err(error::to_py)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", xfd_core::VERSION)?;
    m.add_function(wrap_pyfunction!(hash_file_range, m)?)?;
    cache::register(m)?;
    m.add_class::<coordinator::PyCoordinator>()?;
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<scheduler::PyScheduler>()?;
    Ok(())
}
