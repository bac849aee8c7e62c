"""Notebook 06's protocol: every source scored on the report-note pairs it was run on, soft
rationales binarised with thresholds tuned on the tuning notes, and finding (a)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from rationale_kit.core.config import Profile
from rationale_kit.core.sources import ATTENTION, ENTITY_EXACT, RANDOM, TEACHERS, Source, parse_source
from rationale_kit.workbook.protocols.common import bootstrap
from rationale_kit.workbook.protocols.data import evaluation_design
from rationale_kit.workbook.protocols.rationales import random_rationales


@dataclass(frozen=True)
class PlausibilityResult:
    spans: pd.DataFrame  # plausibility_table rows (+ model, binarisation, unit counts, coverage, intervals)
    soft: pd.DataFrame  # soft measures per model/source
    thresholds: dict  # tuned thresholds per (model, source)
    counts: pd.DataFrame = None  # per (note, code) MDACE counts of every row source (report notes)
    comparisons: pd.DataFrame = None  # paired comparisons and finding (a)'s verdicts
    # the later training seeds' models (train.seed_models): per-pair counts of their top-k
    # binarised attention and gradients, with a seed column (None with one seed)
    seed_counts: pd.DataFrame = None


def _unit_counts(gold: pd.DataFrame, predicted: set | None) -> pd.DataFrame:
    """``granularity, code_set, n_notes, n_pairs`` of the gold pairs, as plausibility_table
    groups them (granularity "all" and each level; code sets all / predicted / missed)."""
    g = gold.assign(granularity=gold["granularity"].fillna("").astype(str)) if "granularity" in gold else gold.assign(granularity="")
    rows = []
    levels = [("all", g)] + [(lv, g[g.granularity == lv]) for lv in sorted(x for x in g.granularity.unique() if x)]
    for level, part in levels:
        pairs = set(zip(part.note_id.astype(str).tolist(), part.code.astype(str).tolist()))
        sets = {"all": pairs}
        if predicted is not None:
            sets.update(predicted=pairs & predicted, missed=pairs - predicted)
        for cs, ps in sets.items():
            rows.append({"granularity": level, "code_set": cs, "n_notes": len({n for n, _ in ps}), "n_pairs_eligible": len(ps)})
    return pd.DataFrame(rows)


def _score(P, E, gold_report: pd.DataFrame, run_on: set | None, name: str, spans: pd.DataFrame, docs: pd.DataFrame,
           predicted: set | None, boot_) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One source's plausibility rows on the pairs it was run on, with unit counts, coverage and
    the intervals of the MDACE measures (granularity all, code set all); and its pair counts."""
    gold = E.restrict(gold_report, run_on)
    pred_frame = None if predicted is None else pd.DataFrame(sorted(predicted), columns=["note_id", "code"])
    tab = P.plausibility_table(gold, {name: spans}, docs, predicted_codes=pred_frame)
    units = _unit_counts(gold, predicted).rename(columns={"n_pairs_eligible": "_n"}).drop(columns="_n")
    eligible = _unit_counts(gold_report, predicted)[["granularity", "code_set", "n_pairs_eligible"]]
    tab = tab.merge(units, on=["granularity", "code_set"], how="left").merge(eligible, on=["granularity", "code_set"], how="left")
    tab["coverage"] = np.where(tab.n_pairs_eligible > 0, tab.n_pairs / tab.n_pairs_eligible.where(tab.n_pairs_eligible > 0, 1), 0.0)
    tab["scored_on"] = np.where(tab.n_pairs == tab.n_pairs_eligible, "all eligible pairs", "pairs it was run on")
    counts = E.pair_counts(gold, spans, docs)
    tab["f1_lo"], tab["f1_hi"] = np.nan, np.nan
    for m, part in counts.groupby("measure"):
        iv = E.interval(E.per_note(part), "f1", boot_)
        sel = (tab.measure == m) & (tab.granularity == "all") & (tab.code_set == "all")
        if iv is not None:
            tab.loc[sel, "f1_lo"], tab.loc[sel, "f1_hi"] = iv.lo, iv.hi
    return tab, counts


