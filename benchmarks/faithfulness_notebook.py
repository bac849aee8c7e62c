"""Benchmark of the faithfulness engine on notebook 05's own workload: the trained models and the
inputs of a finished run (``artifacts/<profile>``), and exactly the engine calls notebook 05 makes
(``protocols.faithfulness.faithfulness_tables``: per model the discrete, ERASER and Edin calls on
the seeded sample of report-note pairs, sharing one ``NoteCache``). Each call is timed as the
notebook runs it and again with the straightforward loop (the same spec with ``engine=False``:
one full forward pass of batch one per note and per perturbed input), one after the other, and
the two tables are compared value by value.

``benchmarks/faithfulness.py`` measures the engine on a synthetic workload with untrained models
(no run needed); this script answers the question on the real one: trained weights change how
soon a perturbed LSTM state returns to the note's (LAAT), not how many chunks a mask changes
(PLM-ICD).

Times are process CPU seconds with ``--threads`` torch threads (default 1: other jobs on the
machine then disturb the numbers least), or wall seconds (``--clock wall``, e.g. with the
notebooks' 2 threads); run nothing else meanwhile, since shared caches and memory bandwidth still
slow both sides. ``--batched`` also times the engine without its incremental paths.

    .venv/bin/python -m rationale_kit run --profile default --only 01-05   # the run to read
    .venv/bin/python benchmarks/faithfulness_notebook.py [--profile default] [--models laat,plm_icd,caml]
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def _sibling(name: str):
    """benchmarks/<name>.py as a module (by path: the folder is not put on ``sys.path``, where its
    files would shadow packages such as ``coverage``)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_engine_bench = _sibling("faithfulness")
StepCounter, lstm_step_costs = _engine_bench.StepCounter, _engine_bench.lstm_step_costs
ROOT = Path(__file__).resolve().parent.parent
KEYS = ["note_id", "code", "source", "measure", "k", "control"]


def max_difference(fast: pd.DataFrame, slow: pd.DataFrame) -> float:
    """Largest |fast - slow| of ``value`` over the same rows (an error if the rows differ)."""
    keys = [k for k in KEYS if k in fast.columns]
    a = fast.sort_values(keys, na_position="first").reset_index(drop=True)
    b = slow.sort_values(keys, na_position="first").reset_index(drop=True)
    if not a[keys].astype(str).equals(b[keys].astype(str)):
        raise AssertionError("the engine and the loop scored different rows")
    va, vb = a["value"].to_numpy(dtype=float), b["value"].to_numpy(dtype=float)
    both = ~(np.isnan(va) & np.isnan(vb))
    return float(np.abs(va[both] - vb[both]).max()) if both.any() else 0.0


class PairedCalls:
    """Wraps ``faithfulness.run_spec``: each call runs as given (timed) and then with the loop
    (timed), and returns the engine's table, so the notebook protocol goes on unchanged."""

    def __init__(self, batched: bool = False, clock=time.process_time):
        from rationale_kit.metrics import faithfulness

        self.module, self.orig = faithfulness, faithfulness.run_spec
        self.rows: list[dict] = []

        def timed(*args, **kw):
            t0 = clock()
            out = self.orig(*args, **kw)
            return clock() - t0, out

        def paired(model, docs, table, spec, **kw):
            steps = StepCounter()
            try:
                t_engine, fast = timed(model, docs, table, spec, **kw)
            finally:
                steps.remove()
            loop_kw = {k: v for k, v in kw.items() if k != "cache"}
            t_loop, slow = timed(model, docs, table, dataclasses.replace(spec, engine=False), **loop_kw)
            row = {"model": spec.model_name, "kind": spec.kind, "rows": len(fast), "engine_s": t_engine,
                   "loop_s": t_loop, "max_abs_diff": max_difference(fast, slow),
                   "lstm_steps_computed": steps.computed / steps.full if steps.full else np.nan,
                   "lstm_row_steps": steps.full, "lstm_row_steps_computed": steps.computed}
            if batched:  # the engine without its incremental paths: plain batched forward passes
                t_b, plain = timed(model, docs, table, dataclasses.replace(spec, incremental=False), **loop_kw)
                row |= {"batched_s": t_b, "batched_max_abs_diff": max_difference(plain, slow)}
            self.rows.append(row)
            return fast

        faithfulness.run_spec = paired

    def remove(self):
        self.module.run_spec = self.orig


