"""The node engine from Python against the real S3 server, origin bytes counted at the origin."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import obstore
import pytest

from xfd import Manifest
from xfd.engine import node_engine, state_dir
from xfd.errors import ConfigError, DestinationExistsError, ObjectChangedError, UnsafeArchiveError, XfdError
from xfd.testing import CountingProxy, LocalS3, tar_gz

MiB = 1 << 20


def manifest_through(s3: LocalS3, bucket: str, endpoint: str):
    return (
        Manifest.builder()
        .store("m", f"s3://{bucket}/root", **s3.manifest_options(endpoint))
        .settings(chunk_size="1MiB")
    )


@pytest.fixture
def objects(s3: LocalS3, bucket: str) -> dict[str, bytes]:
    contents = {
        "root/model.bin": os.urandom(5 * MiB + 123),
        "root/tok/a.json": b'{"a": 1}',
        "root/data.tar.gz": tar_gz({"x.txt": b"x" * 1000, "sub/y.txt": b"y"}),
    }
    for key, data in contents.items():
        obstore.put(s3.store(bucket), key, data)
    return contents


def xfd_names(root: Path) -> list[str]:
    """Names holding ``.xfd`` under a node root, its node store left out: none may be beside the user's files."""
    store = state_dir(root)
    return [str(p) for p in root.rglob("*") if ".xfd" in p.name and store not in p.parents]


def fetch_everything(engine, plan) -> None:
    engine.scan()
    for plan_object in plan.objects:
        for chunk in plan_object.chunks:
            engine.fetch_from_origin(chunk.id)
    engine.finish()


def test_origin_bytes_equal_unique_plan_bytes_exactly(s3, bucket, objects, origin: CountingProxy, tmp_path):
    manifest = (
        manifest_through(s3, bucket, origin.endpoint)
        .object("m", "model.bin", to="/models/model.bin")
        .object("m", "model.bin", to="/copy/model.bin")
        .prefix("m", "tok", to="/tok")
        .object("m", "data.tar.gz", to="/data/data.tar.gz")
        .unpack()
        .build()
    )
    plan = manifest.plan()
    origin.reset()
    engine = node_engine(plan, manifest.stores, tmp_path)
    fetch_everything(engine, plan)

    assert engine.is_complete()
    assert (tmp_path / "models/model.bin").read_bytes() == objects["root/model.bin"]
    assert (tmp_path / "copy/model.bin").read_bytes() == objects["root/model.bin"]
    assert (tmp_path / "tok/a.json").read_bytes() == b'{"a": 1}'
    assert (tmp_path / "data/data/sub/y.txt").read_bytes() == b"y"
    assert origin.traffic().get_bytes == plan.unique_bytes
    kinds = [e["kind"] for e in engine.drain_events()]
    assert kinds.count("chunk_done") == plan.chunk_count
    assert kinds.count("file_published") == 3 and kinds.count("unpacked") == 1
    engine.close()
    assert xfd_names(tmp_path) == [], "xfd files beside the user's"
    assert (state_dir(tmp_path) / "records.log").stat().st_size > 0


def test_the_node_store_is_under_the_node_root_and_xfd_state_dir_moves_it(tmp_path):
    home = {"HOME": "/home/ada"}
    assert state_dir(tmp_path, home) == tmp_path / "home/ada/.cache/xfd"
    assert state_dir(Path("/"), home) == Path("/home/ada/.cache/xfd")
    assert state_dir(tmp_path, home | {"XFD_STATE_DIR": "/var/lib/xfd"}) == tmp_path / "var/lib/xfd"
    assert state_dir(tmp_path, home | {"XFD_STATE_DIR": "~/xfd-state"}) == tmp_path / "home/ada/xfd-state"
    with pytest.raises(ConfigError, match="XFD_STATE_DIR is 'state': the state directory must be an absolute"):
        state_dir(tmp_path, {"XFD_STATE_DIR": "state"})


def test_the_engine_keeps_its_records_where_xfd_state_dir_says(s3, bucket, objects, origin, tmp_path):
    manifest = manifest_through(s3, bucket, origin.endpoint).object("m", "tok/a.json", to="/a.json").build()
    plan = manifest.plan()
    environ = dict(os.environ) | {"XFD_STATE_DIR": "/srv/xfd-state"}
    fetch_everything(node_engine(plan, manifest.stores, tmp_path, environ=environ), plan)
    assert (tmp_path / "srv/xfd-state/records.log").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "srv"]


