"""Xenna requests and configs -> xfd manifests and back, with the real cosmos-xenna types (no network, no Ray).

Where a row of the fidelity table (``docs/xenna.md``) says "as Xenna", the test checks it against Xenna's
own code or its obstore where it can: defaults read from Xenna's signatures and ``RetryConfig``, option
names and URLs read by the obstore Xenna lists and HEADs with.
"""

from __future__ import annotations

import inspect
import os
import re
from datetime import timedelta
from pathlib import Path

import obstore.exceptions
import pytest
from cosmos_xenna import file_distribution as fd
from cosmos_xenna.file_distribution import _file_distribution
from cosmos_xenna.file_distribution._file_distribution import RetryConfig
from cosmos_xenna.pipelines import v1 as pipelines
from obstore.store import from_url

import xfd
import xfd.xenna
from xfd.engine import resolved_options
from xfd.manifest.model import ObjectArtifact, PrefixArtifact, Unpack
from xfd.xenna import (
    RayNotInitializedError,
    XennaAdapterError,
    XennaSwitch,
    download_distributed,
    from_xenna,
    to_xenna,
    use_xfd,
)

MiB, GiB = 1 << 20, 1 << 30
S3 = fd.ObjectStoreConfig.make_for_s3(
    "models", endpoint="http://127.0.0.1:9000", access_key_id="AKIA", secret_access_key="s3cr3t", region="us-east-1"
)


def obj(uri: str, dest: str, unpack: fd.UnpackOptions | None = None, profile: str | None = None):
    return fd.DownloadRequest(
        value=fd.ObjectDownloadRequest(uri=uri, destination=Path(dest), unpack_options=unpack, profile_name=profile)
    )


def prefix(uri: str, dest: str, cache: bool = True, profile: str | None = None):
    return fd.DownloadRequest(
        value=fd.PrefixDownloadRequest(uri=uri, destination=Path(dest), cache=cache, profile_name=profile)
    )


def store_of(config: fd.ObjectStoreConfig) -> xfd.manifest.model.Store:
    return from_xenna([obj("a", "/a")], config).stores["default"]


def test_an_object_request_becomes_an_object_artifact_of_the_default_store():
    manifest = from_xenna([obj("bert/model.bin", "/models/bert/model.bin")], S3)
    assert manifest.stores["default"].url == "s3://models/"
    assert dict(manifest.stores["default"].options) == S3.config_args
    assert manifest.artifacts == (ObjectArtifact(store="default", key="bert/model.bin", to="/models/bert/model.bin"),)


@pytest.mark.parametrize("uri", ["tok/bert", "tok/bert/"])
def test_a_prefix_request_is_a_prefix_artifact_and_its_cache_flag_is_ignored_as_by_xenna(uri):
    # Xenna never reads PrefixDownloadRequest.cache: every file it lists is cached and reused.
    for cache in (True, False):
        manifest = from_xenna([prefix(uri, "/tok/", cache=cache)], S3)
        assert manifest.artifacts == (PrefixArtifact(store="default", prefix=uri, to="/tok", cache=True),)
    assert not re.search(r"\.cache\b", inspect.getsource(_file_distribution._create_download_catalog))


@pytest.mark.parametrize(
    ("method", "fmt"),
    [
        (fd.UnpackMethod.AUTO, "auto"),
        (fd.UnpackMethod.TAR, "tar"),
        (fd.UnpackMethod.TAR_GZ, "tar.gz"),
        (fd.UnpackMethod.ZIP, "zip"),
    ],
)
def test_every_unpack_method_maps_to_its_format(method, fmt):
    unpack = fd.UnpackOptions(unpack_destination=Path("/data/ds"), unpack_method=method)
    [artifact] = from_xenna([obj("ds.bin", "/data/ds.bin", unpack)], S3).artifacts
    assert artifact.unpack == Unpack(format=fmt, to="/data/ds")


