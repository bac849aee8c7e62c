"""Context rules of the entity linker (a NegEx-style rule set written for this project):
negation, family history and (optionally) historical mentions, scoped by sentence and clause.
See docs/method/entity.md.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from rationale_kit.rationales.entity.kb import TOKEN_RE, normalize_alias

PRE_NEGATION = [
    "no", "not", "denies", "denied", "denying", "negative for", "without", "ruled out",
    "rules out", "no evidence of", "no signs of", "no sign of", "absence of", "free of",
    "never had", "no history of", "without evidence of", "no h o", "fails to reveal",
    "not demonstrate",
]
POST_NEGATION = [
    "was ruled out", "is ruled out", "has been ruled out", "were ruled out", "been ruled out",
    "ruled out", "unlikely", "is negative", "was negative", "not seen", "absent", "is absent",
    "was absent",
]
PSEUDO_NEGATION = [
    "no increase", "no change", "no further", "not only", "not necessarily", "not ruled out",
    "cannot be ruled out", "can not be ruled out", "not been ruled out", "gram negative",
    "without difficulty", "no significant change", "not certain if", "not certain whether",
]
TERMINATION = [
    "but", "however", "although", "though", "nevertheless", "yet", "except", "aside from",
    "apart from", "secondary to", "due to", "as the cause of", "as a cause of",
    "cause of", "source of", "etiology of", "presents with", "presented with",
]
#: Relation words. "son" and "daughter" are left out on purpose: in discharge summaries they
#: mostly appear as informants or health-care proxies ("discussion with her son").
FAMILY = [
    "mother", "father", "mom", "dad", "brother", "sister", "sibling", "siblings",
    "grandmother", "grandfather", "aunt", "uncle", "cousin", "maternal", "paternal",
    "family history", "family hx", "fhx", "parents", "brothers", "sisters",
]
HISTORICAL_PRE = [
    "history of", "hx of", "h o", "s p", "status post", "prior", "previous", "remote",
    "resolution of",
]
HISTORICAL_POST = ["resolved", "in the past"]

_FAMILY_HEADER = re.compile(r"^(family (medical |social )?history|family hx|fhx|fh)$", re.I)
_HEADER = re.compile(r"(?m)^[ \t]*([A-Za-z][A-Za-z /&\-]{1,40}?)[ \t]*:")
_SENT_GAP = re.compile(r"[.!?;](\s|$)|\n[ \t]*\n|\n[ \t]*([-*•]|\d+[.)])\s")


def _phrases(words: Sequence[str]) -> list[tuple[str, ...]]:
    return sorted({tuple(TOKEN_RE.findall(w.lower())) for w in words}, key=len, reverse=True)


_PRE, _POST, _PSEUDO = _phrases(PRE_NEGATION), _phrases(POST_NEGATION), _phrases(PSEUDO_NEGATION)
_TERM, _FAM = _phrases(TERMINATION), _phrases(FAMILY)
_HPRE, _HPOST = _phrases(HISTORICAL_PRE), _phrases(HISTORICAL_POST)


def _find_phrases(low: Sequence[str], sent: Sequence[int], phrases, blocked=None) -> list[tuple[int, int]]:
    """Occurrences ``(first, last)`` token indices of ``phrases`` (longest first, no overlaps,
    not crossing sentences, not starting inside ``blocked``)."""
    taken = np.zeros(len(low), dtype=bool) if blocked is None else blocked.copy()
    out = []
    by_first = defaultdict(list)
    for ph in phrases:
        by_first[ph[0]].append(ph)
    for i, tok in enumerate(low):
        if taken[i] or tok not in by_first:
            continue
        for ph in by_first[tok]:
            j = i + len(ph)
            if j <= len(low) and tuple(low[i:j]) == ph and sent[j - 1] == sent[i] and not taken[i:j].any():
                out.append((i, j - 1))
                taken[i:j] = True
                break
    return out


def _family_sections(text: str) -> list[tuple[int, int]]:
    """Character ranges of "Family History:" sections (to the next header that is not a
    relation word such as "Mother:")."""
    headers = [(m.start(), m.end(), m.group(1).strip()) for m in _HEADER.finditer(text)]
    relation = {p[0] for p in _FAM if len(p) == 1}
    out = []
    for k, (s, e, name) in enumerate(headers):
        if not _FAMILY_HEADER.match(name):
            continue
        end = len(text)
        for s2, _e2, name2 in headers[k + 1:]:
            if normalize_alias(name2) not in relation:
                end = s2
                break
        out.append((e, end))
    return out


def _sentences_and_clauses(text: str, toks, low, gaps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per token, its sentence and clause number; and the tokens inside pseudo-triggers."""
    n = len(toks)
    sent = np.zeros(n, dtype=np.int64)
    clause = np.zeros(n, dtype=np.int64)
    for i, g in enumerate(gaps):
        new_sent = bool(_SENT_GAP.search(g))
        if not new_sent and "\n" in g:  # a line that starts with "Header:" starts a sentence
            pos = toks[i + 1][0]
            new_sent = bool(_HEADER.match(text, text.rfind("\n", 0, pos) + 1))
        sent[i + 1] = sent[i] + new_sent
        clause[i + 1] = clause[i] + (new_sent or bool(re.search(r"[;:]", g)))
    pseudo = _find_phrases(low, sent, _PSEUDO)
    blocked = np.zeros(n, dtype=bool)
    for a, b in pseudo:
        blocked[a:b + 1] = True
    for a, _b in _find_phrases(low, sent, _TERM, blocked):
        clause[a:] += 1
    return sent, clause, blocked


