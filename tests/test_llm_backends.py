"""rationale_kit.rationales.llm: settings in the cache key, truncated answers, damaged caches, the
credentialed-data guard, secrets in answers, Retry-After, answer caps, and the backends added for
credentialed data (Gemini on Vertex AI, OpenAI-compatible servers), each against a loopback fake
server speaking its wire format (``tests/fake_gemini.py``, ``tests/fake_openai.py``)."""
from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import logging
import pickle
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_gemini import FakeGemini, Reply  # noqa: E402
from fake_openai import FakeOpenAI, OAReply  # noqa: E402

from rationale_kit.core import config
from rationale_kit.rationales import llm  # noqa: E402
from rationale_kit.rationales.llm.backends.guided import guided_answer, guided_answers_batched  # noqa: E402

FAKE_KEY = "AIzaSyFAKE-never-leak-0123456789abcdef"
OA_KEY = "sk-FAKE-never-leak-abcdef0123456789"
CODES = [("E11.9", "Type 2 diabetes mellitus without complications"), ("I10", "Essential (primary) hypertension")]


def note(i: int) -> str:
    return f"[note {i}] Patient with type 2 diabetes on metformin. Blood pressure high, essential hypertension. No chest pain."


def reqs(n: int, start: int = 0) -> list[llm.LLMRequest]:
    return [llm.LLMRequest(f"n{i}", llm.build_prompt(note(i), CODES), tuple(CODES)) for i in range(start, start + n)]


def run(requests, backend, tmp_path=None, **kw):
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    kw.setdefault("progress", False)
    kw.setdefault("credentialed", False)
    return llm.run_llm(requests, backend, cache_dir=tmp_path / "cache" if tmp_path else None, **kw)


@pytest.fixture
def gserver():
    with FakeGemini() as srv:
        yield srv


@pytest.fixture
def oserver():
    with FakeOpenAI() as srv:
        yield srv


def gemini(srv, **kw):
    return llm.GeminiBackend(api_key=FAKE_KEY, base_url=srv.base_url, timeout_s=kw.pop("timeout_s", 1.0), **kw)


def openai(srv, **kw):
    kw.setdefault("timeout_s", 1.0)
    return llm.OpenAIBackend("fake-model", srv.base_url, api_key=kw.pop("api_key", OA_KEY), **kw)


class SleepLog:
    """An injected ``sleep`` for run_llm: records each wait (seconds) and returns at once.
    ``elapsed()``: the time a real run would have taken, the real time since it was made plus the
    waits it skipped."""

    def __init__(self):
        self.waits: list[float] = []
        self.t0 = time.perf_counter()

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 + sum(self.waits)


# --------------------------------------------------------------------------------------------
# issue 14: cache key, truncation, damaged cache, guard, secrets, Retry-After, caps
# --------------------------------------------------------------------------------------------
def test_cache_key_holds_every_setting_that_determines_the_answer(gserver, tmp_path):
    run(reqs(2), gemini(gserver), tmp_path)
    assert gserver.hits == 2
    run(reqs(2), gemini(gserver), tmp_path)  # same settings: cached
    assert gserver.hits == 2
    run(reqs(2), gemini(gserver, temperature=0.9), tmp_path)  # another temperature: asked again
    assert gserver.hits == 4
    run(reqs(2), gemini(gserver, max_output_tokens=64), tmp_path)  # another output budget: asked again
    assert gserver.hits == 6
    assert gserver.requests[-1]["body"]["generationConfig"]["maxOutputTokens"] == 64
    p = reqs(1)[0].prompt
    a, b = llm.LocalBackend(temperature=0.0), llm.LocalBackend(temperature=0.5)
    assert llm.cache_key(a, p) != llm.cache_key(b, p)
    assert llm.cache_key(a, p) != llm.cache_key(llm.LocalBackend(verbatim=False), p)
    assert llm.cache_key(a, p) == llm.cache_key(llm.LocalBackend(temperature=0.0), p)


