"""Command-line entry points ``align`` and ``plausibility`` (dispatched by ``python -m rationale_kit``).

``align --docs DOCS.jsonl --quotes QUOTES.jsonl [--threshold T] [--occurrences all|first] [--out FILE]``
    Docs lines ``{"note_id", "text"}``; quote lines ``{"note_id", "code", "quote"}``. Writes JSONL
    (stdout or ``--out``): one line per aligned span ``{note_id, code, quote, start, end, score,
    method}``; an unaligned quote (or split part) has ``start``/``end`` null and a ``reason``.

``plausibility --docs DOCS.jsonl --gold GOLD.jsonl --pred PRED.jsonl [--pairs gold|all] [--unit mdace|word]``
    Span lines ``{"note_id", "code", "start", "end"}`` (optional ``granularity``, ``source``,
    ``text``). Prints one JSON object: ``span_exact``, ``span_position_independent``,
    ``token_exact``, ``token_position_independent`` (each ``tp, fp, fn, precision, recall, f1``),
    ``eraser_token_micro``, ``eraser_token_macro`` and ``span_iou_f1``.

Bad input (malformed line, missing key, unknown note, offsets outside the text) exits with
status 2 and a message on stderr naming the file and line.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from .records import DataError, iter_jsonl_objects, read_spans_jsonl


def _read_jsonl(path: str | Path, keys: Sequence[str], strings: Sequence[str] = ()) -> list[tuple[int, dict]]:
    """``(line number, object)`` per non-blank line; checks JSON, object-ness, ``keys`` present and
    ``strings`` being strings. Errors name file and line."""
    out = []
    for lineno, rec in iter_jsonl_objects(path):
        for key in keys:
            if key not in rec or rec[key] is None:
                raise DataError(f"{path}:{lineno}: missing key {key!r}")
        for key in strings:
            if not isinstance(rec[key], str):
                raise DataError(f"{path}:{lineno}: {key!r} must be a string")
        out.append((lineno, rec))
    return out


def read_docs_jsonl(path: str | Path) -> pd.DataFrame:
    """Documents JSONL (``note_id, text`` per line) as a frame; duplicate ids are an error."""
    rows, seen = [], {}
    for lineno, rec in _read_jsonl(path, ("note_id", "text"), ("text",)):
        nid = str(rec["note_id"])
        if nid in seen:
            raise DataError(f"{path}:{lineno}: duplicate note_id {nid!r} (first on line {seen[nid]})")
        seen[nid] = lineno
        rows.append({"note_id": nid, "text": rec["text"]})
    return pd.DataFrame(rows, columns=["note_id", "text"])


def read_quotes_jsonl(path: str | Path, docs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Quotes JSONL (``note_id, code, quote``; other keys kept). With ``docs``, unknown notes are
    an error naming the line."""
    known = set(docs["note_id"]) if docs is not None else None
    rows = []
    for lineno, rec in _read_jsonl(path, ("note_id", "code", "quote")):
        nid = str(rec["note_id"])
        if known is not None and nid not in known:
            raise DataError(f"{path}:{lineno}: unknown note_id {nid!r}")
        if not isinstance(rec["quote"], str):
            raise DataError(f"{path}:{lineno}: 'quote' must be a string")
        rows.append({**rec, "note_id": nid, "code": str(rec["code"])})
    cols = ["note_id", "code", "quote"]
    frame = pd.DataFrame(rows)
    return frame if len(frame) else pd.DataFrame(columns=cols)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def _json_value(v):
    if v is None:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def align_main(argv: Sequence[str] | None = None) -> int:
    from .alignment import align_quotes

    ap = argparse.ArgumentParser(prog="rationale_kit align", description="Align LLM quotes to note spans.")
    ap.add_argument("--docs", required=True, help="JSONL, one {note_id, text} per line")
    ap.add_argument("--quotes", required=True, help="JSONL, one {note_id, code, quote} per line")
    ap.add_argument("--threshold", type=float, default=1.7, help="token precision + recall in [0, 2] (default 1.7)")
    ap.add_argument("--occurrences", choices=["all", "first"], default="all")
    ap.add_argument("--out", help="output JSONL (default: stdout)")
    args = ap.parse_args(argv)
    try:
        docs = read_docs_jsonl(args.docs)
        quotes = read_quotes_jsonl(args.quotes, docs)
        frame = align_quotes(docs, quotes, threshold=args.threshold, occurrences=args.occurrences)
    except DataError as exc:
        return _fail(exc)
    lines = []
    for rec in frame.to_dict("records"):
        out = {k: _json_value(rec.get(k)) for k in ("note_id", "code", "quote", "start", "end", "score", "method")}
        if out["start"] is None:
            out["reason"] = _json_value(rec.get("reason"))
        if rec.get("part") and rec.get("part") != rec.get("quote"):
            out["part"] = rec["part"]
        lines.append(json.dumps(out, ensure_ascii=False))
    text = "".join(line + "\n" for line in lines)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def plausibility_main(argv: Sequence[str] | None = None) -> int:
    from .metrics.plausibility import span_plausibility

    ap = argparse.ArgumentParser(prog="rationale_kit plausibility", description="Plausibility of predicted spans.")
    ap.add_argument("--docs", required=True, help="JSONL, one {note_id, text} per line")
    ap.add_argument("--gold", required=True, help="spans JSONL (human)")
    ap.add_argument("--pred", required=True, help="spans JSONL (rationales)")
    ap.add_argument("--pairs", choices=["gold", "all"], default="gold",
                    help="evaluate the (note, code) pairs with gold spans (default) or all pairs")
    ap.add_argument("--unit", choices=["mdace", "word"], default="mdace")
    args = ap.parse_args(argv)
    try:
        docs = read_docs_jsonl(args.docs)
        gold = read_spans_jsonl(args.gold, docs)
        pred = read_spans_jsonl(args.pred, docs)
        res = span_plausibility(gold, pred, docs, pairs=args.pairs, unit=args.unit)
    except DataError as exc:
        return _fail(exc)
    print(json.dumps(res, indent=None, sort_keys=False))
    return 0
