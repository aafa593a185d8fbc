"""``xfd cache`` on the simulated cluster: what a distribution left on every node, listed, re-hashed and
pruned against a changed manifest; a user's files are never removed. From Python and from the command line.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter

import obstore
import pytest

from xfd import Manifest, cache
from xfd.cli import main
from xfd.nodes import localize
from xfd.testing import tar_gz

pytestmark = pytest.mark.cluster
MiB = 1 << 20


@pytest.fixture
def base() -> str:
    """A directory of this test's own: the session's cluster holds other tests' files too."""
    return f"/cache-{uuid.uuid4().hex[:8]}"


def manifest(s3, bucket, endpoint, base: str, *, everything: bool) -> Manifest:
    builder = (
        Manifest.builder()
        .store("m", f"s3://{bucket}/root", **s3.manifest_options(endpoint))
        .settings(chunk_size="1MiB")
        .object("m", "model.bin", to=f"{base}/model.bin", name="model")
    )
    if everything:
        builder = (
            builder.prefix("m", "tok/", to=f"{base}/tok", name="tok")
            .object("m", "data.tar.gz", to=f"{base}/data.tar.gz", name="data")
            .unpack()
        )
    return builder.build()


def by_node(result) -> dict[str, dict[str, object]]:
    """Node IP -> {destination below the test's directory: the entry}."""
    out: dict[str, dict[str, object]] = {}
    for node in result.nodes:
        assert node.error is None, node.error
        out[node.ip] = {e.destination: e for e in node.entries}
    return out


