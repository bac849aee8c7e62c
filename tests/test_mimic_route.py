"""The MIMIC route on files in the published formats (tests/mimic_formats.py): MIMIC-IV for
training, MDACE's Inpatient ICD-10 admissions with MIMIC-III NOTEEVENTS text for rationale
evaluation; counts checked against the hand-worked expectations of the fixture."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mimic_formats import ADDENDUM_B, REPORT_A, REPORT_B, REPORT_C, write_all
from rationale_kit import data
from rationale_kit.core.config import load_profile
from rationale_kit.core.records import DataError
from rationale_kit.data.mdace import MDACE_SPLIT_FILES


@pytest.fixture(scope="module")
def fixture_keys(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("mimic_formats"))


def _profile(keys, **extra):
    return load_profile("mimic", {"common": {"device": "cpu", "threads": 2}, "data": {**keys, "mimic_dir": None, **extra}})


def test_map_code_version_and_trim_rules():
    known = {"N18.3", "F32.9", "I10", "S02.19XA"}
    assert data.map_code_version("I10", known) == ("I10", "same")
    assert data.map_code_version("N18.30", known) == ("N18.3", "prefix")
    assert data.map_code_version("N18.32", known) == ("N18.3", "prefix")
    assert data.map_code_version("F32.A", known) == ("F32.9", "table")
    assert data.map_code_version("Z99.11", known) == ("Z99.11", "unmapped")
    text = "1. Hypertension.\n, x"
    assert data.trim_span(text, 2, 17, "edges") == (3, 15)  # " Hypertension.\n" -> "Hypertension"
    assert data.trim_span(text, 3, 16, "edges") == (3, 15)
    # Edin et al. 2024: looks at text[end] (the character after the span) and text[start], one step each
    assert data.trim_span(text, 3, 16, "edin") == (3, 15)  # text[16] == "\n" -> end - 1
    # on half-open offsets that rule cuts a real character when the next one is punctuation:
    # " Hypertension" (2, 15) is followed by "." -> end 14 ("Hypertensio"); the default "edges" does not
    assert data.trim_span(text, 2, 15, "edin") == (3, 14)
    assert data.trim_span(text, 2, 15, "edges") == (3, 15)
    assert data.trim_span(text, 3, 16, "none") == (3, 16)
    assert data.trim_span(",;", 0, 2, "edges") == (2, 2)


def test_mimiciv_from_separate_hosp_and_note_folders(fixture_keys):
    ds = data.load_mimic(None, fixture_keys["mimic_split_file"], min_code_count=2,
                         hosp_dir=fixture_keys["mimic_hosp_dir"], note_dir=fixture_keys["mimic_note_dir"])
    counts = ds.docs.split.value_counts().to_dict()
    assert counts == {"train": 6, "val": 2, "test": 2}
    assert ds.report["skipped"]["diagnosis rows with icd_version 9"] == 3
    assert ds.report["skipped"]["procedure rows with icd_version 9"] == 1
    assert ds.report["skipped"]["admissions without ICD-10 codes"] == 1
    assert ds.report["split file admissions without a kept document"] == 1
    assert ds.docs.set_index("note_id").loc["20000004", "codes"] == ["N18.3", "E11.9", "F32.9", "0DTJ4ZZ"]
    with pytest.raises(DataError, match=r"set data.mimic_dir .* or both data.mimic_hosp_dir and data.mimic_note_dir"):
        data.load_mimic(None, hosp_dir=fixture_keys["mimic_hosp_dir"])


def test_mdace_on_mimic3_counts(fixture_keys):
    ds = data.load_dataset(_profile(fixture_keys))
    docs = ds.docs.set_index("note_id")
    # documents per split: MIMIC-IV 6/2/2, plus 6 MDACE discharge-summary reports (5 admissions, one
    # with two reports) as annotated test documents (evaluation only: never trained on)
    assert ds.docs.split.value_counts().to_dict() == {"train": 6, "test": 8, "val": 2}
    assert sorted(ds.docs.note_id[ds.docs.annotated]) == ["mimic3_1500", "mimic3_2300", "mimic3_2301", "mimic3_2500",
                                                          "mimic3_501", "mimic3_900"]
    assert docs.loc["mimic3_900", "text"] == REPORT_B  # the report, not the addendum (ROW_ID 1200 < "900" as strings)
    assert docs.loc["mimic3_501", "codes"] == ["I10", "N18.3", "F32.9", "Z99.11"]
    assert docs.loc["mimic3_900", "codes"] == ["J44.9", "E11.9", "0DTJ4ZZ"]
    assert docs.loc["mimic3_1500", "codes"] == ["E11.9", "I10"]
    rep = ds.report["mdace"]
    # 5 Inpatient ICD-10 files; 32 annotations: 5 + (1 + 3) + (3 + 1) + (2 + 2) + (5 + 10 on other notes)
    assert rep["read"]["files"] == 5 and rep["read"]["annotations"] == 32
    sk = rep["skipped"]
    # 5 Inpatient ICD-9 copies; Profee ICD-10 and Profee ICD-9 files
    assert sk["ICD-9 files"] == 5 and sk["Profee files (professional-fee coding)"] == 2
    assert sk["CPT annotations"] == 1
    assert sk["ICD-9 annotations"] == 1  # E860 (ICD-9-CM) inside 100005's ICD-10 file
    assert sk["addenda (description Addendum) of an admission"] == 1 and sk["annotations on addenda"] == 1
    # 100003's progress note and 100005's ten notes of every other category (one an ECG "Report")
    assert sk["notes other than discharge summaries"] == 11
    assert sk["duplicate spans (same note, code and offsets, after mapping and trimming)"] == 1
    assert not any("addenda" in k and "report" in k.lower() for k in sk)  # a second report is no addendum
    # admission 100004 has two full reports (like MDACE's 142712): both are documents
    assert rep["read"]["further discharge-summary reports of an admission (used as their own documents)"] == 1
    assert docs.loc["mimic3_2300", "codes"] == ["I10", "0DTJ4ZZ"] and docs.loc["mimic3_2301", "codes"] == ["J44.9", "F32.9"]
    # 14 = 1 (501) + 3 (900) + 3 (1500) + 2 (2300) + 2 (2301) + 3 (2500: E11.9, K21.9, I10)
    assert rep["code versions"] == {"annotations whose code MIMIC-IV has": 14, "annotations whose code is prefix": 1,
                                    "annotations whose code is table": 1, "annotations whose code is unmapped": 2,
                                    "mapping used": {"F32.A": "F32.9", "N18.30": "N18.3"}}
    # K21.9: in MIMIC-IV's tables on one admission (rare) - mapped to itself, then unseen
    assert rep["codes no training document carries"]["codes"] == {"B2001ZZ": 1, "K21.9": 1, "Z99.11": 1}
    assert rep["trimming"] == {"rule": "edges", "spans trimmed": 5}
    assert rep["kept"]["documents"] == 6 and rep["kept"]["spans"] == 17
    assert {k: v for k, v in rep["kept"].items() if k.startswith("MDACE")} == {
        "MDACE test documents": 3, "MDACE train documents": 2, "MDACE val documents": 1,
        "MDACE test admissions": 2, "MDACE train admissions": 2, "MDACE val admissions": 1}
    # every span is checked against the text; trimmed edges hold no punctuation or space
    texts = dict(zip(ds.docs.note_id, ds.docs.text))
    covered = {(r.note_id, r.code): texts[r.note_id][r.start:r.end] for r in ds.spans.itertuples()}
    assert covered[("mimic3_501", "I10")] == "Hypertension"
    assert covered[("mimic3_501", "N18.3")] == "Chronic kidney disease stage 3"
    assert covered[("mimic3_501", "F32.9")] == "Depression"
    assert covered[("mimic3_900", "E11.9")] == "diabetes"
    assert covered[("mimic3_1500", "I10")] == "hypertension"
    assert set(ds.spans.source_note_id) == {"501", "900", "1500", "2300", "2301", "2500"}
    # the admission travels with every MDACE span
    assert dict(zip(ds.spans.source_note_id, ds.spans.hadm_id)) == {
        "501": "100001", "900": "100002", "1500": "100003", "2300": "100004", "2301": "100004", "2500": "100005"}
    assert ds.report["splits"]["test"] == {"documents": 8, "annotated documents": 6, "spans": 17}
    assert ds.docs.credentialed.all()
    # MDACE's own splits: its test admissions are report notes, train/val tuning notes; MDACE
    # documents never count in coding measurement
    roles = dict(zip(ds.docs.note_id, ds.docs.eval_role))
    assert {n: r for n, r in roles.items() if r} == {"mimic3_501": "report", "mimic3_2300": "report", "mimic3_2301": "report",
                                                     "mimic3_900": "tuning", "mimic3_1500": "tuning", "mimic3_2500": "tuning"}
    assert set(ds.docs.note_id[~ds.docs.full_codes]) == set(ds.docs.note_id[ds.docs.annotated])
    assert ds.report["kept"]["documents"] == 16 == len(ds.docs)
    assert ds.report["kept"]["MIMIC-IV documents (coding)"] == 10
    assert ds.report["kept"]["MDACE documents (rationale evaluation)"] == 6
    # codes table: MIMIC-IV descriptions kept; the unseen code has n_train 0
    codes = ds.codes.set_index("code")
    assert codes.loc["I10", "description"] == "Essential (primary) hypertension"
    assert codes.loc["Z99.11", "n_train"] == 0 and codes.loc["I10", "n_train"] == 4


def test_unseen_codes_dropped_and_edin_trim(fixture_keys):
    ds = data.load_dataset(_profile(fixture_keys, mdace_unseen_codes="drop", mdace_trim="edin"))
    assert "Z99.11" not in set(ds.spans.code)
    assert ds.docs.set_index("note_id").loc["mimic3_501", "codes"] == ["I10", "N18.3", "F32.9"]
    rep = ds.report["mdace"]
    # Z99.11 (no MIMIC-IV code), K21.9 (rare in MIMIC-IV), B2001ZZ (no MIMIC-IV code)
    assert rep["skipped"]["annotations of codes no training document carries (dropped)"] == 3
    texts = dict(zip(ds.docs.note_id, ds.docs.text))
    i10 = ds.spans[(ds.spans.note_id == "mimic3_501") & (ds.spans.code == "I10")].iloc[0]
    # Edin's rule looks one character past the half-open end ("\n" after "Hypertension.")
    assert texts["mimic3_501"][i10.start:i10.end] == "Hypertension"
    assert REPORT_A and ADDENDUM_B and REPORT_C


def test_span_source_errors_at_load_time(fixture_keys, tmp_path):
    with pytest.raises(DataError, match=r"data.mdace_dir is set but data.mimic3_noteevents is not"):
        data.load_dataset(_profile(fixture_keys, mimic3_noteevents=None))
    with pytest.raises(DataError, match=r"without rationale spans: set data.mdace_dir .* or data.spans_jsonl"):
        data.load_dataset(_profile(fixture_keys, mdace_dir=None, mimic3_noteevents=None))
    with pytest.raises(DataError, match=r"MDACE folder not found"):
        data.load_dataset(_profile(fixture_keys, mdace_dir=str(tmp_path / "nowhere")))
    empty = tmp_path / "empty_mdace"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no MDACE span could be used"):
        data.load_dataset(_profile(fixture_keys, mdace_dir=str(empty)))
    with pytest.raises(DataError, match=r"NOTEEVENTS.csv: file not found \(data.mimic3_noteevents"):
        data.load_dataset(_profile(fixture_keys, mimic3_noteevents=str(tmp_path / "NOTEEVENTS.csv")))


def test_mdace_note_missing_from_noteevents(fixture_keys, tmp_path):
    import gzip

    import pandas as pd
    ne = pd.read_csv(fixture_keys["mimic3_noteevents"], dtype=str, keep_default_na=False)
    path = tmp_path / "NOTEEVENTS.csv"
    ne[ne.ROW_ID != "900"].to_csv(path, index=False)
    with pytest.raises(DataError, match=r"100002-ICD-10\.json: note_id 900 \(hadm_id 100002\) is not a ROW_ID of .*NOTEEVENTS\.csv"):
        data.load_dataset(_profile(fixture_keys, mimic3_noteevents=str(path)))
    ne2 = ne.copy()
    ne2.loc[ne2.ROW_ID == "900", "HADM_ID"] = "199999"
    ne2.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"hadm_id 100002 but .*NOTEEVENTS\.csv line \d+ \(ROW_ID 900\) has HADM_ID 199999"):
        data.load_dataset(_profile(fixture_keys, mimic3_noteevents=str(path)))
    assert gzip  # gzip and plain CSV are both read


# ---- the MDACE rules: the project's defaults and Edin et al. 2024's preset ----------------------
def _counts(ds):
    rep = ds.report["mdace"]
    return {k: v for k, v in rep["skipped"].items()}, rep["kept"], {n: cs for n, cs in zip(ds.docs.note_id, ds.docs.codes)
                                                                     if n.startswith("mimic3_")}


def test_both_presets_on_the_fixture(fixture_keys):
    """Counts per rule, worked out by hand from tests/mimic_formats.py, under ``mdace_preset``
    ``project`` (the defaults) and ``edin``; ``max_words`` 40 puts one span of 100005's report (the
    last "hypertension", word 46) past the cut."""
    project = data.load_dataset(_profile(fixture_keys, max_words=40))
    edin = data.load_dataset(_profile(fixture_keys, max_words=40, mdace_preset="edin"))
    sk, kept, codes = _counts(project)
    assert project.report["mdace"]["rules"] == {"notes": "reports", "code_systems": "cm_pcs", "known_codes": "all",
                                                "map_per_system": "True", "unseen": "keep", "trim": "edges",
                                                "beyond_cut": "keep", "split": "mdace"}
    assert sk == {"CPT annotations": 1, "ICD-9 annotations": 1, "ICD-9 files": 5, "Profee files (professional-fee coding)": 2,
                  "addenda (description Addendum) of an admission": 1, "annotations on addenda": 1,
                  "notes other than discharge summaries": 11, "annotations on notes other than discharge summaries": 11,
                  "duplicate spans (same note, code and offsets, after mapping and trimming)": 1}
    assert (kept["documents"], kept["spans"]) == (6, 17)
    assert codes == {"mimic3_501": ["I10", "N18.3", "F32.9", "Z99.11"], "mimic3_900": ["J44.9", "E11.9", "0DTJ4ZZ"],
                     "mimic3_1500": ["E11.9", "I10"], "mimic3_2300": ["I10", "0DTJ4ZZ"], "mimic3_2301": ["J44.9", "F32.9"],
                     "mimic3_2500": ["E11.9", "K21.9", "B2001ZZ", "I10"]}

    sk, kept, codes = _counts(edin)
    assert edin.report["mdace"]["rules"]["notes"] == "discharge" and edin.report["mdace"]["preset"] == "edin"
    assert sk == {"CPT annotations": 1, "ICD-9 annotations": 1, "ICD-9 files": 5, "Profee files (professional-fee coding)": 2,
                  "notes other than discharge summaries": 11, "annotations on notes other than discharge summaries": 11,
                  # 0DTJ4ZZ of 900 and of 2300, B2001ZZ of 2500
                  "ICD-10-PCS annotations (mdace_code_systems: cm)": 3,
                  # Z99.11 (no MIMIC-IV code) and K21.9 (MIMIC-IV has it on one admission: not a target)
                  "annotations of codes no training document carries (dropped)": 2,
                  "spans starting after the first data.max_words words (mdace_beyond_cut: drop)": 1,
                  "duplicate spans (same note, code and offsets, after mapping and trimming)": 1}
    assert edin.report["mdace"]["read"]["discharge-summary addenda (used as their own documents)"] == 1
    # 7 documents (the addendum 1200 is one), 3 + 2 + 1 + 2 + 1 + 2 + 1 spans
    assert (kept["documents"], kept["spans"]) == (7, 12)
    assert codes == {"mimic3_501": ["I10", "N18.3", "F32.9"], "mimic3_900": ["J44.9", "E11.9"], "mimic3_1200": ["I10"],
                     "mimic3_1500": ["E11.9", "I10"], "mimic3_2300": ["I10"], "mimic3_2301": ["J44.9", "F32.9"],
                     "mimic3_2500": ["E11.9"]}
    assert {k: v for k, v in kept.items() if k.startswith("MDACE") and k.endswith("documents")} == {
        "MDACE test documents": 3, "MDACE train documents": 3, "MDACE val documents": 1}
    texts = dict(zip(edin.docs.note_id, edin.docs.text))
    covered = {(r.note_id, r.code): texts[r.note_id][r.start:r.end] for r in edin.spans.itertuples()}
    # Edin's rule: one character each side, judged on text[end] and text[start]
    assert covered[("mimic3_501", "N18.3")] == "Chronic kidney disease stage 3,"
    assert covered[("mimic3_501", "F32.9")] == "Depression"
    # ... which cuts a real letter when the character after the half-open span is a space (the
    # addendum's "hypertension noted"): why the project's default is "edges"
    assert covered[("mimic3_1200", "I10")] == "hypertensio" and "hypertension noted" in ADDENDUM_B
    # the MIMIC-IV coding documents are the same under both presets
    mimic4 = lambda ds: ds.docs[ds.docs.full_codes].reset_index(drop=True)
    assert mimic4(project).equals(mimic4(edin))


def test_each_mdace_option_alone(fixture_keys):
    # one shared known-code set: the procedure code B2001ZZ maps to the diagnosis B20 (its prefix)
    shared = data.load_dataset(_profile(fixture_keys, mdace_map_per_system=False))
    assert shared.report["mdace"]["code versions"]["mapping used"]["B2001ZZ"] == "B20"
    assert "B20" in shared.docs.set_index("note_id").loc["mimic3_2500", "codes"]
    # codes of the kept documents only: K21.9 (rare in MIMIC-IV) and B2001ZZ are then "unmapped"
    kept = data.load_dataset(_profile(fixture_keys, mdace_known_codes="kept")).report["mdace"]["code versions"]
    assert kept["annotations whose code the kept MIMIC-IV documents have"] == 13
    assert kept["annotations whose code is unmapped"] == 3
    # one report per admission: 100004's second report is skipped and named as a report
    first = data.load_dataset(_profile(fixture_keys, mdace_notes="first_report"))
    assert "mimic3_2301" not in set(first.docs.note_id)
    assert first.report["mdace"]["skipped"][
        "further discharge-summary reports of an admission (first_report: only the first used)"] == 1
    assert first.report["mdace"]["skipped"]["annotations on further discharge-summary reports"] == 2
    # the hashed design: no role fixed by the data set
    hashed = data.load_dataset(_profile(fixture_keys, mdace_split="hashed"))
    assert set(hashed.docs.eval_role) == {""}
    # an option set explicitly wins over the preset
    edin_keep = data.load_dataset(_profile(fixture_keys, mdace_preset="edin", mdace_unseen_codes="keep"))
    assert edin_keep.report["mdace"]["rules"]["unseen"] == "keep" and edin_keep.report["mdace"]["rules"]["trim"] == "edin"


def test_mdace_split_files(fixture_keys, tmp_path):
    splits = data.read_mdace_splits(Path(fixture_keys["mdace_dir"]).parent / "splits" / "Inpatient")
    assert splits == {100002: "train", 100005: "train", 100003: "val", 100001: "test", 100004: "test"}
    with pytest.raises(DataError, match=r"MDace-ev-train.csv: MDACE split file not found \(data.mdace_splits_dir"):
        data.load_dataset(_profile(fixture_keys, mdace_splits_dir=str(tmp_path)))
    for name, fname in MDACE_SPLIT_FILES.items():
        (tmp_path / fname).write_text({"train": "100002\n100005\n", "val": "100003\n", "test": "100001\n100x04\n"}[name])
    with pytest.raises(DataError, match=r"MDace-ev-test.csv line 2: hadm_id must be an integer"):
        data.read_mdace_splits(tmp_path)
    (tmp_path / "MDace-ev-test.csv").write_text("100001\n100003\n")
    with pytest.raises(DataError, match=r"MDace-ev-test.csv line 2: hadm_id 100003 is also in MDace-ev-val.csv line 1"):
        data.read_mdace_splits(tmp_path)
    # an admission in no split file is counted and skipped
    (tmp_path / "MDace-ev-test.csv").write_text("100001\n")
    ds = data.load_dataset(_profile(fixture_keys, mdace_splits_dir=str(tmp_path)))
    assert ds.report["mdace"]["skipped"]["discharge summaries of admissions in none of MDACE's split files"] == 2
    assert "mimic3_2300" not in set(ds.docs.note_id)


def test_evaluation_design_follows_mdace_splits(fixture_keys):
    from rationale_kit.metrics.evaluation import make_design

    ds = data.load_dataset(_profile(fixture_keys))
    design = make_design(ds.docs, tuning_fraction=0.25)
    assert design.report_ids == ("mimic3_2300", "mimic3_2301", "mimic3_501")
    assert design.tuning_ids == ("mimic3_1500", "mimic3_2500", "mimic3_900")
    hashed = make_design(data.load_dataset(_profile(fixture_keys, mdace_split="hashed")).docs, 0.25)
    assert len(hashed.eval_ids) == 6 and len(hashed.tuning_ids) == 2  # round(0.25 * 6), by hash
    with pytest.raises(DataError, match="eval_role must be"):
        make_design(ds.docs.assign(eval_role="later"))


def test_coding_table_holds_mimiciv_test_documents_only(fixture_keys):
    """On the mimic route the coding table (and its thresholds' documents) are the MIMIC-IV test
    documents alone: predictions on MDACE's documents change nothing."""
    from rationale_kit.metrics.evaluation import Bootstrap
    from rationale_kit.workbook.protocols.train import coding_table

    ds = data.load_dataset(_profile(fixture_keys))
    docs = ds.docs
    labels = sorted({c for cs in docs.codes[docs.split == "train"] for c in cs})
    rows = [(n, c, 0.9 if c in cs else (0.6 if n.startswith("mimic3_") else 0.2))
            for n, cs in zip(docs.note_id, docs.codes) for c in labels]
    preds = {"m": pd.DataFrame(rows, columns=["note_id", "code", "prob"])}
    table = coding_table(preds, docs, labels, {"m": 0.5}, Bootstrap(50, 0))
    assert table.loc["m", "notes"] == 2  # 20000009 and 20000010, not the 3 + 3 MDACE documents in test
    assert table.loc["m", "micro_f1"] == 1.0  # MDACE documents' false positives (prob 0.6) not counted
    mimic_only = coding_table(preds, docs[docs.full_codes], labels, {"m": 0.5}, Bootstrap(50, 0))
    pd.testing.assert_frame_equal(table, mimic_only)
    assert list(data.coding_docs(docs, "test").note_id) == ["20000009", "20000010"]
    # a table without the column (an older saved one): every document has full codes
    assert len(data.coding_docs(docs.drop(columns=["full_codes"]), "test")) == 8


def test_mimic_dir_alone_and_both_locations(fixture_keys, tmp_path):
    root = tmp_path / "mimiciv"
    root.mkdir()
    (root / "hosp").symlink_to(fixture_keys["mimic_hosp_dir"], target_is_directory=True)
    (root / "note").symlink_to(fixture_keys["mimic_note_dir"], target_is_directory=True)
    keys = {k: v for k, v in fixture_keys.items() if k not in ("mimic_hosp_dir", "mimic_note_dir")}
    # the shipped params/mimic.yaml sets neither folder: data.mimic_dir alone is enough
    prof = load_profile("mimic", {"common": {"device": "cpu", "threads": 2}, "data": {**keys, "mimic_dir": str(root)}})
    assert prof.data.mimic_hosp_dir is None and prof.data.mimic_note_dir is None
    assert (data.load_dataset(prof).docs.full_codes).sum() == 10
    with pytest.raises(DataError, match=r"both data.mimic_dir and data.mimic_hosp_dir and data.mimic_note_dir"):
        data.load_dataset(_profile(fixture_keys, mimic_dir=str(root)))
    with pytest.raises(DataError, match=r"both data.mimic_dir and data.mimic_note_dir: set"):
        data.load_dataset(_profile({**keys, "mimic_note_dir": fixture_keys["mimic_note_dir"]}, mimic_dir=str(root)))
