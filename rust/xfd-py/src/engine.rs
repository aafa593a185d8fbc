//! `xfd._core.Engine`: the node engine for Python. Calls release the GIL and run on one shared tokio
//! runtime; results and events come back as plain dicts (via JSON), so no Python runs on the hot path.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyAny;
use serde::Serialize;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use xfd_core::ChunkDigest;
use xfd_core::control::link::{self, LinkConfig};
use xfd_core::engine::{Engine, EngineConfig, LinkedEngine, Running};
use xfd_core::origin::{RetryPolicy, StoreConfig};
use xfd_core::plan::Plan;
use xfd_core::unpack::UnpackOptions;

use crate::error::to_py;

fn socket_address(host: &str, port: u16) -> PyResult<SocketAddr> {
    let ip: IpAddr = host
        .parse()
        .map_err(|_| PyValueError::new_err(format!("peer host must be an IP address, got {host:?}")))?;
    Ok(SocketAddr::new(ip, port))
}

fn digest(hex: &str) -> PyResult<ChunkDigest> {
    ChunkDigest::from_hex(hex)
        .ok_or_else(|| PyValueError::new_err(format!("a chunk digest is 64 hex characters, got {hex:?}")))
}

/// The one runtime of the process: engines and servers share its threads.
pub(crate) fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("xfd-engine")
            .build()
            .expect("the tokio runtime starts")
    })
}

/// Converts any serializable value to Python objects through JSON (plain dicts, lists, str, int, float).
pub(crate) fn to_python<'py, T: Serialize>(py: Python<'py>, value: &T) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// The engine of one node for one plan.
#[pyclass(name = "Engine", module = "xfd._core", frozen)]
pub struct PyEngine {
    pub(crate) inner: Arc<Engine>,
    /// Background transfers (`submit_*`, or started by the control link), so that [`PyEngine::cancel`]
    /// can end them: an engine whose run is over must not go on writing (or publishing) beside the next
    /// run's files.
    running: Running,
    /// The control link, while there is one.
    link: Mutex<Option<JoinHandle<()>>>,
}

