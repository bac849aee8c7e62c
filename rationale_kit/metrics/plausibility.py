"""Plausibility: agreement of rationales with human evidence spans. Pure functions over the span
tables of :mod:`rationale_kit.core.records` (``note_id, code, start, end`` [, ``granularity,
source``]) and the note texts (``docs``: a ``note_id, text`` table or anything
:func:`~rationale_kit.core.documents.as_documents` accepts, converted once by :class:`Tokens`): MDACE's four measures, their overlap
variants, ERASER's token and span-IoU measures, per-pair / per-note counts for the bootstrap, and
soft-rationale scores (AUPRC, P@k, thresholds). See docs/method/plausibility.md.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from rationale_kit.core.documents import as_documents
from rationale_kit.core.records import SPAN_COLUMNS, DataError, check_offsets, merge_intervals
from rationale_kit.core.text import mdace_tokens, word_units
from rationale_kit.metrics.coding import average_precision

Unit = Literal["mdace", "word"]
Pairs = Literal["gold", "gold_notes", "all"]

MDACE_MEASURES = ("span_exact", "span_position_independent", "token_exact", "token_position_independent")
#: The overlap-based token variants (the note's tokens a span overlaps): not MDACE's numbers.
OVERLAP_MEASURES = ("token_exact_overlap", "token_position_independent_overlap")
#: Measures whose counts add up over pairs and notes (pooled = sum of per-note counts).
COUNT_MEASURES = MDACE_MEASURES + OVERLAP_MEASURES + ("eraser_token_micro", "span_iou_f1")
ALL_MEASURES = MDACE_MEASURES + ("eraser_token_micro", "eraser_token_macro", "span_iou_f1", "span_iou_f1_macro") \
    + OVERLAP_MEASURES


# --- helpers -------------------------------------------------------------------------------------


def prf(tp: float, fp: float, fn: float) -> dict:
    """``tp, fp, fn, precision, recall, f1`` with 0 for zero denominators."""
    p = tp / (tp + fp) if tp + fp > 0 else 0.0
    r = tp / (tp + fn) if tp + fn > 0 else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"tp": int(tp), "fp": int(fp), "fn": int(fn), "precision": p, "recall": r, "f1": f}


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _columns(frame: pd.DataFrame, *cols: str) -> list[list]:
    """Columns as Python lists (one bulk conversion; iterating an Arrow-backed column value by
    value is slow)."""
    return [frame[c].tolist() for c in cols]


@functools.lru_cache(maxsize=4096)
def _note_tokens(text: str, unit: str, max_number: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Sorted token ``starts``, ``ends`` (int64, read-only) and texts of one note: computed once
    per process for every :class:`Tokens` (each source, binarisation and threshold scores the same
    notes)."""
    if unit == "mdace":
        toks = mdace_tokens(text, max_number=max_number)
        starts = np.array([t[0] for t in toks], dtype=np.int64)
        ends = np.array([t[1] for t in toks], dtype=np.int64)
        words = [t[2] for t in toks]
    else:
        off = word_units(text)
        starts, ends = off[:, 0].copy(), off[:, 1].copy()
        words = [text[s:e].lower() for s, e in off]
    starts.setflags(write=False)
    ends.setflags(write=False)
    return starts, ends, words


