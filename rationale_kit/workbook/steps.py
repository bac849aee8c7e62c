"""The notebooks' steps, by their historical import path: a facade over the protocol modules.

Each notebook's protocol lives in :mod:`rationale_kit.workbook.protocols` (``data``, ``train``,
``rationales``, ``alignment``, ``faithfulness``, ``plausibility``, ``guided``, ``fewshot``, and the
shared ``tables``); ``from rationale_kit.workbook import steps`` keeps every function the notebooks
call under one name.
"""
from __future__ import annotations

from rationale_kit.workbook.protocols.alignment import discrete_sources
from rationale_kit.workbook.protocols.common import PI, bootstrap, save_bootstrap_timing, with_seed
from rationale_kit.workbook.protocols.data import (
    eval_docs,
    evaluation_design,
    label_space,
    teacher_notes,
    tuning_ids,
)
from rationale_kit.workbook.protocols.faithfulness import (
    compared_sources,
    attention_topk_spans,
    attention_vs_entity,
    common_pairs,
    faithfulness_summary,
    faithfulness_tables,
)
from rationale_kit.workbook.protocols.fewshot import few_shot_students, few_shot_summary, teacher_comparison
from rationale_kit.workbook.protocols.guided import (
    NER_COLUMNS,
    choose_lambda,
    coding_report_ids,
    evaluate_student,
    guided_run,
    guided_summary,
    guided_sweep,
    ner_experiment,
    setting_counts,
    sweep_counts,
    teacher_targets,
    tradeoff,
    tradeoff_verdict,
)
from rationale_kit.workbook.protocols.plausibility import (
    PlausibilityResult,
    plausibility_tables,
    plausibility_verdicts,
)
from rationale_kit.workbook.protocols.rationales import (
    llm_plan,
    llm_rationales,
    llm_requests,
    model_rationales,
    pairs_to_explain,
    random_rationales,
    record_run_on,
    run_entity_linking,
)
from rationale_kit.workbook.protocols.tables import coverage, headline, plausibility_wide
from rationale_kit.workbook.protocols.train import (
    SEED_MEASURES,
    coding_seed_spread,
    coding_table,
    note_counts,
    seed_dirs,
    fit_model,
    load_models,
    predictions,
    saved_model_hash,
    training_code_hash,
)

__all__ = [
    "compared_sources", "NER_COLUMNS", "PI", "PlausibilityResult", "attention_topk_spans", "attention_vs_entity",
    "SEED_MEASURES", "bootstrap", "choose_lambda", "coding_report_ids", "coding_seed_spread", "coding_table", "common_pairs", "coverage", "discrete_sources",
    "eval_docs", "evaluate_student", "evaluation_design", "faithfulness_summary", "faithfulness_tables",
    "few_shot_students", "few_shot_summary", "fit_model", "guided_run", "guided_summary", "guided_sweep", "headline",
    "label_space", "llm_plan", "llm_rationales", "llm_requests", "load_models", "model_rationales",
    "ner_experiment", "note_counts", "pairs_to_explain", "plausibility_tables", "plausibility_verdicts", "plausibility_wide",
    "predictions", "random_rationales", "record_run_on", "run_entity_linking", "save_bootstrap_timing",
    "saved_model_hash", "seed_dirs", "setting_counts", "sweep_counts", "teacher_comparison", "teacher_notes", "teacher_targets",
    "training_code_hash", "tradeoff", "tradeoff_verdict", "tuning_ids", "with_seed",
]
