"""Split policy of the series: the label space, the evaluation notes and their tuning/report
design (one definition: :mod:`rationale_kit.metrics.evaluation`), and the teacher's training notes."""
from __future__ import annotations

import pandas as pd

from rationale_kit.core.config import Profile


def label_space(docs: pd.DataFrame) -> list[str]:
    """The codes the models predict: every code of a training note, sorted."""
    return sorted({c for cs in docs.loc[docs.split == "train", "codes"] for c in cs})


def eval_docs(docs: pd.DataFrame) -> pd.DataFrame:
    """Annotated test notes: where rationales are evaluated (never few-shot examples); see
    :func:`rationale_kit.metrics.evaluation.evaluation_notes`."""
    from rationale_kit.metrics.evaluation import evaluation_notes

    return evaluation_notes(docs)


def tuning_ids(docs: pd.DataFrame, fraction: float = 0.25) -> set[str]:
    """A deterministic ``fraction`` of the evaluation notes reserved for tuning (thresholds of soft
    rationales, the guided-learning lambda); reported numbers use the other notes. The same set as
    :attr:`rationale_kit.metrics.evaluation.EvaluationDesign.tuning_ids`."""
    from rationale_kit.metrics.evaluation import make_design

    return set(make_design(docs, fraction).tuning_ids)


def evaluation_design(docs: pd.DataFrame, profile: Profile):
    """The profile's :class:`~rationale_kit.metrics.evaluation.EvaluationDesign` of ``docs`` (no run-on
    pairs yet)."""
    from rationale_kit.metrics.evaluation import make_design

    return make_design(docs, profile.evaluation.tuning_fraction)


def teacher_notes(docs: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` training notes (not few-shot examples) that the LLM teacher annotates for notebook 07."""
    pool = docs[(docs.split == "train") & ~docs.fewshot]
    return pool.sample(n=min(n, len(pool)), random_state=seed).sort_values("note_id").reset_index(drop=True)
