"""rationale_kit: training, rationales and metrics for explainable ICD coding.

Notebooks start with ``ctx = rationale_kit.setup("NN_name", profile, overrides)``;
``rationale_kit.explain(model_dir, texts)`` explains one's own notes (loaded on first use: it
imports torch).
"""
from typing import Any

from rationale_kit.core.config import ConfigError, Profile, load_profile
from rationale_kit.workbook.context import Context, MissingArtifact, setup
from rationale_kit.core.records import DataError, Document, ScoredUnit, Span

__all__ = [
    "ConfigError", "Context", "DataError", "Document", "MissingArtifact", "Profile", "ScoredUnit",
    "Span", "explain", "load_profile", "setup",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "explain":  # lazy: the engine imports torch and the models
        from rationale_kit.workbook.explain import explain

        return explain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
