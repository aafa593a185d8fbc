"""The compiler: chunking, dedupe, destinations, determinism, lock files; against the real S3 server."""

from __future__ import annotations

import json
import os
import unicodedata

import attrs
import obstore
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xfd import Manifest, PlanError
from xfd.cli import main
from xfd.engine import node_engine
from xfd.errors import ConfigError
from xfd.manifest import ObjectArtifact, Settings, Store
from xfd.plan import Plan, _assemble, _Found
from xfd.testing import CountingProxy, LocalS3

MiB = 1 << 20


def local_manifest(sizes: list[int], chunk_size: int) -> tuple[Manifest, list[list[_Found]]]:
    artifacts = tuple(ObjectArtifact(store="s", key=f"k{i}", to=f"/d/k{i}") for i in range(len(sizes)))
    manifest = Manifest(stores={"s": Store("s3://b")}, artifacts=artifacts, settings=Settings(chunk_size=chunk_size))
    listings = [[_Found(f"k{i}", size, f'"etag{i}"', None, None)] for i, size in enumerate(sizes)]
    return manifest, listings


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 50 * MiB), min_size=1, max_size=5), chunk_mib=st.integers(1, 16))
def test_chunks_cover_every_object_exactly_once(sizes, chunk_mib):
    manifest, listings = local_manifest(sizes, chunk_mib * MiB)
    plan = _assemble(manifest, listings)
    for plan_object in plan.objects:
        position = 0
        for index, chunk in enumerate(plan_object.chunks):
            assert chunk.index == index and chunk.offset == position
            assert 0 < chunk.length <= chunk_mib * MiB
            position += chunk.length
        assert position == plan_object.size
    all_ids = [c.id for o in plan.objects for c in o.chunks]
    assert len(all_ids) == len(set(all_ids))
    assert plan.unique_bytes == sum(sizes)


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(0, 10 * MiB), min_size=1, max_size=4))
def test_the_same_inputs_give_the_same_plan_bytes(sizes):
    first = _assemble(*local_manifest(sizes, MiB)).to_json()
    again = _assemble(*local_manifest(sizes, MiB)).to_json()
    assert first == again
    assert Plan.from_json(first).to_json() == first


@settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 1 << 44))
def test_automatic_chunks_are_a_power_of_two_from_16_to_64_mib_giving_about_32_per_file(size):
    chunk = Settings().chunk_size_for(size)
    assert Settings().chunk_size == "auto"
    assert chunk in (16 * MiB, 32 * MiB, 64 * MiB)
    assert chunk == 64 * MiB or size <= 32 * chunk  # never more than 32 chunks below the largest size
    assert chunk == 16 * MiB or size > 16 * chunk  # never fewer than 16 above the smallest size
    assert Settings().chunk_size_for(size + MiB) >= chunk
    assert Settings(chunk_size=3 * MiB).chunk_size_for(size) == 3 * MiB


def test_automatic_chunk_sizes_follow_each_file_and_survive_json():
    manifest, listings = local_manifest([5, 1 << 30, (1 << 30) + 1, 3 << 30], MiB)
    manifest = attrs.evolve(manifest, settings=Settings())
    plan = _assemble(manifest, listings)
    chunking = {o.key: (len(o.chunks), max(c.length for c in o.chunks)) for o in plan.objects}
    assert chunking == {"k0": (1, 5), "k1": (32, 32 * MiB), "k2": (17, 64 * MiB), "k3": (48, 64 * MiB)}
    assert Plan.from_json(plan.to_json()) == plan
    assert "98 chunks of up to 64.0 MiB" in plan.summary()


def test_a_changed_etag_changes_every_id():
    manifest, listings = local_manifest([3 * MiB], MiB)
    before = _assemble(manifest, listings)
    listings[0][0] = _Found("k0", 3 * MiB, '"other"', None, None)
    after = _assemble(manifest, listings)
    assert before.objects[0].id != after.objects[0].id
    assert not {c.id for c in before.objects[0].chunks} & {c.id for c in after.objects[0].chunks}


def test_plan_json_of_another_format_is_refused():
    with pytest.raises(ConfigError, match="not an xfd plan"):
        Plan.from_json('{"format": "something/9"}')


# --- against the S3 server ---------------------------------------------------------------------------


@pytest.fixture
def filled(s3: LocalS3, bucket: str) -> dict[str, bytes]:
    store = s3.store(bucket)
    objects = {
        "root/model.bin": os.urandom(3 * MiB + 5),
        "root/empty.bin": b"",
        "root/tok/a.json": b'{"a": 1}',
        "root/tok/sub/b.json": b'{"b": 2}',
        "root/tok/sub/c.txt": b"c",
        "root/tok/skip.tmp.json": b"{}",
    }
    for key, data in objects.items():
        obstore.put(store, key, data)
    return objects


