"""Notebook 09's protocol: the questions the paper leaves open (docs/method/open_questions.md).

1. the coding / plausibility trade-off: gradient surgery and a two-stage scheme beside the
   multi-objective loss of notebook 07, every setting chosen on the tuning notes, verdicts
   "plausibility up without a coding cost" (:func:`tradeoff_runs`, :func:`pareto`);
2. finding (b) under measures without out-of-distribution inputs, Soft-NC/NS and F-Fidelity
   (:func:`robust_faithfulness`, :func:`robust_verdicts`);
3. finding (a) at several alignment thresholds and the one tuned on the tuning notes
   (:func:`threshold_sensitivity`);
4. the NER tagger and the multi-objective student as the teacher's training notes grow
   (:func:`learning_curve`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from rationale_kit.core.config import Profile
from rationale_kit.workbook import artifacts as A
from rationale_kit.workbook.protocols.common import PI, bootstrap
from rationale_kit.workbook.protocols.guided import choose_lambda, evaluate_student

METHODS = ("unguided", "multi-objective", "gradient surgery", "two-stage")


@dataclass(frozen=True)
class Plan:
    """What notebook 09 runs, after ``open_questions.scale``."""

    models: list
    surgery_lambdas: list
    tolerances: list
    epochs: int
    faithfulness_pairs: int
    fractions: list
    curve_notes: int | None


def plan(profile: Profile) -> Plan:
    """The resolved settings: ``scale: reduced`` keeps the first model, the first two values of
    each grid, at most 20 faithfulness pairs and at most 40 notes for the learning curve."""
    oq, g = profile.open_questions, profile.guided
    models = list(oq.models or g.models)
    epochs = oq.epochs or g.epochs or 1
    p = Plan(models, list(oq.surgery_lambdas), list(oq.two_stage_tolerances), int(epochs), int(oq.faithfulness_pairs),
             sorted(set(oq.fractions)), oq.curve_notes)
    if oq.scale == "reduced":
        p = Plan(models[:1], p.surgery_lambdas[:2], p.tolerances[:2], p.epochs, min(20, p.faithfulness_pairs), p.fractions,
                 min(40, p.curve_notes or 40))
    return p


def student_notes(ds, profile: Profile) -> pd.DataFrame:
    """The training notes the students see (``guided.max_train_docs`` first ones), as notebook 07."""
    train = ds.docs[ds.docs.split == "train"]
    cap = profile.guided.max_train_docs
    return train.head(cap) if cap else train


def _threshold(model, ds, profile: Profile, device) -> float:
    """Decision threshold tuned on the validation notes (as after every training run)."""
    from rationale_kit.metrics import coding
    from rationale_kit.training import predict_probs

    val = ds.docs[ds.docs.split == "val"]
    probs = predict_probs(model, val, device=device)
    t, _ = coding.tune_threshold(coding.label_matrix(val.codes, list(model.labels)), probs, profile.train.threshold_grid)
    return float(t)


def _run_row(model, name: str, method: str, setting: float, ds, profile: Profile, run_dir: Path, device, design,
             t0: float, extra: dict) -> dict:
    threshold = _threshold(model, ds, profile, device)
    scores = evaluate_student(model, threshold, ds, profile, device, design)
    counts = scores.pop("counts")
    run_dir.mkdir(parents=True, exist_ok=True)
    counts.to_parquet(run_dir / A.NOTE_COUNTS.file, index=False)
    return {"model": name, "method": method, "setting": float(setting), **scores, **extra,
            "run_dir": str(run_dir.resolve()), "seconds": round(time.time() - t0, 1)}


def tradeoff_runs(ds, targets: dict, sweep: pd.DataFrame, profile: Profile, out_dir: Path, device: str = "cpu",
                  trained_dir: Path | None = None, design=None) -> pd.DataFrame:
    """Train and evaluate the two new methods per model of :func:`plan`, on the students'
    training notes with ``targets`` (one teacher's spans), beside notebook 07's runs of the same
    teacher (``sweep``, read back, not retrained):

    - gradient surgery at each ``surgery_lambdas``, starting where notebook 07's students start
      (notebook 02's model with ``guided.init: trained``, else the unguided student);
    - two-stage at each ``two_stage_tolerances``: the unguided student (stage 1, notebook 07's
      lambda = 0 run) with its label-attention queries fitted to the rationale loss (stage 2).

    One row per run (``method``, ``setting``: lambda or tolerance, the student measures of
    :func:`~rationale_kit.workbook.protocols.guided.evaluate_student`, ``run_dir`` with its
    per-unit counts); notebook 07's unguided and multi-objective rows of the teacher included."""
    from rationale_kit import models as M
    from rationale_kit.training import tradeoff as T

    oq, g = profile.open_questions, profile.guided
    pl = plan(profile)
    docs = student_notes(ds, profile)
    rows = []
    for name in pl.models:
        part = sweep[(sweep.model == name) & (sweep.seed == sweep.seed.min())]
        base = part[part["lambda"] == 0]
        if base.empty:
            raise ValueError(f"notebook 07 has no unguided run of {name}: run 07_guided_learning with {name} in guided.models")
        unguided = Path(base.run_dir.iloc[0]) / "model"
        start = Path(trained_dir) / name / "model" if g.init == "trained" else unguided
        for r in part.to_dict("records"):
            if r["lambda"] == 0 or r["teacher"] == oq.teacher:
                rows.append({**r, "method": "unguided" if r["lambda"] == 0 else "multi-objective", "setting": float(r["lambda"])})
        params = getattr(profile.train, name)
        batch = oq.batch_size or params.batch_size
        for lam in pl.surgery_lambdas:
            t0 = time.time()
            model, _ = M.load(start, device=device)
            stats = T.train_surgery(model, docs, targets, lam, epochs=pl.epochs, lr=oq.surgery_lr or params.lr, batch_size=batch,
                                    kind=g.loss, clip_norm=profile.train.clip_norm, seed=profile.common.seed, device=device)
            rows.append(_run_row(model, name, "gradient surgery", lam, ds, profile, Path(out_dir) / f"{name}_surgery_{lam:g}",
                                 device, design, t0, {"conflict share": stats["conflicts"] / max(1, stats["rationale_steps"])}))
        for tol in pl.tolerances:
            t0 = time.time()
            model, _ = M.load(unguided, device=device)
            stats = T.train_two_stage(model, docs, targets, tol, epochs=pl.epochs, lr=oq.two_stage_lr, batch_size=batch,
                                      kind=g.loss, penalty=oq.two_stage_penalty, seed=profile.common.seed, device=device)
            rows.append(_run_row(model, name, "two-stage", tol, ds, profile, Path(out_dir) / f"{name}_two_stage_{tol:g}",
                                 device, design, t0, {"logits within tolerance": stats["within_tol"]}))
    out = pd.DataFrame(rows)
    return out[[c for c in ["model", "method", "setting", "micro_f1", "macro_f1", "pi_token_f1", "pi_token_f1_tuning",
                            "token_exact_f1", "conflict share", "logits within tolerance", "n_report_notes",
                            "n_test_notes", "run_dir", "seconds"] if c in out.columns]]


def run_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per-unit counts of every run of :func:`tradeoff_runs` with its ``model, method, setting``."""
    parts = []
    for r in runs.to_dict("records"):
        path = Path(str(r["run_dir"])) / A.NOTE_COUNTS.file
        if not path.exists():
            raise FileNotFoundError(f"no per-unit counts of run {r['model']}/{r['method']}/{r['setting']:g} at {path}")
        parts.append(pd.read_parquet(path).assign(model=r["model"], method=r["method"], setting=float(r["setting"])))
    return pd.concat(parts, ignore_index=True)


def _counts(counts: pd.DataFrame, model: str, method: str, setting: float, measure: str) -> pd.DataFrame:
    c = counts[(counts.model == model) & (counts.method == method) & np.isclose(counts.setting, setting) & (counts.measure == measure)]
    return c.groupby(["note_id", "code", "measure"], as_index=False)[["tp", "fp", "fn"]].sum()


def _f1(c: pd.DataFrame, notes) -> float:
    from rationale_kit.metrics import evaluation as E

    return E.prf(E.per_note(c, notes=notes).sum())["f1"]


def choose_setting(counts: pd.DataFrame, model: str, method: str, tuning_ids, slack: float = 0.0) -> tuple[float, pd.DataFrame]:
    """The setting of ``method`` chosen on the tuning notes: the best pooled PI token F1 among the
    settings whose tuning micro-F1 is at most ``slack`` below the unguided student's (the best PI
    token F1 of all when none is), the smallest setting on ties. Returns it and the per-setting
    tuning scores (``setting, tuning PI token F1, tuning micro-F1, eligible``)."""
    tune = set(tuning_ids)
    base_code = _f1(_counts(counts, model, "unguided", 0.0, "coding"), tune)
    rows = []
    for s in sorted(set(counts.loc[(counts.model == model) & (counts.method == method), "setting"])):
        pi = _f1(_counts(counts, model, method, s, PI), tune)
        code = _f1(_counts(counts, model, method, s, "coding"), tune)
        rows.append({"setting": s, "tuning PI token F1": pi, "tuning micro-F1": code, "eligible": code >= base_code - slack - 1e-12})
    if not rows:
        raise ValueError(f"no run of {model} with method {method!r}")
    scores = pd.DataFrame(rows)
    pool = scores[scores.eligible] if scores.eligible.any() else scores
    best = pool["tuning PI token F1"].max()
    return float(pool.loc[pool["tuning PI token F1"] >= best - 1e-12, "setting"].min()), scores


def _no_cost_row(code: dict, label: str, model: str, dataset: str, margin: float, units: str, min_notes: int = 0) -> dict:
    """"Without a coding cost" as a non-inferiority verdict: holds when the micro-F1 change's
    interval lies above ``-margin``, does not hold when it lies below it."""
    from rationale_kit.metrics import evaluation as E

    shifted = {**code, **{k: code[k] + margin for k in ("effect", "lo", "hi")}}
    row = E.verdict_row("q1", f"no coding cost (micro-F1 change > -{margin:g}): {label}", model, dataset, "micro_f1",
                        units, shifted, "greater", min_notes)
    row.update({k: code[k] for k in ("effect", "lo", "hi")})
    row["expect"] = f"> -{margin:g}"
    return row


def pareto(runs: pd.DataFrame, counts: pd.DataFrame, design, profile: Profile, dataset: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per model and method: the setting chosen on the tuning notes, then on the report notes the
    PI token F1 (interval over notes) and on the test notes that are not tuning notes the micro-F1
    (interval), every setting listed (``chosen``); and the verdicts per method against the unguided
    student: plausibility up (paired interval, expect > 0), no coding cost (non-inferiority at
    ``open_questions.coding_margin``) and both. Returns (table, verdicts)."""
    from rationale_kit.metrics import evaluation as E

    boot_ = bootstrap(profile.evaluation)
    oq = profile.open_questions
    report, tune = set(design.report_ids), set(design.tuning_ids)
    code_notes = sorted(set(counts.loc[counts.measure == "coding", "note_id"]) - tune)
    rows, verdicts = [], []
    for model in sorted(set(runs.model)):
        base_pi, base_code = _counts(counts, model, "unguided", 0.0, PI), _counts(counts, model, "unguided", 0.0, "coding")
        for method in [m for m in METHODS if m in set(runs[runs.model == model].method)]:
            chosen, scores = (0.0, None) if method == "unguided" else choose_setting(counts, model, method, tune, oq.coding_slack)
            for s in sorted(set(runs[(runs.model == model) & (runs.method == method)].setting)):
                pi, code = _counts(counts, model, method, s, PI), _counts(counts, model, method, s, "coding")
                pi_n, code_n = E.per_note(pi, notes=report), E.per_note(code, notes=code_notes)
                row = {"model": model, "method": method, "setting": s, "chosen": bool(np.isclose(s, chosen)),
                       "pi_token_f1": E.prf(pi_n.sum())["f1"], "micro_f1": E.prf(code_n.sum())["f1"]}
                E.with_interval(row, E.interval(pi_n, "f1", boot_), "pi_")
                E.with_interval(row, E.interval(code_n, "f1", boot_), "micro_")
                if scores is not None:
                    sc = scores[np.isclose(scores.setting, s)].iloc[0]
                    row["tuning PI token F1"], row["tuning micro-F1"] = sc["tuning PI token F1"], sc["tuning micro-F1"]
                row.update(n_notes=int(pi_n.shape[0]), n_pairs=int(len(pi[pi.note_id.isin(report)])), n_test_notes=int(code_n.shape[0]))
                rows.append(row)
            if method == "unguided":
                continue
            label = f"{model} {method} ({chosen:g}, chosen on tuning notes) vs unguided"
            plaus = E.compare_counts(_counts(counts, model, method, chosen, PI), base_pi, boot_, notes=report)
            code = E.compare_counts(_counts(counts, model, method, chosen, "coding"), base_code, boot_, notes=code_notes,
                                    measure="coding")
            v1 = E.verdict_row("q1", f"plausibility up: {label}", model, dataset, PI, "report notes, gold pairs both students have",
                               plaus, "greater", boot_.min_notes)
            v2 = _no_cost_row(code, label, model, dataset, oq.coding_margin, "test notes that are not tuning notes", boot_.min_notes)
            verdicts += [v1, v2, {"finding": "q1", "comparison": f"plausibility up without a coding cost: {label}", "model": model,
                                  "dataset": dataset, "measure": "both", "units": "as above",
                                  "verdict": E.combine([v1["verdict"], v2["verdict"]])}]
    return pd.DataFrame(rows), E.verdicts_frame(verdicts)


# ---------------------------------------------------------------------------------------------
# 2. finding (b) under Soft-NC/NS and F-Fidelity
# ---------------------------------------------------------------------------------------------
def _b_names(k: int) -> tuple[str, str]:
    """Finding (b)'s two sources by the names notebook 05 gives them (top-k attention, exact-code entity)."""
    from rationale_kit.workbook.protocols.faithfulness import compared_sources

    att, ent = compared_sources(k)
    return att.name, ent.name


def b_pairs(faith: pd.DataFrame, model: str, k: int, n: int, docs: pd.DataFrame) -> list[tuple[str, str]]:
    """The first ``n`` pairs (note order, then code) on which notebook 05 scored both of finding
    (b)'s sources under ``model`` (``faith``: its per-pair rows)."""
    rat = faith[(faith.control == "rationale") & (faith.model == model) & faith.k.isna()]
    names = _b_names(k)
    have = [set(zip(p.note_id.astype(str), p.code.astype(str))) for s, p in rat.groupby("source") if s in names]
    if len(have) < 2:
        return []
    order = {n_: i for i, n_ in enumerate(docs.note_id)}
    return sorted(have[0] & have[1], key=lambda p: (order.get(p[0], len(order)), p[1]))[:n]


def b_rationales(model, ds, pairs, entity: pd.DataFrame, k: int, device="cpu") -> list[tuple[str, str, str, np.ndarray]]:
    """Finding (b)'s two rationales of each pair as importance over the model's units: the model's
    attention on its top-``k`` units (0 elsewhere; ``attention (top-k)``) and the 0/1 mask of the
    exact-code entity spans (``entity (exact_code)``)."""
    import torch

    from rationale_kit.rationales import to_token_mask

    texts = ds.docs.set_index("note_id").text
    ent = entity[entity.method == "exact_code"] if "method" in entity.columns else entity
    out = []
    for note_id, code in pairs:
        enc = model.tokenizer.encode(texts[note_id])
        ids, mask = model.collate([enc])
        with torch.no_grad():
            a = model(ids.to(device), mask.to(device), torch.tensor([model.labels.index(code)], device=device)).attention
        a = a[0, 0, : len(enc)].float().cpu().numpy()
        top = np.zeros(len(a), dtype=bool)
        top[np.argsort(-a, kind="stable")[: min(k, len(a))]] = True
        out.append((note_id, code, _b_names(k)[0], np.where(top, a, 0.0)))
        spans = ent[(ent.note_id == note_id) & (ent.code == code)]
        m = to_token_mask(list(zip(spans.start, spans.end)), texts[note_id], enc.offsets).astype(float)
        out.append((note_id, code, _b_names(k)[1], m))
    return out


def robust_faithfulness(models_: Mapping[str, object], ds, faith: pd.DataFrame, entity: pd.DataFrame, profile: Profile,
                        device: str = "cpu") -> pd.DataFrame:
    """Soft-NC / Soft-NS under each model of :func:`plan` (notebook 02's) and FFid+ / FFid- (probability
    form) under its random-masking fine-tuned copy, of finding (b)'s two rationales on the first
    ``faithfulness_pairs`` pairs notebook 05 scored both on. Long table
    (:data:`~rationale_kit.metrics.faithfulness.robust.ROBUST_COLUMNS`)."""
    from rationale_kit.metrics.faithfulness import robust as R
    from rationale_kit.training.tradeoff import finetune_random_masking

    oq = profile.open_questions
    pl = plan(profile)
    k = profile.rationales.topk
    texts = dict(zip(ds.docs.note_id, ds.docs.text))
    parts = []
    for name in pl.models:
        if name not in models_:
            continue
        model = models_[name]
        pairs = b_pairs(faith, name, k, pl.faithfulness_pairs, ds.docs)
        if not pairs:
            print(f"{name}: notebook 05 scored no pair with both of finding (b)'s sources")
            continue
        rats = b_rationales(model, ds, pairs, entity, k, device)
        parts.append(R.soft_scores(model, texts, rats, model_name=name, samples=oq.soft_samples, seed=profile.common.seed,
                                   device=device))
        ft = finetune_random_masking(model, student_notes(ds, profile), oq.ffid_beta, epochs=oq.ffid_epochs, lr=oq.ffid_lr,
                                     batch_size=oq.batch_size or getattr(profile.train, name).batch_size,
                                     seed=profile.common.seed, device=device)
        parts.append(R.ffid_scores(ft, texts, rats, model_name=name, alpha=oq.ffid_alpha, beta=oq.ffid_beta, samples=oq.ffid_samples,
                                   seed=profile.common.seed, device=device))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=R.ROBUST_COLUMNS)


