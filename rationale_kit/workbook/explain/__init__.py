"""Explain any note with any coder (:func:`explain`, :class:`Explainer`, :class:`Explanation`):
the engine behind ``python -m rationale_kit explain`` and ``rationale_kit.explain``. See
docs/method/explain.md."""
from rationale_kit.workbook.explain.engine import (
    DEFAULT_SOURCES, MODEL_SOURCES, PREDICTION_COLUMNS, SOURCES, SPAN_OUT_COLUMNS, ExplainSettings, Explainer,
    Explanation, check_codes, concat_explanations, docs_frame, explain, load_coder, model_hash, resolve_model_dir,
    settings_from_profile,
)

__all__ = [
    "DEFAULT_SOURCES", "MODEL_SOURCES", "PREDICTION_COLUMNS", "SOURCES", "SPAN_OUT_COLUMNS", "ExplainSettings",
    "Explainer", "Explanation", "check_codes", "concat_explanations", "docs_frame", "explain", "load_coder",
    "model_hash", "resolve_model_dir", "settings_from_profile",
]
