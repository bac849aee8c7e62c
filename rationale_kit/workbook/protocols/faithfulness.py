"""Notebook 05's protocol: one set of pairs per model for every compared source,
comprehensiveness and sufficiency with random controls, the summary with intervals, finding (b)."""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
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


#: top-k attention with k matched per pair to the entity rationale's unit count
SIZE_MATCHED = Source("attention", "k = entity units")


def attention_size_matched_spans(soft: pd.DataFrame, model: str, reference: pd.DataFrame) -> pd.DataFrame:
    """The model's attention binarised per pair by its top-``k`` units, ``k`` = the number of the
    model's units (the attention rows' ``start, end``) that overlap the ``reference`` spans of that
    pair (the entity rationale's size in the model's units); pairs without a reference unit are
    left out. Spans as :func:`attention_topk_spans`, plus ``k``."""
    from rationale_kit.rationales import soft_to_spans

    sub = soft[(soft.source == "attention") & (soft.model == model)]
    ref = {key: g[["start", "end"]].to_numpy() for key, g in reference.groupby(["note_id", "code"], sort=False)}
    parts = []
    for (nid, code), g in sub.groupby(["note_id", "code"], sort=False):
        spans = ref.get((nid, code))
        if spans is None or not len(spans):
            continue
        st, en = g["start"].to_numpy()[:, None], g["end"].to_numpy()[:, None]
        k = int(((st < spans[None, :, 1]) & (en > spans[None, :, 0])).any(axis=1).sum())
        if k:
            parts.append(soft_to_spans(g, topk=k).assign(k=k))
    if not parts:
        return soft_to_spans(sub.iloc[:0], topk=1).assign(k=pd.Series(dtype="int64"))
    return pd.concat(parts, ignore_index=True)


def _code_set_pairs(name: str, model, docs: pd.DataFrame, preds: pd.DataFrame | None, code_set: str) -> set:
    """The (note, code) pairs of the faithfulness code set: the model's predicted codes (from
    ``preds``, notebook 02's predictions; computed here when None) or the gold codes it knows."""
    labels = set(model.labels)
    if code_set == "gold":
        return {(n, c) for n, cs in zip(docs.note_id, docs.codes) for c in cs if c in labels}
    if preds is None:  # the engine's threshold: model.threshold, 0.5 without one (a threshold of 0 stays 0)
        thr = getattr(model, "threshold", None)
        preds = predictions(model, docs, 0.5 if thr is None else float(thr)).assign(model=name)
    p = preds[(preds.model == name) & preds.pred & preds.note_id.isin(set(docs.note_id))]
    return set(zip(p.note_id.astype(str), p.code.astype(str)))


def seed_code_set_pairs(extra: Mapping[tuple[str, int], torch.nn.Module], docs: pd.DataFrame,
                        code_set: str) -> dict[str, set]:
    """Per model of ``extra`` (``{(model, seed): model}``, the training seeds after the first:
    :func:`~rationale_kit.workbook.protocols.train.extra_seed_models`), the (note, code) pairs of
    ``docs`` in the code set of **every** one of its later seeds' models (``faithfulness.code_set``:
    the codes each predicts; with ``"gold"`` the gold codes, the same under every seed). The
    engine scores a later seed's model only on the pairs of its own code set, so a pair outside
    this set drops out of finding (b)'s units (the pairs scored under every seed)."""
    out: dict[str, set] = {}
    for (name, _seed), model in extra.items():
        pairs = _code_set_pairs(name, model, docs, None, code_set)
        out[name] = pairs if name not in out else out[name] & pairs
    return out


def common_pairs(candidates: set, tables: Iterable[pd.DataFrame], docs: pd.DataFrame, max_pairs: int | None,
                 seed: int | None = None) -> list:
    """ONE set of pairs for every compared source: the ``candidates`` of the notes of ``docs`` that
    every table of ``tables`` has a rationale for, in note order (``docs``) then code (pairs of
    other notes are left out). With ``max_pairs``: the first ``max_pairs``
    of them (``seed`` None) or a sample of ``max_pairs`` drawn without replacement by
    ``numpy.random.default_rng(seed)`` from that ordered list (returned in the same order)."""
    common = set(candidates)
    for t in tables:
        common &= set(zip(t.note_id.astype(str), t.code.astype(str)))
    order = {n: i for i, n in enumerate(docs.note_id)}
    out = sorted((p for p in common if p[0] in order), key=lambda p: (order[p[0]], p[1]))
    if not max_pairs or len(out) <= max_pairs:
        return out
    if seed is None:
        return out[:max_pairs]
    pick = np.sort(np.random.default_rng(seed).choice(len(out), size=max_pairs, replace=False))
    return [out[i] for i in pick]


