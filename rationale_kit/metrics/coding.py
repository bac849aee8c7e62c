"""Coding metrics: pure functions of ``y_true [N, L]`` in {0, 1} and ``probs [N, L]``: micro and
macro P/R/F1, P@k, R@k, R-precision, mAP, ROC-AUC, threshold tuning and the frequency baseline.
A code is predicted when ``prob > threshold``. Gold codes outside the label space are passed as
counts (``unseen``). See docs/method/coding.md.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "DEFAULT_KS", "average_precision", "coding_report", "frequency_baseline", "mean_average_precision",
    "precision_at_k", "precision_recall_f1", "r_precision", "recall_at_k", "roc_auc",
    "threshold_grid", "tune_threshold",
]

DEFAULT_KS = (5, 8, 15)


def _check(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"y_true and probs must both be [N, L]; got {y.shape} and {p.shape}")
    return y.astype(bool), p


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _f1(p: float, r: float) -> float:
    return float(2 * p * r / (p + r)) if (p + r) > 0 else 0.0


# --------------------------------------------------------------------------------------------
# thresholded metrics
# --------------------------------------------------------------------------------------------
def unseen_counts(codes: Iterable[Iterable[str]], labels: Sequence[str]) -> np.ndarray:
    """``[N]`` int: per document, its distinct gold codes that are not in ``labels``."""
    known = set(labels)
    return np.array([len({c for c in cs if c not in known}) for cs in codes], dtype=np.int64)


def _unseen(unseen, n: int) -> np.ndarray:
    if unseen is None:
        return np.zeros(n, dtype=np.int64)
    u = np.asarray(unseen, dtype=np.int64).reshape(-1)
    if len(u) != n or (u < 0).any():
        raise ValueError(f"unseen must hold one non-negative count per document ({n}), got shape {u.shape}")
    return u


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray, unseen=None) -> dict[str, float]:
    """Micro and macro precision, recall and F1 of binary predictions ``y_pred [N, L]``.

    Returns ``micro_precision, micro_recall, micro_f1, macro_precision, macro_recall`` (means over
    all codes, 0 for 0/0), ``macro_f1_mean`` (Edin: mean per-code F1 over codes present in
    ``y_true``), ``macro_f1_harmonic`` (CAML/LAAT/PLM-ICD: harmonic mean of macro P and R over all
    codes) and ``n_codes_present``. ``unseen [N]``: gold codes outside the label space per
    document, false negatives of micro recall/F1 (the macro measures stay over label-space codes).
    """
    y, pred = _check(y_true, y_pred)
    pred = pred.astype(bool)
    n_unseen = float(_unseen(unseen, len(y)).sum())
    tp = (y & pred).sum(0).astype(np.float64)
    fp = (~y & pred).sum(0).astype(np.float64)
    fn = (y & ~pred).sum(0).astype(np.float64)
    micro_p = float(_safe_div(tp.sum(), tp.sum() + fp.sum()))
    micro_r = float(_safe_div(tp.sum(), tp.sum() + fn.sum() + n_unseen))
    p_code = _safe_div(tp, tp + fp)
    r_code = _safe_div(tp, tp + fn)
    f1_code = _safe_div(2 * tp, 2 * tp + fp + fn)
    present = (tp + fn) > 0
    macro_p = float(p_code.mean()) if len(p_code) else 0.0
    macro_r = float(r_code.mean()) if len(r_code) else 0.0
    return {
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": _f1(micro_p, micro_r),
        "macro_precision": macro_p,
        "macro_recall": macro_r,
        "macro_f1_mean": float(f1_code[present].mean()) if present.any() else 0.0,
        "macro_f1_harmonic": _f1(macro_p, macro_r),
        "n_codes_present": int(present.sum()),
    }


def threshold_grid(grid: int = 101) -> np.ndarray:
    """The thresholds tried by :func:`tune_threshold`: ``grid`` evenly spaced points over [0, 1]."""
    if grid < 2:
        raise ValueError(f"threshold grid needs at least 2 points, got {grid}")
    return np.linspace(0.0, 1.0, grid)


def _grid_counts(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each threshold t: number of positives and of negatives with ``p > t`` (one pass)."""
    # index of the largest threshold < p (-1 when p is at or below every threshold)
    idx = np.searchsorted(thresholds, p.ravel(), side="left") - 1
    yy = y.ravel()
    g = len(thresholds)
    keep = idx >= 0
    pos = np.bincount(idx[keep & yy], minlength=g)[:g]
    neg = np.bincount(idx[keep & ~yy], minlength=g)[:g]
    # p > t_i  <=>  idx >= i: reverse cumulative sums
    return pos[::-1].cumsum()[::-1], neg[::-1].cumsum()[::-1]


