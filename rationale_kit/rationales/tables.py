"""The one representation of rationales: span and soft (score) tables.

A discrete rationale table has :data:`records.SPAN_COLUMNS` plus ``method`` and ``model``; a soft
one has :data:`records.SCORE_COLUMNS` (one score per unit of some tokenizer with the unit's
character offsets). This module checks, saves and loads both, and converts between them and to unit
masks of any tokenizer through character offsets. See docs/method/rationales.md.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import pandas as pd

from rationale_kit.core import text as _text
from rationale_kit.core.documents import as_documents
from rationale_kit.core.records import SCORE_COLUMNS, SPAN_COLUMNS, DataError, Span, read_spans_jsonl, write_spans_jsonl

#: Extra columns of a discrete rationale table (after SPAN_COLUMNS).
DISCRETE_EXTRA = ["method", "model"]
DISCRETE_COLUMNS = SPAN_COLUMNS + DISCRETE_EXTRA


# --------------------------------------------------------------------------------------------
# spans <-> units
# --------------------------------------------------------------------------------------------
def _span_list(spans) -> list[tuple[int, int]]:
    if spans is None:
        return []
    if isinstance(spans, pd.DataFrame):
        return [(int(s), int(e)) for s, e in zip(spans["start"], spans["end"])]
    out = []
    for s in spans:
        if isinstance(s, Span):
            out.append((s.start, s.end))
        else:
            a, b = s
            out.append((int(a), int(b)))
    return out


def to_token_mask(spans, text: str, offsets) -> np.ndarray:
    """Boolean mask ``[n]`` over any tokenizer's units: unit ``i`` (characters
    ``offsets[i, 0]:offsets[i, 1]`` of ``text``) is selected when it overlaps a span by at least
    one character. ``spans``: ``(start, end)`` pairs, :class:`Span` objects or a span table (all
    rows are used: filter it to one note and code first). Raises :class:`DataError` for a span or
    unit outside ``text``."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    pairs = _span_list(spans)
    for s, e in pairs:
        if not (0 <= s < e <= len(text)):
            raise DataError(f"span [{s}, {e}) outside a text of length {len(text)}")
    if len(offsets) and (offsets.min() < 0 or offsets.max() > len(text)):
        raise DataError(f"unit offsets outside a text of length {len(text)}")
    return _text.span_mask(offsets, pairs)


def to_word_units(
    text: str,
    spans=None,
    *,
    offsets=None,
    scores=None,
    reduce: Literal["sum", "max", "mean"] = "sum",
    max_number: int = 10,
) -> pd.DataFrame:
    """MDACE word units (:func:`text.mdace_tokens`: ``\\w+`` on lower-cased text, numbers above
    ``max_number`` dropped) with one value each.

    With ``spans``: value 1.0 for words overlapping a span, else 0.0. With ``offsets`` and
    ``scores`` (a soft rationale on another tokenizer's units): each word gets the ``reduce`` of
    the scores of the units that overlap it (``sum`` keeps the mass of word pieces), 0.0 when
    none does. Returns columns ``unit, start, end, token, value``.
    """
    toks = _text.mdace_tokens(text, max_number=max_number)
    woff = np.asarray([(s, e) for s, e, _ in toks], dtype=np.int64).reshape(-1, 2)
    if (spans is None) == (scores is None):
        raise ValueError("to_word_units: give either spans or offsets+scores")
    if spans is not None:
        values = to_token_mask(spans, text, woff).astype(np.float64)
    else:
        uoff = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        sc = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(sc) != len(uoff):
            raise ValueError(f"{len(sc)} scores for {len(uoff)} units")
        values = _project_scores(woff, uoff, sc, reduce)
    return pd.DataFrame(
        {
            "unit": np.arange(len(toks), dtype=np.int64),
            "start": woff[:, 0],
            "end": woff[:, 1],
            "token": [t for _, _, t in toks],
            "value": values,
        }
    )


def _project_scores(woff: np.ndarray, uoff: np.ndarray, sc: np.ndarray, reduce: str) -> np.ndarray:
    """Scores of units projected on (sorted, disjoint) words: each word gets the ``reduce`` of
    the scores of the units that overlap it by at least one character."""
    values = np.zeros(len(woff), dtype=np.float64)
    if len(woff) == 0 or len(uoff) == 0:
        return values
    keep = uoff[:, 1] > uoff[:, 0]
    us, ue, usc = uoff[keep, 0], uoff[keep, 1], sc[keep]
    lo = np.searchsorted(woff[:, 1], us, side="right")  # first word ending after the unit start
    hi = np.searchsorted(woff[:, 0], ue, side="left")  # words starting before the unit end
    length = np.clip(hi - lo, 0, None)
    unit_idx = np.repeat(np.arange(len(us)), length)
    word_idx = np.repeat(lo, length) + (np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length))
    vals = usc[unit_idx]
    if reduce == "sum":
        np.add.at(values, word_idx, vals)
    elif reduce == "max":
        values[:] = -np.inf
        np.maximum.at(values, word_idx, vals)
        values[np.isneginf(values)] = 0.0
    elif reduce == "mean":
        counts = np.zeros(len(woff))
        np.add.at(values, word_idx, vals)
        np.add.at(counts, word_idx, 1.0)
        values = np.divide(values, counts, out=np.zeros_like(values), where=counts > 0)
    else:
        raise ValueError(f"reduce must be sum, max or mean, got {reduce!r}")
    return values


