"""Shared table shaping for the notebooks' displays: the wide plausibility table, the headline
rows, and the teachers' coverage."""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from rationale_kit.workbook.protocols.common import PI


def plausibility_wide(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's table: F1 of every measure per source and model (granularity all, all gold
    codes), with the units (``n_notes``, ``n_pairs``, ``coverage``, ``scored_on``) and the
    interval of the PI token F1 (``pi_lo``, ``pi_hi``)."""
    t = table[(table.granularity == "all") & (table.code_set == "all")]
    wide = t.pivot_table(index=["source", "model"], columns="measure", values="f1")
    pi = t[t.measure == PI].set_index(["source", "model"])
    cols = [c for c in ("n_notes", "n_pairs", "n_pairs_eligible", "coverage", "scored_on") if c in pi.columns]
    wide = wide.join(pi[cols])
    if "f1_lo" in pi.columns:
        wide = wide.join(pi[["f1_lo", "f1_hi"]].rename(columns={"f1_lo": "pi_lo", "f1_hi": "pi_hi"}))
    wide.columns.name = None
    return wide


def headline(table: pd.DataFrame, measure: str = "token_position_independent") -> pd.DataFrame:
    """One row per source (and model): P/R/F1 of ``measure`` over all granularities and codes."""
    t = table[(table.measure == measure) & (table.granularity == "all") & (table.code_set == "all")]
    cols = ["source", "model", "n_notes", "n_pairs", "coverage", "precision", "recall", "f1", "f1_lo", "f1_hi"]
    return t[[c for c in cols if c in t.columns]].reset_index(drop=True)


def coverage(targets: Mapping[str, dict]) -> pd.DataFrame:
    return pd.DataFrame([{"teacher": t, "notes": len({n for n, _ in d}), "pairs": len(d),
                          "spans": sum(len(v) for v in d.values())} for t, d in targets.items()])
