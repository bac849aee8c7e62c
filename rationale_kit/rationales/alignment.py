"""Alignment of LLM quotes to character spans of their note.

An LLM asked for the evidence of a code answers with *quotes*; this module finds where each quote
sits in the raw note (normalised exact match, then a fuzzy token-window match, then the quote split
into parts) and returns half-open character spans ``[start, end)`` into the raw text. See
docs/method/alignment.md for the rules, the search and its guarantee.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import numpy as np
import pandas as pd

from rationale_kit.core.documents import as_documents
from rationale_kit.core.records import SPAN_COLUMNS, DataError

Occurrences = Literal["all", "first"]
METHODS = ("exact", "fuzzy", "split_exact", "split_fuzzy", "unaligned")
REASONS = ("empty", "no_overlap", "below_threshold")

_EPS = 1e-9
_WORD_RE = re.compile(r"\w+")

# --- normalisation -------------------------------------------------------------------------------

_QUOTE_CHARS = {c: "'" for c in "\u2018\u2019\u201a\u201b\u2032\u0060\u00b4"}
_QUOTE_CHARS.update({c: '"' for c in "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"})
_DASH_CHARS = {c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2043\ufe58\ufe63\uff0d"}
_INLINE_BULLETS = "\u2022\u00b7\u25e6\u25aa\u2023\u25cf\u25a0\u25a1\u25cb\u2219"
_CHAR_TABLE = str.maketrans({**_QUOTE_CHARS, **_DASH_CHARS, **{c: " " for c in _INLINE_BULLETS}})
# All Unicode whitespace except "\n" (needed by the line-start rule) -> " " ; then "\n" -> " ".
_WS_CHARS = [chr(i) for i in range(0x3001) if chr(i).isspace()]
_WS_TABLE = str.maketrans({c: " " for c in _WS_CHARS})
# A list marker at the start of a line, followed by horizontal whitespace (or the end of the line).
_MARKER_RE = re.compile(
    r"(?m)^[^\S\n]*(?:[-*>+]+|\(?\d{1,3}[.)]|\([a-z]\)|[a-z]\))(?=[^\S\n]|$)"
)
_QUOTE_STRIP = " \"'.,;:"


def alignment_form_with_offsets(text: str) -> tuple[str, np.ndarray]:
    """The form notes and quotes are matched in (normalised ``text``) and the raw offset of each
    of its characters (int64 array).

    See docs/method/alignment.md for the rules. ``len(index) == len(normalised)``.
    """
    t = text.translate(_CHAR_TABLE)
    low = t.lower()
    base: np.ndarray | None = None
    if len(low) != len(t):  # a character whose lower case has several characters (rare)
        chars, idx = [], []
        for i, c in enumerate(t):
            lc = c.lower()
            chars.append(lc)
            idx.extend([i] * len(lc))
        low, base = "".join(chars), np.asarray(idx, dtype=np.int64)
    t = low
    pieces, last = [], 0
    for m in _MARKER_RE.finditer(t):  # blank list markers (same length: offsets unchanged)
        if m.end() > m.start():
            pieces.append(t[last:m.start()])
            pieces.append(" " * (m.end() - m.start()))
            last = m.end()
    if pieces:
        pieces.append(t[last:])
        t = "".join(pieces)
    t = t.translate(_WS_TABLE)
    if not t:
        return "", np.zeros(0, dtype=np.int64)
    arr = np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32)
    space = arr == 32
    keep = ~space
    nonspace = np.flatnonzero(keep)
    if len(nonspace) == 0:
        return "", np.zeros(0, dtype=np.int64)
    # keep the first space of each run between two non-space characters
    keep[1:] |= space[1:] & ~space[:-1]
    keep[: nonspace[0]] = False
    keep[nonspace[-1] + 1:] = False
    idx = np.flatnonzero(keep)
    norm = arr[idx].tobytes().decode("utf-32-le")
    if base is not None:
        idx = base[idx]
    return norm, idx.astype(np.int64)


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _word_bounded_matches(text: str, needle: str, occurrences: Occurrences = "all") -> list[tuple[int, int]]:
    """``(start, end)`` of the occurrences of ``needle`` in ``text`` that do not cut a word: a
    needle that starts (ends) with a word character must not be preceded (followed) by one.
    Matches do not overlap; ``occurrences="first"`` stops at the first. Empty needle: none."""
    if not needle:
        return []
    n, k = len(text), len(needle)
    check_left, check_right = _is_word_char(needle[0]), _is_word_char(needle[-1])
    out: list[tuple[int, int]] = []
    pos = text.find(needle)
    while pos >= 0:
        end = pos + k
        if not (check_left and pos > 0 and _is_word_char(text[pos - 1])) and not (
                check_right and end < n and _is_word_char(text[end])):
            out.append((pos, end))
            if occurrences == "first":
                break
            pos = text.find(needle, end)
        else:
            pos = text.find(needle, pos + 1)
    return out


def alignment_form(text: str) -> str:
    """``alignment_form_with_offsets(text)[0]`` without the index map (faster; used for quotes)."""
    t = text.translate(_CHAR_TABLE)
    low = t.lower()
    if len(low) != len(t):
        return alignment_form_with_offsets(text)[0]
    return " ".join(_MARKER_RE.sub(" ", low).split())


def _quote_alignment_form(quote: str) -> str:
    # strip surrounding quotation marks first so a list marker right after one is still removed
    return alignment_form(quote.strip(_QUOTE_STRIP + "\u201c\u201d\u2018\u2019\n\t")).strip(_QUOTE_STRIP)


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignedQuote:
    """One aligned span of a quote (or the quote's failure).

    ``start``/``end`` are raw character offsets (``None`` when unaligned); ``score`` is token
    precision + token recall (2.0 for exact matches; the best score found when unaligned);
    ``method`` one of :data:`METHODS`; ``reason`` is ``None`` when aligned, else one of
    :data:`REASONS`; ``part`` is the piece of the quote this row is about (the whole quote unless
    the quote was split).
    """

    note_id: str
    code: str
    quote: str
    start: int | None
    end: int | None
    score: float
    method: str
    reason: str | None = None
    part: str = ""

    @property
    def aligned(self) -> bool:
        return self.start is not None


# --- per-note index ------------------------------------------------------------------------------


class NoteIndex:
    """A note prepared for aligning many quotes: normalised text, tokens and inverted index."""

    def __init__(self, text: str):
        self.text = text
        self.norm, self.index = alignment_form_with_offsets(text)
        words = _WORD_RE.findall(self.norm)
        ns = np.fromiter((m.start() for m in _WORD_RE.finditer(self.norm)), dtype=np.int64, count=len(words))
        ne = ns + np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        vocab: dict[str, int] = {}
        ids = [vocab.setdefault(w, len(vocab)) for w in words]
        self.vocab = vocab
        self.tok_start = self.index[ns] if len(ns) else ns  # raw offsets
        self.tok_end = self.index[ne - 1] + 1 if len(ne) else ne
        self.tok_ids = np.asarray(ids, dtype=np.int64)
        self.freq = np.bincount(self.tok_ids, minlength=len(vocab)) if len(ids) else np.zeros(0, np.int64)
        order = np.argsort(self.tok_ids, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(self.freq)])
        self._order, self._bounds = order, bounds

    @property
    def n_tokens(self) -> int:
        return len(self.tok_ids)

    def positions(self, tid: int) -> np.ndarray:
        """Sorted token positions of vocabulary id ``tid``."""
        return self._order[self._bounds[tid]:self._bounds[tid + 1]]

    # -- exact ---------------------------------------------------------------------------------
    def exact(self, qnorm: str, occurrences: Occurrences = "all") -> list[tuple[int, int]]:
        """Raw spans of the word-boundary-respecting occurrences of normalised quote ``qnorm``."""
        return [(int(self.index[a]), int(self.index[b - 1]) + 1)
                for a, b in _word_bounded_matches(self.norm, qnorm, occurrences)]

    def verbatim(self, piece: str, occurrences: Occurrences = "all") -> list[tuple[int, int]]:
        """Raw spans where ``piece`` (stripped of surrounding whitespace) occurs character for
        character in the note, at word boundaries. The fallback for quotes the alignment form
        loses: a list marker such as ``1.`` is blanked at the start of a line, so the quote
        ``'1.'`` has no normalised match although it is in the note."""
        return _word_bounded_matches(self.text, piece.strip(), occurrences)

    # -- fuzzy ---------------------------------------------------------------------------------
    def fuzzy(
        self, qtokens: Sequence[str], threshold: float = 1.7, occurrences: Occurrences = "all"
    ) -> tuple[float, list[tuple[int, int]]]:
        """Best token-window score for ``qtokens`` and, when it reaches ``threshold``, the raw
        spans of the (non-overlapping) best windows; else ``(best_found, [])``.

        See docs/method/alignment.md for the algorithm and its guarantee.
        """
        m = len(qtokens)
        if m == 0 or self.n_tokens == 0:
            return 0.0, []
        qcount = Counter(qtokens)
        present = [(self.vocab[t], c) for t, c in qcount.items() if t in self.vocab]
        if not present:
            return 0.0, []
        o_min, l_max = _window_bounds(m, threshold)
        matched, mtype = self._matched_near_anchors(qtokens, present, o_min, l_max)
        qvec = np.array([c for _, c in present], dtype=np.int64)
        best, best_seen, cands = _best_windows(matched, mtype, qvec, m, o_min, l_max)
        if best < threshold - _EPS:
            return min(max(best, best_seen, 0.0), 2.0), []
        return min(best, 2.0), self._window_spans(cands, occurrences)

    def _matched_near_anchors(
        self, qtokens: Sequence[str], present: list[tuple[int, int]], o_min: int, l_max: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sorted note positions of the quote's tokens within ``l_max - 1`` of an anchor (a
        position of one of the rarest quote-token instances), and the index in ``present`` of
        the token at each."""
        m = len(qtokens)
        # rarest quote-token instances: absent tokens first (frequency 0)
        instances = sorted(
            ((int(self.freq[self.vocab[t]]) if t in self.vocab else 0, t) for t in qtokens)
        )
        k = m - o_min + 1
        rare = {self.vocab[t] for f, t in instances[:max(k, 0)] if f > 0}
        if not rare:  # no window can reach the threshold; look around every quote token for a score
            rare = {tid for tid, _ in present}
        anchors = np.sort(np.concatenate([self.positions(tid) for tid in rare]))
        tids = np.array([tid for tid, _ in present], dtype=np.int64)
        matched = np.concatenate([self.positions(tid) for tid in tids])
        mtype = np.repeat(np.arange(len(tids)), [len(self.positions(t)) for t in tids])
        order = np.argsort(matched, kind="stable")
        matched, mtype = matched[order], mtype[order]
        # keep matched positions within l_max - 1 of an anchor
        j = np.searchsorted(anchors, matched)
        left = anchors[np.maximum(j - 1, 0)]
        right = anchors[np.minimum(j, len(anchors) - 1)]
        dist = np.minimum(np.abs(matched - left), np.abs(right - matched))
        near = dist <= l_max - 1
        return matched[near], mtype[near]

    def _window_spans(self, cands: list[np.ndarray], occurrences: Occurrences) -> list[tuple[int, int]]:
        """Raw spans of the non-overlapping best windows (leftmost first; the longer overlap
        first among windows with the same start and end)."""
        rows = np.concatenate(cands)
        rows = rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]
        spans: list[tuple[int, int]] = []
        last_end = -1
        for s, e, _ in rows:
            if s > last_end:
                spans.append((int(self.tok_start[s]), int(self.tok_end[e])))
                last_end = e
                if occurrences == "first":
                    break
        return spans

    # -- one quote -----------------------------------------------------------------------------
    def align(
        self,
        quote: str | None,
        threshold: float = 1.7,
        occurrences: Occurrences = "all",
        note_id: str = "",
        code: str = "",
    ) -> list[AlignedQuote]:
        """Align one quote; always returns at least one row (an unaligned one on failure)."""
        if occurrences not in ("all", "first"):
            raise ValueError(f"occurrences must be 'all' or 'first', got {occurrences!r}")
        q = "" if quote is None or (isinstance(quote, float) and math.isnan(quote)) else str(quote)
        # An ellipsis marks an omission: the pieces are quoted separately, so they are aligned
        # separately (a fuzzy window across the gap could accept text the LLM skipped).
        has_ellipsis = ("..." in q or "\u2026" in q) and len([p for p in _split_quote(q) if _WORD_RE.search(p)]) > 1
        rows, reason, score = ([], "split", 0.0) if has_ellipsis else self._align_piece(
            q, threshold, occurrences, note_id, code, q, split=False)
        if rows:
            return rows
        parts = [p for p in _split_quote(q) if _WORD_RE.search(p)]
        if len(parts) > 1:
            out: list[AlignedQuote] = []
            failed: list[AlignedQuote] = []
            for part in parts:
                prow, preason, pscore = self._align_piece(
                    part, threshold, occurrences, note_id, code, q, split=True
                )
                if prow:
                    out.extend(prow)
                else:
                    failed.append(AlignedQuote(note_id, code, q, None, None, pscore, "unaligned", preason, part))
            if out:
                return out + failed
        return [AlignedQuote(note_id, code, q, None, None, score, "unaligned", reason, q)]

    def _align_piece(self, piece, threshold, occurrences, note_id, code, quote, split):
        qnorm = _quote_alignment_form(piece)
        qtokens = _WORD_RE.findall(qnorm)
        if not qtokens:
            return [], "empty", 0.0
        prefix = "split_" if split else ""
        spans = self.exact(qnorm, occurrences) or self.verbatim(piece, occurrences)
        if spans:
            return [AlignedQuote(note_id, code, quote, s, e, 2.0, prefix + "exact", None, piece) for s, e in spans], None, 2.0
        score, spans = self.fuzzy(qtokens, threshold, occurrences)
        if spans:
            return [AlignedQuote(note_id, code, quote, s, e, score, prefix + "fuzzy", None, piece) for s, e in spans], None, score
        return [], ("no_overlap" if score <= 0 else "below_threshold"), score


