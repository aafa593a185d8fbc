"""The live notebook widget: overall bar, one row per node, the node x chunk map, failures in red.

Built from ipywidgets so its state lives in synced traits (a notebook saved after a run keeps the final
values; tests read them back). It only renders :class:`xfd.progress.Snapshot` objects; the model that
makes them lives in :mod:`xfd.progress`.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from xfd.formatting import counted, human_size
from xfd.progress import NodeProgress, Snapshot

# Colours of chunk states in the map (the "piece bar" of BitTorrent clients).
STATE_COLOURS = {
    "missing": "#e0e0e0",
    "inflight": "#f1ce63",
    "origin": "#f28e2b",
    "peer": "#4e79a7",
    "cache": "#59a14f",
    "failed": "#e15759",
}
# The map never draws more columns than this: thousands of chunks are grouped, each column showing
# the least advanced state among its chunks.
MAP_COLUMNS = 240
_ORDER = ["failed", "missing", "inflight", "origin", "peer", "cache"]


class DistributionWidget:
    """Renders snapshots in a notebook. ``widget`` is the ipywidgets box to display."""

    def __init__(self) -> None:
        import ipywidgets as widgets

        self._widgets = widgets
        self.header = widgets.HTML()
        self.overall = widgets.FloatProgress(
            min=0.0, max=1.0, value=0.0, bar_style="info", layout=widgets.Layout(width="100%")
        )
        self.nodes = widgets.VBox()
        self.chunk_map = widgets.HTML()
        self.failures = widgets.HTML()
        self.widget = widgets.VBox([self.header, self.overall, self.nodes, self.chunk_map, self.failures])
        self.widget.add_class("xfd-progress")
        self._rows: dict[str, tuple[Any, Any]] = {}
        self._started = time.monotonic()

    def update(self, snapshot: Snapshot) -> None:
        total, done = snapshot.total_bytes, snapshot.done_bytes
        self.overall.max = float(max(total, 1))
        self.overall.value = float(done)
        rate = snapshot.rate
        eta = (total - done) / rate if rate > 0 else float("inf")
        self.header.value = (
            f"<b>xfd</b>: {human_size(done)} / {human_size(total)} on {counted(len(snapshot.nodes), 'node')}, "
            f"{human_size(rate)}/s, ETA {'-' if eta == float('inf') else f'{eta:.0f} s'}; "
            f"origin {human_size(snapshot.origin_bytes)} for {human_size(snapshot.unique_bytes)} unique; "
            f"ideal {snapshot.ideal_s:.2f} s at the peak rates so far"
        )
        for node in snapshot.nodes:
            self._row(node, snapshot.transfer_s)
        if snapshot.chunk_states:
            self.chunk_map.value = chunk_map_html(snapshot)
        failures = [f"{n.ip}: {f}" for n in snapshot.nodes for f in n.failures]
        self.failures.value = "".join(f"<div style='color:#c00'>{escape(f)}</div>" for f in failures[-10:])

    def close(self, report: Any) -> None:
        if report is None:
            self.overall.bar_style = "danger"
            return
        self.overall.bar_style = "success" if report.ok else "danger"
        self.header.value += (
            f"<br><b>{'done' if report.ok else 'FAILED'}</b> in {escape(report.timing)}; origin "
            f"{report.origin_ratio:.2f}x of unique bytes"
        )
        if report.failures:
            self.failures.value += "".join(f"<div style='color:#c00'>{escape(f)}</div>" for f in report.failures)

    def _row(self, node: NodeProgress, elapsed: float) -> None:
        widgets = self._widgets
        if node.node_id not in self._rows:
            bar = widgets.FloatProgress(min=0.0, max=1.0, layout=widgets.Layout(width="40%"))
            label = widgets.HTML()
            self._rows[node.node_id] = (bar, label)
            self.nodes.children = (
                *self.nodes.children,
                widgets.HBox([widgets.HTML(f"<code>{escape(node.ip)}</code>"), bar, label]),
            )
        bar, label = self._rows[node.node_id]
        bar.max = float(max(node.total_bytes, 1))
        bar.value = float(node.done_bytes)
        bar.bar_style = {"done": "success", "lost": "danger", "failed": "danger"}.get(node.state, "info")
        rate = (node.origin_bytes + node.peer_bytes) / elapsed if elapsed > 0 else 0.0
        label.value = (
            f"{human_size(rate)}/s &middot; origin {human_size(node.origin_bytes)} &middot; peers "
            f"{human_size(node.peer_bytes)} &middot; cache {human_size(node.cache_bytes)} &middot; {escape(node.state)}"
        )


def chunk_map_html(snapshot: Snapshot) -> str:
    """One row per node, one column per chunk (or group of chunks), coloured by state, as inline SVG."""
    chunk_ids = sorted({c for states in snapshot.chunk_states.values() for c in states})
    if not chunk_ids:
        return ""
    columns = min(MAP_COLUMNS, len(chunk_ids))
    groups = [chunk_ids[i * len(chunk_ids) // columns : (i + 1) * len(chunk_ids) // columns] for i in range(columns)]
    cell_w, cell_h = max(2, 480 // columns), 10
    rects = []
    ips = {n.node_id: n.ip for n in snapshot.nodes}
    for row, (_, states) in enumerate(sorted(snapshot.chunk_states.items(), key=lambda kv: ips.get(kv[0], ""))):
        for column, group in enumerate(groups):
            present = [states[c] for c in group if c in states]
            state = min(present, key=_ORDER.index) if present else "missing"
            rects.append(
                f"<rect x='{column * cell_w}' y='{row * (cell_h + 2)}' width='{cell_w}' height='{cell_h}' "
                f"fill='{STATE_COLOURS[state]}'><title>{escape(state)}</title></rect>"
            )
    height = len(snapshot.chunk_states) * (cell_h + 2)
    legend = " ".join(f"<span style='color:{colour}'>&#9632;</span> {name}" for name, colour in STATE_COLOURS.items())
    return (
        f"<svg class='xfd-chunk-map' width='{columns * cell_w}' height='{height}'>{''.join(rects)}</svg>"
        f"<div style='font-size:smaller'>{legend}</div>"
    )
