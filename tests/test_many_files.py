"""Plans of many files stay linear: compiling, summarizing, the notebook repr, looking objects up.

No timings: the work is counted. The plan's ``objects`` and ``files`` become tuples that count the items
read from them and stop a step that reads more than a few per file (looking each file's object up by
scanning the objects reads n^2 / 2 of them: 200 million at 20,000 files). Compiling is compared at n and
4n by the Python lines it runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from xfd import PlanError
from xfd.formatting import human_size
from xfd.manifest import Manifest, ObjectArtifact, PrefixArtifact, Settings, Store
from xfd.plan import Plan, _assemble, _Found
from xfd.scheduler import Scheduler

FILES = 20_000
EXTRA = 100
KiB = 1024
# Items a step may read per file: a few passes over the objects and the files, never one per pair.
READS_PER_FILE = 8


def manifest() -> Manifest:
    return Manifest(
        stores={"s": Store("s3://b")},
        settings=Settings(),
        artifacts=(
            PrefixArtifact(store="s", prefix="data", to="/data"),
            PrefixArtifact(store="s", prefix="extra", to="/extra", name="more"),
        ),
    )


def found(prefix: str, index: int, size: int) -> _Found:
    return _Found(f"{prefix}/shard-{index // 1000:03d}/part-{index:06d}.bin", size, f'"{index:032x}"', None, None)


def listings(files: int) -> list[list[_Found]]:
    """``files`` objects under two prefixes: ``data`` (1 KiB each) and ``EXTRA`` of them under ``extra`` (2 KiB)."""
    return [[found("data", i, KiB) for i in range(files - EXTRA)], [found("extra", i, 2 * KiB) for i in range(EXTRA)]]


class Overspent(AssertionError):
    pass


class Budget:
    def __init__(self, limit: int) -> None:
        self.limit, self.reads = limit, 0

    def read(self, count: int = 1) -> None:
        self.reads += count
        if self.reads > self.limit:
            raise Overspent(f"read more than {self.limit} items of the plan's objects and files")


class Counted(tuple):
    """A tuple that charges every item read from it, by iteration or by index, to a budget."""

    budget: Budget

    def __new__(cls, items: tuple[Any, ...], budget: Budget) -> Counted:
        counted = super().__new__(cls, items)
        counted.budget = budget
        return counted

    def __iter__(self):
        for item in tuple.__iter__(self):
            self.budget.read()
            yield item

    def __getitem__(self, index):
        item = tuple.__getitem__(self, index)
        self.budget.read(len(item) if isinstance(index, slice) else 1)
        return item


def within_budget(plan: Plan, step: Callable[[Plan], Any]) -> Any:
    """``step`` on a copy of ``plan`` (its object index not built yet) that may read READS_PER_FILE items per file."""
    budget = Budget(READS_PER_FILE * len(plan.files))
    counted = attrs.evolve(plan, objects=Counted(plan.objects, budget), files=Counted(plan.files, budget))
    return step(counted)


@pytest.fixture(scope="module")
def plan() -> Plan:
    return _assemble(manifest(), listings(FILES))


def test_a_prefix_of_20000_files_summarizes_reading_each_file_a_few_times(plan):
    assert len(plan.files) == len(plan.objects) == FILES
    summary = within_budget(plan, Plan.summary)
    unique = human_size((FILES - EXTRA) * KiB + EXTRA * 2 * KiB)
    # One group (one store, no node selectors): runs of 256 in key order, data then extra.
    assert summary.splitlines() == [
        f"plan: 2 artifacts, {FILES} files, {FILES} unique objects, {unique} unique, {FILES} chunks of up to 2.0 KiB; "
        f"{FILES} small files packed into 79 bundles",
        f"  data: {FILES - EXTRA} files, {human_size((FILES - EXTRA) * KiB)}",
        f"  more: {EXTRA} files, {human_size(EXTRA * 2 * KiB)}",
    ]
    assert within_budget(plan, repr) == (
        f"<Plan 2 artifacts, {FILES} files, {FILES} unique objects, {unique} "
        f"unique, {FILES} chunks; {FILES} small files packed into 79 bundles>"
    )


def test_20000_object_artifacts_summarize_reading_each_file_a_few_times():
    # A manifest of one artifact per file, as the Xenna adapter writes: a line per artifact.
    artifacts = tuple(ObjectArtifact(store="s", key=f"k/{i:05d}", to=f"/o/{i:05d}.bin") for i in range(FILES))
    listing = [[_Found(f"k/{i:05d}", KiB * (1 + i % 2), None, None, None)] for i in range(FILES)]
    plan = _assemble(attrs.evolve(manifest(), artifacts=artifacts), listing)
    lines = within_budget(plan, Plan.summary).splitlines()
    assert len(lines) == FILES + 1
    assert lines[1:3] == ["  k/00000: 1 file, 1.0 KiB", "  k/00001: 1 file, 2.0 KiB"]
    assert lines[-1] == f"  k/{FILES - 1:05d}: 1 file, 2.0 KiB"


def test_100000_small_files_travel_in_391_bundles_and_every_step_reads_each_file_a_few_times():
    many = 100_000
    plan = _assemble(manifest(), [[found("data", i, KiB) for i in range(many)], [found("extra", 0, KiB)]])
    assert len(plan.files) == len(plan.objects) == many + 1
    # Runs of 256 (256 KiB each) in key order: 391 bundles, the last of 161 members; nothing left alone.
    assert len(plan.bundles) == 391 == -(-(many + 1) // 256)
    assert sorted(len(b.members) for b in plan.bundles)[:2] == [161, 256]
    assert sorted({m for b in plan.bundles for m in b.members}) == sorted(o.id for o in plan.objects)
    assert within_budget(plan, lambda p: p.unit_sizes) == {b.id: b.length for b in plan.bundles}
    assert sorted(within_budget(plan, lambda p: p.chunks_for({"zone": "a"}))) == sorted(b.id for b in plan.bundles)
    summary = within_budget(plan, Plan.summary)
    assert summary.splitlines()[0].endswith(f"; {many + 1} small files packed into 391 bundles")
    assert within_budget(plan, repr).endswith(f"{many + 1} chunks; {many + 1} small files packed into 391 bundles>")
    assert f"{many + 1} small files packed into 391 bundles</p>" in within_budget(plan, Plan._repr_html_)
    assert len(json.loads(within_budget(plan, Plan.to_json))["bundles"]) == 391


def test_the_notebook_repr_of_20000_files_shows_200_reading_each_file_a_few_times(plan):
    html = within_budget(plan, Plan._repr_html_)
    assert html.count("<tr><td>") == 200
    assert f"... and {FILES - 200} more files" in html
    first = plan.files[0]
    assert f"<tr><td>data</td><td>{first.destination}</td><td>1.0 KiB</td><td>1</td></tr>" in html


def test_every_files_object_is_looked_up_once_each(plan):
    by_id = {o.id: o for o in plan.objects}
    found_objects = within_budget(plan, lambda p: [p.object(f.object_id) for f in p.files])
    assert found_objects == [by_id[f.object_id] for f in plan.files]
    assert (plan.files[0].destination, found_objects[0].key) == (
        "/data/shard-000/part-000000.bin",
        "data/shard-000/part-000000.bin",
    )
    with pytest.raises(KeyError, match="this plan has no object 'nope'"):
        plan.object("nope")


def lines_run(action: Callable[[], Any]) -> int:
    """Python lines ``action`` runs, each pass of a loop counted (a line event per backward jump): its
    work, without a clock. Loops inside C (``x in some_list``) are not seen."""
    lines = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        lines += event == "line"
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        action()
    finally:
        sys.settrace(previous)
    return lines


def test_compiling_4x_the_files_runs_at_most_4x_the_lines():
    small, large = (lines_run(lambda n=n: _assemble(manifest(), listings(n))) for n in (FILES // 16, FILES // 4))
    assert large <= 4.5 * small, f"{FILES // 16} files: {small} lines run, {FILES // 4} files: {large}"


def test_a_file_that_is_also_a_directory_is_found_among_20000_files_and_named_the_same_every_time():
    data, extra = listings(FILES)
    clash = data[10_500].key
    # As text, "clash b" and "clash.txt" sort between "clash" and "clash/inner": the sweep compares
    # segments, so the file and the file below it are still neighbours.
    data += [
        _Found(clash + " b", 1, None, None, None),
        _Found(clash + ".txt", 1, None, None, None),
        _Found(clash + "/inner", 1, None, None, None),
    ]
    with pytest.raises(PlanError) as info:
        _assemble(manifest(), [data, extra])
    path = "/" + clash
    assert str(info.value) == (
        f"{path} is a file of artifact 'data' and also a directory holding {path}/inner (artifact 'data')"
    )
    # Of two such files, the first in path order is named, whatever the order of the listing.
    early = data[100].key
    data.insert(0, _Found(early + "/z", 1, None, None, None))
    for listing in (data, data[::-1]):
        with pytest.raises(
            PlanError,
            match=rf"^/{early} is a file of artifact 'data' and also a directory "
            rf"holding /{early}/z ",
        ):
            _assemble(manifest(), [listing, extra])


def test_the_scheduler_tells_whether_one_chunk_failed_without_copying_every_failure():
    chunks = [f"c{i:05d}" for i in range(FILES)]
    scheduler = Scheduler(chunks, ["n0", "n1"], origin_parallelism=4, download_slots=4, upload_slots=4)
    first, second = scheduler.next_transfers()[:2]
    scheduler.failed(first, "fatal", "object changed")
    assert scheduler.failure(first.chunk) == "object changed"
    assert scheduler.failure(second.chunk) is None
    assert scheduler.failure("not-a-chunk") is None
    assert scheduler.failed_chunks == {first.chunk: "object changed"}
