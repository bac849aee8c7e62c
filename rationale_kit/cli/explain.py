"""``python -m rationale_kit explain``: codes and rationales of one's own notes under a trained coder.

``explain --model DIR --docs notes.jsonl --out DIR [--codes-from-docs] [--sources
attention,gradient,attention_x_gradient,entity[,llm]] [--top-k K] [--threshold T] [--min-codes N]
[--profile P] [--overrides JSON] [--device cpu|cuda|auto] [--batch-size N] [--public-data] [--fresh]``

* ``--model``: a folder written by notebook 02 or ``train`` (``02_train/<name>`` or its ``model``).
* ``--docs``: one ``{"note_id", "text"}`` per line, optional ``"codes": [...]``; with
  ``--codes-from-docs`` those codes are explained (every line must then have them, and with a model
  source each must be one of the model's labels), otherwise the predicted codes are (at least
  ``--min-codes`` per note, the most probable).
* Writes into ``--out``: ``predictions.jsonl`` (per note ``codes`` predicted, ``probabilities`` of
  the predicted and explained codes, ``explained``, ``threshold``), ``spans.jsonl`` (the span format
  ``note_id, code, start, end, granularity, source, text`` plus ``method, model, score``),
  ``scores.parquet`` (per-unit soft scores with character offsets), ``llm.jsonl`` (with the llm
  source: each (note, code)'s outcome), ``notes/<note>.html`` and ``index.html``.
* Resumes: each finished note is recorded atomically under ``<out>/.explain/<key>/`` where the key
  is the model's hash plus the settings; a rerun (after an interruption) computes only the notes
  not recorded (or whose text changed). ``--fresh`` ignores what is recorded.
* The LLM source uses the profile's backend (default: the bundled local model) through the same
  functions and credential guard as ``quote``: a remote backend is refused unless
  ``--public-data`` says the notes are not credentialed data (or the profile allows it).

Bad input (unreadable file, malformed JSON, missing ``note_id``/``text``, duplicate ids, unknown
codes, no saved model) exits with status 2 and one line on stderr naming the file and line.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from rationale_kit.core.records import DataError, iter_jsonl_objects


def read_notes(path: str | Path, with_codes: bool) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, int]]:
    """``(docs, codes per note, line per note)`` of a notes JSONL; every problem is a
    :class:`DataError` naming file and line."""
    rows, codes, line_of = [], {}, {}
    for lineno, rec in iter_jsonl_objects(path):
        for key in ("note_id", "text"):
            if rec.get(key) is None:
                raise DataError(f"{path}:{lineno}: missing key {key!r}")
        nid = rec["note_id"]
        if isinstance(nid, int) and not isinstance(nid, bool):
            nid = str(nid)
        if not isinstance(nid, str) or not nid:
            raise DataError(f"{path}:{lineno}: 'note_id' must be a non-empty string")
        text = rec["text"]
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: 'text' must be a string, got {type(text).__name__}")
        for key, v in (("note_id", nid), ("text", text)):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(f"{path}:{lineno}: {key!r} holds a lone surrogate, not text") from None
        if not text.strip():
            raise DataError(f"{path}:{lineno}: note {nid!r} has an empty text")
        if nid in line_of:
            raise DataError(f"{path}:{lineno}: duplicate note_id {nid!r} (first on line {line_of[nid]})")
        if with_codes:
            cs = rec.get("codes")
            if not isinstance(cs, list) or not all(isinstance(c, str) and c.strip() for c in cs):
                raise DataError(f"{path}:{lineno}: --codes-from-docs needs 'codes', a list of code strings")
            codes[nid] = list(dict.fromkeys(c.strip() for c in cs))
        line_of[nid] = lineno
        rows.append({"note_id": nid, "text": text})
    if not rows:
        raise DataError(f"{path}: no notes")
    return pd.DataFrame(rows, columns=["note_id", "text"]), codes, line_of


def _check_codes(path, codes: dict, line_of: dict, labels: Sequence[str], model_sources: bool) -> None:
    from rationale_kit.core import icd

    known = set(labels)
    for nid, cs in codes.items():
        for c in cs:
            if model_sources and c not in known:
                raise DataError(f"{path}:{line_of[nid]}: unknown code {c!r} (not among the model's {len(known)} labels)")
            if not model_sources and icd._try_normalize(c, "auto") is None:
                raise DataError(f"{path}:{line_of[nid]}: unknown code {c!r} (not an ICD-10 code)")


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _part_file(state: Path, note_id: str) -> Path:
    return state / (hashlib.sha1(note_id.encode("utf-8")).hexdigest() + ".json")


def _records(frame: pd.DataFrame) -> dict:
    """A frame as ``{column: values}`` (JSON; NaN as null)."""
    return {c: [None if (isinstance(v, float) and v != v) else (v.item() if hasattr(v, "item") else v)
                for v in frame[c].tolist()] for c in frame.columns}


def _frame(cols: dict) -> pd.DataFrame:
    return pd.DataFrame(cols)


def save_part(state: Path, ex, note_id: str, text: str) -> None:
    """Record one finished note (its rows of every table) atomically."""
    from rationale_kit.core.runtime import atomic_write_text

    one = ex.note(note_id)
    payload = {"note_id": note_id, "text_sha": _text_hash(text), "predictions": _records(one.predictions),
               "spans": _records(one.spans), "scores": _records(one.scores),
               "llm": _records(one.llm) if len(one.llm.columns) else {}, "seconds": one.info.get("seconds", {})}
    atomic_write_text(_part_file(state, note_id), json.dumps(payload, ensure_ascii=False))


def load_part(state: Path, note_id: str, text: str) -> Optional[dict]:
    """A recorded note, or None when absent, unreadable or recorded for another text."""
    f = _part_file(state, note_id)
    if not f.exists():
        return None
    try:
        rec = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("note_id") != note_id or rec.get("text_sha") != _text_hash(text):
        return None
    return rec


def _replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)


def write_outputs(out: Path, ex, descriptions: dict) -> None:
    """predictions.jsonl, spans.jsonl, scores.parquet, llm.jsonl, notes/*.html, index.html."""
    from rationale_kit.rationales.tables import save_table, spans_to_jsonl
    from rationale_kit.viz.explain import index_page, note_filename, note_page
    from rationale_kit.core.runtime import atomic_write_text

    preds = ex.predictions
    lines = []
    for nid in ex.docs.note_id:
        p = preds[preds.note_id == nid].sort_values("rank", kind="stable")
        thr = float(p.threshold.iloc[0]) if len(p) else None
        lines.append(json.dumps({
            "note_id": nid, "codes": list(p[p.pred.astype(bool)].code),
            "probabilities": {c: (None if pd.isna(v) else round(float(v), 6)) for c, v in zip(p.code, p.prob)},
            "explained": list(p[p.explained.astype(bool)].code), "given": list(p[p.given.astype(bool)].code),
            "threshold": thr}, ensure_ascii=False))
    atomic_write_text(out / "predictions.jsonl", "".join(line + "\n" for line in lines))
    tmp = out / ".spans.jsonl.tmp"
    spans_to_jsonl(ex.spans.reset_index(drop=True), tmp, ex.docs)
    _replace(tmp, out / "spans.jsonl")
    tmp = out / ".scores.parquet.tmp"
    save_table(ex.scores, tmp, kind="soft")
    _replace(tmp, out / "scores.parquet")
    if len(ex.llm.columns):
        rec = _records(ex.llm)
        atomic_write_text(out / "llm.jsonl", "".join(
            json.dumps({c: rec[c][i] for c in rec}, ensure_ascii=False) + "\n" for i in range(len(ex.llm))))
    notes_dir = out / "notes"
    notes_dir.mkdir(exist_ok=True)
    files = {}
    for nid, text in zip(ex.docs.note_id, ex.docs.text):
        files[nid] = note_filename(nid)
        one = ex.note(nid)
        atomic_write_text(notes_dir / files[nid], note_page(nid, text, one.predictions, one.spans, one.scores,
                                                             descriptions, info=ex.info))
    info = {k: v for k, v in ex.info.items() if k in ("model", "threshold", "sources", "top_k", "gradient_method")}
    atomic_write_text(out / "index.html", index_page(preds, ex.docs, files, info))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rationale_kit explain",
                                 description="Codes, probabilities and rationales of your notes under a trained coder.")
    ap.add_argument("--model", required=True, help="saved model folder (02_train/<name> or its model/)")
    ap.add_argument("--docs", required=True, help="JSONL, one {note_id, text[, codes]} per line")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--codes-from-docs", action="store_true", help="explain each line's codes instead of the predicted ones")
    ap.add_argument("--sources", default="attention,gradient,attention_x_gradient,entity",
                    help="comma-separated: attention, gradient, attention_x_gradient, entity, llm")
    ap.add_argument("--top-k", type=int, default=None, help="units kept per code by a soft source (default: the profile's rationales.topk)")
    ap.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    ap.add_argument("--min-codes", type=int, default=1, help="codes explained per note at least (most probable first)")
    ap.add_argument("--profile", default="default", help="profile for the entity, gradient, alignment and LLM settings")
    ap.add_argument("--overrides", default=None, help='JSON object of profile overrides, e.g. {"rationales": {"llm": {"max_new_tokens": 400}}}')
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--batch-size", type=int, default=None, help="notes per forward pass (default: the profile's)")
    ap.add_argument("--public-data", action="store_true", help="the notes are not credentialed data (a remote LLM may see them)")
    ap.add_argument("--fresh", action="store_true", help="recompute every note (ignore recorded ones)")
    args = ap.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    from rationale_kit.core import icd, runtime
    from rationale_kit.core.config import ConfigError, load_profile
    from rationale_kit.rationales import llm
    from rationale_kit.workbook import explain as E

    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    out = Path(args.out)
    try:
        overrides = json.loads(args.overrides) if args.overrides else None
        if overrides is not None and not isinstance(overrides, dict):
            raise ConfigError("--overrides must be a JSON object")
        settings = E.settings_from_profile(load_profile(args.profile, overrides), sources=sources, top_k=args.top_k, threshold=args.threshold,
                                           min_codes=args.min_codes, batch_size=args.batch_size)
        model_dir = E.resolve_model_dir(args.model)
        docs, codes, line_of = read_notes(args.docs, args.codes_from_docs)
        out.mkdir(parents=True, exist_ok=True)
        credentialed = False if args.public_data else None
        explainer = E.Explainer(model_dir, settings, device=args.device, cache_dir=out / ".explain",
                                credentialed=credentialed)
        if codes:
            _check_codes(args.docs, codes, line_of, explainer.model.labels, bool(set(sources) & set(E.MODEL_SOURCES)))
    except json.JSONDecodeError as exc:
        return fail(f"--overrides: not JSON ({exc.msg})")
    except (DataError, ConfigError, ValueError, FileNotFoundError, RuntimeError, llm.LLMConfigError) as exc:
        return fail(str(exc))
    except llm.CredentialedDataError as exc:
        return fail(f"{exc} For notes that are not credentialed data, pass --public-data.")
    except OSError as exc:
        return fail(f"{args.out}: {exc.strerror}")
    key = {"model": E.model_hash(model_dir), "settings": settings.key(), "codes_from_docs": args.codes_from_docs}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    state = out / ".explain" / digest
    state.mkdir(parents=True, exist_ok=True)
    runtime.atomic_write_text(state / "key.json", json.dumps(key, indent=1))
    parts = {} if args.fresh else {n: load_part(state, n, t) for n, t in zip(docs.note_id, docs.text)}
    todo = docs[[parts.get(n) is None for n in docs.note_id]]
    resumed = len(docs) - len(todo)
    step = settings.batch_size
    bar = runtime.progress(total=len(todo), enabled=sys.stderr.isatty(), desc="explain")
    for b in range(0, len(todo), step):
        batch = todo.iloc[b:b + step]
        ex = explainer.explain_batch(batch, {n: codes[n] for n in batch.note_id} if codes else None)
        for nid, text in zip(batch.note_id, batch.text):
            save_part(state, ex, nid, text)
        bar.update(len(batch))
    bar.close()
    loaded = [load_part(state, n, t) for n, t in zip(docs.note_id, docs.text)]
    pieces = []
    for rec, (nid, text) in zip(loaded, zip(docs.note_id, docs.text)):
        if rec is None:  # pragma: no cover - written just above
            return fail(f"{state}: note {nid!r} was not recorded")
        pieces.append(E.Explanation(pd.DataFrame({"note_id": [nid], "text": [text]}), _frame(rec["predictions"]),
                                    _frame(rec["scores"]), _frame(rec["spans"]), _frame(rec["llm"]),
                                    {"seconds": rec.get("seconds", {})}))
    whole = E.concat_explanations(pieces)
    info = {"model": explainer.name, "threshold": explainer.threshold, "sources": list(settings.sources),
            "top_k": settings.top_k, "gradient_method": settings.gradient_method,
            "seconds": whole.info.get("seconds", {})}
    whole = E.Explanation(whole.docs, whole.predictions, _typed_scores(whole.scores), _typed_spans(whole.spans),
                          whole.llm, info)
    codes_seen = set(whole.predictions.code) if len(whole.predictions) else set()
    write_outputs(out, whole, {c: icd.describe(c) for c in codes_seen})
    by_source = whole.spans.source.value_counts().to_dict() if len(whole.spans) else {}
    print(f"{len(docs)} notes ({len(todo)} computed, {resumed} resumed); "
          f"{int(whole.predictions.explained.astype(bool).sum()) if len(whole.predictions) else 0} codes explained; "
          f"spans by source: {json.dumps(by_source)}; wrote {out}", file=sys.stderr)
    return 0


def _typed_scores(frame: pd.DataFrame) -> pd.DataFrame:
    from rationale_kit.core.records import SCORE_COLUMNS
    from rationale_kit.rationales.tables import soft_table

    return soft_table([frame[SCORE_COLUMNS]] if len(frame) else [])


def _typed_spans(frame: pd.DataFrame) -> pd.DataFrame:
    from rationale_kit.workbook.explain import SPAN_OUT_COLUMNS

    if not len(frame):
        return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("start", "end") else ("float64" if c == "score" else object))
                             for c in SPAN_OUT_COLUMNS})
    return frame[SPAN_OUT_COLUMNS].astype({"start": "int64", "end": "int64", "score": "float64"})
