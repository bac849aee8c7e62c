"""The run report of a profile: the paper's tables and figures, as ``report.html`` and ``report.md``.

Tables are read from the CSV files the notebooks save next to their artifacts; a section whose
notebook has no manifest yet says it has not run.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from rationale_kit.core.config import Profile
from rationale_kit.core.runtime import git_commit
from rationale_kit.workbook import artifacts as A
from rationale_kit.workbook.artifacts import Artifact
from rationale_kit.workbook.context import MANIFEST_FILE, NOTEBOOKS, artifacts_root, figures_dir

_STATUS = {"ok": "ran", "skipped": "skipped (unchanged)", "failed": "FAILED", "missing": "notebook file missing"}


@dataclass(frozen=True)
class Table:
    caption: str
    frame: pd.DataFrame
    source: str
    digits: int = 4
    group: Optional[str] = None  # a column whose runs of equal values are shown once (a heading row in HTML)


@dataclass(frozen=True)
class Figure:
    caption: str
    path: Path
    data: Optional[bytes]
    generated: bool = False  # drawn by the report: written next to report.md under ``path.name``


@dataclass(frozen=True)
class GridCell:
    """One verdict of the grid: finding x dataset x model (``detail`` tells several apart, e.g. the
    teacher of (c); ``note`` is a reading such as "coding improves")."""
    finding: str
    dataset: str
    model: str
    verdict: str
    detail: str = ""
    note: str = ""


@dataclass(frozen=True)
class Section:
    notebook: str
    title: str
    ran: bool
    notes: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    figures: tuple[Figure, ...] = ()
    grid: tuple[GridCell, ...] = ()


@dataclass(frozen=True)
class Timing:
    notebook: str
    status: str
    seconds: Optional[float]
    finished: Optional[str]
    commit: Optional[str]
    bootstrap_seconds: Optional[float] = None  # time the notebook spent in the bootstrap


@dataclass(frozen=True)
class Report:
    profile: str
    header: tuple[tuple[str, str], ...]
    timings: tuple[Timing, ...]
    sections: tuple[Section, ...]
    opening: tuple[Section, ...] = ()  # the verdicts and compact tables the report opens with


# --------------------------------------------------------------------------------------------
# collecting
# --------------------------------------------------------------------------------------------
def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _csv(root: Path, artifact: Artifact, caption: str, digits: int = 4, index: Any = None,
         shape: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> Table | str:
    path = root / artifact.key
    if not path.exists():
        return f"table not found: {artifact.file} is missing from {root / artifact.writer}"
    frame = pd.read_csv(path, index_col=index)
    return Table(caption, shape(frame) if shape else frame, artifact.key, digits)


def _statistics(frame: pd.DataFrame) -> pd.DataFrame:
    frame.index.name = frame.index.name or "split"
    return frame


def _coding(frame: pd.DataFrame) -> pd.DataFrame:
    frame.index.name = "model"
    return frame


def _faithfulness(values: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def shape(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.pivot_table(index=["model", "source"], columns="measure", values=values)
        out.columns.name = None
        return out
    return shape


def _seed_spread(frame: pd.DataFrame) -> pd.DataFrame:
    """A seed-spread table (``*_seeds.csv``) as ``mean ± sd`` per model and source (one column per
    measure, and per rationale / difference for faithfulness), with the number of seeds."""
    cols = ["measure"] + (["value"] if "value" in frame.columns else [])
    cells = frame.assign(cell=[f"{m:.3f} ± {s:.3f}" if not math.isnan(_num(s)) else f"{m:.3f}"
                               for m, s in zip(frame["mean"], frame["std"])],
                         column=[" · ".join(str(x) for x in r) for r in frame[cols].itertuples(index=False)])
    out = cells.pivot(index=["model", "source"], columns="column", values="cell")
    out.columns.name = None
    out["seeds"] = cells.groupby(["model", "source"])["seeds"].max()
    return out


def _if_present(root: Path, artifact: Artifact, *args, **kwargs) -> list:
    """:func:`_csv` of an artifact only some runs write (several training seeds); nothing otherwise."""
    return [_csv(root, artifact, *args, **kwargs)] if (root / artifact.key).exists() else []


def _aopc_note() -> str:
    from rationale_kit.metrics.faithfulness.measures import NOTE_AOPC  # torch-free

    return NOTE_AOPC


def _sections(root: Path, figures_dir: Path) -> list[tuple[str, str, Callable[[], list]]]:
    def guided() -> list:
        fig = figures_dir / "07_tradeoff.png"
        return [Figure("plausibility / coding trade-off of guided learning", fig, fig.read_bytes() if fig.is_file() else None),
                _csv(root, A.GUIDED_SUMMARY, "guided learning summary")]

    def open_questions() -> list:
        figs = [Figure(caption, figures_dir / f, (figures_dir / f).read_bytes() if (figures_dir / f).is_file() else None)
                for caption, f in (("trade-off methods: micro-F1 against PI token F1, chosen settings with 95% intervals",
                                    "09_pareto.png"), ("learning curves as the teacher's training notes grow",
                                                       "09_learning_curve.png"))]
        return [OPEN_NOTE, _csv(root, A.VERDICTS_OPEN, "verdicts on the open questions", 3, None, _open_verdicts), figs[0],
                _csv(root, A.LEARNING_CURVE, "NER tagger and multi-objective student against training notes", 3), figs[1]]

    return [
        ("01_data", "Dataset", lambda: [_csv(root, A.STATISTICS, "dataset statistics", 2, 0, _statistics)]),
        ("02_train", "Coding", lambda: [_csv(root, A.CODING_TABLE, "coding performance on the test notes", 3, 0, _coding),
                                        _csv(root, A.CODING_SEEDS, "coding measures across training seeds (common.seeds)",
                                             3, 0, _coding)]),
        ("06_plausibility", "Plausibility", lambda: [_csv(root, A.PLAUSIBILITY_TABLE,
                                                          "plausibility (F1, all granularities, all codes)", 4, [0, 1]),
                                                     *_if_present(root, A.PLAUSIBILITY_SEED_SPREAD,
                                                                  "PI token F1 of the top-k model rationales across "
                                                                  "training seeds (mean ± sd)", 3, None, _seed_spread)]),
        ("05_faithfulness", "Faithfulness", lambda: [
            _aopc_note(),
            _csv(root, A.FAITHFULNESS_TABLE, "faithfulness of the rationales", 4, None, _faithfulness("rationale")),
            _csv(root, A.FAITHFULNESS_TABLE, "rationale minus random control", 4, None, _faithfulness("difference")),
            *_if_present(root, A.FAITHFULNESS_SEED_SPREAD, "finding (b)'s sources across training seeds (mean ± sd over "
                         "seeds of the mean over the same pairs)", 3, None, _seed_spread),
        ]),
        ("07_guided_learning", "Guided learning", guided),
        ("08_few_shot", "Few-shot", lambda: [
            "The teacher is the LLM backend named in the header; the bundled local SmolLM2-135M is a very weak "
            "teacher whose quotes rarely align to the note, so its rows are near zero by construction.",
            _csv(root, A.FEW_SHOT_SUMMARY, "PI token F1: zero-shot vs few-shot teacher")]),
        ("09_open_questions", "Open questions beyond the paper", open_questions),
    ]


OPEN_NOTE = ("q1: plausibility up without a coding cost, per trade-off method (setting chosen on the tuning notes; "
             "'no coding cost' holds when the micro-F1 change's interval lies above -open_questions.coding_margin); "
             "q2: finding (b) under Soft-NC/NS and F-Fidelity; q3: finding (a) per alignment threshold. "
             "See docs/method/open_questions.md.")


def _open_verdicts(v: pd.DataFrame) -> pd.DataFrame:
    """Notebook 09's verdicts as the report shows them (effect with its interval); of q3 only the
    comparisons the threshold changes (those with an LLM teacher)."""
    v = v[(v.finding != "q3") | v.comparison.str.contains("llm|LLM")].reset_index(drop=True)
    v = v.astype({c: "Int64" for c in ("n_notes", "n_pairs") if c in v.columns})
    v = v.assign(**{"effect [95% CI]": [_ci(e, lo, hi) for e, lo, hi in zip(v.effect, v.lo, v.hi)]})
    return v[[c for c in ("finding", "comparison", "model", "dataset", "effect [95% CI]", "n_notes", "n_pairs", "verdict")
              if c in v.columns]]


# the report lists findings in the order a, b, c, d (notebooks 06, 05, 07, 08)
VERDICT_FILES = tuple((a.writer, finding) for finding, a in A.VERDICTS)
FINDINGS = {"a": "plausibility: LLM > entity > attention (PI token F1)",
            "b": "attention more comprehensive, entity more sufficient",
            "c": "guided learning raises plausibility at a coding cost",
            "d": "few-shot examples help the teacher and the students"}


def _ci(est: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    """``"0.412 [0.350, 0.470]"``; ``–`` for a missing estimate, no brackets without an interval."""
    f = lambda v: v is not None and isinstance(v, (int, float)) and not math.isnan(float(v))
    if not f(est):
        return "–"
    out = f"{float(est):.{digits}f}"
    return out + (f" [{float(lo):.{digits}f}, {float(hi):.{digits}f}]" if f(lo) and f(hi) else "")


#: Columns the verdict tables may carry beyond VERDICT_COLUMNS (used when present).
STABILITY_COLUMNS = ("interval_method", "seed_agreement", "mc_error", "control", "seed_sd")


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _share(value: Any) -> float:
    """A share as a float: ``0.95``, ``"0.95"`` or ``"19/20"`` (NaN when missing)."""
    if isinstance(value, str) and "/" in value:
        k, _, n = value.partition("/")
        return _num(k) / _num(n) if _num(n) else math.nan
    return _num(value)


def _count(value: Any) -> str:
    v = _num(value)
    return "–" if math.isnan(v) else f"{int(v)}"


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA else str(value)


def read_verdicts(root: Path) -> tuple[pd.DataFrame | None, list[str]]:
    """Every notebook's ``verdicts.csv`` in the order a, b, c, d (None when none is written) and a
    line for each finding that has none yet. Adds ``combined`` (rows that combine the rows before
    them: ``units == "as above"``) and ``reading`` (e.g. coding improving under (c))."""
    parts, missing = [], []
    for finding, artifact in A.VERDICTS:
        path = root / artifact.key
        if path.exists():
            parts.append(pd.read_csv(path, keep_default_na=True))
        else:
            missing.append(f"finding ({finding}) {FINDINGS[finding]}: no verdicts yet ({artifact.key} not written)")
    if not parts:
        return None, missing
    v = pd.concat(parts, ignore_index=True)
    for col in ("model", "dataset", "comparison", "units", "measure", "expect", "verdict"):
        v[col] = [_text(x) for x in v[col]] if col in v.columns else ""
    for col in ("a", "b", "effect", "lo", "hi", "n_notes", "n_pairs"):
        v[col] = [_num(x) for x in v[col]] if col in v.columns else math.nan
    v["combined"] = ((v["units"] == "as above") | v["units"].str.startswith("combined")
                     | (v["effect"].isna() & v["n_notes"].isna() & v["lo"].isna()))
    v["reading"] = [_reading(r) for r in v.to_dict("records")]
    # a combined row that skipped rows says which (its units: "combined: 2 of 3 rows above; skipped ...")
    skipped = v.combined & v["units"].str.contains("skipped")
    v.loc[skipped, "reading"] = v.loc[skipped, "units"]
    # a combined (c) row says why it does not hold when its coding half improved instead
    improved = {(r["model"], _label(r["comparison"])) for r in v.to_dict("records") if r["reading"].startswith("coding improves")}
    v.loc[v.combined & (v.finding == "c") & np.array([(m, _label(c)) in improved for m, c in zip(v.model, v.comparison)], dtype=bool), "reading"] = \
        "no coding cost: coding improves (see the micro-F1 row)"
    return v, missing


def _label(comparison: str) -> str:
    """The part after the first ": " (finding (c): "<model> + <teacher> (lambda=x) vs unguided")."""
    return comparison.split(": ", 1)[1] if ": " in comparison else comparison


def _reading(r: Mapping) -> str:
    """A plain-words reading of a row where the verdict alone misleads: under (c) a coding-cost row
    whose interval lies above 0 means coding improves, not that guided learning fails."""
    if r.get("finding") == "c" and r.get("measure") == "micro_f1" and r.get("expect") == "less" and _num(r.get("lo")) > 0:
        return f"coding improves instead of costing (micro-F1 {_ci(r['effect'], r['lo'], r['hi'])})"
    return ""


def _teacher(comparison: str) -> str:
    m = re.search(r"\+ (.+?) \(lambda=([^)]+)\)", comparison)
    return f"teacher {m.group(1)}, λ={m.group(2)}" if m else ""


def verdict_grid(v: pd.DataFrame) -> tuple[GridCell, ...]:
    """One cell per combined verdict of each (finding, dataset, model) (the rows themselves when a
    finding has no combined row). Several verdicts in one cell are told apart by teacher (c) and
    control (b: raw / minus_random / size_matched), else by their comparison."""
    cells = []
    for (finding, dataset), part in v.groupby(["finding", "dataset"], sort=False):
        use = part[part.combined] if part.combined.any() else part
        for model, group in use.groupby("model", sort=False):
            controls = {_text(c) for c in group.get("control", pd.Series([""] * len(group)))}
            for r in group.to_dict("records"):
                control = _text(r.get("control"))
                detail = ", ".join(x for x in (_teacher(r["comparison"]),
                                                control if control and (len(controls) > 1 or control != "raw") else "") if x)
                if not detail and len(group) > 1:
                    detail = r["comparison"]
                note = "coding improves" if r["reading"].startswith(("no coding cost", "coding improves")) else ""
                if "skipped" in r["units"]:
                    m = re.match(r"combined: (\d+) of (\d+)", r["units"])
                    skip = f"skips {int(m.group(2)) - int(m.group(1))} of {m.group(2)}: too few notes" if m else "skips rows: too few notes"
                    note = ", ".join(x for x in (note, skip) if x)
                cells.append(GridCell(f"({finding}) {FINDINGS.get(finding, '')}", dataset, model, r["verdict"], detail, note))
    return tuple(cells)


def training_seeds(units: Any) -> int | None:
    """The number of training seeds a verdict row rests on, as its ``units`` text states it
    ("... (3 training seeds)"); None when it names none (one seed)."""
    m = re.search(r"(\d+) training seeds", _text(units))
    return int(m.group(1)) if m else None


def _stability(r: Mapping) -> str:
    bits = []
    n = training_seeds(r.get("units"))
    if n:
        bits.append(f"{n} seeds")
    agree = _share(r.get("seed_agreement"))
    if not math.isnan(agree):
        bits.append(f"agree {agree:.0%}")
    sd = _num(r.get("seed_sd"))
    if not math.isnan(sd):
        bits.append(f"seed sd {sd:.3f}")
    return " · ".join(bits)


def forest_rows(v: pd.DataFrame) -> pd.DataFrame:
    """The rows of the forest plot: every comparison (combined rows left out), grouped by finding."""
    rows = []
    several = v.dataset.nunique() > 1
    for r in v[~v.combined].to_dict("records"):
        label = r["comparison"] + (f" · {r['model']}" if r["model"] not in ("", "-") else "")
        control = _text(r.get("control"))
        if control and control != "raw":
            label += f" · {control}"
        if several:
            label += f" · {r['dataset']}"
        if r["expect"] == "less":
            label += " (expects < 0)"
        note = f"n={_count(r['n_notes'])} · {r['verdict']}"
        extra = _stability(r)
        if extra:
            note += f" · {extra}"
        if r["reading"]:
            note += " · coding improves"
        rows.append({"group": f"({r['finding']}) {FINDINGS.get(r['finding'], '')}", "label": label, "effect": r["effect"],
                     "lo": r["lo"], "hi": r["hi"], "verdict": r["verdict"], "note": note})
    return pd.DataFrame(rows, columns=["group", "label", "effect", "lo", "hi", "verdict", "note"])


def verdict_table(v: pd.DataFrame) -> pd.DataFrame:
    """The verdict rows as display strings (no ``<NA>``): combined rows say so and carry no numbers;
    the stability columns appear when the table has them."""
    out = pd.DataFrame({
        "finding": [f"({f}) {FINDINGS.get(f, '')}" for f in v.finding],
        "comparison": [("combined: " + c if not c.startswith(("combined", "LLM > entity > attention (all")) else c)
                       if comb else c for c, comb in zip(v.comparison, v.combined)],
        "model": v.model, "dataset": v.dataset})
    if "control" in v.columns:
        out["control"] = [_text(x) or "–" for x in v.control]
    out["a"] = [_ci(x, None, None) for x in v.a]
    out["b"] = [_ci(x, None, None) for x in v.b]
    out["effect [95% CI]"] = [_ci(e, lo, hi) for e, lo, hi in zip(v.effect, v.lo, v.hi)]
    out["n_notes"] = [_count(x) for x in v.n_notes]
    out["n_pairs"] = [_count(x) for x in v.n_pairs]
    out["verdict"] = v.verdict
    if "seed_agreement" in v.columns:
        out["seeds agree"] = [("–" if math.isnan(_share(x)) else f"{_share(x):.0%}") for x in v.seed_agreement]
    if "mc_error" in v.columns:
        out["MC error"] = [("–" if math.isnan(_num(x)) else f"{_num(x):.4f}") for x in v.mc_error]
    if "seed_sd" in v.columns:
        out["training-seed sd"] = [("–" if math.isnan(_num(x)) else f"{_num(x):.3f}") for x in v.seed_sd]
    if "interval_method" in v.columns:
        out["interval"] = [_text(x) or "–" for x in v.interval_method]
    if v.reading.astype(bool).any():
        out["reading"] = v.reading
    if out["dataset"].nunique() <= 1:
        out = out.drop(columns="dataset")
    return out


def _verdicts(root: Path, draw: bool = True) -> Section:
    v, missing = read_verdicts(root)
    notes = ["Each comparison is a - b on the units both sides have, with a 95% paired bootstrap interval over "
             "notes: 'holds' when the whole interval lies on the expected side of 0, 'does not hold' when it lies "
             "on the other side, otherwise 'inconclusive' ('too few notes' and 'borderline' when the verdict table "
             "marks a row so). Combined rows combine the rows of their finding and model before them."]
    if v is None:
        return Section("verdicts", "Verdicts on the paper's four findings", True, tuple(notes + missing))
    datasets = sorted(set(v.dataset) - {""})
    table = Table("the paper's findings as verdicts" + (f" ({datasets[0]})" if len(datasets) == 1 else ""),
                  verdict_table(v), "*/verdicts.csv", 3, group="finding")
    figures = []
    if draw:
        from rationale_kit.viz.figures import figure_png, plot_forest

        fig = plot_forest(forest_rows(v))
        figures.append(Figure("every verdict row: effect and 95% interval, coloured by verdict, n on the right",
                              Path("verdicts_forest.png"), figure_png(fig, dpi=100), generated=True))
    return Section("verdicts", "Verdicts on the paper's four findings", True, tuple(missing + notes), (table,),
                   tuple(figures), verdict_grid(v))


def _params(manifests: Mapping[str, dict], notebook: str) -> dict:
    return manifests.get(notebook, {}).get("parameters", {}) or {}


def _caveats(root: Path, profile: Profile, manifests: Mapping[str, dict], v: pd.DataFrame | None) -> Section:
    """What limits the verdicts, read from the run's artifacts: synthetic data, the LLM teacher and
    the notes it covers, the training seeds, the smallest comparisons, (c) where coding improves."""
    notes = []
    info = _json(root / A.DATA_REPORT.key) if manifests.get("01_data") else {}
    if info.get("dataset", profile.common.dataset) == "embedded":
        gen = f" ({info['generator']})" if info.get("generator") else ""
        notes.append(f"Synthetic data: the embedded corpus{gen} is generated, with evidence planted by its lexicon; "
                     "the verdicts show how the methods compare where the evidence is known, not what they do on "
                     "real clinical notes.")
    top = info.get("top codes")
    if isinstance(top, dict):
        removed = top.get("test gold code occurrences removed")
        notes.append(f"Restricted label space: {top.get('rule', 'the most frequent codes')}"
                     + (f"; {removed} of the test notes' gold code occurrences are outside it" if removed else "")
                     + ". Every count and verdict is on the restricted codes.")
    llm = _params(manifests, "03_rationales").get("rationales", {}).get("llm")
    if llm:
        line = f"Teacher LLM: {_llm_line(llm)}."
        if llm.get("backend") == "local" and not llm.get("local_path"):
            line += (" The bundled SmolLM2-135M-Instruct is a very weak teacher: its quotes are verbatim by "
                     "construction but rarely the evidence, so LLM rows measure the pipeline, not a good teacher.")
        p = root / A.PLAUSIBILITY_TABLE.key
        if p.exists():
            t = pd.read_csv(p)
            if {"source", "n_notes", "n_pairs"} <= set(t.columns):
                ent = t[t.source.astype(str).str.startswith("entity")]
                all_notes = int(ent.n_notes.max()) if len(ent) and not ent.n_notes.isna().all() else None
                cover = []
                for src in ("llm_zero", "llm_few"):
                    r = t[t.source == src]
                    if len(r):
                        r = r.iloc[0]
                        of = f" of {all_notes}" if all_notes else ""
                        eligible = f" of {_count(r.get('n_pairs_eligible'))}" if "n_pairs_eligible" in t.columns else ""
                        cover.append(f"{src} on {_count(r.n_notes)}{of} report notes ({_count(r.n_pairs)}{eligible} "
                                     "gold pairs)")
                if cover:
                    line += " Coverage: " + "; ".join(cover) + ": every comparison with a teacher is on those notes only."
        notes.append(line)
    seeds = _params(manifests, "02_train").get("common", {}).get("seeds") or [
        _params(manifests, "02_train").get("common", {}).get("seed", profile.common.seed)]
    if len(seeds) == 1:
        notes.append(f"One training seed ({seeds[0]}): the intervals resample notes only, so the variation "
                     "between training runs (seeds, machines) is not in them.")
    else:
        notes.append(f"Training seeds {', '.join(map(str, seeds))}: tables give the spread across them.")
    if v is not None:
        empty = v[~v.combined & (v.n_notes.fillna(0) == 0)]
        if len(empty):
            what = "; ".join(f"({r['finding']}) {r['comparison']}" + (f" · {r['model']}" if r["model"] not in ("", "-") else "")
                             for r in empty.head(4).to_dict("records")) + (" …" if len(empty) > 4 else "")
            notes.append(f"No common units: {len(empty)} row(s) have no note both sides were scored on ({what}); "
                         "they carry no estimate and decide nothing.")
        rows = v[~v.combined & (v.n_notes > 0)]
        if len(rows):
            small = rows.n_notes.min()
            few = rows[rows.n_notes == small]
            what = "; ".join(f"({r['finding']}) {r['comparison']}" + (f" · {r['model']}" if r["model"] not in ("", "-") else "")
                             for r in few.head(4).to_dict("records")) + (" …" if len(few) > 4 else "")
            notes.append(f"Smallest comparisons: {len(few)} row(s) on {int(small)} notes ({what}); their intervals "
                         "come from resampling those notes alone.")
        for r in v[v.reading.str.startswith("coding improves")].to_dict("records"):
            notes.append(f"Finding (c), {_label(r['comparison'])}: {r['reading']}; the finding's 'at a coding cost' "
                         "half does not hold because guided learning helps coding here, not because it fails.")
        few_rows = int((v.verdict == "too few notes").sum())
        if few_rows:
            notes.append(f"{few_rows} row(s) have too few notes for a verdict; combined verdicts leave them out.")
    return Section("caveats", "Caveats that apply to these verdicts", True, tuple(notes))


def _compact(root: Path, profile: Profile) -> Section:
    tables, notes = [], []
    k = profile.rationales.topk
    p = root / A.PLAUSIBILITY_TABLE.key
    if p.exists():
        t = pd.read_csv(p)
        if {"pi_lo", "pi_hi", "token_position_independent"} <= set(t.columns):
            keep = (t.model == "-") | t.source.str.endswith(f"(top-{k})")
            t = t[keep]
            frame = pd.DataFrame({"source": t.source, "model": t.model,
                                  "PI token F1 [95% CI]": [_ci(*x) for x in zip(t.token_position_independent, t.pi_lo, t.pi_hi)],
                                  "exact token F1": t.get("token_exact"), "n_notes": t.get("n_notes"), "n_pairs": t.get("n_pairs"),
                                  "coverage": t.get("coverage")})
            tables.append(Table(f"plausibility (report notes; model rationales as top-{k})", frame.reset_index(drop=True),
                                A.PLAUSIBILITY_TABLE.key, 3))
    f = root / A.FAITHFULNESS_TABLE.key
    if f.exists():
        t = pd.read_csv(f)
        if "rationale_lo" in t.columns:
            t = t[t.measure.isin(["comprehensiveness", "sufficiency"])]
            t = t.assign(value=[_ci(*x) for x in zip(t.rationale, t.rationale_lo, t.rationale_hi)])
            wide = t.pivot_table(index=["model", "source"], columns="measure", values="value", aggfunc="first")
            wide = wide.join(t.groupby(["model", "source"])[["n_pairs", "n_notes"]].max())
            wide.columns.name = None
            tables.append(Table("faithfulness of discrete rationales (mean over pairs [95% CI])", wide,
                                A.FAITHFULNESS_TABLE.key, 3))
    g = root / A.TRADEOFF.key
    if g.exists():
        t = pd.read_csv(g)
        if "gain lo" in t.columns:
            frame = pd.DataFrame({"model": t.model, "teacher": t.teacher, "lambda (tuning notes)": t["lambda (chosen on tuning notes)"],
                                  "PI token F1 gain [95% CI]": [_ci(*x) for x in zip(t["PI token F1 gain"], t["gain lo"], t["gain hi"])],
                                  "micro-F1 change [95% CI]": [_ci(*x) for x in zip(t["micro-F1 change"], t["change lo"], t["change hi"])],
                                  "coding": [_coding_reading(lo, hi) for lo, hi in zip(t["change lo"], t["change hi"])],
                                  "n_notes": t.n_notes, "seeds": t.seeds})
            tables.append(Table("guided learning against the unguided model (report notes)", frame,
                                A.TRADEOFF.key, 3))
    s = root / A.FEW_SHOT_SUMMARY.key
    if s.exists():
        t = pd.read_csv(s)
        if "gain lo" in t.columns:
            frame = pd.DataFrame({"role": t.role, "zero-shot": t["zero-shot"], "few-shot": t["few-shot"],
                                  "gain [95% CI]": [_ci(*x) for x in zip(t.gain, t["gain lo"], t["gain hi"])],
                                  "n_notes": t.n_notes, "n_pairs": t.n_pairs})
            tables.append(Table("few-shot vs zero-shot teacher and students (same units)", frame, A.FEW_SHOT_SUMMARY.key, 3))
    if not tables:
        notes.append("no table with intervals yet (notebooks 05-08 not run with the evaluation design)")
    return Section("headline", "Headline tables with 95% bootstrap intervals over notes", True, tuple(notes), tuple(tables))


def _coding_reading(lo: Any, hi: Any) -> str:
    """What the micro-F1 change of a guided student says: a cost, an improvement, or neither."""
    lo, hi = _num(lo), _num(hi)
    if math.isnan(lo) or math.isnan(hi):
        return "–"
    return "improves (no cost)" if lo > 0 else "costs" if hi < 0 else "no clear change"


def _safe(name: str, title: str, build: Callable[[], Section]) -> Section:
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - one unreadable artifact must not sink the report
        return Section(name, title, True, (f"could not build this section: {type(exc).__name__}: {exc}",))


def _section(name: str, title: str, load: Callable[[], list], manifest: dict, timing: Timing | None, profile: str) -> Section:
    failed = timing is not None and timing.status == _STATUS["failed"]
    if not manifest:
        why = "failed in this run and has no earlier successful run" if failed else "has not run yet"
        return Section(name, title, False, (f"{name} {why} for profile {profile!r} "
                                            f"(python -m rationale_kit run --profile {profile} --only {name[:2]}).",))
    notes = []
    if failed:
        notes.append(f"{name} failed in this run: what follows comes from an earlier run and may be partial.")
    tables, figures = [], []
    try:
        for item in load():
            if isinstance(item, Table):
                tables.append(item)
            elif isinstance(item, Figure):
                figures.append(item)
                if item.data is None:
                    notes.append(f"figure not found: {item.path}")
            else:
                notes.append(item)
    except Exception as exc:  # noqa: BLE001 - one unreadable artifact must not sink the report
        notes.append(f"could not build this section: {type(exc).__name__}: {exc}")
    return Section(name, title, True, tuple(notes), tuple(tables), tuple(figures))


def _data_line(profile: Profile, info: dict, n_codes: int | None = None) -> str:
    """Documents, codes and spans as used: after every restriction (``data.top_codes``), from the
    per-split counts the loader recomputes after restricting; ``n_codes``: the code table's rows."""
    if not info:
        return f"{profile.common.dataset} (01_data not run yet)"
    kept = info.get("kept", {})
    splits = {s: v for s, v in info.get("splits", {}).items() if isinstance(v, dict)}
    per = " · ".join(f"{s} {v.get('documents')}" for s, v in splits.items())
    docs = sum(int(v.get("documents", 0)) for v in splits.values()) if splits else kept.get("documents", "?")
    parts = [f"{docs} documents" + (f" ({per})" if per else "")]
    # the parts of that total (mimic: MIMIC-IV coding documents and MDACE's evaluation documents)
    parts += [f"{v} {k}" for k, v in kept.items() if k != "documents" and k.endswith(")") and "documents" in k]
    codes = n_codes if n_codes is not None else kept.get("codes", kept.get("distinct codes"))
    if codes is not None:
        parts.append(f"{codes} codes")
    spans = sum(int(v.get("spans", 0)) for v in splits.values()) if splits and all("spans" in v for v in splits.values()) \
        else kept.get("spans")
    if spans is not None:
        parts.append(f"{spans} spans")
    top = info.get("top codes")
    if isinstance(top, dict):
        removed = top.get("spans removed")
        parts.append(f"after the top-codes restriction ({top.get('rule', '')}"
                     + (f"; {removed} spans removed" if removed is not None else "") + ")")
    return f"{info.get('name', profile.common.dataset)}: " + ", ".join(parts)


