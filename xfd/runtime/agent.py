"""The node agent: one per node, wrapping that node's Rust engine.

The agent is a plain class, made a Ray actor by the coordinator (pinned to its node with a hard
NodeAffinity), or on the driver's own node called in the driver's process (see
:mod:`xfd.runtime.agent_pool`). Its methods are thin and few: :meth:`NodeAgent.begin` builds the engine, which opens its
own control link to the coordinator; from then on work and outcomes travel over that link, between Rust
on both ends, never through Ray or Python. Ray is left with starting and stopping runs, unpacking, and
telling the coordinator that the agent died (:meth:`NodeAgent.until_stopped` fails then).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from xfd.engine import node_engine
from xfd.manifest.model import Store
from xfd.runtime.cluster_nodes import this_node


class NodeAgent:
    """Runs on one node: scans its cache, serves its chunks to peers, fetches what it is told.

    One agent serves one distribution at a time (:meth:`begin` ... :meth:`stop`) and may serve many in
    turn: the driver keeps agents warm between distributions (:mod:`xfd.runtime.agent_pool`), because
    starting a Ray actor costs seconds (a new worker process importing Ray).
    """

    def __init__(self) -> None:
        self.node = this_node()
        self.engine: Any = None
        self._stopped = threading.Event()

    def begin(
        self,
        plan_json: str,
        stores: Mapping[str, Store],
        token: str,
        *,
        upload_slots: int,
        deep_verify: bool = False,
        egress_bytes_per_sec: int | None = None,
        fault: str | None = None,
        control: tuple[str, int, str] | None = None,
    ) -> dict[str, Any]:
        """Builds this run's engine, scans the node's destinations, starts the peer server and opens the
        control link to the coordinator at ``control`` (``(host, port, this node's id in the run)``).

        The peer server sends at most the plan's ``upload_rate`` (the engine reads it from the plan);
        ``egress_bytes_per_sec`` overrides it for this run.

        ``fault`` is fault injection for the reliability tests (``"serve:corrupt"``, ``"publish:abort"``,
        ... see docs/reliability.md), never used otherwise.
        """
        self._stopped = threading.Event()
        # The plan's text goes to the engine as it is: parsing it here only to write it again cost seconds
        # per plan of 100,000 files.
        self.engine = node_engine(
            plan_json,
            stores,
            self.node.root,
            peer_token=token,
            deep_verify=deep_verify,
            faults=fault or "",
            node_labels=self.node.labels,
        )
        try:
            scan = self.engine.scan()
        except BaseException:
            # A refused run must not keep the destinations it had already locked.
            engine, self.engine = self.engine, None
            engine.close()
            raise
        self.engine.drain_events()  # cache hits are reported once, here
        host, port = self.engine.start_server(
            self.node.ip, 0, upload_slots=upload_slots, egress_bytes_per_sec=egress_bytes_per_sec
        )
        if control is not None:
            coordinator_host, coordinator_port, name = control
            self.engine.link(coordinator_host, coordinator_port, token, name)
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

    def until_stopped(self) -> None:
        """Returns when this run is stopped. The coordinator keeps one call pending per agent: if the
        actor dies, the call fails, and that is how the coordinator learns of it from Ray."""
        self._stopped.wait()

    def finish(self, overwrite: bool) -> list[dict[str, Any]]:
        """Runs the unpacks; call once the node holds every chunk."""
        return self.engine.finish(overwrite=overwrite)

    def stop(self, grace: float = 2.0) -> dict[str, Any] | None:
        """Stops the peer server and ends this run (the agent can begin another); returns the server's
        counters and ``origin_bytes``, everything the origin served this node in the run."""
        engine, self.engine = self.engine, None
        self._stopped.set()
        if engine is None:
            return None
        stats = engine.server_stats()
        engine.stop_server(grace)  # uploads in flight get `grace` seconds to finish
        # Transfers still running (a failed or cancelled run) end with it, and its destination locks are
        # let go now, not when the engine is dropped: the next run (a notebook cell run again) may begin
        # on this agent at once.
        engine.close()
        return {**(stats or {}), "origin_bytes": engine.origin_bytes}
