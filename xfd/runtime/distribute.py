"""``Manifest.distribute()``: plan, start agents on the chosen nodes, run, report.

Embedded default: with no Ray running, a local Ray starts (one node, this machine); with
``address="auto"``, an address, or ``RAY_ADDRESS`` set, xfd joins that cluster. The same call works on
a laptop and on a hundred nodes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import ray

from xfd.errors import ConfigError, XfdError
from xfd.progress import Snapshot
from xfd.report import Report
from xfd.runtime.cluster_nodes import alive_nodes
from xfd.runtime.coordinator import Coordinator

if TYPE_CHECKING:
    from xfd.manifest.model import Manifest
    from xfd.plan import Plan

# A local Ray started by xfd claims this much shared memory: xfd moves files, not Ray objects, so
# Ray's default (30% of RAM) would only take memory from the user's work.
LOCAL_OBJECT_STORE_BYTES = 256 << 20


def ensure_ray(address: str | None = None) -> None:
    """Connects to Ray: the running session, ``address`` / ``RAY_ADDRESS``, or a new local instance."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False, logging_level="WARNING")


def select_nodes(nodes: Iterable[str] | Mapping[str, str] | None) -> list[str]:
    """Node ids to distribute to: all alive nodes, the given ids, or those whose Ray labels match."""
    alive = alive_nodes()
    if nodes is None:
        return [n["NodeID"] for n in alive]
    if isinstance(nodes, Mapping):
        chosen = [n["NodeID"] for n in alive if all(n.get("Labels", {}).get(k) == v for k, v in nodes.items())]
        if not chosen:
            raise ConfigError(f"no alive node has the labels {dict(nodes)}")
        return chosen
    wanted = list(nodes)
    known = {n["NodeID"] for n in alive}
    if missing := [n for n in wanted if n not in known]:
        raise ConfigError(f"not alive Ray nodes: {', '.join(missing)}")
    return wanted


def distribute(
    manifest: Manifest,
    *,
    wait: bool = True,
    address: str | None = None,
    nodes: Iterable[str] | Mapping[str, str] | None = None,
    progress: str | Callable[[Snapshot], None] | None = "auto",
    deep_verify: bool = False,
    timeout: float | None = None,
    plan: Plan | None = None,
    faults: Mapping[str, str] | None = None,
) -> Report | Distribution:
    """Puts every artifact of ``manifest`` on the chosen nodes; see :meth:`xfd.Manifest.distribute`."""
    ensure_ray(address)
    plan = plan or manifest.plan()
    node_ids = select_nodes(nodes)
    distribution = Distribution(manifest, plan, node_ids, progress=progress, deep_verify=deep_verify,
                                timeout=timeout, faults=faults)
    if wait:
        return distribution.wait()
    return distribution


class Distribution:
    """A distribution running in the background (``distribute(wait=False)``).

    ``wait()`` returns the :class:`~xfd.report.Report`; ``cancel()`` stops it; ``snapshot`` is the latest
    progress; iterating over :meth:`snapshots` yields progress as it happens.
    """

    def __init__(self, manifest: Manifest, plan: Plan, node_ids: list[str], *,
                 progress: str | Callable[[Snapshot], None] | None, deep_verify: bool,
                 timeout: float | None, faults: Mapping[str, str] | None) -> None:
        self.plan = plan
        self.snapshot: Snapshot | None = None
        self._changed = threading.Condition()
        self._report: Report | None = None
        self._error: BaseException | None = None
        self._renderer = _renderer(progress, plan)
        self._cancel = threading.Event()
        self._coordinator = Coordinator(plan, manifest.stores, node_ids=node_ids, deep_verify=deep_verify,
                                        timeout_s=timeout, on_progress=self._on_progress, faults=faults,
                                        cancel=self._cancel)
        self._thread = threading.Thread(target=self._run, name="xfd-distribute", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> Report:
        """Blocks until the distribution ends and returns its report (re-raises its error)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the distribution is still running after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._report is not None
        return self._report

    def cancel(self) -> None:
        """Asks the distribution to stop; :meth:`wait` then raises ``DistributionCancelled``."""
        self._cancel.set()

    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def widget(self) -> Any:
        """The notebook widget showing this distribution, if it renders to one."""
        from xfd.notebook.widget import DistributionWidget

        return self._renderer.widget if isinstance(self._renderer, DistributionWidget) else None

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget if self.widget is not None else repr(self))

    def snapshots(self, timeout: float | None = None) -> Iterator[Snapshot]:
        """Yields each new progress snapshot until the distribution ends."""
        last = None
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self.snapshot is not last or self.done(), timeout)
                current = self.snapshot
            if current is not None and current is not last:
                last = current
                yield current
            if self.done():
                return

    def _on_progress(self, snapshot: Snapshot) -> None:
        with self._changed:
            self.snapshot = snapshot
            self._changed.notify_all()
        if self._renderer is not None:
            self._renderer.update(snapshot)

    def _run(self) -> None:
        try:
            self._report = self._coordinator.run()
        except BaseException as error:  # noqa: BLE001 - handed to the caller of wait()
            self._error = error
        finally:
            if self._renderer is not None:
                self._renderer.close(self._report)
            with self._changed:
                self._changed.notify_all()


def _renderer(progress: str | Callable[[Snapshot], None] | None, plan: Plan) -> Any:
    if progress is None or progress == "none":
        return None
    if callable(progress):
        return _CallbackRenderer(progress)
    if progress == "widget" or (progress == "auto" and _in_notebook()):
        return _widget_renderer(progress)
    if progress in ("auto", "tqdm"):
        from xfd.notebook.terminal import TqdmRenderer

        return TqdmRenderer()
    raise ConfigError(f"progress must be 'auto', 'widget', 'tqdm', 'none', None or a callable, got {progress!r}")


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where widgets can be shown)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def _widget_renderer(progress: str) -> Any:
    try:
        from xfd.notebook.widget import DistributionWidget
    except ImportError as error:
        if progress == "widget":
            raise ConfigError("the progress widget needs ipywidgets: pip install 'xfd[notebook]'") from error
        from xfd.notebook.terminal import TqdmRenderer

        return TqdmRenderer()  # tqdm falls back to text without widgets
    from IPython.display import display

    widget = DistributionWidget()
    display(widget.widget)
    return widget


class _CallbackRenderer:
    def __init__(self, callback: Callable[[Snapshot], None]) -> None:
        self.callback = callback

    def update(self, snapshot: Snapshot) -> None:
        self.callback(snapshot)

    def close(self, report: Report | None) -> None:
        pass


__all__ = ["Distribution", "XfdError", "distribute", "ensure_ray", "select_nodes"]
