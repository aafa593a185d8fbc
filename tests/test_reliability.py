"""Faults survived on the simulated cluster, with the real S3 server and real peer transfers.

Each scenario ends the same way: every surviving node holds files byte-identical to the origin, or the
run reports a clear error; no destination ever holds a damaged file; a rerun completes the job. The
node faults come from the engine's fault points (``publish:abort`` kills the node's agent process at
that exact moment, as ``kill -9`` would); the origin faults from the counting proxy in front of S3.
See docs/reliability.md for the list of scenarios and what xfd does in each.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import obstore
import pytest

from xfd import Manifest
from xfd.engine import state_dir
from xfd.errors import DistributionError
from xfd.nodes import localize
from xfd.testing import faults, tar_gz

pytestmark = pytest.mark.cluster
MiB = 1 << 20
MEMBERS = {f"part-{i}.txt": os.urandom(3000 + i) for i in range(8)}


@pytest.fixture
def contents(s3, bucket) -> dict[str, bytes]:
    objects = {
        "root/model.bin": os.urandom(9 * MiB + 7),
        "root/tok/a.json": b'{"a": 1}',
        "root/tok/b.json": os.urandom(50_000),
        "root/data.tar.gz": tar_gz(MEMBERS),
    }
    for key, data in objects.items():
        obstore.put(s3.store(bucket), key, data)
    return objects


def expected_files(contents: dict[str, bytes]) -> dict[str, bytes]:
    """Destination -> bytes, for every file a node must end up with (the unpacked members included)."""
    files = {
        "/models/model.bin": contents["root/model.bin"],
        "/tok/a.json": contents["root/tok/a.json"],
        "/tok/b.json": contents["root/tok/b.json"],
        "/data/data.tar.gz": contents["root/data.tar.gz"],
    }
    return files | {f"/data/data/{name}": data for name, data in MEMBERS.items()}


def manifest_for(s3, bucket, endpoint, settings=None, **store_options) -> Manifest:
    return (
        Manifest.builder()
        .store("m", f"s3://{bucket}/root", **s3.manifest_options(endpoint), **store_options)
        .settings(chunk_size="1MiB", node_parallelism=4, upload_slots=4, **(settings or {}))
        .object("m", "model.bin", to="/models/model.bin")
        .prefix("m", "tok/", to="/tok")
        .object("m", "data.tar.gz", to="/data/data.tar.gz")
        .unpack()
        .build()
    )


def clear_roots(cluster) -> None:
    for node in cluster.nodes:
        for child in node.root.iterdir():
            subprocess.run(["rm", "-rf", str(child)], check=True)


def visible_files(root: Path) -> dict[str, Path]:
    """Every file a user would see under a node root, by destination (hidden names left out)."""
    return {
        "/" + str(path.relative_to(root)): path
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    }


def assert_no_damaged_file(root: Path, expected: dict[str, bytes]) -> None:
    """What a node shows is the origin's bytes or nothing: never a partial or mixed file."""
    for destination, path in visible_files(root).items():
        assert destination in expected, f"unexpected file {destination} on {root.name}"
        assert path.read_bytes() == expected[destination], f"{destination} on {root.name} is damaged"


def assert_complete(root: Path, expected: dict[str, bytes]) -> None:
    assert set(visible_files(root)) == set(expected), root.name
    assert_no_damaged_file(root, expected)
    assert not xfd_names(root), f"xfd files left beside the user's on {root.name}: {xfd_names(root)}"


def xfd_names(root: Path) -> list[str]:
    """Every name of xfd's under a node root, its node store left out (records, resume records and locks
    live there): after a run, none may remain beside the user's files."""
    store = state_dir(root)
    return [str(p) for p in root.rglob("*") if ".xfd" in p.name and store not in p.parents]


def second_node():
    from xfd.runtime import describe_nodes

    return sorted(describe_nodes(), key=lambda n: n.ip)[1]


@pytest.mark.parametrize(
    "fault", ["origin-fetch:abort", "chunk-recorded:abort@3", "publish:abort", "unpack-entry:abort@3"]
)
def test_a_node_killed_at_any_moment_damages_nothing_and_a_rerun_completes(
    cluster, s3, bucket, contents, origin, fault
):
    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    plan = manifest.plan()
    victim = second_node()
    expected = expected_files(contents)

    with faults({victim.node_id: fault}):
        report = manifest.distribute(plan=plan, progress=None)

    assert report.lost_nodes == (victim.ip,), report.summary()
    assert report.ok, report.summary()  # the survivors got everything
    for node in cluster.nodes:
        if node.ip != victim.ip:
            assert_complete(node.root, expected)
    assert_no_damaged_file(victim.root, expected)

    origin.reset()
    rerun = manifest.distribute(plan=plan, progress=None)
    assert rerun.ok, rerun.summary()
    for node in cluster.nodes:
        assert_complete(node.root, expected)
    assert origin.traffic().get_bytes == 0, "the rerun takes what is missing from peers, not the origin"


