"""The notebooks: committed without outputs, a parameters cell with only profile/overrides, and
the whole series executed on the tiny ``smoke`` profile through the runner (once per session, the
``smoke_series`` fixture of tests/conftest.py, shared with other test modules)."""
import ast
import json

import nbformat
import pandas as pd
import pytest

from rationale_kit.workbook.context import NOTEBOOKS, NOTEBOOKS_DIR

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
def test_series_runs_on_smoke(smoke_series):
    # the shared series (tests/conftest.py): a fresh artifacts folder, nothing resumed from earlier runs
    results = list(smoke_series.results)
    failed = [r for r in results if r["status"] not in ("ok", "skipped")]
    assert not failed, f"notebook failed: {failed}; " + "; ".join(smoke_series.explain(r["notebook"]) for r in failed)
    assert [r["notebook"] for r in results] == NOTEBOOKS
    for name in NOTEBOOKS:
        manifest = smoke_series.artifacts / name / "manifest.json"
        assert manifest.exists(), f"{name} wrote no manifest"


@pytest.mark.notebooks
def test_smoke_series_figures(smoke_series):
    smoke_series.require("01_data", "02_train", "05_faithfulness", "06_plausibility", "07_guided_learning")
    figures = smoke_series.figures
    assert (figures / "PROVENANCE.md").exists()
    for fig in ["01_dataset_overview.png", "02_learning_curves.png", "05_aopc_curves.png", "06_pi_token_f1.png", "07_tradeoff.png",
                "09_pareto.png", "09_learning_curve.png"]:
        assert (figures / fig).stat().st_size > 1000, f"figure {fig} missing or empty"


@pytest.mark.notebooks
def test_few_shot_reuses_the_guided_students(smoke_series):
    # notebook 08 reuses the students notebook 07 trained with the same settings
    students = pd.read_csv(smoke_series.path("08_few_shot", "students.csv"))
    assert (students.trained_in == "07_guided_learning").any(), students


@pytest.mark.notebooks
def test_open_questions_answered_with_verdicts(smoke_series):
    # notebook 09 answers the open questions with verdicts: the trade-off, finding (b) re-tested, thresholds
    open_v = pd.read_csv(smoke_series.path("09_open_questions", "verdicts.csv"))
    assert {"q1", "q2", "q3"} <= set(open_v.finding), open_v
    assert "Open questions beyond the paper" in (smoke_series.runs / "report.html").read_text(encoding="utf-8")


def test_smoke_replay_file_is_a_recording_of_the_local_model():
    """The answers the shared smoke series replays (tests/conftest.py) were recorded from the
    bundled local model by tools/record_smoke_replay.py: one per prompt, none written by hand."""
    from conftest import SMOKE_REPLAY
    from rationale_kit.rationales import llm

    rows = [json.loads(line) for line in SMOKE_REPLAY.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert rows, f"{SMOKE_REPLAY} is empty: run tools/record_smoke_replay.py"
    assert {(r["backend"], r["model"]) for r in rows} == {("local", llm.LocalBackend().model)}
    assert len({r["sha"] for r in rows}) == len(rows) and all(isinstance(r["text"], str) for r in rows)
