"""The OpenAI-compatible backend against request/response pairs in the wire formats of real servers
(llama.cpp llama-server, llama-cpp-python, vLLM, Ollama, OpenAI: tests/fixtures/openai_wire.json,
DOCUMENTATION-DERIVED: written from their documentation and API references, not recorded),
malformed answers, and a server that queues requests. Pairs recorded from real servers are
replayed by tests/test_llm_recorded.py.

Each fixture is replayed through ``httpx.MockTransport`` (no sockets): the request our backend sends
is kept and checked, the recorded answer is given back byte for byte.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_openai import FakeOpenAI, OAReply  # noqa: E402

from rationale_kit.rationales import llm  # noqa: E402
from rationale_kit.rationales.llm.backends.openai import retry_after, strict_schema  # noqa: E402

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "openai_wire.json").read_text())["cases"]
CODES = [("E11.9", "Type 2 diabetes mellitus without complications"), ("I10", "Essential (primary) hypertension")]
NOTE = "Patient with type 2 diabetes on metformin. Blood pressure high, essential hypertension."
ANSWER = json.dumps({"rationales": [{"code": "E11.9", "quotes": ["type 2 diabetes"]},
                                    {"code": "I10", "quotes": ["essential hypertension"]}]})


def reqs(n: int = 1) -> list[llm.LLMRequest]:
    return [llm.LLMRequest(f"n{i}", llm.build_prompt(f"[note {i}] {NOTE}", CODES), tuple(CODES)) for i in range(n)]


def _fill(body):
    if isinstance(body, dict):
        return {k: _fill(v) for k, v in body.items()}
    if isinstance(body, list):
        return [_fill(v) for v in body]
    return ANSWER if body == "ANSWER" else body


class Replayer:
    """An httpx transport giving back ``responses`` in order (the last one repeats); keeps requests."""

    def __init__(self, responses: list[dict]):
        self.responses, self.requests = responses, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content))
        r = self.responses[min(len(self.requests) - 1, len(self.responses) - 1)]
        return httpx.Response(r["status"], headers=r["headers"], content=json.dumps(_fill(r["body"])).encode())


def backend(transport, **kw) -> llm.OpenAIBackend:
    return llm.OpenAIBackend("some-model", "http://server.test/v1", api_key="sk-test", timeout_s=5,
                             transport=httpx.MockTransport(transport), local_endpoint=True, **kw)


def run(requests, b, tmp_path, **kw):
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    return llm.run_llm(requests, b, cache_dir=tmp_path / "cache", progress=False, credentialed=False, **kw)


def _strict_ok(schema) -> bool:
    """OpenAI strict mode: every object schema has additionalProperties false and all properties required."""
    if isinstance(schema, list):
        return all(_strict_ok(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object":
        if schema.get("additionalProperties") is not False:
            return False
        if sorted(schema.get("required") or []) != sorted(schema.get("properties") or {}):
            return False
    return all(_strict_ok(v) for v in schema.values())


@pytest.mark.parametrize("case", FIXTURES, ids=[c["server"] for c in FIXTURES])
def test_recorded_server_answers(case, tmp_path):
    rep = Replayer(case["responses"])
    expect = case["expect"]
    if expect == "unsupported":
        with pytest.raises(llm.UnsupportedRequestError) as ei:
            run(reqs(), backend(rep), tmp_path, max_retries=3)
        msg = str(ei.value)
        assert all(m in msg for m in case["mentions"]), msg
        assert len(rep.requests) == 1  # never retried: no request of this format can succeed
        return
    answers, calls = run(reqs(), backend(rep), tmp_path, max_retries=2)
    c = calls.iloc[0]
    sent = rep.requests[0]
    assert sent["model"] == "some-model" and sent["max_tokens"] == 8192 and "max_completion_tokens" not in sent
    assert _strict_ok(sent["response_format"]["json_schema"]["schema"])
    if expect in ("ok", "retried_ok"):
        assert c.status == "ok", c.error
        assert answers.set_index("code").quote.to_dict() == {"E11.9": "type 2 diabetes", "I10": "essential hypertension"}
        if expect == "ok":
            assert c.attempts == 1 and (c.input_tokens, c.output_tokens) == (case["input_tokens"], case["output_tokens"])
        else:
            assert c.attempts == 2 and len(rep.requests) == 2
    else:
        assert c.status == "failed" and c.attempts == 1 and all(m in c.error for m in case["mentions"]), c.error


def test_sent_schema_is_valid_in_strict_mode():
    s = strict_schema(llm.response_schema())
    assert _strict_ok(s) and not _strict_ok(llm.response_schema())  # the file itself is not: the backend fixes it
    assert strict_schema(llm.response_schema()) == s and llm.response_schema() != s  # the input is not changed


def test_max_completion_tokens_option(tmp_path):
    ok = next(c for c in FIXTURES if c["server"] == "OpenAI")
    rep = Replayer(ok["responses"])
    b = backend(rep, output_token_param="max_completion_tokens", max_output_tokens=700)
    _, calls = run(reqs(), b, tmp_path)
    assert calls.status.tolist() == ["ok"]
    assert rep.requests[0]["max_completion_tokens"] == 700 and "max_tokens" not in rep.requests[0]
    # it changes the request, so it is part of the cache key
    assert llm.cache_key(b, reqs()[0].prompt) != llm.cache_key(backend(rep), reqs()[0].prompt)
    with pytest.raises(llm.LLMConfigError, match="output_token_param"):
        backend(rep, output_token_param="max_new_tokens")


def test_retry_after_ms_is_read_before_retry_after(tmp_path):
    assert retry_after(httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    assert retry_after(httpx.Headers({"retry-after-ms": "junk", "retry-after": "9"})) == 9.0
    assert retry_after(httpx.Headers({})) is None
    case = next(c for c in FIXTURES if c["server"] == "OpenAI (rate limited)")
    t0 = time.perf_counter()
    _, calls = run(reqs(), backend(Replayer(case["responses"])), tmp_path, backoff_max_s=5.0)
    assert calls.status.tolist() == ["ok"] and time.perf_counter() - t0 < 0.8  # 40 ms, not the 1 s of Retry-After


MALFORMED = {
    "message is a string": {"choices": [{"index": 0, "message": "hello", "finish_reason": "stop"}]},
    "usage is a string": {"choices": [{"index": 0, "message": {"content": ANSWER}}], "usage": "lots"},
    "prompt_tokens is 'abc'": {"choices": [{"message": {"content": ANSWER}}], "usage": {"prompt_tokens": "abc"}},
    "completion_tokens is 1.5": {"choices": [{"message": {"content": ANSWER}}], "usage": {"completion_tokens": 1.5}},
    "choices is an object": {"choices": {"0": {"message": {"content": ANSWER}}}},
    "choice is a string": {"choices": ["x"]},
    "content is a list": {"choices": [{"message": {"content": [1, 2]}}]},
    "body is a list": [1, 2, 3],
    "body is not JSON": "<html>502 Bad Gateway</html>",
    "error object with 200": {"error": {"message": "upstream failed"}},
}


@pytest.mark.parametrize("what", list(MALFORMED))
def test_a_malformed_answer_fails_that_note_only(what, tmp_path):
    """One garbage 200 answer among good ones: that note is retried per the policy and counted
    failed; every other note gets its answer (the run is not cancelled)."""
    bad = MALFORMED[what]
    with FakeOpenAI() as srv:
        raw = OAReply.text("x")
        raw.body = bad
        srv.script("[note 1]", *[raw] * 3)
        b = llm.OpenAIBackend("m", srv.base_url, api_key="sk-test", timeout_s=5, local_endpoint=True)
        answers, calls = run(reqs(4), b, tmp_path, max_retries=2, concurrency=4)
        c = calls.set_index("note_id")
        assert c.loc["n1", "status"] == "failed" and c.loc["n1", "attempts"] == 3, c.loc["n1", "error"]
        assert "gave up after 3 attempts" in c.loc["n1", "error"]
        assert c.drop("n1").status.eq("ok").all()
        assert set(answers[answers.note_id == "n1"].status) == {"failed"}
        # a failed request is not cached: a rerun asks it again (and only it)
        hits = srv.hits
        _, calls2 = run(reqs(4), b, tmp_path)
        assert srv.hits - hits == 1
    assert calls2.set_index("note_id").loc["n1", "status"] == "ok"


def test_any_backend_exception_fails_that_note_only(tmp_path):
    """A backend of any kind (Gemini SDK objects, the local model, a user's own) whose answer
    cannot be read: the note fails after the retries, the others are answered."""
    class Flaky(llm.Backend):
        name, model = "flaky", "m"

        def generate(self, prompt):
            if "[note 2]" in prompt.user:
                raise AttributeError("'str' object has no attribute 'get'")
            if "[note 3]" in prompt.user:
                return llm.LLMResponse(ANSWER, "STOP", "12", 3)  # a token count that is not a number
            return llm.LLMResponse(ANSWER, "STOP", 10, 3)

    _, calls = run(reqs(5), Flaky(), tmp_path, max_retries=1, concurrency=5)
    c = calls.set_index("note_id")
    assert c.loc["n2", "status"] == "failed" and "AttributeError" in c.loc["n2", "error"] and c.loc["n2", "attempts"] == 2
    assert c.loc["n3", "status"] == "failed" and "input_tokens" in c.loc["n3", "error"]
    assert c.drop(["n2", "n3"]).status.eq("ok").all()


def test_gemini_garbage_answer_fails_that_note_only(tmp_path):
    from fake_gemini import FakeGemini, Reply

    with FakeGemini() as srv:
        srv.script("[note 0]", *[Reply(200, {"candidates": "garbage", "usageMetadata": 7}, kind="bad")] * 2)
        b = llm.GeminiBackend(api_key="AIzaFAKE0123456789", base_url=srv.base_url, timeout_s=5)
        _, calls = run(reqs(3), b, tmp_path, max_retries=1)
    c = calls.set_index("note_id")
    assert c.loc["n0", "status"] == "failed" and c.loc["n0", "attempts"] == 2
    assert c.drop("n0").status.eq("ok").all()


def test_a_queueing_server_does_not_time_out_every_request(tmp_path, caplog):
    """A server that generates one answer at a time and queues the rest (llama-server with one
    slot): the client time-out counts the queueing, so with 8 in flight the later ones time out;
    the runner halves the requests in flight on a time-out, and every note is answered."""
    gen_s, timeout_s = 0.15, 0.4
    lock = asyncio.Lock()
    state = {"max_waiting": 0, "waiting": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        t0 = time.monotonic()
        state["waiting"] += 1
        state["max_waiting"] = max(state["max_waiting"], state["waiting"])
        try:
            async with lock:
                if time.monotonic() - t0 + gen_s > timeout_s:  # it would come back after the client gave up
                    raise httpx.ReadTimeout("timed out", request=request)
                await asyncio.sleep(gen_s)
        finally:
            state["waiting"] -= 1
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
        return httpx.Response(200, json=body)

    b = llm.OpenAIBackend("m", "http://q.test/v1", timeout_s=timeout_s, transport=httpx.MockTransport(handler),
                          local_endpoint=True)
    with caplog.at_level("WARNING"):
        _, calls = run(reqs(10), b, tmp_path, concurrency=8, max_retries=4)
    assert calls.status.eq("ok").all(), calls.error.tolist()
    assert "request(s) in flight from now on" in caplog.text


@pytest.mark.parametrize("status,message", [
    (400, "This model's maximum context length is 2048 tokens. However, you requested 2789 tokens (2693 in the "
          "messages, 96 in the completion). Please reduce the length of the messages or completion."),
    (400, "the request exceeds the available context size, try increasing it"),
    (500, "Requested tokens (2693) exceed context window of 2048"),
])
def test_a_prompt_longer_than_the_context_is_asked_once(status, message, tmp_path):
    """A context-length error cannot succeed on a retry, whatever its status (llama-cpp-python
    raised it as a 500 before 0.2.x): that note fails after one request, the error names the
    settings to change, and the other notes are asked."""
    rep = Replayer([{"status": status, "headers": {"content-type": "application/json"},
                     "body": {"error": {"message": message, "type": "invalid_request_error"}}}])
    _, calls = run(reqs(2), backend(rep), tmp_path, max_retries=3, concurrency=1)
    assert calls.status.tolist() == ["failed", "failed"] and calls.attempts.tolist() == [1, 1]
    assert len(rep.requests) == 2
    assert all("max_note_chars" in e and "max_output_tokens" in e and message[:30] in e for e in calls.error)
