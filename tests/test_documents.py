"""The canonical documents and gold codes (core.documents): one conversion each, at the edges."""
import numpy as np
import pandas as pd
import pytest

from rationale_kit.core.documents import Documents, GoldCodes, as_documents, as_gold_codes
from rationale_kit.core.records import DataError, Document

TABLE = pd.DataFrame({"note_id": [2, "a"], "text": ["two words", "x y z"], "codes": [["E11.9", "I10"], []],
                      "split": ["test", "test"]})


def test_every_accepted_shape_gives_the_same_documents():
    from_table = as_documents(TABLE)
    from_records = as_documents([Document("2", "two words", ("E11.9", "I10"), "test"),
                                 Document("a", "x y z", (), "test")])
    from_mapping = as_documents({2: "two words", "a": "x y z"})
    for d in (from_table, from_records, from_mapping):
        assert isinstance(d, Documents)
        assert list(d.items()) == [("2", "two words"), ("a", "x y z")]  # ids as str, order kept
    assert dict(from_table.codes) == {"2": ("E11.9", "I10"), "a": ()} == dict(from_records.codes)
    assert from_table.has_codes and not from_mapping.has_codes and dict(from_mapping.codes) == {}
    assert as_documents(from_table) is from_table  # converting twice is free
    assert not as_documents(TABLE[["note_id", "text"]]).has_codes


def test_documents_are_immutable():
    d = as_documents(TABLE)
    with pytest.raises(AttributeError):
        d.extra = 1
    with pytest.raises(TypeError):
        d["2"] = "changed"
    with pytest.raises(TypeError):
        d.codes["2"] = ()
    assert d["2"] == "two words"


@pytest.mark.parametrize("bad,what", [(3, "got int"), ("note text", "got str"), (None, "got NoneType"),
                                      (np.zeros(2), "item of type numpy.float64"),
                                      ([Document("1", "t", (), "test"), ("2", "t")], "item of type tuple")])
def test_another_type_is_a_type_error_naming_it(bad, what):
    with pytest.raises(TypeError, match=what):
        as_documents(bad)


def test_bad_documents_are_data_errors_naming_the_note():
    with pytest.raises(DataError, match=r"missing column\(s\) \['text'\]"):
        as_documents(TABLE[["note_id"]])
    with pytest.raises(DataError, match="note_id '1' appears more than once"):
        as_documents(pd.DataFrame({"note_id": ["1", 1], "text": ["a", "b"]}))
    with pytest.raises(DataError, match="text of note '1' is float"):
        as_documents(pd.DataFrame({"note_id": ["1"], "text": [np.nan]}))
    with pytest.raises(DataError, match="codes of note '1' are str"):
        as_documents(pd.DataFrame({"note_id": ["1"], "text": ["a"], "codes": ["E11.9"]}))


def test_every_accepted_gold_shape_gives_the_same_gold_codes():
    want = {"2": frozenset({"E11.9", "I10"}), "a": frozenset()}
    docs = as_documents(TABLE)
    assert dict(as_gold_codes(None, docs)) == want  # the documents' own codes
    assert dict(as_gold_codes({2: ["E11.9", "I10", "I10"], "a": []})) == want
    assert dict(as_gold_codes(TABLE[["note_id", "codes"]])) == want
    # one code per row: the rows of a note are united (a note without a row has no gold code)
    rows = pd.DataFrame({"note_id": ["2", "2"], "code": ["I10", "E11.9"]})
    assert dict(as_gold_codes(rows)) == {"2": frozenset({"E11.9", "I10"})}
    g = as_gold_codes(rows)
    assert isinstance(g, GoldCodes) and as_gold_codes(g) is g
    with pytest.raises(AttributeError):
        g.x = 1


def test_bad_gold_codes():
    with pytest.raises(TypeError, match="got list"):
        as_gold_codes([("2", "I10")])
    with pytest.raises(TypeError, match="gold codes of note 'a': expected a collection of codes, got str"):
        as_gold_codes({"a": "I10"})  # a bare string is not a set of one-letter codes
    with pytest.raises(DataError, match="documents carry no codes"):
        as_gold_codes(None, as_documents({"a": "x"}))
    with pytest.raises(DataError, match=r"missing column\(s\) \['code'\]"):
        as_gold_codes(pd.DataFrame({"note_id": ["a"]}))


def test_entry_points_take_any_shape_and_agree():
    from rationale_kit.metrics.plausibility import Tokens, mdace_measures
    from rationale_kit.rationales.alignment import align_quotes

    docs = as_documents(TABLE)
    gold = pd.DataFrame({"note_id": ["a"], "code": ["I10"], "start": [0], "end": [3]})
    pred = pd.DataFrame({"note_id": ["a"], "code": ["I10"], "start": [2], "end": [5]})
    by_table = mdace_measures(gold, pred, TABLE)
    by_docs = mdace_measures(gold, pred, docs)
    assert by_table == by_docs
    # gold "x y", predicted "y z": token y found, z extra, x missed
    assert {k: by_docs["token_exact"][k] for k in ("tp", "fp", "fn")} == {"tp": 1, "fp": 1, "fn": 1}
    assert Tokens({"a": "x y z"}).get("a")[2] == ["x", "y", "z"]
    quotes = pd.DataFrame({"note_id": ["a"], "code": ["I10"], "quote": ["y z"]})
    a, b = align_quotes(TABLE, quotes), align_quotes(docs, quotes)
    pd.testing.assert_frame_equal(a, b)
    assert (int(a.start[0]), int(a.end[0])) == (2, 5)
    with pytest.raises(TypeError, match="got int"):
        align_quotes(5, quotes)
