"""Micro-benchmark of one node engine: origin -> disk and peer -> disk, against the obvious baseline.

    .venv/bin/python -m benchmarks.engine_bench [--sizes-mib 256 1024] [--repeats 3]

Origin: SeaweedFS on loopback (ranged GETs cost O(range)). Each measurement runs in a fresh process so
its peak RSS is its own. Systems, same object, same concurrency (8 ranges of 64 MiB in flight):

- ``xfd origin``: the Rust engine fetching every chunk from the origin into a part file, then publishing;
- ``obstore loop``: obstore's ``get_range_async`` per range, each buffer written with ``os.pwrite``
  (what users write by hand today);
- ``xfd peer``: a second engine fetching every chunk from the first over loopback HTTP.

Prints a JSON line per measurement and a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
BUCKET = "bench"
CHUNK = 64 * MiB
IN_FLIGHT = 8


def manifest_for(endpoint_options: dict, key: str):
    from xfd import Manifest

    options = dict(endpoint_options)
    options.update(options.pop("client_options"))
    return (
        Manifest.builder()
        .store("b", f"s3://{BUCKET}", **options)
        .settings(chunk_size=CHUNK, node_parallelism=IN_FLIGHT)
        .object("b", key, to="/bench/object.bin")
        .build()
    )


def keep_in_flight(engine, submit, items) -> None:
    """Submits ``items`` keeping IN_FLIGHT of them running; returns when the file is published."""
    pending = list(items)
    running = 0
    published = False
    while pending or running or not published:
        while pending and running < IN_FLIGHT:
            submit([pending.pop(0)])
            running += 1
        for event in engine.wait_events(5.0):
            if event["kind"] == "chunk_done":
                running -= 1
            elif event["kind"] == "chunk_failed":
                raise RuntimeError(event["error"])
            elif event["kind"] == "file_published":
                published = True


def phase_xfd_origin(options: dict, key: str, root: str) -> float:
    from xfd.engine import node_engine

    manifest = manifest_for(options, key)
    plan = manifest.plan()
    engine = node_engine(plan, manifest.stores, root)
    engine.scan()
    started = time.perf_counter()
    keep_in_flight(engine, engine.submit_origin, [c.id for c in plan.objects[0].chunks])
    return time.perf_counter() - started


def phase_obstore_loop(options: dict, key: str, root: str) -> float:
    import obstore
    from obstore.store import S3Store

    store = S3Store(BUCKET, **options)
    size = obstore.head(store, key)["size"]
    path = Path(root) / "object.bin"
    path.parent.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, size)
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(start: int) -> None:
            async with gate:
                data = await obstore.get_range_async(store, key, start=start, end=min(size, start + CHUNK))
                await asyncio.to_thread(os.pwrite, fd, memoryview(data), start)

        try:
            await asyncio.gather(*(one(start) for start in range(0, size, CHUNK)))
            os.fsync(fd)
        finally:
            os.close(fd)

    started = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - started


def phase_xfd_peer(options: dict, key: str, root: str) -> float:
    from xfd.engine import node_engine

    manifest = manifest_for(options, key)
    plan = manifest.plan()
    token = "b" * 64
    seeder = node_engine(plan, manifest.stores, Path(root) / "seeder", peer_token=token)
    seeder.scan()
    keep_in_flight(seeder, seeder.submit_origin, [c.id for c in plan.objects[0].chunks])
    digests = {e["chunk_id"]: e["digest"] for e in seeder.drain_events() if e["kind"] == "chunk_done"}
    host, port = seeder.start_server("127.0.0.1", 0, upload_slots=IN_FLIGHT)
    leecher = node_engine(plan, manifest.stores, Path(root) / "leecher", peer_token=token)
    leecher.scan()
    started = time.perf_counter()
    keep_in_flight(
        leecher, leecher.submit_peer, [(c.id, host, port, digests.get(c.id)) for c in plan.objects[0].chunks]
    )
    elapsed = time.perf_counter() - started
    seeder.stop_server(1.0)
    return elapsed


PHASES = {"xfd origin": phase_xfd_origin, "obstore loop": phase_obstore_loop, "xfd peer": phase_xfd_peer}


def child(phase: str, options_json: str, key: str) -> None:
    with tempfile.TemporaryDirectory(prefix="xfd-bench-", dir=os.environ.get("XFD_BENCH_DIR")) as root:
        seconds = PHASES[phase](json.loads(options_json), key, root)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss": rss}))


def measure(phase: str, options: dict, key: str) -> dict:
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.engine_bench", "--child", phase, json.dumps(options), key],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def upload(store, key: str, size: int) -> None:
    import obstore

    with tempfile.NamedTemporaryFile() as file:
        for _ in range(size // MiB):
            file.write(os.urandom(MiB))
        file.flush()
        with open(file.name, "rb") as source:
            obstore.put(store, key, source, chunk_size=16 * MiB, max_concurrency=4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("PHASE", "OPTIONS", "KEY"))
    parser.add_argument(
        "--dest-dir",
        default=None,
        help="where destination files go (default: the temp dir); /dev/shm takes the disk out",
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from benchmarks.seaweed import LocalSeaweed

    if args.dest_dir:
        os.environ["XFD_BENCH_DIR"] = args.dest_dir

    rows = []
    with LocalSeaweed() as seaweed:
        store = seaweed.create_bucket(BUCKET)
        options = seaweed.store_options()
        for size_mib in args.sizes_mib:
            key = f"object-{size_mib}.bin"
            upload(store, key, size_mib * MiB)
            results: dict[str, list[dict]] = {phase: [] for phase in PHASES}
            for repeat in range(args.repeats):
                order = list(PHASES) if repeat % 2 == 0 else list(reversed(PHASES))
                for phase in order:
                    result = measure(phase, options, key)
                    results[phase].append(result)
                    print(json.dumps({"phase": phase, "size_mib": size_mib, **result}), flush=True)
            for phase, runs in results.items():
                seconds = statistics.median(r["seconds"] for r in runs)
                rows.append(
                    (phase, size_mib, seconds, size_mib * MiB / seconds / 1e6, max(r["peak_rss"] for r in runs) / MiB)
                )
    print("\n| system | object | median time | throughput | peak RSS of the process |")
    print("| --- | --- | --- | --- | --- |")
    for phase, size_mib, seconds, mbps, rss in rows:
        print(f"| {phase} | {size_mib} MiB | {seconds:.2f} s | {mbps:.0f} MB/s | {rss:.0f} MiB |")


if __name__ == "__main__":
    main()
