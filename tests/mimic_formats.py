"""Small files in the published formats of MIMIC-IV (hosp, PhysioNet 2.2), MIMIC-IV-Note (note),
the Edin et al. 2023 split feather, MDACE as released (3mcloud/MDACE ``data/``) and MIMIC-III
NOTEEVENTS, written by :func:`write_all`. Counts of what the loaders should keep are in ``EXPECTED``
(worked out by hand in the comments)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

# ---- MIMIC-IV: 10 admissions of 8 patients ---------------------------------------------------
HTN, DM, CKD, DEP, COPD = "I10", "E119", "N183", "F329", "J449"
ADMISSIONS = {  # hadm_id: (subject_id, split, ICD-10 diagnoses (undotted), PCS procedures)
    20000001: (1, "train", [HTN, DM], []),
    20000002: (1, "train", [HTN, CKD], ["0DTJ4ZZ"]),
    20000003: (2, "train", [DEP, HTN], []),
    20000004: (3, "train", [CKD, DM, DEP], ["0DTJ4ZZ"]),
    20000005: (4, "train", [COPD, HTN], []),
    20000006: (5, "train", [COPD], []),
    20000007: (6, "val", [HTN, DM], []),
    20000008: (6, "val", [DEP], []),
    20000009: (7, "test", [HTN, COPD], []),
    20000010: (8, "test", [DM, CKD], []),
}
WORDS = {HTN: "essential hypertension", DM: "type 2 diabetes", CKD: "chronic kidney disease stage 3",
         DEP: "depression", COPD: "chronic obstructive pulmonary disease", "0DTJ4ZZ": "laparoscopic appendectomy"}


def _gz_csv(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(frame.to_csv(index=False).encode("utf-8"))


def write_mimiciv(hosp: Path, note: Path, split_file: Path) -> None:
    """hosp/diagnoses_icd.csv.gz, hosp/procedures_icd.csv.gz, hosp/d_icd_diagnoses.csv.gz,
    note/discharge.csv.gz and the split feather. Extra rows: ICD-9 diagnoses (3 rows, one
    admission coded in ICD-9 only) and an ICD-9 procedure row."""
    diag, proc, notes = [], [], []
    for hadm, (subj, _, dx, px) in ADMISSIONS.items():
        diag += [(subj, hadm, i + 1, c, 10) for i, c in enumerate(dx)]
        proc += [(subj, hadm, i + 1, "2150-01-02", c, 10) for i, c in enumerate(px)]
        body = "; ".join(WORDS[c] for c in dx + px)
        text = (f" \nName:  ___                     Unit No:   ___\n \nAdmission Date:  ___              "
                f"Discharge Date:   ___\n \nDischarge Diagnosis:\n{body}.\n \nFollowup Instructions:\n___\n")
        notes.append((f"{subj}-DS-{hadm % 100}", subj, hadm, "DS", hadm % 100, "2150-01-03 10:00:00",
                      "2150-01-03 12:00:00", text))
    diag += [(1, 20000001, 3, "4019", 9), (9, 20000011, 1, "25000", 9), (9, 20000011, 2, "4019", 9)]
    proc += [(9, 20000011, 1, "2150-01-02", "4701", 9)]
    notes.append(("9-DS-11", 9, 20000011, "DS", 11, "2150-01-03 10:00:00", "2150-01-03 12:00:00",
                  "Coded in ICD-9 only: hypertension, diabetes."))
    _gz_csv(hosp / "diagnoses_icd.csv.gz",
            pd.DataFrame(diag, columns=["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"]))
    _gz_csv(hosp / "procedures_icd.csv.gz",
            pd.DataFrame(proc, columns=["subject_id", "hadm_id", "seq_num", "chartdate", "icd_code", "icd_version"]))
    _gz_csv(hosp / "d_icd_diagnoses.csv.gz", pd.DataFrame(
        {"icd_code": [HTN, DM, "4019"], "icd_version": [10, 10, 9],
         "long_title": ["Essential (primary) hypertension", "Type 2 diabetes mellitus without complications",
                        "Unspecified essential hypertension"]}))
    _gz_csv(note / "discharge.csv.gz", pd.DataFrame(
        notes, columns=["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"]))
    split_file.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"_id": [h for h in ADMISSIONS] + [20000011],
                  "split": [v[1] for v in ADMISSIONS.values()] + ["train"]}).to_feather(split_file)


# ---- MDACE + MIMIC-III ----------------------------------------------------------------------
REPORT_A = ("Admission Date:  [**2101-1-1**]     Discharge Date:  [**2101-1-9**]\n\n"
            "Discharge Diagnoses:\n1. Hypertension.\n2. Chronic kidney disease stage 3, \n3. Depression,\n"
            "4. Dependence on ventilator\n")
REPORT_B = ("Admission Date:  [**2102-2-1**]\n\nHistory: 65 yo with COPD, diabetes.\n"
            "Procedure: laparoscopic appendectomy.\n")
ADDENDUM_B = "Addendum: patient also has hypertension noted by Dr. [**Last Name**].\n"
REPORT_C = "Discharge summary.\nAssessment: type 2 diabetes mellitus; hypertension\n"


def _at(text: str, piece: str) -> tuple[int, int]:
    i = text.index(piece)
    return i, i + len(piece)


def _ann(text, piece, code, system="ICD-10-CM", desc=""):
    b, e = _at(text, piece)
    return {"begin": b, "end": e, "code": code, "code_system": system, "description": desc, "type": "Human"}


def mdace_admissions() -> dict:
    """hadm_id -> the Inpatient ICD-10 file's object."""
    return {
        100001: {"hadm_id": 100001, "comment": "", "notes": [{
            "note_id": 501, "category": "Discharge summary", "description": "Report", "annotations": [
                _ann(REPORT_A, "Hypertension.", "I10"),  # trailing '.' trimmed
                _ann(REPORT_A, "Chronic kidney disease stage 3, ", "N18.30"),  # ', ' trimmed; N18.30 -> N18.3 (prefix)
                _ann(REPORT_A, " Depression,", "F32.A"),  # ' ' and ',' trimmed; F32.A -> F32.9 (table)
                _ann(REPORT_A, "Dependence on ventilator", "Z99.11"),  # no MIMIC-IV document: unseen
                _ann(REPORT_A, "Hypertension", "99213", "CPT"),  # a CPT annotation in an Inpatient file
            ]}]},
        100002: {"hadm_id": 100002, "comment": "", "notes": [
            {"note_id": 1200, "category": "Discharge summary", "description": "Addendum", "annotations": [
                _ann(ADDENDUM_B, "hypertension", "I10")]},  # offsets of the addendum's own text
            {"note_id": 900, "category": "Discharge summary", "description": "Report", "annotations": [
                _ann(REPORT_B, "COPD", "J44.9"),
                _ann(REPORT_B, "diabetes.", "E11.9"),  # '.' trimmed
                _ann(REPORT_B, "laparoscopic appendectomy", "0DTJ4ZZ", "ICD-10-PCS"),
            ]}]},
        100003: {"hadm_id": 100003, "comment": "", "notes": [
            {"note_id": 1500, "category": "Discharge summary", "description": "Report", "annotations": [
                _ann(REPORT_C, "type 2 diabetes mellitus", "E11.9"),
                _ann(REPORT_C, "hypertension\n", "I10"),  # newline trimmed
                _ann(REPORT_C, "type 2 diabetes mellitus", "E11.9"),  # duplicate
            ]},
            {"note_id": 1501, "category": "Physician ", "description": "Physician Resident Progress Note",
             "annotations": [{"begin": 0, "end": 4, "code": "I10", "code_system": "ICD-10-CM", "type": "Human"}]}]},
    }