class Tokens:
    """Tokens of each note (cached): sorted ``starts``, ``ends`` (int64) and ``texts``.
    ``docs``: anything :func:`~rationale_kit.core.documents.as_documents` accepts; ``texts`` is
    the :class:`~rationale_kit.core.documents.Documents` it becomes."""

    def __init__(self, docs: Any, unit: Unit = "mdace", max_number: int = 10):
        if unit not in ("mdace", "word"):
            raise ValueError(f"unit must be 'mdace' or 'word', got {unit!r}")
        self.texts = as_documents(docs)
        self.unit = unit
        self.max_number = max_number
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}

    def text(self, note_id: str) -> str:
        try:
            return self.texts[note_id]
        except KeyError:
            raise DataError(f"unknown note_id {note_id!r}") from None

    def get(self, note_id: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        hit = self._cache.get(note_id)
        if hit is None:
            hit = self._cache[note_id] = _note_tokens(self.text(note_id), self.unit, self.max_number)
        return hit

    def covered(self, note_id: str, start: int, end: int) -> range:
        """Indices of the tokens overlapping ``[start, end)`` (a contiguous range)."""
        starts, ends, _ = self.get(note_id)
        return _covered(starts, ends, start, end)


def _covered(starts: np.ndarray, ends: np.ndarray, start: int, end: int) -> range:
    """Indices of the tokens (sorted ``starts``, ``ends``) overlapping ``[start, end)``."""
    lo = int(np.searchsorted(ends, start, side="right"))
    return range(lo, max(lo, int(np.searchsorted(starts, end, side="left"))))


def _check_spans(spans: pd.DataFrame, tokens: Tokens, where: str) -> pd.DataFrame:
    missing = [c for c in ("note_id", "code", "start", "end") if c not in spans.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}")
    out = spans.copy()
    out["note_id"] = out["note_id"].astype(str)
    out["code"] = out["code"].astype(str)
    if len(out):
        lengths = out["note_id"].map({n: len(t) for n, t in tokens.texts.items()})
        unknown = lengths.isna().to_numpy()
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise DataError(f"{where} row {i}: unknown note_id {out['note_id'].iloc[i]!r}")
        n_chars = lengths.to_numpy(dtype=np.int64)
        s_col, e_col = out["start"].to_numpy(), out["end"].to_numpy()
        if s_col.dtype.kind in "iu" and e_col.dtype.kind in "iu" and bool(
                ((s_col >= 0) & (s_col < e_col) & (e_col <= n_chars)).all()):
            # integer columns, every row inside its note: what the row-by-row check below accepts
            out["start"], out["end"] = s_col.astype(np.int64), e_col.astype(np.int64)
            return out
        # one check for every reader of offsets (records.check_offsets): integers only, never
        # truncated (12.9 is an error, not 12), inside the note
        checked = [check_offsets(s, e, f"{where} row {i}", int(n), note_id=nid, integral_floats=True)
                   for i, (s, e, n, nid) in enumerate(zip(out["start"].tolist(), out["end"].tolist(),
                                                          lengths.tolist(), out["note_id"]))]
        out["start"] = np.array([c[0] for c in checked], dtype=np.int64)
        out["end"] = np.array([c[1] for c in checked], dtype=np.int64)
    return out


def _pair_spans(
    gold: pd.DataFrame, pred: pd.DataFrame, tokens: Tokens, pairs: Pairs
) -> tuple[list[tuple[str, str]], dict, dict]:
    """Evaluated pairs (sorted) and ``{pair: [(start, end), ...]}`` for gold and predictions."""
    if pairs not in ("gold", "gold_notes", "all"):
        raise ValueError(f"pairs must be 'gold', 'gold_notes' or 'all', got {pairs!r}")
    gold = _check_spans(gold, tokens, "gold")
    pred = _check_spans(pred, tokens, "pred")

    def group(frame: pd.DataFrame) -> dict:
        out: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for nid, code, s, e in zip(*_columns(frame, "note_id", "code", "start", "end")):
            out.setdefault((nid, code), []).append((int(s), int(e)))
        return out

    g, p = group(gold), group(pred)
    if pairs == "gold":
        keys = set(g)
    elif pairs == "gold_notes":
        notes = {n for n, _ in g}
        keys = set(g) | {k for k in p if k[0] in notes}
    else:
        keys = set(g) | set(p)
    return sorted(keys), g, p


# --- per-pair counts ------------------------------------------------------------------------------


def mdace_span_tokens(text: str, start: int, end: int, max_number: int = 10) -> list[tuple[int, str]]:
    """MDACE's scorer tokens of one span: ``(absolute token start, token text)`` for the ``\\w+``
    tokens of the lower-cased ``text[start:end]`` (numbers above ``max_number`` dropped; see
    :func:`rationale_kit.core.text.mdace_tokens`). Offsets are those of the lower-cased span text added
    to ``start``, as the scorer does (they differ from the raw text only where lower-casing
    changes a string's length, e.g. "İ")."""
    return [(start + a, tok) for a, _, tok in mdace_tokens(text[start:end], max_number=max_number)]


def _iou_match(gr: list[tuple[int, int]], pr: list[tuple[int, int]], iou: float) -> tuple[int, int]:
    """ERASER ``partial_match_score`` on token ranges ``[lo, hi)`` of one pair: (predicted ranges
    whose best IoU with a gold range is ``>= iou``, gold ranges some prediction reaches)."""
    if not pr:
        return 0, 0
    if len(pr) * len(gr) <= 64:  # most pairs: plain Python is ~5x faster than numpy on a few ranges
        return _iou_match_small(gr, pr, iou)
    g = np.asarray(gr, dtype=np.int64).reshape(-1, 2)
    q = np.asarray(pr, dtype=np.int64).reshape(-1, 2)
    inter = np.clip(np.minimum(q[:, None, 1], g[None, :, 1]) - np.maximum(q[:, None, 0], g[None, :, 0]), 0, None)
    union = (q[:, None, 1] - q[:, None, 0]) + (g[None, :, 1] - g[None, :, 0]) - inter
    m = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    best = m.max(axis=1) if len(g) else np.zeros(len(q))  # ERASER starts each best IoU at 0.0
    return int((best >= iou).sum()), int((m >= iou).any(axis=0).sum()) if len(g) else 0


def _iou_match_small(gr, pr, iou: float) -> tuple[int, int]:
    """:func:`_iou_match` by loops (same float64 IoUs, so the same counts)."""
    reached = [False] * len(gr)
    correct = 0
    for q0, q1 in pr:
        best = 0.0
        for k, (g0, g1) in enumerate(gr):
            inter = (q1 if q1 < g1 else g1) - (q0 if q0 > g0 else g0)
            if inter < 0:
                inter = 0
            union = (q1 - q0) + (g1 - g0) - inter
            m = inter / union if union > 0 else 0.0
            if m > best:
                best = m
            if m >= iou:
                reached[k] = True
        correct += best >= iou
    return int(correct), sum(reached)


@functools.lru_cache(maxsize=1 << 16)
def _side(text: str, spans: tuple, unit: str, max_number: int) -> tuple:
    """What one side (gold or predicted) of a pair contributes to each count of
    :data:`COUNT_MEASURES`, from its distinct ``spans`` (sorted ``(start, end)`` tuples): the
    spans, their lower-cased texts, MDACE token starts and texts, the note tokens they overlap and
    those tokens' texts, and the sorted token ranges for span IoU. Cached: the same gold spans are
    scored against every source, binarisation and threshold of a run."""
    starts, ends, words = _note_tokens(text, unit, max_number)
    span_pi = frozenset(text[s:e].lower() for s, e in spans)
    tok = [t for s, e in spans for t in mdace_span_tokens(text, s, e, max_number)]
    ranges = {(r.start, r.stop) for r in (_covered(starts, ends, s, e) for s, e in spans)}
    over = frozenset(t for lo, hi in ranges for t in range(lo, hi))
    return (frozenset(spans), span_pi, frozenset(a for a, _ in tok), frozenset(w for _, w in tok), over,
            frozenset(words[t] for t in over), over, sorted(ranges))


def _pair_counts(keys, g: dict, p: dict, tokens: Tokens, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """``[n_pairs, len(COUNT_MEASURES), 3]`` (tp, fp, fn) per pair and the gold spans matched by
    span IoU per pair (``[n_pairs]``)."""
    out = np.zeros((len(keys), len(COUNT_MEASURES), 3), dtype=np.int64)
    matched = np.zeros(len(keys), dtype=np.int64)
    for i, (nid, code) in enumerate(keys):
        text = tokens.text(nid)
        gs, ps = (_side(text, tuple(sorted(set(table.get((nid, code), ())))), tokens.unit, tokens.max_number)
                  for table in (g, p))
        for j in range(len(COUNT_MEASURES) - 1):
            a, b = gs[j], ps[j]
            out[i, j] = (len(a & b), len(b - a), len(a - b))
        correct, matched[i] = _iou_match(gs[-1], ps[-1], iou)
        out[i, -1] = (correct, len(ps[-1]) - correct, len(gs[-1]) - correct)
    return out, matched


@dataclass(frozen=True)
class SpanEvaluation:
    """Counts of one prediction table against gold, per evaluated pair (:func:`evaluate_spans`).

    ``keys``: the evaluated ``(note_id, code)`` pairs, sorted; ``counts``: ``[n_pairs,
    len(COUNT_MEASURES), 3]`` int64 ``tp, fp, fn``; ``matched_gold``: ``[n_pairs]`` gold spans
    reached by span IoU (the ``gold_matched`` variant only)."""

    keys: list
    counts: np.ndarray
    matched_gold: np.ndarray

    @property
    def n_notes(self) -> int:
        return len({n for n, _ in self.keys})

    @property
    def n_pairs(self) -> int:
        return len(self.keys)

    def pooled(self, measure: str) -> dict:
        """``prf`` of the counts of an additive measure summed over pairs."""
        return _pooled(self, measure)

    def measures(self) -> dict[str, dict]:
        """Every measure of :data:`ALL_MEASURES` (as :func:`span_plausibility`)."""
        return _all_measures(None, None, None, _ev=self)

    def note_counts(self, measures: Sequence[str] = COUNT_MEASURES) -> pd.DataFrame:
        """Per-note counts ``note_id, measure, n_pairs, tp, fp, fn`` (as :func:`per_note_counts`)."""
        _check_count_measures(measures)
        return _note_counts(self, measures)

    def pair_counts(self) -> pd.DataFrame:
        """Per-pair counts ``note_id, code, measure, tp, fp, fn`` (as :func:`pair_counts`)."""
        return _long_counts(self)


def evaluate_spans(
    gold: pd.DataFrame, pred: pd.DataFrame, docs: pd.DataFrame | None, pairs: Pairs = "gold",
    unit: Unit = "mdace", iou: float = 0.5, tokens: Tokens | None = None,
) -> SpanEvaluation:
    """Score ``pred`` against ``gold`` once; every measure, pooled or per note, comes from the
    result. ``tokens`` (a :class:`Tokens` of ``docs``) may be shared across calls."""
    return _evaluate(gold, pred, tokens or Tokens(docs, unit), pairs, iou)


def _evaluate(gold, pred, tokens: Tokens, pairs: Pairs, iou: float) -> SpanEvaluation:
    keys, g, p = _pair_spans(gold, pred, tokens, pairs)
    counts, matched = _pair_counts(keys, g, p, tokens, iou)
    return SpanEvaluation(keys, counts, matched)


def _check_count_measures(measures: Sequence[str]) -> None:
    bad = [m for m in measures if m not in COUNT_MEASURES]
    if bad:
        raise ValueError(f"measures: {bad} have no additive counts; choose from {list(COUNT_MEASURES)}")


def _pooled(ev: SpanEvaluation, measure: str) -> dict:
    return prf(*ev.counts[:, COUNT_MEASURES.index(measure)].sum(axis=0)) if len(ev.keys) else prf(0, 0, 0)


def _per_pair_prf(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp, fp, fn = (c[:, k].astype(np.float64) for k in range(3))
    p = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    r = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=p + r > 0)
    return p, r, f


def _eraser_token_macro(ev: SpanEvaluation) -> dict:
    p, r, f = _per_pair_prf(ev.counts[:, COUNT_MEASURES.index("eraser_token_micro")])
    mean = (lambda v: float(v.mean()) if len(v) else 0.0)
    return {"precision": mean(p), "recall": mean(r), "f1": mean(f), "n_pairs": len(ev.keys)}


def _span_iou(ev: SpanEvaluation, recall: str = "eraser") -> dict:
    c = ev.counts[:, COUNT_MEASURES.index("span_iou_f1")]
    tp, n_pred, n_gold = c[:, 0], c[:, 0] + c[:, 1], c[:, 0] + c[:, 2]
    correct, matched = int(tp.sum()), int(ev.matched_gold.sum())
    hits = correct if recall == "eraser" else matched
    prec = correct / n_pred.sum() if n_pred.sum() else 0.0
    rec = hits / n_gold.sum() if n_gold.sum() else 0.0
    # macro as partial_match_score: recall averaged over pairs with gold spans, precision over
    # pairs with predicted spans, then the F1 of the two averages
    rs = tp[n_gold > 0] / n_gold[n_gold > 0]
    ps = tp[n_pred > 0] / n_pred[n_pred > 0]
    mr = float(rs.mean()) if len(rs) else 0.0
    mp = float(ps.mean()) if len(ps) else 0.0
    return {
        "n_pred": int(n_pred.sum()), "n_gold": int(n_gold.sum()), "correct_pred": correct, "matched_gold": matched,
        "tp": hits, "fp": int(n_pred.sum()) - correct, "fn": int(n_gold.sum()) - hits,
        "precision": prec, "recall": rec, "f1": _f1(prec, rec),
        "macro": {"precision": mp, "recall": mr, "f1": _f1(mp, mr), "n_pairs": len(ev.keys)},
    }


def pair_counts(
    gold: pd.DataFrame, pred: pd.DataFrame, docs: pd.DataFrame, pairs: Pairs = "gold", unit: Unit = "mdace",
    iou: float = 0.5,
) -> pd.DataFrame:
    """Long table ``note_id, code, measure, tp, fp, fn``: one row per evaluated pair and measure of
    :data:`COUNT_MEASURES` (sums over pairs are the pooled counts; see module doc)."""
    ev = _evaluate(gold, pred, Tokens(docs, unit), pairs, iou)
    return _long_counts(ev)


def _long_counts(ev: SpanEvaluation) -> pd.DataFrame:
    n, m = len(ev.keys), len(COUNT_MEASURES)
    c = ev.counts.reshape(n * m, 3)
    return pd.DataFrame({
        "note_id": np.repeat(np.asarray([k[0] for k in ev.keys], dtype=object), m),
        "code": np.repeat(np.asarray([k[1] for k in ev.keys], dtype=object), m),
        "measure": np.tile(np.asarray(COUNT_MEASURES, dtype=object), n),
        "tp": c[:, 0], "fp": c[:, 1], "fn": c[:, 2],
    })


def per_note_counts(
    gold: pd.DataFrame, pred: pd.DataFrame, docs: pd.DataFrame, measures: Sequence[str] = MDACE_MEASURES,
    pairs: Pairs = "gold", unit: Unit = "mdace", iou: float = 0.5,
) -> pd.DataFrame:
    """Additive per-note counts for the bootstrap (:mod:`rationale_kit.metrics.uncertainty`):
    columns ``note_id, measure, n_pairs, tp, fp, fn``, one row per evaluated note (every note with
    an evaluated pair, zero counts included) and measure of ``measures`` (a subset of
    :data:`COUNT_MEASURES`; macro measures are not sums of per-note counts). Column sums per
    measure are the pooled counts of :func:`mdace_measures` / :func:`plausibility_table`.
    ``span_iou_f1``: ``tp`` = predicted spans matched, ``fp = n_pred - tp``, ``fn = n_gold - tp``
    (ERASER's recall divides matched *predicted* spans by gold spans, so ``fn`` can be negative
    on a note where several predictions match one gold span)."""
    _check_count_measures(measures)
    ev = _evaluate(gold, pred, Tokens(docs, unit), pairs, iou)
    return _note_counts(ev, measures)


def _note_counts(ev: SpanEvaluation, measures: Sequence[str]) -> pd.DataFrame:
    long = _long_counts(ev)
    long = long[long["measure"].isin(list(measures))]
    out = (long.assign(n_pairs=1).groupby(["note_id", "measure"], sort=True)[["n_pairs", "tp", "fp", "fn"]]
           .sum().reset_index())
    return out.astype({"n_pairs": "int64", "tp": "int64", "fp": "int64", "fn": "int64"})


# --- MDACE ---------------------------------------------------------------------------------------


def mdace_measures(
    gold: pd.DataFrame, pred: pd.DataFrame, docs: pd.DataFrame, pairs: Pairs = "gold",
    unit: Unit = "mdace", _tokens: Tokens | None = None,
) -> dict[str, dict]:
    """MDACE's four measures as its scorer computes them, each ``{tp, fp, fn, precision, recall,
    f1}`` (see module doc); ``unit`` only matters for the other measures."""
    ev = _evaluate(gold, pred, _tokens or Tokens(docs, unit), pairs, 0.5)
    return {m: _pooled(ev, m) for m in MDACE_MEASURES}


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
    ev = _evaluate(gold, pred, _tokens or Tokens(docs, unit), pairs, 0.5)
    return {"micro": _pooled(ev, "eraser_token_micro"), "macro": _eraser_token_macro(ev)}


def span_iou_f1(
    gold: pd.DataFrame, pred: pd.DataFrame, docs: pd.DataFrame, iou: float = 0.5,
    unit: Unit = "mdace", pairs: Pairs = "gold", recall: Literal["eraser", "gold_matched"] = "eraser",
    _tokens: Tokens | None = None,
) -> dict:
    """ERASER span IoU-F1 (``partial_match_score``, see module doc): ``n_pred, n_gold,
    correct_pred, matched_gold, tp, fp, fn, precision, recall, f1`` (micro) and ``macro``
    (``precision, recall, f1, n_pairs``). ``recall="eraser"`` (default): ``R = correct_pred /
    n_gold``; ``recall="gold_matched"``: ``R = matched_gold / n_gold`` (gold spans some prediction
    reaches; not ERASER's number), with ``tp = matched_gold``, ``fn = n_gold - matched_gold``."""
    if recall not in ("eraser", "gold_matched"):
        raise ValueError(f"recall must be 'eraser' or 'gold_matched', got {recall!r}")
    ev = _evaluate(gold, pred, _tokens or Tokens(docs, unit), pairs, iou)
    return _span_iou(ev, recall)


def span_plausibility(
    gold: pd.DataFrame, pred: pd.DataFrame, docs: pd.DataFrame, pairs: Pairs = "gold",
    unit: Unit = "mdace", iou: float = 0.5,
) -> dict[str, dict]:
    """Every discrete-span measure, keyed as :data:`ALL_MEASURES` (the CLI's JSON object)."""
    return _all_measures(gold, pred, Tokens(docs, unit), pairs, iou)


def _all_measures(gold, pred, tokens: Tokens, pairs: Pairs = "gold", iou: float = 0.5,
                  _ev: SpanEvaluation | None = None) -> dict:
    ev = _ev or _evaluate(gold, pred, tokens, pairs, iou)
    out = {m: _pooled(ev, m) for m in COUNT_MEASURES if m != "span_iou_f1"}
    out["eraser_token_macro"] = _eraser_token_macro(ev)
    sp = _span_iou(ev)
    out["span_iou_f1_macro"] = sp.pop("macro")
    out["span_iou_f1"] = sp
    return {m: out[m] for m in ALL_MEASURES}


# --- breakdowns ----------------------------------------------------------------------------------


def _restrict(frame: pd.DataFrame, pairs: set[tuple[str, str]]) -> pd.DataFrame:
    if len(frame) == 0:
        return frame
    keys = list(zip(frame["note_id"].astype(str).tolist(), frame["code"].astype(str).tolist()))
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
        pred_pairs = set(zip(predicted_codes["note_id"].astype(str).tolist(), predicted_codes["code"].astype(str).tolist()))
    rows = []
    for level in levels:
        g_level = gold if level == "all" else gold[gold["granularity"] == level]
        level_pairs = set(zip(g_level["note_id"].tolist(), g_level["code"].tolist()))
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
    for nid, code, s, e in zip(*_columns(gold, "note_id", "code", "start", "end")):
        gpairs.setdefault((nid, code), []).append((int(s), int(e)))
    keys = set(gpairs)
    if pairs is not None:
        keys &= set(zip(pairs["note_id"].astype(str).tolist(), pairs["code"].astype(str).tolist()))
    # row positions per pair (in table order), not a DataFrame per pair
    groups = scores.groupby(["note_id", "code"], sort=False).indices if len(scores) else {}
    u_start, u_end = scores["start"].to_numpy(np.int64), scores["end"].to_numpy(np.int64)
    u_score = scores["score"].to_numpy(np.float64)
    out = []
    for nid, code in sorted(keys):
        starts, ends, _ = tokens.get(nid)
        tok = np.zeros(len(starts))
        mask = np.zeros(len(starts), dtype=bool)
        for t in _token_set(tokens, nid, gpairs[(nid, code)]):
            mask[t] = True
        rows = groups.get((nid, code))
        if rows is not None:
            tok = _to_tokens(starts, ends, u_start[rows], u_end[rows], u_score[rows], agg)
        out.append((nid, code, tok, mask))
    return out


def _to_tokens(starts: np.ndarray, ends: np.ndarray, us: np.ndarray, ue: np.ndarray, sc: np.ndarray,
               agg: str) -> np.ndarray:
    """Token scores ``[n_tokens]``: the ``agg`` (sum / max) of the scores ``sc`` of the units
    ``[us, ue)`` overlapping each token ``[starts, ends)``; 0 where no unit does."""
    tok = np.zeros(len(starts))
    if not len(starts) or not len(us):
        return tok
    lo = np.searchsorted(ends, us, side="right")
    hi = np.maximum(np.searchsorted(starts, ue, side="left"), lo)
    n = hi - lo
    if n.sum():
        idx = np.repeat(lo, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        (np.add.at if agg == "sum" else np.maximum.at)(tok, idx, np.repeat(sc, n))
    return tok


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


def binarise(
    scores: pd.DataFrame, threshold: float | None = None, topk: int | None = None, *,
    docs: pd.DataFrame | None = None, level: Literal["token", "unit"] | None = None,
    agg: Literal["sum", "max"] = "sum", unit: Unit = "mdace",
) -> pd.DataFrame:
    """Discrete spans from a soft rationale, per ``(note_id, code)`` (and ``source, method, model``
    when present); each group's unit scores are normalised as in :func:`soft_plausibility`.

    ``level="token"`` (the default with ``threshold``, which :func:`tune_soft_threshold` tunes on
    token scores): unit scores are carried to the note's tokens exactly as
    :func:`soft_token_scores` does (``agg``, ``unit``; needs ``docs``), tokens scoring strictly
    above ``threshold`` (or the ``topk`` best, ties by position) are selected, and each run of
    consecutive selected tokens becomes one span from its first token's start to its last token's
    end; so a PLM-ICD word split into pieces is selected when its pieces' summed score passes the
    threshold, as it was tuned. ``level="unit"`` (the default with ``topk``): the model's own units
    are selected (above ``threshold`` or the ``topk`` best) and runs of consecutive unit indices
    merged. Overlapping resulting spans are merged. Returns a span table (``source`` from the
    scores, else ``"soft"``; ``granularity`` ``""``)."""
    if (threshold is None) == (topk is None):
        raise ValueError("give exactly one of threshold and topk")
    level = level or ("token" if threshold is not None else "unit")
    if level not in ("token", "unit"):
        raise ValueError(f"level must be 'token' or 'unit', got {level!r}")
    if agg not in ("sum", "max"):
        raise ValueError(f"agg must be 'sum' or 'max', got {agg!r}")
    missing = [c for c in ("note_id", "code", "unit", "start", "end", "score") if c not in scores.columns]
    if missing:
        raise DataError(f"scores: missing column(s) {missing}")
    tokens = None
    if level == "token":
        if docs is None:
            raise ValueError("binarise at level='token' (the level thresholds are tuned at) needs docs; "
                             "pass docs=..., or level='unit' to select the model's own units")
        tokens = Tokens(docs, unit)
    keys = ["note_id", "code"] + [c for c in ("source", "method", "model") if c in scores.columns]
    extra = [c for c in ("method", "model") if c in scores.columns]
    rows = []
    if len(scores):
        gb = scores.groupby(keys, sort=True, dropna=False)
        group = gb.ngroup().to_numpy()
        unit_all = scores["unit"].to_numpy()
        # one sort for all groups: by group (numbered in sorted key order), then unit (stable)
        order = np.lexsort((unit_all, group))
        cut = np.flatnonzero(np.diff(group[order])) + 1
        score_all = scores["score"].to_numpy(np.float64).clip(min=0)[order]
        start_all = scores["start"].to_numpy(np.int64)[order]
        end_all = scores["end"].to_numpy(np.int64)[order]
        unit_all = unit_all[order]
        for key, lo, hi in zip(gb.size().index, np.r_[0, cut], np.r_[cut, len(order)]):
            key = dict(zip(keys, key))
            sc = score_all[lo:hi]
            total = sc.sum()
            sc = sc / total if total > 0 else np.zeros_like(sc)
            st, en = start_all[lo:hi], end_all[lo:hi]
            if tokens is not None:
                t_start, t_end, _ = tokens.get(str(key["note_id"]))
                sel = _select(_to_tokens(t_start, t_end, st, en, sc, agg), threshold, topk)
                index, st, en = np.flatnonzero(sel), t_start[sel], t_end[sel]
            else:
                sel = _select(sc, threshold, topk)
                index, st, en = unit_all[lo:hi][sel], st[sel], en[sel]
            runs = []
            for i in range(len(index)):
                if runs and index[i] == index[i - 1] + 1:
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
