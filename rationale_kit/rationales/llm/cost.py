"""The dry run and the bill: what a run would send and cost before anything is sent
(:func:`plan_llm`, :func:`plan_table`), and the tokens and cost of a finished run's calls table."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from rationale_kit.rationales.llm.backends.base import Backend
from rationale_kit.rationales.llm.cache import CACHE_FILE, cache_key, load_cache
from rationale_kit.rationales.llm.prompting import LLMRequest, response_schema


#: Gemini 2.0 Flash list prices (USD per million tokens, text, paid tier) at the time of writing.
PRICE_PER_MILLION_IN = 0.10
PRICE_PER_MILLION_OUT = 0.40


#: characters per token assumed when a backend has no tokenizer here (English clinical text with
#: common BPE tokenizers: about 4; the dry run labels such counts "estimate").
CHARS_PER_TOKEN = 4.0
#: output tokens assumed per code asked for the expected-cost column (two short quotes and the
#: JSON around them); the budget column uses the backend's output limit instead.
OUTPUT_TOKENS_PER_CODE = 40


def plan_llm(
    requests: Sequence[LLMRequest],
    backend: Backend,
    cache_dir: str | os.PathLike | None = None,
    price_per_million_in: float = PRICE_PER_MILLION_IN,
    price_per_million_out: float = PRICE_PER_MILLION_OUT,
    *,
    reask: bool = True,
    prompts_dir: str | os.PathLike | None = None,
) -> dict:
    """The dry run of :func:`run_llm`: what a run would send, before anything is sent or paid.

    Returns ``backend, model, requests, cached`` (requests answered from ``cache_dir``), ``calls``
    (distinct prompts to send: retries and re-asks come on top), ``input_tokens`` of those calls and how
    they were counted (``input_count``: ``tokenizer`` of the backend when it has one here, else
    ``estimate`` at :data:`CHARS_PER_TOKEN` characters per token), ``output_tokens_expected``
    (:data:`OUTPUT_TOKENS_PER_CODE` per code asked, at most the budget: an estimate) and ``output_tokens_max`` (the
    backend's output budget per call), and the cost in USD from the prices (zero for a backend
    that is not remote: ``cost_basis`` says which): ``cost_usd_expected``
    and ``cost_usd_max`` (every answer using its whole budget, and one re-ask per call when
    ``reask``: the most the run can cost). Nothing is sent; no API key is needed."""
    requests = list(requests)
    cache: dict[str, dict] = {}
    if cache_dir is not None:
        cache, _ = load_cache(Path(cache_dir) / CACHE_FILE, response_schema(prompts_dir))
    seen: set[str] = set()
    todo: list[LLMRequest] = []
    n_cached = 0
    for r in requests:
        k = cache_key(backend, r.prompt)
        n_cached += k in cache
        if k not in cache and k not in seen:
            todo.append(r)
        seen.add(k)
    how = "tokenizer"
    n_in = 0
    for r in todo:
        n = backend.count_tokens(r.prompt)
        if n is None:
            how = "estimate"
            n = int(round((len(r.prompt.system) + len(r.prompt.user)) / CHARS_PER_TOKEN))
        n_in += n
    budget = int(getattr(backend, "max_output_tokens", None) or getattr(backend, "max_new_tokens", 0) or 0)
    out_expected = sum(min(OUTPUT_TOKENS_PER_CODE * len(r.codes), budget or 10**9) for r in todo)
    out_max = budget * len(todo)
    # a backend that runs on the user's own machine or network (local, replay, an openai server with
    # local_endpoint) is not billed per token: the profile's prices are a provider's
    paid = bool(backend.remote)
    per_in, per_out = (price_per_million_in / 1e6, price_per_million_out / 1e6) if paid else (0.0, 0.0)
    worst = 2 if reask else 1
    return {
        "backend": backend.name, "model": backend.model, "remote": bool(backend.remote),
        "requests": len(requests), "cached": n_cached, "calls": len(todo),
        "input_tokens": n_in, "input_count": how,
        "output_tokens_expected": out_expected, "output_count": "estimate", "output_tokens_max": out_max,
        "cost_basis": "profile prices" if paid else "not billed (runs on your own machine or network)",
        "cost_usd_expected": round(n_in * per_in + out_expected * per_out, 6),
        "cost_usd_max": round(worst * (n_in * per_in + out_max * per_out), 6),
    }


def plan_table(rows: Sequence[dict]) -> pd.DataFrame:
    """Dry-run rows (:func:`plan_llm`, with a leading label column) and a ``total`` row."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    label = frame.columns[0]
    total = {c: frame[c].sum() for c in ("requests", "cached", "calls", "input_tokens", "output_tokens_expected",
                                         "output_tokens_max", "cost_usd_expected", "cost_usd_max")}
    total.update({label: "total", "backend": frame.backend.iloc[0], "model": frame.model.iloc[0],
                  "remote": bool(frame.remote.iloc[0]),
                  "input_count": "tokenizer" if (frame.input_count == "tokenizer").all() else "estimate",
                  "cost_basis": frame.cost_basis.iloc[0],
                  "output_count": "estimate"})
    frame = pd.concat([frame, pd.DataFrame([total])], ignore_index=True)
    for c in ("cost_usd_expected", "cost_usd_max"):
        frame[c] = frame[c].astype(float).round(6)
    return frame


def estimate_cost(
    calls: pd.DataFrame,
    price_per_million_in: float = PRICE_PER_MILLION_IN,
    price_per_million_out: float = PRICE_PER_MILLION_OUT,
    include_cached: bool = False,
) -> float:
    """Estimated cost (USD) of the calls' tokens; cached rows cost nothing unless ``include_cached``
    (then it is what the whole run would have cost without the cache)."""
    rows = calls if include_cached else calls[~calls["cached"].astype(bool)]
    return float(rows["input_tokens"].sum() * price_per_million_in / 1e6 + rows["output_tokens"].sum() * price_per_million_out / 1e6)


def calls_summary(
    calls: pd.DataFrame,
    price_per_million_in: float = PRICE_PER_MILLION_IN,
    price_per_million_out: float = PRICE_PER_MILLION_OUT,
) -> dict:
    """Counts, tokens (of the new calls) and estimated cost of a run's ``calls`` table."""
    new = calls[~calls["cached"].astype(bool)]
    outcome = calls["outcome"].value_counts()
    return {
        "requests": int(len(calls)),
        "calls": int(new["attempts"].sum()),  # backend calls made, retries and re-asks included
        "new": int(len(new)),
        "cached": int(calls["cached"].astype(bool).sum()),
        "ok": int(outcome.get("ok", 0)),
        "failures": int(outcome.get("failed", 0)),
        "truncated": int(outcome.get("truncated", 0)),
        "truncated_codes": int(calls["truncated_codes"].sum()) if "truncated_codes" in calls else 0,
        "capped_quotes": int(calls["capped_quotes"].sum()) if "capped_quotes" in calls else 0,
        "blocked": int(outcome.get("blocked", 0)),
        "empty": int(outcome.get("empty", 0)),
        "repaired": int(calls["repaired"].notna().sum()),
        "dropped_quotes": int(calls["dropped_quotes"].sum()),
        "empty_codes": int(calls["empty_codes"].sum()),
        "input_tokens": int(new["input_tokens"].sum()),
        "output_tokens": int(new["output_tokens"].sum()),
        "estimated_cost_usd": round(estimate_cost(calls, price_per_million_in, price_per_million_out), 6),
    }
