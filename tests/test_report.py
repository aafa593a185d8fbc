"""The Report, its ideal time and efficiency, as plain data. (What the progress model measures for them is
tested with it, in rust/xfd-core/src/control/progress.rs.)"""

from __future__ import annotations

import attrs
import pytest

from xfd.report import MIN_MEASURED_S, NodeReport, Report

MiB = 1 << 20
MB = 1_000_000


def node(state: str, ip: str = "127.0.0.2") -> NodeReport:
    return NodeReport(
        node_id=ip,
        ip=ip,
        origin_bytes=MiB,
        peer_bytes=0,
        cache_bytes=0,
        served_bytes=0,
        seconds=1.0 if state == "done" else None,
        state=state,
    )


def report(
    *nodes: NodeReport,
    failures: tuple[str, ...] = (),
    wall: float = 2.0,
    ideal: float = 1.0,
    startup: float = 0.0,
    origin: int = MiB,
) -> Report:
    return Report(
        nodes=nodes,
        unique_bytes=MiB,
        origin_bytes=origin,
        origin_refetches=0,
        wall_seconds=wall,
        ideal_seconds=ideal,
        rates={},
        failures=failures,
        startup_seconds=startup,
    )


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
        "1.00 s at the run's own peak rates"
    )
    two = report(node("done"), node("done", "127.0.0.3"), wall=9.0, startup=5.0, ideal=2.0)
    assert two.summary().startswith(
        "ok: 2 nodes, 1.0 MiB unique, origin served 1.0 MiB (1.00x), 9.00 s (5.00 s "
        "until the first agent was up); efficiency 0.50 against an ideal 2.00 s"
    )
    assert "FAILED" in report(node("lost")).summary()


def test_agent_start_up_is_not_counted_and_a_short_run_has_no_efficiency():
    # A first run of 6.5 MiB: 6.5 s starting agents, 0.4 s of transfers. It used to say "efficiency 0.01".
    first = report(node("done"), wall=6.9, startup=6.5, ideal=0.05)
    assert first.transfer_seconds == pytest.approx(0.4)
    assert first.efficiency is None
    assert (
        first.summary()
        .splitlines()[0]
        .endswith("6.90 s (6.50 s until the first agent was up); too short to measure efficiency")
    )
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
        "ideal 1.00 s at the run's own peak rates>"
    )
    assert len(str(big).splitlines()) == 49 and "127.0.0.49" in str(big)
    assert len(attrs.asdict(big)["nodes"]) == 48
