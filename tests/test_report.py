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
TITLES = ["Dataset", "Coding", "Plausibility", "Faithfulness", "Guided learning", "Few-shot"]
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
    assert [t.status for t in rep.timings] == ["not run in this invocation"] + ["never run"] * 7
    assert rep.timings[0].seconds == 12.0
    md, page = report.to_markdown(rep), report.to_html(rep)
    assert md.count("has not run yet") == 5 and page.count("has not run yet") == 5


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
