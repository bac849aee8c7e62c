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
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

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


@dataclass(frozen=True)
class Figure:
    caption: str
    path: Path
    data: Optional[bytes]


@dataclass(frozen=True)
class Section:
    notebook: str
    title: str
    ran: bool
    notes: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    figures: tuple[Figure, ...] = ()


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
                                                          "plausibility (F1, all granularities, all codes)", 4, [0, 1])]),
        ("05_faithfulness", "Faithfulness", lambda: [
            _aopc_note(),
            _csv(root, A.FAITHFULNESS_TABLE, "faithfulness of the rationales", 4, None, _faithfulness("rationale")),
            _csv(root, A.FAITHFULNESS_TABLE, "rationale minus random control", 4, None, _faithfulness("difference")),
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


def _verdicts(root: Path) -> Section:
    parts, missing = [], []
    for finding, artifact in A.VERDICTS:
        path = root / artifact.key
        if path.exists():
            parts.append(pd.read_csv(path))
        else:
            missing.append(f"finding ({finding}) {FINDINGS[finding]}: no verdicts yet ({artifact.key} not written)")
    notes = ["Each comparison is a - b on the units both sides have, with a 95% paired bootstrap interval over "
             "notes: 'holds' when the whole interval lies on the expected side of 0, 'does not hold' when it lies "
             "on the other side, otherwise 'inconclusive'. Rows marked 'as above' combine the rows before them."]
    tables = []
    if parts:
        v = pd.concat(parts, ignore_index=True)
        v = v.astype({c: "Int64" for c in ("n_notes", "n_pairs") if c in v.columns})
        v["finding"] = v["finding"].map(lambda f: f"({f}) {FINDINGS.get(f, '')}")
        v["effect [95% CI]"] = [_ci(e, lo, hi) for e, lo, hi in zip(v.effect, v.lo, v.hi)]
        cols = ["finding", "comparison", "model", "dataset", "a", "b", "effect [95% CI]", "n_notes", "n_pairs", "verdict"]
        tables.append(Table("the paper's findings as verdicts", v[[c for c in cols if c in v.columns]], "*/verdicts.csv", 3))
    return Section("verdicts", "Verdicts on the paper's four findings", True, tuple(notes + missing), tuple(tables))


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


def _data_line(profile: Profile, info: dict) -> str:
    if not info:
        return f"{profile.common.dataset} (01_data not run yet)"
    kept = info.get("kept", {})
    splits = " · ".join(f"{s} {v.get('documents')}" for s, v in info.get("splits", {}).items() if isinstance(v, dict))
    parts = [f"{kept.get('documents', '?')} documents" + (f" ({splits})" if splits else "")]
    # the parts of that total (mimic: MIMIC-IV coding documents and MDACE's evaluation documents)
    parts += [f"{v} {k}" for k, v in kept.items() if k != "documents" and k.endswith(")") and "documents" in k]
    parts += [f"{kept[k]} {k}" for k in ("codes", "spans") if k in kept]
    return f"{info.get('name', profile.common.dataset)}: " + ", ".join(parts)


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
            timings: Iterable[Mapping] = (), commit: str | None = None, date: str | None = None) -> Report:
    """Everything the report shows. ``timings``: one dict per notebook (``notebook, status, seconds,
    finished``), as :func:`runner_timings` gives; missing notebooks use their manifest's duration."""
    root, figs = Path(artifacts_root), Path(figures_dir)
    manifests = {n: _json(root / n / MANIFEST_FILE) for n in NOTEBOOKS}
    boot = {t.writer: _json(root / t.key).get("bootstrap_seconds") for t in A.BOOTSTRAP_TIMINGS}
    timing = _timings(timings, manifests, {n: v for n, v in boot.items() if v is not None})
    by_name = {t.notebook: t for t in timing}
    sections = tuple(_section(n, title, load, manifests[n], by_name.get(n), profile.name)
                     for n, title, load in _sections(root, figs))
    thresholds = _json(root / A.THRESHOLDS.key)
    trained = ", ".join(thresholds) if thresholds else "none yet (02_train not run)"
    llm = manifests["03_rationales"].get("parameters", {}).get("rationales", {}).get("llm") or {
        k: getattr(profile.rationales.llm, k) for k in ("backend", "model", "local_path", "replay_file")}
    header = (
        ("profile", profile.name),
        ("data", _data_line(profile, _json(root / A.DATA_REPORT.key) if manifests["01_data"] else {})),
        ("models trained", trained),
        ("LLM (backend · model)", _llm_line(llm)),
        ("git commit", commit or git_commit()),
        ("date", date or time.strftime("%Y-%m-%d %H:%M:%S")),
        ("artifacts", str(root)),
    )
    opening = (_safe("verdicts", "Verdicts on the paper's four findings", lambda: _verdicts(root)),
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


def _html_table(t: Table) -> str:
    body = t.frame.to_html(escape=True, index=not _plain_index(t.frame), na_rep="–", border=0,
                           float_format=lambda x: f"{x:.{t.digits}f}")
    return (f"<figure class=\"table\"><figcaption>{html.escape(t.caption)} "
            f"<span class=\"src\">({html.escape(t.source)})</span></figcaption>\n{body}</figure>")


def _html_figure(f: Figure) -> str:
    if f.data is None:
        return ""
    mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}.get(f.path.suffix.lower(), "image/png")
    data = base64.b64encode(f.data).decode("ascii")
    return (f"<figure><img alt=\"{html.escape(f.caption)}\" src=\"data:{mime};base64,{data}\">"
            f"<figcaption>{html.escape(f.caption)} <span class=\"src\">({html.escape(f.path.name)})</span></figcaption></figure>")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}th,td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4}table.header td,table.header th{text-align:left}figure{margin:1em 0}img{max-width:100%}
.src{color:#888;font-size:0.85em}.note{color:#a40}"""


def to_html(report: Report) -> str:
    """The report as one self-contained HTML page (figures embedded)."""
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>Run report: {e(report.profile)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Run report: profile {e(report.profile)}</h1>"]
    for s in report.opening:
        out.append(f"<h2 id=\"{s.notebook}\">{e(s.title)}</h2>")
        out += [f"<p class=\"note\">{e(n)}</p>" for n in s.notes]
        out += [_html_table(t) for t in s.tables]
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


def _md_table(frame: pd.DataFrame, digits: int = 4) -> list[str]:
    if not _plain_index(frame):
        frame = frame.reset_index()
    cols = [_md_text(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_md_text(_cell(v, digits)) for v in row) + " |")
    return lines


def to_markdown(report: Report, base_dir: str | os.PathLike | None = None) -> str:
    """The report as Markdown; figures are linked relative to ``base_dir`` (the report's folder)."""
    out = [f"# Run report: profile {_md_text(report.profile)}"]
    for s in report.opening:
        out += ["", f"## {_md_text(s.title)}"]
        if s.notes:
            out += [""] + [f"> {_md_text(n)}  " for n in s.notes]
        for t in s.tables:
            out += ["", f"*{_md_text(t.caption)}* ({_md_text(t.source)})", ""] + _md_table(t.frame, t.digits)
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
            if f.data is not None:
                rel = os.path.relpath(f.path, base_dir) if base_dir else str(f.path)
                out += ["", f"![{_md_text(f.caption)}]({urllib.parse.quote(Path(rel).as_posix())})"]
        for t in s.tables:
            out += ["", f"*{_md_text(t.caption)}* ({_md_text(t.source)})", ""] + _md_table(t.frame, t.digits)
    return "\n".join(out) + "\n"


def write_report(report: Report, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