def plausibility_tables(ds, discrete: Mapping[str, pd.DataFrame], soft: pd.DataFrame, preds: pd.DataFrame,
                        profile: Profile, design=None, soft_seeds: pd.DataFrame | None = None) -> PlausibilityResult:
    """The paper's plausibility table on the report notes of the evaluation design.

    Every source is scored on the gold pairs of the report notes **it was run on** (``design``'s
    run-on pairs; a source run on a subset is never counted as missing elsewhere): ``n_notes``,
    ``n_pairs``, ``n_pairs_eligible``, ``coverage`` and ``scored_on`` say on what, and MDACE's
    measures carry a bootstrap interval over notes (``f1_lo``, ``f1_hi``). Each model's attention
    and gradient rationales are binarised with a threshold tuned on the tuning notes (grid
    0..``threshold_grid_max`` on the pair-normalised scores) and by top-k, then scored like spans;
    their soft measures (AUPRC, P@k, R@k, token P/R/F1 at the tuned threshold) are reported
    alongside. A random baseline has the entity spans' sizes placed at random. Model sources are
    also split by codes the model predicted vs missed. ``comparisons``: finding (a) from paired
    comparisons (LLM vs entity, entity vs top-k attention per model) on the pairs both have.

    ``soft_seeds``: notebook 03's rationales of the later training seeds' models (a ``seed``
    column; they explain the first seed's pairs): each is binarised by top-k
    (``plausibility.topk``) and counted on the same gold pairs (``seed_counts``), and finding (a)'s
    attention rows resample seeds and notes together (:func:`plausibility_verdicts`)."""
    from rationale_kit.metrics import evaluation as E
    from rationale_kit.metrics import plausibility as P

    pl = profile.plausibility
    design = design or evaluation_design(ds.docs, profile)
    boot_ = bootstrap(profile.evaluation)
    tune, report = set(design.tuning_ids), set(design.report_ids)
    docs = ds.docs[ds.docs.note_id.isin(set(design.eval_ids))]
    gold_all = ds.spans[ds.spans.note_id.isin(set(design.eval_ids))]
    gold = gold_all[gold_all.note_id.isin(report)]
    gold_tune = gold_all[gold_all.note_id.isin(tune)]
    on_test = lambda t: t[t.note_id.isin(report)]
    sources = {k: on_test(v) for k, v in discrete.items()}
    like = sources.get(ENTITY_EXACT.name, next(iter(sources.values()), gold))
    sources[RANDOM.name] = random_rationales(docs, like if len(like) else gold, profile.common.seed)
    rows, counts = [], []
    for name, spans in sources.items():
        tab, c = _score(P, E, gold, design.pairs(name), name, spans, docs, None, boot_)
        rows.append(tab.assign(model="-", binarisation="-"))
        counts.append(c.assign(source=name, model="-"))
    grid = P.default_grid(pl.threshold_grid_max, pl.threshold_grid_steps)
    soft_rows, thresholds = [], {}
    for (model, src), table in soft.groupby(["model", "source"]):
        run_on = design.pairs(src, model)
        t = P.tune_soft_threshold(table[table.note_id.isin(tune)], E.restrict(gold_tune, run_on), docs, grid)
        thresholds[(model, src)] = t
        test_scores = on_test(table)
        p_ = preds[(preds.model == model) & preds.pred]
        predicted = set(zip(p_.note_id.astype(str), p_.code.astype(str)))
        res = P.soft_plausibility(test_scores, E.restrict(gold, run_on), docs, threshold=t, ks=tuple(pl.topk))
        soft_rows.append({"model": model, "source": src, **res})
        binarised = {Source(parse_source(src).kind, f"threshold {t:.3f}").name: P.binarise(test_scores, threshold=t, docs=docs)}
        for k in pl.topk:
            binarised[parse_source(src).with_top_k(k).name] = P.binarise(test_scores, topk=k)
        for name, spans in binarised.items():
            tab, c = _score(P, E, gold, run_on, name, spans, docs, predicted, boot_)
            rows.append(tab.assign(model=model, binarisation=name.split("(")[-1].rstrip(")")))
            counts.append(c.assign(source=name, model=model))
    counts = pd.concat(counts, ignore_index=True)
    seed_counts = None
    if soft_seeds is not None and len(soft_seeds):
        parts = []
        for (model, src, seed), table in soft_seeds.groupby(["model", "source", "seed"], sort=True):
            run_on = design.pairs(src, model)  # the first seed's pairs: every seed explains them
            test_scores = on_test(table.drop(columns="seed"))
            for k in pl.topk:
                c = E.pair_counts(E.restrict(gold, run_on), P.binarise(test_scores, topk=k), docs)
                parts.append(c.assign(source=parse_source(src).with_top_k(k).name, model=model, seed=int(seed)))
        seed_counts = pd.concat(parts, ignore_index=True)
    return PlausibilityResult(pd.concat(rows, ignore_index=True), pd.DataFrame(soft_rows),
                              {f"{m}/{s}": v for (m, s), v in thresholds.items()}, counts,
                              plausibility_verdicts(counts, profile, ds.name, seed_counts=seed_counts), seed_counts)


