"""Plausibility: agreement of rationales with human evidence spans (METHOD.md section 5).

Pure functions over the span tables of :mod:`rationale_kit.records` (``note_id, code, start, end``
[, ``granularity, source``]) and the note texts (``docs``: ``note_id, text``).

Conventions
-----------
* **Pairs.** The evaluation unit is a ``(note_id, code)`` pair. With ``pairs="gold"`` (default,
  METHOD.md: "pairs with human spans") only pairs having at least one gold span are evaluated and
  predicted spans of other pairs are ignored; ``pairs="all"`` evaluates the union of gold and
  predicted pairs (predictions for codes without gold spans then count as false positives).
* **Tokens.** ``unit="mdace"`` (default): :func:`rationale_kit.text.mdace_tokens` of the *note*
  (``\\w+`` on the lower-cased text, numbers above 10 dropped); ``unit="word"``: every ``\\w+`` word
  (:func:`rationale_kit.text.word_units`, numbers kept). A span covers the note tokens it overlaps
  by at least one character (as :func:`rationale_kit.text.span_mask`), so a span cutting a word
  still covers the whole word, and a span with no word character covers no token.
* **Zero denominators.** Precision, recall and F1 are 0 when their denominator is 0 (no
  predictions, no gold, or precision + recall = 0). Macro averages are over the evaluated pairs
  (0 when there are none).

MDACE's four measures (:func:`mdace_measures`) — true positives etc. are set operations per note,
summed over notes:

* ``span_exact``: key ``(note, start, end, code)``;
* ``span_position_independent``: key ``(lower-cased span text, code)`` within a note;
* ``token_exact``: key ``(note, token start, code)``;
* ``token_position_independent``: key ``(token text, code)`` within a note.

ERASER (:func:`eraser_token_prf`, :func:`span_iou_f1`): token P/R/F1 per pair, pooled (micro, equal
to ``token_exact`` for the same pairs) and averaged over pairs (macro: mean of per-pair P, R and
F1); span IoU-F1: a predicted span is correct when its best token IoU with a gold span of the same
pair is ``>= 0.5``; ``P = correct predicted / predicted``, ``R = gold spans matched / gold spans``
(a gold span is matched when some predicted span of the pair has IoU ``>= 0.5`` with it); counts
pooled over pairs. Spans are taken as given (overlapping or nested predicted spans each count;
identical ``(start, end)`` within a pair are counted once); IoU of spans without tokens is 0.

Soft rationales (:func:`soft_plausibility`): score table ``note_id, code, unit, start, end, score``.
Per pair, negative scores are clipped to 0 and the scores are divided by their sum (all-zero pairs
stay zero); a token's score is the **sum** (``agg="sum"``, default; ``"max"`` available) of the
normalised scores of the units overlapping it; tokens no unit overlaps (e.g. past the model's
maximum length) score 0. Gold pairs without any score row get all-zero scores. A token is
selected when its score is strictly above the threshold, or when it is among the top-k tokens of
its pair (ties broken by position).
"""
from __future__ import annotations

from typing import Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from ..records import SPAN_COLUMNS, DataError, merge_intervals
from ..text import mdace_tokens, word_units

Unit = Literal["mdace", "word"]
Pairs = Literal["gold", "all"]

MDACE_MEASURES = ("span_exact", "span_position_independent", "token_exact", "token_position_independent")
ALL_MEASURES = MDACE_MEASURES + ("eraser_token_micro", "eraser_token_macro", "span_iou_f1")


# --- helpers -------------------------------------------------------------------------------------


def prf(tp: float, fp: float, fn: float) -> dict:
    """``tp, fp, fn, precision, recall, f1`` with 0 for zero denominators."""
    p = tp / (tp + fp) if tp + fp > 0 else 0.0
    r = tp / (tp + fn) if tp + fn > 0 else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"tp": int(tp), "fp": int(fp), "fn": int(fn), "precision": p, "recall": r, "f1": f}


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


