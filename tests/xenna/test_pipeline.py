"""A real Xenna pipeline (``run_pipeline``) whose stages' downloads are run by xfd, side by side with the
same pipeline run by Xenna's own downloader.

The stages are CPU-only and pinned one worker per node; each worker reads its files in ``setup``, on its
own node (as a stage loads its weights), and records what it read. The pipeline asks for an object, a
prefix and an archive to unpack, through Xenna's own collection and dedupe.

Xenna's own downloader runs on a one-node Ray of the test's own (``xenna_reference``), before the shared
cluster starts: it writes to the very paths the requests name and keeps its chunks in one ``/tmp/chunks``
per machine, so it can only run one simulated node per machine (its ``testing_info`` mode, which gives
fake nodes their own directories, is not reachable from ``run_pipeline``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest
import ray
import ray.cloudpickle
from cosmos_xenna import file_distribution as fd
from cosmos_xenna.pipelines import v1 as pipelines

import xfd.xenna
from xfd.nodes import localize, resolve_node_root
from xfd.testing import CountingProxy, LocalS3, tar_gz

MiB = 1 << 20
XENNA_SIDECAR = ".s3_cache_info"  # Xenna's cache records, beside each file and in each unpacked directory
pytestmark = pytest.mark.timeout(600)

# The stages run in Ray workers, which cannot import this test module: ship its code with them.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

CONTENTS = {
    "models/w.bin": os.urandom(3 * MiB + 17),
    "tok/vocab.txt": b"[PAD]\n[UNK]\n" * 700,
    "tok/sub/merges.txt": os.urandom(5000),
    "tokens/not-under-tok.txt": b"a sibling of tok/: not part of the prefix",
    "sets/eval.tar.gz": tar_gz({"eval/a.json": b'{"a": 1}', "eval/b.bin": os.urandom(70_000)}),
}
# What the stages read, below the pipeline's base directory, and the bytes each must hold.
READ = {
    "models/w.bin": CONTENTS["models/w.bin"],
    "tok/vocab.txt": CONTENTS["tok/vocab.txt"],
    "tok/sub/merges.txt": CONTENTS["tok/sub/merges.txt"],
    "eval/eval/a.json": b'{"a": 1}',
}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ReadsOnItsNode(pipelines.Stage):
    """Loads its files in ``setup`` on the node it runs on and writes what it read to ``results``.

    Its tasks wait until every worker of the pipeline has done so (``workers`` records in ``results``):
    a pipeline of a few inputs would otherwise end, and stop the workers still starting, before each
    node's worker has read its files.
    """

    def __init__(
        self,
        name: str,
        cpus: float,
        requests: list[fd.DownloadRequest],
        reads: list[str],
        base: str,
        results: str,
        workers: int,
    ) -> None:
        self._name, self._cpus, self._requests = name, cpus, requests
        self._reads, self._base, self._results, self._workers = reads, base, results, workers

    @property
    def required_resources(self) -> pipelines.Resources:
        return pipelines.Resources(cpus=self._cpus)

    @property
    def download_requests(self) -> list[fd.DownloadRequest]:
        return self._requests

    def setup(self, worker_metadata: pipelines.WorkerMetadata) -> None:
        context = ray.get_runtime_context()
        labels = {k: (v[0] if isinstance(v, list) else v) for k, v in context.get_node_labels().items()}
        root = resolve_node_root(labels=labels)  # "/" on a real node; the node root on a simulated one
        read = {path: digest(localize(f"{self._base}/{path}", root).read_bytes()) for path in self._reads}
        record = {"stage": self._name, "node": context.get_node_id(), "read": read}
        Path(self._results, f"{self._name}-{context.get_node_id()}.json").write_text(json.dumps(record))

    def process_data(self, batch: list[int]) -> list[int]:
        deadline = time.monotonic() + 120
        while (done := len(list(Path(self._results).glob("*.json")))) < self._workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done} of the pipeline's {self._workers} workers read their files in 120 s")
            time.sleep(0.1)
        return batch


def request(uri: str, to: str, unpack_to: str | None = None) -> fd.DownloadRequest:
    unpack = fd.UnpackOptions(Path(unpack_to), fd.UnpackMethod.AUTO) if unpack_to else None
    return fd.DownloadRequest(fd.ObjectDownloadRequest(uri=uri, destination=Path(to), unpack_options=unpack))


def pipeline(base: Path, results: Path, nodes: int) -> pipelines.PipelineSpec:
    """Two stages, one worker on every node each (0.6 + 0.3 CPU: a node of 1 CPU holds one of each)."""
    weights = request("models/w.bin", f"{base}/models/w.bin")
    embed = ReadsOnItsNode(
        "embed",
        0.6,
        [weights, request("sets/eval.tar.gz", f"{base}/sets/eval.tar.gz", unpack_to=f"{base}/eval")],
        ["models/w.bin", "eval/eval/a.json"],
        str(base),
        str(results),
        2 * nodes,
    )
    tokenize = ReadsOnItsNode(
        "tokenize",
        0.3,
        [
            fd.DownloadRequest(fd.PrefixDownloadRequest("tok/", base / "tok")),
            weights,
        ],  # the same weights again: Xenna's dedupe drops it
        ["tok/vocab.txt", "tok/sub/merges.txt", "models/w.bin"],
        str(base),
        str(results),
        2 * nodes,
    )
    # All of a node's CPU (Xenna keeps 5% back by default, which leaves none of a 1-CPU simulated node).
    config = pipelines.PipelineConfig(
        return_last_stage_outputs=True, logging_interval_s=5.0, cpu_allocation_percentage=1.0
    )
    return pipelines.PipelineSpec(
        input_data=list(range(6)),
        config=config,
        stages=[
            pipelines.StageSpec(embed, num_workers_per_node=1),
            pipelines.StageSpec(tokenize, num_workers_per_node=1),
        ],
    )


def download_config(s3: LocalS3, bucket: str, endpoint: str) -> pipelines.DistributedDownloadConfig:
    store = fd.ObjectStoreConfig.make_for_s3(
        bucket,
        endpoint=endpoint,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        region="us-east-1",
    )
    store.config_args["allow_http"] = "true"
    return pipelines.DistributedDownloadConfig(object_store_config=store, chunk_size_bytes=1 * MiB)


def files_below(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): digest(p.read_bytes()) for p in sorted(directory.rglob("*")) if p.is_file()}


def object_bytes(origin: CountingProxy) -> int:
    """Body bytes of object GETs at the origin (listing a bucket is a GET too, but of the bucket itself)."""
    return sum(
        r.body_bytes
        for r in origin.traffic().requests
        if r.method == "GET" and r.status < 300 and "/" in r.path.strip("/")
    )


def stage_records(results: Path) -> dict[tuple[str, str], dict[str, str]]:
    records = [json.loads(p.read_text()) for p in results.glob("*.json")]
    return {(r["stage"], r["node"]): r["read"] for r in records}


def expected_reads(reads: list[str]) -> dict[str, str]:
    return {path: digest(READ[path]) for path in reads}


@pytest.fixture(scope="session")
def pipeline_bucket(s3: LocalS3) -> str:
    store = s3.create_bucket("xenna-pipeline")
    for key, data in CONTENTS.items():
        obstore.put(store, key, data)
    return "xenna-pipeline"


@pytest.fixture(scope="session")
def xenna_reference(tmp_path_factory, s3, pipeline_bucket, _origin_proxy) -> Iterator[tuple[Path, dict]]:
    """The pipeline run by Xenna's own downloader on the one-node Ray that Xenna starts: the files it left
    below the pipeline's base directory, and what its stages read."""
    assert not ray.is_initialized(), "Xenna's own downloader runs before the shared cluster starts (conftest)"
    base, results = tmp_path_factory.mktemp("xenna-own"), tmp_path_factory.mktemp("xenna-own-reads")
    address = os.environ.get("RAY_ADDRESS")
    # run_pipeline starts Ray as Xenna does (cosmos_xenna.ray_utils.cluster.init_or_connect_to_cluster);
    # "local": a new one, whatever `ray start` cluster this machine has (or had: a stale record waits forever).
    os.environ["RAY_ADDRESS"] = "local"
    try:
        assert not xfd.xenna.is_installed()
        outputs = pipelines.run_pipeline(
            pipeline(base, results, nodes=1), download_config(s3, pipeline_bucket, _origin_proxy.endpoint)
        )
        assert sorted(outputs) == list(range(6))
    finally:
        ray.shutdown()
        if address is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = address
    yield base, {"files": files_below(base), "reads": stage_records(results)}