def _n_codes(root: Path, info: dict) -> int | None:
    """Rows of the code table when the label space was restricted (the loader's ``kept`` counts
    come before the restriction)."""
    path = root / A.CODES.key
    if not isinstance(info.get("top codes"), dict) or not path.exists():
        return None
    try:
        return int(len(pd.read_parquet(path, columns=["code"])))
    except Exception:  # noqa: BLE001 - the count is optional
        return None


def _llm_line(llm: Mapping) -> str:
    backend = llm.get("backend", "?")
    if backend == "local":
        model = llm.get("local_path") or "bundled SmolLM2-135M-Instruct"
    elif backend == "replay":
        model = f"{llm.get('model')} (replayed from {llm.get('replay_file')})"
    else:
        model = llm.get("model", "?")
    return f"{backend} · {model}"


def _timings(timings: Iterable[Mapping], manifests: Mapping[str, dict],
             boot: Mapping[str, float] | None = None) -> tuple[Timing, ...]:
    given = {t["notebook"]: t for t in timings}
    boot = boot or {}
    rows = []
    for name in NOTEBOOKS:
        t, m = given.get(name, {}), manifests.get(name, {})
        seconds = t.get("seconds")
        if t.get("status"):
            status = _STATUS.get(t["status"], t["status"])
        else:
            status = "not run in this invocation" if m or t else "never run"
            seconds = m.get("seconds") if seconds is None else seconds
        rows.append(Timing(name, status, seconds, t.get("finished"), m.get("git_commit"), boot.get(name)))
    return tuple(rows)