def word_unit_scores(table: pd.DataFrame, docs, reduce: Literal["sum", "max", "mean"] = "sum",
                     max_number: int = 10, renormalize: bool = False) -> pd.DataFrame:
    """A soft table re-expressed on MDACE word units (so models with different tokenizers can be
    compared); ``source``, ``method``, ``model`` kept, ``unit`` = word index. Score on units that
    overlap no MDACE word (punctuation pieces, numbers above ``max_number``) is dropped, so a
    pair's word scores may sum to less than its unit scores; ``renormalize`` rescales each pair's
    word scores to sum 1 (when positive)."""
    check_columns(table, SCORE_COLUMNS, "soft rationale table")
    texts = as_documents(docs)
    parts = []
    keys = ["note_id", "code", "source", "method", "model"]
    for key, g in table.groupby(keys, sort=False, dropna=False):
        w = to_word_units(texts[key[0]], offsets=g[["start", "end"]].to_numpy(),
                          scores=g["score"].to_numpy(), reduce=reduce, max_number=max_number)
        values = w["value"].to_numpy()
        if renormalize and values.sum() > 0:
            values = values / values.sum()
        parts.append(pd.DataFrame({k: v for k, v in zip(keys, key)} | {
            "unit": w["unit"], "start": w["start"], "end": w["end"], "score": values}))
    return soft_table(parts)


def soft_to_spans(
    scores: pd.DataFrame,
    topk: Optional[int] = None,
    threshold: Optional[float] = None,
) -> pd.DataFrame:
    """Binarise a soft table into spans.

    Per (note, code, source, method, model): ``topk`` keeps the ``k`` highest-scoring units (ties
    broken by position); ``threshold`` keeps units whose score, normalised to sum 1 over the pair
    (negative scores clipped to 0 first), is above ``threshold``. Runs of consecutive selected
    units (by ``unit`` index) are merged into one span from the first unit's start to the last
    unit's end. Output: DISCRETE_COLUMNS + ``score`` (normalised mass of the span),
    ``soft_method`` (the soft table's method) and ``param`` (k or the threshold); ``source`` is
    kept, ``method`` is ``"topk"`` or ``"threshold"``.
    """
    if (topk is None) == (threshold is None):
        raise ValueError("soft_to_spans: give exactly one of topk and threshold")
    if topk is not None and topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    check_columns(scores, SCORE_COLUMNS, "soft rationale table")
    method = "topk" if topk is not None else "threshold"
    param = float(topk if topk is not None else threshold)
    cols = DISCRETE_COLUMNS + ["score", "soft_method", "param"]
    keys = ["note_id", "code", "source", "method", "model"]
    dtypes = {"start": "int64", "end": "int64", "score": "float64", "param": "float64"}
    if not len(scores):
        return pd.DataFrame(columns=cols).astype(dtypes)
    # one pass over arrays instead of one DataFrame per pair: groups numbered in order of first
    # appearance (as groupby(sort=False)), rows sorted by (group, unit), stable
    gid = scores.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
    units_all = scores["unit"].to_numpy()
    order = np.lexsort((units_all, gid))
    gid, units = gid[order], units_all[order]
    sc = scores["score"].to_numpy(dtype=np.float64)[order]
    starts, ends = scores["start"].to_numpy()[order], scores["end"].to_numpy()[order]
    bounds = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1], True])
    pos = np.clip(sc, 0.0, None)
    norm = np.zeros_like(pos)
    for a, b in zip(bounds[:-1], bounds[1:]):
        total = pos[a:b].sum()  # per pair, as one array: the same float sum as before
        if total > 0:
            norm[a:b] = pos[a:b] / total
    if topk is not None:
        by_score = np.lexsort((units, -sc, gid))  # per pair: score desc, then position
        rank = np.empty(len(gid), dtype=np.int64)
        rank[by_score] = np.arange(len(gid)) - np.repeat(bounds[:-1], np.diff(bounds))
        sel = rank < topk
    else:
        sel = norm > threshold
    idx = np.flatnonzero(sel)
    if not len(idx):
        return pd.DataFrame(columns=cols).astype(dtypes)
    # runs of consecutive selected units of one pair become one span
    new_run = np.r_[True, (gid[idx[1:]] != gid[idx[:-1]]) | (units[idx[1:]] != units[idx[:-1]] + 1)]
    run_bounds = np.r_[np.flatnonzero(new_run), len(idx)]
    first = scores.iloc[order[idx[run_bounds[:-1]]]]
    sel_norm, sel_starts, sel_ends = norm[idx], starts[idx], ends[idx]
    run_scores = [float(sel_norm[a:b].sum()) for a, b in zip(run_bounds[:-1], run_bounds[1:])]
    out = pd.DataFrame({
        "note_id": first["note_id"].to_numpy(), "code": first["code"].to_numpy(),
        "start": np.minimum.reduceat(sel_starts, run_bounds[:-1]),
        "end": np.maximum.reduceat(sel_ends, run_bounds[:-1]),
        "granularity": "", "source": first["source"].to_numpy(), "method": method, "model": first["model"].to_numpy(),
        "score": np.asarray(run_scores, dtype=np.float64), "soft_method": first["method"].to_numpy(), "param": param,
    }, columns=cols)
    return out.astype(dtypes)