@pytest.mark.parametrize(
    "fault, symptom",
    [("serve:corrupt", "digest"), ("serve:truncate", "bytes of chunk"), ("serve:stall", "no complete answer")],
)
def test_a_peer_serving_bad_bytes_dying_or_hanging_is_survived(cluster, s3, bucket, contents, origin, fault, symptom):
    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    plan = manifest.plan()
    bad = second_node()

    with faults({bad.node_id: fault}):
        report = manifest.distribute(plan=plan, progress=None)

    assert report.ok, report.summary()
    for node in cluster.nodes:
        assert_complete(node.root, expected_files(contents))
    others = [n for n in report.nodes if n.node_id != bad.node_id]
    assert any(symptom in f for n in others for f in n.failures), report.summary()
    # Whatever the peer did, the origin served at most the chunks that only the bad peer held once more.
    assert origin.traffic().get_bytes <= plan.unique_bytes * 1.5


def test_origin_slowdowns_resets_stalls_and_throttling_are_ridden_out(cluster, s3, bucket, contents, origin):
    clear_roots(cluster)
    # The store's own client timeout bounds a stalled response (the default is 30 s).
    manifest = manifest_for(s3, bucket, origin.endpoint, timeout="3s")
    plan = manifest.plan()
    origin.reset()
    origin.fail_next(12, status=503)
    origin.fail_next(4, status=500)
    origin.reset_next(3, after_bytes=100_000)
    origin.stall_next(2, seconds=60, after_bytes=1000)
    origin.throttle(64 * MiB)

    report = manifest.distribute(plan=plan, progress=None)

    assert report.ok, report.summary()
    for node in cluster.nodes:
        assert_complete(node.root, expected_files(contents))
    traffic = origin.traffic()
    played = [r.fault for r in traffic.requests]
    assert (played.count("slowdown"), played.count("reset"), played.count("stall")) == (16, 3, 2)
    assert sum(r.status == 500 for r in traffic.requests) == 4
    partial = sum(r.body_bytes for r in traffic.requests if r.fault in ("reset", "stall"))
    # Broken-off bodies are resumed from their last byte: the origin served each byte about once.
    assert plan.unique_bytes <= traffic.get_bytes <= plan.unique_bytes + partial


def test_an_origin_that_keeps_failing_ends_the_run_with_its_error(cluster, s3, bucket, contents, origin):
    clear_roots(cluster)
    quick_retries = {"origin_attempts": 2, "origin_backoff": 0.01, "origin_max_backoff": 0.05}
    manifest = manifest_for(s3, bucket, origin.endpoint, settings=quick_retries)
    plan = manifest.plan()
    origin.refuse(f"/{bucket}/root/model.bin", 500)  # down for that object, for good

    report = manifest.distribute(plan=plan, progress=None, timeout=240, raise_on_failure=False)

    assert not report.ok, report.summary()
    assert any('origin fetch of "model.bin" failed' in f for f in report.failures), report.summary()
    assert not any("timed out" in f for f in report.failures), "the run waited for its timeout"
    for node in cluster.nodes:
        assert_no_damaged_file(node.root, expected_files(contents))
        assert not localize("/models/model.bin", node.root).exists()


def test_an_object_overwritten_mid_run_is_reported_and_never_mixed(cluster, s3, bucket, contents, origin):
    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    plan = manifest.plan()
    origin.throttle(1 * MiB)
    handle = manifest.distribute(plan=plan, progress=None, wait=False, raise_on_failure=False)
    wait_until(lambda: origin.traffic().get_bytes_for(f"/{bucket}/root/model.bin") >= MiB, "the first chunk")
    obstore.put(s3.store(bucket), "root/model.bin", os.urandom(len(contents["root/model.bin"])))
    origin.throttle(None)

    report = handle.wait(timeout=240)

    assert not report.ok
    assert any("changed at the origin since it was planned" in f for f in report.failures), report.summary()
    for node in cluster.nodes:
        assert_no_damaged_file(node.root, expected_files(contents))  # old bytes or nothing, never mixed


