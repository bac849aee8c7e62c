"""The backend for any OpenAI-compatible chat-completions server (vLLM, Ollama, ...), through
``httpx``."""
from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any, Optional

from rationale_kit.rationales.llm.backends.base import AsyncBackend, parse_retry_after
from rationale_kit.rationales.llm.errors import (
    LLMConfigError, MalformedAnswerError, PermanentLLMError, TimeoutLLMError, TransientLLMError,
    UnsupportedRequestError,
)
from rationale_kit.rationales.llm.response import LLMResponse
from rationale_kit.rationales.llm.prompting import Prompt, response_schema, short_sha


#: an error saying the prompt is longer than the server's context (llama-cpp-python and vLLM
#: "maximum context length", llama-server "exceeds the available context size", OpenAI
#: "context_length_exceeded", "context window")
_CONTEXT_RE = re.compile(r"maximum context length|context[ _](?:window|size|length)|context_length_exceeded",
                         re.IGNORECASE)


class OpenAIBackend(AsyncBackend):
    """Any OpenAI-compatible chat-completions server (vLLM, SGLang, Ollama, llama.cpp server, TGI,
    Azure OpenAI, OpenAI): ``POST {base_url}/chat/completions`` with the system and user messages,
    through ``httpx`` (no ``openai`` package needed).

    * ``base_url``: the API root, e.g. ``http://localhost:8000/v1`` (vLLM), ``http://localhost:11434/v1``
      (Ollama). ``api_key`` defaults to ``$OPENAI_API_KEY``; sent as ``Authorization: Bearer``
      only when set, and kept out of every repr, log, cache, record file and pickle.
    * ``response_format``: ``json_schema`` sends the answer schema as
      ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` (vLLM and Ollama
      constrain decoding with it), ``json_object`` asks for JSON without a schema, ``none`` sends
      nothing (the prompt alone). The answer is checked and repaired the same way in every case.
    * ``local_endpoint=True`` says the server runs on this machine or the user's own network, so it
      is not a remote third party (``remote`` False): only the user can say so, it is never
      guessed from the URL.

    * ``output_token_param``: the field of the answer budget, ``max_tokens`` (vLLM, Ollama,
      llama.cpp) or ``max_completion_tokens`` (OpenAI, Azure OpenAI; reasoning models reject
      ``max_tokens``).
    * With ``json_schema`` the schema is sent in the form OpenAI's strict mode requires
      (:func:`strict_schema`: every object ``additionalProperties: false``, every property required).

    Errors: 408, 409, 429 and 5xx are retried (honouring ``retry-after-ms`` and ``Retry-After``:
    seconds or an HTTP date), time-outs (:class:`TimeoutLLMError`: the runner then lowers the
    requests in flight) and dropped connections too; other statuses are permanent. An error (4xx or
    5xx) saying the prompt is longer than the server's context is permanent whatever its status
    (that note fails at once, the error names ``max_note_chars``). An error (4xx or
    5xx) saying the server does not support the request's ``response_format`` or
    ``max_tokens``/``max_completion_tokens`` field raises :class:`UnsupportedRequestError`, which
    stops the run with the setting to change (no retries: no request can succeed). A 200 answer
    that is not a chat completion (a ``message`` or ``usage`` of the wrong type, a token count that
    is not a number) is a :class:`MalformedAnswerError`: a failed attempt of that request.
    ``finish_reason`` ``length`` is reported as ``MAX_TOKENS`` (a cut answer), ``content_filter``
    and a ``refusal`` as a blocked answer.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: Optional[str] = None,
        timeout_s: float = 60.0,
        *,
        temperature: float = 0.0,
        max_output_tokens: int = 8192,
        response_format: str = "json_schema",
        local_endpoint: bool = False,
        output_token_param: str = "max_tokens",
        transport: Any = None,
        prompts_dir: str | os.PathLike | None = None,
        credentialed: Optional[bool] = None,
        allow_remote_credentialed_data: bool = False,
    ):
        if not base_url:
            raise LLMConfigError("backend 'openai' needs rationales.llm.base_url (e.g. http://localhost:8000/v1)")
        if response_format not in ("json_schema", "json_object", "none"):
            raise LLMConfigError(f"response_format must be json_schema, json_object or none, not {response_format!r}")
        if output_token_param not in ("max_tokens", "max_completion_tokens"):
            raise LLMConfigError(f"output_token_param must be max_tokens or max_completion_tokens, not {output_token_param!r}")
        self.output_token_param = output_token_param
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.temperature = temperature
        self.max_output_tokens = int(max_output_tokens)
        self.response_format = response_format
        self.local_endpoint = bool(local_endpoint)
        self.remote = not self.local_endpoint
        self.transport = transport
        self.credentialed = credentialed
        self.allow_remote_credentialed_data = bool(allow_remote_credentialed_data)
        self._schema = strict_schema(response_schema(prompts_dir))
        self._key = api_key or os.environ.get("OPENAI_API_KEY") or None
        self._client: Any = None
        self._client_loop: Any = None

    def __repr__(self) -> str:
        return (f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, "
                f"local_endpoint={self.local_endpoint}, response_format={self.response_format!r})")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_key", None)
        state["_client"] = state["_client_loop"] = state["transport"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._key = os.environ.get("OPENAI_API_KEY") or None

    def settings(self) -> dict:
        return {"temperature": self.temperature, "max_output_tokens": self.max_output_tokens,
                **({"output_token_param": self.output_token_param} if self.output_token_param != "max_tokens" else {}),
                "response_format": self.response_format, "base_url": self.base_url,
                "schema": short_sha(json.dumps(self._schema, sort_keys=True)) if self.response_format == "json_schema" else None}

    def secrets(self) -> list[str]:
        return [self._key] if self._key else []

    def request_body(self, prompt: Prompt) -> dict:
        """The JSON body of one chat-completions request."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}],
            "temperature": self.temperature,
            self.output_token_param: self.max_output_tokens,
        }
        if self.response_format == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "rationales", "schema": self._schema, "strict": True}}
        elif self.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    async def agenerate(self, prompt: Prompt) -> LLMResponse:
        self._check_clearance()
        return await self._send(prompt)

    async def _send(self, prompt: Prompt) -> LLMResponse:
        import httpx

        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            kw: dict[str, Any] = {"timeout": httpx.Timeout(self.timeout_s)}
            if self.transport is not None:
                kw["transport"] = self.transport
            self._client, self._client_loop = httpx.AsyncClient(**kw), loop
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            async with asyncio.timeout(self.timeout_s * 1.5 + 1.0):
                resp = await self._client.post(f"{self.base_url}/chat/completions", json=self.request_body(prompt),
                                               headers=headers)
        except (asyncio.TimeoutError, TimeoutError, httpx.TimeoutException) as exc:
            raise TimeoutLLMError(f"time-out after {self.timeout_s:g} s ({type(exc).__name__}; "
                                  "rationales.llm.timeout_s, quote --timeout)") from None
        except httpx.TransportError as exc:
            raise TransientLLMError(self.scrub(f"{type(exc).__name__}: {exc}")) from None
        if resp.status_code != 200:
            try:
                detail = resp.json().get("error", resp.text)
                detail = detail.get("message", detail) if isinstance(detail, dict) else detail
            except (ValueError, AttributeError):
                detail = resp.text
            msg = self.scrub(f"HTTP {resp.status_code}: {str(detail)[:500]}")
            unsupported = self._unsupported(resp.status_code, str(detail))
            if unsupported:
                raise UnsupportedRequestError(" ".join(f"{self.base_url} rejects the request ({msg}): {unsupported}".split()))
            if _CONTEXT_RE.search(str(detail)):  # this prompt can never fit: not retried, whatever the status
                raise PermanentLLMError(self.scrub(
                    f"HTTP {resp.status_code}: the prompt and answer budget do not fit the server's context (cut notes "
                    f"with rationales.llm.max_note_chars, lower rationales.llm.max_output_tokens, or give the server "
                    f"a larger context): {str(detail)[:400]}"),
                    status=resp.status_code)
            if resp.status_code in (408, 409, 429) or resp.status_code >= 500:
                raise TransientLLMError(msg, status=resp.status_code, retry_after=retry_after(resp.headers))
            raise PermanentLLMError(msg, status=resp.status_code)
        try:
            data = resp.json()
        except ValueError:
            raise MalformedAnswerError(self.scrub(f"the server's answer is not JSON: {resp.text[:200]!r}")) from None
        return self._to_response(data)

    def _unsupported(self, status: int, detail: str) -> Optional[str]:
        """What to change when an error says the server does not support a field this backend
        sends (None: another error). Only 4xx and 500 (llama-cpp-python's validation errors)."""
        if not (400 <= status < 500 or status == 500):
            return None
        d = detail.lower()
        if self.response_format != "none" and ("response_format" in d or "json_schema" in d or "json_object" in d
                                               or "'text' or 'json_object'" in d):
            alt = "json_object" if self.response_format == "json_schema" else "none"
            return (f"it does not support response_format {self.response_format!r}; set rationales.llm."
                    f"response_format: {alt} in the profile (quote --response-format {alt}); answers are "
                    f"checked and repaired the same way")
        if self.output_token_param in d and ("unsupported" in d or "not supported" in d or "unrecognized" in d
                                              or "extra inputs" in d or "use '" in d or "instead" in d):
            alt = "max_completion_tokens" if self.output_token_param == "max_tokens" else "max_tokens"
            return (f"it does not accept {self.output_token_param!r}; set rationales.llm.output_token_param: {alt} "
                    f"in the profile")
        return None

    @staticmethod
    def _to_response(data: Any) -> LLMResponse:
        """An :class:`LLMResponse` of a chat-completion body; :class:`MalformedAnswerError` for
        anything that is not one (checked field by field, never coerced)."""
        def bad(what: str) -> MalformedAnswerError:
            return MalformedAnswerError(f"the server's answer is not a chat completion: {what}")

        if not isinstance(data, dict):
            raise bad(f"a JSON {type(data).__name__}")
        usage = data.get("usage")
        if usage is None:
            usage = {}
        if not isinstance(usage, dict):
            raise bad(f"'usage' is a {type(usage).__name__}")

        def count(key: str) -> int:
            v = usage.get(key)
            if v is None:
                return 0
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(f"usage.{key} is {v!r}, not a count")
            return v

        n_in, n_out = count("prompt_tokens"), count("completion_tokens")
        choices = data.get("choices")
        if choices is None or choices == []:
            if "error" in data:
                raise bad(f"an error object {str(data['error'])[:200]!r}")
            return LLMResponse("", None, n_in, n_out)
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise bad("'choices' is not a list of objects")
        c = choices[0]
        msg = c.get("message")
        if msg is None:
            msg = {}
        if not isinstance(msg, dict):
            raise bad(f"'choices[0].message' is a {type(msg).__name__}")
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            raise bad(f"'message.content' is a {type(content).__name__}")
        reason = c.get("finish_reason")
        if reason is not None and not isinstance(reason, str):
            raise bad(f"'finish_reason' is a {type(reason).__name__}")
        finish = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "CONTENT_FILTER",
                  "tool_calls": "TOOL_CALLS"}.get(reason, reason)
        text = content or ""
        refusal = msg.get("refusal")
        blocked = None
        if refusal:
            blocked = f"REFUSAL: {str(refusal)[:200]}"
        elif finish == "CONTENT_FILTER" and not text.strip():
            blocked = "CONTENT_FILTER"
        return LLMResponse(text or "", finish, n_in, n_out, blocked)

    async def aclose(self) -> None:
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


def retry_after(headers: Any) -> Optional[float]:
    """Seconds to wait from a response's ``retry-after-ms`` (OpenAI, milliseconds) or
    ``Retry-After`` header (:func:`parse_retry_after`); None when neither is readable."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            v = float(ms)
            if v == v and v >= 0:
                return v / 1000.0
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def strict_schema(schema: Any) -> Any:
    """``schema`` in the form OpenAI's structured outputs require with ``strict: true``: every
    object schema gets ``additionalProperties: false`` and lists all its properties as required
    (a copy; the input is not changed)."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if out.get("type") == "object" or "properties" in out:
        props = out.get("properties") or {}
        out["additionalProperties"] = False
        out["required"] = list(props)
    return out
