"""notebooks/compare_runs.ipynb runs top to bottom (nbclient, a real kernel) on the demo's multirun."""

from __future__ import annotations

import csv

from conftest import REPO, requires
from test_multirun import demo_sweep

nbclient = requires("nbclient", "dev")
nbformat = requires("nbformat", "dev")
requires("ipykernel", "dev")


def test_compare_notebook_runs_on_the_demo_sweep(tmp_path_factory, session_cache, tmp_path, monkeypatch):
    sweep = demo_sweep(tmp_path_factory, session_cache) / "sweep"
    out = tmp_path / "compare"
    monkeypatch.setenv("VISA_RUNS", str(sweep))  # the kernel inherits this process's environment
    monkeypatch.setenv("VISA_COMPARE_OUT", str(out))
    notebook = nbformat.read(REPO / "notebooks" / "compare_runs.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO / "notebooks")}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    code = [c for c in notebook.cells if c.cell_type == "code"]
    texts = ["".join(o.get("text", "") for o in c.outputs) for c in code]
    assert "4 runs; swept parameters: ['fusion.alpha', 'questions.num']" in texts[1]
    images = sum(1 for c in code for o in c.outputs if "image/png" in o.get("data", {}))
    assert images >= 4  # the pivot plot and the three dashboard plots
    computed = sum(int(r["calls/computed"]) for r in csv.DictReader(open(out / "runs.csv", newline="")))
    assert f"calls computed over the whole sweep: {computed} " in texts[6]
    assert {p.name for p in out.iterdir()} >= {
        "index.html",
        "runs.csv",
        "recall_vs_alpha.png",
        "gain.png",
        "stage_time.png",
    }
