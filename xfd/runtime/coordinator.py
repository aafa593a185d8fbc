"""The coordinator's Python side: places one agent per node with Ray, runs the Rust coordinator, reports.

Ray places, starts and stops the agents, carries their bootstrap (the plan, the run token, the
coordinator's address) and tells of an agent's death; the driver's own node is served by an agent in this
process (see :mod:`xfd.runtime.agent_pool`), called the same way. Everything else happens between the agents and the
Rust coordinator (``xfd._core.Coordinator``, see ``rust/xfd-core/src/control.rs``): each agent opens a
control link of its own to it and sends its outcomes in batches; the coordinator, on its own thread,
schedules and sends each node its next transfers. No Ray call is made per transfer, and nothing here is
on the transfers' path: this thread joins nodes as their agents come up, passes progress snapshots on at
its own pace, and waits for the outcome.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from xfd import _core
from xfd.errors import DistributionCancelled
from xfd.manifest.model import Store
from xfd.plan import Plan
from xfd.progress import Snapshot
from xfd.report import NodeReport, Report
from xfd.runtime import took_part
from xfd.runtime.agent_pool import POOL, as_future, new_agent
from xfd.runtime.cluster_nodes import alive_nodes
from xfd.runtime.telemetry import RunTelemetry

# A node whose agent sent nothing on its control link for this long is lost (an idle agent sends a
# heartbeat every second). Measured by the Rust coordinator where frames arrive, never by this thread.
LOST_AFTER_S = 30.0
# Origin transfers wait until every node's agent is up, or this long after the first one was (see
# xfd/runtime/took_part.py for when they need not wait at all).
ORIGIN_HOLD_S = 3.0
# How often this thread looks at Ray (agents that came up or died) and passes progress on.
STEP_S = 0.1
# How often a run that follows the cluster asks Ray for nodes that joined it (one GCS call each time).
NEW_NODES_EVERY_S = 2.0
# How long a run that has its outcome waits for agents still coming up on nodes that joined late: they
# must have begun before they are stopped (a threaded actor does not keep one caller's calls in order).
LATE_BEGIN_WAIT_S = 60.0
# Fault injection, for xfd's own tests only: node id -> the engine's fault rules for that node. Set only
# by xfd.testing.faults() and read when a run starts; no public call takes it, so no user's run carries one.
INJECTED_FAULTS: ContextVar[Mapping[str, str]] = ContextVar("xfd_injected_faults", default=MappingProxyType({}))


class Coordinator:
    """Runs one distribution of a plan over the nodes of the connected Ray cluster."""

    def __init__(
        self,
        plan: Plan,
        stores: Mapping[str, Store],
        *,
        node_ids: Iterable[str] | None = None,
        deep_verify: bool = False,
        timeout_s: float | None = None,
        on_progress: Callable[[Snapshot], None] | None = None,
        progress_interval_s: float = 0.25,
        cancel: threading.Event | None = None,
        with_chunks: bool = False,
        lost_after_s: float = LOST_AFTER_S,
        event_log: Path | None = None,
        agents: Mapping[str, tuple[Any, bool]] | None = None,
        new_nodes: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.plan = plan
        self.stores = dict(stores)
        self.node_ids = list(node_ids) if node_ids is not None else [n["NodeID"] for n in alive_nodes()]
        self.deep_verify = deep_verify
        self.timeout_s = timeout_s
        self.on_progress = on_progress
        self.progress_interval_s = progress_interval_s
        self.faults = dict(INJECTED_FAULTS.get())  # read here, in the thread that starts the run
        self.cancel = cancel or threading.Event()
        self.with_chunks = with_chunks and on_progress is not None
        self.lost_after_s = lost_after_s
        self.agents: dict[str, Any] = {}
        self.ips: dict[str, str] = {}
        self.lost: set[str] = set()
        self.failures: list[str] = []
        self.unpacked = 0
        # When each node's agent was up (seconds from the run's start), and when the first one was.
        self.came_up: dict[str, float] = {}
        # Agents taken before planning (see take_agents), with whether each was warm.
        self._taken = dict(agents or {})
        self._units = list(plan.unit_sizes)
        self._last_progress = 0.0
        self.telemetry = RunTelemetry(plan, self.node_ids, event_log)  # metrics, event log: docs/metrics.md
        # Following the cluster: the node ids chosen now (asked every NEW_NODES_EVERY_S); a node that
        # joins the cluster while the run goes on joins the run.
        self._new_nodes = new_nodes
        self._looked_for_nodes = time.monotonic()
        self._begins: dict[Any, str] = {}

    # --- the run ------------------------------------------------------------------------------------

    def run(self) -> Report:
        started = time.monotonic()
        self.telemetry.started()
        token = secrets.token_hex(32)
        control = self._start_control(token)
        status: dict[str, Any] = {}
        served: dict[str, int] = {}
        origin: dict[str, int] = {}
        try:
            self._begins = self._start_agents(control, token, started)
            status = self._loop(control, self._begins, started)
            if _finished_clean(status) and not self.failures:
                self._finish_nodes(control)
        except BaseException as error:
            self.telemetry.aborted(control.status(), error)
            raise
        finally:
            status = control.end()
            self._let_late_agents_begin()
            # A cancelled run stops uploads at once; otherwise peers get a moment to finish theirs.
            served, origin = self._stop_agents(grace=0.0 if self.cancel.is_set() else 2.0)
        report = self._report(status, time.monotonic() - started, served, origin)
        self.telemetry.ended(status, report)
        return report

    def _start_control(self, token: str) -> Any:
        settings = self.plan.settings
        ips = {n["NodeID"]: n["NodeManagerAddress"] for n in alive_nodes()}
        run_ips = [ips[n] for n in self.node_ids if n in ips]
        # Only a node that took part before can hold in its cache what an early node would fetch again.
        origin_hold = ORIGIN_HOLD_S if took_part.record(run_ips) else 0.0
        return _core.Coordinator(
            list(self.plan.unit_sizes.items()),
            self.plan.unique_bytes,
            token,
            ray.util.get_node_ip_address(),
            self.node_ids,
            origin_parallelism=settings.origin_parallelism,
            origin_chunk_streams=settings.origin_chunk_streams,
            download_slots=settings.node_parallelism,
            upload_slots=settings.upload_slots,
            lost_after=self.lost_after_s,
            snapshot_every=min(self.progress_interval_s, 0.25),
            with_chunks=self.with_chunks,
            origin_hold=origin_hold,
        )

    def _start_agents(self, control: Any, token: str, started: float) -> dict[Any, str]:
        """Starts every agent's run; each node joins as soon as its agent is up (see :meth:`_loop`).
        Returns their pending ``begin`` calls, as futures."""
        taken = {**take_agents([n for n in self.node_ids if n not in self._taken], self.faults), **self._taken}
        self._begin_args = (self.plan.to_json(), self.stores, token, control.address)
        self._started = started
        begins: dict[Any, str] = {}
        self._warm: dict[str, bool] = {}
        for node_id in self.node_ids:
            self.agents[node_id], self._warm[node_id] = taken[node_id]
            begins[self._begin(node_id)] = node_id
        return begins

    def _begin(self, node_id: str) -> Any:
        plan_json, stores, token, (host, port) = self._begin_args
        return as_future(
            self.agents[node_id].begin.remote(
                plan_json,
                stores,
                token,
                deep_verify=self.deep_verify,
                upload_slots=self.plan.settings.upload_slots,
                fault=self.faults.get(node_id),
                control=(host, port, node_id),
            )
        )

    def _loop(self, control: Any, begins: dict[Any, str], started: float) -> dict[str, Any]:
        """Joins nodes as their agents come up, loses those whose agent dies, passes progress on; returns
        the coordinator's status once the run's outcome is known (or the run timed out)."""
        watches: dict[Any, str] = {}
        while True:
            if self.cancel.is_set():
                raise DistributionCancelled("the distribution was cancelled")
            if self.timeout_s is not None and time.monotonic() - started > self.timeout_s:
                self.failures.append(f"timed out after {self.timeout_s:.0f} s")
                return control.status()
            for call in [c for c in begins if c.done()]:
                self._agent_began(control, begins, watches, begins.pop(call), call)
            for call in [c for c in watches if c.done()]:
                self._agent_ended(control, watches.pop(call), call)
            self._take_new_nodes(begins)
            status = control.wait(STEP_S)
            self.telemetry.step(status, self.came_up)
            self._report_progress(status)
            if status["outcome"] is not None:
                return status

    def _take_new_nodes(self, begins: dict[Any, str]) -> None:
        """Following the cluster: starts agents on chosen nodes that joined the cluster since the run
        began; each joins the run once its agent is up, and the run then waits for it as for the others."""
        if self._new_nodes is None or time.monotonic() - self._looked_for_nodes < NEW_NODES_EVERY_S:
            return
        self._looked_for_nodes = time.monotonic()
        new = [n for n in self._new_nodes() if n not in self.agents]
        for node_id, (agent, warm) in take_agents(new, self.faults).items():
            self.node_ids.append(node_id)
            self.agents[node_id], self._warm[node_id] = agent, warm
            begins[self._begin(node_id)] = node_id

    def _let_late_agents_begin(self) -> None:
        """Waits for agents of late nodes still beginning when the run ended, so that the stop sent to
        them next comes after their begin; a node whose agent began too late for this run is not in its
        report (a follower's next run brings it up to date)."""
        deadline = time.monotonic() + LATE_BEGIN_WAIT_S
        for call in list(self._begins):
            try:
                call.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - failed or still starting: stopped (or discarded) next either way
                pass

    def _agent_began(
        self,
        control: Any,
        begins: dict[Future[Any], str],
        watches: dict[Future[Any], str],
        node_id: str,
        call: Future[Any],
    ) -> None:
        try:
            info = call.result()
        except RayActorError as error:
            if self._warm[node_id]:
                # A pooled agent died since its last run (its worker was killed): start a fresh one.
                self._warm[node_id] = False
                self.agents[node_id] = new_agent(node_id)
                begins[self._begin(node_id)] = node_id
                return
            self._not_taking_part(control, node_id, f"agent failed to start: {_first_line(error)}", lost=True)
            return
        except Exception as error:  # noqa: BLE001 - a RayTaskError from an actor, the error itself in the driver
            # Not lost (the node is fine) but failed: its engine refused the run (a destination busy,
            # unwritable, or holding a user's file); the report is not ok and says why.
            self._not_taking_part(control, node_id, _first_line(error), lost=False)
            return
        self.ips[node_id] = info["ip"]
        self.came_up[node_id] = time.monotonic() - self._started
        # Each node needs the units of the files whose node selector its labels match.
        needs = self.plan.chunks_for(info["labels"])
        control.join(node_id, f"{info['ip']}:{info['port']}", needs, list(info["held"].items()))
        watches[as_future(self.agents[node_id].until_stopped.remote())] = node_id

    def _agent_ended(self, control: Any, node_id: str, call: Future[Any]) -> None:
        """An agent's ``until_stopped`` call returned: an error means its actor died."""
        try:
            call.result()
        except RayError as error:
            self.lost.add(node_id)
            control.lose(node_id, _first_line(error))

    def _not_taking_part(self, control: Any, node_id: str, reason: str, *, lost: bool) -> None:
        self.ips[node_id] = _node_ip(node_id)
        if lost:
            self.lost.add(node_id)
        control.add_failed(node_id, self.ips[node_id], reason, lost)

    def _finish_nodes(self, control: Any) -> None:
        """Runs the unpacks on every node that holds everything."""
        status = control.status()
        names = status["nodes"]
        done = [names[n["node"]] for n in status["snapshot"]["nodes"] if n["state"] == "done"]
        calls = {
            node_id: as_future(self.agents[node_id].finish.remote(self.plan.settings.overwrite)) for node_id in done
        }
        for node_id, call in calls.items():
            try:
                self.unpacked += len(call.result())
            except RayActorError as error:
                self.lost.add(node_id)
                control.set_state(node_id, "lost", _first_line(error))
            except Exception as error:  # noqa: BLE001 - the unpack's own error, said in the report
                control.set_state(node_id, "failed", _first_line(error))

    def _stop_agents(self, grace: float) -> tuple[dict[str, int], dict[str, int]]:
        """Stops every agent's run; returns the bytes each served and what the origin served each."""
        served: dict[str, int] = {}
        origin: dict[str, int] = {}
        calls = {node_id: as_future(agent.stop.remote(grace)) for node_id, agent in self.agents.items()}
        for node_id, call in calls.items():
            try:
                stats = call.result(timeout=10)
            except Exception:  # noqa: BLE001 - dead, or not stopping: ended either way
                POOL.discard(self.agents[node_id])
                continue
            if stats:
                served[node_id] = stats.get("bytes_served", 0)
                origin[node_id] = stats["origin_bytes"]
            if node_id in self.lost:
                POOL.discard(self.agents[node_id])
            else:
                POOL.give_back(node_id, self.agents[node_id])
        return served, origin

    def _report_progress(self, status: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.on_progress is None or now - self._last_progress < self.progress_interval_s:
            return
        self._last_progress = now
        self.on_progress(Snapshot.from_core(status, self._units))

    def _report(
        self, status: dict[str, Any], wall: float, served: Mapping[str, int], origin: Mapping[str, int]
    ) -> Report:
        snapshot = Snapshot.from_core(status, self._units)  # once: with the chunk map it is large
        if self.on_progress is not None:
            self.on_progress(snapshot)
        finished_at = dict(zip(status["nodes"], status["finished_at"], strict=True))
        nodes = tuple(
            NodeReport(
                node_id=n.node_id,
                ip=n.ip,
                origin_bytes=n.origin_bytes,
                peer_bytes=n.peer_bytes,
                cache_bytes=n.cache_bytes,
                served_bytes=served.get(n.node_id, n.served_bytes),
                seconds=finished_at.get(n.node_id),
                state=n.state if n.state != "running" else "failed",
                failures=n.failures,
                agent_seconds=self.came_up.get(n.node_id),
            )
            for n in snapshot.nodes
        )
        # What the origin served each node, as its engine counted it: from the agent's last word when it
        # stopped, else from its last report over the control link.
        fetched = {**status["origin_bytes"], **origin}
        failures = [*self.failures, *status["failures"]]
        if status["outcome"] and status["outcome"]["outcome"] == "stalled":
            failures.append(status["outcome"]["reason"])
        return Report(
            nodes=nodes,
            unique_bytes=self.plan.unique_bytes,
            origin_bytes=sum(fetched.values()),
            origin_refetches=status["origin_refetches"],
            wall_seconds=wall,
            ideal_seconds=snapshot.ideal_s,
            rates=dict(snapshot.rates),
            lost_nodes=tuple(n.ip for n in nodes if n.state == "lost"),
            failures=tuple(failures),
            unpacked=self.unpacked,
            startup_seconds=min(self.came_up.values(), default=0.0),
        )


def take_agents(node_ids: Iterable[str], faults: Mapping[str, str] | None = None) -> dict[str, tuple[Any, bool]]:
    """An agent for each node (the driver's own, one from this driver's pool, or a new one already
    starting), with whether it was up. A node given a fault gets a Ray actor even if the driver runs on
    it: a fault may end the agent's process."""
    POOL.prune({node["NodeID"] for node in alive_nodes()})
    faults = faults or {}
    return {node_id: POOL.take(node_id, in_driver=node_id not in faults) for node_id in node_ids}


def give_back_agents(agents: Mapping[str, tuple[Any, bool]]) -> None:
    for node_id, (agent, _) in agents.items():
        POOL.give_back(node_id, agent)


def _finished_clean(status: Mapping[str, Any]) -> bool:
    """The coordinator's outcome is ``finished`` with no unit failed for good: unpacking may start."""
    return status["outcome"] == {"outcome": "finished"} and not status["failures"]


def _node_ip(node_id: str) -> str:
    return next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id), node_id[:12])


def _first_line(error: BaseException) -> str:
    """The message of the error a remote call raised (not Ray's wrapper around it), on one line."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and str(cause).strip():
        error = cause
    text = str(error).strip()
    for line in text.splitlines():
        if line.strip() and not line.startswith(("Traceback", "  File", "ray::")):
            return line.strip()[:300]
    return type(error).__name__
