"""rationale_kit: training, rationales and metrics for explainable ICD coding.

Notebooks start with ``ctx = rationale_kit.setup("NN_name", profile, overrides)``.
"""
from rationale_kit.core.config import ConfigError, Profile, load_profile
from rationale_kit.workbook.context import Context, MissingArtifact, setup
from rationale_kit.core.records import DataError, Document, ScoredUnit, Span

__all__ = [
    "ConfigError", "Context", "DataError", "Document", "MissingArtifact", "Profile", "ScoredUnit",
    "Span", "load_profile", "setup",
]
__version__ = "0.1.0"
