"""The notebooks: committed without outputs, a parameters cell with only profile/overrides, and
the whole series executed on the tiny ``smoke`` profile through the runner."""
import ast
import os
from pathlib import Path

import nbformat
import pytest

from rationale_kit.pipeline import NOTEBOOKS, NOTEBOOKS_DIR, ROOT, run_series

NOTEBOOK_FILES = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


def test_every_notebook_of_the_series_exists():
    assert [p.stem for p in NOTEBOOK_FILES] == NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name} cell {i} has outputs: strip them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_parameters_cell_holds_only_profile_and_overrides(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    names = {t.id for node in ast.parse(tagged[0].source).body for t in node.targets}
    assert names == {"profile", "overrides"}


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_cells_fit_on_a_screen(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert len(cell.source.splitlines()) <= 40, f"{path.name} cell {i} is longer than a screen: move it to rationale_kit"


@pytest.mark.notebooks
def test_series_runs_on_smoke(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = run_series("smoke", force=True, runs_dir=tmp_path / "runs")
    failed = [r for r in results if r["status"] not in ("ok", "skipped")]
    assert not failed, f"notebook failed: {failed}"
    assert [r["notebook"] for r in results] == NOTEBOOKS
    for name in NOTEBOOKS:
        assert (ROOT / "artifacts" / "smoke" / name / "manifest.json").exists()
    assert (ROOT / "figures" / "smoke" / "PROVENANCE.md").exists()
