"""The S3 server fixture and the origin counter, checked against known byte counts."""

from __future__ import annotations

import os

import obstore

from xfd.sandbox import CountingProxy, LocalS3


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
