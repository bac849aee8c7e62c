"""The canonical forms of the two inputs every measure and rationale source reads: the documents
(:class:`Documents`, note_id -> raw text, with each note's codes where the input had them) and
the gold codes (:class:`GoldCodes`, note_id -> set of codes). A public entry point converts what
it is given once, at its edge, with :func:`as_documents` / :func:`as_gold_codes`; everything
behind it takes only these types. Gold *spans* have their own canonical form, the span table
(:data:`rationale_kit.core.records.SPAN_COLUMNS`).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd

from rationale_kit.core.records import DataError, Document

__all__ = ["Documents", "GoldCodes", "as_documents", "as_gold_codes"]


class Documents(Mapping[str, str]):
    """Immutable ``note_id -> text`` (raw note text, ``str``), in the order the notes were given
    (the order every consumer visits them). ``codes``: ``note_id -> tuple of codes`` for the notes
    when the input carried them (a documents table with a ``codes`` column, :class:`Document`
    records); empty otherwise (``has_codes`` False). Build one with :func:`as_documents`."""

    __slots__ = ("_texts", "_codes")

    def __init__(self, texts: Mapping[str, str], codes: Mapping[str, tuple[str, ...]] | None = None):
        texts = dict(texts)
        for nid, text in texts.items():
            if not isinstance(nid, str):
                raise TypeError(f"documents: note_id must be a str, got {type(nid).__name__} {nid!r}")
            if not isinstance(text, str):
                raise DataError(f"documents: the text of note {nid!r} is {type(text).__name__}, not str")
        if codes is not None:
            codes = {n: tuple(c) for n, c in codes.items()}
            unknown = [n for n in codes if n not in texts]
            if unknown:
                raise DataError(f"documents: codes for unknown note_id(s), e.g. {unknown[:3]}")
            codes = MappingProxyType(codes)
        object.__setattr__(self, "_texts", MappingProxyType(texts))
        object.__setattr__(self, "_codes", codes)

    def __getitem__(self, note_id: str) -> str:
        return self._texts[note_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def __repr__(self) -> str:
        return f"Documents({len(self)} notes{', with codes' if self.has_codes else ''})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Documents is immutable")

    @property
    def codes(self) -> Mapping[str, tuple[str, ...]]:
        """``note_id -> codes`` (empty when the input carried no codes)."""
        return self._codes if self._codes is not None else MappingProxyType({})

    @property
    def has_codes(self) -> bool:
        """Whether the input carried the notes' codes (a ``codes`` column, Document records)."""
        return self._codes is not None


class GoldCodes(Mapping[str, frozenset]):
    """Immutable ``note_id -> frozenset of codes`` (``str``): the codes a note is known to carry.
    A note that is absent has no gold code. Build one with :func:`as_gold_codes`."""

    __slots__ = ("_codes",)

    def __init__(self, codes: Mapping[str, Iterable[str]]):
        out = {}
        for nid, cs in codes.items():
            if isinstance(cs, str) or not isinstance(cs, Iterable):
                raise TypeError(f"gold codes of note {nid!r}: expected a collection of codes, got "
                                f"{type(cs).__name__} {cs!r}")
            out[str(nid)] = frozenset(map(str, cs))
        object.__setattr__(self, "_codes", MappingProxyType(out))

    def __getitem__(self, note_id: str) -> frozenset:
        return self._codes[note_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._codes)

    def __len__(self) -> int:
        return len(self._codes)

    def __repr__(self) -> str:
        return f"GoldCodes({len(self)} notes)"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("GoldCodes is immutable")


def _what(x: Any) -> str:
    return f"{type(x).__module__}.{type(x).__qualname__}".removeprefix("builtins.")


def as_documents(docs: Any) -> Documents:
    """The :class:`Documents` of ``docs``: a :class:`Documents` (returned as is), a documents
    table (``note_id``, ``text``, optional ``codes``; e.g. ``Dataset.docs``), a mapping
    ``note_id -> text``, or an iterable of :class:`Document`. Note ids become ``str``; a missing
    column, a duplicate note id or a text that is not a string is a :class:`DataError`; any other
    type a ``TypeError`` naming it."""
    if isinstance(docs, Documents):
        return docs
    if isinstance(docs, pd.DataFrame):
        missing = [c for c in ("note_id", "text") if c not in docs.columns]
        if missing:
            raise DataError(f"documents table: missing column(s) {missing}")
        ids = docs["note_id"].astype(str).tolist()
        _no_duplicates(ids)
        texts = dict(zip(ids, docs["text"].tolist()))
        codes = None
        if "codes" in docs.columns:
            codes = {}
            for nid, cs in zip(ids, docs["codes"].tolist()):
                if isinstance(cs, str) or not isinstance(cs, Iterable):
                    raise DataError(f"documents table: the codes of note {nid!r} are {_what(cs)} {cs!r}, "
                                    "not a list of codes")
                codes[nid] = tuple(cs)
        return Documents(texts, codes)
    if isinstance(docs, Mapping):
        return Documents({str(k): v for k, v in docs.items()})
    if isinstance(docs, (str, bytes)) or not isinstance(docs, Iterable):
        raise TypeError(f"documents: expected Documents, a documents table (note_id, text), a mapping "
                        f"note_id -> text or Document records, got {_what(docs)}")
    records = list(docs)
    bad = next((d for d in records if not isinstance(d, Document)), None)
    if bad is not None:
        raise TypeError(f"documents: expected Document records, got an item of type {_what(bad)}")
    ids = [str(d.note_id) for d in records]
    _no_duplicates(ids)
    return Documents(dict(zip(ids, (d.text for d in records))), dict(zip(ids, (tuple(d.codes) for d in records))))


def _no_duplicates(ids: list[str]) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DataError(f"documents: note_id {dup!r} appears more than once")


def as_gold_codes(gold: Any, docs: Documents | None = None) -> GoldCodes:
    """The :class:`GoldCodes` of ``gold``: a :class:`GoldCodes` (returned as is), a mapping
    ``note_id -> codes``, a table with ``note_id`` and ``codes`` (a list per row) or ``code`` (one
    per row; rows of one note are united), or None: the codes the documents ``docs`` carry (an
    error when they carry none). Any other type is a ``TypeError`` naming it."""
    if isinstance(gold, GoldCodes):
        return gold
    if gold is None:
        if docs is None or not docs.has_codes:
            raise DataError("gold codes: none given, and the documents carry no codes (pass gold=, or a "
                            "documents table with a codes column)")
        return GoldCodes(docs.codes)
    if isinstance(gold, pd.DataFrame):
        col = "codes" if "codes" in gold.columns else "code"
        missing = [c for c in ("note_id", col) if c not in gold.columns]
        if missing:
            raise DataError(f"gold codes table: missing column(s) {missing} (need note_id and codes or code)")
        out: dict[str, set[str]] = {}
        for nid, cs in zip(gold["note_id"].astype(str), gold[col].tolist()):
            if col == "code":
                cs = [cs]
            elif isinstance(cs, str) or not isinstance(cs, Iterable):
                raise DataError(f"gold codes table: the codes of note {nid!r} are {_what(cs)} {cs!r}, "
                                "not a list of codes")
            out.setdefault(nid, set()).update(map(str, cs))
        return GoldCodes(out)
    if isinstance(gold, Mapping):
        return GoldCodes(gold)
    raise TypeError(f"gold codes: expected GoldCodes, a mapping note_id -> codes, a table (note_id, codes "
                    f"or code) or None, got {_what(gold)}")