def collect(profile: Profile, artifacts_root: str | os.PathLike, figures_dir: str | os.PathLike,
            timings: Iterable[Mapping] = (), commit: str | None = None, date: str | None = None,
            draw: bool = True) -> Report:
    """Everything the report shows. ``timings``: one dict per notebook (``notebook, status, seconds,
    finished``), as :func:`runner_timings` gives; missing notebooks use their manifest's duration.
    ``draw``: draw the forest plot (matplotlib); without it the report has the grid and tables only."""
    root, figs = Path(artifacts_root), Path(figures_dir)
    manifests = {n: _json(root / n / MANIFEST_FILE) for n in NOTEBOOKS}
    boot = {t.writer: _json(root / t.key).get("bootstrap_seconds") for t in A.BOOTSTRAP_TIMINGS}
    timing = _timings(timings, manifests, {n: v for n, v in boot.items() if v is not None})
    by_name = {t.notebook: t for t in timing}
    sections = tuple(_section(n, title, load, manifests[n], by_name.get(n), profile.name)
                     for n, title, load in _sections(root, figs))
    info = _json(root / A.DATA_REPORT.key) if manifests["01_data"] else {}
    thresholds = _json(root / A.THRESHOLDS.key)
    trained = ", ".join(thresholds) if thresholds else "none yet (02_train not run)"
    llm = manifests["03_rationales"].get("parameters", {}).get("rationales", {}).get("llm") or {
        k: getattr(profile.rationales.llm, k) for k in ("backend", "model", "local_path", "replay_file")}
    header = (
        ("profile", profile.name),
        ("data", _data_line(profile, info, _n_codes(root, info))),
        ("models trained", trained),
        ("LLM (backend · model)", _llm_line(llm)),
        ("git commit", commit or git_commit()),
        ("date", date or time.strftime("%Y-%m-%d %H:%M:%S")),
        ("artifacts", str(root)),
    )
    try:
        v = read_verdicts(root)[0]
    except Exception:  # noqa: BLE001 - the verdict section reports the error itself
        v = None
    opening = (_safe("verdicts", "Verdicts on the paper's four findings", lambda: _verdicts(root, draw)),
               _safe("caveats", "Caveats that apply to these verdicts", lambda: _caveats(root, profile, manifests, v)),
               _safe("headline", "Headline tables with 95% bootstrap intervals over notes", lambda: _compact(root, profile)))
    return Report(profile.name, header, timing, sections, opening)