def builder_for(s3: LocalS3, bucket: str, endpoint: str | None = None):
    return (
        Manifest.builder()
        .store("m", f"s3://{bucket}/root", **s3.manifest_options(endpoint))
        .settings(chunk_size="1MiB")
    )


def test_objects_and_prefixes_resolve_with_nested_keys_and_globs(s3, bucket, filled):
    plan = (
        builder_for(s3, bucket)
        .object("m", "model.bin", to="/models/")
        .object("m", "empty.bin", to="/models/empty.bin")
        .prefix("m", "tok", to="/tok", include=["*.json"], exclude=["*.tmp.json"], name="tokenizer")
        .build()
        .plan()
    )
    assert [f.destination for f in plan.files] == [
        "/models/empty.bin",
        "/models/model.bin",
        "/tok/a.json",
        "/tok/sub/b.json",
    ]
    sizes = {plan.object(f.object_id).key: plan.object(f.object_id).size for f in plan.files}
    assert sizes == {"model.bin": 3 * MiB + 5, "empty.bin": 0, "tok/a.json": 8, "tok/sub/b.json": 8}
    model = next(o for o in plan.objects if o.key == "model.bin")
    assert [c.length for c in model.chunks] == [MiB, MiB, MiB, 5]
    assert model.etag and model.last_modified
    assert next(o for o in plan.objects if o.key == "empty.bin").chunks == ()


def test_a_prefix_with_or_without_trailing_slash_gives_the_same_plan(s3, bucket, filled):
    with_slash = builder_for(s3, bucket).prefix("m", "tok/", to="/tok/").build().plan()
    without = builder_for(s3, bucket).prefix("m", "tok", to="/tok").build().plan()
    assert with_slash.files == without.files and with_slash.objects == without.objects


def test_the_same_object_at_two_destinations_is_fetched_once(s3, bucket, filled):
    plan = (
        builder_for(s3, bucket)
        .object("m", "model.bin", to="/a/model.bin")
        .object("m", "model.bin", to="/b/model.bin", name="copy")
        .prefix("m", "tok", to="/tok", include=["a.json"])
        .object("m", "tok/a.json", to="/again/a.json")
        .build()
        .plan()
    )
    assert len(plan.objects) == 2
    assert len(plan.files) == 4
    assert plan.unique_bytes == 3 * MiB + 5 + 8


def test_plans_are_deterministic_against_the_store(s3, bucket, filled):
    manifest = builder_for(s3, bucket).object("m", "model.bin", to="/m").prefix("m", "tok", to="/t").build()
    assert manifest.plan().to_json() == manifest.plan().to_json()


def test_resolution_is_concurrent_and_counted_at_the_origin(s3, bucket, filled, origin: CountingProxy):
    builder = builder_for(s3, bucket, origin.endpoint)
    for index in range(20):
        builder = builder.object("m", "model.bin", to=f"/copies/{index}.bin")
    plan = builder.prefix("m", "tok", to="/t").build().plan()
    traffic = origin.traffic()
    assert [r.method for r in traffic.requests].count("HEAD") == 20
    assert traffic.get_bytes < 10_000  # listing only: planning never downloads object bytes
    assert len(plan.objects) == 5


def test_missing_keys_and_empty_prefixes_are_clear_errors(s3, bucket, filled):
    manifest = (
        builder_for(s3, bucket)
        .object("m", "nope.bin", to="/x")
        .object("m", "model.bin", to="/y")
        .prefix("m", "nothing-here", to="/z")
        .prefix("m", "tok", to="/w", include=["*.yaml"])
        .build()
    )
    with pytest.raises(PlanError) as info:
        manifest.plan()
    assert str(info.value) == (
        "3 artifacts cannot be resolved:\n"
        f"  artifacts[0] (nope.bin): s3://{bucket}/root/nope.bin does not exist; check the key and the store URL\n"
        f"  artifacts[2] (nothing-here): no objects under s3://{bucket}/root/nothing-here; check the prefix and the globs\n"
        f"  artifacts[3] (tok): none of the 4 objects match include/exclude under s3://{bucket}/root/tok; "
        "check the prefix and the globs"
    )


