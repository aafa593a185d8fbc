"""The node engine from Python: builds a :class:`xfd._core.Engine` for a plan on this node.

Store credentials are resolved here, in the process that runs on the node, from the manifest's store
options (``${VAR}`` templates) and this node's environment; they never enter the plan and never travel
between peers. So is the node store's directory (:func:`state_dir`): ``~`` means the home of the process
on the node.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from xfd import _core
from xfd.errors import ConfigError
from xfd.manifest.model import Store
from xfd.manifest.stores import OptionValue, resolve_options
from xfd.nodes import localize
from xfd.plan import Plan

STATE_DIR_ENV = "XFD_STATE_DIR"
# Where the engine keeps what it knows about a node's destinations (records, resume records, locks):
# a cache, per user, out of the user's directories. Expanded on the node, then put under its node root.
DEFAULT_STATE_DIR = "~/.cache/xfd"


def option_text(value: OptionValue) -> str:
    """Options as the Rust side reads them: booleans as ``true``/``false``, numbers in decimal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def resolved_options(name: str, store: Store, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The store's options as text, with environment templates resolved from ``environ`` (default: this
    process's environment)."""
    resolved = resolve_options(store.options, os.environ if environ is None else environ, f"stores.{name}")
    return {key: option_text(value) for key, value in resolved.items()}


def store_arguments(
    names: Iterable[str], stores: Mapping[str, Store], environ: Mapping[str, str] | None = None
) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """``(url, [(option, value), ...])`` per store of ``names`` that ``stores`` defines, with environment
    templates resolved. The engine opens a store the plan names and this lacks with the plan's URL alone."""
    return {
        name: (stores[name].url, list(resolved_options(name, stores[name], environ).items()))
        for name in names
        if name in stores
    }


def state_dir(node_root: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Path:
    """The node store's directory on this node: ``XFD_STATE_DIR`` if set, else ``~/.cache/xfd``, with ``~``
    expanded from ``HOME`` of ``environ`` (default: this process's environment), under the node root like
    every destination (so the simulated nodes of one machine each have their own)."""
    environ = os.environ if environ is None else environ
    configured = environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    path = configured
    if path == "~" or path.startswith("~/"):
        path = (environ.get("HOME") or os.path.expanduser("~")) + path[1:]
    if not os.path.isabs(path):
        raise ConfigError(
            f"environment variable {STATE_DIR_ENV} is {configured!r}: the state directory must be "
            "an absolute path (or start with ~/)"
        )
    return localize(os.path.normpath(path), Path(node_root))


def node_engine(
    plan: Plan | str,
    stores: Mapping[str, Store],
    node_root: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    peer_token: str = "",
    deep_verify: bool = False,
    faults: str = "",
    node_labels: Mapping[str, str] | None = None,
) -> _core.Engine:
    """An engine that puts ``plan``'s files under ``node_root`` on this node.

    ``plan`` may be the plan's JSON text, handed to the engine as it is (a node agent gets the text: parsing a
    plan of 100,000 files in Python to write it again took seconds); every store of ``stores`` is then given,
    and the engine opens those the plan names.

    ``peer_token`` is the run's secret for peer transfers (empty: no peer server, no peer fetches).
    ``faults`` is fault injection for the reliability tests (see docs/reliability.md); empty otherwise.
    The engine keeps its records in :func:`state_dir` (from ``environ``), never beside the files.
    """
    plan_json, names = (plan, stores) if isinstance(plan, str) else (plan.to_json(), plan.stores)
    return _core.Engine(
        plan_json,
        str(Path(node_root)),
        store_arguments(names, stores, environ),
        peer_token=peer_token,
        deep_verify=deep_verify,
        faults=faults,
        node_labels=dict(node_labels or {}),
        state_dir=str(state_dir(node_root, environ)),
    )
