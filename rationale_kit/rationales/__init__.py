"""Rationales: why a code was assigned to a note, as character spans or per-unit scores.

:mod:`.tables` holds the one representation (span and soft tables, their checks, files and
conversions), :mod:`.model` the rationales read from a coding model (attention, gradients);
``entity``, ``llm``, ``alignment`` and ``ner`` produce discrete rationales. See
docs/method/rationales.md.
"""
from rationale_kit.rationales.model import (
    GradientMethod,
    SoftResult,
    attention_rationales,
    codes_for_rationales,
    explain_encoded,
    gradient_rationales,
)
from rationale_kit.rationales.tables import (
    DISCRETE_COLUMNS,
    DISCRETE_EXTRA,
    load_table,
    save_table,
    soft_to_spans,
    spans_from_jsonl,
    spans_to_jsonl,
    table_kind,
    to_token_mask,
    to_word_units,
    word_unit_scores,
)

__all__ = [
    "DISCRETE_COLUMNS", "DISCRETE_EXTRA", "GradientMethod", "SoftResult", "attention_rationales",
    "codes_for_rationales", "explain_encoded", "gradient_rationales", "load_table",
    "save_table", "soft_to_spans", "spans_from_jsonl", "spans_to_jsonl", "table_kind",
    "to_token_mask", "to_word_units", "word_unit_scores",
]
