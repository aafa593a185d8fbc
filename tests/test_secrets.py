"""A canary secret, used as a store credential for real distributions (one that succeeds, ones that fail),
must appear nowhere a user or an operator could read it: reprs, plans, reports, progress snapshots,
errors, the driver's output, Ray's logs of every process on every node, xfd's files on the nodes."""

from __future__ import annotations

import os
from pathlib import Path

import obstore
import pytest

from xfd import Manifest
from xfd.errors import DistributionError, XfdError

pytestmark = pytest.mark.cluster
CANARY = "CANARY-9d2e-do-not-print"
CANARY_TOKEN = "CANARY-TOKEN-77aa-do-not-print"


def manifest_with_canary(s3, bucket, endpoint, to: str) -> Manifest:
    options = s3.manifest_options(endpoint) | {"secret_access_key": CANARY, "session_token": CANARY_TOKEN}
    return (
        Manifest.builder()
        .store("m", f"s3://{bucket}/root", **options)
        .settings(chunk_size="1MiB")
        .object("m", "model.bin", to=to)
        .build()
    )


def test_a_canary_secret_appears_nowhere(cluster, s3, bucket, origin, capfd, caplog):
    obstore.put(s3.store(bucket), "root/model.bin", os.urandom(3 * (1 << 20)))
    seen: list[str] = []
    manifest = manifest_with_canary(s3, bucket, origin.endpoint, "/secrets/model.bin")
    plan = manifest.plan()

    report = manifest.distribute(plan=plan, progress=lambda snapshot: seen.append(repr(snapshot)))
    assert report.ok, report.summary()
    seen += [
        repr(manifest),
        manifest._repr_html_(),
        plan.to_json(),
        repr(plan),
        report.summary(),
        repr(report),
        report._repr_html_(),
    ]

    failing = manifest_with_canary(s3, bucket, origin.endpoint, "/secrets/again/model.bin")
    failing_plan = failing.plan()
    origin.refuse(f"/{bucket}/root/model.bin", 403)  # the origin now denies every read: a failed run
    with pytest.raises(DistributionError) as raised:
        failing.distribute(plan=failing_plan, progress=None)
    failed = raised.value.report
    assert not failed.ok
    assert any("refused access" in f for f in failed.failures), failed.summary()
    seen += [str(raised.value), failed.summary(), repr(failed)]
    with pytest.raises(XfdError) as refused:
        failing.plan()  # planning against a denying origin fails too, with a message
    seen.append(str(refused.value))

    out, err = capfd.readouterr()
    seen += [out, err, caplog.text]
    leaks = [text[:200] for text in seen if CANARY in text or CANARY_TOKEN in text]
    assert not leaks, leaks
    assert any(path.is_file() for path in ray_log_dir().rglob("*")), "no Ray log to search"
    assert not files_holding_the_canary(ray_log_dir()), "a Ray log holds the secret"
    assert not files_holding_the_canary(*(node.root for node in cluster.nodes)), "a node file holds the secret"


def ray_log_dir() -> Path:
    import ray

    session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    return session / "logs"


def files_holding_the_canary(*roots: Path) -> list[Path]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if CANARY.encode() in data or CANARY_TOKEN.encode() in data:
                    found.append(path)
    return found
