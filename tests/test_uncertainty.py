"""Bootstrap over notes: weights, pooled statistics, paired differences, verdicts."""
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from rationale_kit.metrics.uncertainty import BootstrapWarning, Interval, bootstrap, f1_statistic, mean_statistic, note_weights, paired_bootstrap, precision_statistic, recall_statistic, verdict


def test_note_weights_rows_sum_to_n_and_are_seeded():
    w = note_weights(7, 50, seed=3)
    assert w.shape == (50, 7) and w.dtype == np.int64
    assert (w.sum(axis=1) == 7).all() and (w >= 0).all()
    assert np.array_equal(w, note_weights(7, 50, seed=3))
    assert not np.array_equal(w, note_weights(7, 50, seed=4))
    # each note is drawn 1 time per resample on average (N draws among N notes)
    big = note_weights(5, 20000, seed=0)
    assert np.allclose(big.mean(axis=0), 1.0, atol=0.03)
    with pytest.raises(ValueError, match="n_notes"):
        note_weights(0)


def _three_notes():
    # note a: 2 gold tokens both found (tp 2); b: 2 false positives; c: 2 misses.
    return pd.DataFrame({"tp": [2, 0, 0], "fp": [0, 2, 0], "fn": [0, 0, 2]}, index=["a", "b", "c"])


def test_three_note_bootstrap_matches_the_enumerated_distribution():
    # A resample draws note a k times (k ~ Binomial(3, 1/3)) and b/c the other 3 - k times, so
    # tp = 2k, fp + fn = 2(3 - k) and pooled F1 = 4k / (4k + 6 - 2k) = 2k / (k + 3):
    #   k = 0 -> 0 (p 8/27), 1 -> 0.5 (12/27), 2 -> 0.8 (6/27), 3 -> 1 (1/27).
    # Full sample (k = 1): F1 = 0.5, whereas the mean of per-note F1s is (1 + 0 + 0) / 3.
    # Quantiles: P(F1 = 0) = 0.296 > 0.025 -> lo = 0; P(F1 <= 0.8) = 26/27 = 0.963 < 0.975 -> hi = 1.
    seen = []

    def stat(sums):
        if np.ndim(sums["tp"]):
            seen.append({k: np.asarray(v).copy() for k, v in sums.items()})
        return f1_statistic(sums)

    iv = bootstrap(_three_notes(), stat, n_resamples=20000, seed=1)
    assert iv.estimate == pytest.approx(0.5)
    assert iv.estimate != pytest.approx(1 / 3)
    assert (iv.lo, iv.hi) == (0.0, 1.0)
    assert iv.n_notes == 3 and iv.n_resamples == 20000 and iv.level == 0.95 and iv.n_nan == 0
    # resampled sums are the weight matrix times the per-note columns (notes sorted a, b, c)
    w = note_weights(3, 20000, seed=1)
    assert np.array_equal(seen[0]["tp"], w @ np.array([2.0, 0, 0]))
    assert np.array_equal(seen[0]["fn"], w @ np.array([0, 0, 2.0]))
    f1 = f1_statistic(seen[0])
    assert set(np.unique(f1)) <= {0.0, 0.5, 0.8, 1.0}
    for value, p in ((0.0, 8 / 27), (0.5, 12 / 27), (0.8, 6 / 27), (1.0, 1 / 27)):
        assert np.mean(f1 == value) == pytest.approx(p, abs=0.015)


def test_bootstrap_sorts_notes_so_row_order_does_not_matter():
    df = _three_notes()
    a = bootstrap(df, f1_statistic, n_resamples=300, seed=5)
    b = bootstrap(df.iloc[::-1], f1_statistic, n_resamples=300, seed=5)
    assert a == b


