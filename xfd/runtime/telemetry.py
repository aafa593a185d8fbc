"""A run's metrics and its event log, recorded in the driver from the Rust coordinator's status.

Every node's outcomes already reach the coordinator over its control link, so the driver knows what each
node received (and from where), served, failed and asked of the origin. This module turns the status the
coordinator's Python side reads into:

- Prometheus metrics through Ray's metrics API (``ray.util.metrics``): the driver's Ray worker hands
  them to the metrics agent of its node, which exports them with the cluster's other Ray metrics. No
  agent records anything, so a node without Ray's metrics agent costs nothing. Ray exports them only where
  its metrics agent runs (``ray[default]``, the ``xfd[metrics]`` extra); without it they are recorded
  and go nowhere, and the run is the same (docs/metrics.md);
- an optional event log: one JSON object per line, appended and flushed line by line, so a driver that
  is killed still leaves a readable log for a post-mortem.

Counters are recorded as deltas of the coordinator's running totals; a run's totals start at zero, so
the exported counters add up every run of the driver process. Nothing here may fail a run: a metric that
cannot be recorded is logged once and left alone.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import IO, Any

import attrs

from xfd.errors import ConfigError
from xfd.plan import Plan
from xfd.report import Report

log = logging.getLogger(__name__)

# Metrics and progress events at most this often (Ray exports every few seconds anyway).
RECORD_EVERY_S = 1.0
# The byte sources of xfd_received_bytes, as the coordinator's snapshot names them.
SOURCES = ("origin", "peer", "cache")
# Node states a node ends a run in; each is an event of its own.
FINAL_STATES = ("done", "lost", "failed")


@attrs.frozen
class _Metrics:
    """Ray metric objects, made once per process (Ray keeps one series per name and tags)."""

    received: Any
    served: Any
    origin_fetched: Any
    origin_requests: Any
    origin_failed_requests: Any
    failures: Any
    origin_refetches: Any
    runs: Any
    run_nodes: Any
    active_transfers: Any
    active_runs: Any


@cache
def _metrics() -> _Metrics:
    from ray.util.metrics import Counter, Gauge

    return _Metrics(
        received=Counter(
            "xfd_received_bytes",
            "Bytes each node received, by source: origin, peer or cache (a valid copy already on the node).",
            tag_keys=("node", "source"),
        ),
        served=Counter("xfd_served_bytes", "Bytes each node served to its peers.", tag_keys=("node",)),
        origin_fetched=Counter(
            "xfd_origin_fetched_bytes",
            "Bytes the origin served each node as its engine counted them: retries and attempts cut short included.",
            tag_keys=("node",),
        ),
        origin_requests=Counter(
            "xfd_origin_requests", "GET requests each node's engine sent to the origin.", tag_keys=("node",)
        ),
        origin_failed_requests=Counter(
            "xfd_origin_failed_requests",
            "Origin GET requests that failed, before or during their body; the engine retries them.",
            tag_keys=("node",),
        ),
        failures=Counter(
            "xfd_transfer_failures",
            "Failed chunk transfers, by node and the engine's error kind (origin, peer, stalled, integrity, busy, fatal).",
            tag_keys=("node", "kind"),
        ),
        origin_refetches=Counter(
            "xfd_origin_refetches", "Chunks the origin served a second time (their only holders were lost)."
        ),
        runs=Counter("xfd_runs", "Distributions that ended, by outcome: ok, failed, cancelled.", tag_keys=("outcome",)),
        run_nodes=Counter(
            "xfd_run_nodes", "Nodes of the distributions that ended, by final state: done, lost, failed.", ("state",)
        ),
        active_transfers=Gauge("xfd_active_transfers", "Chunk transfers in flight to each node.", tag_keys=("node",)),
        active_runs=Gauge("xfd_active_runs", "Distributions running in this driver."),
    )


@cache
def _transfer_seconds(bounds: tuple[float, ...]) -> Any:
    """The transfer-time histogram, with the coordinator's buckets (``LATENCY_BOUNDS_S`` in
    rust/xfd-core/src/control/progress.rs, carried by every snapshot: one home)."""
    from ray.util.metrics import Histogram

    return Histogram(
        "xfd_transfer_seconds",
        "Duration of every delivered chunk transfer, by source (origin or peer).",
        boundaries=list(bounds),
        tag_keys=("source",),
    )


def check_event_log(path: str | os.PathLike[str] | None) -> Path | None:
    """The event log's path, checked by opening it for appending (a clear error before any node starts)."""
    if path is None:
        return None
    path = Path(path)
    try:
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as error:
        raise ConfigError(
            f"event_log: cannot append to {str(path)!r}: {error.strerror or error}; "
            "pass a writable file path (its directory must exist)"
        ) from None
    return path