# --------------------------------------------------------------------------------------------
# checks and I/O
# --------------------------------------------------------------------------------------------
def spans_to_jsonl(spans: pd.DataFrame, path: str | Path, docs: Optional[pd.DataFrame] = None) -> None:
    """:func:`records.write_spans_jsonl`, keeping extra columns (``method``, ``model``...) as
    extra keys of each line."""
    write_spans_jsonl(spans, path, docs)
    extra = [c for c in spans.columns if c not in SPAN_COLUMNS]
    if not extra:
        return
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    recs = spans[extra].to_dict("records")
    with open(path, "w", encoding="utf-8") as fh:
        for line, ex in zip(lines, recs):
            rec = json.loads(line)
            for k, v in ex.items():
                rec[k] = v.item() if isinstance(v, np.generic) else v
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def spans_from_jsonl(path: str | Path, docs: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """:func:`records.read_spans_jsonl` (offsets and covered text checked against ``docs``), with
    the extra keys of :func:`spans_to_jsonl` restored as columns (``text`` excepted)."""
    frame = read_spans_jsonl(path, docs)
    extras: list[dict] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                extras.append({k: v for k, v in rec.items() if k not in SPAN_COLUMNS and k != "text"})
    if any(extras):
        frame = pd.concat([frame, pd.DataFrame(extras, index=frame.index)], axis=1)
    return frame


def check_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise :class:`DataError` naming ``what`` and the missing columns."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}; have {list(frame.columns)}")


def table_kind(frame: pd.DataFrame) -> str:
    """``"soft"`` for a SCORE_COLUMNS table, ``"spans"`` for a SPAN_COLUMNS one."""
    cols = set(frame.columns)
    if set(SCORE_COLUMNS) <= cols:
        return "soft"
    if set(SPAN_COLUMNS) <= cols:
        return "spans"
    raise DataError(
        f"not a rationale table: need the span columns {SPAN_COLUMNS} or the soft columns "
        f"{SCORE_COLUMNS}; missing {sorted(set(SPAN_COLUMNS) - cols)} / {sorted(set(SCORE_COLUMNS) - cols)}"
    )


_DTYPES = {"start": "int64", "end": "int64", "unit": "int64", "score": "float64"}


def soft_table(parts: list) -> pd.DataFrame:
    """Concatenated per-pair soft tables in SCORE_COLUMNS order and dtypes (an empty, typed
    table when ``parts`` is empty)."""
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            SCORE_COLUMNS, ["object"] * 5 + ["int64", "int64", "int64", "float64"])})
    frame = pd.concat(parts, ignore_index=True)[SCORE_COLUMNS]
    return frame.astype(_DTYPES)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype({k: v for k, v in _DTYPES.items() if k in frame.columns})
    for c in ("note_id", "code", "source", "method", "model", "granularity"):
        if c in frame.columns:
            frame[c] = frame[c].astype(str)
    return frame


def save_table(frame: pd.DataFrame, path: str | Path, kind: Optional[str] = None) -> Path:
    """Write a span or soft table to parquet after checking its columns (``kind``: ``"spans"``,
    ``"soft"`` or ``None`` = infer). Returns the path."""
    found = table_kind(frame)
    if kind is not None and kind != found:
        check_columns(frame, SCORE_COLUMNS if kind == "soft" else SPAN_COLUMNS, f"{kind} table")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _typed(frame.reset_index(drop=True)).to_parquet(path, index=False)
    return path


def load_table(path: str | Path, kind: Optional[str] = None) -> pd.DataFrame:
    """Read a table written by :func:`save_table`; the columns are checked (``kind`` as there)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"rationale table {path} does not exist")
    frame = pd.read_parquet(path)
    try:
        found = table_kind(frame)
        if kind is not None and kind != found:
            check_columns(frame, SCORE_COLUMNS if kind == "soft" else SPAN_COLUMNS, f"{kind} table")
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return _typed(frame)
