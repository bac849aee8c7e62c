"""Mention finder of the entity linker: token n-grams that match a KB alias or abbreviation
exactly, then (optionally) fuzzy matches via the TF-IDF candidate generator, longest / most
similar first without overlaps. See docs/method/entity.md.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from rationale_kit.rationales.entity.index import STOP_WORDS, CharGramIndex, LexiconIndex, Links
from rationale_kit.rationales.entity.kb import TOKEN_RE

#: ``(first, last)`` token indices of a candidate mention.
TokenSpan = tuple[int, int]


@dataclass(frozen=True)
class Mention:
    """A linked mention ``text[start:end]`` -> ``code``. ``filtered_reason`` is ``""`` for a kept
    mention, else ``"negated"``, ``"family"`` or ``"historical"``."""

    start: int
    end: int
    text: str
    code: str
    score: float
    match: str  # "exact" | "abbreviation" | "fuzzy"
    negated: bool = False
    family: bool = False
    filtered_reason: str = ""
    historical: bool = False
    alias: str = ""

    @property
    def kept(self) -> bool:
        return not self.filtered_reason


@dataclass(frozen=True)
class Tokens:
    """``\\w+`` tokens of a text: ``bounds`` (``(start, end)`` characters), ``raw`` and
    lower-case forms, the ``gaps`` between neighbours and whether each gap may sit inside a
    mention (``joinable``: spaces, at most one line break, or one of ``- / ' ’``)."""

    bounds: list[tuple[int, int]]
    raw: list[str]
    low: list[str]
    gaps: list[str]
    joinable: list[bool]

    def __len__(self) -> int:
        return len(self.bounds)

    def chars(self, ij: TokenSpan) -> int:
        """Length in characters of the token span ``ij``."""
        return self.bounds[ij[1]][1] - self.bounds[ij[0]][0]


def tokenize(text: str) -> Tokens:
    bounds = [m.span() for m in TOKEN_RE.finditer(text)]
    raw = [text[s:e] for s, e in bounds]
    gaps = [text[bounds[i][1]:bounds[i + 1][0]] for i in range(len(bounds) - 1)]
    joinable = [bool(re.fullmatch(r"[ \t]*(\r?\n[ \t]*)?|[ \t]*[-/'’][ \t]*", g)) for g in gaps]
    return Tokens(bounds, raw, [r.lower() for r in raw], gaps, joinable)


@dataclass(frozen=True)
class MentionSettings:
    """Mention detection: n-grams of 1..``max_ngram`` tokens; the fuzzy phase asks the candidate
    generator for ``fuzzy_k`` aliases per n-gram of at least ``fuzzy_min_chars`` characters and
    keeps those with char-3-gram similarity >= ``fuzzy_threshold``."""

    max_ngram: int = 6
    fuzzy: bool = True
    fuzzy_k: int = 10
    fuzzy_min_chars: int = 5
    fuzzy_threshold: float = 0.8


def _greedy(spans: dict[TokenSpan, Links], key: Callable, covered=None) -> list[TokenSpan]:
    """Spans in ``key`` order, each kept unless it overlaps a kept one or ``covered`` tokens."""
    taken = set() if covered is None else set(np.flatnonzero(covered).tolist())
    out = []
    for ij in sorted(spans, key=lambda ij: key(ij, spans[ij])):
        rng = range(ij[0], ij[1] + 1)
        if any(t in taken for t in rng):
            continue
        taken.update(rng)
        out.append(ij)
    return out


class MentionFinder:
    """Finds the mentions of a text: exact/abbreviation phase on ``lexicon``, then the fuzzy
    phase when a ``candidate_generator`` (scispacy) and its ``grams`` are given."""

    def __init__(self, lexicon: LexiconIndex, settings: MentionSettings,
                 candidate_generator=None, grams: Optional[CharGramIndex] = None) -> None:
        self.lexicon = lexicon
        self.settings = settings
        self.candidate_generator = candidate_generator
        self.grams = grams

    def find(self, tokens: Tokens) -> tuple[dict[TokenSpan, Links], list[TokenSpan]]:
        """``(links per candidate span, accepted spans)``; accepted spans do not overlap."""
        spans, ngrams = self._exact(tokens)
        n = len(tokens)
        accepted = _greedy(spans, lambda ij, f: (-tokens.chars(ij), ij[0]))
        covered = np.zeros(n, dtype=bool)
        for i, j in accepted:
            covered[i:j + 1] = True
        if self.candidate_generator is not None:
            fuzzy_spans = self._fuzzy(ngrams, covered, tokens.low)
            fz = _greedy(
                fuzzy_spans,
                lambda ij, f: (-max(v[1] for v in f.values()), -tokens.chars(ij), ij[0]),
                covered,
            )
            accepted += fz
            spans.update({k: fuzzy_spans[k] for k in fz})
        return spans, accepted

    def _exact(self, tokens: Tokens) -> tuple[dict[TokenSpan, Links], list[tuple[int, int, str]]]:
        """Exact and abbreviation matches of every n-gram, and the n-grams without one."""
        n, raw, low = len(tokens), tokens.raw, tokens.low
        spans: dict[TokenSpan, Links] = {}
        ngrams: list[tuple[int, int, str]] = []
        for i in range(n):
            for j in range(i, min(n, i + self.settings.max_ngram)):
                if j > i and not tokens.joinable[j - 1]:
                    break
                key = " ".join(low[i:j + 1])
                found = self.lexicon.matches(" ".join(raw[i:j + 1]), key)
                if found:
                    spans[(i, j)] = found
                else:
                    ngrams.append((i, j, key))
        return spans, ngrams

    def _fuzzy_queries(self, ngrams, covered, low) -> dict[str, list[TokenSpan]]:
        """N-grams worth a fuzzy look-up, by normalised text."""
        s = self.settings
        queries: dict[str, list[TokenSpan]] = defaultdict(list)
        for i, j, key in ngrams:
            if covered[i:j + 1].any() or low[i] in STOP_WORDS or low[j] in STOP_WORDS:
                continue
            if len(key) < s.fuzzy_min_chars or not re.search(r"[a-z]{3}", key):
                continue
            if key not in queries and not all(
                self.grams.word_close(w) for w in low[i:j + 1] if w not in STOP_WORDS
            ):
                continue
            queries[key].append((i, j))
        return queries

    def _best_aliases(self, key: str, cands) -> Links:
        """The candidates' codes whose best alias is as similar to ``key`` as the best of all."""
        threshold = self.settings.fuzzy_threshold
        best: dict[str, tuple[float, str]] = {}
        sims: dict[str, float] = {}
        for cand in cands:
            for alias in cand.aliases:
                if alias not in sims:
                    sims[alias] = self.grams.char_similarity(key, alias)
                    if sims[alias] >= threshold and not self.grams.words_cover(key, alias):
                        sims[alias] = 0.0
                sim = sims[alias]
                if sim >= threshold and sim > best.get(cand.concept_id, (-1.0, ""))[0]:
                    best[cand.concept_id] = (sim, alias)
        if not best:
            return {}
        top = max(v[0] for v in best.values())
        return {c: ("fuzzy", sim, a) for c, (sim, a) in best.items() if sim >= top - 1e-9}

    def _fuzzy(self, ngrams, covered, low) -> dict[TokenSpan, Links]:
        queries = self._fuzzy_queries(ngrams, covered, low)
        if not queries:
            return {}
        keys = list(queries)
        results = self.candidate_generator(keys, self.settings.fuzzy_k)
        out: dict[TokenSpan, Links] = {}
        for key, cands in zip(keys, results):
            found = self._best_aliases(key, cands)
            if not found:
                continue
            for ij in queries[key]:
                out[ij] = found
        return out
