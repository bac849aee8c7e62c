"""The artifact contract of the notebook series, declared once.

One frozen :class:`Artifact` per file a notebook leaves in ``artifacts/<profile>/<notebook>/``:
its file name, the notebook that writes it, the notebooks (or the report) that read it, and its
columns (tables) or keys (JSON). Notebooks, protocols and the report name artifacts through these
records instead of file-name literals; ``docs/INTERFACES.md`` lists them (``markdown_table()``,
kept in sync by a test).
"""
from __future__ import annotations

from dataclasses import dataclass


class ContractError(RuntimeError):
    """A notebook writes an artifact it does not own, reads one it is not a declared reader of, or
    writes a table without its declared columns."""


@dataclass(frozen=True)
class Artifact:
    """One file of a notebook's artifact folder (``file`` relative to that folder)."""

    file: str
    writer: str  # the notebook that writes it
    readers: tuple[str, ...] = ()  # notebooks that read it; "report" for the run report
    columns: tuple[str, ...] = ()  # table columns (JSON: top-level keys); () = free-form
    about: str = ""

    @property
    def key(self) -> str:
        """``<writer>/<file>``: where it lies below ``artifacts/<profile>/``."""
        return f"{self.writer}/{self.file}"

    @property
    def index_column(self) -> str | None:
        """The declared index (a column written ``"name (index)"``), or None."""
        return next((c[: -len(" (index)")] for c in self.columns if c.endswith(" (index)")), None)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """The declared columns every write must have: all but the index, ``"..."`` (more
        columns may follow) and patterns such as ``"p@<k>"`` or ``"<model>"``."""
        return tuple(c for c in self.columns if not c.endswith(" (index)") and "..." not in c and "<" not in c)


def check_columns(artifact: Artifact, obj) -> None:
    """Raise ``ContractError`` naming the artifact and what is missing when ``obj`` (a DataFrame,
    or a dict for JSON artifacts) lacks a declared column or key, or is of the wrong kind."""
    if artifact.file.endswith(".json"):
        if not isinstance(obj, (dict, list)):
            raise ContractError(f"{artifact.key}: expected a JSON object, got {type(obj).__name__}")
        have = set(obj) if isinstance(obj, dict) else set()
        what = "key"
    else:
        import pandas as pd

        if not isinstance(obj, pd.DataFrame):
            raise ContractError(f"{artifact.key}: expected a DataFrame, got {type(obj).__name__}")
        have = set(map(str, obj.columns)) | {str(n) for n in obj.index.names if n is not None}
        what = "column"
    required = artifact.required_columns + ((artifact.index_column,) if artifact.index_column else ())
    missing = [c for c in required if c not in have]
    if missing and not (isinstance(obj, list) and not artifact.required_columns):
        raise ContractError(f"{artifact.key}: missing declared {what}(s) {', '.join(map(repr, missing))} "
                            f"(rationale_kit/workbook/artifacts.py declares {', '.join(artifact.columns)})")


VERDICT_COLUMNS = ("finding", "comparison", "model", "dataset", "measure", "units", "a", "b", "effect", "lo", "hi",
                   "n_notes", "n_pairs", "expect", "verdict", "interval_method", "seed_agreement", "mc_error", "control",
                   "seed_sd")
#: the values of a verdict table's ``verdict`` column
VERDICT_VALUES = ("holds", "does not hold", "inconclusive", "too few notes", "borderline")
SPAN_TABLE = ("note_id", "code", "start", "end", "granularity", "source")
TIMING_KEYS = ("bootstrap_seconds", "bootstrap_calls", "notebook_seconds", "share")
RUN_ON = ("source", "model", "note_id", "code")
STUDENT_ROW = ("model", "teacher", "lambda", "seed", "micro_f1", "macro_f1", "map", "pi_token_f1", "pi_token_f1_tuning",
               "token_exact_f1", "auprc", "p@<k>", "n_report_notes", "n_test_notes", "run_dir", "seconds", "run_key", "init")
