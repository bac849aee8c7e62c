"""The canonical :class:`Dataset` every loader returns, its codes table, statistics, reports, and the
saved tables of notebook 01 (save, load, JSONL export).

- ``docs``: ``note_id, text, codes (list), split (train|val|test), annotated, fewshot,
  credentialed, full_codes, eval_role``. ``text`` is the raw note, never cut or cleaned: span
  offsets point into it (models cut notes to ``data.max_words`` themselves). ``full_codes``: the
  document's ``codes`` are its whole code assignment, so it counts in coding measurement (False for
  rationale-only documents such as MDACE's, whose codes are the annotated ones). ``eval_role``:
  ``""`` (the evaluation design picks tuning notes), or ``"tuning"`` / ``"report"`` fixed by the
  data set (MDACE's own splits).
- ``spans``: :data:`records.SPAN_COLUMNS` (half-open character offsets into ``text``) plus, by
  source, ``group`` (CodiEsp: the pieces of one discontinuous evidence share a group id),
  ``evidence_type`` / ``source_note_id`` (MDACE).
- ``codes``: ``code, description, n_train`` (training documents carrying the code).
- ``report``: nested dict of counts: what was read, kept and skipped (with the reason), per
  split. :func:`format_report` prints it. Nothing is dropped without a count in ``report``.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np
import pandas as pd

from rationale_kit.core import icd
from rationale_kit.core.records import SPAN_COLUMNS, DataError, write_spans_jsonl
from rationale_kit.core.runtime import atomic_write_lines
from rationale_kit.core.text import count_words


#: Columns of the canonical documents table.
DATASET_DOC_COLUMNS = ["note_id", "text", "codes", "split", "annotated", "fewshot", "credentialed", "full_codes",
                       "eval_role"]
SPLITS = ("train", "val", "test")
#: Values of ``eval_role``.
EVAL_ROLES = ("", "tuning", "report")


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

    def subset(self, note_ids: Iterable[str]) -> "Dataset":
        """The same data set restricted to ``note_ids`` (documents in their original order, their
        spans; codes table and report unchanged). An id the data set does not have is an error."""
        keep = set(map(str, note_ids))
        unknown = keep - set(self.docs["note_id"])
        if unknown:
            raise DataError(f"{self.name}: subset names {len(unknown)} unknown note id(s), e.g. {sorted(unknown)[:3]}")
        docs = self.docs[self.docs["note_id"].isin(keep)].reset_index(drop=True)
        spans = self.spans[self.spans["note_id"].isin(keep)].reset_index(drop=True)
        return Dataset(self.name, docs, spans, self.codes, self.report)


def docs_frame(rows: list[dict]) -> pd.DataFrame:
    """The documents table of ``rows`` (``full_codes`` defaults to True, ``eval_role`` to "")."""
    rows = [{"full_codes": True, "eval_role": "", **r} for r in rows]
    frame = pd.DataFrame(rows, columns=DATASET_DOC_COLUMNS)
    for col in ("annotated", "fewshot", "credentialed", "full_codes"):
        frame[col] = frame[col].astype(bool)
    frame["note_id"] = frame["note_id"].astype(str)
    frame["eval_role"] = frame["eval_role"].astype(str)
    return frame.reset_index(drop=True)


def with_doc_defaults(docs: pd.DataFrame) -> pd.DataFrame:
    """``docs`` with ``full_codes`` (True) and ``eval_role`` ("") added where a table (an older saved
    one, a hand-built one) lacks them."""
    if "full_codes" in docs and "eval_role" in docs:
        return docs
    docs = docs.copy()
    if "full_codes" not in docs:
        docs["full_codes"] = True
    if "eval_role" not in docs:
        docs["eval_role"] = ""
    return docs


def coding_docs(docs: pd.DataFrame, split: str) -> pd.DataFrame:
    """The documents of ``split`` that count in coding measurement (``full_codes``): on the MIMIC
    route the MIMIC-IV documents, never MDACE's rationale evaluation documents."""
    sel = docs["split"] == split
    if "full_codes" in docs:
        sel &= docs["full_codes"].astype(bool)
    return docs[sel]