def test_run_pipeline_downloads_with_xfd_on_every_node_like_xennas_own_downloader(
    xenna_reference, cluster, s3, pipeline_bucket, origin: CountingProxy, tmp_path
):
    _, xenna = xenna_reference
    base, results = tmp_path / "run", tmp_path / "reads"
    results.mkdir()
    spec = pipeline(base, results, nodes=len(cluster.nodes))
    config = download_config(s3, pipeline_bucket, origin.endpoint)
    origin.reset()

    with xfd.xenna.use_xfd(progress="none") as switch:
        outputs = pipelines.run_pipeline(spec, config)  # the user's code, unchanged
    assert not xfd.xenna.is_installed()

    assert sorted(outputs) == list(range(6))
    # Every stage read its files on every node, with the bytes of the origin.
    node_ids = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    reads = stage_records(results)
    assert sorted(reads) == sorted((stage, node) for stage in ("embed", "tokenize") for node in node_ids)
    for (stage, _), read in reads.items():
        assert read == expected_reads(list(read)) and len(read) == (2 if stage == "embed" else 3)
    # One download, by xfd (Xenna's own downloader never ran): the origin served each byte once.
    [report] = switch.reports
    wanted = ["models/w.bin", "tok/vocab.txt", "tok/sub/merges.txt", "sets/eval.tar.gz"]
    traffic = origin.traffic()
    assert {key: traffic.get_bytes_for(f"/{pipeline_bucket}/{key}") for key in CONTENTS} == {
        key: len(data) if key in wanted else 0 for key, data in CONTENTS.items()
    }
    assert report.ok and report.unique_bytes == report.origin_bytes == sum(len(CONTENTS[k]) for k in wanted)
    # Side by side: every node holds the files Xenna's own downloader left, and nothing else; Xenna also
    # leaves its cache records (*.s3_cache_info) beside them, xfd keeps its records in the node store.
    theirs = xenna["files"]
    assert {path for path in theirs if XENNA_SIDECAR in path} == {
        "models/w.bin.s3_cache_info",
        "sets/eval.tar.gz.s3_cache_info",
        "tok/vocab.txt.s3_cache_info",
        "tok/sub/merges.txt.s3_cache_info",
        "eval/.s3_cache_info",
    }
    their_files = {path: sha for path, sha in theirs.items() if XENNA_SIDECAR not in path}
    for node in cluster.nodes:
        assert files_below(localize(str(base), node.root)) == their_files
    assert {stage for stage, _ in xenna["reads"]} == {"embed", "tokenize"}
    assert all(read == expected_reads(list(read)) for read in xenna["reads"].values())


