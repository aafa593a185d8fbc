"""``Manifest.distribute()``: plan, start agents on the chosen nodes, run, report.

``distribute(manifest)`` waits and returns the :class:`~xfd.report.Report`; ``distribute(manifest,
wait=False)`` returns a running :class:`Distribution` at once. One rule for failures, on every path (this
call, ``xfd.Manifest.distribute``, the CLI, :mod:`xfd.xenna`): a run that ends without every surviving
node holding every file raises :class:`~xfd.errors.DistributionError` carrying the report, unless
``raise_on_failure=False`` asks for the failed report instead; a cancelled run raises
:class:`~xfd.errors.DistributionCancelled`.

Ray is reached exactly as a Ray script reaches it: the running session, ``address`` / ``RAY_ADDRESS``,
the cluster ``ray start`` started on this machine, else a new local Ray with Ray's own defaults. The
same call works on a laptop and on a hundred nodes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, overload

import ray

from xfd.errors import ConfigError, DistributionCancelled, DistributionError, XfdError
from xfd.plan import Plan, compile_plan, selector_matches
from xfd.progress import Snapshot
from xfd.report import Report
from xfd.runtime.cluster_nodes import alive_nodes
from xfd.runtime.coordinator import INJECTED_FAULTS, Coordinator, give_back_agents, take_agents
from xfd.runtime.follow import Follower
from xfd.runtime.telemetry import check_event_log

if TYPE_CHECKING:
    from xfd.manifest.model import Manifest

NodeChoice: TypeAlias = "Iterable[str] | Mapping[str, str] | None"
"""Node ids, a dict of Ray labels every chosen node must have, or None for every alive node."""
Progress: TypeAlias = "str | Callable[[Snapshot], None] | None"
"""``"auto"``, ``"widget"``, ``"tqdm"``, ``"none"`` / None, or a callable given each snapshot."""

# After an interrupt, how long to wait for the agents to stop before handing the interrupt on anyway.
STOP_AFTER_INTERRUPT_S = 30.0


def ensure_ray(address: str | None = None) -> None:
    """Connects to Ray as a Ray script does, by Ray's own rules: the running session, else ``address``,
    ``RAY_ADDRESS``, or the cluster the last ``ray start`` on this machine started, else a new local Ray.

    Nothing of xfd's own is passed: a Ray that starts here belongs to the user's process (their tasks
    run in it after the distribution), so it gets Ray's defaults, as their own ``ray.init()`` would
    give it. Only where xfd owns the cluster (``xfd demo``, :class:`~xfd.runtime.LocalCluster`) does it
    choose settings.
    """
    if not ray.is_initialized():
        ray.init(address=address)


def select_nodes(nodes: NodeChoice) -> list[str]:
    """Node ids to distribute to: all alive nodes, the given ids, or those whose Ray labels match."""
    return [n["NodeID"] for n in _chosen_nodes(nodes)]


def _chosen_nodes(nodes: NodeChoice) -> list[dict[str, Any]]:
    alive = alive_nodes()
    if nodes is None:
        return alive
    if isinstance(nodes, Mapping):
        chosen = [n for n in alive if _has_labels(n, nodes)]
        if not chosen:
            raise ConfigError(f"no alive node has the labels {dict(nodes)}")
        return chosen
    wanted = list(nodes)
    by_id = {n["NodeID"]: n for n in alive}
    if missing := [n for n in wanted if n not in by_id]:
        raise ConfigError(f"not alive Ray nodes: {', '.join(missing)}")
    return [by_id[n] for n in wanted]


def _has_labels(node: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    return selector_matches(labels, node.get("Labels", {}))


def choose_nodes(manifest: Manifest, nodes: NodeChoice) -> list[str]:
    """:func:`select_nodes`, then :func:`check_node_selectors` against the chosen nodes."""
    chosen = _chosen_nodes(nodes)
    check_node_selectors(manifest, chosen)
    return [n["NodeID"] for n in chosen]


def check_node_selectors(manifest: Manifest, nodes: list[dict[str, Any]]) -> None:
    """Refuses artifacts whose ``nodes`` selector matches none of the chosen nodes: a typo in a label
    would otherwise ship nothing and report success."""
    problems = []
    for index, artifact in enumerate(manifest.artifacts):
        if artifact.nodes and not any(_has_labels(node, artifact.nodes) for node in nodes):
            wanted = ", ".join(f'"{k}": "{v}"' for k, v in artifact.nodes.items())
            problems.append(
                f"artifacts[{index}] ({artifact.display_name}): no node of the {len(nodes)} chosen "
                f"has the labels {{{wanted}}}"
            )
    if problems:
        known = sorted(
            {f"{k}={v}" for node in nodes for k, v in node.get("Labels", {}).items() if not k.startswith("ray.io/")}
        )
        raise ConfigError(
            "\n".join(
                [
                    *problems,
                    f"labels the chosen nodes have: {', '.join(known) or 'none'}; "
                    "fix the artifact's `nodes` (or label the nodes: ray start --labels)",
                ]
            )
        )


@overload
def distribute(
    manifest: Manifest,
    *,
    wait: Literal[True] = True,
    address: str | None = None,
    nodes: NodeChoice = None,
    progress: Progress = "auto",
    deep_verify: bool = False,
    timeout: float | None = None,
    plan: Plan | None = None,
    raise_on_failure: bool = True,
    event_log: str | os.PathLike[str] | None = None,
) -> Report: ...


@overload
def distribute(
    manifest: Manifest,
    *,
    wait: Literal[False],
    address: str | None = None,
    nodes: NodeChoice = None,
    progress: Progress = "auto",
    deep_verify: bool = False,
    timeout: float | None = None,
    plan: Plan | None = None,
    raise_on_failure: bool = True,
    event_log: str | os.PathLike[str] | None = None,
    follow: bool = False,
) -> Distribution: ...


@overload
def distribute(
    manifest: Manifest,
    *,
    wait: bool,
    address: str | None = None,
    nodes: NodeChoice = None,
    progress: Progress = "auto",
    deep_verify: bool = False,
    timeout: float | None = None,
    plan: Plan | None = None,
    raise_on_failure: bool = True,
    event_log: str | os.PathLike[str] | None = None,
    follow: bool = False,
) -> Report | Distribution: ...


def distribute(
    manifest: Manifest,
    *,
    wait: bool = True,
    address: str | None = None,
    nodes: NodeChoice = None,
    progress: Progress = "auto",
    deep_verify: bool = False,
    timeout: float | None = None,
    plan: Plan | None = None,
    raise_on_failure: bool = True,
    event_log: str | os.PathLike[str] | None = None,
    follow: bool = False,
) -> Report | Distribution:
    """Puts every artifact of ``manifest`` on the chosen nodes; see :meth:`xfd.Manifest.distribute`."""
    _check_follow(follow, wait, nodes)
    log_path = check_event_log(event_log)  # before any node starts: a path that cannot be written fails now
    ensure_ray(address)
    node_ids = choose_nodes(manifest, nodes)  # before planning: a wrong label fails at once, not after listing
    # Agents start while the stores are listed: a first run's agents take seconds to come up (a new Ray
    # worker each), and planning a large prefix takes seconds too.
    agents = take_agents(node_ids, INJECTED_FAULTS.get())
    try:
        plan = plan or compile_plan(manifest)
    except BaseException:
        give_back_agents(agents)
        raise
    distribution = Distribution(
        manifest,
        plan,
        node_ids,
        progress=progress,
        deep_verify=deep_verify,
        timeout=timeout,
        raise_on_failure=raise_on_failure,
        event_log=log_path,
        agents=agents,
        follow=_chooser(nodes) if follow else None,
    )
    if wait:
        return distribution.wait()
    return distribution


def _check_follow(follow: bool, wait: bool, nodes: NodeChoice) -> None:
    if not follow:
        return
    if wait:
        raise ConfigError(
            "follow=True keeps the distribution running after the call returns: pass wait=False as well, "
            "keep the Distribution it returns, and call its stop_following() when new nodes need no more"
        )
    if nodes is not None and not isinstance(nodes, Mapping):
        raise ConfigError(
            "follow=True brings nodes that join the cluster up to date; a list of node ids names no node "
            "that has yet to join: choose nodes by labels (nodes={...}) or leave nodes=None for every node"
        )


def _chooser(nodes: NodeChoice) -> Callable[[], list[str]]:
    """The ids of the nodes ``nodes`` chooses at the time of the call (none while none matches)."""

    def chosen() -> list[str]:
        try:
            return select_nodes(nodes)
        except ConfigError:
            return []

    return chosen


class Distribution:
    """A distribution running in the background (``distribute(wait=False)``).

    ``wait()`` returns the :class:`~xfd.report.Report`; ``cancel()`` stops it; ``snapshot`` is the latest
    progress; iterating over :meth:`snapshots` yields progress as it happens.
    """

    def __init__(
        self,
        manifest: Manifest,
        plan: Plan,
        node_ids: list[str],
        *,
        progress: Progress,
        deep_verify: bool,
        timeout: float | None,
        raise_on_failure: bool = True,
        event_log: Path | None = None,
        agents: Mapping[str, tuple[Any, bool]] | None = None,
        follow: Callable[[], list[str]] | None = None,
    ) -> None:
        self.plan = plan
        self.raise_on_failure = raise_on_failure
        self._follower = Follower(plan, manifest.stores, follow, deep_verify, timeout, event_log) if follow else None
        self.snapshot: Snapshot | None = None
        self._changed = threading.Condition()
        self._report: Report | None = None
        self._error: BaseException | None = None
        self._renderer = _renderer(progress, plan)
        self._cancel = threading.Event()
        # Waited on instead of Thread.join: an interrupt inside join() (Python 3.11's bpo-45274 handling)
        # marks the still-running thread as finished, and every later join() returns at once.
        self._finished = threading.Event()
        self._coordinator = Coordinator(
            plan,
            manifest.stores,
            node_ids=node_ids,
            deep_verify=deep_verify,
            timeout_s=timeout,
            on_progress=self._on_progress,
            cancel=self._cancel,
            with_chunks=self.widget is not None,
            event_log=event_log,
            agents=agents,
            new_nodes=follow,
        )
        self._thread = threading.Thread(target=self._run, name="xfd-distribute", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> Report:
        """Blocks until the distribution ends and returns its report. A failed run raises
        :class:`~xfd.errors.DistributionError` carrying the report (unless ``raise_on_failure=False`` was
        given, then the failed report is returned); any other error of the run is re-raised.

        An interrupt while waiting (Ctrl-C, a notebook's "interrupt kernel") cancels the distribution:
        transfers stop, nothing partial is published, and the ``KeyboardInterrupt`` reaches the caller
        once the agents have let go of their destinations, so the next run can start at once.
        """
        try:
            finished = self._finished.wait(timeout)
        except KeyboardInterrupt:
            self.cancel()
            self._wait_after_interrupt()
            raise
        if not finished:
            raise TimeoutError(f"the distribution is still running after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._report is not None
        if self.raise_on_failure and not self._report.ok:
            raise DistributionError(self._report)
        return self._report

    def _wait_after_interrupt(self) -> None:
        # The coordinator sees the cancel within one loop step and stops every agent. A second interrupt
        # while it does so leaves at once (the agents end with the driver if it exits).
        try:
            self._finished.wait(STOP_AFTER_INTERRUPT_S)
        except KeyboardInterrupt:
            pass

    def cancel(self) -> None:
        """Asks the distribution to stop; :meth:`wait` then raises :class:`~xfd.errors.DistributionCancelled`.
        A distribution that follows the cluster stops following too."""
        self._cancel.set()
        if self._follower is not None:
            self._follower.stop(wait=False)

    @property
    def following(self) -> bool:
        """Whether this distribution still brings nodes that join the cluster up to date (``follow=True``)."""
        return self._follower is not None and self._follower.running

    @property
    def catch_ups(self) -> list[Report]:
        """The report of each run that brought nodes which joined after this distribution up to date."""
        return list(self._follower.reports) if self._follower is not None else []

    def stop_following(self, timeout: float | None = STOP_AFTER_INTERRUPT_S) -> None:
        """Stops bringing new nodes up to date; a catch-up run in progress is cancelled (nothing partial is
        published). Waits up to ``timeout`` seconds for it to end."""
        if self._follower is not None:
            self._follower.stop(wait=True, timeout=timeout)

    def done(self) -> bool:
        return self._finished.is_set()

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
                self._changed.wait_for(lambda last=last: self.snapshot is not last or self.done(), timeout)
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
                self._finished.set()
                self._changed.notify_all()
        if self._follower is not None:
            if self._report is None:
                self._follower.stop(wait=False)  # cancelled or broken: nothing to follow from
            self._follower.follow({n.node_id for n in self._report.nodes} if self._report else set())


def _renderer(progress: Progress, plan: Plan) -> Any:
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


__all__ = [
    "Distribution",
    "DistributionCancelled",
    "Follower",
    "DistributionError",
    "NodeChoice",
    "Progress",
    "XfdError",
    "check_node_selectors",
    "choose_nodes",
    "distribute",
    "ensure_ray",
    "select_nodes",
]
