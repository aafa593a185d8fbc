//! `xfd._core.Scheduler`: the Rust scheduler state machine for Python (dense indices; names are mapped
//! in `xfd/scheduler.py`). Transfers cross the boundary as `(chunk, node, source or None, duplicate)`.

use std::collections::BTreeMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use xfd_core::scheduler::{FailureKind, Scheduler, SchedulerConfig, Transfer};

type TransferTuple = (u32, u32, Option<u32>, bool);

fn to_tuple(transfer: Transfer) -> TransferTuple {
    (transfer.chunk, transfer.node, transfer.source, transfer.duplicate)
}

fn from_tuple((chunk, node, source, duplicate): TransferTuple) -> Transfer {
    Transfer {
        chunk,
        node,
        source,
        duplicate,
    }
}

#[pyclass(name = "Scheduler", module = "xfd._core")]
pub struct PyScheduler {
    inner: Scheduler,
    chunks: usize,
    nodes: usize,
}

impl PyScheduler {
    fn check(&self, transfer: &TransferTuple) -> PyResult<()> {
        let (chunk, node, source, _) = *transfer;
        if chunk as usize >= self.chunks
            || node as usize >= self.nodes
            || source.is_some_and(|s| s as usize >= self.nodes)
        {
            return Err(PyValueError::new_err(format!(
                "transfer {transfer:?} names an unknown chunk or node"
            )));
        }
        Ok(())
    }
}

#[pymethods]
impl PyScheduler {
    #[new]
    #[pyo3(signature = (chunks, nodes, *, origin_parallelism, download_slots, upload_slots, needs = None,
                        sample_size = 64, scan_budget = 16, max_penalties = 2, endgame = true, seed = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        chunks: usize,
        nodes: usize,
        origin_parallelism: u32,
        download_slots: u32,
        upload_slots: u32,
        needs: Option<Vec<Vec<u32>>>,
        sample_size: usize,
        scan_budget: usize,
        max_penalties: u32,
        endgame: bool,
        seed: u64,
    ) -> PyResult<Self> {
        if let Some(needs) = &needs
            && needs.iter().flatten().any(|&c| c as usize >= chunks)
        {
            return Err(PyValueError::new_err("needs names a chunk index out of range"));
        }
        let config = SchedulerConfig {
            origin_parallelism,
            download_slots,
            upload_slots,
            sample_size: sample_size.max(1),
            scan_budget: scan_budget.max(1),
            max_penalties,
            endgame,
            seed,
            ..SchedulerConfig::default()
        };
        Ok(PyScheduler {
            inner: Scheduler::new(chunks, nodes, needs.as_deref(), config),
            chunks,
            nodes,
        })
    }

    fn held(&mut self, node: u32, chunks: Vec<u32>) -> PyResult<()> {
        if node as usize >= self.nodes || chunks.iter().any(|&c| c as usize >= self.chunks) {
            return Err(PyValueError::new_err("unknown node or chunk index"));
        }
        self.inner.held(node, &chunks);
        Ok(())
    }

    fn finished(&mut self, transfer: TransferTuple) -> PyResult<Vec<TransferTuple>> {
        self.check(&transfer)?;
        Ok(self
            .inner
            .finished(from_tuple(transfer))
            .into_iter()
            .map(to_tuple)
            .collect())
    }

    fn failed(&mut self, transfer: TransferTuple, kind: &str, reason: &str) -> PyResult<()> {
        self.check(&transfer)?;
        let kind =
            FailureKind::parse(kind).ok_or_else(|| PyValueError::new_err(format!("unknown failure kind {kind:?}")))?;
        self.inner.failed(from_tuple(transfer), kind, reason);
        Ok(())
    }

    fn node_lost(&mut self, node: u32) -> Vec<TransferTuple> {
        self.inner.node_lost(node).into_iter().map(to_tuple).collect()
    }

    fn next_transfers(&mut self, py: Python<'_>) -> Vec<TransferTuple> {
        let inner = &mut self.inner;
        py.detach(|| inner.next_transfers()).into_iter().map(to_tuple).collect()
    }

    fn active(&self) -> Vec<TransferTuple> {
        self.inner.active().into_iter().map(to_tuple).collect()
    }

    fn failed_chunks(&self) -> BTreeMap<u32, String> {
        self.inner.failed_chunks().clone()
    }

    /// Why `chunk` was given up, or `None`: one lookup, where `failed_chunks` copies every failure.
    fn failure(&self, chunk: u32) -> Option<String> {
        self.inner.failed_chunks().get(&chunk).cloned()
    }

    fn lost_nodes(&self) -> Vec<u32> {
        self.inner.lost_nodes().to_vec()
    }

    fn holders(&self, chunk: u32) -> Vec<u32> {
        self.inner.holders(chunk)
    }

    /// `(downloads, uploads, origin_fetches, penalties, wanting, inflight)` of a node.
    fn node_stats(&self, node: u32) -> (u32, u32, u32, u32, usize, usize) {
        let s = self.inner.node_stats(node);
        (
            s.downloads,
            s.uploads,
            s.origin_fetches,
            s.penalties,
            s.wanting,
            s.inflight,
        )
    }

    fn alive(&self, node: u32) -> bool {
        self.inner.alive(node)
    }

    fn node_done(&self, node: u32) -> bool {
        self.inner.node_done(node)
    }

    #[getter]
    fn done(&self) -> bool {
        self.inner.done()
    }

    #[getter]
    fn origin_busy(&self) -> u32 {
        self.inner.origin_busy()
    }

    #[getter]
    fn origin_refetches(&self) -> u64 {
        self.inner.origin_refetches()
    }
}
