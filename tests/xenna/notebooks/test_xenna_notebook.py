"""The Xenna example notebook, executed top to bottom with cosmos-xenna installed.

It starts its own simulated cluster, so it runs before the shared-cluster tests (this directory sorts
before the `test_*.py` modules beside it).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[3] / "examples" / "notebooks" / "xenna" / "xenna_stages.ipynb"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def test_the_xenna_notebook_runs_top_to_bottom(tmp_path: Path):
    import ray

    assert not ray.is_initialized(), "run the notebook before (or apart from) the shared-cluster tests"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        store_widget_state=True,
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    bars = [w["state"] for w in state.values() if w.get("model_name") == "FloatProgressModel"]
    assert any(b.get("bar_style") == "success" and b.get("value") == b.get("max") for b in bars)
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "ObjectDownloadRequest" in text and "***" in text
