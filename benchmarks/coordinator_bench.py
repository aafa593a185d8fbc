"""What one coordinator step costs in Python, without Ray: the ceiling of the central coordinator.

    .venv/bin/python -m benchmarks.coordinator_bench [--nodes 64 256 1024] [--chunks 1600]

Drives ``xfd.scheduler.Scheduler`` (the Python wrapper over the Rust state machine, as the coordinator
uses it) with every transfer finishing in random order, and adds per step what the coordinator does
besides: the progress model's bookkeeping and the stall check. Prints microseconds per delivery; the
Ray calls (one ``events`` answer per agent per batch, one ``assign`` per agent per step) come on top.
"""

from __future__ import annotations

import argparse
import random
import time

from xfd.progress import ProgressModel
from xfd.scheduler import Scheduler


def run(nodes: int, chunks: int) -> tuple[int, float]:
    chunk_ids = [f"{i:064x}" for i in range(chunks)]
    node_ids = [f"node-{i}" for i in range(nodes)]
    scheduler = Scheduler(chunk_ids, node_ids, origin_parallelism=4, download_slots=8, upload_slots=8)
    progress = ProgressModel({c: 64 << 20 for c in chunk_ids}, chunks * (64 << 20))
    for node in node_ids:
        progress.add_node(node, node, chunk_ids)
    rng = random.Random(1)
    active: list = []
    deliveries = 0
    started = time.perf_counter()
    while not scheduler.done:
        active.extend(scheduler.next_transfers())
        index = rng.randrange(len(active))
        active[index], active[-1] = active[-1], active[index]
        transfer = active.pop()
        scheduler.finished(transfer)
        source = "origin" if transfer.from_origin else "peer"
        progress.chunk_done(transfer.node, transfer.chunk, source, 0.5, "" if transfer.from_origin else transfer.source)
        _ = scheduler.done
        deliveries += 1
    return deliveries, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--chunks", type=int, default=400)
    args = parser.parse_args()
    for nodes in args.nodes:
        deliveries, seconds = run(nodes, args.chunks)
        print(f"{nodes} nodes x {args.chunks} chunks: {deliveries} deliveries in {seconds:.1f} s, "
              f"{1e6 * seconds / deliveries:.1f} us per delivery ({deliveries / seconds:,.0f} per second)")


if __name__ == "__main__":
    main()
