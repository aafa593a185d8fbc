"""The user-facing :class:`Manifest` (``xfd.Manifest``): the declared manifest, plus what can be done with it.

The declaring layer (:mod:`xfd.manifest`) holds the data, its validation, the TOML format and the builder,
and imports nothing above it. This top-layer subclass adds the verbs that need the layers below it:
:meth:`Manifest.plan` (the plan layer), :meth:`Manifest.distribute` (the Ray runtime, imported on first
use so that ``import xfd`` never imports Ray), :meth:`Manifest.to_xenna` and the notebook view.
``Manifest.load`` / ``loads`` / ``builder`` return the class they are called on, so ``xfd.Manifest.load(...)``
returns this class.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, overload

import attrs

from xfd.formatting import html_table
from xfd.manifest import model
from xfd.manifest.stores import display_options
from xfd.plan import Plan, compile_plan

if TYPE_CHECKING:
    from xfd.report import Report
    from xfd.runtime.distribute import Distribution, NodeChoice, Progress
    from xfd.xenna import XennaRequests


@attrs.frozen(repr=False, eq=False)  # the declaring class's one-line repr and equality
class Manifest(model.Manifest):
    """What must be on every node: stores, artifacts and settings.

    Load one with :meth:`load` / :meth:`loads`, or build one with :meth:`builder`; then :meth:`plan` it or
    :meth:`distribute` it.
    """

    def plan(self, *, locked: bool = False, lock_path: str | None = None) -> Plan:
        """Resolves every object and prefix in the stores and compiles the chunk plan.

        ``locked=True`` compares what the stores hold now with the lock file (see :meth:`Plan.write_lock`)
        and fails if anything changed.
        """
        return compile_plan(self, locked=locked, lock_path=lock_path)

    @overload
    def distribute(
        self,
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
        self,
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
        self,
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
        self,
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
        """Puts every artifact on every node (or the chosen ones) of the Ray cluster and returns a Report.

        ``wait=False`` returns a :class:`~xfd.runtime.distribute.Distribution` at once instead (``wait()``
        gives the Report, ``cancel()``, ``snapshots()``). ``address``: a Ray cluster to join (default: the
        running one, ``RAY_ADDRESS``, or a new local Ray). ``nodes``: node ids, or a dict of Ray labels to
        match (default: all alive nodes). ``progress``: "auto", "widget", "tqdm", "none", or a callable taking
        snapshots. ``deep_verify``: re-hash cached files. ``timeout``: seconds. ``plan``: a plan compiled
        earlier. ``raise_on_failure`` (default True): a failed run raises
        :class:`~xfd.errors.DistributionError`, whose ``report`` says what each node did; False returns the
        failed report. Ctrl-C while waiting cancels the run and raises ``KeyboardInterrupt``;
        ``cancel()`` makes ``wait()`` raise :class:`~xfd.errors.DistributionCancelled`; an artifact whose
        ``nodes`` labels match no chosen node is a :class:`~xfd.errors.ConfigError`. ``follow=True`` (with
        ``wait=False``) keeps the cluster's chosen nodes up to date as it autoscales: nodes that join during
        the run join it, nodes that join later get the files from their peers, not from the origin, until
        ``stop_following()`` (see docs/runtime.md, "Nodes that join later"). Running ``distribute()`` again
        does the same once: new nodes are fed by the nodes that hold the files. ``event_log``: a file to
        append the run's events to, one JSON object per line (docs/metrics.md).
        """
        from xfd.runtime.distribute import distribute  # Ray is imported only when a run starts

        return distribute(
            self,
            wait=wait,
            address=address,
            nodes=nodes,
            progress=progress,
            deep_verify=deep_verify,
            timeout=timeout,
            plan=plan,
            raise_on_failure=raise_on_failure,
            event_log=event_log,
            follow=follow,
        )

    def to_xenna(self) -> XennaRequests:
        """Cosmos-Xenna ``download_requests`` and ``DistributedDownloadConfig`` for this manifest (needs the
        ``cosmos-xenna`` package); see :func:`xfd.xenna.to_xenna`."""
        from xfd.xenna import to_xenna

        return to_xenna(self)

    def _repr_html_(self) -> str:
        """The notebook's view: the stores (secrets shown as ``***``) and the artifacts."""
        stores = html_table(
            ["store", "url", "options"],
            [
                (n, s.url, ", ".join(f"{k}={v}" for k, v in display_options(s.options).items()))
                for n, s in self.stores.items()
            ],
            "Stores",
        )
        artifacts = html_table(
            ["artifact", "store", "what", "to", "unpack"],
            [
                (a.display_name, a.store, a.key, a.to, a.unpack_destination or "")
                if isinstance(a, model.ObjectArtifact)
                else (a.display_name, a.store, f"{a.prefix} (prefix)", a.to, "")
                for a in self.artifacts
            ],
            "Artifacts",
        )
        return f"<div class='xfd-manifest'>{stores}{artifacts}</div>"