def runner_timings(results: Sequence[Mapping], state: Mapping[str, Mapping]) -> list[dict]:
    """Per notebook: the status of this invocation (from ``results``) and the duration and end
    time of its last successful run (from the runner's ``state.json``)."""
    now = {r["notebook"]: r for r in results}
    rows = []
    for name in NOTEBOOKS:
        r, s = now.get(name, {}), state.get(name, {})
        if not r and not s:
            continue
        rows.append({"notebook": name, "status": r.get("status"),
                     "seconds": r.get("seconds", s.get("seconds")),
                     "finished": s.get("finished") if r.get("status") in (None, "ok", "skipped") else None})
    return rows


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
def _plain_index(frame: pd.DataFrame) -> bool:
    return isinstance(frame.index, pd.RangeIndex) and frame.index.name is None


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return "–" if value is None else str(value)


def _seconds(s: Optional[float]) -> str:
    return "–" if s is None else f"{float(s):.1f}"


def _boot(t: Timing) -> str:
    """Seconds in the bootstrap and their share of the notebook's time."""
    if t.bootstrap_seconds is None:
        return "–"
    share = f" ({100 * t.bootstrap_seconds / t.seconds:.1f}%)" if t.seconds else ""
    return f"{t.bootstrap_seconds:.2f} s{share}"


