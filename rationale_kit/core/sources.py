"""Rationale sources as typed records: what produced a rationale, not how a table prints it.

A :class:`Source` is ``kind`` (attention, gradient, attention_x_gradient, entity, llm, human,
random), ``variant`` (``top-10`` for a soft source cut to its k best units; ``exact_code`` or
``category`` for entity linking; ``zero`` or ``few`` for the LLM teacher; the attribution method of
a gradient source) and ``model`` (the coding model it explains; ``"-"`` for model-free sources).

Tables keep a human-readable ``source`` column (:func:`source_name`, the one place that builds
it) and the typed ``source_kind`` / ``source_variant`` columns beside it (:func:`with_source_columns`);
code compares :class:`Source` records or those columns, never display strings built by hand.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

KINDS = ("attention", "gradient", "attention_x_gradient", "entity", "llm", "human", "random")
#: The entity-linking variants (how a mention's code must match the pair's code).
ENTITY_VARIANTS = ("exact_code", "category")
#: The LLM teacher variants: zero-shot and few-shot prompts.
LLM_VARIANTS = ("zero", "few")


@dataclass(frozen=True)
class Source:
    """One rationale source. ``variant`` "" when the kind has none; ``model`` "-" when model-free."""

    kind: str
    variant: str = ""
    model: str = "-"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown rationale source kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.kind == "entity" and self.variant not in ENTITY_VARIANTS:
            raise ValueError(f"entity source variant must be one of {ENTITY_VARIANTS}, got {self.variant!r}")
        if self.kind == "llm" and self.variant not in LLM_VARIANTS:
            raise ValueError(f"llm source variant must be one of {LLM_VARIANTS}, got {self.variant!r}")

    @property
    def name(self) -> str:
        """The display name (the ``source`` column): :func:`source_name`."""
        return source_name(self)

    @property
    def top_k(self) -> int | None:
        """k of a ``top-k`` variant, else None."""
        m = re.fullmatch(r"top-(\d+)", self.variant)
        return int(m.group(1)) if m else None

    def with_top_k(self, k: int) -> "Source":
        """This (soft) source cut to its ``k`` best units."""
        return Source(self.kind, f"top-{int(k)}", self.model)


def source_name(source: Source) -> str:
    """The one function that turns a source into its display name (model not included: tables
    carry the model in their own column). ``entity (exact_code)``, ``llm_few``, ``attention
    (top-10)``, ``human``, ``random``."""
    if source.kind == "llm":
        return f"llm_{source.variant}"
    if source.variant:
        return f"{source.kind} ({source.variant})"
    return source.kind


_NAME = re.compile(r"^(?P<kind>[a-z_]+)(?: \((?P<variant>[^)]+)\)| (?P<legacy>top-\d+))?$")


def parse_source(name: str, model: str = "-") -> Source:
    """The :class:`Source` a display name stands for (also the older ``attention top-10`` form of
    saved tables); an unknown name raises ``ValueError`` naming it."""
    if isinstance(name, Source):
        return name
    text = str(name).strip()
    m = re.fullmatch(r"llm_(zero|few)", text)
    if m:
        return Source("llm", m.group(1), model)
    m = _NAME.match(text)
    if not m or m.group("kind") not in KINDS:
        raise ValueError(f"not a rationale source name: {name!r}")
    return Source(m.group("kind"), m.group("variant") or m.group("legacy") or "", model)


def _kind_variant(name: str) -> tuple[str, str]:
    """``(kind, variant)`` of a display name without the variant checks of :class:`Source`
    (``("", "")`` for a name that is no source)."""
    m = re.fullmatch(r"llm_(zero|few)", name)
    if m:
        return "llm", m.group(1)
    m = _NAME.match(name)
    if not m or m.group("kind") not in KINDS:
        return "", ""
    return m.group("kind"), m.group("variant") or m.group("legacy") or ""


def with_source_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the typed ``source_kind`` and ``source_variant`` columns beside its
    ``source`` column (unchanged when it has no ``source`` column or already has them). An entity
    table's variant is its ``method`` (exact_code, category); a name that is no source (a
    free-form label) gets empty strings."""
    if "source" not in frame.columns or "source_kind" in frame.columns:
        return frame
    names = frame["source"].astype(str)
    parsed = {s: _kind_variant(s) for s in pd.unique(names)}
    out = frame.copy()
    out["source_kind"] = names.map(lambda s: parsed[s][0]).astype(str)
    variant = names.map(lambda s: parsed[s][1]).astype(str)
    if "method" in frame.columns:
        entity = out["source_kind"].eq("entity") & variant.eq("")
        variant = variant.where(~entity, frame["method"].astype(str))
    out["source_variant"] = variant
    return out


ENTITY_EXACT = Source("entity", "exact_code")
ENTITY_CATEGORY = Source("entity", "category")
LLM_ZERO = Source("llm", "zero")
LLM_FEW = Source("llm", "few")
HUMAN = Source("human")
RANDOM = Source("random")
ATTENTION = Source("attention")
#: The two LLM teachers, zero-shot first.
TEACHERS = (LLM_ZERO, LLM_FEW)
