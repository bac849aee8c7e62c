"""Data loaders. Every source ends in the same canonical tables (:class:`Dataset`).

- ``docs``: ``note_id, text, codes (list), split (train|val|test), annotated, fewshot,
  credentialed``. ``text`` is the raw note, never cut or cleaned: span offsets point into it
  (models cut notes to ``data.max_words`` themselves).
- ``spans``: :data:`records.SPAN_COLUMNS` (half-open character offsets into ``text``) plus, by
  source, ``group`` (CodiEsp: the pieces of one discontinuous evidence share a group id),
  ``evidence_type`` / ``source_note_id`` (MDACE).
- ``codes``: ``code, description, n_train`` (training documents carrying the code).
- ``report``: nested dict of counts: what was read, kept and skipped (with the reason), per
  split. :func:`format_report` prints it. Nothing is dropped without a count in ``report``.

Sources: the embedded synthetic corpus (``rationale_kit.data.embedded``), CodiEsp (Spanish, or its English
machine translation with sentence-level projected spans), and MIMIC-IV ICD-10 (user's own copy)
with MDACE evidence or spans in the project's JSONL format. Bad input raises
:class:`records.DataError` naming the file and the row, line or key.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import string
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional

import numpy as np
import pandas as pd

from rationale_kit.core import icd
from rationale_kit.core.records import SPAN_COLUMNS, DataError, _read_spans_jsonl, iter_jsonl_objects, write_spans_jsonl
from rationale_kit.core.runtime import ROOT
from rationale_kit.core.text import WORD_RE


#: Columns of the canonical documents table.
DATASET_DOC_COLUMNS = ["note_id", "text", "codes", "split", "annotated", "fewshot", "credentialed"]
SPLITS = ("train", "val", "test")

#: Default CodiEsp location, relative to the repository root (``data.codiesp_dir``).
DEFAULT_CODIESP_DIR = "../shared/data/codiesp_v4"
CODIESP_SPLITS = {"train": "train", "dev": "val", "test": "test"}


@dataclass(frozen=True)
class Dataset:
    """One loaded data set in canonical form (see the module docstring)."""

    name: str
    docs: pd.DataFrame
    spans: pd.DataFrame
    codes: pd.DataFrame
    report: dict = field(default_factory=dict)

    def split(self, name: str) -> pd.DataFrame:
        return self.docs[self.docs["split"] == name]


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def first_bad_utf8(path: str | Path) -> Optional[int]:
    """Byte offset of the first invalid UTF-8 sequence in ``path`` (decompressed for ``.gz``),
    or None when the file is valid UTF-8."""
    path = Path(path)
    pos, carry = 0, b""
    with _open_bytes(path) as fh:
        while True:
            chunk = fh.read(1 << 20)
            data = carry + chunk
            try:
                data.decode("utf-8")
                pos, carry = pos + len(data), b""
            except UnicodeDecodeError as exc:
                if chunk and exc.reason == "unexpected end of data":
                    pos, carry = pos + exc.start, data[exc.start:]
                else:
                    return pos + exc.start
            if not chunk:
                return None


def _utf8_error(path: Path) -> DataError:
    off = first_bad_utf8(path)
    where = " of the decompressed data" if path.suffix == ".gz" else ""
    return DataError(f"{path}: not valid UTF-8 at byte offset {off}{where}")


def read_text_file(path: str | Path) -> str:
    """A UTF-8 text file, decoded strictly (no newline translation: offsets stay exact)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 at byte offset {exc.start}") from None


