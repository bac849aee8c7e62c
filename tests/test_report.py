"""The run report, on fake artifacts shaped like the ones the notebooks save."""
import base64
import json

import pandas as pd
import pytest

from rationale_kit.workbook import runner as pipeline, report
from rationale_kit.__main__ import main
from rationale_kit.core.config import load_profile

EVIL = "<script>alert(1)</script>"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
TITLES = ["Dataset", "Coding", "Plausibility", "Faithfulness", "Guided learning", "Few-shot", "Open questions beyond the paper"]
NUMBERED = [f"{i}. {t}" for i, t in enumerate(TITLES, 1)]


@pytest.fixture
def prof(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(f"common:\n  artifacts_dir: {tmp_path / 'art'}\n  figures_dir: {tmp_path / 'fig'}\n")
    return load_profile(str(f))


def _done(root, name, seconds=1.5):
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"notebook": name, "seconds": seconds, "git_commit": "abc1234",
                                                 "parameters": {"rationales": {"llm": {"backend": "gemini", "model": "gemini-x"}}}}))
    return d


def _artifacts(tmp_path, upto=7):
    root = tmp_path / "art" / "p"
    d = _done(root, "01_data", 12.0)
    pd.DataFrame({"documents": [3, 1], "codes per document": [2.5, 1.0]}, index=pd.Index(["train", "test"], name="split")).to_csv(d / "statistics.csv")
    (d / "report.json").write_text(json.dumps({"name": EVIL, "kept": {"documents": 4, "codes": 2}, "splits": {"train": {"documents": 3}}}))
    if upto < 2:
        return root
    d = _done(root, "02_train")
    pd.DataFrame({"micro_f1": [0.5, 0.6]}, index=["frequency baseline", "caml"]).to_csv(d / "coding_table.csv")
    (d / "thresholds.json").write_text('{"caml": 0.3}')
    _done(root, "03_rationales")
    d = _done(root, "05_faithfulness")
    pd.DataFrame({"model": ["caml"] * 2, "source": ["attention"] * 2, "measure": ["comprehensiveness", "sufficiency"],
                  "random": [0.1, 0.2], "rationale": [0.3, 0.1], "difference": [0.2, -0.1]}).to_csv(d / "faithfulness_table.csv", index=False)
    d = _done(root, "06_plausibility")
    pd.DataFrame({"source": [EVIL, "entity"], "model": ["caml", "-"], "token_exact": [0.1, 0.2]}).to_csv(d / "plausibility_table.csv", index=False)
    d = _done(root, "07_guided_learning")
    pd.DataFrame({"method": ["caml (unguided)", f"caml + {EVIL}"], "micro_f1": [0.5, float("nan")]}).to_csv(d / "summary.csv", index=False)
    (tmp_path / "fig" / "p").mkdir(parents=True)
    (tmp_path / "fig" / "p" / "07_tradeoff.png").write_bytes(PNG)
    return root


def _collect(prof, tmp_path, timings=()):
    return report.collect(prof, tmp_path / "art" / "p", tmp_path / "fig" / "p", timings, commit="fffffff", date="2026-01-01")


def _in_order(text, needles):
    pos = [text.index(n) for n in needles]
    assert pos == sorted(pos), needles


def test_html_sections_in_order_escaped_with_embedded_figure(prof, tmp_path):
    _artifacts(tmp_path)
    page = report.to_html(_collect(prof, tmp_path))
    _in_order(page, ["<h1>", "Notebook timings"] + NUMBERED)
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert f"data:image/png;base64,{base64.b64encode(PNG).decode()}" in page
    assert "guided learning summary" in page
    assert "gemini · gemini-x" in page and "caml" in page.split("models trained")[1][:60]
    few = page.split("6. Few-shot")[1]
    assert "08_few_shot has not run yet" in few


def test_markdown_twin_has_the_same_sections_and_links_the_figure(prof, tmp_path):
    _artifacts(tmp_path)
    runs = tmp_path / "runs" / "p"
    html_path, md_path = report.write_report(_collect(prof, tmp_path), runs)
    md = md_path.read_text()
    _in_order(md, ["# Run report", "## Notebook timings"] + [f"## {n}" for n in NUMBERED])
    assert "![plausibility / coding trade-off of guided learning](../../fig/p/07_tradeoff.png)" in md
    assert (runs / "../../fig/p/07_tradeoff.png").resolve().read_bytes() == PNG
    assert EVIL not in md and "&lt;script&gt;" in md
    assert "| caml | attention | 0.3000 | 0.1000 |" in md
    assert html_path.read_text().count("<h2") == md.count("\n## ")