def spans_frame(rows: list[dict], extra: Iterable[str] = ()) -> pd.DataFrame:
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


def split_counts(docs: pd.DataFrame, spans: pd.DataFrame) -> dict:
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


def code_for_doc(code: str, system: str, doc_codes: set[str], where: str) -> str:
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


def dataset_statistics(ds: Dataset) -> pd.DataFrame:
    """The paper's dataset table, one row per split (and ``all``): documents, unique codes, codes
    per document (mean), words per document (mean / median / max; ``\\w+`` words of the raw text),
    annotated documents, spans per granularity, mean span length in words, spans per (note, code)
    pair with spans (mean)."""
    docs, spans = ds.docs, ds.spans
    words = pd.Series([count_words(t) for t in docs["text"]], index=docs.index, dtype="int64")
    texts = dict(zip(docs["note_id"], docs["text"]))
    split_of = dict(zip(docs["note_id"], docs["split"]))
    if len(spans):
        span_words = np.array([count_words(texts[n][s:e]) if n in texts else 0
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


#: Span columns the export carries where a source has them (MDACE: the admission and the MIMIC-III
#: note, so MDACE's splits can be applied from the export alone).
EXPORT_SPAN_EXTRAS = ("hadm_id", "source_note_id")


def export_dataset(ds: Dataset, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write the canonical tables as JSONL (what ``export-data`` writes): ``docs.jsonl``, one object
    per document with the docs table's columns (``note_id, text, codes, split, annotated, fewshot,
    credentialed``), and ``spans.jsonl`` with the human spans notebook 01 saves
    (:func:`human_spans`: ``note_id, code, start, end, granularity, source``, plus ``hadm_id`` and
    ``source_note_id`` on MDACE spans). Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs_path, spans_path = out / "docs.jsonl", out / "spans.jsonl"
    atomic_write_lines(docs_path, (  # written whole or not at all
        json.dumps({"note_id": str(r.note_id), "text": r.text, "codes": [str(c) for c in r.codes], "split": r.split,
                    "annotated": bool(r.annotated), "fewshot": bool(r.fewshot), "credentialed": bool(r.credentialed),
                    "full_codes": bool(r.full_codes), "eval_role": str(r.eval_role)}, ensure_ascii=False)
        for r in ds.docs[DATASET_DOC_COLUMNS].itertuples(index=False)))
    spans = human_spans(ds)
    write_spans_jsonl(spans[SPAN_COLUMNS + [c for c in EXPORT_SPAN_EXTRAS if c in spans]], spans_path,
                      extra=EXPORT_SPAN_EXTRAS)  # atomic too
    return docs_path, spans_path


def load_saved(folder: str | os.PathLike, oracle: bool = False) -> Dataset:
    """The dataset saved by :func:`save_dataset` (``spans`` = human spans, or all known spans
    with ``oracle=True``)."""
    folder = Path(folder)
    for name in ("docs.parquet", "spans.parquet", "codes.parquet"):
        if not (folder / name).exists():
            raise DataError(f"{folder}: {name} is missing; run notebooks/01_data.ipynb first")
    def table(name: str, columns: tuple[str, ...]) -> pd.DataFrame:
        path = folder / name
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds; each names the file here
            raise DataError(f"{path}: unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                            "run notebooks/01_data.ipynb again") from None
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; run notebooks/01_data.ipynb again")
        return frame

    docs = with_doc_defaults(table("docs.parquet", ("note_id", "text", "codes", "split")))
    try:
        docs["codes"] = docs["codes"].map(list)
    except TypeError:
        raise DataError(f"{folder / 'docs.parquet'}: the codes column does not hold lists of codes") from None
    spans = table("oracle_spans.parquet" if oracle else "spans.parquet", ("note_id", "code", "start", "end"))
    report: dict = {}
    if (folder / "report.json").exists():
        try:
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{folder / 'report.json'}: unreadable ({exc})") from None
        if not isinstance(report, dict):
            raise DataError(f"{folder / 'report.json'}: expected a JSON object")
    return Dataset(report.get("name", folder.name), docs, spans, table("codes.parquet", ("code",)), report)


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
