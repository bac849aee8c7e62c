import json

import pytest

from rationale_kit.cli.measures import align_main, compare_main, plausibility_main

TEXT = "aa bb 12 cc dd aa bb ee"
NOTE = "Patient with chest pain.\nHypertension, poorly controlled."


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def docs(tmp_path):
    return write_jsonl(tmp_path / "docs.jsonl", [{"note_id": "n1", "text": TEXT}, {"note_id": "n2", "text": NOTE}])


def test_align_stdout_and_out_file(tmp_path, docs, capsys):
    quotes = write_jsonl(tmp_path / "q.jsonl", [
        {"note_id": "n2", "code": "R07.9", "quote": "chest pain"},
        {"note_id": "n2", "code": "I10", "quote": "hypertension poorly controlled"},
        {"note_id": "n2", "code": "E11", "quote": "diabetes mellitus"},
    ])
    assert align_main(["--docs", docs, "--quotes", quotes]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["code"], x["start"], x["end"]) for x in lines] == [
        ("R07.9", 13, 23), ("I10", 25, 56), ("E11", None, None)]
    assert lines[0]["score"] == 2.0 and lines[0]["quote"] == "chest pain" and "reason" not in lines[0]
    assert lines[1]["method"] == "fuzzy" and lines[1]["score"] == pytest.approx(2.0)
    assert lines[2]["reason"] == "no_overlap"
    out = tmp_path / "out.jsonl"
    assert align_main(["--docs", docs, "--quotes", quotes, "--threshold", "2.0", "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("line, message", [
    ('{"note_id": "zz", "code": "A", "quote": "x"}', "q.jsonl:2: unknown note_id 'zz'"),
    ('{"note_id": "n1", "code": "A"}', "q.jsonl:2: missing key 'quote'"),
    ('{"note_id": "n1", "code": "A", "quote": "x"', "q.jsonl:2: malformed JSON"),
    ('[1, 2]', "q.jsonl:2: expected a JSON object"),
])
def test_align_bad_quotes(tmp_path, docs, capsys, line, message):
    quotes = write_jsonl(tmp_path / "q.jsonl", [{"note_id": "n1", "code": "A", "quote": "aa"}, line])
    assert align_main(["--docs", docs, "--quotes", quotes]) == 2
    err = capsys.readouterr().err
    assert message in err