class Tokens:
    """Tokens of each note (cached): sorted ``starts``, ``ends`` (int64) and ``texts``."""

    def __init__(self, docs: pd.DataFrame, unit: Unit = "mdace"):
        if unit not in ("mdace", "word"):
            raise ValueError(f"unit must be 'mdace' or 'word', got {unit!r}")
        for col in ("note_id", "text"):
            if col not in docs.columns:
                raise DataError(f"docs: missing column {col!r}")
        self.texts = dict(zip(docs["note_id"].astype(str), docs["text"]))
        self.unit = unit
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}

    def text(self, note_id: str) -> str:
        try:
            return self.texts[note_id]
        except KeyError:
            raise DataError(f"unknown note_id {note_id!r}") from None

    def get(self, note_id: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        hit = self._cache.get(note_id)
        if hit is None:
            text = self.text(note_id)
            if self.unit == "mdace":
                toks = mdace_tokens(text)
                starts = np.array([t[0] for t in toks], dtype=np.int64)
                ends = np.array([t[1] for t in toks], dtype=np.int64)
                words = [t[2] for t in toks]
            else:
                off = word_units(text)
                starts, ends = off[:, 0].copy(), off[:, 1].copy()
                words = [text[s:e].lower() for s, e in off]
            hit = self._cache[note_id] = (starts, ends, words)
        return hit

    def covered(self, note_id: str, start: int, end: int) -> range:
        """Indices of the tokens overlapping ``[start, end)`` (a contiguous range)."""
        starts, ends, _ = self.get(note_id)
        lo = int(np.searchsorted(ends, start, side="right"))
        hi = int(np.searchsorted(starts, end, side="left"))
        return range(lo, max(lo, hi))


def _check_spans(spans: pd.DataFrame, tokens: Tokens, where: str) -> pd.DataFrame:
    missing = [c for c in ("note_id", "code", "start", "end") if c not in spans.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}")
    out = spans.copy()
    out["note_id"] = out["note_id"].astype(str)
    out["code"] = out["code"].astype(str)
    if len(out):
        try:
            out["start"] = out["start"].astype("int64")
            out["end"] = out["end"].astype("int64")
        except (TypeError, ValueError):
            raise DataError(f"{where}: start/end must be integers") from None
        lengths = out["note_id"].map({n: len(t) for n, t in tokens.texts.items()})
        unknown = lengths.isna().to_numpy()
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise DataError(f"{where} row {i}: unknown note_id {out['note_id'].iloc[i]!r}")
        s, e, n = out["start"].to_numpy(), out["end"].to_numpy(), lengths.to_numpy(np.int64)
        bad = ~((0 <= s) & (s < e) & (e <= n))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where} row {i}: offsets [{s[i]}, {e[i]}) outside note {out['note_id'].iloc[i]!r} "
                f"of length {n[i]}"
            )
    return out


def _pair_spans(
    gold: pd.DataFrame, pred: pd.DataFrame, tokens: Tokens, pairs: Pairs
) -> tuple[list[tuple[str, str]], dict, dict]:
    """Evaluated pairs (sorted) and ``{pair: [(start, end), ...]}`` for gold and predictions."""
    if pairs not in ("gold", "all"):
        raise ValueError(f"pairs must be 'gold' or 'all', got {pairs!r}")
    gold = _check_spans(gold, tokens, "gold")
    pred = _check_spans(pred, tokens, "pred")

    def group(frame: pd.DataFrame) -> dict:
        out: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for nid, code, s, e in zip(frame["note_id"], frame["code"], frame["start"], frame["end"]):
            out.setdefault((nid, code), []).append((int(s), int(e)))
        return out

    g, p = group(gold), group(pred)
    keys = set(g) if pairs == "gold" else set(g) | set(p)
    return sorted(keys), g, p


# --- MDACE ---------------------------------------------------------------------------------------


