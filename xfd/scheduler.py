"""The transfer scheduler: a pure state machine, no Ray, no I/O, no clock.

Inputs are facts (a node holds chunks, a transfer finished or failed, a node was lost); the output of
:meth:`Scheduler.next_transfers` is the transfers to start now. The runtime feeds it events from node
agents; tests and the scale simulator feed it modeled events. Policy:

- **Origin once, spread out.** A chunk nobody holds is fetched from the origin by exactly one node,
  within a cluster-wide origin limit; the node chosen is the one that has fetched the fewest chunks
  from the origin so far, so seeding is spread over the cluster instead of piling on one seeder.
- **Rarest first, least busy holder.** A node with a free download slot takes, among a bounded random
  sample of the chunks it lacks, the one with the fewest holders, and gets it from the holder with the
  fewest uploads in progress that has a free upload slot. Cache holders seed like anyone else.
- **Endgame.** When a node lacks only chunks already in flight and has free slots, it may ask a second
  holder for one of them (at most one duplicate per chunk); the first to finish wins and the runtime
  cancels the other.
- **Failures.** A failed transfer frees its slots and the chunk is wanted again; a peer that served
  bad bytes is penalized and, after ``max_penalties``, never used as a source again. A lost node's
  transfers are requeued; a chunk whose only holders are gone goes back to the origin (the only case
  where the origin serves a chunk twice; :attr:`Scheduler.origin_refetches` counts them).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Literal

import attrs

ORIGIN = "origin"
FailureKind = Literal["integrity", "peer", "origin", "fatal"]


@attrs.frozen
class Transfer:
    """Bring ``chunk`` to ``node`` from ``source`` (a node id, or :data:`ORIGIN`)."""

    chunk: str
    node: str
    source: str
    duplicate: bool = False

    @property
    def from_origin(self) -> bool:
        return self.source == ORIGIN


@attrs.define
class _Node:
    download_slots: int
    upload_slots: int
    wanting: set[str] = attrs.field(factory=set)
    """Chunks needed, not held, not in flight to this node."""
    inflight: dict[str, list[Transfer]] = attrs.field(factory=dict)
    downloads: int = 0
    uploads: int = 0
    origin_fetches: int = 0
    penalties: int = 0


class Scheduler:
    """Decides which chunk moves where. See the module docstring for the policy."""

    def __init__(
        self,
        chunks: Iterable[str],
        nodes: Iterable[str],
        *,
        origin_parallelism: int,
        download_slots: int,
        upload_slots: int,
        needs: Mapping[str, Iterable[str]] | None = None,
        sample_size: int = 64,
        max_penalties: int = 2,
        endgame: bool = True,
        seed: int = 0,
    ) -> None:
        self.chunks = list(dict.fromkeys(chunks))
        self.origin_parallelism = origin_parallelism
        self.sample_size = sample_size
        self.max_penalties = max_penalties
        self.endgame = endgame
        self._random = random.Random(seed)
        self.holders: dict[str, set[str]] = {c: set() for c in self.chunks}
        self.nodes: dict[str, _Node] = {}
        for node in nodes:
            wanted = set(self.chunks if needs is None else needs.get(node, ()))
            self.nodes[node] = _Node(download_slots, upload_slots, wanting=wanted)
        self.origin_busy = 0
        self.origin_inflight: set[str] = set()
        self.origin_refetches = 0
        self.failed_chunks: dict[str, str] = {}
        self.lost_nodes: list[str] = []
        self._origin_done: set[str] = set()
        self._active: set[Transfer] = set()

    # --- facts --------------------------------------------------------------------------------------

    def held(self, node: str, chunks: Iterable[str]) -> None:
        """``node`` holds ``chunks`` (a cache hit, a resumed part, or a finished transfer)."""
        state = self.nodes[node]
        for chunk in chunks:
            self.holders[chunk].add(node)
            state.wanting.discard(chunk)

    def finished(self, transfer: Transfer) -> list[Transfer]:
        """A transfer completed and verified. Returns the duplicates of it to cancel (endgame losers)."""
        self._release(transfer)
        state = self.nodes.get(transfer.node)
        losers = state.inflight.pop(transfer.chunk, []) if state else []
        losers = [t for t in losers if t != transfer]
        for loser in losers:
            self._release(loser)
        if transfer.from_origin:
            self._origin_done.add(transfer.chunk)
        if state is not None:
            self.held(transfer.node, [transfer.chunk])
        return losers

    def failed(self, transfer: Transfer, kind: FailureKind, reason: str = "") -> None:
        """A transfer failed. ``integrity``: the source served bad bytes; ``fatal``: retrying cannot help
        (the object changed at the origin, a destination is refused). A late report of a transfer that was
        already dropped or lost the endgame changes nothing."""
        if transfer not in self._active:
            return
        self._release(transfer)
        state = self.nodes.get(transfer.node)
        if state is None:
            return
        remaining = [t for t in state.inflight.get(transfer.chunk, []) if t != transfer]
        if remaining:
            state.inflight[transfer.chunk] = remaining
        else:
            state.inflight.pop(transfer.chunk, None)
        if kind == "integrity" and transfer.source in self.nodes:
            self.nodes[transfer.source].penalties += 1
        if kind == "fatal":
            self.failed_chunks[transfer.chunk] = reason or "failed"
            return
        if transfer.chunk not in state.inflight and transfer.node not in self.holders[transfer.chunk]:
            state.wanting.add(transfer.chunk)

    def node_lost(self, node: str) -> list[Transfer]:
        """``node`` is gone. Returns the transfers that were running from it or to it (to forget)."""
        state = self.nodes.pop(node, None)
        if state is None:
            return []
        self.lost_nodes.append(node)
        dropped = [t for transfers in state.inflight.values() for t in transfers]
        for transfer in dropped:
            self._release(transfer)
        for other in self.nodes.values():
            for chunk, transfers in list(other.inflight.items()):
                from_lost = [t for t in transfers if t.source == node]
                for transfer in from_lost:
                    self._release(transfer)
                    dropped.append(transfer)
                kept = [t for t in transfers if t.source != node]
                if kept:
                    other.inflight[chunk] = kept
                else:
                    del other.inflight[chunk]
                    other.wanting.add(chunk)
        for holders in self.holders.values():
            holders.discard(node)
        return dropped

    # --- decisions ----------------------------------------------------------------------------------

    def next_transfers(self) -> list[Transfer]:
        """Transfers to start now, within every slot limit."""
        started = self._origin_transfers()
        started += self._peer_transfers()
        if self.endgame:
            started += self._endgame_transfers()
        return started

    @property
    def done(self) -> bool:
        """Every surviving node holds every chunk it needs, or what is left has failed for good."""
        return all(
            not (s.wanting - self.failed_chunks.keys()) and not s.inflight for s in self.nodes.values()
        )

    def _origin_transfers(self) -> list[Transfer]:
        started: list[Transfer] = []
        unseeded = [c for c in self._needed_unseeded() if c not in self.origin_inflight]
        for chunk in unseeded:
            if self.origin_busy >= self.origin_parallelism:
                break
            candidates = [n for n, s in self.nodes.items() if chunk in s.wanting and s.downloads < s.download_slots]
            if not candidates:
                continue
            node = min(candidates, key=lambda n: (self.nodes[n].origin_fetches, self.nodes[n].downloads, n))
            if chunk in self._origin_done or self.holders[chunk]:
                self.origin_refetches += 1
            started.append(self._start(Transfer(chunk, node, ORIGIN)))
        return started

    def _needed_unseeded(self) -> list[str]:
        wanted: set[str] = set()
        for state in self.nodes.values():
            wanted |= state.wanting
        return [c for c in self.chunks if c in wanted and not self._usable(self.holders[c]) and c not in self.failed_chunks]

    def _usable(self, holders: set[str]) -> bool:
        """Whether some holder may still serve: alive and not penalized out (else back to the origin)."""
        return any(h in self.nodes and self.nodes[h].penalties < self.max_penalties for h in holders)

    def _peer_transfers(self) -> list[Transfer]:
        started: list[Transfer] = []
        progress = True
        while progress:  # one chunk per node per round keeps the spread fair across nodes
            progress = False
            for node in sorted(self.nodes, key=lambda n: (self.nodes[n].downloads, n)):
                state = self.nodes[node]
                if state.downloads >= state.download_slots or not state.wanting:
                    continue
                choice = self._rarest_with_source(node, state.wanting)
                if choice is not None:
                    started.append(self._start(Transfer(choice[0], node, choice[1])))
                    progress = True
        return started

    def _endgame_transfers(self) -> list[Transfer]:
        started: list[Transfer] = []
        for node, state in self.nodes.items():
            if state.wanting or not state.inflight:
                continue
            single = {c for c, ts in state.inflight.items() if len(ts) == 1 and not ts[0].from_origin}
            while state.downloads < state.download_slots and single:
                busy_sources = {t.source for c in single for t in state.inflight[c]}
                choice = self._rarest_with_source(node, single, exclude=busy_sources)
                if choice is None:
                    break
                single.discard(choice[0])
                started.append(self._start(Transfer(choice[0], node, choice[1], duplicate=True)))
        return started

    def _rarest_with_source(self, node: str, pool: set[str], exclude: set[str] = frozenset()) -> tuple[str, str] | None:
        sample = pool if len(pool) <= self.sample_size else self._random.sample(sorted(pool), self.sample_size)
        best: tuple[int, str, str] | None = None
        for chunk in sample:
            holders = self.holders[chunk]
            if not holders or chunk in self.failed_chunks:
                continue
            source = self._least_busy_holder(holders, exclude | {node})
            if source is not None and (best is None or (len(holders), chunk) < (best[0], best[1])):
                best = (len(holders), chunk, source)
        return (best[1], best[2]) if best else None

    def _least_busy_holder(self, holders: set[str], exclude: set[str]) -> str | None:
        candidates = [
            h for h in holders
            if h not in exclude and h in self.nodes
            and self.nodes[h].uploads < self.nodes[h].upload_slots
            and self.nodes[h].penalties < self.max_penalties
        ]
        if len(candidates) > 8:
            candidates = self._random.sample(sorted(candidates), 8)
        return min(candidates, key=lambda h: (self.nodes[h].uploads, h)) if candidates else None

    @property
    def active(self) -> frozenset[Transfer]:
        """Transfers started and not yet finished, failed or dropped."""
        return frozenset(self._active)

    def _start(self, transfer: Transfer) -> Transfer:
        self._active.add(transfer)
        state = self.nodes[transfer.node]
        state.wanting.discard(transfer.chunk)
        state.inflight.setdefault(transfer.chunk, []).append(transfer)
        state.downloads += 1
        if transfer.from_origin:
            self.origin_busy += 1
            self.origin_inflight.add(transfer.chunk)
            state.origin_fetches += 1
        else:
            self.nodes[transfer.source].uploads += 1
        return transfer

    def _release(self, transfer: Transfer) -> None:
        """Frees a transfer's slots, once: late reports of cancelled or dropped transfers change nothing."""
        if transfer not in self._active:
            return
        self._active.discard(transfer)
        if (state := self.nodes.get(transfer.node)) is not None:
            state.downloads -= 1
        if transfer.from_origin:
            self.origin_busy -= 1
            self.origin_inflight.discard(transfer.chunk)
        elif (source := self.nodes.get(transfer.source)) is not None:
            source.uploads -= 1
