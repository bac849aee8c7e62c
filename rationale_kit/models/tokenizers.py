"""Tokenised notes (:class:`Encoded`) and the two tokenizers of the coding models: words for
CAML/LAAT (:class:`WordTokenizer`), Hugging Face word pieces for PLM-ICD (:class:`PieceTokenizer`).
Both keep each unit's character offsets into the raw text. See docs/method/models.md.
"""
from __future__ import annotations

import functools
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from rationale_kit.core.text import WORD_RE, truncate_words

SPECIALS = ("<pad>", "<unk>", "<mask>", "<num>")
PAD_ID, UNK_ID, MASK_ID, NUM_ID = 0, 1, 2, 3


@dataclass(frozen=True, eq=False)
class Encoded:
    """A tokenised note: ``ids`` int64 ``[n]`` and ``offsets`` int64 ``[n, 2]`` (half-open
    character ranges into the raw text), already cut to the model's maximum length."""

    ids: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        offsets = np.asarray(self.offsets, dtype=np.int64).reshape(-1, 2)
        if len(ids) != len(offsets):
            raise ValueError(f"Encoded: {len(ids)} ids but {len(offsets)} offsets")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "offsets", offsets)

    def __len__(self) -> int:
        return len(self.ids)



@functools.lru_cache(maxsize=1024)
def _word_units(text: str, max_words: int, numbers: str) -> tuple[tuple[str, ...], np.ndarray]:
    """:meth:`WordTokenizer.units` of ``text``, cached: every model, student and faithfulness
    pass of a run tokenizes the same notes again (the offsets are read-only; callers copy)."""
    words, spans = [], []
    for m in itertools.islice(WORD_RE.finditer(text), max_words):
        w = m.group().lower()
        words.append("<num>" if numbers == "num" and w.isdigit() else w)
        spans.append(m.span())
    offsets = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    offsets.setflags(write=False)
    return tuple(words), offsets


class WordTokenizer:
    """``\\w+`` words, lower-cased, with their offsets; see docs/method/models.md."""

    kind = "word"
    pad_id = PAD_ID
    unk_id = UNK_ID
    mask_id = MASK_ID
    num_id = NUM_ID

    def __init__(self, vocab: Sequence[str], max_words: int = 4000, numbers: Literal["keep", "num"] = "keep"):
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        if numbers not in ("keep", "num"):
            raise ValueError(f"numbers must be 'keep' or 'num', got {numbers!r}")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_words = int(max_words)
        self.numbers = numbers

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def units(self, text: str) -> tuple[list[str], np.ndarray]:
        """The normalised words of ``text`` (cut at ``max_words``) and their offsets ``[n, 2]``."""
        words, offsets = _word_units(text, self.max_words, self.numbers)
        return list(words), offsets.copy()

    def tokens(self, text: str) -> list[str]:
        return self.units(text)[0]

    def encode(self, text: str) -> Encoded:
        words, offsets = _word_units(text, self.max_words, self.numbers)
        offsets = offsets.copy()
        get = self.index.get
        ids = np.fromiter((get(w, UNK_ID) for w in words), dtype=np.int64, count=len(words))
        return Encoded(ids, offsets)

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        min_count: int = 2,
        max_words: int = 4000,
        numbers: Literal["keep", "num"] = "keep",
    ) -> "WordTokenizer":
        """Vocabulary of the words seen at least ``min_count`` times in ``texts`` (each cut at
        ``max_words``), most frequent first, ties alphabetical."""
        probe = cls(list(SPECIALS), max_words=max_words, numbers=numbers)
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(probe.tokens(t))
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + words, max_words=max_words, numbers=numbers)

    def to_config(self) -> dict:
        return {"kind": self.kind, "max_words": self.max_words, "numbers": self.numbers}


class PieceTokenizer:
    """A Hugging Face fast tokenizer without special tokens; see docs/method/models.md."""

    kind = "hf"

    def __init__(self, hf_tokenizer: Any, max_tokens: int, max_words: int | None = 4000):
        if not getattr(hf_tokenizer, "is_fast", False):
            raise ValueError("PLM-ICD needs a *fast* Hugging Face tokenizer (character offsets)")
        from tokenizers import Tokenizer

        self.hf = hf_tokenizer
        # a private copy of the Rust tokenizer without the checkpoint's truncation / padding
        self._backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self.max_tokens = int(max_tokens)
        self.max_words = max_words
        pad = hf_tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        mask = hf_tokenizer.mask_token_id
        self.mask_id = int(mask) if mask is not None else self.pad_id

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> Encoded:
        if self.max_words is not None:
            text = text[: truncate_words(text, self.max_words)]
        enc = self._backend.encode(text, add_special_tokens=False)
        n = min(len(enc.ids), self.max_tokens)
        return Encoded(np.asarray(enc.ids[:n], dtype=np.int64), np.asarray(enc.offsets[:n], dtype=np.int64))

    def to_config(self) -> dict:
        return {"kind": self.kind, "max_tokens": self.max_tokens, "max_words": self.max_words}

