"""The notebooks' steps: one function per step, so every notebook cell stays short.

Each function reads and writes the canonical tables (documents, span tables, score tables) and the
profile's parameters; nothing here is specific to one data set.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from rationale_kit.core.config import Profile
from rationale_kit.core.records import SPAN_COLUMNS


# --------------------------------------------------------------------------------------------
# splits of the data
# --------------------------------------------------------------------------------------------
def label_space(docs: pd.DataFrame) -> list[str]:
    """The codes the models predict: every code of a training note, sorted."""
    return sorted({c for cs in docs.loc[docs.split == "train", "codes"] for c in cs})


def eval_docs(docs: pd.DataFrame) -> pd.DataFrame:
    """Annotated test notes: where rationales are evaluated (never few-shot examples); see
    :func:`rationale_kit.metrics.evaluation.evaluation_notes`."""
    from rationale_kit.metrics.evaluation import evaluation_notes

    return evaluation_notes(docs)


def tuning_ids(docs: pd.DataFrame, fraction: float = 0.25) -> set[str]:
    """A deterministic ``fraction`` of the evaluation notes reserved for tuning (thresholds of soft
    rationales, the guided-learning lambda); reported numbers use the other notes. The same set as
    :attr:`rationale_kit.metrics.evaluation.EvaluationDesign.tuning_ids`."""
    from rationale_kit.metrics.evaluation import make_design

    return set(make_design(docs, fraction).tuning_ids)


def evaluation_design(docs: pd.DataFrame, profile: Profile):
    """The profile's :class:`~rationale_kit.metrics.evaluation.EvaluationDesign` of ``docs`` (no run-on
    pairs yet)."""
    from rationale_kit.metrics.evaluation import make_design

    return make_design(docs, profile.evaluation.tuning_fraction)


def boot(profile: Profile):
    """The profile's bootstrap settings (``evaluation`` section)."""
    from rationale_kit.metrics.evaluation import Bootstrap

    e = profile.evaluation
    return Bootstrap(e.bootstrap_resamples, e.seed, e.level)


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
        parts.append(E.run_on_frame(f"entity ({m})", every))
    if "exact_code" in set(entity_methods):  # the random baseline has the exact-code spans' sizes
        parts.append(E.run_on_frame("random", every))
    if llm_docs is not None:
        sent = llm_docs[llm_docs.note_id.isin(set(design.eval_ids))]
        for t in teachers:
            parts.append(E.llm_run_on(sent, t))
    return design.with_run_on(pd.concat(parts, ignore_index=True)) if parts else design


# --------------------------------------------------------------------------------------------
# 02: training
# --------------------------------------------------------------------------------------------
def fit_model(name: str, profile: Profile, docs: pd.DataFrame, labels: list[str], out_dir: Path,
              device: str = "cpu", rationale_targets: dict | None = None, lam: float = 0.0,
              loss: str = "kl", epochs: int | None = None, init_from: Path | None = None,
              max_train_docs: int | None = None):
    """Build (seeded) and train model ``name`` with the profile's parameters; resumable in
    ``out_dir``. ``init_from``: start from a saved model (a ``.../model`` folder) instead of a
    fresh one; ``max_train_docs`` replaces the profile's cap on training notes (``train.max_train_docs``
    and the model's own cap do not apply then). The checkpoint's key also holds what builds the
    starting model (the ``init_from`` model's hash, word2vec settings, ``data.max_words``) and the
    hash of the training code. Returns the :class:`~rationale_kit.training.TrainResult`; the best
    model is saved to ``out_dir / "model"``."""
    import dataclasses

    from rationale_kit import models, training

    params = getattr(profile.train, name)
    torch.manual_seed(profile.common.seed)
    train = docs[docs.split == "train"]
    cap = max_train_docs or params.max_train_docs or profile.train.max_train_docs
    if cap:
        train = train.head(cap)
    key = {"max_words": profile.data.max_words, "code": training_code_hash()}
    if init_from is not None:
        model, _ = models.load(init_from)
        key["init_from"] = saved_model_hash(init_from)
    else:
        w2v = profile.train.word2vec if name != "plm_icd" else None
        if w2v is not None and w2v.dim != params.embed_dim:
            w2v = type(w2v)(**{**w2v.__dict__, "dim": params.embed_dim})
        key["word2vec"] = dataclasses.asdict(w2v) if w2v is not None else None
        model = models.build_model(name, params, labels, train_texts=train.text, w2v=w2v,
                                   max_words=profile.data.max_words, seed=profile.common.seed)
    result = training.train_model(
        # the cap was applied above (train_model would cut again at train.max_train_docs)
        model, train, docs[docs.split == "val"], params, dataclasses.replace(profile.train, max_train_docs=None),
        out_dir, device=device, progress=profile.common.progress, rationale_targets=rationale_targets, lam=lam,
        rationale_loss=loss, epochs=epochs, seed=profile.common.seed, key=key,
    )
    models.save(result.model, Path(out_dir) / "model", threshold=result.threshold,
                extra={"best_epoch": result.best_epoch, "lam": lam, "loss": loss})
    return result