def test_notebooks_not_run_are_reported_not_crashed(prof, tmp_path):
    _artifacts(tmp_path, upto=1)
    rep = _collect(prof, tmp_path)
    assert [s.title for s in rep.sections] == TITLES
    assert rep.sections[0].ran and rep.sections[0].tables
    for s in rep.sections[1:]:
        assert not s.ran and "has not run yet" in s.notes[0] and not s.tables and not s.figures
    assert dict(rep.header)["models trained"].startswith("none yet")
    assert [t.status for t in rep.timings] == ["not run in this invocation"] + ["never run"] * 8
    assert rep.timings[0].seconds == 12.0
    md, page = report.to_markdown(rep), report.to_html(rep)
    assert md.count("has not run yet") == 6 and page.count("has not run yet") == 6


def test_missing_or_broken_table_is_a_note(prof, tmp_path):
    root = _artifacts(tmp_path)
    (root / "02_train" / "coding_table.csv").unlink()
    (root / "06_plausibility" / "plausibility_table.csv").write_text("source,model,f1\nx\n\"")
    rep = _collect(prof, tmp_path)
    coding, plaus = rep.sections[1], rep.sections[2]
    assert coding.ran and "coding_table.csv is missing" in coding.notes[0]
    assert plaus.ran and plaus.notes[0].startswith("could not build this section")
    assert "Faithfulness" in report.to_html(rep)


def test_timings_this_invocation_and_recorded():
    state = {"01_data": {"seconds": 10.0, "finished": "t1"}, "02_train": {"seconds": 20.0, "finished": "t2"},
             "04_alignment": {"seconds": 40.0, "finished": "t4"}}
    results = [{"notebook": "01_data", "status": "skipped", "seconds": 10.0},
               {"notebook": "02_train", "status": "ok", "seconds": 21.0},
               {"notebook": "03_rationales", "status": "failed", "seconds": 3.0}]
    rows = {r["notebook"]: r for r in report.runner_timings(results, state)}
    assert rows["01_data"] == {"notebook": "01_data", "status": "skipped", "seconds": 10.0, "finished": "t1"}
    assert rows["02_train"]["seconds"] == 21.0 and rows["03_rationales"]["finished"] is None
    assert rows["04_alignment"] == {"notebook": "04_alignment", "status": None, "seconds": 40.0, "finished": "t4"}
    t = {x.notebook: x for x in report._timings(rows.values(), {"05_faithfulness": {"seconds": 5.0}})}
    assert [t[n].status for n in ("01_data", "02_train", "03_rationales", "04_alignment", "05_faithfulness", "06_plausibility")] == [
        "skipped (unchanged)", "ran", "FAILED", "not run in this invocation", "not run in this invocation", "never run"]
    assert t["05_faithfulness"].seconds == 5.0 and t["06_plausibility"].seconds is None


def test_failed_notebook_without_artifacts(prof, tmp_path):
    _artifacts(tmp_path, upto=1)
    rep = _collect(prof, tmp_path, [{"notebook": "02_train", "status": "failed", "seconds": 2.0}])
    assert "failed in this run" in rep.sections[1].notes[0]


def test_report_subcommand(prof, tmp_path, capsys):
    _artifacts(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "state.json").write_text(json.dumps({"01_data": {"seconds": 99.0, "finished": "yesterday"}}))
    assert main(["report", "--profile", str(tmp_path / "p.yaml"), "--runs-dir", str(runs)]) == 0
    assert str(runs / "report.html") in capsys.readouterr().out
    md = (runs / "report.md").read_text()
    assert "| 01_data | not run in this invocation | 99.0 | yesterday | abc1234 |" in md


