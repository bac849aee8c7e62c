"""Naive entity-level rationales: mentions found by entity linking that link to the code.

Everything runs offline. The knowledge base (KB) is built by this module from ``simple-icd-10-cm``
(FY2026 ICD-10-CM: titles, inclusion terms, "includes" notes) plus the project-written lexicon
``abbreviations.yaml`` (beside this module) (abbreviations and lay synonyms); scispacy's UMLS downloads are
never used. The pieces of scispacy's linker that are reused:

- :class:`scispacy.linking_utils.KnowledgeBase` (built from in-memory ``Entity`` objects, one per
  code; ``concept_id`` = dotted code);
- :class:`scispacy.candidate_generation.CandidateGenerator` (TF-IDF char-3-gram vectors, nmslib
  HNSW cosine index, alias -> concept canonicalisation) and its on-disk layout
  :class:`~scispacy.candidate_generation.LinkerPaths` / loader for the cache folder.

scispacy's own index builder, ``create_tfidf_ann_index``, is **not** called: it refuses to run on
scipy >= 1.11 (it stores float16 sparse vectors, ``scipy_supports_sparse_float16()`` is False on
the installed scipy 1.17), its vectorizer uses ``min_df=10`` (which empties most alias vectors
of a KB of a few hundred codes) and its HNSW settings (M=100, efConstruction=2000, 60 threads)
are sized for the 3M-alias UMLS. :func:`build_tfidf_ann_index` is the same recipe
(``TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3))`` + nmslib ``hnsw`` /
``cosinesimil_sparse``) with ``min_df=1``, float32 vectors and small HNSW settings, written in
``LinkerPaths`` layout so that scispacy's loader reads it back.

Mention detection (no downloaded NER model; ``spacy.blank`` has none either):

1. Tokens are ``\\w+`` runs. Candidate mentions are n-grams of 1..``max_ngram`` tokens whose gaps
   hold only spaces, at most one line break, or one of ``- / ' ’`` (so they never cross sentence
   or clause punctuation).
2. Exact phase: the n-gram, lower-cased and re-joined with single spaces, is looked up among the
   KB aliases (match ``"exact"``, score 1.0) and among abbreviation forms (match
   ``"abbreviation"``, score 1.0; case-sensitive forms compare the original case). The longest
   span wins; overlapping shorter spans are dropped.
3. Fuzzy phase (``fuzzy=True``): n-grams that overlap no exact match, have at least
   ``fuzzy_min_chars`` characters, neither start nor end with a stop word, and whose content
   words each resemble some word of the KB aliases (char-3-gram cosine >= ``WORD_SIMILARITY`` =
   0.5; a cheap pre-filter) are sent to the scispacy candidate generator (``fuzzy_k`` nearest
   aliases in the TF-IDF space). Each retrieved alias is re-scored with the cosine similarity of
   the two char-3-gram *sets* (the vectorizer's own analyser, words padded with a space:
   ``|A & B| / sqrt(|A| |B|)``), which, unlike the TF-IDF cosine, counts 3-grams the KB
   vocabulary lacks. A candidate is kept when that similarity is >= ``fuzzy_threshold`` (default
   0.8: "atrial fibrilation" vs "atrial fibrillation" is 0.91, "hypertensive" vs "hypertension"
   0.75) and every content word on each side has a counterpart on the other side with word
   similarity >= 0.5 (so "status" does not match "DNR status" although the set cosine is 0.82).
   Among overlapping fuzzy candidates the higher similarity wins, then the longer one.
4. A span linked to several codes (an alias shared by a category and its unspecified code, for
   example) yields one :class:`Mention` per code.

Context filters (a NegEx-style rule set written for this project). Filtered mentions are returned
with ``filtered_reason`` set, never silently dropped:

- negation: a pre-trigger (``no``, ``denies``, ``negative for``, ``without``, ``ruled out``, ``no
  evidence of``...) before the mention, or a post-trigger (``was ruled out``, ``unlikely``...)
  after it, within the same clause and at most ``negation_window`` tokens away. Sentences end at
  ``. ! ? ;`` followed by a space, at blank lines, before list items and before lines that start
  with a ``Header:``; clauses end at sentence ends, at ``:`` and before termination words (``but``, ``however``, ``although``,
  ``except``, ``which``, ``secondary to``...). Commas do not end a scope (lists after "denies").
  Pseudo-triggers (``no change``, ``not ruled out``, ``gram negative``...) are skipped.
- family: a relation word (``mother``, ``father``, ``sister``, ``family history``...) anywhere in
  the mention's sentence, or the mention inside a "Family History:" section. Not applied to
  codes whose title starts with "Family history" (Z80-Z84).
- historical (optional, ``filter_historical=False`` by default since past conditions are often
  coded): ``history of``, ``h/o``, ``s/p``, ``status post``, ``prior``... before, ``resolved``
  after.

:func:`entity_rationales` turns mentions into a span table: method ``exact_code`` when a kept
mention links to the code, method ``category`` when it links to a code of the same 3-character
category (the looser match; it includes the exact ones).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import simple_icd_10_cm as _cm
import yaml

from rationale_kit.core.records import SPAN_COLUMNS, DataError

LEXICON_PATH = Path(__file__).resolve().parent / "abbreviations.yaml"
TOKEN_RE = re.compile(r"\w+")
_INDEX_VERSION = 1

#: Columns of :func:`link_documents`' mention table.
MENTION_COLUMNS = [
    "note_id", "start", "end", "text", "code", "score", "match", "negated", "family",
    "historical", "filtered_reason", "alias",
]
#: Columns of :func:`entity_rationales`' span table.
ENTITY_SPAN_COLUMNS = SPAN_COLUMNS + [
    "method", "model", "score", "match", "linked_code", "mention", "filtered_reason",
]

STOP_WORDS = frozenset(
    """a an the and or of in on at to for with without by from as is was were be been are has have
    had his her their its this that these those he she it they patient pt which who per not no
    yes s p o h x w""".split()
)


# --------------------------------------------------------------------------------------------
# text helpers
# --------------------------------------------------------------------------------------------
def normalize_alias(text: str) -> str:
    """Lower-case ``\\w+`` tokens joined by one space: the key every alias and n-gram is compared
    by (``"Gastro-esophageal reflux"`` -> ``"gastro esophageal reflux"``)."""
    return " ".join(TOKEN_RE.findall(text.lower()))


def _case_key(text: str) -> str:
    return " ".join(TOKEN_RE.findall(text))


def _norm_code(code: str) -> str:
    c = str(code).strip().upper()
    if "." not in c and len(c) > 3 and re.match(r"^[A-Z][0-9][0-9A-Z]", c) and _cm.is_valid_item(
        c[:3] + "." + c[3:]
    ):
        c = c[:3] + "." + c[3:]
    return c


def category(code: str) -> str:
    """The 3-character category of a code (``E11.9`` -> ``E11``; PCS: the first 3 characters)."""
    return str(code).replace(".", "")[:3].upper()


_PARENS = re.compile(r"\s*[\(\[]([^\)\]]*)[\)\]]")
_ABBREV_IN_PARENS = re.compile(r"^[A-Z][A-Za-z0-9]{1,7}$")
_QUALIFIER_PART = re.compile(
    r"^(unspecified( \w+)?|uncomplicated|site not specified|site unspecified|not elsewhere "
    r"classified|without .+|unspecified as .+|single episode|initial encounter|nos)$",
    re.IGNORECASE,
)


def _reduce(base: str) -> tuple[str, str]:
    """``base`` (a term without parentheses) with trailing comma-separated qualifiers, ``NOS``,
    "not elsewhere classified" and "without complications" cut; and that without "unspecified"."""
    s = re.sub(r"\bNOS\b", "", base)
    s = re.sub(r",?\s*\b(not elsewhere classified|without complications?)\b", "", s, flags=re.I)
    parts = [p.strip() for p in s.split(",")]
    while len(parts) > 1 and _QUALIFIER_PART.match(parts[-1]):
        parts.pop()
    cut = ", ".join(parts)
    s = re.sub(r"\bunspecified (site|part) of\s+|\bof unspecified (site|part)\b", "", cut, flags=re.I)
    s = re.sub(r"\s*\bunspecified\b", "", s, flags=re.I)
    s = re.sub(r"\s*,(\s*,)+", ",", s).strip(" ,")
    return cut, s


def alias_variants(term: str) -> tuple[list[str], list[str]]:
    """Surface variants of an ICD title or inclusion term, and abbreviations found in it.

    Variants: the term; without its parenthesised/bracketed words ("Essential (primary)
    hypertension" -> "Essential hypertension") and with their words kept ("Essential primary
    hypertension"); each trailing modifier put before the head ("hypertension (arterial)
    (primary)" -> "arterial hypertension", "primary hypertension"); trailing comma-separated
    qualifiers cut ("Pneumonia, unspecified organism" -> "Pneumonia"); ``NOS``, "not elsewhere
    classified", "without complications" and the word "unspecified" removed ("Unspecified atrial
    fibrillation" -> "atrial fibrillation"); a short trailing "without ..." clause cut ("GERD
    without esophagitis" -> "GERD"); hyphens between letters dropped ("gastroesophageal").
    Abbreviations: upper-case words in brackets (``[HFrEF]``, ``(STEMI)``).
    """
    out: list[str] = []
    abbrevs = [
        inner.strip() for inner in _PARENS.findall(term)
        if _ABBREV_IN_PARENS.match(inner.strip()) and sum(ch.isupper() for ch in inner) >= 2
    ]

    def add(s: str) -> None:
        s = re.sub(r"\s+", " ", s).strip(" ,;-")
        if s and normalize_alias(s) and s not in out:
            out.append(s)

    add(term)
    base = _PARENS.sub("", term)
    add(base)
    if _PARENS.search(term):
        # ICD "nonessential modifiers": "(mellitus)" may be read or not; trailing ones such as
        # "hypertension (arterial) (benign)" read as "arterial hypertension"
        add(re.sub(r"[\(\)\[\]]", "", term))
        trailing = re.match(r"^(.*?[^\s\)\]])((\s*\([^\)]*\))+)\s*$", term)
        if trailing and not _PARENS.search(trailing.group(1)):
            for mod in re.findall(r"\(([^\)]*)\)", trailing.group(2))[:8]:
                if not _ABBREV_IN_PARENS.match(mod.strip()) or mod.islower():
                    add(f"{mod.strip()} {trailing.group(1)}")
    cut, s = _reduce(base)
    add(cut)
    add(s)
    # a short trailing "without ..." clause names the default ("GERD without esophagitis"); one
    # with further qualifiers ("without complications in remission") does not
    m = re.search(r"\s+without\s+(.*)$", s, flags=re.I)
    if m and len(m.group(1).split()) <= 4 and not re.search(r"\b(in|with)\b", m.group(1), re.I):
        add(s[: m.start()])
    for v in list(out):  # "gastro-esophageal" -> "gastroesophageal"
        if "-" in v:
            add(re.sub(r"(?<=\w)-(?=\w)", "", v))
    return out, abbrevs


def core_name(term: str) -> str:
    """``term`` without parentheses, qualifiers and "unspecified", normalised."""
    return normalize_alias(_reduce(_PARENS.sub("", term))[1]) or normalize_alias(term)


def _is_default_of(code: str, description: str, parent_description: str) -> bool:
    """Whether ``code`` is the default member of its parent: an "unspecified" code ending in 9
    (the ICD-10-CM convention), or one whose title says the same as the parent's once the
    qualifiers are removed ("Unspecified systolic (congestive) heart failure" under "Systolic
    (congestive) heart failure"). J18.0 "Bronchopneumonia, unspecified organism" is not the
    default of J18 "Pneumonia, unspecified organism"."""
    if code.endswith("9") and "unspecified" in description.lower():
        return True
    return core_name(description) == core_name(parent_description)


# --------------------------------------------------------------------------------------------
# knowledge base
# --------------------------------------------------------------------------------------------
@dataclass
class _Concept:
    code: str
    name: str
    aliases: list[str]  # display forms
    abbreviations: list[str]  # case-sensitive forms harvested from brackets
    is_category: bool = False


def load_lexicon(path: str | Path = LEXICON_PATH) -> dict:
    """Read the abbreviation/synonym lexicon; errors name the file and the entry."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: malformed YAML ({exc})") from None
    out = {"abbreviations": [], "synonyms": []}
    for key in ("abbreviations", "synonyms"):
        for i, entry in enumerate(data.get(key) or []):
            if not isinstance(entry, dict) or not entry.get("forms") or not entry.get("codes"):
                raise DataError(f"{path}: {key}[{i}] needs 'forms' and 'codes' lists")
            out[key].append(
                {
                    "forms": [str(f) for f in entry["forms"]],
                    "codes": [_norm_code(c) for c in entry["codes"]],
                    "expansion": str(entry.get("expansion") or ""),
                    "case_sensitive": bool(entry.get("case_sensitive", False)),
                }
            )
    return out


def _cm_description(code: str) -> Optional[str]:
    try:
        return _cm.get_description(code) if _cm.is_valid_item(code) else None
    except Exception:  # pragma: no cover - defensive against package quirks
        return None


def _cm_terms(code: str, includes: bool) -> list[str]:
    terms: list[str] = []
    try:
        terms += list(_cm.get_inclusion_term(code))
        if includes:
            terms += list(_cm.get_includes(code))
    except Exception:  # pragma: no cover
        pass
    return terms


def build_concepts(
    codes: Iterable[str],
    descriptions: Optional[Mapping[str, str]] = None,
    include_categories: bool = True,
) -> tuple[dict[str, _Concept], list[str]]:
    """One concept per code (and per 3-character category when ``include_categories``).

    Aliases of a code: its title, inclusion terms and (for leaf codes) "includes" notes, each with
    the variants of :func:`alias_variants`. A code that is the default member of its parent
    (:func:`_is_default_of`) also gets the titles and inclusion terms of its parent, and so on up
    while each level is the default of the next (E11.9 gets "Type 2 diabetes
    mellitus"; I50.20 gets "Systolic (congestive) heart failure" but not "Heart failure").
    ``descriptions`` add a title per code (MIMIC's ``d_icd_diagnoses``), the only title for codes simple-icd-10-cm lacks.
    Returns the concepts and the codes that have no title at all (skipped).
    """
    descriptions = {_norm_code(k): v for k, v in (descriptions or {}).items()}
    concepts: dict[str, _Concept] = {}
    unknown: list[str] = []

    def make(code: str, is_category: bool) -> Optional[_Concept]:
        desc = _cm_description(code)
        titles = [t for t in (descriptions.get(code), desc) if t]
        if not titles:
            return None
        leaf = bool(desc) and _cm.is_leaf(code)
        terms = titles + (_cm_terms(code, includes=leaf) if desc else [])
        if desc and not is_category:
            # climb while the current code is the default ("unspecified") member of its parent
            c, c_desc = code, desc
            while "." in c:
                p = c[:-1].rstrip(".")
                while "." in p and not _cm.is_valid_item(p):  # skip placeholder levels
                    p = p[:-1].rstrip(".")
                if not _cm.is_valid_item(p):
                    break
                p_desc = _cm.get_description(p)
                if not _is_default_of(c, c_desc, p_desc):
                    break
                terms += [p_desc] + _cm_terms(p, includes=False)
                c, c_desc = p, p_desc
        aliases: list[str] = []
        abbrevs: list[str] = []
        for t in terms:
            v, a = alias_variants(t)
            aliases += [x for x in v if x not in aliases]
            abbrevs += [x for x in a if x not in abbrevs]
        return _Concept(code, titles[0], aliases, abbrevs, is_category)

    for raw in codes:
        code = _norm_code(raw)
        if code in concepts:
            continue
        concept = make(code, is_category=False)
        if concept is None:
            unknown.append(code)
            continue
        concepts[code] = concept
    if include_categories:
        for code in list(concepts):
            cat = category(code)
            if cat not in concepts and _cm.is_valid_item(cat):
                concept = make(cat, is_category=True)
                if concept is not None:
                    concepts[cat] = concept
    return concepts, unknown


def build_tfidf_ann_index(
    aliases: Sequence[str],
    out_dir: str | Path | None = None,
    *,
    m: int = 16,
    ef_construction: int = 200,
    ef_search: int = 100,
    threads: int = 1,
):
    """TF-IDF char-3-gram vectors of ``aliases`` and an nmslib HNSW cosine index over them.

    The recipe of scispacy's ``create_tfidf_ann_index`` (see the module docstring for why that
    function itself is not called). Aliases whose vector is empty are removed (nmslib crashes on
    them). With ``out_dir``, the four files are written in scispacy's ``LinkerPaths`` layout.
    Returns ``(aliases_kept, vectorizer, index)``.
    """
    import joblib
    import nmslib
    import scipy.sparse
    from scispacy.candidate_generation import LinkerPaths
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), min_df=1, dtype=np.float32)
    vectors = vectorizer.fit_transform(list(aliases)).tocsr()
    keep = np.asarray(vectors.getnnz(axis=1) > 0)
    kept = [a for a, k in zip(aliases, keep) if k]
    vectors = vectors[keep]
    index = nmslib.init(method="hnsw", space="cosinesimil_sparse", data_type=nmslib.DataType.SPARSE_VECTOR)
    index.addDataPointBatch(vectors)
    index.createIndex(
        {"M": m, "efConstruction": ef_construction, "post": 0, "indexThreadQty": threads},
        print_progress=False,
    )
    index.setQueryTimeParams({"efSearch": ef_search})
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = LinkerPaths.from_directory(str(out_dir))
        joblib.dump(vectorizer, paths.tfidf_vectorizer)
        scipy.sparse.save_npz(paths.tfidf_vectors, vectors.astype(np.float32))
        with open(paths.concept_aliases_list, "w", encoding="utf-8") as fh:
            json.dump(kept, fh)
        index.saveIndex(paths.ann_index)
    return kept, vectorizer, index