def saved_model_hash(folder: Path) -> str:
    """Hash of a saved model folder (its weights and configuration)."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(folder)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def training_code_hash() -> str:
    """Hash of the sources that determine a trained model (models, training, text units)."""
    pkg = Path(__file__).resolve().parents[1]
    files = [*sorted((pkg / "models").rglob("*.py")), *sorted((pkg / "training").rglob("*.py")), pkg / "core" / "text.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def predictions(model, docs: pd.DataFrame, threshold: float, device: str = "cpu", batch_size: int = 16) -> pd.DataFrame:
    """Long table ``note_id, code, prob, pred, is_gold`` for every (note, label) of ``docs``."""
    from rationale_kit.training import predict_probs

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
    """The coding table on the test notes: one row per model plus the frequency baseline.

    Test codes outside ``labels`` (no training document carries them) count as misses in micro
    recall/F1, R@k and R-precision; ``unseen_gold_share`` is their share of the gold occurrences
    (macro measures, mAP and AUC are over ``labels``)."""
    from rationale_kit.metrics import coding

    test = docs[docs.split == "test"]
    y = coding.label_matrix(test.codes, labels)
    unseen = coding.unseen_counts(test.codes, labels)
    rows = {}
    base = coding.frequency_baseline(docs.loc[docs.split == "train", "codes"], labels, len(test))
    val = docs[docs.split == "val"]
    base_val = coding.frequency_baseline(docs.loc[docs.split == "train", "codes"], labels, len(val))
    t_base, _ = coding.tune_threshold(coding.label_matrix(val.codes, labels), base_val)
    rows["frequency baseline"] = coding.coding_report(y, base, t_base, unseen=unseen)
    for name, frame in pred_frames.items():
        p = frame.pivot(index="note_id", columns="code", values="prob").reindex(index=test.note_id, columns=labels).to_numpy()
        rows[name] = coding.coding_report(y, p, thresholds[name], unseen=unseen)
    table = pd.DataFrame(rows).T
    keep = ["micro_f1", "micro_precision", "micro_recall", "macro_f1_mean", "macro_f1_harmonic",
            "p@5", "p@8", "r@8", "p@15", "r@15", "r_precision", "map", "micro_auc", "macro_auc", "threshold",
            "unseen_gold_share"]
    table = table[[k for k in keep if k in table.columns]]
    table["labels"] = float(len(labels))  # the label space (e.g. data.top_codes) beside every row
    return table


def load_models(train_dir: Path, names: Iterable[str], device: str = "cpu") -> dict:
    """Trained models saved by notebook 02 (``train_dir/<name>/model``), in eval mode."""
    from rationale_kit import models

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


def entity_rationales(docs: pd.DataFrame, pairs: pd.DataFrame, codes: pd.DataFrame, profile: Profile,
                      cache_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Entity-linking rationales for the pairs (model-independent). Returns ``(spans, mentions)``;
    ``mentions`` lists every mention found, filtered ones with their reason. Without "entity" in
    ``rationales.sources`` both tables are empty (the linker is not run)."""
    from rationale_kit.rationales.entity import EntityLinker, entity_rationales as _entity, link_documents

    r = profile.rationales
    if "entity" not in r.sources:
        print("entity rationales: not computed ('entity' is not in rationales.sources)")
        docs, pairs = docs.iloc[:0], pairs.iloc[:0]
    linker = EntityLinker(sorted(codes.code), kb_cache_dir=cache_dir, fuzzy_threshold=r.entity_fuzzy_threshold,
                          descriptions=dict(zip(codes.code, codes.description)),
                          negation_window=r.entity_negation_window, filter_historical=r.entity_filter_historical)
    mentions = link_documents(docs, linker)
    spans = _entity(docs, pairs[["note_id", "code"]].drop_duplicates(), linker, mentions=mentions)
    return spans, mentions


def llm_requests(ds, docs: pd.DataFrame, shots: int, profile: Profile):
    """Requests for ``docs`` (gold codes with descriptions); with ``shots > 0`` each prompt holds up
    to ``shots`` human-annotated examples per code from the few-shot pool (never an evaluated note)."""
    from rationale_kit.rationales import llm

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
    from rationale_kit.rationales import soft_to_spans

    sub = soft[(soft.source == "attention") & (soft.model == model)]
    return soft_to_spans(sub, topk=k)


COMPARED_SOURCES = ("attention top-{k}", "entity (exact_code)")  # the sources finding (b) compares


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
    from rationale_kit.metrics import faithfulness as F

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
        shared = dict(common, cache=F.NoteCache())  # each note encoded once for the three calls
        spans = dict(discrete)
        spans[f"attention top-{k}"] = attention_topk_spans(soft, name, k)
        compared = [spans[s.format(k=k)] for s in COMPARED_SOURCES if s.format(k=k) in spans and len(spans[s.format(k=k)])]
        chosen = set(common_pairs(_code_set_pairs(name, model, docs, preds, f.code_set), compared, docs, f.max_pairs))
        tables = [restrict(table[table.note_id.isin(note_ids)], chosen).assign(source=src)
                  for src, table in spans.items()]
        tables = [t for t in tables if len(t)]
        if tables:
            parts.append(F.faithfulness_discrete(model, docs, pd.concat(tables, ignore_index=True), unit=f.unit,
                                                 model_name=name, missing=f.missing, gold=gold_map, **shared))
        own = restrict(soft[(soft.model == name) & soft.note_id.isin(note_ids)], chosen)
        if len(own):
            parts.append(F.faithfulness_scored(model, docs, own, aopc_k=tuple(f.aopc_k), variant="eraser",
                                               unit=f.unit, model_name=name, gold=gold_map, **shared))
            parts.append(F.faithfulness_scored(model, docs, own, variant="edin", unit=f.edin_unit,
                                               word_steps=f.word_steps, model_name=name, gold=gold_map, **shared))
    return pd.concat(parts, ignore_index=True)