def test_profiles_become_stores_and_each_request_uses_its_own():
    configs = fd.ObjectStoreConfigByProfile(
        profiles={
            None: S3,
            "local": fd.ObjectStoreConfig.make_for_local("/srv/artifacts"),
            "gcs": fd.ObjectStoreConfig.make_for_gcs("weights", service_account_key="/keys/sa.json"),
        }
    )
    manifest = from_xenna([obj("a", "/a"), obj("b", "/b", profile="local"), prefix("c/", "/c", profile="gcs")], configs)
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


# --- tuning: Xenna's values and Xenna's defaults --------------------------------------------------------


def test_tuning_values_become_settings():
    manifest = from_xenna(
        [obj("a", "/a")],
        S3,
        chunk_size_bytes=50 * MiB,
        node_parallelism=20,
        object_store_parallelism=1000,
        object_store_retry_config=RetryConfig(num_retries=3, base_delay_millis=500),
    )
    s = manifest.settings
    assert (s.chunk_size, s.node_parallelism, s.origin_parallelism) == (50 * MiB, 20, 1000)
    assert s.upload_slots == 20  # Xenna limits a node's uploads by node_parallelism too
    assert (s.origin_attempts, s.origin_backoff) == (4, 0.5)


def test_none_means_xennas_defaults(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 48)
    s = from_xenna([obj("a", "/a")], S3).settings
    assert (s.chunk_size, s.node_parallelism, s.upload_slots, s.origin_parallelism) == (100 * MiB, 96, 96, 100)
    assert (s.origin_attempts, s.origin_backoff) == (
        RetryConfig().num_retries + 1,
        RetryConfig().base_delay_millis / 1000,
    )
    # ... read from Xenna itself: its signature, its RetryConfig, and the lines that fill in a None.
    source = inspect.getsource(fd.download_distributed)
    assert "chunk_size_bytes = 100 * 1024 * 1024" in source and "node_parallelism = os.cpu_count() * 2" in source
    assert inspect.signature(fd.download_distributed).parameters["object_store_parallelism"].default == 100
    assert pipelines.DistributedDownloadConfig(S3).object_store_parallelism == 100
    assert (RetryConfig().num_retries, RetryConfig().base_delay_millis) == (
        xfd.xenna.XENNA_RETRIES,
        xfd.xenna.XENNA_BASE_DELAY_MS,
    )


def test_xfds_automatic_chunk_size_is_there_on_request():
    assert from_xenna([obj("a", "/a")], S3, chunk_size_bytes="auto").settings.chunk_size == "auto"


@pytest.mark.parametrize(("given", "used"), [(4096, MiB), (MiB - 1, MiB), (MiB, MiB), (8 * GiB, 4 * GiB)])
def test_chunk_sizes_xfd_does_not_cut_become_the_nearest_it_does(given, used):
    # Xenna takes any positive size; the files are the same, only the unit of transfer differs.
    assert from_xenna([obj("a", "/a")], S3, chunk_size_bytes=given).settings.chunk_size == used


@pytest.mark.parametrize("given", [0, -5])
def test_a_chunk_size_that_is_not_positive_is_a_value_error_as_in_xenna(given):
    with pytest.raises(ValueError, match=r"chunk_size_bytes: must be between 1MiB and 4GiB"):
        from_xenna([obj("a", "/a")], S3, chunk_size_bytes=given)
    with pytest.raises(ValueError, match="chunk_size_bytes must be positive"):  # Xenna's own check
        _file_distribution._calculate_chunk_ranges(10, given)


def test_retry_delays_outside_xfds_range_are_carried_sensibly():
    s = from_xenna([obj("a", "/a")], S3, object_store_retry_config=RetryConfig(0, 0)).settings
    assert (s.origin_attempts, s.origin_backoff) == (1, 0.001)
    s = from_xenna([obj("a", "/a")], S3, object_store_retry_config=RetryConfig(2, 30_000)).settings
    assert (s.origin_attempts, s.origin_backoff, s.origin_max_backoff) == (3, 30.0, 30.0)


