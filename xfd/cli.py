"""The ``xfd`` command line: thin over the same steps as the Python API."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from xfd import __version__
from xfd.errors import ConfigError, XfdError

# Ray's label syntax (Kubernetes'): a name or value of 1-63 letters, digits, '-', '_' and '.', starting and
# ending with a letter or digit; a key may start with a DNS prefix and '/' ("example.com/gpu").
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_LABEL_PREFIX = re.compile(rf"({_LABEL_NAME.pattern})(\.({_LABEL_NAME.pattern}))*")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except XfdError as error:
        print(f"xfd: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xfd", description="Put large artifacts on every node of a Ray cluster.")
    parser.add_argument("--version", action="version", version=f"xfd {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    hash_command = commands.add_parser("hash", help="BLAKE3 digest of a file or of a byte range of it")
    hash_command.add_argument("path")
    hash_command.add_argument("--offset", type=int, default=0, help="first byte (default: 0)")
    hash_command.add_argument("--length", type=int, default=None, help="number of bytes (default: to the end)")
    hash_command.set_defaults(run=_run_hash)

    check = commands.add_parser("check", help="validate a manifest without contacting any store")
    check.add_argument("manifest", help="path of the TOML manifest")
    check.set_defaults(run=_run_check)

    plan = commands.add_parser("plan", help="resolve a manifest against its stores and print the plan")
    plan.add_argument("manifest", help="path of the TOML manifest")
    plan.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    plan.add_argument("--locked", action="store_true", help="fail if the stores changed since `xfd lock`")
    plan.add_argument("--lock-file", default=None, help="lock file (default: <manifest>.lock.json)")
    plan.set_defaults(run=_run_plan)

    lock = commands.add_parser("lock", help="record the identity of every object the manifest resolves to")
    lock.add_argument("manifest", help="path of the TOML manifest")
    lock.add_argument("--lock-file", default=None, help="lock file (default: <manifest>.lock.json)")
    lock.set_defaults(run=_run_lock)

    run = commands.add_parser("distribute", help="put a manifest's artifacts on every node of a Ray cluster")
    run.add_argument("manifest", help="path of the TOML manifest")
    run.add_argument(
        "--address", default=None, help="Ray cluster to join (default: running one, RAY_ADDRESS, or local)"
    )
    run.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="only nodes with this Ray label (repeatable)"
    )
    run.add_argument("--locked", action="store_true", help="fail if the stores changed since `xfd lock`")
    run.add_argument("--deep-verify", action="store_true", help="re-hash cached files before trusting them")
    run.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--follow",
        action="store_true",
        help="after the run, keep bringing nodes that join the cluster up to date from their peers, until Ctrl-C",
    )
    run.add_argument(
        "--event-log",
        default=None,
        metavar="PATH",
        help="append the run's events to PATH as JSON lines (docs/metrics.md)",
    )
    run.set_defaults(run=_run_distribute)

    _cache_parser(commands)

    demo = commands.add_parser("demo", help="run xfd end to end on embedded defaults (local S3, simulated nodes)")
    demo.add_argument("--nodes", type=int, default=4, help="simulated nodes, head included (default: 4)")
    demo.add_argument("--size-mib", type=int, default=128, help="size of the large sample file (default: 128)")
    demo.set_defaults(run=_run_demo)
    return parser


def _run_hash(args: argparse.Namespace) -> int:
    from xfd import _core

    print(_core.hash_file_range(args.path, args.offset, args.length))
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from xfd import Manifest
    from xfd.formatting import counted

    manifest = Manifest.load(args.manifest)
    stores, artifacts = counted(len(manifest.stores), "store"), counted(len(manifest.artifacts), "artifact")
    print(f"{args.manifest}: ok ({stores}, {artifacts})")
    return 0


def _run_plan(args: argparse.Namespace) -> int:
    from xfd import Manifest

    plan = Manifest.load(args.manifest).plan(locked=args.locked, lock_path=args.lock_file)
    print(plan.to_json(indent=2) if args.json else plan.summary())
    return 0


def _run_lock(args: argparse.Namespace) -> int:
    from xfd import Manifest
    from xfd.formatting import counted
    from xfd.lockfile import default_lock_path

    manifest = Manifest.load(args.manifest)
    plan = manifest.plan()
    path = args.lock_file or default_lock_path(manifest)
    plan.write_lock(path)
    print(f"locked {counted(len(plan.objects), 'object')} in {path}")
    return 0


def _run_distribute(args: argparse.Namespace) -> int:
    from xfd import Manifest

    # Everything that can be refused without a store or Ray is refused before planning, which can take a while.
    labels = _labels(args.label)
    if args.timeout is not None and not args.timeout > 0:
        raise ConfigError(f"--timeout must be a number of seconds above 0, got {args.timeout}")
    manifest = Manifest.load(args.manifest)
    from xfd.runtime.distribute import choose_nodes, ensure_ray
    from xfd.runtime.telemetry import check_event_log

    check_event_log(args.event_log)
    ensure_ray(args.address)
    node_ids = choose_nodes(manifest, labels or None)
    plan = manifest.plan(locked=args.locked)
    print(plan.summary())
    # The report is printed either way: a failed run exits 1 with it, not with a traceback.
    distribution = manifest.distribute(
        wait=False,
        plan=plan,
        # Followed nodes are chosen again as they join: by their labels, not by the ids chosen now.
        nodes=(labels or None) if args.follow else node_ids,
        progress=None if args.no_progress else "auto",
        deep_verify=args.deep_verify,
        timeout=args.timeout,
        raise_on_failure=False,
        event_log=args.event_log,
        follow=args.follow,
    )
    report = distribution.wait()
    print(report.summary())
    if args.follow and report.ok:
        _follow(distribution)
    return 0 if report.ok else 1


def _follow(distribution: Any) -> None:
    """Prints each catch-up run's report until Ctrl-C."""
    print("following the cluster: nodes that join get the artifacts from their peers (Ctrl-C to stop)", flush=True)
    shown = 0
    try:
        while distribution.following:
            for catch_up in distribution.catch_ups[shown:]:
                print(catch_up.summary(), flush=True)
                shown += 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        distribution.stop_following()


