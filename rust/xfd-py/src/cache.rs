//! `xfd._core.cache_list`, `cache_verify`, `cache_prune`: what xfd published on this node, from its store
//! (`xfd_core::store::inventory`). Results come back as plain dicts (via JSON); the GIL is released
//! while the store is read and files are hashed or removed.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyAny;
use serde::Serialize;
use xfd_core::store::{self, Keep, Store};

use crate::engine::to_python;
use crate::error::to_py;

/// Runs `work` on the store in `state_dir` with the GIL released; an empty list when xfd never ran here.
fn on_store<'py, T: Serialize + Send>(
    py: Python<'py>,
    state_dir: PathBuf,
    work: impl FnOnce(&std::sync::Arc<Store>) -> xfd_core::Result<Vec<T>> + Send,
) -> PyResult<Bound<'py, PyAny>> {
    let found = py.detach(|| match Store::open_existing(&state_dir)? {
        Some(store) => work(&store),
        None => Ok(Vec::new()),
    });
    to_python(py, &found.map_err(to_py)?)
}

/// Every file and tree xfd published on this node (node root `node_root`) at or below `within`, with its
/// state.
#[pyfunction]
#[pyo3(signature = (state_dir, node_root, within = None))]
pub fn cache_list<'py>(
    py: Python<'py>,
    state_dir: PathBuf,
    node_root: PathBuf,
    within: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    on_store(py, state_dir, |store| store::list(store, &node_root, within.as_deref()))
}

/// [`cache_list`], each file re-hashed against its record on `threads` threads.
#[pyfunction]
#[pyo3(signature = (state_dir, node_root, within = None, threads = 4))]
pub fn cache_verify<'py>(
    py: Python<'py>,
    state_dir: PathBuf,
    node_root: PathBuf,
    within: Option<String>,
    threads: usize,
) -> PyResult<Bound<'py, PyAny>> {
    on_store(py, state_dir, |store| {
        store::verify(store, &node_root, within.as_deref(), threads)
    })
}

/// Removes (with `apply`) what xfd published here that `files` and `dirs` (destinations as manifests
/// name them) do not keep; without `apply`, only says what it would do.
#[pyfunction]
#[pyo3(signature = (state_dir, node_root, files, dirs, apply = false, within = None))]
pub fn cache_prune<'py>(
    py: Python<'py>,
    state_dir: PathBuf,
    node_root: PathBuf,
    files: Vec<String>,
    dirs: Vec<String>,
    apply: bool,
    within: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let keep = Keep { files, dirs, within };
    on_store(py, state_dir, |store| store::prune(store, &node_root, &keep, apply))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cache_list, m)?)?;
    m.add_function(wrap_pyfunction!(cache_verify, m)?)?;
    m.add_function(wrap_pyfunction!(cache_prune, m)?)
}
