"""The embedded default corpus: a deterministic generator of SYNTHETIC discharge summaries with
ICD-10-CM codes and gold rationale spans (``mention``, ``evidence``, ``sentence``).

Every note, code and "human" span is synthetic, written by templates from the lexicon in ``lexicon/``;
no number computed on it estimates performance on MIMIC or any real clinical text. The same seed gives
the same corpus byte for byte. Parameters: :class:`rationale_kit.core.config.EmbeddedCorpus`. What it
can and cannot show, and its design: see docs/method/data.md.

Modules: :mod:`.lexicon` (loading, validating), :mod:`.planner` (what each note contains),
:mod:`.renderer` (templates, text and span offsets); here :func:`generate_corpus` and its summary.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rationale_kit.core.config import EmbeddedCorpus
from rationale_kit.core.records import SPAN_COLUMNS, DataError
from rationale_kit.core.text import count_words
from rationale_kit.data.embedded.lexicon import (
    CODE_KINDS,
    DISTRACTOR_SECTIONS,
    EVIDENCE_KINDS,
    LEXICON_DIR,
    LEXICON_FILES,
    MENTION_PLACEMENTS,
    PLACEMENTS,
    LexiconError,
    load_corpus_lexicon,
)
from rationale_kit.data.embedded.planner import CodeModel, generate_note
from rationale_kit.data.embedded.renderer import parse_template

__all__ = [
    "CODE_KINDS", "DISTRACTOR_COLUMNS", "DISTRACTOR_SECTIONS", "DOC_COLUMNS", "EVIDENCE_KINDS", "FEWSHOT_PER_CODE",
    "GRANULARITIES", "LEXICON_DIR", "LEXICON_FILES", "MENTION_PLACEMENTS", "PAIR_COLUMNS", "PLACEMENTS", "Corpus",
    "DataError", "LexiconError", "corpus_summary", "generate_corpus", "load_corpus_lexicon", "parse_template",
]

GRANULARITIES = ("mention", "evidence", "sentence")
DOC_COLUMNS = ["note_id", "text", "codes", "split", "annotated", "fewshot"]
DISTRACTOR_COLUMNS = ["note_id", "code", "start", "end", "kind"]
PAIR_COLUMNS = ["note_id", "code", "evidence"]


@dataclass(frozen=True)
class Corpus:
    """A generated corpus.

    - ``docs``: ``note_id, text, codes`` (sorted list), ``split`` (train|val|test), ``annotated``
      (True for the test notes: the evaluation set), ``fewshot`` (True for the ``n_fewshot_pool``
      training notes reserved as few-shot examples, chosen so that each code has up to
      :data:`FEWSHOT_PER_CODE` of them; ``annotated`` is False for these);
    - ``spans``: gold spans (:data:`rationale_kit.core.records.SPAN_COLUMNS`, ``source == "human"``) of
      EVERY note, granularities ``mention``, ``evidence``, ``sentence``;
    - ``codes``: ``code, description, frequency`` (training notes carrying the code);
    - ``lexicon_version``: ``<version>+<digest of the lexicon files>``;
    - ``distractors``: ``note_id, code, start, end, kind``: the words that name a code the note
      does NOT carry (negated, family history, ruled out, resolved, prophylaxis);
    - ``pairs``: ``note_id, code, evidence`` with evidence ``explicit | indirect | none``.
    """

    docs: pd.DataFrame
    spans: pd.DataFrame
    codes: pd.DataFrame
    lexicon_version: str
    distractors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DISTRACTOR_COLUMNS))
    pairs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PAIR_COLUMNS))


def _check_cfg(cfg: EmbeddedCorpus) -> None:
    for name in ("n_train", "n_val", "n_test", "n_fewshot_pool"):
        if getattr(cfg, name) < 0:
            raise DataError(f"data.embedded.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.n_fewshot_pool > cfg.n_train:
        raise DataError(f"data.embedded.n_fewshot_pool ({cfg.n_fewshot_pool}) exceeds n_train ({cfg.n_train})")
    if not 0 < cfg.min_words <= cfg.max_words:
        raise DataError(f"data.embedded: need 0 < min_words <= max_words, got {cfg.min_words}, {cfg.max_words}")
    for name in ("no_evidence_rate", "indirect_rate", "typo_rate"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise DataError(f"data.embedded.{name} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.no_evidence_rate + cfg.indirect_rate > 1.0:
        raise DataError("data.embedded: no_evidence_rate + indirect_rate must be <= 1")
    if cfg.distractor_rate < 0 or cfg.codes_per_note_mean < 1:
        raise DataError("data.embedded: need distractor_rate >= 0 and codes_per_note_mean >= 1")


FEWSHOT_PER_CODE = 5  # the paper's few-shot prompts hold 5 annotated examples per code


def _fewshot_pool(modes: list[dict[str, str]], size: int, codes: list[str], rng: random.Random,
                  per_code: int = FEWSHOT_PER_CODE) -> set[int]:
    """Training notes reserved as few-shot examples: first, for each code from the rarest up, notes
    that evidence it (explicitly or indirectly) until it has ``FEWSHOT_PER_CODE`` of them; then
    random notes up to ``size``. Rare codes therefore get examples when the pool allows."""
    order = rng.sample(range(len(modes)), len(modes))
    evidenced = [{c for c, m in md.items() if m != "none"} for md in modes]
    freq = {c: sum(c in ev for ev in evidenced) for c in codes}
    chosen: list[int] = []
    taken: set[int] = set()
    have = {c: 0 for c in codes}
    for code in sorted(codes, key=lambda c: (freq[c], codes.index(c))):
        for i in order:
            if len(chosen) >= size or have[code] >= per_code:
                break
            if i not in taken and code in evidenced[i]:
                chosen.append(i)
                taken.add(i)
                for c in evidenced[i]:
                    have[c] += 1
    for i in order:
        if len(chosen) >= size:
            break
        if i not in taken:
            chosen.append(i)
            taken.add(i)
    return taken


def generate_corpus(cfg: EmbeddedCorpus, seed: int, lexicon: dict | str | Path | None = None) -> Corpus:
    """Generate the synthetic corpus of ``cfg`` (see docs/method/data.md). Deterministic in
    ``(cfg, seed, lexicon)``. ``lexicon``: a :func:`load_corpus_lexicon` result or a path (default: packaged)."""
    _check_cfg(cfg)
    if lexicon is None:
        lexicon = getattr(cfg, "lexicon_path", None)
    lex = lexicon if isinstance(lexicon, dict) else load_corpus_lexicon(lexicon)
    model = CodeModel(lex, cfg.n_codes)
    n = cfg.n_train + cfg.n_val + cfg.n_test
    splits = ["train"] * cfg.n_train + ["val"] * cfg.n_val + ["test"] * cfg.n_test
    notes = [generate_note(model, cfg, seed, i) for i in range(n)]
    fewshot_idx = _fewshot_pool([notes[i][4] for i in range(cfg.n_train)], cfg.n_fewshot_pool, model.used,
                                random.Random(f"rationale-kit-corpus-fewshot:{seed}"),
                                getattr(cfg, "fewshot_per_code", FEWSHOT_PER_CODE))
    doc_rows, span_rows, dis_rows, pair_rows = [], [], [], []
    for i, (text, codes, spans, distractors, modes) in enumerate(notes):
        nid = f"syn-{i:06d}"
        doc_rows.append((nid, text, codes, splits[i], splits[i] == "test", i in fewshot_idx))
        seen = set()
        for code, a, b, g in sorted(spans, key=lambda s: (s[1], s[2], s[0], GRANULARITIES.index(s[3]))):
            if (code, a, b, g) not in seen:
                seen.add((code, a, b, g))
                span_rows.append((nid, code, a, b, g, "human"))
        for code, a, b, kind in sorted(distractors, key=lambda s: (s[1], s[2], s[0])):
            dis_rows.append((nid, code, a, b, kind))
        for c in codes:
            pair_rows.append((nid, c, modes[c]))
    docs = pd.DataFrame(doc_rows, columns=DOC_COLUMNS)
    docs = docs.astype({"annotated": bool, "fewshot": bool})
    spans = pd.DataFrame(span_rows, columns=SPAN_COLUMNS).astype({"start": "int64", "end": "int64"})
    distractors = pd.DataFrame(dis_rows, columns=DISTRACTOR_COLUMNS).astype({"start": "int64", "end": "int64"})
    pairs = pd.DataFrame(pair_rows, columns=PAIR_COLUMNS)
    freq: dict[str, int] = {c: 0 for c in model.used}
    for codes, split in zip(docs["codes"], docs["split"]):
        if split == "train":
            for c in codes:
                freq[c] += 1
    codes_frame = pd.DataFrame({"code": model.used,
                                "description": [model.by[c]["description"] for c in model.used],
                                "frequency": [freq[c] for c in model.used]})
    return Corpus(docs=docs, spans=spans, codes=codes_frame,
                  lexicon_version=f"{lex['version']}+{lex['digest'][:10]}",
                  distractors=distractors, pairs=pairs)


def corpus_summary(corpus: Corpus) -> pd.DataFrame:
    """One row per split (and ``all``): documents, annotated, few-shot, distinct codes, codes per
    document, words per document (mean, median, min, max; ``\\w+`` words), gold spans per
    granularity, distractors, and the share of (note, code) pairs evidenced explicitly, indirectly
    or not at all."""
    docs = corpus.docs
    words = docs["text"].map(count_words)
    split_of = dict(zip(docs["note_id"], docs["split"]))
    spans = corpus.spans.assign(split=corpus.spans["note_id"].map(split_of))
    dis = corpus.distractors.assign(split=corpus.distractors["note_id"].map(split_of))
    pairs = corpus.pairs.assign(split=corpus.pairs["note_id"].map(split_of))
    rows = []
    for split in ["train", "val", "test", "all"]:
        sel = docs["split"] == split if split != "all" else pd.Series(True, index=docs.index)
        if not sel.any():
            continue
        sp = spans if split == "all" else spans[spans["split"] == split]
        pr = pairs if split == "all" else pairs[pairs["split"] == split]
        n_codes = docs.loc[sel, "codes"].map(len)
        row = {
            "split": split,
            "documents": int(sel.sum()),
            "annotated": int(docs.loc[sel, "annotated"].sum()),
            "fewshot": int(docs.loc[sel, "fewshot"].sum()),
            "codes": len({c for cs in docs.loc[sel, "codes"] for c in cs}),
            "codes/doc": round(float(n_codes.mean()), 2),
            "words mean": round(float(words[sel].mean()), 1),
            "words median": float(words[sel].median()),
            "words min": int(words[sel].min()),
            "words max": int(words[sel].max()),
        }
        for g in GRANULARITIES:
            row[f"spans {g}"] = int((sp["granularity"] == g).sum())
        row["distractors"] = int(len(dis if split == "all" else dis[dis["split"] == split]))
        for mode in ("explicit", "indirect", "none"):
            row[f"pairs {mode}"] = round(float((pr["evidence"] == mode).mean()), 3) if len(pr) else 0.0
        rows.append(row)
    return pd.DataFrame(rows).set_index("split")
