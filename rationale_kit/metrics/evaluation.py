"""The evaluation design, written once: which notes are evaluated, which are for tuning, which are
reported, and on which (note, code) pairs each rationale source was run. Every comparison of two
sources or two models is made on the units both have, with a paired bootstrap over notes.

* **Evaluation notes**: annotated test notes that are not few-shot examples (annotated non-few-shot
  notes when a data set has none in test, e.g. MDACE on validation).
* **Tuning notes**: the evaluation notes whose ``eval_role`` is ``"tuning"`` (fixed by the data
  set: MDACE's train/val admissions), and a deterministic ``tuning_fraction`` of those without a
  role (the smallest SHA-256 hashes of the note ids). Every choice (soft-rationale thresholds, the
  guided-learning lambda) is made on them; they are never reported.
* **Report notes**: the other evaluation notes.
* **Run-on pairs** (``run_on``: ``source, model, note_id, code``): the pairs a source was run on
  (``model`` is ``"-"`` for model-independent sources). A source run on a subset (the LLM on
  ``max_llm_notes`` notes) is scored on that subset only, never counted as missing elsewhere.

Plausibility counts are kept per (note, code) pair (:func:`pair_counts`): MDACE's keys all contain
the code, so the counts of a note are the sums over its pairs and any restriction to a set of pairs
or notes is a sum. Intervals resample notes (:mod:`rationale_kit.metrics.uncertainty`).
"""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from rationale_kit.core.records import DataError

RUN_ON_COLUMNS = ["source", "model", "note_id", "code"]
COUNT_COLUMNS = ["note_id", "code", "measure", "tp", "fp", "fn"]
VERDICT_COLUMNS = ["finding", "comparison", "model", "dataset", "measure", "units", "a", "b", "effect",
                   "lo", "hi", "n_notes", "n_pairs", "expect", "verdict", "interval_method", "seed_agreement",
                   "mc_error", "control", "seed_sd"]
#: ``verdict`` values: the interval on the expected side of 0 / on the other side / across 0; fewer
#: notes than ``evaluation.min_notes``; an interval edge within its Monte Carlo error of 0
VERDICTS = ("holds", "does not hold", "inconclusive", "too few notes", "borderline")
DESIGN_FILE = "evaluation_design.json"
RUN_ON_FILE = "run_on.parquet"


# --------------------------------------------------------------------------------------------
# time spent in the bootstrap (item: its share of each notebook's time)
# --------------------------------------------------------------------------------------------
_TIMER = {"seconds": 0.0, "calls": 0}


@contextmanager
def _timed():
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _TIMER["seconds"] += time.perf_counter() - t0
        _TIMER["calls"] += 1


def bootstrap_time(reset: bool = False) -> dict:
    """``{"seconds", "calls"}`` spent in this module's bootstrap calls since the last reset."""
    out = dict(_TIMER)
    if reset:
        _TIMER.update(seconds=0.0, calls=0)
    return out


def save_timing(out_dir: Path, notebook_seconds: float | None = None) -> dict:
    """Write ``bootstrap_timing.json`` (bootstrap seconds and calls, and their share of
    ``notebook_seconds`` when given) in ``out_dir``; returns it."""
    t = bootstrap_time()
    out = {"bootstrap_seconds": round(t["seconds"], 3), "bootstrap_calls": t["calls"]}
    if notebook_seconds:
        out["notebook_seconds"] = round(notebook_seconds, 1)
        out["share"] = round(t["seconds"] / notebook_seconds, 4)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "bootstrap_timing.json").write_text(json.dumps(out, indent=1))
    return out


# --------------------------------------------------------------------------------------------
# the design
# --------------------------------------------------------------------------------------------
def evaluation_notes(docs: pd.DataFrame) -> pd.DataFrame:
    """Annotated test notes, never few-shot examples (annotated non-few-shot notes of any split
    when no test note is annotated)."""
    sel = docs.annotated & ~docs.fewshot & (docs.split == "test")
    if not sel.any():
        sel = docs.annotated & ~docs.fewshot
    return docs[sel].reset_index(drop=True)


