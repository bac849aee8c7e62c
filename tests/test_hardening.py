"""Hardening (issue 25): offsets read by one validation function, the run lock, exit statuses, the
quote command's cache and flags, and the loaders. Each test fails on the code before the fix."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from rationale_kit.cli.measures import compare_main, plausibility_main
from rationale_kit.core.records import DataError, check_offsets, read_spans_jsonl

TEXT = "aa bb cc dd ee ff gg hh ii jj kk ll mm nn oo pp qq rr"


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# ---- offsets: one validation for gold and predictions ---------------------------------------------

BAD_OFFSETS = [
    ({"start": 12.9, "end": 17.7}, "start is float 12.9"),  # was read as [12, 17): an exact match
    ({"start": 12.0, "end": 17}, "start is float 12.0"),
    ({"start": True, "end": 17}, "start is bool True"),
    ({"start": "12", "end": 17}, "start is str '12'"),
    ({"start": 12, "end": "17"}, "end is str '17'"),
    ({"start": 12, "end": None}, "end is NoneType None"),
]


@pytest.mark.parametrize("offsets, what", BAD_OFFSETS, ids=[w for _, w in BAD_OFFSETS])
def test_predicted_offsets_follow_the_gold_rules(tmp_path, capsys, offsets, what):
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"note_id": "n1", "text": TEXT}])
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"note_id": "n1", "code": "I10", "start": 12, "end": 17}])
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"note_id": "n1", "code": "I10", "start": 0, "end": 2},
                                                 {"note_id": "n1", "code": "I10", **offsets}])
    assert plausibility_main(["--docs", docs, "--gold", gold, "--pred", pred]) == 2
    err = capsys.readouterr().err
    assert f"pred.jsonl:2: start/end must be integers ({what})" in err and len(err.strip().splitlines()) == 1
    assert compare_main(["--docs", docs, "--gold", gold, "--pred-a", pred, "--pred-b", gold]) == 2
    assert f"pred.jsonl:2: start/end must be integers ({what})" in capsys.readouterr().err
    # the gold reader says the same of the same line
    with pytest.raises(DataError, match=r"pred\.jsonl:2: start/end must be integers"):
        read_spans_jsonl(pred)


def test_check_offsets_on_tables():
    assert check_offsets(3, 5, "t") == (3, 5)
    assert check_offsets(3.0, 5.0, "t", 9, integral_floats=True) == (3, 5)  # a column that held a NaN
    with pytest.raises(DataError, match=r"t row 1: start/end must be integers \(start is float 3\.5\)"):
        check_offsets(3.5, 5, "t row 1", 9, integral_floats=True)
    with pytest.raises(DataError, match="outside note 'n' of length 4"):
        check_offsets(3, 5, "t", 4, note_id="n")


def test_plausibility_tables_reject_fractional_offsets():
    from rationale_kit.metrics import plausibility as P

    docs = pd.DataFrame({"note_id": ["n1"], "text": [TEXT]})
    gold = pd.DataFrame({"note_id": ["n1"], "code": ["I10"], "start": [12], "end": [17]})
    pred = pd.DataFrame({"note_id": ["n1"], "code": ["I10"], "start": [12.9], "end": [17.7]})
    with pytest.raises(DataError, match=r"pred row 0: start/end must be integers \(start is float 12\.9\)"):
        P.span_plausibility(gold, pred, docs)
    with pytest.raises(DataError, match=r"pred row 0: start/end must be integers \(start is bool True\)"):
        P.span_plausibility(gold, pred.astype(object).assign(start=[True]), docs)
    ok = pred.assign(start=[12.0], end=[17.0])
    assert P.span_plausibility(gold, ok, docs)["span_exact"]["tp"] == 1
