"""Xenna requests and configs -> xfd manifests and back, with the real cosmos-xenna types (no network)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cosmos_xenna import file_distribution as fd
from cosmos_xenna.file_distribution._file_distribution import RetryConfig
from cosmos_xenna.pipelines import v1 as pipelines

import xfd
from xfd.manifest.model import ObjectArtifact, PrefixArtifact, Unpack
from xfd.xenna import XennaAdapterError, download_distributed, from_xenna, to_xenna

S3 = fd.ObjectStoreConfig.make_for_s3("models", endpoint="http://127.0.0.1:9000", access_key_id="AKIA",
                                      secret_access_key="s3cr3t", region="us-east-1")


def obj(uri: str, dest: str, unpack: fd.UnpackOptions | None = None, profile: str | None = None):
    return fd.DownloadRequest(value=fd.ObjectDownloadRequest(uri=uri, destination=Path(dest), unpack_options=unpack,
                                                             profile_name=profile))


def prefix(uri: str, dest: str, cache: bool = True, profile: str | None = None):
    return fd.DownloadRequest(value=fd.PrefixDownloadRequest(uri=uri, destination=Path(dest), cache=cache,
                                                             profile_name=profile))


def test_an_object_request_becomes_an_object_artifact_of_the_default_store():
    manifest = from_xenna([obj("bert/model.bin", "/models/bert/model.bin")], S3)
    assert manifest.stores["default"].url == "s3://models/"
    assert dict(manifest.stores["default"].options) == S3.config_args
    assert manifest.artifacts == (ObjectArtifact(store="default", key="bert/model.bin", to="/models/bert/model.bin"),)


@pytest.mark.parametrize("uri", ["tok/bert", "tok/bert/"])
def test_a_prefix_with_or_without_trailing_slash_mirrors_below_the_destination(uri):
    manifest = from_xenna([prefix(uri, "/tok/", cache=False)], S3)
    assert manifest.artifacts == (PrefixArtifact(store="default", prefix=uri, to="/tok", cache=False),)


@pytest.mark.parametrize(("method", "fmt"), [(fd.UnpackMethod.AUTO, "auto"), (fd.UnpackMethod.TAR, "tar"),
                                             (fd.UnpackMethod.TAR_GZ, "tar.gz"), (fd.UnpackMethod.ZIP, "zip")])
def test_every_unpack_method_maps_to_its_format(method, fmt):
    unpack = fd.UnpackOptions(unpack_destination=Path("/data/ds"), unpack_method=method)
    [artifact] = from_xenna([obj("ds.bin", "/data/ds.bin", unpack)], S3).artifacts
    assert artifact.unpack == Unpack(format=fmt, to="/data/ds")


def test_profiles_become_stores_and_each_request_uses_its_own():
    configs = fd.ObjectStoreConfigByProfile(profiles={
        None: S3,
        "local": fd.ObjectStoreConfig.make_for_local("/srv/artifacts"),
        "gcs": fd.ObjectStoreConfig.make_for_gcs("weights", service_account_key="/keys/sa.json"),
    })
    manifest = from_xenna([obj("a", "/a"), obj("b", "/b", profile="local"), prefix("c/", "/c", profile="gcs")],
                          configs)
    assert {n: (s.url, dict(s.options)) for n, s in manifest.stores.items()} == {
        "default": ("s3://models/", S3.config_args),
        "local": ("file:///srv/artifacts", {}),
        "gcs": ("gs://weights/", {"service_account_key": "/keys/sa.json"}),
    }
    assert [a.store for a in manifest.artifacts] == ["default", "local", "gcs"]


def test_a_named_profile_called_default_keeps_its_name():
    configs = fd.ObjectStoreConfigByProfile(profiles={None: S3, "default": fd.ObjectStoreConfig.make_for_local("/x")})
    manifest = from_xenna([obj("a", "/a"), obj("b", "/b", profile="default")], configs)
    assert [a.store for a in manifest.artifacts] == ["xenna-default-profile", "default"]


def test_tuning_values_become_settings():
    manifest = from_xenna([obj("a", "/a")], S3, chunk_size_bytes=50 * 2**20, node_parallelism=20,
                          object_store_parallelism=1000,
                          object_store_retry_config=RetryConfig(num_retries=5, base_delay_millis=200))
    s = manifest.settings
    assert (s.chunk_size, s.node_parallelism, s.origin_parallelism) == (50 * 2**20, 20, 1000)
    assert (s.origin_attempts, s.origin_backoff) == (6, 0.2)
    assert from_xenna([obj("a", "/a")], S3).settings == xfd.Manifest.builder().build().settings


def test_identical_requests_are_merged_as_xenna_does():
    unpack = fd.UnpackOptions(unpack_destination=Path("/d/x"))
    manifest = from_xenna([obj("x.tgz", "/d/x.tgz", unpack), prefix("p/", "/p"), obj("x.tgz", "/d/x.tgz", unpack),
                           prefix("p/", "/p", cache=False), obj("x.tgz", "/elsewhere/x.tgz")], S3)
    assert [(type(a).__name__, a.to) for a in manifest.artifacts] == [
        ("ObjectArtifact", "/d/x.tgz"), ("PrefixArtifact", "/p"), ("ObjectArtifact", "/elsewhere/x.tgz")]
    assert manifest.artifacts[1].cache is False  # the safe side of the two


def test_repeats_that_would_fetch_other_bytes_are_refused_not_dropped():
    configs = fd.ObjectStoreConfigByProfile(profiles={None: S3, "other": fd.ObjectStoreConfig.make_for_local("/o")})
    with pytest.raises(XennaAdapterError, match=r"download_requests\[1\] repeats download_requests\[0\].*profiles"):
        from_xenna([obj("a", "/a"), obj("a", "/a", profile="other")], configs)
    tar = fd.UnpackOptions(unpack_destination=Path("/u"), unpack_method=fd.UnpackMethod.TAR)
    zip_ = fd.UnpackOptions(unpack_destination=Path("/u"), unpack_method=fd.UnpackMethod.ZIP)
    with pytest.raises(XennaAdapterError, match="unpack methods differ"):
        from_xenna([obj("a", "/a", tar), obj("a", "/a", zip_)], configs)


def test_problems_are_reported_at_once_by_their_xenna_paths():
    bad = fd.ObjectStoreConfig(uri="s3://models/", config_args={"regoin": "us-east-1"})
    configs = fd.ObjectStoreConfigByProfile(profiles={None: bad})
    with pytest.raises(xfd.ManifestError) as caught:
        from_xenna([obj("a", "/a"), obj("b", "relative/b"), prefix("c/", "/c", profile="missing")], configs,
                   chunk_size_bytes=1000)
    problems = dict(caught.value.problems)
    assert "did you mean 'region'" in problems["object_store_config.profiles[None].config_args['regoin']"]
    assert "absolute" in problems["download_requests[1].value.destination"]
    assert "no profile 'missing'" in problems["download_requests[2].value.profile_name"]
    assert "1MiB" in problems["chunk_size_bytes"]
    assert str(caught.value).startswith("xenna requests has 4 problems")


def test_fake_test_nodes_and_a_missing_ray_are_refused_with_advice(monkeypatch):
    import ray

    with pytest.raises(XennaAdapterError, match="LocalCluster"):
        download_distributed([obj("a", "/a")], S3, testing_info=fd.SingleNodeTestingInfo(num_fake_nodes=2))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, whatever ran before
    with pytest.raises(XennaAdapterError, match=r"ray.init\(\)"):
        download_distributed([obj("a", "/a")], S3)


def test_xenna_requests_survive_a_round_trip_through_a_manifest():
    configs = fd.ObjectStoreConfigByProfile(profiles={None: S3, "local": fd.ObjectStoreConfig.make_for_local("/l")})
    requests = [
        obj("w.bin", "/m/w.bin"),
        obj("ds.tar.gz", "/d/ds.tar.gz", fd.UnpackOptions(Path("/d/ds"), fd.UnpackMethod.TAR_GZ), profile="local"),
        prefix("tok/", "/tok", cache=False),
    ]
    back = to_xenna(from_xenna(requests, configs, chunk_size_bytes=8 * 2**20, node_parallelism=4,
                               object_store_parallelism=64))
    assert back.download_requests == requests
    assert isinstance(back.config, pipelines.DistributedDownloadConfig)
    assert {p: (c.uri, c.config_args) for p, c in back.config.object_store_config.profiles.items()} == {
        None: (S3.uri, S3.config_args), "local": ("file:///l", {})}
    assert (back.config.chunk_size_bytes, back.config.node_parallelism, back.config.object_store_parallelism) == (
        8 * 2**20, 4, 64)


def test_automatic_chunk_size_maps_to_xennas_single_size_and_back():
    manifest = from_xenna([obj("a", "/a")], S3)
    assert manifest.settings.chunk_size == "auto"
    assert manifest.to_xenna().config.chunk_size_bytes == 64 * 2**20


def test_a_manifest_survives_a_round_trip_through_xenna(monkeypatch):
    monkeypatch.setenv("XENNA_TEST_SECRET", "s3cr3t")
    manifest = xfd.Manifest.loads('''
        [settings]
        chunk_size = "16MiB"
        node_parallelism = 4
        [stores.default]
        url = "s3://models/llama"
        region = "us-west-2"
        secret_access_key = "${XENNA_TEST_SECRET}"
        [stores.data]
        url = "file:///srv/data"
        [[artifacts]]
        store = "default"
        key = "7b/model.bin"
        to = "/models/model.bin"
        [[artifacts]]
        store = "data"
        key = "set.tgz"
        to = "/data/set.tgz"
        unpack = { format = "tgz" }
        [[artifacts]]
        store = "default"
        prefix = "7b/tokenizer/"
        to = "/models/tokenizer"
        cache = false
    ''')
    handed = manifest.to_xenna()
    assert handed.config.object_store_config.profiles[None].config_args["secret_access_key"] == "s3cr3t"
    again = from_xenna(handed.download_requests, handed.config.object_store_config,
                       chunk_size_bytes=handed.config.chunk_size_bytes, node_parallelism=handed.config.node_parallelism,
                       object_store_parallelism=handed.config.object_store_parallelism)
    resolved = {**manifest.stores["default"].options, "secret_access_key": "s3cr3t"}
    assert dict(again.stores["default"].options) == resolved
    assert again.stores["data"] == manifest.stores["data"]
    assert again.settings == manifest.settings
    expected = list(manifest.artifacts)
    expected[1] = ObjectArtifact(store="data", key="set.tgz", to="/data/set.tgz", unpack=Unpack("tar.gz", "/data/set"))
    assert list(again.artifacts) == expected


def test_what_xenna_cannot_express_is_refused_when_handing_over():
    manifest = (xfd.Manifest.builder().store("default", "s3://b")
                .prefix("default", "p/", to="/p", include=["*.json"])
                .object("default", "k", to="/k", sha256="a" * 64)
                .settings(overwrite=True).build())
    with pytest.raises(XennaAdapterError) as caught:
        manifest.to_xenna()
    message = str(caught.value)
    assert "artifacts[0]: include/exclude" in message and "artifacts[1].sha256" in message
    assert "settings.overwrite" in message


def test_tuning_defaults_match_the_reference_signature():
    """The drop-in keeps Xenna's positional order: a call written for Xenna binds the same way."""
    import inspect

    ours = list(inspect.signature(download_distributed).parameters)
    theirs = list(inspect.signature(fd.download_distributed).parameters)
    assert ours[: len(theirs)] == theirs


def test_durations_in_config_args_pass_validation():
    # make_for_s3 always sets timeout/connect_timeout as "300s"/"60s"; they must stay valid store options.
    assert from_xenna([obj("a", "/a")], fd.ObjectStoreConfig.make_for_s3(
        "b", retry_timeout=timedelta(minutes=1))).stores["default"].options["timeout"] == "300s"


def test_a_small_object_store_parallelism_caps_the_gets_per_chunk_too():
    manifest = from_xenna([obj("a", "/a")], S3, object_store_parallelism=4)
    assert (manifest.settings.origin_parallelism, manifest.settings.origin_chunk_streams) == (4, 4)