def test_pooled_precision_recall_and_mean():
    # tp 3, fp 1, fn 3 pooled: P = 3/4, R = 3/6, F1 = 6 / (6 + 4) = 0.6
    df = pd.DataFrame({"tp": [1, 2], "fp": [1, 0], "fn": [0, 3]}, index=["n1", "n2"])
    assert bootstrap(df, precision_statistic, n_resamples=50).estimate == pytest.approx(0.75)
    assert bootstrap(df, recall_statistic, n_resamples=50).estimate == pytest.approx(0.5)
    assert bootstrap(df, f1_statistic, n_resamples=50).estimate == pytest.approx(0.6)
    # mean over 3 pairs (values 1, 0.5, 0 -> note n1 holds two of them): 1.5 / 3
    m = pd.DataFrame({"sum": [1.5, 0.0], "count": [2, 1]}, index=["n1", "n2"])
    iv = bootstrap(m, mean_statistic, n_resamples=2000, seed=0)
    assert iv.estimate == pytest.approx(0.5)
    # resamples: n1 twice -> 0.75, once -> 0.5, never -> 0
    assert (iv.lo, iv.hi) == (0.0, 0.75)
    # zero denominators: F1/P/R give 0 (MDACE convention)
    z = {"tp": np.array([0.0]), "fp": np.array([0.0]), "fn": np.array([0.0])}
    assert f1_statistic(z)[0] == 0.0 and precision_statistic(z)[0] == 0.0 and recall_statistic(z)[0] == 0.0


def test_nan_resamples_are_dropped_counted_and_warned():
    # note x has no pair (count 0): a resample drawing only x (prob (1/2)^2 = 1/4) is undefined
    m = pd.DataFrame({"sum": [0.0, 1.0], "count": [0, 1]}, index=["x", "y"])
    with pytest.warns(BootstrapWarning, match="undefined"):
        iv = bootstrap(m, mean_statistic, n_resamples=4000, seed=2)
    assert iv.n_nan / 4000 == pytest.approx(0.25, abs=0.03)
    assert iv.nan_share == iv.n_nan / 4000
    assert (iv.lo, iv.hi) == (1.0, 1.0) and iv.estimate == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bootstrap(_three_notes(), f1_statistic, n_resamples=100)


def test_paired_identical_gives_zero_width_and_uses_common_notes():
    df = _three_notes()
    iv = paired_bootstrap(df, df.copy(), f1_statistic, n_resamples=500, seed=0)
    assert (iv.estimate, iv.lo, iv.hi) == (0.0, 0.0, 0.0)
    assert verdict(iv) == "inconclusive"
    # b lacks note c and has an extra note d: paired on {a, b} only
    b = pd.DataFrame({"tp": [1, 0, 9], "fp": [1, 0, 0], "fn": [0, 2, 0]}, index=["a", "b", "d"])
    iv = paired_bootstrap(df, b, f1_statistic, n_resamples=500, seed=0)
    assert iv.n_notes == 2
    # on {a, b}: a: tp 2 fp 2 fn 0 -> 4 / (4 + 2) = 2/3; b: tp 1 fp 1 fn 2 -> 2 / (2 + 3) = 2/5
    assert iv.estimate == pytest.approx(2 / 3 - 2 / 5)


def test_paired_uses_the_same_weights_for_both_sides():
    # a = b shifted: per-note F1s move together, so the paired interval is much narrower than
    # the difference of two independent intervals would suggest.
    rng = np.random.default_rng(0)
    n = 150
    tp = rng.integers(0, 10, n)
    a = pd.DataFrame({"tp": tp + 2, "fp": rng.integers(0, 5, n), "fn": rng.integers(0, 5, n)},
                     index=[f"n{i:03d}" for i in range(n)])
    b = a.assign(tp=a["tp"] - 1, fn=a["fn"] + 1)
    iv = paired_bootstrap(a, b, f1_statistic, n_resamples=1000, seed=0)
    assert iv.lo > 0 and verdict(iv) == "holds" and verdict(iv, "less") == "does not hold"
    ia = bootstrap(a, f1_statistic, n_resamples=1000, seed=0)
    assert iv.hi - iv.lo < (ia.hi - ia.lo) / 2
    # same weights: the paired delta equals the difference of the two unpaired runs' resamples
    w = note_weights(n, 1000, seed=0)
    cols = ["tp", "fp", "fn"]
    sa = dict(zip(cols, (w @ a[cols].to_numpy(float)).T))
    sb = dict(zip(cols, (w @ b[cols].to_numpy(float)).T))
    d = f1_statistic(sa) - f1_statistic(sb)
    # 95% of 1,000 resamples: the 25th and the 975th smallest delta
    assert (iv.lo, iv.hi) == (np.sort(d)[24], np.sort(d)[974])


