"""Every notebook in notebooks/ runs top to bottom (nbclient, a real kernel) with small outputs.

A notebook names the data files it needs, relative to the repository root, in its metadata
(``{"leadscore": {"requires": ["../shared/data/.../file.csv"]}}``); it is skipped, with the
reason, where one is absent. Notebooks run with the repository root as working directory, in
a fresh MLflow store (``MLFLOW_TRACKING_URI`` in a temporary directory), with
``LEADSCORE_NOTEBOOK_SMALL=1`` so that a notebook can shrink its data for the test, and with
``TMPDIR`` in the test's own temporary directory: the retraining notebook works in a
``tempfile.mkdtemp`` of its own, which would otherwise stay behind after every run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
MAX_OUTPUT_BYTES = 300_000  # "small outputs": a few tables and plots


def _missing_inputs(nb) -> list[str]:
    required = nb.metadata.get("leadscore", {}).get("requires", [])
    return [r for r in required if not (REPO / r).exists()]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_with_small_outputs(path: Path, tmp_path: Path, monkeypatch) -> None:
    nb = nbformat.read(path, as_version=4)
    missing = _missing_inputs(nb)
    if missing:
        pytest.skip(f"{path.name} needs {missing} (relative to the repo root), absent here")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("LEADSCORE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a notebook's own temporary files go with the test's
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    size = len(json.dumps(outputs))
    assert size < MAX_OUTPUT_BYTES, f"{path.name}: outputs of {size:,} bytes are not small"


def test_notebooks_on_outside_data_are_committed_without_outputs() -> None:
    """A notebook reading data from outside the repository (unknown licence) is stored without
    outputs: they could copy rows of that data into the repository."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        if not any(r.startswith("..") for r in nb.metadata.get("leadscore", {}).get("requires", [])):
            continue
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("outputs")]
        assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"