def test_truncated_local_answer_marks_unreached_codes(tmp_path):
    class Cut(llm.LocalBackend):  # what guided decoding returns when the token budget runs out
        def _generate_batch(self, prompts):
            return [llm.LLMResponse('{"rationales": [{"code": "E11.9", "quotes": ["type 2 diabetes"]}]}',
                                    "MAX_TOKENS", 50, 160) for _ in prompts]

    answers, calls = run(reqs(1), Cut(), tmp_path)
    assert calls.status.tolist() == ["truncated"] and calls.truncated_codes.tolist() == [1]
    assert answers.set_index("code").status.to_dict() == {"E11.9": "ok", "I10": "truncated"}
    # a STOP answer that leaves a code out: the model found nothing for it (no_quotes)
    class Stop(Cut):
        def _generate_batch(self, prompts):
            return [dataclass_replace(r, finish_reason="STOP") for r in super()._generate_batch(prompts)]

    answers, calls = run(reqs(1), Stop(), tmp_path / "b")
    assert calls.status.tolist() == ["ok"] and answers.set_index("code").status.to_dict() == {"E11.9": "ok", "I10": "no_quotes"}


def dataclass_replace(r, **kw):
    import dataclasses

    return dataclasses.replace(r, **kw)


def test_damaged_cache_lines_are_skipped_with_a_warning_and_redone(gserver, tmp_path, caplog):
    backend = gemini(gserver)
    run(reqs(4), backend, tmp_path)
    path = tmp_path / "cache" / llm.CACHE_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4
    recs = [json.loads(x) for x in lines]
    no_outcome = {k: v for k, v in recs[1].items() if k != "outcome"}
    bad_parsed = {**recs[2], "parsed": ["not", "an", "object"]}
    path.write_bytes(lines[0][:10] + b"\xff\xfe" + lines[0][10:] + (json.dumps(no_outcome) + "\n").encode()
                     + (json.dumps(bad_parsed) + "\n").encode() + lines[3])
    caplog.set_level(logging.WARNING)
    skipped: list = []
    gserver.reset()
    answers, calls = run(reqs(4), backend, tmp_path, skipped_cache_lines=skipped)
    assert gserver.hits == 3  # the three damaged entries are asked again, the good one is not
    # the cache is written in the order answers arrive (requests run concurrently), so the
    # request whose line survived is found by its key, not by its position
    kept = [llm.cache_key(backend, r.prompt) for r in reqs(4)].index(recs[3]["key"])
    assert calls.status.tolist() == ["cached" if i == kept else "ok" for i in range(4)]
    assert len(skipped) == 3 and [s.split(": ")[0] for s in skipped] == [f"{path}:{i}" for i in (1, 2, 3)]
    assert "not UTF-8" in skipped[0] and "'outcome' is None" in skipped[1] and "not an object" in skipped[2]
    assert f"{path}:2" in caplog.text and "3 damaged line(s) skipped" in caplog.text
    gserver.reset()
    run(reqs(4), backend, tmp_path)  # the redone answers were appended: nothing is asked now
    assert gserver.hits == 0


def test_credentialed_guard_fails_closed(gserver, tmp_path, monkeypatch):
    backend = gemini(gserver)
    with pytest.raises(llm.CredentialedDataError, match="not known whether"):  # not said: refused
        llm.run_llm(reqs(1), backend, cache_dir=tmp_path, progress=False)
    with pytest.raises(llm.CredentialedDataError):  # the backend on its own refuses too
        backend.generate(reqs(1)[0].prompt)
    assert gserver.hits == 0
    ok = gemini(gserver, credentialed=False)
    assert json.loads(ok.generate(reqs(1)[0].prompt).text)["rationales"]
    # the profile and data source decide, not a column an older table may lack
    mimic = config.load_profile("mimic")
    docs = pd.DataFrame({"note_id": ["a"], "text": ["x"], "codes": [["I10"]]})  # no credentialed column
    assert llm.is_credentialed(mimic, docs) and llm.is_credentialed(mimic)
    default = config.load_profile("default")
    assert not llm.is_credentialed(default, docs)
    assert llm.is_credentialed(default, docs.assign(credentialed=[True]))
    assert llm.is_credentialed(config.load_profile("default", {"data": {"credentialed": True}}), docs)
    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    cfg = config.load_profile("mimic", {"rationales": {"llm": {"base_url": gserver.base_url}}}).rationales.llm
    b = llm.make_backend(cfg, credentialed=llm.is_credentialed(mimic, docs))
    with pytest.raises(llm.CredentialedDataError):
        b.generate(reqs(1)[0].prompt)
    cfg = config.load_profile("mimic", {"rationales": {"llm": {"base_url": gserver.base_url,
                                                               "allow_remote_credentialed_data": True}}}).rationales.llm
    assert llm.make_backend(cfg, credentialed=True).generate(reqs(1)[0].prompt).text
    # a local OpenAI-compatible server is not a third party only when the profile says so
    lo = llm.make_backend(config.LLM(backend="openai", base_url="http://127.0.0.1:9/v1", model="m"), credentialed=True)
    assert lo.remote
    lo = llm.make_backend(config.LLM(backend="openai", base_url="http://10.0.0.1:9/v1", model="m", local_endpoint=True),
                          credentialed=True)
    assert not lo.remote


