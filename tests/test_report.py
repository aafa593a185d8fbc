"""The Report and the lower bound, as plain data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xfd.report import NodeReport, Report, lower_bound

MiB = 1 << 20


def node(state: str, ip: str = "127.0.0.2") -> NodeReport:
    return NodeReport(node_id=ip, ip=ip, origin_bytes=MiB, peer_bytes=0, cache_bytes=0, served_bytes=0,
                      seconds=1.0 if state == "done" else None, state=state)


def report(*nodes: NodeReport, failures: tuple[str, ...] = ()) -> Report:
    return Report(nodes=nodes, unique_bytes=MiB, origin_bytes=MiB, origin_refetches=0, wall_seconds=2.0,
                  t_min_seconds=1.0, rates={}, failures=failures)


def test_ok_needs_a_surviving_node_with_everything_and_no_failure():
    assert report(node("done"), node("lost", "127.0.0.3")).ok
    assert not report(node("lost")).ok, "a run whose every node was lost did not succeed"
    assert not report().ok
    assert not report(node("done"), failures=("object changed",)).ok
    assert not report(node("failed")).ok


def test_ratio_efficiency_and_summary():
    done = report(node("done"))
    assert done.origin_ratio == 1.0 and done.efficiency == 0.5
    assert done.summary().startswith("ok: 1 nodes, 1.0 MiB unique, origin served 1.0 MiB (1.00x)")
    assert "FAILED" in report(node("lost")).summary()


def test_lower_bound_takes_the_tightest_of_the_three_limits():
    rates = {"origin": 100.0, "node_download": 1000.0, "node_upload": 50.0}
    assert lower_bound(1000, 4, rates) == max(1000 / 100, 1000 / 1000, 4 * 1000 / (100 + 4 * 50))
    assert lower_bound(0, 4, rates) == 0.0
    assert lower_bound(1000, 1, {}) == 0.0


def test_a_run_shorter_than_a_rate_window_is_measured_over_its_own_length():
    from xfd.progress import ProgressModel

    mb = 1_000_000
    model = ProgressModel({"c1": mb, "c2": mb}, 2 * mb)
    model.add_node("n1", "127.0.0.2", ["c1", "c2"])
    model.add_node("n2", "127.0.0.3", ["c1", "c2"])
    model.chunk_done("n1", "c1", "origin", 0.1)
    model.chunk_done("n2", "c1", "peer", 0.1, "n1")

    rates = model.peak_rates()

    # 1 MB in 0.1 s is 10 MB/s, not 1 MB/s (1 MB in a 1 s window): a short run's bound stays honest.
    assert rates["origin"] == pytest.approx(10 * mb, rel=0.05)
    assert rates["node_download"] == pytest.approx(10 * mb, rel=0.05)
    assert rates["node_upload"] == pytest.approx(10 * mb, rel=0.05)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 1e6), st.floats(0, 1), st.floats(0, 1)), max_size=60))
def test_a_kept_peak_is_always_the_highest_window_rate(additions):
    from xfd.progress import _PeakRate

    peak = _PeakRate()
    for key, share, a, b in additions:
        peak.add(key, share, min(a, b), max(a, b))
        assert peak.peak == max((w.rate() for w in peak.windows.values()), default=0.0)
