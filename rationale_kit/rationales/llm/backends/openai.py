"""The backend for any OpenAI-compatible chat-completions server (vLLM, Ollama, ...), through
``httpx``."""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Optional

from rationale_kit.rationales.llm.backends.base import AsyncBackend, parse_retry_after
from rationale_kit.rationales.llm.errors import LLMConfigError, PermanentLLMError, TransientLLMError
from rationale_kit.rationales.llm.response import LLMResponse
from rationale_kit.rationales.llm.prompting import Prompt, response_schema, short_sha


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

    Errors: 408, 409, 429 and 5xx are retried (honouring ``Retry-After``: seconds or an HTTP
    date), time-outs and dropped connections too; other statuses are permanent. ``finish_reason``
    ``length`` is reported as ``MAX_TOKENS`` (a cut answer), ``content_filter`` and a ``refusal``
    as a blocked answer.
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
        transport: Any = None,
        prompts_dir: str | os.PathLike | None = None,
        credentialed: Optional[bool] = None,
        allow_remote_credentialed_data: bool = False,
    ):
        if not base_url:
            raise LLMConfigError("backend 'openai' needs rationales.llm.base_url (e.g. http://localhost:8000/v1)")
        if response_format not in ("json_schema", "json_object", "none"):
            raise LLMConfigError(f"response_format must be json_schema, json_object or none, not {response_format!r}")
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
        self._schema = response_schema(prompts_dir)
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
            "max_tokens": self.max_output_tokens,
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
            raise TransientLLMError(f"time-out after {self.timeout_s:g} s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TransientLLMError(self.scrub(f"{type(exc).__name__}: {exc}")) from None
        if resp.status_code != 200:
            try:
                detail = resp.json().get("error", resp.text)
                detail = detail.get("message", detail) if isinstance(detail, dict) else detail
            except (ValueError, AttributeError):
                detail = resp.text
            msg = self.scrub(f"HTTP {resp.status_code}: {str(detail)[:500]}")
            if resp.status_code in (408, 409, 429) or resp.status_code >= 500:
                raise TransientLLMError(msg, status=resp.status_code,
                                        retry_after=parse_retry_after(resp.headers.get("retry-after")))
            raise PermanentLLMError(msg, status=resp.status_code)
        try:
            data = resp.json()
        except ValueError:
            raise PermanentLLMError(self.scrub(f"the server's answer is not JSON: {resp.text[:200]!r}")) from None
        return self._to_response(data)

    @staticmethod
    def _to_response(data: Any) -> LLMResponse:
        if not isinstance(data, dict):
            raise PermanentLLMError(f"the server's answer is a {type(data).__name__}, not a chat completion")
        usage = data.get("usage") or {}
        n_in = int(usage.get("prompt_tokens") or 0)
        n_out = int(usage.get("completion_tokens") or 0)
        choices = data.get("choices") or []
        if not choices:
            return LLMResponse("", None, n_in, n_out)
        c = choices[0] if isinstance(choices[0], dict) else {}
        msg = c.get("message") or {}
        finish = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "CONTENT_FILTER",
                  "tool_calls": "TOOL_CALLS"}.get(c.get("finish_reason"), c.get("finish_reason"))
        text = msg.get("content") if isinstance(msg.get("content"), str) else ""
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
