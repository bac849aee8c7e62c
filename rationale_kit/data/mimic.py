"""MIMIC-IV ICD-10 (the user's own copy) as a :class:`Dataset`, following Edin et al. (2023)."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from rationale_kit.core import icd
from rationale_kit.core.records import DataError
from rationale_kit.data.dataset import SPLITS, Dataset, codes_table, docs_frame, spans_frame, split_counts
from rationale_kit.data.files import read_csv, resolve_path
from rationale_kit.data.splits import mark_fewshot, patient_split


def _find_file(root: Path, rel: str, key: str = "data.mimic_dir") -> Path:
    for cand in (root / rel, root / rel.removesuffix(".gz")):
        if cand.exists():
            return cand
    hint = "must hold note/ and hosp/" if key == "data.mimic_dir" else "must hold it"
    raise DataError(f"{root / rel}: file not found ({key} {hint})")


def _read_codes(path: Path, system: str, report: dict, kind: str) -> pd.DataFrame:
    table = read_csv(path, ["hadm_id", "icd_code", "icd_version"])
    report["read"][f"{kind} rows"] = int(len(table))
    if not len(table) and kind == "diagnosis":  # every MIMIC-IV admission has diagnoses
        raise DataError(f"{path}: no data rows (only a header): a MIMIC-IV diagnoses_icd table has one row per diagnosis")
    if not len(table):
        report["warnings"][f"{path.name} has no data rows (only a header): no {kind} codes"] = 1
    version = table["icd_version"].str.strip()
    bad = ~version.isin(["9", "10"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path} data row {i + 1}: icd_version must be 9 or 10, got {table['icd_version'].iloc[i]!r}")
    n9 = int((version == "9").sum())
    if n9:
        report["skipped"][f"{kind} rows with icd_version 9"] = n9
    table = table[version == "10"]
    mapping = {}
    for code in table["icd_code"].unique():
        try:
            mapping[code] = icd.normalize_code(code, system)
        except icd.CodeError as exc:
            i = int(np.flatnonzero((table["icd_code"] == code).to_numpy())[0])
            row = int(table.index[i]) + 1
            raise DataError(f"{path} data row {row}: {exc}") from None
    out = pd.DataFrame(
        {
            "hadm_id": table["hadm_id"].str.strip(),
            "code": table["icd_code"].map(mapping),
            "seq": pd.to_numeric(table["seq_num"], errors="coerce") if "seq_num" in table else 0,
            "row": table.index,
            "kind": kind,
        }
    )
    empty = out["hadm_id"] == ""
    if empty.any():
        report["skipped"][f"{kind} rows without hadm_id"] = int(empty.sum())
        out = out[~empty]
    return out


@dataclass(frozen=True)
class _MimicFiles:
    """Where the MIMIC-IV tables are: ``root`` (holding ``note/`` and ``hosp/``), or the two folders."""

    root: Optional[Path]
    hosp_dir: Optional[str | os.PathLike] = None
    note_dir: Optional[str | os.PathLike] = None

    def note(self) -> Path:
        if self.note_dir is None:
            return _find_file(self.root, "note/discharge.csv.gz")
        return _find_file(resolve_path(self.note_dir), "discharge.csv.gz", "data.mimic_note_dir")

    def hosp(self, name: str) -> Path:
        if self.hosp_dir is not None:
            return _find_file(resolve_path(self.hosp_dir), name, "data.mimic_hosp_dir")
        return _find_file(self.root, f"hosp/{name}")


def load_mimic(
    mimic_dir: Optional[str | os.PathLike],
    split_file: Optional[str | os.PathLike] = None,
    min_code_count: int = 10,
    seed: int = 0,
    fewshot_pool: int = 0,
    hosp_dir: Optional[str | os.PathLike] = None,
    note_dir: Optional[str | os.PathLike] = None,
) -> Dataset:
    """MIMIC-IV ICD-10 following Edin et al. (2023): :func:`load_mimic_with_codes` without the code sets."""
    return load_mimic_with_codes(mimic_dir, split_file, min_code_count, seed, fewshot_pool, hosp_dir, note_dir)[0]


def load_mimic_with_codes(
    mimic_dir: Optional[str | os.PathLike],
    split_file: Optional[str | os.PathLike] = None,
    min_code_count: int = 10,
    seed: int = 0,
    fewshot_pool: int = 0,
    hosp_dir: Optional[str | os.PathLike] = None,
    note_dir: Optional[str | os.PathLike] = None,
) -> tuple[Dataset, dict[str, frozenset]]:
    """MIMIC-IV ICD-10 following Edin et al. (2023), and ``{"cm", "pcs"}``: every ICD-10 code of the
    hosp tables (any admission, any count; what MDACE codes are mapped to).

    Reads ``note/discharge.csv.gz`` and ``hosp/{diagnoses,procedures}_icd.csv.gz`` (``.csv`` also
    accepted), keeps ICD-10 rows (diagnoses as dotted CM, procedures as PCS), joins on
    ``hadm_id`` (``note_id = str(hadm_id)``; several discharge summaries of one admission: the last
    by ``charttime`` (then ``note_seq``, then file order) is kept), drops codes on fewer than
    ``min_code_count`` documents, then documents without codes. Splits: the Edin et al. feather
    file (``_id`` = hadm_id, ``split``) when given, else :func:`patient_split` by ``subject_id``.
    Descriptions come from ``hosp/d_icd_{diagnoses,procedures}.csv.gz`` when present.
    """
    if mimic_dir is None and (hosp_dir is None or note_dir is None):
        raise DataError("MIMIC-IV location not set: set data.mimic_dir (a folder holding hosp/ and note/) "
                        "or both data.mimic_hosp_dir and data.mimic_note_dir")
    files = _MimicFiles(resolve_path(mimic_dir) if mimic_dir is not None else None, hosp_dir, note_dir)
    report: dict = {"dataset": "mimic", "read": {}, "skipped": {}, "kept": {}, "warnings": {}}
    note_path = files.note()
    notes = read_csv(note_path, ["subject_id", "hadm_id", "text"])
    report["read"]["discharge summaries"] = int(len(notes))
    if not len(notes):
        raise DataError(f"{note_path}: no data rows (only a header): no discharge summaries to load")
    notes, empty_ids = _select_notes(notes, note_path, report)
    by_hadm, all_codes = _admission_codes(files, set(notes["hadm_id"]), report)
    notes, doc_codes = _coded_notes(notes, by_hadm, min_code_count, report)
    splits, missing = _assign_splits(notes, split_file, seed, report)
    rows = [
        {"note_id": h, "text": t, "codes": cs, "split": s, "annotated": False, "fewshot": False, "credentialed": True}
        for h, t, cs, s, m in zip(notes["hadm_id"], notes["text"], doc_codes, splits, missing)
        if not m
    ]
    rows.sort(key=lambda r: int(r["note_id"]))
    docs = docs_frame(rows)
    descs = _descriptions(files)
    report["descriptions"] = "MIMIC d_icd tables" if descs else "simple-icd-10-cm"
    report["kept"] = {"documents": int(len(docs)), "distinct codes": int(len({c for cs in docs["codes"] for c in cs}))}
    report["empty_note_ids"] = empty_ids
    spans = spans_frame([])
    if fewshot_pool:
        docs = mark_fewshot(docs, fewshot_pool, seed)
    report["splits"] = split_counts(docs, spans)
    return Dataset("mimic", docs, spans, codes_table(docs, descs), report), all_codes


def _select_notes(notes: pd.DataFrame, note_path: Path, report: dict) -> tuple[pd.DataFrame, list[str]]:
    """The discharge summaries (DS rows with an admission and text, the last per admission) and
    the sorted ids of admissions whose summary is empty."""
    if "note_type" in notes:
        other = notes["note_type"].str.strip() != "DS"
        if other.any():  # discharge.csv holds DS rows; anything else (an addendum) never replaces one
            report["skipped"]["notes whose note_type is not DS"] = int(other.sum())
            notes = notes[~other]
    hadm = notes["hadm_id"].str.strip()
    no_hadm = hadm == ""
    if no_hadm.any():
        report["skipped"]["discharge summaries without hadm_id"] = int(no_hadm.sum())
    bad = (~no_hadm & ~hadm.str.fullmatch(r"\d+")).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])  # the index is the data row - 1 (rows may have been skipped)
        raise DataError(f"{note_path} data row {int(notes.index[i]) + 1}: hadm_id must be an integer, got {hadm.iloc[i]!r}")
    empty = notes["text"].str.strip() == ""
    n_empty = int((empty & ~no_hadm).sum())
    if n_empty:
        report["skipped"]["empty discharge summaries"] = n_empty
    empty_ids = sorted(set(hadm[empty & ~no_hadm]))
    notes = notes.assign(hadm_id=hadm, _order=np.arange(len(notes)))[~no_hadm & ~empty]
    return _last_per_admission(notes, note_path, report), empty_ids


def _last_per_admission(notes: pd.DataFrame, note_path: Path, report: dict) -> pd.DataFrame:
    """One summary per admission: the last by ``charttime``, then ``note_seq``, then file order."""
    sort_cols = []
    if "charttime" in notes:
        raw_time = notes["charttime"].str.strip()
        time = pd.to_datetime(raw_time, errors="coerce", format="ISO8601")
        bad_time = (raw_time != "") & time.isna()
        if bad_time.any():
            i = notes.index[bad_time.to_numpy()][0]
            raise DataError(f"{note_path} data row {int(i) + 1}: charttime {raw_time.loc[i]!r} is not a date "
                            f"(expected YYYY-MM-DD HH:MM:SS)")
        if (raw_time == "").any():
            report["warnings"]["discharge summaries without charttime (ordered before dated ones)"] = int((raw_time == "").sum())
        notes = notes.assign(_time=time)
        sort_cols.append("_time")
    if "note_seq" in notes:
        notes = notes.assign(_seq=pd.to_numeric(notes["note_seq"], errors="coerce"))
        sort_cols.append("_seq")
    notes = notes.sort_values(sort_cols + ["_order"], na_position="first", kind="stable")
    dup = notes.duplicated("hadm_id", keep="last")
    if dup.any():
        report["skipped"]["earlier discharge summaries of the same admission (kept the last by charttime)"] = int(dup.sum())
    return notes[~dup]


def _admission_codes(files: _MimicFiles, kept_ids: set[str], report: dict) -> tuple[dict[str, list[str]], dict]:
    """``hadm_id -> ICD-10 codes`` (diagnoses by seq_num, then procedures) of the kept admissions,
    and ``{"cm", "pcs"}``: every ICD-10 code of the tables."""
    codes = pd.concat(
        [
            _read_codes(files.hosp("diagnoses_icd.csv.gz"), "cm", report, "diagnosis"),
            _read_codes(files.hosp("procedures_icd.csv.gz"), "pcs", report, "procedure"),
        ],
        ignore_index=True,
    )
    all_codes = {"cm": frozenset(codes.loc[codes["kind"] == "diagnosis", "code"]),
                 "pcs": frozenset(codes.loc[codes["kind"] == "procedure", "code"])}
    orphan = ~codes["hadm_id"].isin(kept_ids)
    if orphan.any():
        report["skipped"]["ICD-10 code rows of admissions without a kept discharge summary"] = int(orphan.sum())
    codes = codes[~orphan]
    dup_codes = codes.duplicated(["hadm_id", "code"])
    if dup_codes.any():
        report["skipped"]["repeated code rows of the same admission"] = int(dup_codes.sum())
    codes = codes[~dup_codes].sort_values(["hadm_id", "kind", "seq", "row"], kind="stable")
    return codes.groupby("hadm_id", sort=False)["code"].agg(list).to_dict(), all_codes


def _coded_notes(notes: pd.DataFrame, by_hadm: dict[str, list[str]], min_code_count: int,
                 report: dict) -> tuple[pd.DataFrame, list[list[str]]]:
    """Notes with codes left after dropping codes on fewer than ``min_code_count`` documents, and
    their codes."""
    no_codes = ~notes["hadm_id"].isin(by_hadm.keys())
    if no_codes.any():
        report["skipped"]["admissions without ICD-10 codes"] = int(no_codes.sum())
    notes = notes[~no_codes]
    doc_codes = [by_hadm[h] for h in notes["hadm_id"]]
    counts = Counter(c for cs in doc_codes for c in cs)
    rare = {c for c, n in counts.items() if n < min_code_count}
    report["read"]["distinct ICD-10 codes"] = len(counts)
    if rare:
        report["skipped"][f"codes on fewer than {min_code_count} documents"] = len(rare)
        report["skipped"]["code assignments of those codes"] = int(sum(counts[c] for c in rare))
    doc_codes = [[c for c in cs if c not in rare] for cs in doc_codes]
    has = np.array([bool(cs) for cs in doc_codes], dtype=bool)
    if (~has).any():
        report["skipped"]["admissions left without codes after dropping rare codes"] = int((~has).sum())
    return notes[has], [cs for cs, h in zip(doc_codes, has) if h]


def _assign_splits(notes: pd.DataFrame, split_file: Optional[str | os.PathLike], seed: int,
                   report: dict) -> tuple[list, np.ndarray]:
    """The split of each note (the split file's, else patient-level) and which notes it lacks."""
    if split_file is not None:
        split_path = resolve_path(split_file)
        split_of = _read_split_file(split_path)
        splits = [split_of.get(h) for h in notes["hadm_id"]]
        missing = np.array([s is None for s in splits], dtype=bool)
        if missing.any():
            report["skipped"]["admissions not in the split file"] = int(missing.sum())
        unused = len(set(split_of) - set(notes["hadm_id"]))
        if unused:
            report["split file admissions without a kept document"] = unused
        report["split"] = f"split file {split_path}"
    else:
        subject = notes["subject_id"].str.strip()
        subject = subject.where(subject != "", "hadm:" + notes["hadm_id"])
        by_subject = patient_split(subject, seed)
        splits = [by_subject[s] for s in subject]
        missing = np.zeros(len(splits), dtype=bool)
        report["split"] = f"patient-level 80/10/10 by subject_id, seed {seed}"
    return splits, missing


def _descriptions(files: _MimicFiles) -> dict[str, str]:
    """Code descriptions from the ``d_icd`` tables that are present."""
    descs: dict[str, str] = {}
    for name in ("hosp/d_icd_diagnoses.csv.gz", "hosp/d_icd_procedures.csv.gz"):
        try:
            descs.update(icd.load_mimic_descriptions(files.hosp(name.removeprefix("hosp/"))))
        except DataError as exc:
            if "file not found" not in str(exc):
                raise
    return descs



def _read_split_file(path: Path) -> dict[str, str]:
    if not path.exists():
        raise DataError(f"{path}: split file not found")
    try:
        table = pd.read_feather(path)
    except Exception as exc:  # pyarrow raises several types
        raise DataError(f"{path}: cannot read as a feather table ({exc})") from None
    missing = [c for c in ("_id", "split") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (found {list(table.columns)})")
    out: dict[str, str] = {}
    for i, (hid, split) in enumerate(zip(table["_id"], table["split"])):
        split = str(split).strip().lower()
        if split not in SPLITS:
            raise DataError(f"{path} row {i}: split must be one of {list(SPLITS)}, got {split!r}")
        key = str(hid).strip()
        if key.endswith(".0") and key[:-2].isdigit():
            key = key[:-2]
        if key in out:
            raise DataError(f"{path} row {i}: admission _id {key} appears twice")
        out[key] = split
    return out
