"""The simulated multi-node cluster: distinct nodes, distinct addresses, distinct roots."""

from __future__ import annotations

import os
from pathlib import Path

import obstore
import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from xfd.nodes import localize
from xfd.runtime import describe_nodes
from xfd.runtime.cluster_nodes import this_node

pytestmark = pytest.mark.cluster


def test_every_node_reports_its_own_id_ip_and_root(cluster):
    infos = describe_nodes()
    assert len(infos) == cluster.num_nodes == 4
    assert sorted(i.ip for i in infos) == [n.ip for n in cluster.nodes]
    assert len({i.node_id for i in infos}) == 4
    by_ip = {n.ip: n.root for n in cluster.nodes}
    for info in infos:
        assert info.root == by_ip[info.ip]
        assert info.root.is_dir()


def test_the_same_destination_lands_in_each_nodes_own_root(cluster):
    @ray.remote(num_cpus=0)
    def write_here(destination: str) -> str:
        node = this_node()
        path = localize(destination, node.root)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(node.node_id)
        return str(path)

    infos = describe_nodes()
    refs = [
        write_here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(i.node_id, soft=False)).remote(
            "/models/owner.txt"
        )
        for i in infos
    ]
    paths = ray.get(refs)
    assert len(set(paths)) == 4
    for info, path in zip(infos, paths, strict=True):
        assert path == str(info.root / "models" / "owner.txt")
        assert Path(path).read_text() == info.node_id


def test_naive_download_costs_the_origin_one_copy_per_node(cluster, s3, bucket, origin):
    from support.baseline import download_on_every_node

    data = os.urandom(2 * 1024 * 1024 + 3)
    obstore.put(s3.store(bucket), "blob.bin", data)
    results = download_on_every_node(s3.store(bucket, endpoint=origin.endpoint), "blob.bin", "/data/blob.bin")

    assert sorted(r.node.ip for r in results) == [n.ip for n in cluster.nodes]
    for result in results:
        assert result.path.read_bytes() == data
        assert not [p for p in result.path.parent.iterdir() if p.name.endswith(".part")]
    assert origin.traffic().get_bytes == len(data) * cluster.num_nodes