def test_the_default_automatic_chunk_size_reaches_the_engine(s3, bucket, objects, origin, tmp_path):
    store = s3.manifest_options(origin.endpoint)
    manifest = (
        Manifest.builder().store("m", f"s3://{bucket}/root", **store).object("m", "model.bin", to="/m.bin").build()
    )
    assert manifest.settings.chunk_size == "auto"
    plan = manifest.plan()
    engine = node_engine(plan, manifest.stores, tmp_path)
    fetch_everything(engine, plan)
    assert engine.is_complete()
    assert (tmp_path / "m.bin").read_bytes() == objects["root/model.bin"]


def test_a_second_run_reads_nothing_from_the_origin(s3, bucket, objects, origin, tmp_path):
    manifest = manifest_through(s3, bucket, origin.endpoint).object("m", "model.bin", to="/m.bin").build()
    plan = manifest.plan()
    fetch_everything(node_engine(plan, manifest.stores, tmp_path), plan)
    origin.reset()
    again = node_engine(plan, manifest.stores, tmp_path)
    scan = again.scan()
    assert scan["cached_files"] == 1 and len(scan["held"]) == 6
    assert again.is_complete()
    assert origin.traffic().get_bytes == 0


def test_background_fetches_report_through_events(s3, bucket, objects, origin, tmp_path):
    manifest = manifest_through(s3, bucket, origin.endpoint).object("m", "model.bin", to="/m.bin").build()
    plan = manifest.plan()
    engine = node_engine(plan, manifest.stores, tmp_path)
    engine.scan()
    engine.submit_origin([c.id for c in plan.objects[0].chunks])
    events, deadline = [], time.monotonic() + 60
    while not any(e["kind"] == "file_published" for e in events) and time.monotonic() < deadline:
        events += engine.wait_events(1.0)
    assert sorted(e["chunk_id"] for e in events if e["kind"] == "chunk_done") == sorted(
        c.id for c in plan.objects[0].chunks
    )
    assert all(e["source"] == "origin" and len(e["digest"]) == 64 for e in events if e["kind"] == "chunk_done")
    assert (tmp_path / "m.bin").read_bytes() == objects["root/model.bin"]


def test_an_object_overwritten_mid_run_is_detected(s3, bucket, objects, origin, tmp_path):
    manifest = manifest_through(s3, bucket, origin.endpoint).object("m", "model.bin", to="/m.bin").build()
    plan = manifest.plan()
    engine = node_engine(plan, manifest.stores, tmp_path)
    engine.scan()
    engine.fetch_from_origin(plan.objects[0].chunks[0].id)
    obstore.put(s3.store(bucket), "root/model.bin", os.urandom(5 * MiB + 123))
    with pytest.raises(ObjectChangedError, match="changed at the origin since it was planned"):
        engine.fetch_from_origin(plan.objects[0].chunks[1].id)
    assert not (tmp_path / "m.bin").exists()
    failures = [e for e in engine.drain_events() if e["kind"] == "chunk_failed"]
    assert failures and failures[0]["chunk_id"] == plan.objects[0].chunks[1].id


def test_a_user_file_at_a_destination_is_kept_and_reported(s3, bucket, objects, origin, tmp_path):
    manifest = manifest_through(s3, bucket, origin.endpoint).object("m", "tok/a.json", to="/a.json").build()
    plan = manifest.plan()
    (tmp_path / "a.json").write_text("mine")
    with pytest.raises(DestinationExistsError) as info:
        node_engine(plan, manifest.stores, tmp_path).scan()
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, XfdError)
    assert (tmp_path / "a.json").read_text() == "mine"


def test_a_malicious_archive_is_refused_with_nothing_written_outside(s3, bucket, origin, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))
    obstore.put(s3.store(bucket), "root/evil.tar.gz", buffer.getvalue())
    manifest = (
        manifest_through(s3, bucket, origin.endpoint).object("m", "evil.tar.gz", to="/d/evil.tar.gz").unpack().build()
    )
    plan = manifest.plan()
    engine = node_engine(plan, manifest.stores, tmp_path)
    with pytest.raises(UnsafeArchiveError, match="escaped.txt"):
        fetch_everything(engine, plan)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
    assert not (tmp_path / "d/evil").exists()


