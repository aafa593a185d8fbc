"""Layers point one way: each module of ``xfd`` imports only from its own layer or the layers below it.

``LAYERS`` is the one table of them (``docs/development.md`` shows it), lowest first. Every module under
``xfd/`` must be placed in it; a module is placed by its own name or by the package it lies in.

What counts as an import: every ``import`` and ``from ... import`` statement, at module level *and* inside
functions (an import deferred into a method is still a dependency, only a hidden one: that is how the
manifest once reached up into the runtime). Importing ``a.b.c`` also runs the package ``a.b``, so the
packages it lies in count too, except the root package ``xfd`` itself: Python runs ``xfd/__init__.py`` before
any ``xfd.*`` module whatever the importer, and that file is placed in the top layer and checked like any
other module.

Imports under ``if TYPE_CHECKING:`` are checked as well, though they do not run: a signature in a lower layer
that names a higher layer's type makes the lower layer's API depend on it, and such a type-only import is
how the upward imports started (the manifest's ``plan() -> Plan``). Nothing below needs one, so the
stricter rule costs nothing.

Ray is placed in the run layer: below it, nothing may import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import xfd

PACKAGE = Path(xfd.__file__).parent

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # errors, the compiled Rust core (it raises the classes of xfd.errors), and formatting for people
    ("foundation", ("xfd.errors", "xfd._core", "xfd.formatting", "xfd.manifest.units", "xfd.manifest.globs")),
    # DECLARE: the manifest as validated data, its stores, TOML format and builder
    ("declare", ("xfd.manifest",)),
    # COMPILE: Manifest -> Plan, and the lock file of a plan
    ("compile", ("xfd.plan", "xfd.lockfile")),
    # what runs on a node or reports on a run, without Ray: the engine, the scheduler, node roots, progress,
    # the report, and the progress renderers the runtime picks at run time
    ("node and report", ("xfd.engine", "xfd.scheduler", "xfd.nodes", "xfd.progress", "xfd.report", "xfd.notebook")),
    # RUN: the only layer that imports Ray
    ("run", ("xfd.runtime", "ray")),
    # the faces users meet: xfd.Manifest (xfd.api), the CLI, the Xenna adapter, the demo, and the stand-ins the
    # demo and tests run on (xfd.testing: local S3 server, counting proxy, LocalCluster, fault injection)
    ("face", ("xfd", "xfd.api", "xfd.cache", "xfd.cli", "xfd.xenna", "xfd.demo", "xfd.testing")),
)

ROOT = "xfd"


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the longest entry naming ``module`` or a package it lies in; the root package
    names only itself (else every new module would silently land in the top layer)."""
    best: tuple[int, int] | None = None
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            covers = module == entry or (entry != ROOT and module.startswith(entry + "."))
            if covers and (best is None or len(entry) > best[0]):
                best = (len(entry), index)
    return None if best is None else best[1]


def module_names() -> dict[str, Path]:
    """Every Python module under xfd/, by its dotted name."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


KNOWN = set(module_names()) | {"xfd._core"}


def imported_modules(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) for every xfd module (or ``ray``) that ``source`` imports, anywhere in it."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node, is_package)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in KNOWN else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in (ROOT, "ray"):
                found += [(node.lineno, name) for name in _with_packages(target)]
    return found


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _with_packages(target: str) -> list[str]:
    """``target`` and the packages importing it runs (``a.b`` for ``a.b.c``), the root excepted."""
    parts = target.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 1, -1)] or [target]


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """``module:line imports target (layer) from layer`` for each import of a higher layer."""
    own = layer_of(module)
    assert own is not None, f"{module} is in no layer"
    found = []
    for line, target in sorted(imported_modules(module, source, is_package)):
        theirs = layer_of(target)
        if theirs is not None and theirs > own:
            found.append(
                f"{module}:{line} imports {target} (layer '{LAYERS[theirs][0]}') from layer '{LAYERS[own][0]}'"
            )
    return found


def test_every_module_has_a_layer() -> None:
    unplaced = [name for name in module_names() if layer_of(name) is None]
    assert not unplaced, f"place these modules in LAYERS (and in docs/development.md): {unplaced}"


def test_no_module_imports_a_higher_layer() -> None:
    found = []
    for name, path in module_names().items():
        found += violations(name, path.read_text(), is_package=path.name == "__init__.py")
    assert not found, "lower layers import higher ones:\n" + "\n".join(found)


def test_an_upward_import_is_named_with_its_line() -> None:
    """The check can fail: deferred into a method, behind TYPE_CHECKING, relative, or through a package."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from xfd.plan import Plan\n"
        "class Manifest:\n"
        "    def distribute(self):\n"
        "        from xfd.runtime.distribute import distribute\n"
        "        from .. import xenna\n"
        "        import ray\n"
    )
    assert violations("xfd.manifest.model", source) == [
        "xfd.manifest.model:3 imports xfd.plan (layer 'compile') from layer 'declare'",
        "xfd.manifest.model:6 imports xfd.runtime (layer 'run') from layer 'declare'",
        "xfd.manifest.model:6 imports xfd.runtime.distribute (layer 'run') from layer 'declare'",
        "xfd.manifest.model:7 imports xfd.xenna (layer 'face') from layer 'declare'",
        "xfd.manifest.model:8 imports ray (layer 'run') from layer 'declare'",
    ]
    # Importing xfd.manifest.units runs the package xfd.manifest, a layer above the foundation.
    assert violations("xfd.formatting", "from xfd.manifest.units import parse_size\n") == [
        "xfd.formatting:1 imports xfd.manifest (layer 'declare') from layer 'foundation'",
    ]
    assert violations("xfd.plan", "from xfd.manifest.units import parse_size\nfrom xfd import _core\n") == []
