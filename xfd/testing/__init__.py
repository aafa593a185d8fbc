"""Stand-ins for the outside world, to run xfd on one machine: what ``xfd demo`` runs on, and what tests
of code that uses xfd can use (as Ray ships ``ray.cluster_utils``).

- :class:`LocalS3`: a real S3-protocol server on loopback (moto's), with stores and manifest options that
  reach it. Needs the ``demo`` extra (``pip install 'xfd[demo]'``).
- :class:`CountingProxy`: a reverse proxy in front of it that counts what the origin really served
  (:class:`OriginTraffic`, :class:`RequestRecord`) and can misbehave as S3 does (``503 SlowDown``, resets,
  stalls, an egress cap).
- :class:`LocalCluster`: a simulated multi-node Ray cluster, one loopback address and node root per node
  (the class of :mod:`xfd.runtime.local_cluster`, also importable as ``xfd.runtime.LocalCluster``).
- :func:`tar_gz`: sample archives; :func:`free_port`: a port for a server started by hand.
- :func:`faults`: fault injection into the nodes' engines, for xfd's own reliability tests only.

Importing this package does not import Ray: ``LocalCluster`` and :func:`faults` import it when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xfd.testing.fault_injection import faults
from xfd.testing.ports import free_port
from xfd.testing.proxy import CountingProxy, OriginTraffic, RequestRecord
from xfd.testing.s3 import LocalS3, S3Sandbox
from xfd.testing.samples import tar_gz

if TYPE_CHECKING:
    from xfd.runtime.local_cluster import LocalCluster

__all__ = [
    "CountingProxy",
    "LocalCluster",
    "LocalS3",
    "OriginTraffic",
    "RequestRecord",
    "S3Sandbox",
    "faults",
    "free_port",
    "tar_gz",
]


def __getattr__(name: str) -> Any:
    # LocalCluster starts Ray, so it lives in the runtime; imported on first use, so that the S3 server and
    # the proxy come without Ray.
    if name == "LocalCluster":
        from xfd.runtime.local_cluster import LocalCluster

        return LocalCluster
    raise AttributeError(f"module 'xfd.testing' has no attribute {name!r}")
