"""Which nodes of the cluster have ever taken part in a distribution, kept in the cluster itself (Ray's
GCS key-value store), so that it outlives drivers: a kernel restarted, a second notebook, a job.

The coordinator holds back origin transfers until every node's agent is up (or a few seconds after the
first one was), because a node still starting may hold in its cache what an early node would otherwise
fetch from the origin again. A node that never took part in a distribution on this cluster holds
nothing of xfd's, so when no node of a run ever did (a fresh cluster's first run), there is nothing to
wait for: origin transfers start as soon as the first agent is up (the driver's own, at once).

Nodes are known by IP: a raylet restarted on the same machine keeps its disk and its IP, not its node
id. A cluster whose GCS restarted without fault tolerance forgets them; its first run then does not hold
the origin back for nodes that come up late (at worst they fetch again what they had).
"""

from __future__ import annotations

from collections.abc import Iterable

from ray.experimental import internal_kv

NAMESPACE = "xfd"
PREFIX = "took-part/"


def record(ips: Iterable[str]) -> bool:
    """Records that the nodes at ``ips`` take part in a distribution (before they fetch anything); returns
    whether any of them took part in one before (True when the cluster's store cannot tell). One listing,
    and a write only for a node seen for the first time: at a thousand nodes, every run's start would
    otherwise write a thousand keys that are already there."""
    if not internal_kv._internal_kv_initialized():
        return True
    listed = internal_kv._internal_kv_list(PREFIX, namespace=NAMESPACE)
    seen = {key.decode().removeprefix(PREFIX) for key in listed}
    wanted = set(ips)
    for ip in wanted - seen:
        internal_kv._internal_kv_put(PREFIX + ip, b"1", overwrite=True, namespace=NAMESPACE)
    return bool(wanted & seen)