#[pymethods]
impl PyEngine {
    /// `stores` maps each store name of the plan to `(url, [(option, value), ...])`, credentials
    /// resolved on this node. `state_dir` is the node store's directory (`None`: `~/.cache/xfd` under
    /// the node root).
    #[new]
    #[pyo3(signature = (plan_json, node_root, stores, *, peer_token = None, deep_verify = false, faults = "", node_labels = None, state_dir = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        plan_json: &str,
        node_root: PathBuf,
        stores: BTreeMap<String, (String, Vec<(String, String)>)>,
        peer_token: Option<String>,
        deep_verify: bool,
        faults: &str,
        node_labels: Option<BTreeMap<String, String>>,
        state_dir: Option<PathBuf>,
    ) -> PyResult<Self> {
        let peer_token = peer_token.unwrap_or_default();
        let plan = Plan::from_json(plan_json).map_err(to_py)?;
        let stores = stores
            .into_iter()
            .map(|(name, (url, options))| (name, StoreConfig { url, options }))
            .collect();
        let config = EngineConfig {
            node_root,
            stores,
            deep_verify,
            peer_token,
            faults: Arc::new(faults.parse().map_err(to_py)?),
            node_labels: node_labels.unwrap_or_default(),
            retry: RetryPolicy::from_settings(&plan.settings),
            state_dir: state_dir.unwrap_or_default(),
        };
        let engine = {
            let _guard = runtime().enter();
            Engine::new(plan, config).map_err(to_py)?
        };
        Ok(PyEngine {
            inner: Arc::new(engine),
            running: Running::default(),
            link: Mutex::new(None),
        })
    }

    /// Finds cache hits and chunks of interrupted runs; returns `{"held": {chunk: digest}, ...}`.
    fn scan<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.inner.clone();
        let report = py.detach(|| runtime().block_on(engine.scan())).map_err(to_py)?;
        to_python(py, &report)
    }

    /// Fetches one chunk from the origin (blocking); returns `{"chunk_id", "bytes", "digest", ...}`.
    fn fetch_from_origin<'py>(&self, py: Python<'py>, chunk_id: &str) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.inner.clone();
        let done = py
            .detach(|| runtime().block_on(engine.fetch_from_origin(chunk_id)))
            .map_err(to_py)?;
        to_python(py, &done)
    }

    /// Starts fetching these chunks from the origin in the background; results arrive as events.
    fn submit_origin(&self, chunk_ids: Vec<String>) {
        let _runtime = runtime().enter();
        self.running.track(self.inner.start_origin(chunk_ids));
    }

    /// Ends every background transfer and waits (up to `grace` seconds) until they are gone; a chunk
    /// being recorded or a file being published finishes first (that work is not interruptible).
    #[pyo3(signature = (grace = 10.0))]
    fn cancel(&self, py: Python<'_>, grace: f64) {
        if let Some(link) = self.link.lock().unwrap().take() {
            link.abort(); // no more work may arrive
        }
        let running = self.running.take();
        running.iter().for_each(JoinHandle::abort);
        let wait = async move {
            for task in running {
                let _ = task.await;
            }
        };
        let grace = Duration::from_secs_f64(grace.max(0.0));
        py.detach(|| runtime().block_on(async { tokio::time::timeout(grace, wait).await }))
            .ok();
    }

    /// Ends the run on this node: background transfers are cancelled (see [`PyEngine::cancel`]), then
    /// the part files and destination locks are let go, so that the next run on this node can start at
    /// once, even while another thread still holds this engine (a pending `wait_events`).
    #[pyo3(signature = (grace = 10.0))]
    fn close(&self, py: Python<'_>, grace: f64) {
        self.cancel(py, grace);
        let engine = self.inner.clone();
        py.detach(|| engine.close());
    }

    /// Fetches one chunk from the peer at `host:port` (blocking), verified against `expected_digest`.
    #[pyo3(signature = (chunk_id, host, port, expected_digest = None))]
    fn fetch_from_peer<'py>(
        &self,
        py: Python<'py>,
        chunk_id: &str,
        host: &str,
        port: u16,
        expected_digest: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let peer = socket_address(host, port)?;
        let expected = expected_digest.map(digest).transpose()?;
        let engine = self.inner.clone();
        let done = py
            .detach(|| runtime().block_on(engine.fetch_from_peer(chunk_id, peer, expected)))
            .map_err(to_py)?;
        to_python(py, &done)
    }

    /// Starts fetching chunks from peers in the background: `(chunk_id, host, port, expected_digest)`
    /// each. Outcomes arrive as events.
    fn submit_peer(&self, transfers: Vec<(String, String, u16, Option<String>)>) -> PyResult<()> {
        let transfers = transfers
            .into_iter()
            .map(|(chunk_id, host, port, expected)| {
                Ok((
                    chunk_id,
                    socket_address(&host, port)?,
                    expected.as_deref().map(digest).transpose()?,
                ))
            })
            .collect::<PyResult<_>>()?;
        let _runtime = runtime().enter();
        self.running.track(self.inner.start_peer(transfers));
        Ok(())
    }

    /// Opens this node's control link to the coordinator at `host:port` and takes its work from then on;
    /// outcomes go back over the link. The link runs in the background until the coordinator ends the
    /// run or the engine is closed; a link that cannot connect or breaks ends with it (the coordinator
    /// then counts the node as lost).
    #[pyo3(signature = (host, port, token, node, heartbeat = 1.0))]
    fn link(&self, host: &str, port: u16, token: String, node: String, heartbeat: f64) -> PyResult<()> {
        let config = LinkConfig {
            coordinator: socket_address(host, port)?,
            token,
            node,
            heartbeat: Duration::from_secs_f64(heartbeat.max(0.01)),
        };
        let reports = self.inner.tap_reports();
        let worker = Arc::new(LinkedEngine {
            engine: self.inner.clone(),
            running: self.running.clone(),
        });
        let task = runtime().spawn(async move {
            let _ = link::run(config, reports, worker).await;
        });
        if let Some(previous) = self.link.lock().unwrap().replace(task) {
            previous.abort();
        }
        Ok(())
    }

    /// Serves this node's verified chunks to peers on `bind` (this node's own address); port 0 lets
    /// the OS choose. Returns `(host, port)` for peers.
    #[pyo3(signature = (bind, port = 0, *, upload_slots, egress_bytes_per_sec = None))]
    fn start_server(
        &self,
        py: Python<'_>,
        bind: &str,
        port: u16,
        upload_slots: usize,
        egress_bytes_per_sec: Option<u64>,
    ) -> PyResult<(String, u16)> {
        let ip: IpAddr = bind
            .parse()
            .map_err(|_| PyValueError::new_err(format!("bind must be an IP address, got {bind:?}")))?;
        let engine = self.inner.clone();
        let address = py
            .detach(|| runtime().block_on(engine.start_server(ip, port, upload_slots, egress_bytes_per_sec)))
            .map_err(to_py)?;
        Ok((address.ip().to_string(), address.port()))
    }

    /// Stops the peer server; in-flight uploads get up to `grace` seconds to finish.
    #[pyo3(signature = (grace = 5.0))]
    fn stop_server(&self, py: Python<'_>, grace: f64) {
        let engine = self.inner.clone();
        py.detach(|| runtime().block_on(engine.stop_server(Duration::from_secs_f64(grace.max(0.0)))));
    }

    /// The peer server's counters (`bytes_served`, `refused`, ...), or `None` when it is not running.
    fn server_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.inner.server_stats())
    }

    /// Runs the plan's unpacks on this node; returns one dict per unpack. `overwrite`: `None` takes the
    /// plan's `settings.overwrite`.
    #[pyo3(signature = (*, max_total_bytes = None, max_entries = None, overwrite = None))]
    fn finish<'py>(
        &self,
        py: Python<'py>,
        max_total_bytes: Option<u64>,
        max_entries: Option<u64>,
        overwrite: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let defaults = UnpackOptions::default();
        let options = UnpackOptions {
            max_total_bytes: max_total_bytes.unwrap_or(defaults.max_total_bytes),
            max_entries: max_entries.unwrap_or(defaults.max_entries),
            overwrite: overwrite.unwrap_or(self.inner.plan().settings.overwrite),
            ..defaults
        };
        let engine = self.inner.clone();
        let events = py
            .detach(|| runtime().block_on(engine.finish(options)))
            .map_err(to_py)?;
        to_python(py, &events)
    }

    /// Every event since the last call, oldest first.
    fn drain_events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let events = self.inner.drain_events();
        to_python(py, &events)
    }

    /// Waits up to `timeout` seconds for at least one event, then returns them all.
    fn wait_events<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.inner.clone();
        let wait = Duration::from_secs_f64(timeout.max(0.0));
        let events = py.detach(|| engine.wait_events(wait));
        to_python(py, &events)
    }

    /// `True` when every file of the plan is published on this node.
    fn is_complete(&self) -> bool {
        self.inner.is_complete()
    }

    /// Object bytes received from the origin so far, every attempt included (what the origin served).
    #[getter]
    fn origin_bytes(&self) -> u64 {
        self.inner.origin_bytes()
    }

    /// Number of verified chunks this node can serve to peers.
    #[getter]
    fn served_chunks(&self) -> usize {
        self.inner.registry().len()
    }
}
