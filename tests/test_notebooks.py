"""The notebooks run headless from top to bottom and are stored without outputs.

Each notebook makes its own small simulated data set, so nothing is downloaded. The
kernel is the interpreter running pytest (a kernel spec written to a temporary
``JUPYTER_PATH``), so the notebooks import the installed packages of this checkout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "lifecycle-tests"
TIMEOUT_S = 300  # per cell; a notebook runs in well under a minute on a 2-core machine

CASES = [
    # Events, funnel depth from the feature engine, stage mix, rates by true stage.
    pytest.param("01-explore-events.ipynb", id="01-explore-events"),
    # A full training run logged to MLflow and registered, metrics read back,
    # plots from customer_lifecycle.training.plots, gain importances and TreeSHAP from the bundle.
    pytest.param("02-train-and-evaluate.ipynb", id="02-train-and-evaluate"),
    # Trains a model, batch scoring with score_file, segments and the playbook's actions.
    pytest.param("03-score-and-act.ipynb", id="03-score-and-act"),
]


def test_every_notebook_has_a_case() -> None:
    stored = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert stored == sorted(str(c.values[0]) for c in CASES)


@pytest.mark.parametrize("name", CASES)
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{name}: cells {dirty} have outputs; clear them before committing"


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernel spec for this interpreter; a temporary MLflow store, TMPDIR and working dir."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lifecycle tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # The notebooks' own temp dirs (OUT) then land under tmp_path and are cleaned up.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_notebook_runs(name: str, kernel_env: Path) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=TIMEOUT_S,
        resources={"metadata": {"path": str(kernel_env)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code_cells), f"{name}: not every cell ran"
    # Everything a notebook writes goes to its temp dir or the tracking store.
    assert not any(kernel_env.iterdir()), f"{name} wrote {sorted(kernel_env.iterdir())}"
