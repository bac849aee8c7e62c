"""The entity linker (KB + index + mention finder + context rules) and the tables built with it:
mentions per note (:func:`link_documents`) and entity-level rationale spans
(:func:`entity_rationales`). See docs/method/entity.md.
"""
from __future__ import annotations

import dataclasses
import os
import time
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from rationale_kit.core.documents import as_documents
from rationale_kit.core.records import SPAN_COLUMNS, DataError
from rationale_kit.core.runtime import progress as progress_bar
from rationale_kit.rationales.entity.context import ContextRules
from rationale_kit.rationales.entity.index import CharGramIndex, build_lexicon_index, candidate_index, scispacy_kb
from rationale_kit.rationales.entity.kb import (
    LEXICON_PATH, billable_codes, build_concepts, kb_code, lexicon_codes, load_abbreviations, three_char_prefix,
)
from rationale_kit.rationales.entity.mentions import Mention, MentionFinder, MentionSettings, tokenize

#: Columns of :func:`link_documents`' mention table.
MENTION_COLUMNS = [
    "note_id", "start", "end", "text", "code", "score", "match", "negated", "family",
    "historical", "filtered_reason", "alias",
]
#: Columns of :func:`entity_rationales`' span table.
ENTITY_SPAN_COLUMNS = SPAN_COLUMNS + [
    "method", "model", "score", "match", "linked_code", "mention", "filtered_reason",
]
_NO_LEXICON = {"abbreviations": [], "synonyms": []}


def _requested_codes(codes: Optional[Iterable[str]], all_billable: bool) -> list[str]:
    if codes is None:
        if not all_billable:
            raise ValueError("EntityLinker: give a list of codes or all_billable=True")
        codes = billable_codes()
    elif all_billable:
        codes = list(codes) + billable_codes()
    return list(dict.fromkeys(kb_code(c) for c in codes))


class EntityLinker:
    """Dictionary + fuzzy entity linker to ICD-10-CM codes, with NegEx-style context filters.

    Parameters
    ----------
    codes: the codes to link to (dotted or not). ``None`` with ``all_billable=True``: every billable
        (leaf) ICD-10-CM code (about 74,000; the index then takes minutes to build, once per cache).
    kb_cache_dir: folder for the TF-IDF/ANN index (a sub-folder per KB content hash); ``None``
        keeps it in memory only.
    fuzzy_threshold: minimum char-3-gram cosine similarity of a fuzzy match (docs/method/entity.md).
    descriptions: extra titles per code (e.g. MIMIC's ``d_icd_diagnoses``).
    lexicon: the abbreviation/synonym lexicon (:func:`load_abbreviations`); ``None``: none.
    include_categories: add a concept per 3-character category of the codes.
    include_lexicon_codes: add the lexicon's target codes to the KB (so "T2DM" always links to
        E11.9, which the category match then relates to E11.65).
    max_ngram, fuzzy, fuzzy_k, fuzzy_min_chars: mention detection (:class:`MentionSettings`).
    negation_window, filter_negated, filter_family, filter_historical: context filters
        (:class:`ContextRules`).
    ef_search, index_threads: nmslib query / build settings (threads default min(4, CPUs)).

    Attributes: ``kb`` (scispacy ``KnowledgeBase``), ``candidate_generator`` (scispacy
    ``CandidateGenerator``), ``concepts``, ``descriptions``, ``unknown_codes`` (requested codes
    without a title), ``build_seconds`` (KB + index, without the one-off scispacy import),
    ``cache_path``, ``index_from_cache``, ``lexicon_index``, ``mention_settings``,
    ``context_rules``, ``grams`` (:class:`CharGramIndex`, ``None`` without the fuzzy index).
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

        t0 = time.perf_counter()
        self.import_seconds = t0 - t_import
        requested = _requested_codes(codes, all_billable)
        if not 0.0 < fuzzy_threshold <= 1.0:
            raise ValueError(f"fuzzy_threshold must be in (0, 1], got {fuzzy_threshold}")
        self.mention_settings = MentionSettings(
            int(max_ngram), bool(fuzzy), int(fuzzy_k), int(fuzzy_min_chars), float(fuzzy_threshold)
        )
        self.context_rules = ContextRules(int(negation_window), filter_negated, filter_family, filter_historical)
        self.verbose = verbose

        lex = load_abbreviations(lexicon) if lexicon is not None else _NO_LEXICON
        all_codes = requested + (lexicon_codes(lex) if include_lexicon_codes else [])
        concepts, unknown = build_concepts(all_codes, descriptions, include_categories)
        self.unknown_codes = [c for c in unknown if c in set(requested)]
        if self.unknown_codes:
            warnings.warn(
                f"EntityLinker: {len(self.unknown_codes)} code(s) have no ICD-10-CM title and "
                f"cannot be linked to (e.g. {self.unknown_codes[:5]}); pass descriptions= for them",
                stacklevel=2,
            )
        self.requested_codes = [c for c in requested if c in concepts]
        self.lexicon_index = build_lexicon_index(concepts, lex)
        self.concepts = concepts
        self.descriptions = {c.code: c.name for c in concepts.values()}
        self.kb = scispacy_kb(concepts, self.lexicon_index)
        t1 = time.perf_counter()

        self.candidate_generator, self.grams = None, None
        self.cache_path: Optional[Path] = None
        self.index_from_cache = False
        index_aliases = self.lexicon_index.fuzzy_aliases()
        if self.mention_settings.fuzzy and index_aliases:
            threads = index_threads or min(4, os.cpu_count() or 1)
            found = candidate_index(index_aliases, self.kb, kb_cache_dir, ef_search, threads)
            self.candidate_generator, self.cache_path = found.generator, found.cache_path
            self.index_from_cache = found.from_cache
            analyzer = self.candidate_generator.vectorizer.build_analyzer()
            self.grams = CharGramIndex(analyzer, index_aliases, self.mention_settings.fuzzy_threshold)
        self.finder = MentionFinder(self.lexicon_index, self.mention_settings, self.candidate_generator, self.grams)
        self.kb_seconds = t1 - t0
        self.build_seconds = time.perf_counter() - t0
        self.n_aliases = len(self.lexicon_index.exact)
        if verbose:
            print(self.summary())

    def summary(self) -> str:
        n_cat = sum(c.is_category for c in self.concepts.values())
        where = f"cache {self.cache_path}" + (" (loaded)" if self.index_from_cache else " (built)") \
            if self.cache_path else "in memory"
        return (
            f"EntityLinker: {len(self.concepts)} concepts ({n_cat} categories), {self.n_aliases} "
            f"aliases, {self.lexicon_index.n_abbreviation_forms} abbreviation forms; KB "
            f"{self.kb_seconds:.2f} s, KB + index {self.build_seconds:.2f} s (scispacy import "
            f"{self.import_seconds:.1f} s); index {where}"
        )

    def char_similarity(self, a: str, b: str) -> float:
        """Cosine similarity of the char-3-gram sets of two normalised strings
        (:meth:`CharGramIndex.char_similarity`; needs the fuzzy index)."""
        return self.grams.char_similarity(a, b)

    def link(self, text: str) -> list[Mention]:
        """All linked mentions of ``text`` (kept and filtered), sorted by position."""
        tokens = tokenize(text)
        if len(tokens) == 0:
            return []
        spans, accepted = self.finder.find(tokens)
        # a trigger word inside an accepted mention ("diabetes mellitus without complications")
        # is part of that title, not a negation of what follows
        inside = np.zeros(len(tokens), dtype=bool)
        for i, j in accepted:
            inside[i:j + 1] = True
        ctx = self.context_rules.flags(text, tokens.bounds, tokens.low, tokens.gaps, inside)
        out: list[Mention] = []
        for i, j in sorted(accepted):
            s, e = tokens.bounds[i][0], tokens.bounds[j][1]
            neg, fam, hist = ctx(i, j)
            for code, (match, score, alias) in sorted(spans[(i, j)].items()):
                fam_c = fam and not self.descriptions.get(code, "").lower().startswith("family history")
                reason = self.context_rules.reason(neg, fam_c, hist)
                out.append(
                    Mention(s, e, text[s:e], code, float(score), match, bool(neg), bool(fam_c),
                            reason, bool(hist), alias)
                )
        return out


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def link_documents(docs, linker: EntityLinker, progress: bool = False) -> pd.DataFrame:
    """Mentions of every note (kept and filtered), columns :data:`MENTION_COLUMNS`."""
    texts = as_documents(docs)
    rows = []
    for nid, text in progress_bar(texts.items(), enabled=progress, total=len(texts), desc="entity linking"):
        for m in linker.link(text):
            rows.append({"note_id": nid} | dataclasses.asdict(m))
    frame = pd.DataFrame(rows, columns=MENTION_COLUMNS)
    return frame.astype({"start": "int64", "end": "int64", "score": "float64"})


def _codes_not_in_kb(pairs: pd.DataFrame, linker: Optional[EntityLinker]) -> list[str]:
    """Requested codes the linker's KB lacks (warned about; none known without a linker)."""
    if linker is None:
        return []
    known = set(linker.concepts)
    missing = sorted({c for c in pairs["code"] if kb_code(c) not in known})
    if missing:
        warnings.warn(
            f"entity_rationales: {len(missing)} requested code(s) are not in the linker's KB "
            f"(no exact_code rationale possible), e.g. {missing[:5]}",
            stacklevel=3,
        )
    return missing


