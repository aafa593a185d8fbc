"""RUN: everything that talks to Ray. The only package of xfd that imports ``ray``."""

from xfd.runtime.cluster_nodes import NodeInfo, alive_nodes, describe_nodes
from xfd.runtime.local_cluster import LocalCluster

__all__ = ["LocalCluster", "NodeInfo", "alive_nodes", "describe_nodes"]