def test_two_nodes_share_a_file_with_one_origin_copy(s3, bucket, objects, origin, tmp_path):
    manifest = manifest_through(s3, bucket, origin.endpoint).object("m", "model.bin", to="/m.bin").build()
    plan = manifest.plan()
    origin.reset()
    token = "f" * 64
    seeder = node_engine(plan, manifest.stores, tmp_path / "a", peer_token=token)
    leecher = node_engine(plan, manifest.stores, tmp_path / "b", peer_token=token)
    seeder.scan()
    leecher.scan()
    host, port = seeder.start_server("127.0.0.2", upload_slots=4)
    assert host == "127.0.0.2"
    try:
        digests = {c.id: seeder.fetch_from_origin(c.id)["digest"] for c in plan.objects[0].chunks}
        for chunk_id, digest in digests.items():
            assert leecher.fetch_from_peer(chunk_id, host, port, digest)["bytes"] > 0
        stats = seeder.server_stats()
    finally:
        seeder.stop_server(1.0)
    assert (tmp_path / "b/m.bin").read_bytes() == objects["root/model.bin"]
    assert origin.traffic().get_bytes == plan.unique_bytes
    assert stats["bytes_served"] == plan.unique_bytes and stats["refused"]["unauthorized"] == 0
    assert seeder.server_stats() is None


def test_a_wrong_token_gets_nothing_from_a_peer(s3, bucket, objects, origin, tmp_path):
    from xfd.errors import PeerError

    manifest = manifest_through(s3, bucket, origin.endpoint).object("m", "tok/a.json", to="/a.json").build()
    plan = manifest.plan()
    seeder = node_engine(plan, manifest.stores, tmp_path / "a", peer_token="a" * 64)
    intruder = node_engine(plan, manifest.stores, tmp_path / "b", peer_token="b" * 64)
    seeder.scan()
    intruder.scan()
    chunk = plan.objects[0].chunks[0].id
    seeder.fetch_from_origin(chunk)
    host, port = seeder.start_server("127.0.0.2", upload_slots=4)
    try:
        with pytest.raises(PeerError, match="refused the token"):
            intruder.fetch_from_peer(chunk, host, port)
        stats = seeder.server_stats()
    finally:
        seeder.stop_server(0.5)
    assert stats["bytes_served"] == 0 and stats["refused"]["unauthorized"] == 1
    assert not (tmp_path / "b/a.json").exists()


def test_origin_retry_settings_reach_the_engine(s3, bucket, objects, origin, tmp_path):
    """`origin_attempts` bounds the tries per chunk: three attempts cost three times the requests of one."""

    def requests_until_failure(attempts: int) -> int:
        manifest = (
            manifest_through(s3, bucket, origin.endpoint)
            .settings(origin_attempts=attempts, origin_backoff=0.01, origin_max_backoff=0.05)
            .object("m", "tok/a.json", to=f"/a{attempts}.json")
            .build()
        )
        plan = manifest.plan()
        origin.reset()
        origin.refuse(f"/{bucket}/root/tok/a.json", 500)
        engine = node_engine(plan, manifest.stores, tmp_path)
        engine.scan()
        with pytest.raises(XfdError):
            engine.fetch_from_origin(plan.objects[0].chunks[0].id)
        count = origin.traffic().get_requests
        origin.reset()
        return count

    once = requests_until_failure(1)
    assert once >= 1 and requests_until_failure(3) == 3 * once


def test_a_cancelled_engine_stops_writing_and_lets_go_of_its_destinations(s3, bucket, objects, origin, tmp_path):
    manifest = manifest_through(s3, bucket, origin.endpoint).object("m", "model.bin", to="/m.bin").build()
    plan = manifest.plan()
    engine = node_engine(plan, manifest.stores, tmp_path)
    engine.scan()
    origin.throttle(64 * 1024)  # every transfer is still running when the run is called off
    chunks = [chunk.id for chunk in plan.objects[0].chunks]
    engine.submit_origin(chunks)
    # Every chunk's GET has reached the origin (one each): a GET counted later was started after cancel.
    wait_for(lambda: origin.traffic().get_requests == len(chunks))
    engine.cancel()
    requests = origin.traffic().get_requests
    # Still throttled: a transfer that went on reading would hold its response open for a minute (5 MiB
    # at 64 KiB/s). Every response ends only once the engine has closed its connection.
    wait_for(lambda: origin.responses_in_flight() == 0, timeout=15.0)
    served = origin.traffic().get_bytes
    origin.throttle(None)
    del engine

    again = node_engine(plan, manifest.stores, tmp_path)  # would be refused if the old one still held it
    again.scan()
    assert not (tmp_path / "m.bin").exists()
    traffic = origin.traffic()
    assert traffic.get_requests == requests, "a request was started after cancel() returned"
    assert traffic.get_bytes == served, "a cancelled transfer went on fetching"


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
