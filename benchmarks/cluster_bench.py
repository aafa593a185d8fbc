"""Cluster benchmark: xfd against naive per-node downloads and Ray's object store, on the simulated cluster.

    .venv/bin/python -m benchmarks.cluster_bench [--nodes 1 2 4 8] [--workloads file-1g prefix ...]
        [--systems xfd naive ray] [--repeats 3] [--cap-mbps 100 0] [--out build/bench/cluster.jsonl]

Origin: SeaweedFS on loopback behind ``xfd-origin-proxy`` (``rust/xfd-bench``), which caps the origin's
total egress with one token bucket shared by all clients (``--cap-mbps``, 0: uncapped) and counts the
object bytes it served. Cluster: ``xfd.runtime.LocalCluster`` with N nodes, one root directory each.
Systems run in rotating order within each repeat. Per run: wall time, origin bytes / unique bytes,
efficiency T_min / T, peak RSS of the busiest Ray worker process (xfd: the node agents) and CPU seconds
of the Ray workers and the driver. Each run is a JSON line in ``--out``; a Markdown table at the end.

T_min on one machine: every node writes its copy to the same disk, so
T_min = max(F / u_origin, N F / D_box), where u_origin is the cap (uncapped: the origin rate measured
by one 8-stream reader at start) and D_box the machine's write + fsync rate with N writers, measured
for each N (``d_node = D_box / N``; loopback upload is not the limit, so the swarm term N F / (u_origin + sum u) is
below the disk term).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import obstore
import psutil

from benchmarks.systems import PIECE, Item, Workload, run_naive, run_ray_broadcast, run_xfd

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
# Prefixes of 1 KiB objects: a tokenizer or dataset directory (many-small), and 100,000 files (100k).
SMALL_FILES = {"many-small": 5_000, "100k": 100_000}
BUCKET = "bench"
ROOT = Path(__file__).resolve().parents[1]


# --- the origin ------------------------------------------------------------------------------------


class OriginProxy:
    """``xfd-origin-proxy`` in front of ``upstream`` (host:port); built by ``cargo build -p xfd-bench``."""

    def __init__(self, upstream: str, bytes_per_sec: int) -> None:
        binary = ROOT / "target" / "release" / "xfd-origin-proxy"
        if not binary.exists():
            raise SystemExit("build the proxy first: cargo build --release -p xfd-bench (make bench does)")
        self.process = subprocess.Popen([str(binary), upstream, str(bytes_per_sec)], stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline() if self.process.stdout else ""
        self.endpoint = "http://" + line.strip().removeprefix("listening on ")

    def call(self, path: str, method: str = "GET") -> dict[str, Any]:
        request = urllib.request.Request(f"{self.endpoint}/__xfd_proxy/{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def set_rate(self, bytes_per_sec: int) -> None:
        self.call(f"rate?bytes_per_sec={bytes_per_sec}", "POST")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# --- workloads -------------------------------------------------------------------------------------


def upload_workloads(store: Any, names: list[str]) -> dict[str, Workload]:
    from xfd.testing import tar_gz

    def put_random(key: str, size: int) -> Item:
        blocks = (os.urandom(min(PIECE, size - start)) for start in range(0, size, PIECE))
        obstore.put(store, key, blocks, chunk_size=PIECE)
        return Item(key, size, f"/bench/{key}")

    def put_small(prefix: str, count: int, size: int) -> tuple[Item, ...]:
        # 64 uploads at once: 100,000 objects one by one would take longer than the benchmark itself.
        async def upload() -> tuple[Item, ...]:
            gate = asyncio.Semaphore(64)

            async def one(index: int) -> Item:
                key = f"{prefix}f-{index:06d}.bin"
                async with gate:
                    await obstore.put_async(store, key, os.urandom(size))
                return Item(key, size, f"/bench/{key}")

            return tuple(await asyncio.gather(*(one(i) for i in range(count))))

        return asyncio.run(upload())

    workloads: dict[str, Workload] = {}
    for name in names:
        if name in ("file-1g", "file-4g"):
            size = GiB if name == "file-1g" else 4 * GiB
            item = put_random(f"{name}.bin", size)
            workloads[name] = Workload(name, (item,), ({"kind": "object", "key": item.key, "to": item.to},))
        elif name == "tiny":
            obstore.put(store, "tiny.bin", b"x")
            item = Item("tiny.bin", 1, "/bench/tiny.bin")
            workloads[name] = Workload(name, (item,), ({"kind": "object", "key": item.key, "to": item.to},))
        elif name == "prefix":
            items = tuple(put_random(f"prefix/part-{i:03d}.bin", 2 * MiB) for i in range(500))
            workloads[name] = Workload(name, items, ({"kind": "prefix", "prefix": "prefix/", "to": "/bench/prefix/"},))
        elif name == "targz":
            # ~500 MiB of incompressible members of 64 KiB to 256 KiB: many small files to unpack.
            members, total, index = {}, 0, 0
            while total < 500 * MiB:
                size = (64 + (index * 37) % 193) * 1024
                members[f"shard-{index // 1000:02d}/member-{index:05d}.bin"] = os.urandom(size)
                total, index = total + size, index + 1
            data = tar_gz(members)
            obstore.put(store, "archive.tar.gz", data)
            item = Item("archive.tar.gz", len(data), "/bench/archive.tar.gz", unpack_to="/bench/archive")
            workloads[name] = Workload(
                name, (item,), ({"kind": "object", "key": item.key, "to": item.to, "unpack": item.unpack_to},)
            )
        elif name in SMALL_FILES:
            prefix = f"{name}/"
            items = put_small(prefix, SMALL_FILES[name], KiB)
            workloads[name] = Workload(name, items, ({"kind": "prefix", "prefix": prefix, "to": f"/bench/{prefix}"},))
        elif name == "mixed":
            big = put_random("mixed/weights.bin", 256 * MiB)
            small = tuple(put_random(f"mixed/tok/part-{i:03d}.bin", 2 * MiB) for i in range(100))
            workloads[name] = Workload(
                name,
                (big, *small),
                (
                    {"kind": "object", "key": big.key, "to": big.to},
                    {"kind": "prefix", "prefix": "mixed/tok/", "to": "/bench/mixed/tok/"},
                ),
            )
        else:
            raise SystemExit(f"unknown workload {name!r}")
    return workloads


# --- measurements ----------------------------------------------------------------------------------


# The Ray worker processes that do each system's work, by process title: xfd's node agents, the naive
# per-node download tasks, the Ray-broadcast receivers.
WORKER_TITLES = {"xfd": "ray::NodeAgent", "naive": "ray::_naive_node", "ray": "ray::_receive_node"}


class WorkerSampler:
    """Samples Ray worker processes (``ray::...`` titles) every 100 ms: peak RSS of the system's own
    workers (``title``), CPU seconds of every busy worker."""

    def __init__(self, title: str = "ray::") -> None:
        self.title = title
        self.peak_rss_own = 0
        self.peak_rss_driver = 0
        self._driver = psutil.Process()
        self.peak_rss: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.cpu_before: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkerSampler:
        # Idle workers too: one that turns busy during the run counts from here, not from its start.
        for proc in self._workers(idle=True):
            self.cpu_before[proc.pid] = self._cpu(proc)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_driver = max(self.peak_rss_driver, self._driver.memory_info().rss)
            for proc in self._workers():
                try:
                    rss = proc.memory_info().rss
                    self.peak_rss[proc.pid] = max(self.peak_rss.get(proc.pid, 0), rss)
                    if (proc.info.get("cmdline") or [""])[0].startswith(self.title):
                        self.peak_rss_own = max(self.peak_rss_own, rss)
                    self.cpu[proc.pid] = self._cpu(proc)
                except psutil.Error:
                    pass
            self._stop.wait(0.1)

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return times.user + times.system

    @staticmethod
    def _workers(idle: bool = False) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            title = (proc.info.get("cmdline") or [""])[0]
            if title.startswith("ray::") and (idle or not title.startswith("ray::IDLE")):
                found.append(proc)
        return found

    @property
    def worker_cpu_s(self) -> float:
        return sum(cpu - self.cpu_before.get(pid, 0.0) for pid, cpu in self.cpu.items())


def measure_disk_sustained(directory: Path, streams: int, total: int) -> float:
    """Write + fsync rate with ``streams`` files written at once, ``total`` bytes in all: what N nodes
    sharing this machine's disk get together (a short probe only sees the host's write cache)."""
    from concurrent.futures import ThreadPoolExecutor

    block = os.urandom(8 * MiB)
    per_stream = max(total // streams // len(block), 1)

    def write(index: int) -> None:
        path = directory / f"disk-probe-{index}.bin"
        with open(path, "wb") as out:
            for _ in range(per_stream):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        path.unlink()

    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(write, range(streams)))
    return streams * per_stream * len(block) / (time.perf_counter() - started)


def measure_origin(store: Any, item: Item) -> float:
    """Rate of one reader with 8 ranged GETs of 64 MiB in flight, bytes per second (into memory)."""
    from benchmarks.systems import _ranges

    started = time.perf_counter()
    asyncio.run(_ranges(store, item))
    return item.size / (time.perf_counter() - started)


def clear_destinations(cluster: Any) -> None:
    for node in cluster.nodes:
        shutil.rmtree(Path(node.root) / "bench", ignore_errors=True)


def one_run(
    system: str,
    workload: Workload,
    run: Callable[[], Any],
    proxy: OriginProxy,
    n: int,
    cap: int,
    u_origin: float,
    d_box: float,
) -> dict[str, Any]:
    proxy.call("reset", "POST")
    driver_before = resource.getrusage(resource.RUSAGE_SELF)
    box_before = psutil.cpu_times()
    with WorkerSampler(WORKER_TITLES.get(system, "ray::")) as sampler:
        started = time.perf_counter()
        result = run()
        wall = time.perf_counter() - started
    driver_after = resource.getrusage(resource.RUSAGE_SELF)
    box_after = psutil.cpu_times()
    idle = (box_after.idle + box_after.iowait) - (box_before.idle + box_before.iowait)
    total = sum(box_after) - sum(box_before)
    stats = proxy.call("stats")
    f = workload.unique_bytes
    record = {
        "system": system,
        "workload": workload.name,
        "nodes": n,
        "cap_mbps": cap / 1e6,
        "wall_s": wall,
        "unique_bytes": f,
        "origin_bytes": stats["object_get_bytes"],
        "origin_ratio": stats["object_get_bytes"] / f,
        "peak_worker_rss_mib": sampler.peak_rss_own / MiB,
        "peak_driver_rss_mib": sampler.peak_rss_driver / MiB,
        # The whole machine's CPU, busy / available during the run (every process: servers included).
        "box_cpu_busy": 1 - idle / total if total else 0.0,
        "box_iowait": (box_after.iowait - box_before.iowait) / total if total else 0.0,
        "cpu_s": sampler.worker_cpu_s
        + (driver_after.ru_utime + driver_after.ru_stime)
        - (driver_before.ru_utime + driver_before.ru_stime),
    }
    if system == "xfd":
        record["startup_s"] = result.startup_seconds
    return {**record, **bounds(record, u_origin, d_box)}


def bounds(record: dict[str, Any], u_origin: float, d_box: float) -> dict[str, Any]:
    """T_min = max(F / u_origin, N F / D_box) for this run, and its efficiencies."""
    f, n, wall = record["unique_bytes"], record["nodes"], record["wall_s"]
    t_min = max(f / u_origin, n * f / d_box)
    derived: dict[str, Any] = {"t_min_s": t_min, "efficiency": t_min / wall}
    if "startup_s" in record:
        derived["efficiency_after_startup"] = t_min / max(wall - record["startup_s"], 1e-9)
    return derived


# --- the whole benchmark ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--workloads", nargs="+", default=["file-1g", "file-4g", "prefix", "targz", "mixed"])
    parser.add_argument("--systems", nargs="+", default=["xfd", "naive", "ray"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cap-mbps", type=float, nargs="+", default=[100.0, 0.0], help="origin caps to run, MB/s (0: uncapped)"
    )
    parser.add_argument("--chunk-mib", type=int, default=None, help="xfd's chunk size (default: xfd's automatic size)")
    parser.add_argument("--base-dir", default=None, help="where node roots live (default: a temporary directory)")
    parser.add_argument("--out", default="build/bench/cluster.jsonl")
    parser.add_argument("--table", metavar="JSONL", help="only print the table of an earlier results file")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]))
        return

    from benchmarks.seaweed import LocalSeaweed
    from xfd.runtime import LocalCluster

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = Path(args.base_dir or tempfile.mkdtemp(prefix="xfd-cluster-bench-", dir="/var/tmp"))
    records: list[dict[str, Any]] = []
    with LocalSeaweed() as seaweed:
        seaweed.create_bucket(BUCKET)
        workloads = upload_workloads(seaweed.store(BUCKET), args.workloads)
        proxy = OriginProxy(seaweed.endpoint.removeprefix("http://"), 0)
        try:
            options = seaweed.manifest_options(proxy.endpoint)
            store = seaweed.store(BUCKET, proxy.endpoint)
            time.sleep(10)  # let the server finish digesting the uploads before probing it
            biggest = max((i for w in workloads.values() for i in w.items), key=lambda i: i.size)
            origin_uncapped = max(measure_origin(store, biggest) for _ in range(2))
            print(f"machine: origin uncapped {origin_uncapped / 1e6:.0f} MB/s", flush=True)
            for n in args.nodes:
                with LocalCluster(base / f"n{n}", num_nodes=n, object_store_memory=1536 * MiB) as cluster:
                    import ray

                    node_ids = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
                    biggest_total = max(w.unique_bytes for w in workloads.values()) * n
                    d_box = measure_disk_sustained(base, n, min(biggest_total, 8 * GiB))
                    print(f"N={n}: disk write+fsync, {n} writers: {d_box / 1e6:.0f} MB/s", flush=True)
                    cold = True  # this driver's first xfd run on this cluster starts its agents
                    for cap_mbps in args.cap_mbps:
                        cap = int(cap_mbps * 1e6)
                        proxy.set_rate(cap)
                        u_origin = cap or origin_uncapped
                        for workload in workloads.values():
                            systems = {
                                "xfd": lambda w=workload, ids=node_ids: run_xfd(
                                    w,
                                    f"s3://{BUCKET}",
                                    options,
                                    ids,
                                    args.chunk_mib * MiB if args.chunk_mib else "auto",
                                ),
                                "naive": lambda w=workload, ids=node_ids: run_naive(w, store, ids),
                                "ray": lambda w=workload, ids=node_ids: run_ray_broadcast(w, store, ids),
                            }
                            order = [s for s in args.systems if s in systems]
                            for repeat in range(args.repeats):
                                for system in order[repeat % len(order) :] + order[: repeat % len(order)]:
                                    clear_destinations(cluster)
                                    record = one_run(system, workload, systems[system], proxy, n, cap, u_origin, d_box)
                                    record.update(
                                        repeat=repeat,
                                        disk_mbps=d_box / 1e6,
                                        chunk_mib=args.chunk_mib or "auto",
                                        origin_uncapped_mbps=origin_uncapped / 1e6,
                                        first_run=system == "xfd" and cold,
                                    )
                                    cold = cold and system != "xfd"
                                    records.append(record)
                                    with out.open("a") as sink:
                                        sink.write(json.dumps(record) + "\n")
                                    print(json.dumps(record), flush=True)
                    clear_destinations(cluster)
        finally:
            proxy.stop()
            shutil.rmtree(base, ignore_errors=True)
    print(table(records))


def _startup(runs: list[dict[str, Any]]) -> str:
    starts = [r["startup_s"] for r in runs if "startup_s" in r]
    return f"{statistics.median(starts):.2f} s (first {starts[0]:.2f} s)" if starts else "-"


def _first_run(runs: list[dict[str, Any]]) -> str:
    """A driver's first run (its agents start) against the median of its warm runs."""
    first = [r["wall_s"] for r in runs if r.get("first_run")]
    warm = [r["wall_s"] for r in runs if not r.get("first_run")]
    if not first or not warm:
        return "-"
    return f"{first[0]:.2f} s = {first[0] / statistics.median(warm):.2f}x warm"


