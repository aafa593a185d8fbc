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

    coordinator = Coordinator(
        manifest.plan(), manifest.stores, on_progress=slow_driver, progress_interval_s=0.05, lost_after_s=LOST_AFTER_S
    )
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


def driver_node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def test_the_driver_serves_its_own_node_in_its_process(cluster, s3, bucket, model, origin):
    """No Ray worker to start on the driver's node: its agent is up at once, the others join later."""
    from xfd.runtime.agent_pool import DriverAgent
    from xfd.runtime.coordinator import Coordinator

    for node in cluster.nodes:
        shutil.rmtree(node.root / "models", ignore_errors=True)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    coordinator = Coordinator(manifest.plan(), manifest.stores)
    report = coordinator.run()

    assert report.ok, report.summary()
    assert report.origin_bytes == len(model)
    in_driver = [node_id for node_id, agent in coordinator.agents.items() if isinstance(agent, DriverAgent)]
    assert in_driver == [driver_node_id()]
    for node in cluster.nodes:
        assert localize("/models/model.bin", node.root).read_bytes() == model


def test_a_node_given_a_fault_gets_a_ray_actor_even_under_the_driver(cluster):
    """A fault may end its agent's process: on the driver's node that must not be the driver."""
    from xfd.runtime.agent_pool import POOL, DriverAgent
    from xfd.runtime.coordinator import take_agents

    driver = driver_node_id()
    agent, _ = take_agents([driver], {driver: "serve:stall"})[driver]
    try:
        assert not isinstance(agent, DriverAgent)
    finally:
        POOL.discard(agent)
    agent, _ = take_agents([driver])[driver]
    try:
        assert isinstance(agent, DriverAgent)
    finally:
        POOL.give_back(driver, agent)


def test_a_refusal_on_the_drivers_node_fails_that_node_only_and_keeps_the_users_file(
    cluster, s3, bucket, model, origin
):
    """The driver's own agent refuses a run as an actor would: the report says why, nothing is lost."""
    driver_root = cluster.nodes[0].root  # the head: the driver connected to it
    for node in cluster.nodes:
        shutil.rmtree(node.root / "models", ignore_errors=True)
    mine = localize("/models/model.bin", driver_root)
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own file")
    manifest = manifest_for(s3, bucket, origin.endpoint)

    report = manifest.distribute(progress=None, raise_on_failure=False)

    assert not report.ok
    (refused,) = [n for n in report.nodes if n.state != "done"]
    assert refused.ip == cluster.nodes[0].ip and any("not written by xfd" in f for f in refused.failures), (
        report.summary()
    )
    assert mine.read_bytes() == b"the user's own file"
    for node in cluster.nodes[1:]:
        assert localize("/models/model.bin", node.root).read_bytes() == model
    mine.unlink()


def test_only_nodes_that_took_part_before_can_hold_the_origin_back(cluster):
    from ray.experimental import internal_kv

    from xfd.runtime import took_part

    ip, other = "127.255.255.254", "127.255.255.253"  # no node of the test cluster

    def forget(*ips: str) -> None:
        for each in ips:
            internal_kv._internal_kv_del(took_part.PREFIX + each, namespace=took_part.NAMESPACE)

    try:
        assert not took_part.record([ip]), "a node never seen before holds nothing"
        assert took_part.record([other, ip]), "the node recorded by the run before"
        assert took_part.record([other]), "recorded too, as a node of the run before"
        forget(ip, other)
        assert not took_part.record([ip]), "forgotten, as after a restart of the cluster's store"
    finally:
        forget(ip, other)
