"""``xfd demo``: everything on embedded defaults, on this machine alone.

Starts a local S3-protocol server behind a counting proxy, uploads a sample artifact, starts a simulated
multi-node Ray cluster with one node root per node, puts the artifact on every node, checks every copy
byte for byte (BLAKE3) and prints what the origin served.
"""

from __future__ import annotations

import os
import tempfile
import time

import obstore

from xfd import _core
from xfd.sandbox import CountingProxy, LocalS3

MiB = 1 << 20
BUCKET = "xfd-demo"
KEY = "weights/model.bin"
DESTINATION = "/models/model.bin"


def run_demo(nodes: int = 4, size_mib: int = 64) -> int:
    from xfd.runtime import LocalCluster
    from xfd.runtime.baseline import download_on_every_node

    with tempfile.TemporaryDirectory(prefix="xfd-demo-") as workdir, LocalS3() as s3, CountingProxy(
        s3.endpoint
    ) as origin:
        expected = _upload_sample(s3, size_mib * MiB, workdir)
        print(f"origin    s3://{BUCKET}/{KEY}  {size_mib} MiB  on a local S3 server at {s3.endpoint}")
        started = time.perf_counter()
        with LocalCluster(os.path.join(workdir, "nodes"), num_nodes=nodes) as cluster:
            print(f"cluster   {nodes} simulated nodes up in {time.perf_counter() - started:.1f} s")
            results = download_on_every_node(s3.store(BUCKET, endpoint=origin.endpoint), KEY, DESTINATION)
            for result in sorted(results, key=lambda r: r.node.ip):
                verdict = "ok" if result.blake3 == expected else "MISMATCH"
                print(
                    f"node      {result.node.ip}  {result.size / MiB:.1f} MiB in {result.seconds:.2f} s"
                    f"  -> {result.path}  blake3 {verdict}"
                )
            served = origin.traffic().get_bytes
            unique = size_mib * MiB
            print(
                f"origin    served {served / MiB:.1f} MiB for {unique / MiB:.1f} MiB of unique bytes "
                f"({served / unique:.2f}x): each node fetched the object on its own (naive baseline)"
            )
            print("note      xfd's distribution runtime (origin once, then peer to peer) is not built yet")
            ok = len(results) == len(cluster.nodes) and all(r.blake3 == expected for r in results)
    return 0 if ok else 1


def _upload_sample(s3: LocalS3, size: int, workdir: str) -> str:
    """Uploads ``size`` random bytes as the sample artifact and returns their BLAKE3 digest."""
    local = os.path.join(workdir, "sample.bin")
    with open(local, "wb") as out:
        for _ in range(0, size, 8 * MiB):
            out.write(os.urandom(min(8 * MiB, size - out.tell())))
    store = s3.create_bucket(BUCKET)
    with open(local, "rb") as source:
        obstore.put(store, KEY, source)
    return _core.hash_file_range(local)
