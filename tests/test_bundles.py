"""Bundles: small objects packed into few transfer units; grouping, caps, node selectors, determinism, JSON,
and the units the scheduler sees. Compiled from listings (no store): ``_assemble`` is the compiler past HEAD/LIST.
"""

from __future__ import annotations

import json
import random

import attrs

from xfd.engine import store_arguments
from xfd.manifest import Manifest, ObjectArtifact, PrefixArtifact, Settings, Store
from xfd.plan import (
    BUNDLE_MAX_BYTES,
    BUNDLE_MAX_MEMBERS,
    BUNDLE_MEMBER_MAX,
    BUNDLE_MIN_MEMBERS,
    BUNDLES_PER_GROUP,
    Plan,
    PlanBundle,
    _assemble,
    _digest,
    _Found,
)

KiB, MiB = 1 << 10, 1 << 20


def found(key: str, size: int) -> _Found:
    return _Found(key, size, f'"{_digest(key)}"', None, None)


def prefix(
    name: str, sizes: list[int], *, store: str = "s", nodes: dict[str, str] | None = None
) -> tuple[PrefixArtifact, list[_Found]]:
    """A prefix artifact ``name`` holding ``name/f00000`` ... of these sizes, and its listing."""
    artifact = PrefixArtifact(store=store, prefix=name, to=f"/{name}", nodes=nodes or {})
    return artifact, [found(f"{name}/f{i:05d}", size) for i, size in enumerate(sizes)]


def compile_plan(
    *parts: tuple[PrefixArtifact | ObjectArtifact, list[_Found]], settings: Settings | None = None
) -> Plan:
    with attrs.validators.disabled():  # chunks of a few KB: smaller than a manifest may ask for
        manifest = Manifest(
            stores={"s": Store("s3://b"), "t": Store("s3://other")},
            settings=settings or Settings(),
            artifacts=tuple(artifact for artifact, _ in parts),
        )
    return _assemble(manifest, [listing for _, listing in parts])


def members_by_key(plan: Plan) -> list[list[str]]:
    """Each bundle (in plan order) as its members' keys."""
    return [[plan.object(m).key for m in b.members] for b in plan.bundles]


def test_small_single_chunk_objects_of_a_prefix_are_packed_in_key_order():
    sizes = [300, 5, BUNDLE_MEMBER_MAX, 0, BUNDLE_MEMBER_MAX + 1, 40 * MiB, 7]
    plan = compile_plan(prefix("d", sizes))
    (bundle,) = plan.bundles
    # Empty, over 1 MiB and multi-chunk (40 MiB in auto chunks) objects stay ordinary objects.
    assert members_by_key(plan) == [["d/f00000", "d/f00001", "d/f00002", "d/f00006"]]
    members = [plan.object(m) for m in bundle.members]
    assert bundle.length == 300 + 5 + BUNDLE_MEMBER_MAX + 7 == sum(m.size for m in members)
    # Members keep their one chunk, covering the whole object; the id names the chunks in member order.
    assert all(len(m.chunks) == 1 and (m.chunks[0].offset, m.chunks[0].length) == (0, m.size) for m in members)
    assert bundle.id == _digest("bundle\0" + "\0".join(m.chunks[0].id for m in members))
    assert len(bundle.id) == 32 and bundle.id == bundle.id.lower() and int(bundle.id, 16) >= 0


def test_an_object_of_several_small_chunks_is_never_a_member():
    plan = compile_plan(prefix("d", [3000, 3000, 100, 100]), settings=Settings(chunk_size=2000))
    assert members_by_key(plan) == [["d/f00002", "d/f00003"]]
    assert plan.chunk_count == 2 + 2 + 1 + 1 and plan.unit_count == 2 + 2 + 1


def test_bundles_hold_at_most_256_members():
    count = BUNDLES_PER_GROUP * BUNDLE_MAX_MEMBERS + 88
    plan = compile_plan(prefix("d", [KiB] * count))
    runs = sorted(members_by_key(plan))
    assert [len(run) for run in runs] == [BUNDLE_MAX_MEMBERS] * BUNDLES_PER_GROUP + [88]
    # Consecutive runs of the keys in order: every object in exactly one bundle.
    assert sum(runs, []) == [f"d/f{i:05d}" for i in range(count)]
    assert sorted(b.length for b in plan.bundles) == [88 * KiB] + [256 * KiB] * BUNDLES_PER_GROUP


