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
RARE_GERD, RARE_HIV = "K219", "B20"  # on one MIMIC-IV admission each (rare: not in the kept documents)
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
    # two ICD-10 codes on one admission only: in MIMIC-IV's tables, dropped by min_code_count 2
    diag += [(8, 20000010, 3, RARE_GERD, 10), (8, 20000010, 4, RARE_HIV, 10)]
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
REPORT_D1 = "Admission Date:  [**2104-4-1**]\nDiagnoses: hypertension.\nProcedure: laparoscopic appendectomy.\n"
REPORT_D2 = "Admission Date:  [**2104-4-1**]\nSecond summary. History of COPD and depression.\n"
REPORT_E = ("Discharge Diagnosis: type 2 diabetes; GERD; intoxication with ethanol. Imaging: chest film.\n"
            "Hospital course: " + " ".join(["uneventful"] * 30) + ". Also treated for hypertension.\n")


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


def _more_admissions() -> dict:
    """Admissions 100004 (two full discharge-summary reports, like MDACE's 142712) and 100005 (a
    report with an ICD-9-CM annotation inside the ICD-10 file, codes MIMIC-IV has only on one
    admission, a procedure code whose prefix is a CM code, a span far into the note, and notes of
    every other category MDACE has, one of them an ECG "Report")."""
    other = [(3001 + i, cat, desc) for i, (cat, desc) in enumerate([
        ("Physician", "Intensivist Note"), ("Radiology", "CHEST (PORTABLE AP)"), ("General", "Generic Note"),
        ("Respiratory", "Respiratory Care Shift Note"), ("Nutrition", "Clinical Nutrition Note"),
        ("Rehab Services", "Physical Therapy Evaluation Note"), ("Consult", "Physician Initial Consult Note"),
        ("Nursing", "Nursing Transfer Note"), ("Case Management", "Initial Assessment & Discharge Plan"),
        ("ECG", "Report")])]
    return {
        100004: {"hadm_id": 100004, "comment": "", "notes": [  # listed in the file with the higher ROW_ID first
            {"note_id": 2301, "category": "Discharge summary", "description": "Report", "annotations": [
                _ann(REPORT_D2, "COPD", "J44.9"), _ann(REPORT_D2, "depression", "F32.9")]},
            {"note_id": 2300, "category": "Discharge summary", "description": "Report", "annotations": [
                _ann(REPORT_D1, "hypertension", "I10"),
                _ann(REPORT_D1, "laparoscopic appendectomy", "0DTJ4ZZ", "ICD-10-PCS")]}]},
        100005: {"hadm_id": 100005, "comment": "EGD report not present", "notes": [
            {"note_id": 2500, "category": "Discharge summary", "description": "Report", "annotations": [
                _ann(REPORT_E, "type 2 diabetes", "E11.9"),
                _ann(REPORT_E, "GERD", "K21.9"),  # MIMIC-IV has it on one admission only
                _ann(REPORT_E, "ethanol", "E860", "ICD-9-CM"),  # an ICD-9 code inside an ICD-10 file
                _ann(REPORT_E, "chest film", "B2001ZZ", "ICD-10-PCS"),  # prefix B20 is a CM code only
                _ann(REPORT_E, "hypertension", "I10"),  # after word 40 of the note
            ]},
            *[{"note_id": nid, "category": cat, "description": desc, "annotations": [
                {"begin": 0, "end": 4, "code": "I10", "code_system": "ICD-10-CM", "description": "", "type": "Human"}]}
              for nid, cat, desc in other]]},
    }


#: MDACE's evidence splits of the fixture's admissions (splits/Inpatient/MDace-ev-*.csv)
MDACE_SPLITS = {"train": [100002, 100005], "val": [100003], "test": [100001, 100004]}


def write_mdace(data_dir: Path) -> None:
    """MDACE's layout: ``data/`` with Inpatient ICD-10 (5 admissions), their Inpatient ICD-9 copies
    (mapped codes, ``MapType`` types, ICD-9-PCS), a Profee ICD-10 file with CPT codes and its ICD-9
    copy (all skipped by the loader); ``splits/{Inpatient,Profee}/MDace-{ev,code-ev}-*.csv`` beside
    ``data/`` (no header, one hadm_id a line)."""
    def put(rel, obj):
        p = data_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(obj), encoding="utf-8")

    admissions = {**mdace_admissions(), **_more_admissions()}
    for hadm, obj in admissions.items():
        put(f"Inpatient/ICD-10/1.0/{hadm}-ICD-10.json", obj)
        icd9 = {**obj, "notes": [{**n, "annotations": [
            {**a, "code": "401.9" if a["code_system"] != "ICD-10-PCS" else "47.01",
             "code_system": "ICD-9-PCS" if a["code_system"] == "ICD-10-PCS" else "ICD-9-CM",
             "type": "MapType.APPROX" if k % 2 else "Human"} for k, a in enumerate(n["annotations"])]}
            for n in obj["notes"]]}
        put(f"Inpatient/ICD-9/1.0/{hadm}-ICD-9.json", icd9)
    profee = {"hadm_id": 100001, "comment": "", "notes": [{
        "note_id": 501, "category": "Discharge summary", "description": "Report",
        "annotations": [{"begin": 0, "end": 5, "code": "99223", "code_system": "CPT", "description": "", "type": "Human"},
                        {"begin": 0, "end": 5, "code": "I10", "code_system": "ICD-10-CM", "description": "", "type": "Human"}]}]}
    put("Profee/ICD-10/1.0/100001-ICD-10.json", profee)
    put("Profee/ICD-9/1.0/100001-ICD-9.json", {**profee, "notes": [{**profee["notes"][0], "annotations": [
        profee["notes"][0]["annotations"][0], {"begin": 0, "end": 5, "code": "401.9", "code_system": "ICD-9-CM",
                                               "description": "", "type": "MapType.EXACT"}]}]})
    splits = data_dir.parent / "splits"
    for folder, kinds in (("Inpatient", MDACE_SPLITS), ("Profee", {"train": [], "val": [], "test": [100001]})):
        (splits / folder).mkdir(parents=True, exist_ok=True)
        for split, ids in kinds.items():
            text = "".join(f"{h}\n" for h in ids)
            (splits / folder / f"MDace-ev-{split}.csv").write_text(text, encoding="utf-8")
            # the Code+Evidence splits also list admissions without evidence (ids of other charts)
            (splits / folder / f"MDace-code-ev-{split}.csv").write_text(text + f"{190000 + len(ids)}\n", encoding="utf-8")


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
        (2300, 14, 100004, "2104-04-09", "", "", "Discharge summary", "Report", "", "", REPORT_D1),
        (2301, 14, 100004, "2104-04-09", "", "", "Discharge summary", "Report", "", "", REPORT_D2),
        (2500, 15, 100005, "2105-05-05", "", "", "Discharge summary", "Report", "", "", REPORT_E),
        *[(3001 + i, 15, 100005, "2105-05-04", "2105-05-04 10:00:00", "", cat, desc, "", "", "Note text.")
          for i, (cat, desc) in enumerate([("Physician ", "Intensivist Note"), ("Radiology", "CHEST (PORTABLE AP)"),
                                           ("General", "Generic Note"), ("Respiratory ", "Respiratory Care Shift Note"),
                                           ("Nutrition", "Clinical Nutrition Note"),
                                           ("Rehab Services", "Physical Therapy Evaluation Note"),
                                           ("Consult", "Physician Initial Consult Note"), ("Nursing", "Nursing Transfer Note"),
                                           ("Case Management ", "Initial Assessment & Discharge Plan"), ("ECG", "Report")])],
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
