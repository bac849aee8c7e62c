"""Naive entity-level rationales: mentions found by entity linking that link to the code.

Offline: the knowledge base is built from ``simple-icd-10-cm`` plus the project lexicon
``abbreviations.yaml`` (:mod:`.kb`); scispacy's KB and TF-IDF candidate generator index it
(:mod:`.index`); :mod:`.mentions` finds exact, abbreviation and fuzzy mentions; :mod:`.context`
flags negated, family and historical ones; :mod:`.linker` puts them together
(:class:`EntityLinker`, :func:`link_documents`, :func:`entity_rationales`).
See docs/method/entity.md.
"""
from rationale_kit.rationales.entity.context import (
    FAMILY, HISTORICAL_POST, HISTORICAL_PRE, POST_NEGATION, PRE_NEGATION, PSEUDO_NEGATION, TERMINATION,
    ContextRules,
)
from rationale_kit.rationales.entity.index import (
    STOP_WORDS, WORD_SIMILARITY, CharGramIndex, LexiconIndex, build_lexicon_index, build_tfidf_ann_index,
)
from rationale_kit.rationales.entity.kb import (
    LEXICON_PATH, TOKEN_RE, Concept, alias_variants, build_concepts, core_name, kb_code, load_abbreviations,
    normalize_alias, three_char_prefix,
)
from rationale_kit.rationales.entity.linker import (
    ENTITY_SPAN_COLUMNS, MENTION_COLUMNS, EntityLinker, entity_rationales, link_documents,
)
from rationale_kit.rationales.entity.mentions import Mention, MentionFinder, MentionSettings

__all__ = [
    "ENTITY_SPAN_COLUMNS", "FAMILY", "HISTORICAL_POST", "HISTORICAL_PRE", "LEXICON_PATH", "MENTION_COLUMNS",
    "POST_NEGATION", "PRE_NEGATION", "PSEUDO_NEGATION", "STOP_WORDS", "TERMINATION", "TOKEN_RE",
    "WORD_SIMILARITY", "CharGramIndex", "Concept", "ContextRules", "EntityLinker", "LexiconIndex", "Mention",
    "MentionFinder", "MentionSettings", "alias_variants", "build_concepts", "build_lexicon_index",
    "build_tfidf_ann_index", "core_name", "entity_rationales", "kb_code", "link_documents",
    "load_abbreviations", "normalize_alias", "three_char_prefix",
]
