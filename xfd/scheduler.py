"""The transfer scheduler: a pure state machine, no Ray, no I/O, no clock.

Inputs are facts (a node holds chunks, a transfer finished or failed, a node was lost); the output of
:meth:`Scheduler.next_transfers` is the transfers to start now. The runtime feeds it events from node
agents; tests and simulators feed it modeled events. Policy:

- **Origin once, spread out.** A chunk nobody holds is fetched from the origin by exactly one node,
  within a cluster-wide origin limit; the node chosen is the one that has fetched the fewest chunks
  from the origin so far, so seeding is spread over the cluster instead of piling on one seeder.
- **Rarest first, least busy holder.** A node with a free download slot takes, among a window of up to
  ``sample_size`` chunks it lacks (from a random position), the rarest one that some holder can serve
  now, from the holder with the fewest uploads in progress. Cache holders seed like anyone else.
- **Endgame.** When a node lacks only chunks already in flight and has free slots, it asks a second
  holder for them (at most one duplicate per chunk); the first to finish wins and the engine shuts the
  other out.
- **Failures.** A failed transfer frees its slots and the chunk is wanted again; a peer that served
  bad bytes is penalized and, after ``max_penalties``, never used as a source again. A lost node's
  transfers are requeued; a chunk whose only holders are gone or penalized goes back to the origin (the
  only case where the origin serves a chunk twice; :attr:`Scheduler.origin_refetches` counts them).

The state machine itself is Rust (``rust/xfd-core/src/scheduler.rs``, exposed as ``xfd._core.Scheduler``):
every structure is updated incrementally and one call looks at a bounded number of nodes, so decisions
stay cheap for thousands of nodes and tens of thousands of chunks. This module maps names to its dense
indices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import attrs

from xfd import _core

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


@attrs.frozen
class NodeState:
    """A node's counters at one moment."""

    downloads: int
    uploads: int
    origin_fetches: int
    penalties: int
    wanting: int
    inflight: int
    download_slots: int
    upload_slots: int


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
        scan_budget: int = 16,
        max_penalties: int = 2,
        endgame: bool = True,
        seed: int = 0,
    ) -> None:
        self.chunks = list(dict.fromkeys(chunks))
        self._node_names = list(dict.fromkeys(nodes))
        self._chunk_index = {c: i for i, c in enumerate(self.chunks)}
        self._node_index = {n: i for i, n in enumerate(self._node_names)}
        self.origin_parallelism = origin_parallelism
        self.download_slots = download_slots
        self.upload_slots = upload_slots
        self.max_penalties = max_penalties
        indexed_needs = None
        if needs is not None:
            indexed_needs = [[self._chunk_index[c] for c in needs.get(n, ())] for n in self._node_names]
        self._core = _core.Scheduler(
            len(self.chunks),
            len(self._node_names),
            origin_parallelism=origin_parallelism,
            download_slots=download_slots,
            upload_slots=upload_slots,
            needs=indexed_needs,
            sample_size=sample_size,
            scan_budget=scan_budget,
            max_penalties=max_penalties,
            endgame=endgame,
            seed=seed,
        )

    # --- facts --------------------------------------------------------------------------------------

    def held(self, node: str, chunks: Iterable[str]) -> None:
        """``node`` holds ``chunks`` (a cache hit, a resumed part, or a finished transfer)."""
        self._core.held(self._node_index[node], [self._chunk_index[c] for c in chunks])

    def finished(self, transfer: Transfer) -> list[Transfer]:
        """A transfer completed and verified. Returns its duplicates, now losers (shut out by the engine)."""
        return [self._named(t) for t in self._core.finished(self._indexed(transfer))]

    def failed(self, transfer: Transfer, kind: FailureKind, reason: str = "") -> None:
        """A transfer failed. ``integrity``: the source served bad bytes; ``fatal``: retrying cannot help.
        A late report of a transfer already dropped or shut out changes nothing."""
        self._core.failed(self._indexed(transfer), kind, reason)

    def node_lost(self, node: str) -> list[Transfer]:
        """``node`` is gone. Returns the transfers that were running from it or to it (to forget)."""
        return [self._named(t) for t in self._core.node_lost(self._node_index[node])]

    # --- decisions and state ------------------------------------------------------------------------

    def next_transfers(self) -> list[Transfer]:
        """Transfers to start now, within every slot limit."""
        return [self._named(t) for t in self._core.next_transfers()]

    @property
    def done(self) -> bool:
        """Every surviving node holds every chunk it needs, or what is left has failed for good."""
        return self._core.done

    @property
    def active(self) -> frozenset[Transfer]:
        """Transfers started and not yet finished, failed or dropped."""
        return frozenset(self._named(t) for t in self._core.active())

    @property
    def origin_busy(self) -> int:
        return self._core.origin_busy

    @property
    def origin_refetches(self) -> int:
        return self._core.origin_refetches

    @property
    def failed_chunks(self) -> dict[str, str]:
        """Every chunk given up for good, and why (a copy: O(failures))."""
        return {self.chunks[i]: reason for i, reason in self._core.failed_chunks().items()}

    def failure(self, chunk: str) -> str | None:
        """Why ``chunk`` was given up for good, or ``None`` (also for a chunk the scheduler does not know).
        One lookup: asking :attr:`failed_chunks` after each failed transfer made a run in which many chunks
        fail quadratic."""
        index = self._chunk_index.get(chunk)
        return None if index is None else self._core.failure(index)

    @property
    def lost_nodes(self) -> list[str]:
        return [self._node_names[i] for i in self._core.lost_nodes()]

    @property
    def nodes(self) -> dict[str, NodeState]:
        """The surviving nodes and their counters (a snapshot)."""
        return {name: self._state(i) for i, name in enumerate(self._node_names) if self._core.alive(i)}

    @property
    def holders(self) -> dict[str, set[str]]:
        """Chunk -> nodes holding it (a snapshot; O(chunks x holders), for tests and reports)."""
        return {c: {self._node_names[n] for n in self._core.holders(i)} for i, c in enumerate(self.chunks)}

    def is_alive(self, node: str) -> bool:
        return node in self._node_index and self._core.alive(self._node_index[node])

    def node_done(self, node: str) -> bool:
        """``node`` holds (or has given up on) everything it needs and has nothing in flight."""
        return self._core.node_done(self._node_index[node])

    def _state(self, index: int) -> NodeState:
        downloads, uploads, origin_fetches, penalties, wanting, inflight = self._core.node_stats(index)
        return NodeState(
            downloads, uploads, origin_fetches, penalties, wanting, inflight, self.download_slots, self.upload_slots
        )

    def _indexed(self, transfer: Transfer) -> tuple[int, int, int | None, bool]:
        source = None if transfer.from_origin else self._node_index[transfer.source]
        return self._chunk_index[transfer.chunk], self._node_index[transfer.node], source, transfer.duplicate

    def _named(self, transfer: tuple[int, int, int | None, bool]) -> Transfer:
        chunk, node, source, duplicate = transfer
        return Transfer(
            self.chunks[chunk],
            self._node_names[node],
            ORIGIN if source is None else self._node_names[source],
            duplicate,
        )
