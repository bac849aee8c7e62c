"""Notebook 08's protocol: zero- vs few-shot teacher, the students trained on each teacher's
rationales (reusing notebook 07's runs), and finding (d) on one set of units."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from rationale_kit.core.config import Profile
from rationale_kit.core.sources import TEACHERS
from rationale_kit.workbook import artifacts as A
from rationale_kit.workbook.protocols.common import PI, bootstrap, with_seed
from rationale_kit.workbook.protocols.guided import guided_run


def teacher_comparison(plaus: pd.DataFrame, calls: pd.DataFrame, llm_spans: pd.DataFrame) -> pd.DataFrame:
    """Zero- vs few-shot teacher: calls that returned usable JSON, aligned spans, and plausibility
    (MDACE PI token / exact token / exact span F1) from notebook 06, each on the pairs that
    teacher was run on (``n_notes``, ``n_pairs``, interval of the PI token F1)."""
    rows = []
    for t in (s.name for s in TEACHERS):
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

    A student that notebook 07 already trained (a row of its ``sweep``) is reused rather than
    trained again only when its ``run_key`` equals this run's :func:`student_key` (everything that
    determines the row) and its per-unit counts are still there; the ``trained_in`` column says which.
    A row without a key (an older sweep) or with another key is trained again, saying why."""
    from rationale_kit.core.config import seeds as seeds_of
    from rationale_kit.workbook.protocols.guided import student_key

    fs = profile.few_shot
    seeds = seeds_of(profile)

    def run(teacher: str, lam: float, tg: dict | None, folder: str, seed: int) -> dict:
        p = with_seed(profile, seed)
        if sweep is not None and len(sweep):
            hit = sweep[(sweep.model == fs.student_model) & (sweep.teacher == teacher) & np.isclose(sweep["lambda"], lam)]
            if "seed" in hit:
                hit = hit[hit.seed == seed]
            if len(hit):
                row = hit.iloc[0].to_dict()
                want = student_key(fs.student_model, teacher, lam, tg, ds, labels, p, trained_dir, design)
                counts = Path(str(row.get("run_dir", ""))) / A.NOTE_COUNTS.file
                if row.get("run_key") == want and counts.is_file():
                    return {**row, "trained_in": "07_guided_learning"}
                why = "its key differs" if row.get("run_key") != want else f"{counts} is missing"
                print(f"{fs.student_model}/{teacher}/lambda={lam:g}/seed {seed}: notebook 07's run not reused ({why})")
        tag = f"_seed{seed}" if len(seeds) > 1 else ""
        row = guided_run(fs.student_model, teacher, lam, tg, ds, labels, p,
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

    boot_ = bootstrap(profile.evaluation)
    t = teacher_counts[(teacher_counts.measure == PI) & (teacher_counts.model == "-")]
    teach = {k: t[t.source == k][E.COUNT_COLUMNS] for k in ("llm_zero", "llm_few")}
    ok = students[students.get("run_dir", pd.Series(index=students.index, dtype=object)).notna()] if len(students) else students
    stud = {}
    for k in ("llm_zero", "llm_few"):
        runs = ok[ok.teacher == k] if len(ok) else ok
        if len(runs):
            c = pd.concat([pd.read_parquet(Path(d) / A.NOTE_COUNTS.file) for d in runs.run_dir], ignore_index=True)
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
