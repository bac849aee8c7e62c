"""The notebooks: committed without outputs, a parameters cell with only profile/overrides, and
the whole series executed on the tiny ``smoke`` profile through the runner."""
import ast
import os

import nbformat
import pandas as pd
import pytest

from rationale_kit.workbook.context import NOTEBOOKS, NOTEBOOKS_DIR
from rationale_kit.workbook.runner import run_series

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
    # a fresh artifacts folder: nothing is resumed from earlier runs
    overrides = {"common": {"artifacts_dir": str(tmp_path / "artifacts"), "figures_dir": str(tmp_path / "figures")}}
    results = run_series("smoke", force=True, runs_dir=tmp_path / "runs", overrides=overrides)
    failed = [r for r in results if r["status"] not in ("ok", "skipped")]
    assert not failed, f"notebook failed: {failed}"
    assert [r["notebook"] for r in results] == NOTEBOOKS
    for name in NOTEBOOKS:
        manifest = tmp_path / "artifacts" / "smoke" / name / "manifest.json"
        assert manifest.exists(), f"{name} wrote no manifest"
    figures = tmp_path / "figures" / "smoke"
    assert (figures / "PROVENANCE.md").exists()
    for fig in ["01_dataset_overview.png", "02_learning_curves.png", "05_aopc_curves.png", "06_pi_token_f1.png", "07_tradeoff.png",
                "09_pareto.png", "09_learning_curve.png"]:
        assert (figures / fig).stat().st_size > 1000, f"figure {fig} missing or empty"
    # the run report collects the tables in the paper's order
    html = (tmp_path / "runs" / "report.html").read_text(encoding="utf-8")
    assert (tmp_path / "runs" / "report.md").exists()
    assert "coding" in html.lower() and "plausibility" in html.lower() and "data:image/png;base64" in html
    # notebook 08 reuses the students notebook 07 trained with the same settings
    students = pd.read_csv(tmp_path / "artifacts" / "smoke" / "08_few_shot" / "students.csv")
    assert (students.trained_in == "07_guided_learning").any(), students
    # notebook 09 answers the open questions with verdicts: the trade-off, finding (b) re-tested, thresholds
    open_v = pd.read_csv(tmp_path / "artifacts" / "smoke" / "09_open_questions" / "verdicts.csv")
    assert {"q1", "q2", "q3"} <= set(open_v.finding), open_v
    assert "Open questions beyond the paper" in html
