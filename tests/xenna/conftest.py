"""Fixtures for the Xenna adapter tests, run with the real cosmos-xenna in the Python 3.12 environment.

This directory has its own project (``tests/xenna/pyproject.toml``) and pytest run. It shares the main
suite's sandbox fixtures (``xfd.sandbox.fixtures``) and has its own, smaller, simulated cluster.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["xfd.sandbox.fixtures"]  # s3, origin, bucket


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Head + 2 nodes, each with its own node root."""
    from xfd.runtime import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("cluster"), num_nodes=3) as local_cluster:
        yield local_cluster
