"""The node engine from Python: builds a :class:`xfd._core.Engine` for a plan on this node.

Store credentials are resolved here, in the process that runs on the node, from the manifest's store
options (``${VAR}`` templates) and this node's environment; they never enter the plan and never travel
between peers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from xfd import _core
from xfd.manifest.model import Store
from xfd.manifest.stores import OptionValue, resolve_options
from xfd.plan import Plan


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
    plan: Plan, stores: Mapping[str, Store], environ: Mapping[str, str] | None = None
) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """``(url, [(option, value), ...])`` per store of the plan, with environment templates resolved."""
    return {name: (stores[name].url, list(resolved_options(name, stores[name], environ).items()))
            for name in plan.stores}


def node_engine(
    plan: Plan,
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

    ``peer_token`` is the run's secret for peer transfers (empty: no peer server, no peer fetches).
    ``faults`` is fault injection for the reliability tests (see docs/reliability.md); empty otherwise.
    """
    return _core.Engine(plan.to_json(), str(Path(node_root)), store_arguments(plan, stores, environ),
                        peer_token=peer_token, deep_verify=deep_verify, faults=faults,
                        node_labels=dict(node_labels or {}))