def write_mdace(data_dir: Path) -> None:
    """MDACE's ``data/`` layout: Inpatient ICD-10 (3 admissions), Inpatient ICD-9 copies of two of
    them and a Profee ICD-10 file with CPT codes (both skipped by the loader)."""
    def put(rel, obj):
        p = data_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(obj), encoding="utf-8")

    for hadm, obj in mdace_admissions().items():
        put(f"Inpatient/ICD-10/1.0/{hadm}-ICD-10.json", obj)
    for hadm in (100001, 100002):
        put(f"Inpatient/ICD-9/1.0/{hadm}-ICD-9.json", {"hadm_id": hadm, "comment": "", "notes": [{
            "note_id": 501 if hadm == 100001 else 900, "category": "Discharge summary", "description": "Report",
            "annotations": [{"begin": 0, "end": 5, "code": "401.9", "code_system": "ICD-9-CM", "type": "Human"}]}]})
    put("Profee/ICD-10/1.0/100001-ICD-10.json", {"hadm_id": 100001, "comment": "", "notes": [{
        "note_id": 501, "category": "Discharge summary", "description": "Report",
        "annotations": [{"begin": 0, "end": 5, "code": "99223", "code_system": "CPT", "type": "Human"}]}]})


def write_noteevents(path: Path) -> None:
    """NOTEEVENTS.csv.gz with the MDACE notes and three unrelated rows (multi-line quoted text)."""
    cols = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY", "DESCRIPTION",
            "CGID", "ISERROR", "TEXT"]
    rows = [
        (174, 22532, 167853, "2151-08-04", "", "", "Discharge summary", "Report", "", "", "Admission Date: x\n, \"quoted\"\n"),
        (501, 11, 100001, "2101-01-09", "", "", "Discharge summary", "Report", "", "", REPORT_A),
        (900, 12, 100002, "2102-02-05", "", "", "Discharge summary", "Report", "", "", REPORT_B),
        (1200, 12, 100002, "2102-02-06", "", "", "Discharge summary", "Addendum", "", "", ADDENDUM_B),
        (1500, 13, 100003, "2103-03-03", "", "", "Discharge summary", "Report", "", "", REPORT_C),
        (1501, 13, 100003, "2103-03-02", "2103-03-02 08:00:00", "", "Physician ", "Physician Resident Progress Note",
         "14000", "", "Progress note text"),
        (2000, 14, 100004, "2104-01-01", "2104-01-01 09:00:00", "", "Radiology", "CHEST (PA & LAT)", "", "", "CXR: clear."),
    ]
    _gz_csv(path, pd.DataFrame(rows, columns=cols))


def write_all(root: Path) -> dict:
    """Every file under ``root`` (PhysioNet-like folders); returns the profile's ``data`` keys."""
    hosp = root / "physionet.org/files/mimiciv/2.2/hosp"
    note = root / "physionet.org/files/mimic-iv-note/2.2/note"
    split = root / "splits/mimiciv_icd10_split.feather"
    write_mimiciv(hosp, note, split)
    write_mdace(root / "MDACE/data")
    write_noteevents(root / "physionet.org/files/mimiciii/1.4/NOTEEVENTS.csv.gz")
    return {"mimic_hosp_dir": str(hosp), "mimic_note_dir": str(note), "mimic_split_file": str(split),
            "mdace_dir": str(root / "MDACE/data"),
            "mimic3_noteevents": str(root / "physionet.org/files/mimiciii/1.4/NOTEEVENTS.csv.gz"),
            "mimic_min_code_count": 2, "codiesp_dir": str(root / "no-codiesp-here")}