def test_background_downloader_and_the_pre_pipeline_download_run_on_xfd_once(
    cluster, s3, pipeline_bucket, origin: CountingProxy, tmp_path
):
    base = tmp_path / "run"
    spec = pipeline(base, tmp_path, nodes=len(cluster.nodes))
    config = download_config(s3, pipeline_bucket, origin.endpoint)
    origin.reset()

    with xfd.xenna.use_xfd(progress="none") as switch:
        with pipelines.BackgroundArtifactDownloader(spec.stages, config) as downloader:
            pass  # other preparation would run here, while Xenna's thread downloads
        assert downloader.is_complete
        pipelines.download_artifacts(spec.stages, config)  # what run_pipeline(spec, config) does next

    background, before_pipeline = switch.reports
    assert background.ok and background.origin_bytes == background.unique_bytes > 0
    assert before_pipeline.ok and before_pipeline.origin_bytes == 0  # every file found: nothing fetched twice
    assert object_bytes(origin) == background.origin_bytes
    for node in cluster.nodes:
        assert localize(f"{base}/models/w.bin", node.root).read_bytes() == CONTENTS["models/w.bin"]
        assert localize(f"{base}/tok/sub/merges.txt", node.root).read_bytes() == CONTENTS["tok/sub/merges.txt"]
        assert localize(f"{base}/eval/eval/a.json", node.root).read_bytes() == READ["eval/eval/a.json"]
