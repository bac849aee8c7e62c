"""MDACE evidence (Cheng et al. 2023): on documents whose texts its offsets refer to, or - as
released - with its MIMIC-III discharge summaries read from NOTEEVENTS (Edin et al. 2024's route:
train on MIMIC-IV, evaluate rationales on MDACE). See docs/method/data.md."""
from __future__ import annotations

import json
import os
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pandas as pd

from rationale_kit.core import icd
from rationale_kit.core.records import DataError
from rationale_kit.core.text import truncate_words
from rationale_kit.data.dataset import code_for_doc, docs_frame, spans_frame
from rationale_kit.data.files import collapse_ws, csv_rows, parse_int, read_text_file, resolve_path


#: Code versions newer than MIMIC-IV's that no prefix maps back (Edin et al. 2024,
#: explainable-medical-coding ``make_mdace_icd10_inpatient.py``): MDACE code -> MIMIC-IV code.
MDACE_CODE_TABLE = {
    "F32.A": "F32.9",  # depression, unspecified (F32.A added FY2022)
    "S02.122A": "S02.19XA",
    "D75.839": "D75.89",
    "F10.139": "F10.10",
    "G90.51": "G90.519",
}
#: Characters trimmed from span edges (Edin et al. 2024: ``string.punctuation`` + newline, tab, space).
TRIM_CHARS = frozenset(string.punctuation + "\n\t \r")


def map_code_version(code: str, known: set[str]) -> tuple[str, str]:
    """``(code, how)``: ``code`` itself when ``known`` holds it (``how="same"``); else its longest
    prefix (at least 3 characters, trailing dot dropped) in ``known`` (``"prefix"``: N18.30 -> N18.3);
    else :data:`MDACE_CODE_TABLE` (``"table"``: F32.A -> F32.9); else unchanged (``"unmapped"``).
    The order is Edin et al. 2024's (known, prefix, then their table)."""
    if code in known:
        return code, "same"
    head = code[:-1]
    while len(head) >= 3:
        if head.rstrip(".") in known:
            return head.rstrip("."), "prefix"
        head = head[:-1]
    if code in MDACE_CODE_TABLE:
        return MDACE_CODE_TABLE[code], "table"
    return code, "unmapped"


def trim_span(text: str, start: int, end: int, rule: Literal["edges", "edin", "none"] = "edges") -> tuple[int, int]:
    """Span ``[start, end)`` of ``text`` with punctuation and whitespace (:data:`TRIM_CHARS`) trimmed.

    ``edges``: every such character at either end is removed (may return ``start == end``).
    ``edin``: Edin et al. 2024's rule, verbatim: ``end - 1`` when ``text[end]`` (the character
    *after* the half-open span) is one, then ``start + 1`` when ``text[start]`` is one (one
    character each side). ``none``: unchanged."""
    if rule == "none":
        return start, end
    if rule == "edin":
        if end < len(text) and text[end] in TRIM_CHARS:
            end -= 1
        if start < len(text) and text[start] in TRIM_CHARS:
            start += 1
        return start, end
    if rule != "edges":
        raise ValueError(f"trim rule must be 'edges', 'edin' or 'none', got {rule!r}")
    while start < end and text[start] in TRIM_CHARS:
        start += 1
    while end > start and text[end - 1] in TRIM_CHARS:
        end -= 1
    return start, end


def _int_id(value: Any, where: str, what: str) -> int:
    if isinstance(value, bool):
        raise DataError(f"{where}: {what} must be an integer, got {value!r}")
    return parse_int(value, where, what)


@dataclass(frozen=True)
class MdaceNote:
    """One MDACE discharge-summary note used as a document, with its validated annotations."""

    path: Path
    hadm_id: int
    note_index: int  # position in the file's ``notes``
    note_id: int  # MIMIC-III NOTEEVENTS ROW_ID
    description: str
    annotations: tuple  # (k, begin, end, code, system "cm"|"pcs", type, quoted text or None)


#: Which discharge-summary notes of an admission :func:`read_mdace` uses (``data.mdace_notes``).
MDACE_NOTE_RULES = ("reports", "discharge", "first_report")


