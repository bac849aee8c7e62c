"""The one representation that flows through the workbook.

Discrete rationales (gold human spans, entity links, LLM quotes, NER tags) are *character spans*
on the raw note text, half-open ``[start, end)``. Soft rationales (attention, gradients) are
*per-unit scores* together with each unit's character offsets. Both are kept in long-format
pandas tables with fixed columns (below) and saved to parquet.

Every rationale source produces one of these tables and every metric consumes one.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from rationale_kit.core.runtime import atomic_write_lines

#: Columns of the documents table. ``codes`` is a list of dotted ICD-10 codes.
DOC_COLUMNS = ["note_id", "text", "codes", "split"]

#: Columns of a discrete span table (gold or predicted).
SPAN_COLUMNS = ["note_id", "code", "start", "end", "granularity", "source"]

#: Columns of a soft (scored) rationale table: one row per (note, code, unit).
SCORE_COLUMNS = ["note_id", "code", "source", "method", "model", "unit", "start", "end", "score"]


class DataError(ValueError):
    """Bad input data. The message names the file, row or key and what is wrong."""


@dataclass(frozen=True)
class Document:
    """A clinical note with its codes. ``codes`` are dotted ICD-10-CM (or undotted PCS) codes."""

    note_id: str
    text: str
    codes: tuple[str, ...]
    split: str


@dataclass(frozen=True)
class Span:
    """A discrete rationale: characters ``text[start:end]`` of note ``note_id`` support ``code``.

    ``granularity`` names the annotation level (e.g. ``mention``, ``evidence``, ``sentence``) for
    gold spans, or ``""``; ``source`` says who produced it (``human``, ``entity``, ``llm_zero``...).
    """

    note_id: str
    code: str
    start: int
    end: int
    granularity: str = ""
    source: str = "human"

    def __post_init__(self) -> None:
        if not (0 <= self.start < self.end):
            raise DataError(
                f"span {self.note_id}/{self.code}: need 0 <= start < end, got [{self.start}, {self.end})"
            )


@dataclass(frozen=True)
class ScoredUnit:
    """A soft rationale unit: ``score`` of unit ``unit`` (characters ``[start, end)``) for ``code``."""

    note_id: str
    code: str
    source: str
    method: str
    model: str
    unit: int
    start: int
    end: int
    score: float


def docs_to_frame(docs: Iterable[Document]) -> pd.DataFrame:
    rows = [dataclasses.asdict(d) | {"codes": list(d.codes)} for d in docs]
    return pd.DataFrame(rows, columns=DOC_COLUMNS)


def frame_to_docs(frame: pd.DataFrame) -> list[Document]:
    return [
        Document(str(r.note_id), str(r.text), tuple(r.codes), str(r.split))
        for r in frame.itertuples(index=False)
    ]


def spans_to_frame(spans: Iterable[Span]) -> pd.DataFrame:
    frame = pd.DataFrame([dataclasses.asdict(s) for s in spans], columns=SPAN_COLUMNS)
    return frame.astype({"start": "int64", "end": "int64"})


def frame_to_spans(frame: pd.DataFrame) -> list[Span]:
    cols = [c for c in SPAN_COLUMNS if c in frame.columns]
    return [Span(**dict(zip(cols, row))) for row in frame[cols].itertuples(index=False, name=None)]


def empty_spans() -> pd.DataFrame:
    return spans_to_frame([])


def validate_spans(spans: pd.DataFrame, docs: pd.DataFrame, where: str = "spans") -> None:
    """Raise :class:`DataError` naming the row when a span has an unknown note or bad offsets."""
    missing = [c for c in ("note_id", "code", "start", "end") if c not in spans.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}")
    lengths = dict(zip(docs["note_id"], docs["text"].str.len()))
    for i, row in enumerate(spans.itertuples(index=False)):
        if row.note_id not in lengths:
            raise DataError(f"{where} row {i}: unknown note_id {row.note_id!r}")
        check_offsets(row.start, row.end, f"{where} row {i}", lengths[row.note_id], note_id=row.note_id,
                      integral_floats=True)


def write_spans_jsonl(spans: pd.DataFrame, path: str | Path, docs: pd.DataFrame | None = None,
                      extra: Sequence[str] = ()) -> None:
    """Write the documented JSONL span format: one object per span with ``note_id, code, start,
    end, granularity, source``, the ``extra`` keys a span has a value for (e.g. MDACE's
    ``hadm_id``) and, when ``docs`` is given, the covered ``text``."""
    texts = dict(zip(docs["note_id"], docs["text"])) if docs is not None else {}

    def lines():
        for i, row in enumerate(spans.to_dict("records")):
            rec = {k: row.get(k) for k in SPAN_COLUMNS if k in row}
            rec.update({k: str(row[k]) for k in extra if k in row and isinstance(row[k], str) and row[k] != ""})
            rec["start"], rec["end"] = check_offsets(rec["start"], rec["end"], f"spans row {i}", integral_floats=True)
            if row["note_id"] in texts:
                rec["text"] = texts[row["note_id"]][rec["start"]:rec["end"]]
            yield json.dumps(rec, ensure_ascii=False)

    atomic_write_lines(path, lines())  # written whole or not at all


def iter_jsonl_objects(path: str | Path):
    """``(line number, object)`` for each non-blank line of a JSONL file; a line that is not UTF-8
    text or not a JSON object is a :class:`DataError` naming the file and line."""
    try:
        # surrogateescape keeps undecodable bytes (reported below with their line); universal
        # newlines keep bare-CR files working
        fh = open(path, encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror})") from None
    with fh:
        for lineno, line in enumerate(fh, 1):
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{ord(line[exc.start]) - 0xDC00:02x} at "
                                f"column {exc.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, rec


def read_spans_jsonl(path: str | Path, docs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read spans JSONL (see :func:`write_spans_jsonl`). With ``docs``, offsets are checked and
    an optional ``text`` field must equal the covered characters. ``start``/``end`` must be JSON
    integers (not floats, booleans or strings). Lines end at ``\n``, ``\r\n`` or a bare ``\r``.
    Errors name file and line."""
    return _read_spans_jsonl(path, docs)[0]