def tuning_split(ids: Iterable[str], fraction: float) -> set[str]:
    """The ``round(fraction * n)`` ids with the smallest SHA-256 of the id (deterministic)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"tuning fraction must be in [0, 1), got {fraction}")
    ids = sorted(set(ids))
    ranked = sorted(ids, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    return set(ranked[: int(round(fraction * len(ids)))])


def _as_run_on(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    missing = [c for c in RUN_ON_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing} (need {RUN_ON_COLUMNS})")
    out = frame[RUN_ON_COLUMNS].astype(str).drop_duplicates()
    return out.sort_values(RUN_ON_COLUMNS, kind="stable").reset_index(drop=True)


@dataclass(frozen=True, eq=False)
class EvaluationDesign:
    """Evaluation, tuning and report note ids (sorted tuples) and the pairs every source was run on."""

    eval_ids: tuple[str, ...]
    tuning_ids: tuple[str, ...]
    report_ids: tuple[str, ...]
    tuning_fraction: float
    run_on: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RUN_ON_COLUMNS))

    def __post_init__(self):
        ev, tu, re_ = set(self.eval_ids), set(self.tuning_ids), set(self.report_ids)
        if tu & re_:
            raise ValueError(f"tuning and report notes overlap: {sorted(tu & re_)[:3]}")
        if tu | re_ != ev:
            raise ValueError("tuning and report notes must together be the evaluation notes")

    def with_run_on(self, frame: pd.DataFrame) -> "EvaluationDesign":
        """A copy where the (source, model) groups of ``frame`` replace any earlier ones."""
        frame = _as_run_on(frame, "run_on")
        keys = set(zip(frame.source, frame.model))
        old = self.run_on[[k not in keys for k in zip(self.run_on.source, self.run_on.model)]] if len(self.run_on) else self.run_on
        both = pd.concat([old, frame], ignore_index=True) if len(old) else frame
        return EvaluationDesign(self.eval_ids, self.tuning_ids, self.report_ids, self.tuning_fraction,
                                _as_run_on(both, "run_on"))

    def sources(self) -> list[tuple[str, str]]:
        return sorted(set(zip(self.run_on.source, self.run_on.model)))

    def pairs(self, source: str, model: str = "-") -> set[tuple[str, str]] | None:
        """The (note, code) pairs ``source`` (under ``model``) was run on; None when not recorded."""
        part = self.run_on[(self.run_on.source == source) & (self.run_on.model == model)]
        if not len(part):
            return None
        return set(zip(part.note_id, part.code))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"eval_ids": list(self.eval_ids), "tuning_ids": list(self.tuning_ids),
                "report_ids": list(self.report_ids), "tuning_fraction": self.tuning_fraction}
        (folder / DESIGN_FILE).write_text(json.dumps(meta, indent=1))
        self.run_on.to_parquet(folder / RUN_ON_FILE, index=False)

    @classmethod
    def load(cls, folder: Path) -> "EvaluationDesign":
        folder = Path(folder)
        path = folder / DESIGN_FILE
        if not path.exists():
            raise FileNotFoundError(f"no evaluation design at {path}: run 03_rationales first")
        meta = json.loads(path.read_text())
        for key in ("eval_ids", "tuning_ids", "report_ids", "tuning_fraction"):
            if key not in meta:
                raise DataError(f"{path}: missing key {key!r}")
        run_on = pd.read_parquet(folder / RUN_ON_FILE) if (folder / RUN_ON_FILE).exists() else pd.DataFrame(columns=RUN_ON_COLUMNS)
        return cls(tuple(meta["eval_ids"]), tuple(meta["tuning_ids"]), tuple(meta["report_ids"]),
                   float(meta["tuning_fraction"]), _as_run_on(run_on, str(folder / RUN_ON_FILE)))


def make_design(docs: pd.DataFrame, tuning_fraction: float = 0.25) -> EvaluationDesign:
    """The design of ``docs``: evaluation notes, their tuning notes and the report notes. Notes
    whose ``eval_role`` is ``"tuning"`` / ``"report"`` keep that role; of the others (``""``, or no
    ``eval_role`` column) the hashed ``tuning_fraction`` tunes (:func:`tuning_split`)."""
    ev_notes = evaluation_notes(docs)
    ev = sorted(ev_notes.note_id.astype(str))
    role = dict(zip(ev_notes.note_id.astype(str), ev_notes["eval_role"].astype(str))) if "eval_role" in ev_notes else {}
    bad = sorted({r for r in role.values() if r not in ("", "tuning", "report")})
    if bad:
        raise DataError(f"docs: eval_role must be '', 'tuning' or 'report', got {bad}")
    free = [n for n in ev if not role.get(n)]
    tune = tuning_split(free, tuning_fraction) | {n for n in ev if role.get(n) == "tuning"}
    return EvaluationDesign(tuple(ev), tuple(sorted(tune)), tuple(n for n in ev if n not in tune), tuning_fraction)


def run_on_frame(source: str, pairs: pd.DataFrame | Iterable[tuple[str, str]], model: str = "-") -> pd.DataFrame:
    """``source, model, note_id, code`` rows for the given pairs (a frame with note_id, code)."""
    if isinstance(pairs, pd.DataFrame):
        p = pairs[["note_id", "code"]]
    else:
        p = pd.DataFrame(list(pairs), columns=["note_id", "code"])
    return _as_run_on(p.assign(source=source, model=model), f"run_on[{source}]")


def llm_run_on(docs: pd.DataFrame, source: str) -> pd.DataFrame:
    """The pairs an LLM teacher was asked about: every gold code of every note sent to it."""
    rows = [(n, c) for n, cs in zip(docs.note_id, docs.codes) for c in cs]
    return run_on_frame(source, rows)


def pick_report_first(eval_notes: pd.DataFrame, design: EvaluationDesign, n: int | None) -> pd.DataFrame:
    """The first ``n`` evaluation notes, report notes before tuning notes (a source run on few
    notes, such as the LLM, is then scored on notes that are reported)."""
    if not n:
        return eval_notes
    report = set(design.report_ids)
    order = np.argsort(~eval_notes.note_id.isin(report).to_numpy(), kind="stable")
    return eval_notes.iloc[order].head(n).sort_index().reset_index(drop=True)


def restrict(frame: pd.DataFrame, pairs: set[tuple[str, str]] | None) -> pd.DataFrame:
    """Rows of ``frame`` whose (note_id, code) is in ``pairs`` (all rows when ``pairs`` is None)."""
    if pairs is None or not len(frame):
        return frame
    keys = zip(frame["note_id"].astype(str).tolist(), frame["code"].astype(str).tolist())  # bulk, not per value
    return frame[[k in pairs for k in keys]]


def coverage_table(design: EvaluationDesign, gold: pd.DataFrame, notes: str = "report") -> pd.DataFrame:
    """Per recorded (source, model): the gold pairs of the ``notes`` ("report", "tuning", "eval")
    it was run on, out of all of them. ``scored_on`` says whether it is scored on every eligible
    pair or on a subset."""
    ids = set({"report": design.report_ids, "tuning": design.tuning_ids, "eval": design.eval_ids}[notes])
    g = gold[gold.note_id.astype(str).isin(ids)]
    eligible = set(zip(g.note_id.astype(str), g.code.astype(str)))
    rows = []
    for source, model in design.sources():
        run = design.pairs(source, model) & eligible
        rows.append({"source": source, "model": model, "notes_run_on": len({n for n, _ in run}),
                     "notes_eligible": len({n for n, _ in eligible}), "pairs_run_on": len(run),
                     "pairs_eligible": len(eligible), "coverage": len(run) / len(eligible) if eligible else 0.0,
                     "scored_on": "all eligible pairs" if run == eligible else f"subset ({len(run)} of {len(eligible)} pairs)"})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# per-pair plausibility counts
# --------------------------------------------------------------------------------------------
def pair_counts(gold: pd.DataFrame, pred: pd.DataFrame, docs: pd.DataFrame,
                measures: Sequence[str] | None = None, unit: str = "mdace") -> pd.DataFrame:
    """``note_id, code, measure, tp, fp, fn`` of MDACE's measures for every gold pair (predictions
    of other pairs are ignored), as :func:`rationale_kit.metrics.plausibility.pair_counts` counts
    them (restricted to ``measures``, default MDACE's four). Summed over pairs they equal
    :func:`~rationale_kit.metrics.plausibility.mdace_measures` (``pairs="gold"``); a pair without
    predictions has ``tp = fp = 0``."""
    from rationale_kit.metrics import plausibility as P

    measures = list(measures or P.MDACE_MEASURES)
    bad = [m for m in measures if m not in P.MDACE_MEASURES]
    if bad:
        raise ValueError(f"measures: {bad} are not MDACE measures {list(P.MDACE_MEASURES)}")
    out = P.pair_counts(gold, pred, docs, pairs="gold", unit=unit)
    out = out[out.measure.isin(measures)].reset_index(drop=True)[COUNT_COLUMNS]
    return out.astype({"note_id": str, "code": str, "tp": "int64", "fp": "int64", "fn": "int64"})


def per_note(counts: pd.DataFrame, columns: Sequence[str] = ("tp", "fp", "fn"),
             pairs: set[tuple[str, str]] | None = None, notes: Iterable[str] | None = None) -> pd.DataFrame:
    """Sums of ``columns`` per note (index ``note_id``), over the rows of ``pairs`` / ``notes``."""
    c = restrict(counts, pairs)
    if notes is not None:
        c = c[c.note_id.isin(set(notes))]
    return c.groupby("note_id")[list(columns)].sum().sort_index()


def prf(sums: Mapping) -> dict:
    tp, fp, fn = (float(sums[k]) for k in ("tp", "fp", "fn"))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


# --------------------------------------------------------------------------------------------
# intervals and verdicts
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bootstrap:
    """How intervals and verdicts are computed (profile ``evaluation``): ``n_resamples`` for
    descriptive intervals, ``verdict_resamples`` (None: ``n_resamples``) for verdict comparisons,
    ``method`` of the verdict intervals (:data:`~rationale_kit.metrics.uncertainty.METHODS`),
    ``min_notes`` below which a row's verdict is "too few notes", ``stability_seeds`` bootstrap
    seeds per verdict row (``seed``, ``seed + 1``, ...; the first is reported), ``seed_method``
    of the verdict intervals over several training seeds
    (:data:`~rationale_kit.metrics.uncertainty.HIERARCHICAL_METHODS`; profile
    ``evaluation.seed_interval_method``)."""

    n_resamples: int = 1000
    seed: int = 0
    level: float = 0.95
    method: str = "percentile"
    min_notes: int = 0
    stability_seeds: int = 20
    verdict_resamples: int | None = None
    seed_method: str = "percentile"

    @property
    def resamples(self) -> int:
        return int(self.verdict_resamples or self.n_resamples)


def _stat(name: str) -> Callable:
    from rationale_kit.metrics import uncertainty as U

    return {"f1": U.f1_statistic, "precision": U.precision_statistic, "recall": U.recall_statistic,
            "mean": U.mean_statistic}[name]


def interval(notes_frame: pd.DataFrame, statistic: str, boot: Bootstrap):
    """Bootstrap interval of ``statistic`` ("f1", "precision", "recall" over tp/fp/fn columns;
    "mean" over sum/count columns) from a per-note frame; None when it has no note."""
    from rationale_kit.metrics import uncertainty as U

    if not len(notes_frame):
        return None
    with _timed():
        return U.bootstrap(notes_frame, _stat(statistic), n_resamples=boot.n_resamples, seed=boot.seed, level=boot.level)


def paired_interval(a: pd.DataFrame, b: pd.DataFrame, statistic: str, boot: Bootstrap):
    """Paired bootstrap interval of ``statistic(a) - statistic(b)`` on the notes both per-note
    frames have (same resampling weights); None when they share no note."""
    from rationale_kit.metrics import uncertainty as U

    common = a.index.intersection(b.index)
    if not len(common):
        return None
    with _timed():
        return U.paired_bootstrap(a.loc[common], b.loc[common], _stat(statistic), n_resamples=boot.n_resamples,
                                  seed=boot.seed, level=boot.level)


def paired_effect(columns_a: Sequence[str], columns_b: Sequence[str], statistic: str) -> Callable:
    """``effect(sums [..., Ca + Cb]) = statistic(a's columns) - statistic(b's columns)``."""
    from rationale_kit.metrics.uncertainty import _sums

    f, ca = _stat(statistic), len(columns_a)

    def effect(sums: np.ndarray) -> np.ndarray:
        return f(_sums(columns_a, sums[..., :ca])) - f(_sums(columns_b, sums[..., ca:]))

    return effect


#: ``interval_method`` of a verdict row over several training seeds, per ``Bootstrap.seed_method``
HIERARCHICAL_NAMES = {"percentile": "hierarchical", "t": "hierarchical t", "t_components": "hierarchical t (components)"}


def verdict_comparison(a: Sequence[pd.DataFrame], b: Sequence[pd.DataFrame], statistic: str, boot: Bootstrap) -> dict:
    """The interval of a verdict row: ``statistic(a) - statistic(b)`` from per-note frames, one per
    training seed (``a[s]`` and ``b[s]`` the same seed; every frame indexed by the same notes).
    One seed: :func:`~rationale_kit.metrics.uncertainty.resample_interval` by ``boot.method``;
    several: :func:`~rationale_kit.metrics.uncertainty.hierarchical_interval` by ``boot.seed_method``
    (seeds and notes together; ``interval_method`` :data:`HIERARCHICAL_NAMES`: "hierarchical" for
    the percentile bootstrap over seeds and notes, "hierarchical t" / "hierarchical t (components)"
    for the two-way jackknife t intervals). Each is computed under
    ``boot.stability_seeds`` bootstrap seeds. Returns ``lo, hi, interval_method, seed_sd`` (the
    effect's standard deviation across training seeds, NaN for one) and ``intervals`` (the
    per-bootstrap-seed intervals, for :func:`verdict_row`)."""
    from rationale_kit.metrics import uncertainty as U

    if len(a) != len(b) or not len(a):
        raise ValueError(f"verdict_comparison: need the same number (>= 1) of seeds on both sides, got {len(a)} and {len(b)}")
    vals = np.stack([np.concatenate([x.to_numpy(np.float64), y.to_numpy(np.float64)], axis=1) for x, y in zip(a, b)])
    effect = paired_effect(list(a[0].columns), list(b[0].columns), statistic)
    seeds = [boot.seed + i for i in range(max(int(boot.stability_seeds), 1))]
    with _timed():
        if len(vals) == 1:
            if boot.method == "t":  # no resampling: every bootstrap seed gives the same interval
                ivs = [U.resample_interval(vals[0], effect, method="t", level=boot.level)] * len(seeds)
            else:
                ivs = [U.resample_interval(vals[0], effect, method=boot.method, n_resamples=boot.resamples, seed=s,
                                           level=boot.level) for s in seeds]
            method, sd = boot.method, np.nan
        else:
            if boot.seed_method in ("t", "t_components"):  # no resampling either
                ivs = [U.hierarchical_interval(vals, effect, method=boot.seed_method, level=boot.level)] * len(seeds)
            else:
                ivs = [U.hierarchical_interval(vals, effect, method=boot.seed_method, n_resamples=boot.resamples,
                                               seed=s, level=boot.level) for s in seeds]
            per_seed = [float(effect(v.sum(axis=0))) for v in vals]
            method, sd = HIERARCHICAL_NAMES[boot.seed_method], float(np.std(per_seed, ddof=1))
    return {"lo": ivs[0].lo, "hi": ivs[0].hi, "interval_method": method, "seed_sd": sd, "intervals": ivs}


def _per_seed(frame: pd.DataFrame, pairs: set, notes: pd.Index, columns: Sequence[str]) -> list[pd.DataFrame]:
    """Per-note sums of ``columns`` over ``pairs``, one frame per value of ``frame.seed`` (one frame
    when there is no ``seed`` column), each reindexed to ``notes`` (0 where a seed has none)."""
    groups = [frame] if "seed" not in frame.columns else [g for _, g in frame.groupby("seed", sort=True)]
    return [per_note(g, columns, pairs=pairs).reindex(notes, fill_value=0) for g in groups]


def pair_seeds(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both sides of a comparison on the same training seeds: with a ``seed`` column on both, the
    rows of the seeds both have; with one on one side only, the other side (a model-free source
    such as entity or LLM spans, the same under every seed) repeated under each of its seeds;
    without one, unchanged."""
    if "seed" in a.columns and "seed" in b.columns:
        both = sorted(set(a.seed) & set(b.seed))
        return a[a.seed.isin(both)], b[b.seed.isin(both)]
    if "seed" in a.columns or "seed" in b.columns:
        seeded, free = (a, b) if "seed" in a.columns else (b, a)
        seeds = sorted(set(seeded.seed))
        free = pd.concat([free.assign(seed=s) for s in seeds], ignore_index=True) if seeds else free.assign(seed=0).iloc[:0]
        return (seeded, free) if "seed" in a.columns else (free, seeded)
    return a, b


def n_seeds(frame: pd.DataFrame) -> int:
    """Training seeds of a per-seed table (its ``seed`` values; 1 without the column)."""
    return int(frame["seed"].nunique()) if "seed" in frame.columns and len(frame) else 1


def compare_counts(a: pd.DataFrame, b: pd.DataFrame, boot: Bootstrap, notes: Iterable[str] | None = None,
                   measure: str = "token_position_independent", statistic: str = "f1") -> dict:
    """Two sources' pair counts (``pair_counts`` frames) compared on the pairs both were scored on
    (of ``notes`` when given): ``a, b, effect, lo, hi, n_notes, n_pairs`` (NaN without common pairs)
    and the stability and seed columns of :func:`verdict_comparison`. With a ``seed`` column
    (several training seeds; :func:`pair_seeds`: a side without one is model-free and pairs with
    every seed of the other), the point values pool the seeds and the interval resamples seeds and
    notes together (paired by seed)."""
    a = a[a.measure == measure]
    b = b[b.measure == measure]
    a, b = pair_seeds(a, b)
    common = set(zip(a.note_id, a.code)) & set(zip(b.note_id, b.code))
    if notes is not None:
        keep = set(notes)
        common = {p for p in common if p[0] in keep}
    out = {"a": np.nan, "b": np.nan, "effect": np.nan, "lo": np.nan, "hi": np.nan,
           "n_notes": len({n for n, _ in common}), "n_pairs": len(common), "seed_sd": np.nan}
    if not common:
        return out
    na, nb = per_note(a, pairs=common), per_note(b, pairs=common)
    out["a"], out["b"] = prf(na.sum())[statistic], prf(nb.sum())[statistic]
    idx = na.index.intersection(nb.index)
    cols = ["tp", "fp", "fn"]
    out.update(effect=out["a"] - out["b"], **verdict_comparison(_per_seed(a, common, idx, cols),
                                                                _per_seed(b, common, idx, cols), statistic, boot))
    return out


def compare_values(a: pd.DataFrame, b: pd.DataFrame, boot: Bootstrap) -> dict:
    """Two per-pair value tables (``note_id, code, value``) compared on their common pairs: the
    means over those pairs, their difference and its paired interval over notes (with the
    stability columns of :func:`verdict_comparison`). With a ``seed`` column (several training
    seeds): :func:`compare_values_seeds`."""
    if "seed" in a.columns or "seed" in b.columns:
        return compare_values_seeds(a, b, boot)
    ka = a.groupby(["note_id", "code"])["value"].mean()
    kb = b.groupby(["note_id", "code"])["value"].mean()
    common = ka.index.intersection(kb.index)
    out = {"a": np.nan, "b": np.nan, "effect": np.nan, "lo": np.nan, "hi": np.nan,
           "n_notes": len(set(common.get_level_values(0))) if len(common) else 0, "n_pairs": len(common),
           "seed_sd": np.nan}
    if not len(common):
        return out
    na = ka.loc[common].groupby(level=0).agg(sum="sum", count="count")
    nb = kb.loc[common].groupby(level=0).agg(sum="sum", count="count")
    out["a"], out["b"] = float(ka.loc[common].mean()), float(kb.loc[common].mean())
    out.update(effect=out["a"] - out["b"], **verdict_comparison([na], [nb], "mean", boot))
    return out


def seed_value_frames(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.MultiIndex, list[pd.DataFrame], list[pd.DataFrame]]:
    """The units and per-note frames of :func:`compare_values_seeds`: ``common`` (the ``note_id,
    code`` pairs both sides have under every training seed, sorted) and, per seed (sorted), one
    ``sum, count`` frame of each side over those pairs, indexed by their notes (empty lists without
    common pairs). ``a``, ``b``: ``note_id, code, value, seed`` tables (:func:`pair_seeds`)."""
    a, b = pair_seeds(a, b)
    seeds = sorted(set(a.seed) | set(b.seed)) if len(a) or len(b) else []
    ka = a.groupby(["seed", "note_id", "code"])["value"].mean()
    kb = b.groupby(["seed", "note_id", "code"])["value"].mean()
    empty = pd.MultiIndex.from_tuples([], names=["note_id", "code"])
    common = None
    for s_ in seeds:
        pa = ka.xs(s_, level="seed").index if s_ in ka.index.get_level_values(0) else empty
        pb = kb.xs(s_, level="seed").index if s_ in kb.index.get_level_values(0) else empty
        both = pa.intersection(pb)
        common = both if common is None else common.intersection(both)
    common = common.sort_values() if common is not None else empty
    if not len(common):
        return common, [], []
    notes = pd.Index(sorted(set(common.get_level_values(0))), name="note_id")
    frames_a, frames_b = [], []
    for s_ in seeds:
        va, vb = ka.xs(s_, level="seed").loc[common], kb.xs(s_, level="seed").loc[common]
        frames_a.append(va.groupby(level=0).agg(sum="sum", count="count").reindex(notes))
        frames_b.append(vb.groupby(level=0).agg(sum="sum", count="count").reindex(notes))
    return common, frames_a, frames_b


def compare_values_seeds(a: pd.DataFrame, b: pd.DataFrame, boot: Bootstrap) -> dict:
    """:func:`compare_values` over training seeds: ``a`` and ``b`` are ``note_id, code, value,
    seed`` tables (:func:`pair_seeds`: a side without ``seed`` pairs with every seed of the other).
    The units are the pairs both sides have under **every** seed, so each seed is scored on the
    same pairs (:func:`seed_value_frames`); ``a``, ``b`` are the means over seeds and those pairs,
    and the interval resamples seeds and notes together (:func:`verdict_comparison` on one
    ``sum, count`` per-note frame per seed; one seed: the notes-only interval). ``seed_sd``: the
    spread of the per-seed effect."""
    common, frames_a, frames_b = seed_value_frames(a, b)
    out = {"a": np.nan, "b": np.nan, "effect": np.nan, "lo": np.nan, "hi": np.nan,
           "n_notes": len(set(common.get_level_values(0))) if len(common) else 0, "n_pairs": len(common),
           "seed_sd": np.nan}
    if not len(common):
        return out
    out["a"] = float(np.mean([f["sum"].sum() / f["count"].sum() for f in frames_a]))
    out["b"] = float(np.mean([f["sum"].sum() / f["count"].sum() for f in frames_b]))
    out.update(effect=out["a"] - out["b"], **verdict_comparison(frames_a, frames_b, "mean", boot))
    return out


def seed_spread_table(values: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Per group of ``keys``: ``seeds``, the ``mean`` and sample ``std`` across training seeds of
    ``value`` (one row per group and ``seed`` in ``values``; std NaN with one seed) and the
    ``n_pairs`` each seed was scored on (the smallest)."""
    rows = []
    for key, g in values.groupby(list(keys), sort=True):
        mean, std = seed_spread(g["value"])
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "seeds": int(g.seed.nunique()),
                     "mean": mean, "std": std, "n_pairs": int(g["n_pairs"].min()) if "n_pairs" in g else np.nan})
    return pd.DataFrame(rows, columns=[*keys, "seeds", "mean", "std", "n_pairs"])


def decide(effect_row: Mapping, expect: str, min_notes: int = 0) -> str:
    """The verdict of a row from its interval, ``n_notes`` and ``mc_error``
    (:func:`~rationale_kit.metrics.uncertainty.final_verdict`): "too few notes" below
    ``min_notes`` common notes (also without common units when ``min_notes`` > 0, else
    "inconclusive"), "borderline", "holds", "does not hold" or "inconclusive"."""
    from rationale_kit.metrics import uncertainty as U

    n = effect_row.get("n_notes")
    n = int(n) if n is not None and not pd.isna(n) else 0
    if n < min_notes:
        return "too few notes"
    if not effect_row.get("n_pairs") or not np.isfinite(effect_row.get("lo", np.nan)):
        return "inconclusive"
    iv = U.Interval(estimate=float(effect_row["effect"]), lo=float(effect_row["lo"]), hi=float(effect_row["hi"]),
                    n_notes=n, n_resamples=0, level=0.95)
    mc = effect_row.get("mc_error", np.nan)
    return U.final_verdict(iv, expect, float(mc) if mc is not None and not pd.isna(mc) else np.nan, min_notes)


def verdict_row(finding: str, comparison: str, model: str, dataset: str, measure: str, units: str,
                result: Mapping, expect: str, min_notes: int = 0, control: str = "raw") -> dict:
    """One row of ``verdicts.csv``: the comparison ``a - b`` with its interval, n, stability
    (``seed_agreement``, ``mc_error`` from ``result["intervals"]`` when present), training-seed
    spread and verdict (:func:`decide`)."""
    from rationale_kit.metrics import uncertainty as U

    row = {"finding": finding, "comparison": comparison, "model": model, "dataset": dataset, "measure": measure,
           "units": units, **{k: result.get(k, np.nan) for k in ("a", "b", "effect", "lo", "hi", "n_notes", "n_pairs")},
           "expect": expect, "interval_method": result.get("interval_method", np.nan), "control": control,
           "seed_sd": result.get("seed_sd", np.nan)}
    stab = U.verdict_stability(list(result.get("intervals") or []), expect)
    row.update(stab)
    row["verdict"] = decide(row, expect, min_notes)
    return row


def combine(verdicts: Sequence[str]) -> str:
    """A finding made of several comparisons, skipping "too few notes" rows: holds when all the
    others hold, does not hold when any does not, inconclusive otherwise ("borderline" counts as
    inconclusive); "too few notes" when every row has too few notes; inconclusive without rows."""
    v = list(verdicts)
    kept = [x for x in v if x != "too few notes"]
    if v and not kept:
        return "too few notes"
    if kept and all(x == "holds" for x in kept):
        return "holds"
    if any(x == "does not hold" for x in kept):
        return "does not hold"
    return "inconclusive"


def combined_row(finding: str, comparison: str, model: str, dataset: str, measure: str,
                 rows: Sequence[Mapping], control: str = "raw") -> dict:
    """The combined verdict row of ``rows`` (:func:`combine`); ``units`` says how many rows it
    combines and names those skipped for too few notes."""
    skipped = [r for r in rows if r.get("verdict") == "too few notes"]
    units = f"combined: {len(rows) - len(skipped)} of {len(rows)} rows above"
    if skipped:
        units += "; skipped (too few notes): " + "; ".join(f"{r['comparison']} (n_notes={r.get('n_notes')})" for r in skipped)
    return {"finding": finding, "comparison": comparison, "model": model, "dataset": dataset, "measure": measure,
            "units": units, "control": control, "verdict": combine([r["verdict"] for r in rows])}


def verdicts_frame(rows: Sequence[Mapping]) -> pd.DataFrame:
    """Verdict rows as a table (counts as nullable integers: combined rows have none)."""
    return pd.DataFrame(list(rows), columns=VERDICT_COLUMNS).astype({"n_notes": "Int64", "n_pairs": "Int64"})


def with_interval(row: dict, iv, prefix: str = "") -> dict:
    """Add ``<prefix>lo``, ``<prefix>hi`` (NaN without an interval) to ``row``."""
    row[f"{prefix}lo"] = iv.lo if iv is not None else np.nan
    row[f"{prefix}hi"] = iv.hi if iv is not None else np.nan
    return row


def seed_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation across seeds (std NaN for one seed)."""
    v = np.asarray(list(values), dtype=float)
    return float(v.mean()) if len(v) else np.nan, float(v.std(ddof=1)) if len(v) > 1 else np.nan