COUNT_TABLE = ("note_id", "code", "measure", "tp", "fp", "fn")

# 01_data
LATER = ("02_train", "03_rationales", "04_alignment", "05_faithfulness", "06_plausibility", "07_guided_learning",
         "08_few_shot", "09_open_questions")  # data.load_saved reads docs, spans and codes in every later notebook
DOCS = Artifact("docs.parquet", "01_data", LATER,
                ("note_id", "text", "codes", "split", "annotated", "fewshot", "credentialed"), "the documents")
SPANS = Artifact("spans.parquet", "01_data", LATER, SPAN_TABLE, "human spans")
ORACLE_SPANS = Artifact("oracle_spans.parquet", "01_data", ("07_guided_learning", "08_few_shot", "09_open_questions"), SPAN_TABLE,
                        "every known span (the `human` teacher)")
CODES = Artifact("codes.parquet", "01_data", LATER + ("report",), ("code", "description", "n_train"), "the code table")
DATA_REPORT = Artifact("report.json", "01_data", ("report",), ("name", "dataset", "kept", "skipped", "splits"),
                       "what was loaded and skipped")
STATISTICS = Artifact("statistics.csv", "01_data", ("report",), ("split", "documents", "unique codes", "..."),
                      "dataset statistics per split")
STATISTICS_CODIESP = Artifact("statistics_codiesp.csv", "01_data", (), ("split", "documents", "..."),
                              "CodiEsp statistics, when CodiEsp is found")

# 02_train
HISTORY = Artifact("history.csv", "02_train", (), ("epoch", "train_loss", "coding_loss", "rationale_loss", "val_map",
                                                   "val_micro_f1", "seconds", "model"), "training curves")
CODING_TABLE = Artifact("coding_table.csv", "02_train", ("report",), ("model (index)", "micro_f1", "...", "labels"),
                        "coding performance on the test notes")
CODING_SEEDS = Artifact("coding_seeds.csv", "02_train", ("report",), ("model (index)", "seeds", "micro_f1 mean",
                                                                        "micro_f1 std", "..."),
                        "mean and standard deviation of the coding measures across common.seeds")
PREDICTIONS = Artifact("predictions.parquet", "02_train", ("03_rationales", "05_faithfulness", "06_plausibility",
                                                           "07_guided_learning", "09_open_questions"),
                       ("note_id", "code", "prob", "pred", "is_gold", "model"), "val and test predictions")
THRESHOLDS = Artifact("thresholds.json", "02_train", ("report",), ("<model>",), "decision threshold per model")

# 03_rationales
PAIRS = Artifact("pairs.parquet", "03_rationales", (), ("note_id", "code", "is_gold", "is_predicted", "prob", "model"),
                 "the (note, code) pairs explained per model")
SOFT = Artifact("soft.parquet", "03_rationales", ("05_faithfulness", "06_plausibility"),
                ("note_id", "code", "source", "method", "model", "unit", "start", "end", "score"),
                "attention and gradient rationales")
SOFT_SEEDS = Artifact("soft_seeds.parquet", "03_rationales", ("05_faithfulness", "06_plausibility"),
                      SOFT.columns + ("seed",),
                      "attention and gradient rationales of the later training seeds' models (several common.seeds)")
ENTITY = Artifact("entity.parquet", "03_rationales", ("05_faithfulness", "06_plausibility", "09_open_questions"),
                  SPAN_TABLE + ("method", "model", "score", "match", "linked_code", "mention", "filtered_reason"),
                  "entity-linking spans")
MENTIONS = Artifact("mentions.parquet", "03_rationales", (), ("note_id", "start", "end", "text", "code", "score",
                                                              "match", "negated", "family", "historical",
                                                              "filtered_reason", "alias"), "every entity mention")
LLM_QUOTES = Artifact("llm_quotes.parquet", "03_rationales", ("04_alignment", "09_open_questions"),
                      ("note_id", "code", "quote_index", "quote", "status", "source", "shots", "split"),
                      "LLM quotes per teacher")
