"""The nodes of the connected Ray cluster, and what each of them says about itself."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from xfd.nodes import resolve_node_root


@attrs.frozen
class NodeInfo:
    """A node as seen by code running on it."""

    node_id: str
    ip: str
    root: Path
    labels: dict[str, str] = attrs.field(factory=dict, eq=False)


def alive_nodes() -> list[dict[str, Any]]:
    """Ray's records of the nodes that are alive now, sorted by IP then id for a stable order."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return sorted(nodes, key=lambda n: (n["NodeManagerAddress"], n["NodeID"]))


def describe_nodes(timeout_s: float = 60.0) -> list[NodeInfo]:
    """Runs one tiny task pinned to each alive node; each reports its id, IP and node root.

    A node that dies meanwhile (Ray may list it as alive for a few seconds) is left out.
    """
    refs = [
        _describe_self.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        ).remote()
        for node in alive_nodes()
    ]
    described = []
    for ref in refs:
        try:
            described.append(ray.get(ref, timeout=timeout_s))
        except (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError):
            continue
    return described


def this_node() -> NodeInfo:
    """The node the calling Ray task or actor runs on."""
    context = ray.get_runtime_context()
    labels = dict(context.get_node_labels())
    return NodeInfo(
        node_id=context.get_node_id(),
        ip=ray.util.get_node_ip_address(),
        root=resolve_node_root(os.environ, labels),
        labels=labels,
    )


# num_cpus=0: it must run even on a node whose CPUs are all taken by the user's work.
_describe_self = ray.remote(num_cpus=0, max_retries=0)(this_node)
