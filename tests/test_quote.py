"""``python -m rationale_kit quote`` on CodiEsp notes against a fake OpenAI-compatible server
(``tests/fake_openai.py``); skipped when ../shared/data/codiesp_v4 is absent."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_gemini import _CODES_RE  # noqa: E402
from fake_openai import FakeOpenAI, OAReply, chat_text  # noqa: E402

from rationale_kit.__main__ import main  # noqa: E402

CODIESP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "codiesp_v4" / "train"
pytestmark = pytest.mark.skipif(not (CODIESP / "trainX.tsv").exists(), reason="CodiEsp not available")


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """The per-user answer cache of ``quote`` (its default), here in the test's folder."""
    monkeypatch.setenv("RK_LLM_CACHE_DIR", str(tmp_path / "user_cache"))
    return tmp_path / "user_cache"


def codiesp_notes(n: int):
    """The first ``n`` training notes with diagnosis evidence: texts and (code, start, end, text)."""
    ev: dict[str, list] = {}
    for line in (CODIESP / "trainX.tsv").read_text(encoding="utf-8").splitlines():
        nid, kind, code, text, offs = line.split("\t")
        if kind == "DIAGNOSTICO" and ";" not in offs:
            s, e = map(int, offs.split())
            ev.setdefault(nid, []).append((code, s, e, text))
    ids = sorted(ev)[:n]
    texts = {i: (CODIESP / "text_files" / f"{i}.txt").read_text(encoding="utf-8") for i in ids}
    return texts, {i: ev[i] for i in ids}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    texts, ev = codiesp_notes(4)
    ids = sorted(texts)
    asked = ids[:3]
    write_jsonl(tmp_path / "notes.jsonl", [{"note_id": i, "text": texts[i]} for i in ids])
    pairs = [{"note_id": i, "code": c} for i in asked for c in dict.fromkeys(c for c, *_ in ev[i][:2])]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    evidence = {(i, c): t for i in ids for c, s, e, t in ev[i]}
    return tmp_path, texts, ev, pairs, evidence, ids


def responder_for(evidence):
    """A server that quotes the CodiEsp evidence of each code asked, plus one invented quote."""
    def respond(body):
        text = chat_text(body)
        note = text.rsplit("<note>\n", 1)[1].split("\n</note>", 1)[0]
        codes = re.findall(r"^- (\S+?):", _CODES_RE.findall(text)[-1], re.M)
        out = {}
        for c in codes:
            quotes = [t for (nid, cc), t in evidence.items() if cc == c and t in note]
            out[c] = quotes[:1] + ["texto inventado que no aparece"]
        return OAReply.rationales(out)
    return respond


def test_quote_command_on_codiesp_notes(corpus, capsys):
    tmp, texts, ev, pairs, evidence, ids = corpus
    out = tmp / "spans.jsonl"
    args = ["quote", "--docs", str(tmp / "notes.jsonl"), "--pairs", str(tmp / "pairs.jsonl"), "--out", str(out),
            "--backend", "openai", "--model", "served-model"]
    with FakeOpenAI(responder=responder_for(evidence)) as srv:
        assert main(args + ["--base-url", srv.base_url]) == 2  # notes of unknown status: a remote server is refused
        assert "credentialed" in capsys.readouterr().err and srv.hits == 0 and not out.exists()
        assert main(args + ["--base-url", srv.base_url, "--public-data"]) == 0
        assert srv.hits == 3 and srv.requests[0]["body"]["model"] == "served-model"
        rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
        assert all(set(r) == {"note_id", "code", "start", "end", "quote", "score", "status"} for r in rows)
        assert {(r["note_id"], r["code"]) for r in rows} == {(p["note_id"], p["code"]) for p in pairs}
        aligned = [r for r in rows if r["status"] == "aligned"]
        assert len(aligned) == len(pairs)  # every evidence quote aligns, exactly where CodiEsp puts it
        for r in aligned:
            assert texts[r["note_id"]][r["start"]:r["end"]] == r["quote"] and r["score"] == 2.0
            assert any((r["code"], r["start"], r["end"]) == (c, s, e) for c, s, e, _ in ev[r["note_id"]])
        unaligned = [r for r in rows if r["status"] == "unaligned"]
        assert len(unaligned) == len(pairs) and all(r["start"] is None and r["end"] is None for r in unaligned)
        assert "new calls" in capsys.readouterr().err
        first = out.read_text(encoding="utf-8")
        assert main(args + ["--base-url", srv.base_url, "--public-data"]) == 0  # a rerun: cached, same spans
        assert srv.hits == 3 and out.read_text(encoding="utf-8") == first
        assert (tmp / "user_cache" / "llm_cache.jsonl").exists()  # the user's cache, not one per --out
        assert main(args + ["--base-url", srv.base_url, "--public-data", "--out", str(tmp / "other.jsonl")]) == 0
        assert srv.hits == 3 and (tmp / "other.jsonl").read_text(encoding="utf-8") == first


