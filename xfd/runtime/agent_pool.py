"""Warm node agents, kept by this driver between distributions.

Starting a Ray actor costs seconds (a new worker process that imports Ray and xfd): measured 1.2 to 1.5 s
per actor on a 2-core machine. A driver that distributes more than once (a notebook re-running a
cell, a pipeline with several stages) takes its agents from this pool and gives them back when the run
ends, so only its first distribution pays. Agents are owned by the driver: they end with it, never
outlive it. Two distributions running at once never share an agent (a taken agent is not in the pool);
afterwards the pool keeps one idle agent per node.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from xfd.runtime.agent import NodeAgent


class AgentPool:
    def __init__(self) -> None:
        self._idle: dict[str, list[Any]] = defaultdict(list)
        self._session: tuple[str, str] | None = None
        self._lock = threading.Lock()

    def take(self, node_id: str) -> tuple[Any, bool]:
        """An idle agent on ``node_id`` (and True), or a new one (and False)."""
        with self._lock:
            self._forget_other_sessions()
            if self._idle[node_id]:
                return self._idle[node_id].pop(), True
        return new_agent(node_id), False

    def give_back(self, node_id: str, agent: Any) -> None:
        """Keeps ``agent`` for the next run, unless the node already has an idle one: runs at the same
        time each needed their own, but one warm agent per node is all a later run can use, and each
        idle agent is a process holding memory."""
        with self._lock:
            self._forget_other_sessions()
            spare = bool(self._idle[node_id])
            if not spare:
                self._idle[node_id].append(agent)
        if spare:
            ray.kill(agent, no_restart=True)

    def prune(self, alive: set[str]) -> None:
        """Forgets the idle agents of nodes that are gone (their actors went with them)."""
        with self._lock:
            for node_id in [n for n in self._idle if n not in alive]:
                del self._idle[node_id]

    def clear(self) -> None:
        """Ends every idle agent."""
        with self._lock:
            agents = [agent for idle in self._idle.values() for agent in idle]
            self._idle.clear()
        for agent in agents:
            ray.kill(agent, no_restart=True)

    def _forget_other_sessions(self) -> None:
        # Handles from an earlier Ray session (ray.shutdown, another cluster) point at nothing.
        context = ray.get_runtime_context()
        session = (str(context.gcs_address), context.get_job_id())
        if session != self._session:
            self._idle.clear()
            self._session = session


def new_agent(node_id: str) -> Any:
    return ray.remote(NodeAgent).options(
        num_cpus=0,
        max_concurrency=4,
        max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    ).remote()


POOL = AgentPool()
"""This driver's pool."""