def mdace_measures(
    gold: pd.DataFrame, pred: pd.DataFrame, docs: pd.DataFrame, pairs: Pairs = "gold",
    unit: Unit = "mdace", _tokens: Tokens | None = None,
) -> dict[str, dict]:
    """MDACE's four measures, each ``{tp, fp, fn, precision, recall, f1}`` (see module doc)."""
    tokens = _tokens or Tokens(docs, unit)
    keys, g, p = _pair_spans(gold, pred, tokens, pairs)
    by_note: dict[str, list[str]] = {}
    for nid, code in keys:
        by_note.setdefault(nid, []).append(code)
    counts = {m: [0, 0, 0] for m in MDACE_MEASURES}

    def add(measure: str, gs: set, ps: set) -> None:
        c = counts[measure]
        c[0] += len(gs & ps)
        c[1] += len(ps - gs)
        c[2] += len(gs - ps)

    for nid, codes in by_note.items():
        text = tokens.text(nid)
        _, _, words = tokens.get(nid)
        sets = {side: {m: set() for m in MDACE_MEASURES} for side in ("g", "p")}
        for code in codes:
            for side, table in (("g", g), ("p", p)):
                for s, e in table.get((nid, code), ()):
                    ks = sets[side]
                    ks["span_exact"].add((s, e, code))
                    ks["span_position_independent"].add((text[s:e].lower(), code))
                    for t in tokens.covered(nid, s, e):
                        ks["token_exact"].add((t, code))
                        ks["token_position_independent"].add((words[t], code))
        for m in MDACE_MEASURES:
            add(m, sets["g"][m], sets["p"][m])
    return {m: prf(*counts[m]) for m in MDACE_MEASURES}


# --- ERASER --------------------------------------------------------------------------------------


def _token_set(tokens: Tokens, nid: str, spans: Iterable[tuple[int, int]]) -> set[int]:
    out: set[int] = set()
    for s, e in spans:
        out.update(tokens.covered(nid, s, e))
    return out


def eraser_token_prf(
    gold: pd.DataFrame, pred: pd.DataFrame, docs: pd.DataFrame, unit: Unit = "mdace",
    pairs: Pairs = "gold", _tokens: Tokens | None = None,
) -> dict[str, dict]:
    """ERASER token-level P/R/F1: ``{"micro": prf(...), "macro": {precision, recall, f1, n_pairs}}``."""
    tokens = _tokens or Tokens(docs, unit)
    keys, g, p = _pair_spans(gold, pred, tokens, pairs)
    tp = fp = fn = 0
    ps, rs, fs = [], [], []
    for nid, code in keys:
        gs = _token_set(tokens, nid, g.get((nid, code), ()))
        pset = _token_set(tokens, nid, p.get((nid, code), ()))
        a, b, c = len(gs & pset), len(pset - gs), len(gs - pset)
        tp, fp, fn = tp + a, fp + b, fn + c
        q = prf(a, b, c)
        ps.append(q["precision"]), rs.append(q["recall"]), fs.append(q["f1"])
    mean = (lambda v: float(np.mean(v)) if v else 0.0)
    return {
        "micro": prf(tp, fp, fn),
        "macro": {"precision": mean(ps), "recall": mean(rs), "f1": mean(fs), "n_pairs": len(keys)},
    }


def span_iou_f1(
    gold: pd.DataFrame, pred: pd.DataFrame, docs: pd.DataFrame, iou: float = 0.5,
    unit: Unit = "mdace", pairs: Pairs = "gold", _tokens: Tokens | None = None,
) -> dict:
    """ERASER span IoU-F1 (see module doc): ``n_pred, n_gold, correct_pred, matched_gold,
    precision, recall, f1``; ``tp = correct_pred``, ``fp = n_pred - correct_pred``,
    ``fn = n_gold - matched_gold``."""
    tokens = _tokens or Tokens(docs, unit)
    keys, g, p = _pair_spans(gold, pred, tokens, pairs)
    n_pred = n_gold = correct = matched = 0
    for nid, code in keys:
        gsp = [_token_set(tokens, nid, [s]) for s in dict.fromkeys(g.get((nid, code), ()))]
        psp = [_token_set(tokens, nid, [s]) for s in dict.fromkeys(p.get((nid, code), ()))]
        n_pred += len(psp)
        n_gold += len(gsp)
        if not psp or not gsp:
            continue
        m = np.zeros((len(psp), len(gsp)))
        for i, a in enumerate(psp):
            for j, b in enumerate(gsp):
                union = len(a | b)
                m[i, j] = len(a & b) / union if union else 0.0
        ok = m >= iou - 1e-12
        correct += int(ok.any(axis=1).sum())
        matched += int(ok.any(axis=0).sum())
    prec = correct / n_pred if n_pred else 0.0
    rec = matched / n_gold if n_gold else 0.0
    return {
        "n_pred": n_pred, "n_gold": n_gold, "correct_pred": correct, "matched_gold": matched,
        "tp": correct, "fp": n_pred - correct, "fn": n_gold - matched,
        "precision": prec, "recall": rec, "f1": _f1(prec, rec),
    }