@dataclasses.dataclass(frozen=True)
class ArtifactReader:
    """What ``discrete_sources`` reads of a notebook context: ``read(artifact)`` from a run's
    artifacts folder."""

    root: Path

    def read(self, artifact) -> pd.DataFrame:
        return pd.read_parquet(self.root / artifact.key)


def main(argv=None) -> pd.DataFrame:
    """Runs the benchmark; returns the per-call table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--artifacts", default=None, help="the run's artifacts folder (default: artifacts/<profile>)")
    ap.add_argument("--models", default=None, help="comma-separated models (default: faithfulness.models or train.models)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: process CPU seconds (default); wall: wall seconds (what a notebook with several "
                         "threads waits; other jobs on the machine count too)")
    ap.add_argument("--batched", action="store_true",
                    help="also time the engine without its incremental paths (incremental=False) against the loop")
    args = ap.parse_args(argv)

    from rationale_kit import data
    from rationale_kit.core.config import load_profile
    from rationale_kit.metrics import evaluation
    from rationale_kit.workbook import artifacts as A
    from rationale_kit.workbook.protocols.alignment import discrete_sources
    from rationale_kit.workbook.protocols.data import eval_docs
    from rationale_kit.workbook.protocols.faithfulness import faithfulness_tables
    from rationale_kit.workbook.protocols.train import load_models

    torch.set_num_threads(args.threads)
    prof = load_profile(args.profile, {"common": {"progress": False}})
    art = Path(args.artifacts) if args.artifacts else ROOT / "artifacts" / args.profile
    need = [art / "01_data"] + [art / a.key for a in (A.PREDICTIONS, A.SOFT, A.ENTITY, A.LLM_SPANS)]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        sys.exit(f"faithfulness_notebook: no finished run to read ({', '.join(missing)} missing); run notebooks "
                 f"01-04 of profile {args.profile!r} first")
    names = [m.strip() for m in args.models.split(",")] if args.models else list(prof.faithfulness.models or prof.train.models)
    ds = data.load_saved(art / "01_data")
    models = load_models(art / "02_train", names, "cpu")
    run = ArtifactReader(art)
    soft, preds, discrete = run.read(A.SOFT), run.read(A.PREDICTIONS), discrete_sources(run)
    design = evaluation.EvaluationDesign.load(art / "03_rationales")
    print(f"profile {args.profile}, artifacts {art}, torch threads {torch.get_num_threads()}, "
          f"{'process CPU' if args.clock == 'cpu' else 'wall'} seconds; "
          f"faithfulness: unit {prof.faithfulness.unit}, perturbation {prof.faithfulness.perturbation}, "
          f"max_pairs {prof.faithfulness.max_pairs}")
    calls = PairedCalls(args.batched, time.process_time if args.clock == "cpu" else time.perf_counter)
    try:
        for name in names:
            faithfulness_tables({name: models[name]}, eval_docs(ds.docs), discrete, soft, prof, "cpu", preds=preds,
                                design=design)
    finally:
        calls.remove()
    per_call = pd.DataFrame(calls.rows)
    print(per_call.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    agg = dict(rows=("rows", "sum"), engine_s=("engine_s", "sum"), loop_s=("loop_s", "sum"),
               max_abs_diff=("max_abs_diff", "max"))
    if args.batched:
        agg |= dict(batched_s=("batched_s", "sum"), batched_max_abs_diff=("batched_max_abs_diff", "max"))
    per_model = per_call.groupby("model", sort=False).agg(**agg)
    per_model["speedup_vs_loop"] = per_model.loop_s / per_model.engine_s
    print("\nper model (notebook 05's calls together):")
    print(per_model.to_string(float_format=lambda x: f"{x:.3g}"))
    for name, part in per_call.groupby("model", sort=False):
        if part.lstm_row_steps.sum():  # LAAT's state reuse path ran: how far could an exact method go
            path_us, lstm_us = lstm_step_costs(models[name])
            floor = part.lstm_row_steps_computed.sum() * path_us * 1e-6
            print(f"\n{name}: its rows' full recurrences are {part.lstm_row_steps.sum():,} row-steps, of which the state "
                  f"reuse path computed {part.lstm_row_steps_computed.sum() / part.lstm_row_steps.sum():.0%}; a step "
                  f"costs {path_us:.2f} us per row there and {lstm_us:.2f} us in the model's nn.LSTM: those steps "
                  f"alone take {floor:.1f} s against the loop's {part.loop_s.sum():.1f} s (at most "
                  f"{part.loop_s.sum() / floor:.1f}x for any method that computes them)")
    return per_call


if __name__ == "__main__":
    main()