def test_access_denied_is_a_clear_error(s3, bucket, filled, origin: CountingProxy):
    origin.refuse(f"/{bucket}/root/model.bin", 403)
    with pytest.raises(PlanError) as info:
        builder_for(s3, bucket, origin.endpoint).object("m", "model.bin", to="/x").build().plan()
    assert str(info.value) == (
        f"artifacts[0] (model.bin): access to s3://{bucket}/root/model.bin was denied; "
        "check the credentials of store 'm'"
    )


def test_hostile_keys_under_a_prefix_are_refused(s3, bucket):
    client = s3.client()
    client.put_object(Bucket=bucket, Key="root/data/../../escape", Body=b"x")
    with pytest.raises(PlanError, match=r"holds a key that cannot be mapped to a file safely"):
        builder_for(s3, bucket).prefix("m", "data", to="/data").build().plan()


NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        # object_store refuses these when listing: the key is named, escaped, in the PlanError.
        (["root/data/../../escape"], 'refused: Path "root/data/../../escape"'),
        (["root/data//abs"], 'refused: Path "root/data//abs" contained empty path segment'),
        (
            ["root/data/a\tb"],
            'refused: Path "root/data/a\\tb"',
        ),  # a control character ('\n' alike; moto cannot store it)
        (["root/data/a\x01b"], 'refused: Path "root/data/a\\x01b"'),
        # S3 "folders": the prefix's own marker, and a marker of a directory that holds keys, are not files.
        (["root/data/", "root/data/a.txt"], {"data/a.txt": "/data/a.txt"}),
        (["root/data/dir/", "root/data/dir/f"], {"data/dir/f": "/data/dir/f"}),
        (["root/data/x", "root/data/x/"], {"data/x": "/data/x"}),
        # A lone folder marker reads like an empty object "empty" (obstore drops the slash): an empty file, inside.
        (["root/data/empty/", "root/data/a.txt"], {"data/empty": "/data/empty", "data/a.txt": "/data/a.txt"}),
        # Names longer than NAME_MAX (255 bytes: 128 'é' are 256) would fail on every node at write time.
        (["root/data/" + "a" * 300], "refused: key 'data/" + "a" * 300 + "' has a name of 300 bytes"),
        (["root/data/sub/" + "é" * 128], "refused: key 'data/sub/" + "é" * 128 + "' has a name of 256 bytes"),
        (["root/data/" + "b" * 255], {"data/" + "b" * 255: "/data/" + "b" * 255}),
        # NFC and NFD of one name are different keys and, on Linux file systems, different files: both, unchanged.
        ([f"root/data/{NFC}", f"root/data/{NFD}"], {f"data/{NFC}": f"/data/{NFC}", f"data/{NFD}": f"/data/{NFD}"}),
        # A backslash is an ordinary character in a POSIX name: "..\\..\\x" is one segment, inside /data.
        (["root/data/a\\b", "root/data/..\\..\\x"], {"data/a\\b": "/data/a\\b", "data/..\\..\\x": "/data/..\\..\\x"}),
    ],
    ids=[
        "dot-dot",
        "empty-segment",
        "tab",
        "control",
        "prefix-marker",
        "directory-marker",
        "marker-beside-object",
        "lone-marker",
        "300-bytes",
        "256-bytes-of-128-chars",
        "255-bytes",
        "nfc-and-nfd",
        "backslash",
    ],
)
def test_odd_keys_under_a_prefix_land_inside_the_destination_or_are_refused(s3, bucket, keys, expected):
    client = s3.client()
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"" if key.endswith("/") else b"x")
    manifest = builder_for(s3, bucket).prefix("m", "data", to="/data").build()
    if isinstance(expected, str):
        with pytest.raises(PlanError) as info:
            manifest.plan()
        message = str(info.value)
        assert expected.removeprefix("refused: ") in message
        assert "rename" in message and message.isprintable()  # says how to fix it; one line, nothing raw
        return
    plan = manifest.plan()
    assert {plan.object(f.object_id).key: f.destination for f in plan.files} == expected  # one file per key
    for file in plan.files:
        assert os.path.normpath(file.destination).startswith("/data/") and ".." not in file.destination.split("/")
        assert all(len(part.encode()) <= 255 for part in file.destination.split("/"))


