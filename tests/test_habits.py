"""A session as people have it: the same cell run again, another manifest and back, an object changed at
the origin, a cancelled background run, a restarted kernel, Ctrl-C. All on warm agents (the driver's pool
keeps them between runs), with files left in place between runs as a user leaves them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import obstore
import pytest

from xfd import Manifest
from xfd.engine import state_dir
from xfd.nodes import localize

pytestmark = pytest.mark.cluster
MiB = 1 << 20


@pytest.fixture
def contents(s3, bucket) -> dict[str, bytes]:
    objects = {
        "root/model.bin": os.urandom(3 * MiB + 11),
        "root/tok/a.json": b'{"a": 1}',
        "root/tok/b.json": os.urandom(20_000),
        "root/other.bin": os.urandom(MiB + 5),
    }
    for key, data in objects.items():
        obstore.put(s3.store(bucket), key, data)
    return objects


def builder(s3, bucket, endpoint):
    return (
        Manifest.builder()
        .store("m", f"s3://{bucket}/root", **s3.manifest_options(endpoint))
        .settings(chunk_size="1MiB", node_parallelism=4, upload_slots=4)
    )


def manifest_a(s3, bucket, endpoint) -> Manifest:
    return (
        builder(s3, bucket, endpoint)
        .object("m", "model.bin", to="/habits/model.bin")
        .prefix("m", "tok/", to="/habits/tok")
        .build()
    )


def manifest_b(s3, bucket, endpoint) -> Manifest:
    return builder(s3, bucket, endpoint).object("m", "other.bin", to="/habits/other.bin").build()


def files_a(contents) -> dict[str, bytes]:
    return {
        "/habits/model.bin": contents["root/model.bin"],
        "/habits/tok/a.json": contents["root/tok/a.json"],
        "/habits/tok/b.json": contents["root/tok/b.json"],
    }


def clear(cluster) -> None:
    for node in cluster.nodes:
        subprocess.run(["rm", "-rf", str(node.root / "habits")], check=True)


def assert_on_every_node(cluster, files: dict[str, bytes]) -> None:
    for node in cluster.nodes:
        for destination, data in files.items():
            assert localize(destination, node.root).read_bytes() == data, f"{destination} on {node.ip}"
        # Records, resume records and locks live in the node store: nothing of xfd's is beside the files.
        leftovers = [str(p) for p in (node.root / "habits").rglob("*") if ".xfd" in p.name]
        assert not leftovers, f"xfd files left beside the user's on {node.ip}: {leftovers}"
        assert (state_dir(node.root) / "records.log").exists(), f"no node store on {node.ip}"


def object_bytes(origin) -> int:
    """Object bytes the origin served (planning's LIST responses left out)."""
    return origin.traffic().object_bytes


def assert_cache_hit(report, origin) -> None:
    assert report.ok, report.summary()
    assert object_bytes(origin) == 0, "a cache hit fetched from the origin"
    assert all(n.origin_bytes == n.peer_bytes == 0 for n in report.nodes), report.summary()


def test_running_the_same_cell_again_is_a_cache_hit_every_time(cluster, s3, bucket, contents, origin):
    clear(cluster)
    manifest = manifest_a(s3, bucket, origin.endpoint)
    first = manifest.distribute(progress=None)
    assert first.ok, first.summary()
    for _ in range(3):
        origin.reset()
        assert_cache_hit(manifest.distribute(progress=None), origin)
    assert_on_every_node(cluster, files_a(contents))


def test_one_manifest_then_another_then_the_first_again(cluster, s3, bucket, contents, origin):
    clear(cluster)
    a, b = manifest_a(s3, bucket, origin.endpoint), manifest_b(s3, bucket, origin.endpoint)
    assert a.distribute(progress=None).ok
    assert b.distribute(progress=None).ok
    origin.reset()
    assert_cache_hit(a.distribute(progress=None), origin)
    assert_on_every_node(cluster, files_a(contents) | {"/habits/other.bin": contents["root/other.bin"]})


def test_an_object_changed_at_the_origin_is_fetched_anew_once(cluster, s3, bucket, contents, origin):
    clear(cluster)
    manifest = manifest_a(s3, bucket, origin.endpoint)
    assert manifest.distribute(progress=None).ok
    changed = os.urandom(len(contents["root/model.bin"]))  # same size: only the identity tells
    obstore.put(s3.store(bucket), "root/model.bin", changed)
    origin.reset()

    report = manifest.distribute(progress=None)

    assert report.ok, report.summary()
    assert object_bytes(origin) == len(changed), "the new object once, the unchanged files not at all"
    assert_on_every_node(cluster, files_a(contents) | {"/habits/model.bin": changed})


def test_a_cancelled_background_run_then_a_run_again(cluster, s3, bucket, contents, origin):
    from xfd.errors import DistributionCancelled

    clear(cluster)
    manifest = manifest_a(s3, bucket, origin.endpoint)
    origin.throttle(MiB)
    handle = manifest.distribute(wait=False, progress=None)
    next(handle.snapshots(timeout=120))  # running
    handle.cancel()
    with pytest.raises(DistributionCancelled):
        handle.wait(timeout=120)
    origin.throttle(None)

    report = manifest.distribute(progress=None)

    assert report.ok, report.summary()
    assert_on_every_node(cluster, files_a(contents))


DRIVER = """
import signal, sys, time
import ray, xfd
ray.init(address=sys.argv[2], _node_ip_address="127.0.0.2", logging_level="ERROR")
manifest = xfd.Manifest.load(sys.argv[1])
print("ran", manifest.distribute(progress=None).ok, flush=True)
time.sleep(600)  # a kernel that sits idle with its agents warm, until it is restarted
"""


def test_a_kernel_restart_then_a_run_from_the_new_kernel(cluster, s3, bucket, contents, origin, tmp_path):
    clear(cluster)
    manifest = manifest_a(s3, bucket, origin.endpoint)
    (tmp_path / "artifacts.toml").write_text(manifest.to_toml())
    kernel = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "artifacts.toml"), cluster.address],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert kernel.stdout.readline().strip() == "ran True"
    finally:
        kernel.send_signal(signal.SIGKILL)  # what "restart kernel" does to a busy or idle kernel
        kernel.wait()
        kernel.stdout.close()
    origin.reset()

    assert_cache_hit(manifest.distribute(progress=None), origin)
    assert_on_every_node(cluster, files_a(contents))


