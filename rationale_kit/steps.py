"""The notebooks' steps: one function per step, so every notebook cell stays short.

Each function reads and writes the canonical tables (documents, span tables, score tables) and the
profile's parameters; nothing here is specific to one data set.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from .config import Profile
from .records import SPAN_COLUMNS


# --------------------------------------------------------------------------------------------
# splits of the data
# --------------------------------------------------------------------------------------------
def label_space(docs: pd.DataFrame) -> list[str]:
    """The codes the models predict: every code of a training note, sorted."""
    return sorted({c for cs in docs.loc[docs.split == "train", "codes"] for c in cs})


def eval_docs(docs: pd.DataFrame) -> pd.DataFrame:
    """Annotated test notes: where rationales are evaluated (never few-shot examples)."""
    sel = docs.annotated & ~docs.fewshot & (docs.split == "test")
    if not sel.any():  # data sets whose annotated notes are not in test (e.g. MDACE on val)
        sel = docs.annotated & ~docs.fewshot
    return docs[sel].reset_index(drop=True)


def tuning_ids(docs: pd.DataFrame, fraction: float = 0.25) -> set[str]:
    """A deterministic ``fraction`` of the evaluation notes reserved for tuning thresholds of soft
    rationales (chosen by a hash of the note id). Reported numbers use the other notes."""
    ids = sorted(eval_docs(docs).note_id)
    ranked = sorted(ids, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    return set(ranked[: int(round(fraction * len(ids)))])


# --------------------------------------------------------------------------------------------
# 02: training
# --------------------------------------------------------------------------------------------
def fit_model(name: str, profile: Profile, docs: pd.DataFrame, labels: list[str], out_dir: Path,
              device: str = "cpu", rationale_targets: dict | None = None, lam: float = 0.0,
              loss: str = "kl", epochs: int | None = None, init_from: Path | None = None,
              max_train_docs: int | None = None):
    """Build (seeded) and train model ``name`` with the profile's parameters; resumable in
    ``out_dir``. ``init_from``: start from a saved model (a ``.../model`` folder) instead of a
    fresh one; ``max_train_docs`` overrides the profile's cap on training notes. Returns the
    :class:`~rationale_kit.training.TrainResult`; the best model is saved to ``out_dir / "model"``."""
    from . import models, training

    params = getattr(profile.train, name)
    torch.manual_seed(profile.common.seed)
    train = docs[docs.split == "train"]
    cap = max_train_docs or params.max_train_docs or profile.train.max_train_docs
    if cap:
        train = train.head(cap)
    if init_from is not None:
        model, _ = models.load(init_from)
    else:
        w2v = profile.train.word2vec if name != "plm_icd" else None
        if w2v is not None and w2v.dim != params.embed_dim:
            w2v = type(w2v)(**{**w2v.__dict__, "dim": params.embed_dim})
        model = models.build_model(name, params, labels, train_texts=train.text, w2v=w2v,
                                   max_words=profile.data.max_words, seed=profile.common.seed)
    result = training.train_model(
        model, train, docs[docs.split == "val"], params, profile.train, out_dir, device=device,
        progress=profile.common.progress, rationale_targets=rationale_targets, lam=lam,
        rationale_loss=loss, epochs=epochs, seed=profile.common.seed,
    )
    models.save(result.model, Path(out_dir) / "model", threshold=result.threshold,
                extra={"best_epoch": result.best_epoch, "lam": lam, "loss": loss})
    return result


def predictions(model, docs: pd.DataFrame, threshold: float, device: str = "cpu", batch_size: int = 16) -> pd.DataFrame:
    """Long table ``note_id, code, prob, pred, is_gold`` for every (note, label) of ``docs``."""
    from .training import predict_probs

    probs = predict_probs(model, docs, batch_size=batch_size, device=device)
    labels = np.array(model.labels)
    gold = [set(c) for c in docs.codes]
    rows = pd.DataFrame({
        "note_id": np.repeat(docs.note_id.to_numpy(), len(labels)),
        "code": np.tile(labels, len(docs)),
        "prob": probs.reshape(-1),
    })
    rows["pred"] = rows.prob > threshold
    rows["is_gold"] = [c in g for c, g in zip(rows.code, np.repeat(gold, len(labels)))]
    return rows


def coding_table(pred_frames: Mapping[str, pd.DataFrame], docs: pd.DataFrame, labels: list[str],
                 thresholds: Mapping[str, float]) -> pd.DataFrame:
    """The coding table on the test notes: one row per model plus the frequency baseline."""
    from .metrics import coding

    test = docs[docs.split == "test"]
    y = coding.label_matrix(test.codes, labels)
    rows = {}
    base = coding.frequency_baseline(docs.loc[docs.split == "train", "codes"], labels, len(test))
    val = docs[docs.split == "val"]
    base_val = coding.frequency_baseline(docs.loc[docs.split == "train", "codes"], labels, len(val))
    t_base, _ = coding.tune_threshold(coding.label_matrix(val.codes, labels), base_val)
    rows["frequency baseline"] = coding.coding_report(y, base, t_base)
    for name, frame in pred_frames.items():
        p = frame.pivot(index="note_id", columns="code", values="prob").reindex(index=test.note_id, columns=labels).to_numpy()
        rows[name] = coding.coding_report(y, p, thresholds[name])
    table = pd.DataFrame(rows).T
    keep = ["micro_f1", "micro_precision", "micro_recall", "macro_f1_mean", "macro_f1_harmonic",
            "p@5", "p@8", "r@8", "p@15", "r@15", "r_precision", "map", "micro_auc", "macro_auc", "threshold"]
    return table[[k for k in keep if k in table.columns]]


def load_models(train_dir: Path, names: Iterable[str], device: str = "cpu") -> dict:
    """Trained models saved by notebook 02 (``train_dir/<name>/model``), in eval mode."""
    from . import models

    out = {}
    for name in names:
        model, info = models.load(Path(train_dir) / name / "model", device=device)
        model.eval()
        out[name] = model
    return out


# --------------------------------------------------------------------------------------------
# 03: rationales
# --------------------------------------------------------------------------------------------
def rationale_pairs(docs: pd.DataFrame, preds: pd.DataFrame, code_set: str = "both") -> pd.DataFrame:
    """(note_id, code, is_gold, is_predicted, model) pairs to explain, per model."""
    from .rationales import codes_for_rationales

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
    from .rationales import attention_rationales, gradient_rationales

    r = profile.rationales
    tables, report = [], {}
    for name, model in models_.items():
        p = pairs[pairs.model == name][["note_id", "code"]]
        t0 = time.time()
        att = attention_rationales(model, docs, p, source="attention", model_name=name,
                                   batch_size=r.attention_batch_size, device=device, progress=profile.common.progress)
        tables.append(att.table)
        diag = None
        with_gradient = r.gradient_models is None or name in r.gradient_models
        if with_gradient:
            grad = gradient_rationales(model, docs, p, method=r.gradient_method, steps=r.ig_steps, source="gradient",
                                       model_name=name, device=device, progress=profile.common.progress)
            tables.append(grad.table)
            diag = grad.diagnostics
        report[name] = {"pairs": int(len(p)), "missing_codes": int(att.n_missing), "seconds": round(time.time() - t0, 1),
                        "gradient": r.gradient_method if with_gradient else "not computed (rationales.gradient_models)"}
        if diag is not None and len(diag) and "rel_error" in diag:
            report[name]["ig_completeness_rel_error_median"] = float(np.nanmedian(diag["rel_error"]))
    return pd.concat(tables, ignore_index=True), report


def entity_rationales(docs: pd.DataFrame, pairs: pd.DataFrame, codes: pd.DataFrame, profile: Profile,
                      cache_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Entity-linking rationales for the pairs (model-independent). Returns ``(spans, mentions)``;
    ``mentions`` lists every mention found, filtered ones with their reason."""
    from .entity import EntityLinker, entity_rationales as _entity, link_documents

    r = profile.rationales
    linker = EntityLinker(sorted(codes.code), kb_cache_dir=cache_dir, fuzzy_threshold=r.entity_fuzzy_threshold,
                          descriptions=dict(zip(codes.code, codes.description)),
                          negation_window=r.entity_negation_window, filter_historical=r.entity_filter_historical)
    mentions = link_documents(docs, linker)
    spans = _entity(docs, pairs[["note_id", "code"]].drop_duplicates(), linker, mentions=mentions)
    return spans, mentions