def span_plausibility(
    gold: pd.DataFrame, pred: pd.DataFrame, docs: pd.DataFrame, pairs: Pairs = "gold",
    unit: Unit = "mdace", iou: float = 0.5,
) -> dict[str, dict]:
    """Every discrete-span measure, keyed as :data:`ALL_MEASURES` (the CLI's JSON object)."""
    return _all_measures(gold, pred, Tokens(docs, unit), pairs, iou)


def _all_measures(gold, pred, tokens: Tokens, pairs: Pairs = "gold", iou: float = 0.5) -> dict:
    out = mdace_measures(gold, pred, None, pairs=pairs, _tokens=tokens)
    er = eraser_token_prf(gold, pred, None, pairs=pairs, _tokens=tokens)
    out["eraser_token_micro"] = er["micro"]
    out["eraser_token_macro"] = er["macro"]
    out["span_iou_f1"] = span_iou_f1(gold, pred, None, iou=iou, pairs=pairs, _tokens=tokens)
    return out


# --- breakdowns ----------------------------------------------------------------------------------


def _restrict(frame: pd.DataFrame, pairs: set[tuple[str, str]]) -> pd.DataFrame:
    if len(frame) == 0:
        return frame
    keys = list(zip(frame["note_id"].astype(str), frame["code"].astype(str)))
    return frame[[k in pairs for k in keys]]


def plausibility_table(
    gold: pd.DataFrame,
    preds_by_source: Mapping[str, pd.DataFrame],
    docs: pd.DataFrame,
    by: Sequence[str] = ("source", "granularity"),
    predicted_codes: pd.DataFrame | None = None,
    unit: Unit = "mdace",
    iou: float = 0.5,
) -> pd.DataFrame:
    """Long table of every measure per ``source`` x ``granularity`` x ``code_set``.

    * ``granularity``: ``"all"`` (every gold span) and, when ``"granularity"`` is in ``by`` and the
      gold spans carry non-empty levels, one row group per level using only the gold spans of that
      level (and the pairs having such spans).
    * ``code_set``: ``"all"`` gold pairs; with ``predicted_codes`` (``note_id, code`` the model
      predicted) also ``"predicted"`` (gold pairs the model predicted) and ``"missed"`` (the others).
    * without ``"source"`` in ``by`` the predictions of all sources are pooled as source ``"all"``.

    Columns: ``source, granularity, code_set, measure, n_pairs, tp, fp, fn, precision, recall, f1``
    (``tp, fp, fn`` are NA for ``eraser_token_macro``). Pairs are gold pairs (``pairs="gold"``).
    """
    unknown = set(by) - {"source", "granularity"}
    if unknown:
        raise ValueError(f"by: unknown breakdown(s) {sorted(unknown)}")
    tokens = Tokens(docs, unit)
    gold = _check_spans(gold, tokens, "gold")
    if "granularity" not in gold.columns:
        gold = gold.assign(granularity="")
    gold["granularity"] = gold["granularity"].fillna("").astype(str)
    if "source" in by:
        sources = dict(preds_by_source)
    else:
        frames = [f for f in preds_by_source.values() if len(f)]
        sources = {"all": pd.concat(frames, ignore_index=True) if frames else _empty_spans()}
    levels = ["all"]
    if "granularity" in by:
        levels += sorted(x for x in gold["granularity"].unique() if x)
    code_sets = ["all"]
    pred_pairs: set[tuple[str, str]] = set()
    if predicted_codes is not None:
        code_sets += ["predicted", "missed"]
        pred_pairs = set(zip(predicted_codes["note_id"].astype(str), predicted_codes["code"].astype(str)))
    rows = []
    for level in levels:
        g_level = gold if level == "all" else gold[gold["granularity"] == level]
        level_pairs = set(zip(g_level["note_id"], g_level["code"]))
        for cs in code_sets:
            if cs == "all":
                pairs = level_pairs
            elif cs == "predicted":
                pairs = level_pairs & pred_pairs
            else:
                pairs = level_pairs - pred_pairs
            g_sub = _restrict(g_level, pairs)
            for src, pred in sources.items():
                p_sub = _restrict(_check_spans(pred, tokens, f"pred[{src}]"), pairs)
                res = _all_measures(g_sub, p_sub, tokens, "gold", iou)
                for measure in ALL_MEASURES:
                    r = res[measure]
                    rows.append({
                        "source": src, "granularity": level, "code_set": cs, "measure": measure,
                        "n_pairs": len(pairs),
                        "tp": r.get("tp", np.nan), "fp": r.get("fp", np.nan), "fn": r.get("fn", np.nan),
                        "precision": r["precision"], "recall": r["recall"], "f1": r["f1"],
                    })
    cols = ["source", "granularity", "code_set", "measure", "n_pairs", "tp", "fp", "fn", "precision", "recall", "f1"]
    return pd.DataFrame(rows, columns=cols)


