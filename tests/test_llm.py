"""rationale_kit.rationales.llm: prompts, few-shot selection, backends and the cached runner.

The Gemini path runs against ``tests/fake_gemini.py`` (a loopback server speaking the
generateContent REST API with injected faults); nothing touches the internet. One test loads the
real bundled SmolLM2-135M-Instruct (deselect with ``-k "not smollm"``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_gemini import FakeGemini, Reply  # noqa: E402

from rationale_kit.core import config
from rationale_kit.rationales import llm  # noqa: E402
from rationale_kit.rationales.llm.backends.guided import guided_answer  # noqa: E402

FAKE_KEY = "AIzaSyFAKE-never-leak-0123456789abcdef"
CODES = [("E11.9", "Type 2 diabetes mellitus without complications"), ("I10", "Essential (primary) hypertension")]


def note(i: int) -> str:
    return f"[note {i}] Patient with type 2 diabetes on metformin. Blood pressure high, essential hypertension. No chest pain."


def make_requests(n: int, start: int = 0) -> list[llm.LLMRequest]:
    return [llm.LLMRequest(f"n{i}", llm.build_prompt(note(i), CODES), tuple(CODES)) for i in range(start, start + n)]


@pytest.fixture
def server():
    with FakeGemini() as srv:
        yield srv


@pytest.fixture
def gemini(server):
    return llm.GeminiBackend(api_key=FAKE_KEY, base_url=server.base_url, timeout_s=1.0)


def run(reqs, backend, tmp_path=None, **kw):
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    kw.setdefault("progress", False)
    kw.setdefault("credentialed", False)  # the test notes are synthetic, public data
    return llm.run_llm(reqs, backend, cache_dir=tmp_path / "cache" if tmp_path else None, **kw)


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------
def test_prompt_zero_shot_contents_and_sha():
    p = llm.build_prompt(note(1), CODES)
    assert note(1) in p.user and "- E11.9: Type 2 diabetes mellitus without complications" in p.user
    assert "- I10: Essential (primary) hypertension" in p.user
    assert "verbatim" in p.system.lower() or "word for word" in p.system
    assert '"rationales"' in p.system and "<example>" not in p.user
    assert p.version == "v1" and len(p.sha) == 20
    assert llm.build_prompt(note(1), CODES).sha == p.sha  # deterministic
    assert llm.build_prompt(note(2), CODES).sha != p.sha
    assert note(1) not in repr(p)  # reprs stay short


def test_prompt_files_are_versioned(tmp_path):
    d = tmp_path / "prompts"
    shutil.copytree(llm.PROMPTS_DIR, d)
    base = llm.build_prompt(note(1), CODES)
    assert llm.build_prompt(note(1), CODES, prompts_dir=d).sha == base.sha
    (d / "v1_system.txt").write_text((d / "v1_system.txt").read_text() + "\nBe brief.\n")
    changed = llm.build_prompt(note(1), CODES, prompts_dir=d)
    assert changed.sha != base.sha and changed.system.endswith("Be brief.")
    schema = json.loads((d / "response_schema.json").read_text())
    schema["properties"]["rationales"]["minItems"] = 0
    (d / "v1_system.txt").write_text((llm.PROMPTS_DIR / "v1_system.txt").read_text())
    (d / "response_schema.json").write_text(json.dumps(schema))
    assert llm.build_prompt(note(1), CODES, prompts_dir=d).sha != base.sha  # the schema is part of it
    for part in ("system", "user", "example", "examples_header", "repair"):
        shutil.copy(d / f"v1_{part}.txt", d / f"v2_{part}.txt")
    assert llm.prompt_versions(d) == ["v1", "v2"]
    assert llm.build_prompt(note(1), CODES, version="v2", prompts_dir=d).sha != llm.build_prompt(note(1), CODES, prompts_dir=d).sha
    with pytest.raises(llm.LLMConfigError, match="available versions: \\['v1'\\]"):
        llm.build_prompt(note(1), CODES, version="v9")


def test_long_notes_whole_unless_max_note_chars():
    long_note = "word " * 5000
    assert long_note.strip() in llm.build_prompt(long_note, CODES).user
    p = llm.build_prompt(long_note, CODES, max_note_chars=1000)
    assert "note truncated" in p.user and len(p.user) < 2000
    assert "truncated" not in p.note and p.note in p.user and len(p.note) <= 1000  # what verbatim decoding may quote


# --------------------------------------------------------------------------------------------
# few-shot examples
# --------------------------------------------------------------------------------------------
def _corpus():
    filler = "Vitals stable overnight, tolerating diet, ambulating with assistance. " * 12
    docs, spans = [], []
    for i in range(8):
        pool = i < 5
        text = f"{filler}History of type 2 diabetes mellitus, on insulin glargine. {filler}Hypertension controlled. {filler}"
        nid = f"{'pool' if pool else 'eval'}{i}"
        docs.append({"note_id": nid, "text": text, "codes": ["E11.9", "I10"], "split": "train" if pool else "test",
                     "annotated": True, "fewshot": pool})
        s = text.index("type 2 diabetes mellitus")
        spans.append({"note_id": nid, "code": "E11.9", "start": s, "end": s + len("type 2 diabetes mellitus")})
        s2 = text.index("insulin glargine")
        spans.append({"note_id": nid, "code": "E11.9", "start": s2, "end": s2 + len("insulin glargine")})
        s3 = text.index("Hypertension controlled")
        spans.append({"note_id": nid, "code": "I10", "start": s3, "end": s3 + len("Hypertension")})
    return pd.DataFrame(docs), pd.DataFrame(spans)


def test_select_examples_uses_only_the_pool():
    docs, spans = _corpus()
    pool = docs[docs.fewshot]
    pool_spans = spans[spans.note_id.isin(pool.note_id)]
    evaluated = set(docs.loc[~docs.fewshot, "note_id"])
    ex = llm.select_examples(pool, pool_spans, CODES, k=3, seed=1, exclude=evaluated)
    assert len(ex) == 6 and [e.code for e in ex] == ["E11.9"] * 3 + ["I10"] * 3
    assert {e.note_id for e in ex} <= set(pool.note_id) and not {e.note_id for e in ex} & evaluated
    e = ex[0]
    assert e.quotes == ("type 2 diabetes mellitus", "insulin glargine")
    assert all(q in e.excerpt for q in e.quotes)
    assert len(e.excerpt) < len(pool.text.iloc[0]) / 3 and e.excerpt.startswith("...")  # a window, not the note
    assert e.description == "Type 2 diabetes mellitus without complications"
    assert ex == llm.select_examples(pool, pool_spans, list(reversed(CODES)), k=3, seed=1)[3:] + \
        llm.select_examples(pool, pool_spans, list(reversed(CODES)), k=3, seed=1)[:3]  # seeded per code
    assert len(llm.select_examples(pool, pool_spans, ["E11.9"], k=10)) == 5  # at most the pool
    assert llm.select_examples(pool, pool_spans, ["E11.9"], k=0) == []
    p = llm.build_prompt(docs.text.iloc[6], CODES, ex)
    assert p.user.count("<example>") == 6 and e.excerpt in p.user and '["type 2 diabetes mellitus", "insulin glargine"]' in p.user
    assert p.sha != llm.build_prompt(docs.text.iloc[6], CODES).sha
    reqs = llm.make_requests(docs[~docs.fewshot].head(2), dict(CODES), ex)
    assert reqs[0].prompt.user.count("<example>") == 6 and reqs[0].code_list() == ["E11.9", "I10"]


def test_examples_are_spans_with_context_not_the_note():
    text = "alpha beta gamma DIAB delta epsilon zeta eta theta iota INS kappa lambda"
    pool = pd.DataFrame([{"note_id": "p0", "text": text, "codes": ["E11.9"], "fewshot": True}])
    s1, s2 = text.index("DIAB"), text.index("INS")
    spans = pd.DataFrame([{"note_id": "p0", "code": "E11.9", "start": s1, "end": s1 + 4},
                          {"note_id": "p0", "code": "E11.9", "start": s2, "end": s2 + 3}])

    def ex(**kw):
        (e,) = llm.select_examples(pool, spans, ["E11.9"], k=1, **kw)
        return e.excerpt, e.quotes

    # 8 characters each side, cut at white space: "ta gamma" -> "gamma", " delta e" -> " delta"
    assert ex(window=8) == ("...gamma DIAB delta ... iota INS kappa...", ("DIAB", "INS"))
    assert ex(window=0) == ("...DIAB ... INS...", ("DIAB", "INS"))
    # the snippets must fit max_excerpt_chars: 15 + 5 + 14 characters do not fit in 30
    assert ex(window=8, max_excerpt_chars=30) == ("...gamma DIAB delta...", ("DIAB",))
    # overlapping contexts make one snippet; reaching both ends of the note, no "..."
    assert ex(window=40, max_excerpt_chars=1000) == (text, ("DIAB", "INS"))
    # the profile key reaches the prompts; the prompt (so its sha and cache key) changes with it
    prof = config.load_profile("smoke", {"rationales": {"llm": {"example_context_chars": 8}}})
    assert prof.rationales.llm.example_context_chars == 8
    with pytest.raises(config.ConfigError, match="example_context_chars"):
        config.load_profile("smoke", {"rationales": {"llm": {"example_context_chars": -1}}})
    p8 = llm.build_prompt(note(1), CODES[:1], llm.select_examples(pool, spans, ["E11.9"], k=1, window=8))
    p0 = llm.build_prompt(note(1), CODES[:1], llm.select_examples(pool, spans, ["E11.9"], k=1, window=0))
    assert "...gamma DIAB delta ... iota INS kappa..." in p8.user and p8.sha != p0.sha
    backend = llm.LocalBackend()
    assert llm.cache_key(backend, p8) != llm.cache_key(backend, p0)


def test_prompts_mark_their_shared_head():
    zero = [llm.build_prompt(note(i), CODES[: 1 + i % 2]) for i in range(3)]
    head = "Find the supporting quotes in the following note.\n\n<note>\n"
    assert {p.shared_user_chars for p in zero} == {len(head)} and all(p.user.startswith(head) for p in zero)
    ex = [llm.FewShotExample("E11.9", "Type 2 diabetes", f"excerpt {i}", (f"q{i}",)) for i in range(2)]
    few = [llm.build_prompt(note(i), CODES, ex[i:]) for i in range(2)]
    k = few[0].shared_user_chars
    assert k == few[1].shared_user_chars and few[0].user[:k] == few[1].user[:k]
    assert few[0].user[:k].startswith("Annotated examples") and few[0].user[k:].startswith("<example>")
    assert few[0].user[k:] != few[1].user[k:]  # the examples themselves differ per note
    assert llm.repair_prompt(zero[0], "{", "bad").shared_user_chars == len(head)
    bare = llm.Prompt(system="s", user="u", version="v1", sha="x")
    assert bare.shared_user_chars is None  # not built by build_prompt: read in one pass


def test_select_examples_refuses_evaluated_notes():
    docs, spans = _corpus()
    pool = docs[docs.fewshot]
    pool_spans = spans[spans.note_id.isin(pool.note_id)]
    with pytest.raises(ValueError, match="overlaps the evaluated notes"):
        llm.select_examples(pool, pool_spans, CODES, k=2, exclude={"pool0", "eval7"})
    with pytest.raises(ValueError, match="not flagged fewshot"):
        llm.select_examples(docs, spans, CODES, k=2)
    with pytest.raises(ValueError, match="outside pool_docs"):
        llm.select_examples(pool, spans, CODES, k=2)


# --------------------------------------------------------------------------------------------
# checking answers
# --------------------------------------------------------------------------------------------
def test_validate_and_local_repair():
    schema = llm.response_schema()
    good = {"rationales": [{"code": "E11.9", "quotes": ["a"]}]}
    assert llm.validate(good, schema) == []
    assert llm.validate({"rationales": [{"code": "E11.9"}]}, schema) == ["$.rationales[0]: missing key 'quotes'"]
    assert llm.validate({"rationales": [{"code": 1, "quotes": "x"}]}, schema)
    text = json.dumps(good)
    assert llm.local_repair(f"```json\n{text}\n```\nHope this helps!", schema) == good
    assert llm.local_repair(f"Here you go: {text} Anything else?", schema) == good
    assert llm.local_repair('{"E11.9": ["a"]}', schema) == good
    two = {"rationales": [{"code": "E11.9", "quotes": ["a"]}, {"code": "I10", "quotes": ["hypertension", "blood"]}]}
    full = json.dumps(two)
    cut = full[: full.index('"blood') + 3]  # cut inside the second quote of I10
    assert llm.local_repair(cut, schema) == {"rationales": [{"code": "E11.9", "quotes": ["a"]}, {"code": "I10", "quotes": ["hypertension"]}]}
    assert llm.local_repair('{"rationales": [{"code": "E11', schema) is None  # nothing complete: re-ask
    assert llm.local_repair("I cannot help with that.", schema) is None
    with pytest.raises(ValueError, match="invalid JSON"):
        llm.parse_answer("nope", schema)


# --------------------------------------------------------------------------------------------
# the Gemini path against the fake server
# --------------------------------------------------------------------------------------------
def test_gemini_request_and_answer_tables(server, gemini, tmp_path):
    server.script("[note 0]", Reply.rationales({"e119": ["type 2 diabetes", "metformin", "type 2 diabetes"],
                                                "Z99.9": ["x", "y"]}))
    answers, calls = run(make_requests(2), gemini, tmp_path)
    req = server.requests[0]
    assert req["path"] == "/v1beta/models/gemini-2.0-flash:generateContent"
    gen = req["body"]["generationConfig"]
    assert gen["responseMimeType"] == "application/json" and gen["responseSchema"]["type"] == "OBJECT"
    assert gen["temperature"] == 0.0
    assert req["body"]["systemInstruction"]["parts"][0]["text"] == make_requests(1)[0].prompt.system
    assert req["headers"]["x-goog-api-key"] == FAKE_KEY  # sent in the header, and only there
    assert list(answers.columns) == llm.ANSWER_COLUMNS and list(calls.columns) == llm.CALL_COLUMNS
    n0 = answers[answers.note_id == "n0"]
    assert n0[["code", "quote", "status"]].fillna("-").values.tolist() == [
        ["E11.9", "type 2 diabetes", "ok"], ["E11.9", "metformin", "ok"], ["I10", "-", "no_quotes"]]
    assert n0.quote_index.tolist()[:2] == [0, 1] and pd.isna(n0.quote_index.iloc[2])
    c0 = calls.set_index("note_id").loc["n0"]
    assert c0.status == "ok" and c0.dropped_quotes == 2 and c0.unasked_codes == ["Z99.9"] and c0.empty_codes == 1
    assert c0.input_tokens == 100 and c0.output_tokens > 0 and c0.attempts == 1 and c0.latency_s > 0
    n1 = answers[answers.note_id == "n1"]  # the default responder quotes the first words
    assert n1.quote.tolist() == ["[note 1] Patient with", "[note 1] Patient with"]
    s = llm.calls_summary(calls)
    assert s["requests"] == 2 and s["ok"] == 2 and s["cached"] == 0 and s["dropped_quotes"] == 2
    assert s["estimated_cost_usd"] == pytest.approx(llm.estimate_cost(calls)) and s["estimated_cost_usd"] > 0


def test_retries_then_success(server, gemini, tmp_path):
    server.script("[note 0]", Reply.error(429), Reply.error(500), Reply.timeout(3.0), Reply.error(503))
    t0 = time.perf_counter()
    answers, calls = run(make_requests(1), gemini, tmp_path, max_retries=5)
    assert calls.status.tolist() == ["ok"] and calls.attempts.tolist() == [5]
    assert server.served == ["http_429", "http_500", "timeout", "http_503", "ok"]
    assert (answers.status == "ok").all()
    assert time.perf_counter() - t0 < 2.8  # the time-out cut the 3 s wait at 1 s


def test_failure_after_max_retries_is_recorded_and_not_cached(server, gemini, tmp_path):
    server.script("[note 0]", *[Reply.error(500)] * 3)
    answers, calls = run(make_requests(1), gemini, tmp_path, max_retries=2)
    c = calls.iloc[0]
    assert c.status == "failed" and c.attempts == 3 and server.hits == 3
    assert "gave up after 3 attempts" in c.error and "500" in c.error
    assert answers.status.tolist() == ["failed", "failed"] and answers.quote.isna().all()
    assert llm.calls_summary(calls)["failures"] == 1
    _, calls = run(make_requests(1), gemini, tmp_path, max_retries=2)  # not cached: asked again
    assert calls.status.tolist() == ["ok"] and server.hits == 4


def test_permanent_error_is_not_retried(server, gemini, tmp_path):
    server.script("[note 0]", Reply.error(400, "bad request"))
    _, calls = run(make_requests(1), gemini, tmp_path)
    assert calls.status.tolist() == ["failed"] and calls.attempts.tolist() == [1] and "400" in calls.error[0]


def test_malformed_json_repair(server, gemini, tmp_path):
    good = {"rationales": [{"code": "E11.9", "quotes": ["type 2 diabetes"]}, {"code": "I10", "quotes": ["essential hypertension"]}]}
    server.script("[note 0]", Reply.text("```json\n" + json.dumps(good) + "\n```"))  # local repair
    server.script("[note 1]", Reply.malformed(), Reply.json(good))  # re-ask
    server.script("[note 2]", Reply.malformed("no json here"), Reply.malformed("still none"))  # failure
    server.script("[note 3]", Reply.truncated(good, keep=0.75))  # truncated: local repair
    answers, calls = run(make_requests(4), gemini, tmp_path)
    c = calls.set_index("note_id")
    assert c.loc["n0", "repaired"] == "local" and c.loc["n0", "attempts"] == 1
    assert c.loc["n1", "status"] == "ok" and c.loc["n1", "repaired"] == "reask" and c.loc["n1", "attempts"] == 2
    reask = [r for r in server.requests if "[note 1]" in json.dumps(r["body"])][1]
    assert "not valid JSON" in json.dumps(reask["body"]) and "oops" in json.dumps(reask["body"])
    assert c.loc["n2", "status"] == "failed" and c.loc["n2", "raw"] == "no json here"
    assert c.loc["n2", "raw_repair"] == "still none" and "invalid JSON" in c.loc["n2", "error"]
    # cut at MAX_TOKENS and repaired locally: the code it never reached is "truncated", not "no quotes"
    assert c.loc["n3", "status"] == "truncated" and c.loc["n3", "finish_reason"] == "MAX_TOKENS" and c.loc["n3", "repaired"] == "local"
    assert c.loc["n3", "truncated_codes"] == 1 and c.loc["n3", "empty_codes"] == 0
    a3 = answers[answers.note_id == "n3"]
    assert a3.quote.fillna("-").tolist() == ["type 2 diabetes", "-"] and a3.status.tolist() == ["ok", "truncated"]
    s = llm.calls_summary(calls)
    assert s["truncated"] == 1 and s["truncated_codes"] == 1 and s["ok"] == 2 and s["failures"] == 1
    # an unusable or truncated answer is final (cached, reported) unless rerun_failed
    hits = server.hits
    _, calls2 = run(make_requests(4), gemini, tmp_path)
    assert server.hits == hits and calls2.set_index("note_id").loc["n2", "outcome"] == "failed"
    assert calls2.set_index("note_id").loc["n3", "outcome"] == "truncated"
    _, calls3 = run(make_requests(4), gemini, tmp_path, rerun_failed=True)
    c3 = calls3.set_index("note_id")
    assert server.hits == hits + 2 and c3.loc["n2", "status"] == "ok" and c3.loc["n3", "status"] == "ok"


def test_blocked_and_empty_are_recorded_with_reason(server, gemini, tmp_path):
    server.script("[note 0]", Reply.blocked_prompt("PROHIBITED_CONTENT"))
    server.script("[note 1]", Reply.blocked_candidate("SAFETY"))
    server.script("[note 2]", Reply.empty())
    server.script("[note 3]", Reply.text("   "))
    answers, calls = run(make_requests(4), gemini, tmp_path)
    c = calls.set_index("note_id")
    assert c.status.tolist() == ["blocked", "blocked", "empty", "empty"]
    assert c.loc["n0", "blocked_reason"] == "PROHIBITED_CONTENT" and c.loc["n1", "blocked_reason"] == "SAFETY"
    assert c.loc["n2", "error"] == "no candidates" and "finish_reason STOP" in c.loc["n3", "error"]
    assert answers.groupby("note_id").status.first().tolist() == ["blocked", "blocked", "empty", "empty"]
    assert len(answers) == 8  # every asked code has a row
    assert server.hits == 4  # not retried, not re-asked


def test_cache_rerun_makes_no_calls(server, gemini, tmp_path):
    reqs = make_requests(6)
    a1, c1 = run(reqs, gemini, tmp_path, concurrency=3)
    assert server.hits == 6
    a2, c2 = run(reqs, gemini, tmp_path, concurrency=3)
    assert server.hits == 6 and c2.status.eq("cached").all() and c2.outcome.eq("ok").all()
    pd.testing.assert_frame_equal(a1, a2)
    s = llm.calls_summary(c2)
    assert s["cached"] == 6 and s["calls"] == 0 and s["estimated_cost_usd"] == 0.0
    assert llm.estimate_cost(c2, include_cached=True) == pytest.approx(llm.estimate_cost(c1))
    # duplicates in one run are asked once; a new prompt version is a new key
    _, c3 = run(reqs + reqs[:2], gemini, tmp_path)
    assert server.hits == 6 and len(c3) == 8
    # a different model is a different cache key
    other = llm.GeminiBackend("gemini-other", api_key=FAKE_KEY, base_url=server.base_url)
    run(reqs[:1], other, tmp_path)
    assert server.hits == 7


class SimulatedKill(BaseException):
    """Stands for the process being stopped (a BaseException, like KeyboardInterrupt): an ordinary
    exception of a backend is one failed request (see test_llm_backends), never the end of a run."""


def test_killed_run_resumes_with_only_the_remaining_calls(server, tmp_path):
    class Crashing(llm.GeminiBackend):
        calls = 0

        async def agenerate(self, prompt):
            if Crashing.calls >= 5:
                raise SimulatedKill("simulated crash")
            Crashing.calls += 1
            return await super().agenerate(prompt)

    reqs = make_requests(12)
    crashing = Crashing(api_key=FAKE_KEY, base_url=server.base_url, timeout_s=2)
    with pytest.raises(SimulatedKill, match="simulated crash"):
        run(reqs, crashing, tmp_path, concurrency=3)
    cache_file = tmp_path / "cache" / llm.CACHE_FILE
    done = len(cache_file.read_text().splitlines())
    assert 3 <= done <= 5  # the finished answers are on disk (in-flight ones were cut)
    with open(cache_file, "a") as fh:  # and a torn line from a kill mid-write is tolerated
        fh.write('{"key": "abc", "outc')
    hits = server.hits
    backend = llm.GeminiBackend(api_key=FAKE_KEY, base_url=server.base_url, timeout_s=2)
    answers, calls = run(reqs, backend, tmp_path, concurrency=3)
    assert server.hits - hits == 12 - done
    assert calls.status.value_counts().to_dict() == {"ok": 12 - done, "cached": done}
    assert answers.status.eq("ok").all() and answers.note_id.nunique() == 12
    _, calls = run(reqs, backend, tmp_path)
    assert calls.status.eq("cached").all() and server.hits - hits == 12 - done


def test_concurrency_overlaps_requests(tmp_path):
    with FakeGemini(latency=0.3) as srv:
        backend = llm.GeminiBackend(api_key=FAKE_KEY, base_url=srv.base_url, timeout_s=5)
        t0 = time.perf_counter()
        _, calls = run(make_requests(8), backend, tmp_path, concurrency=8)
        elapsed = time.perf_counter() - t0
    assert calls.status.eq("ok").all()
    assert elapsed < 1.6  # sequential would take 2.4 s


def test_api_key_never_leaks(server, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    backend = llm.GeminiBackend(api_key=FAKE_KEY, base_url=server.base_url, timeout_s=1.0)
    server.script("[note 0]", Reply.error(429), Reply.malformed())
    server.script("[note 1]", Reply.error(400, f"API key not valid: {FAKE_KEY}"))
    answers, calls = run(make_requests(3), backend, tmp_path, record=tmp_path / "record.jsonl")
    assert server.requests[0]["headers"]["x-goog-api-key"] == FAKE_KEY
    assert "***" in calls.set_index("note_id").loc["n1", "error"]
    texts = [repr(backend), str(backend), caplog.text, calls.to_csv(), answers.to_csv(), repr(vars(backend).keys())]
    out = capsys.readouterr()
    texts += [out.out, out.err]
    assert not any(FAKE_KEY in t for t in texts)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 2
    assert not any(FAKE_KEY.encode() in p.read_bytes() for p in files)
    blob = pickle.dumps(backend)
    assert FAKE_KEY.encode() not in blob


def test_missing_api_key(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(llm.LLMConfigError, match="GEMINI_API_KEY"):
        llm.GeminiBackend()
    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    b = llm.GeminiBackend()
    assert FAKE_KEY not in repr(b)


def test_credentialed_data_guard(server, gemini, tmp_path):
    with pytest.raises(llm.CredentialedDataError, match="PhysioNet credentialed data use agreement") as e:
        run(make_requests(1), gemini, tmp_path, credentialed=True)
    assert "allow_remote_credentialed_data" in str(e.value)
    assert server.hits == 0
    _, calls = run(make_requests(1), gemini, tmp_path, credentialed=True, allow_remote_credentialed_data=True,
                   record=tmp_path / "rec.jsonl")
    assert calls.status.tolist() == ["ok"] and server.hits == 1
    replay = llm.ReplayBackend(tmp_path / "rec.jsonl")  # not remote: allowed
    _, calls = run(make_requests(1), replay, credentialed=True)
    assert calls.status.tolist() == ["ok"]


def test_replay_backend(server, gemini, tmp_path):
    rec = tmp_path / "record.jsonl"
    server.script("[note 1]", Reply.malformed(), Reply.rationales({"I10": ["essential hypertension"]}))
    a1, c1 = run(make_requests(3), gemini, tmp_path, record=rec)
    assert len(rec.read_text().splitlines()) == 4  # three answers and one re-ask
    hits = server.hits
    replay = llm.ReplayBackend(rec)
    assert len(replay) == 4 and "gemini:gemini-2.0-flash" in replay.model
    a2, c2 = run(make_requests(3), replay, tmp_path / "other")
    assert server.hits == hits and c2.status.eq("ok").all()
    assert c2.set_index("note_id").loc["n1", "repaired"] == "reask"
    pd.testing.assert_frame_equal(a1.drop(columns=["backend", "model"]), a2.drop(columns=["backend", "model"]))
    with pytest.raises(llm.ReplayMissError, match="no answer for prompt sha"):
        run(make_requests(1, start=7), replay)
    # a run served from the cache still writes its answers to a new record file
    rec2 = tmp_path / "record2.jsonl"
    run(make_requests(3), gemini, tmp_path, record=rec2)
    assert server.hits == hits and len(rec2.read_text().splitlines()) == 4
    with pytest.raises(llm.LLMConfigError, match="not found"):
        llm.ReplayBackend(tmp_path / "missing.jsonl")


def test_run_llm_inside_a_running_event_loop(server, gemini, tmp_path):
    async def notebook_cell():
        return run(make_requests(2), gemini, tmp_path)

    _, calls = asyncio.run(notebook_cell())
    assert calls.status.eq("ok").all()


def test_requests_per_minute_spaces_calls(server, gemini):
    t0 = time.perf_counter()
    _, calls = run(make_requests(4), gemini, concurrency=4, requests_per_minute=600)  # one per 0.1 s
    assert calls.status.eq("ok").all() and time.perf_counter() - t0 >= 0.3


def test_local_backend_batches_and_runs_one_batch_at_a_time():
    class Scripted(llm.LocalBackend):  # the batching machinery without loading a model
        batches: list[int] = []

        def _generate_batch(self, prompts):
            Scripted.batches.append(len(prompts))
            time.sleep(0.02)
            return [llm.LLMResponse('{"rationales": [{"code": "E11.9", "quotes": ["metformin"]}]}', "STOP", 10, 5)
                    if "[note 3]" not in p.user else llm.PermanentLLMError("prompt too long") for p in prompts]

    backend = Scripted(batch_size=4)
    assert backend.max_concurrency == 4 and not backend.remote
    answers, calls = run(make_requests(10), backend, concurrency=16)
    assert sum(Scripted.batches) == 10 and max(Scripted.batches) <= 4 and len(Scripted.batches) < 10
    c = calls.set_index("note_id")
    assert c.loc["n3", "status"] == "failed" and "too long" in c.loc["n3", "error"]
    assert (calls.status == "ok").sum() == 9
    assert answers[answers.status == "ok"].quote.unique().tolist() == ["metformin"]


def test_make_backend(monkeypatch, tmp_path):
    local = llm.make_backend(config.LLM())
    assert isinstance(local, llm.LocalBackend) and local.model.endswith(".gguf") and not local.remote
    assert local.max_concurrency == 1
    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    g = llm.make_backend(config.LLM(backend="gemini", model="gemini-2.0-flash", timeout_s=5.0))
    assert isinstance(g, llm.GeminiBackend) and g.remote and g.timeout_s == 5.0
    with pytest.raises(llm.LLMConfigError, match="replay_file"):
        llm.make_backend(config.LLM(backend="replay"))
    rec = tmp_path / "r.jsonl"
    rec.write_text(json.dumps({"sha": "x", "text": "{}", "backend": "gemini", "model": "m"}) + "\n")
    assert isinstance(llm.make_backend(config.LLM(backend="replay", replay_file=str(rec))), llm.ReplayBackend)


def test_estimate_cost():
    calls = pd.DataFrame({"input_tokens": [1_000_000, 2_000_000], "output_tokens": [100_000, 0], "cached": [False, True]})
    assert llm.estimate_cost(calls, 0.1, 0.4) == pytest.approx(0.14)
    assert llm.estimate_cost(calls, 0.1, 0.4, include_cached=True) == pytest.approx(0.34)


# --------------------------------------------------------------------------------------------
# the real local model (deselect with -k "not smollm")
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(bool(os.environ.get("RK_SKIP_LOCAL_LLM")), reason="RK_SKIP_LOCAL_LLM is set")
def test_smollm_real_model_answer_or_recorded_failure(tmp_path, local_llm):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is the fastest
    try:
        _smollm_run(tmp_path, local_llm(max_new_tokens=24))  # the session's loaded model (tests/conftest.py)
    finally:
        torch.set_num_threads(threads)


def _smollm_run(tmp_path, backend):
    prompt = llm.build_prompt("Type 2 diabetes on metformin.", CODES[:1])
    reqs = [llm.LLMRequest("n0", prompt, tuple(CODES[:1]))]
    answers, calls = llm.run_llm(reqs, backend, cache_dir=tmp_path, progress=False, reask=False)
    c = calls.iloc[0]
    assert c.backend == "local" and c.input_tokens > 50 and 0 < c.output_tokens <= 25
    assert c.raw  # the model's own text is kept whatever it is
    if c.status == "failed":
        assert c.error and (answers.status == "failed").all()
    else:
        assert c.status == "ok" and set(answers.code) == {"E11.9"}
    _, again = llm.run_llm(reqs, backend, cache_dir=tmp_path, progress=False, reask=False)
    assert again.status.tolist() == ["cached"]


# --------------------------------------------------------------------------------------------
# structured (guided) decoding of the local backend, with a scripted character-level "model"
# --------------------------------------------------------------------------------------------
class _CharTok:
    """Token = one ASCII character (id = its code), plus two merged tokens and an end token."""

    MERGED = {128: '",', 129: '."'}
    EOS = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) for ch in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.MERGED.get(i, "" if i == self.EOS else chr(i)) for i in ids)


class _ScriptedLM:
    """What the model "would write" after the forced ``"quotes": ["`` of each code; the cache is
    the list of token ids fed so far (every forced or generated token must be fed exactly once)."""

    def __init__(self, script):
        self.script, self.tok, self.calls = script, _CharTok(), 0

    def __call__(self, input_ids, past_key_values=None, use_cache=True):
        import torch
        from types import SimpleNamespace

        self.calls += 1
        ids = (past_key_values or []) + input_ids[0].tolist()
        ctx = self.tok.decode(ids)
        code = json.JSONDecoder().raw_decode(ctx, ctx.rindex('{"code": ') + len('{"code": '))[0]
        written = ctx.rsplit('"quotes": ["', 1)[1]
        want = self.script.get(code, "")
        nxt = self.tok.EOS
        if want.startswith(written) and len(want) > len(written):
            rest = want[len(written):]
            merged = [i for i, t in _CharTok.MERGED.items() if rest.startswith(t)]
            nxt = merged[0] if merged else ord(rest[0])
        logits = torch.zeros(1, len(input_ids[0]), 130)
        logits[0, -1, nxt] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=ids)


def test_guided_answer_builds_valid_json_around_the_models_quotes():
    script = {
        "E11.9": 'type 2 diabetes", "metformin 500 mg"]}',  # two quotes, the model closes the list
        "I10": "blood pressure high\nmore text",  # a newline ends the quote
        "J18.9": 'pneumonia." and more',  # a merged token holding the closing quote
        "N17.9": "",  # the model ends its turn at once: no quote
        "E78.5": 'x' * 100,  # cut at max_quote_tokens
        'A "B"': 'same", "same"]}',  # a repeated quote is kept once; odd code text is escaped
    }
    lm = _ScriptedLM(script)
    prompt_ids = lm.tok("<prompt>")["input_ids"]
    text, n_out, finish = guided_answer(lm, lm.tok, prompt_ids, list(script), max_quote_tokens=20,
                                         eos_ids=[_CharTok.EOS])
    obj, repaired = llm.parse_answer(text, llm.response_schema())
    assert repaired is None and finish == "STOP"
    got = {r["code"]: r["quotes"] for r in obj["rationales"]}
    assert list(got) == list(script)
    assert got == {"E11.9": ["type 2 diabetes", "metformin 500 mg"], "I10": ["blood pressure high"],
                   "J18.9": ["pneumonia."], "N17.9": [], "E78.5": ["x" * 20], 'A "B"': ["same"]}
    assert 0 < n_out <= 6 * 2 * 21 and lm.calls < n_out + 20  # one forward per token, not per prompt

    # the token budget is shared by the request: codes left when it is spent get no quotes
    text, n_out, finish = guided_answer(lm, lm.tok, prompt_ids, ["E11.9", "I10"], max_new_tokens=5,
                                         eos_ids=[_CharTok.EOS])
    assert finish == "MAX_TOKENS" and n_out == 5
    # the code never reached is left out (the runner marks it truncated), not given an empty list
    assert json.loads(text) == {"rationales": [{"code": "E11.9", "quotes": ["type"]}]}


def test_structured_local_backend_codes_and_cache_key():
    p = llm.build_prompt(note(1), CODES)
    assert p.codes == ("E11.9", "I10") and llm.prompt_codes(p) == ["E11.9", "I10"]
    bare = llm.Prompt(system=p.system, user=p.user, version=p.version, sha=p.sha)  # codes read from the text
    assert bare == p and llm.prompt_codes(bare) == ["E11.9", "I10"]
    assert llm.prompt_codes(llm.repair_prompt(p, "{", "bad")) == ["E11.9", "I10"]
    structured, free = llm.LocalBackend(), llm.LocalBackend(structured=False)
    assert structured.structured and structured.cache_tag and not free.cache_tag
    assert llm.cache_key(structured, p) != llm.cache_key(free, p)
    # every setting that determines the answer is in the key (temperature too)
    assert llm.cache_key(llm.LocalBackend(structured=False, temperature=0.7), p) != llm.cache_key(free, p)


@pytest.mark.local_llm
@pytest.mark.skipif(bool(os.environ.get("RK_SKIP_LOCAL_LLM")), reason="RK_SKIP_LOCAL_LLM is set")
def test_smollm_structured_answers_every_code(tmp_path, local_llm):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        backend = local_llm(max_quote_tokens=24)  # the session's loaded model (tests/conftest.py)
        text = "Patient with type 2 diabetes on metformin 500 mg. Blood pressure high: essential hypertension, on lisinopril."
        reqs = [llm.LLMRequest("n0", llm.build_prompt(text, CODES), tuple(CODES))]
        answers, calls = llm.run_llm(reqs, backend, cache_dir=tmp_path, progress=False)
    finally:
        torch.set_num_threads(threads)
    c = calls.iloc[0]
    assert c.status == "ok" and c.attempts == 1 and c.repaired is None and c.n_codes == 2
    ok = answers[answers.status == "ok"]
    assert set(ok.code) == {"E11.9", "I10"} and ok.quote.str.len().gt(0).all()
    assert json.loads(c.raw)["rationales"][0]["code"] == "E11.9"
    # verbatim decoding (the default): every quote the real model produced is a substring of the note
    assert all(q in text for q in ok.quote), ok.quote.tolist()


@pytest.mark.local_llm
@pytest.mark.skipif(bool(os.environ.get("RK_SKIP_LOCAL_LLM")), reason="RK_SKIP_LOCAL_LLM is set")
def test_smollm_prefix_cache_gives_identical_answers(local_llm):
    """Greedy decoding with the shared-prefix KV cache writes exactly the tokens it writes without."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    texts = ["Patient with type 2 diabetes on metformin 500 mg. Essential hypertension, on lisinopril.",
             "Known hypertension. Blood pressure 170/95 on arrival. Diabetes type 2, diet controlled."]
    ex = [llm.FewShotExample("E11.9", CODES[0][1], "...history of type 2 diabetes, on insulin...", ("type 2 diabetes",))]
    prompts = [llm.build_prompt(t, CODES) for t in texts] + [llm.build_prompt(t, CODES, ex) for t in texts]
    try:
        cached, fresh = local_llm(max_quote_tokens=12, max_new_tokens=30), local_llm(max_quote_tokens=12, max_new_tokens=30, prefix_cache=False)
        with_cache = [cached.generate(p) for p in prompts]
        without = [fresh.generate(p) for p in prompts]
    finally:
        torch.set_num_threads(threads)
    assert [(r.text, r.output_tokens, r.finish_reason) for r in with_cache] == \
        [(r.text, r.output_tokens, r.finish_reason) for r in without]
    # the prefix (system turn and shared head of the user turn) was computed once per kind and reused
    assert [s["prefix_reused"] for s in cached.stats] == [False, True, False, True]
    assert not any(s["prefix_reused"] for s in fresh.stats)
    n_zero, n_few = cached.stats[0]["prefix_tokens"], cached.stats[2]["prefix_tokens"]
    assert 0 < n_zero < n_few < cached.stats[2]["prompt_tokens"] and cached.stats[1]["prefix_tokens"] == n_zero
    assert llm.cache_key(cached, prompts[0]) == llm.cache_key(fresh, prompts[0])  # exact: not a cache-key setting


