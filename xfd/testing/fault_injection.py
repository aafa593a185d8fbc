"""Fault injection into the nodes' engines, for xfd's own reliability tests (``docs/reliability.md``).

No public call takes fault rules: a test sets them for the runs it starts with :func:`faults`, and the
coordinator reads them when a run starts. The engine's fault points themselves are listed in
``rust/xfd-core/src/faults.rs``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from xfd.errors import ConfigError


@contextlib.contextmanager
def faults(rules: Mapping[str, str]) -> Iterator[None]:
    """Every distribution started inside the block gives these nodes' engines these fault rules.

    ``rules`` maps a Ray node id to the engine's rules for that node, ``point:action[@n]`` separated by
    commas, e.g. ``{node_id: "publish:abort"}`` (the agent's process ends at that moment, as ``kill -9``
    would) or ``{node_id: "serve:corrupt"}`` (its peer server sends wrong bytes). For tests only.

    A node given rules runs its agent in a Ray actor, never in the driver's process, since a rule may end
    the agent's process. The rules are read when a run starts (a ``wait=False`` run keeps them after the
    block ends) and hold in this thread (and asyncio task) only, like any context variable.
    """
    from xfd.runtime.coordinator import INJECTED_FAULTS  # Ray is imported only by a test that injects

    token = INJECTED_FAULTS.set(MappingProxyType(_checked(rules)))
    try:
        yield
    finally:
        INJECTED_FAULTS.reset(token)


def _checked(rules: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(rules, Mapping):
        raise ConfigError(
            f"faults: expected a dict of node id -> rules such as {{node_id: 'publish:abort'}}, "
            f"got {type(rules).__name__}"
        )
    bad = [
        f"{node!r}: {rule!r}"
        for node, rule in rules.items()
        if not isinstance(node, str) or not isinstance(rule, str) or not node or not rule
    ]
    if bad:
        raise ConfigError(
            f"faults: node ids and rules must be non-empty strings, such as "
            f"{{node_id: 'publish:abort'}}; got {', '.join(bad)}"
        )
    return dict(rules)