def check_offsets(start, end, where: str, length: Optional[int] = None, *, note_id: Optional[str] = None,
                  integral_floats: bool = False) -> tuple[int, int]:
    """``(start, end)`` as Python ints, checked: the one validation every reader of span offsets
    (gold or predicted, JSONL or a table) applies. Integers only: a float (``12.9``, also ``12.0``
    from JSON), a boolean or a string (``"12"``) is a :class:`DataError` naming ``where`` (file and
    line, or table and row); never rounded or coerced. ``integral_floats`` accepts a float with an
    integral value (a table column that held a missing value elsewhere: ``12.0``, never ``12.9``).
    With ``length`` (characters of the note), ``0 <= start < end <= length`` must hold."""
    out = []
    for key, value in (("start", start), ("end", end)):
        v = value
        if isinstance(v, np.generic):
            v = v.item()
        if integral_floats and isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise DataError(f"{where}: start/end must be integers ({key} is {type(value).__name__} {value!r})")
        out.append(v)
    s, e = out
    if length is not None and not (0 <= s < e <= length):
        note = f" {note_id!r}" if note_id is not None else ""
        raise DataError(f"{where}: offsets [{s}, {e}) outside note{note} of length {length}")
    return s, e


def _read_spans_jsonl(path: str | Path, docs: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[int]]:
    """:func:`read_spans_jsonl` plus the line number of each row."""
    rows: list[dict] = []
    linenos: list[int] = []
    texts = dict(zip(docs["note_id"], docs["text"])) if docs is not None else None
    for lineno, rec in iter_jsonl_objects(path):
        for key in ("note_id", "code", "start", "end"):
            if key not in rec:
                raise DataError(f"{path}:{lineno}: missing key {key!r}")
        start, end = check_offsets(rec["start"], rec["end"], f"{path}:{lineno}")
        linenos.append(lineno)
        nid = str(rec["note_id"])
        if texts is not None:
            if nid not in texts:
                raise DataError(f"{path}:{lineno}: unknown note_id {nid!r}")
            check_offsets(start, end, f"{path}:{lineno}", len(texts[nid]), note_id=nid)
            if "text" in rec and texts[nid][start:end] != rec["text"]:
                raise DataError(
                    f"{path}:{lineno}: span text {rec['text']!r} does not match note text "
                    f"{texts[nid][start:end]!r}"
                )
        elif not (0 <= start < end):
            raise DataError(f"{path}:{lineno}: need 0 <= start < end, got [{start}, {end})")
        rows.append(
            {
                "note_id": nid,
                "code": str(rec["code"]),
                "start": start,
                "end": end,
                "granularity": str(rec.get("granularity") or ""),
                "source": str(rec.get("source") or "human"),
            }
        )
    return pd.DataFrame(rows, columns=SPAN_COLUMNS).astype({"start": "int64", "end": "int64"}), linenos


def merge_intervals(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of half-open intervals as sorted ``int`` pairs; overlapping or touching intervals are
    merged, empty or reversed ones (``end <= start``) dropped."""
    out: list[tuple[int, int]] = []
    for s, e in sorted((int(s), int(e)) for s, e in intervals if int(e) > int(s)):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out
