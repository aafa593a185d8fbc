"""Fixtures for the Xenna adapter tests, run with the real cosmos-xenna in the Python 3.12 environment.

This directory has its own project (``tests/xenna/pyproject.toml``) and pytest run; the fixtures mirror
the main suite's: a moto S3 server, a counting proxy in front of it, and one simulated cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from xfd.sandbox import CountingProxy, LocalS3


@pytest.fixture(scope="session")
def s3() -> Iterator[LocalS3]:
    with LocalS3() as server:
        yield server


@pytest.fixture(scope="session")
def _origin_proxy(s3: LocalS3) -> Iterator[CountingProxy]:
    with CountingProxy(s3.endpoint) as proxy:
        yield proxy


@pytest.fixture
def origin(_origin_proxy: CountingProxy) -> CountingProxy:
    _origin_proxy.reset()
    return _origin_proxy


@pytest.fixture
def bucket(s3: LocalS3) -> str:
    name = f"xfd-xenna-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Head + 2 nodes, each with its own node root."""
    from xfd.runtime import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("cluster"), num_nodes=3) as local_cluster:
        yield local_cluster
