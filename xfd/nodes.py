"""Where "/" is on a node: the per-node root.

A manifest names destinations as absolute paths (``/models/llama/model.bin``) that must hold on every
node. On a real cluster each node has its own disk and the root is simply ``/``. When several "nodes"
share one machine (a laptop, a CI box, the simulated clusters of ``xfd demo`` and the tests) they would
all write to the same place, so each node may declare a *node root*: a directory that stands for ``/``
on that node. ``/models/model.bin`` then lands at ``<node root>/models/model.bin``.

The node root is read, first match wins, from:

1. the environment variable ``XFD_NODE_ROOT`` of the process running on the node;
2. the Ray node label ``xfd-root`` (``ray start --labels='{"xfd-root": "/scratch/node-a"}'``, or
   ``labels=`` of ``ray.init`` / ``Cluster.add_node``);
3. otherwise ``/``.

This module does not import Ray: callers pass the node's labels in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from xfd.errors import ConfigError

NODE_ROOT_ENV = "XFD_NODE_ROOT"
NODE_ROOT_LABEL = "xfd-root"


def resolve_node_root(environ: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None) -> Path:
    """The node root of the current process, from its environment and its Ray node labels."""
    environ = os.environ if environ is None else environ
    labels = labels or {}
    if value := environ.get(NODE_ROOT_ENV):
        return _checked_root(value, f"environment variable {NODE_ROOT_ENV}")
    if value := labels.get(NODE_ROOT_LABEL):
        return _checked_root(value, f"Ray node label {NODE_ROOT_LABEL!r}")
    return Path("/")


def localize(destination: str | PurePosixPath, root: Path) -> Path:
    """Where the absolute ``destination`` of a manifest lands on a node whose node root is ``root``.

    The engine has the same function in Rust (``xfd_core::engine::localize``, arguments the other way
    round); both give the answers of ``tests/localize_cases.json``."""
    given = str(destination)
    destination = PurePosixPath(destination)
    if not destination.is_absolute():
        raise ConfigError(f"destination {given!r} must be an absolute path such as '/data/file'")
    if ".." in destination.parts:
        # Under a node root, '..' would climb out of it: refuse instead of normalizing silently.
        raise ConfigError(f"destination {given!r} must not contain '..' segments")
    if len(destination.parts) < 2:
        raise ConfigError(f"destination {given!r} is the root itself: name a path below it, such as '/data/file'")
    return root.joinpath(*destination.parts[1:])


def _checked_root(value: str, source: str) -> Path:
    root = Path(value)
    if not root.is_absolute():
        raise ConfigError(f"{source} is {value!r}: a node root must be an absolute directory path")
    return root
