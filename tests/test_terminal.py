"""The terminal progress bar: one bar of bytes on every node; nodes join it as their agents come up."""

from __future__ import annotations

from xfd.notebook.terminal import TqdmRenderer
from xfd.progress import NodeProgress, Snapshot


def snapshot(*nodes: NodeProgress) -> Snapshot:
    return Snapshot(elapsed_s=1.0, unique_bytes=100, origin_bytes=0, nodes=nodes)


def node(ip: str, done: int) -> NodeProgress:
    return NodeProgress(ip, ip, 100, done, done, 0, 0, 0, 0, (), "running")


def test_the_bar_counts_the_nodes_as_they_join(capsys):
    renderer = TqdmRenderer()
    renderer.update(snapshot())
    assert renderer._bar.desc == "xfd starting agents"
    renderer.update(snapshot(node("127.0.0.2", 40)))
    assert renderer._bar.desc == "xfd 1 node"
    renderer.update(snapshot(node("127.0.0.2", 100), node("127.0.0.3", 50)))
    assert renderer._bar.desc == "xfd 2 nodes"
    assert (renderer._bar.n, renderer._bar.total) == (150, 200)
    renderer.close(None)