#: finding (b)'s claims under the new measures: (measure, claim, expected sign of attention - entity)
ROBUST_CLAIMS = (("soft_nc", "attention more comprehensive", "greater"),
                 ("soft_ns", "entity more sufficient", "less"),
                 ("ffid_plus_prob", "attention more comprehensive", "greater"),
                 ("ffid_minus_prob", "entity more sufficient", "greater"))


def robust_verdicts(scores: pd.DataFrame, profile: Profile, dataset: str = "") -> pd.DataFrame:
    """Finding (b) re-tested per model and family of measures (Soft-NC/NS; F-Fidelity in probability form): attention
    - entity on the pairs both have a value for (a missing value drops the pair), paired
    bootstrap over notes, a verdict per measure and a combined one per family."""
    from rationale_kit.metrics import evaluation as E

    boot_ = bootstrap(profile.evaluation)
    k = profile.rationales.topk
    att, ent = _b_names(k)
    rows = []
    for model, part in scores.dropna(subset=["value"]).groupby("model"):
        for family, measures in (("Soft-NC/NS", ("soft_nc", "soft_ns")), ("F-Fidelity (probability)", ("ffid_plus_prob", "ffid_minus_prob"))):
            got = []
            for measure, claim, expect in ROBUST_CLAIMS:
                if measure not in measures:
                    continue
                get = lambda s: part[(part.source == s) & (part.measure == measure)][["note_id", "code", "value"]]
                r = E.verdict_row("q2", f"{claim} ({measure}: {att} - {ent})", model, dataset, measure,
                                  "finding (b)'s pairs (notebook 05), both defined", E.compare_values(get(att), get(ent), boot_), expect,
                                  boot_.min_notes)
                rows.append(r)
                got.append(r["verdict"])
            rows.append({"finding": "q2", "comparison": f"(b) under {family}: attention more comprehensive, entity more sufficient",
                         "model": model, "dataset": dataset, "measure": family, "units": "as above", "verdict": E.combine(got)})
    return E.verdicts_frame(rows)


