"""Real distributions on the simulated cluster, the real S3 server, origin bytes counted at the origin."""

from __future__ import annotations

import os
import shutil
import time

import obstore
import pytest

from xfd import Manifest
from xfd.nodes import localize
from xfd.testing import faults, tar_gz

pytestmark = pytest.mark.cluster
MiB = 1 << 20


@pytest.fixture
def artifacts(s3, bucket):
    contents = {
        "root/model.bin": os.urandom(6 * MiB + 17),
        "root/tok/a.json": b'{"a": 1}',
        "root/tok/sub/b.json": os.urandom(70_000),
        "root/data.tar.gz": tar_gz({"x.txt": b"x" * 5000, "sub/y.txt": b"y"}),
    }
    for key, data in contents.items():
        obstore.put(s3.store(bucket), key, data)
    return contents


def manifest_for(s3, bucket, endpoint) -> Manifest:
    return (
        Manifest.builder()
        .store("m", f"s3://{bucket}/root", **s3.manifest_options(endpoint))
        .settings(chunk_size="1MiB", node_parallelism=4, upload_slots=4)
        .object("m", "model.bin", to="/models/model.bin")
        .object("m", "model.bin", to="/models/again/model.bin", name="same-object-again")
        .prefix("m", "tok/", to="/tok")
        .object("m", "data.tar.gz", to="/data/data.tar.gz")
        .unpack()
        .build()
    )


def wait_until_gone(ip: str, timeout: float = 60.0) -> None:
    """Ray lists a removed node as alive until its heartbeats are missed: wait for that."""
    from xfd.runtime import alive_nodes

    deadline = time.monotonic() + timeout
    while any(n["NodeManagerAddress"] == ip for n in alive_nodes()):
        assert time.monotonic() < deadline, f"{ip} still listed as alive"
        time.sleep(0.5)


def assert_every_node_has_everything(nodes, contents) -> None:
    for node in nodes:
        assert localize("/models/model.bin", node.root).read_bytes() == contents["root/model.bin"], node.ip
        assert localize("/models/again/model.bin", node.root).read_bytes() == contents["root/model.bin"]
        assert localize("/tok/sub/b.json", node.root).read_bytes() == contents["root/tok/sub/b.json"]
        assert localize("/data/data/x.txt", node.root).read_bytes() == b"x" * 5000


def clear_roots(cluster) -> None:
    for node in cluster.nodes:
        for child in node.root.iterdir():
            shutil.rmtree(child)


def test_every_node_gets_byte_identical_files_with_one_origin_copy(cluster, s3, bucket, artifacts, origin):
    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    plan = manifest.plan()
    origin.reset()
    report = manifest.distribute(plan=plan, progress=None)

    assert report.ok, report.summary()
    assert_every_node_has_everything(cluster.nodes, artifacts)
    assert origin.traffic().get_bytes == plan.unique_bytes
    assert report.origin_bytes == plan.unique_bytes and report.origin_ratio == 1.0
    assert sum(n.peer_bytes for n in report.nodes) == (len(cluster.nodes) - 1) * plan.unique_bytes
    assert report.unpacked == len(cluster.nodes)
    assert report.efficiency is None or 0 < report.efficiency <= 1.0, (report.rates, report.summary())

    # A second run: every file is a cache hit, the origin serves nothing.
    origin.reset()
    again = manifest.distribute(plan=plan, progress=None)
    assert again.ok, again.summary()
    assert origin.traffic().get_bytes == 0
    assert all(n.cache_bytes == plan.unique_bytes and n.origin_bytes == n.peer_bytes == 0 for n in again.nodes)


def test_one_seeded_node_feeds_the_rest_with_zero_origin_bytes(cluster, s3, bucket, artifacts, origin):
    from xfd.runtime import describe_nodes

    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    plan = manifest.plan()
    first = describe_nodes()[0]
    seeded = manifest.distribute(plan=plan, progress=None, nodes=[first.node_id])
    assert seeded.ok and len(seeded.nodes) == 1
    origin.reset()
    report = manifest.distribute(plan=plan, progress=None)
    assert report.ok, report.summary()
    assert origin.traffic().get_bytes == 0
    assert_every_node_has_everything(cluster.nodes, artifacts)


def test_a_node_removed_mid_run_does_not_sink_the_run(cluster, s3, bucket, artifacts, origin):
    clear_roots(cluster)
    extra = cluster.add_node()
    try:
        manifest = manifest_for(s3, bucket, origin.endpoint)
        plan = manifest.plan()
        removed: list[str] = []

        def remove_when_running(snapshot):
            if not removed and snapshot.done_bytes > 0:
                removed.append(extra.ip)
                cluster.remove_node(extra)

        report = manifest.distribute(plan=plan, progress=remove_when_running)
    finally:
        if extra in cluster.nodes:
            cluster.remove_node(extra)
        wait_until_gone(extra.ip)
    assert removed == [extra.ip]
    assert report.ok, report.summary()
    assert report.lost_nodes == (extra.ip,) or all(n.state == "done" for n in report.nodes)
    assert_every_node_has_everything(cluster.nodes, artifacts)


def test_a_peer_serving_corrupt_bytes_is_caught_and_the_run_completes(cluster, s3, bucket, artifacts, origin):
    from xfd.runtime import describe_nodes

    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    plan = manifest.plan()
    bad = describe_nodes()[1]
    with faults({bad.node_id: "serve:corrupt"}):
        report = manifest.distribute(plan=plan, progress=None)
    assert report.ok, report.summary()
    good_nodes = [n for n in cluster.nodes if n.ip != bad.ip]
    assert_every_node_has_everything(good_nodes, artifacts)
    bad_report = next(n for n in report.nodes if n.node_id == bad.node_id)
    others = [n for n in report.nodes if n.node_id != bad.node_id]
    assert any("digest" in f for n in others for f in n.failures), report.summary()
    assert bad_report.state == "done"