def _html_rows(frame: pd.DataFrame, digits: int) -> list[str]:
    return ["<tr>" + "".join(f"<td>{html.escape(_cell(v, digits))}</td>" for v in row) + "</tr>"
            for row in frame.itertuples(index=False)]


def _html_table(t: Table) -> str:
    cap = (f"<figure class=\"table\"><figcaption>{html.escape(t.caption)} "
           f"<span class=\"src\">({html.escape(t.source)})</span></figcaption>\n<div class=\"scroll\">")
    if t.group and t.group in t.frame.columns:
        frame = t.frame.drop(columns=t.group)
        head = "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns) + "</tr>"
        body = []
        for key, part in t.frame.groupby(t.group, sort=False):
            body.append(f"<tr class=\"group\"><th colspan=\"{len(frame.columns)}\">{html.escape(str(key))}</th></tr>")
            body += _html_rows(part.drop(columns=t.group), t.digits)
        table = f"<table class=\"grouped\"><thead>{head}</thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>"
    else:
        table = t.frame.to_html(escape=True, index=not _plain_index(t.frame), na_rep="–", border=0,
                                float_format=lambda x: f"{x:.{t.digits}f}")
    return f"{cap}{table}</div></figure>"


def _html_figure(f: Figure) -> str:
    if f.data is None:
        return ""
    mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}.get(f.path.suffix.lower(), "image/png")
    data = base64.b64encode(f.data).decode("ascii")
    return (f"<figure><img alt=\"{html.escape(f.caption)}\" src=\"data:{mime};base64,{data}\">"
            f"<figcaption>{html.escape(f.caption)} <span class=\"src\">({html.escape(f.path.name)})</span></figcaption></figure>")