def faithfulness_tables(models_: Mapping[str, torch.nn.Module], docs: pd.DataFrame, discrete: Mapping[str, pd.DataFrame],
                        soft: pd.DataFrame, profile: Profile, device: str = "cpu", gold: pd.DataFrame | None = None,
                        preds: pd.DataFrame | None = None, design=None, pairs: Mapping[str, set] | None = None,
                        sources: Iterable[str] | None = None, scored: bool = True,
                        every_seed: Mapping[str, set] | None = None) -> pd.DataFrame:
    """Comprehensiveness and sufficiency of every source under every model (its own attention and
    gradients as scored rationales; the discrete sources and its top-k attention as span sets),
    each with a random control of the same size. One long table.

    Per model, ONE set of pairs is scored for every source: the pairs of the code set
    (``faithfulness.code_set``) of the report notes of ``design`` (every note of ``docs`` without
    one; never tuning notes with one) that both compared sources (top-k attention and exact-code
    entity spans) have, a seeded sample (``faithfulness.sample_seed``) of ``faithfulness.max_pairs``
    of them. With several training seeds, ``every_seed`` (``{model: pairs}``,
    :func:`seed_code_set_pairs`) narrows the candidates to the pairs in the code set of every later
    seed's model too, so the sample holds pairs finding (b) can compare under every seed and (b)
    gets ``max_pairs`` pairs whenever that many exist. Other sources are scored on the pairs of that set they have (e.g. LLM spans of the
    notes the LLM saw), so any two rows of a model are comparable on their common pairs. Beside
    them, the size control of finding (b): the model's attention with ``k`` matched per pair to
    the entity rationale's unit count (source :data:`SIZE_MATCHED`).

    Per model the engine is called once per kind (all discrete sources together, all scored
    sources for ERASER, all for Edin), the three calls sharing one ``NoteCache``, so each note is
    encoded and cached once per model.

    ``pairs`` (``{model: pairs}``): score these pairs instead of drawing them (an extra training
    seed on the first seed's sample: :func:`faithfulness_seed_tables`); ``sources``: keep only these
    span sources (display names); ``scored=False``: no ERASER / Edin runs of the soft rationales."""
    from rationale_kit.metrics.evaluation import restrict
    from rationale_kit.metrics import faithfulness

    f = profile.faithfulness
    k = profile.rationales.topk
    # the settings of each kind of run come from the profile section in one place (FaithfulnessSpec.from_profile)
    spec = lambda kind, name: faithfulness.FaithfulnessSpec.from_profile(f, kind, seed=profile.common.seed,
                                                                         progress=profile.common.progress, model_name=name)
    gold_map = None
    if f.code_set == "gold":
        gold_map = docs[["note_id", "codes"]]
    parts = []
    if design is not None:
        docs = docs[docs.note_id.isin(set(design.report_ids))].reset_index(drop=True)
    note_ids = set(docs.note_id)
    for name, model in models_.items():
        if f.models is not None and name not in f.models:
            continue
        shared = dict(gold=gold_map, device=device, cache=faithfulness.NoteCache())  # each note encoded once for the three calls
        spans = dict(discrete)
        spans[ATTENTION.with_top_k(k).name] = attention_topk_spans(soft, name, k)
        compared = [spans[s.name] for s in compared_sources(k) if s.name in spans and len(spans[s.name])]
        if pairs is not None and name in pairs:
            chosen = {p for p in pairs[name] if p[0] in note_ids}
        else:
            candidates = _code_set_pairs(name, model, docs, preds, f.code_set)
            if every_seed is not None and name in every_seed:
                candidates &= every_seed[name]
            chosen = set(common_pairs(candidates, compared, docs, f.max_pairs, f.sample_seed))
        ent = spans.get(ENTITY_EXACT.name)
        if ent is not None and len(ent):
            spans[SIZE_MATCHED.name] = attention_size_matched_spans(soft[soft.note_id.isin(note_ids)], name,
                                                                    restrict(ent, chosen))
        if sources is not None:
            keep = set(sources)
            spans = {src: table for src, table in spans.items() if src in keep}
        tables = [restrict(table[table.note_id.isin(note_ids)], chosen).assign(source=src)
                  for src, table in spans.items()]
        tables = [t for t in tables if len(t)]
        if tables:
            parts.append(faithfulness.run_spec(model, docs, pd.concat(tables, ignore_index=True), spec("discrete", name),
                                               **shared))
        own = restrict(soft[(soft.model == name) & soft.note_id.isin(note_ids)], chosen) if scored else soft.iloc[:0]
        if len(own):
            parts.append(faithfulness.run_spec(model, docs, own, spec("eraser", name), **shared))
            parts.append(faithfulness.run_spec(model, docs, own, spec("edin", name), **shared))
    return pd.concat(parts, ignore_index=True)