def test_an_answer_that_reflects_the_key_is_masked_everywhere(gserver, oserver, tmp_path):
    gserver.script("[note 0]", Reply.rationales({"E11.9": [f"key {FAKE_KEY}"], "I10": ["essential hypertension"]}))
    gserver.script("[note 1]", Reply.malformed(f"oops {FAKE_KEY}"), Reply.malformed(f"again {FAKE_KEY}"))
    answers, calls = run(reqs(2), gemini(gserver), tmp_path, record=tmp_path / "rec.jsonl")
    oserver.script("[note 0]", OAReply.rationales({"E11.9": [f"key {OA_KEY}"]}))
    a2, c2 = run(reqs(1), openai(oserver), tmp_path / "oa", record=tmp_path / "oa.jsonl")
    assert oserver.requests[0]["headers"]["Authorization"] == f"Bearer {OA_KEY}"
    answers.to_parquet(tmp_path / "answers.parquet")
    calls.to_parquet(tmp_path / "calls.parquet")
    a2.to_parquet(tmp_path / "a2.parquet")
    assert "key ***" in answers.quote.tolist() and "key ***" in a2.quote.tolist()
    for p in tmp_path.rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            assert FAKE_KEY.encode() not in blob and OA_KEY.encode() not in blob, p
    assert OA_KEY.encode() not in pickle.dumps(openai(oserver)) and OA_KEY not in repr(openai(oserver))


def test_parse_retry_after():
    now = time.time()
    assert llm.parse_retry_after("12") == 12.0 and llm.parse_retry_after(" 0.5 ") == 0.5
    assert llm.parse_retry_after("-3") == 0.0 and llm.parse_retry_after(None) is None
    assert llm.parse_retry_after("soon") is None and llm.parse_retry_after("") is None
    later = email.utils.format_datetime(datetime.datetime.fromtimestamp(now + 30, datetime.timezone.utc), usegmt=True)
    assert llm.parse_retry_after(later, now=now) == pytest.approx(30, abs=1.0)
    assert llm.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0  # in the past


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_retry_after_header_is_honoured(kind, gserver, oserver, tmp_path):
    srv, R, backend = (gserver, Reply, gemini(gserver)) if kind == "gemini" else (oserver, OAReply, openai(oserver))
    # an HTTP date 60 s ahead: whatever the machine's load, it lies beyond the 5 s cap when read
    later = email.utils.format_datetime(datetime.datetime.fromtimestamp(time.time() + 60, datetime.timezone.utc), usegmt=True)
    srv.script("[note 0]", R.error(429, retry_after="0.6"), R.error(503, retry_after=later))
    clock = SleepLog()  # the waits are recorded, not slept
    _, calls = run(reqs(1), backend, tmp_path, backoff_base_s=0.01, backoff_max_s=5.0, sleep=clock)
    elapsed = clock.elapsed()
    assert calls.status.tolist() == ["ok"] and calls.attempts.tolist() == [3]
    # 0.6 s, then the HTTP date (about 60 s away) read and cut to backoff_max_s; an unread date
    # would leave the 10 ms back-off alone
    assert elapsed >= 5.6
    assert len(clock.waits) == 2 and clock.waits[0] == pytest.approx(0.6) and clock.waits[1] == pytest.approx(5.0)
    srv.script("[note 1]", R.error(429))  # without Retry-After: the back-off alone (10 ms here)
    clock = SleepLog()
    _, calls = run(reqs(1, start=1), backend, tmp_path, sleep=clock)
    assert calls.attempts.tolist() == [2] and clock.elapsed() < 1.0
    assert len(clock.waits) == 1 and 0.005 <= clock.waits[0] <= 0.01  # base 0.01 s times [0.5, 1)