class EventLog:
    """JSON lines appended to a file, each flushed at once. Every line has ``ts`` (UTC, ISO 8601),
    ``run`` (an id of the run, to tell appended runs apart), ``elapsed_s`` (seconds since the run
    started) and ``event``."""

    def __init__(self, path: Path, run: str, started: float) -> None:
        self.path = path
        self.run = run
        self.started = started
        self._file: IO[str] | None = path.open("a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        line = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "run": self.run,
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "event": event,
            **fields,
        }
        try:
            self._file.write(json.dumps(line, separators=(",", ":"), default=str) + "\n")
            self._file.flush()
        except OSError as error:  # a full disk must not fail the run: the log stops there
            log.warning("xfd: the event log %s stopped: %s", self.path, error)
            self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RunTelemetry:
    """The metrics and event log of one run. Called from the coordinator's thread only."""

    def __init__(self, plan: Plan, node_ids: Iterable[str], event_log: Path | None) -> None:
        self.plan = plan
        self.node_ids = list(node_ids)
        self.event_log_path = event_log
        self.log: EventLog | None = None
        self._last: dict[tuple[Any, ...], float] = {}  # what each counter and gauge was recorded at
        self._latency: dict[str, tuple[list[int], float]] = {}  # source -> histogram counts and sum recorded
        self._states: dict[str, str] = {}  # node id -> state last logged
        self._failures_seen: dict[str, int] = {}  # node id -> failure reasons already logged
        self._last_record = float("-inf")
        self._metrics_off = False
        self._ended = False

    # --- the hooks of the coordinator ------------------------------------------------------------------

    def started(self) -> None:
        started = time.monotonic()
        self._started = started
        if self.event_log_path is not None:
            self.log = EventLog(self.event_log_path, secrets.token_hex(6), started)
        settings = self.plan.settings
        self._event(
            "run_started",
            nodes=self.node_ids,
            plan={
                "artifacts": sorted({f.artifact for f in self.plan.files}),
                "files": len(self.plan.files),
                "objects": len(self.plan.objects),
                "units": len(self.plan.unit_sizes),
                "unique_bytes": self.plan.unique_bytes,
                "chunk_size": settings.chunk_size,
                "stores": sorted(self.plan.stores),  # names only: a store's options may hold credentials
            },
        )
        self._record(lambda m: m.active_runs.set(_add_active_run(1)))

    def step(self, status: Mapping[str, Any], came_up: Mapping[str, float]) -> None:
        """Node events at once; metrics and a progress event at most every :data:`RECORD_EVERY_S`."""
        self._node_events(status, came_up)
        now = time.monotonic()
        if now - self._last_record < RECORD_EVERY_S:
            return
        self._last_record = now
        self._record(lambda m: self._record_status(m, status))
        self._progress_event(status)

    def aborted(self, status: Mapping[str, Any], error: BaseException) -> None:
        """The run raised (cancelled, interrupted, or an error of xfd's): what it did until then."""
        outcome = "cancelled" if type(error).__name__ in {"DistributionCancelled", "KeyboardInterrupt"} else "error"
        self._record(lambda m: self._record_status(m, status))
        self._end(outcome, error=f"{type(error).__name__}: {error}")

    def ended(self, status: Mapping[str, Any], report: Report) -> None:
        """The run's report is made: its final figures (the agents' own counts included)."""
        self._node_events(status, {n.node_id: n.agent_seconds for n in report.nodes if n.agent_seconds is not None})
        self._record(lambda m: self._record_report(m, status, report))
        self._record(lambda m: [m.run_nodes.inc(1, {"state": n.state}) for n in report.nodes])
        self._end(
            "ok" if report.ok else "failed",
            report={**attrs.asdict(report), "ok": report.ok, "origin_ratio": report.origin_ratio},
            deliveries=status["deliveries"],
            states={n.ip: n.state for n in report.nodes},
        )

    # --- metrics ---------------------------------------------------------------------------------------

    def _record(self, record: Any) -> None:
        """Runs ``record(metrics)``; the first failure turns the metrics off for the run, with a warning."""
        if self._metrics_off:
            return
        try:
            record(_metrics())
        except Exception as error:  # noqa: BLE001 - metrics must never fail a distribution
            self._metrics_off = True
            log.warning("xfd: metrics are not recorded for this run: %s", error)

    def _record_status(self, m: _Metrics, status: Mapping[str, Any]) -> None:
        snapshot = status["snapshot"]
        for node in snapshot["nodes"]:
            ip = node["ip"]
            for source in SOURCES:
                self._count(m.received, node[f"{source}_bytes"], node=ip, source=source)
            self._count(m.served, node["served_bytes"], node=ip)
            self._count(m.origin_requests, node.get("origin_requests", 0), node=ip)
            self._count(m.origin_failed_requests, node.get("origin_failed_requests", 0), node=ip)
            for kind, count in node.get("failure_kinds", {}).items():
                self._count(m.failures, count, node=ip, kind=kind)
            self._gauge(m.active_transfers, node["inflight"] if node["state"] == "running" else 0, node=ip)
        names = status["nodes"]
        fetched = status["origin_bytes"]
        for node in snapshot["nodes"]:
            self._count(m.origin_fetched, fetched.get(names[node["node"]], 0), node=node["ip"])
        self._count(m.origin_refetches, status["origin_refetches"])
        self._observe(snapshot["latency"])

    def _record_report(self, m: _Metrics, status: Mapping[str, Any], report: Report) -> None:
        """The final status, then the report's own figures where they differ (an agent's last counts)."""
        self._record_status(m, status)
        for node in report.nodes:
            self._count(m.served, node.served_bytes, node=node.ip)
            self._gauge(m.active_transfers, 0, node=node.ip)

    def _count(self, counter: Any, total: float, **tags: str) -> None:
        """Adds to ``counter`` what ``total`` (this run's running total) grew by since last recorded."""
        key = (id(counter), *sorted(tags.items()))
        delta = total - self._last.get(key, 0)
        if delta > 0:
            counter.inc(delta, tags or None)
            self._last[key] = total

    def _gauge(self, gauge: Any, value: float, **tags: str) -> None:
        key = (id(gauge), *sorted(tags.items()))
        if self._last.get(key) != value:
            gauge.set(value, tags or None)
            self._last[key] = value

    def _observe(self, latency: Mapping[str, Any]) -> None:
        """Observes each transfer timed since last time, by bucket: a value inside the bucket (the new
        transfers' mean when it falls there), so Ray's buckets count what the coordinator's count."""
        bounds = tuple(latency["bounds"])
        histogram = _transfer_seconds(bounds)
        for source in ("origin", "peer"):
            counts, total = latency[source]["counts"], latency[source]["sum"]
            before, before_sum = self._latency.get(source, ([0] * len(counts), 0.0))
            new = [now - then for now, then in zip(counts, before, strict=True)]
            if sum(new) <= 0:
                continue
            mean = (total - before_sum) / sum(new)
            for bucket, count in enumerate(new):
                value = _inside(bucket, bounds, mean)
                for _ in range(count):
                    histogram.observe(value, {"source": source})
            self._latency[source] = (list(counts), total)

    # --- the event log ---------------------------------------------------------------------------------

    def _event(self, event: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.write(event, **fields)

    def _node_events(self, status: Mapping[str, Any], came_up: Mapping[str, float]) -> None:
        if self.log is None:
            return
        names = status["nodes"]
        finished_at = dict(zip(names, status["finished_at"], strict=True))
        for node in status["snapshot"]["nodes"]:
            node_id, state = names[node["node"]], node["state"]
            before = self._states.get(node_id)
            failures = node["failures"]
            for reason in failures[self._failures_seen.get(node_id, 0) :]:
                self._event("failure", node=node_id, ip=node["ip"], reason=reason)
            self._failures_seen[node_id] = len(failures)
            if before is None and state not in ("lost", "failed"):
                self._event("node_up", node=node_id, ip=node["ip"], agent_seconds=_rounded(came_up.get(node_id)))
            if state != before and state in FINAL_STATES:
                fields: dict[str, Any] = {"node": node_id, "ip": node["ip"]}
                if state == "done":
                    fields["seconds"] = _rounded(finished_at.get(node_id))
                else:
                    fields["reason"] = failures[-1] if failures else None
                self._event(f"node_{state}", **fields)
            self._states[node_id] = state

    def _progress_event(self, status: Mapping[str, Any]) -> None:
        if self.log is None:
            return
        snapshot = status["snapshot"]
        nodes = snapshot["nodes"]
        self._event(
            "progress",
            done_bytes=sum(n["done_bytes"] for n in nodes if n["state"] != "lost"),
            total_bytes=sum(n["total_bytes"] for n in nodes if n["state"] != "lost"),
            nodes={
                n["ip"]: {
                    "state": n["state"],
                    **{source: n[f"{source}_bytes"] for source in SOURCES},
                    "served": n["served_bytes"],
                    "inflight": n["inflight"],
                }
                for n in nodes
            },
        )

    def _end(self, outcome: str, **fields: Any) -> None:
        if self._ended:
            return
        self._ended = True
        active = _add_active_run(-1)
        self._record(lambda m: (m.runs.inc(1, {"outcome": outcome}), m.active_runs.set(active)))
        self._event("run_ended", outcome=outcome, **fields)
        if self.log is not None:
            self.log.close()


_active_runs = 0
_ended_runs = 0
_active_lock = threading.Lock()


def _add_active_run(change: int) -> int:
    """Distributions running in this process (several may run at once), after ``change``; a run that
    leaves counts as ended."""
    global _active_runs, _ended_runs
    with _active_lock:
        _active_runs += change
        _ended_runs += max(0, -change)
        return _active_runs


def ended_runs() -> int:
    """Runs of this process whose end was recorded: what ``xfd_runs_total`` adds up to once exported."""
    return _ended_runs


def _inside(bucket: int, bounds: tuple[float, ...], mean: float) -> float:
    """A value in ``bucket`` (above the bound before it, at most its own): ``mean`` when it is one."""
    low = bounds[bucket - 1] if bucket > 0 else 0.0
    high = bounds[bucket] if bucket < len(bounds) else float("inf")
    if low < mean <= high:
        return mean
    return high if high != float("inf") else low * 2


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
