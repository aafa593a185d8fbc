"""The node agent: one Ray actor per node, wrapping that node's Rust engine.

The actor is a plain class made remote by the coordinator (pinned to its node with a hard
NodeAffinity). Its methods are thin: the engine does the work on its own threads and reports through
events, which the coordinator collects with :meth:`NodeAgent.events` (a blocking wait, so finished
chunks reach the scheduler as soon as they happen, with no polling tick).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xfd.engine import node_engine
from xfd.manifest.model import Store
from xfd.runtime.cluster_nodes import this_node

# Events are awaited at most this long per call: short enough that a lost coordinator does not keep
# agents blocked for long, long enough that an idle run costs a few calls per second at most.
EVENT_WAIT_S = 1.0


class NodeAgent:
    """Runs on one node: scans its cache, serves its chunks to peers, fetches what it is told.

    One agent serves one distribution at a time (:meth:`begin` ... :meth:`stop`) and may serve many in
    turn: the driver keeps agents warm between distributions (:mod:`xfd.runtime.agent_pool`), because
    starting a Ray actor costs seconds (a new worker process importing Ray).
    """

    def __init__(self) -> None:
        self.node = this_node()
        self.engine: Any = None
        self._origin_reported = 0

    def begin(self, plan_json: str, stores: Mapping[str, Store], token: str, *, deep_verify: bool = False,
              upload_slots: int = 8, egress_bytes_per_sec: int | None = None,
              fault: str | None = None) -> dict[str, Any]:
        """Builds this run's engine, scans the node's destinations and starts the peer server.

        ``fault`` is fault injection for the reliability tests (``"serve:corrupt"``, ``"publish:abort"``,
        ... see docs/reliability.md), never used otherwise.
        """
        self._origin_reported = 0
        # The plan's text goes to the engine as it is: parsing it here only to write it again cost seconds
        # per plan of 100,000 files.
        self.engine = node_engine(plan_json, stores, self.node.root, peer_token=token, deep_verify=deep_verify,
                                  faults=fault or "", node_labels=self.node.labels)
        try:
            scan = self.engine.scan()
        except BaseException:
            # A refused run must not keep the destinations it had already locked.
            engine, self.engine = self.engine, None
            engine.close()
            raise
        self.engine.drain_events()  # cache hits are reported once, here
        host, port = self.engine.start_server(self.node.ip, 0, upload_slots, egress_bytes_per_sec)
        return {
            "node_id": self.node.node_id,
            "ip": host,
            "port": port,
            "root": str(self.node.root),
            "labels": self.node.labels,
            "held": scan["held"],
            "cached_files": scan["cached_files"],
            "resumed_chunks": scan["resumed_chunks"],
        }

    def assign(self, origin: list[str], peers: list[tuple[str, str, int, str | None]]) -> None:
        """Starts transfers; they finish in the background and report through :meth:`events`.

        Dropped when the run has already stopped: assignments are not awaited, and a threaded actor does
        not keep one caller's calls in order, so one sent just before :meth:`stop` may arrive after it.
        """
        engine = self.engine
        if engine is None:
            return
        if origin:
            engine.submit_origin(origin)
        if peers:
            engine.submit_peer(peers)

    def events(self, timeout: float = EVENT_WAIT_S) -> list[dict[str, Any]]:
        """Waits up to ``timeout`` seconds for events, then returns all of them; last, when it grew, an
        ``origin_bytes`` event with every byte the origin served this node so far (attempts that failed
        or were cut short included)."""
        engine = self.engine
        if engine is None:
            return []
        events = engine.wait_events(timeout)
        fetched = engine.origin_bytes
        if fetched != self._origin_reported:
            self._origin_reported = fetched
            events.append({"kind": "origin_bytes", "bytes": fetched})
        return events

    def finish(self, overwrite: bool = False) -> list[dict[str, Any]]:
        """Runs the unpacks; call once the node holds every chunk."""
        return self.engine.finish(overwrite=overwrite)

    def stop(self, grace: float = 2.0) -> dict[str, Any] | None:
        """Stops the peer server and ends this run (the agent can begin another); returns the server's
        counters and ``origin_bytes``, everything the origin served this node in the run."""
        engine, self.engine = self.engine, None
        if engine is None:
            return None
        stats = engine.server_stats()
        engine.stop_server(grace)  # uploads in flight get `grace` seconds to finish
        # Transfers still running (a failed or cancelled run) end with it, and its destination locks are
        # let go now: a pending `events` call may hold the engine for another second, and the next run
        # (a notebook cell run again) may begin on this agent before that.
        engine.close()
        return {**(stats or {}), "origin_bytes": engine.origin_bytes}