def test_a_node_parallelism_above_xfds_limit_is_capped():
    assert from_xenna([obj("a", "/a")], S3, node_parallelism=5000).settings.node_parallelism == 1024


def test_a_small_object_store_parallelism_caps_the_gets_per_chunk_too():
    manifest = from_xenna([obj("a", "/a")], S3, object_store_parallelism=4)
    assert (manifest.settings.origin_parallelism, manifest.settings.origin_chunk_streams) == (4, 4)


# --- stores: every option name and URL Xenna's configs take ---------------------------------------------

ALIASES = [
    ("s3://b/", "aws_access_key_id", "access_key_id"),
    ("s3://b/", "AWS_SECRET_ACCESS_KEY", "secret_access_key"),
    ("s3://b/", "aws_region", "region"),
    ("s3://b/", "AWS_DEFAULT_REGION", "default_region"),
    ("s3://b/", "token", "session_token"),
    ("s3://b/", "aws_token", "session_token"),
    ("s3://b/", "aws_session_token", "session_token"),
    ("s3://b/", "aws_endpoint", "endpoint"),
    ("s3://b/", "aws_endpoint_url", "endpoint"),
    ("s3://b/", "endpoint_url", "endpoint"),
    ("s3://b/", "aws_virtual_hosted_style_request", "virtual_hosted_style_request"),
    ("s3://b/", "aws_skip_signature", "skip_signature"),
    ("s3://b/", "aws_allow_http", "allow_http"),
    ("s3://b/", "aws_request_payer", "request_payer"),
    ("s3://b/", "aws_unsigned_payload", "unsigned_payload"),
    ("s3://b/", "aws_metadata_endpoint", "metadata_endpoint"),
    ("s3://b/", "aws_imdsv1_fallback", "imdsv1_fallback"),
    ("gs://b/", "google_service_account", "service_account"),
    ("gs://b/", "service_account_path", "service_account"),
    ("gs://b/", "google_service_account_key", "service_account_key"),
    ("gs://b/", "google_application_credentials", "application_credentials"),
    ("gs://b/", "google_bearer_token", "bearer_token"),
    ("azure://c/", "azure_storage_account_name", "account_name"),
    ("azure://c/", "azure_storage_account_key", "account_key"),
    ("azure://c/", "access_key", "account_key"),
    ("azure://c/", "master_key", "account_key"),
    ("azure://c/", "azure_storage_sas_token", "sas_key"),
    ("azure://c/", "sas_token", "sas_key"),
    ("azure://c/", "azure_storage_token", "token"),
    ("azure://c/", "bearer_token", "token"),
    ("azure://c/", "azure_client_id", "client_id"),
    ("azure://c/", "azure_storage_tenant_id", "tenant_id"),
    ("azure://c/", "authority_id", "tenant_id"),
    ("azure://c/", "azure_authority_host", "authority_host"),
    ("azure://c/", "identity_endpoint", "msi_endpoint"),
    ("azure://c/", "azure_use_emulator", "use_emulator"),
    ("azure://c/", "azure_storage_use_emulator", "use_emulator"),
]


BOOLEAN_OPTIONS = (
    "virtual_hosted_style_request",
    "skip_signature",
    "allow_http",
    "request_payer",
    "unsigned_payload",
    "imdsv1_fallback",
    "use_emulator",
)


@pytest.mark.parametrize(("url", "written", "name"), ALIASES)
def test_option_names_as_object_store_spells_them_are_read(url, written, name):
    value = "true" if name in BOOLEAN_OPTIONS else "v"
    store = store_of(fd.ObjectStoreConfig(uri=url, config_args={written: value}))
    assert dict(store.options) == {name: value}