def _window_bounds(m: int, threshold: float) -> tuple[int, int]:
    """``(o_min, l_max)``: the least overlap and the most tokens of a window of a quote of ``m``
    tokens that can reach ``threshold``."""
    if threshold > 1:
        o_min = max(1, math.ceil((threshold - 1) * m - _EPS))
        l_max = min(math.floor(m / (threshold - 1) + _EPS), max(2 * m, m + 4))
    else:
        o_min, l_max = 1, max(2 * m, m + 4)
    return o_min, max(l_max, 1)


def _best_windows(
    matched: np.ndarray, mtype: np.ndarray, qvec: np.ndarray, m: int, o_min: int, l_max: int
) -> tuple[float, float, list[np.ndarray]]:
    """Score the windows between matched positions ``matched`` (token types ``mtype``, quote
    counts ``qvec``). Returns the best score (-1 when no start is viable), the best score of the
    pruning windows and the best windows as rows ``(start_pos, end_pos, overlap)``."""
    nm = len(matched)
    onehot = np.zeros((nm + 1, len(qvec)), dtype=np.int32)
    onehot[np.arange(1, nm + 1), mtype] = 1
    cum = np.cumsum(onehot, axis=0)
    # Upper bound: the longest window (<= l_max tokens) starting at each matched position
    # contains every shorter one, so a start is viable only if that window reaches o_min.
    # These windows are real ones: their best score is a lower bound of the best score.
    xs = np.arange(nm)
    yend = np.searchsorted(matched, matched + l_max, side="left") - 1
    ov_ub = np.minimum(cum[yend + 1] - cum[xs], qvec).sum(axis=1)
    best_seen = float((ov_ub / (matched[yend] - matched + 1) + ov_ub / m).max())
    x0 = np.flatnonzero(ov_ub >= o_min)
    best = -1.0
    cands: list[np.ndarray] = []  # rows of (start_pos, end_pos, overlap)
    if len(x0):
        # every window (x, y), x viable, x <= y <= yend[x], evaluated at once (in chunks)
        n_y = yend[x0] - x0 + 1
        chunk = max(1, 2_000_000 // max(1, len(qvec)) // max(1, int(n_y.max())))
        for c0 in range(0, len(x0), chunk):
            xc, nc = x0[c0:c0 + chunk], n_y[c0:c0 + chunk]
            x = np.repeat(xc, nc)
            y = x + (np.arange(len(x)) - np.repeat(np.cumsum(nc) - nc, nc))
            length = matched[y] - matched[x] + 1
            ov = np.minimum(cum[y + 1] - cum[x], qvec).sum(axis=1)
            score = ov / length + ov / m
            top = float(score.max())
            if top > best + _EPS:
                best, cands = top, []
            if top >= best - _EPS:
                sel = score >= best - _EPS
                cands.append(np.stack([matched[x[sel]], matched[y[sel]], ov[sel]], axis=1))
    return best, best_seen, cands


_SPLIT_RE = re.compile(r"\.(?:\s*\.){2,}|\u2026|;|\||\s/\s|\n+|[\u2022\u00b7\u25e6\u25aa\u2023\u25cf\u25a0]")


def _split_quote(quote: str) -> list[str]:
    """Pieces of ``quote`` between ellipses and list separators (stripped, non-empty)."""
    return [p.strip() for p in _SPLIT_RE.split(quote) if p.strip()]


# --- public API ----------------------------------------------------------------------------------


def align_quote(
    note_text: str, quote: str, threshold: float = 1.7, occurrences: Occurrences = "all"
) -> list[AlignedQuote]:
    """Align ``quote`` to ``note_text`` (docs/method/alignment.md). ``note_id``/``code`` are empty."""
    return NoteIndex(note_text).align(quote, threshold, occurrences)


_OUT_COLUMNS = ["start", "end", "score", "method", "reason", "part", "quote_row"]


def align_quotes(
    docs,
    quotes: pd.DataFrame,
    threshold: float = 1.7,
    occurrences: Occurrences = "all",
) -> pd.DataFrame:
    """Align every quote of ``quotes`` (``note_id, code, quote``, extra columns kept) to ``docs``
    (anything :func:`~rationale_kit.core.documents.as_documents` accepts: a ``note_id, text``
    table, ``Documents``...).

    Returns one row per aligned span, plus one row per unaligned quote (or unaligned part):
    the input columns, then ``start, end`` (nullable Int64, NA when unaligned), ``score``,
    ``method``, ``reason`` (NA when aligned), ``part`` and ``quote_row`` (0-based position of the
    quote in ``quotes``). Raises :class:`DataError` naming an unknown ``note_id``.
    """
    texts = as_documents(docs)
    for col in ("note_id", "code", "quote"):
        if col not in quotes.columns:
            raise DataError(f"quotes: missing column {col!r}")
    note_ids = quotes["note_id"].astype(str).tolist()
    unknown = sorted(set(note_ids) - set(texts))
    if unknown:
        raise DataError(f"quotes: unknown note_id {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    indexes: dict[str, NoteIndex] = {}
    cache: dict[tuple[str, str], list[AlignedQuote]] = {}
    src_rows: list[int] = []
    cols: dict[str, list] = {c: [] for c in _OUT_COLUMNS}
    for i, (nid, q) in enumerate(zip(note_ids, quotes["quote"].tolist())):
        qs = "" if q is None or (isinstance(q, float) and math.isnan(q)) else str(q)
        key = (nid, qs)
        res = cache.get(key)
        if res is None:
            idx = indexes.get(nid)
            if idx is None:
                idx = indexes[nid] = NoteIndex(texts[nid])
            res = cache[key] = idx.align(qs, threshold, occurrences)
        for r in res:
            src_rows.append(i)
            cols["start"].append(r.start)
            cols["end"].append(r.end)
            cols["score"].append(r.score)
            cols["method"].append(r.method)
            cols["reason"].append(r.reason)
            cols["part"].append(r.part)
            cols["quote_row"].append(i)
    out = quotes.iloc[src_rows].reset_index(drop=True).copy()
    out["note_id"] = out["note_id"].astype(str)
    out["start"] = pd.array(cols["start"], dtype="Int64")
    out["end"] = pd.array(cols["end"], dtype="Int64")
    out["score"] = np.asarray(cols["score"], dtype=np.float64)
    out["method"] = pd.Series(cols["method"], dtype=object)
    out["reason"] = pd.Series(cols["reason"], dtype=object)
    out["part"] = pd.Series(cols["part"], dtype=object)
    out["quote_row"] = np.asarray(cols["quote_row"], dtype=np.int64)
    return out


def aligned_to_spans(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Span table (``records.SPAN_COLUMNS`` + ``score, method, quote``) of the aligned rows of
    :func:`align_quotes`'s output. Identical spans ``(note_id, code, start, end)`` are kept once
    (highest score). ``granularity`` is ``""``."""
    cols = SPAN_COLUMNS + ["score", "method", "quote"]
    if len(frame) == 0:
        return pd.DataFrame(columns=cols).astype({"start": "int64", "end": "int64", "score": "float64"})
    ok = frame[frame["start"].notna()]
    out = pd.DataFrame(
        {
            "note_id": ok["note_id"].astype(str).to_numpy(),
            "code": ok["code"].astype(str).to_numpy(),
            "start": ok["start"].astype("int64").to_numpy(),
            "end": ok["end"].astype("int64").to_numpy(),
            "granularity": "",
            "source": source,
            "score": ok["score"].astype("float64").to_numpy(),
            "method": ok["method"].to_numpy(),
            "quote": ok["quote"].to_numpy() if "quote" in ok else "",
        },
        columns=cols,
    )
    out = out.sort_values("score", ascending=False, kind="stable")
    out = out.drop_duplicates(["note_id", "code", "start", "end"], keep="first")
    return out.sort_values(["note_id", "code", "start", "end"], kind="stable").reset_index(drop=True)


def alignment_summary(frame: pd.DataFrame) -> dict:
    """Quote-level summary of :func:`align_quotes`'s output.

    A quote is *aligned* when at least one of its rows has a span, *partial* when it is aligned
    but some split part failed. Its method is the first of :data:`METHODS` among its rows.
    Returns ``n_quotes, n_aligned, n_unaligned, n_partial, alignment_rate, unaligned_rate,
    n_spans, mean_score_aligned`` and ``by_method`` / ``unaligned_by_reason`` (``{name: {"quotes":
    n, "share": n / n_quotes}}``); rates are 0 when there are no quotes.
    """
    key = "quote_row" if "quote_row" in frame.columns else None
    if key is None:
        raise DataError("alignment_summary: expects the output of align_quotes (column 'quote_row')")
    n_quotes = int(frame[key].nunique())
    aligned_rows = frame["start"].notna()
    aligned_q = frame.loc[aligned_rows, key].unique()
    n_aligned = len(aligned_q)
    partial = frame.loc[~aligned_rows & frame[key].isin(aligned_q), key].nunique()
    rank = {m: i for i, m in enumerate(METHODS)}
    per_quote = frame.assign(_r=frame["method"].map(rank)).groupby(key)["_r"].min().map(dict(enumerate(METHODS)))
    by_method = {m: int((per_quote == m).sum()) for m in METHODS}
    unaligned = frame[frame[key].isin(set(frame[key]) - set(aligned_q))]
    reasons = unaligned.groupby(key)["reason"].first().value_counts().to_dict()
    share = (lambda n: n / n_quotes if n_quotes else 0.0)
    return {
        "n_quotes": n_quotes,
        "n_aligned": n_aligned,
        "n_unaligned": n_quotes - n_aligned,
        "n_partial": int(partial),
        "alignment_rate": share(n_aligned),
        "unaligned_rate": share(n_quotes - n_aligned),
        "n_spans": int(aligned_rows.sum()),
        "mean_score_aligned": float(frame.loc[aligned_rows, "score"].mean()) if aligned_rows.any() else 0.0,
        "by_method": {m: {"quotes": n, "share": share(n)} for m, n in by_method.items()},
        "unaligned_by_reason": {r: {"quotes": int(reasons.get(r, 0)), "share": share(int(reasons.get(r, 0)))} for r in REASONS},
    }


def threshold_sweep(
    docs, quotes: pd.DataFrame, thresholds: Iterable[float] = (1.5, 1.7, 2.0),
    occurrences: Occurrences = "all",
) -> pd.DataFrame:
    """One row per threshold: ``threshold, alignment_rate, unaligned_rate, n_spans`` and the
    share of quotes per method (columns ``share_<method>``)."""
    docs = as_documents(docs)
    rows = []
    for t in thresholds:
        s = alignment_summary(align_quotes(docs, quotes, t, occurrences))
        row = {"threshold": float(t), "alignment_rate": s["alignment_rate"],
               "unaligned_rate": s["unaligned_rate"], "n_spans": s["n_spans"]}
        row.update({f"share_{m}": v["share"] for m, v in s["by_method"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def examples(aligned: pd.DataFrame, docs, per_method: int = 2, width: int = 90) -> pd.DataFrame:
    """A few quotes per alignment method, with the note text they were mapped to (for reading)."""
    texts = as_documents(docs)
    rows = []
    for method, part in aligned.groupby("method", sort=False):
        for r in part.drop_duplicates("quote_row").head(per_method).itertuples(index=False):
            covered = "" if pd.isna(r.start) else texts[r.note_id][int(r.start):int(r.end)]
            rows.append({"method": method, "code": r.code, "quote": str(r.quote)[:width],
                         "note text": " ".join(covered.split())[:width], "score": round(float(r.score), 3),
                         "reason": r.reason or ""})
    return pd.DataFrame(rows)


def threshold_effect(ds, quotes: pd.DataFrame, thresholds: Iterable[float] = (1.5, 1.7, 2.0),
                     occurrences: Occurrences = "all", design=None) -> pd.DataFrame:
    """Per teacher (``quotes.source``) and threshold: alignment rate and the plausibility of the
    aligned spans (position-independent token F1 and exact token F1) against the human spans of
    the evaluation design's report notes, on the pairs that teacher was run on (``design``:
    :class:`rationale_kit.metrics.evaluation.EvaluationDesign`; None = the design of ``ds.docs`` with
    every evaluation pair). ``n_pairs`` says on how many."""
    from rationale_kit.metrics.evaluation import make_design, restrict
    from rationale_kit.metrics.plausibility import mdace_measures

    docs = as_documents(ds.docs)
    design = design or make_design(ds.docs)
    report = set(design.report_ids)
    gold_all = ds.spans[ds.spans.note_id.isin(report)]
    rows = []
    for src, q in quotes.groupby("source"):
        gold = restrict(gold_all, design.pairs(str(src)))
        for t in thresholds:
            a = align_quotes(docs, q, t, occurrences)
            s = alignment_summary(a)
            spans = aligned_to_spans(a, src)
            m = mdace_measures(gold, spans[spans.note_id.isin(report)], docs)
            rows.append({"source": src, "threshold": float(t), "alignment_rate": s["alignment_rate"],
                         "n_spans": s["n_spans"], "pi_token_f1": m["token_position_independent"]["f1"],
                         "token_exact_f1": m["token_exact"]["f1"],
                         "n_pairs": int(len(gold[["note_id", "code"]].drop_duplicates()))})
    return pd.DataFrame(rows, columns=["source", "threshold", "alignment_rate", "n_spans", "pi_token_f1", "token_exact_f1", "n_pairs"])


def summary_table(aligned: pd.DataFrame, by: str = "source") -> pd.DataFrame:
    """:func:`alignment_summary` per ``by`` group as one flat table (quotes per method and per
    unaligned reason as columns); an empty frame gives an empty table with the same columns."""
    rows = {}
    for key, part in aligned.groupby(by) if len(aligned) else []:
        s = alignment_summary(part)
        row = {k: v for k, v in s.items() if not isinstance(v, dict)}
        row.update({f"method: {m}": v["quotes"] for m, v in s["by_method"].items()})
        row.update({f"unaligned: {r}": v["quotes"] for r, v in s["unaligned_by_reason"].items()})
        rows[key] = row
    cols = ["n_quotes", "n_aligned", "n_unaligned", "n_partial", "alignment_rate", "unaligned_rate", "n_spans",
            "mean_score_aligned"] + [f"method: {m}" for m in METHODS] + [f"unaligned: {r}" for r in REASONS]
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols).rename_axis(by)


def spans_by_source(aligned: pd.DataFrame, by: str = "source") -> pd.DataFrame:
    """:func:`aligned_to_spans` of every ``by`` group (the teacher), concatenated."""
    parts = [aligned_to_spans(part, str(src)) for src, part in aligned.groupby(by)] if len(aligned) else []
    return pd.concat(parts, ignore_index=True) if parts else aligned_to_spans(aligned.iloc[:0], "")
