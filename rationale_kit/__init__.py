"""rationale_kit: training, rationales and metrics for explainable ICD coding.

Notebooks start with ``ctx = rationale_kit.setup("NN_name", profile, overrides)``;
``rationale_kit.explain(model_dir, texts)`` explains one's own notes (loaded on first use: it
imports torch).
"""
from typing import Any

__all__ = [
    "ConfigError", "Context", "DataError", "Document", "MissingArtifact", "Profile", "ScoredUnit",
    "Span", "explain", "load_profile", "setup",
]
__version__ = "0.1.0"

#: where each public name lives; imported on first use, so that ``import rationale_kit.core.lock``
#: (or any other light submodule) does not import pandas and the workbook with the package
_LAZY = {
    "ConfigError": "rationale_kit.core.config", "Profile": "rationale_kit.core.config",
    "load_profile": "rationale_kit.core.config",
    "Context": "rationale_kit.workbook.context", "MissingArtifact": "rationale_kit.workbook.context",
    "setup": "rationale_kit.workbook.context",
    "DataError": "rationale_kit.core.records", "Document": "rationale_kit.core.records",
    "ScoredUnit": "rationale_kit.core.records", "Span": "rationale_kit.core.records",
    "explain": "rationale_kit.workbook.explain",  # the engine imports torch and the models
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
