"""Command-line entry points ``align``, ``plausibility`` and ``compare`` (dispatched by ``python -m rationale_kit``).

``align --docs DOCS.jsonl --quotes QUOTES.jsonl [--threshold T] [--occurrences all|first] [--out FILE]``
    Docs lines ``{"note_id", "text"}``; quote lines ``{"note_id", "code", "quote"}``. Writes JSONL
    (stdout or ``--out``; its folder is created when missing): one line per aligned span
    ``{note_id, code, quote, start, end, score, method}``; an unaligned quote (or split part) has
    ``start``/``end`` null and a ``reason``. ``--threshold`` (token precision + token recall) must
    lie in [0, 2].

``plausibility --docs DOCS.jsonl --gold GOLD.jsonl --pred PRED.jsonl [--pairs gold|gold_notes|all] [--units gold|covered] [--unit mdace|word] [--code-system auto|cm|pcs] [--bootstrap N --seed S]``
    Span lines ``{"note_id", "code", "start", "end"}`` (optional ``granularity``, ``source``,
    ``text``; in PRED a line with null ``start`` and ``end`` marks a covered note without a span).
    Prints one JSON object keyed by measure (:data:`rationale_kit.metrics.plausibility.ALL_MEASURES`):
    ``span_exact``, ``span_position_independent``, ``token_exact``, ``token_position_independent``
    (MDACE's scorer), ``eraser_token_micro``, ``eraser_token_macro``, ``span_iou_f1``,
    ``span_iou_f1_macro`` (ERASER) and the overlap variants ``token_exact_overlap``,
    ``token_position_independent_overlap``. Additive measures carry ``tp, fp, fn, precision,
    recall, f1, n_notes, n_pairs`` and, with ``--bootstrap N``, ``f1_ci: [lo, hi]`` (95%
    percentile, notes resampled). Units: the (note, code) pairs with gold spans. Codes are
    normalised (``rationale_kit.core.icd.normalize_code``: ``E119`` and ``e11.9`` are ``E11.9``) before
    gold and predicted spans are matched (``compare`` too); a malformed code is an error.

``compare --docs D --gold G --pred-a A --pred-b B [--units covered|gold] [--bootstrap N --seed S]``
    Per additive measure ``a``, ``b`` (pooled F1), ``delta`` (a minus b) and ``delta_ci`` (paired
    bootstrap, default 1,000 resamples), with ``n_notes``, ``n_pairs`` (the units: gold pairs on
    the notes with gold spans that both files cover, i.e. have a line for) and ``n_gold_notes``,
    ``n_gold_pairs`` (the eligible units).

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

from rationale_kit.core.records import SPAN_COLUMNS, DataError, check_offsets, iter_jsonl_objects, read_spans_jsonl


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
    for lineno, rec in iter_jsonl_objects(path):
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
    from rationale_kit.core.icd import CodeError, normalize_code

    out: dict[str, str] = {}
    for lineno, rec in iter_jsonl_objects(path):
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
    from rationale_kit.rationales.alignment import align_quotes

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


def read_pred_jsonl(path: str | Path, docs: pd.DataFrame) -> tuple[pd.DataFrame, set[str]]:
    """Predicted spans JSONL and the notes the file covers.

    Lines as :func:`rationale_kit.core.records.read_spans_jsonl`; in addition a line whose ``start`` and
    ``end`` are both null (as ``align`` writes for an unaligned quote) carries no span but marks its
    note as covered. A note is covered when the file has any line for it. Errors name file and line.
    """
    texts = dict(zip(docs["note_id"], docs["text"]))
    rows, covered = [], set()
    for lineno, rec in iter_jsonl_objects(path):
        for key in ("note_id", "code", "start", "end"):
            if key not in rec:
                raise DataError(f"{path}:{lineno}: missing key {key!r}")
        nid = str(rec["note_id"])
        if nid not in texts:
            raise DataError(f"{path}:{lineno}: unknown note_id {nid!r}")
        covered.add(nid)
        if rec["start"] is None and rec["end"] is None:
            continue
        start, end = check_offsets(rec["start"], rec["end"], f"{path}:{lineno}", len(texts[nid]), note_id=nid)
        if rec.get("text") is not None and texts[nid][start:end] != rec["text"]:
            raise DataError(f"{path}:{lineno}: span text {rec['text']!r} does not match note text "
                            f"{texts[nid][start:end]!r}")
        rows.append({"note_id": nid, "code": str(rec["code"]), "start": start, "end": end,
                     "granularity": str(rec.get("granularity") or ""), "source": str(rec.get("source") or "pred")})
    frame = pd.DataFrame(rows, columns=SPAN_COLUMNS).astype({"start": "int64", "end": "int64"})
    return frame, covered


def _add_bootstrap_args(ap: argparse.ArgumentParser, default: int) -> None:
    ap.add_argument("--bootstrap", type=int, default=default, metavar="N",
                    help=f"resamples of the notes for 95%% percentile intervals (0: none; default {default})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")


def _add_code_system_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--code-system", choices=["auto", "cm", "pcs"], default="auto",
                    help="how codes are normalised before matching (rationale_kit.core.icd.normalize_code; default auto)")


def _read_normalised(reader, path: str | Path, docs: pd.DataFrame, system: str):
    """``reader(path, docs)`` with the codes of its spans normalised; codes (and bytes that are not
    UTF-8) are checked first, so errors name the file and line. Returns what ``reader`` returns."""
    codes = read_codes_checked(path, system)
    out = reader(path, docs)
    frame = out[0] if isinstance(out, tuple) else out
    if len(frame):
        frame = frame.assign(code=frame["code"].map(codes))
    return (frame, *out[1:]) if isinstance(out, tuple) else frame


def _per_note(per: pd.DataFrame, measure: str) -> pd.DataFrame:
    return per[per["measure"] == measure].set_index("note_id")[["tp", "fp", "fn"]]


def _ci(interval) -> list | None:
    return None if math.isnan(interval.lo) else [interval.lo, interval.hi]


def plausibility_main(argv: Sequence[str] | None = None) -> int:
    from rationale_kit.metrics import plausibility as P
    from rationale_kit.metrics.uncertainty import bootstrap, f1_statistic

    ap = argparse.ArgumentParser(
        prog="rationale_kit plausibility", description="Plausibility of predicted spans against gold spans.",
        epilog="Units: the (note, code) pairs with gold spans (--pairs gold), on every gold note "
               "(--units gold) or on the notes the prediction file covers (--units covered: notes with at "
               "least one line in PRED; a line with null start and end marks a note as covered without a span). "
               "With --bootstrap N every additive measure gains f1_ci [lo, hi]: 95%% percentile interval, "
               "notes resampled with replacement, pooled counts recomputed per resample.")
    ap.add_argument("--docs", required=True, help="JSONL, one {note_id, text} per line")
    ap.add_argument("--gold", required=True, help="spans JSONL (human)")
    ap.add_argument("--pred", required=True, help="spans JSONL (rationales)")
    ap.add_argument("--pairs", choices=["gold", "gold_notes", "all"], default="gold",
                    help="pairs with gold spans (default), every code on notes with gold spans (MDACE's scorer), "
                         "or all pairs")
    ap.add_argument("--units", choices=["gold", "covered"], default="gold",
                    help="every gold note (default) or only the notes PRED covers")
    ap.add_argument("--unit", choices=["mdace", "word"], default="mdace",
                    help="note tokens of the overlap and ERASER measures (MDACE's own measures tokenise span texts)")
    _add_code_system_arg(ap)
    _add_bootstrap_args(ap, 0)
    args = ap.parse_args(argv)
    if args.bootstrap < 0:
        return _fail(ValueError(f"--bootstrap must be >= 0, got {args.bootstrap}"))
    try:
        docs = read_docs_jsonl(args.docs)
        gold = _read_normalised(read_spans_jsonl, args.gold, docs, args.code_system)
        pred, covered = _read_normalised(read_pred_jsonl, args.pred, docs, args.code_system)
        if args.units == "covered":
            gold = gold[gold["note_id"].isin(covered)]
            pred = pred[pred["note_id"].isin(covered)]
        ev = P.evaluate_spans(gold, pred, docs, pairs=args.pairs, unit=args.unit)
    except DataError as exc:
        return _fail(exc)
    res, per, n_notes = ev.measures(), ev.note_counts(), ev.n_notes
    for measure in P.COUNT_MEASURES:
        res[measure]["n_notes"], res[measure]["n_pairs"] = n_notes, ev.n_pairs
        if args.bootstrap:
            if n_notes:
                iv = bootstrap(_per_note(per, measure), f1_statistic, n_resamples=args.bootstrap, seed=args.seed)
                res[measure]["f1_ci"] = _ci(iv)
            else:
                res[measure]["f1_ci"] = None
    print(json.dumps(res, indent=None, sort_keys=False, default=_json_value))
    return 0


def compare_main(argv: Sequence[str] | None = None) -> int:
    from rationale_kit.metrics import plausibility as P
    from rationale_kit.metrics.uncertainty import f1_statistic, paired_bootstrap

    ap = argparse.ArgumentParser(
        prog="rationale_kit compare",
        description="Compare two rationale sources (A minus B) on the same units, with a paired bootstrap.",
        epilog="Both cover: a prediction file covers a note when it has at least one line for it (a span, or a "
               "line with null start and end, as align writes for an unaligned quote: the source ran there and "
               "found nothing). The units are the (note, code) pairs with gold spans on the notes that have gold "
               "spans and that BOTH files cover (--units covered, default); --units gold takes every gold pair, "
               "counting a note a file lacks as empty predictions. Per additive measure: a and b (pooled F1), "
               "delta = a - b, delta_ci (95%% percentile interval of a paired bootstrap: the same resampled "
               "notes for A and B), n_notes and n_pairs (the units), n_gold_notes and n_gold_pairs (eligible).")
    ap.add_argument("--docs", required=True, help="JSONL, one {note_id, text} per line")
    ap.add_argument("--gold", required=True, help="spans JSONL (human)")
    ap.add_argument("--pred-a", required=True, help="spans JSONL of source A")
    ap.add_argument("--pred-b", required=True, help="spans JSONL of source B")
    ap.add_argument("--units", choices=["covered", "gold"], default="covered",
                    help="gold pairs on notes both files cover (default) or every gold pair")
    ap.add_argument("--unit", choices=["mdace", "word"], default="mdace",
                    help="note tokens of the overlap and ERASER measures")
    _add_code_system_arg(ap)
    _add_bootstrap_args(ap, 1000)
    args = ap.parse_args(argv)
    if args.bootstrap < 0:
        return _fail(ValueError(f"--bootstrap must be >= 0, got {args.bootstrap}"))
    try:
        docs = read_docs_jsonl(args.docs)
        gold = _read_normalised(read_spans_jsonl, args.gold, docs, args.code_system)
        pred_a, cov_a = _read_normalised(read_pred_jsonl, args.pred_a, docs, args.code_system)
        pred_b, cov_b = _read_normalised(read_pred_jsonl, args.pred_b, docs, args.code_system)
        gold_notes = set(gold["note_id"])
        n_gold_pairs = len(gold[["note_id", "code"]].drop_duplicates())
        notes = gold_notes & cov_a & cov_b if args.units == "covered" else gold_notes
        if not notes:
            raise DataError(
                f"no units to compare: {len(gold_notes)} notes have gold spans, {len(gold_notes & cov_a)} of them "
                f"covered by {args.pred_a}, {len(gold_notes & cov_b)} by {args.pred_b}, none by both")
        gold = gold[gold["note_id"].isin(notes)]
        tokens = P.Tokens(docs, args.unit)
        ev_a = P.evaluate_spans(gold, pred_a, docs, tokens=tokens)
        ev_b = P.evaluate_spans(gold, pred_b, docs, tokens=tokens)
    except DataError as exc:
        return _fail(exc)
    per_a, per_b = ev_a.note_counts(), ev_b.note_counts()
    out = {}
    for measure in P.COUNT_MEASURES:
        a, b = _per_note(per_a, measure), _per_note(per_b, measure)
        fa, fb = ev_a.pooled(measure)["f1"], ev_b.pooled(measure)["f1"]
        row = {"a": fa, "b": fb, "delta": fa - fb, "delta_ci": None, "n_notes": ev_a.n_notes,
               "n_pairs": ev_a.n_pairs, "n_gold_notes": len(gold_notes), "n_gold_pairs": n_gold_pairs}
        if args.bootstrap:
            row["delta_ci"] = _ci(paired_bootstrap(a, b, f1_statistic, n_resamples=args.bootstrap, seed=args.seed))
        out[measure] = row
    print(json.dumps(out, indent=None, sort_keys=False, default=_json_value))
    return 0
