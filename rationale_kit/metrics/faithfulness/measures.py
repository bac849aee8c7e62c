"""Faithfulness measures over probabilities: comprehensiveness, sufficiency, AOPC over bins (ERASER
top-k%) and the Edin et al. 2024 word steps, the units each bin removes or keeps, and the summary
table. numpy and pandas only: importing this module does not import torch.
See docs/method/faithfulness.md.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["NOTE_AOPC", "MEASURES", "OUTPUT_COLUMNS", "summarise"]

NOTE_AOPC = (
    "Note: raw AOPC (aopc_comp / aopc_suff) and the Edin et al. 2024 word-level curves depend on "
    "the model's own probability scale and on how each model reacts to removed input, so they are "
    "not comparable across models (Edin et al. 2024, 'Normalized AOPC: fixing misleading "
    "faithfulness metrics'). Compare rationale sources within one model, always against the random "
    "control (control == 'random') in the same table; across models, only the gap to the random "
    "control (or a normalised AOPC, NAOPC) is meaningful."
)

#: Measure names by rationale kind.
MEASURES = {
    "discrete": ("comprehensiveness", "sufficiency"),
    "eraser": ("aopc_comp", "aopc_suff"),
    "edin": ("edin_comp", "edin_suff"),
}

OUTPUT_COLUMNS = [
    "note_id", "code", "source", "model", "measure", "k", "value", "control", "unit",
    "perturbation", "code_set", "p", "rationale_size", "n_units",
]

#: One perturbation of a pair: (measure, k, selected elementary units, keep only them?).
Slot = tuple[str, float, np.ndarray, bool]


def ranking(scores: np.ndarray) -> np.ndarray:
    """Unit indices by score, descending, ties by position; NaN scores rank last."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    return np.lexsort((np.arange(len(s)), -s))


def top_count(k: float, n: int) -> int:
    """ERASER bin size: ``ceil(k * n / 100)`` units for ``k`` percent, at least 1, at most ``n``."""
    return min(n, max(1, math.ceil(k * n / 100.0 - 1e-9)))


def discrete_slots(sel: np.ndarray) -> list[Slot]:
    """Comprehensiveness (``sel`` removed) and sufficiency (only ``sel`` kept)."""
    return [("comprehensiveness", np.nan, sel, False), ("sufficiency", np.nan, sel, True)]


def scored_slots(kind: str, order: np.ndarray, n: int, aopc_k: Sequence[float], word_steps: int) -> list[Slot]:
    """The bins of a ranking ``order`` of ``n`` units: ``kind="eraser"``: the top ``top_count(k, n)``
    units removed, then kept, for each ``k`` of ``aopc_k``; ``kind="edin"``: the top ``2i`` removed
    and the top ``2S - 2i`` kept for ``i = 0..S-1`` (``S = word_steps``), capped at ``n``."""
    c_name, s_name = MEASURES[kind]
    slots = []
    if kind == "eraser":
        for k in aopc_k:
            slots.append((c_name, float(k), order[: top_count(k, n)], False))
        for k in aopc_k:
            slots.append((s_name, float(k), order[: top_count(k, n)], True))
    else:
        top = 2 * word_steps
        for i in range(word_steps):
            slots.append((c_name, float(2 * i), order[: min(2 * i, n)], False))
        for i in range(word_steps):
            slots.append((s_name, float(top - 2 * i), order[: min(top - 2 * i, n)], True))
    return slots


def pair_values(kind: str, p: float, probs: np.ndarray, steps: Sequence[tuple[str, float, int]],
                curve: bool) -> tuple[list[str], list[float], list[np.ndarray], list[float]]:
    """Rows of one (note, code, group, control) from the full-note probability ``p`` and the
    probabilities ``probs [S]`` of its slots (``steps``: measure, k, size per slot): measures, ks,
    values (arrays to concatenate) and sizes. Discrete: ``p - probs`` per measure. Scored: per
    measure the drops ``p - probs`` (Edin: divided by ``p``, sufficiency clipped at 0), one row per
    bin when ``curve`` and the aggregate (mean over the bins, ``k`` and size NaN)."""
    if kind == "discrete":
        (m0, _, s0), (m1, _, s1) = steps
        return [m0, m1], [np.nan, np.nan], [p - probs[:2]], [s0, s1]
    measures: list[str] = []
    ks: list[float] = []
    values: list[np.ndarray] = []
    sizes: list[float] = []
    drops = p - probs
    half = len(steps) // 2
    for part, (lo, hi) in enumerate(((0, half), (half, len(steps)))):
        measure = steps[lo][0]
        vals = drops[lo:hi]
        if kind == "edin":
            vals = vals / p if part == 0 else np.maximum(vals, 0.0) / p
        if curve:
            measures += [measure] * (hi - lo)
            ks += [st[1] for st in steps[lo:hi]]
            sizes += [st[2] for st in steps[lo:hi]]
            values.append(vals)
        measures.append(measure)
        ks.append(np.nan)
        sizes.append(np.nan)
        values.append(np.asarray([vals.mean()]))
    return measures, ks, values, sizes


def summarise(table: pd.DataFrame, by: Sequence[str] | None = None, wide: bool = False) -> pd.DataFrame:
    """Mean (and std, sem, n) of ``value`` per source / model / measure / control, also split by
    the definition columns present (``method``, ``rationale_model``, ``unit``, ``perturbation``,
    ``code_set``) and by ``k`` (aggregate rows have ``k`` NaN). ``by`` replaces the default keys.
    ``wide=True`` puts the rationale and random means side by side with their difference
    (``rationale - random``)."""
    if by is None:
        by = [c for c in ("source", "method", "rationale_model", "model", "measure", "unit",
                          "perturbation", "code_set", "k", "control") if c in table.columns]
    by = list(by)
    g = table.groupby(by, dropna=False, sort=True)["value"]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    out["sem"] = out["std"] / np.sqrt(out["n"].clip(lower=1))
    if not wide:
        return out
    if "control" not in by:
        raise ValueError("wide=True needs 'control' among the keys")
    keys = [c for c in by if c != "control"]
    piv = out.pivot_table(index=keys, columns="control", values="mean", dropna=False).reset_index()
    piv.columns.name = None
    if "rationale" in piv.columns and "random" in piv.columns:
        piv["difference"] = piv["rationale"] - piv["random"]
    return piv.dropna(subset=[c for c in ("rationale", "random") if c in piv.columns], how="all")
