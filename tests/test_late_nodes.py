"""Nodes that join the cluster late (autoscaling) get the artifacts from their peers, not from the origin:
by running the distribution again, by joining a run that is still going, and by a distribution that
follows the cluster (``follow=True``) after its run.

These tests add nodes to the session's simulated cluster and remove them again at the end, so that the
tests after them see the cluster they expect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import obstore
import pytest

from xfd import Manifest
from xfd.errors import ConfigError
from xfd.nodes import localize

pytestmark = pytest.mark.cluster
MiB = 1 << 20
# A deadline for what must happen (a node coming up, a catch-up run); not a timing assertion.
DEADLINE_S = 180.0


@pytest.fixture
def contents(s3, bucket) -> dict[str, bytes]:
    objects = {
        "late/model.bin": os.urandom(4 * MiB + 3),
        "late/tok/a.json": b'{"late": true}',
        "late/tok/b.json": os.urandom(30_000),
    }
    for key, data in objects.items():
        obstore.put(s3.store(bucket), key, data)
    return objects


@pytest.fixture
def manifest(s3, bucket, origin) -> Manifest:
    return (
        Manifest.builder()
        .store("m", f"s3://{bucket}/late", **s3.manifest_options(origin.endpoint))
        .settings(chunk_size="1MiB", node_parallelism=4, upload_slots=4)
        .object("m", "model.bin", to="/late/model.bin")
        .prefix("m", "tok/", to="/late/tok")
        .build()
    )


@pytest.fixture
def files(contents) -> dict[str, bytes]:
    return {
        "/late/model.bin": contents["late/model.bin"],
        "/late/tok/a.json": contents["late/tok/a.json"],
        "/late/tok/b.json": contents["late/tok/b.json"],
    }


@pytest.fixture
def grow(cluster) -> Iterator[Callable[[], object]]:
    """Adds nodes to the session cluster on demand; removes them (and every node's files) afterwards."""
    added = []

    def add():
        node = cluster.add_node()
        added.append(node)
        return node

    try:
        yield add
    finally:
        for node in added:
            cluster.remove_node(node)
        for node in [*cluster.nodes, *added]:
            subprocess.run(["rm", "-rf", str(node.root / "late")], check=True)


def assert_has(node, files: dict[str, bytes]) -> None:
    for destination, data in files.items():
        assert localize(destination, node.root).read_bytes() == data, f"{destination} on {node.ip}"


def by_ip(report, ip: str):
    return next(n for n in report.nodes if n.ip == ip)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S:.0f} s: {what}"
        time.sleep(0.2)


def test_running_the_distribution_again_feeds_a_new_node_from_its_peers(cluster, grow, origin, manifest, files):
    plan = manifest.plan()
    first = manifest.distribute(plan=plan, progress=None)
    assert first.origin_bytes == plan.unique_bytes

    new = grow()
    origin.reset()
    again = manifest.distribute(plan=plan, progress=None)

    assert origin.traffic().get_bytes == 0, "the origin served bytes to bring a new node up to date"
    assert again.origin_bytes == 0 and again.ok, again.summary()
    assert by_ip(again, new.ip).peer_bytes == plan.unique_bytes
    assert all(n.cache_bytes == plan.unique_bytes for n in again.nodes if n.ip != new.ip)
    for node in cluster.nodes:
        assert_has(node, files)


def test_a_following_distribution_takes_in_a_node_during_its_run_and_catches_up_one_after_it(
    cluster, grow, origin, manifest, files
):
    plan = manifest.plan()
    origin.reset()
    origin.throttle(64 * 1024)  # the run cannot end before the new node is in it; lifted below
    distribution = manifest.distribute(plan=plan, progress=None, wait=False, follow=True)
    try:
        during = grow()
        wait_until(
            lambda: distribution.snapshot is not None and during.ip in {n.ip for n in distribution.snapshot.nodes},
            "the new node joined the running distribution",
        )
        origin.throttle(None)
        report = distribution.wait(timeout=DEADLINE_S)
        assert distribution.following, "a following distribution stopped after its run"
        after = grow()
        wait_until(lambda: distribution.catch_ups, "a catch-up run for the node that joined after the run")
        catch_up = distribution.catch_ups[0]
    finally:
        distribution.stop_following()

    assert report.ok, report.summary()
    assert during.ip in {n.ip for n in report.nodes} and after.ip not in {n.ip for n in report.nodes}
    assert report.origin_bytes == plan.unique_bytes
    assert catch_up.ok, catch_up.summary()
    assert catch_up.origin_bytes == 0
    assert by_ip(catch_up, after.ip).peer_bytes == plan.unique_bytes
    assert origin.traffic().get_bytes == plan.unique_bytes, "bytes fetched twice from the origin"
    for node in cluster.nodes:
        assert_has(node, files)
    assert not distribution.following


def test_following_needs_a_handle_and_a_choice_that_new_nodes_can_match(manifest):
    with pytest.raises(ConfigError, match="wait=False"):
        manifest.distribute(follow=True)
    with pytest.raises(ConfigError, match="labels"):
        manifest.distribute(wait=False, follow=True, nodes=["a-node-id"])


FOLLOWING_CLI = """
import sys
import ray
from xfd.cli import main
ray.init(address=sys.argv[2], _node_ip_address="127.0.0.2", logging_level="ERROR")
sys.exit(main(["distribute", sys.argv[1], "--follow", "--no-progress"]))
"""


def test_xfd_distribute_follow_brings_a_new_node_up_to_date_until_ctrl_c(
    cluster, grow, origin, manifest, files, tmp_path
):
    (tmp_path / "artifacts.toml").write_text(manifest.to_toml())
    plan = manifest.plan()
    origin.reset()
    command = subprocess.Popen(
        [sys.executable, "-c", FOLLOWING_CLI, str(tmp_path / "artifacts.toml"), cluster.address],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # Headlines only: the plan's summary, then each report's first line (its node lines are indented).
        lines = (line for line in iter(command.stdout.readline, "") if not line.startswith(" "))
        assert next(line for line in lines if line.startswith(("ok:", "failed"))).startswith("ok:")
        assert next(lines).startswith("following the cluster")
        new = grow()
        catch_up = next(lines)  # the catch-up run's report
        assert catch_up.startswith("ok:"), catch_up
        command.send_signal(signal.SIGINT)
        assert command.wait(timeout=DEADLINE_S) == 0
    finally:
        command.kill()
        command.wait()
        command.stdout.close()

    assert_has(new, files)
    assert origin.traffic().object_bytes == plan.unique_bytes, "the origin served bytes to the new node"
