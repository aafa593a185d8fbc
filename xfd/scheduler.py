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
  holder for one of them (at most one duplicate per chunk); the first to finish wins and the other is
  shut out by the engine.
- **Failures.** A failed transfer frees its slots and the chunk is wanted again; a peer that served
  bad bytes is penalized and, after ``max_penalties``, never used as a source again. A lost node's
  transfers are requeued; a chunk whose only holders are gone goes back to the origin (the only case
  where the origin serves a chunk twice; :attr:`Scheduler.origin_refetches` counts them).

Cost: every structure is kept up to date incrementally, so a decision costs O(sample size) per node
looked at, and one call of :meth:`next_transfers` looks at a bounded number of nodes (``scan_budget``),
taking turns, whatever the cluster and plan size. Rare events (a lost node, a penalty) cost
O(chunks + nodes).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, Literal, TypeVar

import attrs

ORIGIN = "origin"
FailureKind = Literal["integrity", "peer", "origin", "fatal"]
T = TypeVar("T")


class IndexedSet(Generic[T]):
    """A set with O(1) add, remove, membership and random sampling (a list plus positions)."""

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._items: list[T] = []
        self._index: dict[T, int] = {}
        for item in items:
            self.add(item)

    def add(self, item: T) -> None:
        if item not in self._index:
            self._index[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: T) -> None:
        position = self._index.pop(item, None)
        if position is None:
            return
        last = self._items.pop()
        if position < len(self._items):
            self._items[position] = last
            self._index[last] = position

    def sample(self, k: int, rng: random.Random) -> list[T]:
        """``k`` items from a random position on. Removals swap the last item into the hole, so the
        order keeps being stirred and a window is as good as a random pick, at a fraction of the cost."""
        items = self._items
        if len(items) <= k:
            return list(items)
        start = rng.randrange(len(items))
        return items[start : start + k] + items[: max(0, start + k - len(items))]

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))


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
    wanting: IndexedSet[str] = attrs.field(factory=IndexedSet)
    """Chunks needed, not held, not in flight to this node."""
    inflight: dict[str, list[Transfer]] = attrs.field(factory=dict)
    downloads: int = 0
    uploads: int = 0
    origin_fetches: int = 0
    penalties: int = 0


