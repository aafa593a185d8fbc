"""A node disk that is full or read-only, for real: the engine runs in a private mount namespace
(``unshare --user --map-root-user --mount``) whose node root is a 2 MiB tmpfs, so writes fail with the
kernel's own ENOSPC or EROFS. The user gets one clear error; the destination is never touched; what xfd
was writing is removed so the space comes back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import obstore
import pytest

MiB = 1 << 20
UNSHARE = shutil.which("unshare")

# Runs inside the namespace: mounts the tmpfs over the node root, runs one engine, prints what happened.
ENGINE_RUN = r"""
import json, os, subprocess, sys
from xfd import Manifest
from xfd.engine import node_engine, state_dir
from xfd.errors import XfdError

root, manifest_toml, read_only = sys.argv[1], sys.argv[2], sys.argv[3] == "ro"
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", root], check=True)
os.makedirs(f"{root}/models")
with open(f"{root}/models/mine.txt", "w") as f:
    f.write("the user's file")
if read_only:
    subprocess.run(["mount", "-o", "remount,ro", root], check=True)
manifest = Manifest.loads(manifest_toml)
plan = manifest.plan()
outcome = {"error": None}
try:
    engine = node_engine(plan, manifest.stores, root)
    engine.scan()
    for chunk in plan.objects[0].chunks:
        engine.fetch_from_origin(chunk.id)
except XfdError as error:
    outcome |= {"error": type(error).__name__, "message": str(error),
                "errno": getattr(error, "errno", None), "filename": getattr(error, "filename", None)}
engine = None  # the run ends: what it could not finish is removed
store = state_dir(root)  # the node store (on the same small disk) is left out: only the user's side counts
outcome["files"] = sorted(str(p.relative_to(root)) for p in __import__("pathlib").Path(root).rglob("*")
                          if p != store and store not in p.parents and p not in store.parents)
outcome["mine"] = open(f"{root}/models/mine.txt").read()
outcome["free"] = os.statvfs(root).f_bavail * os.statvfs(root).f_frsize
print(json.dumps(outcome))
"""


def run_in_small_disk(tmp_path: Path, manifest_toml: str, mode: str) -> dict:
    assert UNSHARE, "unshare (util-linux) is needed to give the engine a small disk of its own"
    root = tmp_path / "node-root"
    root.mkdir()
    result = subprocess.run(
        [
            UNSHARE,
            "--user",
            "--map-root-user",
            "--mount",
            sys.executable,
            "-c",
            ENGINE_RUN,
            str(root),
            manifest_toml,
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=os.environ | {"PYTHONWARNINGS": "error"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def big_object_manifest(s3, bucket, origin) -> str:
    obstore.put(s3.store(bucket), "root/big.bin", os.urandom(5 * MiB))
    return (
        s3.store_toml("m", f"s3://{bucket}/root", origin.endpoint)
        + '[settings]\nchunk_size = "1MiB"\n[[artifacts]]\nstore = "m"\nkey = "big.bin"\nto = "/models/big.bin"\n'
    )


def test_a_full_disk_is_one_clear_error_and_gives_its_space_back(tmp_path, big_object_manifest):
    outcome = run_in_small_disk(tmp_path, big_object_manifest, "rw")

    assert outcome["error"] == "StorageError", outcome
    assert outcome["errno"] == 28  # ENOSPC, from the kernel
    assert "No space left on device" in outcome["message"] and "free space" in outcome["message"], outcome
    assert outcome["filename"].endswith("models/.big.bin.xfd-part"), outcome
    assert outcome["files"] == ["models", "models/mine.txt"], "no partial file, no part file left behind"
    assert outcome["mine"] == "the user's file"
    assert outcome["free"] > 1.9 * MiB, "the space the part file took came back"


def test_a_read_only_disk_is_one_clear_error_and_nothing_changes(tmp_path, big_object_manifest):
    outcome = run_in_small_disk(tmp_path, big_object_manifest, "ro")

    assert outcome["error"] == "StorageError", outcome
    assert outcome["errno"] == 30  # EROFS
    assert "Read-only file system" in outcome["message"] and "writable" in outcome["message"], outcome
    assert outcome["files"] == ["models", "models/mine.txt"]
    assert outcome["mine"] == "the user's file"
