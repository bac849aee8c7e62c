"""Notebook 05's protocol: one set of pairs per model for every compared source,
comprehensiveness and sufficiency with random controls, the summary with intervals, finding (b)."""
from __future__ import annotations

from typing import Iterable, Mapping

import pandas as pd
import torch

from rationale_kit.core.config import Profile
from rationale_kit.core.sources import ATTENTION, ENTITY_EXACT, Source
from rationale_kit.workbook.protocols.common import bootstrap
from rationale_kit.workbook.protocols.train import predictions


def attention_topk_spans(soft: pd.DataFrame, model: str, k: int) -> pd.DataFrame:
    """The model's attention binarised by its top-``k`` units per pair, as spans."""
    from rationale_kit.rationales import soft_to_spans

    sub = soft[(soft.source == "attention") & (soft.model == model)]
    return soft_to_spans(sub, topk=k)


def compared_sources(k: int) -> tuple[Source, Source]:
    """The sources finding (b) compares: the model's attention cut to its top-``k`` units and the
    exact-code entity spans."""
    return ATTENTION.with_top_k(k), ENTITY_EXACT


def _code_set_pairs(name: str, model, docs: pd.DataFrame, preds: pd.DataFrame | None, code_set: str) -> set:
    """The (note, code) pairs of the faithfulness code set: the model's predicted codes (from
    ``preds``, notebook 02's predictions; computed here when None) or the gold codes it knows."""
    labels = set(model.labels)
    if code_set == "gold":
        return {(n, c) for n, cs in zip(docs.note_id, docs.codes) for c in cs if c in labels}
    if preds is None:
        preds = predictions(model, docs, float(getattr(model, "threshold", 0.5) or 0.5)).assign(model=name)
    p = preds[(preds.model == name) & preds.pred & preds.note_id.isin(set(docs.note_id))]
    return set(zip(p.note_id.astype(str), p.code.astype(str)))


def common_pairs(candidates: set, tables: Iterable[pd.DataFrame], docs: pd.DataFrame, max_pairs: int | None) -> list:
    """ONE set of pairs for every compared source: the ``candidates`` every table of ``tables`` has
    a rationale for, in note order (``docs``) then code, the first ``max_pairs`` of them."""
    common = set(candidates)
    for t in tables:
        common &= set(zip(t.note_id.astype(str), t.code.astype(str)))
    order = {n: i for i, n in enumerate(docs.note_id)}
    out = sorted(common, key=lambda p: (order.get(p[0], len(order)), p[1]))
    return out[:max_pairs] if max_pairs else out


def faithfulness_tables(models_: Mapping[str, torch.nn.Module], docs: pd.DataFrame, discrete: Mapping[str, pd.DataFrame],
                        soft: pd.DataFrame, profile: Profile, device: str = "cpu", gold: pd.DataFrame | None = None,
                        preds: pd.DataFrame | None = None) -> pd.DataFrame:
    """Comprehensiveness and sufficiency of every source under every model (its own attention and
    gradients as scored rationales; the discrete sources and its top-k attention as span sets),
    each with a random control of the same size. One long table.

    Per model, ONE set of pairs is scored for every source: the pairs of the code set
    (``faithfulness.code_set``) that both compared sources (top-k attention and exact-code entity
    spans) have, the first ``faithfulness.max_pairs`` of them. Other sources are scored on the pairs
    of that set they have (e.g. LLM spans of the notes the LLM saw), so any two rows of a model
    are comparable on their common pairs.

    Per model the engine is called once per kind (all discrete sources together, all scored
    sources for ERASER, all for Edin), the three calls sharing one ``NoteCache``, so each note is
    encoded and cached once per model."""
    from rationale_kit.metrics.evaluation import restrict
    from rationale_kit.metrics import faithfulness

    f = profile.faithfulness
    k = profile.rationales.topk
    common = dict(perturbation=f.perturbation, code_set=f.code_set, batch_size=f.batch_size, device=device,
                  seed=profile.common.seed, progress=profile.common.progress, max_pairs=None)
    gold_map = None
    if f.code_set == "gold":
        gold_map = docs[["note_id", "codes"]]
    parts = []
    note_ids = set(docs.note_id)
    for name, model in models_.items():
        if f.models is not None and name not in f.models:
            continue
        shared = dict(common, cache=faithfulness.NoteCache())  # each note encoded once for the three calls
        spans = dict(discrete)
        spans[ATTENTION.with_top_k(k).name] = attention_topk_spans(soft, name, k)
        compared = [spans[s.name] for s in compared_sources(k) if s.name in spans and len(spans[s.name])]
        chosen = set(common_pairs(_code_set_pairs(name, model, docs, preds, f.code_set), compared, docs, f.max_pairs))
        tables = [restrict(table[table.note_id.isin(note_ids)], chosen).assign(source=src)
                  for src, table in spans.items()]
        tables = [t for t in tables if len(t)]
        if tables:
            parts.append(faithfulness.faithfulness_discrete(model, docs, pd.concat(tables, ignore_index=True), unit=f.unit,
                                                 model_name=name, missing=f.missing, gold=gold_map, **shared))
        own = restrict(soft[(soft.model == name) & soft.note_id.isin(note_ids)], chosen)
        if len(own):
            parts.append(faithfulness.faithfulness_scored(model, docs, own, aopc_k=tuple(f.aopc_k), variant="eraser",
                                               unit=f.unit, model_name=name, gold=gold_map, **shared))
            parts.append(faithfulness.faithfulness_scored(model, docs, own, variant="edin", unit=f.edin_unit,
                                               word_steps=f.word_steps, model_name=name, gold=gold_map, **shared))
    return pd.concat(parts, ignore_index=True)


