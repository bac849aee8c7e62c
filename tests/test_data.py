"""Loaders on small files written by the tests (MIMIC-shaped CSVs, MDACE JSON, JSONL spans, a
CodiEsp-shaped folder), every validation error, the download helper on a local HTTP server, and
CodiEsp itself when its folder is present."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import re
import threading
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from rationale_kit import data
from rationale_kit.core import icd
from rationale_kit.core.config import load_profile
from rationale_kit.core.records import SPAN_COLUMNS, DataError
from rationale_kit.data.dataset import docs_frame, spans_frame


# --------------------------------------------------------------------------------------------
# MIMIC-shaped fixture
# --------------------------------------------------------------------------------------------
TEXT_101 = "Patient with type 2 diabetes and hypertension."
TEXT_102 = "Hypertension follow-up; appendectomy done."
TEXT_103 = "Final summary: diabetes, hypertension, appendix removed."


def _gz(path: Path, frame: pd.DataFrame | None = None, raw: bytes | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = raw if raw is not None else frame.to_csv(index=False).encode("utf-8")
    with gzip.open(path, "wb") as fh:
        fh.write(payload)


def _notes() -> pd.DataFrame:
    rows = [
        ("10-DS-1", 1, 101, "DS", 1, "2150-01-01 10:00:00", TEXT_101),
        ("10-DS-2", 1, 102, "DS", 2, "2150-02-01 10:00:00", TEXT_102),
        ("20-DS-2", 2, 103, "DS", 2, "2150-03-05 10:00:00", TEXT_103),  # the later one, listed first
        ("20-DS-1", 2, 103, "DS", 1, "2150-03-01 10:00:00", "Old draft."),
        ("30-DS-1", 3, 104, "DS", 1, "2150-04-01 10:00:00", "   "),  # empty
        ("40-DS-1", 4, 105, "DS", 1, "2150-05-01 10:00:00", "Coded in ICD-9 only."),
        ("50-DS-1", 5, 106, "DS", 1, "2150-06-01 10:00:00", "Asthma, once."),  # only a rare code
    ]
    return pd.DataFrame(rows, columns=["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "text"])


def _diagnoses() -> pd.DataFrame:
    rows = [
        (1, 101, 2, "I10", 10), (1, 101, 1, "E119", 10), (1, 101, 3, "I10", 10),  # I10 repeated
        (1, 102, 1, "I10", 10),
        (2, 103, 1, "E119", 10), (2, 103, 2, "I10", 10),
        (4, 105, 1, "4019", 9),
        (5, 106, 1, "J45909", 10),  # rare
        (7, 107, 1, "I10", 10),  # admission without a note
    ]
    return pd.DataFrame(rows, columns=["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"])


def _procedures() -> pd.DataFrame:
    rows = [(1, 102, 1, "0DTJ4ZZ", 10), (2, 103, 1, "0DTJ4ZZ", 10), (1, 101, 1, "02HV33Z", 10)]
    return pd.DataFrame(rows, columns=["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"])


def write_mimic(root: Path, notes=None, diagnoses=None, procedures=None, descriptions=True) -> Path:
    _gz(root / "note" / "discharge.csv.gz", _notes() if notes is None else notes)
    _gz(root / "hosp" / "diagnoses_icd.csv.gz", _diagnoses() if diagnoses is None else diagnoses)
    _gz(root / "hosp" / "procedures_icd.csv.gz", _procedures() if procedures is None else procedures)
    if descriptions:
        _gz(root / "hosp" / "d_icd_diagnoses.csv.gz", pd.DataFrame(
            {"icd_code": ["E119", "I10", "4019"], "icd_version": [10, 10, 9],
             "long_title": ["Type 2 diabetes mellitus without complications", "Essential (primary) hypertension", "HTN"]}))
    return root


@pytest.fixture
def mimic_dir(tmp_path):
    return write_mimic(tmp_path / "mimic")


def test_load_mimic(mimic_dir):
    ds = data.load_mimic(mimic_dir, min_code_count=2, seed=0)
    assert ds.name == "mimic"
    assert list(ds.docs.columns) == data.DATASET_DOC_COLUMNS
    assert ds.docs["note_id"].tolist() == ["101", "102", "103"]
    assert ds.docs["codes"].tolist() == [["E11.9", "I10"], ["I10", "0DTJ4ZZ"], ["E11.9", "I10", "0DTJ4ZZ"]]
    assert ds.docs.set_index("note_id").loc["103", "text"] == TEXT_103  # the last by charttime
    assert ds.docs["text"].tolist()[0] == TEXT_101  # raw text, untouched
    assert ds.docs["credentialed"].all() and not ds.docs["annotated"].any() and not ds.docs["fewshot"].any()
    assert list(ds.spans.columns) == SPAN_COLUMNS and len(ds.spans) == 0
    skipped = ds.report["skipped"]
    assert skipped["empty discharge summaries"] == 1
    assert skipped["earlier discharge summaries of the same admission (kept the last by charttime)"] == 1
    assert skipped["diagnosis rows with icd_version 9"] == 1
    assert skipped["ICD-10 code rows of admissions without a kept discharge summary"] == 1
    assert skipped["repeated code rows of the same admission"] == 1
    assert skipped["admissions without ICD-10 codes"] == 1  # 105
    assert skipped["codes on fewer than 2 documents"] == 2  # J45.909, 02HV33Z
    assert skipped["code assignments of those codes"] == 2
    assert skipped["admissions left without codes after dropping rare codes"] == 1  # 106
    assert ds.report["read"]["discharge summaries"] == 7
    assert ds.report["empty_note_ids"] == ["104"]
    # patient-level split: both admissions of subject 1 together; deterministic
    split = dict(zip(ds.docs["note_id"], ds.docs["split"]))
    assert split["101"] == split["102"]
    assert data.load_mimic(mimic_dir, min_code_count=2, seed=0).docs["split"].tolist() == ds.docs["split"].tolist()
    codes = ds.codes.set_index("code")
    assert codes.loc["I10", "description"] == "Essential (primary) hypertension"  # MIMIC's table
    assert codes.loc["0DTJ4ZZ", "description"] == ""
    assert int(codes["n_train"].sum()) == sum(len(c) for c, s in zip(ds.docs["codes"], ds.docs["split"]) if s == "train")
    text = data.format_report(ds.report)
    assert "empty discharge summaries: 1" in text and "empty_note_ids: 1 (104)" in text


def test_patient_split_fractions():
    split = data.patient_split([str(i) for i in range(1000)], seed=3)
    counts = pd.Series(split).value_counts()
    assert counts.to_dict() == {"train": 800, "val": 100, "test": 100}
    assert data.patient_split([str(i) for i in range(1000)], seed=3) == split
    assert data.patient_split([str(i) for i in range(1000)], seed=4) != split


def _need_pyarrow():
    pytest.importorskip("pyarrow", reason="feather split files need a working pyarrow", exc_type=ImportError)


def test_load_mimic_with_split_file(mimic_dir, tmp_path):
    _need_pyarrow()
    split_file = tmp_path / "split.feather"
    pd.DataFrame({"_id": [101, 102, 999], "split": ["train", "val", "test"]}).to_feather(split_file)
    ds = data.load_mimic(mimic_dir, split_file=split_file, min_code_count=2)
    assert dict(zip(ds.docs["note_id"], ds.docs["split"])) == {"101": "train", "102": "val"}
    assert ds.report["skipped"]["admissions not in the split file"] == 1  # 103
    assert ds.report["split file admissions without a kept document"] == 1  # 999
    assert ds.report["splits"]["train"]["documents"] == 1


def test_mimic_errors(tmp_path):
    notes = _notes().drop(columns="text")
    root = write_mimic(tmp_path / "a", notes=notes)
    with pytest.raises(DataError, match=r"discharge\.csv\.gz: missing column\(s\) \['text'\]"):
        data.load_mimic(root)

    diag = pd.concat([_diagnoses(), pd.DataFrame([(1, 101, 9, "1E19", 10)], columns=_diagnoses().columns)])
    root = write_mimic(tmp_path / "b", diagnoses=diag)
    with pytest.raises(DataError, match=r"diagnoses_icd\.csv\.gz data row 10: malformed ICD-10-CM code '1E19'"):
        data.load_mimic(root)

    bad_version = _diagnoses().astype({"icd_version": str})
    bad_version.loc[2, "icd_version"] = "11"
    root = write_mimic(tmp_path / "c", diagnoses=bad_version)
    with pytest.raises(DataError, match=r"diagnoses_icd\.csv\.gz data row 3: icd_version must be 9 or 10"):
        data.load_mimic(root)

    bad_hadm = _notes().astype({"hadm_id": str})
    bad_hadm.loc[1, "hadm_id"] = "x102"
    root = write_mimic(tmp_path / "d", notes=bad_hadm)
    with pytest.raises(DataError, match=r"discharge\.csv\.gz data row 2: hadm_id must be an integer"):
        data.load_mimic(root)

    root = write_mimic(tmp_path / "e")
    raw = _notes().to_csv(index=False).encode("utf-8").replace(b"Old draft.", b"Old dr\xffaft.")
    _gz(root / "note" / "discharge.csv.gz", raw=raw)
    offset = raw.index(b"\xff")
    with pytest.raises(DataError, match=rf"discharge\.csv\.gz: not valid UTF-8 at byte offset {offset}\b"):
        data.load_mimic(root)

    root = write_mimic(tmp_path / "f")
    (root / "hosp" / "procedures_icd.csv.gz").unlink()
    with pytest.raises(DataError, match=r"procedures_icd\.csv\.gz: file not found"):
        data.load_mimic(root)



def test_mimic_split_table_logic(mimic_dir, tmp_path, monkeypatch):
    """The split-file logic without pyarrow: the feather reader is replaced by a fixed table."""
    split_file = tmp_path / "split.feather"
    split_file.write_bytes(b"not read")
    table = pd.DataFrame({"_id": [101.0, 102.0, 999.0], "split": ["train", "VAL", "test"]})
    monkeypatch.setattr(pd, "read_feather", lambda path: table)
    ds = data.load_mimic(mimic_dir, split_file=split_file, min_code_count=2)
    assert dict(zip(ds.docs["note_id"], ds.docs["split"])) == {"101": "train", "102": "val"}
    assert ds.report["skipped"]["admissions not in the split file"] == 1
    table.loc[2, "_id"] = 101.0
    with pytest.raises(DataError, match=r"split\.feather row 2: admission _id 101 appears twice"):
        data.load_mimic(mimic_dir, split_file=split_file, min_code_count=2)


def test_mimic_split_file_errors(tmp_path):
    _need_pyarrow()
    root = write_mimic(tmp_path / "g")
    split_file = tmp_path / "bad_split.feather"
    pd.DataFrame({"_id": [101, 102], "split": ["train", "dev"]}).to_feather(split_file)
    with pytest.raises(DataError, match=r"bad_split\.feather row 1: split must be one of"):
        data.load_mimic(root, split_file=split_file)
    pd.DataFrame({"hadm": [101], "split": ["train"]}).to_feather(split_file)
    with pytest.raises(DataError, match=r"bad_split\.feather: missing column\(s\) \['_id'\]"):
        data.load_mimic(root, split_file=split_file)


def test_first_bad_utf8_across_chunks(tmp_path):
    path = tmp_path / "big.txt"
    payload = ("é" * 700_000).encode("utf-8")  # 2-byte characters straddle the 1 MiB chunk border
    path.write_bytes(payload + b"ok\xc3")
    assert data.first_bad_utf8(path) == len(payload) + 2
    path.write_bytes(payload)
    assert data.first_bad_utf8(path) is None


# --------------------------------------------------------------------------------------------
# MDACE and JSONL spans
# --------------------------------------------------------------------------------------------
def _mdace_file(path: Path, hadm_id, notes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"hadm_id": hadm_id, "notes": notes}), encoding="utf-8")


def _ann(begin, end, code, system="ICD-10-CM", **extra):
    return {"begin": begin, "end": end, "code": code, "code_system": system, "description": "", "type": "Human", **extra}


@pytest.fixture
def mimic_docs(mimic_dir):
    return data.load_mimic(mimic_dir, min_code_count=2).docs


def test_load_mdace(tmp_path, mimic_docs):
    root = tmp_path / "mdace"
    s1 = TEXT_101.index("type 2 diabetes")
    s2 = TEXT_101.index("hypertension")
    _mdace_file(root / "ICD-10" / "101.json", 101, [
        {"note_id": 5, "category": "Discharge summary", "annotations": [
            _ann(s1, s1 + 15, "E119", covered_text="type 2 diabetes"),
            _ann(s2, s2 + 12, "I10"),
            _ann(s2, s2 + 12, "I10"),  # duplicate
            _ann(s2, s2 + 12, "4019", "ICD-9-CM"),
        ]},
        {"note_id": 6, "category": "Radiology", "annotations": [_ann(0, 3, "I10")]},
        {"note_id": 7, "category": "Discharge summary", "annotations": [_ann(0, 3, "I10")]},  # no description: a second report
    ])
    p = TEXT_102.index("appendectomy")
    _mdace_file(root / "ICD-10" / "102.json", 102, [
        {"note_id": 8, "category": "Discharge summary", "annotations": [_ann(p, p + 12, "0dtj4zz", "ICD-10-PCS")]}])
    _mdace_file(root / "ICD-10" / "999.json", 999, [
        {"note_id": 9, "category": "Discharge summary", "annotations": [_ann(0, 3, "I10")]}])
    docs, spans, report = data.load_mdace(root, mimic_docs)
    assert spans[SPAN_COLUMNS].values.tolist() == [
        ["101", "E11.9", s1, s1 + 15, "evidence", "human"],
        ["101", "I10", s2, s2 + 12, "evidence", "human"],
        ["102", "0DTJ4ZZ", p, p + 12, "evidence", "human"],
    ]
    assert spans["evidence_type"].tolist() == ["Human"] * 3
    assert dict(zip(docs["note_id"], docs["annotated"])) == {"101": True, "102": True, "103": False}
    sk = report["skipped"]
    assert sk["ICD-9 annotations"] == 1
    assert sk["notes other than discharge summaries"] == 1
    # load_mdace keeps one report per admission; the other is named a report, not an addendum (issue 26)
    assert sk["further discharge-summary reports of an admission (first_report: only the first used)"] == 1
    assert sk["admissions not among the documents"] == 1
    assert sk["duplicate spans (same note, code and offsets)"] == 1
    assert report["kept"] == {"spans": 3, "annotated documents": 2}


def test_mdace_errors(tmp_path, mimic_docs):
    root = tmp_path / "m1"
    _mdace_file(root / "101.json", 101, [
        {"note_id": 5, "category": "Discharge summary", "annotations": [_ann(40, 500, "I10")]}])
    with pytest.raises(DataError, match=r"101\.json: notes\[0\]\.annotations\[0\]: offsets \[40, 500\) outside note '101'"):
        data.load_mdace(root, mimic_docs)
    _, spans, report = data.load_mdace(root, mimic_docs, on_mismatch="skip")
    assert len(spans) == 0 and report["skipped"]["annotations whose offsets or text do not fit the note"] == 1

    root = tmp_path / "m2"
    _mdace_file(root / "101.json", 101, [
        {"note_id": 5, "category": "Discharge summary", "annotations": [_ann(0, 7, "I10", covered_text="Pateint")]}])
    with pytest.raises(DataError, match=r"101\.json: notes\[0\]\.annotations\[0\]: span text 'Pateint' does not match"):
        data.load_mdace(root, mimic_docs)

    root = tmp_path / "m3"
    _mdace_file(root / "101.json", 101, [
        {"note_id": 5, "category": "Discharge summary", "annotations": [_ann(0, 7, "1I0")]}])
    with pytest.raises(DataError, match=r"101\.json: notes\[0\]\.annotations\[0\]: malformed ICD-10-CM code '1I0'"):
        data.load_mdace(root, mimic_docs)

    root = tmp_path / "m4"
    _mdace_file(root / "101.json", 101, [{"note_id": 5, "category": "Discharge summary", "annotations": [{"begin": 0, "end": 3}]}])
    with pytest.raises(DataError, match=r"101\.json: notes\[0\]\.annotations\[0\]: missing key 'code'"):
        data.load_mdace(root, mimic_docs)

    root = tmp_path / "m5"
    root.mkdir()
    (root / "101.json").write_text('{"hadm_id": 101, "notes": [', encoding="utf-8")
    with pytest.raises(DataError, match=r"101\.json: malformed JSON"):
        data.load_mdace(root, mimic_docs)
    (root / "101.json").write_text('{"notes": []}', encoding="utf-8")
    with pytest.raises(DataError, match=r"101\.json: missing key 'hadm_id'"):
        data.load_mdace(root, mimic_docs)
    raw = b'{"hadm_id": 101, "notes": ["\xff"]}'
    (root / "101.json").write_bytes(raw)
    offset = raw.index(b"\xff")
    with pytest.raises(DataError, match=rf"101\.json: not valid UTF-8 at byte offset {offset}\b"):
        data.load_mdace(root, mimic_docs)


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_load_spans_jsonl(tmp_path, mimic_docs):
    s = TEXT_101.index("hypertension")
    path = _jsonl(tmp_path / "spans.jsonl", [
        {"note_id": "101", "code": "i10", "start": s, "end": s + 12, "granularity": "mention", "text": "hypertension"},
        {"note_id": "102", "code": "0dtj4zz", "start": 24, "end": 36},
    ])
    docs, spans, report = data.load_spans_jsonl(path, mimic_docs)
    assert spans[SPAN_COLUMNS].values.tolist() == [
        ["101", "I10", s, s + 12, "mention", "human"],
        ["102", "0DTJ4ZZ", 24, 36, "evidence", "human"],
    ]
    assert docs["annotated"].tolist() == [True, True, False]
    assert report["kept"]["spans"] == 2


def test_spans_jsonl_errors(tmp_path, mimic_docs):
    ok = {"note_id": "101", "code": "I10", "start": 0, "end": 7}
    cases = [
        ({"note_id": "104", "code": "I10", "start": 0, "end": 2}, r"spans\.jsonl:2: note_id '104' is a note the loader skipped"),
        ({"note_id": "101", "code": "I10", "start": 0, "end": 999}, r"spans\.jsonl:2: offsets \[0, 999\) outside note '101'"),
        ({"note_id": "101", "code": "I10", "start": 0, "end": 7, "text": "Pateint"}, r"spans\.jsonl:2: span text 'Pateint' does not match"),
        ({"note_id": "101", "code": "I1!", "start": 0, "end": 7}, r"spans\.jsonl:2: malformed ICD-10 code 'I1!'"),
        ({"note_id": "555", "code": "I10", "start": 0, "end": 7}, r"spans\.jsonl:2: unknown note_id '555'"),
        ({"note_id": "101", "start": 0, "end": 7}, r"spans\.jsonl:2: missing key 'code'"),
    ]
    for bad, pattern in cases:
        path = _jsonl(tmp_path / "spans.jsonl", [ok, bad])
        with pytest.raises(DataError, match=pattern):
            data.load_spans_jsonl(path, mimic_docs, skipped_note_ids=["104"])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"note_id": "101", "code": "I10", "start": 0, "end": 7, "text": "P\xe1tient"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: not valid UTF-8 at byte offset 66\b"):
        data.load_spans_jsonl(bad, mimic_docs)
    docs = mimic_docs.copy()
    docs.loc[docs["note_id"] == "102", "text"] = ""
    path = _jsonl(tmp_path / "spans.jsonl", [ok, {"note_id": "102", "code": "I10", "start": 0, "end": 1}])
    with pytest.raises(DataError, match=r"spans\.jsonl:2: note_id '102' is an empty note"):
        data.load_spans_jsonl(path, docs)


def test_load_dataset_mimic_profile(tmp_path, mimic_dir):
    s = TEXT_101.index("hypertension")
    jsonl = _jsonl(tmp_path / "spans.jsonl", [{"note_id": "101", "code": "I10", "start": s, "end": s + 12},
                                              {"note_id": "102", "code": "I10", "start": 0, "end": 12}])
    prof = load_profile("default", {"common": {"dataset": "mimic"}, "data": {
        "mimic_dir": str(mimic_dir), "mimic_min_code_count": 2, "spans_jsonl": str(jsonl)}})
    ds = data.load_dataset(prof)
    assert ds.name == "mimic" and ds.docs["credentialed"].all()
    assert sorted(ds.spans["note_id"]) == ["101", "102"]
    assert ds.docs["annotated"].tolist() == [True, True, False]
    assert "spans_jsonl" in ds.report
    assert sum(v["spans"] for v in ds.report["splits"].values()) == 2
    with pytest.raises(DataError, match="mimic_dir is not set"):
        data.load_dataset(load_profile("default", {"common": {"dataset": "mimic"}}))
    # MDACE as released refers to MIMIC-III notes: without their text it is an error at load time
    # (tests/test_mimic_route.py loads it with NOTEEVENTS)
    mdace = tmp_path / "mdace"
    p = TEXT_102.index("appendectomy")
    _mdace_file(mdace / "102.json", 102, [
        {"note_id": 8, "category": "Discharge summary", "annotations": [_ann(p, p + 12, "0DTJ4ZZ", "ICD-10-PCS")]}])
    prof = load_profile("default", {"common": {"dataset": "mimic"}, "data": {
        "mimic_dir": str(mimic_dir), "mimic_min_code_count": 2, "mdace_dir": str(mdace)}})
    with pytest.raises(DataError, match="data.mdace_dir is set but data.mimic3_noteevents is not"):
        data.load_dataset(prof)


# --------------------------------------------------------------------------------------------
# CodiEsp-shaped fixture
# --------------------------------------------------------------------------------------------
ES_A = "Varón de 37 años con fiebre. Presenta dolor abdominal y náuseas.\nSe realiza ecografía abdominal."
EN_A = "A 37-year-old man with fever.\nHe has abdominal pain and nausea.\n1.\nAbdominal ultrasound is performed.\n"
ES_B = "Mujer de 50 años. Dolor torácico."
EN_B = "A 50-year-old woman.\nChest\npain.\n"


def _pos(text, word, start=0):
    i = text.index(word, start)
    return f"{i} {i + len(word)}"


def write_codiesp(root: Path) -> Path:
    def put(split, docs, d_rows, p_rows, x_rows):
        d = root / split
        (d / "text_files").mkdir(parents=True)
        (d / "text_files_en").mkdir()
        for name, (es, en) in docs.items():
            (d / "text_files" / f"{name}.txt").write_text(es, encoding="utf-8")
            (d / "text_files_en" / f"{name}.txt").write_text(en, encoding="utf-8")
        for kind, rows in (("D", d_rows), ("P", p_rows), ("X", x_rows)):
            (d / f"{split}{kind}.tsv").write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")

    naus, fieb = _pos(ES_A, "náuseas"), _pos(ES_A, "fiebre")
    f0 = int(fieb.split()[0])
    put("train", {"A1": (ES_A, EN_A), "B2": (ES_B, EN_B)},
        [("A1", "r50.9"), ("A1", "r10.9"), ("A1", "r50.9"), ("B2", "r07.9")],
        [("A1", "bw40zzz")],
        [("A1", "DIAGNOSTICO", "r50.9", "fiebre", fieb),
         ("A1", "DIAGNOSTICO", "r10.9", "dolor abdominl", _pos(ES_A, "dolor abdominal")),  # typo: mismatch
         ("A1", "PROCEDIMIENTO", "bw40zzz", "ecografía abdominal", _pos(ES_A, "ecografía abdominal")),
         ("A1", "DIAGNOSTICO", "r11.2", "náuseas fiebre", f"{naus};{f0} {f0};{fieb}"),  # + an empty piece
         ("A1", "DIAGNOSTICO", "r11.2", "náuseas", naus),  # shares a piece with the line above
         ("B2", "DIAGNOSTICO", "r07.9", "Dolor torácico", _pos(ES_B, "Dolor torácico"))])
    put("dev", {"C3": ("Paciente con diabetes.", "Patient with diabetes.\n")},
        [("C3", "e11.9")], [], [("C3", "DIAGNOSTICO", "e11.9", "diabetes", _pos("Paciente con diabetes.", "diabetes"))])
    put("test", {"D4": ("Hipertensión arterial.", "Arterial hypertension.\n")},
        [("D4", "i10")], [], [("D4", "DIAGNOSTICO", "i10", "Hipertensión arterial", "0 21")])
    return root


@pytest.fixture
def codiesp_dir(tmp_path):
    return write_codiesp(tmp_path / "codiesp")


def test_load_codiesp_spanish(codiesp_dir):
    ds = data.load_codiesp(codiesp_dir, "es", fewshot_pool=1, seed=0)
    assert ds.name == "codiesp_es"
    docs = ds.docs.set_index("note_id")
    assert docs["split"].to_dict() == {"A1": "train", "B2": "train", "C3": "val", "D4": "test"}
    assert docs.loc["A1", "codes"] == ["R50.9", "R10.9", "BW40ZZZ"]
    assert docs.loc["A1", "text"] == ES_A
    assert docs["annotated"].all() and int(docs["fewshot"].sum()) == 1
    assert not docs.loc[["C3", "D4"], "fewshot"].any()
    spans = ds.spans
    assert list(spans.columns) == SPAN_COLUMNS + ["group"]
    for r in spans.itertuples():
        assert 0 <= r.start < r.end <= len(docs.loc[r.note_id, "text"])
    r11 = spans[spans["code"] == "R11.2"]
    assert [ES_A[s:e] for s, e in zip(r11["start"], r11["end"])] == ["náuseas", "fiebre"]
    assert r11["group"].tolist() == ["trainX.tsv:4,trainX.tsv:5", "trainX.tsv:4"]
    assert (spans["granularity"] == "mention").all() and (spans["source"] == "human").all()
    rep = ds.report
    assert rep["skipped"]["empty pieces of discontinuous evidence"] == 1
    assert rep["skipped"]["repeated code rows of a document"] == 1
    assert rep["merged"]["pieces shared by several evidences of one code (one span, groups joined)"] == 1
    assert rep["warnings"]["evidence text differs from the note text at its offsets (kept)"] == 1
    assert rep["warnings"]["evidence codes not among the document's D/P codes (kept)"] == 2
    assert re.search(r"trainX\.tsv:2: evidence 'dolor abdominl' vs note 'dolor abdominal'", rep["text mismatches"][0])
    assert rep["splits"]["train"] == {"documents": 2, "annotated documents": 2, "spans": 6}
    assert "text mismatches: 1" in data.format_report(rep)


def test_load_codiesp_english_projection(codiesp_dir):
    ds = data.load_codiesp(codiesp_dir, "en")
    docs = ds.docs.set_index("note_id")
    assert docs.loc["A1", "text"] == EN_A.rstrip("\n")
    assert docs.loc["B2", "text"] == EN_B.rstrip("\n")
    lines = EN_A.rstrip("\n").split("\n")
    a1 = ds.spans[ds.spans["note_id"] == "A1"]
    got = {(c, EN_A[s:e]) for c, s, e in zip(a1["code"], a1["start"], a1["end"])}
    assert got == {("R50.9", lines[0]), ("R10.9", lines[1]), ("BW40ZZZ", lines[3]),
                   ("R11.2", lines[1]), ("R11.2", lines[0])}
    assert (ds.spans["granularity"] == "sentence").all()
    assert docs.loc["B2", "codes"] == ["R07.9"] and not docs.loc["B2", "annotated"]  # 2 sentences vs 3 lines
    proj = ds.report["english projection"]
    assert proj["coverage (documents whose sentence counts agree)"] == "3/4"
    assert proj["train"] == {"documents": 2, "projected": 1, "spanish spans": 6, "projected spans": 5}


def test_split_sentences():
    text = "Varón de 37 años. T.A: 109/68 mmHg; Fc: 105 lpm. ¿Dolor? Sí.\n\n  Otra línea. 3 días después."
    got = [text[s:e] for s, e in data.split_sentences(text)]
    assert got == ["Varón de 37 años.", "T.A: 109/68 mmHg; Fc: 105 lpm.", "¿Dolor?", "Sí.", "Otra línea.", "3 días después."]
    assert data.translation_lines("A.\n1.\n\nB c.") == [(0, 2), (7, 11)]


def test_codiesp_errors(tmp_path):
    def fresh(name):
        return write_codiesp(tmp_path / name)

    root = fresh("bad_positions")
    x = root / "dev" / "devX.tsv"
    x.write_text("C3\tDIAGNOSTICO\te11.9\tdiabetes\t13-21\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"devX\.tsv:1: malformed positions '13-21'"):
        data.load_codiesp(root)
    x.write_text("C3\tDIAGNOSTICO\te11.9\tdiabetes\t13 99\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"devX\.tsv:1: offsets \[13, 99\) outside document 'C3' of length 22"):
        data.load_codiesp(root)
    x.write_text("C3\tDIAGNOSTICO\te11.9\tdiabetes\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"devX\.tsv:1: expected 5 tab-separated fields, got 4"):
        data.load_codiesp(root)
    x.write_text("C3\tDIAGNOSIS\te11.9\tdiabetes\t13 21\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"devX\.tsv:1: label must be DIAGNOSTICO or PROCEDIMIENTO"):
        data.load_codiesp(root)

    root = fresh("bad_code")
    (root / "test" / "testD.tsv").write_text("D4\ti10\nD4\t1i0\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"testD\.tsv:2: malformed ICD-10-CM code '1i0'"):
        data.load_codiesp(root)

    root = fresh("bad_utf8")
    (root / "test" / "text_files" / "D4.txt").write_bytes("Hipertensión".encode("utf-8") + b" \xe9 arterial.")
    with pytest.raises(DataError, match=r"D4\.txt: not valid UTF-8 at byte offset 14"):
        data.load_codiesp(root)

    with pytest.raises(DataError, match="CodiEsp folder not found"):
        data.load_codiesp(tmp_path / "nowhere")


def test_codiesp_dir_from_env_and_nested(codiesp_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RK_CODIESP_DIR", str(codiesp_dir))
    assert data.resolve_codiesp_dir() == codiesp_dir
    assert len(data.load_codiesp().docs) == 4
    outer = tmp_path / "outer"
    (outer / "final_dataset_v4_to_publish").mkdir(parents=True)
    codiesp_dir.rename(outer / "final_dataset_v4_to_publish" / "x")
    assert data.resolve_codiesp_dir(outer) == outer / "final_dataset_v4_to_publish" / "x"


def test_load_dataset_codiesp_profile(codiesp_dir):
    prof = load_profile("codiesp", {"data": {"codiesp_dir": str(codiesp_dir), "codiesp_language": "en"}})
    ds = data.load_dataset(prof)
    assert ds.name == "codiesp_en" and len(ds.docs) == 4 and not ds.docs["credentialed"].any()
    # the profile's data.top_codes: 50 keeps every training code of this tiny fixture; the test
    # note's I10 is on no training note, so the top-50 label space cannot hold it (reported)
    assert ds.report["top codes"]["train gold code occurrences removed"] == "0 of 4 (0.0%)"
    assert ds.report["top codes"]["test gold code occurrences removed"] == "1 of 1 (100.0%)"


# --------------------------------------------------------------------------------------------
# download helper against a local HTTP server
# --------------------------------------------------------------------------------------------
@pytest.fixture
def http_dir(tmp_path, monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    serve = tmp_path / "www"
    serve.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(serve)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield serve, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_codiesp(tmp_path, http_dir):
    serve, base = http_dir
    src = write_codiesp(tmp_path / "src" / "final_dataset_v4_to_publish")
    archive = serve / "codiesp.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src.parent))
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()

    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="checksum mismatch .* expected sha256 0{64}, got " + sha):
        data.download_codiesp(dest, f"{base}/codiesp.zip", "0" * 64)
    assert list(dest.iterdir()) == []  # nothing unpacked, partial file deleted

    got = data.download_codiesp(dest, f"{base}/codiesp.zip", sha.upper())
    assert got == dest.resolve() / "final_dataset_v4_to_publish"
    assert len(data.load_codiesp(got).docs) == 4
    assert not list(dest.glob("*.part"))

    with pytest.raises(DataError, match="HTTP 404"):
        data.download_codiesp(tmp_path / "d2", f"{base}/missing.zip", sha)

    evil = serve / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(DataError, match="outside"):
        data.download_codiesp(tmp_path / "d3", f"{base}/evil.zip", hashlib.sha256(evil.read_bytes()).hexdigest())
    assert not (tmp_path / "escape.txt").exists()


# --------------------------------------------------------------------------------------------
# statistics, report, embedded corpus
# --------------------------------------------------------------------------------------------
def test_dataset_statistics():
    docs = docs_frame([
        {"note_id": "a", "text": "one two three four", "codes": ["E11.9", "I10"], "split": "train",
         "annotated": True, "fewshot": False, "credentialed": False},
        {"note_id": "b", "text": "one two", "codes": ["I10"], "split": "train",
         "annotated": False, "fewshot": False, "credentialed": False},
        {"note_id": "c", "text": "alpha beta gamma delta epsilon zeta", "codes": ["J45.909"], "split": "test",
         "annotated": True, "fewshot": False, "credentialed": False},
    ])
    spans = spans_frame([
        {"note_id": "a", "code": "E11.9", "start": 0, "end": 7, "granularity": "mention", "source": "human"},
        {"note_id": "a", "code": "E11.9", "start": 8, "end": 13, "granularity": "mention", "source": "human"},
        {"note_id": "a", "code": "I10", "start": 0, "end": 18, "granularity": "sentence", "source": "human"},
        {"note_id": "c", "code": "J45.909", "start": 0, "end": 5, "granularity": "mention", "source": "human"},
    ])
    ds = data.Dataset("t", docs, spans, data.codes_table(docs))
    st = data.dataset_statistics(ds)
    assert st.index.tolist() == ["train", "test", "all"]
    tr = st.loc["train"]
    assert tr["documents"] == 2 and tr["unique codes"] == 2
    assert tr["codes per document"] == pytest.approx(1.5)
    assert tr["words per document (mean)"] == pytest.approx(3.0)
    assert tr["words per document (median)"] == pytest.approx(3.0)
    assert tr["words per document (max)"] == 4
    assert tr["annotated documents"] == 1
    assert tr["spans (mention)"] == 2 and tr["spans (sentence)"] == 1
    assert tr["span length in words (mean)"] == pytest.approx((2 + 1 + 4) / 3)
    assert tr["spans per (note, code) pair"] == pytest.approx(1.5)
    assert st.loc["all", "documents"] == 3 and st.loc["all", "unique codes"] == 3
    assert st.loc["test", "spans per (note, code) pair"] == pytest.approx(1.0)
    assert ds.codes.set_index("code")["n_train"].to_dict() == {"E11.9": 1, "I10": 2, "J45.909": 0}


def test_format_report():
    text = data.format_report({"dataset": "x", "skipped": {"empty notes": 2}, "warnings": {}, "list": ["a", "b"]})
    assert text.splitlines() == ["dataset: x", "skipped:", "  empty notes: 2", "warnings: none", "list: 2", "  - a", "  - b"]


def test_load_dataset_embedded():
    pytest.importorskip("rationale_kit.data.embedded", reason="the embedded generator is missing")
    prof = load_profile("default", {"data": {"embedded": {
        "n_train": 24, "n_val": 6, "n_test": 6, "n_fewshot_pool": 4, "n_codes": 8, "min_words": 60, "max_words": 200}}})
    ds = data.load_dataset(prof)
    assert ds.name == "embedded"
    assert list(ds.docs.columns) == data.DATASET_DOC_COLUMNS
    assert not ds.docs["credentialed"].any()
    assert set(ds.docs["split"]) <= set(data.SPLITS)
    assert set(SPAN_COLUMNS) <= set(ds.spans.columns)
    assert list(ds.codes.columns) == ["code", "description", "n_train"]
    data.dataset_statistics(ds)


# --------------------------------------------------------------------------------------------
# the real CodiEsp v4 (skipped when its folder is absent)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def codiesp_real():
    try:
        root = data.resolve_codiesp_dir()
    except DataError as exc:
        pytest.skip(f"CodiEsp not available: {exc}")
    return root


def test_real_codiesp_spanish(codiesp_real):
    ds = data.load_codiesp(codiesp_real, "es")
    assert ds.docs["split"].value_counts().to_dict() == {"train": 500, "val": 250, "test": 250}
    for codes in ds.docs["codes"]:
        for c in codes:
            assert c == c.upper()
            assert icd.is_pcs(c) or re.fullmatch(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?", c), c
    texts = dict(zip(ds.docs["note_id"], ds.docs["text"]))
    lengths = ds.spans["note_id"].map(lambda n: len(texts[n]))
    assert ((ds.spans["start"] >= 0) & (ds.spans["start"] < ds.spans["end"]) & (ds.spans["end"] <= lengths)).all()
    # CodiEsp v4 counts, recorded when this loader was written
    assert {s: v["spans"] for s, v in ds.report["splits"].items()} == {"train": 10841, "val": 5372, "test": 5655}
    assert ds.report["read"]["trainX.tsv rows"] == 9181
    assert ds.report["warnings"]["evidence text differs from the note text at its offsets (kept)"] == 7
    assert ds.report["skipped"]["empty pieces of discontinuous evidence"] == 4
    assert ds.docs["annotated"].all()
    assert "E11.9" in set(ds.codes["code"]) or len(ds.codes) > 3000


def test_real_codiesp_english(codiesp_real):
    ds = data.load_codiesp(codiesp_real, "en")
    assert ds.docs["split"].value_counts().to_dict() == {"train": 500, "val": 250, "test": 250}
    assert ds.report["english projection"]["coverage (documents whose sentence counts agree)"] == "801/1000"
    assert {s: v["spans"] for s, v in ds.report["splits"].items()} == {"train": 6831, "val": 3685, "test": 3938}
    texts = dict(zip(ds.docs["note_id"], ds.docs["text"]))
    for r in ds.spans.head(300).itertuples():
        line = texts[r.note_id][r.start:r.end]
        assert "\n" not in line and line.strip() == line and line
