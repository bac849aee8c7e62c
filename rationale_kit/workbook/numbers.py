"""Numbers that travel: every result the README quotes, regenerated from a run's artifacts as one
Markdown block, with the seeds it rests on and its spread (``python -m rationale_kit numbers``).

The block states the training seeds (``common.seeds``), the bootstrap (resamples, seed, level), the
git commit of the artifacts, and for every number its 95% interval over notes and, when the run
trained several seeds, the mean ± standard deviation across them. It is delimited by
``<!-- numbers:begin profile=P -->`` / ``<!-- numbers:end profile=P -->`` so that
:func:`splice` (``--into README.md``) can replace an earlier block in place: numbers are never typed
by hand. See docs/REPRODUCIBILITY.md for what makes two runs give the same numbers.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from rationale_kit.core.config import Profile
from rationale_kit.core.records import DataError
from rationale_kit.workbook import artifacts as A
from rationale_kit.workbook.context import MANIFEST_FILE, NOTEBOOKS
from rationale_kit.workbook.report import FINDINGS, _ci, _count, _data_line, _json, _n_codes, _num, _share, read_verdicts, training_seeds


def begin_marker(profile: str) -> str:
    return f"<!-- numbers:begin profile={profile} -->"


def end_marker(profile: str) -> str:
    return f"<!-- numbers:end profile={profile} -->"


def _inert(text: Any) -> str:
    """Text from the data made inert in Markdown/HTML (``<`` and ``&`` escaped; ``>`` kept readable)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;")


def _cell(text: Any) -> str:
    return _inert(text).replace("|", "\\|").replace("\n", " ")