def test_where_xennas_obstore_takes_a_spelling_it_means_the_option_xfd_maps_it_to():
    checked = 0
    for url, written, name in ALIASES:
        pair = {
            "access_key_id": {"secret_access_key": "s"},
            "secret_access_key": {"access_key_id": "a"},
            "account_key": {"account_name": "acct"},
        }.get(name, {"account_name": "acct"} if "azure" in url else {})
        value = "djE=" if name == "account_key" else "true" if name in BOOLEAN_OPTIONS else "v"
        try:
            theirs = from_url(url, config={written: value, **pair})
        except BaseException:  # noqa: BLE001 - refused (or needs a real value): nothing to compare with
            continue
        assert name in {k for k, v in theirs.config.items() if str(v).lower() == value.lower()}, written
        checked += 1
    assert checked >= 20


def _declared_options(stub: str, typed_dict: str) -> list[str]:
    """The option names obstore's type stubs declare for a store (what a Xenna user reads in its docs)."""
    text = Path(inspect.getfile(obstore), "..", "_store", stub).resolve().read_text()
    body = text.split(f"class {typed_dict}(", 1)[1].split("\nclass ", 1)[0]
    return re.findall(r"^    ([a-z_0-9]+): ", body, re.MULTILINE)


@pytest.mark.parametrize(
    ("url", "stub", "typed_dict", "prefix_"),
    [
        ("s3://b/", "_aws.pyi", "S3Config", "aws_"),
        ("gs://b/", "_gcs.pyi", "GCSConfig", "google_"),
        ("az://c/", "_azure.pyi", "AzureConfig", "azure_"),
        ("s3://b/", "_client.pyi", "ClientConfig", ""),
    ],
)
def test_every_option_name_xennas_obstore_takes_is_taken(url, stub, typed_dict, prefix_):
    # The bucket comes from the URL (tested below); xfd sends no custom headers (tested below).
    names = [n for n in _declared_options(stub, typed_dict) if n not in ("bucket", "container_name", "default_headers")]
    assert len(names) > 3
    spellings = {n for name in names for n in (name, name.upper(), f"{prefix_}{name}" if prefix_ else name)}
    refused = []
    for written in sorted(spellings):
        try:
            from_url(
                url,
                config={written: "x"} if typed_dict != "ClientConfig" else None,
                client_options={written: "x"} if typed_dict == "ClientConfig" else None,
            )
        except obstore.exceptions.UnknownConfigurationKeyError:
            continue  # Xenna's obstore refuses it too
        except BaseException:  # noqa: BLE001 - a bad value (or a missing pair): the name itself was taken
            pass
        try:
            from_xenna([obj("a", "/a")], fd.ObjectStoreConfig(uri=url, config_args={written: "x"}))
        except xfd.ManifestError as error:
            if "unknown option" in str(error):
                refused.append(written)
    assert refused == []


def test_bucket_options_must_name_the_urls_bucket():
    store = store_of(fd.ObjectStoreConfig(uri="s3://b/", config_args={"bucket": "b", "AWS_BUCKET_NAME": "b"}))
    assert (store.url, dict(store.options)) == ("s3://b/", {})
    # Another bucket would split Xenna in two: its obstore lists the option's bucket, its downloads the URL's.
    assert from_url("s3://b/", config={"bucket": "other"}).config["bucket"] == "other"
    with pytest.raises(xfd.ManifestError, match=r"config_args\['bucket'\]: says 'other' where the URI says 'b'"):
        store_of(fd.ObjectStoreConfig(uri="s3://b/", config_args={"bucket": "other"}))
    with pytest.raises(xfd.ManifestError, match=r"config_args\['region'\]: says 'us-east-1' where the URI says"):
        store_of(fd.ObjectStoreConfig(uri="https://s3.eu-west-1.amazonaws.com/b/", config_args={"region": "us-east-1"}))


def test_custom_http_headers_are_refused_with_the_reason():
    with pytest.raises(xfd.ManifestError, match=r"config_args\['default_headers'\]: xfd sends no custom HTTP"):
        store_of(fd.ObjectStoreConfig(uri="s3://b/", config_args={"default_headers": {"x": "y"}}))