def test_two_objects_at_one_destination_or_file_over_directory_are_refused(s3, bucket, filled):
    with pytest.raises(PlanError, match=r"/tok/a.json is the destination of two different objects"):
        (
            builder_for(s3, bucket)
            .prefix("m", "tok", to="/tok")
            .object("m", "model.bin", to="/tok/a.json")
            .build()
            .plan()
        )
    with pytest.raises(PlanError, match=r"/tok/a.json is a file of artifact 'tok' and also a directory holding"):
        builder_for(s3, bucket).prefix("m", "tok", to="/tok").object(
            "m", "model.bin", to="/tok/a.json/m"
        ).build().plan()


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        # Spelled another way, one path: the two objects used to be planned as two files of one path on the node.
        (
            lambda b: b.object("m", "model.bin", to="/tok//a.json"),
            "/tok/a.json is the destination of two different objects (artifacts 'tok' and 'model.bin'); "
            "give them different paths",
        ),
        (
            lambda b: b.object("m", "model.bin", to="/tok/./a.json"),
            "/tok/a.json is the destination of two different objects (artifacts 'tok' and 'model.bin'); "
            "give them different paths",
        ),
        # The same object with other options: one of the two used to be dropped silently (here: not cached, nodes).
        (
            lambda b: b.object("m", "tok/a.json", to="/tok/a.json", cache=False, name="uncached"),
            "/tok/a.json is written by artifacts 'tok' and 'uncached' with different cache; "
            "make them agree or give them different paths",
        ),
        (
            lambda b: b.prefix("m", "tok/sub", to="/tok//sub/", nodes={"gpu": "a100"}, name="gpu-only"),
            "/tok/sub/b.json is written by artifacts 'tok' and 'gpu-only' with different nodes; "
            "make them agree or give them different paths",
        ),
    ],
    ids=["double-slash", "dot-segment", "same-object-other-cache", "same-object-other-nodes"],
)
def test_files_of_two_artifacts_at_one_path_are_refused_naming_both(s3, bucket, filled, second, expected):
    manifest = second(builder_for(s3, bucket).prefix("m", "tok", to="/tok")).build()
    with pytest.raises(PlanError) as info:
        manifest.plan()
    assert str(info.value) == expected


def test_the_same_file_named_by_two_artifacts_is_planned_once(s3, bucket, filled):
    plan = (
        builder_for(s3, bucket)
        .prefix("m", "tok", to="/tok")
        .prefix("m", "tok/sub", to="/tok/sub", name="sub")
        .object("m", "tok/a.json", to="/tok/a.json")
        .object("m", "tok/a.json", to="/tok//a.json", name="again")
        .build()
        .plan()
    )
    assert [f.destination for f in plan.files] == [
        "/tok/a.json",
        "/tok/skip.tmp.json",
        "/tok/sub/b.json",
        "/tok/sub/c.txt",
    ]
    assert len(plan.objects) == 4


def test_unpack_limits_and_the_disk_reserve_reach_the_plan_and_the_engine(s3, bucket, filled, tmp_path):
    manifest = (
        builder_for(s3, bucket)
        .settings(disk_reserve="2GiB")
        .object("m", "model.bin", to="/a/limited.tar")
        .unpack(max_size="8GiB", max_ratio=50)
        .object("m", "model.bin", to="/a/default.tar")
        .unpack()
        .build()
    )
    plan = manifest.plan()
    raw = json.loads(plan.to_json())
    assert raw["settings"]["disk_reserve"] == 2 << 30
    assert [(u["to"], u["max_size"], u["max_ratio"]) for u in raw["unpacks"]] == [
        ("/a/limited", 8 << 30, 50.0),
        ("/a/default", None, None),
    ]
    assert Plan.from_json(plan.to_json()) == plan
    assert (
        json.loads(builder_for(s3, bucket).object("m", "model.bin", to="/m").build().plan().to_json())["settings"][
            "disk_reserve"
        ]
        == 1 << 30
    )
    node_engine(plan, manifest.stores, tmp_path).close()  # the engine reads these plans
    node_engine(plan.to_json(), manifest.stores, tmp_path).close()  # and their text, as node agents hand it over


def test_a_plain_http_endpoint_without_allow_http_says_what_to_set(s3, bucket, filled):
    options = {k: v for k, v in s3.manifest_options().items() if k != "allow_http"}
    manifest = Manifest.builder().store("m", f"s3://{bucket}/root", **options).object("m", "model.bin", to="/x").build()
    with pytest.raises(PlanError) as info:
        manifest.plan()  # it used to say "HTTP error: builder error"
    assert str(info.value) == (
        f"artifacts[0] (model.bin): cannot read s3://{bucket}/root/model.bin: {s3.endpoint} is plain HTTP, which the "
        "store refuses unless allowed; set allow_http = true in [stores.m] (or use https://)"
    )
    plain = Manifest.builder().store("web", "http://127.0.0.1:9/files").object("web", "a.bin", to="/a").build()
    with pytest.raises(PlanError, match=r"127.0.0.1:9 is plain HTTP, .* set allow_http = true in \[stores.web\]"):
        plain.plan()