LLM_CALLS = Artifact("llm_calls.parquet", "03_rationales", ("08_few_shot",),
                     ("note_id", "status", "outcome", "cached", "input_tokens", "output_tokens", "...", "source",
                      "shots"), "one row per LLM call")
EVALUATION_DESIGN = Artifact("evaluation_design.json", "03_rationales", ("04_alignment", "05_faithfulness", "06_plausibility",
                                                                         "07_guided_learning", "08_few_shot", "09_open_questions"),
                             ("eval_ids", "tuning_ids", "report_ids", "tuning_fraction"),
                             "evaluation, tuning and report notes")
RUN_ON_PAIRS = Artifact("run_on.parquet", "03_rationales", ("04_alignment", "06_plausibility", "07_guided_learning",
                                                            "08_few_shot"), RUN_ON,
                        "pairs every source was run on (with evaluation_design.json)")

# 04_alignment
ALIGNMENT_SUMMARY = Artifact("alignment_summary.csv", "04_alignment", (), ("source (index)", "n_quotes", "n_aligned",
                                                                           "alignment_rate", "..."),
                             "alignment per teacher")
THRESHOLD_EFFECT = Artifact("threshold_effect.csv", "04_alignment", (),
                            ("source", "threshold", "alignment_rate", "n_spans", "pi_token_f1", "token_exact_f1",
                             "n_pairs"), "alignment threshold sweep")
ALIGNMENT = Artifact("alignment.parquet", "04_alignment", (), ("note_id", "code", "quote", "source", "start", "end",
                                                               "score", "method", "reason", "..."),
                     "every quote with its alignment")
LLM_SPANS = Artifact("llm_spans.parquet", "04_alignment", ("05_faithfulness", "06_plausibility",
                                                           "07_guided_learning", "08_few_shot", "09_open_questions"),
                     SPAN_TABLE + ("score", "method", "quote"), "aligned LLM spans per teacher")

# 05_faithfulness
FAITHFULNESS = Artifact("faithfulness.parquet", "05_faithfulness", ("06_plausibility", "09_open_questions"),
                        ("note_id", "code", "source", "model", "measure", "k", "value", "control", "unit", "..."),
                        "per-pair faithfulness rows")
FAITHFULNESS_RUN_ON = Artifact("run_on.parquet", "05_faithfulness", (), RUN_ON,
                               "pairs actually scored per (source, model)")
FAITHFULNESS_TABLE = Artifact("faithfulness_table.csv", "05_faithfulness", ("report",),
                              ("model", "source", "measure", "random", "rationale", "difference", "n_pairs", "n_notes",
                               "rationale_lo", "rationale_hi", "difference_lo", "difference_hi"),
                              "faithfulness summary with intervals")
FAITHFULNESS_SEEDS = Artifact("faithfulness_seeds.parquet", "05_faithfulness", (),
                              ("note_id", "code", "source", "model", "measure", "k", "value", "control", "unit", "...",
                               "seed"), "per-pair rows of finding (b)'s sources under the later training seeds' models")
SEED_SPREAD_COLUMNS = ("model", "source", "measure", "seeds", "mean", "std", "n_pairs")
FAITHFULNESS_SEED_SPREAD = Artifact("faithfulness_seeds.csv", "05_faithfulness", ("report",), SEED_SPREAD_COLUMNS + ("value",),
                                    "finding (b)'s sources: mean and sd across training seeds")
VERDICTS_B = Artifact("verdicts.csv", "05_faithfulness", ("report",), VERDICT_COLUMNS, "finding (b)")
TIMING_05 = Artifact("bootstrap_timing.json", "05_faithfulness", ("report",), TIMING_KEYS, "time in the bootstrap")

# 06_plausibility
PLAUSIBILITY = Artifact("plausibility.parquet", "06_plausibility", ("08_few_shot",),
                        ("source", "granularity", "code_set", "measure", "n_pairs", "tp", "fp", "fn", "precision",
                         "recall", "f1", "n_notes", "n_pairs_eligible", "coverage", "scored_on", "f1_lo", "f1_hi",
                         "model", "binarisation"), "plausibility rows of every source")
