"""The Report, its ideal time and efficiency, and what the progress model measures for them, as plain data."""

from __future__ import annotations

import time

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xfd.progress import ProgressModel
from xfd.report import MIN_MEASURED_S, NodeReport, Report, ideal_seconds

MiB = 1 << 20
MB = 1_000_000


def node(state: str, ip: str = "127.0.0.2") -> NodeReport:
    return NodeReport(node_id=ip, ip=ip, origin_bytes=MiB, peer_bytes=0, cache_bytes=0, served_bytes=0,
                      seconds=1.0 if state == "done" else None, state=state)


def report(*nodes: NodeReport, failures: tuple[str, ...] = (), wall: float = 2.0, ideal: float = 1.0,
           startup: float = 0.0, origin: int = MiB) -> Report:
    return Report(nodes=nodes, unique_bytes=MiB, origin_bytes=origin, origin_refetches=0, wall_seconds=wall,
                  ideal_seconds=ideal, rates={}, failures=failures, startup_seconds=startup)


def test_ok_needs_a_surviving_node_with_everything_and_no_failure():
    assert report(node("done"), node("lost", "127.0.0.3")).ok
    assert not report(node("lost")).ok, "a run whose every node was lost did not succeed"
    assert not report().ok
    assert not report(node("done"), failures=("object changed",)).ok
    assert not report(node("failed")).ok


def test_ratio_efficiency_and_summary():
    done = report(node("done"))
    assert done.origin_ratio == 1.0 and done.efficiency == 0.5
    assert done.summary().splitlines()[0] == (
        "ok: 1 node, 1.0 MiB unique, origin served 1.0 MiB (1.00x), 2.00 s; efficiency 0.50 against an ideal "
        "1.00 s at the run's own peak rates")
    two = report(node("done"), node("done", "127.0.0.3"), wall=9.0, startup=5.0, ideal=2.0)
    assert two.summary().startswith("ok: 2 nodes, 1.0 MiB unique, origin served 1.0 MiB (1.00x), 9.00 s (5.00 s "
                                    "starting agents); efficiency 0.50 against an ideal 2.00 s")
    assert "FAILED" in report(node("lost")).summary()


def test_agent_start_up_is_not_counted_and_a_short_run_has_no_efficiency():
    # A first run of 6.5 MiB: 6.5 s starting agents, 0.4 s of transfers. It used to say "efficiency 0.01".
    first = report(node("done"), wall=6.9, startup=6.5, ideal=0.05)
    assert first.transfer_seconds == pytest.approx(0.4)
    assert first.efficiency is None
    assert first.summary().splitlines()[0].endswith("6.90 s (6.50 s starting agents); too short to measure efficiency")
    measured = report(node("done"), wall=6.5 + 2 * MIN_MEASURED_S, startup=6.5, ideal=MIN_MEASURED_S)
    assert measured.efficiency == pytest.approx(0.5), "start-up is not in the efficiency's time"


def test_efficiency_is_never_above_one_nor_given_for_failed_or_empty_runs():
    assert report(node("done"), wall=2.0, ideal=2.3).efficiency == 1.0
    failed = report(node("failed"), wall=5.0, ideal=1.0, failures=("127.0.0.2: timed out after 5 s",))
    assert failed.efficiency is None and "efficiency" not in failed.summary()
    cached = report(node("done"), wall=5.0, ideal=0.0)  # every byte came from the nodes' caches
    assert cached.efficiency is None and "efficiency" not in cached.summary()


def test_a_failed_run_shows_the_origin_bytes_it_is_given_and_each_failure_once():
    reason = "127.0.0.3: origin refused access to s3://b/k"
    failed = report(node("done"), node("failed", "127.0.0.3"), origin=21 * MiB, failures=(reason, "timed out", reason))
    assert failed.failures == (reason, "timed out")
    summary = failed.summary()
    assert summary.startswith("FAILED: 2 nodes, 1.0 MiB unique, origin served 21.0 MiB (21.00x)")
    assert summary.count(reason) == 1
    assert failed._repr_html_().count(reason) == 1
    many = report(node("failed"), failures=tuple(f"reason {i}" for i in range(13)))
    assert "reason 9" in many.summary() and "reason 10" not in many.summary()
    assert many.summary().endswith("... and 3 more failures")
    lost = attrs.evolve(report(node("done"), node("lost", "127.0.0.3")), lost_nodes=("127.0.0.3",))
    assert "lost 1 node: 127.0.0.3" in lost.summary()


def test_the_repr_is_one_line_and_the_full_forms_stay_available():
    nodes = tuple(node("done", f"127.0.0.{i}") for i in range(2, 50))
    big = report(*nodes)
    assert repr(big) == (
        "<Report ok: 48 nodes, 1.0 MiB unique, origin served 1.0 MiB (1.00x), 2.00 s; efficiency 0.50 against an "
        "ideal 1.00 s at the run's own peak rates>")
    assert len(str(big).splitlines()) == 49 and "127.0.0.49" in str(big)
    assert len(attrs.asdict(big)["nodes"]) == 48