def test_background_distribution_streams_progress_and_reports(cluster, s3, bucket, artifacts, origin):
    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    handle = manifest.distribute(wait=False, progress=None)
    seen = list(handle.snapshots(timeout=60))
    report = handle.wait(timeout=120)
    assert report.ok
    assert seen and seen[-1].done_bytes == seen[-1].total_bytes
    assert all(node.inflight == 0 and node.state == "done" for node in seen[-1].nodes)
    assert time.monotonic() > 0


def test_the_cli_distributes_a_toml_manifest(cluster, s3, bucket, artifacts, origin, tmp_path, capsys):
    from xfd.cli import main

    clear_roots(cluster)
    path = tmp_path / "artifacts.toml"
    path.write_text(
        s3.store_toml("m", f"s3://{bucket}/root", origin.endpoint)
        + '[[artifacts]]\nstore = "m"\nprefix = "tok"\nto = "/cli/tok"\n'
    )
    assert main(["distribute", "--no-progress", str(path)]) == 0
    out = capsys.readouterr().out
    assert "plan: 1 artifact, 2 files" in out and out.count("done") == len(cluster.nodes)
    for node in cluster.nodes:
        assert localize("/cli/tok/a.json", node.root).read_bytes() == b'{"a": 1}'


def test_an_artifact_targeted_by_label_lands_only_on_matching_nodes(cluster, s3, bucket, artifacts, origin):
    from xfd.nodes import NODE_ROOT_LABEL

    clear_roots(cluster)
    chosen = cluster.nodes[2]
    manifest = (
        Manifest.builder()
        .store("m", f"s3://{bucket}/root", **s3.manifest_options(origin.endpoint))
        .settings(chunk_size="1MiB")
        .object("m", "model.bin", to="/only/model.bin", nodes={NODE_ROOT_LABEL: str(chosen.root)})
        .prefix("m", "tok", to="/everyone/tok")
        .build()
    )
    plan = manifest.plan()
    origin.reset()
    report = manifest.distribute(plan=plan, progress=None)
    assert report.ok, report.summary()
    for node in cluster.nodes:
        assert localize("/everyone/tok/a.json", node.root).read_bytes() == b'{"a": 1}'
        assert localize("/only/model.bin", node.root).exists() == (node is chosen), node.ip
    assert localize("/only/model.bin", chosen.root).read_bytes() == artifacts["root/model.bin"]
    assert origin.traffic().get_bytes == plan.unique_bytes


def test_a_background_distribution_can_be_cancelled(cluster, s3, bucket, artifacts, origin):
    from xfd.errors import DistributionCancelled

    clear_roots(cluster)
    handle = manifest_for(s3, bucket, origin.endpoint).distribute(wait=False, progress=None)
    handle.cancel()
    with pytest.raises(DistributionCancelled, match="cancelled"):
        handle.wait(timeout=120)
    assert handle.done()
    for node in cluster.nodes:  # never a partial file at a destination
        path = localize("/models/model.bin", node.root)
        assert not path.exists() or path.read_bytes() == artifacts["root/model.bin"]


def test_the_widget_shows_what_the_report_says(cluster, s3, bucket, artifacts, origin):
    from xfd.notebook.widget import STATE_COLOURS, DistributionWidget

    clear_roots(cluster)
    widget = DistributionWidget()
    report = manifest_for(s3, bucket, origin.endpoint).distribute(progress=widget.update)
    widget.close(report)
    placed = sum(n.origin_bytes + n.peer_bytes + n.cache_bytes for n in report.nodes)
    assert widget.overall.value == widget.overall.max == placed
    assert len(widget.nodes.children) == len(report.nodes)
    assert widget.overall.bar_style == "success" and "done" in widget.header.value
    for colour in (STATE_COLOURS["missing"], STATE_COLOURS["inflight"], STATE_COLOURS["failed"]):
        assert colour not in widget.chunk_map.value.split("<div")[0]


def idle_agents() -> dict[str, set[str]]:
    """The pooled agents (Ray actors) by node: every node of the run but the driver's own."""
    from xfd.runtime.agent_pool import POOL
    from xfd.runtime.cluster_nodes import alive_nodes

    alive = {node["NodeID"] for node in alive_nodes()}
    return {node: {agent._actor_id.hex() for agent in agents} for node, agents in POOL.idle().items() if node in alive}


def test_agents_stay_warm_between_runs_and_dead_ones_are_replaced(cluster, s3, bucket, artifacts, origin):
    import ray

    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    plan = manifest.plan()
    assert manifest.distribute(plan=plan, progress=None).ok
    warm = idle_agents()
    driver_node = ray.get_runtime_context().get_node_id()
    assert driver_node not in warm, "the driver's node is served by the driver's own agent"
    assert len(warm) == len(cluster.nodes) - 1, "every other node's agent is kept for the next run"

    clear_roots(cluster)
    again = manifest.distribute(plan=plan, progress=None)
    assert again.ok and all(n.cache_bytes == 0 for n in again.nodes), "a fresh engine per run: no stale state"
    assert idle_agents() == warm, "the second run reused the same agents"

    from xfd.runtime.agent_pool import POOL

    victim_node = sorted(warm)[0]
    ray.kill(POOL.idle()[victim_node][0], no_restart=True)
    clear_roots(cluster)
    third = manifest.distribute(plan=plan, progress=None)
    assert third.ok, third.summary()
    assert_every_node_has_everything(cluster.nodes, artifacts)
    replaced = idle_agents()
    assert replaced[victim_node] != warm[victim_node] and len(replaced) == len(cluster.nodes) - 1
