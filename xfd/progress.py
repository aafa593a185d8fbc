"""REPORT: progress of a distribution as plain data, aggregated in one place, with no UI imports.

The coordinator feeds engine events into a :class:`ProgressModel`; renderers (tqdm in terminals, widgets
in notebooks) only ever read :class:`Snapshot` objects from it, at most a few times per second.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

# Peak rates are measured over windows this long: long enough to average out single chunks, short
# enough to see the rate a link reached.
RATE_WINDOW_S = 1.0
# Activity shorter than this is measured as if it lasted this long: a rate over a few milliseconds says
# more about timer resolution than about a link.
MIN_RATE_SPAN_S = 0.05


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
    """The ideal time at the peak rates so far (see :func:`xfd.report.ideal_seconds`): an estimate."""
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


class ProgressModel:
    """Turns engine events into snapshots and measures the rates and bytes the report's ideal time needs."""

    def __init__(self, chunk_sizes: Mapping[str, int], unique_bytes: int) -> None:
        self.chunk_sizes = dict(chunk_sizes)
        self.unique_bytes = unique_bytes
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._nodes: dict[str, dict[str, Any]] = {}
        self._chunk_states: dict[str, dict[str, str]] = {}
        # Rate windows of the origin, of each node's download and upload, and their peaks, kept up to date
        # as transfers finish, so reading a peak costs O(1).
        self._peaks = {name: _PeakRate() for name in ("origin", "node_download", "node_upload")}
        self._first_transfer: float | None = None
        # What the origin must serve, kept up to date: bytes of the chunks some surviving node needs and no
        # node had in its cache.
        self._wanted: Counter[str] = Counter()
        self._cached: set[str] = set()
        self._origin_needed = 0

    def add_node(self, node_id: str, ip: str, needed: Iterable[str]) -> None:
        with self._lock:
            needed = list(needed)
            self._nodes[node_id] = {
                "ip": ip, "total": sum(self.chunk_sizes[c] for c in needed), "done": 0, "origin": 0, "peer": 0,
                "cache": 0, "served": 0, "inflight": 0, "failures": [], "state": "running", "finished_at": None,
            }
            self._chunk_states[node_id] = dict.fromkeys(needed, "missing")
            for chunk in needed:
                self._want(chunk, +1)

    def started_transfer(self, node_id: str, chunk: str) -> None:
        with self._lock:
            if self._first_transfer is None:
                self._first_transfer = time.monotonic()
            if node_id in self._nodes:
                self._nodes[node_id]["inflight"] += 1
                self._chunk_states[node_id][chunk] = "inflight"

    def transfer_dropped(self, node_id: str) -> None:
        """A transfer that will never report (an endgame loser, or one to or from a lost node)."""
        with self._lock:
            if node_id in self._nodes:
                self._nodes[node_id]["inflight"] = max(0, self._nodes[node_id]["inflight"] - 1)

    def chunk_done(self, node_id: str, chunk: str, source: str, seconds: float, source_node: str = "",
                   counted_inflight: bool = True) -> None:
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None:
                return
            size = self.chunk_sizes[chunk]
            if counted_inflight:
                node["inflight"] = max(0, node["inflight"] - 1)
            if self._chunk_states[node_id].get(chunk) in ("origin", "peer", "cache"):
                return  # a duplicate report
            node["done"] += size
            node[source] += size
            self._chunk_states[node_id][chunk] = source
            if source_node in self._nodes:
                self._nodes[source_node]["served"] += size
            if source == "cache":
                self._cache_seeds(chunk)
            else:
                self._account(time.monotonic() - self.started, seconds, size, source, node_id, source_node)

    def chunk_failed(self, node_id: str, chunk: str, reason: str, fatal: bool) -> None:
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None:
                return
            node["inflight"] = max(0, node["inflight"] - 1)
            self._chunk_states[node_id][chunk] = "failed" if fatal else "missing"
            if fatal or len(node["failures"]) < 20:
                node["failures"].append(reason)

    def set_state(self, node_id: str, state: str, reason: str = "") -> None:
        with self._lock:
            if node_id in self._nodes:
                if state == "lost" and self._nodes[node_id]["state"] != "lost":
                    for chunk in self._chunk_states[node_id]:
                        self._want(chunk, -1)
                self._nodes[node_id]["state"] = state
                if reason:
                    self._nodes[node_id]["failures"].append(reason)
                if state == "done" and self._nodes[node_id]["finished_at"] is None:
                    self._nodes[node_id]["finished_at"] = time.monotonic() - self.started

    def finished_at(self, node_id: str) -> float | None:
        with self._lock:
            return self._nodes[node_id]["finished_at"]

    def snapshot(self, with_chunks: bool = False) -> Snapshot:
        with self._lock:
            nodes = tuple(
                NodeProgress(node_id, n["ip"], n["total"], n["done"], n["origin"], n["peer"], n["cache"],
                             n["served"], n["inflight"], tuple(n["failures"]), n["state"])
                for node_id, n in self._nodes.items()
            )
            origin = sum(n.origin_bytes for n in nodes)
            chunks = {k: dict(v) for k, v in self._chunk_states.items()} if with_chunks else {}
            rates = self._rates()
            origin_needed = self._origin_needed
            now = time.monotonic()
            transfer = now - self._first_transfer if self._first_transfer is not None else 0.0
        from xfd.report import ideal_seconds

        # What each surviving node had to receive: all it needs, less what its cache held.
        received = [n.total_bytes - n.cache_bytes for n in nodes if n.state != "lost"]
        return Snapshot(now - self.started, self.unique_bytes, origin, nodes, chunks, rates,
                        ideal_seconds(origin_needed, received, rates), transfer)

    def peak_rates(self) -> dict[str, float]:
        """Highest rates reached over any window: origin egress, one node's download, one node's upload
        (bytes per second). Each transfer's bytes are spread evenly over its duration."""
        with self._lock:
            return self._rates()

    def _rates(self) -> dict[str, float]:
        return {name: peak.peak for name, peak in self._peaks.items()}

    def _want(self, chunk: str, change: int) -> None:
        """One more (+1) or one fewer (-1) surviving node needs ``chunk``."""
        before = self._wanted[chunk]
        self._wanted[chunk] += change
        if chunk not in self._cached and (before > 0) != (self._wanted[chunk] > 0):
            self._origin_needed += change * self.chunk_sizes[chunk]

    def _cache_seeds(self, chunk: str) -> None:
        """A node's cache holds ``chunk``: peers can get it there, the origin need not serve it."""
        if chunk not in self._cached:
            self._cached.add(chunk)
            if self._wanted[chunk] > 0:
                self._origin_needed -= self.chunk_sizes[chunk]

    def _account(self, end: float, seconds: float, size: int, source: str, node: str, source_node: str) -> None:
        for window, share, lo, hi in _spread(end - max(seconds, 1e-3), end, size):
            self._peaks["node_download"].add((node, window), share, lo, hi)
            if source == "origin":
                self._peaks["origin"].add(window, share, lo, hi)
            elif source_node:
                self._peaks["node_upload"].add((source_node, window), share, lo, hi)