def test_quote_command_few_shot_examples(corpus):
    tmp, texts, ev, pairs, evidence, ids = corpus
    pool_note = ids[3]
    code, s, e, t = ev[pool_note][0]
    write_jsonl(tmp / "ex.jsonl", [{"note_id": pool_note, "code": code, "start": s, "end": e}])
    write_jsonl(tmp / "pairs1.jsonl", [{"note_id": ids[0], "code": code}])
    with FakeOpenAI() as srv:
        rc = main(["quote", "--docs", str(tmp / "notes.jsonl"), "--pairs", str(tmp / "pairs1.jsonl"),
                   "--out", str(tmp / "o.jsonl"), "--backend", "openai", "--model", "m", "--base-url", srv.base_url,
                   "--public-data", "--shots", "2", "--examples", str(tmp / "ex.jsonl")])
        assert rc == 0 and srv.hits == 1
        sent = chat_text(srv.requests[0]["body"])
        assert json.dumps([t], ensure_ascii=False) in sent  # the annotated span is the example's quote


@pytest.mark.parametrize("case, expect", [
    ("docs_not_utf8", "notes.jsonl:2: not UTF-8"),
    ("docs_bad_json", "notes.jsonl:1: malformed JSON"),
    ("docs_surrogate", "notes.jsonl:1: 'text' holds a lone surrogate"),
    ("pairs_unknown_note", "pairs.jsonl:2: unknown note_id 'nope'"),
    ("pairs_missing_code", "pairs.jsonl:1: missing key 'code'"),
    ("out_missing_folder", "does not exist"),
    ("shots_without_examples", "--shots needs --examples"),
])
def test_quote_command_bad_input_exits_2_naming_file_and_line(tmp_path, capsys, case, expect):
    docs, pairs, out = tmp_path / "notes.jsonl", tmp_path / "pairs.jsonl", tmp_path / "spans.jsonl"
    write_jsonl(docs, [{"note_id": "a", "text": "Diabetes tipo 2."}])
    write_jsonl(pairs, [{"note_id": "a", "code": "e11.9"}])
    extra = []
    if case == "docs_not_utf8":
        docs.write_bytes(docs.read_bytes() + b'{"note_id": "b", "text": "caf\xe9"}\n')
    elif case == "docs_bad_json":
        docs.write_text('{"note_id": "a", "text": \n', encoding="utf-8")
    elif case == "docs_surrogate":
        docs.write_text('{"note_id": "a", "text": "x \\ud800 y"}\n', encoding="utf-8")
    elif case == "pairs_unknown_note":
        write_jsonl(pairs, [{"note_id": "a", "code": "e11.9"}, {"note_id": "nope", "code": "i10"}])
    elif case == "pairs_missing_code":
        write_jsonl(pairs, [{"note_id": "a"}])
    elif case == "out_missing_folder":
        out = tmp_path / "missing" / "spans.jsonl"
    elif case == "shots_without_examples":
        extra = ["--shots", "3"]
    rc = main(["quote", "--docs", str(docs), "--pairs", str(pairs), "--out", str(out), "--backend", "replay"] + extra)
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and "Traceback" not in err
