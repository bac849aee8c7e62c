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


# --- interval methods, stability, training seeds ------------------------------------------------

#: interval methods of :func:`resample_interval` (docs/method/uncertainty.md, benchmarks/coverage.py)
METHODS = ("percentile", "bca", "studentized", "t")
#: bootstrap seeds per row for the stability columns (``seed_agreement``, ``mc_error``)
STABILITY_SEEDS = 20

Effect = Callable[[np.ndarray], np.ndarray]


def _order_stat(sorted_x: np.ndarray, q: float) -> float:
    """The ``inverted_cdf`` quantile ``x_(ceil(n q))`` of sorted ``x`` (1-based, clipped to [1, n])."""
    n = len(sorted_x)
    k = min(max(int(np.ceil(n * q - 1e-9)), 1), n)
    return float(sorted_x[k - 1])


def _fn(effect: Effect, sums: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(effect(sums), dtype=np.float64)


def _jackknife(effect: Effect, vals: np.ndarray) -> np.ndarray:
    """Leave-one-note-out values ``[N]`` of ``effect`` (column sums minus one note's row)."""
    return _fn(effect, vals.sum(axis=0)[None, :] - vals)


def _jack_se(theta: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Jackknife standard error from leave-one-out values ``theta [..., N]``; with counts ``w``
    (a resample's multiplicities), each note's value counts ``w`` times (n = sum of ``w``)."""
    if w is None:
        w = np.ones_like(theta)
    n = w.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        bar = (w * theta).sum(axis=-1) / n
        var = (n - 1) / n * (w * (theta - bar[..., None]) ** 2).sum(axis=-1)
    return np.sqrt(var)


def resample_interval(vals: np.ndarray, effect: Effect, *, method: str = "percentile", n_resamples: int = 1000,
                      seed: int = 0, level: float = 0.95) -> Interval:
    """Interval of ``effect`` over notes by ``method``.

    ``vals`` ``[N, C]``: additive per-note columns (a paired comparison puts both sides' columns
    side by side); ``effect`` maps column sums ``[..., C]`` to the statistic ``[...]``.

    * ``percentile``: order statistics of the resampled statistic;
    * ``bca``: bias-corrected and accelerated percentiles (bias from the share of resamples below
      the estimate, acceleration from the leave-one-note-out jackknife);
    * ``studentized``: bootstrap-t, each resample standardised by its own jackknife standard error
      (``[R, N]`` leave-one-out values, vectorised);
    * ``t``: estimate +- Student t(N - 1) quantile x jackknife standard error (the paired t on
      note-level jackknife pseudo-values; no resampling).
    """
    from scipy.stats import norm, t as student

    _check_level(level)
    if method not in METHODS:
        raise ValueError(f"interval method must be one of {list(METHODS)}, got {method!r}")
    vals = np.asarray(vals, dtype=np.float64)
    if vals.ndim != 2 or len(vals) == 0:
        raise ValueError(f"vals: expected [N >= 1, C] per-note columns, got shape {vals.shape}")
    n = len(vals)
    est = float(_fn(effect, vals.sum(axis=0)))
    a = (1.0 - level) / 2.0
    if method == "t":
        if n < 2:
            return Interval(est, float("nan"), float("nan"), n, 0, level)
        se = float(_jack_se(_jackknife(effect, vals)))
        q = float(student.ppf(1 - a, n - 1))
        return Interval(est, est - q * se, est + q * se, n, 0, level)
    w = note_weights(n, n_resamples, seed)
    draws = _fn(effect, w @ vals)
    if method == "percentile":
        return _interval(est, draws, n, level)
    ok = ~np.isnan(draws)
    if not ok.any():
        return Interval(est, float("nan"), float("nan"), n, len(draws), level, int((~ok).sum()))
    if method == "bca":
        d = draws[ok]
        share = (np.sum(d < est) + 0.5 * np.sum(d == est)) / len(d)
        z0 = float(norm.ppf(np.clip(share, 1.0 / (len(d) + 1), len(d) / (len(d) + 1))))
        jack = _jackknife(effect, vals)
        jack = jack[~np.isnan(jack)]
        dev = jack.mean() - jack if len(jack) else np.zeros(1)
        den = 6.0 * (np.sum(dev ** 2) ** 1.5)
        acc = float(np.sum(dev ** 3) / den) if den > 0 else 0.0
        qs = []
        for z in (norm.ppf(a), norm.ppf(1 - a)):
            qs.append(float(norm.cdf(z0 + (z0 + z) / (1 - acc * (z0 + z)))))
        x = np.sort(d)
        return Interval(est, _order_stat(x, qs[0]), _order_stat(x, qs[1]), n, len(draws), level, int((~ok).sum()))
    # studentized: leave-one-out within each resample, [R, N] values weighted by the multiplicities
    sums = w @ vals
    loo = _fn(effect, sums[:, None, :] - vals[None, :, :])
    loo = np.where(w > 0, loo, 0.0)
    se_r = _jack_se(loo, w.astype(np.float64))
    se = float(_jack_se(_jackknife(effect, vals)))
    with np.errstate(divide="ignore", invalid="ignore"):
        tt = (draws - est) / se_r
    tt = np.where((se_r == 0) & (draws == est), 0.0, tt)
    ok = ~np.isnan(tt)
    if not ok.any() or not np.isfinite(se):
        return Interval(est, float("nan"), float("nan"), n, len(draws), level, int((~ok).sum()))
    x = np.sort(tt[ok])
    lo, hi = est - _order_stat(x, 1 - a) * se, est - _order_stat(x, a) * se
    return Interval(est, float(lo), float(hi), n, len(draws), level, int((~ok).sum()))


#: interval methods of :func:`hierarchical_interval` (training seeds x notes; benchmarks/coverage.py --hierarchical)
HIERARCHICAL_METHODS = ("percentile", "t", "t_components")


def _two_way_jackknife(vals: np.ndarray, effect: Effect) -> tuple[float, float]:
    """Jackknife variances of the pooled ``effect`` of ``vals [S, N, C]``: over notes (each note
    left out under every seed) and over training seeds (each seed left out with all its notes);
    0 for a level with one member. NaN when a leave-one-out value is undefined."""
    s, n, _ = vals.shape
    total = vals.sum(axis=(0, 1))
    v_note = float(_jack_se(_fn(effect, total[None, :] - vals.sum(axis=0)))) ** 2 if n > 1 else 0.0
    v_seed = float(_jack_se(_fn(effect, total[None, :] - vals.sum(axis=1)))) ** 2 if s > 1 else 0.0
    return v_note, v_seed


def hierarchical_interval(vals: np.ndarray, effect: Effect, *, method: str = "percentile", n_resamples: int = 1000,
                          seed: int = 0, level: float = 0.95) -> Interval:
    """Interval of ``effect`` over training seeds and notes together.

    ``vals`` ``[S, N, C]``: additive per-note columns of each of ``S`` training seeds on the same
    ``N`` notes; the estimate pools every seed and note once (``effect`` of ``vals.sum((0, 1))``).

    * ``percentile``: each resample draws ``S`` seeds and ``N`` notes with replacement
      (independent multinomial rows ``Ws [R, S]`` and ``W [R, N]``) and evaluates ``effect`` on
      ``sum_s Ws[r, s] * (W[r] @ vals[s])``; order statistics of those values;
    * ``t``: ``estimate +- t(df, 1 - a) * sqrt(V_note + V_seed)``, the jackknife variances over
      notes and over seeds (:func:`_two_way_jackknife`; the seed x note interaction is counted in
      both, a conservative sum) with Satterthwaite's ``df = (V_note + V_seed)^2 /
      (V_note^2 / (N - 1) + V_seed^2 / (S - 1))``;
    * ``t_components``: ``estimate +- sqrt(t(N - 1)^2 V_note + t(S - 1)^2 V_seed)`` (``t(k)``: the
      ``1 - a`` quantile of Student's t with ``k`` df), each variance component widened by the
      quantile of its own degrees of freedom. Satterthwaite's ``df`` is estimated from the same
      variances, so when ``V_seed`` (``S - 1`` = 2 df with three seeds) comes out small by chance
      the ``df`` comes out large and the interval too narrow; widening each component by its own
      quantile does not depend on that estimate (conservative where both components matter).

    ``t`` and ``t_components`` do not resample; with one seed both are the ``t`` interval of
    :func:`resample_interval`.
    """
    from scipy.stats import t as student

    _check_level(level)
    if method not in HIERARCHICAL_METHODS:
        raise ValueError(f"hierarchical interval method must be one of {list(HIERARCHICAL_METHODS)}, got {method!r}")
    vals = np.asarray(vals, dtype=np.float64)
    if vals.ndim != 3 or vals.shape[0] < 1 or vals.shape[1] < 1:
        raise ValueError(f"vals: expected [S >= 1, N >= 1, C], got shape {vals.shape}")
    s, n, _ = vals.shape
    est = float(_fn(effect, vals.sum(axis=(0, 1))))
    if method in ("t", "t_components"):
        nan = Interval(est, float("nan"), float("nan"), n, 0, level)
        if n < 2:
            return nan
        v_note, v_seed = _two_way_jackknife(vals, effect)
        var = v_note + v_seed
        if not np.isfinite(var):
            return nan
        if var == 0.0:
            return Interval(est, est, est, n, 0, level)
        p = 1 - (1.0 - level) / 2.0
        if method == "t_components":
            q_seed = float(student.ppf(p, s - 1)) if s > 1 else 0.0
            half = float(np.sqrt(float(student.ppf(p, n - 1)) ** 2 * v_note + q_seed ** 2 * v_seed))
            return Interval(est, est - half, est + half, n, 0, level)
        den = v_note ** 2 / (n - 1) + (v_seed ** 2 / (s - 1) if s > 1 else 0.0)
        df = var ** 2 / den if den > 0 else float(n - 1)
        q = float(student.ppf(p, df))
        return Interval(est, est - q * np.sqrt(var), est + q * np.sqrt(var), n, 0, level)
    w = note_weights(n, n_resamples, seed)
    ws = note_weights(s, n_resamples, seed + 7919) if s > 1 else np.ones((n_resamples, 1), dtype=np.int64)
    sums = np.zeros((n_resamples, vals.shape[2]))
    for j in range(s):
        sums += ws[:, j, None] * (w @ vals[j])
    return _interval(est, _fn(effect, sums), n, level)


def verdict_stability(intervals: "list[Interval]", expect: str) -> dict:
    """How a verdict depends on the bootstrap seed: ``intervals`` of one comparison under
    :data:`STABILITY_SEEDS` bootstrap seeds, the first being the reported one. Returns
    ``seed_agreement`` (share of seeds whose holds / does not hold / inconclusive equals the first's)
    and ``mc_error`` (standard deviation across seeds of the interval edge nearest 0 in the
    first interval; NaN with fewer than 2 defined intervals)."""
    if not intervals:
        return {"seed_agreement": float("nan"), "mc_error": float("nan")}
    first = verdict(intervals[0], expect)
    agree = float(np.mean([verdict(iv, expect) == first for iv in intervals]))
    lo0, hi0 = intervals[0].lo, intervals[0].hi
    if np.isnan(lo0) or np.isnan(hi0):
        return {"seed_agreement": agree, "mc_error": float("nan")}
    edge = "lo" if abs(lo0) <= abs(hi0) else "hi"
    e = np.array([getattr(iv, edge) for iv in intervals], dtype=float)
    e = e[np.isfinite(e)]
    return {"seed_agreement": agree, "mc_error": float(e.std(ddof=1)) if len(e) > 1 else float("nan")}


def final_verdict(interval: Interval, expect: str, mc_error: float = float("nan"), min_notes: int = 0) -> str:
    """The verdict of a row: "too few notes" below ``min_notes`` common notes; "borderline" when the
    interval edge nearest 0 is within ``mc_error`` of 0; else :func:`verdict`."""
    if interval.n_notes < min_notes:
        return "too few notes"
    base = verdict(interval, expect)
    lo, hi = interval.lo, interval.hi
    if np.isfinite(mc_error) and mc_error > 0 and np.isfinite(lo) and np.isfinite(hi):
        if min(abs(lo), abs(hi)) <= mc_error:
            return "borderline"
    return base


def simulate_coverage(population: np.ndarray, effect: Effect, n_notes: int, *, methods=METHODS, reps: int = 200,
                      n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Real coverage of the interval methods at ``n_notes`` notes, by simulation.

    ``population`` ``[M, C]``: additive per-note columns of a note population (e.g. both sides'
    ``tp, fp, fn`` of a paired comparison); its true value is ``effect`` of its column sums.
    Each of ``reps`` repetitions draws ``n_notes`` notes with replacement, computes every method's
    interval (bootstrap seed = repetition) and checks whether it contains the true value. Returns
    ``{method: {"coverage", "excludes_0", "width", "undefined"}}`` (shares over the repetitions;
    ``width``: median interval width; an undefined interval counts as not covering)."""
    pop = np.asarray(population, dtype=np.float64)
    truth = float(_fn(effect, pop.sum(axis=0)))
    rng = np.random.default_rng(seed)
    hits = {m: [] for m in methods}
    for r in range(reps):
        sample = pop[rng.integers(0, len(pop), size=int(n_notes))]
        for m in methods:
            iv = resample_interval(sample, effect, method=m, n_resamples=n_resamples, seed=r, level=level)
            hits[m].append((iv.lo, iv.hi))
    return {m: {k: v for k, v in _coverage_summary(lohi, truth).items() if k != "mc_error"} for m, lohi in hits.items()}


def _coverage_summary(lohi: list, truth: float) -> dict:
    """``coverage``, ``mc_error`` (binomial standard error of the coverage), ``excludes_0``,
    ``width`` (median) and ``undefined`` of the intervals ``lohi`` (``(lo, hi)`` per repetition;
    an undefined interval counts as not covering)."""
    a = np.asarray(lohi, dtype=float)
    ok = np.isfinite(a).all(axis=1)
    cover = ok & (a[:, 0] <= truth + 1e-12) & (truth - 1e-12 <= a[:, 1])
    c = float(cover.mean())
    return {"coverage": c, "mc_error": float(np.sqrt(c * (1 - c) / len(a))),
            "excludes_0": float((ok & ((a[:, 0] > 0) | (a[:, 1] < 0))).mean()),
            "width": float(np.median(a[ok, 1] - a[ok, 0])) if ok.any() else float("nan"),
            "undefined": float((~ok).mean())}


#: a reference method of :func:`simulate_hierarchical_coverage`: the ``t`` interval over notes with
#: every seed's columns pooled per note (training seeds ignored)
NOTES_ONLY_T = "notes t"


def simulate_hierarchical_coverage(draw: Callable[[np.random.Generator, int, int], np.ndarray], truth: float,
                                   effect: Effect, n_notes: int, *, n_seeds: int = 3,
                                   methods=(*HIERARCHICAL_METHODS, NOTES_ONLY_T), reps: int = 200,
                                   n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Real coverage of the training-seed x note intervals, by simulation.

    ``draw(rng, n_notes, n_seeds)`` returns one simulated run's ``[S, N, C]`` per-(seed, note)
    columns (new training seeds and notes drawn from a population whose effect is ``truth``).
    Each of ``reps`` repetitions draws one, computes :func:`hierarchical_interval` by each method
    of :data:`HIERARCHICAL_METHODS` in ``methods`` (bootstrap seed = repetition) and, for
    :data:`NOTES_ONLY_T`, the ``t`` interval of :func:`resample_interval` on the per-note sums over
    seeds, and checks whether it contains ``truth``. Returns ``{method: {"coverage", "mc_error",
    "excludes_0", "width", "undefined"}}`` (``mc_error``: the binomial standard error
    ``sqrt(c (1 - c) / reps)`` of the coverage; otherwise as :func:`simulate_coverage`)."""
    rng = np.random.default_rng(seed)
    hits = {m: [] for m in methods}
    for r in range(reps):
        vals = np.asarray(draw(rng, int(n_notes), int(n_seeds)), dtype=np.float64)
        for m in methods:
            if m == NOTES_ONLY_T:
                iv = resample_interval(vals.sum(axis=0), effect, method="t", level=level)
            else:
                iv = hierarchical_interval(vals, effect, method=m, n_resamples=n_resamples, seed=r, level=level)
            hits[m].append((iv.lo, iv.hi))
    return {m: _coverage_summary(lohi, truth) for m, lohi in hits.items()}