def test_align_bad_docs(tmp_path, capsys):
    docs = write_jsonl(tmp_path / "d.jsonl", [{"note_id": "n1", "text": "x"}, {"note_id": "n1", "text": "y"}])
    quotes = write_jsonl(tmp_path / "q.jsonl", [{"note_id": "n1", "code": "A", "quote": "x"}])
    assert align_main(["--docs", docs, "--quotes", quotes]) == 2
    assert "d.jsonl:2: duplicate note_id 'n1'" in capsys.readouterr().err
    docs = write_jsonl(tmp_path / "d.jsonl", [{"note_id": "n1"}])
    assert align_main(["--docs", docs, "--quotes", quotes]) == 2
    assert "d.jsonl:1: missing key 'text'" in capsys.readouterr().err
    assert align_main(["--docs", str(tmp_path / "nope.jsonl"), "--quotes", quotes]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_plausibility_json(tmp_path, docs, capsys):
    gold = write_jsonl(tmp_path / "gold.jsonl", [
        {"note_id": "n1", "code": "I10", "start": 0, "end": 5, "granularity": "mention"},
        {"note_id": "n1", "code": "I10", "start": 12, "end": 14},
    ])
    pred = write_jsonl(tmp_path / "pred.jsonl", [
        {"note_id": "n1", "code": "I10", "start": 0, "end": 5, "source": "llm"},
        {"note_id": "n1", "code": "I10", "start": 15, "end": 20},
        {"note_id": "n1", "code": "I10", "start": 9, "end": 11},
    ])
    assert plausibility_main(["--docs", docs, "--gold", gold, "--pred", pred]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"span_exact", "span_position_independent", "token_exact", "token_position_independent",
                        "eraser_token_micro", "eraser_token_macro", "span_iou_f1",
                        "span_iou_f1_macro", "token_exact_overlap", "token_position_independent_overlap"}
    for key in ("span_exact", "span_position_independent", "token_exact", "token_position_independent"):
        assert {"tp", "fp", "fn", "precision", "recall", "f1"} <= set(res[key])
    assert (res["span_exact"]["tp"], res["span_exact"]["fp"], res["span_exact"]["fn"]) == (1, 2, 1)
    assert res["token_exact"]["f1"] == pytest.approx(0.5)
    assert res["token_position_independent"]["precision"] == pytest.approx(2 / 3)
    assert res["span_iou_f1"]["precision"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("row, message", [
    ({"note_id": "zz", "code": "I10", "start": 0, "end": 2}, "pred.jsonl:2: unknown note_id 'zz'"),
    ({"note_id": "n1", "code": "I10", "start": 20, "end": 99}, "pred.jsonl:2: offsets [20, 99) outside note 'n1'"),
    ({"note_id": "n1", "code": "I10", "start": 0}, "pred.jsonl:2: missing key 'end'"),
    ('{"note_id": "n1", ', "pred.jsonl:2: malformed JSON"),
    ({"note_id": "n1", "code": "I10", "start": "x", "end": 2}, "pred.jsonl:2: start/end must be integers"),
])
def test_plausibility_bad_input(tmp_path, docs, capsys, row, message):
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"note_id": "n1", "code": "I10", "start": 0, "end": 5}])
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"note_id": "n1", "code": "I10", "start": 0, "end": 5}, row])
    assert plausibility_main(["--docs", docs, "--gold", gold, "--pred", pred]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


# --- bootstrap intervals and paired comparisons ---------------------------------------------------

TEXT3 = "aa bb cc"  # MDACE tokens aa@0 bb@3 cc@6


@pytest.fixture
def three(tmp_path):
    """Notes m1..m3 = TEXT3; gold "aa bb" [0, 5) for code I10 on every note, and on m3 also code R07.9 "cc"."""
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"note_id": f"m{i}", "text": TEXT3} for i in (1, 2, 3)])
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"note_id": f"m{i}", "code": "I10", "start": 0, "end": 5}
                                                 for i in (1, 2, 3)] + [{"note_id": "m3", "code": "R07.9", "start": 6, "end": 8}])
    return docs, gold


