"""The result of a distribution, per node and in total, and how close its transfers came to the ideal
time at the rates the run itself reached (an estimate, not a bound: see ``ideal_seconds`` in
``rust/xfd-core/src/control/progress.rs``)."""

from __future__ import annotations

from html import escape

import attrs

from xfd.formatting import counted, human_size

# Efficiency is reported only for runs whose transfers took at least this long. Shorter ones are made of
# a few bursts, each measured over its own length, and of per-run overhead (dispatch, publish, stopping
# agents): their ratio says nothing about how well the links were used.
MIN_MEASURED_S = 1.0
# Failures listed in the summary; the rest are counted.
SHOWN_FAILURES = 10


@attrs.frozen
class NodeReport:
    node_id: str
    ip: str
    origin_bytes: int
    """Bytes of the chunks this node received from the origin."""
    peer_bytes: int
    cache_bytes: int
    served_bytes: int
    seconds: float | None
    """Time from the start of the run until this node held everything (None: it never did)."""
    state: str
    """done | lost | failed"""
    failures: tuple[str, ...] = ()
    agent_seconds: float | None = None
    """Time from the start of the run until this node's agent was up and the node joined the run (None:
    it never did). Nodes join one by one, as their agents come up; none waits for the slowest."""


@attrs.frozen(repr=False)
class Report:
    """What a distribution did. ``ok`` is true when every surviving node holds every file.

    ``repr`` is one line; ``str(report)`` (or :meth:`summary`) has a line per node, ``attrs.asdict(report)``
    every field.
    """

    nodes: tuple[NodeReport, ...]
    unique_bytes: int
    origin_bytes: int
    """Bytes the origin served, as fetched: retries, refetches and chunks that never completed included."""
    origin_refetches: int
    wall_seconds: float
    ideal_seconds: float
    """The time the transfers would take if the origin and every node moved bytes all the time at the best
    rate each showed during the run: max(O / u_origin, max R_i / d_node, sum R_i / (u_origin + N u_node))
    over what the origin and each node had to move. An estimate, not a bound: a link never pushed to its
    capacity shows a lower rate, and the ideal grows with it."""
    rates: dict[str, float]
    lost_nodes: tuple[str, ...] = ()
    failures: tuple[str, ...] = attrs.field(default=(), converter=lambda reasons: tuple(dict.fromkeys(reasons)))
    """Why the run failed, each reason once (a reason can be reported by several paths)."""
    unpacked: int = 0
    startup_seconds: float = 0.0
    """Part of ``wall_seconds`` spent before the first transfer could start: until the first node's agent
    was up (a Ray actor, which scans what the node already holds). Each node's own time is its
    ``agent_seconds``."""

    @property
    def ok(self) -> bool:
        survivors = [n for n in self.nodes if n.state != "lost"]
        return bool(survivors) and not self.failures and all(n.state == "done" for n in survivors)

    @property
    def origin_ratio(self) -> float:
        """Origin bytes / unique bytes: 1.00 means every byte came from the origin exactly once."""
        return self.origin_bytes / self.unique_bytes if self.unique_bytes else 0.0

    @property
    def transfer_seconds(self) -> float:
        """Wall time after the agents started: transfers, publishing and unpacking."""
        return max(0.0, self.wall_seconds - self.startup_seconds)

    @property
    def efficiency(self) -> float | None:
        """``ideal_seconds / transfer_seconds``, at most 1.0; ``None`` when it measures nothing: the run
        failed, had nothing to transfer, or its transfers took less than ``MIN_MEASURED_S``."""
        if not self.ok or self.ideal_seconds <= 0 or self.transfer_seconds < MIN_MEASURED_S:
            return None
        # The ideal cannot exceed the transfer time (each of its terms is bytes that were moved, over rates
        # that were reached); rate windows can put it a hair above.
        return min(1.0, self.ideal_seconds / self.transfer_seconds)

    def summary(self) -> str:
        lines = [f"{self._headline()}, {self.timing}"]
        for node in sorted(self.nodes, key=lambda n: n.ip):
            seconds = f"{node.seconds:.2f} s" if node.seconds is not None else "-"
            agent = f" (agent up at {node.agent_seconds:.2f} s)" if node.agent_seconds is not None else ""
            lines.append(
                f"  {node.ip:<15} {node.state:<6} origin {human_size(node.origin_bytes):>10}  "
                f"peers {human_size(node.peer_bytes):>10}  cache {human_size(node.cache_bytes):>10}  "
                f"served {human_size(node.served_bytes):>10}  {seconds}{agent}"
            )
        if self.lost_nodes:
            lines.append(f"  lost {counted(len(self.lost_nodes), 'node')}: {', '.join(self.lost_nodes)}")
        if self.origin_refetches:
            lines.append(
                f"  {counted(self.origin_refetches, 'chunk')} fetched from the origin again (their "
                "holders were lost or served bad bytes)"
            )
        lines += [f"  failure: {f}" for f in self.failures[:SHOWN_FAILURES]]
        if len(self.failures) > SHOWN_FAILURES:
            lines.append(f"  ... and {counted(len(self.failures) - SHOWN_FAILURES, 'more failure')}")
        return "\n".join(lines)

    def _headline(self) -> str:
        ratio = f"{self.origin_ratio:.2f}x" if self.unique_bytes else "-"
        return (
            f"{'ok' if self.ok else 'FAILED'}: {counted(len(self.nodes), 'node')}, "
            f"{human_size(self.unique_bytes)} unique, origin served {human_size(self.origin_bytes)} ({ratio})"
        )

    @property
    def timing(self) -> str:
        """Wall time, the part spent starting agents, and the efficiency when there is one to measure."""
        timing = f"{self.wall_seconds:.2f} s"
        if self.startup_seconds > 0:
            timing += f" ({self.startup_seconds:.2f} s until the first agent was up)"
        if self.efficiency is not None:
            return (
                f"{timing}; efficiency {self.efficiency:.2f} against an ideal {self.ideal_seconds:.2f} s at "
                "the run's own peak rates"
            )
        if self.ok and self.ideal_seconds > 0:
            return f"{timing}; too short to measure efficiency"
        return timing

    def __repr__(self) -> str:
        return f"<Report {self._headline()}, {self.timing}>"

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        """The report as a table with a small bar per node: origin (orange), peers (blue), cache (green)."""
        status = "ok" if self.ok else "<span style='color:#c00'>FAILED</span>"
        head = (
            f"<p><b>Distribution {status}</b>: {counted(len(self.nodes), 'node')}, "
            f"{escape(human_size(self.unique_bytes))} unique; origin served {escape(human_size(self.origin_bytes))} "
            f"({self.origin_ratio:.2f}x); {escape(self.timing)}</p>"
        )
        failures = "".join(f"<p style='color:#c00'>{escape(f)}</p>" for f in self.failures[:SHOWN_FAILURES])
        if len(self.failures) > SHOWN_FAILURES:
            failures += f"<p style='color:#c00'>... and {len(self.failures) - SHOWN_FAILURES} more</p>"
        table = (
            "<table><thead><tr><th>node</th><th>state</th><th>origin / peers / cache</th><th>origin</th>"
            "<th>peers</th><th>cache</th><th>time</th></tr></thead><tbody>" + self._html_rows() + "</tbody></table>"
        )
        return f"<div class='xfd-report'>{head}{table}{failures}</div>"

    def _html_rows(self) -> str:
        total = max((n.origin_bytes + n.peer_bytes + n.cache_bytes for n in self.nodes), default=1) or 1
        rows = []
        for node in sorted(self.nodes, key=lambda n: n.ip):
            bar = "".join(
                f"<span style='display:inline-block;height:10px;width:{160 * part / total:.0f}px;background:{color}'>"
                "</span>"
                for part, color in (
                    (node.origin_bytes, "#f28e2b"),
                    (node.peer_bytes, "#4e79a7"),
                    (node.cache_bytes, "#59a14f"),
                )
            )
            seconds = f"{node.seconds:.2f} s" if node.seconds is not None else "-"
            rows.append(
                f"<tr><td>{escape(node.ip)}</td><td>{escape(node.state)}</td><td>{bar}</td>"
                f"<td>{escape(human_size(node.origin_bytes))}</td><td>{escape(human_size(node.peer_bytes))}</td>"
                f"<td>{escape(human_size(node.cache_bytes))}</td><td>{escape(seconds)}</td></tr>"
            )
        return "".join(rows)