def test_two_spellings_of_one_option_must_agree():
    store = store_of(
        fd.ObjectStoreConfig(uri="s3://b/", config_args={"region": "eu-west-1", "AWS_REGION": "eu-west-1"})
    )
    assert dict(store.options) == {"region": "eu-west-1"}
    config = fd.ObjectStoreConfig(uri="s3://b/", config_args={"region": "eu-west-1", "aws_region": "us-east-1"})
    with pytest.raises(
        xfd.ManifestError,
        match=r"config_args\['aws_region'\]: sets 'region' like "
        r"config_args\['region'\], to another value",
    ):
        from_xenna([obj("a", "/a")], config)


def test_option_values_are_taken_literally_as_xenna_takes_them():
    secret = "ab$c${HOME}$$"  # Xenna has no ${VAR} templates: a '$' in a secret is a '$'
    config = fd.ObjectStoreConfig.make_for_s3("b", access_key_id="a", secret_access_key=secret)
    manifest = from_xenna([obj("a", "/a")], config)
    assert resolved_options("default", manifest.stores["default"], environ={})["secret_access_key"] == secret
    assert (
        to_xenna(manifest, environ={}).config.object_store_config.profiles[None].config_args["secret_access_key"]
        == secret
    )


URLS = [
    ("azure://models/7b", "az://models/7b", {}),
    ("adl://models/", "az://models/", {}),
    ("abfs://models/7b", "az://models/7b", {}),
    ("abfss://models@acct.dfs.core.windows.net/7b", "az://models/7b", {"account_name": "acct"}),
    ("https://acct.blob.core.windows.net/models/7b", "az://models/7b", {"account_name": "acct"}),
    ("s3a://bucket/7b", "s3://bucket/7b", {}),
    ("https://s3.eu-west-1.amazonaws.com/bucket/7b", "s3://bucket/7b", {"region": "eu-west-1"}),
    (
        "https://bucket.s3.eu-west-1.amazonaws.com/7b",
        "s3://bucket/7b",
        {"virtual_hosted_style_request": True, "region": "eu-west-1"},
    ),
    (
        "https://acct.r2.cloudflarestorage.com/bucket/7b",
        "s3://bucket/7b",
        {"region": "auto", "endpoint": "https://acct.r2.cloudflarestorage.com"},
    ),
    ("https://example.com/files/", "https://example.com/files/", {}),
    ("s3://bucket/7b", "s3://bucket/7b", {}),
]


@pytest.mark.parametrize(("uri", "url", "options"), URLS)
def test_every_url_form_xennas_obstore_reads_names_the_same_store(uri, url, options):
    store = store_of(fd.ObjectStoreConfig(uri=uri))
    assert (store.url, dict(store.options)) == (url, options)
    # Xenna's obstore reads the same bucket or container, account, region and prefix from it.
    theirs = from_url(
        uri, config={"account_name": "acct"} if "azure" in uri or "adl:" in uri or "abfs:" in uri else None
    )
    config = dict(getattr(theirs, "config", {}) or {})
    expected = {"bucket": url.split("/")[2]} if url.startswith("s3://") else {}
    if url.startswith("az://"):
        expected = {"container_name": url.split("/")[2], "account_name": options.get("account_name", "acct")}
    expected |= {k: v for k, v in options.items() if k in ("region", "endpoint")}
    assert {k: config[k] for k in expected} == expected
    if not url.startswith("https"):
        assert str(theirs.prefix or "") == "/".join(url.split("/")[3:]).strip("/")


@pytest.mark.parametrize(
    ("uri", "url", "options"),
    [
        ("https://bucket.s3.amazonaws.com/7b", "s3://bucket/7b", {"virtual_hosted_style_request": True}),
        (
            "https://s3.dualstack.eu-west-1.amazonaws.com/bucket/7b",
            "s3://bucket/7b",
            {"region": "eu-west-1", "endpoint": "https://s3.dualstack.eu-west-1.amazonaws.com"},
        ),
        (
            "https://bucket.s3.dualstack.eu-west-1.amazonaws.com/7b",
            "s3://bucket/7b",
            {
                "virtual_hosted_style_request": True,
                "region": "eu-west-1",
                "endpoint": "https://bucket.s3.dualstack.eu-west-1.amazonaws.com",
            },
        ),
    ],
)
def test_addresses_only_newer_object_store_reads_are_read_as_it_reads_them(uri, url, options):
    """object_store 0.14 (xfd's engine, and Xenna's data plane) reads these; Xenna's obstore 0.8, which lists
    and HEADs, does not yet, so Xenna 0.5.12 refuses them while xfd reads them."""
    store = store_of(fd.ObjectStoreConfig(uri=uri))
    assert (store.url, dict(store.options)) == (url, options)


