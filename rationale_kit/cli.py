"""Command-line entry points ``align`` and ``plausibility`` (dispatched by ``python -m rationale_kit``).

``align --docs DOCS.jsonl --quotes QUOTES.jsonl [--threshold T] [--occurrences all|first] [--out FILE]``
    Docs lines ``{"note_id", "text"}``; quote lines ``{"note_id", "code", "quote"}``. Writes JSONL
    (stdout or ``--out``; its folder is created when missing): one line per aligned span
    ``{note_id, code, quote, start, end, score, method}``; an unaligned quote (or split part) has
    ``start``/``end`` null and a ``reason``. ``--threshold`` (token precision + token recall) must
    lie in [0, 2].

``plausibility --docs DOCS.jsonl --gold GOLD.jsonl --pred PRED.jsonl [--pairs gold|all] [--unit mdace|word] [--code-system auto|cm|pcs]``
    Span lines ``{"note_id", "code", "start", "end"}`` (optional ``granularity``, ``source``,
    ``text``). Codes are normalised (``rationale_kit.icd.normalize_code``: ``E119`` and
    ``e11.9`` are ``E11.9``) before gold and predicted spans are matched; a malformed code is an
    error. Prints one JSON object: ``span_exact``, ``span_position_independent``,
    ``token_exact``, ``token_position_independent`` (each ``tp, fp, fn, precision, recall, f1``),
    ``eraser_token_micro``, ``eraser_token_macro`` and ``span_iou_f1``.

Bad input (malformed line, missing key, unknown note, offsets outside the text, bytes that are not
UTF-8, a lone surrogate escape in a text, an output that cannot be written) exits with status 2
and a message on stderr naming the file (and the line where there is one).
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


def _utf8_error(path: str | Path) -> DataError:
    """The first line of ``path`` that is not UTF-8, as a :class:`DataError` naming file and line."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                 f"{exc.start + 1}); save the file as UTF-8")
    return DataError(f"{path}: not UTF-8 text; save the file as UTF-8")  # pragma: no cover


def _objects(path: str | Path):
    """:func:`iter_jsonl_objects` with bytes that are not UTF-8 reported by file and line."""
    try:
        yield from iter_jsonl_objects(path)
    except UnicodeDecodeError:
        raise _utf8_error(path) from None


def _check_text(value: str, path: str | Path, lineno: int, key: str) -> None:
    """A JSON string may escape a lone surrogate (``"\\ud800"``): not text, and not writable as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"{path}:{lineno}: {key!r} holds a lone surrogate (U+{ord(value[exc.start]):04X} at "
                        f"character {exc.start}), which is not valid Unicode text") from None


def _read_jsonl(path: str | Path, keys: Sequence[str], strings: Sequence[str] = ()) -> list[tuple[int, dict]]:
    """``(line number, object)`` per non-blank line; checks UTF-8, JSON, object-ness, ``keys``
    present and ``strings`` being valid Unicode strings. Errors name file and line."""
    out = []
    for lineno, rec in _objects(path):
        for key in keys:
            if key not in rec or rec[key] is None:
                raise DataError(f"{path}:{lineno}: missing key {key!r}")
        for key in strings:
            if not isinstance(rec[key], str):
                raise DataError(f"{path}:{lineno}: {key!r} must be a string")
            _check_text(rec[key], path, lineno, key)
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
        _check_text(rec["quote"], path, lineno, "quote")
        _check_text(str(rec["code"]), path, lineno, "code")
        rows.append({**rec, "note_id": nid, "code": str(rec["code"])})
    cols = ["note_id", "code", "quote"]
    frame = pd.DataFrame(rows)
    return frame if len(frame) else pd.DataFrame(columns=cols)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def _threshold(value: str) -> float:
    """``--threshold``: a number in [0, 2] (token precision + token recall)."""
    try:
        t = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not (0.0 <= t <= 2.0):  # also rejects nan
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 2] (token precision + token recall)")
    return t


def _write_out(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8), creating its folder; failures name the file."""
    out = Path(path)
    try:
        if not out.parent.exists():
            out.parent.mkdir(parents=True)
            print(f"created the folder {out.parent} for --out", file=sys.stderr)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{out}: cannot write --out ({exc.strerror or exc})") from None


def read_codes_checked(path: str | Path, system: str = "auto") -> dict[str, str]:
    """``{code as written: normalised code}`` of the spans JSONL ``path``; a malformed code is a
    :class:`DataError` naming file and line."""
    from .icd import CodeError, normalize_code

    out: dict[str, str] = {}
    for lineno, rec in _objects(path):
        raw = rec.get("code")
        if raw is None or str(raw) in out:
            continue
        try:
            out[str(raw)] = normalize_code(str(raw), system)
        except CodeError as exc:
            raise DataError(f"{path}:{lineno}: {exc}") from None
    return out


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
    ap.add_argument("--threshold", type=_threshold, default=1.7, help="token precision + recall in [0, 2] (default 1.7)")
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
        try:
            _write_out(args.out, text)
        except DataError as exc:
            return _fail(exc)
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
    ap.add_argument("--code-system", choices=["auto", "cm", "pcs"], default="auto",
                    help="how codes are normalised before matching (rationale_kit.icd.normalize_code; default auto)")
    args = ap.parse_args(argv)
    try:
        docs = read_docs_jsonl(args.docs)
        frames = []
        for path in (args.gold, args.pred):
            codes = read_codes_checked(path, args.code_system)  # also reports bytes that are not UTF-8
            frame = read_spans_jsonl(path, docs)
            frames.append(frame.assign(code=frame["code"].map(codes)) if len(frame) else frame)
        gold, pred = frames
        res = span_plausibility(gold, pred, docs, pairs=args.pairs, unit=args.unit)
    except DataError as exc:
        return _fail(exc)
    print(json.dumps(res, indent=None, sort_keys=False))
    return 0