def test_smollm_bfloat16_is_a_cache_key_setting_and_answers(smollm):
    """``local_dtype: bfloat16``: the model runs in bfloat16 (weights and activations), writes a
    valid structured answer, and its answers are cached under another key than float32's; float32
    keeps the keys of earlier runs (no dtype in its settings)."""
    import copy

    import torch

    from rationale_kit.core import config
    from rationale_kit.rationales.llm.backends.factory import make_backend

    text = "Patient with type 2 diabetes on metformin 500 mg. Essential hypertension, on lisinopril."
    prompt = llm.build_prompt(text, CODES)
    f32 = llm.LocalBackend(max_quote_tokens=12, max_new_tokens=30)
    b16 = llm.LocalBackend(max_quote_tokens=12, max_new_tokens=30, dtype="bfloat16")
    assert "dtype" not in f32.settings() and b16.settings()["dtype"] == "bfloat16"
    assert llm.cache_key(f32, prompt) != llm.cache_key(b16, prompt)
    with pytest.raises(llm.LLMConfigError, match="float32 or bfloat16"):
        llm.LocalBackend(dtype="float16")
    # the profile key reaches the backend; an unknown value is refused naming the key
    prof = config.load_profile("smoke", {"rationales": {"llm": {"local_dtype": "bfloat16"}}})
    assert make_backend(prof.rationales.llm).dtype == "bfloat16"
    # auto resolves before the backend is built, so the cache key names the dtype actually used
    from rationale_kit.rationales.llm.backends.local import auto_dtype

    auto = make_backend(config.load_profile("smoke", {"rationales": {"llm": {"local_dtype": "auto"}}}).rationales.llm)
    assert auto.dtype == auto_dtype("auto", "cpu") in ("float32", "bfloat16")
    assert auto_dtype("float32", "cpu") == "float32" and auto_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(config.ConfigError, match="local_dtype"):
        config.load_profile("smoke", {"rationales": {"llm": {"local_dtype": "int8"}}})
    # the session's float32 model, copied and cast as load() casts it
    b16._tok, b16._lm = smollm._tok, copy.deepcopy(smollm._lm).to(torch.bfloat16)
    assert {p.dtype for p in b16._lm.parameters()} == {torch.bfloat16}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        answer = b16.generate(prompt)
    finally:
        torch.set_num_threads(threads)
    parsed = json.loads(answer.text)
    assert [c["code"] for c in parsed["rationales"]] == [c for c, _ in CODES]
    for c in parsed["rationales"]:  # verbatim decoding: every quote is text of the note
        assert all(q in text for q in c["quotes"])
