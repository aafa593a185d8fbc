"""Every example notebook, executed top to bottom in a fresh kernel, failing on any error.

The notebooks start their own simulated cluster, so they must not run while this session's shared
cluster is up (two clusters on one machine collide on fixed ports). This directory sorts before the
`test_*.py` modules that start it, so a plain `pytest` runs these first.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[2] / "examples" / "notebooks").glob("*.ipynb"))
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def test_there_are_example_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "builder", "node_failure", "operations"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path):
    import ray

    assert not ray.is_initialized(), "run the notebook tests before (or apart from) the shared-cluster tests"
    notebook = nbformat.read(path, as_version=4)
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
    if path.stem in ("quickstart", "builder"):
        # The distribution rendered as a live widget, and its final state was saved with the notebook.
        state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
        bars = [w["state"] for w in state.values() if w.get("model_name") == "FloatProgressModel"]
        assert bars, "no progress widget was rendered"
        assert any(b.get("bar_style") == "success" and b.get("value") == b.get("max") for b in bars), json.dumps(bars)[
            :500
        ]
