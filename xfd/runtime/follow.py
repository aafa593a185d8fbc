"""Following the cluster: nodes that join after a distribution get its artifacts from their peers.

Ray clusters autoscale. ``distribute(wait=False, follow=True)`` keeps its plan after its run and looks at
the cluster every :data:`FOLLOW_EVERY_S` seconds; when chosen nodes joined that no run of it has seen, it
runs the same plan again on every chosen node (a *catch-up*). The nodes that already hold the files
answer from their caches (a stat per file, no byte read) and serve the newcomers, so the origin serves
nothing again; a node that lost a file meanwhile gets it back on the way. Nodes that join while a run is
going join that run (see :class:`~xfd.runtime.coordinator.Coordinator`'s ``new_nodes``).

The plan is kept, not made again: every node ends up with the same bytes, even if the store's objects
changed since (a changed object fails the catch-up loudly, as it would any run of that plan). A new
follower of the same plan (a notebook cell run again) replaces the old one: two would race for the same
new node's destinations.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from xfd.errors import DistributionCancelled
from xfd.manifest.model import Store
from xfd.plan import Plan
from xfd.report import Report
from xfd.runtime.coordinator import Coordinator

# How often a follower asks Ray for nodes that joined (one GCS call each time).
FOLLOW_EVERY_S = 5.0

log = logging.getLogger("xfd")

_FOLLOWERS: dict[str, Follower] = {}
_FOLLOWERS_LOCK = threading.Lock()


class Follower:
    """Brings chosen nodes that join the cluster up to date with one plan, until stopped."""

    def __init__(
        self,
        plan: Plan,
        stores: Mapping[str, Store],
        chosen: Callable[[], list[str]],
        deep_verify: bool = False,
        timeout_s: float | None = None,
        event_log: Path | None = None,
    ) -> None:
        self.plan = plan
        self.stores = dict(stores)
        self.chosen = chosen
        self.deep_verify = deep_verify
        self.timeout_s = timeout_s
        self.event_log = event_log  # each catch-up appends its events after the first run's
        self.reports: list[Report] = []
        self._stopped = threading.Event()
        self._cancel = threading.Event()  # cancels a catch-up in progress
        self._ended = threading.Event()
        self._key = hashlib.blake2b(plan.to_json().encode(), digest_size=16).hexdigest()
        with _FOLLOWERS_LOCK:
            previous = _FOLLOWERS.get(self._key)
            _FOLLOWERS[self._key] = self
        if previous is not None:
            previous.stop(wait=False)

    @property
    def running(self) -> bool:
        return not self._ended.is_set()

    def follow(self, seen: set[str]) -> None:
        """Runs until :meth:`stop`: every :data:`FOLLOW_EVERY_S` seconds, a catch-up if chosen nodes
        joined that are not in ``seen`` (the nodes of the first run's report)."""
        seen = set(seen)
        try:
            while not self._stopped.wait(FOLLOW_EVERY_S):
                now = self.chosen()
                if set(now) - seen:
                    report = self._catch_up(now)
                    if report is not None:
                        seen |= {node.node_id for node in report.nodes}
        finally:
            self._ended.set()
            with _FOLLOWERS_LOCK:
                if _FOLLOWERS.get(self._key) is self:
                    del _FOLLOWERS[self._key]

    def stop(self, *, wait: bool, timeout: float | None = None) -> None:
        self._stopped.set()
        self._cancel.set()
        if wait:
            self._ended.wait(timeout)

    def _catch_up(self, node_ids: list[str]) -> Report | None:
        coordinator = Coordinator(
            self.plan,
            self.stores,
            node_ids=node_ids,
            deep_verify=self.deep_verify,
            timeout_s=self.timeout_s,
            cancel=self._cancel,
            new_nodes=self.chosen,
            event_log=self.event_log,
        )
        try:
            report = coordinator.run()
        except DistributionCancelled:
            return None
        except Exception:  # the next look at the cluster tries again; the follower must not die of it
            log.exception("xfd: bringing new nodes up to date failed")
            return None
        self.reports.append(report)
        log.info("xfd: brought nodes up to date: %s", report.summary())
        return report
