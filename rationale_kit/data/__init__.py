"""Data loaders. Every source ends in the same canonical tables (:class:`Dataset`, described in
:mod:`rationale_kit.data.dataset`).

Sources: the embedded synthetic corpus (:mod:`rationale_kit.data.embedded`), CodiEsp (Spanish, or its
English machine translation with sentence-level projected spans; :mod:`.codiesp`), and MIMIC-IV ICD-10
(user's own copy; :mod:`.mimic`) with MDACE evidence (:mod:`.mdace`) or spans in the project's JSONL
format (:mod:`.spans_jsonl`). :func:`load_dataset` picks the source a profile names. Bad input raises
:class:`records.DataError` naming the file and the row, line or key. See docs/method/data.md.
"""
from __future__ import annotations

from rationale_kit.core.records import DataError
from rationale_kit.data.codiesp import (
    CODIESP_SPLITS,
    DEFAULT_CODIESP_DIR,
    SENTENCE_BREAK,
    download_codiesp,
    load_codiesp,
    resolve_codiesp_dir,
    split_sentences,
    translation_lines,
    try_load_codiesp,
)
from rationale_kit.data.dataset import (
    DATASET_DOC_COLUMNS,
    EVAL_ROLES,
    SPLITS,
    Dataset,
    codes_table,
    coding_docs,
    dataset_statistics,
    describe_code,
    example_pair,
    export_dataset,
    format_report,
    human_spans,
    load_saved,
    save_dataset,
    with_doc_defaults,
)
from rationale_kit.data.files import first_bad_utf8, read_text_file, resolve_path
from rationale_kit.data.load import load_dataset
from rationale_kit.data.mdace import (
    MDACE_CODE_TABLE,
    MDACE_PRESETS,
    NOTEEVENTS_COLUMNS,
    TRIM_CHARS,
    MdaceNote,
    MdaceRules,
    load_mdace,
    load_mdace_mimic3,
    map_code_version,
    mdace_rules,
    read_mdace,
    read_mdace_splits,
    read_noteevents,
    trim_span,
)
from rationale_kit.data.mimic import load_mimic
from rationale_kit.data.spans_jsonl import load_spans_jsonl
from rationale_kit.data.splits import mark_fewshot, patient_split, restrict_top_codes

__all__ = [
    "CODIESP_SPLITS", "DATASET_DOC_COLUMNS", "DEFAULT_CODIESP_DIR", "EVAL_ROLES", "MDACE_CODE_TABLE", "MDACE_PRESETS",
    "MdaceRules", "NOTEEVENTS_COLUMNS", "coding_docs", "mdace_rules", "read_mdace_splits", "with_doc_defaults",
    "SENTENCE_BREAK", "SPLITS", "TRIM_CHARS", "DataError", "Dataset", "MdaceNote", "codes_table",
    "dataset_statistics", "describe_code", "download_codiesp", "example_pair", "export_dataset", "first_bad_utf8",
    "format_report", "human_spans", "load_codiesp", "load_dataset", "load_mdace", "load_mdace_mimic3", "load_mimic",
    "load_saved", "load_spans_jsonl", "map_code_version", "mark_fewshot", "patient_split", "read_mdace",
    "read_noteevents", "read_text_file", "resolve_codiesp_dir", "resolve_path", "restrict_top_codes",
    "save_dataset", "split_sentences", "trim_span", "translation_lines", "try_load_codiesp",
]
