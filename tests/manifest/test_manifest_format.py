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
        store="models", prefix="7b/tokenizer/", to="/models/llama/tokenizer/",
        include=("*.json", "**/*.model"), exclude=("*.tmp",),
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
        .store("models", "s3://company-models/llama", region="us-west-2",
               access_key_id="${AWS_ACCESS_KEY_ID}", secret_access_key="${AWS_SECRET_ACCESS_KEY}")
        .store("public", "https://example.org/files")
        .object("models", "7b/model.safetensors", to="/models/llama/model.safetensors", name="weights",
                sha256="0" * 64)
        .prefix("models", "7b/tokenizer/", to="/models/llama/tokenizer/", include=["*.json", "**/*.model"],
                exclude=["*.tmp"])
        .object("public", "data/set.tar.gz", to="/data/", cache=False)
        .unpack("tar.gz")
        .build()
    )
    assert built == Manifest.loads(EXAMPLE)


def test_builder_is_immutable_so_rerunning_a_cell_adds_nothing():
    base = Manifest.builder().store("s", "file:///srv/data")
    one = base.object("s", "a", to="/a")
    assert base.build().artifacts == ()
    assert len(one.build().artifacts) == 1


def test_builder_reports_problems_with_the_same_paths_as_toml():
    with pytest.raises(ManifestError) as info:
        Manifest.builder().store("s", "s3://b").object("s", "a.zip", to="/a.zip").unpack("rar").build()
    assert str(info.value) == "builder: artifacts[0].unpack.format: must be one of auto, tar, tar.gz, tgz, zip (got 'rar')"


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
    [("64MiB", 64 << 20), ("1 GiB", 1 << 30), ("100MB", 100_000_000), ("1.5KiB", 1536), ("42", 42), (7, 7)],
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
    options=st.fixed_dictionaries({}, optional={"region": names, "allow_http": st.booleans(),
                                                "endpoint": names.map(lambda n: f"http://{n}:9000")}),
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
            artifacts.append(ObjectArtifact(
                store=store, key=key, to=to, name=draw(st.none() | st.just(f"n{index}")),
                cache=draw(st.booleans()),
                unpack=Unpack(format=draw(st.sampled_from(["auto", "tar", "tgz"]))) if archive else None,
            ))
        else:
            artifacts.append(PrefixArtifact(
                store=store, prefix=draw(keys), to=f"/p{index}",
                include=tuple(draw(st.lists(st.sampled_from(["*.json", "**/*.bin", "a/*"]), max_size=2))),
            ))
    chunk = draw(st.integers(1, 4096)) << 20
    return Manifest(stores=store_map, artifacts=tuple(artifacts),
                    settings=Settings(chunk_size=chunk, node_parallelism=draw(st.integers(1, 64))))


@settings(max_examples=150, deadline=None)
@given(manifests())
def test_any_valid_manifest_round_trips_through_toml(manifest: Manifest):
    assert Manifest.loads(manifest.to_toml()) == manifest


@settings(max_examples=150, deadline=None)
@given(manifests())
def test_builder_and_toml_agree_on_any_manifest(manifest: Manifest):
    builder = Manifest.builder().settings(chunk_size=manifest.settings.chunk_size,
                                          node_parallelism=manifest.settings.node_parallelism)
    for name, store in manifest.stores.items():
        builder = builder.store(name, store.url, **store.options)
    for artifact in manifest.artifacts:
        if isinstance(artifact, ObjectArtifact):
            builder = builder.object(artifact.store, artifact.key, to=artifact.to, name=artifact.name,
                                     cache=artifact.cache)
            if artifact.unpack:
                builder = builder.unpack(artifact.unpack.format, to=artifact.unpack.to)
        else:
            builder = builder.prefix(artifact.store, artifact.prefix, to=artifact.to, include=artifact.include,
                                     exclude=artifact.exclude, name=artifact.name, cache=artifact.cache)
    assert builder.build() == manifest


def test_node_selectors_round_trip_and_are_checked():
    text = ('[stores.s]\nurl = "s3://b"\n[[artifacts]]\nstore = "s"\nkey = "k"\nto = "/k"\n'
            'nodes = { gpu = "a100", zone = "eu" }\n')
    manifest = Manifest.loads(text)
    assert manifest.artifacts[0].nodes == {"gpu": "a100", "zone": "eu"}
    assert Manifest.loads(manifest.to_toml()) == manifest
    built = Manifest.builder().store("s", "s3://b").object("s", "k", to="/k", nodes={"gpu": "a100", "zone": "eu"})
    assert built.build() == manifest
    with pytest.raises(ManifestError) as info:
        Manifest.loads(text.replace('zone = "eu"', "zone = 3"))
    assert str(info.value).startswith("manifest: artifacts[0].nodes: must be a table of Ray labels")