def test_two_runs_of_one_manifest_on_the_same_nodes_do_not_collide(cluster, s3, bucket, contents, origin):
    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    plan = manifest.plan()
    origin.throttle(256 * 1024)  # the first run is still writing when the second one starts
    first = manifest.distribute(plan=plan, progress=None, wait=False)
    wait_until(lambda: origin.traffic().get_bytes_for(f"/{bucket}/root/model.bin") > 0, "the first run to fetch")

    with pytest.raises(DistributionError) as raised:
        manifest.distribute(plan=plan, progress=None)
    second = raised.value.report
    origin.throttle(None)
    first_report = first.wait(timeout=240)

    assert not second.ok
    assert all(n.state == "failed" for n in second.nodes), second.summary()
    assert any("is being written by another xfd run on this node" in f for f in second.failures), second.summary()
    assert first_report.ok, first_report.summary()
    for node in cluster.nodes:
        assert_complete(node.root, expected_files(contents))
    third = manifest.distribute(plan=plan, progress=None)
    assert third.ok and third.origin_bytes == 0, third.summary()


DRIVER = """
import sys, ray, xfd
ray.init(address=sys.argv[2], _node_ip_address="127.0.0.2", logging_level="ERROR")
xfd.Manifest.load(sys.argv[1]).distribute(progress=None)
"""


def test_a_driver_killed_mid_run_is_resumed_by_a_rerun_fetching_only_missing_chunks(
    cluster, s3, bucket, contents, origin, tmp_path
):
    clear_roots(cluster)
    manifest = manifest_for(s3, bucket, origin.endpoint)
    plan = manifest.plan()
    (tmp_path / "artifacts.toml").write_text(manifest.to_toml())
    origin.throttle(2 * MiB)
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "artifacts.toml"), cluster.address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: len(recorded_chunks(cluster)) >= 3, "a few chunks on disk", driver)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    first_run_bytes = origin.traffic().get_bytes
    wait_until(lambda: no_destination_locked(cluster), "the killed driver's agents to end")
    recorded = recorded_chunks(cluster)
    recorded_bytes = sum(c.length for o in plan.objects for c in o.chunks if c.id in recorded)
    origin.reset()

    report = manifest.distribute(plan=plan, progress=None)

    assert report.ok, report.summary()
    for node in cluster.nodes:
        assert_complete(node.root, expected_files(contents))
    rerun_bytes = origin.traffic().get_bytes
    assert 0 < recorded_bytes and rerun_bytes <= plan.unique_bytes - recorded_bytes
    print(
        f"\ndriver killed: unique {plan.unique_bytes} B, fetched before the kill {first_run_bytes} B, "
        f"recorded on disk {recorded_bytes} B, fetched by the rerun {rerun_bytes} B"
    )


def recorded_chunks(cluster) -> set[str]:
    """Chunk ids that resume records in the node stores list (the bytes a rerun need not fetch again): the
    log's lines replayed as the engine does, part files announced, chunks added, parts forgotten."""
    ids: set[str] = set()
    for node in cluster.nodes:
        parts: dict[str, set[str]] = {}
        for op in store_lines(node.root):
            if op.get("op") == "partial":
                parts[op["dest"]] = set()
            elif op.get("op") == "chunks" and op["dest"] in parts:
                parts[op["dest"]] |= set(op["chunks"])
            elif op.get("op") == "forget" and op.get("what") == "part":
                parts.pop(op["dest"], None)
        ids = ids.union(*parts.values())
    return ids


def store_lines(root: Path) -> list[dict]:
    try:
        text = (state_dir(root) / "records.log").read_text()
    except FileNotFoundError:
        return []
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # the last line, being written right now
    return lines


def no_destination_locked(cluster) -> bool:
    """Whether no process holds a destination's lock: a byte-range lock on the node store's ``locks`` file
    (one byte per destination from byte 1 on; POSIX locks of this process conflict with the engines')."""
    for node in cluster.nodes:
        locks = state_dir(node.root) / "locks"
        if not locks.exists():
            continue
        with locks.open("r+b") as file:
            try:
                fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 1)  # from byte 1 to the end and beyond
            except OSError as error:
                if error.errno in (errno.EACCES, errno.EAGAIN):
                    return False
                raise
    return True


def wait_until(condition, what: str, process: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, f"the driver ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
