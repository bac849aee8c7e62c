"""Notebook 07's protocol: teacher targets, students trained and evaluated per teacher and
lambda (and seed), lambda chosen on the tuning notes, the trade-off (finding (c)), the NER tagger
and the summary."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from rationale_kit.core.config import Profile
from rationale_kit.data.dataset import coding_docs
from rationale_kit.workbook import artifacts as A
from rationale_kit.workbook.protocols.common import PI, bootstrap, with_seed
from rationale_kit.workbook.protocols.data import evaluation_design
from rationale_kit.workbook.protocols.train import fit_model, predictions


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
    if pr is None:  # the predictions of every test note that counts in coding measurement
        pr = predictions(model, coding_docs(ds.docs, "test"), threshold, device)
    c = pr.assign(tp=pr.pred & pr.is_gold, fp=pr.pred & ~pr.is_gold, fn=~pr.pred & pr.is_gold)
    coding_ = c.groupby("note_id")[["tp", "fp", "fn"]].sum().astype("int64").reset_index()
    coding_ = coding_.assign(code="-", measure="coding")[E.COUNT_COLUMNS]
    eval_notes = ds.docs[ds.docs.note_id.isin(set(design.eval_ids))]
    gold = ds.spans[ds.spans.note_id.isin(set(design.eval_ids))]
    pairs = gold[["note_id", "code"]].drop_duplicates()
    pairs = pairs[pairs.code.isin(labels)]
    att = attention_rationales(model, eval_notes, pairs, model_name="student", device=device, progress=False).table
    spans = P.binarise(att, topk=topk)
    known = E.restrict(gold, set(zip(pairs.note_id, pairs.code)))
    counts = pd.concat([E.pair_counts(known, spans, eval_notes), coding_], ignore_index=True)
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
    all_pr = predictions(model, coding_docs(ds.docs, "test"), threshold, device)
    counts, att = _student_counts(model, threshold, ds, design, k, device, all_pr)
    test = coding_docs(ds.docs, "test")
    test = test[~test.note_id.isin(tune)]
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


def student_key(name: str, teacher: str, lam: float, targets: dict | None, ds, labels: list[str], profile: Profile,
                trained_dir: Path | None = None, design=None) -> str:
    """What determines a student's row, hashed: model, teacher, lambda, the teacher's spans, the
    notes and labels, every profile section training and evaluation read (common, data, train,
    guided, plausibility, evaluation; with the seed), the training code, the starting model (with
    ``guided.init = "trained"``) and the evaluation design. A row of another notebook is reused only
    when this key is equal."""
    import hashlib
    import json

    from rationale_kit.training.checkpoints import docs_hash, labels_hash, plain, targets_hash
    from rationale_kit.workbook.protocols.train import saved_model_hash, training_code_hash

    init = ""
    if profile.guided.init == "trained" and trained_dir is not None and (Path(trained_dir) / name / "model").is_dir():
        init = saved_model_hash(Path(trained_dir) / name / "model")
    key = {"model": name, "teacher": teacher if lam > 0 else "none", "lambda": float(lam),
           "targets": targets_hash(targets) if lam > 0 else "", "docs": docs_hash(ds.docs), "labels": labels_hash(labels),
           "profile": {k: plain(getattr(profile, k)) for k in ("common", "data", "train", "guided", "plausibility",
                                                                "evaluation")},
           "code": training_code_hash(), "init": init,
           "design": _design_hash(design)}
    # a letter first: read back from CSV, an all-digit (or "1e5...") key would become a number
    return "k" + hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _design_hash(design) -> str:
    """Evaluation, tuning and report note ids and the run-on pairs of an ``EvaluationDesign``."""
    import hashlib

    if design is None:
        return ""
    h = hashlib.sha256()
    for ids in (design.eval_ids, design.tuning_ids, design.report_ids):
        h.update(("\n".join(map(str, ids)) + "\x00").encode())
    h.update(str(design.tuning_fraction).encode())
    h.update(pd.util.hash_pandas_object(design.run_on.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def guided_run(name: str, teacher: str, lam: float, targets: dict | None, ds, labels: list[str], profile: Profile,
               out_dir: Path, device: str = "cpu", trained_dir: Path | None = None, design=None) -> dict:
    """Train one student (resumable in ``out_dir``; seeded by ``common.seed``) and evaluate it;
    returns one result row. Its per-unit counts are written to ``out_dir / A.NOTE_COUNTS.file``
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
    counts.to_parquet(Path(out_dir) / A.NOTE_COUNTS.file, index=False)
    return {"model": name, "teacher": teacher if lam > 0 else "none", "lambda": lam, "seed": profile.common.seed,
            **scores, "run_dir": str(Path(out_dir).resolve()), "seconds": round(time.time() - t0, 1),
            "run_key": student_key(name, teacher, lam, targets, ds, labels, profile, trained_dir, design),
            "init": g.init}


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
        p = with_seed(profile, seed)
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
    return pd.DataFrame(rows)


