"""pytest fixtures on :mod:`xfd.testing`'s S3 server and proxy, shared by the main suite and the Xenna
adapter's suite.

Use with ``pytest_plugins = ["support.fixtures"]`` in a ``conftest.py``. Session-scoped where
starting is slow (the S3 server), function-scoped where a test needs a clean slate (the origin counters,
a fresh bucket).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from xfd.testing import CountingProxy, LocalS3


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
