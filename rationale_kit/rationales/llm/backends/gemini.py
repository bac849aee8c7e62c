"""The Gemini API backend (``google-genai`` async client; or Vertex AI), JSON mode with the
response schema; HTTP errors mapped to retried and permanent ones."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from typing import Any, Optional

from rationale_kit.rationales.llm.backends.base import AsyncBackend, parse_retry_after
from rationale_kit.rationales.llm.errors import (
    LLMConfigError, LLMError, MalformedAnswerError, PermanentLLMError, TimeoutLLMError, TransientLLMError,
)
from rationale_kit.rationales.llm.prompting import Prompt, response_schema, short_sha
from rationale_kit.rationales.llm.response import BLOCK_FINISH_REASONS, LLMResponse


def _enum_str(x: Any) -> Optional[str]:
    if x is None:
        return None
    return str(getattr(x, "value", x))


def _retry_delay(details: Any) -> Optional[float]:
    """The server's suggested delay (google.rpc.RetryInfo ``retryDelay: "12s"``), if any."""
    try:
        for d in (details.get("error", details) or {}).get("details", []) or []:
            delay = d.get("retryDelay") if isinstance(d, dict) else None
            if delay:
                return float(str(delay).rstrip("s"))
    except (AttributeError, ValueError, TypeError):
        return None
    return None


def _header(response: Any, name: str) -> Optional[str]:
    headers = getattr(response, "headers", None)
    try:
        return headers.get(name) if headers is not None else None
    except Exception:  # noqa: BLE001 - an odd response object: no header
        return None


