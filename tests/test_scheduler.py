"""The scheduler state machine, driven by a small random simulator: its invariants and its policy."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from xfd.scheduler import ORIGIN, Scheduler, Transfer


def make(chunks: int, nodes: int, *, origin: int = 4, slots: int = 2, **kwargs) -> Scheduler:
    return Scheduler(
        [f"c{i:03d}" for i in range(chunks)],
        [f"n{i}" for i in range(nodes)],
        origin_parallelism=origin,
        download_slots=slots,
        upload_slots=slots,
        **kwargs,
    )


def check_limits(scheduler: Scheduler) -> None:
    assert scheduler.origin_busy <= scheduler.origin_parallelism
    for name, state in scheduler.nodes.items():
        assert 0 <= state.downloads <= state.download_slots, name
        assert 0 <= state.uploads <= state.upload_slots, name
    origin = [t for t in scheduler.active if t.from_origin]
    assert len(origin) == scheduler.origin_busy
    assert len({t.chunk for t in origin}) == len(origin), "a chunk fetched twice from the origin at once"


def run(
    scheduler: Scheduler,
    rng: random.Random,
    *,
    fail_rate: float = 0.0,
    lose: str | None = None,
    bad_peer: str | None = None,
    origin_failures: dict[str, int] | None = None,
) -> dict[str, int]:
    """Completes transfers in random order until done; returns origin fetches per chunk (and counts
    the origin failures it made per chunk into ``origin_failures``)."""
    origin_fetches: dict[str, int] = {}
    origin_failures = {} if origin_failures is None else origin_failures
    steps = 0
    while not scheduler.done:
        steps += 1
        assert steps < 100_000, "no progress"
        for transfer in scheduler.next_transfers():
            assert transfer.node not in scheduler.holders[transfer.chunk], f"{transfer} to a holder"
            if transfer.from_origin:
                origin_fetches[transfer.chunk] = origin_fetches.get(transfer.chunk, 0) + 1
        check_limits(scheduler)
        active = sorted(scheduler.active, key=lambda t: (t.chunk, t.node, t.source))
        assert active, "stalled: nothing in flight and not done"
        transfer = rng.choice(active)
        if lose and lose in scheduler.nodes and steps == 2:
            scheduler.node_lost(lose)
        elif bad_peer and transfer.source == bad_peer:
            scheduler.failed(transfer, "integrity")
        elif rng.random() < fail_rate:
            if transfer.from_origin:
                origin_failures[transfer.chunk] = origin_failures.get(transfer.chunk, 0) + 1
            scheduler.failed(transfer, "peer" if not transfer.from_origin else "origin")
        else:
            scheduler.finished(transfer)
        check_limits(scheduler)
    return origin_fetches


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.integers(1, 40),
    nodes=st.integers(1, 6),
    slots=st.integers(1, 4),
    origin=st.integers(1, 8),
    seed=st.integers(0, 10_000),
)
def test_every_node_gets_every_chunk_and_the_origin_serves_each_once(chunks, nodes, slots, origin, seed):
    scheduler = make(chunks, nodes, origin=origin, slots=slots, seed=seed)
    fetches = run(scheduler, random.Random(seed))
    assert all(len(h) == nodes for h in scheduler.holders.values())
    assert fetches == {c: 1 for c in scheduler.chunks}
    assert scheduler.origin_refetches == 0


@settings(max_examples=40, deadline=None)
@given(chunks=st.integers(1, 30), nodes=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_random_failures_still_deliver_everything(chunks, nodes, seed):
    scheduler = make(chunks, nodes, seed=seed)
    origin_failures: dict[str, int] = {}
    run(scheduler, random.Random(seed), fail_rate=0.2, origin_failures=origin_failures)
    for chunk, holders in scheduler.holders.items():
        # Delivered everywhere, unless the origin failed it three times (then it is given up for good).
        assert len(holders) == nodes or (chunk in scheduler.failed_chunks and origin_failures[chunk] >= 3)


@settings(max_examples=40, deadline=None)
@given(chunks=st.integers(2, 30), nodes=st.integers(3, 6), seed=st.integers(0, 10_000))
def test_a_lost_node_does_not_sink_the_run(chunks, nodes, seed):
    scheduler = make(chunks, nodes, seed=seed)
    run(scheduler, random.Random(seed), lose="n1")
    assert scheduler.lost_nodes == ["n1"]
    assert all(h == set(scheduler.nodes) for h in scheduler.holders.values())


def test_a_peer_serving_bad_bytes_is_penalized_and_avoided():
    scheduler = make(20, 4, seed=3)
    run(scheduler, random.Random(3), bad_peer="n0")
    assert scheduler.nodes["n0"].penalties >= scheduler.max_penalties
    assert all(len(h) == 4 for h in scheduler.holders.values())


def test_origin_fetches_are_spread_over_nodes():
    scheduler = make(40, 4, origin=8, slots=4)
    first = scheduler.next_transfers()
    per_node = {}
    for transfer in first:
        if transfer.from_origin:
            per_node[transfer.node] = per_node.get(transfer.node, 0) + 1
    assert per_node == {"n0": 2, "n1": 2, "n2": 2, "n3": 2}


def test_a_cached_copy_seeds_everyone_with_zero_origin_fetches():
    scheduler = make(10, 4)
    scheduler.held("n2", scheduler.chunks)
    fetches = run(scheduler, random.Random(1))
    assert fetches == {}
    assert all(len(h) == 4 for h in scheduler.holders.values())


def test_rarest_chunk_is_taken_first():
    scheduler = Scheduler(
        ["c000", "c001", "c002"],
        ["n0", "n1", "n2", "n3"],
        origin_parallelism=4,
        download_slots=1,
        upload_slots=1,
        needs={"n3": ["c000", "c001", "c002"]},
    )
    scheduler.held("n0", ["c000", "c001", "c002"])
    scheduler.held("n1", ["c000", "c001"])
    scheduler.held("n2", ["c000"])
    transfers = [t for t in scheduler.next_transfers() if t.node == "n3"]
    assert transfers == [Transfer("c002", "n3", "n0")]


def test_only_the_nodes_that_need_a_chunk_get_it():
    scheduler = Scheduler(
        ["a", "b"],
        ["x", "y"],
        origin_parallelism=4,
        download_slots=2,
        upload_slots=2,
        needs={"x": ["a", "b"], "y": ["b"]},
    )
    run(scheduler, random.Random(0))
    assert scheduler.holders == {"a": {"x"}, "b": {"x", "y"}}


def test_endgame_duplicates_a_slow_last_chunk_and_cancels_the_loser():
    scheduler = make(1, 3, slots=2)
    scheduler.held("n0", ["c000"])
    scheduler.held("n1", ["c000"])
    first = scheduler.next_transfers()
    assert [t for t in first if not t.duplicate] == [Transfer("c000", "n2", "n0")]
    duplicate = [t for t in first if t.duplicate]
    assert duplicate == [Transfer("c000", "n2", "n1", duplicate=True)]
    losers = scheduler.finished(duplicate[0])
    assert losers == [Transfer("c000", "n2", "n0")]
    assert scheduler.done and not scheduler.active
    scheduler.finished(losers[0])  # the loser's late report changes nothing
    scheduler.failed(losers[0], "fatal", "late")
    assert scheduler.nodes["n0"].uploads == 0 and not scheduler.failed_chunks


def test_a_fatal_failure_ends_the_chunk_without_retrying():
    scheduler = make(2, 2)
    transfers = scheduler.next_transfers()
    origin = next(t for t in transfers if t.chunk == "c000")
    scheduler.failed(origin, "fatal", "object changed")
    assert scheduler.failed_chunks == {"c000": "object changed"}
    assert all(t.chunk != "c000" for t in scheduler.next_transfers())
    assert ORIGIN == "origin"


def test_a_chunk_the_origin_keeps_failing_fails_after_three_rounds_not_forever():
    scheduler = make(2, 2)
    for round_ in range(1, 4):
        origin = next(t for t in scheduler.next_transfers() if t.chunk == "c000" and t.source == ORIGIN)
        assert "c000" not in scheduler.failed_chunks, f"gave up after {round_ - 1} rounds"
        scheduler.failed(origin, "origin", "connection refused")
        for other in [t for t in scheduler.active if t.chunk != "c000"]:
            scheduler.finished(other)
    assert scheduler.failed_chunks == {"c000": "connection refused"}
    assert all(t.chunk != "c000" for t in scheduler.next_transfers())