class Scheduler:
    """Decides which chunk moves where. See the module docstring for the policy and its cost."""

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
        scan_budget: int = 256,
        max_penalties: int = 2,
        endgame: bool = True,
        seed: int = 0,
    ) -> None:
        self.chunks = list(dict.fromkeys(chunks))
        self.origin_parallelism = origin_parallelism
        self.sample_size = sample_size
        self.scan_budget = scan_budget
        self.max_penalties = max_penalties
        self.endgame = endgame
        self._random = random.Random(seed)
        self.holders: dict[str, set[str]] = {c: set() for c in self.chunks}
        self.nodes: dict[str, _Node] = {}
        self._needers: dict[str, set[str]] = {c: set() for c in self.chunks}
        self._open = 0
        for node in nodes:
            wanted = self.chunks if needs is None else list(dict.fromkeys(needs.get(node, ())))
            self.nodes[node] = _Node(download_slots, upload_slots, wanting=IndexedSet(wanted))
            for chunk in wanted:
                self._needers[chunk].add(node)
            self._open += len(wanted)
        self._free: IndexedSet[str] = IndexedSet(self.nodes)
        self._turn = 0
        self._unseeded: dict[str, None] = dict.fromkeys(c for c in self.chunks if self._needers[c])
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
            if node in self._needers[chunk]:
                self._needers[chunk].discard(node)
                if chunk not in self.failed_chunks:
                    self._open -= 1
            if state.penalties < self.max_penalties:
                self._unseeded.pop(chunk, None)

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
            self._penalize(transfer.source)
        if kind == "fatal":
            self._fail_chunk(transfer.chunk, reason or "failed")
            return
        if transfer.chunk not in state.inflight and transfer.node not in self.holders[transfer.chunk]:
            state.wanting.add(transfer.chunk)
        self._reseed_if_orphaned(transfer.chunk)

    def node_lost(self, node: str) -> list[Transfer]:
        """``node`` is gone. Returns the transfers that were running from it or to it (to forget)."""
        state = self.nodes.pop(node, None)
        if state is None:
            return []
        self.lost_nodes.append(node)
        self._free.discard(node)
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
        for chunk in self.chunks:
            if node in self._needers[chunk]:
                self._needers[chunk].discard(node)
                if chunk not in self.failed_chunks:
                    self._open -= 1
            if node in self.holders[chunk]:
                self.holders[chunk].discard(node)
                self._reseed_if_orphaned(chunk)
        return dropped

    # --- decisions ----------------------------------------------------------------------------------

    def next_transfers(self) -> list[Transfer]:
        """Transfers to start now, within every slot limit."""
        started = self._origin_transfers()
        started += self._peer_transfers()
        return started

    @property
    def done(self) -> bool:
        """Every surviving node holds every chunk it needs, or what is left has failed for good."""
        return self._open == 0

    @property
    def active(self) -> frozenset[Transfer]:
        """Transfers started and not yet finished, failed or dropped."""
        return frozenset(self._active)

    def _origin_transfers(self) -> list[Transfer]:
        started: list[Transfer] = []
        looked = 0
        for chunk in list(self._unseeded):
            if self.origin_busy >= self.origin_parallelism or not len(self._free):
                break
            looked += 1
            if looked > 4 * self.origin_parallelism:
                break  # the rest waits for the next call: each call stays cheap
            candidates = [n for n in self._needers[chunk] if n in self._free and chunk in self.nodes[n].wanting]
            if not candidates:
                continue
            node = min(candidates, key=lambda n: (self.nodes[n].origin_fetches, self.nodes[n].downloads, n))
            if chunk in self._origin_done or self.holders[chunk]:
                self.origin_refetches += 1
            started.append(self._start(Transfer(chunk, node, ORIGIN)))
        return started

    def _peer_transfers(self) -> list[Transfer]:
        started: list[Transfer] = []
        for node in self._nodes_to_scan():
            state = self.nodes[node]
            while state.downloads < state.download_slots:
                transfer = self._choose(node, state)
                if transfer is None:
                    break
                started.append(self._start(transfer))
        return started

    def _nodes_to_scan(self) -> list[str]:
        """Up to ``scan_budget`` nodes with free download slots, taking turns across calls."""
        free = list(self._free)
        if len(free) <= self.scan_budget:
            return sorted(free, key=lambda n: (self.nodes[n].downloads, n))
        self._turn = (self._turn + self.scan_budget) % len(free)
        return (free[self._turn:] + free[: self._turn])[: self.scan_budget]

    def _choose(self, node: str, state: _Node) -> Transfer | None:
        if len(state.wanting):
            choice = self._rarest_with_source(node, state.wanting.sample(self.sample_size, self._random))
            return Transfer(choice[0], node, choice[1]) if choice else None
        if not self.endgame or not state.inflight:
            return None
        single = [c for c, ts in state.inflight.items() if len(ts) == 1 and not ts[0].from_origin]
        busy = {state.inflight[c][0].source for c in single}
        choice = self._rarest_with_source(node, single[: self.sample_size], exclude=busy)
        return Transfer(choice[0], node, choice[1], duplicate=True) if choice else None

    def _rarest_with_source(self, node: str, sample: list[str], exclude: set[str] = frozenset()) -> tuple[str, str] | None:
        """The rarest chunk of ``sample`` that some holder can serve now, with that holder."""
        ranked = sorted((len(self.holders[c]), c) for c in sample if self.holders[c] and c not in self.failed_chunks)
        for _, chunk in ranked[:8]:  # the rarest few: one of them almost always has a free holder
            source = self._least_busy_holder(self.holders[chunk], exclude | {node})
            if source is not None:
                return chunk, source
        return None

    def _least_busy_holder(self, holders: set[str], exclude: set[str]) -> str | None:
        pool = list(holders)
        if len(pool) > 16:
            start = self._random.randrange(len(pool))
            pool = (pool[start:] + pool[:start])[:16]
        candidates = [
            h for h in pool
            if h not in exclude and h in self.nodes
            and self.nodes[h].uploads < self.nodes[h].upload_slots
            and self.nodes[h].penalties < self.max_penalties
        ]
        return min(candidates, key=lambda h: (self.nodes[h].uploads, h)) if candidates else None

    # --- bookkeeping --------------------------------------------------------------------------------

    def _usable(self, holders: set[str]) -> bool:
        """Whether some holder may still serve: alive and not penalized out (else back to the origin)."""
        return any(h in self.nodes and self.nodes[h].penalties < self.max_penalties for h in holders)

    def _reseed_if_orphaned(self, chunk: str) -> None:
        if (self._needers[chunk] and chunk not in self.failed_chunks and chunk not in self.origin_inflight
                and not self._usable(self.holders[chunk])):
            self._unseeded[chunk] = None

    def _penalize(self, node: str) -> None:
        state = self.nodes[node]
        state.penalties += 1
        if state.penalties == self.max_penalties:
            for chunk, holders in self.holders.items():
                if node in holders:
                    self._reseed_if_orphaned(chunk)

    def _fail_chunk(self, chunk: str, reason: str) -> None:
        if chunk in self.failed_chunks:
            return
        self.failed_chunks[chunk] = reason
        self._open -= len(self._needers[chunk])
        self._unseeded.pop(chunk, None)

    def _start(self, transfer: Transfer) -> Transfer:
        self._active.add(transfer)
        state = self.nodes[transfer.node]
        state.wanting.discard(transfer.chunk)
        state.inflight.setdefault(transfer.chunk, []).append(transfer)
        state.downloads += 1
        if state.downloads >= state.download_slots:
            self._free.discard(transfer.node)
        if transfer.from_origin:
            self.origin_busy += 1
            self.origin_inflight.add(transfer.chunk)
            self._unseeded.pop(transfer.chunk, None)
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
            self._free.add(transfer.node)
        if transfer.from_origin:
            self.origin_busy -= 1
            self.origin_inflight.discard(transfer.chunk)
            self._reseed_if_orphaned(transfer.chunk)
        elif (source := self.nodes.get(transfer.source)) is not None:
            source.uploads -= 1