def test_verdict_rules():
    def iv(lo, hi):
        return Interval(estimate=(lo + hi) / 2, lo=lo, hi=hi, n_notes=10, n_resamples=100, level=0.95)

    assert verdict(iv(0.01, 0.2)) == "holds"
    assert verdict(iv(-0.2, -0.01)) == "does not hold"
    assert verdict(iv(-0.1, 0.1)) == "inconclusive"
    assert verdict(iv(0.0, 0.1)) == "inconclusive"  # touching 0 is not strictly above it
    assert verdict(iv(-0.2, -0.01), "less") == "holds"
    assert verdict(iv(0.01, 0.2), "less") == "does not hold"
    assert verdict(iv(float("nan"), float("nan"))) == "inconclusive"
    with pytest.raises(ValueError, match="expect"):
        verdict(iv(0, 1), "bigger")


def test_bad_input_is_named():
    df = _three_notes()
    with pytest.raises(ValueError, match="more than once"):
        bootstrap(pd.concat([df, df]), f1_statistic)
    with pytest.raises(ValueError, match="no note in common"):
        paired_bootstrap(df, df.rename(index=lambda s: s + "x"), f1_statistic)
    with pytest.raises(ValueError, match="no notes"):
        bootstrap(df.iloc[:0], f1_statistic)
    with pytest.raises(ValueError, match="level"):
        bootstrap(df, f1_statistic, level=95)


def test_bootstrap_is_fast():
    # 1,000 resamples over 150 notes: one matrix product, milliseconds
    n = 150
    df = pd.DataFrame({"tp": np.arange(n) % 7, "fp": np.arange(n) % 3, "fn": np.arange(n) % 5},
                      index=[str(i) for i in range(n)])
    bootstrap(df, f1_statistic)
    t0 = time.perf_counter()
    for _ in range(10):
        paired_bootstrap(df, df.assign(tp=df["tp"] + 1), f1_statistic)
    assert (time.perf_counter() - t0) / 10 < 0.1


# --- interval methods, hierarchical bootstrap, stability, coverage ---------------------------------
from rationale_kit.metrics import uncertainty as U  # noqa: E402
from rationale_kit.metrics import evaluation as E  # noqa: E402


def _mean_effect(sums):
    return mean_statistic({"sum": sums[..., 0], "count": sums[..., 1]})


def test_t_interval_is_the_classical_t_interval_for_a_mean():
    # values 1, 2, 3, 4 (one pair per note): mean 2.5, sd 1.2910, se 0.6455, t(3, 0.975) = 3.1824
    vals = np.array([[1.0, 1], [2, 1], [3, 1], [4, 1]])
    iv = U.resample_interval(vals, _mean_effect, method="t")
    half = 3.182446305 * np.sqrt(np.var([1, 2, 3, 4], ddof=1) / 4)
    assert iv.estimate == pytest.approx(2.5) and iv.lo == pytest.approx(2.5 - half) and iv.hi == pytest.approx(2.5 + half)
    assert iv.lo == pytest.approx(0.4457, abs=1e-4)