def with_seed_counts(counts: pd.DataFrame, seed_counts: pd.DataFrame | None, source: str, model: str,
                     first_seed: int) -> pd.DataFrame:
    """The counts of ``source`` under ``model``: the first seed's (``counts``) and, when the model
    was trained under more seeds, theirs (``seed_counts``), with a ``seed`` column; the first seed's
    alone (no ``seed`` column) otherwise."""
    base = counts[(counts.source == source) & (counts.model == model)]
    if seed_counts is None or not len(seed_counts):
        return base
    extra = seed_counts[(seed_counts.source == source) & (seed_counts.model == model)]
    if not len(extra):
        return base
    return pd.concat([base.assign(seed=int(first_seed)), extra[[*base.columns, "seed"]]], ignore_index=True)


def plausibility_seed_spread(counts: pd.DataFrame, seed_counts: pd.DataFrame, first_seed: int,
                             measure: str = "token_position_independent") -> pd.DataFrame:
    """The spread across training seeds of ``measure`` F1 (pooled over the report-note gold pairs)
    of every source scored under several seeds (``seed_counts``' sources: top-k attention and
    gradients): per model and source, ``seeds``, ``mean``, ``std`` and ``n_pairs``."""
    from rationale_kit.metrics import evaluation as E

    rows = []
    for (model, source), _ in seed_counts.groupby(["model", "source"], sort=True):
        c = with_seed_counts(counts, seed_counts, source, model, first_seed)
        c = c[c.measure == measure]
        for seed, g in c.groupby("seed"):
            rows.append({"model": model, "source": source, "measure": measure, "seed": seed,
                         "value": E.prf(g[["tp", "fp", "fn"]].sum())["f1"], "n_pairs": len(g)})
    return E.seed_spread_table(pd.DataFrame(rows, columns=["model", "source", "measure", "seed", "value", "n_pairs"]),
                               ["model", "source", "measure"])


def plausibility_verdicts(counts: pd.DataFrame, profile: Profile, dataset: str,
                          measure: str = "token_position_independent", seed_counts: pd.DataFrame | None = None) -> pd.DataFrame:
    """Finding (a), plausibility LLM > entity > attention, from paired comparisons of ``measure``
    F1 on the pairs both sources were scored on: each LLM teacher vs exact-code entity spans, and
    entity spans vs each model's top-k attention (``rationales.topk``); a combined row per model.
    With ``seed_counts`` (the later training seeds' counts), a model trained under several seeds
    has its entity-vs-attention row resample seeds and notes together, the model-free entity
    spans pairing with every seed (:func:`~rationale_kit.metrics.evaluation.compare_counts`), and
    ``seed_sd`` gives the spread."""
    from rationale_kit.core.config import seeds as seeds_of
    from rationale_kit.metrics import evaluation as E

    boot_ = bootstrap(profile.evaluation)
    k = profile.rationales.topk
    att = ATTENTION.with_top_k(k).name
    if att not in set(counts.source):
        att = ATTENTION.with_top_k(profile.plausibility.topk[0]).name
    ent = ENTITY_EXACT.name
    get = lambda s, m="-": counts[(counts.source == s) & (counts.model == m)]
    rows, llm_rows = [], []
    for t in (teacher.name for teacher in TEACHERS):
        if (counts.source == t).any() and (counts.source == ent).any():
            r = E.verdict_row("a", f"{t} > {ent}", "-", dataset, measure, "report notes, pairs both were run on",
                              E.compare_counts(get(t), get(ent), boot_, measure=measure), "greater", boot_.min_notes)
            rows.append(r)
            llm_rows.append(r)
    models = sorted(set(counts.loc[counts.source == att, "model"]))
    for m in models:
        att_m = with_seed_counts(counts, seed_counts, att, m, seeds_of(profile)[0])
        n = E.n_seeds(att_m)
        units = "report notes, pairs both were run on" + (f" ({n} training seeds)" if n > 1 else "")
        r = E.verdict_row("a", f"{ent} > {att}", m, dataset, measure, units,
                          E.compare_counts(get(ent), att_m, boot_, measure=measure), "greater", boot_.min_notes)
        rows.append(r)
        rows.append(E.combined_row("a", "LLM > entity > attention (all of the above)", m, dataset, measure, llm_rows + [r]))
    return E.verdicts_frame(rows)