def llm_requests(ds, docs: pd.DataFrame, shots: int, profile: Profile):
    """Requests for ``docs`` (gold codes with descriptions); with ``shots > 0`` each prompt holds up
    to ``shots`` human-annotated examples per code from the few-shot pool (never an evaluated note)."""
    from . import llm

    desc = dict(zip(ds.codes.code, ds.codes.description))
    examples = []
    if shots > 0:
        pool = ds.docs[ds.docs.fewshot]
        pool_spans = ds.spans[ds.spans.note_id.isin(pool.note_id)]
        codes = sorted({c for cs in docs.codes for c in cs})
        examples = llm.select_examples(pool, pool_spans, codes, shots, seed=profile.common.seed,
                                       exclude=set(eval_docs(ds.docs).note_id) | set(docs.note_id), descriptions=desc)
    return llm.make_requests(docs, desc, examples, version=profile.rationales.llm.prompt_version,
                             max_note_chars=profile.rationales.llm.max_note_chars)


def llm_rationales(ds, docs: pd.DataFrame, profile: Profile, cache_dir: Path,
                   teachers: Mapping[str, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quotes of every teacher (``{"llm_zero": 0, "llm_few": k}``: name -> shots per code) for the
    notes of ``docs``, through the disk cache (a rerun makes no new calls). Returns (quotes, calls)
    with a ``source`` column naming the teacher."""
    from . import llm

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
    from . import llm

    cfg = profile.rationales.llm
    backend = llm.plan_backend(cfg, credentialed=llm.is_credentialed(profile, docs))
    rows = [{"teacher": t, **llm.plan_llm(llm_requests(ds, docs, shots, profile), backend, cache_dir,
                                          cfg.price_per_million_in, cfg.price_per_million_out)}
            for t, shots in teachers.items()]
    return llm.plan_table(rows)


def teacher_notes(docs: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` training notes (not few-shot examples) that the LLM teacher annotates for notebook 07."""
    pool = docs[(docs.split == "train") & ~docs.fewshot]
    return pool.sample(n=min(n, len(pool)), random_state=seed).sort_values("note_id").reset_index(drop=True)


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


# --------------------------------------------------------------------------------------------
# 05: faithfulness
# --------------------------------------------------------------------------------------------
def discrete_sources(rationales_dir: Path, alignment_dir: Path | None) -> dict[str, pd.DataFrame]:
    """The discrete (span) rationale sources of notebooks 03/04: entity (exact code and category)
    and the aligned LLM spans of each teacher."""
    ent = pd.read_parquet(Path(rationales_dir) / "entity.parquet")
    out = {f"entity ({m})": part.reset_index(drop=True) for m, part in ent.groupby("method")}
    if alignment_dir is not None and (Path(alignment_dir) / "llm_spans.parquet").exists():
        llm_spans = pd.read_parquet(Path(alignment_dir) / "llm_spans.parquet")
        for src, part in llm_spans.groupby("source"):
            out[src] = part.reset_index(drop=True)
    return out


def attention_topk_spans(soft: pd.DataFrame, model: str, k: int) -> pd.DataFrame:
    """The model's attention binarised by its top-``k`` units per pair, as spans."""
    from .rationales import soft_to_spans

    sub = soft[(soft.source == "attention") & (soft.model == model)]
    return soft_to_spans(sub, topk=k)


def faithfulness_tables(models_: Mapping[str, torch.nn.Module], docs: pd.DataFrame, discrete: Mapping[str, pd.DataFrame],
                        soft: pd.DataFrame, profile: Profile, device: str = "cpu", gold: pd.DataFrame | None = None) -> pd.DataFrame:
    """Comprehensiveness and sufficiency of every source under every model (its own attention and
    gradients as scored rationales; the discrete sources and its top-k attention as span sets),
    each with a random control of the same size. One long table.

    Per model the engine is called once per kind (all discrete sources together, all scored
    sources for ERASER, all for Edin), the three calls sharing one ``NoteCache``, so each note is
    encoded and cached once per model."""
    from .metrics import faithfulness as F

    f = profile.faithfulness
    common = dict(perturbation=f.perturbation, code_set=f.code_set, batch_size=f.batch_size, device=device,
                  seed=profile.common.seed, progress=profile.common.progress, max_pairs=f.max_pairs)
    gold_map = None
    if f.code_set == "gold":
        gold_map = docs[["note_id", "codes"]]
    parts = []
    note_ids = set(docs.note_id)
    for name, model in models_.items():
        if f.models is not None and name not in f.models:
            continue
        shared = dict(common, cache=F.NoteCache())  # each note encoded once for the three calls
        spans = dict(discrete)
        spans[f"attention top-{profile.rationales.topk}"] = attention_topk_spans(soft, name, profile.rationales.topk)
        tables = [table[table.note_id.isin(note_ids)].assign(source=src)  # e.g. LLM spans of teacher notes
                  for src, table in spans.items()]
        tables = [t for t in tables if len(t)]
        if tables:
            parts.append(F.faithfulness_discrete(model, docs, pd.concat(tables, ignore_index=True), unit=f.unit,
                                                 model_name=name, missing=f.missing, gold=gold_map, **shared))
        own = soft[(soft.model == name) & soft.note_id.isin(note_ids)]
        if len(own):
            parts.append(F.faithfulness_scored(model, docs, own, aopc_k=tuple(f.aopc_k), variant="eraser",
                                               unit=f.unit, model_name=name, gold=gold_map, **shared))
            parts.append(F.faithfulness_scored(model, docs, own, variant="edin", unit=f.edin_unit,
                                               word_steps=f.word_steps, model_name=name, gold=gold_map, **shared))
    return pd.concat(parts, ignore_index=True)


def attention_vs_entity(summary: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per model: comprehensiveness and sufficiency of top-k attention vs exact-code entity spans,
    and whether the paper's finding (attention more comprehensive, less sufficient) holds."""
    att, ent = f"attention top-{k}", "entity (exact_code)"
    rows = []
    for model, part in summary.groupby("model"):
        get = lambda s, m: part.loc[(part.source == s) & (part.measure == m), "rationale"].mean()
        c_a, c_e = get(att, "comprehensiveness"), get(ent, "comprehensiveness")
        s_a, s_e = get(att, "sufficiency"), get(ent, "sufficiency")
        rows.append({"model": model, "comp attention": c_a, "comp entity": c_e, "suff attention": s_a,
                     "suff entity": s_e, "attention more comprehensive": bool(c_a > c_e),
                     "attention less sufficient": bool(s_a > s_e)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# 06: plausibility
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlausibilityResult:
    spans: pd.DataFrame  # plausibility_table rows (+ model, binarisation)
    soft: pd.DataFrame  # soft measures per model/source
    thresholds: dict  # tuned thresholds per (model, source)


def plausibility_tables(ds, discrete: Mapping[str, pd.DataFrame], soft: pd.DataFrame, preds: pd.DataFrame,
                        profile: Profile, tune_fraction: float = 0.25) -> PlausibilityResult:
    """The paper's plausibility table on the evaluation notes minus the tuning notes.

    Discrete sources are scored as they are; each model's attention and gradient rationales are
    binarised with a threshold tuned on the tuning notes (grid 0..``threshold_grid_max`` on the
    pair-normalised scores) and by top-k, then scored like spans; their soft measures (AUPRC, P@k,
    R@k, token P/R/F1 at the tuned threshold) are reported alongside. A random baseline has the
    entity spans' sizes placed at random. Model sources are also split by codes the model
    predicted vs missed."""
    from .metrics import plausibility as P

    pl = profile.plausibility
    evald = eval_docs(ds.docs)
    tune = tuning_ids(ds.docs, tune_fraction)
    test_ids = set(evald.note_id) - tune
    docs = ds.docs[ds.docs.note_id.isin(set(evald.note_id))]
    gold_all = ds.spans[ds.spans.note_id.isin(set(evald.note_id))]
    gold = gold_all[gold_all.note_id.isin(test_ids)]
    gold_tune = gold_all[gold_all.note_id.isin(tune)]
    on_test = lambda t: t[t.note_id.isin(test_ids)]
    sources = {k: on_test(v) for k, v in discrete.items()}
    like = sources.get("entity (exact_code)", next(iter(sources.values()), gold))
    sources["random"] = random_rationales(docs, like if len(like) else gold, profile.common.seed)
    rows = [P.plausibility_table(gold, sources, docs).assign(model="-", binarisation="-")]
    grid = P.default_grid(pl.threshold_grid_max, pl.threshold_grid_steps)
    soft_rows, thresholds = [], {}
    for (model, src), table in soft.groupby(["model", "source"]):
        t = P.tune_soft_threshold(table[table.note_id.isin(tune)], gold_tune, docs, grid)
        thresholds[(model, src)] = t
        test_scores = on_test(table)
        predicted = preds[(preds.model == model) & preds.pred][["note_id", "code"]]
        res = P.soft_plausibility(test_scores, gold, docs, threshold=t, ks=tuple(pl.topk))
        soft_rows.append({"model": model, "source": src, **res})
        binarised = {f"{src} (threshold {t:.3f})": P.binarise(test_scores, threshold=t)}
        for k in pl.topk:
            binarised[f"{src} (top-{k})"] = P.binarise(test_scores, topk=k)
        for name, spans in binarised.items():
            tab = P.plausibility_table(gold, {name: spans}, docs, predicted_codes=predicted)
            rows.append(tab.assign(model=model, binarisation=name.split("(")[-1].rstrip(")")))
    return PlausibilityResult(pd.concat(rows, ignore_index=True), pd.DataFrame(soft_rows),
                              {f"{m}/{s}": v for (m, s), v in thresholds.items()})


def headline(table: pd.DataFrame, measure: str = "token_position_independent") -> pd.DataFrame:
    """One row per source (and model): P/R/F1 of ``measure`` over all granularities and codes."""
    t = table[(table.measure == measure) & (table.granularity == "all") & (table.code_set == "all")]
    return t[["source", "model", "n_pairs", "precision", "recall", "f1"]].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# 07/08: guided learning
# --------------------------------------------------------------------------------------------
def teacher_targets(ds, llm_spans: pd.DataFrame, oracle_spans: pd.DataFrame, teachers: Iterable[str]) -> dict:
    """``{teacher: {(note_id, code): [(start, end), ...]}}`` on training notes, gold codes only.

    ``llm_zero``/``llm_few``: aligned LLM spans of that teacher; ``human``: the human spans where
    they exist (for the embedded corpus, the generator's spans of every training note: an upper
    reference no real data set has at this scale)."""
    train = ds.docs[(ds.docs.split == "train") & ~ds.docs.fewshot]
    gold = {(n, c) for n, cs in zip(train.note_id, train.codes) for c in cs}
    out = {}
    for t in teachers:
        spans = oracle_spans if t == "human" else llm_spans[llm_spans.source == t]
        targets: dict = {}
        for n, c, s, e in spans[["note_id", "code", "start", "end"]].itertuples(index=False, name=None):
            if (n, c) in gold:
                targets.setdefault((n, c), []).append((int(s), int(e)))
        out[t] = targets
    return out


def coverage(targets: Mapping[str, dict]) -> pd.DataFrame:
    return pd.DataFrame([{"teacher": t, "notes": len({n for n, _ in d}), "pairs": len(d),
                          "spans": sum(len(v) for v in d.values())} for t, d in targets.items()])


def evaluate_student(model, threshold: float, ds, profile: Profile, device: str = "cpu") -> dict:
    """Coding (test micro/macro F1, mAP) and attention plausibility (PI token F1 of the top-k
    attention, AUPRC) of a trained model on the evaluation notes."""
    from .metrics import coding
    from .metrics import plausibility as P
    from .rationales import attention_rationales

    test = ds.docs[ds.docs.split == "test"]
    pr = predictions(model, test, threshold, device)
    labels = list(model.labels)
    y = coding.label_matrix(test.codes, labels)
    p = pr.pivot(index="note_id", columns="code", values="prob").reindex(index=test.note_id, columns=labels).to_numpy()
    rep = coding.coding_report(y, p, threshold)
    evald = eval_docs(ds.docs)
    gold = ds.spans[ds.spans.note_id.isin(set(evald.note_id))]
    pairs = gold[["note_id", "code"]].drop_duplicates()
    pairs = pairs[pairs.code.isin(set(labels))]
    att = attention_rationales(model, evald, pairs, model_name="student", device=device, progress=False).table
    k = profile.rationales.topk
    spans = P.binarise(att, topk=k)
    m = P.mdace_measures(gold, spans, evald)
    soft = P.soft_plausibility(att, gold, evald, ks=(k,))
    return {"micro_f1": rep["micro_f1"], "macro_f1": rep["macro_f1_mean"], "map": rep["map"],
            "pi_token_f1": m["token_position_independent"]["f1"], "token_exact_f1": m["token_exact"]["f1"],
            "auprc": soft["auprc"], f"p@{k}": soft[f"p@{k}"]}


def guided_run(name: str, teacher: str, lam: float, targets: dict | None, ds, labels: list[str], profile: Profile,
               out_dir: Path, device: str = "cpu", trained_dir: Path | None = None) -> dict:
    """Train one student (resumable in ``out_dir``) and evaluate it; returns one result row. With
    ``guided.init = "trained"`` the student starts from ``trained_dir / name / "model"`` (notebook 02)."""
    t0 = time.time()
    g = profile.guided
    init_from = None
    if g.init == "trained":
        if trained_dir is None:
            raise ValueError("guided.init = 'trained' needs the notebook-02 folder (trained_dir)")
        init_from = Path(trained_dir) / name / "model"
        if not (init_from / "config.json").exists():
            raise FileNotFoundError(f"guided.init = 'trained': no trained {name} at {init_from}: run 02_train with {name} first")
    res = fit_model(name, profile, ds.docs, labels, Path(out_dir), device, rationale_targets=targets if lam > 0 else None,
                    lam=lam, loss=g.loss, epochs=g.epochs, init_from=init_from, max_train_docs=g.max_train_docs)
    row = {"model": name, "teacher": teacher if lam > 0 else "none", "lambda": lam,
           **evaluate_student(res.model, res.threshold, ds, profile, device), "seconds": round(time.time() - t0, 1)}
    return row


def guided_sweep(ds, labels: list[str], targets: Mapping[str, dict], profile: Profile, out_dir: Path,
                 device: str = "cpu", trained_dir: Path | None = None) -> pd.DataFrame:
    """The lambda sweep: for each model, lambda = 0 once, then every teacher x every lambda > 0."""
    rows = []
    g = profile.guided
    for name in g.models:
        rows.append(guided_run(name, "none", 0.0, None, ds, labels, profile, Path(out_dir) / f"{name}_lam0", device, trained_dir))
        for teacher, tg in targets.items():
            if not tg:
                print(f"{name}: teacher {teacher} has no aligned rationales on training notes: skipped")
                continue
            for lam in [l for l in g.lambdas if l > 0]:
                rows.append(guided_run(name, teacher, lam, tg, ds, labels, profile,
                                       Path(out_dir) / f"{name}_{teacher}_lam{lam:g}", device, trained_dir))
    out = pd.DataFrame(rows)
    out["init"] = g.init
    return out


def tradeoff_verdict(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per model and teacher: the best plausibility gain, the F1 change at that λ, and whether any
    λ > 0 improved both micro-F1 and PI token F1 over λ = 0."""
    rows = []
    for model, part in sweep.groupby("model"):
        base = part[part["lambda"] == 0].iloc[0]
        for teacher, t in part[part["lambda"] > 0].groupby("teacher"):
            best = t.loc[t.pi_token_f1.idxmax()]
            rows.append({"model": model, "teacher": teacher, "best lambda": best["lambda"],
                         "PI token F1 gain": best.pi_token_f1 - base.pi_token_f1,
                         "micro-F1 change": best.micro_f1 - base.micro_f1,
                         "some lambda improves both": bool(((t.micro_f1 > base.micro_f1) & (t.pi_token_f1 > base.pi_token_f1)).any())})
    return pd.DataFrame(rows)


def ner_experiment(ds, targets: Mapping[str, dict], profile: Profile, out_dir: Path, train_dir: Path,
                   device: str = "cpu") -> pd.DataFrame:
    """Train the code-agnostic NER tagger on each teacher's spans at each training-set size (capped
    by the teacher's coverage) and score its spans, assigned to the codes the first guided model
    predicts, on the evaluation notes. One row per (teacher, size)."""
    from . import ner as N
    from .metrics import plausibility as P

    g = profile.guided
    evald = eval_docs(ds.docs)
    if g.ner_eval_notes:
        evald = evald.head(g.ner_eval_notes)
    gold = ds.spans[ds.spans.note_id.isin(set(evald.note_id))]
    model_name = g.models[0]
    preds = pd.read_parquet(Path(train_dir) / "predictions.parquet")
    predicted = preds[(preds.model == model_name) & preds.pred & preds.note_id.isin(set(evald.note_id))][["note_id", "code"]]
    rows = []
    with_spans = [t for t, d in targets.items() if d]
    chosen = [g.ner_teacher] if g.ner_teacher in with_spans else with_spans[:1]
    if g.ner_teacher not in with_spans:
        print(f"NER teacher {g.ner_teacher!r} has no aligned spans on training notes; using {chosen or 'none'}")
    for teacher in chosen:
        tg = targets[teacher]
        notes = sorted({n for n, _ in tg})
        spans = pd.DataFrame([(n, c, s, e) for (n, c), v in tg.items() for s, e in v], columns=["note_id", "code", "start", "end"])
        for size in g.ner_train_sizes:
            use = notes[:size]
            if not use:
                continue
            cfg = N.NERConfig(epochs=g.ner_epochs, seed=profile.common.seed, window=profile.train.plm_icd.chunk_size,
                              encoder_path=profile.train.plm_icd.encoder_path, max_windows_per_note=g.ner_max_windows_per_note,
                              lr=g.ner_lr, head_lr=g.ner_head_lr, freeze_layers=g.ner_freeze_layers)
            t0 = time.time()
            tagger = N.train_ner(ds.docs[ds.docs.note_id.isin(set(use))], spans[spans.note_id.isin(set(use))], cfg,
                                 out_dir=Path(out_dir) / f"{teacher}_{len(use)}", device=device, progress=profile.common.progress)
            found = N.assign_codes(tagger.predict_spans(evald[["note_id", "text"]]), predicted)
            m = P.mdace_measures(gold, found, evald)
            rows.append({"teacher": teacher, "train notes": len(use), "requested": size, "spans": len(found),
                         "pi_token_f1": m["token_position_independent"]["f1"], "token_exact_f1": m["token_exact"]["f1"],
                         "span_exact_f1": m["span_exact"]["f1"], "seconds": round(time.time() - t0, 1)})
    return pd.DataFrame(rows)


def guided_summary(sweep: pd.DataFrame, ner: pd.DataFrame) -> pd.DataFrame:
    """Paper-style summary: the unguided model, the best-plausibility guided model per teacher, and
    the NER tagger at its largest size."""
    rows = []
    for model, part in sweep.groupby("model"):
        base = part[part["lambda"] == 0].iloc[0]
        rows.append({"method": f"{model} (unguided)", "micro_f1": base.micro_f1, "macro_f1": base.macro_f1, "pi_token_f1": base.pi_token_f1})
        for teacher, t in part[part["lambda"] > 0].groupby("teacher"):
            b = t.loc[t.pi_token_f1.idxmax()]
            rows.append({"method": f"{model} + {teacher} (λ={b['lambda']:g})", "micro_f1": b.micro_f1,
                         "macro_f1": b.macro_f1, "pi_token_f1": b.pi_token_f1})
    if len(ner):
        last = ner.sort_values("train notes").groupby("teacher").tail(1)
        for r in last.itertuples(index=False):
            rows.append({"method": f"NER ({r.teacher}, {r[1]} notes)", "micro_f1": float("nan"), "macro_f1": float("nan"),
                         "pi_token_f1": r.pi_token_f1})
    return pd.DataFrame(rows)


def teacher_comparison(plaus: pd.DataFrame, calls: pd.DataFrame, llm_spans: pd.DataFrame) -> pd.DataFrame:
    """Zero- vs few-shot teacher: calls that returned usable JSON, aligned spans, and plausibility
    (MDACE PI token / exact token / exact span F1) from notebook 06."""
    rows = []
    for t in ("llm_zero", "llm_few"):
        c = calls[calls.source == t] if "source" in calls else calls.iloc[:0]
        p = plaus[(plaus.source == t) & (plaus.granularity == "all") & (plaus.code_set == "all")]
        get = lambda m: float(p.loc[p.measure == m, "f1"].iloc[0]) if (p.measure == m).any() else float("nan")
        ok = c["outcome"].eq("ok").sum() if "outcome" in c else c["status"].isin(["ok", "cached"]).sum()
        rows.append({"teacher": t, "requests": int(len(c)), "usable answers": int(ok),
                     "aligned spans": int((llm_spans.source == t).sum()),
                     "pi_token_f1": get("token_position_independent"), "token_exact_f1": get("token_exact"),
                     "span_exact_f1": get("span_exact")})
    return pd.DataFrame(rows)


def few_shot_students(ds, labels: list[str], targets: Mapping[str, dict], profile: Profile, out_dir: Path,
                      device: str = "cpu", trained_dir: Path | None = None, sweep: pd.DataFrame | None = None) -> pd.DataFrame:
    """The student model unguided and trained on each teacher's rationales at ``few_shot.lam``.

    A student that notebook 07 already trained with the same settings (a row of its ``sweep`` with
    the same model, teacher and lambda; same profile, so the same data, targets and training) is
    reused rather than trained again; the ``trained_in`` column says which."""
    fs = profile.few_shot

    def run(teacher: str, lam: float, tg: dict | None, folder: str) -> dict:
        if sweep is not None and len(sweep):
            hit = sweep[(sweep.model == fs.student_model) & (sweep.teacher == teacher) & np.isclose(sweep["lambda"], lam)]
            if len(hit):
                return {**hit.iloc[0].to_dict(), "trained_in": "07_guided_learning"}
        row = guided_run(fs.student_model, teacher, lam, tg, ds, labels, profile, Path(out_dir) / folder, device, trained_dir)
        return {**row, "trained_in": "08_few_shot"}

    rows = [run("none", 0.0, None, "unguided")]
    for teacher, tg in targets.items():
        if not tg:
            rows.append({"model": fs.student_model, "teacher": teacher, "lambda": fs.lam, "note": "no aligned teacher rationales"})
            continue
        rows.append(run(teacher, fs.lam, tg, teacher))
    return pd.DataFrame(rows)


def few_shot_summary(teachers: pd.DataFrame, students: pd.DataFrame) -> pd.DataFrame:
    """One row for the teacher, one for the student: PI token F1 with the zero-shot and the few-shot
    teacher, and the gain."""
    t = teachers.set_index("teacher")["pi_token_f1"]
    s = students.set_index("teacher")["pi_token_f1"] if "pi_token_f1" in students else pd.Series(dtype=float)
    rows = [{"role": "teacher", "zero-shot": t.get("llm_zero", np.nan), "few-shot": t.get("llm_few", np.nan)},
            {"role": "student", "zero-shot": s.get("llm_zero", np.nan), "few-shot": s.get("llm_few", np.nan)}]
    out = pd.DataFrame(rows)
    out["gain"] = out["few-shot"] - out["zero-shot"]
    return out
