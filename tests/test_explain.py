"""``explain``: the API and the command on a small saved CAML model (untrained weights, fixed seed):
outputs, agreement with the rationale functions, resuming, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import rationale_kit as rk
from rationale_kit.cli import main as cli_main
from rationale_kit.core.config import CAMLParams
from rationale_kit.core.records import DataError
from rationale_kit.models import build_model, save
from rationale_kit.rationales import attention_rationales, gradient_rationales

torch.set_num_threads(1)

LABELS = ["E11.9", "I10", "J18.9", "N18.3"]
TEXTS = {
    "a1": "Patient with type 2 diabetes mellitus and essential hypertension. Metformin continued.",
    "b/2": "Community acquired pneumonia on chest x-ray; hypertension controlled. <script>x</script>",
    "c3": "Chronic kidney disease stage 3, diabetes, blood pressure high. Follow up in clinic.",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    params = CAMLParams(embed_dim=8, filters=6, kernel=3, dropout=0.0)
    model = build_model("caml", params, LABELS, list(TEXTS.values()), min_count=1)
    model.threshold = 0.5
    return save(model, tmp_path_factory.mktemp("m") / "caml" / "model").parent  # the 02_train/<name> folder


def write_notes(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def same_spans(a: str, b: str) -> None:
    ra, rb = [json.loads(x) for x in a.splitlines()], [json.loads(x) for x in b.splitlines()]
    assert len(ra) == len(rb) > 0
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k != "score"} == {k: v for k, v in y.items() if k != "score"}
        assert abs(x["score"] - y["score"]) < 1e-6


def test_api_tables_agree_with_rationale_functions(model_dir):
    ex = rk.explain(model_dir, TEXTS, sources=["attention", "gradient", "attention_x_gradient"], top_k=3,
                    codes={"a1": ["E11.9", "I10"], "b/2": ["J18.9"], "c3": ["N18.3"]})
    assert list(ex.docs.note_id) == list(TEXTS)
    assert set(ex.scores.source) == {"attention", "gradient", "attention_x_gradient"}
    model, _ = rk.workbook.explain.load_coder(model_dir)  # noqa: the package is imported by rk.explain
    docs = pd.DataFrame({"note_id": list(TEXTS), "text": list(TEXTS.values())})
    pairs = ex.predictions[ex.predictions.explained][["note_id", "code"]]
    assert sorted(map(tuple, pairs.to_numpy())) == sorted([("a1", "E11.9"), ("a1", "I10"), ("b/2", "J18.9"), ("c3", "N18.3")])
    att = attention_rationales(model, docs, pairs).table
    got = ex.scores[ex.scores.source == "attention"]
    key = ["note_id", "code", "unit"]
    m = got.merge(att, on=key, suffixes=("", "_ref"))
    assert len(m) == len(att) == len(got)
    assert np.allclose(m.score, m.score_ref, atol=1e-6) and (m.start == m.start_ref).all()
    grad = gradient_rationales(model, docs, pairs, method="input_x_gradient").table
    m = ex.scores[ex.scores.source == "gradient"].merge(grad, on=key, suffixes=("", "_ref"))
    assert len(m) == len(grad) and np.allclose(m.score, m.score_ref, atol=1e-6)
    # top-k spans: at most k units per (pair, source), inside the note, with the units' text
    sp = ex.spans[ex.spans.source == "attention"]
    for (nid, code), g in sp.groupby(["note_id", "code"]):
        units = got[(got.note_id == nid) & (got.code == code)].nlargest(3, "score")
        assert set(g.start) <= set(units.start) and g.score.sum() <= 1 + 1e-9
    # probabilities: one forward pass per note agrees with the batched one
    one = rk.explain(model_dir, {"c3": TEXTS["c3"]}, sources=["attention"])
    p_all = ex.predictions.set_index(["note_id", "code"]).prob
    p_one = one.predictions.set_index(["note_id", "code"]).prob
    for k, v in p_one.items():
        assert abs(p_all.get(k, v) - v) < 1e-6


def test_api_predicted_codes_and_min_codes(model_dir):
    ex = rk.explain(model_dir, ["diabetes and hypertension"], sources=["attention"], threshold=1.0)
    p = ex.predictions
    assert list(p.note_id.unique()) == ["note_1"] and not p.pred.any()
    assert p.explained.sum() == 1 and p[p.explained].iloc[0]["rank"] == 1  # the most probable code
    with pytest.raises(DataError, match="unknown code"):
        rk.explain(model_dir, ["x y"], sources=["attention"], codes=["Z99.99"])
    with pytest.raises(DataError, match="duplicate"):
        rk.explain(model_dir, pd.DataFrame({"note_id": ["a", "a"], "text": ["x", "y"]}))


def test_cli_outputs_resume_and_escaping(model_dir, tmp_path, monkeypatch, capsys):
    notes = write_notes(tmp_path / "notes.jsonl", [{"note_id": k, "text": v} for k, v in TEXTS.items()])
    out = tmp_path / "out"
    args = ["explain", "--model", str(model_dir), "--docs", str(notes), "--out", str(out),
            "--sources", "attention,gradient,entity", "--top-k", "4", "--threshold", "0.0"]
    assert cli_main(args) == 0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["note_id"] for p in preds] == list(TEXTS) and all(p["threshold"] == 0.0 for p in preds)
    assert all(set(p["codes"]) == set(LABELS) for p in preds)  # threshold 0: every code predicted
    spans = [json.loads(line) for line in (out / "spans.jsonl").read_text().splitlines()]
    assert {s["source"] for s in spans} >= {"attention", "gradient"}
    for s in spans:
        assert TEXTS[s["note_id"]][s["start"]:s["end"]] == s["text"] and "score" in s and "method" in s
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores.source) == {"attention", "gradient"} and {"start", "end", "unit", "score"} <= set(scores.columns)
    pages = sorted(p.name for p in (out / "notes").iterdir())
    assert len(pages) == 3 and all("/" not in p for p in pages)
    page = (out / "notes" / [p for p in pages if p.startswith("b_2")][0]).read_text()
    assert "<script>" not in page and "</script>" not in page and page.count("&lt;") >= 2  # escaped, never markup
    assert "index.html" in page and (out / "index.html").read_text().count("<a href='notes/") == 3
    # resume: a rerun recomputes nothing; a lost note record is recomputed alone
    from rationale_kit.workbook.explain import Explainer

    calls = []
    orig = Explainer.explain_batch
    monkeypatch.setattr(Explainer, "explain_batch", lambda self, docs, *a, **k: calls.append(list(docs.note_id)) or orig(self, docs, *a, **k))
    before = (out / "spans.jsonl").read_text()
    assert cli_main(args) == 0 and calls == []
    assert (out / "spans.jsonl").read_text() == before
    state = next(p for p in (out / ".explain").iterdir() if (p / "key.json").exists())
    from rationale_kit.cli.explain import _part_file

    _part_file(state, "c3").unlink()
    assert cli_main(args) == 0 and calls == [["c3"]]
    same_spans((out / "spans.jsonl").read_text(), before)  # c3 alone in its batch: floats within 1e-6
    # other settings: another key, everything recomputed
    assert cli_main(args[:-2] + ["--threshold", "0.9"]) == 0 and calls[-1] == list(TEXTS)
    assert "3 notes (3 computed, 0 resumed)" in capsys.readouterr().err


@pytest.mark.parametrize("lines,flag,msg", [
    (['{"note_id": "a", "text": "x y"}', '{"note_id": "b", "text": '], False, "notes.jsonl:2: malformed JSON"),
    (['{"note_id": "a"}'], False, "notes.jsonl:1: missing key 'text'"),
    (['{"text": "x"}'], False, "notes.jsonl:1: missing key 'note_id'"),
    (['{"note_id": "a", "text": "x"}', '', '{"note_id": "a", "text": "y"}'], False, "notes.jsonl:3: duplicate note_id 'a'"),
    (['{"note_id": "a", "text": "x", "codes": ["I10", "Q99.9"]}'], True, "notes.jsonl:1: unknown code 'Q99.9'"),
    (['{"note_id": "a", "text": "x"}'], True, "notes.jsonl:1: --codes-from-docs needs 'codes'"),
])
def test_cli_bad_input_exits_2(model_dir, tmp_path, capsys, lines, flag, msg):
    notes = tmp_path / "notes.jsonl"
    notes.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["explain", "--model", str(model_dir), "--docs", str(notes), "--out", str(tmp_path / "o"),
            "--sources", "attention"] + (["--codes-from-docs"] if flag else [])
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and err.count("\n") == 0


def test_cli_missing_model_and_unknown_source(tmp_path, capsys):
    notes = write_notes(tmp_path / "n.jsonl", [{"note_id": "a", "text": "x"}])
    assert cli_main(["explain", "--model", str(tmp_path), "--docs", str(notes), "--out", str(tmp_path / "o")]) == 2
    assert "no saved model" in capsys.readouterr().err
    assert cli_main(["explain", "--model", str(tmp_path), "--docs", str(notes), "--out", str(tmp_path / "o"),
                     "--sources", "attention,shap"]) == 2
    assert "unknown source" in capsys.readouterr().err


def test_cli_llm_source_uses_quote_machinery_and_guard(model_dir, tmp_path, capsys):
    """The llm source against a fake OpenAI-compatible server: refused for notes of unknown status,
    then one request per note, quotes aligned to spans, answers cached for a rerun."""
    import re
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fake_gemini import _CODES_RE
    from fake_openai import FakeOpenAI, OAReply, chat_text

    def respond(body):
        text = chat_text(body)
        note = text.rsplit("<note>\n", 1)[1].split("\n</note>", 1)[0]
        codes = re.findall(r"^- (\S+?):", _CODES_RE.findall(text)[-1], re.M)
        first = re.match(r"\S+ \S+", note).group()
        return OAReply.rationales({c: [first, "words that are not in the note"] for c in codes})

    notes = write_notes(tmp_path / "notes.jsonl", [{"note_id": k, "text": v} for k, v in TEXTS.items()])
    out = tmp_path / "out"
    with FakeOpenAI(responder=respond) as srv:
        prof = tmp_path / "p.yaml"
        prof.write_text(f"rationales:\n  llm: {{backend: openai, model: served, base_url: '{srv.base_url}'}}\n")
        args = ["explain", "--model", str(model_dir), "--docs", str(notes), "--out", str(out), "--profile", str(prof),
                "--sources", "attention,llm", "--codes-from-docs"]
        notes.write_text("".join(json.dumps({"note_id": k, "text": v, "codes": ["I10"]}) + "\n" for k, v in TEXTS.items()))
        assert cli_main(args) == 2 and "credentialed" in capsys.readouterr().err and srv.hits == 0
        assert cli_main(args + ["--public-data"]) == 0 and srv.hits == 3
        spans = [json.loads(x) for x in (out / "spans.jsonl").read_text().splitlines()]
        llm = [s for s in spans if s["source"] == "llm"]
        assert len(llm) == 3 and all(s["code"] == "I10" and s["start"] == 0 and s["method"] == "zero_shot" for s in llm)
        outcome = [json.loads(x) for x in (out / "llm.jsonl").read_text().splitlines()]
        assert sorted(o["status"] for o in outcome) == ["aligned"] * 3 + ["unaligned"] * 3
        assert cli_main(args + ["--public-data", "--fresh"]) == 0 and srv.hits == 3  # answers cached
