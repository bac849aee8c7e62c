"""LLM rationales: an LLM is given a clinical note and its ICD-10 codes and returns, per code,
verbatim quotes from the note that support it (``{"rationales": [{"code": "E11.9", "quotes":
["type 2 diabetes"]}]}``); :mod:`rationale_kit.rationales.alignment` aligns them to spans.

Modules: :mod:`.prompting` (prompt files, few-shot examples, requests), :mod:`.parsing` (checking
and repairing answers), :mod:`.backends` (Gemini, OpenAI-compatible, local, replay),
:mod:`.credentials` (the credentialed-data guard), :mod:`.cache` (the JSONL answer cache),
:mod:`.runner` (:func:`run_llm`), :mod:`.cost` (dry run and cost). This package re-exports their
public names. See docs/method/llm.md.
"""
from __future__ import annotations

from rationale_kit.rationales.llm.backends.base import Backend, parse_retry_after
from rationale_kit.rationales.llm.backends.factory import make_backend, plan_backend
from rationale_kit.rationales.llm.backends.gemini import GeminiBackend
from rationale_kit.rationales.llm.backends.local import LocalBackend, bundled_local_model
from rationale_kit.rationales.llm.backends.openai import OpenAIBackend
from rationale_kit.rationales.llm.backends.replay import ReplayBackend
from rationale_kit.rationales.llm.backends.verbatim import VerbatimIndex, verbatim_norm
from rationale_kit.rationales.llm.cache import CACHE_FILE, cache_key
from rationale_kit.rationales.llm.cost import (
    CHARS_PER_TOKEN, OUTPUT_TOKENS_PER_CODE, PRICE_PER_MILLION_IN, PRICE_PER_MILLION_OUT, calls_summary,
    estimate_cost, plan_llm, plan_table,
)
from rationale_kit.rationales.llm.credentials import credential_guard, is_credentialed
from rationale_kit.rationales.llm.errors import (
    CredentialedDataError, LLMConfigError, LLMError, MalformedAnswerError, PermanentLLMError, ReplayMissError,
    TimeoutLLMError, TransientLLMError, UnsupportedRequestError,
)
from rationale_kit.rationales.llm.parsing import code_key, local_repair, parse_answer, validate
from rationale_kit.rationales.llm.response import BLOCK_FINISH_REASONS, LLMResponse
from rationale_kit.rationales.llm.prompting import (
    PROMPTS_DIR, SCHEMA_FILE, FewShotExample, LLMRequest, Prompt, build_prompt, make_requests, prompt_codes,
    prompt_note, prompt_versions, repair_prompt, response_schema, schema_text, select_examples,
)
from rationale_kit.rationales.llm.runner import (
    ANSWER_COLUMNS, CALL_COLUMNS, CALL_STATUSES, MAX_ANSWER_CHARS, MAX_QUOTES_PER_CODE, run_llm,
)

__all__ = [
    "ANSWER_COLUMNS", "BLOCK_FINISH_REASONS", "CACHE_FILE", "CALL_COLUMNS", "CALL_STATUSES", "CHARS_PER_TOKEN",
    "MAX_ANSWER_CHARS", "MAX_QUOTES_PER_CODE", "OUTPUT_TOKENS_PER_CODE", "PRICE_PER_MILLION_IN",
    "PRICE_PER_MILLION_OUT", "PROMPTS_DIR", "SCHEMA_FILE",
    "Backend", "CredentialedDataError", "FewShotExample", "GeminiBackend", "LLMConfigError", "LLMError",
    "LLMRequest", "LLMResponse", "LocalBackend", "OpenAIBackend", "PermanentLLMError", "Prompt", "ReplayBackend",
    "MalformedAnswerError", "ReplayMissError", "TimeoutLLMError", "TransientLLMError", "UnsupportedRequestError",
    "VerbatimIndex",
    "build_prompt", "bundled_local_model", "cache_key", "calls_summary", "code_key", "credential_guard",
    "estimate_cost", "is_credentialed", "local_repair", "make_backend", "make_requests", "parse_answer",
    "parse_retry_after", "plan_backend", "plan_llm", "plan_table", "prompt_codes", "prompt_note", "prompt_versions",
    "repair_prompt", "response_schema", "run_llm", "schema_text", "select_examples", "validate", "verbatim_norm",
]
