"""Shared fixtures: a real S3-protocol server, a counting view of origin traffic (from
``tests/support/fixtures.py``), and a simulated cluster.

Session-scoped where starting is slow (the S3 server, the Ray cluster), so the whole suite pays for them
once; function-scoped where a test needs a clean slate (the origin counters, a fresh bucket).
"""

from __future__ import annotations

import pytest

# pytest puts this file's directory, tests/, on sys.path before it reads this: `support` is tests/support.
pytest_plugins = ["support.fixtures"]  # s3, origin, bucket


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A simulated Ray cluster, head + 3 nodes on 127.0.0.2-5, each with its own node root.

    Imported lazily: tests that do not ask for it never import Ray.
    """
    from xfd.runtime import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("cluster"), num_nodes=4) as local_cluster:
        yield local_cluster
