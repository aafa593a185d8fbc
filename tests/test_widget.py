"""The notebook widget, driven by snapshots: its traits are what a saved notebook shows."""

from __future__ import annotations

from xfd.notebook.widget import MAP_COLUMNS, STATE_COLOURS, DistributionWidget, chunk_map_html
from xfd.progress import NodeProgress, Snapshot


def snapshot(done: int, states: dict[str, dict[str, str]], failures=()) -> Snapshot:
    nodes = tuple(
        NodeProgress(
            node_id=f"n{i}",
            ip=f"127.0.0.{i + 2}",
            total_bytes=100,
            done_bytes=done,
            origin_bytes=done // 2,
            peer_bytes=done - done // 2,
            cache_bytes=0,
            served_bytes=0,
            inflight=1,
            failures=tuple(failures),
            state="running",
        )
        for i in range(2)
    )
    return Snapshot(elapsed_s=2.0, unique_bytes=100, origin_bytes=done, nodes=nodes, chunk_states=states)


def test_traits_follow_the_snapshots():
    widget = DistributionWidget()
    widget.update(snapshot(40, {"n0": {"a": "origin", "b": "missing"}, "n1": {"a": "peer", "b": "inflight"}}))
    assert (widget.overall.value, widget.overall.max) == (80.0, 200.0)
    assert len(widget.nodes.children) == 2
    assert "origin 40 B for 100 B unique" in widget.header.value
    assert "ideal 0.00 s at the peak rates so far" in widget.header.value
    assert STATE_COLOURS["inflight"] in widget.chunk_map.value
    widget.update(
        snapshot(
            100,
            {"n0": {"a": "origin", "b": "peer"}, "n1": {"a": "peer", "b": "cache"}},
            failures=["peer 127.0.0.9:1 sent bad bytes"],
        )
    )
    assert widget.overall.value == widget.overall.max == 200.0
    assert len(widget.nodes.children) == 2, "rows are updated, never duplicated"
    assert "color:#c00" in widget.failures.value and "sent bad bytes" in widget.failures.value


def test_thousands_of_chunks_are_grouped_into_a_bounded_map():
    states = {f"n{i}": {f"c{j:05d}": ("origin" if j % 3 else "missing") for j in range(10_000)} for i in range(3)}
    html = chunk_map_html(snapshot(10, states))
    assert html.count("<rect") == 3 * MAP_COLUMNS
    assert STATE_COLOURS["missing"] in html  # a group shows its least advanced chunk
