"""Arbitrary documents and builder calls: a manifest either loads or fails with ManifestError; nothing else escapes."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xfd import Manifest, ManifestError
from xfd.manifest import ManifestBuilder
from xfd.manifest.toml_format import from_document

KEYS = [
    "settings",
    "stores",
    "artifacts",
    "url",
    "store",
    "key",
    "prefix",
    "to",
    "unpack",
    "format",
    "chunk_size",
    "node_parallelism",
    "include",
    "exclude",
    "cache",
    "sha256",
    "name",
    "region",
    "endpoint",
    "m",
    "x",
    "max_size",
    "max_ratio",
    "disk_reserve",
]
scalars = st.one_of(
    st.text(max_size=12),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.floats(allow_nan=False),
    st.sampled_from(["s3://b/p", "/abs", "rel", "64MiB", "auto", "rar", "${X}", "$", "m", "*.json", ".."]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=5),
    max_leaves=25,
)
artifact_fields = ["key", "prefix", "to", "name", "sha256", "cache", "unpack", "include", "exclude"]
artifacts = st.lists(
    st.fixed_dictionaries({"store": st.just("m")}, optional={k: documents for k in artifact_fields}), max_size=3
)
top_level = st.dictionaries(st.sampled_from(KEYS), documents, max_size=4) | st.fixed_dictionaries(
    {"stores": st.just({"m": {"url": "s3://bucket"}}), "artifacts": artifacts},
    optional={"settings": st.dictionaries(st.sampled_from(KEYS), documents, max_size=3)},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(top_level)
def test_arbitrary_documents_load_or_raise_manifest_error(document):
    try:
        manifest = from_document(document, "fuzz.toml")
    except ManifestError as error:
        assert error.problems and all(isinstance(p, str) and isinstance(m, str) for p, m in error.problems)
    else:
        assert Manifest.loads(manifest.to_toml()) == manifest


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_loads_or_raises_manifest_error(text):
    try:
        Manifest.loads(text, "fuzz.toml")
    except ManifestError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(top_level)
def test_valid_toml_of_arbitrary_shape_loads_or_raises_manifest_error(document):
    try:
        text = tomli_w.dumps(document)
    except (TypeError, ValueError):
        return  # not representable as TOML (e.g. integers beyond 64 bits)
    try:
        Manifest.loads(text, "fuzz.toml")
    except ManifestError:
        pass


# --- the fluent builder: arbitrary call sequences ----------------------------------------------------

BUILDER_METHODS = {"settings", "store", "object", "prefix", "unpack", "to_document", "build"}
HUGE_INTS = st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**400]) | st.sampled_from([-1, 1]).map(
    lambda sign: sign * 10**5000
)  # beyond str()'s 4300 digits (built lazily: the strategy's repr must work)
odd_strings = st.sampled_from(
    [
        "s3://[bucket",
        "http://a\uff03b",
        "gs://",
        "rel",
        "/",
        "",
        "x/..",
        "..",
        "dir/",
        "9" * 400 + "MiB",
        "1.5KiB",
        "rar",
        "$",
        "${X",
        "*.json",
        "é",
        "e\u0301",
        "a\nb",
        "\x00",
    ]
)
odd_scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=10), st.integers(-(2**70), 2**70), HUGE_INTS, st.floats(), odd_strings
)
odd_values = st.recursive(
    odd_scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=4) | odd_strings, inner, max_size=3),
    max_leaves=6,
)
# Each parameter's plausible values (some still invalid: a tar destination without unpack.to, a gs:// region).
good = {
    "store_name": st.sampled_from(["m", "n"]),
    "name": st.sampled_from([None, None, None, "weights", "data"]),
    "store": st.sampled_from(["m", "n"]),
    "url": st.sampled_from(
        ["s3://bucket/p", "s3://b", "s3://b/", "gs://b", "az://c/x", "https://h/p", "file:///srv/data", "memory://"]
    ),
    "key": st.sampled_from(["7b/model.bin", "set.tar.gz", "a.zip", "x"]),
    "prefix": st.sampled_from(["", "tok", "tok/", "a/b/"]),
    "to": st.sampled_from(["/data/", "/data/set.tar.gz", "/srv/p", "/models/llama/", "/x", "/data//./set.tar.gz"]),
    "sha256": st.just("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
    "cache": st.booleans(),
    "nodes": st.dictionaries(st.sampled_from(["gpu", "zone"]), st.sampled_from(["a100", "b"]), max_size=2),
    "include": st.lists(st.sampled_from(["*.json", "**/*.bin", "a?c", "[!x]*"]), max_size=2),
    "format": st.sampled_from(["auto", "tar", "tar.gz", "tgz", "zip"]),
    "chunk_size": st.sampled_from(["64MiB", "1 GiB", 1 << 20, "500MB"]),
    "overwrite": st.booleans(),
    "region": st.sampled_from(["us-west-2", "${AWS_REGION:-x}"]),
    "endpoint": st.just("http://127.0.0.1:9000"),
    "allow_http": st.booleans(),
    "skip_signature": st.booleans(),
    "timeout": st.sampled_from(["30s", 30, 1.5]),
    "disk_reserve": st.sampled_from(["1GiB", 0, "500 MB"]),
    "max_size": st.sampled_from(["64GiB", 1 << 20, "2 TB"]),
    "max_ratio": st.sampled_from([200, 2.5, 1e6]),
}
good["exclude"] = good["include"]
for count in ("node_parallelism", "upload_slots", "origin_parallelism", "origin_chunk_streams", "origin_attempts"):
    good[count] = st.integers(1, 40)
for seconds in ("origin_backoff", "origin_max_backoff", "origin_timeout"):
    good[seconds] = st.floats(0.01, 1000)
POSITIONAL = {
    "settings": [],
    "store": ["store_name", "url"],
    "object": ["store", "key"],
    "prefix": ["store", "prefix"],
    "unpack": ["format"],
    "to_document": [],
}
KEYWORDS = {
    "settings": [
        "chunk_size",
        "node_parallelism",
        "upload_slots",
        "origin_parallelism",
        "origin_chunk_streams",
        "overwrite",
        "origin_attempts",
        "origin_backoff",
        "origin_max_backoff",
        "origin_timeout",
        "disk_reserve",
    ],
    "store": ["region", "endpoint", "allow_http", "timeout", "skip_signature"],
    "object": ["to", "name", "sha256", "cache", "nodes"],
    "prefix": ["to", "name", "include", "exclude", "cache", "nodes"],
    "unpack": ["to", "max_size", "max_ratio"],
    "to_document": [],
}
odd_keywords = st.text(max_size=6) | st.sampled_from(
    [
        "self",
        "too",
        "chunk_sise",
        "regoin",
        "options",
        "",
        "é",
        "a-b",
        "__class__",
        "name",
        "url",
        "store",
        "key",
        "format",
    ]
)


def value_for(parameter: str, wild: bool) -> st.SearchStrategy[Any]:
    plausible = good.get(parameter, odd_values)
    return st.sampled_from([plausible] * 5 + [odd_values]).flatmap(lambda chosen: chosen) if wild else plausible


@st.composite
def builder_calls(draw: st.DrawFn, wild: bool) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """One call shaped like the method (its positional arguments, some of its keywords) with plausible values;
    ``wild``: now and then any value, and sometimes any number of arguments and odd keyword names."""
    method = draw(st.sampled_from(sorted(POSITIONAL)))
    if not wild or draw(st.sampled_from([True, True, True, False])):
        args = [draw(value_for(p, wild)) for p in POSITIONAL[method]]
        keywords = (
            draw(st.lists(st.sampled_from(KEYWORDS[method]), unique=True, max_size=3)) if KEYWORDS[method] else []
        )
        if method in ("object", "prefix") and "to" not in keywords and draw(st.sampled_from([True] * 5 + [False])):
            keywords.append("to")
        kwargs = {k: draw(value_for(k, wild)) for k in keywords}
    else:
        args = draw(st.lists(odd_values, max_size=4))
        kwargs = draw(
            st.dictionaries(odd_keywords | st.sampled_from(KEYWORDS[method] or ["x"]), odd_values, max_size=3)
        )
    return method, tuple(args), kwargs


# Plausible sequences (after two stores are declared) often build, so the round trip is exercised; wild ones
# probe every error path.
STORES = [("store", ("m", "s3://bucket"), {}), ("store", ("n", "gs://b/x"), {})]
call_sequences = st.lists(builder_calls(wild=False), min_size=1, max_size=6).map(
    lambda calls: STORES + calls
) | st.lists(builder_calls(wild=True), max_size=7)


def _check_manifest_error(error: ManifestError) -> None:
    assert error.source == "builder"
    assert error.problems and all(isinstance(p, str) and isinstance(m, str) and m for p, m in error.problems)
    assert all(p or m.startswith("unpack()") for p, m in error.problems)  # every other problem has its path
    assert "string conversion" not in str(error)  # a message, not the failure of repr() on a huge int


def test_the_builder_fuzz_covers_every_public_method():
    assert {n for n in dir(ManifestBuilder) if not n.startswith("_")} == BUILDER_METHODS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call_sequences)
def test_arbitrary_builder_calls_build_or_raise_manifest_error(calls):
    """Any sequence of builder calls, with any values: a bad value is a ManifestError naming its path (from the
    call, or from build()); only a call that does not fit the method's signature is a TypeError, as documented."""
    builder = Manifest.builder()
    for name, args, kwargs in calls:
        method = getattr(ManifestBuilder, name)
        try:
            inspect.signature(method).bind(builder, *args, **kwargs)
        except TypeError:
            with pytest.raises(TypeError):
                method(builder, *args, **kwargs)
            continue
        try:
            result = method(builder, *args, **kwargs)
        except ManifestError as error:
            _check_manifest_error(error)
            continue
        if isinstance(result, ManifestBuilder):
            builder = result
    try:
        manifest = builder.build()
    except ManifestError as error:
        _check_manifest_error(error)
        event("build() raised ManifestError")
    else:
        event(f"built a manifest of {len(manifest.artifacts)} artifacts")
        assert Manifest.loads(manifest.to_toml(), "builder") == manifest
        assert from_document(builder.to_document(), "builder") == manifest


