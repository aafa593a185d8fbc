"""Fixtures for the Xenna adapter tests, run with the real cosmos-xenna in the Python 3.12 environment.

This directory has its own project (``tests/xenna/pyproject.toml``) and pytest run. It shares the main
suite's fixtures on the S3 server (``tests/support/fixtures.py``, on ``sys.path`` through ``pythonpath`` in
``tests/xenna/pyproject.toml``) and has its own, smaller, simulated cluster.

One Ray at a time: the shared cluster starts with the first test that asks for it and stays up until the
end, so tests that start a Ray of their own (``ray start``, the notebook's kernel, the run of Xenna's
own downloader) are ordered before every test that uses it.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["support.fixtures"]  # s3, origin, bucket


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests without the shared cluster first, then those that first run Xenna's own downloader on a Ray of
    their own (``xenna_reference``), then the rest; the order within each group is kept."""

    def group(item: pytest.Item) -> int:
        names = getattr(item, "fixturenames", ())
        if "cluster" not in names:
            return 0
        return 1 if "xenna_reference" in names else 2

    items.sort(key=group)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Head + 2 nodes, each with its own node root; with Ray's dashboard, whose state API Xenna's pipelines
    read (as on every cluster Xenna starts or joins)."""
    from cosmos_xenna.ray_utils.cluster import API_LIMIT

    from xfd.runtime import LocalCluster

    # What Xenna's own cluster start sets, and asks of clusters started elsewhere: its monitor lists up to
    # API_LIMIT actors through the state API, whose server reads these when it starts.
    for name in ("RAY_MAX_LIMIT_FROM_API_SERVER", "RAY_MAX_LIMIT_FROM_DATA_SOURCE"):
        os.environ.setdefault(name, str(API_LIMIT))
    with LocalCluster(tmp_path_factory.mktemp("cluster"), num_nodes=3, include_dashboard=True) as local_cluster:
        yield local_cluster