def test_answer_size_and_quotes_are_capped(gserver, tmp_path, caplog):
    huge = {"rationales": [{"code": "E11.9", "quotes": [f"q{i} " + "x" * 200 for i in range(100_000)]}]}
    many = {"rationales": [{"code": "E11.9", "quotes": [f"quote {i}" for i in range(50)]},
                           {"code": "I10", "quotes": ["essential hypertension"]}]}
    gserver.script("[note 0]", Reply.json(huge))
    gserver.script("[note 1]", Reply.json(many))
    caplog.set_level(logging.WARNING)
    answers, calls = run(reqs(2), gemini(gserver, timeout_s=10), tmp_path, max_answer_chars=50_000, max_quotes_per_code=20)
    c = calls.set_index("note_id")
    assert c.loc["n0", "status"] == "failed" and "max_answer_chars=50000" in c.loc["n0", "error"]
    assert len(c.loc["n0", "raw"]) == 50_000 and c.loc["n0", "attempts"] == 1  # not re-asked with 20 MB
    assert len(answers[answers.note_id == "n0"]) == 2  # one failed row per code, not 100,000
    assert c.loc["n1", "n_quotes"] == 21 and c.loc["n1", "capped_quotes"] == 30
    assert (answers[answers.note_id == "n1"].code == "E11.9").sum() == 20
    assert "30 quote(s) past max_quotes_per_code=20" in caplog.text
    assert (tmp_path / "cache" / llm.CACHE_FILE).stat().st_size < 200_000


def test_llm_config_keys_are_read(monkeypatch):
    cfg = config.LLM(local_batch_size=4, local_structured=False, local_verbatim=False, local_device="cpu", temperature=0.3)
    b = llm.make_backend(cfg)
    assert b.batch_size == 4 and b.max_concurrency == 4 and not b.structured and not b.verbatim and b.device == "cpu"
    assert b.temperature == 0.3
    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    g = llm.make_backend(config.LLM(backend="gemini", max_output_tokens=99, temperature=0.2))
    assert g.max_output_tokens == 99 and g.temperature == 0.2
    with pytest.raises(config.ConfigError, match="local_batch_size"):
        config.load_profile("default", {"rationales": {"llm": {"local_batch_size": "four"}}})
    calls = pd.DataFrame({"input_tokens": [2_000_000], "output_tokens": [1_000_000], "cached": [False],
                          "outcome": ["ok"], "attempts": [1], "repaired": [None], "dropped_quotes": [0], "empty_codes": [0]})
    prof = config.load_profile("default", {"rationales": {"llm": {"price_per_million_in": 1.0, "price_per_million_out": 3.0}}})
    assert llm.calls_summary(calls, prof.rationales.llm.price_per_million_in,
                             prof.rationales.llm.price_per_million_out)["estimated_cost_usd"] == pytest.approx(5.0)


