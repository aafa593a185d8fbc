"""A directory of many small files on the simulated cluster: bundles end to end.

Small objects travel in bundles (docs/engine.md, "Bundles of small files"): fetched from the origin once,
one GET per object, shared between peers as one chunk per bundle, published together on each node. A rerun
after files were deleted on one node brings back only those files, from a peer.
"""

from __future__ import annotations

import os
import shutil

import obstore
import pytest

from xfd import Manifest
from xfd.engine import state_dir
from xfd.nodes import localize
from xfd.testing import faults

pytestmark = pytest.mark.cluster
FILES = 1_200


@pytest.fixture
def small_files(s3, bucket) -> dict[str, bytes]:
    # Sizes from 1 byte to 4 KiB, in 12 directories of 100 (the directories are synced once per bundle).
    contents = {f"vocab/d{i // 100:02d}/f{i:05d}.json": os.urandom(1 + (i * 53) % 4096) for i in range(FILES)}
    for key, data in contents.items():
        obstore.put(s3.store(bucket), key, data)
    return contents


def manifest_for(s3, bucket, endpoint) -> Manifest:
    return (
        Manifest.builder()
        .store("m", f"s3://{bucket}", **s3.manifest_options(endpoint))
        .prefix("m", "vocab/", to="/tok")
        .build()
    )


def clear_roots(cluster) -> None:
    for node in cluster.nodes:
        for child in node.root.iterdir():
            shutil.rmtree(child)


def assert_files(root, contents: dict[str, bytes]) -> None:
    for key, data in contents.items():
        assert localize("/tok/" + key.removeprefix("vocab/"), root).read_bytes() == data, (root.name, key)
    store = state_dir(root)
    leftovers = [p for p in root.rglob("*") if ".xfd" in p.name and store not in p.parents]
    assert leftovers == [], f"xfd's files beside the user's on {root.name}"


def test_small_files_travel_in_bundles_once_from_the_origin(cluster, s3, bucket, small_files, origin):
    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    plan = manifest.plan()
    assert len(plan.bundles) == 8 and plan.unit_count == 8, "1,200 files are 8 transfers of 150"
    origin.reset()
    report = manifest.distribute(plan=plan, progress=None)

    assert report.ok, report.summary()
    for node in cluster.nodes:
        assert_files(node.root, small_files)
    traffic = origin.traffic()
    assert traffic.get_bytes == plan.unique_bytes, "every byte from the origin once"
    assert traffic.get_requests == FILES, "one GET per object, once in the cluster"
    assert sum(n.peer_bytes for n in report.nodes) == (len(cluster.nodes) - 1) * plan.unique_bytes


def test_a_rerun_brings_back_deleted_small_files_from_a_peer(cluster, s3, bucket, small_files, origin):
    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    assert manifest.distribute(progress=None).ok
    lost_root = cluster.nodes[1].root
    lost = [f"vocab/d00/f{i:05d}.json" for i in (0, 7, 99)] + ["vocab/d11/f01199.json"]
    for key in lost:
        localize("/tok/" + key.removeprefix("vocab/"), lost_root).unlink()
    plan = manifest.plan()  # its listing is origin traffic too: counted apart
    origin.reset()
    report = manifest.distribute(plan=plan, progress=None)

    assert report.ok, report.summary()
    assert origin.traffic().get_bytes == 0, "the missing files came from peers"
    assert_files(lost_root, small_files)
    by_ip = {n.ip: n for n in report.nodes}
    others = [n for n in cluster.nodes if n.root != lost_root]
    assert all(by_ip[n.ip].peer_bytes == 0 for n in others), "the other nodes were all cache hits"


@pytest.mark.parametrize("fault", ["publish:abort@2", "chunk-recorded:abort@3"])
def test_a_node_killed_mid_bundle_damages_no_file_and_a_rerun_completes(
    cluster, s3, bucket, small_files, origin, fault
):
    """``publish``: the agent dies with its second bundle's members written and synced and their publish
    record on disk, before the renames; ``chunk-recorded``: right after its third bundle was published."""
    from xfd.runtime import describe_nodes

    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    plan = manifest.plan()
    victim = sorted(describe_nodes(), key=lambda n: n.ip)[1]
    with faults({victim.node_id: fault}):
        report = manifest.distribute(plan=plan, progress=None)

    assert report.lost_nodes == (victim.ip,), report.summary()
    assert report.ok, report.summary()
    for node in cluster.nodes:
        if node.ip != victim.ip:
            assert_files(node.root, small_files)
    victim_root = next(n.root for n in cluster.nodes if n.ip == victim.ip)
    shown = [p for p in victim_root.rglob("*.json") if not p.name.startswith(".")]
    for path in shown:  # whatever the killed node shows is whole
        key = "vocab/" + str(path.relative_to(victim_root / "tok"))
        assert path.read_bytes() == small_files[key], key

    origin.reset()
    rerun = manifest.distribute(plan=plan, progress=None)
    assert rerun.ok, rerun.summary()
    for node in cluster.nodes:
        assert_files(node.root, small_files)
    assert origin.traffic().get_bytes == 0, "the rerun takes what is missing from peers"