class GeminiBackend(AsyncBackend):
    """The Gemini API through ``google-genai`` (async client), JSON mode with the response schema.

    ``api_key`` defaults to ``$GEMINI_API_KEY`` or ``$GOOGLE_API_KEY``; it is kept out of every
    repr, log, cache, record file and pickle (an answer that repeats it is masked too).

    **Vertex AI** (``vertexai=True``, ``project``, ``location``): the same models through a Google
    Cloud project (``POST {base}/v1beta1/projects/{project}/locations/{location}/publishers/google/
    models/{model}:generateContent``), the route PhysioNet's guidance names for credentialed data
    under a zero-retention set-up. No API key: credentials come from the environment as
    google-genai reads them (application-default credentials: ``gcloud auth application-default
    login`` or ``GOOGLE_APPLICATION_CREDENTIALS``), never from a profile; ``credentials`` (a
    ``google.auth`` credentials object) is for tests and embedding code only. ``base_url`` points the client elsewhere (tests use
    a local fake server); ``transport`` is an optional ``httpx``/``httpx2`` async transport handed
    to the HTTP client (tests, proxies). ``structured_output=False`` sends no response schema
    (for models or endpoints that reject one); the JSON mime type is still asked for.
    """

    name = "gemini"
    remote = True

    def __init__(
        self,
        model: str = "gemini-2.0-flash",
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        timeout_s: float = 60.0,
        transport: Any = None,
        *,
        temperature: float = 0.0,
        max_output_tokens: int = 8192,
        structured_output: bool = True,
        api_version: str = "v1beta",
        safety_settings: Optional[list] = None,
        prompts_dir: str | os.PathLike | None = None,
        vertexai: bool = False,
        project: Optional[str] = None,
        location: Optional[str] = None,
        credentials: Any = None,
        credentialed: Optional[bool] = None,
        allow_remote_credentialed_data: bool = False,
    ):
        self.model = model
        self.vertexai = bool(vertexai)
        self.project, self.location = project, location
        self._credentials = credentials
        self.credentialed = credentialed
        self.allow_remote_credentialed_data = bool(allow_remote_credentialed_data)
        self.base_url = base_url
        self.timeout_s = float(timeout_s)
        self.transport = transport
        self.temperature = temperature
        self.max_output_tokens = max_output_tokens
        self.structured_output = structured_output
        self.api_version = api_version
        self.safety_settings = safety_settings
        self._schema = response_schema(prompts_dir)
        if self.vertexai:
            if not project or not location:
                raise LLMConfigError("Gemini on Vertex AI needs rationales.llm.project and rationales.llm.location")
            if api_version == "v1beta":
                self.api_version = "v1beta1"
            self._key = None
        else:
            self._key = api_key or os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        if not self._key and not self.vertexai:
            raise LLMConfigError(
                "no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment "
                "(never in a profile or notebook), or use the local or replay backend"
            )
        self._client: Any = None
        self._client_loop: Any = None
        self._configs: dict[str, Any] = {}
        self._build_config("")  # imports google-genai and builds its models now, not in the first call

    def __repr__(self) -> str:
        where = f", vertexai=True, project={self.project!r}, location={self.location!r}" if self.vertexai else ""
        return f"GeminiBackend(model={self.model!r}, base_url={self.base_url!r}, timeout_s={self.timeout_s}{where})"

    def __getstate__(self) -> dict:  # never pickle the key, credentials or live clients
        state = dict(self.__dict__)
        state.pop("_key", None)
        state["_credentials"] = None
        state["_client"] = state["_client_loop"] = None
        state["transport"], state["_configs"] = None, {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._key = None if self.vertexai else (os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY"))

    def settings(self) -> dict:
        return {"temperature": self.temperature, "max_output_tokens": self.max_output_tokens,
                "structured_output": self.structured_output, "safety_settings": repr(self.safety_settings),
                "schema": short_sha(json.dumps(self._schema, sort_keys=True)) if self.structured_output else None}

    def secrets(self) -> list[str]:
        return [self._key] if self._key else []

    def _scrub(self, s: str) -> str:
        return self.scrub(s) or ""

    def _make_client(self) -> Any:
        from google import genai
        from google.genai import types

        opts: dict[str, Any] = {"timeout": max(1, int(self.timeout_s * 1000)), "api_version": self.api_version}
        if self.base_url:
            opts["base_url"] = self.base_url
        if self.transport is not None:
            opts["async_client_args"] = {"transport": self.transport}
        if self.vertexai:
            return genai.Client(vertexai=True, project=self.project, location=self.location,
                                credentials=self._credentials, http_options=types.HttpOptions(**opts))
        return genai.Client(api_key=self._key, http_options=types.HttpOptions(**opts))

    def _config(self, prompt: Prompt) -> Any:
        """The request config; built once per system text (it is the same for most prompts)."""
        cfg = self._configs.get(prompt.system)
        if cfg is None:
            if len(self._configs) >= 64:
                self._configs.clear()
            cfg = self._configs[prompt.system] = self._build_config(prompt.system)
        return cfg

    def _build_config(self, system: str) -> Any:
        from google.genai import types

        kwargs: dict[str, Any] = dict(
            system_instruction=system,
            temperature=self.temperature,
            max_output_tokens=self.max_output_tokens,
            response_mime_type="application/json",
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),  # no tools here
        )
        if self.structured_output:
            kwargs["response_schema"] = self._schema
        if self.safety_settings:
            kwargs["safety_settings"] = self.safety_settings
        return types.GenerateContentConfig(**kwargs)

    async def agenerate(self, prompt: Prompt) -> LLMResponse:
        self._check_clearance()
        return await self._send(prompt)

    async def _send(self, prompt: Prompt) -> LLMResponse:
        if not self._key and not self.vertexai:
            raise LLMConfigError("no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY)")
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client, self._client_loop = self._make_client(), loop
        try:
            async with asyncio.timeout(self.timeout_s * 1.5 + 1.0):  # safety net over the HTTP time-out
                resp = await self._client.aio.models.generate_content(
                    model=self.model, contents=prompt.user, config=self._config(prompt))
        except Exception as exc:  # noqa: BLE001 - mapped to the two error kinds
            raise self._map_error(exc) from None
        try:
            return self._to_response(resp)
        except Exception as exc:  # noqa: BLE001 - an answer that cannot be read fails this request
            raise MalformedAnswerError(self._scrub(f"unreadable Gemini answer ({type(exc).__name__}: {exc})")) from None

    def _map_error(self, exc: Exception) -> LLMError:
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            code = int(exc.code or 0)
            msg = self._scrub(f"HTTP {code} {exc.status or ''}: {exc.message or ''}".strip())
            if code in (408, 429) or 500 <= code < 600:
                after = parse_retry_after(_header(getattr(exc, "response", None), "retry-after"))
                return TransientLLMError(msg, status=code, retry_after=after if after is not None else _retry_delay(exc.details))
            return PermanentLLMError(msg, status=code)
        name = type(exc).__name__
        msg = self._scrub(f"{name}: {exc}")
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in name:
            return TimeoutLLMError(f"time-out after {self.timeout_s:g} s ({name}; rationales.llm.timeout_s, quote --timeout)")
        transient = []
        for mod in ("httpx", "httpx2"):
            if importlib.util.find_spec(mod) is not None:
                transient.append(__import__(mod).TransportError)
        if transient and isinstance(exc, tuple(transient)):
            return TransientLLMError(msg)
        if isinstance(exc, (ValueError, TypeError, AttributeError, KeyError, IndexError)):
            # the SDK could not read the answer (pydantic's ValidationError is a ValueError)
            return MalformedAnswerError(f"unreadable Gemini answer ({msg[:300]})")
        return PermanentLLMError(msg)

    @staticmethod
    def _to_response(r: Any) -> LLMResponse:
        usage = r.usage_metadata
        n_in = int(getattr(usage, "prompt_token_count", 0) or 0) if usage else 0
        n_out = (int(getattr(usage, "candidates_token_count", 0) or 0) + int(getattr(usage, "thoughts_token_count", 0) or 0)) if usage else 0
        blocked = _enum_str(r.prompt_feedback.block_reason) if r.prompt_feedback and r.prompt_feedback.block_reason else None
        cands = r.candidates or []
        if not cands:
            return LLMResponse("", None, n_in, n_out, blocked)
        c = cands[0]
        finish = _enum_str(c.finish_reason)
        parts = c.content.parts if c.content and c.content.parts else []
        text = "".join(p.text for p in parts if getattr(p, "text", None) and not getattr(p, "thought", False))
        if not text.strip() and finish in BLOCK_FINISH_REASONS:
            blocked = blocked or finish
        return LLMResponse(text, finish, n_in, n_out, blocked)

    async def aclose(self) -> None:
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            try:
                await client.aio.aclose()
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
