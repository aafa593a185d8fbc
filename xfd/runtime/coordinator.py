"""The coordinator: starts one agent per node, feeds their events to the scheduler, dispatches transfers.

Event-driven: each agent always has one outstanding ``events`` call; whichever returns first is
handled at once (``ray.wait``), its finished chunks free slots, and the scheduler's next transfers are
dispatched in the same step. There is no polling tick between a chunk finishing and the next one
starting.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from xfd.errors import DistributionCancelled
from xfd.manifest.model import Store
from xfd.plan import Plan
from xfd.progress import ProgressModel, Snapshot
from xfd.report import NodeReport, Report
from xfd.runtime.agent import EVENT_WAIT_S
from xfd.runtime.agent_pool import POOL, new_agent
from xfd.runtime.cluster_nodes import alive_nodes
from xfd.scheduler import ORIGIN, Scheduler, Transfer

# A node whose agent has not answered an events call for this long is considered lost: an events call
# returns within EVENT_WAIT_S when the agent is healthy.
LOST_AFTER_S = 30.0
# Engine error kind -> scheduler failure kind. A peer that hung until the deadline is penalized like one
# that served bad bytes: retrying it costs a whole deadline each time.
_FAILURE_KINDS = {"integrity": "integrity", "stalled": "integrity", "peer": "peer", "origin": "origin",
                  "busy": "peer", "fatal": "fatal"}


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
        faults: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.plan = plan
        self.stores = dict(stores)
        self.node_ids = list(node_ids) if node_ids is not None else [n["NodeID"] for n in alive_nodes()]
        self.deep_verify = deep_verify
        self.timeout_s = timeout_s
        self.on_progress = on_progress
        self.progress_interval_s = progress_interval_s
        self.faults = dict(faults or {})
        self.cancel = cancel or threading.Event()
        self.chunk_sizes = plan.unit_sizes
        self.progress = ProgressModel(self.chunk_sizes, plan.unique_bytes)
        self.agents: dict[str, Any] = {}
        self.endpoints: dict[str, tuple[str, int]] = {}
        self.ips: dict[str, str] = {}
        self.by_address: dict[str, str] = {}
        self.digests: dict[str, str] = {}
        self.active: dict[tuple[str, str], list[Transfer]] = defaultdict(list)
        self.failures: list[str] = []
        self.unpacked = 0
        self.startup_seconds = 0.0
        self.lost: set[str] = set()
        # Node -> bytes the origin served it, as its engine counted them (retries and cut transfers too).
        self.origin_fetched: dict[str, int] = {}
        self._last_progress = 0.0

    # --- the run ------------------------------------------------------------------------------------

    def run(self) -> Report:
        started = time.monotonic()
        token = secrets.token_hex(32)
        try:
            scheduler = self._start_agents(token)
            self.startup_seconds = time.monotonic() - started
            self._loop(scheduler, started)
            self._finish_nodes(scheduler)
        finally:
            # A cancelled run stops uploads at once; otherwise peers get a moment to finish theirs.
            served = self._stop_agents(grace=0.0 if self.cancel.is_set() else 2.0)
        return self._report(scheduler, time.monotonic() - started, served)

    def _start_agents(self, token: str) -> Scheduler:
        plan_json = self.plan.to_json()
        settings = self.plan.settings

        def begin(node_id: str, agent: Any) -> Any:
            return agent.begin.remote(plan_json, self.stores, token, deep_verify=self.deep_verify,
                                      upload_slots=settings.upload_slots, fault=self.faults.get(node_id))

        POOL.prune({node["NodeID"] for node in alive_nodes()})
        starts: dict[str, tuple[Any, bool]] = {}
        for node_id in self.node_ids:
            self.agents[node_id], warm = POOL.take(node_id)
            starts[node_id] = (begin(node_id, self.agents[node_id]), warm)
        infos: dict[str, dict[str, Any]] = {}
        failed: dict[str, str] = {}
        refused: dict[str, str] = {}
        for node_id, (ref, warm) in starts.items():
            outcome, value = self._begun(node_id, ref, warm, begin)
            {"ok": infos, "lost": failed, "refused": refused}[outcome][node_id] = value
        # Each node needs the chunks of the files whose node selector its labels match.
        needs = {node_id: self.plan.chunks_for(info["labels"]) for node_id, info in infos.items()}
        scheduler = Scheduler(
            self.chunk_sizes, list(self.agents),
            # The scheduler counts chunks; each origin chunk takes up to origin_chunk_streams GETs.
            origin_parallelism=max(1, settings.origin_parallelism // settings.origin_chunk_streams),
            download_slots=settings.node_parallelism, upload_slots=settings.upload_slots, needs=needs,
        )
        for node_id in failed | refused:
            self.ips[node_id] = _node_ip(node_id)
            self.progress.add_node(node_id, self.ips[node_id], [])
        for node_id, reason in failed.items():
            # Listed in the report as lost, with the reason; the run goes on with the others.
            self._lose(scheduler, node_id, reason)
        for node_id, reason in refused.items():
            # Not lost (the node is fine) but failed: the report is not ok and says why.
            scheduler.node_lost(node_id)
            self.progress.set_state(node_id, "failed", reason)
            self.failures.append(f"{self.ips[node_id]}: {reason}")
        for node_id, info in infos.items():
            self.endpoints[node_id] = (info["ip"], info["port"])
            self.ips[node_id] = info["ip"]
            self.by_address[f"{info['ip']}:{info['port']}"] = node_id
            self.progress.add_node(node_id, info["ip"], needs[node_id])
            scheduler.held(node_id, info["held"])
            self.digests.update(info["held"])
            needed = set(needs[node_id])
            for chunk in info["held"]:
                if chunk in needed:
                    self.progress.chunk_done(node_id, chunk, "cache", 0.0, counted_inflight=False)
        return scheduler

    def _begun(self, node_id: str, ref: Any, warm: bool, begin: Callable[[str, Any], Any]) -> tuple[str, Any]:
        """``("ok", info)``, ``("lost", reason)`` when the agent died, or ``("refused", reason)`` when the
        node's engine refused the run (a destination busy, unwritable, or holding a user's file)."""
        try:
            return "ok", ray.get(ref)
        except RayActorError as error:
            if not warm:
                return "lost", f"agent failed to start: {_first_line(error)}"
        except RayError as error:
            return "refused", _first_line(error)
        # A pooled agent died since its last run (its worker was killed): start a fresh one.
        self.agents[node_id] = new_agent(node_id)
        return self._begun(node_id, begin(node_id, self.agents[node_id]), False, begin)

    def _loop(self, scheduler: Scheduler, started: float) -> None:
        pending: dict[Any, tuple[str, float]] = {}
        for node_id in scheduler.nodes:
            pending[self.agents[node_id].events.remote(EVENT_WAIT_S)] = (node_id, time.monotonic())
        self._dispatch(scheduler, scheduler.next_transfers())
        while not scheduler.done:
            if self.cancel.is_set():
                raise DistributionCancelled("the distribution was cancelled")
            if self.timeout_s is not None and time.monotonic() - started > self.timeout_s:
                self.failures.append(f"timed out after {self.timeout_s:.0f} s")
                return
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=EVENT_WAIT_S * 2)
            for ref in ready:
                node_id, _ = pending.pop(ref)
                if not scheduler.is_alive(node_id):
                    continue
                try:
                    events = ray.get(ref)
                except RayError as error:
                    self._lose(scheduler, node_id, _first_line(error))
                    continue
                self._handle(scheduler, node_id, events)
                pending[self.agents[node_id].events.remote(EVENT_WAIT_S)] = (node_id, time.monotonic())
            self._lose_silent(scheduler, pending)
            self._dispatch(scheduler, scheduler.next_transfers())
            self._report_progress()
            if not scheduler.active and not scheduler.done:
                self.failures.append(self._stall_reason(scheduler))
                return

    def _handle(self, scheduler: Scheduler, node_id: str, events: list[dict[str, Any]]) -> None:
        for event in events:
            kind = event["kind"]
            if kind == "chunk_done":
                transfer = self._pop_transfer(node_id, event)
                if event["digest"]:  # a transfer that found its chunk already here may know no digest
                    self.digests.setdefault(event["chunk_id"], event["digest"])
                if transfer is None:
                    # A transfer set aside (its source was declared lost, or it lost an endgame race)
                    # that delivered all the same: the node holds the chunk, and a transfer started again
                    # for it must not be waited for as if the chunk were still missing.
                    scheduler.held(node_id, [event["chunk_id"]])
                else:
                    for loser in scheduler.finished(transfer):
                        # The slower copy is shut out by the engine's fence; it will report nothing more.
                        losers = self.active.get((loser.chunk, loser.node), [])
                        if loser in losers:
                            losers.remove(loser)
                            self.progress.transfer_dropped(loser.node)
                    source = transfer.source if not transfer.from_origin else ""
                    self.progress.chunk_done(node_id, event["chunk_id"], event["source"], event["seconds"], source)
            elif kind == "origin_bytes":
                self.origin_fetched[node_id] = event["bytes"]
            elif kind == "chunk_failed":
                transfer = self._pop_transfer(node_id, event)
                failure = _FAILURE_KINDS.get(event["error_kind"], "fatal")
                if transfer is not None:
                    scheduler.failed(transfer, failure, event["error"])
                # Fatal at once, or given up by the scheduler (the origin failed it round after round).
                fatal = failure == "fatal" or scheduler.failure(event["chunk_id"]) is not None
                self.progress.chunk_failed(node_id, event["chunk_id"], event["error"], fatal)
                if fatal:
                    self.failures.append(f"{self.ips[node_id]}: {event['error']}")
        if scheduler.node_done(node_id):
            self.progress.set_state(node_id, "done")

    def _pop_transfer(self, node_id: str, event: dict[str, Any]) -> Transfer | None:
        source = ORIGIN if event["source"] == "origin" else self.by_address.get(event.get("peer") or "", "")
        transfers = self.active.get((event["chunk_id"], node_id), [])
        for transfer in transfers:
            if transfer.source == source:
                transfers.remove(transfer)
                return transfer
        return None

    def _dispatch(self, scheduler: Scheduler, transfers: list[Transfer]) -> None:
        per_node: dict[str, tuple[list[str], list[tuple[str, str, int, str | None]]]] = defaultdict(lambda: ([], []))
        for transfer in transfers:
            self.active[(transfer.chunk, transfer.node)].append(transfer)
            self.progress.started_transfer(transfer.node, transfer.chunk)
            origin, peers = per_node[transfer.node]
            if transfer.from_origin:
                origin.append(transfer.chunk)
            else:
                host, port = self.endpoints[transfer.source]
                peers.append((transfer.chunk, host, port, self.digests.get(transfer.chunk)))
        for node_id, (origin, peers) in per_node.items():
            self.agents[node_id].assign.remote(origin, peers)

    def _lose(self, scheduler: Scheduler, node_id: str, reason: str) -> None:
        self.lost.add(node_id)
        dropped = scheduler.node_lost(node_id)
        for transfer in dropped:
            transfers = self.active.get((transfer.chunk, transfer.node), [])
            if transfer in transfers:
                transfers.remove(transfer)
                self.progress.transfer_dropped(transfer.node)
        self.progress.set_state(node_id, "lost", reason)
        self.endpoints.pop(node_id, None)

    def _lose_silent(self, scheduler: Scheduler, pending: dict[Any, tuple[str, float]]) -> None:
        now = time.monotonic()
        for ref, (node_id, issued) in list(pending.items()):
            if now - issued > LOST_AFTER_S and scheduler.is_alive(node_id):
                del pending[ref]
                self._lose(scheduler, node_id, f"no answer for {LOST_AFTER_S:.0f} s")

    def _stall_reason(self, scheduler: Scheduler) -> str:
        if scheduler.failed_chunks:
            chunk, reason = next(iter(scheduler.failed_chunks.items()))
            return f"{len(scheduler.failed_chunks)} chunks cannot be delivered; first: {chunk}: {reason}"
        return "no transfer can make progress (every holder of a missing chunk is gone or penalized)"

    def _finish_nodes(self, scheduler: Scheduler) -> None:
        if self.failures:
            return
        refs = {node_id: self.agents[node_id].finish.remote(self.plan.settings.overwrite) for node_id in scheduler.nodes}
        for node_id, ref in refs.items():
            try:
                self.unpacked += len(ray.get(ref))
                self.progress.set_state(node_id, "done")
            except RayActorError as error:
                self._lose(scheduler, node_id, _first_line(error))
            except RayError as error:
                self.progress.set_state(node_id, "failed", _first_line(error))
                self.failures.append(f"{self.ips[node_id]}: {_first_line(error)}")

    def _stop_agents(self, grace: float) -> dict[str, int]:
        served: dict[str, int] = {}
        refs = {node_id: agent.stop.remote(grace) for node_id, agent in self.agents.items()}
        for node_id, ref in refs.items():
            try:
                stats = ray.get(ref, timeout=10)
                served[node_id] = (stats or {}).get("bytes_served", 0)
                if stats:
                    self.origin_fetched[node_id] = stats["origin_bytes"]
            except RayError:
                ray.kill(self.agents[node_id], no_restart=True)
                continue
            if node_id in self.lost:
                ray.kill(self.agents[node_id], no_restart=True)
            else:
                POOL.give_back(node_id, self.agents[node_id])
        return served

    def _report_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.on_progress is None or (not force and now - self._last_progress < self.progress_interval_s):
            return
        self._last_progress = now
        self.on_progress(self.progress.snapshot(with_chunks=True))

    def _report(self, scheduler: Scheduler, wall: float, served: Mapping[str, int]) -> Report:
        self._report_progress(force=True)
        snapshot = self.progress.snapshot()
        rates = self.progress.peak_rates()
        nodes = tuple(
            NodeReport(
                node_id=n.node_id, ip=n.ip, origin_bytes=n.origin_bytes, peer_bytes=n.peer_bytes,
                cache_bytes=n.cache_bytes, served_bytes=served.get(n.node_id, n.served_bytes),
                seconds=self.progress.finished_at(n.node_id), state=n.state if n.state != "running" else "failed",
                failures=n.failures,
            )
            for n in snapshot.nodes
        )
        return Report(
            nodes=nodes,
            unique_bytes=self.plan.unique_bytes,
            origin_bytes=sum(self.origin_fetched.values()),
            origin_refetches=scheduler.origin_refetches,
            wall_seconds=wall,
            ideal_seconds=snapshot.ideal_s,
            rates=rates,
            lost_nodes=tuple(n.ip for n in nodes if n.state == "lost"),
            failures=tuple(self.failures),
            unpacked=self.unpacked,
            startup_seconds=self.startup_seconds,
        )


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
