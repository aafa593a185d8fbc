//! `xfd._core.Coordinator`: the run's coordinator for Python. Python starts it, joins nodes as their
//! agents come up, reads its status (a dict, via JSON) on its own schedule and ends it; the coordinator
//! itself runs on its own thread and never waits for Python.

use std::net::IpAddr;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyAny;
use xfd_core::control::core::RunPlan;
use xfd_core::control::progress::NodeState;
use xfd_core::control::server::{Coordinator, CoordinatorConfig};
use xfd_core::plan::origin_units;
use xfd_core::scheduler::SchedulerConfig;

use crate::engine::{runtime, to_python};
use crate::error::to_py;

#[pyclass(name = "Coordinator", module = "xfd._core", frozen)]
pub struct PyCoordinator {
    inner: Coordinator,
}

#[pymethods]
impl PyCoordinator {
    /// `units`: every unit of the plan and its size; `bind`: the driver's IP (port chosen by the OS);
    /// `expected`: the node ids the run waits for; `origin_parallelism` and `origin_chunk_streams`: the
    /// plan's settings (GETs), from which the origin transfers allowed at once follow.
    #[new]
    #[pyo3(signature = (units, unique_bytes, token, bind, expected, *, origin_parallelism, origin_chunk_streams, download_slots, upload_slots, lost_after = 30.0, snapshot_every = 0.25, with_chunks = false, origin_hold = 3.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        units: Vec<(String, u64)>,
        unique_bytes: u64,
        token: String,
        bind: &str,
        expected: Vec<String>,
        origin_parallelism: u32,
        origin_chunk_streams: u32,
        download_slots: u32,
        upload_slots: u32,
        lost_after: f64,
        snapshot_every: f64,
        with_chunks: bool,
        origin_hold: f64,
    ) -> PyResult<Self> {
        let ip: IpAddr = bind
            .parse()
            .map_err(|_| PyValueError::new_err(format!("bind must be an IP address, got {bind:?}")))?;
        let config = CoordinatorConfig {
            plan: RunPlan {
                units,
                unique_bytes,
                scheduler: SchedulerConfig {
                    // The scheduler counts origin units; the settings count GETs.
                    origin_parallelism: origin_units(origin_parallelism, origin_chunk_streams),
                    download_slots,
                    upload_slots,
                    ..SchedulerConfig::default()
                },
            },
            token,
            bind: (ip, 0).into(),
            lost_after: Duration::from_secs_f64(lost_after.max(0.0)),
            snapshot_every: Duration::from_secs_f64(snapshot_every.max(0.0)),
            with_chunks,
            expected,
            origin_hold: Duration::from_secs_f64(origin_hold.max(0.0)),
        };
        let inner = py
            .detach(|| runtime().block_on(Coordinator::start(config)))
            .map_err(to_py)?;
        Ok(PyCoordinator { inner })
    }

    /// `(host, port)` of the control server, for the agents.
    #[getter]
    fn address(&self) -> (String, u16) {
        let address = self.inner.address();
        (address.ip().to_string(), address.port())
    }

    /// A node's agent is up: it serves peers at `address` (`ip:port`), needs `needs`, holds `held`
    /// (unit -> digest).
    fn join(
        &self,
        py: Python<'_>,
        name: &str,
        address: &str,
        needs: Vec<String>,
        held: Vec<(String, String)>,
    ) -> PyResult<()> {
        py.detach(|| self.inner.join(name, address, needs, held)).map_err(to_py)
    }

    /// A node that takes no part: `lost` (its agent died) or failed (its engine refused the run).
    fn add_failed(&self, name: &str, ip: &str, reason: &str, lost: bool) -> PyResult<()> {
        self.inner.add_failed(name, ip, reason, lost).map_err(to_py)
    }

    /// A node is gone (its agent's actor died).
    fn lose(&self, name: &str, reason: &str) -> PyResult<()> {
        self.inner.lose(name, reason).map_err(to_py)
    }

    /// `state`: `done` or `failed` (after the transfers: unpacked, or the reason it could not).
    fn set_state(&self, name: &str, state: &str, reason: &str) -> PyResult<()> {
        let state = match state {
            "done" => NodeState::Done,
            "failed" => NodeState::Failed,
            "lost" => NodeState::Lost,
            other => {
                return Err(PyValueError::new_err(format!(
                    "state must be done, failed or lost, got {other:?}"
                )));
            }
        };
        self.inner.set_state(name, state, reason).map_err(to_py)
    }

    /// Waits up to `timeout` seconds for the outcome; returns the status then (see `status`).
    fn wait<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyAny>> {
        let status = py.detach(|| self.inner.wait(Duration::from_secs_f64(timeout.max(0.0))));
        to_python(py, &status)
    }

    /// The latest status: `outcome` (None, or `{"outcome": "finished"|"stalled", "reason": ...}`),
    /// `snapshot`, `nodes` (ids by index), `deliveries`, `origin_refetches`, `failures`, `origin_bytes`.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.inner.status())
    }

    /// Ends the run (every link is told); returns the final status.
    fn end<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let status = py.detach(|| self.inner.end());
        to_python(py, &status)
    }
}
