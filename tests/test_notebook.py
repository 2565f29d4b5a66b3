import os

import nbformat
from nbclient import NotebookClient

from .conftest import REPO


def test_notebook_runs_end_to_end_on_a_small_subset(small_data, tmp_path, monkeypatch):
    nb = nbformat.read(REPO / "notebooks" / "chest_xray_classification.ipynb", as_version=4)
    monkeypatch.setenv("PNEUMOSCAN_DATA", str(small_data))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "src"),
                                                      os.environ.get("PYTHONPATH", "")]))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on error
    assert (tmp_path / "runs" / "notebook" / "report" / "report.html").is_file()
    outputs = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "auroc" in outputs and "95% CI" in outputs
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # sample grid, training curves, ROC, reliability inline
