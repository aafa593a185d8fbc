"""Naive per-node download: every node pulls the object from the origin on its own.

This is what users do today without xfd, so it is the comparison point of the cluster tests: the origin
serves the object once *per node*. The file is streamed to a temporary name beside its
destination and renamed into place, so a destination never holds a half-written file.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import obstore
import ray
from ray import cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from xfd import _core
from xfd.nodes import localize
from xfd.runtime.cluster_nodes import NodeInfo, describe_nodes, this_node


@attrs.frozen
class NodeDownload:
    """What one node fetched, where it put it, and the BLAKE3 digest of what it wrote."""

    node: NodeInfo
    path: Path
    size: int
    seconds: float
    blake3: str


def download_on_every_node(store: Any, key: str, destination: str) -> list[NodeDownload]:
    """Every alive node downloads ``key`` from ``store`` to ``destination`` under its node root.

    ``store`` is an obstore store that survives pickling (S3Store, HTTPStore, LocalStore).
    """
    refs = [
        _download_here.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node.node_id, soft=False)
        ).remote(store, key, destination)
        for node in describe_nodes()
    ]
    return ray.get(refs)


@ray.remote(num_cpus=0, max_retries=0)
def _download_here(store: Any, key: str, destination: str) -> NodeDownload:
    node = this_node()
    path = localize(destination, node.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    size = _stream_to(store, key, path)
    seconds = time.perf_counter() - started
    return NodeDownload(node=node, path=path, size=size, seconds=seconds, blake3=_core.hash_file_range(path))


def _stream_to(store: Any, key: str, path: Path) -> int:
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for block in obstore.get(store, key).stream(min_chunk_size=8 << 20):
                out.write(block)
                size += len(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return size


# This module is not installed on the nodes (only xfd is): what its remote function uses of it travels with
# the function, by value, instead of by a name the node's workers could not import.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