def _empty_spans() -> pd.DataFrame:
    return pd.DataFrame(columns=SPAN_COLUMNS).astype({"start": "int64", "end": "int64"})


# --- soft rationales -----------------------------------------------------------------------------


def _check_scores(scores: pd.DataFrame, where: str) -> pd.DataFrame:
    missing = [c for c in ("note_id", "code", "start", "end", "score") if c not in scores.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}")
    for col in ("source", "method", "model"):
        if col in scores.columns and scores[col].nunique(dropna=False) > 1:
            raise DataError(f"{where}: several values of {col!r}; pass one rationale source at a time")
    out = scores.copy()
    out["note_id"] = out["note_id"].astype(str)
    out["code"] = out["code"].astype(str)
    return out


def _normalised(scores: pd.DataFrame) -> pd.DataFrame:
    s = scores["score"].astype("float64").clip(lower=0)
    total = s.groupby([scores["note_id"], scores["code"]]).transform("sum")
    return scores.assign(score=np.where(total > 0, s / total.where(total > 0, 1.0), 0.0))


def soft_token_scores(
    scores: pd.DataFrame, gold: pd.DataFrame, docs: pd.DataFrame, agg: Literal["sum", "max"] = "sum",
    unit: Unit = "mdace", pairs: pd.DataFrame | None = None, _tokens: Tokens | None = None,
) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Per gold pair (sorted; restricted to ``pairs`` when given): ``(note_id, code, token_scores,
    gold_mask)`` over the note's tokens (see module doc for normalisation and mapping)."""
    if agg not in ("sum", "max"):
        raise ValueError(f"agg must be 'sum' or 'max', got {agg!r}")
    tokens = _tokens or Tokens(docs, unit)
    scores = _normalised(_check_scores(scores, "scores"))
    gold = _check_spans(gold, tokens, "gold")
    gpairs: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for nid, code, s, e in zip(gold["note_id"], gold["code"], gold["start"], gold["end"]):
        gpairs.setdefault((nid, code), []).append((int(s), int(e)))
    keys = set(gpairs)
    if pairs is not None:
        keys &= set(zip(pairs["note_id"].astype(str), pairs["code"].astype(str)))
    groups = {k: v for k, v in scores.groupby(["note_id", "code"], sort=False)} if len(scores) else {}
    out = []
    for nid, code in sorted(keys):
        starts, ends, _ = tokens.get(nid)
        tok = np.zeros(len(starts))
        mask = np.zeros(len(starts), dtype=bool)
        for t in _token_set(tokens, nid, gpairs[(nid, code)]):
            mask[t] = True
        grp = groups.get((nid, code))
        if grp is not None and len(starts):
            us = grp["start"].to_numpy(np.int64)
            ue = grp["end"].to_numpy(np.int64)
            sc = grp["score"].to_numpy(np.float64)
            lo = np.searchsorted(ends, us, side="right")
            hi = np.maximum(np.searchsorted(starts, ue, side="left"), lo)
            n = hi - lo
            if n.sum():
                idx = np.repeat(lo, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
                vals = np.repeat(sc, n)
                (np.add.at if agg == "sum" else np.maximum.at)(tok, idx, vals)
        out.append((nid, code, tok, mask))
    return out


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step function over distinct
    thresholds, as scikit-learn); NaN when there is no positive label."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _select(tok: np.ndarray, threshold: float | None, topk: int | None) -> np.ndarray:
    if topk is not None:
        sel = np.zeros(len(tok), dtype=bool)
        sel[np.argsort(-tok, kind="stable")[:topk]] = True
        return sel
    return tok > threshold