def _table(frame: pd.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(_cell(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return lines


def _pm(mean: Any, sd: Any, seeds: Any = None, digits: int = 3) -> str:
    """``"0.380 ± 0.012 (3 seeds)"``; the mean alone for one seed (sd undefined), ``–`` without one."""
    m, s, n = _num(mean), _num(sd), _num(seeds)
    if math.isnan(m):
        return "–"
    out = f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if not math.isnan(s) else "")
    return out + (f" ({int(n)} seed{'s' if int(n) != 1 else ''})" if not math.isnan(n) else "")


def _manifests(root: Path) -> dict[str, dict]:
    return {n: _json(root / n / MANIFEST_FILE) for n in NOTEBOOKS}


def _section(manifests: Mapping[str, dict], section: str, prefer: tuple[str, ...]) -> dict:
    """A parameter section as the notebooks that used it recorded it (``prefer`` first)."""
    for name in list(prefer) + list(manifests):
        got = (manifests.get(name, {}).get("parameters") or {}).get(section)
        if got:
            return got
    return {}


def _run_lines(profile: Profile, root: Path, manifests: Mapping[str, dict]) -> list[str]:
    common = _section(manifests, "common", ("02_train",))
    seeds = common.get("seeds") or [common.get("seed", profile.common.seed)]
    ev = _section(manifests, "evaluation", ("06_plausibility", "05_faithfulness", "07_guided_learning", "08_few_shot"))
    commits = sorted({m.get("git_commit") for m in manifests.values() if m.get("git_commit")})
    info = _json(root / A.DATA_REPORT.key)
    lines = [f"Profile `{profile.name}`, artifacts of git commit{'s' if len(commits) > 1 else ''} "
             f"{', '.join(f'`{c}`' for c in commits) or 'unknown'}; training seeds {', '.join(map(str, seeds))} "
             f"(`common.seeds`{'' if common.get('seeds') else ', unset: `common.seed` alone'}); "
             f"intervals: {float(ev.get('level', profile.evaluation.level)):.0%} bootstrap over notes, "
             f"{ev.get('bootstrap_resamples', profile.evaluation.bootstrap_resamples)} resamples, bootstrap seed "
             f"{ev.get('seed', profile.evaluation.seed)}; spread across training seeds as mean ± sd."]
    if info:
        lines.append(f"Data: {_inert(_data_line(profile, info, _n_codes(root, info)))}.")
    return lines


def _coding(root: Path) -> list[str]:
    path = root / A.CODING_TABLE.key
    if not path.exists():
        return []
    t = pd.read_csv(path, index_col=0)
    s = pd.read_csv(root / A.CODING_SEEDS.key, index_col=0) if (root / A.CODING_SEEDS.key).exists() else pd.DataFrame()
    rows = []
    for model, r in t.iterrows():
        seeds = s.loc[model] if model in s.index else {}
        rows.append({"model": model, "micro-F1 [95% CI]": _ci(r.get("micro_f1"), r.get("micro_f1_lo"), r.get("micro_f1_hi")),
                     "macro-F1": _ci(r.get("macro_f1_mean"), None, None), "mAP": _ci(r.get("map"), None, None),
                     "micro-F1 across seeds": _pm(seeds.get("micro_f1 mean"), seeds.get("micro_f1 std"), seeds.get("seeds"))
                     if len(seeds) else "– (no seed)",
                     "mAP across seeds": _pm(seeds.get("map mean"), seeds.get("map std"), seeds.get("seeds")) if len(seeds) else "–"})
    notes = _count(t["notes"].max()) if "notes" in t.columns else "?"
    labels = _count(t["labels"].max()) if "labels" in t.columns else "?"
    return ["", f"**Coding** (02_train, {notes} test notes, {labels} labels; the interval is the first seed's model, "
                "the spread is across seeds)", ""] + _table(pd.DataFrame(rows))


def _verdicts(root: Path) -> list[str]:
    v, _ = read_verdicts(root)
    if v is None:
        return []
    rows = []
    for r in v.to_dict("records"):
        spread = []
        n_seeds = training_seeds(r.get("units"))
        if n_seeds:
            spread.append(f"{n_seeds} training seeds")
        if not math.isnan(_num(r.get("seed_sd"))):
            spread.append(f"training-seed sd {_num(r['seed_sd']):.3f}")
        if not math.isnan(_share(r.get("seed_agreement"))):
            spread.append(f"{_share(r['seed_agreement']):.0%} of bootstrap seeds agree")
        control = str(r.get("control") or "")
        rows.append({"finding": f"({r['finding']})", "comparison": ("combined: " if r["combined"] else "") + r["comparison"]
                     + (f" [{control}]" if control and control not in ("raw", "nan") else ""),
                     "model": r["model"], "effect [95% CI]": _ci(r["effect"], r["lo"], r["hi"]),
                     "notes": _count(r["n_notes"]), "verdict": r["verdict"] + (f" — {r['reading']}" if r["reading"] else ""),
                     "across seeds": ", ".join(spread) or "–"})
    findings = "; ".join(f"({k}) {t}" for k, t in FINDINGS.items())
    methods = sorted({str(m) for m in v.get("interval_method", pd.Series(dtype=object)).dropna()} - {"", "nan"})
    how = f"; verdict intervals: {', '.join(methods)}" if methods else ""
    return ["", f"**Verdicts** ({findings}; effect = a - b, paired over notes{how})", ""] + _table(pd.DataFrame(rows))


def _rationale_seeds(root: Path) -> list[str]:
    """Findings (a) and (b)'s model rationales across training seeds (06's and 05's ``*_seeds.csv``,
    written when the run trained several seeds): mean ± sd per model and source."""
    rows = []
    pl, fa = root / A.PLAUSIBILITY_SEED_SPREAD.key, root / A.FAITHFULNESS_SEED_SPREAD.key
    if pl.exists():
        for r in pd.read_csv(pl).to_dict("records"):
            rows.append({"model": r["model"], "source": r["source"], "measure": "PI token F1 (06)",
                         "across seeds": _pm(r["mean"], r["std"], r["seeds"]), "pairs": _count(r.get("n_pairs"))})
    if fa.exists():
        t = pd.read_csv(fa)
        for r in t[t.value == "rationale"].to_dict("records"):
            rows.append({"model": r["model"], "source": r["source"], "measure": f"{r['measure']} (05)",
                         "across seeds": _pm(r["mean"], r["std"], r["seeds"]), "pairs": _count(r.get("n_pairs"))})
    if not rows:
        return []
    return ["", "**Rationales across training seeds** (findings (a) and (b): each seed's model on the same pairs; "
                "mean ± sd across seeds)", ""] + _table(pd.DataFrame(rows))


def _guided(root: Path) -> list[str]:
    path = root / A.TRADEOFF.key
    if not path.exists():
        return []
    t = pd.read_csv(path)
    rows = [{"model": r.get("model"), "teacher": r.get("teacher"),
             "lambda": r.get("lambda (chosen on tuning notes)"),
             "PI token F1 gain [95% CI]": _ci(r.get("PI token F1 gain"), r.get("gain lo"), r.get("gain hi")),
             "micro-F1 change [95% CI]": _ci(r.get("micro-F1 change"), r.get("change lo"), r.get("change hi")),
             "gain across seeds": _pm(r.get("gain seed mean"), r.get("gain seed std"), r.get("seeds")),
             "change across seeds": _pm(r.get("change seed mean"), r.get("change seed std"), r.get("seeds")),
             "notes": _count(r.get("n_notes"))} for r in t.to_dict("records")]
    return ["", "**Guided learning** (07, against the unguided model, report notes; lambda chosen on tuning notes)", ""] \
        + _table(pd.DataFrame(rows))


def _few_shot(root: Path) -> list[str]:
    path = root / A.FEW_SHOT_SUMMARY.key
    if not path.exists():
        return []
    t = pd.read_csv(path)
    rows = [{"role": r.get("role"), "zero-shot": _ci(r.get("zero-shot"), None, None), "few-shot": _ci(r.get("few-shot"), None, None),
             "gain [95% CI]": _ci(r.get("gain"), r.get("gain lo"), r.get("gain hi")), "notes": _count(r.get("n_notes")),
             "pairs": _count(r.get("n_pairs"))} for r in t.to_dict("records")]
    return ["", "**Few-shot** (08, PI token F1, few-shot minus zero-shot on the same units)", ""] + _table(pd.DataFrame(rows))


def _timings(manifests: Mapping[str, dict]) -> list[str]:
    secs = {n: _num(m.get("seconds")) for n, m in manifests.items() if m}
    secs = {n: s for n, s in secs.items() if not math.isnan(s)}
    if not secs:
        return []
    parts = ", ".join(f"{n[:2]} {s:.0f} s" for n, s in secs.items())
    total = sum(secs.values())
    return ["", f"**Time** (each notebook's last finished run, from its manifest): {parts}; "
                f"{int(total // 60)} min {int(total % 60)} s in all (machine-dependent)."]


def numbers_block(profile: Profile, artifacts_root: str | Path) -> str:
    """The Markdown block of every README number of ``profile``'s run in ``artifacts_root``.
    Raises :class:`DataError` when the folder has no finished notebook."""
    root = Path(artifacts_root)
    manifests = _manifests(root)
    if not any(manifests.values()):
        raise DataError(f"{root}: no finished notebook (no {MANIFEST_FILE}); run the series first "
                        f"(python -m rationale_kit run --profile {profile.name})")
    out = [begin_marker(profile.name),
           f"*Generated by `python -m rationale_kit numbers --profile {profile.name}` from the run's artifacts; "
           "do not edit by hand.*", ""]
    out += _run_lines(profile, root, manifests)
    out += _coding(root) + _verdicts(root) + _rationale_seeds(root) + _guided(root) + _few_shot(root) + _timings(manifests)
    out.append(end_marker(profile.name))
    return "\n".join(out) + "\n"


def splice(text: str, block: str, profile: str) -> str:
    """``text`` with the block between ``profile``'s markers replaced by ``block`` (which carries
    the markers). Raises :class:`DataError` when the markers are missing or out of order."""
    begin, end = begin_marker(profile), end_marker(profile)
    m = re.search(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", text, flags=re.S)
    if not m:
        raise DataError(f"no '{begin}' ... '{end}' markers to replace (add them where the block belongs)")
    return text[: m.start()] + block + text[m.end():]
