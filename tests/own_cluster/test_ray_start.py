"""`xfd distribute` on a cluster started the way users start one: `ray start --head` plus a second
`ray start --address` node, and no RAY_ADDRESS. The command finds the cluster as Ray's own scripts do.

It starts its own two-node cluster (on 127.0.0.30-31, away from the shared cluster's addresses), so this
directory sorts before the modules that start the shared one; both clusters are never up at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import obstore
import pytest

from xfd import Manifest
from xfd.testing import free_port

HEAD_IP, WORKER_IP = "127.0.0.30", "127.0.0.31"
RAY = str(Path(sys.executable).with_name("ray"))
CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
WAIT_FOR_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
deadline = time.monotonic() + 120
while sum(n["Alive"] for n in ray.nodes()) < 2:
    assert time.monotonic() < deadline, "the second node did not join"
    time.sleep(0.5)
"""


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`ray start ... --block` in a session of its own: ending that session ends exactly this cluster
    (`ray stop` would stop every Ray on the machine). Its output goes to ``log``, shown if it fails."""
    with log.open("w") as output:
        return subprocess.Popen(
            [
                RAY,
                "start",
                "--block",
                "--num-cpus=1",
                "--object-store-memory=200000000",
                "--disable-usage-stats",
                *args,
            ],
            env=env,
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen) -> None:
    """SIGTERM lets the session's services (all in its process group) end on their own; the `ray start
    --block` leader does not exit on it (it waited out a 20 s grace on every run), so SIGKILL ends what is
    left after 3 s (or, if the leader did exit, whatever of the group outlived it)."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 20.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            time.sleep(1)  # the session's other processes end with their leader's signal handler
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def ray_started(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    port = free_port()
    roots = [tmp_path / "node-0", tmp_path / "node-1"]
    for root in roots:
        root.mkdir()
    previous = CURRENT_CLUSTER.read_text() if CURRENT_CLUSTER.exists() else None
    head_log = tmp_path / "ray-start-head.log"
    head = start(
        [
            "--head",
            f"--node-ip-address={HEAD_IP}",
            f"--port={port}",
            "--include-dashboard=false",
            f'--labels={{"xfd-root": "{roots[0]}"}}',
        ],
        env,
        head_log,
    )
    processes = [head]
    try:
        deadline = time.monotonic() + 120
        while not (CURRENT_CLUSTER.exists() and CURRENT_CLUSTER.read_text().strip() == f"{HEAD_IP}:{port}"):
            assert head.poll() is None and time.monotonic() < deadline, (
                f"ray start --head failed:\n{head_log.read_text()}"
            )
            time.sleep(0.3)
        processes.append(
            start(
                [
                    f"--address={HEAD_IP}:{port}",
                    f"--node-ip-address={WORKER_IP}",
                    f'--labels={{"xfd-root": "{roots[1]}"}}',
                ],
                env,
                tmp_path / "ray-start-worker.log",
            )
        )
        subprocess.run([sys.executable, "-c", WAIT_FOR_NODES, f"{HEAD_IP}:{port}"], env=env, check=True, timeout=180)
        yield env, roots
    finally:
        for process in reversed(processes):
            stop(process)
        if previous is None:
            CURRENT_CLUSTER.unlink(missing_ok=True)
        else:
            CURRENT_CLUSTER.write_text(previous)


def test_xfd_distribute_finds_a_cluster_started_with_ray_start(ray_started, s3, bucket, origin, tmp_path):
    env, roots = ray_started
    weights = os.urandom(3 << 20)
    obstore.put(s3.store(bucket), "root/model.bin", weights)
    manifest = (
        Manifest.builder()
        .store("m", f"s3://{bucket}/root", **s3.manifest_options(origin.endpoint))
        .settings(chunk_size="1MiB")
        .object("m", "model.bin", to="/models/model.bin")
        .build()
    )
    (tmp_path / "artifacts.toml").write_text(manifest.to_toml())

    done = subprocess.run(
        [str(Path(sys.executable).with_name("xfd")), "distribute", "--no-progress", str(tmp_path / "artifacts.toml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: 2 nodes" in done.stdout, done.stdout
    for root in roots:
        assert (root / "models" / "model.bin").read_bytes() == weights
    assert origin.traffic().get_bytes_for(f"/{bucket}/root/model.bin") == len(weights)