# --------------------------------------------------------------------------------------------
# OpenAI-compatible servers
# --------------------------------------------------------------------------------------------
def test_openai_request_answers_and_faults(oserver, tmp_path):
    good = {"rationales": [{"code": "E11.9", "quotes": ["type 2 diabetes"]}, {"code": "I10", "quotes": ["essential hypertension"]}]}
    oserver.script("[note 0]", OAReply.json(good))
    oserver.script("[note 1]", OAReply.error(500), OAReply.error(503), OAReply.json(good))  # 5xx retried
    oserver.script("[note 2]", OAReply.timeout(3.0), OAReply.json(good))  # time-out retried
    oserver.script("[note 3]", OAReply.schema_violation(), OAReply.schema_violation())  # re-asked once, then failed
    oserver.script("[note 4]", OAReply.refusal("I can't help with that."))
    oserver.script("[note 5]", OAReply.content_filter())
    oserver.script("[note 6]", OAReply.truncated(good, keep=0.6))
    oserver.script("[note 7]", OAReply.error(400, "bad request"))  # permanent: not retried
    oserver.script("[note 8]", OAReply.error(429), OAReply.error(429), OAReply.error(429))  # retries exhausted
    answers, calls = run(reqs(9), openai(oserver, timeout_s=0.5), tmp_path, max_retries=2)
    c = calls.set_index("note_id")
    body = [r for r in oserver.requests if "[note 0]" in json.dumps(r["body"])][0]
    assert body["path"] == "/v1/chat/completions" and body["headers"]["Authorization"] == f"Bearer {OA_KEY}"
    b = body["body"]
    assert b["model"] == "fake-model" and b["temperature"] == 0.0 and b["max_tokens"] == 8192
    assert [m["role"] for m in b["messages"]] == ["system", "user"] and "[note 0]" in b["messages"][1]["content"]
    assert b["response_format"]["type"] == "json_schema"
    # the answer schema in the form OpenAI's strict mode accepts (additionalProperties false, all required)
    from rationale_kit.rationales.llm.backends.openai import strict_schema

    sent = b["response_format"]["json_schema"]["schema"]
    assert sent == strict_schema(llm.response_schema()) and b["response_format"]["json_schema"]["strict"] is True
    assert sent["additionalProperties"] is False and sent["required"] == ["rationales"]
    item = sent["properties"]["rationales"]["items"]
    assert item["additionalProperties"] is False and item["required"] == ["code", "quotes"]
    assert c.loc["n0", "status"] == "ok" and c.loc["n0", "input_tokens"] == 100
    assert c.loc["n1", "status"] == "ok" and c.loc["n1", "attempts"] == 3
    assert c.loc["n2", "status"] == "ok" and c.loc["n2", "attempts"] == 2
    assert c.loc["n3", "status"] == "failed" and c.loc["n3", "attempts"] == 2 and "missing key 'rationales'" in c.loc["n3", "error"]
    assert c.loc["n4", "status"] == "blocked" and c.loc["n4", "blocked_reason"].startswith("REFUSAL: I can't")
    assert c.loc["n5", "status"] == "blocked" and c.loc["n5", "blocked_reason"] == "CONTENT_FILTER"
    assert c.loc["n6", "status"] == "truncated" and c.loc["n6", "finish_reason"] == "MAX_TOKENS"
    assert c.loc["n7", "status"] == "failed" and c.loc["n7", "attempts"] == 1 and "HTTP 400: bad request" in c.loc["n7", "error"]
    assert c.loc["n8", "status"] == "failed" and c.loc["n8", "attempts"] == 3 and "gave up after 3" in c.loc["n8", "error"]
    ok = answers[(answers.note_id == "n0") & (answers.status == "ok")]
    assert dict(zip(ok.code, ok.quote)) == {"E11.9": "type 2 diabetes", "I10": "essential hypertension"}
    # same cache and resume rules as Gemini: a rerun asks only what failed for transport reasons
    oserver.reset()
    _, again = run(reqs(9), openai(oserver), tmp_path)
    assert oserver.hits == 2 and set(again[~again.cached].note_id) == {"n7", "n8"}


