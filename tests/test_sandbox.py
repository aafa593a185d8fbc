"""The S3 server fixture and the origin counter, checked against known byte counts."""

from __future__ import annotations

import http.client
import os
from urllib.parse import urlsplit

import obstore
import pytest

from xfd.testing import CountingProxy, LocalS3
from xfd.testing.proxy import _TokenBucket


def test_objects_put_through_obstore_come_back_intact(s3: LocalS3, bucket: str):
    store = s3.store(bucket)
    data = os.urandom(3 * 1024 * 1024 + 5)
    obstore.put(store, "dir/blob.bin", data)
    assert bytes(obstore.get(store, "dir/blob.bin").bytes()) == data
    assert obstore.head(store, "dir/blob.bin")["size"] == len(data)
    assert [m["path"] for m in obstore.list(store, prefix="dir").collect()] == ["dir/blob.bin"]


def test_origin_counter_sees_exactly_the_bytes_served(s3: LocalS3, bucket: str, origin: CountingProxy):
    data = os.urandom(1_000_003)
    obstore.put(s3.store(bucket), "k.bin", data)  # direct, not through the proxy: not counted
    assert origin.traffic().requests == ()

    through_proxy = s3.store(bucket, endpoint=origin.endpoint)
    assert bytes(obstore.get(through_proxy, "k.bin").bytes()) == data
    assert bytes(obstore.get_range(through_proxy, "k.bin", start=10, end=110)) == data[10:110]
    obstore.head(through_proxy, "k.bin")

    traffic = origin.traffic()
    assert traffic.get_requests == 2
    assert traffic.get_bytes == len(data) + 100
    assert traffic.get_bytes_for(f"/{bucket}/k.bin") == len(data) + 100
    assert [r.method for r in traffic.requests] == ["GET", "GET", "HEAD"]
    assert traffic.requests[1].range == "bytes=10-109"
    assert traffic.requests[2].body_bytes == 0


def test_counter_reset_starts_from_zero(s3: LocalS3, bucket: str, origin: CountingProxy):
    obstore.put(s3.store(bucket), "a", b"abc")
    obstore.get(s3.store(bucket, endpoint=origin.endpoint), "a").bytes()
    assert origin.traffic().get_bytes == 3
    origin.reset()
    assert origin.traffic().get_bytes == 0


def test_uploads_through_the_proxy_are_forwarded(s3: LocalS3, bucket: str, origin: CountingProxy):
    through_proxy = s3.store(bucket, endpoint=origin.endpoint)
    obstore.put(through_proxy, "up.bin", b"x" * 4096)
    assert bytes(obstore.get(s3.store(bucket), "up.bin").bytes()) == b"x" * 4096
    assert [r.method for r in origin.traffic().requests] == ["PUT"]
    assert origin.traffic().get_bytes == 0


# Origin fault injection. Raw http.client requests show exactly what a client receives.


def _url(s3: LocalS3, proxy: CountingProxy, bucket: str, key: str) -> str:
    """A presigned path-and-query for ``key`` through ``proxy``: moto refuses unsigned GETs."""
    url = urlsplit(
        s3.client(proxy.endpoint).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    )
    return f"{url.path}?{url.query}"


def _get(s3: LocalS3, origin: CountingProxy, bucket: str, key: str, timeout: float = 30) -> tuple[int, bytes]:
    """One raw GET through the proxy on a fresh connection: (status, whole body)."""
    conn = http.client.HTTPConnection(urlsplit(origin.endpoint).netloc, timeout=timeout)
    try:
        conn.request("GET", _url(s3, origin, bucket, key))
        with conn.getresponse() as response:
            return response.status, response.read()
    finally:
        conn.close()


def test_fail_next_serves_a_burst_of_slowdown_then_forwards(s3: LocalS3, bucket: str, origin: CountingProxy):
    obstore.put(s3.store(bucket), "k", b"payload")
    origin.fail_next(2)
    first, second, third = (_get(s3, origin, bucket, "k") for _ in range(3))
    assert [first[0], second[0], third[0]] == [503, 503, 200]
    assert b"<Code>SlowDown</Code>" in first[1]
    assert third[1] == b"payload"
    requests = origin.traffic().requests
    assert [(r.status, r.fault) for r in requests] == [(503, "slowdown"), (503, "slowdown"), (200, None)]
    assert origin.traffic().get_bytes == len(b"payload")


def test_fail_next_with_500_is_an_internal_error_and_keeps_to_its_prefix(
    s3: LocalS3, bucket: str, origin: CountingProxy
):
    obstore.put(s3.store(bucket), "a/k", b"a")
    obstore.put(s3.store(bucket), "b/k", b"b")
    origin.fail_next(1, status=500, path_prefix=f"/{bucket}/b/")
    assert _get(s3, origin, bucket, "a/k")[0] == 200
    status, body = _get(s3, origin, bucket, "b/k")
    assert (status, b"<Code>InternalError</Code>" in body) == (500, True)
    assert _get(s3, origin, bucket, "b/k")[1] == b"b"


def test_faults_apply_to_gets_only(s3: LocalS3, bucket: str, origin: CountingProxy):
    obstore.put(s3.store(bucket), "k", b"payload")
    through_proxy = s3.store(bucket, endpoint=origin.endpoint)
    origin.fail_next(1)
    assert obstore.head(through_proxy, "k")["size"] == 7
    assert _get(s3, origin, bucket, "k")[0] == 503
    assert [(r.method, r.fault) for r in origin.traffic().requests] == [("HEAD", None), ("GET", "slowdown")]


