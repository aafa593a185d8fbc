"""Connecting to Ray as Ray's own scripts do, for the Xenna path and for xfd itself.

The cluster is started the way users start one: ``ray start --head`` plus a second ``ray start --address``
node, and no ``RAY_ADDRESS``; a fresh process then finds it, through Xenna's own connection (its
``download_artifacts``) and through ``xfd.runtime.distribute.ensure_ray``. These tests start and stop their
own cluster (on 127.0.0.40-41), so they run before the shared cluster starts (``conftest.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import obstore
import pytest

from xfd.testing import free_port

HEAD_IP, WORKER_IP = "127.0.0.40", "127.0.0.41"
RAY = str(Path(sys.executable).with_name("ray"))
CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
pytestmark = pytest.mark.timeout(600)

XENNA_PIPELINE_PROCESS = """
import json, sys
from pathlib import Path
from cosmos_xenna import file_distribution as fd
from cosmos_xenna.pipelines import v1 as pipelines
import xfd.xenna

endpoint, bucket, key_id, secret = sys.argv[1:5]

class Weights(pipelines.Stage):
    @property
    def required_resources(self):
        return pipelines.Resources(cpus=1.0)

    @property
    def download_requests(self):
        return [fd.DownloadRequest(fd.ObjectDownloadRequest(uri="m/model.bin", destination=Path("/models/model.bin")))]

    def process_data(self, batch):
        return batch

store = fd.ObjectStoreConfig.make_for_s3(bucket, endpoint=endpoint, access_key_id=key_id, secret_access_key=secret,
                                         region="us-east-1")
store.config_args["allow_http"] = "true"
config = pipelines.DistributedDownloadConfig(object_store_config=store, chunk_size_bytes=1 << 20)
with xfd.xenna.use_xfd(progress="none") as switch:
    pipelines.download_artifacts([Weights()], config)  # Ray is not initialized: Xenna connects as it does
[report] = switch.reports
print(json.dumps({"ok": report.ok, "nodes": len(report.nodes)}))
"""

ENSURE_RAY_PROCESS = """
import ray
from xfd.runtime.distribute import ensure_ray

ensure_ray()
print(sum(node["Alive"] for node in ray.nodes()))
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
                "--object-store-memory=100000000",
                "--disable-usage-stats",
                *args,
            ],
            env=env,
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def stop(processes: list[subprocess.Popen]) -> None:
    """Ends each `ray start` session: SIGTERM lets its services (all in the session's process group) end on
    their own; the `ray start --block` leader does not exit on it, so SIGKILL then ends what is left."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 20.0)):
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + grace
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))


@pytest.fixture(scope="module")
def ray_started(tmp_path_factory):
    """Two nodes started with `ray start`, each with its node root; the environment of a user's shell."""
    base = tmp_path_factory.mktemp("ray-start")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    port = free_port()
    roots = [base / "node-0", base / "node-1"]
    for root in roots:
        root.mkdir()
    previous = CURRENT_CLUSTER.read_text() if CURRENT_CLUSTER.exists() else None
    head_log = base / "ray-start-head.log"
    processes = [
        start(
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
    ]
    try:
        deadline = time.monotonic() + 120
        while not (CURRENT_CLUSTER.exists() and CURRENT_CLUSTER.read_text().strip() == f"{HEAD_IP}:{port}"):
            assert processes[0].poll() is None and time.monotonic() < deadline, (
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
                base / "ray-start-worker.log",
            )
        )
        deadline = time.monotonic() + 120
        while run(ENSURE_RAY_PROCESS, env).stdout.strip().splitlines()[-1:] != ["2"]:
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(1)
        yield env, roots
    finally:
        stop(processes)
        if previous is None:
            CURRENT_CLUSTER.unlink(missing_ok=True)
        else:
            CURRENT_CLUSTER.write_text(previous)


def run(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tempfile.gettempdir(),
    )


def test_ensure_ray_joins_a_cluster_started_with_ray_start(ray_started):
    env, _ = ray_started
    done = run(ENSURE_RAY_PROCESS, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "2"  # both nodes, found without RAY_ADDRESS


def test_a_xenna_pipelines_download_reaches_every_node_of_a_ray_start_cluster(ray_started, s3, bucket, origin):
    env, roots = ray_started
    weights = os.urandom(3 << 20)
    obstore.put(s3.store(bucket), "m/model.bin", weights)

    done = run(XENNA_PIPELINE_PROCESS, env, origin.endpoint, bucket, s3.access_key_id, s3.secret_access_key)

    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"ok": True, "nodes": 2}
    for root in roots:
        assert (root / "models" / "model.bin").read_bytes() == weights
    assert origin.traffic().get_bytes_for(f"/{bucket}/m/model.bin") == len(weights)


def test_ensure_ray_starts_ray_with_rays_own_defaults_when_nothing_runs(monkeypatch):
    """A Ray that starts in the user's process belongs to the user: xfd passes nothing of its own."""
    import ray

    from xfd.runtime import distribute

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    distribute.ensure_ray()
    distribute.ensure_ray()  # the running session: nothing more
    distribute.ensure_ray("10.0.0.1:6379")
    assert calls == [((), {"address": None})]
    assert "RAY_AUTH_MODE" not in os.environ
    calls.clear()
    distribute.ensure_ray("10.0.0.1:6379")
    assert calls == [((), {"address": "10.0.0.1:6379"})]
