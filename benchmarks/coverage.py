"""Benchmark: real coverage of the verdict intervals at small numbers of notes.

    PYTHONPATH=. .venv/bin/python benchmarks/coverage.py [--reps 400] [--resamples 1000] [--seed 0]
        [--n 4 10 20 50 112] [--methods percentile bca studentized t]
        [--counts artifacts/<profile>/06_plausibility/pair_counts.parquet --a SOURCE --b SOURCE]
        [--faithfulness artifacts/<profile>/05_faithfulness/faithfulness.parquet]
    PYTHONPATH=. .venv/bin/python benchmarks/coverage.py --hierarchical [--training-seeds 3]
        [--seed-runs artifacts/seeds artifacts/codiesp_seeds] [--model caml] [--reps 400] ...

Per population and n, ``rationale_kit.metrics.uncertainty.simulate_coverage`` draws n notes with
replacement ``--reps`` times, computes each method's 95% interval of the paired effect and
counts how often it contains the population's true effect. Printed: coverage beside the nominal
95%, the share of draws whose interval excludes 0, and the median width.

Populations (per-note additive columns, the shapes the workbook's verdicts resample):

* ``f1 (parametric)``: a paired pooled-F1 comparison of two rationale sources, 2,000 notes; per
  note a gold-unit count (negative binomial, mean 40, overdispersed), a note difficulty shared by
  both sources (logit-normal recall), source-specific recall shifts and false positives
  (Poisson, proportional to the gold count); columns ``tp, fp, fn`` of a and of b.
* ``mean (parametric)``: a paired difference of means over pairs (faithfulness), 2,000 notes with
  1-6 pairs each; per pair values of a and b with a shared note effect and skewed noise;
  columns ``sum, count`` of a and of b.
* ``f1 (artifact)`` / ``mean (artifact)``: the per-note columns of a real run (``--counts`` with
  two sources of notebook 06's pair counts, PI token measure; ``--faithfulness`` attention top-k vs
  exact-code entity comprehensiveness of the first model), treated as the population.

The workbook's ``evaluation.interval_method`` and ``evaluation.min_notes`` defaults are read off
this table (docs/method/uncertainty.md).

``--hierarchical``: the verdict intervals over training seeds and notes (rows of a run with several
``common.seeds``), ``rationale_kit.metrics.uncertainty.simulate_hierarchical_coverage``. Each draw
is one simulated run: ``--training-seeds`` new training seeds and n notes, per-(seed, note) columns
``[S, n, C]``; printed per method with the Monte Carlo error of each cell (``sqrt(c (1 - c) / reps)``):
``percentile``, ``t`` and ``t_components`` of ``hierarchical_interval`` and ``notes t`` (the t interval over notes
with the seeds pooled, i.e. ignoring the seed component). Populations:

* ``f1 (parametric, seed sd X)``: finding (a)'s shape, 2,000 notes: the model-free side (entity
  spans) fixed per note; the model's side (attention) per seed with recall
  ``expit(0.3 + difficulty + note affinity + u_s + e_sn)`` and false positives
  ``Poisson(0.6 gold m_n exp(v_s + e'_sn))``: a note effect, a seed effect ``u_s, v_s ~ N(0, X)``
  and seed x note noise ``e ~ N(0, 0.3)``. True effect: the pooled F1 of the expected counts
  over the seed and noise distributions (Gauss-Hermite quadrature);
* ``mean (parametric, seed sd X)``: finding (b)'s shape, 2,000 notes with 1-6 pairs; per seed and
  pair ``a = base + h_n + d_s + e_sn + gamma``, ``b = base + gamma'`` (note effect ``h_n``, seed
  effect ``d_s ~ N(0, X)``, seed x note noise ``e ~ N(0, 0.03)``, skewed pair noise); true effect
  ``0.03 + sum_n k_n h_n / sum_n k_n``;
* ``f1 (artifact ...)`` / ``mean (artifact ...)`` (``--seed-runs``, runs with three training
  seeds): the real per-(seed, note) columns of finding (a) (exact-code entity - top-k attention PI
  token F1, notebook 06's ``pair_counts`` + ``pair_counts_seeds``) and of finding (b) (top-k
  attention - entity comprehensiveness and sufficiency, notebook 05's ``faithfulness`` +
  ``faithfulness_seeds``) of ``--model``. A draw takes n of the real notes and, per simulated seed,
  one of the real seeds (all its notes: the real seed effect and seed x note noise); the true
  effect pools the real seeds and notes. The seed level there is the bootstrap world of three
  seeds; the parametric populations give it a continuous distribution.

The workbook's ``evaluation.seed_interval_method`` default is read off that table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rationale_kit.metrics import uncertainty as U  # noqa: E402
from rationale_kit.metrics.evaluation import paired_effect, per_note  # noqa: E402

F1_COLS = ["tp", "fp", "fn"]
MEAN_COLS = ["sum", "count"]


def f1_population(n: int = 2000, seed: int = 0) -> np.ndarray:
    """``[n, 6]``: tp, fp, fn of source a, then of source b (see the module doc)."""
    rng = np.random.default_rng(seed)
    gold = rng.negative_binomial(2, 2 / (2 + 40), size=n) + 1
    diff = rng.normal(0, 1.0, size=n)  # note difficulty, shared
    out = []
    for shift, fp_rate in ((0.3, 0.6), (0.0, 0.7)):
        r = 1 / (1 + np.exp(-(shift + diff + rng.normal(0, 0.5, size=n))))
        tp = rng.binomial(gold, r)
        fp = rng.poisson(fp_rate * gold * np.exp(rng.normal(0, 0.5, size=n)))
        out += [tp, fp, gold - tp]
    return np.stack(out, axis=1).astype(float)


def mean_population(n: int = 2000, seed: int = 0) -> np.ndarray:
    """``[n, 4]``: sum and count of a's per-pair values, then of b's (same pairs)."""
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 7, size=n)
    note = rng.normal(0, 0.15, size=n)
    rows = []
    for i in range(n):
        base = 0.3 + note[i] + rng.normal(0, 0.1, size=k[i])
        a = base + 0.03 + rng.gamma(0.5, 0.1, size=k[i]) - 0.05
        b = base + rng.gamma(0.5, 0.1, size=k[i]) - 0.05
        rows.append([a.sum(), k[i], b.sum(), k[i]])
    return np.asarray(rows, dtype=float)


def counts_population(path: Path, a: str, b: str, measure: str = "token_position_independent") -> np.ndarray:
    c = pd.read_parquet(path)
    c = c[c.measure == measure]
    ca, cb = c[c.source == a], c[c.source == b]
    if not len(ca) or not len(cb):
        raise SystemExit(f"{path}: no {measure} counts for source {a!r} or {b!r} (sources: {sorted(set(c.source))})")
    common = set(zip(ca.note_id, ca.code)) & set(zip(cb.note_id, cb.code))
    na, nb = per_note(ca, pairs=common), per_note(cb, pairs=common)
    idx = na.index.intersection(nb.index)
    return np.concatenate([na.loc[idx, F1_COLS].to_numpy(float), nb.loc[idx, F1_COLS].to_numpy(float)], axis=1)


def faithfulness_population(path: Path, measure: str = "comprehensiveness") -> np.ndarray:
    t = pd.read_parquet(path)
    t = t[t.k.isna() & (t.control == "rationale") & (t.measure == measure)]
    model = sorted(set(t.model))[0]
    t = t[t.model == model]
    att = next((s for s in sorted(set(t.source)) if s.startswith("attention top-")), None)
    va = t[t.source == att].groupby(["note_id", "code"]).value.mean()
    vb = t[t.source == "entity (exact_code)"].groupby(["note_id", "code"]).value.mean()
    common = va.index.intersection(vb.index)
    if not len(common):
        raise SystemExit(f"{path}: no common pairs of {att!r} and entity (exact_code) for {model}")
    ga = va.loc[common].groupby(level=0).agg(["sum", "count"])
    gb = vb.loc[common].groupby(level=0).agg(["sum", "count"])
    return np.concatenate([ga.to_numpy(float), gb.to_numpy(float)], axis=1)


# --- training seeds x notes ----------------------------------------------------------------------


def _expit(x):
    return 1 / (1 + np.exp(-x))


class HierF1:
    """Finding (a)'s shape over training seeds (module doc): ``draw(rng, n, s) -> [s, n, 6]``
    (entity's tp, fp, fn, then attention's), ``truth`` and ``seed_sd`` (the standard deviation of
    the infinite-note effect across seeds)."""

    def __init__(self, seed_sd: float, n: int = 2000, seed: int = 0, noise: float = 0.3):
        rng = np.random.default_rng(seed)
        self.sd, self.noise = float(seed_sd), float(noise)
        self.gold = (rng.negative_binomial(2, 2 / (2 + 40), size=n) + 1).astype(float)
        diff = rng.normal(0, 1.0, size=n)
        r_b = _expit(diff + rng.normal(0, 0.5, size=n))
        tp_b = rng.binomial(self.gold.astype(int), r_b)
        fp_b = rng.poisson(0.7 * self.gold * np.exp(rng.normal(0, 0.5, size=n)))
        self.fixed = np.stack([tp_b, fp_b, self.gold - tp_b], axis=1).astype(float)
        self.mu = 0.3 + diff + rng.normal(0, 0.5, size=n)  # recall logit: difficulty + note affinity
        self.fp_rate = 0.6 * self.gold * np.exp(rng.normal(0, 0.5, size=n))
        self.effect = paired_effect(F1_COLS, F1_COLS, "f1")
        x, wq = np.polynomial.hermite_e.hermegauss(60)
        wq = wq / wq.sum()

        def expected(extra_sd, shift_u=0.0, shift_v=0.0):
            tp = (self.gold[:, None] * _expit(self.mu[:, None] + shift_u + extra_sd * x[None, :])) @ wq
            fp = self.fp_rate * np.exp(shift_v + extra_sd ** 2 / 2)
            return np.array([tp.sum(), fp.sum(), (self.gold - tp).sum()])

        a = self.fixed.sum(axis=0)
        tot = np.hypot(self.sd, self.noise)
        self.truth = float(self.effect(np.concatenate([a, expected(tot)])))
        us = np.random.default_rng(seed + 1).normal(0, self.sd, size=(200, 2)) if self.sd > 0 else np.zeros((2, 2))
        self.seed_sd = float(np.std([self.effect(np.concatenate([a, expected(self.noise, u, v)])) for u, v in us], ddof=1))

    def draw(self, rng: np.random.Generator, n: int, s: int) -> np.ndarray:
        idx = rng.integers(0, len(self.gold), size=n)
        gold = self.gold[idx].astype(int)
        out = np.empty((s, n, 6))
        for j in range(s):
            u, v = rng.normal(0, self.sd, size=2) if self.sd > 0 else (0.0, 0.0)
            tp = rng.binomial(gold, _expit(self.mu[idx] + u + rng.normal(0, self.noise, size=n)))
            fp = rng.poisson(self.fp_rate[idx] * np.exp(v + rng.normal(0, self.noise, size=n)))
            out[j, :, :3] = self.fixed[idx]
            out[j, :, 3:] = np.stack([tp, fp, gold - tp], axis=1)
        return out


class HierMean:
    """Finding (b)'s shape over training seeds (module doc): ``draw(rng, n, s) -> [s, n, 4]``
    (sum and count of a, then of b, on the same pairs)."""

    def __init__(self, seed_sd: float, n: int = 2000, seed: int = 0, noise: float = 0.03):
        rng = np.random.default_rng(seed)
        self.sd, self.noise = float(seed_sd), float(noise)
        self.k = rng.integers(1, 7, size=n).astype(float)
        self.base = 0.3 + rng.normal(0, 0.15, size=n)
        self.h = rng.normal(0, 0.1, size=n)
        self.effect = paired_effect(MEAN_COLS, MEAN_COLS, "mean")
        self.truth = float(0.03 + (self.k * self.h).sum() / self.k.sum())
        self.seed_sd = self.sd

    def draw(self, rng: np.random.Generator, n: int, s: int) -> np.ndarray:
        idx = rng.integers(0, len(self.k), size=n)
        k, base, h = self.k[idx], self.base[idx], self.h[idx]
        out = np.empty((s, n, 4))
        for j in range(s):
            d = rng.normal(0, self.sd) if self.sd > 0 else 0.0
            e = rng.normal(0, self.noise, size=n)
            # a sum of k Gamma(0.5, 0.1) values is Gamma(0.5 k, 0.1); -0.05 centres each pair's noise
            out[j, :, 0] = k * (base + h + 0.03 + d + e - 0.05) + rng.gamma(0.5 * k, 0.1)
            out[j, :, 2] = k * (base - 0.05) + rng.gamma(0.5 * k, 0.1)
            out[j, :, 1] = out[j, :, 3] = k
        return out


class RealSeeds:
    """A real run's per-(seed, note) columns ``[S, M, C]`` as the population: a draw takes ``n`` of
    its notes and, per simulated seed, one of its seeds (with replacement)."""

    def __init__(self, vals: np.ndarray, effect):
        self.vals, self.effect = np.asarray(vals, dtype=float), effect
        self.truth = float(effect(self.vals.sum(axis=(0, 1))))
        self.seed_sd = float(np.std([effect(v.sum(axis=0)) for v in self.vals], ddof=1))

    def draw(self, rng: np.random.Generator, n: int, s: int) -> np.ndarray:
        idx = rng.integers(0, self.vals.shape[1], size=n)
        return self.vals[rng.integers(0, self.vals.shape[0], size=s)][:, idx, :]


def _first_seed(run: Path) -> int:
    import json

    man = json.loads((run / "05_faithfulness" / "manifest.json").read_text())
    seeds = man["parameters"]["common"]["seeds"]
    if not seeds or len(seeds) < 2:
        raise SystemExit(f"{run}: common.seeds is {seeds!r}; --seed-runs needs a run with several training seeds")
    return int(seeds[0])


def seed_counts_population(run: Path, model: str, k: int = 10, measure: str = "token_position_independent") -> np.ndarray:
    """``[S, N, 6]``: finding (a)'s entity (exact-code) and top-``k`` attention tp, fp, fn of
    ``model`` per training seed on the report-note pairs both have (notebook 06's tables)."""
    from rationale_kit.metrics import evaluation as E

    first = _first_seed(run)
    c = pd.read_parquet(run / "06_plausibility" / "pair_counts.parquet")
    cs = pd.read_parquet(run / "06_plausibility" / "pair_counts_seeds.parquet")
    att = f"attention (top-{k})"
    ent = c[(c.source == "entity (exact_code)") & (c.measure == measure)].drop(columns="model")
    a1 = c[(c.source == att) & (c.model == model) & (c.measure == measure)].assign(seed=first)
    a2 = cs[(cs.source == att) & (cs.model == model) & (cs.measure == measure)]
    ent, att_s = E.pair_seeds(ent, pd.concat([a1, a2[a1.columns]], ignore_index=True))
    common = set(zip(ent.note_id, ent.code)) & set(zip(att_s.note_id, att_s.code))
    if not common or att_s.seed.nunique() < 2:
        raise SystemExit(f"{run}: no {att} counts of {model} under several seeds beside entity (exact_code)")
    idx = E.per_note(ent, pairs=common).index.intersection(E.per_note(att_s, pairs=common).index)
    fa, fb = E._per_seed(ent, common, idx, F1_COLS), E._per_seed(att_s, common, idx, F1_COLS)
    return np.stack([np.concatenate([x.to_numpy(float), y.to_numpy(float)], axis=1) for x, y in zip(fa, fb)])


def seed_faithfulness_population(run: Path, model: str, measure: str, k: int = 10) -> np.ndarray:
    """``[S, N, 4]``: finding (b)'s top-``k`` attention and exact-code entity ``measure`` (sum,
    count) of ``model`` per training seed on the pairs both have under every seed (notebook 05)."""
    from rationale_kit.metrics import evaluation as E

    first = _first_seed(run)
    t = pd.read_parquet(run / "05_faithfulness" / "faithfulness.parquet").assign(seed=first)
    t = pd.concat([t, pd.read_parquet(run / "05_faithfulness" / "faithfulness_seeds.parquet")], ignore_index=True)
    t = t[t.k.isna() & (t.control == "rationale") & (t.measure == measure) & (t.model == model)]
    a, b = t[t.source == f"attention (top-{k})"], t[t.source == "entity (exact_code)"]
    common, fa, fb = E.seed_value_frames(a[["note_id", "code", "value", "seed"]], b[["note_id", "code", "value", "seed"]])
    if not len(common):
        raise SystemExit(f"{run}: no pair of {model} with attention (top-{k}) and entity (exact_code) under every seed")
    return np.stack([np.concatenate([x.to_numpy(float), y.to_numpy(float)], axis=1) for x, y in zip(fa, fb)])


def hierarchical_main(args) -> pd.DataFrame:
    f1 = paired_effect(F1_COLS, F1_COLS, "f1")
    mean = paired_effect(MEAN_COLS, MEAN_COLS, "mean")
    pops = {}
    for sd in args.seed_sds_f1:
        pops[f"f1 (parametric, seed sd {sd})"] = HierF1(sd, seed=args.seed)
    for sd in args.seed_sds_mean:
        pops[f"mean (parametric, seed sd {sd})"] = HierMean(sd, seed=args.seed)
    for run in args.seed_runs or []:
        name = run.resolve().name
        v = seed_counts_population(run, args.model)
        pops[f"f1 (artifact {name}: (a) {args.model}, {v.shape[1]} notes)"] = RealSeeds(v, f1)
        for m in ("comprehensiveness", "sufficiency"):
            try:
                v = seed_faithfulness_population(run, args.model, m)
            except SystemExit as e:
                print(f"skipped: {e}")
                continue
            if v.shape[1] < 10:
                print(f"skipped: {run} (b) {m} of {args.model} has {v.shape[1]} notes under every seed")
                continue
            pops[f"mean (artifact {name}: (b) {m} {args.model}, {v.shape[1]} notes)"] = RealSeeds(v, mean)
    methods = (*U.HIERARCHICAL_METHODS, U.NOTES_ONLY_T)
    rows = []
    for name, pop in pops.items():
        for n in args.n:
            t0 = time.process_time()
            res = U.simulate_hierarchical_coverage(pop.draw, pop.truth, pop.effect, n, n_seeds=args.training_seeds,
                                                   methods=methods, reps=args.reps, n_resamples=args.resamples,
                                                   seed=args.seed)
            sec = time.process_time() - t0
            for m, r in res.items():
                rows.append({"population": name, "true effect": round(pop.truth, 4), "seed sd": round(pop.seed_sd, 4),
                             "training seeds": args.training_seeds, "n": n, "method": m, "coverage": r["coverage"],
                             "mc_error": r["mc_error"], "nominal": 0.95, "excludes 0": r["excludes_0"],
                             "median width": r["width"], "undefined": r["undefined"]})
            print(f"{name:>62s} n={n:<4d} " + "  ".join(f"{m}={res[m]['coverage']:.3f}±{res[m]['mc_error']:.3f}"
                                                         for m in methods) + f"  ({sec:.1f}s cpu)", flush=True)
    table = pd.DataFrame(rows)
    table["cell"] = [f"{c:.3f} ± {e:.3f}" for c, e in zip(table.coverage, table.mc_error)]
    wide = table.pivot_table(index=["population", "n"], columns="method", values="cell", aggfunc="first", sort=False)
    wide = wide[list(methods)]
    width = table.pivot_table(index=["population", "n"], columns="method", values="median width", sort=False)
    wide["median width (" + " / ".join(methods) + ")"] = [" / ".join(f"{width.loc[i, m]:.3f}" for m in methods) for i in wide.index]
    print(f"\ncoverage of nominal 95% intervals over {args.training_seeds} training seeds x n notes ({args.reps} draws "
          f"per cell, {args.resamples} resamples; cell: coverage ± its Monte Carlo error)")
    seeds = table.drop_duplicates("population").set_index("population")[["true effect", "seed sd"]]
    print(seeds.to_string())
    print(wide.to_string())
    return table


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, nargs="+", default=[4, 10, 20, 50, 112])
    ap.add_argument("--methods", nargs="+", default=list(U.METHODS), choices=list(U.METHODS))
    ap.add_argument("--counts", type=Path)
    ap.add_argument("--a", default="llm_few")
    ap.add_argument("--b", default="entity (exact_code)")
    ap.add_argument("--faithfulness", type=Path)
    ap.add_argument("--hierarchical", action="store_true", help="intervals over training seeds x notes")
    ap.add_argument("--training-seeds", type=int, default=3)
    ap.add_argument("--seed-sds-f1", type=float, nargs="*", default=[0.05, 0.3],
                    help="seed effect sd (logit recall, log false-positive rate) of the parametric F1 populations")
    ap.add_argument("--seed-sds-mean", type=float, nargs="*", default=[0.005, 0.04],
                    help="seed effect sd of the parametric mean populations")
    ap.add_argument("--seed-runs", type=Path, nargs="*", help="artifact folders of runs with several training seeds")
    ap.add_argument("--model", default="caml")
    args = ap.parse_args(argv)
    if args.hierarchical:
        return hierarchical_main(args)

    f1 = paired_effect(F1_COLS, F1_COLS, "f1")
    mean = paired_effect(MEAN_COLS, MEAN_COLS, "mean")
    pops = {"f1 (parametric)": (f1_population(seed=args.seed), f1), "mean (parametric)": (mean_population(seed=args.seed), mean)}
    if args.counts:
        pops[f"f1 (artifact: {args.a} - {args.b})"] = (counts_population(args.counts, args.a, args.b), f1)
    if args.faithfulness:
        pops["mean (artifact: comprehensiveness)"] = (faithfulness_population(args.faithfulness), mean)
    rows = []
    for name, (pop, effect) in pops.items():
        truth = float(effect(pop.sum(axis=0)))
        for n in args.n:
            t0 = time.perf_counter()
            res = U.simulate_coverage(pop, effect, n, methods=args.methods, reps=args.reps,
                                      n_resamples=args.resamples, seed=args.seed)
            sec = time.perf_counter() - t0
            for m, r in res.items():
                rows.append({"population": name, "notes in population": len(pop), "true effect": round(truth, 4),
                             "n": n, "method": m, "coverage": r["coverage"], "nominal": 0.95,
                             "excludes 0": r["excludes_0"], "median width": r["width"], "undefined": r["undefined"],
                             "seconds (all methods)": round(sec, 1)})
            print(f"{name:>40s} n={n:<4d} " + "  ".join(f"{m}={res[m]['coverage']:.3f}" for m in args.methods)
                  + f"  ({sec:.1f}s)", flush=True)
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["population", "n"], columns="method", values="coverage", sort=False)
    print(f"\ncoverage of 95% intervals ({args.reps} draws per cell, {args.resamples} resamples; MC error of a "
          f"cell ~ {np.sqrt(0.95 * 0.05 / args.reps):.3f})")
    print(wide.round(3).to_string())
    return table


if __name__ == "__main__":
    main()
