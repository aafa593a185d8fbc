"""Xenna's own planning code and xfd's, side by side on the same requests and the same store (no Ray).

Xenna turns requests into a catalog of objects and destinations (``_create_download_catalog``: HEAD the
objects, list the prefixes) before any node downloads; xfd compiles a plan. Both run here against one
``file://`` store (Xenna's ``make_for_local``), so every difference in what lands where shows.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from cosmos_xenna import file_distribution as fd
from cosmos_xenna._cosmos_xenna.file_distribution import models as xenna_rust
from cosmos_xenna.file_distribution import _file_distribution
from cosmos_xenna.pipelines.private.pipelines import _deduplicate_download_requests

from xfd.errors import PlanError
from xfd.xenna import from_xenna

FILES = {
    "models/w.bin": b"w" * 3000,
    "tok/a.json": b"{}",
    "tok/sub/b.txt": b"b" * 999,
    "tokens/c.txt": b"a sibling of tok/, not below it",
    "tok.txt": b"a sibling too",
}


@pytest.fixture
def store(tmp_path: Path) -> fd.ObjectStoreConfig:
    root = tmp_path / "store"
    for key, data in FILES.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return fd.ObjectStoreConfig.make_for_local(str(root))


def obj(uri: str, dest: str) -> fd.DownloadRequest:
    return fd.DownloadRequest(fd.ObjectDownloadRequest(uri=uri, destination=Path(dest)))


def prefix(uri: str, dest: str) -> fd.DownloadRequest:
    return fd.DownloadRequest(fd.PrefixDownloadRequest(uri=uri, destination=Path(dest)))


def xennas(requests: list[fd.DownloadRequest], config: fd.ObjectStoreConfig) -> list[tuple[str, str]]:
    """(destination, key) of every object Xenna's download_distributed would put on each node."""
    catalog = _file_distribution._create_download_catalog(
        [_file_distribution._DownloadRequestWithId(uuid.uuid4(), r.value) for r in requests],
        fd.ObjectStoreConfigByProfile(profiles={None: config}),
        100 << 20,
    )
    return sorted((str(o.destination), o.uri) for o in catalog.objects)


def xfds(requests: list[fd.DownloadRequest], config: fd.ObjectStoreConfig) -> list[tuple[str, str]]:
    """(destination, key) of every file in xfd's plan for the same requests."""
    plan = from_xenna(requests, config).plan()
    keys = {o.id: o.key for o in plan.objects}
    return sorted((f.destination, keys[f.object_id]) for f in plan.files)


def test_objects_and_prefixes_land_where_xenna_puts_them(store):
    requests = [
        obj("models/w.bin", "/m/w.bin"),
        prefix("tok/", "/t"),
        prefix("tok/sub/", "/deep"),
        prefix("", "/everything"),
    ]
    assert xfds(requests, store) == xennas(requests, store)
    assert ("/everything/tokens/c.txt", "tokens/c.txt") in xennas(requests, store)


def test_a_prefix_without_its_slash_takes_the_same_objects_but_keeps_them_below_the_destination(store):
    """Both take the objects below tok/ (not tokens/, not tok.txt): obstore lists by path segment. Xenna
    then cuts the key after "tok" and joins "/a.json" to the destination, which puts the files at the root
    of the node's file system; xfd puts them below the destination, as for "tok/"."""
    theirs, ours = xennas([prefix("tok", "/t")], store), xfds([prefix("tok", "/t")], store)
    assert [key for _, key in theirs] == [key for _, key in ours] == ["tok/a.json", "tok/sub/b.txt"]
    assert theirs == [("/a.json", "tok/a.json"), ("/sub/b.txt", "tok/sub/b.txt")]
    assert (
        ours == [("/t/a.json", "tok/a.json"), ("/t/sub/b.txt", "tok/sub/b.txt")] == xfds([prefix("tok/", "/t")], store)
    )


def test_a_key_ending_in_a_space_keeps_its_name(store):
    (Path(store.uri.removeprefix("file://")) / "tok" / "name ").write_bytes(b"x")
    theirs, ours = xennas([prefix("tok/", "/t")], store), xfds([prefix("tok/", "/t")], store)
    assert ("/t/name", "tok/name ") in theirs  # Xenna strips the path below the prefix: another file name
    assert ("/t/name ", "tok/name ") in ours


def test_a_prefix_with_nothing_below_it_is_an_error_where_xenna_downloads_nothing(store):
    assert xennas([prefix("nothing/", "/n")], store) == []
    with pytest.raises(PlanError, match="no objects under"):
        xfds([prefix("nothing/", "/n")], store)


def test_a_missing_object_stops_both_before_any_download(store):
    with pytest.raises(FileNotFoundError):
        xennas([obj("missing.bin", "/m")], store)
    with pytest.raises(PlanError, match="does not exist"):  # download_distributed raises it as FileNotFoundError
        xfds([obj("missing.bin", "/m")], store)


def test_a_repeated_request_is_one_download_where_xennas_download_distributed_makes_two(store):
    requests = [obj("models/w.bin", "/m/w.bin"), obj("models/w.bin", "/m/w.bin")]
    assert len(xennas(requests, store)) == 2  # two objects for one path: fetched twice, written twice
    assert xfds(requests, store) == [("/m/w.bin", "models/w.bin")]


def test_through_xennas_pipeline_the_first_of_disagreeing_repeats_wins_as_in_xenna(store, tmp_path):
    other = fd.ObjectStoreConfig.make_for_local(str(tmp_path))
    configs = fd.ObjectStoreConfigByProfile(profiles={None: store, "other": other})
    first = obj("models/w.bin", "/m/w.bin")
    repeat = fd.DownloadRequest(fd.ObjectDownloadRequest("models/w.bin", Path("/m/w.bin"), profile_name="other"))
    kept = _deduplicate_download_requests([first, repeat])  # what run_pipeline hands the switch
    assert kept == [first]
    assert [a.store for a in from_xenna(kept, configs).artifacts] == ["default"]


@pytest.mark.parametrize(
    ("uri", "scheme"), [("gs://weights/", "gs"), ("azure://weights/", "az"), ("az://weights/", "az")]
)
def test_gcs_and_azure_stores_are_read_where_xennas_downloader_cannot(uri, scheme):
    config = fd.ObjectStoreConfig(uri=uri, config_args={"account_name": "acct"} if scheme == "az" else {})
    with pytest.raises(ValueError, match="not enabled"):  # Xenna's wheel is built with S3 support only
        xenna_rust.ObjectStoreByProfile(fd.ObjectStoreConfigByProfile(profiles={None: config}).to_rust())
    assert from_xenna([obj("k", "/k")], config).stores["default"].url.startswith(f"{scheme}://weights")