def faithfulness_summary(agg: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """The faithfulness table: per model, source and measure the mean over pairs of the rationale
    and of its random control, their difference, ``n_pairs`` and ``n_notes``, and bootstrap
    intervals over notes of the rationale mean (``rationale_lo/hi``) and of the difference
    (``difference_lo/hi``, paired: the control is on the same pairs). ``agg``: the per-pair rows
    (``k`` NaN) of :func:`faithfulness_tables`."""
    from rationale_kit.metrics import evaluation as E
    from rationale_kit.metrics import faithfulness

    boot_ = bootstrap(profile.evaluation)
    keys = ["model", "source", "measure"]
    summary = faithfulness.summarise(agg, by=keys + ["control"], wide=True)
    extra = []
    for key, part in agg.groupby(keys, sort=True):
        rat = part[part.control == "rationale"]
        row = dict(zip(keys, key), n_pairs=int(rat[["note_id", "code"]].drop_duplicates().shape[0]),
                   n_notes=int(rat.note_id.nunique()))
        per = rat.groupby("note_id")["value"].agg(sum="sum", count="count")
        E.with_interval(row, E.interval(per, "mean", boot_), "rationale_")
        rnd = part[part.control == "random"].groupby(["note_id", "code"])["value"].mean()
        diff = rat.groupby(["note_id", "code"])["value"].mean().sub(rnd).dropna()
        per_d = diff.groupby(level=0).agg(sum="sum", count="count")
        E.with_interval(row, E.interval(per_d, "mean", boot_) if len(per_d) else None, "difference_")
        extra.append(row)
    return summary.merge(pd.DataFrame(extra), on=keys, how="left")


def attention_vs_entity(agg: pd.DataFrame, k: int, profile: Profile, dataset: str = "") -> pd.DataFrame:
    """Finding (b) per model: top-k attention more comprehensive than exact-code entity spans, and
    entity spans more sufficient (lower sufficiency), each from a paired comparison on the pairs
    both sources were scored on (means over those pairs, difference attention - entity, paired
    bootstrap interval over notes, verdict); a combined row per model. ``agg``: per-pair rows."""
    from rationale_kit.metrics import evaluation as E

    att, ent = (s.name for s in compared_sources(k))
    boot_ = bootstrap(profile.evaluation)
    rows = []
    rat = agg[agg.control == "rationale"]
    for model, part in rat.groupby("model"):
        pair = []
        for measure, claim in (("comprehensiveness", "attention more comprehensive"), ("sufficiency", "entity more sufficient")):
            get = lambda s: part[(part.source == s) & (part.measure == measure)][["note_id", "code", "value"]]
            res = E.compare_values(get(att), get(ent), boot_)
            r = E.verdict_row("b", f"{claim} ({measure}: {att} - {ent})", model, dataset, measure,
                              "pairs both were scored on", res, "greater")
            rows.append(r)
            pair.append(r["verdict"])
        rows.append({"finding": "b", "comparison": "attention more comprehensive, entity more sufficient", "model": model,
                     "dataset": dataset, "measure": "both", "units": "as above", "verdict": E.combine(pair)})
    return E.verdicts_frame(rows)