def test_every_method_gives_a_point_interval_on_identical_notes_and_percentile_matches_paired_bootstrap():
    vals = np.tile([[2.0, 1.0, 1.0]], (6, 1))  # tp 2, fp 1, fn 1 on every note: F1 2/3 in every resample
    f1 = lambda s: f1_statistic({"tp": s[..., 0], "fp": s[..., 1], "fn": s[..., 2]})
    for m in U.METHODS:
        iv = U.resample_interval(vals, f1, method=m, n_resamples=300, seed=1)
        assert iv.lo == pytest.approx(2 / 3) and iv.hi == pytest.approx(2 / 3), m
    a = pd.DataFrame({"tp": [3, 0, 2, 5], "fp": [1, 2, 0, 1], "fn": [0, 1, 1, 2]}, index=list("abcd"))
    b = pd.DataFrame({"tp": [1, 1, 2, 2], "fp": [0, 1, 1, 1], "fn": [2, 0, 1, 5]}, index=list("abcd"))
    ref = paired_bootstrap(a, b, f1_statistic, n_resamples=500, seed=4)
    got = U.resample_interval(np.hstack([a.to_numpy(float), b.to_numpy(float)]), E.paired_effect(list(a), list(b), "f1"),
                              method="percentile", n_resamples=500, seed=4)
    assert (got.estimate, got.lo, got.hi) == pytest.approx((ref.estimate, ref.lo, ref.hi))
    with pytest.raises(ValueError, match="interval method"):
        U.resample_interval(vals, f1, method="wald")


def test_hierarchical_bootstrap_resamples_training_seeds_on_a_hand_made_case():
    # two training seeds; within a seed every note has the same value (1 for seed A, 3 for seed B),
    # so resampling notes changes nothing and resampling seeds gives the mean of 2 draws of {1, 3}:
    # 1 (p 1/4), 2 (p 1/2), 3 (p 1/4). The percentile interval is [1, 3]; notes alone give [2, 2]
    vals = np.stack([np.tile([[1.0, 1.0]], (5, 1)), np.tile([[3.0, 1.0]], (5, 1))])
    iv = U.hierarchical_interval(vals, _mean_effect, n_resamples=2000, seed=0)
    assert iv.estimate == pytest.approx(2.0) and iv.lo == 1.0 and iv.hi == 3.0 and iv.n_notes == 5
    flat = U.resample_interval(vals.sum(axis=0), _mean_effect, n_resamples=2000, seed=0)
    assert flat.lo == flat.hi == pytest.approx(2.0)
    # through the verdict machinery: a (two seeds) minus b (0 everywhere), seed spread sd(1, 3) = sqrt(2)
    a = [pd.DataFrame(v, columns=["sum", "count"], index=list("vwxyz")) for v in vals]
    b = [x.assign(sum=0.0) for x in a]
    res = E.verdict_comparison(a, b, "mean", E.Bootstrap(n_resamples=500, seed=0, stability_seeds=5))
    assert res["interval_method"] == "hierarchical" and res["seed_sd"] == pytest.approx(np.sqrt(2))
    assert (res["lo"], res["hi"]) == (1.0, 3.0) and len(res["intervals"]) == 5


def test_stability_borderline_and_too_few_notes():
    ivs = [Interval(0.1, lo, 0.2, 30, 1000, 0.95) for lo in (0.01, -0.01, 0.02, 0.015)]
    st = U.verdict_stability(ivs, "greater")
    # the first says holds; the second is inconclusive: 3 of 4 agree; edge nearest 0 is lo
    assert st["seed_agreement"] == 0.75 and st["mc_error"] == pytest.approx(np.std([0.01, -0.01, 0.02, 0.015], ddof=1))
    assert U.final_verdict(ivs[0], "greater", st["mc_error"]) == "borderline"  # |0.01| < 0.0131
    assert U.final_verdict(ivs[0], "greater", 0.001) == "holds"
    assert U.final_verdict(ivs[0], "greater", 0.001, min_notes=31) == "too few notes"
    assert E.combine(["too few notes", "holds"]) == "holds" and E.combine(["too few notes"]) == "too few notes"
    assert E.combine(["borderline", "holds"]) == "inconclusive"
    row = E.combined_row("a", "x", "-", "toy", "m", [{"comparison": "c1", "verdict": "too few notes", "n_notes": 4},
                                                      {"comparison": "c2", "verdict": "holds", "n_notes": 40}])
    assert row["verdict"] == "holds" and row["units"] == "combined: 1 of 2 rows above; skipped (too few notes): c1 (n_notes=4)"


