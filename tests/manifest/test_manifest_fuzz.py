"""Arbitrary documents: a manifest either loads or fails with ManifestError; nothing else escapes."""

from __future__ import annotations

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xfd import Manifest, ManifestError
from xfd.manifest.toml_format import from_document

KEYS = ["settings", "stores", "artifacts", "url", "store", "key", "prefix", "to", "unpack", "format", "chunk_size",
        "node_parallelism", "include", "exclude", "cache", "sha256", "name", "region", "endpoint", "m", "x"]
scalars = st.one_of(
    st.text(max_size=12), st.integers(-(2**70), 2**70), st.booleans(), st.floats(allow_nan=False),
    st.sampled_from(["s3://b/p", "/abs", "rel", "64MiB", "auto", "rar", "${X}", "$", "m", "*.json", ".."]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner,
                                                                max_size=5),
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