@pytest.mark.parametrize(
    "uri", ["https://s3.amazonaws.com/bucket/", "https://host.amazonaws.com/x", "abfss://c@acct.example.com/x"]
)
def test_an_address_object_store_does_not_read_is_refused_with_the_way_to_write_it(uri):
    with pytest.raises(xfd.ManifestError, match=r"object_store_config.profiles\[None\].uri: .*write"):
        from_xenna([obj("a", "/a")], fd.ObjectStoreConfig(uri=uri))
    with pytest.raises(Exception):  # noqa: B017 - Xenna's obstore refuses it as well
        from_url(uri)


def test_a_profiles_retry_config_is_checked_as_obstore_checks_it():
    assert store_of(fd.ObjectStoreConfig.make_for_s3("b"))  # make_for_s3 sets one: accepted
    config = fd.ObjectStoreConfig(uri="s3://b/", retry_config={"max_retries": "ten", "backoff": {"bse": 2}})
    with pytest.raises(xfd.ManifestError) as caught:
        from_xenna([obj("a", "/a")], config)
    assert dict(caught.value.problems) == {
        "object_store_config.profiles[None].retry_config['max_retries']": "must be int (got 'ten')",
        "object_store_config.profiles[None].retry_config['backoff']['bse']": "unknown field; obstore's are init_backoff, max_backoff, base",
    }
    with pytest.raises(Exception):  # noqa: B017 - and Xenna's obstore refuses it too
        from_url("s3://b/", retry_config=config.retry_config)


# --- requests: dedupe, errors -----------------------------------------------------------------------


def test_identical_requests_are_merged_as_xenna_does():
    unpack = fd.UnpackOptions(unpack_destination=Path("/d/x"))
    manifest = from_xenna(
        [
            obj("x.tgz", "/d/x.tgz", unpack),
            prefix("p/", "/p"),
            obj("x.tgz", "/d/x.tgz", unpack),
            prefix("p/", "/p", cache=False),
            obj("x.tgz", "/elsewhere/x.tgz"),
        ],
        S3,
    )
    assert [(type(a).__name__, a.to) for a in manifest.artifacts] == [
        ("ObjectArtifact", "/d/x.tgz"),
        ("PrefixArtifact", "/p"),
        ("ObjectArtifact", "/elsewhere/x.tgz"),
    ]


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
        from_xenna(
            [obj("a", "/a"), obj("b", "relative/b"), prefix("c/", "/c", profile="missing")], configs, chunk_size_bytes=0
        )
    problems = dict(caught.value.problems)
    assert "did you mean 'region'" in problems["object_store_config.profiles[None].config_args['regoin']"]
    assert "absolute" in problems["download_requests[1].value.destination"]
    assert "no profile 'missing'" in problems["download_requests[2].value.profile_name"]
    assert "1MiB" in problems["chunk_size_bytes"]
    assert str(caught.value).startswith("xenna requests has 4 problems")


def test_an_option_is_named_as_the_user_wrote_it_in_errors():
    config = fd.ObjectStoreConfig(uri="s3://b/", config_args={"AWS_REGION": "x${"})
    with pytest.raises(xfd.ManifestError) as caught:
        from_xenna([obj("a", "/a")], fd.ObjectStoreConfig(uri="file:///srv", config_args={"aws_region": "x"}))
    assert "object_store_config.profiles[None].config_args['aws_region']" in dict(caught.value.problems)
    assert from_xenna([obj("a", "/a")], config).stores["default"].options["region"] == "x$${"


