"""Metrics read back from Ray's Prometheus endpoints, and the event log, after real distributions.

In the Xenna ring's environment because it has ``ray[default]`` (cosmos-xenna needs it), whose metrics
agent serves Ray's Prometheus endpoints; the main environment keeps plain ``ray``, whose simulated nodes
start twice as fast (docs/metrics.md, "Tested").

The driver records xfd's metrics through ``ray.util.metrics``; Ray's metrics agent on the driver's node
exports them. Counters add up every run of the session's driver, so each check compares what one run
added (read once the endpoints show every earlier run's end) with that run's report.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections import defaultdict
from collections.abc import Mapping

import obstore
import pytest
from prometheus_client.parser import text_string_to_metric_families

from xfd import Manifest
from xfd.nodes import localize
from xfd.runtime import telemetry

pytestmark = pytest.mark.timeout(600)
MiB = 1 << 20
# Labels xfd sets; Ray adds its own (WorkerId, SessionName, ...), which the checks add up over.
XFD_LABELS = {"node", "source", "kind", "outcome", "state", "le"}
EXPORTED_WITHIN_S = 60.0

KINDS = ("origin", "peer", "stalled", "integrity", "busy", "fatal")
Metrics = Mapping[tuple[str, frozenset[tuple[str, str]]], float]


def scrape() -> Metrics:
    """Every ``xfd_`` sample this driver recorded, from every node's metrics endpoint, summed over the other
    labels Ray adds. Other drivers of the session's cluster (the tests' subprocesses: a restarted kernel,
    the CLI) record their runs' metrics too; Ray tells them apart by ``WorkerId``."""
    import ray

    me = ray.get_runtime_context().get_worker_id()
    totals: dict[tuple[str, frozenset[tuple[str, str]]], float] = defaultdict(float)
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name.removeprefix("ray_")
                if name.startswith("xfd_") and sample.labels.get("WorkerId", me) == me:
                    labels = frozenset((k, v) for k, v in sample.labels.items() if k in XFD_LABELS)
                    totals[(name, labels)] += sample.value
    return dict(totals)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in metrics.items() if n == name and wanted <= have)