def test_runner_writes_report_and_survives_its_failure(prof, tmp_path, capsys, monkeypatch):
    for var in ("PAPERMILL_EXECUTION", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")  # run_series sets them; restored after the test
    _artifacts(tmp_path)
    runs, empty = tmp_path / "runs", tmp_path / "nbs"
    empty.mkdir()
    res = pipeline.run_series(str(tmp_path / "p.yaml"), runs_dir=runs, notebooks_dir=empty)
    assert res == [{"notebook": "01_data", "status": "missing"}]
    assert "notebook file missing" in (runs / "report.html").read_text()
    assert f"report:             {runs / 'report.html'}" in capsys.readouterr().out

    def boom(*a, **k):
        raise RuntimeError("no report today")

    monkeypatch.setattr(report, "build_report", boom)
    res = pipeline.run_series(str(tmp_path / "p.yaml"), runs_dir=runs, notebooks_dir=empty)
    out = capsys.readouterr()
    assert res[0]["status"] == "missing" and "notebook not found" in out.out
    assert "NOT WRITTEN" in out.out and "no report today" in out.out and "01_data" in out.out.split("NOT WRITTEN")[1]


def test_report_opens_with_verdicts_and_interval_tables(prof, tmp_path):
    root = _artifacts(tmp_path)
    cols = ["finding", "comparison", "model", "dataset", "measure", "units", "a", "b", "effect", "lo", "hi",
            "n_notes", "n_pairs", "expect", "verdict"]
    pd.DataFrame([["a", "llm_few > entity (exact_code)", "-", "toy", "pi", "u", 0.5, 0.25, 0.25, 0.125, 0.375, 12, 30,
                   "greater", "holds"]], columns=cols).to_csv(root / "06_plausibility" / "verdicts.csv", index=False)
    pd.DataFrame({"source": ["entity", "attention (top-10)"], "model": ["-", "caml"], "token_position_independent": [0.5, 0.25],
                  "pi_lo": [0.375, 0.125], "pi_hi": [0.625, 0.375], "n_notes": [12, 12], "n_pairs": [30, 28],
                  "coverage": [1.0, 0.9]}).to_csv(root / "06_plausibility" / "plausibility_table.csv", index=False)
    (root / "06_plausibility" / "bootstrap_timing.json").write_text('{"bootstrap_seconds": 0.03}')
    rep = _collect(prof, tmp_path, [{"notebook": "06_plausibility", "status": "ok", "seconds": 3.0}])
    md = report.to_markdown(rep)
    _in_order(md, ["# Run report", "## Verdicts on the paper's four findings", "## Headline tables", "## The run",
                   "## Notebook timings", "## 1. Dataset"])
    # finding (a) with its effect and interval; the other three say they have no verdicts yet
    assert "| (a) plausibility: LLM &gt; entity &gt; attention (PI token F1) | llm_few &gt; entity (exact_code) |" in md
    # brackets are escaped in Markdown cells (no link can form from data); they render as brackets
    assert r"0.250 \[0.125, 0.375\] | 12 | 30 | holds |" in md
    assert md.count("no verdicts yet") == 3
    assert r"| attention (top-10) | caml | 0.250 \[0.125, 0.375\] |" in md
    assert "| 06_plausibility | ran | 3.0 | – | abc1234 | 0.03 s (1.0%) |" in md
    page = report.to_html(rep)
    assert page.index("Verdicts on the paper") < page.index("The run") < page.index("1. Dataset")
    assert page.count("<h2") == md.count("\n## ")


def test_markdown_neutralises_links_and_images_from_the_data():
    frame = pd.DataFrame({"source": ["[click](javascript:alert(1))", "![x](https://evil.example/p.png)"],
                          "note": ["`code`", "a \\[b]"]})
    rep = report.Report("p", (("data", "[home](javascript:x)"),), (),
                        (report.Section("01_data", "t", True, ("see ![i](http://remote/i.png)",),
                                        (report.Table("[cap](javascript:y)", frame, "f.csv"),)),))
    md = report.to_markdown(rep)
    import re

    assert not re.search(r"(?<!\\)\]\(", md)  # no unescaped "](": no link or image can form
    assert not re.search(r"(?<!\\)\[", md) and not re.search(r"(?<!\\)`", md)
    assert r"\[click\](javascript:alert(1))" in md and r"!\[x\](https://evil.example/p.png)" in md
    assert r"\`code\`" in md and r"a \\\[b\]" in md


# --------------------------------------------------------------------------------------------
# the report as a picture first: grid, forest plot, caveats (hand-made verdict tables)
# --------------------------------------------------------------------------------------------
VCOLS = ["finding", "comparison", "model", "dataset", "measure", "units", "a", "b", "effect", "lo", "hi",
         "n_notes", "n_pairs", "expect", "verdict"]


def _verdict_files(root, stability=False):
    """(a) two models, (c) one model with coding that improves, (d) a 4-note teacher row; with
    ``stability`` the columns the verdicts branch adds (control, seed agreement, ...)."""
    a = pd.DataFrame([
        ["a", "llm_zero > entity (exact_code)", "-", "toy", "pi", "report notes", 0.30, 0.10, 0.20, 0.02, 0.51, 4, 9, "greater", "holds"],
        ["a", "entity (exact_code) > attention (top-10)", "caml", "toy", "pi", "report notes", 0.40, 0.30, 0.10, 0.05, 0.15, 112, 300, "greater", "holds"],
        ["a", "LLM > entity > attention (all of the above)", "caml", "toy", "pi", "as above", None, None, None, None, None, None, None, None, "holds"],
        ["a", "entity (exact_code) > attention (top-10)", "laat", "toy", "pi", "report notes", 0.40, 0.45, -0.05, -0.08, -0.01, 112, 300, "greater", "does not hold"],
        ["a", "LLM > entity > attention (all of the above)", "laat", "toy", "pi", "as above", None, None, None, None, None, None, None, None, "does not hold"],
    ], columns=VCOLS)
    c = pd.DataFrame([
        ["c", "guided learning raises plausibility: caml + human (lambda=0.1) vs unguided", "caml", "toy", "pi", "report notes", 0.5, 0.375, 0.125, 0.1, 0.15, 112, 300, "greater", "holds"],
        ["c", "at a coding cost (micro-F1): caml + human (lambda=0.1) vs unguided", "caml", "toy", "micro_f1", "test notes", 0.45, 0.4, 0.05, 0.02, 0.09, 150, 150, "less", "does not hold"],
        ["c", "plausibility up at a coding cost: caml + human (lambda=0.1) vs unguided", "caml", "toy", "both", "as above", None, None, None, None, None, None, None, None, "does not hold"],
    ], columns=VCOLS)
    d = pd.DataFrame([
        ["d", "few-shot examples help the teacher (llm_few - llm_zero)", "-", "toy", "pi", "pairs", 0.2, 0.1, 0.1, -0.02, 0.3, 4, 9, "greater", "inconclusive"],
        ["d", "few-shot examples help the teacher and the students", "-", "toy", "pi", "as above", None, None, None, None, None, None, None, None, "inconclusive"],
    ], columns=VCOLS)
    if stability:
        for f in (a, c, d):
            f["control"] = "raw"
            f["seed_agreement"] = [1.0 if pd.notna(x) else None for x in f.effect]
            f["mc_error"] = [0.0015 if pd.notna(x) else None for x in f.effect]
            f["seed_sd"] = [0.012 if pd.notna(x) else None for x in f.effect]
            f["interval_method"] = "percentile"
        d.loc[0, "verdict"] = "too few notes"
        d.loc[1, "units"] = "combined: 0 of 1 rows above; skipped (too few notes): few-shot examples help the teacher (n_notes=4)"
        a.loc[3, "verdict"] = "borderline"
    a.to_csv(root / "06_plausibility" / "verdicts.csv", index=False)
    c.to_csv(root / "07_guided_learning" / "verdicts.csv", index=False)
    d.to_csv(_done(root, "08_few_shot") / "verdicts.csv", index=False)


@pytest.mark.parametrize("stability", [False, True])
def test_verdict_grid_forest_and_grouped_rows(prof, tmp_path, stability):
    root = _artifacts(tmp_path)
    _verdict_files(root, stability)
    pd.DataFrame({"source": ["entity (exact_code)", "llm_zero", "llm_few"], "model": ["-"] * 3,
                  "n_notes": [112, 4, 4], "n_pairs": [300, 9, 9], "n_pairs_eligible": [300, 300, 300],
                  "coverage": [1.0, 0.03, 0.03]}).to_csv(root / "06_plausibility" / "plausibility_table.csv", index=False)
    rep = _collect(prof, tmp_path)
    verdicts = rep.opening[0]
    assert verdicts.notebook == "verdicts"
    grid = {(c.finding[:3], c.model): c for c in verdicts.grid}
    # one cell per combined verdict: (a) per model, (c) per model and teacher, (d) across models
    assert sorted(grid) == [("(a)", "caml"), ("(a)", "laat"), ("(c)", "caml"), ("(d)", "-")]
    assert grid[("(a)", "laat")].verdict == "does not hold"
    assert grid[("(c)", "caml")].detail == "teacher human, λ=0.1" and grid[("(c)", "caml")].note == "coding improves"
    # the forest plot: every non-combined row, drawn
    rows = report.forest_rows(report.read_verdicts(root)[0])
    assert len(rows) == 6 and list(rows.group.unique()) == [f"({f}) {report.FINDINGS[f]}" for f in "acd"]
    assert rows.note.iloc[0].startswith("n=4 · ") and "(expects < 0)" in rows.label.iloc[4]
    fig = verdicts.figures[0]
    assert fig.generated and fig.data.startswith(b"\x89PNG")
    page = report.to_html(rep)
    # the picture first, the caveats right under it, then the rows and the headline tables
    _in_order(page, ["<table class=\"grid\"", "data:image/png;base64", "Caveats that apply", "ul class=\"caveats\"",
                     "Verdict rows", "Headline tables", "The run"])
    caveats = page.split("ul class=\"caveats\"")[1].split("</ul>")[0]
    assert "Synthetic data" in caveats and "gemini · gemini-x" in caveats
    assert "llm_zero on 4 of 112 report notes (9 of 300 gold pairs)" in caveats
    assert "One training seed" in caveats and "on 4 notes" in caveats
    assert "coding improves instead of costing (micro-F1 0.050 [0.020, 0.090])" in caveats
    # the finding text once per group, never <NA>, the table scrolls inside the page
    assert page.count("<tr class=\"group\">") == 3 and "NA&gt;" not in page and "<NA>" not in page
    assert "class=\"scroll\"" in page and "overflow-x:auto" in page
    md = report.to_markdown(rep)
    assert "<NA>" not in md and "&lt;NA&gt;" not in md
    body = md.split("## Verdict rows")[1].split("## Headline")[0]
    assert body.count("(a) plausibility: LLM &gt; entity &gt; attention") == 1
    assert "| combined: plausibility up at a coding cost: caml + human (lambda=0.1) vs unguided | caml |" in body
    assert "no coding cost: coding improves (see the micro-F1 row)" in body
    grid_md = md.split("## Verdicts on the paper")[1].split("## Caveats")[0]
    assert "| finding | caml | laat | model-free / across models |" in grid_md
    assert "HOLDS" in grid_md and "DOES NOT HOLD (teacher human, λ=0.1) — coding improves" in grid_md
    assert "![every verdict row" in grid_md and "(verdicts_forest.png)" in grid_md
    if stability:
        assert "| seeds agree | MC error | training-seed sd | interval |" in body
        assert "| 100% | 0.0015 | 0.012 | percentile |" in body and "| raw |" in body
        assert "TOO FEW NOTES" not in grid_md  # (d)'s combined row keeps its own verdict
        assert "INCONCLUSIVE — skips 1 of 1: too few notes" in grid_md
        assert "| combined: few-shot examples help the teacher and the students | - |" in body
        assert "skipped (too few notes): few-shot examples help the teacher (n_notes=4) |" in body
        assert "1 row(s) have too few notes" in caveats
        assert rows.verdict.iloc[2] == "borderline" and "agree 100% · seed sd 0.012" in rows.note.iloc[2]
    else:
        assert "seeds agree" not in body and "| control |" not in body


def test_written_report_links_its_forest_plot(prof, tmp_path):
    root = _artifacts(tmp_path)
    _verdict_files(root)
    runs = tmp_path / "runs" / "p"
    _, md_path = report.write_report(_collect(prof, tmp_path), runs)
    assert (runs / "verdicts_forest.png").read_bytes().startswith(b"\x89PNG")
    assert "](verdicts_forest.png)" in md_path.read_text()


def test_forest_plot_draws_rows_without_estimates():
    from rationale_kit.viz.figures import plot_forest, verdict_colour

    rows = pd.DataFrame({"group": ["(b) x", "(b) x"], "label": ["a", "b"], "effect": [0.1, float("nan")],
                         "lo": [0.05, float("nan")], "hi": [0.2, float("nan")], "verdict": ["holds", "too few notes"],
                         "note": ["n=10", "n=2"]})
    fig = plot_forest(rows)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert any(t.get_text().strip() == "no estimate" for t in ax.texts)
    lines = [ln for ln in ax.get_lines() if ln.get_color() == verdict_colour("holds")]
    assert len(lines) == 2  # the interval and the point of the one row with an estimate
    assert verdict_colour("holds") != verdict_colour("does not hold") != verdict_colour("borderline")


def test_data_line_counts_what_is_used_after_the_top_codes_restriction(prof, tmp_path):
    root = _artifacts(tmp_path)
    (root / "01_data" / "report.json").write_text(json.dumps({
        "name": "codiesp", "dataset": "codiesp",
        "kept": {"documents": 1000, "spans": 21868, "distinct codes": 2330},
        "splits": {"train": {"documents": 500, "spans": 3000}, "test": {"documents": 250, "spans": 2328}},
        "top codes": {"rule": "the 50 codes on the most training documents", "spans removed": 16540,
                      "test gold code occurrences removed": "1500 of 2000 (75.0%)"}}))
    pd.DataFrame({"code": [f"c{i}" for i in range(50)], "description": "", "n_train": 1}).to_parquet(root / "01_data" / "codes.parquet")
    data = dict(_collect(prof, tmp_path).header)["data"]
    assert "750 documents (train 500 · test 250), 50 codes, 5328 spans" in data and "21868" not in data
    assert "16540 spans removed" in data
    caveats = report.to_markdown(_collect(prof, tmp_path)).split("## Caveats")[1].split("\n## ")[0]
    assert "Restricted label space: the 50 codes on the most training documents; 1500 of 2000 (75.0%) of the test" in caveats
    assert "Synthetic data" not in caveats  # CodiEsp notes are real


# --------------------------------------------------------------------------------------------
# numbers that travel: the README's numbers regenerated from the artifacts
# --------------------------------------------------------------------------------------------
def _seeded_run(root):
    _verdict_files(root, stability=True)
    d = root / "02_train"
    pd.DataFrame({"micro_f1": [0.25, 0.5], "micro_f1_lo": [0.125, 0.375], "micro_f1_hi": [0.375, 0.625], "map": [0.1, 0.4],
                  "macro_f1_mean": [0.05, 0.3], "notes": [250.0, 250.0], "labels": [50.0, 50.0]},
                 index=["frequency baseline", "caml"]).to_csv(d / "coding_table.csv")
    pd.DataFrame({"seeds": [3], "micro_f1 mean": [0.48], "micro_f1 std": [0.02], "map mean": [0.39], "map std": [0.01]},
                 index=["caml"]).to_csv(d / "coding_seeds.csv")
    m = json.loads((d / "manifest.json").read_text())
    m["parameters"] = {"common": {"seed": 13, "seeds": [13, 14, 15]},
                       "evaluation": {"bootstrap_resamples": 2000, "seed": 5, "level": 0.95}}
    (d / "manifest.json").write_text(json.dumps(m))
    pd.DataFrame({"model": ["caml"], "teacher": ["human"], "lambda (chosen on tuning notes)": [0.1], "PI token F1 gain": [0.125],
                  "gain lo": [0.1], "gain hi": [0.15], "micro-F1 change": [0.05], "change lo": [0.02], "change hi": [0.09],
                  "n_notes": [112], "seeds": [3], "gain seed mean": [0.12], "gain seed std": [0.01],
                  "change seed mean": [0.04], "change seed std": [0.02]}).to_csv(root / "07_guided_learning" / "tradeoff_verdict.csv", index=False)


def test_numbers_block_states_seeds_intervals_and_spread(prof, tmp_path):
    from rationale_kit.workbook import numbers

    root = _artifacts(tmp_path)
    _seeded_run(root)
    block = numbers.numbers_block(prof, root)
    assert block.startswith("<!-- numbers:begin profile=p -->") and block.rstrip().endswith("<!-- numbers:end profile=p -->")
    assert "artifacts of git commit `abc1234`; training seeds 13, 14, 15 (`common.seeds`)" in block
    assert "95% bootstrap over notes, 2000 resamples, bootstrap seed 5" in block
    assert "| caml | 0.500 [0.375, 0.625] | 0.300 | 0.400 | 0.480 ± 0.020 (3 seeds) | 0.390 ± 0.010 (3 seeds) |" in block
    assert "(02_train, 250 test notes, 50 labels;" in block
    assert "| (a) | entity (exact_code) &gt; attention (top-10) | caml |" not in block  # plain Markdown text, not HTML
    assert "| (a) | entity (exact_code) > attention (top-10) | caml | 0.100 [0.050, 0.150] | 112 | holds | training-seed sd 0.012, 100% of bootstrap seeds agree |" in block
    assert "| (d) | few-shot examples help the teacher (llm_few - llm_zero) | - | 0.100 [-0.020, 0.300] | 4 | too few notes |" in block
    assert "does not hold — coding improves instead of costing (micro-F1 0.050 [0.020, 0.090])" in block
    assert EVIL not in block and "Data: &lt;script>alert(1)&lt;/script>: 3 documents" in block
    assert "| caml | human | 0.1 | 0.125 [0.100, 0.150] | 0.050 [0.020, 0.090] | 0.120 ± 0.010 (3 seeds) | 0.040 ± 0.020 (3 seeds) | 112 |" in block
    assert "**Time**" in block and "02 2 s" in block
    assert "paired over notes; verdict intervals: percentile)" in block


def test_numbers_command_prints_and_splices_into_a_file(prof, tmp_path, capsys):
    root = _artifacts(tmp_path)
    _seeded_run(root)
    yaml = str(tmp_path / "p.yaml")
    assert main(["numbers", "--profile", yaml]) == 0
    printed = capsys.readouterr().out
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- numbers:begin profile=p -->\nold 0.999\n<!-- numbers:end profile=p -->\nafter\n")
    assert main(["numbers", "--profile", yaml, "--into", str(readme)]) == 0
    text = readme.read_text()
    assert text == "intro\n" + printed + "after\n" and "0.999" not in text
    assert main(["numbers", "--profile", yaml, "--into", str(readme)]) == 0 and readme.read_text() == text  # idempotent
    readme.write_text("no markers\n")
    assert main(["numbers", "--profile", yaml, "--into", str(readme)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(readme) in err and "numbers:begin profile=p" in err


def test_numbers_without_a_run_is_one_line_exit_2(prof, tmp_path, capsys):
    assert main(["numbers", "--profile", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no finished notebook" in err and "run --profile p" in err


def test_seed_agreement_as_share_or_fraction_text():
    assert report._share(0.95) == 0.95 and report._share("19/20") == 0.95 and report._share("0.5") == 0.5
    assert report._share(None) != report._share(None)  # NaN when missing
    v = pd.DataFrame([["b", "x", "caml", "toy", "m", "u", 0.2, 0.1, 0.1, 0.05, 0.15, 10, 20, "greater", "holds", "19/20"]],
                     columns=VCOLS + ["seed_agreement"])
    v["combined"], v["reading"] = False, ""
    assert report.verdict_table(v)["seeds agree"].tolist() == ["95%"]
    assert report.forest_rows(v).note.tolist() == ["n=10 · holds · agree 95%"]


def test_guided_headline_says_when_coding_improves(prof, tmp_path):
    root = _artifacts(tmp_path)
    _seeded_run(root)
    md = report.to_markdown(_collect(prof, tmp_path))
    assert r"| caml | human | 0.100 | 0.125 \[0.100, 0.150\] | 0.050 \[0.020, 0.090\] | improves (no cost) | 112 | 3 |" in md
    assert report._coding_reading(-0.09, -0.02) == "costs" and report._coding_reading(-0.01, 0.02) == "no clear change"


def test_grid_columns_per_dataset_and_model():
    cells = (report.GridCell("(a) x", "embedded", "caml", "holds"), report.GridCell("(a) x", "codiesp", "caml", "inconclusive"),
             report.GridCell("(b) y", "codiesp", "laat", "borderline"), report.GridCell("(d) z", "codiesp", "-", "too few notes"))
    md = "\n".join(report._md_grid(cells))
    assert md.splitlines()[0] == "| finding | embedded: caml | codiesp: caml | codiesp: laat | codiesp: model-free / across models |"
    assert "| (b) y | – | – | BORDERLINE | – |" in md and "| (d) z | – | – | – | TOO FEW NOTES |" in md
    page = report._html_grid(cells)
    assert '<th colspan="1">embedded</th><th colspan="3">codiesp</th>' in page
    from rationale_kit.viz.figures import VERDICT_COLOURS

    assert all(f"background:{VERDICT_COLOURS[v]}" in page for v in ("holds", "inconclusive", "borderline", "too few notes"))


def test_data_line_counts_mdace_documents_in_the_total(tmp_path):
    """The mimic route's document count is the total of its split counts (MDACE's evaluation
    documents included), with the two kinds named."""
    from mimic_formats import write_all
    from rationale_kit import data

    keys = write_all(tmp_path / "files")
    prof = load_profile("mimic", {"common": {"device": "cpu", "threads": 2}, "data": keys})
    ds = data.load_dataset(prof)
    line = report._data_line(prof, {"name": ds.name, **ds.report})
    assert line.startswith("mimic: 16 documents (train 6 · val 2 · test 8), ")
    assert "10 MIMIC-IV documents (coding)" in line and "6 MDACE documents (rationale evaluation)" in line
    assert sum(v["documents"] for v in ds.report["splits"].values()) == ds.report["kept"]["documents"]


@pytest.mark.notebooks
def test_report_of_the_smoke_series(smoke_series):
    """The report run_series wrote after the shared smoke series (tests/conftest.py): the real
    artifacts of every notebook, in the paper's order, with the figures embedded."""
    smoke_series.require(*pipeline.NOTEBOOKS)
    # the run report collects the tables in the paper's order
    html = (smoke_series.runs / "report.html").read_text(encoding="utf-8")
    assert (smoke_series.runs / "report.md").exists()
    assert "coding" in html.lower() and "plausibility" in html.lower() and "data:image/png;base64" in html
    _in_order(html, NUMBERED)


def test_findings_a_and_b_across_training_seeds_in_numbers_and_report(prof, tmp_path):
    """A run with three training seeds: the (a) row names its seeds and spread, and the per-seed
    tables of 05 and 06 appear in the numbers block and the report (absent with one seed)."""
    from rationale_kit.workbook import numbers

    root = _artifacts(tmp_path)
    _seeded_run(root)
    assert "Rationales across training seeds" not in numbers.numbers_block(prof, root)
    v = pd.read_csv(root / "06_plausibility" / "verdicts.csv")
    v.loc[1, "units"] = "report notes, pairs both were run on (3 training seeds)"
    v.to_csv(root / "06_plausibility" / "verdicts.csv", index=False)
    pd.DataFrame({"model": ["caml"], "source": ["attention (top-10)"], "measure": ["token_position_independent"],
                  "seeds": [3], "mean": [0.25], "std": [0.05], "n_pairs": [300]}).to_csv(root / "06_plausibility" / "plausibility_seeds.csv", index=False)
    pd.DataFrame({"model": ["caml"] * 2, "source": ["attention (top-10)"] * 2, "measure": ["comprehensiveness"] * 2,
                  "value": ["rationale", "difference"], "seeds": [3, 3], "mean": [0.4, 0.1], "std": [0.02, 0.01],
                  "n_pairs": [60, 60]}).to_csv(root / "05_faithfulness" / "faithfulness_seeds.csv", index=False)
    block = numbers.numbers_block(prof, root)
    assert ("| (a) | entity (exact_code) > attention (top-10) | caml | 0.100 [0.050, 0.150] | 112 | holds | 3 training seeds, "
            "training-seed sd 0.012, 100% of bootstrap seeds agree |") in block
    assert "| caml | attention (top-10) | PI token F1 (06) | 0.250 ± 0.050 (3 seeds) | 300 |" in block
    assert "| caml | attention (top-10) | comprehensiveness (05) | 0.400 ± 0.020 (3 seeds) | 60 |" in block
    rows = report.forest_rows(report.read_verdicts(root)[0])
    assert rows.note.iloc[1] == "n=112 · holds · 3 seeds · agree 100% · seed sd 0.012"
    rep = _collect(prof, tmp_path)
    tables = {t.caption: t for s in rep.sections for t in s.tables}
    pl = tables["PI token F1 of the top-k model rationales across training seeds (mean ± sd)"].frame
    assert pl.loc[("caml", "attention (top-10)"), "token_position_independent"] == "0.250 ± 0.050"
    fa = next(t.frame for c, t in tables.items() if c.startswith("finding (b)'s sources across training seeds"))
    assert fa.loc[("caml", "attention (top-10)"), "comprehensiveness · difference"] == "0.100 ± 0.010"
    assert fa.loc[("caml", "attention (top-10)"), "seeds"] == 3
