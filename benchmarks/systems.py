"""The systems the cluster benchmark compares, each putting a workload on every node of the Ray cluster.

- :func:`run_xfd`: ``Manifest.distribute`` (origin once, then peer to peer).
- :func:`run_naive`: every node pulls every object itself from the origin with obstore, 8 ranged GETs
  of 64 MiB in flight per object and 8 objects at once (64 at once when every object is small: one
  GET each), written with ``pwrite`` and ``fsync``ed, then renamed into place; archives extracted with
  :mod:`tarfile`. What users write by hand today.
- :func:`run_ray_broadcast`: the driver pulls every object once (the same ranged GETs) and ``ray.put``s
  it in 64 MiB pieces; a task on every node ``ray.get``s the pieces and writes them. Ray's object store
  moves the bytes between nodes.

All three write the same files under each node's root (``/bench/...``).
"""

from __future__ import annotations

import asyncio
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import obstore
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

MiB = 1 << 20
PIECE = 64 * MiB
IN_FLIGHT = 8
# Objects in flight when all are small: a user's script for a directory of small files keeps many GETs
# going, since each costs a round trip and hardly any bandwidth.
SMALL_IN_FLIGHT = 64
SMALL = 1 << 20


@attrs.frozen
class Item:
    """One object of a workload and where it goes; ``unpack_to`` for archives."""

    key: str
    size: int
    to: str
    unpack_to: str | None = None


@attrs.frozen
class Workload:
    name: str
    items: tuple[Item, ...]
    manifest_artifacts: tuple[dict[str, Any], ...]
    """The same content as xfd artifacts: ``{"kind": "object"|"prefix", ...}`` builder arguments."""

    @property
    def unique_bytes(self) -> int:
        return sum(item.size for item in self.items)


def run_xfd(
    workload: Workload, store_url: str, options: dict[str, Any], node_ids: list[str], chunk_size: int | str = "auto"
) -> Any:
    from xfd import Manifest

    builder = Manifest.builder().store("origin", store_url, **options).settings(chunk_size=chunk_size)
    for artifact in workload.manifest_artifacts:
        arguments = {k: v for k, v in artifact.items() if k not in ("kind", "unpack")}
        if artifact["kind"] == "prefix":
            builder = builder.prefix("origin", **arguments)
        else:
            builder = builder.object("origin", **arguments)
            if artifact.get("unpack"):
                builder = builder.unpack("tar.gz", to=artifact["unpack"])
    report = builder.build().distribute(progress="none", nodes=node_ids)
    if not report.ok:
        raise RuntimeError(report.summary())
    return report


def run_naive(workload: Workload, store: Any, node_ids: list[str]) -> None:
    refs = [_naive_node.options(scheduling_strategy=_on(node_id)).remote(workload, store) for node_id in node_ids]
    ray.get(refs)


def run_ray_broadcast(workload: Workload, store: Any, node_ids: list[str]) -> None:
    pieces: dict[str, list[Any]] = {}
    for item in workload.items:
        pieces[item.key] = [ray.put(bytes(block)) for block in asyncio.run(_ranges(store, item))]
    refs = [_receive_node.options(scheduling_strategy=_on(node_id)).remote(workload, pieces) for node_id in node_ids]
    ray.get(refs)
    del pieces


def _on(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


@ray.remote(num_cpus=0, max_retries=0)
def _naive_node(workload: Workload, store: Any) -> None:
    root = _root()

    async def fetch_all() -> None:
        small = all(item.size <= SMALL for item in workload.items)
        gate = asyncio.Semaphore(SMALL_IN_FLIGHT if small else IN_FLIGHT)

        async def one(item: Item) -> None:
            async with gate:
                path, temp = _temp_for(root, item)
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    # 8 ranges in flight, each group written before the next is fetched: 512 MiB at most.
                    async for offset, blocks in _range_groups(store, item):
                        await asyncio.to_thread(_write_at, fd, offset, blocks)
                    await asyncio.to_thread(os.fsync, fd)
                finally:
                    os.close(fd)
            await asyncio.to_thread(_publish, root, item, path, temp)

        await asyncio.gather(*(one(item) for item in workload.items))

    asyncio.run(fetch_all())


@ray.remote(num_cpus=0, max_retries=0)
def _receive_node(workload: Workload, pieces: dict[str, list[Any]]) -> None:
    root = _root()
    for item in workload.items:
        path, temp = _temp_for(root, item)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            for ref in pieces[item.key]:
                block = ray.get(ref)
                os.pwrite(fd, block, offset)
                offset += len(block)
                del block
            os.fsync(fd)
        finally:
            os.close(fd)
        _publish(root, item, path, temp)


async def _range_groups(store: Any, item: Item) -> AsyncIterator[tuple[int, list[Any]]]:
    """The object as groups of up to 8 buffers of 64 MiB, fetched with one ranged GET each, in parallel."""
    starts = list(range(0, item.size, PIECE)) or [0]
    for first in range(0, len(starts), IN_FLIGHT):
        group = starts[first : first + IN_FLIGHT]
        ends = [min(start + PIECE, item.size) for start in group]
        yield group[0], await obstore.get_ranges_async(store, item.key, starts=group, ends=ends)


async def _ranges(store: Any, item: Item) -> list[Any]:
    """The whole object as 64 MiB buffers (8 ranged GETs in flight)."""
    return [block async for _, blocks in _range_groups(store, item) for block in blocks]


def _write_at(fd: int, offset: int, blocks: list[Any]) -> None:
    for block in blocks:
        view = memoryview(block)
        os.pwrite(fd, view, offset)
        offset += len(view)


def _temp_for(root: Path, item: Item) -> tuple[Path, Path]:
    path = root / item.to.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, path.with_name(f".{path.name}.part")


def _publish(root: Path, item: Item, path: Path, temp: Path) -> None:
    os.replace(temp, path)
    if item.unpack_to is not None:
        with tarfile.open(path) as archive:
            archive.extractall(root / item.unpack_to.lstrip("/"), filter="data")


def _root() -> Path:
    from xfd.runtime.cluster_nodes import this_node

    return Path(this_node().root)