# --------------------------------------------------------------------------------------------
# context rules
# --------------------------------------------------------------------------------------------
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
#: Minimum char-3-gram cosine between two single words for the fuzzy phase's word checks.
WORD_SIMILARITY = 0.5

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


# --------------------------------------------------------------------------------------------
# linker
# --------------------------------------------------------------------------------------------
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


class EntityLinker:
    """Dictionary + fuzzy entity linker to ICD-10-CM codes, with NegEx-style context filters.

    Parameters
    ----------
    codes: the codes to link to (dotted or not). ``None`` with ``all_billable=True``: every billable
        (leaf) ICD-10-CM code (about 74,000; the index then takes minutes to build, once per cache).
    kb_cache_dir: folder for the TF-IDF/ANN index (a sub-folder per KB content hash); ``None``
        keeps it in memory only.
    fuzzy_threshold: minimum char-3-gram cosine similarity of a fuzzy match (see module docstring).
    descriptions: extra titles per code (e.g. MIMIC's ``d_icd_diagnoses``).
    include_categories: add a concept per 3-character category of the codes.
    include_lexicon_codes: add the lexicon's target codes to the KB (so "T2DM" always links to
        E11.9, which the category match then relates to E11.65).
    max_ngram, fuzzy, fuzzy_k, fuzzy_min_chars: mention detection (module docstring).
    negation_window, filter_negated, filter_family, filter_historical: context filters.
    ef_search, index_threads: nmslib query / build settings (threads default min(4, CPUs)).

    Attributes: ``kb`` (scispacy ``KnowledgeBase``), ``candidate_generator`` (scispacy
    ``CandidateGenerator``), ``concepts``, ``descriptions``, ``unknown_codes`` (requested codes
    without a title), ``build_seconds`` (KB + index, without the one-off scispacy import),
    ``cache_path``, ``index_from_cache``.
    """

    def __init__(
        self,
        codes: Optional[Iterable[str]] = None,
        kb_cache_dir: str | Path | None = None,
        fuzzy_threshold: float = 0.8,
        *,
        all_billable: bool = False,
        descriptions: Optional[Mapping[str, str]] = None,
        lexicon: str | Path | None = LEXICON_PATH,
        include_categories: bool = True,
        include_lexicon_codes: bool = True,
        max_ngram: int = 6,
        fuzzy: bool = True,
        fuzzy_k: int = 10,
        fuzzy_min_chars: int = 5,
        negation_window: int = 8,
        filter_negated: bool = True,
        filter_family: bool = True,
        filter_historical: bool = False,
        ef_search: int = 100,
        index_threads: Optional[int] = None,
        verbose: bool = False,
    ) -> None:
        t_import = time.perf_counter()
        import scispacy.candidate_generation  # noqa: F401  (imports spacy: seconds, once)
        from scispacy.linking_utils import Entity, KnowledgeBase

        t0 = time.perf_counter()
        self.import_seconds = t0 - t_import
        if codes is None:
            if not all_billable:
                raise ValueError("EntityLinker: give a list of codes or all_billable=True")
            codes = [c for c in _cm.get_all_codes(True) if _cm.is_leaf(c)]
        elif all_billable:
            codes = list(codes) + [c for c in _cm.get_all_codes(True) if _cm.is_leaf(c)]
        requested = list(dict.fromkeys(_norm_code(c) for c in codes))
        if not 0.0 < fuzzy_threshold <= 1.0:
            raise ValueError(f"fuzzy_threshold must be in (0, 1], got {fuzzy_threshold}")
        self.fuzzy_threshold = float(fuzzy_threshold)
        self.max_ngram = int(max_ngram)
        self.fuzzy = bool(fuzzy)
        self.fuzzy_k = int(fuzzy_k)
        self.fuzzy_min_chars = int(fuzzy_min_chars)
        self.negation_window = int(negation_window)
        self.filter_negated = filter_negated
        self.filter_family = filter_family
        self.filter_historical = filter_historical
        self.verbose = verbose

        lex = load_lexicon(lexicon) if lexicon is not None else {"abbreviations": [], "synonyms": []}
        lexicon_codes = [c for e in lex["abbreviations"] + lex["synonyms"] for c in e["codes"]]
        all_codes = requested + (
            [c for c in lexicon_codes if _cm.is_valid_item(c)] if include_lexicon_codes else []
        )
        concepts, unknown = build_concepts(all_codes, descriptions, include_categories)
        self.unknown_codes = [c for c in unknown if c in set(requested)]
        if self.unknown_codes:
            warnings.warn(
                f"EntityLinker: {len(self.unknown_codes)} code(s) have no ICD-10-CM title and "
                f"cannot be linked to (e.g. {self.unknown_codes[:5]}); pass descriptions= for them",
                stacklevel=2,
            )
        self.requested_codes = [c for c in requested if c in concepts]

        exact: dict[str, set[str]] = defaultdict(set)
        alias_display: dict[str, str] = {}
        abbrev_cs: dict[str, set[str]] = defaultdict(set)
        abbrev_ci: dict[str, set[str]] = defaultdict(set)
        for c in concepts.values():
            for a in c.aliases:
                key = normalize_alias(a)
                exact[key].add(c.code)
                alias_display.setdefault(key, a)
            for a in c.abbreviations:
                abbrev_cs[_case_key(a)].add(c.code)
        for entry in lex["synonyms"]:
            targets = {c for c in entry["codes"] if c in concepts}
            for form in entry["forms"]:
                if targets:
                    exact[normalize_alias(form)] |= targets
                    alias_display.setdefault(normalize_alias(form), form)
        for entry in lex["abbreviations"]:
            targets = {c for c in entry["codes"] if c in concepts}
            if entry["expansion"]:
                targets |= exact.get(normalize_alias(entry["expansion"]), set())
            if not targets:
                continue
            for form in entry["forms"]:
                if entry["case_sensitive"]:
                    abbrev_cs[_case_key(form)] |= targets
                else:
                    abbrev_ci[normalize_alias(form)] |= targets
        self._exact = dict(exact)
        self._abbrev_cs = dict(abbrev_cs)
        self._abbrev_ci = dict(abbrev_ci)
        self.concepts = concepts
        self.descriptions = {c.code: c.name for c in concepts.values()}

        # scispacy KB: one Entity per code; aliases = normalised exact aliases + abbreviation forms
        aliases_of: dict[str, list[str]] = defaultdict(list)
        for key, cs in self._exact.items():
            for c in cs:
                aliases_of[c].append(key)
        for table in (self._abbrev_cs, self._abbrev_ci):
            for key, cs in table.items():
                for c in cs:
                    aliases_of[c].append(key)
        entities = [
            Entity(
                concept_id=c.code,
                canonical_name=normalize_alias(c.name),
                aliases=sorted(set(aliases_of[c.code])),
                types=["category" if c.is_category else "code", category(c.code)],
                definition=c.name,
            )
            for c in concepts.values()
        ]
        self.kb = KnowledgeBase(entities)
        t1 = time.perf_counter()

        # fuzzy index over the exact aliases (abbreviations are not fuzzy-matched)
        self.candidate_generator = None
        self.cache_path: Optional[Path] = None
        self.index_from_cache = False
        index_aliases = sorted(k for k in self._exact if len(k) >= 4)
        if self.fuzzy and index_aliases:
            threads = index_threads or min(4, os.cpu_count() or 1)
            self.candidate_generator = self._index(index_aliases, kb_cache_dir, ef_search, threads)
            self._analyzer = self.candidate_generator.vectorizer.build_analyzer()
            self._gram_cache: dict[str, frozenset] = {}
            self._word_close_cache: dict[str, bool] = {}
            self._kb_words = sorted({w for a in index_aliases for w in a.split() if w not in STOP_WORDS})
            self._kb_word_set = set(self._kb_words)
            by_gram: dict[str, list[int]] = defaultdict(list)
            for k, w in enumerate(self._kb_words):
                for g in self._grams(w):
                    by_gram[g].append(k)
            self._kb_word_by_gram = dict(by_gram)
        self.kb_seconds = t1 - t0
        self.build_seconds = time.perf_counter() - t0
        self.n_aliases = len(self._exact)
        if verbose:
            print(self.summary())

    # ---------------------------------------------------------------------------------------
    def _index(self, aliases: list[str], cache_dir, ef_search: int, threads: int):
        from scispacy.candidate_generation import CandidateGenerator, LinkerPaths

        key = hashlib.sha1(
            json.dumps([_INDEX_VERSION, aliases], ensure_ascii=False).encode("utf-8")
        ).hexdigest()[:16]
        if cache_dir is not None:
            folder = Path(cache_dir) / f"icd10cm_tfidf_{key}"
            self.cache_path = folder
            folder.mkdir(parents=True, exist_ok=True)
            paths = LinkerPaths.from_directory(str(folder))
            if paths.is_locally_cached():
                kept, vectorizer, index = paths.load(ef_search=ef_search)
                self.index_from_cache = True
            else:
                kept, vectorizer, index = build_tfidf_ann_index(aliases, folder, ef_search=ef_search, threads=threads)
        else:
            kept, vectorizer, index = build_tfidf_ann_index(aliases, None, ef_search=ef_search, threads=threads)
        return CandidateGenerator(
            ann_index=index, tfidf_vectorizer=vectorizer, ann_concept_aliases_list=kept, kb=self.kb
        )

    def summary(self) -> str:
        n_cat = sum(c.is_category for c in self.concepts.values())
        where = f"cache {self.cache_path}" + (" (loaded)" if self.index_from_cache else " (built)") \
            if self.cache_path else "in memory"
        return (
            f"EntityLinker: {len(self.concepts)} concepts ({n_cat} categories), {self.n_aliases} "
            f"aliases, {len(self._abbrev_cs) + len(self._abbrev_ci)} abbreviation forms; KB "
            f"{self.kb_seconds:.2f} s, KB + index {self.build_seconds:.2f} s (scispacy import "
            f"{self.import_seconds:.1f} s); index {where}"
        )

    # ---------------------------------------------------------------------------------------
    def _grams(self, s: str) -> frozenset:
        g = self._gram_cache.get(s)
        if g is None:
            if len(self._gram_cache) > 200_000:  # bound the memory over a large corpus
                self._gram_cache.clear()
            g = self._gram_cache[s] = frozenset(self._analyzer(s))
        return g

    def _word_sim(self, a: str, b: str) -> float:
        ga, gb = self._grams(a), self._grams(b)
        return len(ga & gb) / math.sqrt(len(ga) * len(gb)) if ga and gb else 0.0

    def _word_close(self, w: str) -> bool:
        """Whether word ``w`` is within WORD_SIMILARITY of some word of the KB aliases."""
        hit = self._word_close_cache.get(w)
        if hit is None:
            if len(self._word_close_cache) > 200_000:
                self._word_close_cache.clear()
            if w in self._kb_word_set:
                hit = True
            else:
                counts: Counter = Counter()
                gw = self._grams(w)
                for g in gw:
                    counts.update(self._kb_word_by_gram.get(g, ()))
                hit = any(
                    c / math.sqrt(len(gw) * len(self._grams(self._kb_words[k]))) >= WORD_SIMILARITY
                    for k, c in counts.items()
                )
            self._word_close_cache[w] = hit
        return hit

    def _words_cover(self, a: str, b: str) -> bool:
        """Every content word of ``a`` has a word of ``b`` within WORD_SIMILARITY, and back."""
        wa = [w for w in a.split() if w not in STOP_WORDS] or a.split()
        wb = [w for w in b.split() if w not in STOP_WORDS] or b.split()
        return all(max(self._word_sim(x, y) for y in wb) >= WORD_SIMILARITY for x in wa) and all(
            max(self._word_sim(y, x) for x in wa) >= WORD_SIMILARITY for y in wb
        )

    def char_similarity(self, a: str, b: str) -> float:
        """Cosine similarity of the char-3-gram sets of two normalised strings (words padded with
        a space, as the TF-IDF analyser does): ``|A & B| / sqrt(|A| |B|)``."""
        ga, gb = self._grams(a), self._grams(b)
        if not ga or not gb:
            return 0.0
        small, large = sorted((len(ga), len(gb)))
        if math.sqrt(small / large) < self.fuzzy_threshold:  # upper bound of the cosine
            return 0.0
        return len(ga & gb) / math.sqrt(len(ga) * len(gb))

    def link(self, text: str) -> list[Mention]:
        """All linked mentions of ``text`` (kept and filtered), sorted by position."""
        toks = [m.span() for m in TOKEN_RE.finditer(text)]
        n = len(toks)
        if n == 0:
            return []
        raw = [text[s:e] for s, e in toks]
        low = [r.lower() for r in raw]
        gaps = [text[toks[i][1]:toks[i + 1][0]] for i in range(n - 1)]
        joinable = [bool(re.fullmatch(r"[ \t]*(\r?\n[ \t]*)?|[ \t]*[-/'’][ \t]*", g)) for g in gaps]

        # ---- phase 1: exact and abbreviation matches, longest first
        spans: dict[tuple[int, int], dict[str, tuple[str, float, str]]] = {}
        ngrams: list[tuple[int, int, str]] = []
        for i in range(n):
            for j in range(i, min(n, i + self.max_ngram)):
                if j > i and not joinable[j - 1]:
                    break
                key = " ".join(low[i:j + 1])
                found: dict[str, tuple[str, float, str]] = {}
                for c in self._abbrev_cs.get(" ".join(raw[i:j + 1]), ()):
                    found[c] = ("abbreviation", 1.0, " ".join(raw[i:j + 1]))
                for c in self._abbrev_ci.get(key, ()):
                    found[c] = ("abbreviation", 1.0, key)
                for c in self._exact.get(key, ()):
                    found[c] = ("exact", 1.0, key)
                if found:
                    spans[(i, j)] = found
                else:
                    ngrams.append((i, j, key))
        accepted = self._greedy(spans, lambda ij, f: (-(toks[ij[1]][1] - toks[ij[0]][0]), ij[0]))
        covered = np.zeros(n, dtype=bool)
        for i, j in accepted:
            covered[i:j + 1] = True

        # ---- phase 2: fuzzy matches on n-grams free of exact matches
        if self.candidate_generator is not None:
            fuzzy_spans = self._fuzzy(ngrams, covered, low, toks, text)
            fz = self._greedy(
                fuzzy_spans,
                lambda ij, f: (-max(v[1] for v in f.values()), -(toks[ij[1]][1] - toks[ij[0]][0]), ij[0]),
                covered,
            )
            accepted += fz
            spans.update({k: fuzzy_spans[k] for k in fz})

        # ---- context; a trigger word inside an accepted mention ("diabetes mellitus without
        # complications") is part of that title, not a negation of what follows
        inside = np.zeros(n, dtype=bool)
        for i, j in accepted:
            inside[i:j + 1] = True
        ctx = self._context(text, toks, low, gaps, inside)
        out: list[Mention] = []
        for i, j in sorted(accepted):
            s, e = toks[i][0], toks[j][1]
            neg, fam, hist = ctx(i, j)
            for code, (match, score, alias) in sorted(spans[(i, j)].items()):
                fam_c = fam and not self.descriptions.get(code, "").lower().startswith("family history")
                reason = ""
                if neg and self.filter_negated:
                    reason = "negated"
                elif fam_c and self.filter_family:
                    reason = "family"
                elif hist and self.filter_historical:
                    reason = "historical"
                out.append(
                    Mention(s, e, text[s:e], code, float(score), match, bool(neg), bool(fam_c),
                            reason, bool(hist), alias)
                )
        return out

    @staticmethod
    def _greedy(spans, key, covered=None) -> list[tuple[int, int]]:
        taken = set() if covered is None else set(np.flatnonzero(covered).tolist())
        out = []
        for ij in sorted(spans, key=lambda ij: key(ij, spans[ij])):
            rng = range(ij[0], ij[1] + 1)
            if any(t in taken for t in rng):
                continue
            taken.update(rng)
            out.append(ij)
        return out

    def _fuzzy(self, ngrams, covered, low, toks, text):
        queries: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, j, key in ngrams:
            if covered[i:j + 1].any() or low[i] in STOP_WORDS or low[j] in STOP_WORDS:
                continue
            if len(key) < self.fuzzy_min_chars or not re.search(r"[a-z]{3}", key):
                continue
            if key not in queries and not all(
                self._word_close(w) for w in low[i:j + 1] if w not in STOP_WORDS
            ):
                continue
            queries[key].append((i, j))
        if not queries:
            return {}
        keys = list(queries)
        results = self.candidate_generator(keys, self.fuzzy_k)
        out: dict[tuple[int, int], dict[str, tuple[str, float, str]]] = {}
        for key, cands in zip(keys, results):
            best: dict[str, tuple[float, str]] = {}
            sims: dict[str, float] = {}
            for cand in cands:
                for alias in cand.aliases:
                    if alias not in sims:
                        sims[alias] = self.char_similarity(key, alias)
                        if sims[alias] >= self.fuzzy_threshold and not self._words_cover(key, alias):
                            sims[alias] = 0.0
                    sim = sims[alias]
                    if sim >= self.fuzzy_threshold and sim > best.get(cand.concept_id, (-1.0, ""))[0]:
                        best[cand.concept_id] = (sim, alias)
            if not best:
                continue
            top = max(v[0] for v in best.values())
            found = {c: ("fuzzy", sim, a) for c, (sim, a) in best.items() if sim >= top - 1e-9}
            for ij in queries[key]:
                out[ij] = found
        return out

    def _context(self, text, toks, low, gaps, inside=None):
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


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def link_documents(docs, linker: EntityLinker, progress: bool = False) -> pd.DataFrame:
    """Mentions of every note (kept and filtered), columns :data:`MENTION_COLUMNS`."""
    from rationale_kit.rationales import doc_texts

    texts = doc_texts(docs)
    it = texts.items()
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(texts), desc="entity linking")
    rows = []
    for nid, text in it:
        for m in linker.link(text):
            rows.append({"note_id": nid} | dataclasses.asdict(m))
    frame = pd.DataFrame(rows, columns=MENTION_COLUMNS)
    return frame.astype({"start": "int64", "end": "int64", "score": "float64"})