#: ``(first, last)`` token indices of a mention -> ``(negated, family, historical)``.
ContextFlags = Callable[[int, int], tuple[bool, bool, bool]]


@dataclass(frozen=True)
class ContextRules:
    """Which context filters apply, and the negation/historical scope in tokens."""

    negation_window: int = 8
    filter_negated: bool = True
    filter_family: bool = True
    filter_historical: bool = False

    def flags(self, text: str, toks, low, gaps, inside: Optional[np.ndarray] = None) -> ContextFlags:
        """The context of every mention of one text, from its tokens ``toks`` (``(start, end)``
        characters), their lower-case forms ``low`` and the ``gaps`` between them. Trigger words
        inside an accepted mention (``inside``, per token) are part of that mention."""
        sent, clause, blocked = _sentences_and_clauses(text, toks, low, gaps)
        if inside is not None:
            blocked = blocked | inside
        pre = _find_phrases(low, sent, _PRE, blocked)
        post = _find_phrases(low, sent, _POST, blocked)
        fam_sents = {int(sent[a]) for a, _ in _find_phrases(low, sent, _FAM)}
        hpre = _find_phrases(low, sent, _HPRE, inside)
        hpost = _find_phrases(low, sent, _HPOST, inside)
        fam_sections = _family_sections(text)
        w = self.negation_window

        def scoped_pre(trigs, i):
            return any(b < i and clause[b] == clause[i] and i - b - 1 <= w for a, b in trigs)

        def scoped_post(trigs, j):
            return any(a > j and clause[a] == clause[j] and a - j - 1 <= w for a, b in trigs)

        def ctx(i, j):
            neg = scoped_pre(pre, i) or scoped_post(post, j)
            s = toks[i][0]
            fam = int(sent[i]) in fam_sents or any(a <= s < b for a, b in fam_sections)
            hist = scoped_pre(hpre, i) or scoped_post(hpost, j)
            return neg, fam, hist

        return ctx

    def reason(self, negated: bool, family: bool, historical: bool) -> str:
        """``filtered_reason`` of a mention: the first filter that applies, else ``""``."""
        if negated and self.filter_negated:
            return "negated"
        if family and self.filter_family:
            return "family"
        if historical and self.filter_historical:
            return "historical"
        return ""
