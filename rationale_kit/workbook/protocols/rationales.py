"""Notebook 03's protocol: the pairs to explain, model (attention/gradient), entity-linking and
LLM rationales, the random baseline, and the pairs each source was run on."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from rationale_kit.core.config import Profile
from rationale_kit.core.sources import RANDOM, Source
from rationale_kit.core.records import SPAN_COLUMNS
from rationale_kit.workbook.protocols.data import eval_docs


def pairs_to_explain(docs: pd.DataFrame, preds: pd.DataFrame, code_set: str = "both") -> pd.DataFrame:
    """(note_id, code, is_gold, is_predicted, model) pairs to explain, per model."""
    from rationale_kit.rationales import codes_for_rationales

    parts = []
    for name, p in preds.groupby("model"):
        sub = p[p.note_id.isin(docs.note_id)]
        pairs = codes_for_rationales(docs, sub[["note_id", "code", "prob", "pred"]], code_set)
        parts.append(pairs.assign(model=name))
    return pd.concat(parts, ignore_index=True)


def model_rationales(models_: Mapping[str, torch.nn.Module], docs: pd.DataFrame, pairs: pd.DataFrame,
                     profile: Profile, device: str = "cpu") -> tuple[pd.DataFrame, dict]:
    """Attention and gradient rationales of every model for its pairs; returns the soft table and a
    report of missing codes and integrated-gradients completeness."""
    from rationale_kit.rationales import attention_rationales, gradient_rationales

    r = profile.rationales
    tables, report = [], {}
    for name, model in models_.items():
        p = pairs[pairs.model == name][["note_id", "code"]]
        t0 = time.time()
        att = attention_rationales(model, docs, p, source="attention", model_name=name,
                                   batch_size=r.attention_batch_size, device=device, progress=profile.common.progress)
        tables.append(att.table)
        diag = None
        with_gradient = "gradient" in r.sources and (r.gradient_models is None or name in r.gradient_models)
        if with_gradient:
            grad = gradient_rationales(model, docs, p, method=r.gradient_method, steps=r.ig_steps, source="gradient",
                                       model_name=name, device=device, progress=profile.common.progress)
            tables.append(grad.table)
            diag = grad.diagnostics
        report[name] = {"pairs": int(len(p)), "missing_codes": int(att.n_missing), "seconds": round(time.time() - t0, 1),
                        "gradient": r.gradient_method if with_gradient else
                        f"not computed (rationales.{'gradient_models' if 'gradient' in r.sources else 'sources'})"}
        if diag is not None and len(diag) and "rel_error" in diag:
            report[name]["ig_completeness_rel_error_median"] = float(np.nanmedian(diag["rel_error"]))
    return pd.concat(tables, ignore_index=True), report


def seed_rationales(extra: Mapping[tuple[str, int], torch.nn.Module], docs: pd.DataFrame, pairs: pd.DataFrame,
                    profile: Profile, device: str = "cpu") -> pd.DataFrame:
    """:func:`model_rationales` of the models of the training seeds after the first (``extra``:
    ``{(model, seed): model}``, :func:`~rationale_kit.workbook.protocols.train.extra_seed_models`)
    on the pairs the first seed's model explains (``pairs``: its :func:`pairs_to_explain` rows, so
    every seed is scored on the same units and the design's run-on pairs hold for all of them):
    the soft table plus ``seed``. Entity and LLM rationales do not depend on the model and are
    not computed again."""
    parts = []
    for (name, seed), model in extra.items():
        soft_s, _ = model_rationales({name: model}, docs, pairs, profile, device)
        parts.append(soft_s.assign(seed=int(seed)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def run_entity_linking(docs: pd.DataFrame, pairs: pd.DataFrame, codes: pd.DataFrame, profile: Profile,
                      cache_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Entity-linking rationales for the pairs (model-independent). Returns ``(spans, mentions)``;
    ``mentions`` lists every mention found, filtered ones with their reason. Without "entity" in
    ``rationales.sources`` both tables are empty (the linker is not run)."""
    from rationale_kit.rationales.entity import EntityLinker, entity_rationales, link_documents

    r = profile.rationales
    if "entity" not in r.sources:
        print("entity rationales: not computed ('entity' is not in rationales.sources)")
        docs, pairs = docs.iloc[:0], pairs.iloc[:0]
    linker = EntityLinker(sorted(codes.code), kb_cache_dir=cache_dir, fuzzy_threshold=r.entity_fuzzy_threshold,
                          descriptions=dict(zip(codes.code, codes.description)),
                          negation_window=r.entity_negation_window, filter_historical=r.entity_filter_historical)
    mentions = link_documents(docs, linker)
    spans = entity_rationales(docs, pairs[["note_id", "code"]].drop_duplicates(), linker, mentions=mentions)
    return spans, mentions


def llm_requests(ds, docs: pd.DataFrame, shots: int, profile: Profile):
    """Requests for ``docs`` (gold codes with descriptions); with ``shots > 0`` each prompt holds up
    to ``shots`` human-annotated examples per code from the few-shot pool (never an evaluated note):
    their spans with ``rationales.llm.example_context_chars`` characters of context."""
    from rationale_kit.rationales import llm

    desc = dict(zip(ds.codes.code, ds.codes.description))
    examples = []
    if shots > 0:
        pool = ds.docs[ds.docs.fewshot]
        pool_spans = ds.spans[ds.spans.note_id.isin(pool.note_id)]
        codes = sorted({c for cs in docs.codes for c in cs})
        examples = llm.select_examples(pool, pool_spans, codes, shots, seed=profile.common.seed,
                                       exclude=set(eval_docs(ds.docs).note_id) | set(docs.note_id), descriptions=desc,
                                       window=profile.rationales.llm.example_context_chars)
    return llm.make_requests(docs, desc, examples, version=profile.rationales.llm.prompt_version,
                             max_note_chars=profile.rationales.llm.max_note_chars)