def test_openai_response_format_flag_and_keyless_server(oserver, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = reqs(1)[0].prompt
    for fmt, expect in (("json_object", {"type": "json_object"}), ("none", None)):
        b = llm.OpenAIBackend("m", oserver.base_url, response_format=fmt, local_endpoint=True)
        assert not b.remote and b.generate(p).finish_reason == "STOP"  # local endpoint: no clearance needed
        sent = oserver.requests[-1]
        assert sent["body"].get("response_format") == expect and "Authorization" not in sent["headers"]
    with pytest.raises(llm.LLMConfigError, match="base_url"):
        llm.make_backend(config.LLM(backend="openai", model="m"))
    with pytest.raises(llm.LLMConfigError, match="response_format"):
        llm.OpenAIBackend("m", oserver.base_url, response_format="xml")
    with pytest.raises(config.ConfigError, match="response_format"):
        config.load_profile("default", {"rationales": {"llm": {"response_format": "xml"}}})


# --------------------------------------------------------------------------------------------
# Gemini on Vertex AI
# --------------------------------------------------------------------------------------------
def _token_credentials(token: str = "ya29.fake-token"):
    import google.oauth2.credentials

    expiry = datetime.datetime.utcnow() + datetime.timedelta(hours=1)
    return google.oauth2.credentials.Credentials(token=token, expiry=expiry)


def test_gemini_vertex_ai_mode(gserver, tmp_path, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    b = llm.GeminiBackend("gemini-2.0-flash", base_url=gserver.base_url, vertexai=True, project="my-proj",
                          location="europe-west4", credentials=_token_credentials(), timeout_s=1.0)
    assert b.remote and "vertexai=True" in repr(b) and "ya29" not in repr(b)
    gserver.script("[note 1]", Reply.error(429, retry_after="0.2"), Reply.rationales({"I10": ["essential hypertension"]}))
    gserver.script("[note 2]", Reply.blocked_prompt())
    answers, calls = run(reqs(3), b, tmp_path)
    r = gserver.requests[0]
    assert r["path"] == "/v1beta1/projects/my-proj/locations/europe-west4/publishers/google/models/gemini-2.0-flash:generateContent"
    assert r["headers"]["Authorization"] == "Bearer ya29.fake-token" and "x-goog-api-key" not in {k.lower() for k in r["headers"]}
    c = calls.set_index("note_id")
    assert c.loc["n0", "status"] == "ok" and c.loc["n1", "attempts"] == 2 and c.loc["n2", "status"] == "blocked"
    assert b"ya29" not in pickle.dumps(b)
    with pytest.raises(llm.LLMConfigError, match="project"):
        llm.GeminiBackend(vertexai=True, location="europe-west4")
    cfg = config.LLM(backend="gemini", vertexai=True, project="p", location="us-central1")
    vb = llm.make_backend(cfg, credentialed=False)
    assert vb.vertexai and vb.project == "p" and vb.api_version == "v1beta1"
    with pytest.raises(config.ConfigError, match="credentials"):  # credentials never come from a profile
        config.load_profile("default", {"rationales": {"llm": {"credentials": "/key.json"}}})


# --------------------------------------------------------------------------------------------
# the local backend: verbatim decoding and batched guided decoding (a tiny random Llama over a
# character tokenizer: real transformers forward passes, KV caches and masks, in a second)
# --------------------------------------------------------------------------------------------
class CharTok:
    """Token = one ASCII character (id = its code); id 0 ends the turn; 1 pads."""

    pad_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) for ch in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join("" if i < 2 else chr(i) for i in ids)


def tiny_llama(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return LlamaForCausalLM(cfg).eval()


NOTES = ["Pt with type 2 diabetes on metformin; essential hypertension on lisinopril.",
         "Chest pain ruled out. HbA1c 8.1, diabetes type 2. BP 160/95: hypertension.",
         "T2DM controlled; HTN on amlodipine 5 mg daily."]


def test_verbatim_index_allows_only_continuations_of_the_note():
    tok = CharTok()
    idx = llm.VerbatimIndex("Type 2  Diabetes\nmellitus, on metformin.", [tok.decode([i]) for i in range(128)])
    assert idx.note == "type 2 diabetes mellitus, on metformin."  # case and white space runs normalised
    chars = lambda ids: {chr(t) for t in ids if t >= 2}
    assert chars(idx.allowed("type 2 d")) == {"i", "I"}  # the next letter (any case); no closing inside a word
    spaces = {chr(i) for i in range(2, 128) if chr(i).isspace()}  # every white space is one space in the note
    assert chars(idx.allowed("type 2 diabetes")) == spaces | {'"'}  # a space, or a stop closing the quote
    assert idx.can_close("Type 2 Diabetes") and not idx.can_close("Type 2 Diab") and not idx.can_close("")
    opening = chars(idx.allowed(""))
    assert {"t", "T", "2", "d", "D", "m", ",", " "} <= opening  # word starts (and punctuation, spaces)
    assert not {"y", "i", "a", '"'} & opening  # never from inside a word, never an empty quote
    assert idx.allowed("type 3") == []  # not in the note: nothing continues it
    assert idx.allowed("ype") == []  # in the note, but starting inside a word
    assert idx.original("TYPE 2 diabetes") == "Type 2  Diabetes"  # the note's own spelling and spacing
    assert idx.longest_prefix_in_note("Diabetes mellitus x").strip() == "Diabetes mellitus"
    assert idx.longest_prefix_in_note("Diabetes melli").strip() == "Diabetes"  # whole words only


def test_verbatim_quotes_are_substrings_and_batched_equals_single():
    import torch

    tok, lm = CharTok(), tiny_llama()
    pieces = [tok.decode([i]) for i in range(128)]
    codes = ["E11.9", "I10"]
    prompts = [(tok(f"<note>{n}</note> quote:")["input_ids"], codes, llm.VerbatimIndex(n, pieces)) for n in NOTES]
    opts = dict(max_quote_tokens=12, max_quotes_per_code=2, max_new_tokens=60, eos_ids=[0])
    with torch.inference_mode():
        single = [guided_answer(lm, tok, p, c, verbatim=v, **opts) for p, c, v in prompts]
        batched = guided_answers_batched(lm, tok, prompts, pad_id=1, **opts)
        free = [guided_answer(lm, tok, p, c, **opts) for p, c, _ in prompts]
    assert batched == single
    n_quotes = 0
    for (text, n_out, finish), note_text in zip(single, NOTES):
        obj = json.loads(text)
        assert not llm.validate(obj, llm.response_schema()) and 0 < n_out <= 60
        for r in obj["rationales"]:
            for q in r["quotes"]:
                n_quotes += 1
                assert q in note_text  # verbatim, as the note spells it
                i = note_text.index(q)  # and whole words: never cut inside a word
                assert (i == 0 or not note_text[i - 1].isalnum() or not q[0].isalnum())
                assert (i + len(q) == len(note_text) or not note_text[i + len(q)].isalnum() or not q[-1].isalnum())
    assert n_quotes >= 3
    # without the constraint this random model writes text that is not in the notes
    free_quotes = [q for text, _, _ in free for r in json.loads(text)["rationales"] for q in r["quotes"]]
    assert any(not any(q in n for n in NOTES) for q in free_quotes)


# --------------------------------------------------------------------------------------------
# the dry run
# --------------------------------------------------------------------------------------------
def test_dry_run_counts_calls_tokens_and_cost_before_any_call(gserver, tmp_path, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    cfg = config.LLM(backend="gemini", base_url=gserver.base_url, max_output_tokens=1000,
                     price_per_million_in=2.0, price_per_million_out=10.0)
    backend = llm.plan_backend(cfg, credentialed=False)  # no API key needed to plan
    requests = reqs(3) + reqs(1)  # the 4th repeats the 1st: one call for both
    plan = llm.plan_llm(requests, backend, tmp_path / "cache", cfg.price_per_million_in, cfg.price_per_million_out)
    chars = sum(len(r.prompt.system) + len(r.prompt.user) for r in requests[:3])
    assert plan["requests"] == 4 and plan["cached"] == 0 and plan["calls"] == 3 and plan["input_count"] == "estimate"
    assert plan["cost_basis"] == "profile prices"
    assert plan["input_tokens"] == pytest.approx(chars / 4, abs=3)
    assert plan["output_tokens_expected"] == 3 * 2 * llm.OUTPUT_TOKENS_PER_CODE and plan["output_tokens_max"] == 3000
    cost = plan["input_tokens"] * 2e-6 + 240 * 10e-6
    assert plan["cost_usd_expected"] == pytest.approx(cost, abs=1e-6)
    assert plan["cost_usd_max"] == pytest.approx(2 * (plan["input_tokens"] * 2e-6 + 3000 * 10e-6), abs=1e-6)
    assert gserver.hits == 0
    # after a run, the cached answers are not planned again
    run(reqs(2), gemini(gserver, max_output_tokens=1000), tmp_path)
    plan2 = llm.plan_llm(requests, gemini(gserver, max_output_tokens=1000), tmp_path / "cache", 2.0, 10.0)
    assert plan2["cached"] == 3 and plan2["calls"] == 1
    table = llm.plan_table([{"teacher": "zero", **plan}, {"teacher": "few", **plan2}])
    total = table.set_index("teacher").loc["total"]
    assert total.calls == 4 and total.cost_usd_max == pytest.approx(plan["cost_usd_max"] + plan2["cost_usd_max"])
    assert total.input_count == "estimate"


def test_dry_run_local_backend_counts_with_its_tokenizer(smollm_tokenizer):
    b = llm.LocalBackend()
    b._tok = smollm_tokenizer  # what _tokenizer() loads alone (the session's; loading it costs ~9 s)
    plan = llm.plan_llm(reqs(2), b, None, 0.0, 0.0)
    tok = b._tokenizer()
    p = reqs(1)[0].prompt
    rendered = tok.apply_chat_template([{"role": "system", "content": p.system}, {"role": "user", "content": p.user}],
                                       tokenize=False, add_generation_prompt=True)
    n = len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert plan["input_count"] == "tokenizer" and plan["input_tokens"] == pytest.approx(2 * n, abs=2)
    assert b._lm is None  # the model itself is not loaded to count
    plan = llm.plan_llm(reqs(2), b, None, 2.0, 10.0)
    assert plan["cost_usd_max"] == 0.0 and plan["cost_basis"].startswith("not billed")  # runs here: no per-token bill
    assert plan["output_tokens_expected"] == 2 * min(2 * llm.OUTPUT_TOKENS_PER_CODE, b.max_new_tokens)


# --------------------------------------------------------------------------------------------
# steps: the guard decides from the profile; the dry run of a notebook's teachers
# --------------------------------------------------------------------------------------------
def _tiny_ds():
    docs = pd.DataFrame({  # an older / hand-built table: no "credentialed" column
        "note_id": ["t1", "p1", "e1"], "text": ["fever and cough", "cough since monday", "cough again today"],
        "codes": [["R05"], ["R05"], ["R05"]], "split": ["train", "train", "test"],
        "annotated": [True, True, True], "fewshot": [False, True, False],
    })
    spans = pd.DataFrame({"note_id": ["p1", "e1"], "code": ["R05"] * 2, "start": [0, 0], "end": [5, 5],
                          "granularity": ["mention"] * 2, "source": ["human"] * 2})
    return SimpleNamespace(docs=docs, spans=spans, codes=pd.DataFrame({"code": ["R05"], "description": ["Cough"]}))


def test_steps_llm_rationales_guard_reads_the_profile(gserver, tmp_path, monkeypatch):
    from rationale_kit.workbook.protocols.rationales import llm_plan, llm_rationales

    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    ds = _tiny_ds()
    llm_over = {"backend": "gemini", "base_url": gserver.base_url, "max_retries": 0}
    mimic_like = config.load_profile("smoke", {"common": {"dataset": "mimic", "progress": False},
                                               "rationales": {"llm": llm_over}})
    with pytest.raises(llm.CredentialedDataError):
        llm_rationales(ds, ds.docs[ds.docs.note_id == "e1"], mimic_like, tmp_path / "c", {"llm_zero": 0})
    assert gserver.hits == 0
    public = config.load_profile("smoke", {"common": {"progress": False}, "rationales": {"llm": llm_over}})
    quotes, calls = llm_rationales(ds, ds.docs[ds.docs.note_id == "e1"], public, tmp_path / "c", {"llm_zero": 0})
    assert gserver.hits == 1 and calls.status.tolist() == ["ok"]
    plan = llm_plan(ds, ds.docs[ds.docs.note_id == "e1"], public, tmp_path / "c", {"llm_zero": 0, "llm_few": 1})
    p = plan.set_index("teacher")
    assert p.loc["llm_zero", "cached"] == 1 and p.loc["llm_zero", "calls"] == 0  # answered above
    assert p.loc["llm_few", "calls"] == 1 and p.loc["total", "calls"] == 1 and gserver.hits == 1


def test_replay_file_with_a_damaged_line_still_loads(tmp_path, caplog):
    rec = tmp_path / "r.jsonl"
    good = {"sha": "abc", "text": "{}", "backend": "gemini", "model": "m"}
    rec.write_bytes(b'{"sha": "x\xff"}\n' + (json.dumps(good) + "\n").encode() + b'{"sha": "torn')
    caplog.set_level(logging.WARNING)
    r = llm.ReplayBackend(rec)
    assert len(r) == 1 and f"{rec}:1" in caplog.text and f"{rec}:3" in caplog.text
