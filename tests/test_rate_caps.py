"""The rate caps of ``[settings]`` on the simulated cluster against the real S3 server: ``origin_rate`` and
``origin_request_rate`` counted by the proxy in front of the origin, ``upload_rate`` by what the one
node that holds everything served while the others needed it.

A cap holds when the rate measured never exceeds it by more than 10 %; nothing here asserts a lower bound on
speed (that depends on the machine).
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import attrs
import obstore
import pytest

from xfd import Manifest

pytestmark = pytest.mark.cluster
MiB = 1 << 20
TOLERANCE = 1.10


def clear_roots(cluster) -> None:
    for node in cluster.nodes:
        for child in node.root.iterdir():
            shutil.rmtree(child)


@attrs.frozen
class Window:
    """The origin's traffic as the proxy counted it, from the first GET it saw to the end of the last
    response it sent."""

    seconds: float
    get_bytes: int
    get_requests: int

    @property
    def byte_rate(self) -> float:
        return self.get_bytes / self.seconds

    @property
    def request_rate(self) -> float:
        return self.get_requests / self.seconds


class OriginWatch:
    """Samples the proxy's own counters every 20 ms while a run goes on."""

    def __init__(self, origin) -> None:
        self.origin = origin
        self.samples: list[tuple[float, int, int, int]] = []  # (time, GETs, GET bytes, responses in flight)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> OriginWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            stopping = self._stop.is_set()
            traffic = self.origin.traffic()
            in_flight = self.origin.responses_in_flight()
            self.samples.append((time.monotonic(), traffic.get_requests, traffic.get_bytes, in_flight))
            if stopping:
                return
            time.sleep(0.02)

    def window(self) -> Window:
        """From the first sample that saw a GET to the first that saw every byte sent and no response open:
        the earliest either could have been is up to one sample before, so the window is if anything
        short, and the rates if anything high."""
        _, requests, total, _ = self.samples[-1]
        start = next(t for t, gets, _, _ in self.samples if gets > 0)
        end = next(
            (t for t, gets, sent, open_ in self.samples if gets == requests and sent == total and open_ == 0), None
        )
        assert end is not None, f"responses still open at the end: {self.samples[-3:]}, {self.origin.traffic()}"
        return Window(end - start, total, requests)


def put_large_files(s3, bucket, count: int) -> None:
    """``count`` objects of 6 MiB, each cut into 2 MiB chunks."""
    for index in range(count):
        obstore.put(s3.store(bucket), f"big/{index}.bin", os.urandom(6 * MiB))


def big_manifest(s3, bucket, endpoint, **settings) -> Manifest:
    # Four origin transfers at once, one GET each: every origin slot is a stream the proxy sees.
    return (
        Manifest.builder()
        .store("m", f"s3://{bucket}/big", **s3.manifest_options(endpoint))
        .settings(chunk_size="2MiB", origin_parallelism=4, origin_chunk_streams=1, upload_slots=2, **settings)
        .prefix("m", "", to="/rate/big")
        .build()
    )


def test_the_origin_serves_the_cluster_within_origin_rate(cluster, s3, bucket, origin):
    # 96 MiB at 12 MB/s: about 8 s. The proxy's window ends when it has handed the last bytes to the
    # socket, a few socket buffers (about 1 MB per stream) before the node has read them: 4 % of 96 MiB.
    cap = 12_000_000
    put_large_files(s3, bucket, 16)
    clear_roots(cluster)
    manifest = big_manifest(s3, bucket, origin.endpoint, origin_rate="12MB/s")
    plan = manifest.plan()
    origin.reset()
    with OriginWatch(origin) as watch:
        report = manifest.distribute(plan=plan, progress=None)
    assert report.ok, report.summary()
    window = watch.window()
    assert window.get_bytes == plan.unique_bytes, (
        f"each byte from the origin once, as without a cap: {report.summary()}"
    )
    print(f"origin_rate: {window.byte_rate / cap:.3f} x the cap ({window})")
    assert window.byte_rate <= cap * TOLERANCE, (window, f"{window.byte_rate / cap:.3f} x the cap")


@pytest.fixture
def small_files(s3, bucket):
    """128 files of 1 to 9 KB: 8 bundles of 16, one GET per file."""
    for index in range(128):
        obstore.put(s3.store(bucket), f"small/{index:03d}.json", os.urandom(1000 + 64 * index))
    return bucket


def test_the_origin_answers_the_cluster_within_origin_request_rate(cluster, s3, small_files, origin):
    cap = 32  # 128 GETs at 32 per second: about 4 s
    clear_roots(cluster)
    manifest = (
        Manifest.builder()
        .store("m", f"s3://{small_files}/small", **s3.manifest_options(origin.endpoint))
        .settings(origin_parallelism=4, origin_chunk_streams=1, origin_request_rate=cap)
        .prefix("m", "", to="/rate/small")
        .build()
    )
    plan = manifest.plan()
    assert len(plan.bundles) == 8
    origin.reset()
    with OriginWatch(origin) as watch:
        report = manifest.distribute(plan=plan, progress=None)
    assert report.ok, report.summary()
    window = watch.window()
    assert window.get_requests == 128
    print(f"origin_request_rate: {window.request_rate / cap:.3f} x the cap ({window})")
    assert window.request_rate <= cap * TOLERANCE, (window, f"{window.request_rate / cap:.3f} x the cap")


def test_a_node_that_holds_everything_serves_the_others_within_upload_rate(cluster, s3, bucket, origin):
    from xfd.runtime import describe_nodes

    cap = 8 * MiB  # 2 upload slots of 4 MiB/s; 48 MiB served at least once: 6 s at least
    put_large_files(s3, bucket, 8)
    clear_roots(cluster)
    manifest = big_manifest(s3, bucket, origin.endpoint, upload_rate="8MiB/s")
    plan = manifest.plan()
    seed = describe_nodes()[0].node_id
    assert manifest.distribute(plan=plan, progress=None, nodes=[seed]).ok
    origin.reset()
    report = manifest.distribute(plan=plan, progress=None)
    assert report.ok, report.summary()
    assert origin.traffic().get_bytes == 0, "everything from the seed and from each other"
    by_id = {node.node_id: node for node in report.nodes}
    seeder, others = by_id.pop(seed), list(by_id.values())
    # The seed could serve only while another node had joined and still needed something.
    start = max(seeder.agent_seconds, min(node.agent_seconds for node in others))
    end = max(node.seconds for node in others)
    rate = seeder.served_bytes / (end - start)
    print(f"upload_rate: {rate / cap:.3f} x the cap ({seeder.served_bytes} bytes over {end - start:.2f} s)")
    assert seeder.served_bytes >= plan.unique_bytes
    assert rate <= cap * TOLERANCE, (seeder, start, end, f"{rate / cap:.3f} x the cap")
