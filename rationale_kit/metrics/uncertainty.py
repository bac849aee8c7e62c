"""Bootstrap intervals over notes: resamples as weight matrices ``W [R, N]`` over additive per-note
columns, percentile intervals (order statistics), paired comparisons. See docs/method/uncertainty.md.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Mapping

import numpy as np
import pandas as pd

Sums = Mapping[str, np.ndarray]
Statistic = Callable[[Sums], np.ndarray]

NAN_WARN_SHARE = 0.05


class BootstrapWarning(UserWarning):
    """More than 5% of the resamples gave an undefined (NaN) statistic."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval.

    ``estimate``: statistic on the full sample; ``lo, hi``: interval bounds (NaN when every resample
    was NaN); ``n_notes``: notes resampled; ``n_resamples``: resamples drawn; ``level``: coverage
    (0.95); ``n_nan``: resamples with an undefined statistic, left out of the quantiles.
    """

    estimate: float
    lo: float
    hi: float
    n_notes: int
    n_resamples: int
    level: float
    n_nan: int = 0

    @property
    def nan_share(self) -> float:
        return self.n_nan / self.n_resamples if self.n_resamples else 0.0

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi, "n_notes": self.n_notes,
                "n_resamples": self.n_resamples, "level": self.level, "n_nan": self.n_nan}


def note_weights(n_notes: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n_notes]`` int64: times each note is drawn in each resample (``n_notes``
    draws with replacement, i.e. one multinomial row per resample); deterministic in ``seed``."""
    if int(n_notes) < 1:
        raise ValueError(f"n_notes must be >= 1, got {n_notes}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    n, r = int(n_notes), int(n_resamples)
    # the N draws of each resample as note indices, counted per row (a multinomial row; ~10x
    # faster than Generator.multinomial for a few hundred notes)
    draws = rng.integers(0, n, size=(r, n)) + (np.arange(r) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=r * n).reshape(r, n).astype(np.int64)


def _values(per_note: pd.DataFrame, where: str) -> tuple[pd.DataFrame, np.ndarray]:
    if not isinstance(per_note, pd.DataFrame):
        raise TypeError(f"{where}: expected a DataFrame indexed by note_id, got {type(per_note).__name__}")
    if per_note.index.has_duplicates:
        dup = per_note.index[per_note.index.duplicated()][0]
        raise ValueError(f"{where}: note {dup!r} appears more than once (one row per note)")
    if per_note.shape[1] == 0:
        raise ValueError(f"{where}: no columns to resample")
    frame = per_note.sort_index()
    try:
        vals = frame.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: columns must be numeric, got {dict(frame.dtypes.astype(str))}") from None
    if not np.isfinite(vals).all():
        r, c = np.argwhere(~np.isfinite(vals))[0]
        raise ValueError(f"{where}: non-finite value in note {frame.index[r]!r}, column {frame.columns[c]!r}")
    return frame, vals


def _sums(columns, totals: np.ndarray) -> dict[str, np.ndarray]:
    """``totals`` ``[R, C]`` (or ``[C]``) -> ``{column: [R] (or 0-d)}``."""
    return {str(c): totals[..., j] for j, c in enumerate(columns)}


def _apply(statistic: Statistic, sums: dict[str, np.ndarray], n: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(statistic(sums), dtype=np.float64)
    return np.broadcast_to(out, (n,)) if out.ndim == 0 else out.reshape(n)


def _interval(estimate: float, draws: np.ndarray, n_notes: int, level: float) -> Interval:
    ok = ~np.isnan(draws)
    n_nan = int((~ok).sum())
    if n_nan > NAN_WARN_SHARE * len(draws):
        warnings.warn(
            f"bootstrap: {n_nan} of {len(draws)} resamples gave an undefined statistic (NaN); "
            f"the interval rests on the other {len(draws) - n_nan}", BootstrapWarning, stacklevel=3)
    if ok.any():
        lo, hi = _percentiles(draws[ok], level)
    else:
        lo = hi = float("nan")
    return Interval(float(estimate), float(lo), float(hi), int(n_notes), len(draws), float(level), n_nan)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    """Order statistics ``x_(ceil(n a))`` and ``x_(ceil(n (1 - a)))`` with ``a = (1 - level) / 2``
    (1-based; the ``inverted_cdf`` quantiles, computed with a tolerance so that 0.025 * 1000 is 25)."""
    x = np.sort(values)
    n, a = len(x), (1.0 - level) / 2.0
    k_lo = max(int(np.ceil(n * a - 1e-9)), 1)
    k_hi = max(int(np.ceil(n * (1.0 - a) - 1e-9)), 1)
    return float(x[k_lo - 1]), float(x[min(k_hi, n) - 1])


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def bootstrap(per_note: pd.DataFrame, statistic: Statistic, *, n_resamples: int = 1000, seed: int = 0,
              level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over notes.

    ``per_note``: one row per note (index = note id; sorted here so the resampling does not depend
    on row order), additive numeric columns. ``statistic`` maps ``{column: sums}`` to the measure,
    elementwise: ``sums`` are arrays ``[R]`` for the resamples and 0-d arrays for the point
    estimate. One matrix product ``[R, N] @ [N, C]`` per call.
    """
    _check_level(level)
    frame, vals = _values(per_note, "per_note")
    if len(frame) == 0:
        raise ValueError("per_note: no notes to resample")
    w = note_weights(len(frame), n_resamples, seed)
    est = _apply(statistic, _sums(frame.columns, vals.sum(axis=0)), 1)[0]
    draws = _apply(statistic, _sums(frame.columns, w @ vals), w.shape[0])
    return _interval(est, draws, len(frame), level)


def paired_bootstrap(per_note_a: pd.DataFrame, per_note_b: pd.DataFrame, statistic: Statistic, *,
                     n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """Interval of ``statistic(a) - statistic(b)`` on the notes both tables have (index
    intersection), each resample applying the **same** note weights to ``a`` and ``b``.
    ``n_notes`` is the number of notes in common; a resample where either side is NaN is NaN."""
    _check_level(level)
    fa, va = _values(per_note_a, "per_note_a")
    fb, vb = _values(per_note_b, "per_note_b")
    common = fa.index.intersection(fb.index).sort_values()
    if len(common) == 0:
        raise ValueError(f"paired_bootstrap: no note in common ({len(fa)} notes in a, {len(fb)} in b)")
    ia, ib = fa.index.get_indexer(common), fb.index.get_indexer(common)
    va, vb = va[ia], vb[ib]
    w = note_weights(len(common), n_resamples, seed)
    est = (_apply(statistic, _sums(fa.columns, va.sum(axis=0)), 1)
           - _apply(statistic, _sums(fb.columns, vb.sum(axis=0)), 1))[0]
    draws = (_apply(statistic, _sums(fa.columns, w @ va), w.shape[0])
             - _apply(statistic, _sums(fb.columns, w @ vb), w.shape[0]))
    return _interval(est, draws, len(common), level)


# --- statistics ----------------------------------------------------------------------------------


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def f1_statistic(sums: Sums) -> np.ndarray:
    """Pooled F1 ``2tp / (2tp + fp + fn)`` from columns ``tp, fp, fn``; 0 when nothing is
    predicted nor gold (MDACE's convention, see module doc)."""
    tp = np.asarray(sums["tp"], dtype=np.float64)
    return _ratio(2 * tp, 2 * tp + np.asarray(sums["fp"]) + np.asarray(sums["fn"]))


def precision_statistic(sums: Sums) -> np.ndarray:
    """Pooled precision ``tp / (tp + fp)`` from columns ``tp, fp``; 0 without predictions."""
    tp = np.asarray(sums["tp"], dtype=np.float64)
    return _ratio(tp, tp + np.asarray(sums["fp"]))


def recall_statistic(sums: Sums) -> np.ndarray:
    """Pooled recall ``tp / (tp + fn)`` from columns ``tp, fn``; 0 without gold."""
    tp = np.asarray(sums["tp"], dtype=np.float64)
    return _ratio(tp, tp + np.asarray(sums["fn"]))


def mean_statistic(sums: Sums) -> np.ndarray:
    """Mean over pairs ``sum / count`` from columns ``sum, count`` (notes resampled, each note
    carrying its pairs); NaN when a resample has no pair (count 0)."""
    num = np.asarray(sums["sum"], dtype=np.float64)
    den = np.asarray(sums["count"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def verdict(interval: Interval, expect: Literal["greater", "less"] = "greater") -> str:
    """``"holds"`` when the whole interval is on the expected side of 0 (``lo > 0`` for
    ``"greater"``, ``hi < 0`` for ``"less"``), ``"does not hold"`` when it is wholly on the other
    side, else ``"inconclusive"`` (also when the interval is undefined)."""
    if expect not in ("greater", "less"):
        raise ValueError(f"expect must be 'greater' or 'less', got {expect!r}")
    lo, hi = interval.lo, interval.hi
    if np.isnan(lo) or np.isnan(hi):
        return "inconclusive"
    above, below = lo > 0, hi < 0
    if expect == "greater":
        return "holds" if above else "does not hold" if below else "inconclusive"
    return "holds" if below else "does not hold" if above else "inconclusive"
