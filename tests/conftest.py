"""Shared fixtures: a real S3-protocol server, a counting view of origin traffic, a simulated cluster.

Session-scoped where starting is slow (the S3 server, the Ray cluster), so the whole suite pays for them
once; function-scoped where a test needs a clean slate (the origin counters, a fresh bucket).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from xfd.sandbox import CountingProxy, LocalS3


@pytest.fixture(scope="session")
def s3() -> Iterator[LocalS3]:
    """A moto S3 server on 127.0.0.1 and a free port, for the whole session."""
    with LocalS3() as server:
        yield server


@pytest.fixture(scope="session")
def _origin_proxy(s3: LocalS3) -> Iterator[CountingProxy]:
    with CountingProxy(s3.endpoint) as proxy:
        yield proxy


@pytest.fixture
def origin(_origin_proxy: CountingProxy) -> CountingProxy:
    """The counting proxy in front of ``s3``, with its counters reset for this test.

    Point clients at ``origin.endpoint`` and read ``origin.traffic()`` for what the origin really served.
    """
    _origin_proxy.reset()
    return _origin_proxy


@pytest.fixture
def bucket(s3: LocalS3) -> str:
    """A new, empty bucket on ``s3``."""
    name = f"xfd-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A simulated Ray cluster, head + 3 nodes on 127.0.0.2-5, each with its own node root.

    Imported lazily: tests that do not ask for it never import Ray.
    """
    from xfd.runtime import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("cluster"), num_nodes=4) as local_cluster:
        yield local_cluster