def test_fewer_small_files_are_cut_into_enough_bundles_for_parallel_fetches():
    # 200 files: 8 bundles of 25, so that the origin's parallel fetches and the nodes all have work.
    assert [len(run) for run in members_by_key(compile_plan(prefix("d", [KiB] * 200)))] == [25] * 8
    # Never fewer than 16 members a bundle: 20 files are 16 + 4.
    assert sorted(len(run) for run in members_by_key(compile_plan(prefix("d", [KiB] * 20)))) == [4, 16]


def test_bundles_hold_at_most_16_mib():
    # 1 MiB members: 16 fill a bundle exactly; the 17th starts the next.
    plan = compile_plan(prefix("d", [MiB] * 40))
    assert sorted(b.length for b in plan.bundles) == [8 * MiB, BUNDLE_MAX_BYTES, BUNDLE_MAX_BYTES]
    # A member that would go past 16 MiB by one byte starts a new bundle.
    plan = compile_plan(prefix("d", [MiB] * 15 + [MiB - 1, 2, 3]))
    assert sorted(len(run) for run in members_by_key(plan)) == [2, 16]
    assert sorted(b.length for b in plan.bundles) == [5, BUNDLE_MAX_BYTES - 1]


def test_a_single_member_is_left_an_ordinary_object():
    # The 17th object of "d" is left over; "alone" is the only object for its nodes.
    plan = compile_plan(prefix("d", [KiB] * (BUNDLE_MIN_MEMBERS + 1)), prefix("alone", [10], nodes={"a": "b"}))
    assert [len(run) for run in members_by_key(plan)] == [BUNDLE_MIN_MEMBERS]
    bundled = {m for b in plan.bundles for m in b.members}
    left = sorted(o.key for o in plan.objects if o.id not in bundled)
    assert left == ["alone/f00000", f"d/f{BUNDLE_MIN_MEMBERS:05d}"]
    assert set(plan.unit_sizes) == {b.id for b in plan.bundles} | {
        o.chunks[0].id for o in plan.objects if o.key in left
    }


def test_objects_of_other_node_selectors_or_stores_are_never_bundled_together():
    shared = found("common/shared", 50)
    plan = compile_plan(
        prefix("cpu", [10, 20, 30]),
        prefix("gpu", [10, 20, 30], nodes={"accelerator": "a100"}),
        prefix("tpu", [10, 20, 30], nodes={"accelerator": "v5"}),
        prefix("elsewhere", [10, 20, 30], store="t"),
        # One object at a destination for every node and another for a100 nodes only: its own selector set.
        (ObjectArtifact(store="s", key="common/shared", to="/everyone/shared"), [shared]),
        (ObjectArtifact(store="s", key="common/shared", to="/a100/shared", nodes={"accelerator": "a100"}), [shared]),
        (ObjectArtifact(store="s", key="common/other", to="/everyone/other"), [found("common/other", 60)]),
    )
    assert sorted(members_by_key(plan)) == [
        ["common/other", "cpu/f00000", "cpu/f00001", "cpu/f00002"],
        ["elsewhere/f00000", "elsewhere/f00001", "elsewhere/f00002"],
        ["gpu/f00000", "gpu/f00001", "gpu/f00002"],
        ["tpu/f00000", "tpu/f00001", "tpu/f00002"],
    ]
    assert [plan.object(m).store for b in plan.bundles for m in b.members if "elsewhere" in plan.object(m).key] == [
        "t"
    ] * 3


def test_a_node_needs_the_bundles_of_its_selectors_and_no_member_chunk():
    plan = compile_plan(
        prefix("cpu", [10, 20]), prefix("gpu", [30, 40], nodes={"accelerator": "a100"}), prefix("big", [40 * MiB])
    )
    by_prefix = {plan.object(b.members[0]).key.split("/")[0]: b for b in plan.bundles}
    big = next(o for o in plan.objects if o.key.startswith("big/"))
    member_chunks = {plan.object(m).chunks[0].id for b in plan.bundles for m in b.members}

    assert plan.unit_sizes == {**{c.id: c.length for c in big.chunks}, by_prefix["cpu"].id: 30, by_prefix["gpu"].id: 70}
    assert sum(plan.unit_sizes.values()) == plan.unique_bytes
    assert (plan.chunk_count, plan.unit_count) == (len(big.chunks) + 4, len(big.chunks) + 2)
    plain = plan.chunks_for({})
    gpu = plan.chunks_for({"accelerator": "a100", "zone": "a"})
    assert plain == [c.id for c in big.chunks] + [by_prefix["cpu"].id]
    assert sorted(gpu) == sorted(plain + [by_prefix["gpu"].id])
    assert not member_chunks & (set(plain) | set(gpu) | set(plan.unit_sizes))
    assert plan.unit_sizes is plan.unit_sizes  # computed once per plan