def test_plausibility_bootstrap_interval(tmp_path, three, capsys):
    docs, gold = three
    # m1: exact "aa bb" (tp 2 tokens); m2: "cc" (fp 1, fn 2); m3: nothing (fn 2 + fn 1 for B)
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"note_id": "m1", "code": "I10", "start": 0, "end": 5},
                                                 {"note_id": "m2", "code": "I10", "start": 6, "end": 8}])
    args = ["--docs", docs, "--gold", gold, "--pred", pred]
    assert plausibility_main(args + ["--bootstrap", "2000", "--seed", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    te = res["token_exact"]
    # pooled: tp 2, fp 1, fn 5 -> F1 = 4 / (4 + 1 + 5) = 0.4
    assert (te["tp"], te["fp"], te["fn"]) == (2, 1, 5) and te["f1"] == pytest.approx(0.4)
    assert (te["n_notes"], te["n_pairs"]) == (3, 4)
    # resamples: F1 = 4 k1 / (4 k1 + 3 k2 + 3 k3) over draws (k1, k2, k3) of the notes; lowest 0
    # (m1 never drawn: p (2/3)^3 = 0.30 > 0.025), highest 1 (m1 drawn 3 times: p 1/27 = 0.037 > 0.025)
    assert te["f1_ci"] == [0.0, 1.0]
    assert set(res["span_exact"]) >= {"tp", "fp", "fn", "precision", "recall", "f1", "f1_ci"}
    # same seed, same interval; without --bootstrap no interval
    assert plausibility_main(args + ["--bootstrap", "2000", "--seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["token_exact"]["f1_ci"] == [0.0, 1.0]
    assert plausibility_main(args) == 0
    assert "f1_ci" not in json.loads(capsys.readouterr().out)["token_exact"]
    # --units covered: only the notes PRED has a line for (m1, m2)
    assert plausibility_main(args + ["--units", "covered"]) == 0
    te = json.loads(capsys.readouterr().out)["token_exact"]
    assert (te["tp"], te["fp"], te["fn"], te["n_notes"], te["n_pairs"]) == (2, 1, 2, 2, 2)
    assert plausibility_main(args + ["--bootstrap", "-1"]) == 2
    assert "--bootstrap" in capsys.readouterr().err


def test_compare_on_notes_both_cover(tmp_path, three, capsys):
    docs, gold = three
    # A covers m1, m2 (m2 with a null-offset line: ran there, found nothing); B covers m1, m2, m3
    pred_a = write_jsonl(tmp_path / "a.jsonl", [{"note_id": "m1", "code": "I10", "start": 0, "end": 5},
                                                {"note_id": "m2", "code": "I10", "start": None, "end": None}])
    pred_b = write_jsonl(tmp_path / "b.jsonl", [{"note_id": "m1", "code": "I10", "start": 0, "end": 2},
                                                {"note_id": "m2", "code": "I10", "start": 0, "end": 5},
                                                {"note_id": "m3", "code": "I10", "start": 0, "end": 5},
                                                {"note_id": "m3", "code": "R07.9", "start": 6, "end": 8}])
    args = ["--docs", docs, "--gold", gold, "--pred-a", pred_a, "--pred-b", pred_b]
    assert compare_main(args + ["--seed", "3"]) == 0
    res = json.loads(capsys.readouterr().out)
    te = res["token_exact"]
    # units: m1, m2 (both cover), gold pairs (m1, A), (m2, A)
    # A: m1 tp 2; m2 fn 2 -> F1 4 / 6 = 2/3.  B: m1 "aa" tp 1 fn 1; m2 tp 2 -> F1 6 / 7
    assert (te["n_notes"], te["n_pairs"], te["n_gold_notes"], te["n_gold_pairs"]) == (2, 2, 3, 4)
    assert te["a"] == pytest.approx(2 / 3) and te["b"] == pytest.approx(6 / 7)
    assert te["delta"] == pytest.approx(2 / 3 - 6 / 7)
    # resamples (k = times m1 is drawn of 2, p 1/4, 1/2, 1/4): k=2: A 4/4 = 1, B tp 2 fn 2 -> 2/3,
    # delta +1/3; k=1: 2/3 - 6/7 = -4/21; k=0: A 0, B 1 -> -1. 2.5% and 97.5% quantiles: -1, +1/3
    lo, hi = te["delta_ci"]
    assert lo == pytest.approx(-1.0) and hi == pytest.approx(1 / 3)
    # span exact: A m1 tp 1, m2 fn 1 -> 2/3; B m1 fp 1 fn 1, m2 tp 1 -> 2/4
    assert res["span_exact"]["a"] == pytest.approx(2 / 3) and res["span_exact"]["b"] == pytest.approx(0.5)
    # --units gold: all 4 gold pairs, m3 empty for A
    assert compare_main(args + ["--units", "gold", "--bootstrap", "0"]) == 0
    te = json.loads(capsys.readouterr().out)["token_exact"]
    assert (te["n_notes"], te["n_pairs"], te["delta_ci"]) == (3, 4, None)
    # A: tp 2, fn 5 -> 4/9; B: tp 1+2+2+1 = 6, fn 1 -> 12/13
    assert te["a"] == pytest.approx(4 / 9) and te["b"] == pytest.approx(12 / 13)


def test_compare_errors(tmp_path, three, capsys):
    docs, gold = three
    a = write_jsonl(tmp_path / "a.jsonl", [{"note_id": "m1", "code": "I10", "start": 0, "end": 5}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"note_id": "m2", "code": "I10", "start": 0, "end": 5}])
    assert compare_main(["--docs", docs, "--gold", gold, "--pred-a", a, "--pred-b", b]) == 2
    err = capsys.readouterr().err
    assert "no units to compare" in err and "a.jsonl" in err and "none by both" in err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"note_id": "m1", "code": "I10", "start": 0, "end": 5},
                                               {"note_id": "m1", "code": "I10", "start": None, "end": 3}])
    assert compare_main(["--docs", docs, "--gold", gold, "--pred-a", a, "--pred-b", bad]) == 2
    assert "bad.jsonl:2: start/end must be integers" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"note_id": "zz", "code": "I10", "start": None, "end": None}])
    assert compare_main(["--docs", docs, "--gold", gold, "--pred-a", bad, "--pred-b", a]) == 2
    assert "bad.jsonl:1: unknown note_id 'zz'" in capsys.readouterr().err


