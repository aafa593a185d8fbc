"""The result of a distribution: per node and in total, and how close it came to the lower bound."""

from __future__ import annotations

import attrs

from xfd.manifest.units import human_size


@attrs.frozen
class NodeReport:
    node_id: str
    ip: str
    origin_bytes: int
    peer_bytes: int
    cache_bytes: int
    served_bytes: int
    seconds: float | None
    """Time from the start of the run until this node held everything (None: it never did)."""
    state: str
    """done | lost | failed"""
    failures: tuple[str, ...] = ()


@attrs.frozen
class Report:
    """What a distribution did. ``ok`` is true when every surviving node holds every file."""

    nodes: tuple[NodeReport, ...]
    unique_bytes: int
    origin_bytes: int
    origin_refetches: int
    wall_seconds: float
    t_min_seconds: float
    rates: dict[str, float]
    lost_nodes: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()
    unpacked: int = 0
    startup_seconds: float = 0.0
    """Part of ``wall_seconds`` spent before the first transfer could start: starting one agent per node
    (a Ray actor each) and learning what every node already holds."""

    @property
    def ok(self) -> bool:
        survivors = [n for n in self.nodes if n.state != "lost"]
        return bool(survivors) and not self.failures and all(n.state == "done" for n in survivors)

    @property
    def origin_ratio(self) -> float:
        """Origin bytes / unique bytes: 1.00 means every byte came from the origin exactly once."""
        return self.origin_bytes / self.unique_bytes if self.unique_bytes else 0.0

    @property
    def efficiency(self) -> float:
        """T_min / wall time (see :func:`lower_bound`)."""
        return self.t_min_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"{'ok' if self.ok else 'FAILED'}: {len(self.nodes)} nodes, {human_size(self.unique_bytes)} unique, "
            f"origin served {human_size(self.origin_bytes)} ({self.origin_ratio:.2f}x), "
            f"{self.wall_seconds:.2f} s (lower bound {self.t_min_seconds:.2f} s, efficiency {self.efficiency:.2f})",
        ]
        for node in sorted(self.nodes, key=lambda n: n.ip):
            seconds = f"{node.seconds:.2f} s" if node.seconds is not None else "-"
            lines.append(
                f"  {node.ip:<15} {node.state:<6} origin {human_size(node.origin_bytes):>10}  "
                f"peers {human_size(node.peer_bytes):>10}  cache {human_size(node.cache_bytes):>10}  "
                f"served {human_size(node.served_bytes):>10}  {seconds}"
            )
        if self.lost_nodes:
            lines.append(f"  lost nodes: {', '.join(self.lost_nodes)}")
        if self.origin_refetches:
            lines.append(f"  {self.origin_refetches} chunks fetched from the origin again (their holders were lost"
                         " or served bad bytes)")
        lines += [f"  failure: {f}" for f in self.failures[:10]]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        from xfd.notebook.reprs import report_html

        return report_html(self)


def lower_bound(unique_bytes: int, nodes: int, rates: dict[str, float]) -> float:
    """T_min = max(F/u_origin, F/d_node, N*F/(u_origin + N*u_node)) with the peak rates measured in the run.

    F: unique bytes every node needs; N: nodes; u_origin: origin egress; d_node / u_node: a node's
    download / upload rate. No schedule can beat it: the origin must send F once, every node must
    receive F, and all N*F bytes received must be sent by the origin or a node.
    """
    if unique_bytes == 0 or nodes == 0:
        return 0.0
    u_origin, d_node = rates.get("origin", 0.0), rates.get("node_download", 0.0)
    u_node = rates.get("node_upload", 0.0)
    bounds = [0.0]
    if u_origin > 0:
        bounds.append(unique_bytes / u_origin)
    if d_node > 0:
        bounds.append(unique_bytes / d_node)
    if u_origin + nodes * u_node > 0:
        bounds.append(nodes * unique_bytes / (u_origin + nodes * u_node))
    return max(bounds)