def test_simulated_coverage_with_a_fixed_seed():
    # a population of identical notes: every interval is the true value, coverage 1
    same = U.simulate_coverage(np.tile([[2.0, 1.0]], (50, 1)), _mean_effect, 5, reps=10, n_resamples=200, seed=0)
    assert all(r["coverage"] == 1.0 and r["width"] == 0.0 for r in same.values())
    # normal values at n = 4: the percentile bootstrap undercovers (about 0.80), the t interval does not
    pop = np.column_stack([np.random.default_rng(0).normal(0.2, 1.0, 4000), np.ones(4000)])
    res = U.simulate_coverage(pop, _mean_effect, 4, methods=("percentile", "t"), reps=300, n_resamples=400, seed=0)
    assert res["percentile"]["coverage"] < 0.88 and 0.91 <= res["t"]["coverage"] <= 0.98
    assert res == U.simulate_coverage(pop, _mean_effect, 4, methods=("percentile", "t"), reps=300, n_resamples=400, seed=0)


def test_hierarchical_t_intervals_on_a_hand_made_case():
    # two training seeds x three notes, one pair per note: seed A 1, 2, 3; seed B 3, 4, 5; pooled mean 3.
    # leave one note out of both seeds: (18 - 4) / 4 = 3.5, 3, 2.5 -> V_note = 2/3 * 0.5 = 1/3;
    # leave one seed out: 12 / 3 = 4, 6 / 3 = 2 -> V_seed = 1/2 * 2 = 1
    from scipy.stats import t as student

    vals = np.array([[[1.0, 1], [2, 1], [3, 1]], [[3.0, 1], [4, 1], [5, 1]]])
    assert U._two_way_jackknife(vals, _mean_effect) == pytest.approx((1 / 3, 1.0))
    comp = U.hierarchical_interval(vals, _mean_effect, method="t_components")
    half = np.sqrt(student.ppf(0.975, 2) ** 2 / 3 + student.ppf(0.975, 1) ** 2)  # sqrt(4.3027^2 / 3 + 12.706^2)
    assert half == pytest.approx(12.947, abs=1e-3)
    assert (comp.estimate, comp.lo, comp.hi) == pytest.approx((3.0, 3.0 - half, 3.0 + half))
    df = (4 / 3) ** 2 / ((1 / 3) ** 2 / 2 + 1.0 ** 2 / 1)  # Satterthwaite: 1.684
    sat = U.hierarchical_interval(vals, _mean_effect, method="t")
    assert df == pytest.approx(1.6842, abs=1e-4)
    assert sat.hi - 3.0 == pytest.approx(student.ppf(0.975, df) * np.sqrt(4 / 3))
    # one seed: both are the notes-only t interval
    one = U.resample_interval(vals[0], _mean_effect, method="t")
    for m in ("t", "t_components"):
        iv = U.hierarchical_interval(vals[:1], _mean_effect, method=m)
        assert (iv.lo, iv.hi) == pytest.approx((one.lo, one.hi)), m
    with pytest.raises(ValueError, match="hierarchical interval method"):
        U.hierarchical_interval(vals, _mean_effect, method="bca")
    # through the verdict machinery: rows name the method; no resampling, so every bootstrap seed agrees
    a = [pd.DataFrame(v, columns=["sum", "count"], index=list("xyz")) for v in vals]
    b = [x.assign(sum=0.0) for x in a]
    res = E.verdict_comparison(a, b, "mean", E.Bootstrap(n_resamples=200, seed=0, stability_seeds=4,
                                                          seed_method="t_components"))
    assert res["interval_method"] == "hierarchical t (components)" and (res["lo"], res["hi"]) == pytest.approx((3 - half, 3 + half))
    assert U.verdict_stability(res["intervals"], "greater") == {"seed_agreement": 1.0, "mc_error": 0.0}