def sweep_counts(sweep: pd.DataFrame) -> pd.DataFrame:
    """The per-unit counts of every run of ``sweep`` (``run_dir/note_counts.parquet``), with the
    run's ``model, teacher, lambda, seed``."""
    parts = []
    for r in sweep.to_dict("records"):
        path = Path(str(r.get("run_dir", ""))) / A.NOTE_COUNTS.file
        if not path.exists():
            raise FileNotFoundError(f"no per-unit counts of run {r['model']}/{r['teacher']}/lambda={r['lambda']} at {path}")
        parts.append(pd.read_parquet(path).assign(model=r["model"], teacher=r["teacher"], **{"lambda": float(r["lambda"])},
                                                  seed=int(r["seed"])))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def setting_counts(counts: pd.DataFrame, model: str, teacher: str, lam: float, measure: str,
                   by_seed: bool = False) -> pd.DataFrame:
    """Counts of one setting, summed over its seeds per unit (``by_seed``: one row per unit and
    seed, with a ``seed`` column, for the hierarchical bootstrap of a verdict)."""
    c = counts[(counts.model == model) & (counts.teacher == teacher) & np.isclose(counts["lambda"], lam) & (counts.measure == measure)]
    keys = ["note_id", "code", "measure"] + (["seed"] if by_seed and "seed" in c.columns else [])
    return c.groupby(keys, as_index=False)[["tp", "fp", "fn"]].sum()


def choose_lambda(counts: pd.DataFrame, model: str, teacher: str, tuning_ids: Iterable[str],
                  measure: str = PI) -> tuple[float, dict]:
    """The lambda > 0 of ``teacher`` with the best pooled ``measure`` F1 on the tuning notes
    (counts summed over seeds; the smallest lambda on ties); returns it and every lambda's F1."""
    from rationale_kit.metrics import evaluation as E

    c = counts[(counts.model == model) & (counts.teacher == teacher) & (counts["lambda"] > 0)]
    scores = {}
    for lam in sorted(set(c["lambda"])):
        runs = setting_counts(counts, model, teacher, lam, measure)
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

    boot_ = bootstrap(profile.evaluation)
    report, tune = set(design.report_ids), set(design.tuning_ids)
    rows, verdicts = [], []
    for model in sorted(set(sweep.model)):
        part = sweep[sweep.model == model]
        for teacher in sorted(set(part.loc[part["lambda"] > 0, "teacher"])):
            lam, tuning_f1 = choose_lambda(counts, model, teacher, tune)
            t = part[(part.teacher == teacher) & (part["lambda"] > 0)]
            by_lam = t.groupby("lambda")["pi_token_f1"].mean()
            plaus = E.compare_counts(setting_counts(counts, model, teacher, lam, PI, True),
                                     setting_counts(counts, model, "none", 0.0, PI, True), boot_, notes=report)
            code_ = E.compare_counts(setting_counts(counts, model, teacher, lam, "coding", True),
                                     setting_counts(counts, model, "none", 0.0, "coding", True),
                                     boot_, notes=set(coding_report_ids(counts, tune)), measure="coding")
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
                               "report notes, gold pairs both students have", plaus, "greater", boot_.min_notes)
            v2 = E.verdict_row("c", f"at a coding cost (micro-F1): {label}", model, dataset, "micro_f1",
                               "test notes that are not tuning notes", code_, "less", boot_.min_notes)
            verdicts += [v1, v2, E.combined_row("c", f"plausibility up at a coding cost: {label}", model, dataset,
                                                "both", [v1, v2])]
    return pd.DataFrame(rows, columns=TRADEOFF_COLUMNS), E.verdicts_frame(verdicts)