def _token_prf(items, threshold: float | None, topk: int | None) -> tuple[dict, dict]:
    tp = fp = fn = 0
    ps, rs, fs = [], [], []
    for _, _, tok, mask in items:
        sel = _select(tok, threshold, topk)
        a, b, c = int((sel & mask).sum()), int((sel & ~mask).sum()), int((~sel & mask).sum())
        tp, fp, fn = tp + a, fp + b, fn + c
        q = prf(a, b, c)
        ps.append(q["precision"]), rs.append(q["recall"]), fs.append(q["f1"])
    mean = (lambda v: float(np.mean(v)) if v else 0.0)
    return prf(tp, fp, fn), {"precision": mean(ps), "recall": mean(rs), "f1": mean(fs)}


def default_grid(grid_max: float = 0.1, steps: int = 51) -> np.ndarray:
    """Thresholds ``0 .. grid_max`` (config ``plausibility.threshold_grid_max/_steps``)."""
    return np.linspace(0.0, grid_max, steps)


def tune_soft_threshold(
    val_scores: pd.DataFrame, val_gold: pd.DataFrame, docs: pd.DataFrame,
    grid: Sequence[float] | None = None, agg: Literal["sum", "max"] = "sum", unit: Unit = "mdace",
) -> float:
    """The threshold of ``grid`` (default :func:`default_grid`) maximising pooled token F1 on the
    validation pairs (the smallest one on ties)."""
    grid = default_grid() if grid is None else np.asarray(list(grid), dtype=np.float64)
    if len(grid) == 0:
        raise ValueError("grid is empty")
    items = soft_token_scores(val_scores, val_gold, docs, agg=agg, unit=unit)
    if not items:
        return float(grid[0])
    s = np.concatenate([it[2] for it in items])
    y = np.concatenate([it[3] for it in items])
    best_t, best_f = float(grid[0]), -1.0
    for t in grid:
        sel = s > t
        f = prf(int((sel & y).sum()), int((sel & ~y).sum()), int((~sel & y).sum()))["f1"]
        if f > best_f + 1e-12:
            best_t, best_f = float(t), f
    return best_t