def _labels(items: Sequence[str]) -> dict[str, str]:
    """The ``--label KEY=VALUE`` options as a dict; a label no Ray node could carry is refused."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--label takes KEY=VALUE, as in --label gpu=a100; got {item!r}")
        if problem := _label_problem(key, value):
            raise ConfigError(f"--label {item!r}: {problem}")
        if labels.get(key, value) != value:
            raise ConfigError(
                f"--label {key}: given twice, as {labels[key]!r} and {value!r}; a node has one value "
                "per label, so no node would match"
            )
        labels[key] = value
    return labels


def _label_problem(key: str, value: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    rule = "1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    if not _LABEL_NAME.fullmatch(name):
        return f"the label name {name!r} must be {rule}"
    if slash and (len(prefix) > 253 or not _LABEL_PREFIX.fullmatch(prefix)):
        return f"the key prefix {prefix!r} must be a DNS name (names of {rule}, joined by dots; 253 at most)"
    if not _LABEL_NAME.fullmatch(value):
        return f"the value {value!r} must be {rule}"
    return None


def _cache_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = commands.add_parser("cache", help="what xfd put on each node: list, verify, prune (docs/cache.md)")
    actions = cache.add_subparsers(title="cache commands", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", help="list what xfd published on each node: artifact, size, last used, state")
    verify = actions.add_parser("verify", help="re-hash every file xfd published on each node (exit 1 on a problem)")
    prune = actions.add_parser("prune", help="remove what xfd published that the manifests no longer name")
    prune.add_argument("manifest", nargs="+", help="TOML manifests whose destinations to keep")
    prune.add_argument("--apply", action="store_true", help="remove (default: a dry run that lists what would go)")
    for action, run in ((ls, "list"), (verify, "verify"), (prune, "prune")):
        action.add_argument(
            "--address", default=None, help="Ray cluster to join (default: running one, RAY_ADDRESS, or local)"
        )
        action.add_argument(
            "--label", action="append", default=[], metavar="KEY=VALUE", help="only nodes with this Ray label"
        )
        action.add_argument("--within", default=None, metavar="DIR", help="only destinations at or below DIR")
        action.add_argument("--json", action="store_true", help="print every line as JSON")
        action.set_defaults(run=_run_cache, cache_action=run)


def _run_cache(args: argparse.Namespace) -> int:
    import json

    import attrs

    from xfd import cache

    nodes = _labels(args.label) or None
    if args.cache_action == "list":
        result: cache.CacheResult = cache.ls(within=args.within, nodes=nodes, address=args.address)
    elif args.cache_action == "verify":
        result = cache.verify(within=args.within, nodes=nodes, address=args.address)
    else:
        result = cache.prune(
            *args.manifest, dry_run=not args.apply, within=args.within, nodes=nodes, address=args.address
        )
    if args.json:
        print(json.dumps(attrs.asdict(result), default=str, indent=2))
    else:
        print(result.summary())
    failed = bool(result.errors) or (isinstance(result, cache.CacheVerification) and not result.ok)
    failed |= any(e.action == "failed" for e in result.entries)
    return 1 if failed else 0


def _run_demo(args: argparse.Namespace) -> int:
    from xfd.demo import run_demo

    return run_demo(nodes=args.nodes, size_mib=args.size_mib)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