def seed_sources(k: int) -> tuple[str, ...]:
    """The span sources an extra training seed is scored on: those finding (b) compares (top-``k``
    attention, exact-code entity spans, size-matched attention; :func:`attention_vs_entity`)."""
    return (*(s.name for s in compared_sources(k)), SIZE_MATCHED.name)


def faithfulness_seed_tables(extra: Mapping[tuple[str, int], torch.nn.Module], docs: pd.DataFrame,
                             discrete: Mapping[str, pd.DataFrame], soft_seeds: pd.DataFrame, first: pd.DataFrame,
                             profile: Profile, device: str = "cpu", design=None) -> pd.DataFrame:
    """Finding (b)'s sources under the models of the training seeds after the first (``extra``:
    ``{(model, seed): model}``, notebook 02's ``<model>_seed<N>``), with their own attention
    (``soft_seeds``: notebook 03's rationales of those models, a ``seed`` column), on the pairs the
    first seed's model was scored on (``first``: its :func:`faithfulness_tables` rows; the seeded
    sample is drawn once, so every seed is scored on the same pairs): :func:`seed_sources` only,
    with their random controls, no ERASER / Edin curves. The rows of :func:`faithfulness_tables`
    plus ``seed``."""
    k = profile.rationales.topk
    att = compared_sources(k)[0].name
    parts = []
    for (name, seed), model in extra.items():
        done = first[(first.model == name) & (first.source == att)]
        chosen = set(zip(done.note_id.astype(str), done.code.astype(str)))
        if not chosen:
            continue
        soft_s = soft_seeds[(soft_seeds.seed == seed) & (soft_seeds.model == name)].drop(columns="seed")
        t = faithfulness_tables({name: model}, docs, discrete, soft_s, profile, device, design=design,
                                pairs={name: chosen}, sources=seed_sources(k), scored=False)
        parts.append(t.assign(seed=int(seed)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def with_first_seed(rows: pd.DataFrame, seed_rows: pd.DataFrame | None, first_seed: int) -> pd.DataFrame:
    """The first seed's rows (no ``seed`` column) and the extra seeds' (``seed_rows``) in one table
    with a ``seed`` column; ``rows`` unchanged when there are no extra seeds."""
    if seed_rows is None or not len(seed_rows):
        return rows
    return pd.concat([rows.assign(seed=int(first_seed)), seed_rows], ignore_index=True)


def faithfulness_seed_spread(agg: pd.DataFrame, seed_rows: pd.DataFrame, first_seed: int) -> pd.DataFrame:
    """The spread across training seeds of the faithfulness table: per model, source and measure of
    the sources scored under every seed (:func:`seed_sources`), the mean over pairs of the
    rationale and of rationale minus its random control under each seed, then their ``mean`` and
    ``std`` across seeds (``seeds``, ``n_pairs``). ``agg``: the first seed's per-pair rows (``k``
    NaN), ``seed_rows``: the extra seeds' (:func:`faithfulness_seed_tables`)."""
    from rationale_kit.metrics import evaluation as E

    both = with_first_seed(agg, seed_rows[seed_rows.k.isna()], first_seed)
    both = both[both.source.isin(set(seed_rows.source)) & both.model.isin(set(seed_rows.model))]
    keys = ["model", "source", "measure", "seed"]
    per_pair = both.groupby(keys + ["note_id", "code", "control"])["value"].mean().unstack("control")
    rows = []
    for key, g in per_pair.groupby(level=list(range(len(keys)))):
        rat = g["rationale"].dropna()
        diff = (g["rationale"] - g["random"]).dropna() if "random" in g else rat.iloc[:0]
        rows.append({**dict(zip(keys, key)), "n_pairs": len(rat), "rationale": rat.mean() if len(rat) else np.nan,
                     "difference": diff.mean() if len(diff) else np.nan})
    per_seed = pd.DataFrame(rows)
    out = []
    for what in ("rationale", "difference"):
        t = E.seed_spread_table(per_seed.rename(columns={what: "value"}), ["model", "source", "measure"])
        out.append(t.assign(value=what))
    return pd.concat(out, ignore_index=True)[["model", "source", "measure", "value", "seeds", "mean", "std", "n_pairs"]]


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


def attention_vs_entity(agg: pd.DataFrame, k: int, profile: Profile, dataset: str = "",
                        seed_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Finding (b) per model: top-k attention more comprehensive than exact-code entity spans, and
    entity spans more sufficient (lower sufficiency), each from a paired comparison on the pairs
    both sources were scored on (means over those pairs, difference attention - entity, paired
    interval over notes, verdict), under three ``control`` values:

    * ``raw``: the paper's comparison (top-k attention vs entity spans, whatever their sizes);
    * ``minus_random``: each rationale's value minus its random control of the same size (per pair);
    * ``size_matched``: attention with ``k`` matched per pair to the entity rationale's unit count
      (:data:`SIZE_MATCHED`) vs entity spans.

    A combined row per model and control. ``agg``: per-pair rows (``k`` NaN, ``control`` rationale
    and random). ``seed_rows``: the same rows under the models of the later training seeds
    (:func:`faithfulness_seed_tables`, a ``seed`` column): a model scored under several seeds is
    compared on the pairs every seed has, the interval resampling seeds and notes together
    (:func:`~rationale_kit.metrics.evaluation.compare_values_seeds`), with ``seed_sd``."""
    from rationale_kit.core.config import seeds as seeds_of
    from rationale_kit.metrics import evaluation as E

    att, ent = (s.name for s in compared_sources(k))
    boot_ = bootstrap(profile.evaluation)
    rows = []
    if seed_rows is not None and len(seed_rows):
        agg = with_first_seed(agg, seed_rows[seed_rows.k.isna()], seeds_of(profile)[0])
    cols = ["note_id", "code", "value"]

    def values(part, source, measure, control="rationale"):
        return part[(part.source == source) & (part.measure == measure) & (part.control == control)][cols]

    def minus_random(part, source, measure):
        keys = cols[:2] + cols[3:]
        r = values(part, source, measure).groupby(keys)["value"].mean()
        c = values(part, source, measure, "random").groupby(keys)["value"].mean()
        return r.sub(c).dropna().rename("value").reset_index()

    for model, part in agg.groupby("model"):
        n_seeds = E.n_seeds(part)
        if "seed" in part.columns and n_seeds == 1:
            part = part.drop(columns="seed")
        cols = ["note_id", "code", "value"] + (["seed"] if "seed" in part.columns else [])
        units = "report-note pairs both were scored on (seeded sample)"
        if n_seeds > 1:
            units = f"report-note pairs both were scored on under every training seed (seeded sample; {n_seeds} training seeds)"
        for control in ("raw", "minus_random", "size_matched"):
            a_src = SIZE_MATCHED.name if control == "size_matched" else att
            if not ((part.source == a_src) & (part.control == "rationale")).any():
                continue
            pair = []
            for measure, claim in (("comprehensiveness", "attention more comprehensive"), ("sufficiency", "entity more sufficient")):
                if control == "minus_random":
                    a_v, b_v = minus_random(part, att, measure), minus_random(part, ent, measure)
                    text = f"{claim} ({measure}, each minus its random control of the same size: {att} - {ent})"
                else:
                    a_v, b_v = values(part, a_src, measure), values(part, ent, measure)
                    text = f"{claim} ({measure}: {a_src} - {ent})"
                res = E.compare_values(a_v, b_v, boot_)
                r = E.verdict_row("b", text, model, dataset, measure, units, res, "greater", boot_.min_notes, control)
                rows.append(r)
                pair.append(r)
            rows.append(E.combined_row("b", f"attention more comprehensive, entity more sufficient ({control})", model,
                                       dataset, "both", pair, control))
    return E.verdicts_frame(rows)
