"""Indexes over the knowledge base: exact alias/abbreviation lookup, scispacy's KB and TF-IDF
char-3-gram candidate generator (nmslib HNSW, cached on disk), and char-3-gram word similarity
for the fuzzy phase. See docs/method/entity.md.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from rationale_kit.rationales.entity.kb import Concept, case_key, normalize_alias, three_char_prefix

_INDEX_VERSION = 1

STOP_WORDS = frozenset(
    """a an the and or of in on at to for with without by from as is was were be been are has have
    had his her their its this that these those he she it they patient pt which who per not no
    yes s p o h x w""".split()
)
#: Minimum char-3-gram cosine between two single words for the fuzzy phase's word checks.
WORD_SIMILARITY = 0.5

#: ``{code: (match, score, alias)}``: what one span links to.
Links = dict[str, tuple[str, float, str]]


# --------------------------------------------------------------------------------------------
# exact lookup
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LexiconIndex:
    """Normalised alias -> codes (``exact``), abbreviation forms -> codes, case-sensitive forms by
    :func:`case_key` (``abbrev_cs``) and the others by :func:`normalize_alias` (``abbrev_ci``)."""

    exact: dict[str, set[str]]
    abbrev_cs: dict[str, set[str]]
    abbrev_ci: dict[str, set[str]]

    def matches(self, raw: str, key: str) -> Links:
        """Codes an n-gram links to: ``raw`` is its tokens joined by one space, ``key`` that
        lower-cased. An exact alias overrides an abbreviation form of the same code."""
        found: Links = {}
        for c in self.abbrev_cs.get(raw, ()):
            found[c] = ("abbreviation", 1.0, raw)
        for c in self.abbrev_ci.get(key, ()):
            found[c] = ("abbreviation", 1.0, key)
        for c in self.exact.get(key, ()):
            found[c] = ("exact", 1.0, key)
        return found

    def aliases_of(self) -> dict[str, list[str]]:
        """Per code, its normalised exact aliases and abbreviation forms (with repeats)."""
        out: dict[str, list[str]] = defaultdict(list)
        for table in (self.exact, self.abbrev_cs, self.abbrev_ci):
            for key, cs in table.items():
                for c in cs:
                    out[c].append(key)
        return out

    def fuzzy_aliases(self) -> list[str]:
        """The exact aliases of at least 4 characters, sorted: what the fuzzy index holds
        (abbreviations are not fuzzy-matched)."""
        return sorted(k for k in self.exact if len(k) >= 4)

    @property
    def n_abbreviation_forms(self) -> int:
        return len(self.abbrev_cs) + len(self.abbrev_ci)


def build_lexicon_index(concepts: Mapping[str, Concept], lex: Mapping) -> LexiconIndex:
    """The lookup tables of ``concepts`` plus the lexicon's synonyms (as exact aliases) and
    abbreviations (linked to their codes and to whatever their expansion names)."""
    exact: dict[str, set[str]] = defaultdict(set)
    abbrev_cs: dict[str, set[str]] = defaultdict(set)
    abbrev_ci: dict[str, set[str]] = defaultdict(set)
    for c in concepts.values():
        for a in c.aliases:
            exact[normalize_alias(a)].add(c.code)
        for a in c.abbreviations:
            abbrev_cs[case_key(a)].add(c.code)
    for entry in lex["synonyms"]:
        targets = {c for c in entry["codes"] if c in concepts}
        for form in entry["forms"]:
            if targets:
                exact[normalize_alias(form)] |= targets
    for entry in lex["abbreviations"]:
        targets = {c for c in entry["codes"] if c in concepts}
        if entry["expansion"]:
            targets |= exact.get(normalize_alias(entry["expansion"]), set())
        if not targets:
            continue
        for form in entry["forms"]:
            if entry["case_sensitive"]:
                abbrev_cs[case_key(form)] |= targets
            else:
                abbrev_ci[normalize_alias(form)] |= targets
    return LexiconIndex(dict(exact), dict(abbrev_cs), dict(abbrev_ci))


def scispacy_kb(concepts: Mapping[str, Concept], lexicon: LexiconIndex):
    """scispacy ``KnowledgeBase``: one ``Entity`` per code (``concept_id`` = dotted code); aliases
    = normalised exact aliases + abbreviation forms."""
    from scispacy.linking_utils import Entity, KnowledgeBase

    aliases_of = lexicon.aliases_of()
    entities = [
        Entity(
            concept_id=c.code,
            canonical_name=normalize_alias(c.name),
            aliases=sorted(set(aliases_of[c.code])),
            types=["category" if c.is_category else "code", three_char_prefix(c.code)],
            definition=c.name,
        )
        for c in concepts.values()
    ]
    return KnowledgeBase(entities)


# --------------------------------------------------------------------------------------------
# TF-IDF / ANN candidate generator
# --------------------------------------------------------------------------------------------
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

    The recipe of scispacy's ``create_tfidf_ann_index`` (see docs/method/entity.md for why that
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


@dataclass(frozen=True)
class CandidateIndex:
    """scispacy ``CandidateGenerator`` over the fuzzy aliases, and where its files are:
    ``cache_path`` (``None``: in memory only), ``from_cache`` (loaded rather than built)."""

    generator: object
    cache_path: Optional[Path]
    from_cache: bool


def candidate_index(aliases: list[str], kb, cache_dir, ef_search: int, threads: int) -> CandidateIndex:
    """Load the index of ``aliases`` from ``cache_dir`` (a sub-folder per alias-list hash) or
    build it (and write it there); ``cache_dir=None`` builds it in memory."""
    from scispacy.candidate_generation import CandidateGenerator, LinkerPaths

    key = hashlib.sha1(
        json.dumps([_INDEX_VERSION, aliases], ensure_ascii=False).encode("utf-8")
    ).hexdigest()[:16]
    cache_path, from_cache = None, False
    if cache_dir is not None:
        folder = Path(cache_dir) / f"icd10cm_tfidf_{key}"
        cache_path = folder
        folder.mkdir(parents=True, exist_ok=True)
        paths = LinkerPaths.from_directory(str(folder))
        if paths.is_locally_cached():
            kept, vectorizer, index = paths.load(ef_search=ef_search)
            from_cache = True
        else:
            kept, vectorizer, index = build_tfidf_ann_index(aliases, folder, ef_search=ef_search, threads=threads)
    else:
        kept, vectorizer, index = build_tfidf_ann_index(aliases, None, ef_search=ef_search, threads=threads)
    generator = CandidateGenerator(
        ann_index=index, tfidf_vectorizer=vectorizer, ann_concept_aliases_list=kept, kb=kb
    )
    return CandidateIndex(generator, cache_path, from_cache)


# --------------------------------------------------------------------------------------------
# char-3-gram similarity
# --------------------------------------------------------------------------------------------
class CharGramIndex:
    """Char-3-gram sets (the TF-IDF vectorizer's own analyser) of strings, and an index of the
    content words of the fuzzy aliases by 3-gram, for the fuzzy phase's similarity checks."""

    def __init__(self, analyzer: Callable[[str], list[str]], aliases: Sequence[str], threshold: float) -> None:
        self._analyzer = analyzer
        self.threshold = threshold
        self._gram_cache: dict[str, frozenset] = {}
        self._word_close_cache: dict[str, bool] = {}
        self._kb_words = sorted({w for a in aliases for w in a.split() if w not in STOP_WORDS})
        self._kb_word_set = set(self._kb_words)
        by_gram: dict[str, list[int]] = defaultdict(list)
        for k, w in enumerate(self._kb_words):
            for g in self.grams(w):
                by_gram[g].append(k)
        self._kb_word_by_gram = dict(by_gram)

    def grams(self, s: str) -> frozenset:
        """The char-3-gram set of ``s`` (cached)."""
        g = self._gram_cache.get(s)
        if g is None:
            if len(self._gram_cache) > 200_000:  # bound the memory over a large corpus
                self._gram_cache.clear()
            g = self._gram_cache[s] = frozenset(self._analyzer(s))
        return g

    def word_similarity(self, a: str, b: str) -> float:
        ga, gb = self.grams(a), self.grams(b)
        return len(ga & gb) / math.sqrt(len(ga) * len(gb)) if ga and gb else 0.0

    def word_close(self, w: str) -> bool:
        """Whether word ``w`` is within WORD_SIMILARITY of some word of the KB aliases."""
        hit = self._word_close_cache.get(w)
        if hit is None:
            if len(self._word_close_cache) > 200_000:
                self._word_close_cache.clear()
            if w in self._kb_word_set:
                hit = True
            else:
                counts: Counter = Counter()
                gw = self.grams(w)
                for g in gw:
                    counts.update(self._kb_word_by_gram.get(g, ()))
                hit = any(
                    c / math.sqrt(len(gw) * len(self.grams(self._kb_words[k]))) >= WORD_SIMILARITY
                    for k, c in counts.items()
                )
            self._word_close_cache[w] = hit
        return hit

    def words_cover(self, a: str, b: str) -> bool:
        """Every content word of ``a`` has a word of ``b`` within WORD_SIMILARITY, and back."""
        wa = [w for w in a.split() if w not in STOP_WORDS] or a.split()
        wb = [w for w in b.split() if w not in STOP_WORDS] or b.split()
        sim = self.word_similarity
        return all(max(sim(x, y) for y in wb) >= WORD_SIMILARITY for x in wa) and all(
            max(sim(y, x) for x in wa) >= WORD_SIMILARITY for y in wb
        )

    def char_similarity(self, a: str, b: str) -> float:
        """Cosine similarity of the char-3-gram sets of two normalised strings (words padded with
        a space, as the TF-IDF analyser does): ``|A & B| / sqrt(|A| |B|)``; 0.0 when its upper
        bound is already below the threshold."""
        ga, gb = self.grams(a), self.grams(b)
        if not ga or not gb:
            return 0.0
        small, large = sorted((len(ga), len(gb)))
        if math.sqrt(small / large) < self.threshold:  # upper bound of the cosine
            return 0.0
        return len(ga & gb) / math.sqrt(len(ga) * len(gb))
