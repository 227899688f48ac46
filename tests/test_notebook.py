"""notebooks/analysis.ipynb runs end to end against a tiny experiment, so it cannot rot."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from conftest import REPO, copy_job


def test_the_analysis_notebook_runs_and_rebuilds_the_headline_table(finished_job, tmp_path, monkeypatch):  # noqa: F811
    copy_job(finished_job, tmp_path)
    monkeypatch.setenv("MOELAB_EXPERIMENT", str(tmp_path / "experiment"))
    notebook = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "4 runs, 4 finished" in text
    tables = [o["data"]["text/html"] for o in outputs if o.output_type == "execute_result" and "text/html" in o.get("data", {})]
    assert any("moe_topk" in t and "vs baseline" in t for t in tables)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2
