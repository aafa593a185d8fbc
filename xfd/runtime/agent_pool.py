"""Node agents, kept by this driver between distributions, and the one that serves the driver's own node.

Starting a Ray actor costs seconds: a new worker process that imports Ray and xfd, about 3.5 s of CPU each
(measured on a 2-core machine, where four of them take 7 s to come up). Two things keep a user from
paying it more than needed:

- **The driver serves its own node.** When the driver runs on a node of the run (a notebook on the
  head node, a job's entrypoint) that node's agent lives in the driver's process (:class:`DriverAgent`):
  it is up at once, so origin transfers start while the other nodes' agents are still starting, and
  they take from it what it already has.
- **A pool.** A driver that distributes more than once (a notebook re-running a cell, a pipeline with
  several stages) takes its agents from this pool and gives them back when the run ends, so only its
  first distribution starts them. Agents are owned by the driver: they end with it, never outlive it.
  Two distributions running at once never share an agent (a taken agent is not in the pool);
  afterwards the pool keeps one idle agent per node.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from xfd.runtime.agent import NodeAgent


class DriverAgent:
    """The agent of the driver's own node, in the driver's process, called as a Ray actor is
    (``agent.begin.remote(...)``); each call runs on a thread of its own and returns a
    :class:`~concurrent.futures.Future`.

    Its node root is resolved in the driver (``XFD_NODE_ROOT`` of the driver's process, else the node's
    ``xfd-root`` label): see docs/node-roots.md.
    """

    def __init__(self) -> None:
        self._agent = NodeAgent()
        self.node_id = self._agent.node.node_id
        self.begin = _InThread(self._agent.begin)
        self.until_stopped = _InThread(self._agent.until_stopped)
        self.finish = _InThread(self._agent.finish)
        self.stop = _InThread(self._agent.stop)

    def end(self) -> None:
        """Ends a run it may still be serving (a pooled agent is killed; this one just stops)."""
        self._agent.stop(0.0)


class _InThread:
    """One method of the driver's agent, called as Ray's ``method.remote(...)``."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self._method = method

    def remote(self, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()

        def call() -> None:
            future.set_running_or_notify_cancel()
            try:
                future.set_result(self._method(*args, **kwargs))
            except BaseException as error:  # noqa: BLE001 - handed to whoever reads the future
                future.set_exception(error)

        # A daemon thread, not an executor: a call that waits for its run to stop must not keep the
        # interpreter from exiting.
        threading.Thread(target=call, name="xfd-driver-agent", daemon=True).start()
        return future


class AgentPool:
    def __init__(self) -> None:
        self._idle: dict[str, list[Any]] = defaultdict(list)
        self._session: tuple[str, str] | None = None
        self._driver_agent: DriverAgent | None = None
        self._driver_agent_taken = False
        self._lock = threading.Lock()

    def take(self, node_id: str, *, in_driver: bool = True) -> tuple[Any, bool]:
        """An agent for ``node_id`` (and whether it was already up): the driver's own agent if the
        driver runs on that node, it is free and ``in_driver`` allows it; else an idle pooled agent, or a
        new one."""
        with self._lock:
            self._forget_other_sessions()
            if in_driver and not self._driver_agent_taken and node_id == driver_node_id():
                # A driver agent of another node (the driver joined another cluster since) serves no more.
                if self._driver_agent is None or self._driver_agent.node_id != node_id:
                    self._driver_agent = DriverAgent()
                self._driver_agent_taken = True
                return self._driver_agent, True
            if self._idle[node_id]:
                return self._idle[node_id].pop(), True
        return new_agent(node_id), False

    def give_back(self, node_id: str, agent: Any) -> None:
        """Keeps ``agent`` for the next run, unless the node already has an idle one: runs at the same
        time each needed their own, but one warm agent per node is all a later run can use, and each
        idle agent is a process holding memory."""
        with self._lock:
            if agent is self._driver_agent:
                self._driver_agent_taken = False
                return
            self._forget_other_sessions()
            spare = bool(self._idle[node_id])
            if not spare:
                self._idle[node_id].append(agent)
        if spare:
            end_agent(agent)

    def discard(self, agent: Any) -> None:
        """Ends an agent that must not serve again (its node was lost, or it did not stop)."""
        end_agent(agent)
        if agent is self._driver_agent:
            with self._lock:
                self._driver_agent_taken = False

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
            end_agent(agent)

    def idle(self) -> dict[str, list[Any]]:
        """The idle pooled agents (Ray actors) by node; the driver's own agent is not among them."""
        with self._lock:
            return {node_id: list(agents) for node_id, agents in self._idle.items() if agents}

    def _forget_other_sessions(self) -> None:
        # Handles from an earlier Ray session (ray.shutdown, another cluster) point at nothing.
        context = ray.get_runtime_context()
        session = (str(context.gcs_address), context.get_job_id())
        if session != self._session:
            self._idle.clear()
            self._session = session


def driver_node_id() -> str | None:
    """The node this driver runs on, or None for a Ray Client driver (``ray://``), which is on no node
    of the cluster."""
    if ray.util.client.ray.is_connected():
        return None
    return ray.get_runtime_context().get_node_id()


def new_agent(node_id: str) -> Any:
    return (
        ray.remote(NodeAgent)
        .options(
            num_cpus=0,
            max_concurrency=4,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        )
        .remote()
    )


def end_agent(agent: Any) -> None:
    """Ends an agent: a Ray actor is killed; the driver's own agent stops its run."""
    if isinstance(agent, DriverAgent):
        agent.end()
    else:
        ray.kill(agent, no_restart=True)


def as_future(call: Any) -> Future[Any]:
    """A call on an agent as a future: a Ray ``ObjectRef``'s own, or the driver's agent's future."""
    return call if isinstance(call, Future) else call.future()


POOL = AgentPool()
"""This driver's pool."""