def test_the_same_listings_in_any_order_give_the_same_plan_bytes():
    sizes = [random.Random(seed).randrange(1, 2 * MiB) for seed in range(600)]
    artifact, listing = prefix("d", sizes)
    first = compile_plan((artifact, listing), prefix("g", [5, 6], nodes={"a": "b"})).to_json()
    shuffled = listing[:]
    random.Random(7).shuffle(shuffled)
    again = compile_plan((artifact, shuffled), prefix("g", [5, 6], nodes={"a": "b"})).to_json()
    assert first == again
    bundles = json.loads(first)["bundles"]
    assert len(bundles) > 2 and [b["id"] for b in bundles] == sorted(b["id"] for b in bundles)


def test_bundles_survive_json_and_plans_without_them_still_load():
    plan = compile_plan(prefix("d", [KiB] * 3), prefix("one", [5], nodes={"a": "b"}))
    raw = json.loads(plan.to_json())
    (bundle,) = plan.bundles
    assert raw["bundles"] == [{"id": bundle.id, "length": 3 * KiB, "members": list(bundle.members)}]
    assert raw["format"] == "xfd.plan/1"
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_json(plan.to_json()).bundles == (PlanBundle(bundle.id, 3 * KiB, bundle.members),)

    lone = compile_plan(prefix("one", [5]))
    assert lone.bundles == () and json.loads(lone.to_json())["bundles"] == []  # written even when empty
    older = json.loads(lone.to_json())
    del older["bundles"]
    assert Plan.from_json(json.dumps(older)) == lone


def test_summary_repr_and_notebook_table_say_how_many_files_are_bundled():
    plan = compile_plan(prefix("d", [KiB] * 300), prefix("one", [5], nodes={"a": "b"}), prefix("big", [40 * MiB]))
    header = (
        "302 files, 302 unique objects, 40.3 MiB unique, 304 chunks of up to 16.0 MiB; "
        "300 small files packed into 8 bundles"
    )
    assert plan.summary().splitlines()[0] == f"plan: 3 artifacts, {header}"
    assert repr(plan) == (
        "<Plan 3 artifacts, 302 files, 302 unique objects, 40.3 MiB unique, 304 chunks; "
        "300 small files packed into 8 bundles>"
    )
    assert "304 chunks; 300 small files packed into 8 bundles</p>" in plan._repr_html_()
    plain = compile_plan(prefix("one", [5]))
    assert "bundle" not in plain.summary() + repr(plain) + plain._repr_html_()


def test_two_files_of_one_member_are_both_counted_as_bundled():
    shared = found("d/f00000", 5)
    plan = compile_plan(prefix("d", [5, 6]), (ObjectArtifact(store="s", key="d/f00000", to="/copy"), [shared]))
    assert plan.summary().splitlines()[0].endswith("; 3 small files packed into 1 bundle")


def test_the_engine_gets_the_stores_of_a_plan_or_all_of_them_for_plan_text():
    stores = {"s": Store("s3://b", {"region": "eu-west-1"}), "t": Store("s3://other")}
    assert store_arguments(["s"], stores) == {"s": ("s3://b", [("region", "eu-west-1")])}
    assert store_arguments(stores, stores) == {"s": ("s3://b", [("region", "eu-west-1")]), "t": ("s3://other", [])}
    # A store the plan names but the caller does not define: the engine opens it with the plan's URL.
    assert store_arguments(["s", "gone"], stores) == {"s": ("s3://b", [("region", "eu-west-1")])}


def test_a_bundle_is_rebuilt_with_new_ids_when_one_member_changes():
    artifact, listing = prefix("d", [10, 20, 30])
    before = compile_plan((artifact, listing)).bundles
    changed = listing[:1] + [attrs.evolve(listing[1], etag='"new"')] + listing[2:]
    after = compile_plan((artifact, changed)).bundles
    assert len(before) == len(after) == 1 and before[0].id != after[0].id
    assert before[0].members[0] == after[0].members[0] and before[0].members[1] != after[0].members[1]
