"""REPORT: progress of a distribution as plain data, with no UI imports.

The Rust coordinator aggregates the nodes' reports into progress and publishes a snapshot at a fixed rate
(``rust/xfd-core/src/control/progress.rs``); :meth:`Snapshot.from_core` turns one into the objects
renderers read (tqdm in terminals, widgets in notebooks), at most a few times per second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

# One character per unit in the coordinator's chunk map (see ChunkState::code in progress.rs); "." is a
# unit the node does not need.
_CHUNK_STATES = {"m": "missing", "i": "inflight", "o": "origin", "p": "peer", "c": "cache", "f": "failed"}


@attrs.frozen
class NodeProgress:
    node_id: str
    ip: str
    total_bytes: int
    done_bytes: int
    origin_bytes: int
    peer_bytes: int
    cache_bytes: int
    served_bytes: int
    inflight: int
    failures: tuple[str, ...]
    state: str  # starting | running | done | lost | failed


@attrs.frozen
class Snapshot:
    """Absolute progress at one moment: renderers need nothing else."""

    elapsed_s: float
    unique_bytes: int
    origin_bytes: int
    nodes: tuple[NodeProgress, ...]
    chunk_states: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict, repr=False)
    """node id -> chunk id -> missing | inflight | origin | peer | cache | failed."""
    rates: Mapping[str, float] = attrs.field(factory=dict)
    """Peak rates so far (bytes/s): ``origin``, ``node_download``, ``node_upload``."""
    ideal_s: float = 0.0
    """The ideal time at the peak rates so far (see :attr:`xfd.report.Report.ideal_seconds`): an estimate."""
    transfer_s: float = 0.0
    """Seconds since the first transfer started: the part of ``elapsed_s`` in which bytes could move
    (before it, agents were starting)."""

    @property
    def total_bytes(self) -> int:
        return sum(n.total_bytes for n in self.nodes if n.state != "lost")

    @property
    def done_bytes(self) -> int:
        return sum(n.done_bytes for n in self.nodes if n.state != "lost")

    @property
    def rate(self) -> float:
        """Bytes moved per second since the first transfer started (agent start-up and cached bytes, which
        move nothing, are not counted)."""
        moved = sum(n.origin_bytes + n.peer_bytes for n in self.nodes)
        return moved / self.transfer_s if self.transfer_s > 0 else 0.0

    @classmethod
    def from_core(cls, status: Mapping[str, Any], units: Sequence[str]) -> Snapshot:
        """The snapshot in the Rust coordinator's ``status``: nodes and units are named by their index
        there; ``status["nodes"]`` names the nodes, ``units`` (the plan's unit ids, in order) the units."""
        core, names = status["snapshot"], status["nodes"]
        nodes = tuple(
            NodeProgress(
                names[n["node"]],
                n["ip"],
                n["total_bytes"],
                n["done_bytes"],
                n["origin_bytes"],
                n["peer_bytes"],
                n["cache_bytes"],
                n["served_bytes"],
                n["inflight"],
                tuple(n["failures"]),
                n["state"],
            )
            for n in core["nodes"]
        )
        chunks = {
            names[int(node)]: {units[i]: _CHUNK_STATES[code] for i, code in enumerate(codes) if code != "."}
            for node, codes in core["chunk_states"].items()
        }
        return cls(
            core["elapsed_s"],
            core["unique_bytes"],
            core["origin_bytes"],
            nodes,
            chunks,
            core["rates"],
            core["ideal_s"],
            core["transfer_s"],
        )