def _rationale_rows(pairs: pd.DataFrame, m: pd.DataFrame, methods, source: str, model_name: str) -> list[dict]:
    """One row per (requested pair, method, mention that links to it), in pair order, then
    method, then mention order (the order decides which of two equal spans the caller keeps)."""
    cats = m["code"].map(three_char_prefix).tolist()
    recs = zip(m["note_id"].tolist(), m["code"].tolist(), cats, m["start"].tolist(), m["end"].tolist(),
               m["score"].tolist(), m["match"].tolist(), m["text"].tolist(), m["filtered_reason"].tolist())
    by_code: dict[tuple, list] = {}
    by_cat: dict[tuple, list] = {}
    for r in recs:  # plain lists, one pass: no DataFrame filtering per pair
        by_code.setdefault((r[0], r[1]), []).append(r)
        by_cat.setdefault((r[0], r[2]), []).append(r)
    rows = []
    for nid, code in zip(pairs["note_id"].tolist(), pairs["code"].tolist()):
        ncode = kb_code(code)
        for method in methods:
            sel = by_code.get((nid, ncode), ()) if method == "exact_code" else by_cat.get((nid, three_char_prefix(ncode)), ())
            for _, linked, _, start, end, score, match, text, reason in sel:
                rows.append(
                    {
                        "note_id": nid, "code": code, "start": int(start), "end": int(end),
                        "granularity": "", "source": source, "method": method, "model": model_name,
                        "score": float(score), "match": match, "linked_code": linked,
                        "mention": text, "filtered_reason": reason,
                    }
                )
    return rows


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
    bad = set(methods) - {"exact_code", "category"}
    if bad:
        raise ValueError(f"unknown entity rationale method(s) {sorted(bad)}")
    texts = as_documents(docs)
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
    missing = _codes_not_in_kb(pairs, linker)
    m = mentions if include_filtered else mentions[mentions["filtered_reason"] == ""]
    rows = _rationale_rows(pairs, m, methods, source, model_name)
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
