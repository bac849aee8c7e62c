"""After notebook 04: the discrete (span) rationale sources that notebooks 05 and 06 score."""
from __future__ import annotations

import pandas as pd

from rationale_kit.core.sources import Source
from rationale_kit.workbook import artifacts as A


def discrete_sources(ctx) -> dict[str, pd.DataFrame]:
    """The discrete (span) rationale sources of notebooks 03/04 for the notebook of ``ctx`` (a
    :class:`~rationale_kit.workbook.context.Context`): entity (exact code and category) and the
    aligned LLM spans of each teacher."""
    ent = ctx.read(A.ENTITY)
    llm_spans = ctx.read(A.LLM_SPANS)
    out = {Source("entity", m).name: part.reset_index(drop=True) for m, part in ent.groupby("method")}
    if llm_spans is not None:
        for src, part in llm_spans.groupby("source"):
            out[src] = part.reset_index(drop=True)
    return out
