"""TOML <-> Manifest <-> builder: the three ways to say the same thing say the same thing."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xfd import Manifest, ManifestError
from xfd.manifest import ObjectArtifact, PrefixArtifact, Settings, Store, Unpack
from xfd.manifest.units import format_size, parse_size

EXAMPLE = """
[settings]
chunk_size = "16MiB"
node_parallelism = 4

[stores.models]
url = "s3://company-models/llama"
region = "us-west-2"
access_key_id = "${AWS_ACCESS_KEY_ID}"
secret_access_key = "${AWS_SECRET_ACCESS_KEY}"

[stores.public]
url = "https://example.org/files"

[[artifacts]]
name = "weights"
store = "models"
key = "7b/model.safetensors"
to = "/models/llama/model.safetensors"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

[[artifacts]]
store = "models"
prefix = "7b/tokenizer/"
to = "/models/llama/tokenizer/"
include = ["*.json", "**/*.model"]
exclude = ["*.tmp"]

[[artifacts]]
store = "public"
key = "data/set.tar.gz"
to = "/data/"
cache = false
unpack = { format = "tar.gz" }
"""


def test_example_loads_into_the_expected_model():
    manifest = Manifest.loads(EXAMPLE)
    assert manifest.settings == Settings(chunk_size=16 << 20, node_parallelism=4)
    assert manifest.stores["public"] == Store(url="https://example.org/files")
    weights, tokenizer, dataset = manifest.artifacts
    assert isinstance(weights, ObjectArtifact) and weights.display_name == "weights"
    assert tokenizer == PrefixArtifact(
        store="models",
        prefix="7b/tokenizer/",
        to="/models/llama/tokenizer/",
        include=("*.json", "**/*.model"),
        exclude=("*.tmp",),
    )
    assert dataset.destination == "/data/set.tar.gz"
    assert dataset.unpack == Unpack(format="tar.gz")
    assert dataset.unpack_destination == "/data/set"


def test_example_round_trips_through_toml():
    manifest = Manifest.loads(EXAMPLE)
    assert Manifest.loads(manifest.to_toml()) == manifest


def test_builder_builds_the_same_manifest_as_the_toml():
    built = (
        Manifest.builder()
        .settings(chunk_size="16MiB", node_parallelism=4)
        .store(
            "models",
            "s3://company-models/llama",
            region="us-west-2",
            access_key_id="${AWS_ACCESS_KEY_ID}",
            secret_access_key="${AWS_SECRET_ACCESS_KEY}",
        )
        .store("public", "https://example.org/files")
        .object("models", "7b/model.safetensors", to="/models/llama/model.safetensors", name="weights", sha256="0" * 64)
        .prefix(
            "models",
            "7b/tokenizer/",
            to="/models/llama/tokenizer/",
            include=["*.json", "**/*.model"],
            exclude=["*.tmp"],
        )
        .object("public", "data/set.tar.gz", to="/data/", cache=False)
        .unpack("tar.gz")
        .build()
    )
    assert built == Manifest.loads(EXAMPLE)


@pytest.mark.parametrize(
    ("written", "normalized", "destination"),
    [
        ("/models//model.bin", "/models/model.bin", "/models/model.bin"),
        ("/models/./model.bin", "/models/model.bin", "/models/model.bin"),
        ("//models///./x/", "/models/x/", "/models/x/set.tar.gz"),  # the trailing "/" still means "inside"
        ("/models/.", "/models/", "/models/set.tar.gz"),  # so does a last "."
    ],
)
def test_destinations_are_normalized_wherever_a_manifest_comes_from(written, normalized, destination):
    toml = f'[stores.s]\nurl = "s3://b"\n[[artifacts]]\nstore = "s"\nkey = "d/set.tar.gz"\nto = "{written}"\n'
    loaded = Manifest.loads(toml).artifacts[0]
    built = Manifest.builder().store("s", "s3://b").object("s", "d/set.tar.gz", to=written).build().artifacts[0]
    direct = ObjectArtifact(store="s", key="d/set.tar.gz", to=written)
    assert loaded == built == direct
    assert (direct.to, direct.destination) == (normalized, destination)
    assert PrefixArtifact(store="s", prefix="p", to=written).to == normalized
    assert Unpack(to=written).to == normalized


def test_artifacts_may_share_directories_and_repeat_the_very_same_file():
    manifest = (
        Manifest.builder()
        .store("s", "s3://b")
        .prefix("s", "tok/", to="/models/tok")
        .prefix("s", "extra/", to="/models//tok/", name="extra")  # prefixes share a directory
        .object("s", "tok/special.json", to="/models/tok/special.json")  # an object inside a prefix's directory
        .object("s", "tok/special.json", to="/models/./tok/special.json", name="again")  # the same file twice
        .object("s", "set.tar.gz", to="/models/set.tar.gz")
        .unpack()  # a tree beside them
        .build()
    )
    assert [a.to for a in manifest.artifacts] == [
        "/models/tok",
        "/models/tok/",
        "/models/tok/special.json",
        "/models/tok/special.json",
        "/models/set.tar.gz",
    ]


def test_unpack_limits_and_the_disk_reserve_load_build_and_round_trip():
    text = (
        '[settings]\ndisk_reserve = "2 GiB"\n[stores.s]\nurl = "s3://b"\n'
        '[[artifacts]]\nstore = "s"\nkey = "a.tgz"\nto = "/a.tgz"\nunpack = { max_size = "8GiB", max_ratio = 50 }\n'
        '[[artifacts]]\nstore = "s"\nkey = "b.zip"\nto = "/b.zip"\nunpack = { max_size = 1000, max_ratio = 2.5 }\n'
    )
    manifest = Manifest.loads(text)
    assert manifest.settings.disk_reserve == 2 << 30
    assert [a.unpack for a in manifest.artifacts] == [
        Unpack(max_size=8 << 30, max_ratio=50.0),
        Unpack(max_size=1000, max_ratio=2.5),
    ]
    assert 'max_size = "8GiB"' in manifest.to_toml() and 'disk_reserve = "2GiB"' in manifest.to_toml()
    assert Manifest.loads(manifest.to_toml()) == manifest
    built = (
        Manifest.builder()
        .settings(disk_reserve="2GiB")
        .store("s", "s3://b")
        .object("s", "a.tgz", to="/a.tgz")
        .unpack(max_size="8 GiB", max_ratio=50)
        .object("s", "b.zip", to="/b.zip")
        .unpack(max_size=1000, max_ratio=2.5)
        .build()
    )
    assert built == manifest
    defaults = Manifest.loads(
        '[stores.s]\nurl = "s3://b"\n[[artifacts]]\nstore = "s"\nkey = "a.tgz"\nto = "/a.tgz"\nunpack = {}\n'
    )
    assert defaults.settings.disk_reserve == 1 << 30
    assert (defaults.artifacts[0].unpack.max_size, defaults.artifacts[0].unpack.max_ratio) == (None, None)
    assert "max_" not in defaults.to_toml() and "disk_reserve" not in defaults.to_toml()


def test_builder_is_immutable_so_rerunning_a_cell_adds_nothing():
    base = Manifest.builder().store("s", "file:///srv/data")
    one = base.object("s", "a", to="/a")
    assert base.build().artifacts == ()
    assert len(one.build().artifacts) == 1


def test_builder_reports_problems_with_the_same_paths_as_toml():
    with pytest.raises(ManifestError) as info:
        Manifest.builder().store("s", "s3://b").object("s", "a.zip", to="/a.zip").unpack("rar").build()
    assert (
        str(info.value) == "builder: artifacts[0].unpack.format: must be one of auto, tar, tar.gz, tgz, zip (got 'rar')"
    )


def test_unpack_without_an_object_is_refused_at_once():
    with pytest.raises(ManifestError, match=r"unpack\(\) applies to the artifact added just before it"):
        Manifest.builder().store("s", "s3://b").prefix("s", "p", to="/p").unpack()


def test_manifests_are_frozen():
    manifest = Manifest.loads(EXAMPLE)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        manifest.settings.chunk_size = 1  # type: ignore[misc]
    assert attrs.evolve(manifest.settings, chunk_size=1 << 20).chunk_size == 1 << 20


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64MiB", 64 << 20),
        ("1 GiB", 1 << 30),
        ("100MB", 100_000_000),
        ("1.5KiB", 1536),
        ("42", 42),
        (7, 7),
        ("9007199254740993", 2**53 + 1),
    ],  # exact beyond the 53 bits of a float (a max_size may be that large)
)
def test_sizes(text, size):
    assert parse_size(text) == size


def test_format_size_is_exact_and_short():
    assert format_size(64 << 20) == "64MiB"
    assert format_size((1 << 20) + 1) == str((1 << 20) + 1)
    assert parse_size(format_size(3 << 30)) == 3 << 30


# --- properties -----------------------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
segments = st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True).filter(lambda s: s not in (".", ".."))
keys = st.lists(segments, min_size=1, max_size=4).map("/".join)
destinations = keys.map(lambda k: "/" + k)
stores = st.builds(
    Store,
    url=names.map(lambda n: f"s3://bucket-{n}/root"),
    options=st.fixed_dictionaries(
        {}, optional={"region": names, "allow_http": st.booleans(), "endpoint": names.map(lambda n: f"http://{n}:9000")}
    ),
)


@st.composite
def manifests(draw) -> Manifest:
    store_map = draw(st.dictionaries(names, stores, min_size=1, max_size=3))
    store_names = sorted(store_map)
    artifacts = []
    for index in range(draw(st.integers(0, 4))):
        store = draw(st.sampled_from(store_names))
        if draw(st.booleans()):
            key = draw(keys)
            archive = draw(st.booleans())
            to = f"/a{index}/" + ("x.tar.gz" if archive else draw(segments))
            unpack = Unpack(
                format=draw(st.sampled_from(["auto", "tar", "tgz"])),
                max_size=draw(st.none() | st.integers(1, 2**63 - 1)),
                max_ratio=draw(st.none() | st.floats(min_value=0.001, max_value=1e12)),
            )
            artifacts.append(
                ObjectArtifact(
                    store=store,
                    key=key,
                    to=to,
                    name=draw(st.none() | st.just(f"n{index}")),
                    cache=draw(st.booleans()),
                    unpack=unpack if archive else None,
                )
            )
        else:
            artifacts.append(
                PrefixArtifact(
                    store=store,
                    prefix=draw(keys),
                    to=f"/p{index}",
                    include=tuple(draw(st.lists(st.sampled_from(["*.json", "**/*.bin", "a/*"]), max_size=2))),
                )
            )
    chunk = draw(st.integers(1, 4096)) << 20
    return Manifest(
        stores=store_map,
        artifacts=tuple(artifacts),
        settings=Settings(
            chunk_size=chunk, node_parallelism=draw(st.integers(1, 64)), disk_reserve=draw(st.integers(0, 2**63 - 1))
        ),
    )


@settings(max_examples=150, deadline=None)
@given(manifests())
def test_any_valid_manifest_round_trips_through_toml(manifest: Manifest):
    assert Manifest.loads(manifest.to_toml()) == manifest


@settings(max_examples=150, deadline=None)
@given(manifests())
def test_builder_and_toml_agree_on_any_manifest(manifest: Manifest):
    builder = Manifest.builder().settings(
        chunk_size=manifest.settings.chunk_size,
        node_parallelism=manifest.settings.node_parallelism,
        disk_reserve=manifest.settings.disk_reserve,
    )
    for name, store in manifest.stores.items():
        builder = builder.store(name, store.url, **store.options)
    for artifact in manifest.artifacts:
        if isinstance(artifact, ObjectArtifact):
            builder = builder.object(
                artifact.store, artifact.key, to=artifact.to, name=artifact.name, cache=artifact.cache
            )
            if artifact.unpack:
                builder = builder.unpack(
                    artifact.unpack.format,
                    to=artifact.unpack.to,
                    max_size=artifact.unpack.max_size,
                    max_ratio=artifact.unpack.max_ratio,
                )
        else:
            builder = builder.prefix(
                artifact.store,
                artifact.prefix,
                to=artifact.to,
                include=artifact.include,
                exclude=artifact.exclude,
                name=artifact.name,
                cache=artifact.cache,
            )
    assert builder.build() == manifest


def test_node_selectors_round_trip_and_are_checked():
    text = (
        '[stores.s]\nurl = "s3://b"\n[[artifacts]]\nstore = "s"\nkey = "k"\nto = "/k"\n'
        'nodes = { gpu = "a100", zone = "eu" }\n'
    )
    manifest = Manifest.loads(text)
    assert manifest.artifacts[0].nodes == {"gpu": "a100", "zone": "eu"}
    assert Manifest.loads(manifest.to_toml()) == manifest
    built = Manifest.builder().store("s", "s3://b").object("s", "k", to="/k", nodes={"gpu": "a100", "zone": "eu"})
    assert built.build() == manifest
    with pytest.raises(ManifestError) as info:
        Manifest.loads(text.replace('zone = "eu"', "zone = 3"))
    assert str(info.value).startswith("manifest: artifacts[0].nodes: must be a table of Ray labels")