#: The columns of :func:`tradeoff`'s table (also when no teacher has rationales: an empty table).
TRADEOFF_COLUMNS = ["model", "teacher", "lambda (chosen on tuning notes)", "tuning PI token F1", "lambda best on report notes",
                    "PI token F1 gain", "gain lo", "gain hi", "micro-F1 change", "change lo", "change hi", "n_notes",
                    "n_pairs", "n_test_notes", "seeds", "gain seed mean", "gain seed std", "change seed mean",
                    "change seed std", "some lambda improves both"]


def coding_report_ids(counts: pd.DataFrame, tuning: set) -> list[str]:
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
    boot_ = bootstrap(profile.evaluation)
    report = ds.docs[ds.docs.note_id.isin(set(design.report_ids))].reset_index(drop=True)
    eval_notes = report.head(g.ner_eval_notes) if g.ner_eval_notes else report
    gold = ds.spans[ds.spans.note_id.isin(set(eval_notes.note_id))]
    model_name = g.models[0]
    preds = pd.read_parquet(Path(train_dir) / A.PREDICTIONS.file)
    predicted = preds[(preds.model == model_name) & preds.pred & preds.note_id.isin(set(eval_notes.note_id))][["note_id", "code"]]
    units = f"first {len(eval_notes)} report notes, every gold pair; spans on codes {model_name} predicts"
    rows = []
    with_spans = [t for t, d in targets.items() if d]
    chosen = [g.ner_teacher] if g.ner_teacher in with_spans else with_spans[:1]
    if g.ner_teacher not in with_spans:
        print(f"NER teacher {g.ner_teacher!r} has no aligned spans on training notes; using {chosen or 'none'}")
    # every tagger freezes the same layers of one pretrained encoder and tags the same notes: the
    # frozen layers encode each evaluation window once for the whole curve (same values)
    shared = N.PrefixStore()
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
            found = N.assign_codes(tagger.predict_spans(eval_notes[["note_id", "text"]], prefix_store=shared), predicted)
            m = P.mdace_measures(gold, found, eval_notes)
            counts = E.pair_counts(gold, found, eval_notes)
            counts.to_parquet(run_dir / A.NOTE_COUNTS.file, index=False)
            iv = E.interval(E.per_note(counts[counts.measure == PI]), "f1", boot_)
            rows.append(E.with_interval({"teacher": teacher, "train notes": len(use), "requested": size, "spans": len(found),
                                         "pi_token_f1": m["token_position_independent"]["f1"], "token_exact_f1": m["token_exact"]["f1"],
                                         "span_exact_f1": m["span_exact"]["f1"], "n_notes": len(eval_notes),
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

    boot_ = bootstrap(profile.evaluation)
    report = set(design.report_ids)
    entries = []  # (method, row values, PI counts)
    for model in sorted(set(sweep.model)):
        part = sweep[sweep.model == model]
        base = setting_counts(counts, model, "none", 0.0, PI)
        entries.append((f"{model} (unguided)", part[part["lambda"] == 0], base[base.note_id.isin(report)]))
        for teacher in sorted(set(part.loc[part["lambda"] > 0, "teacher"])):
            lam, _ = choose_lambda(counts, model, teacher, design.tuning_ids)
            c = setting_counts(counts, model, teacher, lam, PI)
            entries.append((f"{model} + {teacher} (λ={lam:g}, chosen on tuning notes)",
                            part[(part.teacher == teacher) & np.isclose(part["lambda"], lam)], c[c.note_id.isin(report)]))
    if len(ner):
        last = ner.sort_values("train notes").groupby("teacher").tail(1)
        for r in last.itertuples(index=False):
            c = pd.read_parquet(Path(r.run_dir) / A.NOTE_COUNTS.file)
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