def test_module_dispatches_compare(tmp_path, three, capsys):
    from rationale_kit.__main__ import main

    docs, gold = three
    a = write_jsonl(tmp_path / "a.jsonl", [{"note_id": "m1", "code": "I10", "start": 0, "end": 5}])
    assert main(["compare", "--docs", docs, "--gold", gold, "--pred-a", a, "--pred-b", a, "--bootstrap", "50"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["span_exact"]["delta"] == 0.0 and res["span_exact"]["delta_ci"] == [0.0, 0.0]

# --------------------------------------------------------------------------------------------
# hostile input: exit 2 naming the file and line
# --------------------------------------------------------------------------------------------
def test_non_utf8_input_names_file_and_line(tmp_path, docs, capsys):
    quotes = tmp_path / "q.jsonl"
    quotes.write_bytes(b'{"note_id": "n1", "code": "A", "quote": "aa"}\n{"note_id": "n1", "code": "A", "quote": "caf\xe9"}\n')
    assert align_main(["--docs", docs, "--quotes", str(quotes)]) == 2
    assert "q.jsonl:2: not UTF-8 text (byte 0xe9 at column" in capsys.readouterr().err
    gold = tmp_path / "gold.jsonl"
    gold.write_bytes(b'{"note_id": "n1", "code": "I10", "start": 0, "end": 5}\n\xff\n')
    assert plausibility_main(["--docs", docs, "--gold", str(gold), "--pred", str(gold)]) == 2
    assert "gold.jsonl:2: not UTF-8 text (byte 0xff at column 1)" in capsys.readouterr().err


def test_lone_surrogate_in_a_quote(tmp_path, docs, capsys):
    quotes = write_jsonl(tmp_path / "q.jsonl", ['{"note_id": "n1", "code": "A", "quote": "aa \\ud800 bb"}'])
    assert align_main(["--docs", docs, "--quotes", quotes, "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "q.jsonl:1: 'quote' holds a lone surrogate (U+D800 at character 3)" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_out_into_a_missing_folder_is_created(tmp_path, docs, capsys):
    quotes = write_jsonl(tmp_path / "q.jsonl", [{"note_id": "n2", "code": "R07.9", "quote": "chest pain"}])
    out = tmp_path / "new" / "deeper" / "out.jsonl"
    assert align_main(["--docs", docs, "--quotes", quotes, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["start"] == 13
    assert f"created the folder {out.parent}" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the folder should be
    assert align_main(["--docs", docs, "--quotes", quotes, "--out", str(blocker / "out.jsonl")]) == 2
    assert f"{blocker / 'out.jsonl'}: cannot write --out" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "-1", "5", "2.0001", "x"])
def test_align_threshold_outside_0_2_is_rejected(tmp_path, docs, capsys, value):
    quotes = write_jsonl(tmp_path / "q.jsonl", [{"note_id": "n2", "code": "R07.9", "quote": "chest pain"}])
    with pytest.raises(SystemExit) as exc:
        align_main(["--docs", docs, "--quotes", quotes, "--threshold", value])
    assert exc.value.code == 2
    assert "--threshold" in capsys.readouterr().err


def test_align_threshold_bounds_accepted(tmp_path, docs, capsys):
    quotes = write_jsonl(tmp_path / "q.jsonl", [{"note_id": "n2", "code": "R07.9", "quote": "chest pain"}])
    for value in ("0", "2"):
        assert align_main(["--docs", docs, "--quotes", quotes, "--threshold", value]) == 0


def test_plausibility_normalises_and_validates_codes(tmp_path, docs, capsys):
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"note_id": "n1", "code": "E119", "start": 0, "end": 5}])
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"note_id": "n1", "code": "e11.9", "start": 0, "end": 5}])
    assert plausibility_main(["--docs", docs, "--gold", gold, "--pred", pred]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["span_exact"]["tp"], res["span_exact"]["fp"], res["span_exact"]["fn"]) == (1, 0, 0)
    assert res["token_exact"]["f1"] == 1.0
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"note_id": "n1", "code": "E11.9", "start": 0, "end": 5},
                                             {"note_id": "n1", "code": "E11..9", "start": 0, "end": 5}])
    assert plausibility_main(["--docs", docs, "--gold", gold, "--pred", bad]) == 2
    captured = capsys.readouterr()
    assert "bad.jsonl:2: malformed ICD-10-CM code 'E11..9'" in captured.err and captured.out == ""