def test_ls_verify_prune_across_the_cluster(cluster, s3, bucket, origin, base, tmp_path, capsys):
    contents = {
        "root/model.bin": os.urandom(2 * MiB + 500),
        "root/tok/a.json": b'{"a": 1}',
        "root/tok/b.json": os.urandom(3000),
        "root/data.tar.gz": tar_gz({"x.txt": b"x" * 5000, "sub/y.txt": b"y"}),
    }
    for key, data in contents.items():
        obstore.put(s3.store(bucket), key, data)
    full = manifest(s3, bucket, origin.endpoint, base, everything=True)
    full.distribute(progress=None)
    ips = sorted(node.ip for node in cluster.nodes)
    roots = {node.ip: node.root for node in cluster.nodes}

    # ls: every node's files, with the artifact each is for, its size and when it was last used.
    listing = cache.ls(within=base)
    expected = {
        f"{base}/model.bin": ("file", "model", len(contents["root/model.bin"])),
        f"{base}/tok/a.json": ("file", "tok", len(contents["root/tok/a.json"])),
        f"{base}/tok/b.json": ("file", "tok", len(contents["root/tok/b.json"])),
        f"{base}/data.tar.gz": ("file", "data", len(contents["root/data.tar.gz"])),
        f"{base}/data": ("tree", "data", 5001),
    }
    seen = by_node(listing)
    assert sorted(seen) == ips
    for ip, entries in seen.items():
        assert {d: (e.kind, e.artifact, e.size) for d, e in entries.items()} == expected, ip
        assert all(e.state == "intact" and e.last_used is not None and not e.held for e in entries.values()), ip
    assert "model" in listing.summary() and repr(listing).startswith("<CacheListing: 20 entries")
    assert "<table>" in listing._repr_html_()

    # One byte flipped on one node: verify names exactly that file there.
    corrupted_ip = ips[2]
    model = localize(f"{base}/model.bin", roots[corrupted_ip])
    with open(model, "r+b") as file:
        file.seek(MiB + 7)
        byte = file.read(1)
        file.seek(MiB + 7)
        file.write(bytes([byte[0] ^ 0xFF]))
    verified = cache.verify(within=base)
    problems = [(e.node_ip, e.destination, e.outcome) for e in verified.problems]
    assert problems == [(corrupted_ip, f"{base}/model.bin", "corrupt")]
    assert not verified.ok
    assert main(["cache", "verify", "--within", base]) == 1
    assert f"{base}/model.bin" in capsys.readouterr().out
    assert main(["cache", "verify", "--within", base, "--json"]) == 1
    as_json = json.loads(capsys.readouterr().out)
    assert [
        (node["ip"], entry["destination"])
        for node in as_json["nodes"]
        for entry in node["entries"]
        if entry["outcome"] == "corrupt"
    ] == [(corrupted_ip, f"{base}/model.bin")]

    # The user's files: one of their own beside xfd's, one put in place of a file xfd published.
    users_ip, replacer_ip = ips[1], ips[3]
    users_own = localize(f"{base}/tok/users.txt", roots[users_ip])
    users_own.write_bytes(b"the user's")
    replaced = localize(f"{base}/tok/b.json", roots[replacer_ip])
    replaced.unlink()
    replaced.write_bytes(b"the user's now")

    # The manifest drops the prefix and the archive: a dry run lists exactly their files, removes nothing.
    smaller = manifest(s3, bucket, origin.endpoint, base, everything=False)
    dropped = {f"{base}/tok/a.json", f"{base}/tok/b.json", f"{base}/data.tar.gz", f"{base}/data"}
    dry = cache.prune(smaller, within=base)
    for ip, entries in by_node(dry).items():
        actions = {d: e.action for d, e in entries.items()}
        wanted = {d: "remove" for d in dropped}
        if ip == replacer_ip:
            wanted[f"{base}/tok/b.json"] = "forget"
        assert actions == wanted, ip
    assert not any(e.applied for e in dry.entries)
    for ip in ips:
        assert localize(f"{base}/data/x.txt", roots[ip]).exists(), ip
        assert localize(f"{base}/tok/a.json", roots[ip]).exists(), ip

    # The command line says the same (dry run by default).
    toml = tmp_path / "smaller.toml"
    toml.write_text(smaller.to_toml())
    assert main(["cache", "prune", str(toml), "--within", base]) == 0
    out = capsys.readouterr().out
    assert "would remove 15 entries" in out and "dry run" in out
    assert main(["cache", "prune", str(toml), "--within", base, "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    actions = Counter(entry["action"] for node in as_json["nodes"] for entry in node["entries"])
    assert as_json["dry_run"] is True and actions == {"remove": 15, "forget": 1}

    # Applied: the dropped artifacts' files and trees go, and nothing else.
    done = cache.prune(smaller, within=base, dry_run=False)
    assert len(done.removed) == 15 and all(e.applied for e in done.removed)
    for ip in ips:
        for gone in dropped - ({f"{base}/tok/b.json"} if ip == replacer_ip else set()):
            assert not localize(gone, roots[ip]).exists(), f"{gone} on {ip}"
        assert localize(f"{base}/model.bin", roots[ip]).exists(), ip
    assert users_own.read_bytes() == b"the user's"
    assert replaced.read_bytes() == b"the user's now"
    after = by_node(cache.ls(within=base))
    assert {ip: sorted(entries) for ip, entries in after.items()} == {ip: [f"{base}/model.bin"] for ip in ips}

    assert main(["cache", "ls", "--within", base]) == 0
    out = capsys.readouterr().out
    assert all(ip in out for ip in ips) and "model" in out
    assert main(["cache", "ls", "--within", base, "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    listed = {
        node["ip"]: [(e["destination"], e["artifact"], e["state"]) for e in node["entries"]]
        for node in as_json["nodes"]
    }
    # The file whose byte was flipped in place is no longer as xfd published it.
    state = {ip: "touched" if ip == corrupted_ip else "intact" for ip in ips}
    assert listed == {ip: [(f"{base}/model.bin", "model", state[ip])] for ip in ips}


def test_prune_needs_a_manifest():
    from xfd.errors import ConfigError

    with pytest.raises(ConfigError, match="prune needs the manifests"):
        cache.prune()