def soft_plausibility(
    test_scores: pd.DataFrame, test_gold: pd.DataFrame, docs: pd.DataFrame,
    threshold: float | None = None, topk: int | None = None, ks: Sequence[int] = (5, 10, 20),
    agg: Literal["sum", "max"] = "sum", unit: Unit = "mdace", pairs: pd.DataFrame | None = None,
) -> dict:
    """Soft-rationale plausibility on the gold pairs (restricted to ``pairs`` if given, e.g. the
    predicted or missed codes).

    Keys: ``n_pairs``; ``auprc`` (average precision of the tokens pooled over pairs) and
    ``auprc_mean`` (mean of per-pair average precision over pairs with a gold token);
    ``p@k``, ``r@k`` for ``k`` in ``ks`` (mean over pairs of |top-k ∩ gold| / k and / |gold|; pairs
    without gold tokens count 0 recall); with ``threshold`` or ``topk``: ``precision, recall, f1``
    (pooled) and ``precision_macro, recall_macro, f1_macro``, plus the ``threshold``/``topk`` used.
    """
    if threshold is not None and topk is not None:
        raise ValueError("give threshold or topk, not both")
    items = soft_token_scores(test_scores, test_gold, docs, agg=agg, unit=unit, pairs=pairs)
    out: dict = {"n_pairs": len(items)}
    if items:
        s = np.concatenate([it[2] for it in items])
        y = np.concatenate([it[3] for it in items])
        ap = average_precision(y, s)
        per = [average_precision(m, t) for _, _, t, m in items if m.any()]
        out["auprc"] = 0.0 if np.isnan(ap) else ap
        out["auprc_mean"] = float(np.mean(per)) if per else 0.0
    else:
        out["auprc"] = out["auprc_mean"] = 0.0
    for k in ks:
        pk, rk = [], []
        for _, _, tok, mask in items:
            hit = int(mask[np.argsort(-tok, kind="stable")[:k]].sum())
            pk.append(hit / k)
            rk.append(hit / mask.sum() if mask.any() else 0.0)
        out[f"p@{k}"] = float(np.mean(pk)) if pk else 0.0
        out[f"r@{k}"] = float(np.mean(rk)) if rk else 0.0
    if threshold is not None or topk is not None:
        micro, macro = _token_prf(items, threshold, topk)
        out.update({k: micro[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1")})
        out.update({f"{k}_macro": v for k, v in macro.items()})
        out["threshold"] = threshold
        out["topk"] = topk
    return out


def binarise(scores: pd.DataFrame, threshold: float | None = None, topk: int | None = None) -> pd.DataFrame:
    """Discrete spans from a soft rationale: per ``(note_id, code)`` (and ``source, method, model``
    when present), units are normalised as in :func:`soft_plausibility`, units scoring strictly
    above ``threshold`` or the ``topk`` best (ties by unit order) are selected, and runs of
    consecutive selected units (by ``unit`` index) are merged into one span from the first unit's
    start to the last unit's end. Overlapping resulting spans are merged. Returns a span table
    (``source`` from the scores, else ``"soft"``; ``granularity`` ``""``)."""
    if (threshold is None) == (topk is None):
        raise ValueError("give exactly one of threshold and topk")
    missing = [c for c in ("note_id", "code", "unit", "start", "end", "score") if c not in scores.columns]
    if missing:
        raise DataError(f"scores: missing column(s) {missing}")
    keys = ["note_id", "code"] + [c for c in ("source", "method", "model") if c in scores.columns]
    extra = [c for c in ("method", "model") if c in scores.columns]
    rows = []
    if len(scores):
        s = scores.copy()
        s["score"] = s["score"].astype("float64").clip(lower=0)
        for key, grp in s.groupby(keys, sort=True, dropna=False):
            key = dict(zip(keys, key))
            grp = grp.sort_values("unit", kind="stable")
            sc = grp["score"].to_numpy()
            total = sc.sum()
            sc = sc / total if total > 0 else np.zeros_like(sc)
            sel = _select(sc, threshold, topk)
            units = grp["unit"].to_numpy()[sel]
            st = grp["start"].to_numpy(np.int64)[sel]
            en = grp["end"].to_numpy(np.int64)[sel]
            runs = []
            for i in range(len(units)):
                if runs and units[i] == units[i - 1] + 1:
                    runs[-1][1] = max(runs[-1][1], en[i])
                else:
                    runs.append([st[i], en[i]])
            for a, b in merge_intervals([(int(a), int(b)) for a, b in runs if b > a]):
                row = {"note_id": str(key["note_id"]), "code": str(key["code"]), "start": a, "end": b,
                       "granularity": "", "source": str(key.get("source", "soft"))}
                row.update({c: key[c] for c in extra})
                rows.append(row)
    out = pd.DataFrame(rows, columns=SPAN_COLUMNS + extra)
    return out.astype({"start": "int64", "end": "int64"})