def test_the_ideal_takes_the_tightest_of_the_three_terms():
    rates = {"origin": 100.0, "node_download": 1000.0, "node_upload": 50.0}
    received = [1000, 1000, 1000, 1000]
    assert ideal_seconds(1000, received, rates) == max(1000 / 100, 1000 / 1000, 4000 / (100 + 4 * 50))
    assert ideal_seconds(0, [], rates) == 0.0
    assert ideal_seconds(1000, [1000], {}) == 0.0


def test_the_ideal_counts_only_the_bytes_each_node_needed():
    # Node selectors: of 100 MB, two nodes need 10 MB each, one needs all. Counting 100 MB for every node
    # made the "bound" three times the run and the efficiency 2.34.
    rates = {"origin": 100 * MB, "node_download": 100 * MB, "node_upload": 100 * MB}
    assert ideal_seconds(100 * MB, [10 * MB, 10 * MB, 100 * MB], rates) == pytest.approx(1.0)


def model_with(needs: dict[str, list[str]], sizes: dict[str, int]) -> ProgressModel:
    model = ProgressModel(sizes, sum(sizes.values()))
    for index, (node_id, chunks) in enumerate(needs.items()):
        model.add_node(node_id, f"127.0.0.{index + 2}", chunks)
    return model


def with_peaks(model: ProgressModel, origin: float, download: float, upload: float) -> dict[str, float]:
    """Sets the peak rates as a run would have measured them."""
    rates = {"origin": origin, "node_download": download, "node_upload": upload}
    for name, rate in rates.items():
        model._peaks[name].peak = rate
    return rates


def test_the_model_knows_what_the_origin_and_each_node_had_to_move():
    sizes = {"a": 10 * MB, "b": 20 * MB, "c": 40 * MB}
    model = model_with({"n1": ["a", "b", "c"], "n2": ["a"], "n3": ["a", "b"]}, sizes)
    model.chunk_done("n3", "b", "cache", 0.0, counted_inflight=False)

    # The origin had to serve a and c (b was in n3's cache): 50 MB. n1 had to receive 70 MB, n2 and n3 10.
    slow_origin = with_peaks(model, origin=10 * MB, download=1000 * MB, upload=1000 * MB)
    assert model.snapshot().ideal_s == pytest.approx(5.0)
    assert model.snapshot().ideal_s == ideal_seconds(50 * MB, [70 * MB, 10 * MB, 10 * MB], slow_origin)
    slow_nodes = with_peaks(model, origin=1000 * MB, download=10 * MB, upload=1 * MB)
    assert model.snapshot().ideal_s == pytest.approx(7.0)
    assert model.snapshot().ideal_s == ideal_seconds(50 * MB, [70 * MB, 10 * MB, 10 * MB], slow_nodes)

    model.set_state("n1", "lost", "killed")
    model.set_state("n1", "lost")  # told twice: counted once
    # Only n1 needed c: the origin now has to serve a alone, and no node more than 10 MB.
    assert model.snapshot().ideal_s == ideal_seconds(10 * MB, [10 * MB, 10 * MB], slow_nodes) == pytest.approx(1.0)
    assert with_peaks(model, 1 * MB, 1000 * MB, 1000 * MB) and model.snapshot().ideal_s == pytest.approx(10.0)


def test_rates_of_progress_start_with_the_first_transfer_and_leave_cached_bytes_out():
    model = model_with({"n1": ["a", "b"]}, {"a": MB, "b": MB})
    model.chunk_done("n1", "a", "cache", 0.0, counted_inflight=False)
    assert model.snapshot().transfer_s == 0.0 and model.snapshot().rate == 0.0, "agents are still starting"
    time.sleep(0.2)  # agents starting: not part of any rate
    model.started_transfer("n1", "b")
    model.chunk_done("n1", "b", "origin", 0.05)
    snapshot = model.snapshot()
    assert snapshot.transfer_s < snapshot.elapsed_s - 0.15
    assert snapshot.rate == pytest.approx(MB / snapshot.transfer_s)


def test_a_run_shorter_than_a_rate_window_is_measured_over_its_own_length():
    model = model_with({"n1": ["c1", "c2"], "n2": ["c1", "c2"]}, {"c1": MB, "c2": MB})
    model.chunk_done("n1", "c1", "origin", 0.1)
    model.chunk_done("n2", "c1", "peer", 0.1, "n1")

    rates = model.peak_rates()

    # 1 MB in 0.1 s is 10 MB/s, not 1 MB/s (1 MB in a 1 s window).
    assert rates["origin"] == pytest.approx(10 * MB, rel=0.05)
    assert rates["node_download"] == pytest.approx(10 * MB, rel=0.05)
    assert rates["node_upload"] == pytest.approx(10 * MB, rel=0.05)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 1e6), st.floats(0, 1), st.floats(0, 1)), max_size=60))
def test_a_kept_peak_is_always_the_highest_window_rate(additions):
    from xfd.progress import _PeakRate

    peak = _PeakRate()
    for key, share, a, b in additions:
        peak.add(key, share, min(a, b), max(a, b))
        assert peak.peak == max((w.rate() for w in peak.windows.values()), default=0.0)
