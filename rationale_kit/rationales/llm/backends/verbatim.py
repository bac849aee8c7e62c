"""Verbatim decoding: which next tokens keep a quote a run of whole words of the note (case and
white space normalised), so that a local model can only choose *what* to quote."""
from __future__ import annotations

from typing import Optional, Sequence


QUOTE_STOPS = ('"', "\n")


def _norm_map(s: str) -> tuple[str, list[int]]:
    """:func:`verbatim_norm` of ``s`` and, for each of its characters, the index in ``s`` it comes from."""
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(s):
        if ch.isspace():
            if out and out[-1] == " ":
                continue
            out.append(" ")
            where.append(i)
            continue
        for lc in ch.lower():
            out.append(lc)
            where.append(i)
    return "".join(out), where


def verbatim_norm(s: str) -> str:
    """The comparison form of verbatim decoding: lower case (character by character), every run
    of white space one space."""
    return _norm_map(s)[0]


def _word(c: str) -> bool:
    return c.isalnum() or c == "_"


class VerbatimIndex:
    """Which next tokens keep a quote a verbatim substring of a note (case and white space
    normalised by :func:`verbatim_norm`) that starts and ends on word boundaries.

    ``pieces[i]`` is the text of token ``i`` on its own (``tok.decode([i])``). A token is allowed
    after the quote so far ``q`` when ``q`` + its text up to the first string stop (a double quote
    or a newline, which close the quote) still occurs in the note at a place where the quote
    does not begin inside a word; a token that closes the quote (and the end of the turn) is allowed
    only where the quote is not empty and does not end inside a word. So every quote is a run of
    whole words of the note (the alignment's exact match never cuts a word either). Candidates
    are looked up by their first character from the characters that follow ``q``'s occurrences,
    and the first token of a quote through the set of the note's substrings that start a word
    (up to :attr:`OPEN_CHARS` characters): a step costs a few thousand substring tests at most.
    """

    OPEN_CHARS = 24

    def __init__(self, note: str, pieces: Sequence[str]):
        self.text = note
        self.note, self._where = _norm_map(note)
        n = self.note
        self._start_ok = [i == 0 or i >= len(n) or not _word(n[i - 1]) or not _word(n[i]) for i in range(len(n) + 1)]
        self._end_ok = [j == 0 or j >= len(n) or not _word(n[j]) or not _word(n[j - 1]) for j in range(len(n) + 1)]
        self._open: set[str] = set()  # substrings of the note that begin a word (or with a space before one)
        for i in range(len(n)):
            if n[i] != " " and self._start_ok[i]:
                for k in range(1, min(self.OPEN_CHARS, len(n) - i) + 1):
                    self._open.add(n[i: i + k])
        self.size = len(pieces)
        self.prefix: list[str] = []
        by_first: dict[str, list[int]] = {}
        closers: list[int] = []
        for i, p in enumerate(pieces):
            cuts = [j for j in (p.find(c) for c in QUOTE_STOPS) if j >= 0]
            cut = min(cuts) if cuts else None
            pre = verbatim_norm(p[:cut] if cut is not None else p)
            self.prefix.append(pre)
            if pre:
                by_first.setdefault(pre[0], []).append(i)
            elif cut is not None:
                closers.append(i)
        self.by_first = by_first
        self.closers = closers

    @staticmethod
    def _join(q: str, pre: str) -> str:
        return q + pre[1:] if q.endswith(" ") and pre.startswith(" ") else q + pre

    def _anchors(self, q: str) -> list[int]:
        """Where the normalised quote ``q`` occurs with its first word character on a word start."""
        lead = len(q) - len(q.lstrip(" "))
        out, i = [], self.note.find(q)
        while i >= 0:
            if self._start_ok[i + lead]:
                out.append(i)
            i = self.note.find(q, i + 1)
        return out

    def _opens(self, q: str) -> bool:
        body = q.lstrip(" ")
        if not body:
            return True
        if len(body) <= self.OPEN_CHARS:
            return body in self._open and (body == q or bool(self._anchors(q)))
        return bool(self._anchors(q))

    def can_close(self, text: str) -> bool:
        """Whether the quote ``text`` may end here: not empty, in the note, not ending inside a word."""
        q = verbatim_norm(text)
        core = q.rstrip(" ")
        if not core.strip():
            return False
        return any(self._end_ok[i + len(core)] for i in self._anchors(q))

    def allowed(self, text: str) -> list[int]:
        """Token ids allowed after the quote text ``text`` (raw, as decoded so far)."""
        q = verbatim_norm(text)
        if not q.strip():  # the first word of the quote: any token that begins a word of the note
            out = [t for ts in self.by_first.values() for t in ts if self._opens(self._join(q, self.prefix[t]))]
            return out
        anchors = self._anchors(q)
        if not anchors:
            return []
        firsts = {self.note[i + len(q)] for i in anchors if i + len(q) < len(self.note)}
        if q.endswith(" "):
            firsts.add(" ")
        out = []
        for c in firsts:
            for t in self.by_first.get(c, ()):
                new = self._join(q, self.prefix[t])
                if any(self.note.startswith(new, i) for i in anchors):
                    out.append(t)
        if any(self._end_ok[i + len(q.rstrip(" "))] for i in anchors):
            out += self.closers
        return out

    def _whole(self, quote: str) -> Optional[int]:
        """Start of an occurrence of ``quote`` (normalised, stripped) on word boundaries, or None."""
        nq = verbatim_norm(quote).strip(" ")
        if not nq:
            return None
        for i in self._anchors(nq):
            if self._end_ok[i + len(nq)]:
                return i
        return None

    def original(self, quote: str) -> str:
        """The note's own text for ``quote`` (an occurrence on word boundaries, as the note spells
        it: case and white space), or ``quote`` unchanged when there is none."""
        nq = verbatim_norm(quote).strip(" ")
        i = self._whole(quote)
        if i is None:
            return quote
        return self.text[self._where[i]: self._where[i + len(nq) - 1] + 1]

    def longest_prefix_in_note(self, quote: str) -> str:
        """``quote`` cut back (at the end) until it is a run of whole words of the note: the
        guarantee at the end of a quote, whatever a tokenizer's decoding does at token boundaries."""
        while quote and self._whole(quote) is None:
            quote = quote[:-1]
        return quote
