"""``xfd demo``: the whole product on embedded defaults, on this machine alone.

Starts a local S3-protocol server (behind a proxy that counts what the origin serves), uploads sample
artifacts (a large file, a prefix of many small files, a tar.gz), starts a simulated multi-node Ray
cluster with one node root per node, distributes with live progress, checks every file on every node
against the origin byte for byte, and prints the report. Then it uploads a new version of every sample
and distributes again on the same cluster, as a notebook re-running its cell does, and cleans
everything up.

Each run is compared with a bound measured just before it: how long one client takes to GET every
object once from the origin (64 GETs in flight, into memory). Every distribution takes each byte from
the origin at least once, so no run beats it.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time

import obstore

from xfd import Manifest, _core
from xfd.formatting import human_size
from xfd.plan import Plan
from xfd.report import Report
from xfd.testing import CountingProxy, LocalS3, tar_gz

MiB = 1 << 20
BUCKET = "xfd-demo"
IN_FLIGHT = 64


def run_demo(nodes: int = 4, size_mib: int = 128) -> int:
    from xfd.testing import LocalCluster  # imports Ray: only when the demo runs

    with (
        tempfile.TemporaryDirectory(prefix="xfd-demo-") as workdir,
        LocalS3() as s3,
        CountingProxy(s3.endpoint) as origin,
    ):
        print(f"origin    local S3 server at {s3.endpoint}, counted through a proxy at {origin.endpoint}")
        expected = _upload_samples(s3, size_mib, version=1)
        manifest = _manifest(s3, origin.endpoint, chunk_mib=max(1, size_mib // 16))
        plan = manifest.plan()
        print(plan.summary())
        started = time.perf_counter()
        with LocalCluster(os.path.join(workdir, "nodes"), num_nodes=nodes) as cluster:
            print(
                f"cluster   {nodes} simulated nodes up in {time.perf_counter() - started:.1f} s "
                f"({', '.join(n.ip for n in cluster.nodes)})"
            )
            ok = _run(manifest, plan, s3, origin, cluster, expected, "first run: the agents start")
            expected = _upload_samples(s3, size_mib, version=2)
            print("\nnew       version 2 of every sample uploaded; the same cell runs again (agents kept)")
            ok = _run(manifest, manifest.plan(), s3, origin, cluster, expected, "second run") and ok
    return 0 if ok else 1


def _run(manifest: Manifest, plan: Plan, s3: LocalS3, origin: CountingProxy, cluster, expected, title: str) -> bool:
    """Measures the bound, distributes `plan` and verifies; prints what a user wants to know of it."""
    print(f"\n--- {title}")
    bound = _origin_once_seconds(s3, origin.endpoint, [o.key for o in plan.objects])
    origin.reset()
    report = manifest.distribute(plan=plan, raise_on_failure=False)  # the demo shows a failed report too
    print(report.summary())
    _print_pace(report, bound)
    counted = origin.traffic().get_bytes
    print(
        f"origin    served {human_size(counted)} for {human_size(plan.unique_bytes)} of unique bytes "
        f"({counted / plan.unique_bytes:.2f}x), counted at the origin"
    )
    mismatches = _verify(cluster, expected)
    files = len(expected) * len(cluster.nodes)
    print(
        f"verify    {files - len(mismatches)}/{files} files identical to the origin (BLAKE3) on "
        f"{len(cluster.nodes)} nodes" + (f"; MISMATCH: {mismatches[:5]}" if mismatches else "")
    )
    return report.ok and not mismatches


def _print_pace(report: Report, bound: float) -> None:
    agents = max((n.agent_seconds or 0.0) for n in report.nodes)
    print(
        f"bound     the origin serves the sample once in {bound:.2f} s to one client ({IN_FLIGHT} GETs in flight, "
        f"to memory), the pace of any distribution that takes each byte from it once; this run took "
        f"{report.wall_seconds:.2f} s: efficiency {bound / report.wall_seconds:.2f} (its last agent was up at "
        f"{agents:.2f} s)"
    )


def _origin_once_seconds(s3: LocalS3, endpoint: str, keys: list[str]) -> float:
    """How long one client takes to GET every object once through the origin's proxy, with
    ``IN_FLIGHT`` requests in flight and nothing written to disk: a lower bound for any distribution,
    which must take every byte from the origin at least once, measured on this machine, now."""
    store = s3.store(BUCKET, endpoint)
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def get(key: str) -> None:
        async with gate:
            await (await obstore.get_async(store, key)).bytes_async()

    async def get_all() -> None:
        await asyncio.gather(*(get(key) for key in keys))

    started = time.perf_counter()
    asyncio.run(get_all())
    return time.perf_counter() - started


def _upload_samples(s3: LocalS3, size_mib: int, version: int) -> dict[str, str]:
    """Uploads the sample artifacts (each version with other bytes, the same names and sizes); returns
    destination path -> BLAKE3 of the content expected there."""
    store = s3.create_bucket(BUCKET) if version == 1 else s3.store(BUCKET)
    rng = random.Random(7 * version)
    expected: dict[str, str] = {}
    with tempfile.NamedTemporaryFile() as big:
        for _ in range(size_mib):
            big.write(rng.randbytes(MiB))
        big.flush()
        with open(big.name, "rb") as source:
            obstore.put(store, "weights/model.safetensors", source)
        expected["/models/model.safetensors"] = _core.hash_file_range(big.name)
    for index in range(200):
        data = rng.randbytes(rng.randint(1_000, 64_000))
        key = f"tokenizer/shard-{index // 50}/part-{index:03d}.json"
        obstore.put(store, key, data)
        expected[f"/models/tokenizer/{key.removeprefix('tokenizer/')}"] = _digest(data)
    members = {f"images/{i:04d}.bin": rng.randbytes(rng.randint(100, 20_000)) for i in range(300)}
    obstore.put(store, "datasets/images.tar.gz", tar_gz(members))
    for name, data in members.items():
        expected[f"/data/images/{name}"] = _digest(data)
    return expected


def _manifest(s3: LocalS3, endpoint: str, chunk_mib: int) -> Manifest:
    return (
        Manifest.builder()
        .store("demo", f"s3://{BUCKET}", **s3.manifest_options(endpoint))
        .settings(chunk_size=f"{chunk_mib}MiB")
        .object("demo", "weights/model.safetensors", to="/models/model.safetensors", name="weights")
        .prefix("demo", "tokenizer/", to="/models/tokenizer/", name="tokenizer")
        .object("demo", "datasets/images.tar.gz", to="/data/images.tar.gz", name="images")
        .unpack("auto", to="/data/images")
        .build()
    )


def _verify(cluster, expected: dict[str, str]) -> list[str]:
    from xfd.nodes import localize

    mismatches = []
    for node in cluster.nodes:
        for destination, digest in expected.items():
            path = localize(destination, node.root)
            if not path.is_file() or _core.hash_file_range(path) != digest:
                mismatches.append(f"{node.ip}:{destination}")
    return mismatches


def _digest(data: bytes) -> str:
    with tempfile.NamedTemporaryFile() as file:
        file.write(data)
        file.flush()
        return _core.hash_file_range(file.name)
