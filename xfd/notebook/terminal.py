"""Progress in a terminal (or a notebook, through tqdm's widget frontend): one overall bar."""

from __future__ import annotations

from typing import Any

from xfd.formatting import counted, human_size
from xfd.progress import Snapshot


class TqdmRenderer:
    """Renders snapshots as one tqdm bar of bytes placed on all nodes, with origin bytes in the postfix."""

    def __init__(self) -> None:
        self._bar: Any = None

    def update(self, snapshot: Snapshot) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=snapshot.total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=_description(snapshot),
                dynamic_ncols=True,
            )
        # Nodes join as their agents come up: the count grows during the run.
        self._bar.set_description_str(_description(snapshot), refresh=False)
        self._bar.total = snapshot.total_bytes
        self._bar.n = snapshot.done_bytes
        lost = sum(1 for n in snapshot.nodes if n.state == "lost")
        self._bar.set_postfix_str(
            f"origin {human_size(snapshot.origin_bytes)}/{human_size(snapshot.unique_bytes)}"
            + (f", {lost} lost" if lost else ""),
            refresh=False,
        )
        self._bar.refresh()

    def close(self, report: Any) -> None:
        if self._bar is not None:
            if report is not None and not report.ok and hasattr(self._bar, "colour"):
                self._bar.colour = "red"
            self._bar.close()


def _description(snapshot: Snapshot) -> str:
    return f"xfd {counted(len(snapshot.nodes), 'node')}" if snapshot.nodes else "xfd starting agents"