def test_reset_next_drops_the_connection_mid_body(s3: LocalS3, bucket: str, origin: CountingProxy):
    data = os.urandom(200_000)
    obstore.put(s3.store(bucket), "k", data)
    origin.reset_next(1, after_bytes=1000)
    conn = http.client.HTTPConnection(urlsplit(origin.endpoint).netloc, timeout=30)
    received = bytearray()
    try:
        conn.request("GET", _url(s3, origin, bucket, "k"))
        with conn.getresponse() as response:
            assert (response.status, response.getheader("Content-Length")) == (200, str(len(data)))
            with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
                while chunk := response.read(4096):
                    received += chunk
    finally:
        conn.close()
    # An RST may discard bytes the client had not read yet: at most 1000 arrive, all of them right.
    assert len(received) <= 1000
    assert bytes(received) == data[: len(received)]
    assert _get(s3, origin, bucket, "k")[1] == data
    faulted, whole = origin.traffic().requests
    assert (faulted.status, faulted.body_bytes, faulted.fault) == (200, 1000, "reset")
    assert (whole.body_bytes, whole.fault) == (len(data), None)


def test_stall_next_stalls_one_response_and_not_the_others(s3: LocalS3, bucket: str, origin: CountingProxy):
    data = os.urandom(100_000)
    obstore.put(s3.store(bucket), "k", data)
    origin.stall_next(1, seconds=5.0, after_bytes=10)
    conn = http.client.HTTPConnection(urlsplit(origin.endpoint).netloc, timeout=30)
    try:
        conn.request("GET", _url(s3, origin, bucket, "k"))
        with conn.getresponse() as response:
            assert response.getheader("Content-Length") == str(len(data))
            assert response.read(10) == data[:10]
            # Only now a short read timeout: the headers and the first bytes may be slow on a busy machine.
            assert conn.sock is not None
            conn.sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                response.read(1)
            # Served while the first response is still stalled: a stall holds up only its own request.
            assert _get(s3, origin, bucket, "k")[1] == data
    finally:
        conn.close()
    stalled, whole = origin.traffic().requests
    assert (stalled.status, stalled.body_bytes, stalled.fault) == (200, 10, "stall")
    assert (whole.body_bytes, whole.fault) == (len(data), None)


def test_stop_ends_a_stall_in_progress(s3: LocalS3, bucket: str):
    obstore.put(s3.store(bucket), "k", b"0123456789")
    with CountingProxy(s3.endpoint) as proxy:
        proxy.stall_next(1, seconds=600, after_bytes=2)
        conn = http.client.HTTPConnection(urlsplit(proxy.endpoint).netloc, timeout=60)
        try:
            conn.request("GET", _url(s3, proxy, bucket, "k"))
            with conn.getresponse() as response:
                assert response.read(2) == b"01"
                proxy.stop()
                # The stalled handler wakes and closes the connection: the rest never comes, and no
                # 600 s wait (the client's 60 s timeout would raise TimeoutError instead).
                with pytest.raises(http.client.IncompleteRead):
                    response.read()
        finally:
            conn.close()


def test_token_bucket_makes_callers_wait_in_proportion_to_the_tokens_taken():
    now = [0.0]
    bucket = _TokenBucket(1000.0, burst=100.0, clock=lambda: now[0])
    assert bucket.reserve(100) == 0.0  # the burst is free
    assert bucket.reserve(500) == pytest.approx(0.5)
    # A second caller queues behind the first one's reservation: the cap is shared, not per caller.
    assert bucket.reserve(500) == pytest.approx(1.0)
    now[0] = 1.0  # the debt is paid off exactly
    assert bucket.reserve(2000) == pytest.approx(2.0)
    now[0] = 100.0  # a long idle spell refills only up to the burst
    assert bucket.reserve(100) == 0.0
    assert bucket.reserve(10) == pytest.approx(0.01)


def test_token_bucket_bursts_at_most_one_second_of_its_rate():
    assert _TokenBucket(10.0, clock=lambda: 0.0).reserve(20) == pytest.approx(1.0)


def test_throttled_gets_still_return_the_right_bytes(s3: LocalS3, bucket: str, origin: CountingProxy):
    data = os.urandom(1 << 20)
    obstore.put(s3.store(bucket), "k", data)
    origin.throttle(2 * (1 << 20))
    through_proxy = s3.store(bucket, endpoint=origin.endpoint)
    assert bytes(obstore.get(through_proxy, "k").bytes()) == data
    assert bytes(obstore.get_range(through_proxy, "k", start=5, end=70_005)) == data[5:70_005]
    assert origin.traffic().get_bytes == len(data) + 70_000


def test_obstore_survives_slowdown_and_a_reset(s3: LocalS3, bucket: str, origin: CountingProxy):
    data = os.urandom(300_000)
    obstore.put(s3.store(bucket), "k", data)
    through_proxy = s3.store(bucket, endpoint=origin.endpoint)
    origin.fail_next(2)
    assert bytes(obstore.get(through_proxy, "k").bytes()) == data
    origin.reset_next(1, after_bytes=100)
    assert bytes(obstore.get(through_proxy, "k").bytes()) == data
    faults = [r.fault for r in origin.traffic().requests]
    assert faults.count("slowdown") == 2
    assert faults.count("reset") == 1


def test_reset_clears_pending_faults_and_the_throttle(s3: LocalS3, bucket: str, origin: CountingProxy):
    data = os.urandom(200_000)
    obstore.put(s3.store(bucket), "k", data)
    origin.fail_next(1)
    origin.reset_next(1)
    origin.stall_next(1, seconds=600)
    origin.throttle(1.0)  # were it left on, 200 kB would take days and the 10 s timeout below would fire
    origin.reset()
    assert _get(s3, origin, bucket, "k", timeout=10) == (200, data)
    assert [(r.status, r.fault) for r in origin.traffic().requests] == [(200, None)]