def test_fake_test_nodes_and_a_missing_ray_are_refused_with_advice(monkeypatch):
    import ray

    with pytest.raises(XennaAdapterError, match="LocalCluster"):
        download_distributed([obj("a", "/a")], S3, testing_info=fd.SingleNodeTestingInfo(num_fake_nodes=2))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, whatever ran before
    with pytest.raises(RuntimeError, match=r"ray.init\(\)") as caught:  # the type Xenna documents
        download_distributed([obj("a", "/a")], S3)
    assert isinstance(caught.value, RayNotInitializedError)


# --- the switch ------------------------------------------------------------------------------------------


def test_importing_xfd_changes_nothing_in_xenna():
    assert fd.download_distributed is _file_distribution.download_distributed
    assert not xfd.xenna.is_installed()


def test_the_switch_replaces_xennas_download_function_and_puts_it_back():
    xennas = fd.download_distributed
    with use_xfd(overwrite=True, progress="none") as switch:
        assert fd.download_distributed == switch.download_distributed and xfd.xenna.is_installed()
        assert [(p.name, p.default) for p in inspect.signature(fd.download_distributed).parameters.values()] == [
            (p.name, p.default) for p in inspect.signature(xennas).parameters.values()
        ]  # Xenna's calls bind
        with use_xfd() as inner:
            assert fd.download_distributed == inner.download_distributed
        assert fd.download_distributed == switch.download_distributed
        with pytest.raises(XennaAdapterError, match="testing_info"):  # Xenna's callers reach xfd now
            fd.download_distributed([obj("a", "/a")], S3, testing_info=fd.SingleNodeTestingInfo(2))
    assert fd.download_distributed is xennas and not xfd.xenna.is_installed()
    switch = xfd.xenna.install()
    assert isinstance(switch, XennaSwitch) and (switch.overwrite, switch.progress) == (False, "auto")
    xfd.xenna.uninstall()
    xfd.xenna.uninstall()  # once more: nothing to undo
    assert fd.download_distributed is xennas


def test_the_switch_is_undone_when_the_pipeline_fails():
    xennas = fd.download_distributed
    with pytest.raises(ZeroDivisionError), use_xfd():
        1 / 0  # noqa: B018
    assert fd.download_distributed is xennas


