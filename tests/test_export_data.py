"""``python -m rationale_kit export-data`` and notebook 01 on the MIMIC-format fixture
(tests/mimic_formats.py): the export equals the tables notebook 01 saves and round-trips through
the JSONL readers."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml

from mimic_formats import write_all
from rationale_kit import data
from rationale_kit.__main__ import main
from rationale_kit.cli.measures import read_docs_jsonl
from rationale_kit.core.config import PARAMS_DIR, load_profile
from rationale_kit.core.records import SPAN_COLUMNS, read_spans_jsonl


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic_export")
    keys = write_all(root / "files")
    prof = {"common": {"dataset": "mimic", "device": "cpu", "threads": 2, "seed": 3,
                       "artifacts_dir": str(root / "artifacts"), "figures_dir": str(root / "figures")},
            "data": {**keys, "credentialed": True}}
    path = root / "fixture_mimic.yaml"
    path.write_text(yaml.safe_dump(prof), encoding="utf-8")
    return path


def _read_export(out):
    lines = [json.loads(x) for x in (out / "docs.jsonl").read_text(encoding="utf-8").splitlines()]
    return pd.DataFrame(lines), read_spans_jsonl(out / "spans.jsonl", read_docs_jsonl(out / "docs.jsonl"))


def test_export_data_equals_the_canonical_tables(profile_path, tmp_path, capsys):
    out = tmp_path / "deep" / "export"
    assert main(["export-data", "--profile", str(profile_path), "--out", str(out)]) == 0
    assert "16 documents" in capsys.readouterr().out  # 10 MIMIC-IV + 6 MDACE
    docs, spans = _read_export(out)
    ds = data.load_dataset(load_profile(str(profile_path)))
    assert list(docs.columns) == data.DATASET_DOC_COLUMNS
    pd.testing.assert_frame_equal(docs, ds.docs[data.DATASET_DOC_COLUMNS].reset_index(drop=True))
    pd.testing.assert_frame_equal(spans, data.human_spans(ds)[SPAN_COLUMNS].reset_index(drop=True))
    assert len(spans) == 17 and docs.annotated.sum() == 6
    # MDACE's splits can be applied from the export alone: every span carries its admission
    lines = [json.loads(x) for x in (out / "spans.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {(r["note_id"], r["hadm_id"], r["source_note_id"]) for r in lines} == {
        ("mimic3_501", "100001", "501"), ("mimic3_900", "100002", "900"), ("mimic3_1500", "100003", "1500"),
        ("mimic3_2300", "100004", "2300"), ("mimic3_2301", "100004", "2301"), ("mimic3_2500", "100005", "2500")}
    # and the documents say which are coding documents and which MDACE's report / tuning notes
    assert set(docs.note_id[~docs.full_codes]) == set(docs.note_id[docs.annotated])
    assert docs.set_index("note_id").eval_role.to_dict()["mimic3_2301"] == "report"
    # the error path: exit 2 with the message, no traceback
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"common": {"dataset": "mimic"}, "data": {"mimic_dir": str(tmp_path / "none")}}))
    assert main(["export-data", "--profile", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "error: " in capsys.readouterr().err


@pytest.mark.notebooks
def test_series_on_the_mimic_fixture(profile_path, tmp_path):
    """Notebooks 01-08 on the MIMIC-format fixture at the smoke profile's tiny sizes (about 2.5
    minutes on 2 CPU cores); then the export equals what notebook 01 saved."""
    from rationale_kit.workbook.context import NOTEBOOKS
    from rationale_kit.workbook.runner import run_series

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tiny = yaml.safe_load((PARAMS_DIR / "smoke.yaml").read_text(encoding="utf-8"))
    prof_dict = yaml.safe_load(profile_path.read_text())
    tiny["common"].update(prof_dict["common"])
    tiny["data"] = {**prof_dict["data"], "fewshot_pool": 0}
    tiny["train"]["models"] = ["caml", "laat"]
    series = tmp_path / "fixture_series.yaml"
    series.write_text(yaml.safe_dump(tiny), encoding="utf-8")
    results = run_series(str(series), force=True, runs_dir=tmp_path / "runs")
    assert [(r["notebook"], r["status"]) for r in results] == [(n, "ok") for n in NOTEBOOKS], results
    prof = load_profile(str(series))
    saved = data.load_saved(os.path.join(prof.common.artifacts_dir, prof.name, "01_data"))
    out = tmp_path / "export"
    assert main(["export-data", "--profile", str(series), "--out", str(out)]) == 0
    docs, spans = _read_export(out)
    pd.testing.assert_frame_equal(docs, saved.docs[data.DATASET_DOC_COLUMNS].reset_index(drop=True))
    pd.testing.assert_frame_equal(spans, saved.spans[SPAN_COLUMNS].reset_index(drop=True))
    stats = pd.read_csv(os.path.join(prof.common.artifacts_dir, prof.name, "01_data", "statistics.csv"), index_col=0)
    assert stats.loc["test", "documents"] == 8 and stats.loc["test", "annotated documents"] == 6
    # notebook 02's coding table: the MIMIC-IV test documents only
    coding = pd.read_csv(os.path.join(prof.common.artifacts_dir, prof.name, "02_train", "coding_table.csv"), index_col=0)
    assert (coding["notes"] == 2).all()
    # notebook 03's design: MDACE's test admissions are the report notes, its train/val the tuning notes
    design = json.loads(open(os.path.join(prof.common.artifacts_dir, prof.name, "03_rationales",
                                          "evaluation_design.json")).read())
    assert design["report_ids"] == ["mimic3_2300", "mimic3_2301", "mimic3_501"]
    assert design["tuning_ids"] == ["mimic3_1500", "mimic3_2500", "mimic3_900"]
