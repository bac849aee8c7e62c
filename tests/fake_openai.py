"""A local stand-in for an OpenAI-compatible chat-completions server (vLLM, Ollama, llama.cpp
server...), for tests: ``POST /v1/chat/completions`` on ``127.0.0.1`` (a free port), nothing
beyond loopback.

It is :class:`fake_gemini.FakeGemini` with the OpenAI wire format: scripted replies per prompt
(``server.script("NOTE-7", OAReply.error(429, retry_after="2"), OAReply.rationales({...}))``),
a default responder that quotes the first words of the note for every code of the prompt, and
faults: HTTP errors with or without ``Retry-After``, time-outs, malformed, truncated
(``finish_reason: length``) and schema-violating answers, refusals (``message.refusal``) and
content filtering. ``base_url`` ends in ``/v1``; requests are kept in ``requests``.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_gemini import _CODES_RE, _NOTE_RE, FakeGemini, Reply  # noqa: E402

_OA_PATH_RE = re.compile(r"^/v1/chat/completions$")


class OAReply:
    """Constructors of OpenAI-shaped :class:`Reply` objects."""

    @staticmethod
    def text(content: str, finish: str = "stop", in_tokens: int = 100, out_tokens: int | None = None,
             refusal: str | None = None) -> Reply:
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if refusal is not None:
            msg["refusal"] = refusal
        out = max(1, len(content) // 4) if out_tokens is None else out_tokens
        body = {"id": "chatcmpl-fake", "object": "chat.completion", "model": "fake",
                "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                "usage": {"prompt_tokens": in_tokens, "completion_tokens": out, "total_tokens": in_tokens + out}}
        return Reply(200, body, kind="ok")

    @staticmethod
    def json(obj: Any, finish: str = "stop") -> Reply:
        return OAReply.text(json.dumps(obj), finish=finish)

    @staticmethod
    def rationales(mapping: dict[str, list[str]]) -> Reply:
        return OAReply.json({"rationales": [{"code": c, "quotes": q} for c, q in mapping.items()]})

    @staticmethod
    def error(status: int, message: str = "injected fault", retry_after: str | None = None) -> Reply:
        body = {"error": {"message": message, "type": "fake_error", "code": status}}
        return Reply(status, body, kind=f"http_{status}",
                     headers={"Retry-After": retry_after} if retry_after is not None else {})

    @staticmethod
    def timeout(seconds: float = 5.0) -> Reply:
        r = OAReply.json({"rationales": []})
        r.delay, r.kind = seconds, "timeout"
        return r

    @staticmethod
    def truncated(obj: Any, keep: float = 0.7) -> Reply:
        s = json.dumps(obj)
        r = OAReply.text(s[: max(1, int(len(s) * keep))], finish="length")
        r.kind = "truncated"
        return r

    @staticmethod
    def schema_violation() -> Reply:
        r = OAReply.json({"answers": [{"code": "E11.9", "quote": 5}]})
        r.kind = "schema_violation"
        return r

    @staticmethod
    def refusal(message: str = "I can't help with that.") -> Reply:
        r = OAReply.text("", refusal=message)
        r.kind = "refusal"
        return r

    @staticmethod
    def content_filter() -> Reply:
        r = OAReply.text("", finish="content_filter")
        r.kind = "blocked"
        return r


def chat_text(body: dict) -> str:
    """All message text of a chat-completions request."""
    return "\n".join(str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict))


def quote_first_words(body: dict, n_words: int = 4) -> Reply:
    """Default responder: the first ``n_words`` words of the note for every code of the prompt."""
    text = chat_text(body)
    codes_block = _CODES_RE.findall(text)
    note = _NOTE_RE.findall(text)
    codes = re.findall(r"^- (\S+?):", codes_block[-1], re.M) if codes_block else []
    quote = " ".join(note[-1].split()[:n_words]) if note else ""
    return OAReply.rationales({c: [quote] if quote else [] for c in codes})


class FakeOpenAI(FakeGemini):
    """A threaded loopback chat-completions server; a context manager like :class:`FakeGemini`."""

    path_re = _OA_PATH_RE

    @staticmethod
    def prompt_of(body: dict) -> str:
        return chat_text(body)

    def __init__(self, latency: float = 0.0, responder=None):
        super().__init__(latency=latency, responder=responder or quote_first_words)

    @property
    def base_url(self) -> str:  # the API root, as vLLM and Ollama give it
        return super().base_url + "v1"