def faithfulness_summary(agg: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """The faithfulness table: per model, source and measure the mean over pairs of the rationale
    and of its random control, their difference, ``n_pairs`` and ``n_notes``, and bootstrap
    intervals over notes of the rationale mean (``rationale_lo/hi``) and of the difference
    (``difference_lo/hi``, paired: the control is on the same pairs). ``agg``: the per-pair rows
    (``k`` NaN) of :func:`faithfulness_tables`."""
    from rationale_kit.metrics import evaluation as E
    from rationale_kit.metrics import faithfulness as F

    boot_ = boot(profile)
    keys = ["model", "source", "measure"]
    summary = F.summarise(agg, by=keys + ["control"], wide=True)
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

    att, ent = f"attention top-{k}", "entity (exact_code)"
    boot_ = boot(profile)
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


# --------------------------------------------------------------------------------------------
# 06: plausibility
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlausibilityResult:
    spans: pd.DataFrame  # plausibility_table rows (+ model, binarisation, unit counts, coverage, intervals)
    soft: pd.DataFrame  # soft measures per model/source
    thresholds: dict  # tuned thresholds per (model, source)
    counts: pd.DataFrame = None  # per (note, code) MDACE counts of every row source (report notes)
    comparisons: pd.DataFrame = None  # paired comparisons and finding (a)'s verdicts


def _unit_counts(gold: pd.DataFrame, predicted: set | None) -> pd.DataFrame:
    """``granularity, code_set, n_notes, n_pairs`` of the gold pairs, as plausibility_table
    groups them (granularity "all" and each level; code sets all / predicted / missed)."""
    g = gold.assign(granularity=gold["granularity"].fillna("").astype(str)) if "granularity" in gold else gold.assign(granularity="")
    rows = []
    levels = [("all", g)] + [(lv, g[g.granularity == lv]) for lv in sorted(x for x in g.granularity.unique() if x)]
    for level, part in levels:
        pairs = set(zip(part.note_id.astype(str), part.code.astype(str)))
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
                        profile: Profile, design=None) -> PlausibilityResult:
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
    comparisons (LLM vs entity, entity vs top-k attention per model) on the pairs both have."""
    from rationale_kit.metrics import evaluation as E
    from rationale_kit.metrics import plausibility as P

    pl = profile.plausibility
    design = design or evaluation_design(ds.docs, profile)
    boot_ = boot(profile)
    tune, report = set(design.tuning_ids), set(design.report_ids)
    docs = ds.docs[ds.docs.note_id.isin(set(design.eval_ids))]
    gold_all = ds.spans[ds.spans.note_id.isin(set(design.eval_ids))]
    gold = gold_all[gold_all.note_id.isin(report)]
    gold_tune = gold_all[gold_all.note_id.isin(tune)]
    on_test = lambda t: t[t.note_id.isin(report)]
    sources = {k: on_test(v) for k, v in discrete.items()}
    like = sources.get("entity (exact_code)", next(iter(sources.values()), gold))
    sources["random"] = random_rationales(docs, like if len(like) else gold, profile.common.seed)
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
        binarised = {f"{src} (threshold {t:.3f})": P.binarise(test_scores, threshold=t, docs=docs)}
        for k in pl.topk:
            binarised[f"{src} (top-{k})"] = P.binarise(test_scores, topk=k)
        for name, spans in binarised.items():
            tab, c = _score(P, E, gold, run_on, name, spans, docs, predicted, boot_)
            rows.append(tab.assign(model=model, binarisation=name.split("(")[-1].rstrip(")")))
            counts.append(c.assign(source=name, model=model))
    counts = pd.concat(counts, ignore_index=True)
    return PlausibilityResult(pd.concat(rows, ignore_index=True), pd.DataFrame(soft_rows),
                              {f"{m}/{s}": v for (m, s), v in thresholds.items()}, counts,
                              plausibility_verdicts(counts, profile, ds.name))


def plausibility_verdicts(counts: pd.DataFrame, profile: Profile, dataset: str,
                          measure: str = "token_position_independent") -> pd.DataFrame:
    """Finding (a), plausibility LLM > entity > attention, from paired comparisons of ``measure``
    F1 on the pairs both sources were scored on: each LLM teacher vs exact-code entity spans, and
    entity spans vs each model's top-k attention (``rationales.topk``); a combined row per model."""
    from rationale_kit.metrics import evaluation as E

    boot_ = boot(profile)
    k = profile.rationales.topk
    att = f"attention (top-{k})" if f"attention (top-{k})" in set(counts.source) else f"attention (top-{profile.plausibility.topk[0]})"
    ent = "entity (exact_code)"
    get = lambda s, m="-": counts[(counts.source == s) & (counts.model == m)]
    rows, llm_rows = [], []
    for t in ("llm_zero", "llm_few"):
        if (counts.source == t).any() and (counts.source == ent).any():
            r = E.verdict_row("a", f"{t} > {ent}", "-", dataset, measure, "report notes, pairs both were run on",
                              E.compare_counts(get(t), get(ent), boot_, measure=measure), "greater")
            rows.append(r)
            llm_rows.append(r)
    models = sorted(set(counts.loc[counts.source == att, "model"]))
    for m in models:
        r = E.verdict_row("a", f"{ent} > {att}", m, dataset, measure, "report notes, pairs both were run on",
                          E.compare_counts(get(ent), get(att, m), boot_, measure=measure), "greater")
        rows.append(r)
        combined = {"finding": "a", "comparison": "LLM > entity > attention (all of the above)", "model": m,
                    "dataset": dataset, "measure": measure, "units": "as above",
                    "verdict": E.combine([x["verdict"] for x in llm_rows] + [r["verdict"]])}
        rows.append(combined)
    return E.verdicts_frame(rows)