def entity_rationales(
    docs,
    codes_per_note: pd.DataFrame,
    linker: Optional[EntityLinker] = None,
    *,
    mentions: Optional[pd.DataFrame] = None,
    methods: Sequence[str] = ("exact_code", "category"),
    include_filtered: bool = False,
    source: str = "entity",
    model_name: str = "entity_linker",
    progress: bool = False,
) -> pd.DataFrame:
    """Entity-level rationale spans for the requested ``(note_id, code)`` pairs.

    Method ``exact_code``: kept mentions linked to the code. Method ``category``: kept mentions
    linked to any code of the same 3-character category (includes the exact ones). Spans are
    deduplicated per (note, code, method, start, end), keeping the highest score. With
    ``include_filtered`` the negated/family/historical mentions are added with their
    ``filtered_reason`` (so counts per reason can be shown); otherwise that column is ``""``.
    ``mentions`` (from :func:`link_documents`) avoids linking again. Codes that the linker's KB
    lacks are warned about and counted in ``frame.attrs["codes_not_in_kb"]``.
    """
    from rationale_kit.rationales import doc_texts

    bad = set(methods) - {"exact_code", "category"}
    if bad:
        raise ValueError(f"unknown entity rationale method(s) {sorted(bad)}")
    texts = doc_texts(docs)
    pairs = codes_per_note[["note_id", "code"]].astype({"note_id": str, "code": str})
    unknown = sorted(set(pairs["note_id"]) - set(texts))
    if unknown:
        raise DataError(f"codes_per_note: unknown note_id(s) {unknown[:5]}")
    pairs = pairs.drop_duplicates()
    if mentions is None:
        if linker is None:
            raise ValueError("entity_rationales needs a linker or precomputed mentions")
        sub = {nid: texts[nid] for nid in pairs["note_id"].unique()}
        mentions = link_documents(sub, linker, progress=progress)
    if linker is not None:
        known = set(linker.concepts)
        missing = sorted({c for c in pairs["code"] if _norm_code(c) not in known})
        if missing:
            warnings.warn(
                f"entity_rationales: {len(missing)} requested code(s) are not in the linker's KB "
                f"(no exact_code rationale possible), e.g. {missing[:5]}",
                stacklevel=2,
            )
    else:
        missing = []
    m = mentions if include_filtered else mentions[mentions["filtered_reason"] == ""]
    m = m.assign(cat=m["code"].map(category))
    by_note = {nid: g for nid, g in m.groupby("note_id", sort=False)}
    rows = []
    for nid, code in pairs.itertuples(index=False):
        g = by_note.get(nid)
        if g is None:
            continue
        ncode = _norm_code(code)
        for method in methods:
            sel = g[g["code"] == ncode] if method == "exact_code" else g[g["cat"] == category(ncode)]
            for r in sel.itertuples(index=False):
                rows.append(
                    {
                        "note_id": nid, "code": code, "start": int(r.start), "end": int(r.end),
                        "granularity": "", "source": source, "method": method, "model": model_name,
                        "score": float(r.score), "match": r.match, "linked_code": r.code,
                        "mention": r.text, "filtered_reason": r.filtered_reason,
                    }
                )
    frame = pd.DataFrame(rows, columns=ENTITY_SPAN_COLUMNS)
    if len(frame):
        frame = (
            frame.sort_values(["note_id", "code", "method", "start", "end", "filtered_reason", "score"],
                              ascending=[True, True, True, True, True, True, False])
            .drop_duplicates(["note_id", "code", "method", "start", "end", "filtered_reason"])
            .reset_index(drop=True)
        )
    frame = frame.astype({"start": "int64", "end": "int64", "score": "float64"})
    frame.attrs["codes_not_in_kb"] = len(missing)
    return frame
