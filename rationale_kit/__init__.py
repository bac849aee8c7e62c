"""rationale_kit: training, rationales and metrics for explainable ICD coding.

Notebooks start with ``ctx = rationale_kit.setup("NN_name", profile, overrides)``.
"""
from .config import ConfigError, Profile, load_profile
from .pipeline import Context, MissingArtifact, setup
from .records import DataError, Document, ScoredUnit, Span

__all__ = [
    "ConfigError", "Context", "DataError", "Document", "MissingArtifact", "Profile", "ScoredUnit",
    "Span", "load_profile", "setup",
]
__version__ = "0.1.0"
