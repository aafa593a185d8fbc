"""Planning and notebook reprs with many files: one prefix of N small objects, step by step.

    .venv/bin/python -m benchmarks.plan_bench [--files 100000] [--size 1024] [--store none|file|s3]
                                              [--flat] [--nodes 4] [--steps plan summary ... scan]

``--store none`` (the default) builds the listing in memory and compiles it with the planner's own
assembly (``xfd.plan._assemble``): what ``plan()`` does once the store has answered. ``--store file``
writes the N files into a temporary directory and plans it through a ``file://`` store: ``plan()`` end
to end, LIST included. ``--store s3`` does the same against the moto S3 server, which runs in a child
process (so the driver's peak RSS is the driver's own); its objects are put straight into moto's memory.
For both, a bare obstore LIST of the prefix is timed first, so the store's share of ``plan()`` shows.

Files are spread over directories of 1,000 (``--flat``: all in one). Then, on the compiled plan:
``summary()``, ``_repr_html_()``, ``repr()``, ``to_json()``, the agent's ``Plan.from_json`` (Python), the
Rust ``Plan::from_json`` + ``Engine::new`` (``xfd._core.Engine``: the plan's JSON parsed and checked, then
each object's destinations on this node), the coordinator's start (the Rust coordinator with ``--nodes``
nodes joined, ``chunks_for`` per node, up to its first snapshot) and one progress tick of the widget (its
status as a snapshot with chunk states, and the chunk map). Opt-in step ``scan``: the engine's first look
at an empty node root (a lock and a part file per file). Prints a JSON line per step (seconds, and the
peak RSS of this process so far) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PREFIX = "data"
BUCKET = "plan-bench"
STEPS = ("plan", "summary", "repr_html", "repr", "to_json", "from_json", "engine", "coordinator", "tick")
# Not by default: it writes a lock and a part file per file under a temporary node root.
OPT_IN = ("scan",)
FILES_PER_DIRECTORY = 1000


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def key(index: int, flat: bool = False) -> str:
    if flat:
        return f"{PREFIX}/part-{index:06d}.bin"
    return f"{PREFIX}/shard-{index // FILES_PER_DIRECTORY:03d}/part-{index:06d}.bin"


def timed(name: str, files: int, action: Callable[[], Any], results: list[dict[str, Any]]) -> Any:
    started = time.perf_counter()
    value = action()
    row = {
        "step": name,
        "files": files,
        "seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mib": round(peak_rss_mib()),
    }
    print(json.dumps(row), flush=True)
    results.append(row)
    return value


# --- the plan, from memory, a directory or moto --------------------------------------------------------


def synthetic_plan(files: int, size: int, flat: bool, results: list[dict[str, Any]]) -> Any:
    from xfd.manifest import Manifest, PrefixArtifact, Settings, Store
    from xfd.plan import _assemble, _Found

    manifest = Manifest(
        stores={"s": Store("s3://bench")},
        artifacts=(PrefixArtifact(store="s", prefix=PREFIX, to="/data"),),
        settings=Settings(),
    )
    listing = [_Found(key(i, flat), size, f'"{i:032x}"', None, "2026-11-30T00:00:00+00:00") for i in range(files)]
    return timed("plan", files, lambda: _assemble(manifest, [listing]), results)


def directory_plan(files: int, size: int, flat: bool, results: list[dict[str, Any]]) -> Any:
    import obstore
    from obstore.store import LocalStore

    from xfd import Manifest

    root = Path(tempfile.mkdtemp(prefix="xfd-plan-bench-"))
    try:
        body = b"x" * size
        for index in range(files):
            path = root / key(index, flat)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
        timed("list (file store)", files, lambda: obstore.list(LocalStore(str(root)), prefix=PREFIX).collect(), results)
        manifest = Manifest.builder().store("s", root.as_uri()).prefix("s", PREFIX, to="/data").build()
        return timed("plan", files, manifest.plan, results)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _moto(files: int, size: int, flat: bool, ready: Any, stop: Any) -> None:
    from moto.backends import get_backend
    from moto.core import DEFAULT_ACCOUNT_ID

    from xfd.testing import LocalS3

    with LocalS3() as server:
        backend = get_backend("s3")[DEFAULT_ACCOUNT_ID]["global"]
        backend.create_bucket(BUCKET, "us-east-1")
        body = b"x" * size
        for index in range(files):
            backend.put_object(BUCKET, key(index, flat), body)
        ready.send(server.manifest_options())
        stop.wait()


def s3_plan(files: int, size: int, flat: bool, results: list[dict[str, Any]]) -> Any:
    import obstore
    from obstore.store import S3Store

    from xfd import Manifest

    context = multiprocessing.get_context("spawn")
    ready, child_end = context.Pipe()
    stop = context.Event()
    server = context.Process(target=_moto, args=(files, size, flat, child_end, stop), daemon=True)
    server.start()
    try:
        options = ready.recv()
        store_options = {k: v for k, v in options.items() if k != "allow_http"}
        store = S3Store(BUCKET, **store_options, client_options={"allow_http": True})
        timed("list (moto)", files, lambda: obstore.list(store, prefix=PREFIX).collect(), results)
        manifest = Manifest.builder().store("s", f"s3://{BUCKET}", **options).prefix("s", PREFIX, to="/data").build()
        return timed("plan", files, manifest.plan, results)
    finally:
        stop.set()
        server.join(timeout=30)


# --- what is done with the plan -----------------------------------------------------------------------


def engine(plan_json: str, stores: dict[str, Any], root: str) -> Any:
    from xfd import _core

    return _core.Engine(plan_json, root, {name: (store.url, []) for name, store in stores.items()})


def coordinator_start(plan: Any, nodes: int) -> Any:
    """The Rust coordinator (``xfd._core.Coordinator``: its control server, the scheduler, the progress
    model) started for ``nodes`` nodes, each joined with what it needs, up to its first snapshot of them all.
    No agent links to it: the nodes' addresses are never dialled."""
    from xfd import _core

    names = [f"node-{i}" for i in range(nodes)]
    control = _core.Coordinator(
        list(plan.unit_sizes.items()),
        plan.unique_bytes,
        "0" * 64,
        "127.0.0.1",
        names,
        origin_parallelism=32,
        origin_chunk_streams=8,
        download_slots=8,
        upload_slots=8,
        with_chunks=True,
        origin_hold=0.0,
        snapshot_every=0.05,
    )
    for name in names:
        control.join(name, "127.0.0.1:9", plan.chunks_for({}), [])
    deadline = time.monotonic() + 60
    while len(control.wait(0.05)["snapshot"]["nodes"]) < nodes:
        if time.monotonic() > deadline:
            control.end()
            raise RuntimeError(f"the coordinator's snapshot did not show all {nodes} nodes within 60 s")
    return control