def _seed_dominated(rng, n, s):
    # per (seed, note) value: note effect N(0.2, 1) + seed effect N(0, 1) + noise N(0, 0.3); truth 0.2
    note = rng.normal(0.2, 1.0, size=n)
    v = note[None, :] + rng.normal(0, 1.0, size=(s, 1)) + rng.normal(0, 0.3, size=(s, n))
    return np.stack([v, np.ones_like(v)], axis=2)


def test_simulated_hierarchical_coverage_with_a_fixed_seed():
    # a seed effect as large as the note effect, 3 seeds x 20 notes: ignoring the seeds (t over notes)
    # undercovers badly; the hierarchical percentile (3 seeds resampled) undercovers; the component-wise
    # t interval does not
    kw = dict(n_seeds=3, reps=200, n_resamples=300, seed=0)
    res = U.simulate_hierarchical_coverage(_seed_dominated, 0.2, _mean_effect, 20, **kw)
    assert set(res) == {"percentile", "t", "t_components", U.NOTES_ONLY_T}
    assert res[U.NOTES_ONLY_T]["coverage"] < 0.6 and res["percentile"]["coverage"] < 0.9
    assert res["t_components"]["coverage"] >= 0.93
    assert res["t_components"]["mc_error"] == pytest.approx(np.sqrt(res["t_components"]["coverage"]
                                                                     * (1 - res["t_components"]["coverage"]) / 200))
    assert res == U.simulate_hierarchical_coverage(_seed_dominated, 0.2, _mean_effect, 20, **kw)


def test_hierarchical_benchmark_populations_have_their_stated_truth():
    # benchmarks/coverage.py --hierarchical: the pooled effect of many simulated runs (many notes and
    # seeds) approaches each population's true effect; a real run's seeds x notes table as population
    import importlib.util
    from pathlib import Path

    # loaded from its file: "coverage" is also the name of the coverage.py package
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "coverage.py"
    spec = importlib.util.spec_from_file_location("coverage_benchmark", path)
    C = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(C)

    rng = np.random.default_rng(1)
    for pop in (C.HierF1(0.3, n=400, seed=2), C.HierMean(0.04, n=400, seed=2)):
        v = pop.draw(rng, 4000, 200)
        assert v.shape == (200, 4000, 6 if isinstance(pop, C.HierF1) else 4)
        assert float(pop.effect(v.sum(axis=(0, 1)))) == pytest.approx(pop.truth, abs=0.006)
    # mean: truth 0.03 + sum k h / sum k by construction; the seed effect's sd is the parameter
    m = C.HierMean(0.04, n=400, seed=2)
    assert m.truth == pytest.approx(0.03 + (m.k * m.h).sum() / m.k.sum()) and m.seed_sd == 0.04
    # a real run's [S, M, C]: truth pools every seed and note; a draw picks whole seeds
    vals = np.stack([np.tile([[1.0, 1, 0, 1]], (5, 1)), np.tile([[3.0, 1, 0, 1]], (5, 1))])
    real = C.RealSeeds(vals, E.paired_effect(["sum", "count"], ["sum", "count"], "mean"))
    assert real.truth == pytest.approx(2.0) and real.seed_sd == pytest.approx(np.sqrt(2))
    d = real.draw(np.random.default_rng(0), 7, 3)
    assert d.shape == (3, 7, 4) and all(len(set(d[s, :, 0])) == 1 for s in range(3))
