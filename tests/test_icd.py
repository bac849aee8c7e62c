"""ICD-10 helpers: expectations checked by hand against the ICD-10-CM tabular list."""
import gzip

import pytest

from rationale_kit.core import icd
from rationale_kit.core.records import DataError


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("E119", "E11.9"),
        ("e11.9", "E11.9"),
        (" E11 ", "E11"),
        ("i50.23", "I50.23"),
        ("S52521A", "S52.521A"),
        ("z3a.08", "Z3A.08"),
        ("w19.xxx", "W19.XXX"),
    ],
)
def test_normalize_cm(raw, expected):
    assert icd.normalize_code(raw) == expected
    assert icd.normalize_code(raw, "cm") == expected


@pytest.mark.parametrize("raw, expected", [("0dtj4zz", "0DTJ4ZZ"), ("bn20", "BN20"), ("BW03ZZZ", "BW03ZZZ")])
def test_normalize_pcs(raw, expected):
    assert icd.normalize_code(raw, "pcs") == expected


@pytest.mark.parametrize(
    "raw, system",
    [("E1", "cm"), ("E11.", "cm"), ("11.9", "cm"), ("E11.12345", "cm"), ("", "cm"),
     ("0DTI4ZZ", "pcs"), ("0D.TJ4ZZ", "pcs"), ("0DTJ4ZZZ", "pcs"), ("!!", "auto")],
)
def test_malformed_codes_name_the_code(raw, system):
    with pytest.raises(icd.CodeError) as exc:
        icd.normalize_code(raw, system)
    assert repr(raw) in str(exc.value)
    assert isinstance(exc.value, DataError)


def test_normalize_rejects_non_strings_and_unknown_system():
    with pytest.raises(icd.CodeError, match="string"):
        icd.normalize_code(119)
    with pytest.raises(ValueError, match="unknown code system"):
        icd.normalize_code("E11.9", "icd9")


def test_auto_system():
    assert icd.normalize_code("e11.9", "auto") == "E11.9"
    assert icd.normalize_code("E119", "auto") == "E11.9"
    assert icd.normalize_code("S52521A", "auto") == "S52.521A"  # a real 7-character CM code
    assert icd.normalize_code("0dtj4zz", "auto") == "0DTJ4ZZ"
    assert icd.normalize_code("B2111ZZ", "auto") == "B2111ZZ"  # PCS imaging code, not CM B21.11ZZ
    assert icd.is_pcs("0DTJ4ZZ") and icd.is_pcs("BN20") and not icd.is_pcs("E11.9") and not icd.is_pcs("B20")


def test_is_valid_cm():
    assert icd.is_valid_cm("E11.9")
    assert icd.is_valid_cm("e119")
    assert icd.is_valid_cm("E11")  # a category
    assert icd.is_valid_cm("S52.521A")
    assert not icd.is_valid_cm("E11.99")  # E11.9 is a leaf
    assert not icd.is_valid_cm("E08-E13")  # a block, not a code
    assert not icd.is_valid_cm("4")  # a chapter
    assert not icd.is_valid_cm("W19.XXX")  # only W19.XXXA/D/S exist
    assert not icd.is_valid_cm("garbage")


def test_describe():
    assert icd.describe("E11.9") == "Type 2 diabetes mellitus without complications"
    assert icd.describe("e119") == "Type 2 diabetes mellitus without complications"
    assert icd.describe("I10") == "Essential (primary) hypertension"
    mimic = {"E11.9": "Type 2 diabetes mellitus without complications (MIMIC)", "0DTJ4ZZ": "Resection of Appendix"}
    assert icd.describe("E119", mimic).endswith("(MIMIC)")  # MIMIC's table wins
    assert icd.describe("0dtj4zz", mimic) == "Resection of Appendix"
    assert icd.describe("0DTJ4ZZ") == ""  # no PCS descriptions offline
    assert icd.describe("I10", mimic) == "Essential (primary) hypertension"  # falls back
    assert icd.describe("W19.XXX") == ""  # unknown code
    assert icd.describe("not a code") == ""


def test_category_and_ancestors():
    assert icd.category("E11.9") == "E11"
    assert icd.category("e119") == "E11"
    assert icd.category("0DTJ4ZZ") == "0DT"
    assert icd.ancestors("E11.9") == ["E11", "E08-E13", "4"]
    assert icd.ancestors("E11.9", blocks=False) == ["E11"]
    assert icd.ancestors("S52.521A", blocks=False) == ["S52.521", "S52.52", "S52.5", "S52"]
    assert icd.ancestors("I50.23")[:2] == ["I50.2", "I50"]
    # unknown code: syntactic prefixes down to the nearest known one, then its ancestors
    assert icd.ancestors("W19.XXX") == ["W19.XX", "W19.X", "W19", "W00-W19", "20"]
    # C7A is both a category and a one-category block
    assert icd.ancestors("C7A.1", blocks=False) == ["C7A"]
    assert icd.ancestors("0DTJ4ZZ", blocks=False) == ["0DTJ4Z", "0DTJ4", "0DTJ", "0DT"]
    assert icd.ancestors("0DTJ4ZZ")[-2:] == ["0D", "0"]


def test_descriptions_table():
    table = icd.descriptions(["E11.9", "I10", "E11.9", "0DTJ4ZZ"])
    assert list(table.columns) == ["code", "description"]
    assert table["code"].tolist() == ["E11.9", "I10", "0DTJ4ZZ"]
    assert table["description"].tolist()[1] == "Essential (primary) hypertension"
    assert table["description"].tolist()[2] == ""


def _write_gz_csv(path, text):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)


def test_load_mimic_descriptions(tmp_path):
    diag = tmp_path / "d_icd_diagnoses.csv.gz"
    _write_gz_csv(diag, "icd_code,icd_version,long_title\n25000,9,Diabetes (ICD-9)\nE119,10,Type 2 DM w/o complications\nI10,10,Essential hypertension\n")
    table = icd.load_mimic_descriptions(diag)
    assert table == {"E11.9": "Type 2 DM w/o complications", "I10": "Essential hypertension"}
    proc = tmp_path / "d_icd_procedures.csv.gz"
    _write_gz_csv(proc, "icd_code,icd_version,long_title\n0DTJ4ZZ,10,Resection of Appendix\n")
    assert icd.load_mimic_descriptions(proc) == {"0DTJ4ZZ": "Resection of Appendix"}
    assert icd.describe("E119", table) == "Type 2 DM w/o complications"


def test_load_mimic_descriptions_errors(tmp_path):
    bad = tmp_path / "d_icd_diagnoses.csv.gz"
    _write_gz_csv(bad, "icd_code,version,long_title\nE119,10,x\n")
    with pytest.raises(DataError, match=r"d_icd_diagnoses\.csv\.gz: missing column\(s\) \['icd_version'\]"):
        icd.load_mimic_descriptions(bad)
    _write_gz_csv(bad, "icd_code,icd_version,long_title\nE119,10,x\n1E19,10,y\n")
    with pytest.raises(DataError, match=r"d_icd_diagnoses\.csv\.gz row 3: malformed ICD-10-CM code '1E19'"):
        icd.load_mimic_descriptions(bad)
    with pytest.raises(DataError, match="not found"):
        icd.load_mimic_descriptions(tmp_path / "nope.csv.gz")
