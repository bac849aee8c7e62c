"""Benchmark: real coverage of the verdict intervals at small numbers of notes.

    PYTHONPATH=. .venv/bin/python benchmarks/coverage.py [--reps 400] [--resamples 1000] [--seed 0]
        [--n 4 10 20 50 112] [--methods percentile bca studentized t]
        [--counts artifacts/<profile>/06_plausibility/pair_counts.parquet --a SOURCE --b SOURCE]
        [--faithfulness artifacts/<profile>/05_faithfulness/faithfulness.parquet]

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
    args = ap.parse_args(argv)

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