def test_xennas_pipeline_downloads_nothing_when_no_stage_asks(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # download_artifacts would start a Ray otherwise

    class NoFiles(pipelines.Stage):
        @property
        def required_resources(self) -> pipelines.Resources:
            return pipelines.Resources(cpus=1.0)

        def process_data(self, batch):
            return batch

    assert (
        xfd.xenna.download_for_stages(
            [NoFiles(), pipelines.StageSpec(NoFiles())], pipelines.DistributedDownloadConfig(S3)
        )
        is None
    )
    assert not xfd.xenna.is_installed()


# --- xfd -> Xenna -----------------------------------------------------------------------------------------


def test_xenna_requests_survive_a_round_trip_through_a_manifest():
    configs = fd.ObjectStoreConfigByProfile(profiles={None: S3, "local": fd.ObjectStoreConfig.make_for_local("/l")})
    requests = [
        obj("w.bin", "/m/w.bin"),
        obj("ds.tar.gz", "/d/ds.tar.gz", fd.UnpackOptions(Path("/d/ds"), fd.UnpackMethod.TAR_GZ), profile="local"),
        prefix("tok/", "/tok"),
    ]
    back = to_xenna(
        from_xenna(requests, configs, chunk_size_bytes=8 * MiB, node_parallelism=4, object_store_parallelism=64)
    )
    assert back.download_requests == requests
    assert isinstance(back.config, pipelines.DistributedDownloadConfig)
    assert {p: (c.uri, c.config_args) for p, c in back.config.object_store_config.profiles.items()} == {
        None: (S3.uri, S3.config_args),
        "local": ("file:///l", {}),
    }
    assert (back.config.chunk_size_bytes, back.config.node_parallelism, back.config.object_store_parallelism) == (
        8 * MiB,
        4,
        64,
    )
    defaults = to_xenna(from_xenna(requests, configs, object_store_parallelism=4)).config
    assert (defaults.chunk_size_bytes, defaults.object_store_parallelism) == (100 * MiB, 4)


def test_automatic_chunk_size_maps_to_xennas_single_size_and_back():
    manifest = xfd.Manifest.builder().store("default", "s3://b").object("default", "a", to="/a").build()
    assert manifest.settings.chunk_size == "auto"
    assert manifest.to_xenna().config.chunk_size_bytes == 64 * MiB


def test_a_manifest_survives_a_round_trip_through_xenna(monkeypatch):
    monkeypatch.setenv("XENNA_TEST_SECRET", "s3cr3t")
    manifest = xfd.Manifest.loads("""
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
    """)
    handed = manifest.to_xenna()
    assert handed.config.object_store_config.profiles[None].config_args["secret_access_key"] == "s3cr3t"
    again = from_xenna(
        handed.download_requests,
        handed.config.object_store_config,
        chunk_size_bytes=handed.config.chunk_size_bytes,
        node_parallelism=handed.config.node_parallelism,
        object_store_parallelism=handed.config.object_store_parallelism,
    )
    resolved = {**manifest.stores["default"].options, "secret_access_key": "s3cr3t"}
    assert dict(again.stores["default"].options) == resolved
    assert again.stores["data"] == manifest.stores["data"]
    # What Xenna does anyway comes back: node_parallelism limits uploads too, RetryConfig() for the origin.
    expected = (
        xfd.Manifest.builder()
        .settings(
            chunk_size="16MiB",
            node_parallelism=4,
            upload_slots=4,
            origin_parallelism=manifest.settings.origin_parallelism,
            origin_attempts=6,
            origin_backoff=0.2,
        )
        .build()
        .settings
    )
    assert again.settings == expected
    assert to_xenna(again).config.node_parallelism == 4
    expected_artifacts = list(manifest.artifacts)
    expected_artifacts[1] = ObjectArtifact(
        store="data", key="set.tgz", to="/data/set.tgz", unpack=Unpack("tar.gz", "/data/set")
    )
    assert list(again.artifacts) == expected_artifacts


def test_what_xenna_cannot_express_is_refused_when_handing_over():
    manifest = (
        xfd.Manifest.builder()
        .store("default", "s3://b")
        .prefix("default", "p/", to="/p", include=["*.json"])
        .object("default", "k", to="/k", sha256="a" * 64)
        .prefix("default", "q/", to="/q", cache=False)
        .settings(overwrite=True, upload_slots=3, origin_rate="100MB/s", upload_rate="1GB/s")
        .build()
    )
    with pytest.raises(XennaAdapterError) as caught:
        manifest.to_xenna()
    message = str(caught.value)
    assert "artifacts[0]: include/exclude" in message and "artifacts[1].sha256" in message
    assert "artifacts[2].cache: Xenna caches every file" in message
    assert "settings.overwrite" in message and "settings.upload_slots" in message
    # A capped run handed to Xenna would run uncapped: refused, not dropped.
    assert "settings.origin_rate" in message and "settings.upload_rate" in message


def test_the_drop_in_keeps_xennas_parameters_in_order():
    """A call written for Xenna binds the same way, to the drop-in and to the switch."""
    theirs = list(inspect.signature(fd.download_distributed).parameters)
    assert list(inspect.signature(download_distributed).parameters)[: len(theirs)] == theirs
    assert list(inspect.signature(XennaSwitch().download_distributed).parameters) == theirs


def test_durations_in_config_args_pass_validation():
    # make_for_s3 always sets timeout/connect_timeout as "300s"/"60s"; they must stay valid store options.
    assert (
        from_xenna([obj("a", "/a")], fd.ObjectStoreConfig.make_for_s3("b", retry_timeout=timedelta(minutes=1)))
        .stores["default"]
        .options["timeout"]
        == "300s"
    )
