"""The ``xfd`` command line: thin over the same steps as the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from xfd import __version__
from xfd.errors import XfdError


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

    demo = commands.add_parser("demo", help="run xfd end to end on embedded defaults (local S3, simulated nodes)")
    demo.add_argument("--nodes", type=int, default=4, help="simulated nodes, head included (default: 4)")
    demo.add_argument("--size-mib", type=int, default=64, help="size of the sample artifact (default: 64)")
    demo.set_defaults(run=_run_demo)
    return parser


def _run_hash(args: argparse.Namespace) -> int:
    from xfd import _core

    print(_core.hash_file_range(args.path, args.offset, args.length))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from xfd.demo import run_demo

    return run_demo(nodes=args.nodes, size_mib=args.size_mib)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
