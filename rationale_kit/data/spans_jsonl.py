"""Human spans in the project's JSONL format, checked against loaded documents."""
from __future__ import annotations

import os
from typing import Iterable

import pandas as pd

from rationale_kit.core.records import DataError, _read_spans_jsonl, iter_jsonl_objects
from rationale_kit.data.dataset import code_for_doc
from rationale_kit.data.files import read_text_file, resolve_path


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
        code_for_doc(c, "auto", codes_of[n], f"{path}:{ln}")
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
