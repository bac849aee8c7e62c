"""Units with character offsets, and conversion between spans and unit masks.

Any tokenizer's units are described by an offset array ``offsets`` of shape ``[n_units, 2]``
(int64, half-open character ranges into the raw note). Spans become unit masks and back through
these offsets, so no preprocessing ever loses the way back to the raw text.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

import numpy as np

WORD_RE = re.compile(r"\w+")


def word_units(text: str) -> np.ndarray:
    """Offsets ``[n_words, 2]`` of the ``\\w+`` words of ``text``."""
    spans = [m.span() for m in WORD_RE.finditer(text)]
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def count_words(text: str) -> int:
    """Number of ``\\w+`` words of ``text`` (the unit of ``data.max_words`` and corpus lengths)."""
    return len(WORD_RE.findall(text))


def mdace_tokens(text: str, max_number: int = 10) -> list[tuple[int, int, str]]:
    """MDACE tokens: ``\\w+`` on lower-cased text; numbers above ``max_number`` are dropped.

    Returns ``(start, end, token)`` triples with offsets into the lower-cased ``text`` (the same
    as into ``text`` unless lower-casing changes its length). A token is a number when
    ``str.isdigit()`` holds, as in MDACE's scorer; its value is read digit by digit with
    :func:`unicodedata.digit`, so superscript and other non-decimal digits ("²") are numbers too
    (``int("²")`` raises, which crashes the scorer itself).
    """
    out = []
    lowered = text.lower()
    for m in WORD_RE.finditer(lowered):
        tok = m.group()
        if tok.isdigit() and _digits_value(tok) > max_number:
            continue
        out.append((m.start(), m.end(), tok))
    return out


def _digits_value(tok: str) -> int:
    """Value of a string of digits (``str.isdigit()``), any Unicode digits included."""
    try:
        return int(tok)
    except ValueError:
        value = 0
        for ch in tok:
            value = 10 * value + unicodedata.digit(ch)
        return value


def span_mask(offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Boolean mask ``[n_units]``: a unit is selected when it overlaps any span (by >= 1 char)."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    mask = np.zeros(len(offsets), dtype=bool)
    if len(offsets) == 0:
        return mask
    starts, ends = offsets[:, 0], offsets[:, 1]
    for s, e in spans:
        mask |= (starts < e) & (ends > s) & (ends > starts)
    return mask


def mask_to_spans(offsets: np.ndarray, mask: np.ndarray) -> list[tuple[int, int]]:
    """Character spans covered by runs of selected units (a run spans the gaps inside it)."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    spans: list[tuple[int, int]] = []
    run_start = None
    for i, sel in enumerate(np.asarray(mask, dtype=bool)):
        if sel and run_start is None:
            run_start = i
        if not sel and run_start is not None:
            spans.append((int(offsets[run_start, 0]), int(offsets[i - 1, 1])))
            run_start = None
    if run_start is not None:
        spans.append((int(offsets[run_start, 0]), int(offsets[len(mask) - 1, 1])))
    return spans


def truncate_words(text: str, max_words: int) -> int:
    """Character index at which ``text`` is cut to keep its first ``max_words`` words."""
    for i, m in enumerate(WORD_RE.finditer(text)):
        if i == max_words:
            return m.start()
    return len(text)