def tune_threshold(y_true: np.ndarray, probs: np.ndarray, grid: int = 101) -> tuple[float, float]:
    """The decision threshold (of ``grid`` points over [0, 1]) that maximises micro-F1.

    Returns ``(threshold, micro_f1)``; ties go to the smallest threshold. Runs in one pass over the
    matrix (histogram of the probabilities), so it is cheap on MIMIC-sized label matrices.
    """
    y, p = _check(y_true, probs)
    thresholds = threshold_grid(grid)
    tp, fp = _grid_counts(y, p, thresholds)
    n_pos = y.sum()
    f1 = _safe_div(2 * tp, tp + fp + n_pos)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


# --------------------------------------------------------------------------------------------
# ranking metrics
# --------------------------------------------------------------------------------------------
def _top_k_hits(y: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """Gold codes among each document's ``k`` highest-scored codes (ties broken by label order)."""
    k = min(k, y.shape[1])
    if k <= 0:
        return np.zeros(len(y))
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(y, top, axis=1).sum(1).astype(np.float64)


def precision_at_k(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Mean over documents of (gold codes among the top ``k``) / ``k``."""
    y, p = _check(y_true, probs)
    if len(y) == 0:
        return 0.0
    return float((_top_k_hits(y, p, k) / k).mean())


def recall_at_k(y_true: np.ndarray, probs: np.ndarray, k: int, unseen=None) -> float:
    """Mean over documents with gold codes of (gold codes among the top ``k``) / (gold codes);
    ``unseen [N]`` gold codes outside the label space count in the gold codes."""
    y, p = _check(y_true, probs)
    n_gold = y.sum(1) + _unseen(unseen, len(y))
    has = n_gold > 0
    if not has.any():
        return 0.0
    return float((_top_k_hits(y[has], p[has], k) / n_gold[has]).mean())


def r_precision(y_true: np.ndarray, probs: np.ndarray, unseen=None) -> float:
    """Mean over documents with gold codes of precision at R = the document's number of codes
    (``unseen [N]`` gold codes outside the label space included in R; R is capped at L)."""
    y, p = _check(y_true, probs)
    n_gold = y.sum(1) + _unseen(unseen, len(y))
    has = np.flatnonzero(n_gold > 0)
    if len(has) == 0:
        return 0.0
    order = np.argsort(-p[has], axis=1, kind="stable")
    ranked = np.take_along_axis(y[has], order, axis=1)
    cum = np.concatenate([np.zeros((len(has), 1), dtype=np.int64), ranked.cumsum(1)], axis=1)
    hits = cum[np.arange(len(has)), np.minimum(n_gold[has], y.shape[1])]
    return float((hits / n_gold[has]).mean())


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision of one code: sum over distinct thresholds of (recall step) x precision.

    Tied scores form one threshold, as in scikit-learn. NaN when ``y`` has no positives.
    """
    y = np.asarray(y, dtype=bool)
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    # last index of each run of equal scores
    ends = np.r_[np.flatnonzero(np.diff(ps) != 0), len(ps) - 1]
    tp = ys.cumsum()[ends]
    precision = tp / (ends + 1)
    recall_steps = np.diff(np.r_[0, tp]) / n_pos
    return float((recall_steps * precision).sum())


def mean_average_precision(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean over codes with at least one positive of :func:`average_precision` (NaN if none)."""
    y, p = _check(y_true, probs)
    cols = np.flatnonzero(y.any(0))
    if len(cols) == 0:
        return float("nan")
    return float(np.mean([average_precision(y[:, j], p[:, j]) for j in cols]))


def _auc_from_ranks(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Column-wise ROC-AUC by the Mann-Whitney statistic (average ranks for ties)."""
    ranks = rankdata(p, axis=0)
    n_pos = y.sum(0).astype(np.float64)
    n_neg = len(y) - n_pos
    sum_pos = (ranks * y).sum(0)
    return _safe_div(sum_pos - n_pos * (n_pos + 1) / 2, n_pos * n_neg)


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``{"micro_auc", "macro_auc"}``; macro over codes with both positives and negatives."""
    y, p = _check(y_true, probs)
    out = {"micro_auc": float("nan"), "macro_auc": float("nan")}
    flat_y = y.reshape(-1, 1)
    if 0 < flat_y.sum() < len(flat_y):
        out["micro_auc"] = float(_auc_from_ranks(flat_y, p.reshape(-1, 1))[0])
    n_pos = y.sum(0)
    cols = np.flatnonzero((n_pos > 0) & (n_pos < len(y)))
    if len(cols):
        out["macro_auc"] = float(_auc_from_ranks(y[:, cols], p[:, cols]).mean())
    return out


# --------------------------------------------------------------------------------------------
# reports and baselines
# --------------------------------------------------------------------------------------------
def coding_report(
    y_true: np.ndarray, probs: np.ndarray, threshold: float, ks: Sequence[int] = DEFAULT_KS, unseen=None
) -> dict[str, float]:
    """All coding metrics of ``probs`` at decision ``threshold``, as one flat dict.

    Keys: the outputs of :func:`precision_recall_f1` (at ``probs > threshold``), ``p@k`` and
    ``r@k`` for each k, ``r_precision``, ``map``, ``micro_auc``, ``macro_auc``, ``threshold``,
    ``n_docs``, ``n_codes``, ``unseen_gold`` and ``unseen_gold_share`` (gold code occurrences
    outside the label space, ``unseen [N]``, counted as misses; share of all gold occurrences).
    """
    y, p = _check(y_true, probs)
    u = _unseen(unseen, len(y))
    out: dict[str, float] = {}
    out.update(precision_recall_f1(y, p > threshold, u))
    for k in ks:
        out[f"p@{k}"] = precision_at_k(y, p, k)
        out[f"r@{k}"] = recall_at_k(y, p, k, u)
    out["r_precision"] = r_precision(y, p, u)
    out["map"] = mean_average_precision(y, p)
    out.update(roc_auc(y, p))
    out["threshold"] = float(threshold)
    out["n_docs"] = int(y.shape[0])
    out["n_codes"] = int(y.shape[1])
    out["unseen_gold"] = int(u.sum())
    out["unseen_gold_share"] = float(_safe_div(u.sum(), u.sum() + y.sum()))
    return out


def frequency_baseline(
    train_codes: Iterable[Iterable[str]], labels: Sequence[str], n_docs: int
) -> np.ndarray:
    """The frequency baseline's ``probs [n_docs, L]``: every document gets the training prior.

    ``train_codes`` holds one list of codes per training document; the score of code ``l`` is the
    share of training documents that carry it, so the ranking metrics rank the most frequent codes
    first and a tuned threshold predicts the most frequent codes.
    """
    index = {c: j for j, c in enumerate(labels)}
    counts = np.zeros(len(labels), dtype=np.float64)
    n_train = 0
    for codes in train_codes:
        n_train += 1
        for j in {index[c] for c in codes if c in index}:
            counts[j] += 1
    prior = counts / max(n_train, 1)
    return np.tile(prior, (int(n_docs), 1))


def label_matrix(codes: Iterable[Iterable[str]], labels: Sequence[str]) -> np.ndarray:
    """``y [N, L]`` (uint8) from one list of codes per document; codes not in ``labels`` are ignored."""
    index = {c: j for j, c in enumerate(labels)}
    rows = list(codes)
    y = np.zeros((len(rows), len(labels)), dtype=np.uint8)
    for i, cs in enumerate(rows):
        for c in cs:
            j = index.get(c)
            if j is not None:
                y[i, j] = 1
    return y


__all__ += ["label_matrix", "unseen_counts"]
