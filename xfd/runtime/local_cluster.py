"""A simulated multi-node Ray cluster on one machine, each node with its own IP and node root.

Every node gets its own loopback address (``127.0.0.2`` for the head, ``127.0.0.3``, ... for the others),
so services bound by code on a node listen on that node's address as on a real cluster, and its own node
root (see :mod:`xfd.nodes`) so that the same destination path does not collide between nodes.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import ray
from ray.cluster_utils import Cluster

from xfd.errors import ConfigError
from xfd.nodes import NODE_ROOT_LABEL

MiB = 1 << 20


@attrs.frozen
class SimulatedNode:
    ip: str
    root: Path
    handle: object = attrs.field(eq=False, repr=False)


class LocalCluster:
    """Head + ``num_nodes - 1`` raylets on this machine; the driver connects to it on start.

    ``object_store_memory`` is set per node on purpose: Ray's default claims about 30% of RAM for every
    node, which several simulated nodes on one machine cannot afford.

    ``metrics_report_interval_s``: how often Ray's metrics agents export what was recorded (Ray's default
    is 10 s); short, so that a test or the demo reads a run's metrics soon after it ended. ``None``: Ray's
    default. Exported only where Ray's metrics agent runs (``ray[default]``, docs/metrics.md); each node's
    endpoint is ``ray.nodes()``' ``MetricsExportPort`` on its IP.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        num_nodes: int = 4,
        *,
        cpus_per_node: int = 1,
        object_store_memory: int = 100 * MiB,
        first_ip: int = 2,
        include_dashboard: bool = False,
        metrics_report_interval_s: float | None = 1.0,
    ) -> None:
        if not 1 <= num_nodes <= 250 - first_ip:
            raise ConfigError(f"num_nodes must be between 1 and {250 - first_ip}, got {num_nodes}")
        if first_ip < 2:
            # ray.init rewrites 127.0.0.1 to the interface address and then waits for it forever.
            raise ConfigError("first_ip must be >= 2: 127.0.0.1 cannot be a simulated node's address")
        self.base_dir = Path(base_dir)
        self.num_nodes = num_nodes
        self.cpus_per_node = cpus_per_node
        self.object_store_memory = object_store_memory
        self.first_ip = first_ip
        # Off by default (one process less per cluster); Ray's state API, which Xenna's pipelines read, needs it.
        self.include_dashboard = include_dashboard
        if metrics_report_interval_s is not None and not metrics_report_interval_s > 0:
            raise ConfigError(
                f"metrics_report_interval_s must be a number of seconds above 0 (or None), got {metrics_report_interval_s}"
            )
        self.metrics_report_interval_s = metrics_report_interval_s
        self.nodes: list[SimulatedNode] = []
        self._cluster: Cluster | None = None

    def start(self) -> LocalCluster:
        # Token authentication (on by default since Ray 2.5x) writes a token under $HOME; a throw-away
        # cluster on loopback does not need it.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        self._cluster = Cluster(initialize_head=False)
        try:
            for _ in range(self.num_nodes):
                self.add_node()
            ray.init(address=self._cluster.address, _node_ip_address=self.nodes[0].ip, logging_level="WARNING")
        except BaseException:
            self.shutdown()
            raise
        return self

    @property
    def address(self) -> str:
        """The GCS address other drivers connect to (with ``_node_ip_address`` = the head's IP)."""
        if self._cluster is None:
            raise ConfigError("the cluster is not started")
        return self._cluster.address

    def add_node(self) -> SimulatedNode:
        """Starts one more node (the first one is the head) and waits until it is alive."""
        if self._cluster is None:
            raise ConfigError("the cluster is not started")
        index = len(self.nodes)
        ip = f"127.0.0.{self.first_ip + index}"
        root = self.base_dir / f"node-{index}"
        root.mkdir(parents=True, exist_ok=True)
        args = dict(
            node_ip_address=ip,
            num_cpus=self.cpus_per_node,
            object_store_memory=self.object_store_memory,
            labels={NODE_ROOT_LABEL: str(root)},
        )
        if index == 0:
            args["include_dashboard"] = self.include_dashboard
            if self.metrics_report_interval_s is not None:
                interval_ms = max(1, round(self.metrics_report_interval_s * 1000))
                args["_system_config"] = {"metrics_report_interval_ms": interval_ms}
        handle = self._cluster.add_node(**args)
        node = SimulatedNode(ip=ip, root=root, handle=handle)
        self.nodes.append(node)
        return node

    def remove_node(self, node: SimulatedNode) -> None:
        """Kills a (non-head) node's raylet and workers, as a crashed machine would disappear."""
        if self._cluster is None or node is self.nodes[0]:
            raise ConfigError("only a started cluster's non-head nodes can be removed")
        self._cluster.remove_node(node.handle, allow_graceful=False)
        self.nodes.remove(node)

    def shutdown(self) -> None:
        try:
            ray.shutdown()
        finally:
            if self._cluster is not None:
                self._cluster.shutdown()
                self._cluster = None
                self.nodes.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