class _PeakRate:
    """The windows of one kind of rate and the highest of their rates. A window's rate can fall as bytes
    arrive (its span grows faster): the peak is then looked for again, which is rare, because the peak
    window is seldom the one still filling."""

    def __init__(self) -> None:
        self.windows: dict[Any, _Window] = defaultdict(_Window)
        self.rates: dict[Any, float] = {}
        self.peak = 0.0

    def add(self, key: Any, share: float, start: float, end: float) -> None:
        window = self.windows[key]
        window.add(share, start, end)
        before, self.rates[key] = self.rates.get(key, 0.0), window.rate()
        if self.rates[key] >= self.peak:
            self.peak = self.rates[key]
        elif before == self.peak:
            self.peak = max(self.rates.values())


class _Window:
    """Bytes moved within one rate window, and the part of the window in which they moved: a run (or
    a burst) shorter than the window is measured over its own length, not the window's."""

    __slots__ = ("bytes", "start", "end")

    def __init__(self) -> None:
        self.bytes = 0.0
        self.start = float("inf")
        self.end = float("-inf")

    def add(self, share: float, start: float, end: float) -> None:
        self.bytes += share
        self.start, self.end = min(self.start, start), max(self.end, end)

    def rate(self) -> float:
        return self.bytes / max(self.end - self.start, MIN_RATE_SPAN_S)


def _spread(start: float, end: float, size: int) -> Iterable[tuple[int, float, float, float]]:
    """``(window, bytes, from, to)``: a transfer's bytes spread evenly over the windows it overlaps."""
    first, last = math.floor(start / RATE_WINDOW_S), math.floor(end / RATE_WINDOW_S)
    span = end - start
    for window in range(first, last + 1):
        lo, hi = max(start, window * RATE_WINDOW_S), min(end, (window + 1) * RATE_WINDOW_S)
        if hi > lo:
            yield window, size * (hi - lo) / span, lo, hi
