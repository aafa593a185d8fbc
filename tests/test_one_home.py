"""One concept, one home: where Python and Rust both name a concept, the two must agree.

The Rust side is read from its source, not from ``xfd._core``, so a change on either side fails here
before any extension rebuild; the Rust unit tests (``kind_tests`` in ``rust/xfd-core/src/error.rs``)
tie each enum's variant names to the strings it sends and parses.
"""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

import pytest

from xfd import scheduler

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "rust" / "xfd-core" / "src"


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