def added(after: Metrics, before: Metrics, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def exported() -> Metrics:
    """The endpoints once they show the end of every run this process recorded (each run's last
    figures are recorded before its end)."""
    deadline = time.monotonic() + EXPORTED_WITHIN_S
    while True:
        metrics = scrape()
        shown = value(metrics, "xfd_runs_total")
        if shown == telemetry.ended_runs():
            return metrics
        assert time.monotonic() < deadline, f"Ray exported {shown} runs' ends, {telemetry.ended_runs()} ended"
        time.sleep(0.5)


@pytest.fixture
def artifacts(s3, bucket):
    contents = {
        "root/model.bin": os.urandom(5 * MiB + 123),
        "root/tok/a.json": os.urandom(300_000),
        "root/tok/b.json": b'{"b": 2}',
    }
    for key, data in contents.items():
        obstore.put(s3.store(bucket), key, data)
    return contents


def manifest_for(s3, bucket, endpoint, **settings) -> Manifest:
    return (
        Manifest.builder()
        .store("m", f"s3://{bucket}/root", **s3.manifest_options(endpoint))
        .settings(chunk_size="1MiB", node_parallelism=4, upload_slots=4, **settings)
        .object("m", "model.bin", to="/metrics/model.bin")
        .prefix("m", "tok/", to="/metrics/tok")
        .build()
    )


def clear(cluster) -> None:
    for node in cluster.nodes:
        for path in ("/metrics/model.bin", "/metrics/tok/a.json", "/metrics/tok/b.json"):
            localize(path, node.root).unlink(missing_ok=True)


def read_events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def fresh_run(cluster, s3, bucket, origin, tmp_path):
    """Empty node roots, the manifest and its plan, an event log's path, the metrics exported so far, and
    the origin's count reset: what each run here starts from."""
    clear(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    plan = manifest.plan()
    before = exported()
    origin.reset()
    return manifest, plan, tmp_path / "run.jsonl", before


def test_metrics_and_event_log_tell_what_the_report_says(cluster, s3, bucket, artifacts, origin, tmp_path):
    manifest, plan, log, before = fresh_run(cluster, s3, bucket, origin, tmp_path)
    report = manifest.distribute(plan=plan, progress=None, event_log=log)
    after = exported()
    assert report.ok, report.summary()

    # Bytes by source and node, served bytes: the report's figures.
    assert added(after, before, "xfd_received_bytes_total", source="origin") == plan.unique_bytes
    for node in report.nodes:
        for source in ("origin", "peer", "cache"):
            assert added(after, before, "xfd_received_bytes_total", node=node.ip, source=source) == getattr(
                node, f"{source}_bytes"
            ), (node.ip, source)
        assert added(after, before, "xfd_served_bytes_total", node=node.ip) == node.served_bytes, node.ip
        assert value(after, "xfd_active_transfers", node=node.ip) == 0
    peer_bytes = sum(n.peer_bytes for n in report.nodes)
    assert peer_bytes == (len(cluster.nodes) - 1) * plan.unique_bytes
    # Served bytes are what the peers sent, as their agents counted: an endgame duplicate's too.
    assert added(after, before, "xfd_served_bytes_total") == sum(n.served_bytes for n in report.nodes) >= peer_bytes
    # The origin, as each engine counted it and as the origin itself saw it.
    assert added(after, before, "xfd_origin_fetched_bytes_total") == report.origin_bytes == origin.traffic().get_bytes
    assert added(after, before, "xfd_origin_requests_total") == origin.traffic().get_requests
    assert added(after, before, "xfd_origin_failed_requests_total") == 0
    failures = {k: added(after, before, "xfd_transfer_failures_total", kind=k) for k in KINDS}
    assert added(after, before, "xfd_transfer_failures_total") == 0, (failures, report.failures)
    assert added(after, before, "xfd_runs_total", outcome="ok") == 1
    assert added(after, before, "xfd_run_nodes_total", state="done") == len(cluster.nodes)
    assert value(after, "xfd_active_runs") == 0

    # The event log tells the same story.
    events = read_events(log)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_ended", kinds
    assert {e["run"] for e in events} == {events[0]["run"]}
    assert events[0]["plan"]["unique_bytes"] == plan.unique_bytes
    assert sorted(e["ip"] for e in events if e["event"] == "node_up") == sorted(n.ip for n in cluster.nodes)
    done = {e["ip"]: e["seconds"] for e in events if e["event"] == "node_done"}
    assert done == {n.ip: pytest.approx(n.seconds, abs=1e-3) for n in report.nodes}
    assert "progress" in kinds and "failure" not in kinds
    ended = events[-1]
    assert ended["outcome"] == "ok"
    assert ended["report"]["origin_bytes"] == report.origin_bytes
    assert [n["peer_bytes"] for n in ended["report"]["nodes"]] == [n.peer_bytes for n in report.nodes]
    # Every delivered transfer is in the histogram once: one per chunk a node got from the origin or a peer.
    deliveries = ended["deliveries"]
    received_units = len(plan.unit_sizes) * len(cluster.nodes)
    assert deliveries >= received_units
    assert added(after, before, "xfd_transfer_seconds_count") == deliveries
    assert added(after, before, "xfd_transfer_seconds_bucket", le="+Inf") == deliveries
    assert added(after, before, "xfd_transfer_seconds_count", source="origin") >= len(plan.unit_sizes)
    secrets = [str(v) for k, v in s3.manifest_options(origin.endpoint).items() if "secret" in k or "key_id" in k]
    assert secrets and not any(secret in log.read_text() for secret in secrets), "no store options in the log"

    # A second run: everything is a cache hit, the origin serves nothing.
    before = after
    again = manifest.distribute(plan=plan, progress=None, event_log=log)
    after = exported()
    assert again.ok, again.summary()
    for node in again.nodes:
        assert added(after, before, "xfd_received_bytes_total", node=node.ip, source="cache") == node.cache_bytes > 0
    assert added(after, before, "xfd_received_bytes_total", source="origin") == 0
    assert added(after, before, "xfd_received_bytes_total", source="peer") == 0
    assert added(after, before, "xfd_transfer_seconds_count") == 0
    runs = [e for e in read_events(log) if e["event"] == "run_ended"]
    assert len(runs) == 2 and runs[0]["run"] != runs[1]["run"], "the log is appended to, one id per run"


def test_a_refused_origin_is_counted_by_kind_and_the_failed_run_logged(
    cluster, s3, bucket, artifacts, origin, tmp_path
):
    manifest, plan, log, before = fresh_run(cluster, s3, bucket, origin, tmp_path)
    origin.refuse(f"/{bucket}/root/model.bin", status=403)  # access denied: fatal, not retried
    report = manifest.distribute(plan=plan, progress=None, event_log=log, raise_on_failure=False)
    seen = origin.traffic()
    origin.reset()
    after = exported()
    assert not report.ok

    failed = added(after, before, "xfd_origin_failed_requests_total")
    assert failed >= 1
    assert added(after, before, "xfd_transfer_failures_total", kind="fatal") == failed
    assert added(after, before, "xfd_transfer_failures_total") == failed
    assert added(after, before, "xfd_origin_requests_total") == seen.get_requests  # the refused ones included
    assert added(after, before, "xfd_runs_total", outcome="failed") == 1
    events = read_events(log)
    assert [e for e in events if e["event"] == "failure"], events
    assert events[-1]["event"] == "run_ended" and events[-1]["outcome"] == "failed"
    assert events[-1]["report"]["failures"] == list(report.failures)


def test_an_event_log_that_cannot_be_written_is_refused_before_the_run(cluster, s3, bucket, tmp_path):
    manifest = manifest_for(s3, bucket, s3.endpoint)
    from xfd.errors import ConfigError

    with pytest.raises(ConfigError, match="event_log: cannot append to .*missing.*its directory must exist"):
        manifest.distribute(progress=None, event_log=tmp_path / "missing" / "run.jsonl")