def read_mdace(mdace_dir: str | os.PathLike,
               notes: Literal["reports", "discharge", "first_report"] = "reports") -> tuple[list[MdaceNote], dict]:
    """MDACE as released (``data/{Inpatient,Profee}/{ICD-10,ICD-9}/1.0/<hadm_id>-<system>.json``;
    a sub-folder, or a folder of such files, also works): the Inpatient ICD-10 discharge summaries.

    Each file is ``{hadm_id, comment, notes: [{note_id, category, description, annotations:
    [{begin, end, code, code_system, description, type}]}]}``. Files under ``Profee/`` or ``ICD-9/``
    are skipped and counted, as are annotations whose ``code_system`` is ``CPT`` or ICD-9 (MDACE's
    ICD-10 files hold a few ICD-9-CM annotations), and notes whose category is not "Discharge
    summary". Which discharge summaries become documents (``notes``; each keeps its own offsets):

    - ``reports`` (default): every note whose description is "Report" (a missing description counts
      as a report). One admission of MDACE (142712) has two full reports with different
      annotations: both are used, and counted under ``read``. Addenda are counted and skipped.
    - ``discharge``: every discharge-summary note, addenda included (Edin et al. 2024).
    - ``first_report``: the report with the lowest integer ``note_id``; further reports are counted
      and skipped (``load_mdace``: one document per admission).

    Structural problems (wrong types, missing keys, an admission in two files) are a
    :class:`DataError` naming the file and key. Returns ``(notes, report)``.
    """
    if notes not in MDACE_NOTE_RULES:
        raise ValueError(f"notes must be one of {list(MDACE_NOTE_RULES)}, got {notes!r}")
    root = resolve_path(mdace_dir)
    if not root.is_dir():
        raise DataError(f"{root}: MDACE folder not found (data.mdace_dir should be MDACE's data/ folder)")
    files = sorted(root.rglob("*.json"))
    report: dict = {"source": f"MDACE {root}", "notes used": notes, "read": Counter(), "skipped": Counter()}
    out: list[MdaceNote] = []
    seen: dict[int, Path] = {}
    for path in files:
        parts = {p.lower() for p in path.relative_to(root).parts[:-1]}
        if "profee" in parts:
            report["skipped"]["Profee files (professional-fee coding)"] += 1
            continue
        if "icd-9" in parts or "icd9" in parts:
            report["skipped"]["ICD-9 files"] += 1
            continue
        report["read"]["files"] += 1
        out.extend(_read_mdace_file(path, report, seen, notes))
    report["read"]["admissions (Inpatient ICD-10) with a used discharge summary"] = len({n.hadm_id for n in out})
    report["read"]["discharge-summary notes used"] = len(out)
    report["read"] = dict(report["read"])
    return out, report