def test_plans_objects_and_the_manifest_have_one_line_reprs(s3, bucket, filled):
    manifest = builder_for(s3, bucket).object("m", "model.bin", to="/m").prefix("m", "tok", to="/t").build()
    plan = manifest.plan()
    assert repr(manifest) == "<Manifest 1 store, 2 artifacts: model.bin, tok>"
    # The four small files of tok travel as one bundle; model.bin as its own 4 chunks.
    assert repr(plan) == (
        "<Plan 2 artifacts, 5 files, 5 unique objects, 3.0 MiB unique, 8 chunks; 4 small files packed into 1 bundle>"
    )
    assert sorted(plan.object(m).key for b in plan.bundles for m in b.members) == [
        "tok/a.json",
        "tok/skip.tmp.json",
        "tok/sub/b.json",
        "tok/sub/c.txt",
    ]
    assert plan.unit_count == 5 and sum(plan.unit_sizes.values()) == plan.unique_bytes
    model = next(o for o in plan.objects if o.key == "model.bin")
    assert repr(model) == "<PlanObject m:model.bin, 3.0 MiB in 4 chunks>"
    assert "\n" not in repr(plan) and "Chunk(" not in repr(plan)
    assert plan.summary().startswith("plan: 2 artifacts, 5 files, 5 unique objects, 3.0 MiB unique, 8 chunks of up to")
    assert [len(o["chunks"]) for o in attrs.asdict(plan)["objects"] if o["key"] == "model.bin"] == [4]


def test_secrets_stay_out_of_plans(s3, bucket, filled):
    canary = "CANARY-SECRET-91ab"
    options = {**s3.manifest_options(), "session_token": canary}
    plan = (
        Manifest.builder().store("m", f"s3://{bucket}/root", **options).object("m", "model.bin", to="/x").build().plan()
    )
    assert canary not in plan.to_json() and canary not in repr(plan) and canary not in plan._repr_html_()
    assert "session_token" not in plan.to_json()


def test_environment_templates_are_resolved_when_planning(s3, bucket, filled, monkeypatch):
    monkeypatch.setenv("XFD_TEST_ENDPOINT", s3.endpoint)
    options = {**s3.manifest_options(), "endpoint": "${XFD_TEST_ENDPOINT}"}
    manifest = Manifest.builder().store("m", f"s3://{bucket}/root", **options).object("m", "model.bin", to="/x").build()
    assert manifest.plan().stores["m"].options["endpoint"] == "${XFD_TEST_ENDPOINT}"
    monkeypatch.delenv("XFD_TEST_ENDPOINT")
    with pytest.raises(ConfigError, match=r"stores.m.endpoint: environment variable XFD_TEST_ENDPOINT is not set"):
        manifest.plan()


def test_lock_file_accepts_the_same_store_and_refuses_a_changed_one(s3, bucket, filled, tmp_path, capsys):
    path = tmp_path / "artifacts.toml"
    path.write_text(
        s3.store_toml("m", f"s3://{bucket}/root") + '[[artifacts]]\nstore = "m"\nprefix = "tok"\nto = "/tok"\n'
    )
    assert main(["lock", str(path)]) == 0
    assert (tmp_path / "artifacts.lock.json").exists()
    assert main(["plan", "--locked", str(path)]) == 0
    assert "plan: 1 artifact, 4 files" in capsys.readouterr().out

    obstore.put(s3.store(bucket), "root/tok/a.json", b'{"a": "changed"}')
    obstore.put(s3.store(bucket), "root/tok/new.json", b"{}")
    assert main(["plan", "--locked", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the stores no longer match the lock file" in err
    assert f"changed: s3://{bucket}/root/tok/a.json" in err and f"new: s3://{bucket}/root/tok/new.json" in err


def test_cli_check_and_plan_json(s3, bucket, filled, tmp_path, capsys):
    path = tmp_path / "a.toml"
    path.write_text('[stores.m]\nurl = "s3://b"\n[[artifacts]]\nstore = "m"\nkey = "k"\nto = "/k"\n')
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok (1 store, 1 artifact)"
    path.write_text('[stores.m]\nurl = "s3://b"\n[[artifacts]]\nstore = "m"\nkey = "k"\nto = "k"\n')
    assert main(["check", str(path)]) == 2
    assert "artifacts[0].to: must be an absolute path" in capsys.readouterr().err