def plausibility_wide(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's table: F1 of every measure per source and model (granularity all, all gold
    codes), with the units (``n_notes``, ``n_pairs``, ``coverage``, ``scored_on``) and the
    interval of the PI token F1 (``pi_lo``, ``pi_hi``)."""
    t = table[(table.granularity == "all") & (table.code_set == "all")]
    wide = t.pivot_table(index=["source", "model"], columns="measure", values="f1")
    pi = t[t.measure == PI].set_index(["source", "model"])
    cols = [c for c in ("n_notes", "n_pairs", "n_pairs_eligible", "coverage", "scored_on") if c in pi.columns]
    wide = wide.join(pi[cols])
    if "f1_lo" in pi.columns:
        wide = wide.join(pi[["f1_lo", "f1_hi"]].rename(columns={"f1_lo": "pi_lo", "f1_hi": "pi_hi"}))
    wide.columns.name = None
    return wide


def save_bootstrap_timing(ctx) -> dict:
    """Write the bootstrap's seconds and its share of the notebook's time so far
    (``bootstrap_timing.json`` in the notebook's artifact folder)."""
    from rationale_kit.metrics.evaluation import save_timing

    return save_timing(ctx.out_dir, time.time() - ctx.started)


def headline(table: pd.DataFrame, measure: str = "token_position_independent") -> pd.DataFrame:
    """One row per source (and model): P/R/F1 of ``measure`` over all granularities and codes."""
    t = table[(table.measure == measure) & (table.granularity == "all") & (table.code_set == "all")]
    cols = ["source", "model", "n_notes", "n_pairs", "coverage", "precision", "recall", "f1", "f1_lo", "f1_hi"]
    return t[[c for c in cols if c in t.columns]].reset_index(drop=True)


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


PI = "token_position_independent"


def _student_counts(model, threshold: float, ds, design, topk: int, device: str = "cpu",
                    pr: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A coding model's units, for paired comparisons: MDACE counts of its top-k attention per
    gold (note, code) pair of the evaluation notes whose code it knows (``pair_counts`` rows), and
    coding counts per test note (``measure "coding"``, ``code "-"``: tp/fp/fn of its predicted
    codes at ``threshold`` against the note's gold codes, over its labels); and the attention."""
    from rationale_kit.metrics import evaluation as E
    from rationale_kit.metrics import plausibility as P
    from rationale_kit.rationales import attention_rationales

    labels = set(model.labels)
    if pr is None:  # the predictions of every test note
        pr = predictions(model, ds.docs[ds.docs.split == "test"], threshold, device)
    c = pr.assign(tp=pr.pred & pr.is_gold, fp=pr.pred & ~pr.is_gold, fn=~pr.pred & pr.is_gold)
    coding_ = c.groupby("note_id")[["tp", "fp", "fn"]].sum().astype("int64").reset_index()
    coding_ = coding_.assign(code="-", measure="coding")[E.COUNT_COLUMNS]
    evald = ds.docs[ds.docs.note_id.isin(set(design.eval_ids))]
    gold = ds.spans[ds.spans.note_id.isin(set(design.eval_ids))]
    pairs = gold[["note_id", "code"]].drop_duplicates()
    pairs = pairs[pairs.code.isin(labels)]
    att = attention_rationales(model, evald, pairs, model_name="student", device=device, progress=False).table
    spans = P.binarise(att, topk=topk)
    known = E.restrict(gold, set(zip(pairs.note_id, pairs.code)))
    counts = pd.concat([E.pair_counts(known, spans, evald), coding_], ignore_index=True)
    return counts, att


def evaluate_student(model, threshold: float, ds, profile: Profile, device: str = "cpu", design=None) -> dict:
    """Coding (micro/macro F1, mAP) on the test notes that are not tuning notes and attention
    plausibility (PI token F1 of the top-k attention, AUPRC) on the report notes; the PI token F1
    on the tuning notes (``pi_token_f1_tuning``: what lambda is chosen on). The per-unit counts
    are in the returned row's ``counts`` (a frame, popped by :func:`guided_run`)."""
    from rationale_kit.metrics import evaluation as E
    from rationale_kit.metrics import coding
    from rationale_kit.metrics import plausibility as P

    design = design or evaluation_design(ds.docs, profile)
    k = profile.rationales.topk
    report, tune = set(design.report_ids), set(design.tuning_ids)
    all_pr = predictions(model, ds.docs[ds.docs.split == "test"], threshold, device)
    counts, att = _student_counts(model, threshold, ds, design, k, device, all_pr)
    test = ds.docs[(ds.docs.split == "test") & ~ds.docs.note_id.isin(tune)]
    labels = list(model.labels)
    pr = all_pr[all_pr.note_id.isin(set(test.note_id))]
    y = coding.label_matrix(test.codes, labels)
    p = pr.pivot(index="note_id", columns="code", values="prob").reindex(index=test.note_id, columns=labels).to_numpy()
    rep = coding.coding_report(y, p, threshold, unseen=coding.unseen_counts(test.codes, labels))
    plaus = counts[counts.measure != "coding"]
    f1 = lambda m, notes: E.prf(E.per_note(plaus[plaus.measure == m], notes=notes).sum())["f1"]
    gold = ds.spans[ds.spans.note_id.isin(report) & ds.spans.code.isin(set(labels))]
    soft = P.soft_plausibility(att[att.note_id.isin(report)], gold, ds.docs[ds.docs.note_id.isin(report)], ks=(k,))
    return {"micro_f1": rep["micro_f1"], "macro_f1": rep["macro_f1_mean"], "map": rep["map"],
            "pi_token_f1": f1(PI, report), "pi_token_f1_tuning": f1(PI, tune), "token_exact_f1": f1("token_exact", report),
            "auprc": soft["auprc"], f"p@{k}": soft[f"p@{k}"], "n_report_notes": len(report),
            "n_test_notes": len(test), "counts": counts}


def _with_seed(profile: Profile, seed: int) -> Profile:
    import dataclasses

    return dataclasses.replace(profile, common=dataclasses.replace(profile.common, seed=seed))


def guided_run(name: str, teacher: str, lam: float, targets: dict | None, ds, labels: list[str], profile: Profile,
               out_dir: Path, device: str = "cpu", trained_dir: Path | None = None, design=None) -> dict:
    """Train one student (resumable in ``out_dir``; seeded by ``common.seed``) and evaluate it;
    returns one result row. Its per-unit counts are written to ``out_dir / "note_counts.parquet"``
    (``run_dir`` in the row). With ``guided.init = "trained"`` the student starts from
    ``trained_dir / name / "model"`` (notebook 02)."""
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
    scores = evaluate_student(res.model, res.threshold, ds, profile, device, design)
    counts = scores.pop("counts")
    counts.to_parquet(Path(out_dir) / "note_counts.parquet", index=False)
    return {"model": name, "teacher": teacher if lam > 0 else "none", "lambda": lam, "seed": profile.common.seed,
            **scores, "run_dir": str(Path(out_dir).resolve()), "seconds": round(time.time() - t0, 1)}


def guided_sweep(ds, labels: list[str], targets: Mapping[str, dict], profile: Profile, out_dir: Path,
                 device: str = "cpu", trained_dir: Path | None = None, design=None) -> pd.DataFrame:
    """The lambda sweep: for each model, lambda = 0 once, then every teacher x every lambda > 0;
    every run repeated for each seed of ``common.seeds`` (folders get a ``_seed<N>`` suffix when
    there are several)."""
    from rationale_kit.core.config import seeds as seeds_of

    rows = []
    g = profile.guided
    seeds = seeds_of(profile)
    tag = lambda s: f"_seed{s}" if len(seeds) > 1 else ""
    for seed in seeds:
        p = _with_seed(profile, seed)
        for name in g.models:
            rows.append(guided_run(name, "none", 0.0, None, ds, labels, p, Path(out_dir) / f"{name}_lam0{tag(seed)}",
                                   device, trained_dir, design))
            for teacher, tg in targets.items():
                if not tg:
                    print(f"{name}: teacher {teacher} has no aligned rationales on training notes: skipped")
                    continue
                for lam in [l for l in g.lambdas if l > 0]:
                    rows.append(guided_run(name, teacher, lam, tg, ds, labels, p,
                                           Path(out_dir) / f"{name}_{teacher}_lam{lam:g}{tag(seed)}", device, trained_dir, design))
    out = pd.DataFrame(rows)
    out["init"] = g.init
    return out


def sweep_counts(sweep: pd.DataFrame) -> pd.DataFrame:
    """The per-unit counts of every run of ``sweep`` (``run_dir/note_counts.parquet``), with the
    run's ``model, teacher, lambda, seed``."""
    parts = []
    for r in sweep.to_dict("records"):
        path = Path(str(r.get("run_dir", ""))) / "note_counts.parquet"
        if not path.exists():
            raise FileNotFoundError(f"no per-unit counts of run {r['model']}/{r['teacher']}/lambda={r['lambda']} at {path}")
        parts.append(pd.read_parquet(path).assign(model=r["model"], teacher=r["teacher"], **{"lambda": float(r["lambda"])},
                                                  seed=int(r["seed"])))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _runs(counts: pd.DataFrame, model: str, teacher: str, lam: float, measure: str) -> pd.DataFrame:
    """Counts of one setting, summed over its seeds per unit."""
    c = counts[(counts.model == model) & (counts.teacher == teacher) & np.isclose(counts["lambda"], lam) & (counts.measure == measure)]
    return c.groupby(["note_id", "code", "measure"], as_index=False)[["tp", "fp", "fn"]].sum()


def choose_lambda(counts: pd.DataFrame, model: str, teacher: str, tuning_ids: Iterable[str],
                  measure: str = PI) -> tuple[float, dict]:
    """The lambda > 0 of ``teacher`` with the best pooled ``measure`` F1 on the tuning notes
    (counts summed over seeds; the smallest lambda on ties); returns it and every lambda's F1."""
    from rationale_kit.metrics import evaluation as E

    c = counts[(counts.model == model) & (counts.teacher == teacher) & (counts["lambda"] > 0)]
    scores = {}
    for lam in sorted(set(c["lambda"])):
        runs = _runs(counts, model, teacher, lam, measure)
        scores[lam] = E.prf(E.per_note(runs, notes=tuning_ids).sum())["f1"]
    if not scores:
        raise ValueError(f"no run of {model} with teacher {teacher} and lambda > 0")
    best = max(scores.values())
    return min(l for l, v in scores.items() if v >= best - 1e-12), scores


def tradeoff(sweep: pd.DataFrame, counts: pd.DataFrame, design, profile: Profile, dataset: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per model and teacher: lambda chosen on the tuning notes, then on the report notes the PI
    token F1 gain over lambda = 0 and the micro-F1 change (test notes that are not tuning notes),
    each with a paired bootstrap interval over notes (counts summed over seeds) and, with several
    seeds, the mean and standard deviation across seeds. Returns (table, finding (c)'s verdicts)."""
    from rationale_kit.metrics import evaluation as E

    boot_ = boot(profile)
    report, tune = set(design.report_ids), set(design.tuning_ids)
    rows, verdicts = [], []
    for model in sorted(set(sweep.model)):
        part = sweep[sweep.model == model]
        for teacher in sorted(set(part.loc[part["lambda"] > 0, "teacher"])):
            lam, tuning_f1 = choose_lambda(counts, model, teacher, tune)
            t = part[(part.teacher == teacher) & (part["lambda"] > 0)]
            by_lam = t.groupby("lambda")["pi_token_f1"].mean()
            plaus = E.compare_counts(_runs(counts, model, teacher, lam, PI), _runs(counts, model, "none", 0.0, PI), boot_, notes=report)
            code_ = E.compare_counts(_runs(counts, model, teacher, lam, "coding"), _runs(counts, model, "none", 0.0, "coding"),
                                     boot_, notes=set(ds_test_ids(counts, tune)), measure="coding")
            chosen = t[np.isclose(t["lambda"], lam)]
            base = part[part["lambda"] == 0]
            gains = [a - b for a, b in zip(chosen.sort_values("seed").pi_token_f1, base.sort_values("seed").pi_token_f1)]
            costs = [a - b for a, b in zip(chosen.sort_values("seed").micro_f1, base.sort_values("seed").micro_f1)]
            gm, gs = E.seed_spread(gains)
            cm, cs = E.seed_spread(costs)
            base_m = base.groupby("seed")[["micro_f1", "pi_token_f1"]].mean().mean()
            rows.append({"model": model, "teacher": teacher, "lambda (chosen on tuning notes)": lam,
                         "tuning PI token F1": tuning_f1[lam], "lambda best on report notes": float(by_lam.idxmax()),
                         "PI token F1 gain": plaus["effect"], "gain lo": plaus["lo"], "gain hi": plaus["hi"],
                         "micro-F1 change": code_["effect"], "change lo": code_["lo"], "change hi": code_["hi"],
                         "n_notes": plaus["n_notes"], "n_pairs": plaus["n_pairs"], "n_test_notes": code_["n_notes"],
                         "seeds": int(chosen.seed.nunique()), "gain seed mean": gm, "gain seed std": gs,
                         "change seed mean": cm, "change seed std": cs,
                         "some lambda improves both": bool(((t.groupby("lambda").micro_f1.mean() > base_m.micro_f1)
                                                            & (t.groupby("lambda").pi_token_f1.mean() > base_m.pi_token_f1)).any())})
            label = f"{model} + {teacher} (lambda={lam:g}) vs unguided"
            v1 = E.verdict_row("c", f"guided learning raises plausibility: {label}", model, dataset, PI,
                               "report notes, gold pairs both students have", plaus, "greater")
            v2 = E.verdict_row("c", f"at a coding cost (micro-F1): {label}", model, dataset, "micro_f1",
                               "test notes that are not tuning notes", code_, "less")
            verdicts += [v1, v2, {"finding": "c", "comparison": f"plausibility up at a coding cost: {label}", "model": model,
                                  "dataset": dataset, "measure": "both", "units": "as above", "verdict": E.combine([v1["verdict"], v2["verdict"]])}]
    return pd.DataFrame(rows), E.verdicts_frame(verdicts)


def ds_test_ids(counts: pd.DataFrame, tuning: set) -> list[str]:
    """The notes with coding counts (the test notes) that are not tuning notes."""
    return sorted(set(counts.loc[counts.measure == "coding", "note_id"]) - set(tuning))


def tradeoff_verdict(sweep: pd.DataFrame, counts: pd.DataFrame, design, profile: Profile, dataset: str = "") -> pd.DataFrame:
    """The table of :func:`tradeoff` (lambda chosen on the tuning notes, reported on the rest)."""
    return tradeoff(sweep, counts, design, profile, dataset)[0]


NER_COLUMNS = ["teacher", "train notes", "requested", "spans", "pi_token_f1", "token_exact_f1", "span_exact_f1",
               "n_notes", "n_pairs", "units", "run_dir", "seconds", "pi_token_f1_lo", "pi_token_f1_hi"]


def ner_experiment(ds, targets: Mapping[str, dict], profile: Profile, out_dir: Path, train_dir: Path,
                   device: str = "cpu", design=None) -> pd.DataFrame:
    """Train the code-agnostic NER tagger on each teacher's spans at each training-set size (capped
    by the teacher's coverage) and score its spans, assigned to the codes the first guided model
    predicts, against every gold pair of the first ``guided.ner_eval_notes`` report notes (a gold
    code the model did not predict is a miss). One row per (teacher, size), with its units and an
    interval; the per-pair counts are in ``<out_dir>/<teacher>_<n>/note_counts.parquet``."""
    from rationale_kit.metrics import evaluation as E
    from rationale_kit.rationales import ner as N
    from rationale_kit.metrics import plausibility as P

    g = profile.guided
    design = design or evaluation_design(ds.docs, profile)
    boot_ = boot(profile)
    report = ds.docs[ds.docs.note_id.isin(set(design.report_ids))].reset_index(drop=True)
    evald = report.head(g.ner_eval_notes) if g.ner_eval_notes else report
    gold = ds.spans[ds.spans.note_id.isin(set(evald.note_id))]
    model_name = g.models[0]
    preds = pd.read_parquet(Path(train_dir) / "predictions.parquet")
    predicted = preds[(preds.model == model_name) & preds.pred & preds.note_id.isin(set(evald.note_id))][["note_id", "code"]]
    units = f"first {len(evald)} report notes, every gold pair; spans on codes {model_name} predicts"
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
                              lr=g.ner_lr, head_lr=g.ner_head_lr, freeze_layers=g.ner_freeze_layers,
                              formulation=g.ner_formulation)
            t0 = time.time()
            run_dir = Path(out_dir) / f"{teacher}_{len(use)}"
            tagger = N.train_ner(ds.docs[ds.docs.note_id.isin(set(use))], spans[spans.note_id.isin(set(use))], cfg,
                                 out_dir=run_dir, device=device, progress=profile.common.progress)
            found = N.assign_codes(tagger.predict_spans(evald[["note_id", "text"]]), predicted)
            m = P.mdace_measures(gold, found, evald)
            counts = E.pair_counts(gold, found, evald)
            counts.to_parquet(run_dir / "note_counts.parquet", index=False)
            iv = E.interval(E.per_note(counts[counts.measure == PI]), "f1", boot_)
            rows.append(E.with_interval({"teacher": teacher, "train notes": len(use), "requested": size, "spans": len(found),
                                         "pi_token_f1": m["token_position_independent"]["f1"], "token_exact_f1": m["token_exact"]["f1"],
                                         "span_exact_f1": m["span_exact"]["f1"], "n_notes": len(evald),
                                         "n_pairs": int(len(counts) // len(P.MDACE_MEASURES)), "units": units,
                                         "run_dir": str(run_dir.resolve()), "seconds": round(time.time() - t0, 1)}, iv, "pi_token_f1_"))
    return pd.DataFrame(rows, columns=NER_COLUMNS)  # no teacher with spans: no rows, same columns


def guided_summary(sweep: pd.DataFrame, ner: pd.DataFrame, counts: pd.DataFrame, design, profile: Profile) -> pd.DataFrame:
    """Paper-style summary: the unguided model, the guided model per teacher at the lambda chosen
    on the tuning notes, and the NER tagger at its largest size. ``pi_token_f1`` is on each row's
    own units (``n_notes``, ``n_pairs``, ``units``: students on every report note, NER on its
    notes); ``pi_token_f1 (common units)`` puts every row on the pairs all of them have, with a
    bootstrap interval."""
    from rationale_kit.metrics import evaluation as E

    boot_ = boot(profile)
    report = set(design.report_ids)
    entries = []  # (method, row values, PI counts)
    for model in sorted(set(sweep.model)):
        part = sweep[sweep.model == model]
        base = _runs(counts, model, "none", 0.0, PI)
        entries.append((f"{model} (unguided)", part[part["lambda"] == 0], base[base.note_id.isin(report)]))
        for teacher in sorted(set(part.loc[part["lambda"] > 0, "teacher"])):
            lam, _ = choose_lambda(counts, model, teacher, design.tuning_ids)
            c = _runs(counts, model, teacher, lam, PI)
            entries.append((f"{model} + {teacher} (λ={lam:g}, chosen on tuning notes)",
                            part[(part.teacher == teacher) & np.isclose(part["lambda"], lam)], c[c.note_id.isin(report)]))
    if len(ner):
        last = ner.sort_values("train notes").groupby("teacher").tail(1)
        for r in last.itertuples(index=False):
            c = pd.read_parquet(Path(r.run_dir) / "note_counts.parquet")
            entries.append((f"NER ({r.teacher}, {r[1]} notes)", None, c[c.measure == PI]))
    common = None
    for _, _, c in entries:
        keys = set(zip(c.note_id, c.code))
        common = keys if common is None else common & keys
    rows = []
    for method, runs, c in entries:
        row = {"method": method,
               "micro_f1": float(runs.micro_f1.mean()) if runs is not None else float("nan"),
               "macro_f1": float(runs.macro_f1.mean()) if runs is not None else float("nan"),
               "pi_token_f1": E.prf(c[["tp", "fp", "fn"]].sum())["f1"],
               "n_notes": int(c.note_id.nunique()), "n_pairs": int(len(c)),
               "units": "report notes, gold pairs of known codes" if runs is not None else str(ner.units.iloc[0]),
               "seeds": int(runs.seed.nunique()) if runs is not None else 1}
        mine = E.per_note(c, pairs=common or set())
        row["pi_token_f1 (common units)"] = E.prf(mine.sum())["f1"] if len(mine) else float("nan")
        E.with_interval(row, E.interval(mine, "f1", boot_) if len(mine) else None, "common_")
        row["common n_notes"], row["common n_pairs"] = len({n for n, _ in common or ()}), len(common or ())
        rows.append(row)
    return pd.DataFrame(rows)


def teacher_comparison(plaus: pd.DataFrame, calls: pd.DataFrame, llm_spans: pd.DataFrame) -> pd.DataFrame:
    """Zero- vs few-shot teacher: calls that returned usable JSON, aligned spans, and plausibility
    (MDACE PI token / exact token / exact span F1) from notebook 06, each on the pairs that
    teacher was run on (``n_notes``, ``n_pairs``, interval of the PI token F1)."""
    rows = []
    for t in ("llm_zero", "llm_few"):
        c = calls[calls.source == t] if "source" in calls else calls.iloc[:0]
        p = plaus[(plaus.source == t) & (plaus.granularity == "all") & (plaus.code_set == "all")]
        get = lambda m, col="f1": float(p.loc[p.measure == m, col].iloc[0]) if (p.measure == m).any() and col in p else float("nan")
        ok = c["outcome"].eq("ok").sum() if "outcome" in c else c["status"].isin(["ok", "cached"]).sum()
        rows.append({"teacher": t, "requests": int(len(c)), "usable answers": int(ok),
                     "aligned spans": int((llm_spans.source == t).sum()),
                     "pi_token_f1": get(PI), "pi_token_f1_lo": get(PI, "f1_lo"), "pi_token_f1_hi": get(PI, "f1_hi"),
                     "token_exact_f1": get("token_exact"), "span_exact_f1": get("span_exact"),
                     "n_notes": get(PI, "n_notes"), "n_pairs": get(PI, "n_pairs")})
    return pd.DataFrame(rows)


def few_shot_students(ds, labels: list[str], targets: Mapping[str, dict], profile: Profile, out_dir: Path,
                      device: str = "cpu", trained_dir: Path | None = None, sweep: pd.DataFrame | None = None,
                      design=None) -> pd.DataFrame:
    """The student model unguided and trained on each teacher's rationales at ``few_shot.lam``,
    for every seed of ``common.seeds``.

    A student that notebook 07 already trained with the same settings (a row of its ``sweep`` with
    the same model, teacher, lambda and seed; same profile, so the same data, targets and training)
    is reused rather than trained again; the ``trained_in`` column says which."""
    from rationale_kit.core.config import seeds as seeds_of

    fs = profile.few_shot
    seeds = seeds_of(profile)

    def run(teacher: str, lam: float, tg: dict | None, folder: str, seed: int) -> dict:
        if sweep is not None and len(sweep):
            hit = sweep[(sweep.model == fs.student_model) & (sweep.teacher == teacher) & np.isclose(sweep["lambda"], lam)]
            if "seed" in hit:
                hit = hit[hit.seed == seed]
            if len(hit):
                return {**hit.iloc[0].to_dict(), "trained_in": "07_guided_learning"}
        tag = f"_seed{seed}" if len(seeds) > 1 else ""
        row = guided_run(fs.student_model, teacher, lam, tg, ds, labels, _with_seed(profile, seed),
                         Path(out_dir) / f"{folder}{tag}", device, trained_dir, design)
        return {**row, "trained_in": "08_few_shot"}

    rows = []
    for seed in seeds:
        rows.append(run("none", 0.0, None, "unguided", seed))
        for teacher, tg in targets.items():
            if not tg:
                rows.append({"model": fs.student_model, "teacher": teacher, "lambda": fs.lam, "seed": seed,
                             "note": "no aligned teacher rationales"})
                continue
            rows.append(run(teacher, fs.lam, tg, teacher, seed))
    return pd.DataFrame(rows)


def few_shot_summary(teacher_counts: pd.DataFrame, students: pd.DataFrame, profile: Profile,
                     dataset: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Finding (d), on ONE set of units: the report-note gold pairs that the zero- and the
    few-shot teacher were both run on and that every student knows. Per role (teacher, student):
    PI token F1 with the zero-shot and with the few-shot teacher on those pairs, the gain, its
    paired bootstrap interval and n. ``teacher_counts``: notebook 06's ``pair_counts.parquet``;
    ``students``: :func:`few_shot_students` rows (their ``run_dir`` counts, summed over seeds).
    Returns (summary, verdicts)."""
    from rationale_kit.metrics import evaluation as E

    boot_ = boot(profile)
    t = teacher_counts[(teacher_counts.measure == PI) & (teacher_counts.model == "-")]
    teach = {k: t[t.source == k][E.COUNT_COLUMNS] for k in ("llm_zero", "llm_few")}
    ok = students[students.get("run_dir", pd.Series(index=students.index, dtype=object)).notna()] if len(students) else students
    stud = {}
    for k in ("llm_zero", "llm_few"):
        runs = ok[ok.teacher == k] if len(ok) else ok
        if len(runs):
            c = pd.concat([pd.read_parquet(Path(d) / "note_counts.parquet") for d in runs.run_dir], ignore_index=True)
            c = c[c.measure == PI]
            stud[k] = c.groupby(["note_id", "code", "measure"], as_index=False)[["tp", "fp", "fn"]].sum()
    units = None
    for c in list(teach.values()) + list(stud.values()):
        keys = set(zip(c.note_id, c.code))
        units = keys if units is None else units & keys
    units = units or set()
    rows, verdicts = [], []
    for role, pair in (("teacher", teach), ("student", stud)):
        if "llm_zero" in pair and "llm_few" in pair:
            res = E.compare_counts(E.restrict(pair["llm_few"], units), E.restrict(pair["llm_zero"], units), boot_)
        else:
            res = {"a": np.nan, "b": np.nan, "effect": np.nan, "lo": np.nan, "hi": np.nan, "n_notes": 0, "n_pairs": 0}
        v = E.verdict_row("d", f"few-shot examples help the {role} (llm_few - llm_zero)", "-" if role == "teacher" else
                          str(profile.few_shot.student_model), dataset, PI, "report-note gold pairs both teachers were run on "
                          "and every student knows", res, "greater")
        verdicts.append(v)
        rows.append({"role": role, "zero-shot": res["b"], "few-shot": res["a"], "gain": res["effect"], "gain lo": res["lo"],
                     "gain hi": res["hi"], "n_notes": res["n_notes"], "n_pairs": res["n_pairs"], "verdict": v["verdict"]})
    verdicts.append({"finding": "d", "comparison": "few-shot examples help the teacher and the students", "model": "-",
                     "dataset": dataset, "measure": PI, "units": "as above", "verdict": E.combine([v["verdict"] for v in verdicts])})
    return pd.DataFrame(rows), E.verdicts_frame(verdicts)