def _read_mdace_file(path: Path, report: dict, seen: dict[int, Path], rule: str) -> list[MdaceNote]:
    """The used discharge summaries of one MDACE file (none when it has no report)."""
    try:
        obj = json.loads(read_text_file(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object")
    for key in ("hadm_id", "notes"):
        if key not in obj:
            raise DataError(f"{path}: missing key {key!r}")
    hadm = _int_id(obj["hadm_id"], str(path), "hadm_id")
    if hadm in seen:
        raise DataError(f"{path}: admission hadm_id {hadm} also in {seen[hadm]}")
    seen[hadm] = path
    if not isinstance(obj["notes"], list):
        raise DataError(f"{path}: 'notes' must be a list, got {type(obj['notes']).__name__}")
    ds_notes = _discharge_summaries(path, obj["notes"], report)
    reports = sorted([x for x in ds_notes if x[2].lower() == "report"], key=lambda x: x[1])
    if len(reports) > 1:
        report["read"]["admissions with more than one discharge-summary report"] += 1
    used = []
    for x in sorted(ds_notes, key=lambda x: x[1]):
        j, nid, desc, note = x
        is_report = desc.lower() == "report"
        if rule == "discharge" or (rule == "reports" and is_report) or (rule == "first_report" and x is (reports[0] if reports else None)):
            used.append(x)
            if is_report and reports and x is not reports[0]:
                report["read"]["further discharge-summary reports of an admission (used as their own documents)"] += 1
            if not is_report:
                report["read"]["discharge-summary addenda (used as their own documents)"] += 1
        elif is_report:  # first_report: a second full report, not an addendum
            report["skipped"]["further discharge-summary reports of an admission (first_report: only the first used)"] += 1
            report["skipped"]["annotations on further discharge-summary reports"] += len(note["annotations"])
        else:  # offsets refer to the addendum's own text
            report["skipped"]["addenda (description Addendum) of an admission"] += 1
            report["skipped"]["annotations on addenda"] += len(note["annotations"])
    if not used:
        report["skipped"]["admissions without a used discharge summary"] += 1
    return [MdaceNote(path, hadm, j, nid, desc, tuple(_report_annotations(path, j, note, report)))
            for j, nid, desc, note in used]


def _discharge_summaries(path: Path, notes: list, report: dict) -> list[tuple[int, int, str, dict]]:
    """``(index, note_id, description, note)`` of the discharge summaries of one file's ``notes``."""
    ds_notes = []
    for j, note in enumerate(notes):
        for key in ("note_id", "category", "annotations"):
            if not isinstance(note, dict) or key not in note:
                raise DataError(f"{path}: notes[{j}] missing key {key!r}")
        if not isinstance(note["annotations"], list):
            raise DataError(f"{path}: notes[{j}].annotations must be a list, got {type(note['annotations']).__name__}")
        nid = _int_id(note["note_id"], f"{path}: notes[{j}]", "note_id")
        report["read"]["annotations"] += len(note["annotations"])
        if str(note["category"]).strip().lower() == "discharge summary":
            ds_notes.append((j, nid, str(note.get("description") or "Report").strip(), note))
        else:
            report["skipped"]["notes other than discharge summaries"] += 1
            report["skipped"]["annotations on notes other than discharge summaries"] += len(note["annotations"])
    return ds_notes


def _report_annotations(path: Path, j: int, note: dict, report: dict) -> list[tuple]:
    """The ICD-10 annotations of the chosen report: ``(k, begin, end, code, system, type, quoted)``."""
    anns = []
    for k, ann in enumerate(note["annotations"]):
        where = f"{path}: notes[{j}].annotations[{k}]"
        if not isinstance(ann, dict):
            raise DataError(f"{where}: expected an object")
        for key in ("begin", "end", "code", "code_system"):
            if key not in ann:
                raise DataError(f"{where}: missing key {key!r}")
        system = str(ann["code_system"]).upper().replace(" ", "").replace("_", "-")
        if "ICD-9" in system or "ICD9" in system:
            report["skipped"]["ICD-9 annotations"] += 1
            continue
        if system == "CPT":
            report["skipped"]["CPT annotations"] += 1
            continue
        sys = "pcs" if "PCS" in system else ("cm" if "CM" in system or system in ("ICD-10", "ICD10") else None)
        if sys is None:
            raise DataError(f"{where}: unknown code_system {ann['code_system']!r} (expected ICD-10-CM, ICD-10-PCS, ICD-9-CM or CPT)")
        if not isinstance(ann["code"], str):
            raise DataError(f"{where}: code must be a string, got {ann['code']!r}")
        begin = _int_id(ann["begin"], where, "begin")
        end = _int_id(ann["end"], where, "end")
        anns.append((k, begin, end, ann["code"], sys, str(ann.get("type", "")), ann.get("covered_text", ann.get("text"))))
    return anns



def load_mdace(
    mdace_dir: str | os.PathLike,
    docs: pd.DataFrame,
    on_mismatch: Literal["error", "skip"] = "error",
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """MDACE-format evidence keyed to ``docs`` by admission (``note_id = str(hadm_id)``): for files
    whose offsets refer to the texts of ``docs`` (e.g. MDACE-style annotations made on MIMIC-IV).
    MDACE *as released* refers to MIMIC-III notes: use :func:`load_mdace_mimic3` for it.

    Files, notes and annotations are selected by :func:`read_mdace`. ``begin``/``end`` are half-open
    offsets checked against the note text (and against ``covered_text`` / ``text`` when an
    annotation carries it): a failure raises :class:`DataError` naming the file and annotation, or
    with ``on_mismatch="skip"`` is counted. Admissions absent from ``docs`` are counted and skipped.
    Granularity ``evidence``; the MDACE ``type`` is kept in ``evidence_type``. Returns ``(docs with
    annotated=True on matched documents, spans, report)``.
    """
    notes, report = read_mdace(mdace_dir, notes="first_report")
    report["skipped"] = Counter(report["skipped"])
    texts = dict(zip(docs["note_id"].astype(str), docs["text"]))
    codes_of = {str(n): set(cs) for n, cs in zip(docs["note_id"], docs["codes"])}
    rows: list[dict] = []
    n_ann = 0
    for note in notes:
        nid = str(note.hadm_id)
        if nid not in texts:
            report["skipped"]["admissions not among the documents"] += 1
            report["skipped"]["annotations of admissions not among the documents"] += len(note.annotations)
            continue
        text = texts[nid]
        if not str(text).strip() and note.annotations:  # as the spans JSONL loader: no span on an empty note
            raise DataError(f"{note.path}: notes[{note.note_index}].annotations[0]: admission {nid!r} is an empty "
                            "note (only whitespace)")
        for k, start, end, raw_code, sys, etype, quoted in note.annotations:
            n_ann += 1
            where = f"{note.path}: notes[{note.note_index}].annotations[{k}]"
            code = code_for_doc(raw_code, sys, codes_of[nid], where)
            problem = None
            if not (0 <= start < end <= len(text)):
                problem = f"offsets [{start}, {end}) outside note {nid!r} of length {len(text)}"
            elif quoted is not None and collapse_ws(str(quoted)) != collapse_ws(text[start:end]):
                problem = f"span text {quoted!r} does not match note text {text[start:end]!r}"
            if problem:
                if on_mismatch == "error":
                    raise DataError(f"{where}: {problem}")
                report["skipped"]["annotations whose offsets or text do not fit the note"] += 1
                continue
            if code not in codes_of[nid]:
                report.setdefault("warnings", Counter())["span codes not among the document's codes (kept)"] += 1
            rows.append({"note_id": nid, "code": code, "start": start, "end": end, "granularity": "evidence",
                         "source": "human", "evidence_type": etype, "source_note_id": str(note.note_id)})
    spans = spans_frame(rows, ["evidence_type", "source_note_id"])
    dup = spans.duplicated(["note_id", "code", "start", "end"])
    if dup.any():
        report["skipped"]["duplicate spans (same note, code and offsets)"] += int(dup.sum())
        spans = spans[~dup].reset_index(drop=True)
    report["read"]["annotations on kept discharge summaries"] = n_ann
    report["kept"] = {"spans": int(len(spans)), "annotated documents": int(spans["note_id"].nunique())}
    report["skipped"] = dict(report["skipped"])
    if "warnings" in report:
        report["warnings"] = dict(report["warnings"])
    docs = docs.copy()
    docs["annotated"] = docs["annotated"] | docs["note_id"].isin(set(spans["note_id"]))
    return docs, spans, report


#: NOTEEVENTS columns the MIMIC-III reader needs.
NOTEEVENTS_COLUMNS = ["ROW_ID", "HADM_ID", "CATEGORY", "DESCRIPTION", "TEXT"]


def read_noteevents(path: str | os.PathLike, row_ids: set[int]) -> dict[int, dict]:
    """The MIMIC-III ``NOTEEVENTS.csv`` (or ``.csv.gz``) rows whose integer ``ROW_ID`` is in
    ``row_ids``, streamed (the file is ~4 GB): ``ROW_ID -> {hadm_id, category, description,
    iserror, text, line}``. A bad header, a row with the wrong number of fields or a non-integer
    ``ROW_ID`` is a :class:`DataError` naming the file and line."""
    path = resolve_path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (data.mimic3_noteevents should be MIMIC-III NOTEEVENTS.csv or .csv.gz)")
    out: dict[int, dict] = {}
    col: dict[str, int] = {}
    for header, _, first, row in csv_rows(path, NOTEEVENTS_COLUMNS):
        col = col or {c: header.index(c) for c in header}
        rid = parse_int(row[col["ROW_ID"]], f"{path} line {first}", "ROW_ID")
        if rid in row_ids:
            if "\x00" in row[col["TEXT"]]:
                raise DataError(f"{path} line {first}: NUL byte in TEXT of ROW_ID {rid}")
            out[rid] = {"hadm_id": row[col["HADM_ID"]].strip(), "category": row[col["CATEGORY"]].strip(),
                        "description": row[col["DESCRIPTION"]].strip(), "text": row[col["TEXT"]],
                        "iserror": row[col["ISERROR"]].strip() if "ISERROR" in col else "", "line": first}
    return out


@dataclass(frozen=True)
class MdaceRules:
    """How :func:`load_mdace_mimic3` turns MDACE into evaluation documents and spans (the
    ``data.mdace_*`` options; :data:`MDACE_PRESETS` holds the project's defaults and Edin et al.
    2024's choices; docs/method/data.md justifies each default).

    - ``notes``: which discharge summaries become documents (:func:`read_mdace`).
    - ``code_systems``: ``cm_pcs`` evaluates ICD-10-CM and -PCS evidence; ``cm`` only CM (PCS
      annotations counted and skipped).
    - ``known_codes``: what codes are mapped to (:func:`map_code_version`): ``all`` = every ICD-10
      code of MIMIC-IV's hosp tables (any count), ``kept`` = the codes of the kept MIMIC-IV documents.
    - ``map_per_system``: map CM codes to CM codes and PCS to PCS (else one shared set).
    - ``unseen``: codes no training document carries (the models' label space): ``keep`` them as gold
      codes with their spans, or ``drop`` them with their spans (documents left without codes go).
    - ``trim``: span edges (:func:`trim_span`).
    - ``beyond_cut``: spans starting after the first ``data.max_words`` words (where models cut the
      note): ``keep`` (misses of every model) or ``drop`` (counted).
    - ``split``: ``mdace`` = MDACE's evidence splits (``MDace-ev-{train,val,test}.csv``): test
      admissions are report notes, train/val admissions tuning notes; ``hashed`` = every admission
      an evaluation note, the design's hashed ``tuning_fraction`` for tuning.
    """

    notes: Literal["reports", "discharge", "first_report"] = "reports"
    code_systems: Literal["cm_pcs", "cm"] = "cm_pcs"
    known_codes: Literal["all", "kept"] = "all"
    map_per_system: bool = True
    unseen: Literal["keep", "drop"] = "keep"
    trim: Literal["edges", "edin", "none"] = "edges"
    beyond_cut: Literal["keep", "drop"] = "keep"
    split: Literal["mdace", "hashed"] = "mdace"


#: ``data.mdace_preset``: the project's defaults, and Edin et al. 2024's route (explainable-medical-coding:
#: every discharge-summary note, diagnosis codes only, targets the model lacks dropped, their
#: one-character trim, spans past the input cut skipped, MDACE's evidence test split).
MDACE_PRESETS = {
    "project": MdaceRules(),
    "edin": MdaceRules(notes="discharge", code_systems="cm", unseen="drop", trim="edin", beyond_cut="drop"),
}


def mdace_rules(preset: str = "project", **overrides) -> MdaceRules:
    """The rules of ``preset`` with the given fields replaced (``None`` values are ignored)."""
    import dataclasses

    if preset not in MDACE_PRESETS:
        raise DataError(f"data.mdace_preset must be one of {list(MDACE_PRESETS)}, got {preset!r}")
    return dataclasses.replace(MDACE_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


#: MDACE's evidence split files (``splits/Inpatient`` of the MDACE repository; one hadm_id a line).
MDACE_SPLIT_FILES = {"train": "MDace-ev-train.csv", "val": "MDace-ev-val.csv", "test": "MDace-ev-test.csv"}


def default_splits_dir(mdace_dir: str | os.PathLike) -> Path:
    """Where MDACE keeps its Inpatient splits relative to its ``data/`` folder: ``../splits/Inpatient``."""
    return resolve_path(mdace_dir).parent / "splits" / "Inpatient"


def read_mdace_splits(splits_dir: str | os.PathLike) -> dict[int, str]:
    """``hadm_id -> train|val|test`` from MDACE's ``MDace-ev-{train,val,test}.csv`` (no header, one
    integer hadm_id a line). A missing file, a line that is not an integer, or an admission in two
    files is a :class:`DataError` naming the file and line."""
    root = resolve_path(splits_dir)
    out: dict[int, str] = {}
    where_of: dict[int, str] = {}
    for split, name in MDACE_SPLIT_FILES.items():
        path = root / name
        if not path.exists():
            raise DataError(f"{path}: MDACE split file not found (data.mdace_splits_dir should be MDACE's "
                            f"splits/Inpatient folder; or set data.mdace_split: hashed)")
        for lineno, line in enumerate(read_text_file(path).splitlines(), 1):
            if not line.strip():
                continue
            hadm = parse_int(line.strip(), f"{path} line {lineno}", "hadm_id")
            if hadm in out:
                raise DataError(f"{path} line {lineno}: hadm_id {hadm} is also in {where_of[hadm]}")
            out[hadm], where_of[hadm] = split, f"{name} line {lineno}"
    return out


@dataclass(frozen=True)
class _CodeRules:
    """The code sets and rules one :func:`load_mdace_mimic3` call applies."""

    known: dict  # system ("cm", "pcs") -> frozenset of codes mapped to
    trained: frozenset  # codes of the MIMIC-IV training documents (the models' label space)
    rules: MdaceRules
    max_words: Optional[int]


@dataclass
class _Mimic3Tally:
    """What :func:`load_mdace_mimic3` counts while it reads the notes."""

    skipped: Counter
    mapped: Counter = field(default_factory=Counter)
    mapping_used: dict = field(default_factory=dict)
    unseen_codes: Counter = field(default_factory=Counter)
    n_trimmed: int = 0


def _known_codes(train_docs: pd.DataFrame, rules: MdaceRules, mimic_codes: Optional[dict]) -> dict:
    """``{"cm": codes, "pcs": codes}`` that MDACE codes are mapped to (one shared set when
    ``rules.map_per_system`` is off)."""
    if rules.known_codes == "all" and mimic_codes is not None:
        cm, pcs = frozenset(mimic_codes.get("cm", ())), frozenset(mimic_codes.get("pcs", ()))
    else:  # the kept documents' codes, split by form (CM codes are dotted or 3 characters)
        kept = {c for cs in train_docs["codes"] for c in cs}
        cm = frozenset(c for c in kept if "." in c or len(c) == 3)
        pcs = frozenset(kept - cm)
    if not rules.map_per_system:
        cm = pcs = cm | pcs
    return {"cm": cm, "pcs": pcs}


def load_mdace_mimic3(
    mdace_dir: str | os.PathLike,
    noteevents: str | os.PathLike,
    train_docs: pd.DataFrame,
    rules: Optional[MdaceRules] = None,
    mimic_codes: Optional[dict] = None,
    splits: Optional[dict[int, str] | str | os.PathLike] = None,
    max_words: Optional[int] = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """MDACE's Inpatient ICD-10 discharge summaries as rationale evaluation documents, their text
    from MIMIC-III (the route of Edin et al. 2024: train on MIMIC-IV, evaluate rationales on MDACE).

    - Notes: :func:`read_mdace` picks the discharge summaries (``rules.notes``); an MDACE
      ``note_id`` is the NOTEEVENTS ``ROW_ID`` (integers compared as integers). Each is a document
      ``note_id = "mimic3_<ROW_ID>"``, ``split="test"`` (never trained on), ``annotated=True``,
      ``credentialed=True``, ``full_codes=False`` (its codes are the annotated ones only: never part
      of coding measurement), ``eval_role`` from MDACE's split (``rules.split="mdace"``, ``splits``:
      ``report`` for its test admissions, ``tuning`` for train/val; ``splits`` is the mapping of
      :func:`read_mdace_splits` or the folder it reads; admissions in no split file are counted and
      skipped) or ``""`` (``hashed``). A ROW_ID absent from NOTEEVENTS, or whose
      HADM_ID or CATEGORY differ from MDACE's, is an error naming both files.
    - Spans: offsets are checked against the text (``0 <= begin < end <= len``: else an error),
      then trimmed (:func:`trim_span`, ``rules.trim``); spans empty after trimming, and with
      ``rules.beyond_cut="drop"`` spans starting after the first ``max_words`` words, are counted
      and skipped; duplicates (same note, code, offsets) counted and merged. Each span carries
      ``hadm_id`` and ``source_note_id``.
    - Codes: normalised (dotted ICD-10-CM, undotted PCS; PCS skipped with ``rules.code_systems="cm"``),
      then mapped (:func:`map_code_version`) to ``mimic_codes`` (``{"cm", "pcs"}``: every ICD-10
      code of MIMIC-IV) or the codes of ``train_docs`` (``rules.known_codes``), counted by how. A
      code no training document carries is counted and listed; ``rules.unseen`` keeps or drops it.
    - ``codes`` of a document: its mapped codes with at least one kept span, in first-span order.

    Returns ``(documents, spans, report)``; the report holds every count.
    """
    rules = rules or MdaceRules()
    if rules.split == "mdace" and splits is None:
        raise ValueError("rules.split = 'mdace' needs MDACE's splits (a mapping or the splits folder)")
    notes, report = read_mdace(mdace_dir, rules.notes)
    if rules.split == "mdace" and notes and not isinstance(splits, dict):
        splits = read_mdace_splits(splits)  # read once there is something to split
    tally = _Mimic3Tally(Counter(report["skipped"]))
    trained = frozenset(c for cs, s in zip(train_docs["codes"], train_docs["split"]) if s == "train" for c in cs)
    code_rules = _CodeRules(_known_codes(train_docs, rules, mimic_codes), trained, rules, max_words)
    rows_of = read_noteevents(noteevents, {n.note_id for n in notes})
    ne_path = resolve_path(noteevents)
    doc_rows, span_rows = [], []
    roles: Counter = Counter()
    for note in notes:
        text = _mimic3_text(note, rows_of.get(note.note_id), ne_path, report)
        role = ""
        if rules.split == "mdace":
            if note.hadm_id not in splits:
                tally.skipped["discharge summaries of admissions in none of MDACE's split files"] += 1
                continue
            role = "report" if splits[note.hadm_id] == "test" else "tuning"
        nid = f"mimic3_{note.note_id}"
        rows, codes = _mimic3_spans(note, text, nid, code_rules, tally)
        span_rows.extend(rows)
        if not codes:
            tally.skipped["documents left without spans"] += 1
            continue
        doc_rows.append({"note_id": nid, "text": text, "codes": codes, "split": "test", "annotated": True,
                         "fewshot": False, "credentialed": True, "full_codes": False, "eval_role": role})
        roles[(f"MDACE {splits[note.hadm_id]}" if role else "all"), note.hadm_id] += 1
    docs = docs_frame(doc_rows)
    spans = spans_frame(span_rows, ["evidence_type", "source_note_id", "hadm_id"])
    dup = spans.duplicated(["note_id", "code", "start", "end"])
    if dup.any():
        tally.skipped["duplicate spans (same note, code and offsets, after mapping and trimming)"] += int(dup.sum())
        spans = spans[~dup].reset_index(drop=True)
    report["source"] += f" with MIMIC-III text from {ne_path}"
    report["rules"] = {k: str(v) for k, v in rules.__dict__.items()}
    report["code versions"] = {**dict(tally.mapped), "mapping used": dict(sorted(tally.mapping_used.items()))}
    report["codes no training document carries"] = {
        "rule": f"{rules.unseen}: " + ("kept as gold codes (misses for every model) with their spans" if rules.unseen == "keep"
                                       else "dropped with their spans"),
        "distinct codes": len(tally.unseen_codes), "annotations": int(sum(tally.unseen_codes.values())),
        "codes": dict(sorted(tally.unseen_codes.items())),
    }
    report["trimming"] = {"rule": rules.trim, "spans trimmed": tally.n_trimmed}
    report["skipped"] = dict(tally.skipped)
    if "warnings" in report:
        report["warnings"] = dict(report["warnings"])
    split_rule = ("MDACE's evidence splits: test admissions report notes, train/val admissions tuning notes"
                  if rules.split == "mdace" else "hashed: every admission an evaluation note")
    report["kept"] = {"documents": int(len(docs)), "spans": int(len(spans)), "split": "test (evaluation only)",
                      "evaluation split": split_rule,
                      **{f"{k} documents": int(sum(n for (g, _), n in roles.items() if g == k)) for k in sorted({g for g, _ in roles})},
                      **{f"{k} admissions": int(len({h for (g, h) in roles if g == k})) for k in sorted({g for g, _ in roles})}}
    return docs, spans, report


def _mimic3_text(note: MdaceNote, row: Optional[dict], ne_path: Path, report: dict) -> str:
    """The NOTEEVENTS text of ``note``, checked to be its admission's discharge summary."""
    if row is None:
        raise DataError(f"{note.path}: note_id {note.note_id} (hadm_id {note.hadm_id}) is not a ROW_ID of {ne_path}")
    if row["hadm_id"] and parse_int(row["hadm_id"], f"{ne_path} line {row['line']}", "HADM_ID") != note.hadm_id:
        raise DataError(f"{note.path}: hadm_id {note.hadm_id} but {ne_path} line {row['line']} (ROW_ID {note.note_id}) "
                        f"has HADM_ID {row['hadm_id']}")
    if row["category"].lower() != "discharge summary":
        raise DataError(f"{note.path}: note_id {note.note_id} is a {row['category']!r} note in {ne_path} "
                        f"line {row['line']}, not a discharge summary")
    if row["iserror"] == "1":
        report.setdefault("warnings", Counter())["notes marked ISERROR in NOTEEVENTS (kept: MDACE annotated them)"] += 1
    return row["text"]


def _mimic3_spans(note: MdaceNote, text: str, nid: str, rules: _CodeRules,
                  tally: _Mimic3Tally) -> tuple[list[dict], list[str]]:
    """The kept span rows of one note and its codes in first-span order."""
    r = rules.rules
    cut = truncate_words(text, rules.max_words) if (r.beyond_cut == "drop" and rules.max_words) else len(text)
    rows: list[dict] = []
    codes: list[str] = []
    for k, start, end, raw_code, sys, etype, quoted in note.annotations:
        where = f"{note.path}: notes[{note.note_index}].annotations[{k}]"
        if not (0 <= start < end <= len(text)):
            raise DataError(f"{where}: offsets [{start}, {end}) outside NOTEEVENTS ROW_ID {note.note_id} of length {len(text)}")
        if quoted is not None and collapse_ws(str(quoted)) != collapse_ws(text[start:end]):
            raise DataError(f"{where}: span text {quoted!r} does not match note text {text[start:end]!r}")
        try:
            code = icd.normalize_code(raw_code, sys)
        except icd.CodeError as exc:
            raise DataError(f"{where}: {exc}") from None
        if sys == "pcs" and r.code_systems == "cm":
            tally.skipped["ICD-10-PCS annotations (mdace_code_systems: cm)"] += 1
            continue
        new, how = map_code_version(code, rules.known[sys])
        has = "annotations whose code MIMIC-IV has" if r.known_codes == "all" else "annotations whose code the kept MIMIC-IV documents have"
        tally.mapped[f"annotations whose code is {how}" if how != "same" else has] += 1
        if how in ("prefix", "table"):
            tally.mapping_used[code] = new
        if new not in rules.trained:
            tally.unseen_codes[new] += 1
            if r.unseen == "drop":
                tally.skipped["annotations of codes no training document carries (dropped)"] += 1
                continue
        s, e = trim_span(text, start, end, r.trim)
        if (s, e) != (start, end):
            tally.n_trimmed += 1
        if s >= e:
            tally.skipped["spans empty after trimming punctuation and whitespace"] += 1
            continue
        if s >= cut:
            tally.skipped["spans starting after the first data.max_words words (mdace_beyond_cut: drop)"] += 1
            continue
        rows.append({"note_id": nid, "code": new, "start": s, "end": e, "granularity": "evidence",
                     "source": "human", "evidence_type": etype, "source_note_id": str(note.note_id),
                     "hadm_id": str(note.hadm_id)})
        if new not in codes:
            codes.append(new)
    return rows, codes
