"""HTML tables for notebooks. Plain functions of the data; secrets are never rendered."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING

from xfd.manifest.stores import display_options
from xfd.manifest.units import human_size

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
        f"<p><b>Plan</b>: {len(plan.files)} files, {len(plan.objects)} unique objects, "
        f"{escape(human_size(plan.unique_bytes))}, {plan.chunk_count} chunks</p>"
    )
    files = table(
        ["artifact", "destination", "size", "chunks"],
        [(f.artifact, f.destination, human_size(plan.object(f.object_id).size), len(plan.object(f.object_id).chunks))
         for f in plan.files[:200]],
    )
    more = f"<p>... and {len(plan.files) - 200} more files</p>" if len(plan.files) > 200 else ""
    return f"<div class='xfd-plan'>{header}{files}{more}</div>"