def rebound(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """T_min and efficiency again, from the best rates seen anywhere in the benchmark.

    A probe can run while the machine is busy and read low, which would make T_min too small to be a
    bound. Every run also demonstrates rates: the origin served ``origin_bytes`` in ``wall_s`` (uncapped
    runs) and the disk took ``N F`` in ``wall_s`` (every run). The best of probes and runs is what this
    machine can do, so T_min from it is a bound no run beats.
    """
    u_origin = max(
        [r["origin_uncapped_mbps"] * 1e6 for r in records]
        + [r["origin_bytes"] / r["wall_s"] for r in records if not r["cap_mbps"]]
    )
    # The disk is shared by the N nodes: its rate is taken per N (sustained probe, or any run at that N).
    d_box: dict[int, float] = {}
    for r in records:
        seen = max(r["disk_mbps"] * 1e6, r["nodes"] * r["unique_bytes"] / r["wall_s"])
        d_box[r["nodes"]] = max(d_box.get(r["nodes"], 0.0), seen)
    out = []
    for r in records:
        u = r["cap_mbps"] * 1e6 or u_origin
        rates = {"u_origin_mbps": u / 1e6, "d_box_mbps": d_box[r["nodes"]] / 1e6}
        out.append({**r, **bounds(r, u, d_box[r["nodes"]]), **rates})
    return out


def table(records: list[dict[str, Any]]) -> str:
    records = rebound(records)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["workload"], r["cap_mbps"], r["nodes"], r["system"]), []).append(r)
    lines = [
        "| workload | origin cap | N | system | median wall | origin / unique | efficiency | "
        "xfd startup | first run | peak worker RSS | peak driver RSS | CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (workload, cap, n, system), runs in groups.items():
        warm = [r for r in runs if not r.get("first_run")] or runs
        wall = statistics.median(r["wall_s"] for r in warm)
        median_run = min(warm, key=lambda r: abs(r["wall_s"] - wall))
        lines.append(
            f"| {workload} | {f'{cap:.0f} MB/s' if cap else 'none'} | {n} | {system} | {wall:.2f} s "
            f"({len(warm)} runs) | {median_run['origin_ratio']:.2f}x | {median_run['efficiency']:.2f} | "
            f"{_startup(runs)} | {_first_run(runs)} | {max(r['peak_worker_rss_mib'] for r in runs):.0f} MiB | "
            f"{max(r.get('peak_driver_rss_mib', 0) for r in runs):.0f} MiB | {median_run['cpu_s']:.1f} |"
        )
    u = {r["u_origin_mbps"] for r in records if not r["cap_mbps"]}
    if records:
        origin = f"uncapped origin {max(u):.0f} MB/s, " if u else ""
        disks = ", ".join(f"N={n}: {d:.0f}" for n, d in sorted({(r["nodes"], r["d_box_mbps"]) for r in records}))
        lines.append(f"\nT_min from: {origin}machine disk MB/s shared by N writers ({disks}; best of probes and runs)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
