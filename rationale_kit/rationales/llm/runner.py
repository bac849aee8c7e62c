"""The runner: many requests against one backend with a disk cache (a rerun makes no new calls, a
killed run resumes), bounded concurrency, a rate limit, retries with back-off, one repair and one
re-ask of malformed answers; it returns the answers and calls tables. See docs/method/llm.md."""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import numbers
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence

import pandas as pd

from rationale_kit.core import runtime
from rationale_kit.rationales.llm.backends.base import Backend, run_coro
from rationale_kit.rationales.llm.cache import CACHE_FILE, JsonlLog, cache_key, load_cache, read_jsonl
from rationale_kit.rationales.llm.credentials import RUN_CLEARED, credential_guard
from rationale_kit.rationales.llm.errors import (
    CredentialedDataError, LLMConfigError, LLMError, MalformedAnswerError, PermanentLLMError, ReplayMissError,
    TimeoutLLMError, TransientLLMError, UnsupportedRequestError,
)
from rationale_kit.rationales.llm.parsing import interpret_response, quotes_by_code, reached_codes
from rationale_kit.rationales.llm.response import LLMResponse
from rationale_kit.rationales.llm.prompting import LLMRequest, Prompt, repair_prompt, response_schema

log = logging.getLogger(__name__)


CALL_STATUSES = ("ok", "truncated", "failed", "blocked", "empty", "cached")

#: Default caps on what one answer may contribute (``run_llm(max_answer_chars=...,
#: max_quotes_per_code=...)``, profile keys of the same names): a longer answer is not parsed
#: (outcome failed, its text kept only up to the cap), quotes past the cap are dropped and counted.
MAX_ANSWER_CHARS = 100_000
MAX_QUOTES_PER_CODE = 20

ANSWER_COLUMNS = ["note_id", "code", "quote_index", "quote", "status", "prompt_sha", "backend", "model"]
CALL_COLUMNS = [
    "note_id", "prompt_sha", "prompt_version", "backend", "model", "status", "outcome", "cached",
    "attempts", "input_tokens", "output_tokens", "latency_s", "error", "finish_reason",
    "blocked_reason", "repaired", "n_codes", "n_quotes", "empty_codes", "dropped_quotes",
    "unasked_codes", "truncated_codes", "capped_quotes", "raw", "raw_repair",
]


@dataclass(frozen=True)
class AskPolicy:
    """How one request is asked: ``max_retries`` after the first attempt with back-off
    ``backoff_base_s * 2**i`` (capped at ``backoff_max_s``) times a random factor in [0.5, 1), one
    re-ask of an unusable answer (``reask``, with the repair prompt of ``prompts_dir``), and the
    longest answer that is parsed (``max_answer_chars``). ``sleep`` waits out a back-off
    (``asyncio.sleep``; tests inject one that records the waits and returns at once)."""

    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    reask: bool = True
    prompts_dir: str | os.PathLike | None = None
    max_answer_chars: int = MAX_ANSWER_CHARS
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep


@dataclass(frozen=True)
class _RunSpec:
    """How a run asks: the per-request ``policy``, the answer ``schema``, how many requests are in
    flight and how often one starts, and the files it writes (None: not written)."""

    policy: AskPolicy
    schema: Mapping[str, Any]
    concurrency: int
    requests_per_minute: Optional[float]
    progress: bool
    cache_path: Optional[Path]
    record_path: Optional[Path]
    fsync: bool