PAIR_COUNTS = Artifact("pair_counts.parquet", "06_plausibility", ("08_few_shot", "09_open_questions"), COUNT_TABLE + ("source", "model"),
                       "per-pair MDACE counts of every source")
PAIR_COUNTS_SEEDS = Artifact("pair_counts_seeds.parquet", "06_plausibility", (), COUNT_TABLE + ("source", "model", "seed"),
                             "per-pair MDACE counts of the top-k attention and gradients of the later training seeds' models")
PLAUSIBILITY_SEED_SPREAD = Artifact("plausibility_seeds.csv", "06_plausibility", ("report",), SEED_SPREAD_COLUMNS,
                                    "PI token F1 of the top-k model rationales: mean and sd across training seeds")
SOFT_PLAUSIBILITY = Artifact("soft_plausibility.csv", "06_plausibility", (),
                             ("model", "source", "n_pairs", "auprc", "...", "threshold", "topk"),
                             "soft measures per model and source")
PLAUSIBILITY_TABLE = Artifact("plausibility_table.csv", "06_plausibility", ("report",),
                              ("source", "model", "<measure F1>...", "n_notes", "n_pairs", "n_pairs_eligible",
                               "coverage", "scored_on", "pi_lo", "pi_hi"), "the paper's plausibility table")
VERDICTS_A = Artifact("verdicts.csv", "06_plausibility", ("report",), VERDICT_COLUMNS, "finding (a)")
TIMING_06 = Artifact("bootstrap_timing.json", "06_plausibility", ("report",), TIMING_KEYS, "time in the bootstrap")

# 07_guided_learning
SWEEP = Artifact("sweep.csv", "07_guided_learning", ("08_few_shot", "09_open_questions"), STUDENT_ROW, "the lambda sweep (one row per run)")
NOTE_COUNTS = Artifact("note_counts.parquet", "07_guided_learning", ("07_guided_learning", "08_few_shot", "09_open_questions"), COUNT_TABLE,
                       "per-unit counts in each run folder (runs/<run>/, ner/<teacher>_<n>/; 08: students/<run>/)")
TRADEOFF = Artifact("tradeoff_verdict.csv", "07_guided_learning", ("report",),
                    ("model", "teacher", "lambda (chosen on tuning notes)", "PI token F1 gain", "gain lo", "gain hi",
                     "micro-F1 change", "change lo", "change hi", "n_notes", "seeds", "..."),
                    "lambda chosen on tuning notes, gains with intervals")
NER = Artifact("ner.csv", "07_guided_learning", ("09_open_questions",), ("teacher", "train notes", "requested", "spans", "pi_token_f1",
                                                     "...", "run_dir", "seconds", "pi_token_f1_lo", "pi_token_f1_hi"),
               "the NER experiment")
GUIDED_SUMMARY = Artifact("summary.csv", "07_guided_learning", ("report",),
                          ("method", "micro_f1", "macro_f1", "pi_token_f1", "n_notes", "n_pairs", "units", "seeds",
                           "pi_token_f1 (common units)", "common_lo", "common_hi", "common n_notes", "common n_pairs"),
                          "guided learning summary")
VERDICTS_C = Artifact("verdicts.csv", "07_guided_learning", ("report",), VERDICT_COLUMNS, "finding (c)")
TIMING_07 = Artifact("bootstrap_timing.json", "07_guided_learning", ("report",), TIMING_KEYS, "time in the bootstrap")

# 08_few_shot
TEACHERS = Artifact("teachers.csv", "08_few_shot", (), ("teacher", "requests", "usable answers", "aligned spans",
                                                        "pi_token_f1", "pi_token_f1_lo", "pi_token_f1_hi",
                                                        "token_exact_f1", "span_exact_f1", "n_notes", "n_pairs"),
                    "zero- vs few-shot teacher")