def _grid_layout(cells: Sequence[GridCell]) -> tuple[list[str], list[tuple[str, str]], dict]:
    """Findings (rows), (dataset, model) columns (models sorted, "-" last) and the cells of each."""
    findings = list(dict.fromkeys(c.finding for c in cells))
    datasets = list(dict.fromkeys(c.dataset for c in cells))
    cols = [(d, m) for d in datasets
            for m in sorted({c.model for c in cells if c.dataset == d}, key=lambda m: (m in ("-", ""), m))]
    at: dict = {}
    for c in cells:
        at.setdefault((c.finding, c.dataset, c.model), []).append(c)
    return findings, cols, at


def _model_name(model: str) -> str:
    return "model-free / across models" if model in ("-", "") else model


def _html_grid(cells: Sequence[GridCell]) -> str:
    from rationale_kit.viz.figures import VERDICT_ORDER, verdict_colour

    e = html.escape
    findings, cols, at = _grid_layout(cells)
    datasets = list(dict.fromkeys(d for d, _ in cols))
    out = ["<div class=\"scroll\"><table class=\"grid\"><thead>"]
    if len(datasets) > 1 or datasets != [""]:
        out.append("<tr><th></th>" + "".join(f"<th colspan=\"{sum(1 for d2, _ in cols if d2 == d)}\">{e(d or '–')}</th>"
                                              for d in datasets) + "</tr>")
    out.append("<tr><th>finding</th>" + "".join(f"<th>{e(_model_name(m))}</th>" for _, m in cols) + "</tr></thead><tbody>")
    for f in findings:
        row = [f"<tr><th class=\"finding\">{e(f)}</th>"]
        for d, m in cols:
            chips = [f"<div class=\"chip\" style=\"background:{verdict_colour(c.verdict)}\">{e(c.verdict)}"
                     + (f"<span class=\"detail\">{e(c.detail)}</span>" if c.detail else "")
                     + (f"<span class=\"detail\"><b>{e(c.note)}</b></span>" if c.note else "") + "</div>"
                     for c in at.get((f, d, m), [])]
            row.append("<td>" + ("".join(chips) if chips else "<span class=\"none\">–</span>") + "</td>")
        out.append("".join(row) + "</tr>")
    out.append("</tbody></table></div>")
    present = [v for v in VERDICT_ORDER] + sorted({c.verdict for c in cells} - set(VERDICT_ORDER))
    out.append("<p class=\"legend\">" + " ".join(f"<span class=\"chip\" style=\"background:{verdict_colour(v)}\">{e(v)}</span>"
                                                 for v in present) + "</p>")
    return "\n".join(out)


