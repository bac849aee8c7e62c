"""Faithfulness of rationales under a coding model: comprehensiveness, sufficiency and AOPC
(ERASER; Edin et al. 2024), each against a random control.

- :mod:`~rationale_kit.metrics.faithfulness.measures`: the measures over probabilities, the bins
  and :func:`summarise` (no torch);
- :mod:`~rationale_kit.metrics.faithfulness.engine`: the spec, the public functions and the one
  dispatch to a path (:func:`faithfulness_discrete`, :func:`faithfulness_scored`,
  :func:`faithfulness_loop`, :func:`run_spec`, :class:`FaithfulnessSpec`; :class:`NoteCache` is
  re-exported from ``cache``);
- the paths: ``generic`` (batched forward passes, any model), ``caml_patch`` (CAML patching),
  ``chunk_reuse`` (PLM-ICD chunk reuse), ``cache`` (:class:`NoteCache`); ``units`` and ``tasks``:
  a note's units and perturbed inputs, the pairs, controls and result table they share.

The engine (it imports torch) is loaded on first use of one of its names, so the measures and
``NOTE_AOPC`` import without torch. See docs/method/faithfulness.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rationale_kit.metrics.faithfulness.measures import MEASURES, NOTE_AOPC, OUTPUT_COLUMNS, summarise

if TYPE_CHECKING:
    from rationale_kit.metrics.faithfulness.engine import (
        FaithfulnessSpec, NoteCache, faithfulness_discrete, faithfulness_loop, faithfulness_scored, run_spec,
    )

__all__ = [
    "NOTE_AOPC", "MEASURES", "OUTPUT_COLUMNS", "summarise",
    "FaithfulnessSpec", "NoteCache", "faithfulness_discrete", "faithfulness_scored", "faithfulness_loop", "run_spec",
]
_ENGINE_NAMES = frozenset(__all__[4:])


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from rationale_kit.metrics.faithfulness import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ENGINE_NAMES))