INTERRUPTED = """
import sys, time
import ray, xfd
ray.init(address=sys.argv[2], _node_ip_address="127.0.0.2", logging_level="ERROR")
manifest = xfd.Manifest.load(sys.argv[1])
try:
    manifest.distribute(progress=lambda snapshot: print("progress", flush=True))
    print("not interrupted", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
input()  # the test lifts the origin's throttle, then the same cell runs again
report = manifest.distribute(progress=None)
print("again", report.ok, flush=True)
"""


def test_ctrl_c_stops_the_run_and_the_next_run_completes(cluster, s3, bucket, contents, origin, tmp_path):
    clear(cluster)
    manifest = manifest_a(s3, bucket, origin.endpoint)
    (tmp_path / "artifacts.toml").write_text(manifest.to_toml())
    origin.throttle(256 * 1024)  # 3 MiB: about 12 s, far longer than the test waits before the interrupt
    driver = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, str(tmp_path / "artifacts.toml"), cluster.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        while driver.stdout.readline().strip() != "progress":
            assert driver.poll() is None, "the driver ended before the run started"
        wait_until(lambda: object_bytes(origin) > 0)
        driver.send_signal(signal.SIGINT)
        interrupted_at = time.monotonic()
        assert next(line for line in driver.stdout if line.strip() != "progress").strip() == "interrupted"
        wait_until(lambda: origin.responses_in_flight() == 0)  # the origin stops serving the run
        print(f"\ninterrupt to exception and origin quiet: {time.monotonic() - interrupted_at:.2f} s")
        for node in cluster.nodes:  # nothing partial at a destination
            assert not localize("/habits/model.bin", node.root).exists(), node.ip
        origin.throttle(None)
        driver.stdin.write("\n")
        driver.stdin.flush()
        assert driver.stdout.readline().strip() == "again True", "no progress after the interrupt, then a run"
    finally:
        driver.kill()
        driver.wait()
        driver.stdin.close()
        driver.stdout.close()
    assert_on_every_node(cluster, files_a(contents))


def test_a_run_that_times_out_reports_what_the_origin_served(cluster, s3, bucket, contents, origin):
    from xfd.testing.proxy import _THROTTLED_BLOCK

    clear(cluster)
    assert manifest_b(s3, bucket, origin.endpoint).distribute(progress=None).ok  # agents warm: no start-up
    origin.reset()
    origin.throttle(256 * 1024)  # 3 MiB take 12 s: the run times out half-way
    report = manifest_a(s3, bucket, origin.endpoint).distribute(progress=None, timeout=6, raise_on_failure=False)
    wait_until(lambda: origin.responses_in_flight() == 0)
    origin.throttle(None)

    assert not report.ok and any("timed out" in f for f in report.failures), report.summary()
    assert len(set(report.failures)) == len(report.failures), report.failures
    served = object_bytes(origin)
    cut = sum(1 for r in origin.traffic().requests if r.range and r.body_bytes < 1 << 20)
    # What the engines received: the origin's count, less at most one block it wrote into each connection
    # the engines had already closed (cut transfers).
    assert 0 < served - cut * _THROTTLED_BLOCK <= report.origin_bytes <= served, (report.origin_bytes, served)
    for node in cluster.nodes:  # nothing partial was published
        assert not localize("/habits/model.bin", node.root).exists()


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_nodes_without_a_matching_label_are_an_error_not_an_empty_success(cluster, s3, bucket, contents, origin):
    from xfd.errors import ConfigError

    manifest = (
        builder(s3, bucket, origin.endpoint)
        .object("m", "other.bin", to="/habits/other.bin", nodes={"gpu": "h100"})
        .build()
    )
    with pytest.raises(ConfigError, match=r'artifacts\[0\].*"gpu": "h100"'):
        manifest.distribute(progress=None)
    assert origin.traffic().requests == (), "refused before planning: not one request to the store"
