"""How xfd shows things to people: sizes, counts, values in messages, HTML tables.

The lowest layer (beside :mod:`xfd.errors`): the manifest, the plan, the report and the renderers all format
with these, so they import nothing of xfd. The size *syntax* a manifest accepts (``64MiB``) is
:mod:`xfd.manifest.units`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape


def human_size(size: float) -> str:
    """Approximate, for display: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def counted(count: int, noun: str) -> str:
    """``1 node``, ``2 nodes``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def shown(value: object) -> str:
    """``repr(value)`` for a message; never fails (``repr`` refuses integers of over 4300 digits)."""
    try:
        return repr(value)
    except ValueError:
        return f"{type(value).__name__} too large to show"


def html_table(headers: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "") -> str:
    """A plain HTML table for notebook reprs; every cell is escaped."""
    head = "".join(f"<th style='text-align:left'>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption style='text-align:left'><b>{escape(caption)}</b></caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
