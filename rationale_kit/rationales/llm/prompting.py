"""Prompts and requests: the versioned prompt files filled in for a note and its codes, the
re-ask after an unusable answer, few-shot examples drawn from the few-shot pool, and one
:class:`LLMRequest` per document. See docs/method/llm.md."""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import pandas as pd

from rationale_kit.rationales.llm.errors import LLMConfigError


PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
SCHEMA_FILE = "response_schema.json"


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
    #: characters at the start of ``user`` that every prompt of the same version and kind (zero- or
    #: few-shot) shares, whatever the note, codes and examples (set by :func:`build_prompt`; not
    #: hashed): the local backend's prefix cache computes the system text and these once per run.
    #: None (a prompt not built here): no shared prefix, the prompt is read in one pass.
    shared_user_chars: Optional[int] = field(default=None, repr=False, compare=False)

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


def short_sha(*parts: str) -> str:
    """The first 20 hex digits of the SHA-256 of ``parts`` (each followed by a NUL byte): the id of
    a prompt, and of a cache entry."""
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
    user_t = _template(version, "user", d)
    user = user_t.substitute(note=note, codes=code_lines, examples=examples_block).strip()
    return Prompt(system=system, user=user, version=version, sha=short_sha(version, system, user, schema_text(d)),
                  codes=tuple(c for c, _ in pairs), note=shown,
                  shared_user_chars=_shared_head(user_t, user, head if examples else None))


_MARK = "\x00"


def _shared_head(user_t: string.Template, user: str, examples_head: Optional[str]) -> int:
    """How many leading characters of ``user`` come from the template alone (and, with examples,
    the examples header): the user template filled with a marker for everything that varies, up to
    the first marker. 0 when the filled prompt does not start with it."""
    probe = user_t.substitute(note=_MARK, codes=_MARK,
                              examples="" if examples_head is None else examples_head + _MARK).strip()
    head = probe[: probe.find(_MARK)] if _MARK in probe else ""
    return len(head) if user.startswith(head) else 0


def repair_prompt(prompt: Prompt, previous: str, problem: str, prompts_dir: str | os.PathLike | None = None,
                  max_previous_chars: int = 4000) -> Prompt:
    """The re-ask after an unusable answer: the original request, the problem and the answer."""
    d = Path(prompts_dir) if prompts_dir else PROMPTS_DIR
    prev = previous if len(previous) <= max_previous_chars else previous[:max_previous_chars] + " [...]"
    user = _template(prompt.version, "repair", d).substitute(user=prompt.user, problem=problem, previous=prev).strip()
    return Prompt(system=prompt.system, user=user, version=prompt.version,
                  sha=short_sha(prompt.version, "repair", prompt.system, user, schema_text(d)), codes=prompt.codes,
                  note=prompt.note, shared_user_chars=prompt.shared_user_chars if user.startswith(prompt.user) else None)


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
def _snap(text: str, lo: int, hi: int, s: int, e: int) -> tuple[int, int]:
    """``[lo, hi)`` around the span ``[s, e)`` moved inwards to white space, so that the context
    neither starts nor ends inside a word (the span itself is never cut)."""
    if lo > 0:
        ws = re.search(r"\s", text[lo:s])
        lo = lo + ws.end() if ws else s
    if hi < len(text):
        ws = [m.start() for m in re.finditer(r"\s", text[e:hi])]
        hi = e + ws[-1] if ws else e
    return lo, hi


def _excerpt(text: str, spans: list[tuple[int, int]], window: int, max_chars: int) -> tuple[str, list[tuple[int, int]]]:
    """The human spans of one note with ``window`` characters of context on each side (cut at white
    space), in note order: spans whose contexts overlap share one snippet, snippets are joined by
    ``...``. Spans are taken from the first on while the snippets fit ``max_chars`` (the first
    always). Returns the excerpt and the spans in it."""
    spans = sorted(set(spans))
    window = max(0, int(window))
    groups: list[list[int]] = []  # [lo, hi) per snippet
    kept: list[tuple[int, int]] = []
    for s, e in spans:
        lo, hi = _snap(text, max(0, s - window), min(len(text), e + window), s, e)
        if groups and lo <= groups[-1][1]:  # overlaps (or touches) the previous snippet: one snippet
            trial = groups[:-1] + [[groups[-1][0], max(groups[-1][1], hi)]]
        else:
            trial = groups + [[lo, hi]]
        if kept and sum(h - lw for lw, h in trial) + 5 * (len(trial) - 1) > max_chars:
            continue
        groups = trial
        kept.append((s, e))
    parts = [text[lo:hi].strip() for lo, hi in groups]
    body = " ... ".join(p for p in parts if p)
    return ("..." if groups[0][0] > 0 else "") + body + ("..." if groups[-1][1] < len(text) else ""), kept


def select_examples(
    pool_docs: pd.DataFrame,
    pool_spans: pd.DataFrame,
    codes: Sequence[Union[str, tuple[str, str]]],
    k: int,
    seed: int = 0,
    *,
    exclude: Iterable[str] = (),
    descriptions: Optional[Mapping[str, str]] = None,
    window: int = 60,
    max_excerpt_chars: int = 300,
) -> list[FewShotExample]:
    """Up to ``k`` human-annotated examples per code, drawn only from the few-shot pool.

    ``pool_docs``/``pool_spans`` must be the few-shot pool only (documents flagged
    ``fewshot=True``, never evaluated on): a document not flagged, or whose ``note_id`` is in
    ``exclude`` (the evaluated note ids), is an error. For each code, ``k`` pool notes that have
    spans for it are drawn (seeded, independent of the order of ``codes``); each example is the
    note's spans for the code with ``window`` characters of context on each side
    (``rationales.llm.example_context_chars``; snippets joined by ``...``, at most
    ``max_excerpt_chars`` in all), not the note around them, with the span texts as quotes.
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
