"""Xenna's entry points run by xfd on the simulated cluster, against a real S3 server."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import obstore
import pytest
from cosmos_xenna import file_distribution as fd
from cosmos_xenna.pipelines import v1 as pipelines

from xfd.nodes import localize
from xfd.testing import CountingProxy, LocalS3, tar_gz
from xfd.xenna import XennaNotFoundError, XennaPermissionError, download_distributed, download_for_stages

MiB = 1 << 20
pytestmark = pytest.mark.timeout(600)


def s3_config(s3: LocalS3, bucket: str, endpoint: str, path: str = "") -> fd.ObjectStoreConfig:
    """What a Xenna user writes for an S3-compatible server (MinIO-style), through the counting proxy."""
    config = fd.ObjectStoreConfig.make_for_s3(
        bucket,
        endpoint=endpoint,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        region="us-east-1",
    )
    config.config_args["allow_http"] = "true"
    config.uri += path
    return config


def put(s3: LocalS3, bucket: str, contents: dict[str, bytes]) -> None:
    for key, data in contents.items():
        obstore.put(s3.store(bucket), key, data)


def object_bytes(origin: CountingProxy) -> int:
    """Body bytes of object GETs at the origin (listing a bucket is a GET too, but of the bucket itself)."""
    return sum(
        r.body_bytes
        for r in origin.traffic().requests
        if r.method == "GET" and r.status < 300 and "/" in r.path.strip("/")
    )


def on_every_node(cluster, path: str) -> list[Path]:
    return [localize(path, node.root) for node in cluster.nodes]


def test_download_distributed_puts_every_request_on_every_node(cluster, s3, bucket, origin: CountingProxy):
    weights = os.urandom(3 * MiB + 5)
    other_bucket = f"{bucket}-b"
    s3.create_bucket(other_bucket)
    put(s3, bucket, {"models/w.bin": weights, "tok/a.json": b"{}", "tok/sub/b.txt": b"b" * 999})
    put(
        s3,
        other_bucket,
        {"sets/ds.tar.gz": tar_gz({"x.txt": b"x" * 4000, "sub/y.txt": b"y"}), "sets/ds.bin": tar_gz({"z.txt": b"z"})},
    )
    configs = fd.ObjectStoreConfigByProfile(
        profiles={
            None: s3_config(s3, bucket, origin.endpoint),
            "datasets": s3_config(s3, other_bucket, origin.endpoint, path="sets"),  # keys below s3://bucket/sets
        }
    )
    requests = [
        fd.DownloadRequest(fd.ObjectDownloadRequest(uri="models/w.bin", destination=Path("/xenna/w.bin"))),
        fd.DownloadRequest(fd.PrefixDownloadRequest(uri="tok/", destination=Path("/xenna/tok-slash"))),
        fd.DownloadRequest(fd.PrefixDownloadRequest(uri="tok", destination=Path("/xenna/tok-bare"))),
        fd.DownloadRequest(
            fd.ObjectDownloadRequest(
                uri="ds.tar.gz",
                destination=Path("/xenna/ds.tar.gz"),
                profile_name="datasets",
                unpack_options=fd.UnpackOptions(Path("/xenna/ds"), fd.UnpackMethod.TAR_GZ),
            )
        ),
        # AUTO on a name without an archive suffix: xfd tells the format from the bytes (Xenna, from the name).
        fd.DownloadRequest(
            fd.ObjectDownloadRequest(
                uri="ds.bin",
                destination=Path("/xenna/ds.bin"),
                profile_name="datasets",
                unpack_options=fd.UnpackOptions(Path("/xenna/ds-auto")),
            )
        ),
        fd.DownloadRequest(fd.ObjectDownloadRequest(uri="models/w.bin", destination=Path("/xenna/w.bin"))),
    ]
    level = logging.getLogger("xfd").level
    origin.reset()
    report = download_distributed(
        requests, configs, chunk_size_bytes=1 * MiB, verbose=True, display_rate_s=1.0, progress="none"
    )
    assert logging.getLogger("xfd").level == level  # verbose for this download only
    assert report.ok and len(report.nodes) == len(cluster.nodes)
    assert object_bytes(origin) == report.unique_bytes  # each byte from the origin once, the repeat too
    for root_path in on_every_node(cluster, "/xenna"):
        assert (root_path / "w.bin").read_bytes() == weights
        for tok in ("tok-slash", "tok-bare"):
            assert (root_path / tok / "a.json").read_bytes() == b"{}"
            assert (root_path / tok / "sub" / "b.txt").read_bytes() == b"b" * 999
        assert (root_path / "ds" / "x.txt").read_bytes() == b"x" * 4000
        assert (root_path / "ds" / "sub" / "y.txt").read_bytes() == b"y"
        assert (root_path / "ds-auto" / "z.txt").read_bytes() == b"z"


def test_missing_objects_and_refused_access_raise_the_builtin_errors_xenna_raises(cluster, s3, bucket, origin):
    put(s3, bucket, {"models/w.bin": b"w"})
    config = s3_config(s3, bucket, origin.endpoint)

    def request(uri: str, prefix: bool = False) -> fd.DownloadRequest:
        kind = fd.PrefixDownloadRequest if prefix else fd.ObjectDownloadRequest
        return fd.DownloadRequest(kind(uri=uri, destination=Path("/xenna/errors")))

    with pytest.raises(FileNotFoundError, match="models/missing.bin does not exist") as caught:
        download_distributed([request("models/missing.bin")], config, progress="none")
    assert isinstance(caught.value, XennaNotFoundError)
    with pytest.raises(FileNotFoundError, match="no objects under"):
        download_distributed([request("nothing/", prefix=True)], config, progress="none")
    origin.refuse(f"/{bucket}/models/")
    with pytest.raises(PermissionError, match="denied") as caught:
        download_distributed([request("models/w.bin")], config, progress="none")
    assert isinstance(caught.value, XennaPermissionError)
    assert object_bytes(origin) == 0  # all refused while planning: nothing downloaded


class WeightsStage(pipelines.Stage):
    def __init__(self, requests: list[fd.DownloadRequest]) -> None:
        self._requests = requests

    @property
    def required_resources(self) -> pipelines.Resources:
        return pipelines.Resources(cpus=1.0)

    @property
    def download_requests(self) -> list[fd.DownloadRequest]:
        return self._requests

    def process_data(self, in_data: list[int]) -> list[int]:
        return in_data


def test_stage_download_requests_are_collected_deduped_and_distributed(cluster, s3, bucket, origin):
    data = {"shared/vocab.txt": b"v" * 5000, "a/model.bin": os.urandom(2 * MiB), "b/model.bin": os.urandom(MiB)}
    put(s3, bucket, data)
    shared = fd.DownloadRequest(fd.ObjectDownloadRequest(uri="shared/vocab.txt", destination=Path("/st/vocab.txt")))
    stages = [
        WeightsStage([shared, fd.DownloadRequest(fd.ObjectDownloadRequest("a/model.bin", Path("/st/a.bin")))]),
        pipelines.StageSpec(WeightsStage([shared, fd.DownloadRequest(fd.PrefixDownloadRequest("b", Path("/st/b")))])),
        WeightsStage([]),
    ]
    config = pipelines.DistributedDownloadConfig(
        object_store_config=s3_config(s3, bucket, origin.endpoint), chunk_size_bytes=MiB, node_parallelism=4
    )
    origin.reset()
    report = download_for_stages(stages, config, progress="none")
    assert report is not None and report.ok
    assert object_bytes(origin) == report.unique_bytes == sum(len(v) for v in data.values())
    for root in (node.root for node in cluster.nodes):
        assert localize("/st/vocab.txt", root).read_bytes() == data["shared/vocab.txt"]
        assert localize("/st/a.bin", root).read_bytes() == data["a/model.bin"]
        assert localize("/st/b/model.bin", root).read_bytes() == data["b/model.bin"]
    assert download_for_stages([WeightsStage([])], config) is None