# ---------------------------------------------------------------------------------------------
# 3. finding (a) at several alignment thresholds
# ---------------------------------------------------------------------------------------------
def _llm_counts(ds, quotes: pd.DataFrame, threshold: float, design, notes: set, occurrences: str) -> pd.DataFrame:
    from rationale_kit.metrics import evaluation as E
    from rationale_kit.rationales import alignment as AL

    docs = ds.docs[ds.docs.note_id.isin(set(design.eval_ids))]
    gold_all = ds.spans[ds.spans.note_id.isin(notes)]
    aligned = AL.align_quotes(ds.docs[["note_id", "text"]], quotes, threshold, occurrences)
    parts = []
    for src in sorted(set(quotes.source)):
        spans = AL.aligned_to_spans(aligned[aligned.source == src], src) if len(aligned) else pd.DataFrame(columns=["note_id", "code", "start", "end"])
        gold = E.restrict(gold_all, design.pairs(str(src)))
        c = E.pair_counts(gold, spans[spans.note_id.isin(notes)], docs)
        parts.append(c.assign(source=src, model="-"))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def tune_threshold(ds, quotes: pd.DataFrame, design, profile: Profile) -> tuple[float, pd.DataFrame]:
    """The alignment threshold of ``open_questions.threshold_grid`` with the best pooled PI token F1
    of the aligned LLM spans (every teacher) on the tuning notes (the smallest on ties)."""
    from rationale_kit.metrics import evaluation as E

    tune = set(design.tuning_ids)
    rows = []
    for t in profile.open_questions.threshold_grid:
        c = _llm_counts(ds, quotes, t, design, tune, profile.alignment.occurrences)
        f1 = E.prf(E.per_note(c[c.measure == PI]).sum())["f1"] if len(c) else float("nan")
        rows.append({"threshold": float(t), "tuning PI token F1": f1, "n_pairs": int((c.measure == PI).sum()) if len(c) else 0})
    grid = pd.DataFrame(rows)
    ok = grid.dropna(subset=["tuning PI token F1"])
    if ok.empty:
        print(f"no aligned LLM span on the tuning notes' pairs at any threshold: the 'tuned' threshold is the profile's "
              f"alignment.threshold ({profile.alignment.threshold:g})")
        return float(profile.alignment.threshold), grid
    best = ok["tuning PI token F1"].max()
    return float(ok.loc[ok["tuning PI token F1"] >= best - 1e-12, "threshold"].min()), grid


