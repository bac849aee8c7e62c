"""Damaged or unusual input files: each is an error naming the file and the row/line/key, or is
handled by an explicit, counted rule (issue #14, loader items)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from rationale_kit import data
from rationale_kit.core.records import DataError, read_spans_jsonl
from rationale_kit.data.dataset import docs_frame, spans_frame
from test_data import TEXT_101, _gz, _mdace_file, _notes, write_codiesp, write_mimic


def _raw_notes_csv(notes: pd.DataFrame) -> bytes:
    return notes.to_csv(index=False).encode("utf-8")


def test_nul_byte_in_discharge_csv_is_an_error_naming_the_row(tmp_path):
    root = write_mimic(tmp_path / "m")
    raw = _raw_notes_csv(_notes()).replace(b"type 2 diabetes", b"type 2\x00 diabetes")
    _gz(root / "note" / "discharge.csv.gz", raw=raw)
    with pytest.raises(DataError, match=r"discharge\.csv\.gz data row 1 \(line 2\): NUL byte in column 'text'"):
        data.load_mimic(root, min_code_count=2)


def test_short_csv_row_is_an_error_naming_the_row(tmp_path):
    root = write_mimic(tmp_path / "m")
    lines = _raw_notes_csv(_notes()).decode().splitlines()
    lines[2] = "10-DS-2,1,102,DS"  # data row 2 cut after note_type
    _gz(root / "note" / "discharge.csv.gz", raw=("\n".join(lines) + "\n").encode())
    with pytest.raises(DataError, match=r"discharge\.csv\.gz data row 2 \(line 3\): 4 fields, expected 7"):
        data.load_mimic(root, min_code_count=2)
    lines[2] = "10-DS-2,1,102,DS,2,2150-02-01 10:00:00,text,extra"
    _gz(root / "note" / "discharge.csv.gz", raw=("\n".join(lines) + "\n").encode())
    with pytest.raises(DataError, match=r"data row 2 \(line 3\): 8 fields, expected 7"):
        data.load_mimic(root, min_code_count=2)


def test_unparseable_charttime_is_an_error(tmp_path):
    notes = _notes()
    notes.loc[2, "charttime"] = "yesterday"  # the later summary of admission 103
    root = write_mimic(tmp_path / "m", notes=notes)
    with pytest.raises(DataError, match=r"discharge\.csv\.gz data row 3: charttime 'yesterday' is not a date"):
        data.load_mimic(root, min_code_count=2)


def test_empty_charttime_is_counted_and_ordered_first(tmp_path):
    notes = _notes()
    notes.loc[3, "charttime"] = ""  # the old draft of 103: undated, so it cannot be the latest
    root = write_mimic(tmp_path / "m", notes=notes)
    ds = data.load_mimic(root, min_code_count=2)
    assert ds.report["warnings"]["discharge summaries without charttime (ordered before dated ones)"] == 1
    assert ds.docs.set_index("note_id").loc["103", "text"].startswith("Final summary")


def test_note_type_other_than_ds_is_skipped_and_never_replaces_the_summary(tmp_path):
    notes = _notes()
    extra = pd.DataFrame([("10-AD-1", 1, 101, "AD", 3, "2150-01-09 10:00:00", "Addendum: nothing new.")],
                         columns=notes.columns)
    root = write_mimic(tmp_path / "m", notes=pd.concat([notes, extra], ignore_index=True))
    ds = data.load_mimic(root, min_code_count=2)
    assert ds.docs.set_index("note_id").loc["101", "text"] == TEXT_101
    assert ds.report["skipped"]["notes whose note_type is not DS"] == 1


def test_mdace_annotations_not_a_list_names_file_and_key(tmp_path):
    docs = data.load_mimic(write_mimic(tmp_path / "m"), min_code_count=2).docs
    root = tmp_path / "mdace"
    _mdace_file(root / "101.json", 101, [{"note_id": 5, "category": "Discharge summary", "annotations": 5}])
    with pytest.raises(DataError, match=r"101\.json: notes\[0\]\.annotations must be a list, got int"):
        data.load_mdace(root, docs)


@pytest.mark.parametrize("value,kind", [(12.9, "float"), (12.0, "float"), (True, "bool"), ("12", "str")])
def test_spans_jsonl_offsets_must_be_json_integers(tmp_path, value, kind):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"note_id": "1", "code": "I10", "start": 0, "end": 3}) + "\n"
                    + json.dumps({"note_id": "1", "code": "I10", "start": 0, "end": value}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"s\.jsonl:2: start/end must be integers \(end is {kind} "):
        read_spans_jsonl(path)


def test_spans_jsonl_with_bare_cr_line_endings(tmp_path):
    docs = data.load_mimic(write_mimic(tmp_path / "m"), min_code_count=2).docs
    s = TEXT_101.index("hypertension")
    recs = [{"note_id": "101", "code": "I10", "start": s, "end": s + 12},
            {"note_id": "102", "code": "I10", "start": 0, "end": 12},
            {"note_id": "101", "code": "E1!", "start": 0, "end": 7}]
    path = tmp_path / "cr.jsonl"
    path.write_text("\r".join(json.dumps(r) for r in recs[:2]) + "\r", encoding="utf-8", newline="")
    _, spans, _ = data.load_spans_jsonl(path, docs)
    assert spans[["note_id", "code", "start", "end"]].values.tolist() == [["101", "I10", s, s + 12], ["102", "I10", 0, 12]]
    # line numbers count bare CRs as line ends too
    path.write_text("\r".join(json.dumps(r) for r in recs) + "\r", encoding="utf-8", newline="")
    with pytest.raises(DataError, match=r"cr\.jsonl:3: malformed ICD-10 code 'E1!'"):
        data.load_spans_jsonl(path, docs)


def test_codiesp_tsv_with_utf8_bom(tmp_path):
    root = write_codiesp(tmp_path / "c")
    path = root / "train" / "trainD.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    ds = data.load_codiesp(root, "es")
    a1 = ds.docs.set_index("note_id").loc["A1", "codes"]
    assert a1[:2] == ["R50.9", "R10.9"]
    assert "\ufeffA1" not in str(ds.report)


def test_restrict_top_codes():
    docs = docs_frame([
        {"note_id": "a", "text": "x", "codes": ["A", "B", "C"], "split": "train", "annotated": True, "fewshot": True, "credentialed": False},
        {"note_id": "b", "text": "x", "codes": ["A", "B"], "split": "train", "annotated": False, "fewshot": False, "credentialed": False},
        {"note_id": "c", "text": "x", "codes": ["A", "D"], "split": "train", "annotated": False, "fewshot": False, "credentialed": False},
        {"note_id": "d", "text": "x", "codes": ["C", "D"], "split": "test", "annotated": True, "fewshot": False, "credentialed": False},
        {"note_id": "e", "text": "x", "codes": ["B", "E"], "split": "val", "annotated": False, "fewshot": False, "credentialed": False},
    ])
    spans = spans_frame([
        {"note_id": "a", "code": "C", "start": 0, "end": 1, "granularity": "mention", "source": "human"},
        {"note_id": "d", "code": "D", "start": 0, "end": 1, "granularity": "mention", "source": "human"},
        {"note_id": "d", "code": "C", "start": 0, "end": 1, "granularity": "mention", "source": "human"},
    ])
    ds = data.Dataset("t", docs, spans, data.codes_table(docs), {})
    # training document counts: A 3, B 2, C 1, D 1 -> top 2 = A, B
    out = data.restrict_top_codes(ds, 2)
    assert out.docs.codes.tolist() == [["A", "B"], ["A", "B"], ["A"], [], ["B"]]
    assert len(out.spans) == 0
    assert out.docs.annotated.tolist() == [False] * 5 and not out.docs.fewshot.any()
    rep = out.report["top codes"]
    assert rep["train gold code occurrences removed"] == "2 of 7 (28.6%)"
    assert rep["test gold code occurrences removed"] == "2 of 2 (100.0%)"
    assert rep["val gold code occurrences removed"] == "1 of 2 (50.0%)"
    assert rep["spans removed"] == 3 and rep["documents left without codes (kept as negatives)"] == 1
    assert out.codes.code.tolist() == ["A", "B"]
    # ties broken by code: top 3 = A, B, C (C and D both on one training document)
    out3 = data.restrict_top_codes(ds, 3)
    assert out3.spans[["note_id", "code"]].values.tolist() == [["a", "C"], ["d", "C"]]
    assert out3.docs.annotated.tolist() == [True, False, False, True, False]
    with pytest.raises(DataError, match="top_codes must be at least 1"):
        data.restrict_top_codes(ds, 0)
