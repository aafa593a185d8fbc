"""One concept, one home: where Python and Rust both name a concept, the two must agree.

The Rust side is read from its source, not from ``xfd._core``, so a change on either side fails here
before any extension rebuild; the Rust unit tests (``kind_tests`` in ``rust/xfd-core/src/error.rs``)
tie each enum's variant names to the strings it sends and parses.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import typing
from pathlib import Path

import attrs
import pytest

from xfd import scheduler
from xfd.errors import ConfigError
from xfd.manifest.builder import ManifestBuilder
from xfd.manifest.model import Settings
from xfd.nodes import localize

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "rust" / "xfd-core" / "src"
SETTINGS = {field.name for field in attrs.fields(Settings)}


def rust_enum_names(path: Path, enum: str) -> list[str]:
    """The variants of a fieldless Rust enum, lowercased: the names they go by on the wire."""
    source = path.read_text()
    found = re.search(rf"pub enum {enum} \{{(.*?)\n\}}", source, re.S)
    assert found, f"no `pub enum {enum}` in {path.relative_to(ROOT)}"
    body = "\n".join(line for line in found.group(1).splitlines() if not line.strip().startswith("//"))
    return [name.lower() for name in re.findall(r"^\s*([A-Z]\w*),?\s*$", body, re.M)]


def test_failure_kinds_are_the_rust_schedulers():
    rust = rust_enum_names(CORE / "scheduler.rs", "FailureKind")
    assert rust, "no variants read"
    assert sorted(typing.get_args(scheduler.FailureKind)) == sorted(rust), (
        "xfd.scheduler.FailureKind must list the variants of FailureKind in rust/xfd-core/src/scheduler.rs"
    )


@pytest.mark.parametrize("kind", typing.get_args(scheduler.FailureKind))
def test_the_rust_scheduler_takes_every_python_failure_kind(kind):
    sched = scheduler.Scheduler(["c0"], ["a"], origin_parallelism=1, download_slots=1, upload_slots=1)
    (transfer,) = sched.next_transfers()
    sched.failed(transfer, kind, "test")
    assert not sched.active


def test_the_rust_scheduler_refuses_an_engine_error_kind():
    # "stalled" is an engine error kind, which the coordinator maps to a failure kind: not one itself.
    sched = scheduler.Scheduler(["c0"], ["a"], origin_parallelism=1, download_slots=1, upload_slots=1)
    (transfer,) = sched.next_transfers()
    with pytest.raises(ValueError, match="stalled"):
        sched.failed(transfer, "stalled", "test")  # type: ignore[arg-type]


def test_engine_error_kinds_are_documented_in_the_stub():
    rust = rust_enum_names(CORE / "error.rs", "ErrorKind")
    assert {"fatal", "stalled", "busy"} <= set(rust), rust
    stub = ast.parse((ROOT / "xfd" / "_core.pyi").read_text())
    (engine,) = [node for node in stub.body if isinstance(node, ast.ClassDef) and node.name == "Engine"]
    doc = ast.get_docstring(engine) or ""
    sentence = " ".join(doc.split()).split("``error_kind`` is ", 1)[1].split(".", 1)[0]
    assert sorted(re.findall(r"``(\w+)``", sentence)) == sorted(rust), (
        "the Engine stub in xfd/_core.pyi must list the variants of ErrorKind in rust/xfd-core/src/error.rs"
    )


# Settings: their defaults live in xfd/manifest/model.py. Rust keeps a copy only where it must (serde
# defaults for plans that predate a setting, the scheduler's defaults for Rust's own tests), in one
# module; everything else takes the value from the plan it runs.


def rust_int_or_float(expression: str) -> float:
    """A Rust literal expression of numbers, ``*`` and ``<<`` (``1 << 30``), without evaluating code."""

    def value(node: ast.expr) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.LShift):
            left, right = value(node.left), value(node.right)
            return left * right if isinstance(node.op, ast.Mult) else int(left) << int(right)
        raise AssertionError(f"cannot read the Rust default {expression!r}")

    return value(ast.parse(expression.replace("_", ""), mode="eval").body)


def rust_plan_defaults() -> dict[str, float]:
    source = (CORE / "plan.rs").read_text()
    module = re.search(r"mod defaults \{(.*?)\n\}", source, re.S)
    assert module, "no `mod defaults` in rust/xfd-core/src/plan.rs"
    functions = re.findall(r"pub fn (\w+)\(\) -> \w+ \{\s*([^}]*?)\s*\}", module.group(1))
    return {name: rust_int_or_float(body) for name, body in functions}


def test_rust_settings_defaults_are_the_manifests():
    rust = rust_plan_defaults()
    source = (CORE / "plan.rs").read_text()
    serde_defaults = set(re.findall(r'default = "defaults::(\w+)"', source))
    assert serde_defaults and serde_defaults <= set(rust), serde_defaults - set(rust)
    assert set(rust) <= SETTINGS, f"not manifest settings: {set(rust) - SETTINGS}"
    python = {name: getattr(Settings(), name) for name in rust}
    assert rust == python, "rust/xfd-core/src/plan.rs `mod defaults` must match Settings in xfd/manifest/model.py"


def test_the_rust_plan_has_every_manifest_setting():
    source = (CORE / "plan.rs").read_text()
    struct = re.search(r"pub struct Settings \{(.*?)\n\}", source, re.S)
    assert struct, "no `pub struct Settings` in rust/xfd-core/src/plan.rs"
    fields = set(re.findall(r"^\s*pub (\w+):", struct.group(1), re.M))
    assert fields == SETTINGS, "rust/xfd-core/src/plan.rs Settings must have the fields of xfd/manifest/model.py's"


def test_the_builder_has_no_defaults_of_its_own():
    parameters = inspect.signature(ManifestBuilder.settings).parameters
    assert set(parameters) - {"self"} == SETTINGS
    assert {name: p.default for name, p in parameters.items() if name != "self" and p.default is not None} == {}


def test_the_bindings_have_no_settings_defaults_of_their_own():
    own = []
    for path in sorted((ROOT / "rust" / "xfd-py" / "src").glob("*.rs")):
        for signature in re.findall(r"#\[pyo3\(signature = \((.*?)\)\)\]", path.read_text(), re.S):
            for name, default in re.findall(r"(\w+)\s*=\s*([^,]+)", signature):
                if name in SETTINGS and default.strip() != "None":
                    own.append(f"{path.name}: {name} = {default.strip()}")
    assert own == [], "take these from the plan (settings) instead of a default of their own"


# Xenna's own calls default `overwrite` to False; the adapter mirrors their signatures, and so may
# keep that default as long as it is the manifest's.
MIRRORED = {("xfd/xenna.py", "overwrite")}


def test_python_code_has_no_settings_defaults_of_its_own():
    own = []
    for path in sorted((ROOT / "xfd").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("xfd/manifest/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            positional = node.args.posonlyargs + node.args.args
            pairs = [*zip(positional[len(positional) - len(node.args.defaults) :], node.args.defaults, strict=True)]
            pairs += [
                (arg, d) for arg, d in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True) if d is not None
            ]
            for arg, default in pairs:
                if arg.arg not in SETTINGS or (isinstance(default, ast.Constant) and default.value is None):
                    continue
                value = ast.literal_eval(default) if isinstance(default, ast.Constant) else ast.unparse(default)
                if (relative, arg.arg) in MIRRORED and value == getattr(Settings(), arg.arg):
                    continue
                own.append(f"{relative}:{node.lineno} {node.name}({arg.arg}={ast.unparse(default)})")
    assert own == [], "take these from the plan's settings instead of a default of their own"


# localize: Python's (xfd/nodes.py) and Rust's (engine/config.rs, which the engine uses) answer the
# same table, tests/localize_cases.json; rust/xfd-core/tests/localize.rs checks the Rust side.
LOCALIZE_CASES = json.loads((ROOT / "tests" / "localize_cases.json").read_text())["cases"]


@pytest.mark.parametrize("case", LOCALIZE_CASES, ids=lambda case: repr(case["destination"]))
def test_localize_gives_the_answers_rust_gives(case):
    if case["path"] is None:
        with pytest.raises(ConfigError, match="destination"):
            localize(case["destination"], Path(case["root"]))
    else:
        assert localize(case["destination"], Path(case["root"])) == Path(case["path"])
