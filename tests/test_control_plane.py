"""The control plane on the simulated cluster: the coordinator runs in Rust on its own thread, so a driver
that is slow to read progress does not lose nodes; nodes join as their agents come up."""

from __future__ import annotations

import os
import shutil
import time

import obstore
import pytest

from xfd import Manifest
from xfd.nodes import localize

pytestmark = pytest.mark.cluster
MiB = 1 << 20
LOST_AFTER_S = 4.0


@pytest.fixture
def model(s3, bucket) -> bytes:
    data = os.urandom(12 * MiB + 5)
    obstore.put(s3.store(bucket), "model.bin", data)
    return data


def manifest_for(s3, bucket, endpoint) -> Manifest:
    return (
        Manifest.builder()
        .store("m", f"s3://{bucket}", **s3.manifest_options(endpoint))
        .settings(chunk_size="1MiB", node_parallelism=2, upload_slots=2)
        .object("m", "model.bin", to="/models/model.bin")
        .build()
    )


def test_a_driver_that_stops_reading_progress_loses_no_healthy_node(cluster, s3, bucket, model, origin):
    """The driver's thread sleeps three times the loss timeout on its first progress snapshot. Silence is
    measured where the agents' frames arrive (the Rust coordinator), so no node may be lost: the old
    Python loop timed silence from its own calls and lost every node here."""
    from xfd.runtime.coordinator import Coordinator

    for node in cluster.nodes:
        shutil.rmtree(node.root / "models", ignore_errors=True)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    slept = []

    def slow_driver(snapshot) -> None:
        if not slept:
            slept.append(snapshot.elapsed_s)
            time.sleep(3 * LOST_AFTER_S)

    coordinator = Coordinator(manifest.plan(), manifest.stores, on_progress=slow_driver, progress_interval_s=0.05,
                              lost_after_s=LOST_AFTER_S)
    report = coordinator.run()

    assert slept, "the driver was slowed"
    assert report.ok, report.summary()
    assert report.lost_nodes == ()
    assert report.origin_bytes == len(model)
    for node in cluster.nodes:
        assert localize("/models/model.bin", node.root).read_bytes() == model
    # Each node joined when its agent was up; the run's start-up is the first of them.
    came_up = [n.agent_seconds for n in report.nodes]
    assert all(seconds is not None and seconds > 0 for seconds in came_up), came_up
    assert report.startup_seconds == min(came_up)
    assert "agent up at" in report.summary()