def tick(plan: Any, control: Any) -> str:
    """One progress tick of the widget: the coordinator's status as a snapshot with chunk states, and the
    chunk map drawn from it."""
    from xfd.notebook.widget import chunk_map_html
    from xfd.progress import Snapshot

    return chunk_map_html(Snapshot.from_core(control.status(), list(plan.unit_sizes)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per object")
    parser.add_argument("--store", choices=("none", "file", "s3"), default="none")
    parser.add_argument(
        "--flat",
        action="store_true",
        help=f"every file in one directory (default: {FILES_PER_DIRECTORY} per directory)",
    )
    parser.add_argument("--nodes", type=int, default=4, help="nodes of the coordinator and tick steps")
    parser.add_argument("--steps", nargs="+", choices=STEPS + OPT_IN, default=list(STEPS))
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    make = {"none": synthetic_plan, "file": directory_plan, "s3": s3_plan}[args.store]
    plan = make(args.files, args.size, args.flat, results)
    from xfd.plan import Plan

    n = len(plan.files)
    steps: dict[str, Callable[[], Any]] = {
        "summary": plan.summary,
        "repr_html": plan._repr_html_,
        "repr": lambda: repr(plan),
        "to_json": plan.to_json,
    }
    for name, action in steps.items():
        if name in args.steps:
            timed(name, n, action, results)
    if {"from_json", "engine", "scan"} & set(args.steps):
        text = plan.to_json()
        if "from_json" in args.steps:
            timed("from_json", n, lambda: Plan.from_json(text), results)
        if {"engine", "scan"} & set(args.steps):
            with tempfile.TemporaryDirectory(prefix="xfd-plan-bench-root-") as root:
                built = timed("engine", n, lambda: engine(text, dict(plan.stores), root), results)
                try:
                    if "scan" in args.steps:
                        timed("scan", n, built.scan, results)
                except OSError as error:  # the engine keeps files open per destination: see docs/benchmarks.md
                    print(json.dumps({"step": "scan", "files": n, "error": str(error)}), flush=True)
                finally:
                    built.close()
    if {"coordinator", "tick"} & set(args.steps):
        control = timed("coordinator", n, lambda: coordinator_start(plan, args.nodes), results)
        try:
            if "tick" in args.steps:
                timed("tick", n, lambda: tick(plan, control), results)
        finally:
            control.end()
    print("\n| step | files | seconds | peak RSS so far |\n| --- | --- | --- | --- |")
    for row in results:
        print(f"| {row['step']} | {row['files']:,} | {row['seconds']:.2f} | {row['peak_rss_mib']} MiB |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
