"""``xfd cache`` on every node: one task pinned to each chosen node reads that node's store.

Each node answers for itself, from its own node store (:func:`xfd.engine.state_dir` under its node root,
resolved on the node as an agent resolves it): a Ray task pinned with a hard NodeAffinity, with no CPU
asked (it must run on a node whose CPUs are all taken). The driver's own node is read in the driver's
process, as its agent runs there (docs/runtime.md): the same node root and the same store a distribution
from this driver used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from xfd import _core
from xfd.engine import state_dir
from xfd.runtime.agent_pool import driver_node_id
from xfd.runtime.cluster_nodes import this_node
from xfd.runtime.distribute import NodeChoice, ensure_ray, select_nodes

# Hashing threads per node for verify: a node's disks, not its CPUs, bound it; a few keep a fast disk busy.
VERIFY_THREADS = 4


def on_this_node(
    operation: str,
    within: str | None = None,
    files: Sequence[str] = (),
    dirs: Sequence[str] = (),
    apply: bool = False,
) -> dict[str, Any]:
    """Runs ``operation`` (``list``, ``verify`` or ``prune``) on the store of the node this runs on."""
    node = this_node()
    store = state_dir(node.root)
    if operation == "list":
        lines = _core.cache_list(store, node.root, within)
    elif operation == "verify":
        lines = _core.cache_verify(store, node.root, within, min(VERIFY_THREADS, os.cpu_count() or 1))
    elif operation == "prune":
        lines = _core.cache_prune(store, node.root, list(files), list(dirs), apply, within)
    else:
        raise ValueError(f"unknown cache operation {operation!r}")
    return {"node_id": node.node_id, "ip": node.ip, "root": str(node.root), "lines": lines, "error": None}


_on_node = ray.remote(num_cpus=0, max_retries=0)(on_this_node)


def on_nodes(
    operation: str,
    *,
    nodes: NodeChoice = None,
    address: str | None = None,
    within: str | None = None,
    files: Sequence[str] = (),
    dirs: Sequence[str] = (),
    apply: bool = False,
) -> list[dict[str, Any]]:
    """``operation`` on every chosen node at once (default: every alive node), in node order. A node that
    fails to answer (lost meanwhile, a store it cannot read) gives its error instead of its lines."""
    ensure_ray(address)
    chosen = select_nodes(nodes)
    here = driver_node_id()
    args = (operation, within, tuple(files), tuple(dirs), apply)
    pending = {
        node_id: _on_node.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        ).remote(*args)
        for node_id in chosen
        if node_id != here
    }
    results = []
    for node_id in chosen:
        try:
            results.append(on_this_node(*args) if node_id == here else ray.get(pending[node_id]))
        except Exception as error:  # noqa: BLE001 - one node's failure is that node's answer
            results.append({"node_id": node_id, "ip": "", "root": "", "lines": [], "error": _first_line(error)})
    return results


def _first_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"