class _Gate:
    """At most ``limit`` requests in flight. A time-out halves the limit (never below 1): a server
    that queues requests (llama.cpp, llama-cpp-python, Ollama) makes the waiting ones time out,
    since a client cannot tell waiting in the server's queue from generating; with fewer in
    flight, the time-out counts (almost) only the generation of each request."""

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self.in_flight = 0
        self._cond = asyncio.Condition()

    async def __aenter__(self) -> "_Gate":
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
        return self

    async def __aexit__(self, *exc: Any) -> None:
        async with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def shrink(self, why: str) -> None:
        if self.limit > 1:
            self.limit = max(1, self.limit // 2)
            log.warning("%s: at most %d request(s) in flight from now on", why, self.limit)


class _RateLimiter:
    """Spaces calls out (``per_minute``) and holds the run's :class:`_Gate` (``gate``); ``sleep``
    waits (injected by tests)."""

    def __init__(self, per_minute: Optional[float], concurrency: int = 1_000_000,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()
        self.gate = _Gate(concurrency)
        self._sleep = sleep

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await self._sleep(delay)


def _response_record(prompt: Prompt, backend: Backend, r: LLMResponse) -> dict:
    return {"sha": prompt.sha, "version": prompt.version, "backend": backend.name, "model": backend.model,
            **dataclasses.asdict(r)}


async def _call(backend: Backend, prompt: Prompt, policy: AskPolicy, limiter: _RateLimiter,
                sink: "_ResponseCollector", note_id: str) -> tuple[Optional[LLMResponse], int, Optional[str]]:
    """One prompt with retries: ``(response or None, attempts, error)``. An answer longer than
    ``policy.max_answer_chars`` is kept (and recorded) only up to one character more: still too
    long, so it reads the same when replayed, without megabytes going to the cache."""
    max_retries, base, cap, max_chars, sleep = (policy.max_retries, policy.backoff_base_s, policy.backoff_max_s,
                                                policy.max_answer_chars, policy.sleep)
    last = ""
    for attempt in range(max_retries + 1):
        await limiter.wait()
        try:
            async with limiter.gate:
                r = _checked(await _ask_once(backend, prompt))
        except TransientLLMError as exc:
            last = backend.scrub(str(exc)) or ""
            if isinstance(exc, TimeoutLLMError):
                limiter.gate.shrink(f"note {note_id}: {last}")
            if attempt == max_retries:
                break
            delay = min(cap, base * 2 ** attempt) * (0.5 + random.random() / 2)  # exponential + jitter
            if exc.retry_after:
                delay = max(delay, min(cap, exc.retry_after))
            log.info("note %s: %s; retry %d/%d in %.2f s", note_id, last, attempt + 1, max_retries, delay)
            await sleep(delay)
            continue
        except UnsupportedRequestError:
            raise  # no request of this run can succeed: stop with the message
        except (PermanentLLMError, LLMConfigError) as exc:
            return None, attempt + 1, backend.scrub(str(exc))
        # an answer that repeats a secret (the API key reflected by a proxy or a model) is masked
        # before it is cached, recorded or written anywhere
        r = dataclasses.replace(r, text=backend.scrub(r.text[: max_chars + 1]) or "", blocked_reason=backend.scrub(r.blocked_reason))
        await sink.aappend(_response_record(prompt, backend, r))
        return r, attempt + 1, None
    return None, max_retries + 1, f"gave up after {max_retries + 1} attempts: {last}"


async def _ask_once(backend: Backend, prompt: Prompt) -> LLMResponse:
    """One attempt. What stops the run is re-raised (a request format the server rejects, a
    replay miss, credentialed data); any other unexpected failure while asking or reading the
    answer is a :class:`MalformedAnswerError` of this request (retried, never cancelling others)."""
    try:
        return await backend.agenerate(prompt)
    except (LLMError, LLMConfigError, ReplayMissError, CredentialedDataError):
        raise
    except Exception as exc:  # noqa: BLE001 - a bad answer fails this request, not the run
        raise MalformedAnswerError(f"unreadable answer ({type(exc).__name__}: {str(exc)[:200]})") from None


def _checked(r: Any) -> LLMResponse:
    """``r`` if it is a well-formed :class:`LLMResponse`, else a :class:`MalformedAnswerError`."""
    if not isinstance(r, LLMResponse):
        raise MalformedAnswerError(f"the backend returned a {type(r).__name__}, not an answer")
    if not isinstance(r.text, str):
        raise MalformedAnswerError(f"the answer's text is a {type(r.text).__name__}, not a string")
    for name in ("input_tokens", "output_tokens"):
        v = getattr(r, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise MalformedAnswerError(f"the answer's {name} is {v!r}, not a count")
    for name in ("finish_reason", "blocked_reason"):
        v = getattr(r, name)
        if v is not None and not isinstance(v, str):
            raise MalformedAnswerError(f"the answer's {name} is a {type(v).__name__}, not a string")
    return r


async def _answer(req: LLMRequest, backend: Backend, schema: Mapping[str, Any], policy: AskPolicy,
                  limiter: _RateLimiter, sink: "_ResponseCollector") -> dict:
    """Ask, check, repair: the cache entry of one request."""
    t0 = time.perf_counter()
    entry: dict[str, Any] = {
        "backend": backend.name, "model": backend.model, "prompt_sha": req.prompt.sha,
        "prompt_version": req.prompt.version, "note_id": req.note_id, "outcome": "failed", "error": None,
        "raw": None, "raw_repair": None, "parsed": None, "repaired": None, "finish_reason": None,
        "blocked_reason": None, "attempts": 0, "input_tokens": 0, "output_tokens": 0, "cacheable": True,
        "truncated_codes": [],
    }
    cap = policy.max_answer_chars
    args = (policy, limiter, sink, req.note_id)

    def too_long(r: LLMResponse) -> Optional[str]:
        return (f"answer longer than max_answer_chars={cap} characters (kept only that far): not parsed"
                if len(r.text) > cap else None)

    r, n, err = await _call(backend, req.prompt, *args)
    entry["attempts"] += n
    if r is None:
        entry.update(error=err, cacheable=False)
    else:
        entry.update(raw=r.text[:cap], finish_reason=r.finish_reason, input_tokens=r.input_tokens, output_tokens=r.output_tokens)
        last = r
        oversize = too_long(r)
        kind, obj, detail = ("oversize", None, oversize) if oversize else interpret_response(r, schema)
        if kind == "invalid" and r.finish_reason == "MAX_TOKENS":
            # cut at the output budget before it could be read: a re-ask has the same budget and is
            # cut again (llama-cpp-python's recorded answers), so the codes are reported truncated
            entry.update(outcome="truncated", parsed={"rationales": []}, truncated_codes=req.code_list(),
                         error=f"{detail}: no code could be read; raise the output budget (max_output_tokens)")
            kind = "cut"
        elif kind == "invalid" and policy.reask:
            rp = repair_prompt(req.prompt, r.text, detail or "", policy.prompts_dir)
            r2, n2, err2 = await _call(backend, rp, *args)
            entry["attempts"] += n2
            if r2 is None:
                entry.update(error=f"{detail}; the re-ask failed: {err2}", cacheable=False)
                kind = "failed"
            else:
                entry.update(raw_repair=r2.text[:cap], input_tokens=entry["input_tokens"] + r2.input_tokens,
                             output_tokens=entry["output_tokens"] + r2.output_tokens)
                oversize2 = too_long(r2)
                kind2, obj2, detail2 = ("oversize", None, oversize2) if oversize2 else interpret_response(r2, schema)
                if kind2 == "ok":
                    kind, obj, detail, last = "ok", obj2, "reask", r2
                else:
                    detail = f"{detail}; after the re-ask: {detail2}"
        if kind == "ok":
            entry.update(outcome="ok", parsed=obj, repaired=detail)
            codes = req.code_list()
            if last.finish_reason == "MAX_TOKENS":
                # cut at the output budget: the codes the answer never reached were not answered,
                # which is not the same as "the model found nothing" for them
                reached = reached_codes(obj, codes)
                missing = [c for c in codes if c not in reached]
                if missing:
                    entry.update(outcome="truncated", truncated_codes=missing,
                                 error=f"answer cut at the output token limit before {len(missing)} of {len(codes)} codes")
        elif kind in ("blocked", "empty"):
            entry.update(outcome=kind, blocked_reason=detail if kind == "blocked" else None, error=detail)
        elif kind in ("invalid", "oversize"):
            entry.update(outcome="failed", error=detail)
    entry["latency_s"] = round(time.perf_counter() - t0, 4)
    return entry


def _rows(req: LLMRequest, entry: dict, cached: bool, backend: Backend,
          max_quotes: Optional[int] = MAX_QUOTES_PER_CODE) -> tuple[list[dict], dict]:
    codes = req.code_list()
    call = {k: entry.get(k) for k in CALL_COLUMNS if k in entry}
    call.update(note_id=req.note_id, prompt_sha=req.prompt.sha, prompt_version=req.prompt.version,
                backend=entry.get("backend", backend.name), model=entry.get("model", backend.model),
                cached=cached, status="cached" if cached else entry["outcome"], n_codes=len(codes),
                n_quotes=0, empty_codes=0, dropped_quotes=0, unasked_codes=[], truncated_codes=0, capped_quotes=0)
    if cached:
        call["attempts"], call["latency_s"] = 0, 0.0
    base = {"note_id": req.note_id, "prompt_sha": req.prompt.sha, "backend": call["backend"], "model": call["model"]}
    answers: list[dict] = []
    if entry["outcome"] in ("ok", "truncated"):
        quotes, dropped, unasked, capped = quotes_by_code(entry["parsed"], codes, max_quotes)
        cut = set(entry.get("truncated_codes") or []) if entry["outcome"] == "truncated" else set()
        call.update(dropped_quotes=dropped, unasked_codes=unasked, capped_quotes=capped, truncated_codes=len(cut),
                    n_quotes=sum(len(q) for q in quotes.values()),
                    empty_codes=sum(not q for c, q in quotes.items() if c not in cut))
        for code in codes:
            if code in cut:
                answers.append({**base, "code": code, "quote_index": pd.NA, "quote": None, "status": "truncated"})
                continue
            if not quotes[code]:
                answers.append({**base, "code": code, "quote_index": pd.NA, "quote": None, "status": "no_quotes"})
            for i, q in enumerate(quotes[code]):
                answers.append({**base, "code": code, "quote_index": i, "quote": q, "status": "ok"})
    else:
        answers = [{**base, "code": c, "quote_index": pd.NA, "quote": None, "status": entry["outcome"]} for c in codes]
    return answers, call


def run_llm(
    requests: Sequence[LLMRequest], backend: Backend, cache_dir: str | os.PathLike | None = None,
    concurrency: int = 8, max_retries: int = 5, credentialed: Optional[bool] = None,
    allow_remote_credentialed_data: bool = False, progress: bool = True, *,
    backoff_base_s: float = 1.0, backoff_max_s: float = 60.0, requests_per_minute: Optional[float] = None,
    reask: bool = True, record: str | os.PathLike | None = None, rerun_failed: bool = False, fsync: bool = True,
    prompts_dir: str | os.PathLike | None = None, max_answer_chars: int = MAX_ANSWER_CHARS,
    max_quotes_per_code: Optional[int] = MAX_QUOTES_PER_CODE, skipped_cache_lines: Optional[list] = None,
    sleep: Optional[Callable[[float], Awaitable[Any]]] = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ask ``backend`` about every request; return ``(answers, calls)``.

    * ``answers``: one row per (note_id, code, quote) with ``quote_index`` (0, 1, ...) and
      ``status`` ``ok``; a code that got no quote has one row with ``quote`` None and status
      ``no_quotes``; every code of a request that failed, was blocked or came back empty has one
      row with that status. Columns :data:`ANSWER_COLUMNS`.
    * ``calls``: one row per request (:data:`CALL_COLUMNS`): ``status`` ok / failed / blocked /
      empty / cached (``outcome`` is the answer's status also for cached rows), attempts, tokens,
      latency, error, raw answer text (kept for failures), ``dropped_quotes`` (quotes for codes
      that were not asked) and ``empty_codes``.

    With ``cache_dir``, every finished answer (ok, blocked, empty, or unusable after repair) is
    appended to ``cache_dir/llm_cache.jsonl`` as soon as it is known, keyed by (backend, model,
    prompt sha): a rerun makes no call for them and a killed run resumes where it stopped. Calls
    that failed for transport reasons (retries exhausted, permanent HTTP errors) are not cached;
    ``rerun_failed=True`` also re-asks cached answers that were not ok. A damaged cache line is
    skipped with a warning naming the file and line (appended to ``skipped_cache_lines`` when a
    list is given) and its request asked again.

    An answer cut at the output token limit (finish reason ``MAX_TOKENS``) that does not reach
    every code asked (also one that cannot be read at all: it is not re-asked, since the re-ask
    has the same budget) has outcome ``truncated``: the codes it reached keep their quotes, the others
    get status ``truncated`` (not ``no_quotes``: nothing was said about them), ``truncated_codes``
    counts them, a warning gives the totals, and ``rerun_failed=True`` asks again. Caps:
    an answer longer than ``max_answer_chars`` is not parsed (outcome failed); at most
    ``max_quotes_per_code`` quotes are kept per code (the rest counted in ``capped_quotes``).

    Credentialed data: ``credentialed`` says whether the documents are credentialed (MIMIC);
    None (not said) counts as credentialed, so a remote backend is refused unless
    ``allow_remote_credentialed_data`` (:func:`credential_guard`).
    ``record`` appends every raw answer (new or cached) to a replay file for :class:`ReplayBackend`.
    Retries: ``max_retries`` after the first attempt, back-off ``backoff_base_s * 2**i`` (capped at
    ``backoff_max_s``) times a random factor in [0.5, 1). ``requests_per_minute`` spaces calls out.
    ``sleep`` (default ``asyncio.sleep``) waits out back-offs and the rate limit: a test passes one
    that records the waits instead of waiting.
    """
    credential_guard(backend, credentialed, allow_remote_credentialed_data)
    if int(max_answer_chars) < 1:
        raise ValueError(f"max_answer_chars must be at least 1, got {max_answer_chars}")
    requests = list(requests)
    schema = response_schema(prompts_dir)
    policy = AskPolicy(max_retries=max(0, int(max_retries)), backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s,
                       reask=reask, prompts_dir=prompts_dir, max_answer_chars=int(max_answer_chars),
                       sleep=sleep or asyncio.sleep)
    spec = _RunSpec(policy, schema, concurrency, requests_per_minute, progress,
                    cache_path=Path(cache_dir) / CACHE_FILE if cache_dir is not None else None,
                    record_path=Path(record) if record is not None else None, fsync=fsync)
    cache: dict[str, dict] = {}
    if spec.cache_path is not None:
        cache, problems = load_cache(spec.cache_path, schema, keep={"ok"} if rerun_failed else None)
        if skipped_cache_lines is not None:
            skipped_cache_lines.extend(problems)
    recorded = {r.get("sha") for r in read_jsonl(spec.record_path)} if spec.record_path is not None else set()
    run = _Run(requests, backend, cache)
    run_coro(run.ask(spec, recorded))
    return run.tables(max_quotes_per_code)


class _Run:
    """One :func:`run_llm` call: the requests and their cache keys, the cached entries, and the new
    entries as they come in (``results``, by key)."""

    def __init__(self, requests: list[LLMRequest], backend: Backend, cache: dict[str, dict]):
        self.requests, self.backend, self.cache = requests, backend, cache
        self.keys = [cache_key(backend, r.prompt) for r in requests]
        self.todo: dict[str, int] = {}  # key -> index of the first request with it
        for i, k in enumerate(self.keys):
            if k not in cache and k not in self.todo:
                self.todo[k] = i
        self.counts = collections.Counter(self.keys)
        self.results: dict[str, dict] = {}

    async def ask(self, spec: _RunSpec, recorded: set) -> None:
        """Ask every request that is not cached, up to ``spec.concurrency`` at a time; each entry
        goes to the cache file as soon as it is known. ``recorded``: the prompt shas the record
        file holds already (cached answers missing there are added)."""
        RUN_CLEARED.set(True)  # this coroutine's context only: the tasks it starts inherit it
        cache_log = JsonlLog(spec.cache_path, spec.fsync) if spec.cache_path is not None else None
        record_log = JsonlLog(spec.record_path, spec.fsync) if spec.record_path is not None else None
        bar = runtime.progress(None, enabled=spec.progress, total=len(self.requests), desc=f"LLM {self.backend.name}",
                               unit="note")
        try:
            if record_log is not None:  # cached answers go to the record file too
                self._record_cached(record_log, recorded)
            bar.update(len(self.requests) - sum(self.counts[k] for k in self.todo))
            queue: asyncio.Queue = asyncio.Queue()
            for k, i in self.todo.items():
                queue.put_nowait((k, i))
            concurrency = int(spec.concurrency)
            n_workers = max(1, min(concurrency, self.backend.max_concurrency or concurrency, len(self.todo) or 1))
            limiter = _RateLimiter(spec.requests_per_minute, n_workers, spec.policy.sleep)
            await _gather_or_cancel([self._worker(queue, spec, limiter, cache_log, record_log, bar)
                                     for _ in range(n_workers)])
        finally:
            bar.close()
            try:
                await self.backend.aclose()
            finally:
                for lg in (cache_log, record_log):
                    if lg is not None:
                        await lg.aclose()

    def _record_cached(self, record_log: JsonlLog, recorded: set) -> None:
        for k in dict.fromkeys(self.keys):
            for resp in self.cache.get(k, {}).get("responses", []):
                if resp.get("sha") not in recorded:
                    record_log.append(resp)
                    recorded.add(resp.get("sha"))

    async def _worker(self, queue: asyncio.Queue, spec: _RunSpec, limiter: _RateLimiter,
                      cache_log: Optional[JsonlLog], record_log: Optional[JsonlLog], bar: Any) -> None:
        while True:
            try:
                k, i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            req = self.requests[i]
            rec_log = _ResponseCollector(record_log, self.backend)
            entry = await _answer(req, self.backend, spec.schema, spec.policy, limiter, rec_log)
            entry["key"] = k
            entry["responses"] = rec_log.responses
            self.results[k] = entry
            if entry.pop("cacheable") and cache_log is not None:
                await cache_log.aappend(entry)
            bar.update(self.counts[k])

    def tables(self, max_quotes_per_code: Optional[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(answers, calls)`` in the order of the requests; a request repeated in a run reads as cached."""
        answer_rows: list[dict] = []
        call_rows: list[dict] = []
        seen: set[str] = set()
        for req, k in zip(self.requests, self.keys):
            if k in self.results and k not in seen:
                entry, cached = self.results[k], False
            else:
                entry, cached = (self.cache.get(k) or self.results[k]), True
            seen.add(k)
            a, c = _rows(req, entry, cached, self.backend, max_quotes_per_code)
            answer_rows += a
            call_rows.append(c)
        return _frames(answer_rows, call_rows, max_quotes_per_code)


async def _gather_or_cancel(coros: list) -> None:
    """Run ``coros`` as tasks; when one fails (or the run is interrupted) cancel the others, wait
    for them to end, and re-raise."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _frames(answer_rows: list[dict], call_rows: list[dict], max_quotes_per_code: Optional[int]
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The answers and calls tables of their rows; warns about cut answers and capped quotes."""
    answers = pd.DataFrame(answer_rows, columns=ANSWER_COLUMNS)
    answers["quote_index"] = answers["quote_index"].astype("Int64")
    calls = pd.DataFrame(call_rows, columns=CALL_COLUMNS)
    for col in ("attempts", "input_tokens", "output_tokens", "n_codes", "n_quotes", "empty_codes", "dropped_quotes",
                "truncated_codes", "capped_quotes"):
        calls[col] = calls[col].fillna(0).astype("int64")
    cut = calls[calls.outcome == "truncated"]
    if len(cut):
        log.warning("%d of %d answers were cut at the output token limit before %d code(s) (status 'truncated'; "
                    "raise the output budget and run again)", len(cut), len(calls), int(cut.truncated_codes.sum()))
    if calls.capped_quotes.sum():
        log.warning("%d quote(s) past max_quotes_per_code=%s dropped", int(calls.capped_quotes.sum()), max_quotes_per_code)
    return answers, calls


class _ResponseCollector:
    """Collects the raw responses of one request (for the cache entry) and writes them to the
    record file, if any."""

    def __init__(self, log_: Optional[JsonlLog], backend: Backend):
        self.log, self.backend, self.responses = log_, backend, []

    async def aappend(self, rec: dict) -> None:
        self.responses.append(rec)
        if self.log is not None:
            await self.log.aappend(rec)
