"""The backend a profile's ``rationales.llm`` section asks for, for a run or a dry run."""
from __future__ import annotations

from typing import Any, Optional

from rationale_kit.rationales.llm.backends.base import Backend
from rationale_kit.rationales.llm.backends.gemini import GeminiBackend
from rationale_kit.rationales.llm.backends.local import LocalBackend, auto_device, auto_dtype
from rationale_kit.rationales.llm.backends.openai import OpenAIBackend
from rationale_kit.rationales.llm.backends.replay import ReplayBackend
from rationale_kit.rationales.llm.errors import LLMConfigError


def make_backend(llm_cfg: Any, credentialed: Optional[bool] = None, **overrides: Any) -> Backend:
    """The backend a profile's ``rationales.llm`` section asks for (``config.LLM``).

    ``credentialed``: whether the documents it will be given are credentialed (None: not said,
    which remote backends treat as credentialed); with ``allow_remote_credentialed_data`` of the
    section it decides whether a remote backend may send them (:func:`credential_guard`)."""
    kind = overrides.pop("backend", llm_cfg.backend)
    guard = dict(credentialed=credentialed, allow_remote_credentialed_data=llm_cfg.allow_remote_credentialed_data)
    if kind == "gemini":
        kw = dict(model=llm_cfg.model, base_url=llm_cfg.base_url, timeout_s=llm_cfg.timeout_s,
                  temperature=llm_cfg.temperature, max_output_tokens=llm_cfg.max_output_tokens,
                  vertexai=llm_cfg.vertexai, project=llm_cfg.project, location=llm_cfg.location, **guard)
        return GeminiBackend(**{**kw, **overrides})
    if kind == "openai":
        kw = dict(model=llm_cfg.model, base_url=llm_cfg.base_url, timeout_s=llm_cfg.timeout_s,
                  temperature=llm_cfg.temperature, max_output_tokens=llm_cfg.max_output_tokens,
                  response_format=llm_cfg.response_format, local_endpoint=llm_cfg.local_endpoint,
                  output_token_param=llm_cfg.output_token_param, **guard)
        return OpenAIBackend(**{**kw, **overrides})
    if kind == "local":
        kw = dict(path=llm_cfg.local_path, max_new_tokens=llm_cfg.max_new_tokens, temperature=llm_cfg.temperature,
                  structured=llm_cfg.local_structured, verbatim=llm_cfg.local_verbatim,
                  batch_size=llm_cfg.local_batch_size, device=auto_device(llm_cfg.local_device))
        kw["dtype"] = auto_dtype(llm_cfg.local_dtype, kw["device"])  # "auto" resolved here: the cache key names the dtype used
        return LocalBackend(**{**kw, **overrides})
    if kind == "replay":
        path = overrides.pop("path", llm_cfg.replay_file)
        if not path:
            raise LLMConfigError("backend 'replay' needs rationales.llm.replay_file (a file written with run_llm(record=...))")
        return ReplayBackend(path)
    raise LLMConfigError(f"unknown LLM backend {kind!r} (gemini, openai, local, replay)")


def plan_backend(llm_cfg: Any, credentialed: Optional[bool] = None) -> Backend:
    """The profile's backend for a dry run: as :func:`make_backend` builds it, but a Gemini API
    key is not needed (the dry run sends nothing, and the key does not change the cache key)."""
    try:
        return make_backend(llm_cfg, credentialed=credentialed)
    except LLMConfigError:
        if llm_cfg.backend != "gemini" or llm_cfg.vertexai:
            raise
        return make_backend(llm_cfg, credentialed=credentialed, api_key="dry-run: no key needed")