@pytest.mark.parametrize("text", ["a = " + "1" * 5000, "a = " + "[" * 3000 + "]" * 3000, "a = {b = " * 2000])
def test_toml_the_parser_cannot_take_is_a_manifest_error(text):
    with pytest.raises(ManifestError, match="not valid TOML"):
        Manifest.loads(text, "fuzz.toml")


@pytest.mark.parametrize(
    ("call", "path"),
    [
        (lambda b: b.prefix("m", "p", to="/p", include="*.json"), "artifacts[0].include"),  # was ['*', '.', 'j', ...]
        (lambda b: b.prefix("m", "p", to="/p", exclude=5), "artifacts[0].exclude"),  # was TypeError
        (lambda b: b.object("m", "k", to="/k", nodes=[1]), "artifacts[0].nodes"),  # was TypeError
        (lambda b: b.object("m", "k", to="/k", nodes="gpu"), "artifacts[0].nodes"),  # was ValueError
        (lambda b: b.object("m", "k", to="/k", nodes={"gpu": None}), "artifacts[0].nodes"),  # was every node
        (lambda b: b.store(5, "s3://x"), "stores"),  # was TypeError (or, unhashable, from the call itself)
        (lambda b: b.store("n", "s3://[bucket"), "stores.n.url"),  # was ValueError: Invalid IPv6 URL
        (lambda b: b.store("n", "s3://b", timeout=float("nan")), "stores.n"),  # was accepted, != itself
        (lambda b: b.store("n", "s3://b", timeout=2**64), "stores.n"),  # was accepted, beyond TOML's integers
        (lambda b: b.settings(chunk_size="9" * 400 + "MiB"), "settings.chunk_size"),  # was OverflowError
        (lambda b: b.settings(chunk_size=10**5000), "settings.chunk_size"),  # was ValueError from str()
        (lambda b: b.settings(origin_backoff=10**400), "settings.origin_backoff"),  # was OverflowError
        (lambda b: b.settings(node_parallelism=-(10**5000)), "settings.node_parallelism"),  # was ValueError from str()
        (lambda b: b.object("m", 10**5000, to="/k"), "artifacts[0].key"),  # was a message about str()
    ],
)
def test_builder_values_of_the_wrong_kind_are_manifest_errors_with_their_path(call, path):
    with pytest.raises(ManifestError) as info:
        call(Manifest.builder().store("m", "s3://bucket")).build()
    _check_manifest_error(info.value)
    assert [p for p, _ in info.value.problems] == [path]