def _md_grid(cells: Sequence[GridCell]) -> list[str]:
    findings, cols, at = _grid_layout(cells)
    several = len({d for d, _ in cols}) > 1
    header = ["finding"] + [(f"{d}: " if several else "") + _model_name(m) for d, m in cols]
    rows = []
    for f in findings:
        row = [f]
        for d, m in cols:
            row.append("; ".join(c.verdict.upper() + (f" ({c.detail})" if c.detail else "") + (f" — {c.note}" if c.note else "")
                                 for c in at.get((f, d, m), [])) or "–")
        rows.append(row)
    return _md_table(pd.DataFrame(rows, columns=header))


_CSS = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:1.2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;margin:0.2em 0 0.4em}h2{font-size:1.2em;margin:1.1em 0 0.4em}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}th,td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}
td{max-width:30em;overflow-wrap:break-word}th{background:#f4f4f4}
.scroll{overflow-x:auto;max-width:100%}
table.header td,table.header th{text-align:left}figure{margin:0.8em 0}img{max-width:100%}
table.grouped td:first-child{text-align:left}tr.group th{text-align:left;background:#e8edf3;padding-top:5px}
table.grid{font-size:0.9em}table.grid td,table.grid th{text-align:center;vertical-align:top;border:1px solid #ddd;padding:4px}
table.grid th.finding{text-align:left;font-weight:normal;max-width:20em}
.chip{display:inline-block;color:#fff;border-radius:4px;padding:2px 7px;margin:1px;font-weight:600;font-size:0.92em}
.chip .detail{display:block;font-weight:normal;font-size:0.8em}.none{color:#aaa}
.legend{font-size:0.85em;margin:0.2em 0 0.8em}
ul.caveats{background:#fff8e6;border-left:4px solid #e0a030;padding:0.5em 1em 0.5em 2em;margin:0.4em 0}
ul.caveats li{margin:0.2em 0}
.src{color:#888;font-size:0.85em}.note{color:#a40}"""


def _html_opening(s: Section) -> list[str]:
    e = html.escape
    out = [f"<h2 id=\"{s.notebook}\">{e(s.title)}</h2>"]
    if s.notebook == "caveats":
        return out + ["<ul class=\"caveats\">"] + [f"<li>{e(n)}</li>" for n in s.notes] + ["</ul>"]
    if s.grid:
        out.append(_html_grid(s.grid))
    out += [_html_figure(f) for f in s.figures if f.data is not None]
    out += [f"<p class=\"note\">{e(n)}</p>" for n in s.notes]
    out += [_html_table(t) for t in s.tables]
    return out


def _opening_order(opening: Sequence[Section]) -> list[Section]:
    """The picture first: the verdicts' grid and forest plot, the caveats right under them, then
    the verdict rows (a pseudo-section ``verdict-table`` holding the verdicts' notes and table),
    then the rest."""
    out = []
    for s in opening:
        if s.notebook == "caveats" and any(x.notebook == "verdicts" for x in opening):
            continue
        out.append(s)
        if s.notebook == "verdicts":
            out += [c for c in opening if c.notebook == "caveats"]
            out.append(Section("verdict-table", "Verdict rows", True, s.notes, s.tables))
    return out


def to_html(report: Report) -> str:
    """The report as one self-contained HTML page (figures embedded): the verdict grid, the forest
    plot and the caveats first, then the tables."""
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>Run report: {e(report.profile)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Run report: profile {e(report.profile)}</h1>"]
    head = dict(report.header)
    out.append("<p class=\"src\">" + " · ".join(e(f"{k}: {head[k]}") for k in ("data", "LLM (backend · model)", "git commit")
                                                 if k in head) + "</p>")
    for s in _opening_order(report.opening):
        if s.notebook == "verdict-table":
            out.append("<h2 id=\"verdict-table\">Verdict rows</h2>")
            out += [f"<p class=\"note\">{e(n)}</p>" for n in s.notes]
            out += [_html_table(t) for t in s.tables]
        elif s.notebook == "verdicts":
            out.append(f"<h2 id=\"{s.notebook}\">{e(s.title)}</h2>")
            if s.grid:
                out.append(_html_grid(s.grid))
            out += [_html_figure(f) for f in s.figures if f.data is not None]
        else:
            out += _html_opening(s)
    out.append("<h2 id=\"run\">The run</h2><table class=\"header\">")
    out += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in report.header]
    out += ["</table>", "<h2 id=\"timings\">Notebook timings</h2>", "<table class=\"header\">",
            "<tr><th>notebook</th><th>this invocation</th><th>seconds</th><th>finished</th><th>commit</th><th>bootstrap</th></tr>"]
    out += [f"<tr><td>{e(t.notebook)}</td><td>{e(t.status)}</td><td>{_seconds(t.seconds)}</td>"
            f"<td>{e(t.finished or '–')}</td><td>{e(t.commit or '–')}</td><td>{e(_boot(t))}</td></tr>" for t in report.timings]
    out.append("</table>")
    for i, s in enumerate(report.sections, 1):
        out.append(f"<h2 id=\"{s.notebook}\">{i}. {e(s.title)} ({e(s.notebook)})</h2>")
        out += [f"<p class=\"note\">{e(n)}</p>" for n in s.notes]
        out += [_html_figure(f) for f in s.figures if f.data is not None]
        out += [_html_table(t) for t in s.tables]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


_MD_ACTIVE = str.maketrans({c: "\\" + c for c in "\\`[]"})


def _md_text(value: Any) -> str:
    """Text from the data as inert Markdown: HTML escaped, and the characters that open links,
    images (``[x](javascript:...)``, ``![](https://remote/...)``) and code spans backslash-escaped."""
    text = html.escape(str(value), quote=False).translate(_MD_ACTIVE)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(frame: pd.DataFrame, digits: int = 4, group: str | None = None) -> list[str]:
    """A Markdown table; with ``group``, a run of equal values in that column is written once."""
    if not _plain_index(frame):
        frame = frame.reset_index()
    cols = [_md_text(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    at = list(frame.columns).index(group) if group in frame.columns else None
    last = object()
    for row in frame.itertuples(index=False):
        cells = [_md_text(_cell(v, digits)) for v in row]
        if at is not None:
            cells[at], last = ("" if row[at] == last else cells[at]), row[at]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md_figure(f: Figure, base_dir: str | os.PathLike | None) -> list[str]:
    if f.data is None:
        return []
    if f.generated:
        rel = f.path.name
    else:
        rel = os.path.relpath(f.path, base_dir) if base_dir else str(f.path)
    return ["", f"![{_md_text(f.caption)}]({urllib.parse.quote(Path(rel).as_posix())})"]


def _md_section_body(s: Section, base_dir) -> list[str]:
    out = []
    if s.notes:
        if s.notebook == "caveats":
            out += [""] + [f"- {_md_text(n)}" for n in s.notes]
        else:
            out += [""] + [f"> {_md_text(n)}  " for n in s.notes]
    for t in s.tables:
        out += ["", f"*{_md_text(t.caption)}* ({_md_text(t.source)})", ""] + _md_table(t.frame, t.digits, t.group)
    return out


def to_markdown(report: Report, base_dir: str | os.PathLike | None = None) -> str:
    """The report as Markdown; figures are linked relative to ``base_dir`` (the report's folder;
    figures the report draws are written there by :func:`write_report`)."""
    out = [f"# Run report: profile {_md_text(report.profile)}"]
    for s in _opening_order(report.opening):
        if s.notebook == "verdict-table":
            out += ["", "## Verdict rows"] + _md_section_body(s, base_dir)
            continue
        out += ["", f"## {_md_text(s.title)}"]
        if s.grid:
            out += [""] + _md_grid(s.grid)
        for f in s.figures:
            out += _md_figure(f, base_dir)
        if s.notebook != "verdicts":
            out += _md_section_body(s, base_dir)
    out += ["", "## The run", ""]
    out += _md_table(pd.DataFrame(list(report.header), columns=["", "value"]))
    out += ["", "## Notebook timings", ""]
    out += _md_table(pd.DataFrame([{"notebook": t.notebook, "this invocation": t.status, "seconds": _seconds(t.seconds),
                                    "finished": t.finished or "–", "commit": t.commit or "–", "bootstrap": _boot(t)}
                                   for t in report.timings]))
    for i, s in enumerate(report.sections, 1):
        out += ["", f"## {i}. {_md_text(s.title)} ({s.notebook})"]
        if s.notes:
            out += [""] + [f"> {_md_text(n)}  " for n in s.notes]
        for f in s.figures:
            out += _md_figure(f, base_dir)
        for t in s.tables:
            out += ["", f"*{_md_text(t.caption)}* ({_md_text(t.source)})", ""] + _md_table(t.frame, t.digits, t.group)
    return "\n".join(out) + "\n"


def write_report(report: Report, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (and the figures the report drew, which report.md
    links) into ``out_dir``; returns the two paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for s in report.opening + report.sections:
        for f in s.figures:
            if f.generated and f.data is not None:
                (out / f.path.name).write_bytes(f.data)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(to_html(report), encoding="utf-8")
    md_path.write_text(to_markdown(report, out), encoding="utf-8")
    return html_path, md_path


def build_report(profile: Profile, runs_dir: str | os.PathLike, results: Sequence[Mapping] = ()) -> tuple[Path, Path]:
    """Collect and write the report of ``profile`` into ``runs_dir`` (where the runner's
    ``state.json`` is)."""
    runs = Path(runs_dir)
    state = _json(runs / "state.json")
    figures, artifacts = figures_dir(profile), artifacts_root(profile)
    return write_report(collect(profile, artifacts, figures, runner_timings(results, state)), runs)