STUDENTS = Artifact("students.csv", "08_few_shot", (), STUDENT_ROW + ("trained_in",), "the few-shot students")
FEW_SHOT_SUMMARY = Artifact("summary.csv", "08_few_shot", ("report",), ("role", "zero-shot", "few-shot", "gain",
                                                                        "gain lo", "gain hi", "n_notes", "n_pairs",
                                                                        "verdict"), "finding (d) per role")
VERDICTS_D = Artifact("verdicts.csv", "08_few_shot", ("report",), VERDICT_COLUMNS, "finding (d)")
TIMING_08 = Artifact("bootstrap_timing.json", "08_few_shot", ("report",), TIMING_KEYS, "time in the bootstrap")

# 09_open_questions
OPEN_RUNS = Artifact("tradeoff_runs.csv", "09_open_questions", (),
                     ("model", "method", "setting", "micro_f1", "macro_f1", "pi_token_f1", "pi_token_f1_tuning", "...",
                      "run_dir", "seconds"), "every run of the trade-off methods (and notebook 07's of the teacher)")
PARETO = Artifact("pareto.csv", "09_open_questions", ("report",),
                  ("model", "method", "setting", "chosen", "pi_token_f1", "micro_f1", "pi_lo", "pi_hi", "micro_lo",
                   "micro_hi", "tuning PI token F1", "tuning micro-F1", "n_notes", "n_pairs", "n_test_notes"),
                  "every setting of every method, the one chosen on the tuning notes marked")
ROBUST = Artifact("robust_faithfulness.parquet", "09_open_questions", (),
                  ("note_id", "code", "source", "model", "measure", "value", "p", "p_zero", "n_units", "rationale_size"),
                  "Soft-NC/NS and F-Fidelity (probability form) per pair of finding (b)")
THRESHOLD_GRID = Artifact("threshold_grid.csv", "09_open_questions", (),
                          ("threshold", "tuning PI token F1", "n_pairs", "chosen"), "the alignment threshold tuned")
THRESHOLD_VERDICTS = Artifact("threshold_verdicts.csv", "09_open_questions", ("report",),
                              VERDICT_COLUMNS + ("threshold", "tuned"), "finding (a) at each alignment threshold")
LEARNING_CURVE = Artifact("learning_curve.csv", "09_open_questions", ("report",),
                          ("method", "fraction", "train notes", "pi_token_f1", "micro_f1", "n_notes", "n_pairs",
                           "n_test_notes", "seconds", "pi_lo", "pi_hi", "micro_lo", "micro_hi"),
                          "NER tagger and multi-objective student against the teacher's training notes")
VERDICTS_OPEN = Artifact("verdicts.csv", "09_open_questions", ("report",), VERDICT_COLUMNS,
                         "the open questions' verdicts (q1 trade-off, q2 finding (b) re-tested, q3 thresholds)")
TIMING_09 = Artifact("bootstrap_timing.json", "09_open_questions", ("report",), TIMING_KEYS, "time in the bootstrap")

#: Every declared artifact, in series order.
ARTIFACTS: tuple[Artifact, ...] = tuple(v for v in list(globals().values()) if isinstance(v, Artifact))
#: The verdict tables of the four findings, in the report's order (finding, artifact).
VERDICTS = (("a", VERDICTS_A), ("b", VERDICTS_B), ("c", VERDICTS_C), ("d", VERDICTS_D))
#: ``bootstrap_timing.json`` of the notebooks that run the bootstrap.
BOOTSTRAP_TIMINGS = (TIMING_05, TIMING_06, TIMING_07, TIMING_08, TIMING_09)


def markdown_table() -> str:
    """The contract as a Markdown table (what ``docs/INTERFACES.md`` lists)."""
    lines = ["| artifact | written by | read by | columns (JSON: keys) | what |", "|---|---|---|---|---|"]
    for a in ARTIFACTS:
        cols = ", ".join(a.columns).replace("|", "\\|")
        lines.append(f"| `{a.key}` | {a.writer} | {', '.join(a.readers) or '-'} | {cols} | {a.about} |")
    return "\n".join(lines) + "\n"