def _csv_rows(path: Path, required: Iterable[str] = ()):
    """Stream a CSV (optionally gzipped): yields ``(header, data_row, first_line, row)`` per record.

    A UTF-8 byte-order mark is removed; blank lines are not records; a header without a
    ``required`` column, a row with more or fewer fields than the header, an empty file, bytes that
    are not UTF-8 or malformed CSV is a :class:`DataError` naming the file and the data row
    (1-based, header excluded) and its first line.
    """
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # notes longer than the 128 KiB default
    reader = None
    try:
        with io.TextIOWrapper(_open_bytes(path), encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, strict=True)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file (no header row)")
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing} (found {header})")
            line, n = reader.line_num, 0
            for row in reader:
                first_line, line = line + 1, reader.line_num
                if not row:
                    continue
                n += 1
                if len(row) != len(header):
                    raise DataError(f"{path} data row {n} (line {first_line}): {len(row)} fields, "
                                    f"expected {len(header)} ({', '.join(header)})")
                yield header, n, first_line, row
    except UnicodeDecodeError:
        raise _utf8_error(path) from None
    except csv.Error as exc:
        where = f" line {reader.line_num}" if reader is not None else ""
        raise DataError(f"{path}{where}: cannot read as CSV ({exc})") from None
    except (EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def _read_csv(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """A CSV (optionally gzipped) with every column as a string; "" for empty fields.

    Read with :func:`_csv_rows`, so that damage is seen, not papered over; a NUL byte in a field is
    also a :class:`DataError` naming the data row and its first line. The frame's index is the data
    row minus one.
    """
    if not path.exists():
        raise DataError(f"{path}: file not found")
    rows: list[list[str]] = []
    header: list[str] = []
    required = list(required)
    for header, n, first_line, row in _csv_rows(path, required):
        for h, v in zip(header, row):
            if "\x00" in v:
                raise DataError(f"{path} data row {n} (line {first_line}): NUL byte in column "
                                f"{h!r} (a damaged file: the field would be cut there)")
        rows.append(row)
    if not rows:  # a header and no records: the columns still name the frame
        with io.TextIOWrapper(_open_bytes(path), encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
    return pd.DataFrame(rows, columns=header, dtype=object)


def _ws(s: str) -> str:
    return " ".join(s.split())


def _int(value: Any, where: str, what: str) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} must be an integer, got {value!r}") from None


def _docs_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=DATASET_DOC_COLUMNS)
    for col in ("annotated", "fewshot", "credentialed"):
        frame[col] = frame[col].astype(bool)
    frame["note_id"] = frame["note_id"].astype(str)
    return frame.reset_index(drop=True)


def _spans_frame(rows: list[dict], extra: Iterable[str] = ()) -> pd.DataFrame:
    cols = SPAN_COLUMNS + [c for c in extra if c not in SPAN_COLUMNS]
    frame = pd.DataFrame(rows, columns=cols)
    return frame.astype({"start": "int64", "end": "int64"}).reset_index(drop=True)


def codes_table(docs: pd.DataFrame, mimic_descriptions: Optional[Mapping[str, str]] = None,
                descriptions: Optional[Mapping[str, str]] = None) -> pd.DataFrame:
    """``code, description, n_train`` for every code of ``docs`` (sorted by code).
    ``descriptions`` (code -> text) wins over :func:`icd.describe`."""
    n_train: Counter = Counter()
    all_codes: set[str] = set()
    for codes, split in zip(docs["codes"], docs["split"]):
        all_codes.update(codes)
        if split == "train":
            n_train.update(set(codes))
    ordered = sorted(all_codes)
    descriptions = descriptions or {}
    return pd.DataFrame(
        {
            "code": ordered,
            "description": [descriptions.get(c) or icd.describe(c, mimic_descriptions) for c in ordered],
            "n_train": [int(n_train[c]) for c in ordered],
        },
        columns=["code", "description", "n_train"],
    ).astype({"n_train": "int64"})


def mark_fewshot(docs: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Reserve ``n`` annotated training documents (seeded choice) as the few-shot pool."""
    docs = docs.copy()
    pool = sorted(docs.loc[docs["annotated"] & (docs["split"] == "train"), "note_id"])
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist()) if pool and n > 0 else set()
    docs["fewshot"] = docs["note_id"].isin(chosen)
    return docs


def _split_counts(docs: pd.DataFrame, spans: pd.DataFrame) -> dict:
    out = {}
    per_note = spans["note_id"].value_counts() if len(spans) else pd.Series(dtype="int64")
    for s in SPLITS:
        ids = docs.loc[docs["split"] == s, "note_id"]
        out[s] = {
            "documents": int(len(ids)),
            "annotated documents": int(docs.loc[docs["split"] == s, "annotated"].sum()),
            "spans": int(per_note.reindex(ids).fillna(0).sum()),
        }
    return out


def resolve_path(path: str | os.PathLike) -> Path:
    """``~`` expanded; relative paths are taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (ROOT / p).resolve()


# --------------------------------------------------------------------------------------------
# MIMIC-IV
# --------------------------------------------------------------------------------------------
def _find_file(root: Path, rel: str, key: str = "data.mimic_dir") -> Path:
    for cand in (root / rel, root / rel.removesuffix(".gz")):
        if cand.exists():
            return cand
    hint = "must hold note/ and hosp/" if key == "data.mimic_dir" else "must hold it"
    raise DataError(f"{root / rel}: file not found ({key} {hint})")


def patient_split(subjects: Iterable[str], seed: int, fractions=(0.8, 0.1, 0.1)) -> dict[str, str]:
    """Deterministic patient-level split: sorted unique ids, seeded permutation, first 80% train,
    next 10% val, rest test. Returns ``subject -> split``."""
    unique = sorted(set(subjects))
    perm = np.random.default_rng(seed).permutation(len(unique))
    n_train = int(round(fractions[0] * len(unique)))
    n_val = int(round(fractions[1] * len(unique)))
    out = {}
    for rank, idx in enumerate(perm):
        out[unique[idx]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


def _read_codes(path: Path, system: str, report: dict, kind: str) -> pd.DataFrame:
    table = _read_csv(path, ["hadm_id", "icd_code", "icd_version"])
    report["read"][f"{kind} rows"] = int(len(table))
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


def load_mimic(
    mimic_dir: Optional[str | os.PathLike],
    split_file: Optional[str | os.PathLike] = None,
    min_code_count: int = 10,
    seed: int = 0,
    fewshot_pool: int = 0,
    hosp_dir: Optional[str | os.PathLike] = None,
    note_dir: Optional[str | os.PathLike] = None,
) -> Dataset:
    """MIMIC-IV ICD-10 following Edin et al. (2023).

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
    root = resolve_path(mimic_dir) if mimic_dir is not None else None
    report: dict = {"dataset": "mimic", "read": {}, "skipped": {}, "kept": {}, "warnings": {}}
    note_path = _find_file(root, "note/discharge.csv.gz") if note_dir is None else _find_file(resolve_path(note_dir), "discharge.csv.gz", "data.mimic_note_dir")
    notes = _read_csv(note_path, ["subject_id", "hadm_id", "text"])
    report["read"]["discharge summaries"] = int(len(notes))

    def hosp(name: str) -> Path:
        if hosp_dir is not None:
            return _find_file(resolve_path(hosp_dir), name, "data.mimic_hosp_dir")
        return _find_file(root, f"hosp/{name}")

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
    notes = notes[~dup]

    codes = pd.concat(
        [
            _read_codes(hosp("diagnoses_icd.csv.gz"), "cm", report, "diagnosis"),
            _read_codes(hosp("procedures_icd.csv.gz"), "pcs", report, "procedure"),
        ],
        ignore_index=True,
    )
    kept_ids = set(notes["hadm_id"])
    orphan = ~codes["hadm_id"].isin(kept_ids)
    if orphan.any():
        report["skipped"]["ICD-10 code rows of admissions without a kept discharge summary"] = int(orphan.sum())
    codes = codes[~orphan]
    dup_codes = codes.duplicated(["hadm_id", "code"])
    if dup_codes.any():
        report["skipped"]["repeated code rows of the same admission"] = int(dup_codes.sum())
    codes = codes[~dup_codes].sort_values(["hadm_id", "kind", "seq", "row"], kind="stable")
    by_hadm = codes.groupby("hadm_id", sort=False)["code"].agg(list).to_dict()

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
    notes = notes[has]
    doc_codes = [cs for cs, h in zip(doc_codes, has) if h]

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
    rows = [
        {"note_id": h, "text": t, "codes": cs, "split": s, "annotated": False, "fewshot": False, "credentialed": True}
        for h, t, cs, s, m in zip(notes["hadm_id"], notes["text"], doc_codes, splits, missing)
        if not m
    ]
    rows.sort(key=lambda r: int(r["note_id"]))
    docs = _docs_frame(rows)
    descs: dict[str, str] = {}
    for name in ("hosp/d_icd_diagnoses.csv.gz", "hosp/d_icd_procedures.csv.gz"):
        try:
            descs.update(icd.load_mimic_descriptions(hosp(name.removeprefix("hosp/"))))
        except DataError as exc:
            if "file not found" not in str(exc):
                raise
    report["descriptions"] = "MIMIC d_icd tables" if descs else "simple-icd-10-cm"
    report["kept"] = {"documents": int(len(docs)), "distinct codes": int(len({c for cs in docs["codes"] for c in cs}))}
    report["empty_note_ids"] = empty_ids
    spans = _spans_frame([])
    if fewshot_pool:
        docs = mark_fewshot(docs, fewshot_pool, seed)
    report["splits"] = _split_counts(docs, spans)
    return Dataset("mimic", docs, spans, codes_table(docs, descs), report)


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


# --------------------------------------------------------------------------------------------
# MDACE and JSONL spans
# --------------------------------------------------------------------------------------------
def _code_for_doc(code: str, system: str, doc_codes: set[str], where: str) -> str:
    try:
        if system != "auto":
            return icd.normalize_code(code, system)
        for sys in ("cm", "pcs"):
            try:
                c = icd.normalize_code(code, sys)
            except icd.CodeError:
                continue
            if c in doc_codes:
                return c
        return icd.normalize_code(code, "auto")
    except icd.CodeError as exc:
        raise DataError(f"{where}: {exc}") from None


#: Code versions newer than MIMIC-IV's that no prefix maps back (Edin et al. 2024,
#: explainable-medical-coding ``make_mdace_icd10_inpatient.py``): MDACE code -> MIMIC-IV code.
MDACE_CODE_TABLE = {
    "F32.A": "F32.9",  # depression, unspecified (F32.A added FY2022)
    "S02.122A": "S02.19XA",
    "D75.839": "D75.89",
    "F10.139": "F10.10",
    "G90.51": "G90.519",
}

#: Characters trimmed from span edges (Edin et al. 2024: ``string.punctuation`` + newline, tab, space).
TRIM_CHARS = frozenset(string.punctuation + "\n\t \r")


def map_code_version(code: str, known: set[str]) -> tuple[str, str]:
    """``(code, how)``: ``code`` itself when ``known`` holds it (``how="same"``); else its longest
    prefix (at least 3 characters, trailing dot dropped) in ``known`` (``"prefix"``: N18.30 -> N18.3);
    else :data:`MDACE_CODE_TABLE` (``"table"``: F32.A -> F32.9); else unchanged (``"unmapped"``).
    The order is Edin et al. 2024's (known, prefix, then their table)."""
    if code in known:
        return code, "same"
    head = code[:-1]
    while len(head) >= 3:
        if head.rstrip(".") in known:
            return head.rstrip("."), "prefix"
        head = head[:-1]
    if code in MDACE_CODE_TABLE:
        return MDACE_CODE_TABLE[code], "table"
    return code, "unmapped"


def trim_span(text: str, start: int, end: int, rule: Literal["edges", "edin", "none"] = "edges") -> tuple[int, int]:
    """Span ``[start, end)`` of ``text`` with punctuation and whitespace (:data:`TRIM_CHARS`) trimmed.

    ``edges``: every such character at either end is removed (may return ``start == end``).
    ``edin``: Edin et al. 2024's rule, verbatim: ``end - 1`` when ``text[end]`` (the character
    *after* the half-open span) is one, then ``start + 1`` when ``text[start]`` is one (one
    character each side). ``none``: unchanged."""
    if rule == "none":
        return start, end
    if rule == "edin":
        if end < len(text) and text[end] in TRIM_CHARS:
            end -= 1
        if start < len(text) and text[start] in TRIM_CHARS:
            start += 1
        return start, end
    if rule != "edges":
        raise ValueError(f"trim rule must be 'edges', 'edin' or 'none', got {rule!r}")
    while start < end and text[start] in TRIM_CHARS:
        start += 1
    while end > start and text[end - 1] in TRIM_CHARS:
        end -= 1
    return start, end


def _int_id(value: Any, where: str, what: str) -> int:
    if isinstance(value, bool):
        raise DataError(f"{where}: {what} must be an integer, got {value!r}")
    return _int(value, where, what)


@dataclass(frozen=True)
class MdaceNote:
    """One MDACE admission's chosen discharge summary and its validated annotations."""

    path: Path
    hadm_id: int
    note_index: int  # position in the file's ``notes``
    note_id: int  # MIMIC-III NOTEEVENTS ROW_ID
    description: str
    annotations: tuple  # (k, begin, end, code, system "cm"|"pcs", type)


def read_mdace(mdace_dir: str | os.PathLike) -> tuple[list[MdaceNote], dict]:
    """MDACE as released (``data/{Inpatient,Profee}/{ICD-10,ICD-9}/1.0/<hadm_id>-<system>.json``;
    a sub-folder, or a folder of such files, also works): the Inpatient ICD-10 admissions.

    Each file is ``{hadm_id, notes: [{note_id, category, description, annotations: [{begin, end,
    code, code_system, description, type}]}]}``. Files under ``Profee/`` or ``ICD-9/`` are skipped
    and counted, as are annotations whose ``code_system`` is ``CPT`` or ICD-9, and notes whose
    category is not "Discharge summary". Per admission the note used is the discharge summary
    whose description is "Report" (a missing description counts as a report), the lowest integer
    ``note_id`` when there are several; addenda ("Addendum") and further reports are counted and
    skipped: their offsets point into their own text, never the report's. Structural problems
    (wrong types, missing keys, an admission in two files) are a :class:`DataError` naming the file
    and key. Returns ``(notes, report)``.
    """
    root = resolve_path(mdace_dir)
    if not root.is_dir():
        raise DataError(f"{root}: MDACE folder not found (data.mdace_dir should be MDACE's data/ folder)")
    files = sorted(root.rglob("*.json"))
    report: dict = {"source": f"MDACE {root}", "read": Counter(), "skipped": Counter()}
    out: list[MdaceNote] = []
    seen: dict[int, Path] = {}
    for path in files:
        parts = {p.lower() for p in path.relative_to(root).parts[:-1]}
        if "profee" in parts:
            report["skipped"]["Profee files (professional-fee coding)"] += 1
            continue
        if "icd-9" in parts or "icd9" in parts:
            report["skipped"]["ICD-9 files"] += 1
            continue
        report["read"]["files"] += 1
        try:
            obj = json.loads(read_text_file(path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: expected a JSON object")
        for key in ("hadm_id", "notes"):
            if key not in obj:
                raise DataError(f"{path}: missing key {key!r}")
        hadm = _int_id(obj["hadm_id"], str(path), "hadm_id")
        if hadm in seen:
            raise DataError(f"{path}: admission hadm_id {hadm} also in {seen[hadm]}")
        seen[hadm] = path
        if not isinstance(obj["notes"], list):
            raise DataError(f"{path}: 'notes' must be a list, got {type(obj['notes']).__name__}")
        ds_notes = []
        for j, note in enumerate(obj["notes"]):
            for key in ("note_id", "category", "annotations"):
                if not isinstance(note, dict) or key not in note:
                    raise DataError(f"{path}: notes[{j}] missing key {key!r}")
            if not isinstance(note["annotations"], list):
                raise DataError(f"{path}: notes[{j}].annotations must be a list, got {type(note['annotations']).__name__}")
            nid = _int_id(note["note_id"], f"{path}: notes[{j}]", "note_id")
            report["read"]["annotations"] += len(note["annotations"])
            if str(note["category"]).strip().lower() == "discharge summary":
                ds_notes.append((j, nid, str(note.get("description") or "Report").strip(), note))
            else:
                report["skipped"]["notes other than discharge summaries"] += 1
                report["skipped"]["annotations on notes other than discharge summaries"] += len(note["annotations"])
        reports = sorted([x for x in ds_notes if x[2].lower() == "report"], key=lambda x: x[1])
        for j, nid, desc, note in ds_notes:
            if reports and (j, nid) == reports[0][:2]:
                continue
            if desc.lower() == "addendum":  # offsets refer to the addendum's own text
                report["skipped"]["addenda (description Addendum) of an admission"] += 1
                report["skipped"]["annotations on addenda"] += len(note["annotations"])
            else:
                report["skipped"]["additional discharge summaries (addenda) of an admission"] += 1
                report["skipped"]["annotations on additional discharge summaries"] += len(note["annotations"])
        if not reports:
            report["skipped"]["admissions without a discharge summary report"] += 1
            continue
        j, nid, desc, note = reports[0]
        anns = []
        for k, ann in enumerate(note["annotations"]):
            where = f"{path}: notes[{j}].annotations[{k}]"
            if not isinstance(ann, dict):
                raise DataError(f"{where}: expected an object")
            for key in ("begin", "end", "code", "code_system"):
                if key not in ann:
                    raise DataError(f"{where}: missing key {key!r}")
            system = str(ann["code_system"]).upper().replace(" ", "").replace("_", "-")
            if "ICD-9" in system or "ICD9" in system:
                report["skipped"]["ICD-9 annotations"] += 1
                continue
            if system == "CPT":
                report["skipped"]["CPT annotations"] += 1
                continue
            sys = "pcs" if "PCS" in system else ("cm" if "CM" in system or system in ("ICD-10", "ICD10") else None)
            if sys is None:
                raise DataError(f"{where}: unknown code_system {ann['code_system']!r} (expected ICD-10-CM, ICD-10-PCS, ICD-9-CM or CPT)")
            if not isinstance(ann["code"], str):
                raise DataError(f"{where}: code must be a string, got {ann['code']!r}")
            begin = _int_id(ann["begin"], where, "begin")
            end = _int_id(ann["end"], where, "end")
            anns.append((k, begin, end, ann["code"], sys, str(ann.get("type", "")), ann.get("covered_text", ann.get("text"))))
        out.append(MdaceNote(path, hadm, j, nid, desc, tuple(anns)))
    report["read"]["admissions (Inpatient ICD-10) with a report"] = len(out)
    report["read"] = dict(report["read"])
    return out, report


def load_mdace(
    mdace_dir: str | os.PathLike,
    docs: pd.DataFrame,
    on_mismatch: Literal["error", "skip"] = "error",
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """MDACE-format evidence keyed to ``docs`` by admission (``note_id = str(hadm_id)``): for files
    whose offsets refer to the texts of ``docs`` (e.g. MDACE-style annotations made on MIMIC-IV).
    MDACE *as released* refers to MIMIC-III notes: use :func:`load_mdace_mimic3` for it.

    Files, notes and annotations are selected by :func:`read_mdace`. ``begin``/``end`` are half-open
    offsets checked against the note text (and against ``covered_text`` / ``text`` when an
    annotation carries it): a failure raises :class:`DataError` naming the file and annotation, or
    with ``on_mismatch="skip"`` is counted. Admissions absent from ``docs`` are counted and skipped.
    Granularity ``evidence``; the MDACE ``type`` is kept in ``evidence_type``. Returns ``(docs with
    annotated=True on matched documents, spans, report)``.
    """
    notes, report = read_mdace(mdace_dir)
    report["skipped"] = Counter(report["skipped"])
    texts = dict(zip(docs["note_id"].astype(str), docs["text"]))
    codes_of = {str(n): set(cs) for n, cs in zip(docs["note_id"], docs["codes"])}
    rows: list[dict] = []
    n_ann = 0
    for note in notes:
        nid = str(note.hadm_id)
        if nid not in texts:
            report["skipped"]["admissions not among the documents"] += 1
            report["skipped"]["annotations of admissions not among the documents"] += len(note.annotations)
            continue
        text = texts[nid]
        for k, start, end, raw_code, sys, etype, quoted in note.annotations:
            n_ann += 1
            where = f"{note.path}: notes[{note.note_index}].annotations[{k}]"
            code = _code_for_doc(raw_code, sys, codes_of[nid], where)
            problem = None
            if not (0 <= start < end <= len(text)):
                problem = f"offsets [{start}, {end}) outside note {nid!r} of length {len(text)}"
            elif quoted is not None and _ws(str(quoted)) != _ws(text[start:end]):
                problem = f"span text {quoted!r} does not match note text {text[start:end]!r}"
            if problem:
                if on_mismatch == "error":
                    raise DataError(f"{where}: {problem}")
                report["skipped"]["annotations whose offsets or text do not fit the note"] += 1
                continue
            if code not in codes_of[nid]:
                report.setdefault("warnings", Counter())["span codes not among the document's codes (kept)"] += 1
            rows.append({"note_id": nid, "code": code, "start": start, "end": end, "granularity": "evidence",
                         "source": "human", "evidence_type": etype, "source_note_id": str(note.note_id)})
    spans = _spans_frame(rows, ["evidence_type", "source_note_id"])
    dup = spans.duplicated(["note_id", "code", "start", "end"])
    if dup.any():
        report["skipped"]["duplicate spans (same note, code and offsets)"] += int(dup.sum())
        spans = spans[~dup].reset_index(drop=True)
    report["read"]["annotations on kept discharge summaries"] = n_ann
    report["kept"] = {"spans": int(len(spans)), "annotated documents": int(spans["note_id"].nunique())}
    report["skipped"] = dict(report["skipped"])
    if "warnings" in report:
        report["warnings"] = dict(report["warnings"])
    docs = docs.copy()
    docs["annotated"] = docs["annotated"] | docs["note_id"].isin(set(spans["note_id"]))
    return docs, spans, report


#: NOTEEVENTS columns the MIMIC-III reader needs.
NOTEEVENTS_COLUMNS = ["ROW_ID", "HADM_ID", "CATEGORY", "DESCRIPTION", "TEXT"]


def read_noteevents(path: str | os.PathLike, row_ids: set[int]) -> dict[int, dict]:
    """The MIMIC-III ``NOTEEVENTS.csv`` (or ``.csv.gz``) rows whose integer ``ROW_ID`` is in
    ``row_ids``, streamed (the file is ~4 GB): ``ROW_ID -> {hadm_id, category, description,
    iserror, text, line}``. A bad header, a row with the wrong number of fields or a non-integer
    ``ROW_ID`` is a :class:`DataError` naming the file and line."""
    path = resolve_path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (data.mimic3_noteevents should be MIMIC-III NOTEEVENTS.csv or .csv.gz)")
    out: dict[int, dict] = {}
    col: dict[str, int] = {}
    for header, _, first, row in _csv_rows(path, NOTEEVENTS_COLUMNS):
        col = col or {c: header.index(c) for c in header}
        rid = _int(row[col["ROW_ID"]], f"{path} line {first}", "ROW_ID")
        if rid in row_ids:
            if "\x00" in row[col["TEXT"]]:
                raise DataError(f"{path} line {first}: NUL byte in TEXT of ROW_ID {rid}")
            out[rid] = {"hadm_id": row[col["HADM_ID"]].strip(), "category": row[col["CATEGORY"]].strip(),
                        "description": row[col["DESCRIPTION"]].strip(), "text": row[col["TEXT"]],
                        "iserror": row[col["ISERROR"]].strip() if "ISERROR" in col else "", "line": first}
    return out


def load_mdace_mimic3(
    mdace_dir: str | os.PathLike,
    noteevents: str | os.PathLike,
    train_docs: pd.DataFrame,
    trim: Literal["edges", "edin", "none"] = "edges",
    unseen: Literal["keep", "drop"] = "keep",
    split: str = "test",
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """MDACE's Inpatient ICD-10 admissions as evaluation documents, their text from MIMIC-III
    (the route of Edin et al. 2024: train on MIMIC-IV, evaluate rationales on MDACE).

    - Notes: :func:`read_mdace` picks each admission's discharge-summary report; its MDACE
      ``note_id`` is the NOTEEVENTS ``ROW_ID`` (integers compared as integers). The document is
      ``note_id = "mimic3_<ROW_ID>"``, ``split`` (default ``test``), ``annotated=True``,
      ``credentialed=True``. A ROW_ID absent from NOTEEVENTS, or whose HADM_ID or CATEGORY differ
      from MDACE's, is an error naming both files.
    - Spans: offsets are checked against the text (``0 <= begin < end <= len``: else an error),
      then trimmed (:func:`trim_span`, rule ``trim``); spans empty after trimming are counted and
      skipped; duplicates (same note, code, offsets) counted and merged.
    - Codes: normalised (dotted ICD-10-CM, undotted PCS), then mapped to the code versions of the
      MIMIC-IV documents ``train_docs`` (:func:`map_code_version`; counted by how). A code no
      training document carries is counted and listed; ``unseen="keep"`` keeps it (its spans,
      and it stays a gold code, a miss for every model), ``"drop"`` removes it and its spans.
    - ``codes`` of a document: its mapped codes with at least one kept span, in first-span order.

    Returns ``(documents, spans, report)``; the report holds every count.
    """
    notes, report = read_mdace(mdace_dir)
    sk: Counter = Counter(report["skipped"])
    known = {c for cs in train_docs["codes"] for c in cs}
    trained = {c for cs, s in zip(train_docs["codes"], train_docs["split"]) if s == "train" for c in cs}
    rows_of = read_noteevents(noteevents, {n.note_id for n in notes})
    ne_path = resolve_path(noteevents)
    mapped: Counter = Counter()
    mapping_used: dict[str, str] = {}
    unseen_codes: Counter = Counter()
    n_trimmed = 0
    doc_rows, span_rows = [], []
    for note in notes:
        row = rows_of.get(note.note_id)
        if row is None:
            raise DataError(f"{note.path}: note_id {note.note_id} (hadm_id {note.hadm_id}) is not a ROW_ID of {ne_path}")
        if row["hadm_id"] and _int(row["hadm_id"], f"{ne_path} line {row['line']}", "HADM_ID") != note.hadm_id:
            raise DataError(f"{note.path}: hadm_id {note.hadm_id} but {ne_path} line {row['line']} (ROW_ID {note.note_id}) "
                            f"has HADM_ID {row['hadm_id']}")
        if row["category"].lower() != "discharge summary":
            raise DataError(f"{note.path}: note_id {note.note_id} is a {row['category']!r} note in {ne_path} "
                            f"line {row['line']}, not a discharge summary")
        if row["iserror"] == "1":
            report.setdefault("warnings", Counter())["notes marked ISERROR in NOTEEVENTS (kept: MDACE annotated them)"] += 1
        text = row["text"]
        nid = f"mimic3_{note.note_id}"
        codes: list[str] = []
        for k, start, end, raw_code, sys, etype, quoted in note.annotations:
            where = f"{note.path}: notes[{note.note_index}].annotations[{k}]"
            if not (0 <= start < end <= len(text)):
                raise DataError(f"{where}: offsets [{start}, {end}) outside NOTEEVENTS ROW_ID {note.note_id} of length {len(text)}")
            if quoted is not None and _ws(str(quoted)) != _ws(text[start:end]):
                raise DataError(f"{where}: span text {quoted!r} does not match note text {text[start:end]!r}")
            try:
                code = icd.normalize_code(raw_code, sys)
            except icd.CodeError as exc:
                raise DataError(f"{where}: {exc}") from None
            new, how = map_code_version(code, known)
            mapped[f"annotations whose code is {how}" if how != "same" else "annotations whose code MIMIC-IV has"] += 1
            if how in ("prefix", "table"):
                mapping_used[code] = new
            if new not in trained:
                unseen_codes[new] += 1
                if unseen == "drop":
                    sk["annotations of codes no training document carries (dropped)"] += 1
                    continue
            s, e = trim_span(text, start, end, trim)
            if (s, e) != (start, end):
                n_trimmed += 1
            if s >= e:
                sk["spans empty after trimming punctuation and whitespace"] += 1
                continue
            span_rows.append({"note_id": nid, "code": new, "start": s, "end": e, "granularity": "evidence",
                              "source": "human", "evidence_type": etype, "source_note_id": str(note.note_id)})
            if new not in codes:
                codes.append(new)
        if not codes:
            sk["admissions left without spans"] += 1
            continue
        doc_rows.append({"note_id": nid, "text": text, "codes": codes, "split": split, "annotated": True,
                         "fewshot": False, "credentialed": True})
    docs = _docs_frame(doc_rows)
    spans = _spans_frame(span_rows, ["evidence_type", "source_note_id"])
    dup = spans.duplicated(["note_id", "code", "start", "end"])
    if dup.any():
        sk["duplicate spans (same note, code and offsets, after mapping and trimming)"] += int(dup.sum())
        spans = spans[~dup].reset_index(drop=True)
    report["source"] += f" with MIMIC-III text from {ne_path}"
    report["code versions"] = {**dict(mapped), "mapping used": dict(sorted(mapping_used.items()))}
    report["codes no training document carries"] = {
        "rule": f"{unseen}: " + ("kept as gold codes (misses for every model) with their spans" if unseen == "keep"
                                 else "dropped with their spans"),
        "distinct codes": len(unseen_codes), "annotations": int(sum(unseen_codes.values())),
        "codes": dict(sorted(unseen_codes.items())),
    }
    report["trimming"] = {"rule": trim, "spans trimmed": n_trimmed}
    report["skipped"] = dict(sk)
    if "warnings" in report:
        report["warnings"] = dict(report["warnings"])
    report["kept"] = {"documents": int(len(docs)), "spans": int(len(spans)), "split": split}
    return docs, spans, report


def load_spans_jsonl(
    path: str | os.PathLike,
    docs: pd.DataFrame,
    skipped_note_ids: Iterable[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Human spans in the project's JSONL format (:func:`records.write_spans_jsonl`: one object
    per line with ``note_id, code, start, end`` and optional ``granularity, source, text``).

    Offsets and an optional ``text`` are checked against ``docs`` (:func:`records.read_spans_jsonl`);
    a span on an empty note, or on a note the loader skipped (``skipped_note_ids``, e.g. the
    empty MIMIC notes), is an error naming the line. Codes are normalised (matched to the note's
    codes as CM or PCS). Returns ``(docs with annotated=True on matched notes, spans, report)``.
    """
    path = resolve_path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    texts = dict(zip(docs["note_id"].astype(str), docs["text"]))
    skipped = {str(s) for s in skipped_note_ids}
    read_text_file(path)  # strict UTF-8 first: the error names the byte offset
    for lineno, rec in iter_jsonl_objects(path):
        nid = str(rec.get("note_id"))
        if nid in texts and not texts[nid].strip():
            raise DataError(f"{path}:{lineno}: note_id {nid!r} is an empty note")
        if nid in skipped and nid not in texts:
            raise DataError(f"{path}:{lineno}: note_id {nid!r} is a note the loader skipped (empty note)")
    spans, linenos = _read_spans_jsonl(path, docs)
    codes_of = {str(n): set(cs) for n, cs in zip(docs["note_id"], docs["codes"])}
    spans["code"] = [
        _code_for_doc(c, "auto", codes_of[n], f"{path}:{ln}")
        for c, n, ln in zip(spans["code"], spans["note_id"], linenos)
    ]
    spans["granularity"] = spans["granularity"].replace("", "evidence")
    report = {"source": f"JSONL {path}", "read": {"spans": int(len(spans))}, "skipped": {}}
    off = sum(c not in codes_of[n] for c, n in zip(spans["code"], spans["note_id"]))
    if off:
        report["warnings"] = {"span codes not among the document's codes (kept)": int(off)}
    dup = spans.duplicated(["note_id", "code", "start", "end"])
    if dup.any():
        report["skipped"]["duplicate spans (same note, code and offsets)"] = int(dup.sum())
        spans = spans[~dup].reset_index(drop=True)
    report["kept"] = {"spans": int(len(spans)), "annotated documents": int(spans["note_id"].nunique())}
    docs = docs.copy()
    docs["annotated"] = docs["annotated"] | docs["note_id"].isin(set(spans["note_id"]))
    return docs, spans, report


# --------------------------------------------------------------------------------------------
# CodiEsp
# --------------------------------------------------------------------------------------------
#: Sentence boundary used for the English projection: whitespace after ``.``, ``!`` or ``?`` when
#: the next character opens a sentence (upper-case letter, digit, ``¿ ¡ ( " «``); line breaks are
#: boundaries too. Chosen because it reproduces the sentence count of the English machine
#: translation (one sentence per line) for most CodiEsp documents.
SENTENCE_BREAK = re.compile(r"(?<=[.!?])[ \t]+(?=[A-ZÁÉÍÓÚÑÜ¿¡(\"«0-9])")
_LETTER = re.compile(r"[^\W\d_]")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentences of ``text`` as half-open offsets, stripped of surrounding whitespace.

    A boundary is a line break, or whitespace that follows ``.``, ``!`` or ``?`` and precedes an
    upper-case letter, a digit or ``¿ ¡ ( " «`` (:data:`SENTENCE_BREAK`). Empty pieces are dropped.
    """
    out = []
    pos = 0
    for line in text.split("\n"):
        cuts = [0] + [x for m in SENTENCE_BREAK.finditer(line) for x in (m.start(), m.end())] + [len(line)]
        for a, b in zip(cuts[0::2], cuts[1::2]):
            piece = line[a:b]
            if piece.strip():
                lead = len(piece) - len(piece.lstrip())
                out.append((pos + a + lead, pos + a + len(piece.rstrip())))
        pos += len(line) + 1
    return out


def translation_lines(text: str) -> list[tuple[int, int]]:
    """Offsets of the sentence lines of an English CodiEsp file: lines with at least one letter
    (the translation has stray lines such as ``1.`` that match no Spanish sentence)."""
    out, pos = [], 0
    for line in text.split("\n"):
        if _LETTER.search(line):
            out.append((pos, pos + len(line)))
        pos += len(line) + 1
    return out


def resolve_codiesp_dir(path: Optional[str | os.PathLike] = None) -> Path:
    """``path``, else ``$RK_CODIESP_DIR``, else :data:`DEFAULT_CODIESP_DIR` (relative paths from
    the repository root); then the folder below it that holds ``train/trainD.tsv``."""
    chosen = path or os.environ.get("RK_CODIESP_DIR") or DEFAULT_CODIESP_DIR
    root = resolve_path(chosen)
    found = _find_codiesp_root(root)
    if found is None:
        raise DataError(
            f"CodiEsp folder not found at {root} (no train/trainD.tsv below it): set data.codiesp_dir "
            f"or RK_CODIESP_DIR, or fetch it with rationale_kit.data.download_codiesp"
        )
    return found


def _find_codiesp_root(root: Path) -> Optional[Path]:
    if (root / "train" / "trainD.tsv").exists():
        return root
    if root.is_dir():
        for pattern in ("*/train/trainD.tsv", "*/*/train/trainD.tsv"):
            hits = sorted(root.glob(pattern))
            if hits:
                return hits[0].parent.parent
    return None


def _read_tsv(path: Path, n_fields: int) -> list[tuple[int, list[str]]]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    out = []
    # a UTF-8 byte-order mark would otherwise become part of the first document id
    for lineno, line in enumerate(read_text_file(path).removeprefix("\ufeff").split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != n_fields:
            raise DataError(f"{path}:{lineno}: expected {n_fields} tab-separated fields, got {len(fields)}")
        out.append((lineno, fields))
    return out


_POSITIONS = re.compile(r"^\d+ \d+(;\d+ \d+)*$")


def load_codiesp(
    root: Optional[str | os.PathLike] = None,
    language: Literal["es", "en"] = "es",
    fewshot_pool: int = 100,
    seed: int = 0,
    credentialed: bool = False,
) -> Dataset:
    """CodiEsp v4 (CLEF eHealth 2020): 1,000 clinical cases, train 500 / dev (-> ``val``) 250 /
    test 250, coded with ICD-10-CM diagnoses (``{split}D.tsv``, dotted) and ICD-10-PCS procedures
    (``{split}P.tsv``); human evidence in ``{split}X.tsv``.

    ``language="es"``: the Spanish ``text_files/`` with the native spans; each piece of a
    discontinuous evidence (``"s e;s e"``) is one ``mention`` span, the pieces sharing ``group``
    (``"<split>X.tsv:<line>"``; a piece shared by several evidences of the same code is one span
    whose ``group`` lists their ids, comma-separated). Each evidence's text is compared with the note (whitespace
    normalised, pieces joined by a space); mismatches are counted and listed in ``report`` and kept.
    Empty pieces (``s == s``) are counted and skipped. ``language="en"``: the text is the English
    machine translation's lines joined by ``"\\n"``; where the Spanish sentence count
    (:func:`split_sentences`) equals the number of English sentence lines
    (:func:`translation_lines`), each Spanish span maps to the whole English line(s) of its
    sentence(s) (granularity ``sentence``; one span per code and line, ``group`` listing the
    evidences it came from); other documents keep their codes
    and get no spans (``report["english projection"]`` gives the coverage).

    ``annotated`` = the document has spans; ``fewshot_pool`` annotated training documents (seeded
    choice) are marked ``fewshot``.
    """
    if language not in ("es", "en"):
        raise ValueError(f"language must be 'es' or 'en', got {language!r}")
    base = resolve_codiesp_dir(root)
    report: dict = {"dataset": "codiesp", "language": language, "root": str(base), "read": Counter(),
                    "skipped": Counter(), "merged": Counter(), "warnings": Counter(), "text mismatches": []}
    doc_rows: list[dict] = []
    span_rows: list[dict] = []
    projection = {s: {"documents": 0, "projected": 0, "spanish spans": 0, "projected spans": 0} for s in SPLITS}
    for folder, split in CODIESP_SPLITS.items():
        d = base / folder
        text_dir = d / "text_files"
        if not text_dir.is_dir():
            raise DataError(f"{text_dir}: folder not found")
        texts: dict[str, str] = {}
        for p in sorted(text_dir.glob("*.txt")):
            t = read_text_file(p)
            if not t.strip():
                report["skipped"]["empty documents"] += 1
                continue
            texts[p.stem] = t
        report["read"][f"{folder} text files"] = len(texts)
        codes: dict[str, list[str]] = defaultdict(list)
        for kind, system in (("D", "cm"), ("P", "pcs")):
            path = d / f"{folder}{kind}.tsv"
            rows = _read_tsv(path, 2)
            report["read"][f"{folder}{kind}.tsv rows"] = len(rows)
            for lineno, (doc, code) in rows:
                try:
                    c = icd.normalize_code(code, system)
                except icd.CodeError as exc:
                    raise DataError(f"{path}:{lineno}: {exc}") from None
                if doc not in texts:
                    report["skipped"]["code rows of documents without a text file"] += 1
                    continue
                if c in codes[doc]:
                    report["skipped"]["repeated code rows of a document"] += 1
                    continue
                codes[doc].append(c)
        xpath = d / f"{folder}X.tsv"
        xrows = _read_tsv(xpath, 5)
        report["read"][f"{folder}X.tsv rows"] = len(xrows)
        native: dict[str, list[dict]] = defaultdict(list)
        for lineno, (doc, label, code, evidence, positions) in xrows:
            where = f"{xpath}:{lineno}"
            if label not in ("DIAGNOSTICO", "PROCEDIMIENTO"):
                raise DataError(f"{where}: label must be DIAGNOSTICO or PROCEDIMIENTO, got {label!r}")
            try:
                c = icd.normalize_code(code, "cm" if label == "DIAGNOSTICO" else "pcs")
            except icd.CodeError as exc:
                raise DataError(f"{where}: {exc}") from None
            if doc not in texts:
                report["skipped"]["evidence rows of documents without a text file"] += 1
                continue
            text = texts[doc]
            if not _POSITIONS.match(positions.strip()):
                raise DataError(f"{where}: malformed positions {positions!r} (expected \"start end[;start end]\")")
            pieces = [tuple(int(x) for x in p.split()) for p in positions.strip().split(";")]
            for s, e in pieces:
                if not (0 <= s <= e <= len(text)):
                    raise DataError(f"{where}: offsets [{s}, {e}) outside document {doc!r} of length {len(text)}")
            covered = " ".join(text[s:e] for s, e in pieces if e > s)
            if _ws(covered) != _ws(evidence):
                report["warnings"]["evidence text differs from the note text at its offsets (kept)"] += 1
                if len(report["text mismatches"]) < 20:
                    report["text mismatches"].append(f"{where}: evidence {evidence!r} vs note {covered!r}")
            if c not in codes[doc]:
                report["warnings"]["evidence codes not among the document's D/P codes (kept)"] += 1
            for s, e in pieces:
                if e == s:
                    report["skipped"]["empty pieces of discontinuous evidence"] += 1
                    continue
                native[doc].append({"note_id": doc, "code": c, "start": s, "end": e, "granularity": "mention",
                                    "source": "human", "group": f"{folder}X.tsv:{lineno}"})
        for doc in native:
            merged: dict[tuple, dict] = {}
            for r in native[doc]:
                key = (r["code"], r["start"], r["end"])
                if key in merged:
                    report["merged"]["pieces shared by several evidences of one code (one span, groups joined)"] += 1
                    merged[key]["group"] += "," + r["group"]
                else:
                    merged[key] = r
            native[doc] = list(merged.values())
        for doc in sorted(texts):
            if not codes[doc]:
                report["warnings"]["documents without codes (kept)"] += 1
            doc_spans = native.get(doc, [])
            text = texts[doc]
            if language == "en":
                en_path = d / "text_files_en" / f"{doc}.txt"
                if not en_path.exists():
                    report["skipped"]["documents without an English translation file"] += 1
                    continue
                lines = read_text_file(en_path).replace("\r", "").split("\n")
                while lines and lines[-1] == "":
                    lines.pop()
                en_text = "\n".join(lines)
                projection[split]["documents"] += 1
                projection[split]["spanish spans"] += len(doc_spans)
                sentences = split_sentences(text)
                en_lines = translation_lines(en_text)
                projected = []
                if len(sentences) == len(en_lines):
                    projection[split]["projected"] += 1
                    by_line: dict[tuple, dict] = {}
                    for r in doc_spans:
                        for i, (ss, se) in enumerate(sentences):
                            if not (ss < r["end"] and r["start"] < se):
                                continue
                            if (r["code"], i) in by_line:
                                groups = by_line[(r["code"], i)]["group"].split(",")
                                new_groups = [g for g in r["group"].split(",") if g not in groups]
                                by_line[(r["code"], i)]["group"] = ",".join(groups + new_groups)
                            else:
                                ls, le = en_lines[i]
                                by_line[(r["code"], i)] = {**r, "start": ls, "end": le, "granularity": "sentence"}
                    projected = list(by_line.values())
                    projection[split]["projected spans"] += len(projected)
                doc_spans, text = projected, en_text
            span_rows.extend(doc_spans)
            doc_rows.append({"note_id": doc, "text": text, "codes": list(codes[doc]), "split": split,
                             "annotated": bool(doc_spans), "fewshot": False, "credentialed": credentialed})
    docs = _docs_frame(doc_rows)
    spans = _spans_frame(span_rows, ["group"])
    docs = mark_fewshot(docs, fewshot_pool, seed)
    report["kept"] = {"documents": int(len(docs)), "spans": int(len(spans)),
                      "distinct codes": int(len({c for cs in docs["codes"] for c in cs})),
                      "few-shot pool documents": int(docs["fewshot"].sum())}
    report["splits"] = _split_counts(docs, spans)
    if language == "en":
        total = {k: sum(p[k] for p in projection.values()) for k in projection["train"]}
        report["english projection"] = {
            **{s: projection[s] for s in SPLITS},
            "coverage (documents whose sentence counts agree)": f"{total['projected']}/{total['documents']}",
            "method": "Spanish sentences (split_sentences) matched by position to the English lines "
                      "with letters; a Spanish span becomes the whole English line of each sentence it overlaps",
        }
    for key in ("read", "skipped", "merged", "warnings"):
        report[key] = dict(report[key])
    if not report["text mismatches"]:
        del report["text mismatches"]
    return Dataset(f"codiesp_{language}", docs, spans, codes_table(docs), report)


def download_codiesp(dest: str | os.PathLike, url: str, sha256: str, timeout: float = 120.0) -> Path:
    """Download a CodiEsp zip from ``url`` into ``dest``, verify its SHA-256 before unpacking,
    unpack it there and return the folder that holds ``train/`` (``dest`` when none does).

    The archive is streamed with httpx to ``dest/<name>.part``; a checksum mismatch deletes it and
    raises :class:`DataError`; members that would land outside ``dest`` are refused. Never called
    by the loaders: run it once by hand (the Zenodo record of CodiEsp v4 is 3837305).
    """
    import httpx

    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    name = Path(httpx.URL(url).path).name or "codiesp.zip"
    part = dest / f"{name}.part"
    digest = hashlib.sha256()
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as resp:
            if resp.status_code != 200:
                raise DataError(f"download of {url} failed: HTTP {resp.status_code}")
            with open(part, "wb") as fh:
                for chunk in resp.iter_bytes(1 << 20):
                    digest.update(chunk)
                    fh.write(chunk)
    except httpx.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed: {exc}") from None
    except DataError:
        part.unlink(missing_ok=True)
        raise
    got = digest.hexdigest()
    if got != sha256.strip().lower():
        part.unlink(missing_ok=True)
        raise DataError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; the download was deleted")
    target = dest.resolve()
    try:
        with zipfile.ZipFile(part) as zf:
            for member in zf.infolist():
                out = (target / member.filename).resolve()
                if not out.is_relative_to(target):
                    raise DataError(f"{url}: archive member {member.filename!r} would be written outside {dest}")
            zf.extractall(target)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{url}: not a zip archive ({exc})") from None
    finally:
        part.unlink(missing_ok=True)
    return _find_codiesp_root(target) or target


# --------------------------------------------------------------------------------------------
# dispatch, reports, statistics
# --------------------------------------------------------------------------------------------
def restrict_top_codes(ds: Dataset, n: int) -> Dataset:
    """``ds`` restricted to the ``n`` codes carried by the most training documents (ties broken by
    code): other codes leave every document's ``codes`` and their spans are removed. Documents are
    kept even when no code is left (negatives for every label); annotated / few-shot documents
    left without spans lose those flags. ``report["top codes"]`` counts what was removed, per split."""
    if n < 1:
        raise DataError(f"data.top_codes must be at least 1, got {n}")
    docs = ds.docs.copy()
    counts = Counter(c for cs, s in zip(docs["codes"], docs["split"]) if s == "train" for c in set(cs))
    keep = set(sorted(counts, key=lambda c: (-counts[c], c))[:n])
    before = {s: int(sum(len(cs) for cs, sp in zip(docs["codes"], docs["split"]) if sp == s)) for s in SPLITS}
    docs["codes"] = [[c for c in cs if c in keep] for cs in docs["codes"]]
    after = {s: int(sum(len(cs) for cs, sp in zip(docs["codes"], docs["split"]) if sp == s)) for s in SPLITS}
    spans = ds.spans[ds.spans["code"].isin(keep)].reset_index(drop=True)
    with_spans = set(spans["note_id"])
    lost_ann = docs["annotated"] & ~docs["note_id"].isin(with_spans)
    lost_few = docs["fewshot"] & ~docs["note_id"].isin(with_spans)
    docs["annotated"] = docs["annotated"] & ~lost_ann
    docs["fewshot"] = docs["fewshot"] & ~lost_few
    report = dict(ds.report)
    report["top codes"] = {
        "rule": f"the {len(keep)} codes on the most training documents (of {len(counts)} training codes); "
                "other codes removed from every split with their spans",
        **{f"{s} gold code occurrences removed": f"{before[s] - after[s]} of {before[s]} "
                                                  f"({(before[s] - after[s]) / before[s]:.1%})" if before[s] else "0 of 0"
           for s in SPLITS},
        "spans removed": int(len(ds.spans) - len(spans)),
        "documents left without codes (kept as negatives)": int(sum(not cs for cs in docs["codes"])),
        "annotated documents left without spans (no longer annotated)": int(lost_ann.sum()),
        "few-shot documents left without spans (no longer in the pool)": int(lost_few.sum()),
    }
    report["splits"] = _split_counts(docs, spans)
    descs = dict(zip(ds.codes["code"], ds.codes["description"]))
    return Dataset(ds.name, docs, spans, codes_table(docs, descriptions=descs), report)


def load_dataset(profile) -> Dataset:
    """The data set a profile names, restricted to ``data.top_codes`` when set
    (:func:`restrict_top_codes`); see :func:`_load_dataset`."""
    ds = _load_dataset(profile)
    top = getattr(profile.data, "top_codes", None)
    return restrict_top_codes(ds, top) if top else ds


def _load_dataset(profile) -> Dataset:
    """The data set a profile names (``common.dataset``), with its ``data`` parameters.

    - ``embedded``: :func:`rationale_kit.data.embedded.generate_corpus` (``data.embedded``, ``common.seed``).
    - ``codiesp``: :func:`load_codiesp` (``data.codiesp_dir`` or ``$RK_CODIESP_DIR``,
      ``data.codiesp_language``).
    - ``mimic``: :func:`load_mimic` (``data.mimic_dir`` or ``data.mimic_hosp_dir`` +
      ``data.mimic_note_dir``, ``data.mimic_split_file``, ``data.mimic_min_code_count``) for the
      coding data, plus the rationale evaluation documents of :func:`load_mdace_mimic3`
      (``data.mdace_dir`` + ``data.mimic3_noteevents``, ``data.mdace_trim``,
      ``data.mdace_unseen_codes``) and/or spans on MIMIC-IV notes from :func:`load_spans_jsonl`
      (``data.spans_jsonl``). At least one span source is required (checked here, at load time);
      documents are credentialed.
    Texts are kept whole: models cut them to ``data.max_words`` themselves.
    """
    data, seed = profile.data, profile.common.seed
    name = profile.common.dataset
    pool = getattr(data, "fewshot_pool", None)
    if name == "embedded":
        from rationale_kit.data import embedded as corpus  # lazy: the generator is only needed for this data set

        c = corpus.generate_corpus(data.embedded, seed)
        docs = c.docs.copy()
        for col in ("annotated", "fewshot"):
            if col not in docs:
                docs[col] = False
        docs["credentialed"] = bool(data.credentialed)
        docs = _docs_frame(docs[DATASET_DOC_COLUMNS].to_dict("records"))
        descs = dict(zip(c.codes["code"], c.codes["description"])) if len(c.codes) else {}
        codes = codes_table(docs, descriptions=descs)
        extra = sorted(set(c.codes["code"]) - set(codes["code"])) if len(c.codes) else []
        if extra:  # lexicon codes no document carries: keep them with n_train 0
            codes = pd.concat([codes, pd.DataFrame({"code": extra, "description": [descs[x] for x in extra],
                                                    "n_train": 0})], ignore_index=True)
        spans = c.spans.reset_index(drop=True)
        report = {"dataset": "embedded", "generator": f"corpus.generate_corpus(seed={seed})",
                  "kept": {"documents": int(len(docs)), "spans": int(len(spans)), "codes": int(len(codes))},
                  "skipped": {}, "splits": _split_counts(docs, spans)}
        return Dataset("embedded", docs, spans, codes, report)
    if name == "codiesp":
        kwargs = {} if pool is None else {"fewshot_pool": pool}
        return load_codiesp(data.codiesp_dir, data.codiesp_language, seed=seed,
                            credentialed=bool(data.credentialed), **kwargs)
    if name == "mimic":
        if not data.mimic_dir and not (data.mimic_hosp_dir and data.mimic_note_dir):
            raise DataError("profile data.mimic_dir is not set (the folder holding MIMIC-IV note/ and hosp/); "
                            "or set both data.mimic_hosp_dir and data.mimic_note_dir")
        if not data.mdace_dir and not data.spans_jsonl:
            raise DataError("mimic profile without rationale spans: set data.mdace_dir (MDACE's data/ folder) and "
                            "data.mimic3_noteevents (MIMIC-III NOTEEVENTS.csv[.gz]), or data.spans_jsonl")
        if data.mdace_dir and not data.mimic3_noteevents:
            raise DataError("data.mdace_dir is set but data.mimic3_noteevents is not: MDACE's offsets refer to "
                            "MIMIC-III discharge summaries (note_id = NOTEEVENTS ROW_ID), so set "
                            "data.mimic3_noteevents to MIMIC-III NOTEEVENTS.csv or .csv.gz")
        ds = load_mimic(data.mimic_dir, data.mimic_split_file, data.mimic_min_code_count, seed,
                        hosp_dir=data.mimic_hosp_dir, note_dir=data.mimic_note_dir)
        docs, spans, report = ds.docs, [ds.spans], dict(ds.report)
        if data.mdace_dir:
            ev_docs, s, report["mdace"] = load_mdace_mimic3(data.mdace_dir, data.mimic3_noteevents, docs,
                                                            trim=data.mdace_trim, unseen=data.mdace_unseen_codes)
            if not len(s):
                raise DataError(f"{resolve_path(data.mdace_dir)}: no MDACE span could be used (see the counts: "
                                f"{report['mdace']['skipped']}); check data.mdace_dir points at MDACE's data/ folder")
            docs = pd.concat([docs, ev_docs], ignore_index=True)
            spans.append(s)
        if data.spans_jsonl:
            docs, s, report["spans_jsonl"] = load_spans_jsonl(data.spans_jsonl, docs, report.get("empty_note_ids", ()))
            if not len(s):
                raise DataError(f"{resolve_path(data.spans_jsonl)}: no spans in the file (data.spans_jsonl)")
            spans.append(s)
        spans = pd.concat([s for s in spans if len(s)] or [spans[0]], ignore_index=True)
        if pool:
            docs = mark_fewshot(docs, pool, seed)
        report["splits"] = _split_counts(docs, spans)
        codes = codes_table(docs, descriptions=dict(zip(ds.codes["code"], ds.codes["description"])))
        return Dataset("mimic", docs, spans, codes, report)
    raise DataError(f"unknown dataset {name!r} (use embedded, codiesp or mimic)")


def format_report(report: Mapping, indent: int = 0) -> str:
    """The report as indented ``key: value`` lines (nested dicts indented, lists one per line;
    long id lists are summarised)."""
    lines = []
    pad = "  " * indent
    for key, value in report.items():
        if isinstance(value, Mapping):
            if not value:
                lines.append(f"{pad}{key}: none")
                continue
            lines.append(f"{pad}{key}:")
            lines.append(format_report(value, indent + 1))
        elif isinstance(value, (list, tuple)):
            if key == "empty_note_ids":
                shown = ", ".join(map(str, value[:10])) + (" ..." if len(value) > 10 else "")
                lines.append(f"{pad}{key}: {len(value)}" + (f" ({shown})" if value else ""))
                continue
            lines.append(f"{pad}{key}: {len(value)}")
            lines.extend(f"{pad}  - {v}" for v in value)
        else:
            lines.append(f"{pad}{key}: {value}")
    return "\n".join(lines)


def _n_words(text: str) -> int:
    return len(WORD_RE.findall(text))


def dataset_statistics(ds: Dataset) -> pd.DataFrame:
    """The paper's dataset table, one row per split (and ``all``): documents, unique codes, codes
    per document (mean), words per document (mean / median / max; ``\\w+`` words of the raw text),
    annotated documents, spans per granularity, mean span length in words, spans per (note, code)
    pair with spans (mean)."""
    docs, spans = ds.docs, ds.spans
    words = pd.Series([_n_words(t) for t in docs["text"]], index=docs.index, dtype="int64")
    texts = dict(zip(docs["note_id"], docs["text"]))
    split_of = dict(zip(docs["note_id"], docs["split"]))
    if len(spans):
        span_words = np.array([_n_words(texts[n][s:e]) if n in texts else 0
                               for n, s, e in zip(spans["note_id"], spans["start"], spans["end"])])
        span_split = spans["note_id"].map(split_of)
    granularities = sorted(set(spans["granularity"])) if len(spans) else []
    rows = {}
    for name in [s for s in SPLITS if (docs["split"] == s).any()] + ["all"]:
        sel = (docs["split"] == name) if name != "all" else pd.Series(True, index=docs.index)
        d = docs[sel]
        w = words[sel]
        row = {
            "documents": int(len(d)),
            "unique codes": int(len({c for cs in d["codes"] for c in cs})),
            "codes per document": float(np.mean([len(cs) for cs in d["codes"]])) if len(d) else 0.0,
            "words per document (mean)": float(w.mean()) if len(d) else 0.0,
            "words per document (median)": float(w.median()) if len(d) else 0.0,
            "words per document (max)": int(w.max()) if len(d) else 0,
            "annotated documents": int(d["annotated"].sum()),
        }
        if len(spans):
            ssel = (span_split == name).to_numpy() if name != "all" else np.ones(len(spans), dtype=bool)
            sp = spans[ssel]
            for g in granularities:
                row[f"spans ({g or 'unlabelled'})"] = int((sp["granularity"] == g).sum())
            row["span length in words (mean)"] = float(span_words[ssel].mean()) if ssel.any() else 0.0
            pairs = sp.groupby(["note_id", "code"]).size()
            row["spans per (note, code) pair"] = float(pairs.mean()) if len(pairs) else 0.0
        else:
            row["spans"] = 0
        rows[name] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "split"
    return out


# --------------------------------------------------------------------------------------------
# saved tables (the artifacts of notebook 01) and small notebook helpers
# --------------------------------------------------------------------------------------------
def human_spans(ds: Dataset) -> pd.DataFrame:
    """Spans a human annotated and the workbook may use: those of annotated (evaluation) notes and
    of the few-shot pool. The embedded corpus knows spans for every note; the rest are the
    *oracle* spans, used only as the upper-reference teacher in notebook 07."""
    keep = set(ds.docs.note_id[ds.docs.annotated | ds.docs.fewshot])
    return ds.spans[ds.spans.note_id.isin(keep)].reset_index(drop=True)


def save_dataset(ds: Dataset, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``docs``, ``spans`` (human), ``oracle_spans`` (all known spans), ``codes`` as parquet
    and the load report as JSON; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "docs.parquet", out / "spans.parquet", out / "oracle_spans.parquet", out / "codes.parquet", out / "report.json"]
    ds.docs.to_parquet(paths[0], index=False)
    human_spans(ds).to_parquet(paths[1], index=False)
    ds.spans.to_parquet(paths[2], index=False)
    ds.codes.to_parquet(paths[3], index=False)
    paths[4].write_text(json.dumps({"name": ds.name, **ds.report}, indent=1, default=str))
    return paths


def export_dataset(ds: Dataset, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write the canonical tables as JSONL (what ``export-data`` writes): ``docs.jsonl``, one object
    per document with the docs table's columns (``note_id, text, codes, split, annotated, fewshot,
    credentialed``), and ``spans.jsonl`` with the human spans notebook 01 saves
    (:func:`human_spans`: ``note_id, code, start, end, granularity, source``). Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs_path, spans_path = out / "docs.jsonl", out / "spans.jsonl"
    with open(docs_path, "w", encoding="utf-8") as fh:
        for r in ds.docs[DATASET_DOC_COLUMNS].itertuples(index=False):
            rec = {"note_id": str(r.note_id), "text": r.text, "codes": [str(c) for c in r.codes], "split": r.split,
                   "annotated": bool(r.annotated), "fewshot": bool(r.fewshot), "credentialed": bool(r.credentialed)}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    write_spans_jsonl(human_spans(ds)[SPAN_COLUMNS], spans_path)
    return docs_path, spans_path


def load_saved(folder: str | os.PathLike, oracle: bool = False) -> Dataset:
    """The dataset saved by :func:`save_dataset` (``spans`` = human spans, or all known spans
    with ``oracle=True``)."""
    folder = Path(folder)
    for name in ("docs.parquet", "spans.parquet", "codes.parquet"):
        if not (folder / name).exists():
            raise DataError(f"{folder}: {name} is missing; run notebooks/01_data.ipynb first")
    docs = pd.read_parquet(folder / "docs.parquet")
    docs["codes"] = docs["codes"].map(list)
    spans = pd.read_parquet(folder / ("oracle_spans.parquet" if oracle else "spans.parquet"))
    report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").exists() else {}
    return Dataset(report.get("name", folder.name), docs, spans, pd.read_parquet(folder / "codes.parquet"), report)


def example_pair(ds: Dataset, split: str = "test") -> tuple[str, str]:
    """A (note_id, code) of an annotated note with gold spans at the most granularities (then most
    spans): a good note to show. Deterministic."""
    ann = set(ds.docs.note_id[(ds.docs.split == split) & ds.docs.annotated]) or set(ds.docs.note_id[ds.docs.annotated])
    sp = ds.spans[ds.spans.note_id.isin(ann)]
    if not len(sp):
        raise DataError(f"{ds.name}: no annotated note with spans to show")
    g = sp.groupby(["note_id", "code"]).agg(levels=("granularity", "nunique"), n=("start", "size")).reset_index()
    g = g.sort_values(["levels", "n", "note_id", "code"], ascending=[False, False, True, True])
    return str(g.iloc[0].note_id), str(g.iloc[0].code)


def describe_code(ds: Dataset, code: str) -> str:
    hit = ds.codes.loc[ds.codes.code == code, "description"]
    return str(hit.iloc[0]) if len(hit) else icd.describe(code)


def try_load_codiesp(profile) -> Optional[Dataset]:
    """CodiEsp when its folder is found (profile path, ``$RK_CODIESP_DIR`` or the workplace copy),
    else None. Used by notebook 01 to show real-data statistics beside the embedded corpus."""
    if profile.common.dataset == "codiesp":
        return None
    try:
        root = resolve_codiesp_dir(profile.data.codiesp_dir)
    except DataError:
        return None
    if not root.exists():
        return None
    return load_codiesp(root, profile.data.codiesp_language, seed=profile.common.seed)