def threshold_sensitivity(ds, quotes: pd.DataFrame, counts06: pd.DataFrame, design, profile: Profile,
                          dataset: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Finding (a) (notebook 06's comparisons) with the LLM spans re-aligned at each threshold of
    ``open_questions.thresholds`` and the tuned one (:func:`tune_threshold`); entity and attention
    counts are notebook 06's. Returns (the verdict rows with a ``threshold`` column and the
    tuning grid)."""
    from rationale_kit.workbook.protocols.plausibility import plausibility_verdicts

    tuned, grid = tune_threshold(ds, quotes, design, profile)
    report = set(design.report_ids)
    rest = counts06[~counts06.source.isin(set(quotes.source))]
    out = []
    for t in sorted(set(map(float, profile.open_questions.thresholds)) | {tuned}):
        llm = _llm_counts(ds, quotes, t, design, report, profile.alignment.occurrences)
        v = plausibility_verdicts(pd.concat([rest, llm], ignore_index=True), profile, dataset)
        tag = f"threshold {t:g}" + (" (tuned)" if np.isclose(t, tuned) else "")
        v = v.assign(finding="q3", comparison=[f"(a) at {tag}: {c}" for c in v.comparison])
        out.append(v.assign(threshold=t, tuned=bool(np.isclose(t, tuned))))
    return pd.concat(out, ignore_index=True), grid.assign(chosen=np.isclose(grid.threshold, tuned))


# ---------------------------------------------------------------------------------------------
# 4. NER formulation and multi-objective student as the teacher's data grows
# ---------------------------------------------------------------------------------------------
def learning_curve(ds, targets: dict, sweep_counts07: pd.DataFrame, labels: list, profile: Profile, out_dir: Path,
                   device: str = "cpu", trained_dir: Path | None = None, design=None,
                   ner07: pd.DataFrame | None = None) -> pd.DataFrame:
    """At each fraction of :func:`plan` of the training notes with teacher spans (the first ones by
    note id, as notebook 07's NER experiment takes them; at most ``curve_notes``): the multi-objective student (the first model of :func:`plan`, lambda chosen on
    the tuning notes in notebook 07 for ``open_questions.teacher``) trained on those notes only,
    and the NER tagger trained on their spans (assigned to the codes notebook 02's model
    predicts). PI token F1 on the report notes (NER: its first ``guided.ner_eval_notes``) and the
    student's micro-F1, each with a bootstrap interval over notes; the tagger codes nothing
    (micro-F1 is the coder's whose codes it uses). A tagger notebook 07 already trained on the same
    teacher's first notes of the same number (``ner07``: its NER table) is read back, not retrained:
    same notes, same configuration, same evaluation notes and codes."""
    from rationale_kit.metrics import evaluation as E
    from rationale_kit.workbook.protocols.train import fit_model

    oq, g = profile.open_questions, profile.guided
    pl = plan(profile)
    boot_ = bootstrap(profile.evaluation)
    name = pl.models[0]
    report, tune = set(design.report_ids), set(design.tuning_ids)
    with_spans = sorted({k[0] for k in targets})[: pl.curve_notes or None]
    if not with_spans:
        raise ValueError(f"teacher {oq.teacher!r} has no spans on training notes: no learning curve")
    try:
        lam, _ = choose_lambda(sweep_counts07, name, oq.teacher, tune)
    except ValueError:
        lam = next(l for l in g.lambdas if l > 0)
        print(f"notebook 07 has no run of {name} with teacher {oq.teacher}: lambda {lam:g} (the first > 0)")
    preds = pd.read_parquet(Path(trained_dir) / A.PREDICTIONS.file)
    eval_notes = ds.docs[ds.docs.note_id.isin(report)].reset_index(drop=True)
    eval_notes = eval_notes.head(g.ner_eval_notes) if g.ner_eval_notes else eval_notes
    gold = ds.spans[ds.spans.note_id.isin(set(eval_notes.note_id))]
    predicted = preds[(preds.model == name) & preds.pred & preds.note_id.isin(set(eval_notes.note_id))][["note_id", "code"]]
    test_ids = set(ds.docs.loc[ds.docs.split == "test", "note_id"])
    code_notes = sorted(test_ids - tune)
    p = preds[(preds.model == name) & preds.note_id.isin(test_ids)]
    coder = p.assign(tp=p.pred & p.is_gold, fp=p.pred & ~p.is_gold, fn=~p.pred & p.is_gold).groupby(
        "note_id")[["tp", "fp", "fn"]].sum().astype("int64").reset_index()
    rows = []
    for frac in pl.fractions:
        use = with_spans[: max(1, int(math.ceil(frac * len(with_spans))))]
        sub = {k: v for k, v in targets.items() if k[0] in set(use)}
        docs = ds.docs[(ds.docs.split != "train") | ds.docs.note_id.isin(set(use))]
        t0 = time.time()
        init = Path(trained_dir) / name / "model" if g.init == "trained" else None
        res = fit_model(name, profile, docs, labels, Path(out_dir) / f"student_{frac:g}", device, rationale_targets=sub, lam=lam,
                        loss=g.loss, epochs=g.epochs, init_from=init, max_train_docs=len(use))
        scores = evaluate_student(res.model, res.threshold, ds, profile, device, design)
        c = scores.pop("counts")
        pi_n = E.per_note(c[c.measure == PI], notes=report)
        code_n = E.per_note(c[c.measure == "coding"], notes=code_notes)
        row = {"method": f"multi-objective {name} (λ={lam:g})", "fraction": frac, "train notes": len(use),
               "pi_token_f1": E.prf(pi_n.sum())["f1"], "micro_f1": E.prf(code_n.sum())["f1"], "n_notes": int(pi_n.shape[0]),
               "n_pairs": int(len(c[(c.measure == PI) & c.note_id.isin(report)])), "n_test_notes": int(code_n.shape[0]),
               "seconds": round(time.time() - t0, 1)}
        E.with_interval(row, E.interval(pi_n, "f1", boot_), "pi_")
        rows.append(E.with_interval(row, E.interval(code_n, "f1", boot_), "micro_"))
        t0 = time.time()
        nc = _ner07_counts(ner07, oq.teacher, len(use))
        if nc is None:
            nc = _train_ner_counts(ds, sub, use, profile, Path(out_dir) / f"ner_{frac:g}", eval_notes, gold, predicted, device)
        ner_n = E.per_note(nc[nc.measure == PI])
        code_b = E.per_note(coder, notes=code_notes)
        row = {"method": f"NER tagger (codes of {name})", "fraction": frac, "train notes": len(use),
               "pi_token_f1": E.prf(ner_n.sum())["f1"], "micro_f1": E.prf(code_b.sum())["f1"], "n_notes": int(ner_n.shape[0]),
               "n_pairs": int(len(nc[nc.measure == PI])), "n_test_notes": int(code_b.shape[0]), "seconds": round(time.time() - t0, 1)}
        E.with_interval(row, E.interval(ner_n, "f1", boot_), "pi_")
        rows.append(E.with_interval(row, E.interval(code_b, "f1", boot_), "micro_"))
    return pd.DataFrame(rows)


def _ner07_counts(ner07: pd.DataFrame | None, teacher: str, n: int) -> pd.DataFrame | None:
    """Notebook 07's per-pair counts of its tagger of ``teacher`` on ``n`` notes, when it has one."""
    if ner07 is None or not len(ner07):
        return None
    hit = ner07[(ner07.teacher == teacher) & (ner07["train notes"] == n)]
    path = Path(str(hit.run_dir.iloc[0])) / A.NOTE_COUNTS.file if len(hit) else None
    if path is None or not path.exists():
        return None
    print(f"NER tagger on {n} notes of {teacher}: notebook 07's run ({path.parent.name}), read back")
    return pd.read_parquet(path)


def _train_ner_counts(ds, sub: dict, use: list, profile: Profile, run_dir: Path, eval_notes: pd.DataFrame,
                      gold: pd.DataFrame, predicted: pd.DataFrame, device) -> pd.DataFrame:
    """Train the tagger (notebook 07's configuration) on the spans ``sub`` of the notes ``use`` and
    count its spans, assigned to the ``predicted`` codes, against ``gold`` on ``eval_notes``."""
    from rationale_kit.metrics import evaluation as E
    from rationale_kit.rationales import ner as N

    g = profile.guided
    spans = pd.DataFrame([(n, cd, s, e) for (n, cd), v in sub.items() for s, e in v], columns=["note_id", "code", "start", "end"])
    cfg = N.NERConfig(epochs=g.ner_epochs, seed=profile.common.seed, window=profile.train.plm_icd.chunk_size,
                      encoder_path=profile.train.plm_icd.encoder_path, max_windows_per_note=g.ner_max_windows_per_note,
                      lr=g.ner_lr, head_lr=g.ner_head_lr, freeze_layers=g.ner_freeze_layers, formulation=g.ner_formulation)
    tagger = N.train_ner(ds.docs[ds.docs.note_id.isin(set(use))], spans, cfg, out_dir=run_dir, device=device,
                         progress=profile.common.progress)
    found = N.assign_codes(tagger.predict_spans(eval_notes[["note_id", "text"]]), predicted)
    counts = E.pair_counts(gold, found, eval_notes)
    counts.to_parquet(run_dir / A.NOTE_COUNTS.file, index=False)
    return counts