def llm_rationales(ds, docs: pd.DataFrame, profile: Profile, cache_dir: Path,
                   teachers: Mapping[str, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quotes of every teacher (``{"llm_zero": 0, "llm_few": k}``: name -> shots per code) for the
    notes of ``docs``, through the disk cache (a rerun makes no new calls). Returns (quotes, calls)
    with a ``source`` column naming the teacher. Teachers not in ``rationales.sources`` are not asked."""
    from rationale_kit.rationales import llm

    skipped = [t for t in teachers if t not in profile.rationales.sources]
    if skipped:
        print(f"LLM teachers not asked ({', '.join(skipped)} not in rationales.sources)")
    teachers = {t: k for t, k in teachers.items() if t in profile.rationales.sources}
    if not teachers:
        return (pd.DataFrame(columns=[*llm.ANSWER_COLUMNS, "source", "shots"]),
                pd.DataFrame(columns=[*llm.CALL_COLUMNS, "source", "shots"]))
    cfg = profile.rationales.llm
    credentialed = llm.is_credentialed(profile, docs)  # from the profile and data source, not a column alone
    backend = llm.make_backend(cfg, credentialed=credentialed)
    quotes, calls = [], []
    for teacher, shots in teachers.items():
        reqs = llm_requests(ds, docs, shots, profile)
        answers, c = llm.run_llm(
            reqs, backend, cache_dir=cache_dir, concurrency=cfg.concurrency, max_retries=cfg.max_retries,
            credentialed=credentialed, allow_remote_credentialed_data=cfg.allow_remote_credentialed_data,
            progress=profile.common.progress, backoff_base_s=cfg.backoff_base_s, backoff_max_s=cfg.backoff_max_s,
            requests_per_minute=cfg.requests_per_minute, record=cfg.record_file,
            max_answer_chars=cfg.max_answer_chars, max_quotes_per_code=cfg.max_quotes_per_code,
        )
        quotes.append(answers.assign(source=teacher, shots=shots))
        calls.append(c.assign(source=teacher, shots=shots))
    return pd.concat(quotes, ignore_index=True), pd.concat(calls, ignore_index=True)


def llm_plan(ds, docs: pd.DataFrame, profile: Profile, cache_dir: Path, teachers: Mapping[str, int]) -> pd.DataFrame:
    """The dry run of :func:`llm_rationales`, before any call: per teacher and in total, the calls
    still to make (cached answers left out), input and output tokens (``input_count``: the
    backend's tokenizer, or an estimate) and the cost from the profile's prices. Sends nothing."""
    from rationale_kit.rationales import llm

    cfg = profile.rationales.llm
    backend = llm.plan_backend(cfg, credentialed=llm.is_credentialed(profile, docs))
    rows = [{"teacher": t, **llm.plan_llm(llm_requests(ds, docs, shots, profile), backend, cache_dir,
                                          cfg.price_per_million_in, cfg.price_per_million_out)}
            for t, shots in teachers.items()]
    return llm.plan_table(rows)


def random_rationales(docs: pd.DataFrame, like: pd.DataFrame, seed: int, source: str = "random") -> pd.DataFrame:
    """A random baseline: for each (note, code) of ``like``, spans of the same number and lengths
    placed uniformly at random in the note."""
    rng = np.random.default_rng(seed)
    lengths = dict(zip(docs.note_id, docs.text.str.len()))
    rows = []
    for r in like.itertuples(index=False):
        n = lengths[r.note_id]
        size = int(r.end - r.start)
        start = int(rng.integers(0, max(1, n - size)))
        rows.append((r.note_id, r.code, start, min(n, start + size), "", source))
    return pd.DataFrame(rows, columns=SPAN_COLUMNS)


def record_run_on(design, pairs: pd.DataFrame, soft: pd.DataFrame, entity_methods: Iterable[str],
                  llm_docs: pd.DataFrame | None, teachers: Iterable[str]):
    """The design with the pairs every source of notebook 03 was run on: each model's attention
    (and gradient, where computed) on that model's pairs; entity linking (per method) on every
    pair; each LLM teacher on every gold code of the evaluation notes it was sent."""
    from rationale_kit.metrics import evaluation as E

    parts = []
    for (model, source) in sorted(set(zip(soft.model, soft.source))) if len(soft) else []:
        parts.append(E.run_on_frame(source, pairs[pairs.model == model], model=model))
    every = pairs[["note_id", "code"]].drop_duplicates()
    for m in entity_methods:
        parts.append(E.run_on_frame(Source("entity", m).name, every))
    if "exact_code" in set(entity_methods):  # the random baseline has the exact-code spans' sizes
        parts.append(E.run_on_frame(RANDOM.name, every))
    if llm_docs is not None:
        sent = llm_docs[llm_docs.note_id.isin(set(design.eval_ids))]
        for t in teachers:
            parts.append(E.llm_run_on(sent, t))
    return design.with_run_on(pd.concat(parts, ignore_index=True)) if parts else design
