""" "Interrupt kernel" during a distribution in a real notebook kernel, then the same cell run again.

nbclient interrupts the kernel (SIGINT, as Jupyter's button does) when a cell outlives its timeout; the
cell tagged ``raises-exception`` may end in an error and execution goes on. Like the example notebooks, this
one starts its own simulated cluster, so it runs before the shared-cluster tests.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

SETUP = """
import os, tempfile, time
import obstore
import xfd
from xfd.nodes import localize
from xfd.runtime import LocalCluster
from xfd.testing import CountingProxy, LocalS3

s3 = LocalS3().start()
bucket = s3.create_bucket("models")
weights = os.urandom(8 << 20)
obstore.put(bucket, "model.bin", weights)
origin = CountingProxy(s3.endpoint).start()
cluster = LocalCluster(os.path.join(tempfile.mkdtemp(prefix="xfd-interrupt-"), "nodes"), num_nodes=2).start()
manifest = (
    xfd.Manifest.builder()
    .store("models", "s3://models", **s3.manifest_options(origin.endpoint))
    .settings(chunk_size="1MiB", node_parallelism=2)
    .object("models", "model.bin", to="/models/model.bin")
    .build()
)
origin.throttle(256 * 1024)  # 8 MiB: half a minute, far longer than the cell is given
"""
RUN = """
report = manifest.distribute()
"""
AFTER = """
interrupted_at = time.monotonic()
while origin.responses_in_flight():  # the origin stops serving the interrupted run
    assert time.monotonic() - interrupted_at < 30, "the origin is still serving the interrupted run"
    time.sleep(0.05)
for node in cluster.nodes:
    assert not localize("/models/model.bin", node.root).exists(), "a partial file was published"
origin.throttle(None)
report = manifest.distribute()  # the same cell, run again
assert report.ok, report.summary()
for node in cluster.nodes:
    assert localize("/models/model.bin", node.root).read_bytes() == weights
print("again:", report)
"""
TEARDOWN = """
cluster.shutdown()
origin.stop()
s3.stop()
"""
INTERRUPT_AFTER_S = 15  # the agents start and bytes flow; the run is far from done


def test_interrupt_kernel_cancels_the_run_and_the_cell_runs_again(tmp_path: Path):
    import ray

    assert not ray.is_initialized(), "run the notebook tests before (or apart from) the shared-cluster tests"
    notebook = nbformat.v4.new_notebook()
    run = nbformat.v4.new_code_cell(RUN, metadata={"tags": ["raises-exception"]})
    notebook.cells = [
        nbformat.v4.new_code_cell(SETUP),
        run,
        nbformat.v4.new_code_cell(AFTER),
        nbformat.v4.new_code_cell(TEARDOWN),
    ]
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        timeout_func=lambda cell: INTERRUPT_AFTER_S if cell is run else 300,
        interrupt_on_timeout=True,
    )
    client.execute()

    errors = [o for o in run.outputs if o.get("output_type") == "error"]
    assert [e["ename"] for e in errors] == ["KeyboardInterrupt"], run.outputs
    after = notebook.cells[2].outputs
    assert not [o for o in after if o.get("output_type") == "error"], after
    assert "again: ok:" in "".join(o.get("text", "") for o in after)
