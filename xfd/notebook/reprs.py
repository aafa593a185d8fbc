"""HTML tables for notebooks. Plain functions of the data; secrets are never rendered."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING

from xfd.manifest.stores import display_options
from xfd.manifest.units import human_size
from xfd.report import SHOWN_FAILURES, Report, counted

if TYPE_CHECKING:
    from xfd.manifest.model import Manifest
    from xfd.plan import Plan


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "") -> str:
    head = "".join(f"<th style='text-align:left'>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption style='text-align:left'><b>{escape(caption)}</b></caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def manifest_html(manifest: Manifest) -> str:
    stores = table(
        ["store", "url", "options"],
        [(n, s.url, ", ".join(f"{k}={v}" for k, v in display_options(s.options).items())) for n, s in manifest.stores.items()],
        "Stores",
    )
    artifacts = table(
        ["artifact", "store", "what", "to", "unpack"],
        [
            (a.display_name, a.store, getattr(a, "key", None) or f"{a.prefix} (prefix)", a.to,
             getattr(a, "unpack_destination", None) or "")
            for a in manifest.artifacts
        ],
        "Artifacts",
    )
    return f"<div class='xfd-manifest'>{stores}{artifacts}</div>"


def plan_html(plan: Plan) -> str:
    header = (
        f"<p><b>Plan</b>: {counted(len(plan.files), 'file')}, {counted(len(plan.objects), 'unique object')}, "
        f"{escape(human_size(plan.unique_bytes))}, {counted(plan.chunk_count, 'chunk')}{escape(plan._bundled())}</p>"
    )
    shown = [(f, plan.object(f.object_id)) for f in plan.files[:200]]
    files = table(
        ["artifact", "destination", "size", "chunks"],
        [(f.artifact, f.destination, human_size(o.size), len(o.chunks)) for f, o in shown],
    )
    more = f"<p>... and {len(plan.files) - 200} more files</p>" if len(plan.files) > 200 else ""
    return f"<div class='xfd-plan'>{header}{files}{more}</div>"


def report_html(report: Report) -> str:
    """The report as a table with a small bar per node: origin (orange), peers (blue), cache (green)."""
    total = max((n.origin_bytes + n.peer_bytes + n.cache_bytes for n in report.nodes), default=1) or 1
    rows = []
    for node in sorted(report.nodes, key=lambda n: n.ip):
        bar = "".join(
            f"<span style='display:inline-block;height:10px;width:{160 * part / total:.0f}px;background:{color}'>"
            "</span>"
            for part, color in ((node.origin_bytes, "#f28e2b"), (node.peer_bytes, "#4e79a7"),
                                (node.cache_bytes, "#59a14f"))
        )
        seconds = f"{node.seconds:.2f} s" if node.seconds is not None else "-"
        rows.append(
            f"<tr><td>{escape(node.ip)}</td><td>{escape(node.state)}</td><td>{bar}</td>"
            f"<td>{escape(human_size(node.origin_bytes))}</td><td>{escape(human_size(node.peer_bytes))}</td>"
            f"<td>{escape(human_size(node.cache_bytes))}</td><td>{escape(seconds)}</td></tr>"
        )
    status = "ok" if report.ok else "<span style='color:#c00'>FAILED</span>"
    head = (
        f"<p><b>Distribution {status}</b>: {counted(len(report.nodes), 'node')}, "
        f"{escape(human_size(report.unique_bytes))} unique; origin served {escape(human_size(report.origin_bytes))} "
        f"({report.origin_ratio:.2f}x); {escape(report.timing)}</p>"
    )
    failures = "".join(f"<p style='color:#c00'>{escape(f)}</p>" for f in report.failures[:SHOWN_FAILURES])
    if len(report.failures) > SHOWN_FAILURES:
        failures += f"<p style='color:#c00'>... and {len(report.failures) - SHOWN_FAILURES} more</p>"
    table = ("<table><thead><tr><th>node</th><th>state</th><th>origin / peers / cache</th><th>origin</th>"
             "<th>peers</th><th>cache</th><th>time</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return f"<div class='xfd-report'>{head}{table}{failures}</div>"
