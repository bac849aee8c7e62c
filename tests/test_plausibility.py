"""Plausibility measures against hand-computed values.

Note ``n1`` = "aa bb 12 cc dd aa bb ee": MDACE tokens (the number 12 > 10 is dropped)
aa@0 bb@3 cc@9 dd@12 aa@15 bb@18 ee@21; word units 0..7 are the 8 words (unit 2 is "12").
"""
import math

import numpy as np
import pandas as pd
import pytest

from rationale_kit.core.records import DataError
from rationale_kit.metrics import plausibility as pl

TEXT = "aa bb 12 cc dd aa bb ee"
DOCS = pd.DataFrame({"note_id": ["n1", "n2"], "text": [TEXT, TEXT]})


def spans(*rows, granularity=""):
    return pd.DataFrame(
        [{"note_id": n, "code": c, "start": s, "end": e, "granularity": granularity, "source": "x"} for n, c, s, e in rows],
        columns=["note_id", "code", "start", "end", "granularity", "source"],
    )


def close(res, p, r, f):
    assert res["precision"] == pytest.approx(p)
    assert res["recall"] == pytest.approx(r)
    assert res["f1"] == pytest.approx(f)


def test_prf_zero_denominators():
    assert pl.prf(0, 0, 0) == {"tp": 0, "fp": 0, "fn": 0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert pl.prf(0, 3, 0)["precision"] == 0.0 and pl.prf(0, 3, 0)["recall"] == 0.0
    close(pl.prf(1, 1, 3), 0.5, 0.25, 1 / 3)


def test_mdace_four_measures():
    gold = spans(("n1", "A", 0, 5), ("n1", "A", 12, 14))  # "aa bb", "dd"
    pred = spans(("n1", "A", 0, 5), ("n1", "A", 15, 20), ("n1", "A", 9, 11))  # "aa bb", "aa bb"(2nd), "cc"
    res = pl.mdace_measures(gold, pred, DOCS)
    assert res["span_exact"]["tp"] == 1 and res["span_exact"]["fp"] == 2 and res["span_exact"]["fn"] == 1
    close(res["span_exact"], 1 / 3, 1 / 2, 0.4)
    # texts: gold {"aa bb", "dd"}, pred {"aa bb", "cc"}
    assert (res["span_position_independent"]["tp"], res["span_position_independent"]["fp"], res["span_position_independent"]["fn"]) == (1, 1, 1)
    close(res["span_position_independent"], 0.5, 0.5, 0.5)
    # tokens: gold {aa@0, bb@3, dd@12}, pred {aa@0, bb@3, aa@15, bb@18, cc@9}
    assert (res["token_exact"]["tp"], res["token_exact"]["fp"], res["token_exact"]["fn"]) == (2, 3, 1)
    close(res["token_exact"], 0.4, 2 / 3, 0.5)
    # token texts: gold {aa, bb, dd}, pred {aa, bb, cc}
    assert (res["token_position_independent"]["tp"], res["token_position_independent"]["fp"], res["token_position_independent"]["fn"]) == (2, 1, 1)
    close(res["token_position_independent"], 2 / 3, 2 / 3, 2 / 3)


def test_overlapping_adjacent_nested_discontinuous():
    # gold: one code, two pieces "aa bb" and "cc dd"
    gold = spans(("n1", "A", 0, 5), ("n1", "A", 9, 14))
    # pred: "aa" (nested in a gold piece), " bb" (adjacent to it), "bb 12 cc" (overlaps both pieces), "aa"@15
    pred = spans(("n1", "A", 0, 2), ("n1", "A", 2, 5), ("n1", "A", 3, 11), ("n1", "A", 15, 17))
    res = pl.span_plausibility(gold, pred, DOCS)
    assert (res["span_exact"]["tp"], res["span_exact"]["fp"], res["span_exact"]["fn"]) == (0, 4, 2)
    close(res["span_exact"], 0, 0, 0)
    assert (res["span_position_independent"]["tp"], res["span_position_independent"]["fp"], res["span_position_independent"]["fn"]) == (0, 3, 2)
    assert (res["token_exact"]["tp"], res["token_exact"]["fp"], res["token_exact"]["fn"]) == (3, 1, 1)
    close(res["token_exact"], 0.75, 0.75, 0.75)
    close(res["token_position_independent"], 1.0, 0.75, 2 * 0.75 / 1.75)
    close(res["eraser_token_micro"], 0.75, 0.75, 0.75)
    # IoU: {aa} vs {aa,bb} = .5 ok; {bb} vs {aa,bb} = .5 ok; {bb,cc} 1/3 with both; {aa@15} 0
    iou = res["span_iou_f1"]
    assert (iou["n_pred"], iou["correct_pred"], iou["n_gold"], iou["matched_gold"]) == (4, 2, 2, 1)
    # ERASER's partial_match_score: recall = matched *predicted* spans / gold spans = 2 / 2
    close(iou, 0.5, 1.0, 2 / 3)
    # the gold-matched variant (the workbook's earlier definition) keeps its own name
    close(pl.span_iou_f1(gold, pred, DOCS, recall="gold_matched"), 0.5, 0.5, 0.5)


def test_numbers_above_ten_dropped_and_word_unit():
    gold = spans(("n1", "A", 3, 8))  # "bb 12" -> {bb} with MDACE tokens
    pred = spans(("n1", "A", 6, 8))  # "12" -> no MDACE token
    res = pl.span_plausibility(gold, pred, DOCS)
    assert (res["token_exact"]["tp"], res["token_exact"]["fp"], res["token_exact"]["fn"]) == (0, 0, 1)
    assert res["span_iou_f1"]["correct_pred"] == 0  # IoU of a span without tokens is 0
    words = pl.eraser_token_prf(gold, pred, DOCS, unit="word")["micro"]
    assert (words["tp"], words["fp"], words["fn"]) == (1, 0, 1)  # {bb, 12} vs {12}


def test_eraser_micro_macro_two_pairs():
    gold = spans(("n1", "A", 0, 5), ("n1", "A", 12, 14), ("n1", "B", 21, 23))
    pred = spans(("n1", "A", 0, 5), ("n1", "A", 15, 20), ("n1", "A", 9, 11))
    er = pl.eraser_token_prf(gold, pred, DOCS)
    # pair A: tp2 fp3 fn1 (p .4, r 2/3, f .5); pair B: tp0 fp0 fn1 (0, 0, 0)
    assert (er["micro"]["tp"], er["micro"]["fp"], er["micro"]["fn"]) == (2, 3, 2)
    close(er["micro"], 0.4, 0.5, 2 * 0.4 * 0.5 / 0.9)
    close(er["macro"], 0.2, 1 / 3, 0.25)
    assert er["macro"]["n_pairs"] == 2
    iou = pl.span_iou_f1(gold, pred, DOCS)
    assert (iou["n_pred"], iou["correct_pred"], iou["n_gold"], iou["matched_gold"]) == (3, 1, 3, 1)
    close(iou, 1 / 3, 1 / 3, 1 / 3)


def test_iou_boundary_is_inclusive():
    gold = spans(("n1", "A", 0, 14))  # {aa, bb, cc, dd}
    res = pl.span_iou_f1(gold, spans(("n1", "A", 0, 5)), DOCS)  # IoU 2/4
    assert res["correct_pred"] == 1 and res["matched_gold"] == 1
    res = pl.span_iou_f1(gold, spans(("n1", "A", 0, 2)), DOCS)  # IoU 1/4
    assert res["correct_pred"] == 0 and res["f1"] == 0.0


def test_position_independent_is_per_note_and_summed():
    gold = spans(("n1", "A", 0, 5), ("n2", "A", 0, 5))
    pred = spans(("n1", "A", 15, 20), ("n2", "A", 9, 11))  # n1: "aa bb" elsewhere; n2: "cc"
    res = pl.mdace_measures(gold, pred, DOCS)
    pi = res["span_position_independent"]
    assert (pi["tp"], pi["fp"], pi["fn"]) == (1, 1, 1)
    tpi = res["token_position_independent"]
    assert (tpi["tp"], tpi["fp"], tpi["fn"]) == (2, 1, 2)
    assert res["span_exact"]["tp"] == 0 and res["token_exact"]["tp"] == 0


def test_empty_predictions_and_empty_gold():
    gold = spans(("n1", "A", 0, 5))
    res = pl.span_plausibility(gold, spans(), DOCS)
    for m in pl.MDACE_MEASURES:
        assert res[m]["tp"] == 0 and res[m]["fp"] == 0 and res[m]["fn"] >= 1
        close(res[m], 0, 0, 0)
    close(res["span_iou_f1"], 0, 0, 0)
    close(res["eraser_token_macro"], 0, 0, 0)
    # empty gold: no pair to evaluate with pairs="gold"
    res = pl.span_plausibility(spans(), spans(("n1", "A", 0, 5)), DOCS)
    for m in pl.MDACE_MEASURES:
        assert (res[m]["tp"], res[m]["fp"], res[m]["fn"]) == (0, 0, 0)
    assert res["eraser_token_macro"]["n_pairs"] == 0
    # ... but with pairs="all" the predictions are false positives
    res = pl.span_plausibility(spans(), spans(("n1", "A", 0, 5)), DOCS, pairs="all")
    assert res["span_exact"]["fp"] == 1 and res["span_exact"]["precision"] == 0.0
    assert res["token_exact"]["fp"] == 2 and res["token_exact"]["recall"] == 0.0


def test_pairs_gold_ignores_other_codes():
    gold = spans(("n1", "A", 0, 5))
    pred = spans(("n1", "A", 0, 5), ("n1", "Z", 9, 11))
    assert pl.mdace_measures(gold, pred, DOCS)["span_exact"]["fp"] == 0
    assert pl.mdace_measures(gold, pred, DOCS, pairs="all")["span_exact"]["fp"] == 1


def test_bad_spans_raise():
    with pytest.raises(DataError, match="unknown note_id 'zz'"):
        pl.span_plausibility(spans(("zz", "A", 0, 5)), spans(), DOCS)
    with pytest.raises(DataError, match="outside note"):
        pl.span_plausibility(spans(("n1", "A", 0, 5)), spans(("n1", "A", 10, 99)), DOCS)


def test_plausibility_table_breakdowns():
    gold = pd.concat([
        spans(("n1", "A", 0, 5), ("n1", "B", 21, 23), granularity="mention"),
        spans(("n1", "A", 9, 14), granularity="evidence"),
    ], ignore_index=True)
    preds = {"x": spans(("n1", "A", 0, 5), ("n1", "B", 21, 23)), "empty": spans()}
    predicted = pd.DataFrame({"note_id": ["n1"], "code": ["A"]})
    tab = pl.plausibility_table(gold, preds, DOCS, predicted_codes=predicted)
    assert len(tab) == 2 * 3 * 3 * len(pl.ALL_MEASURES)
    se = tab[(tab.source == "x") & (tab.measure == "span_exact")].set_index(["granularity", "code_set"])
    assert tuple(se.loc[("all", "all"), ["tp", "fp", "fn"]]) == (2, 0, 1)
    assert tuple(se.loc[("mention", "all"), ["tp", "fp", "fn"]]) == (2, 0, 0)
    assert tuple(se.loc[("evidence", "all"), ["tp", "fp", "fn"]]) == (0, 1, 1)
    assert tuple(se.loc[("all", "predicted"), ["tp", "fp", "fn"]]) == (1, 0, 1)
    assert tuple(se.loc[("all", "missed"), ["tp", "fp", "fn"]]) == (1, 0, 0)
    assert se.loc[("all", "missed"), "n_pairs"] == 1
    empty = tab[(tab.source == "empty") & (tab.measure == "token_exact") & (tab.granularity == "all") & (tab.code_set == "all")]
    assert empty.iloc[0].f1 == 0.0 and empty.iloc[0].fn == 5
    only_all = pl.plausibility_table(gold, preds, DOCS, by=("source",))
    assert set(only_all.granularity) == {"all"} and set(only_all.code_set) == {"all"}


# --- soft rationales -------------------------------------------------------------------------------

WORD_OFFSETS = [(0, 2), (3, 5), (6, 8), (9, 11), (12, 14), (15, 17), (18, 20), (21, 23)]


def scores(raw, note="n1", code="A", offsets=WORD_OFFSETS, source="attn"):
    return pd.DataFrame({
        "note_id": note, "code": code, "source": source, "method": "m", "model": "caml",
        "unit": np.arange(len(raw)), "start": [o[0] for o in offsets], "end": [o[1] for o in offsets],
        "score": np.asarray(raw, dtype=float),
    })


RAW = [4, 2, 2, 0, 0, 1, 1, 0]  # normalised: .4 .2 .2(unit "12") 0 0 .1 .1 0


def test_soft_token_mapping_and_normalisation():
    gold = spans(("n1", "A", 0, 2), ("n1", "A", 12, 14))  # aa@0, dd@12
    [(nid, code, tok, mask)] = pl.soft_token_scores(scores(RAW), gold, DOCS)
    assert np.allclose(tok, [0.4, 0.2, 0.0, 0.0, 0.1, 0.1, 0.0])  # "12" has no MDACE token
    assert mask.tolist() == [True, False, False, True, False, False, False]
    # sub-word units: "a"+"a" of token aa@0 -> sum .4 / max .3 (scores 3, 1 of total 10)
    sub = scores([3, 1, 6], offsets=[(0, 1), (1, 2), (3, 5)])
    [(_, _, tsum, _)] = pl.soft_token_scores(sub, gold, DOCS, agg="sum")
    [(_, _, tmax, _)] = pl.soft_token_scores(sub, gold, DOCS, agg="max")
    assert tsum[0] == pytest.approx(0.4) and tmax[0] == pytest.approx(0.3) and tsum[1] == pytest.approx(0.6)


def test_soft_plausibility_hand_values():
    gold = spans(("n1", "A", 0, 2), ("n1", "A", 12, 14))
    res = pl.soft_plausibility(scores(RAW), gold, DOCS, threshold=0.15, ks=(1, 2))
    # ranking: aa(.4,+) bb(.2) aa(.1) bb(.1) then 0-ties cc dd(+) ee:
    # AP = .5 * 1 + .5 * 2/7
    assert res["auprc"] == pytest.approx(0.5 + 1 / 7)
    assert res["auprc_mean"] == pytest.approx(0.5 + 1 / 7)
    assert res["p@1"] == 1.0 and res["r@1"] == 0.5
    assert res["p@2"] == 0.5 and res["r@2"] == 0.5
    close(res, 0.5, 0.5, 0.5)  # > .15: aa, bb
    res = pl.soft_plausibility(scores(RAW), gold, DOCS, topk=1)
    close(res, 1.0, 0.5, 2 / 3)
    with pytest.raises(ValueError):
        pl.soft_plausibility(scores(RAW), gold, DOCS, threshold=0.1, topk=1)


def test_average_precision_matches_sklearn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(40) < 0.3
        y[0] = True
        s = np.round(rng.random(40), 1)  # with ties
        assert pl.average_precision(y, s) == pytest.approx(average_precision_score(y, s))
    assert math.isnan(pl.average_precision(np.zeros(3, bool), np.ones(3)))


def test_tune_threshold_and_missing_pairs():
    gold = spans(("n1", "A", 0, 2), ("n1", "A", 12, 14))
    # F1 at > 0: 1/3; > .05: 1/3; > .15: .5; > .3: 2/3
    assert pl.tune_soft_threshold(scores(RAW), gold, DOCS, grid=[0, 0.05, 0.15, 0.3]) == 0.3
    # a gold pair without scores counts with all-zero scores
    gold2 = pd.concat([gold, spans(("n2", "B", 0, 2))], ignore_index=True)
    res = pl.soft_plausibility(scores(RAW), gold2, DOCS, threshold=0.15, ks=(1,))
    assert res["n_pairs"] == 2 and res["r@1"] == pytest.approx((0.5 + 1.0) / 2)  # 0-ties -> first token aa@0
    assert res["fn"] == 2 and res["tp"] == 1
    restricted = pl.soft_plausibility(scores(RAW), gold2, DOCS, pairs=pd.DataFrame({"note_id": ["n2"], "code": ["B"]}))
    assert restricted["n_pairs"] == 1
    mixed = pd.concat([scores(RAW), scores(RAW, source="grad")])
    with pytest.raises(DataError, match="source"):
        pl.soft_plausibility(mixed, gold, DOCS)


def test_binarise():
    out = pl.binarise(scores(RAW), threshold=0.15, level="unit")  # units 0,1,2 -> one run
    assert out[["start", "end"]].values.tolist() == [[0, 8]]
    assert out.iloc[0].source == "attn" and list(out.columns[:6]) == ["note_id", "code", "start", "end", "granularity", "source"]
    out = pl.binarise(scores(RAW), topk=2)  # .4 and the first .2 (unit 1)
    assert out[["start", "end"]].values.tolist() == [[0, 5]]
    out = pl.binarise(scores(RAW), threshold=0.05, level="unit")  # units 0,1,2 and 5,6
    assert out[["start", "end"]].values.tolist() == [[0, 8], [15, 20]]
    # at token level (the default with a threshold) "12" is no MDACE token: tokens aa(.4) bb(.2)
    # pass .15 -> [0, 5); at .05 also aa@15(.1) bb@18(.1) -> [15, 20)
    out = pl.binarise(scores(RAW), threshold=0.15, docs=DOCS)
    assert out[["start", "end"]].values.tolist() == [[0, 5]]
    out = pl.binarise(scores(RAW), threshold=0.05, docs=DOCS)
    assert out[["start", "end"]].values.tolist() == [[0, 5], [15, 20]]
    assert len(pl.binarise(scores(RAW).iloc[:0], threshold=0.1, docs=DOCS)) == 0
    with pytest.raises(ValueError):
        pl.binarise(scores(RAW))
    with pytest.raises(ValueError, match="needs docs"):
        pl.binarise(scores(RAW), threshold=0.1)


# --- reference-exact definitions, worked by hand ---------------------------------------------------

# positions: "Severe"0-6 "diabetes"7-15 ","15 "25"17-19 "mg"20-22 "²"23 "ok"25-27
TEXT2 = "Severe diabetes, 25 mg ² ok"
DOCS2 = pd.DataFrame({"note_id": ["m1", "m2"], "text": [TEXT2, TEXT]})


def counts(res, measure):
    r = res[measure]
    return (r["tp"], r["fp"], r["fn"])


def test_mdace_tokens_come_from_the_span_text():
    # pair A: gold "diabetes"[7,15), pred "diab"[7,11) cuts the word.
    #   MDACE token exact: gold {7}, pred {7} (token "diab" starts at 7)   -> 1, 0, 0
    #   MDACE token PI: {"diabetes"} vs {"diab"}                          -> 0, 1, 1
    #   overlap variants: both cover the note token "diabetes"            -> 1, 0, 0
    # pair B: gold "diabetes"[7,15), pred "abetes"[9,15)
    #   MDACE token exact: {7} vs {9} -> 0, 1, 1; token PI: {"diabetes"} vs {"abetes"} -> 0, 1, 1
    #   overlap: 1, 0, 0 (and the same for PI)
    gold = spans(("m1", "A", 7, 15), ("m1", "B", 7, 15))
    pred = spans(("m1", "A", 7, 11), ("m1", "B", 9, 15))
    res = pl.span_plausibility(gold, pred, DOCS2)
    assert counts(res, "token_exact") == (1, 1, 1)
    assert counts(res, "token_position_independent") == (0, 2, 2)
    assert counts(res, "token_exact_overlap") == (2, 0, 0)
    assert counts(res, "token_position_independent_overlap") == (2, 0, 0)
    assert counts(res, "span_exact") == (0, 2, 2)
    assert counts(res, "span_position_independent") == (0, 2, 2)  # "diab", "abetes" vs "diabetes"
    close(res["token_exact"], 0.5, 0.5, 0.5)


def test_numbers_above_ten_and_superscript_digits():
    # gold "25 mg ² ok"[17,27): span tokens 25 (dropped: a number > 10), mg@20, ²@23 ("²" is a
    # digit worth 2 <= 10: kept; int("²") would raise), ok@25. pred "25 mg"[17,22): mg@20.
    # pred "25"[17,19) of pair B has no token at all.
    assert pl.mdace_span_tokens(TEXT2, 17, 27) == [(20, "mg"), (23, "²"), (25, "ok")]
    gold = spans(("m1", "A", 17, 27), ("m1", "B", 17, 22))
    pred = spans(("m1", "A", 17, 22), ("m1", "B", 17, 19))
    res = pl.span_plausibility(gold, pred, DOCS2)
    # A: {20,23,25} vs {20} -> tp 1, fn 2; B: {20} vs {} -> fn 1
    assert counts(res, "token_exact") == (1, 0, 3)
    assert counts(res, "token_position_independent") == (1, 0, 3)
    from rationale_kit.core.text import mdace_tokens
    assert [t for _, _, t in mdace_tokens("x ² 10² 7 12")] == ["x", "²", "7"]  # 10² = 102 > 10


def test_duplicates_within_and_across_pairs():
    # the same span under two codes is two keys (the code is part of every key); a span given twice
    # for one pair is one key; "aa" at 0 and at 15 is one position-independent key.
    gold = spans(("n1", "A", 0, 2), ("n1", "A", 15, 17), ("n1", "B", 0, 2))
    pred = spans(("n1", "A", 0, 2), ("n1", "A", 0, 2))
    res = pl.span_plausibility(gold, pred, DOCS)
    assert counts(res, "span_exact") == (1, 0, 2)  # A: {0-2, 15-17} vs {0-2}; B: missed
    assert counts(res, "span_position_independent") == (1, 0, 1)  # A: {"aa"} vs {"aa"}; B: {"aa"} missed
    assert counts(res, "token_exact") == (1, 0, 2)
    assert counts(res, "token_position_independent") == (1, 0, 1)
    iou = res["span_iou_f1"]
    assert (iou["n_pred"], iou["n_gold"], iou["correct_pred"]) == (1, 3, 1)


def test_eraser_iou_counts_predicted_spans():
    # gold: one span "aa bb 12 cc dd" -> token range [0, 4) {aa, bb, cc, dd}; predictions
    # "aa bb" [0, 2) and "cc dd" [2, 4): IoU 2/4 each -> both correct (>= 0.5).
    # "aa " and "aa" map to the same token range [0, 1) and count once (IoU 1/4: not correct).
    # ERASER: P = 2 / 3, R = correct predicted / gold = 2 / 1, F1 = 2PR / (P + R) = (8/3) / (8/3) = 1
    # gold-matched variant: R = 1 / 1, F1 = 2 (2/3) / (5/3) = 0.8
    gold = spans(("n1", "A", 0, 14))
    pred = spans(("n1", "A", 0, 5), ("n1", "A", 9, 14), ("n1", "A", 0, 3), ("n1", "A", 0, 2))
    res = pl.span_iou_f1(gold, pred, DOCS)
    assert (res["n_pred"], res["n_gold"], res["correct_pred"], res["matched_gold"]) == (3, 1, 2, 1)
    close(res, 2 / 3, 2.0, 1.0)
    assert (res["tp"], res["fp"], res["fn"]) == (2, 1, -1)
    close(res["macro"], 2 / 3, 2.0, 1.0)
    old = pl.span_iou_f1(gold, pred, DOCS, recall="gold_matched")
    close(old, 2 / 3, 1.0, 0.8)
    # macro: recall over gold pairs, precision over pairs with predictions, then F1 of the means.
    # A: as above (r 2, p 2/3); B: gold "ee", no prediction (r 0, not in the precision mean)
    gold2 = pd.concat([gold, spans(("n1", "B", 21, 23))], ignore_index=True)
    res = pl.span_iou_f1(gold2, pred, DOCS)
    close(res["macro"], 2 / 3, 1.0, 0.8)
    close(res, 2 / 3, 1.0, 0.8)  # micro: 2 correct of 3 predicted; 2 of 2 gold


def test_pairs_gold_notes_is_mdace_scorers_unit():
    gold = spans(("n1", "A", 0, 5))
    pred = spans(("n1", "A", 0, 5), ("n1", "Z", 9, 11), ("n2", "Y", 0, 2))
    assert counts(pl.mdace_measures(gold, pred, DOCS), "span_exact") == (1, 0, 0)
    assert counts(pl.mdace_measures(gold, pred, DOCS, pairs="gold_notes"), "span_exact") == (1, 1, 0)
    assert counts(pl.mdace_measures(gold, pred, DOCS, pairs="all"), "span_exact") == (1, 2, 0)
    with pytest.raises(ValueError, match="pairs"):
        pl.mdace_measures(gold, pred, DOCS, pairs="notes")


def test_per_note_counts_sum_to_pooled_counts():
    gold = pd.concat([
        spans(("n1", "A", 0, 5), ("n1", "A", 12, 14), ("n2", "A", 0, 5), ("n2", "B", 21, 23), granularity="mention"),
    ], ignore_index=True)
    pred = spans(("n1", "A", 0, 3), ("n1", "A", 15, 20), ("n2", "A", 9, 11), ("n2", "C", 0, 2))
    per = pl.per_note_counts(gold, pred, DOCS, measures=pl.COUNT_MEASURES)
    assert set(per.note_id) == {"n1", "n2"} and list(per.columns) == ["note_id", "measure", "n_pairs", "tp", "fp", "fn"]
    assert per[per.measure == "span_exact"].set_index("note_id")["n_pairs"].to_dict() == {"n1": 1, "n2": 2}
    pooled = pl.span_plausibility(gold, pred, DOCS)
    table = pl.plausibility_table(gold, {"x": pred}, DOCS, by=("source",)).set_index("measure")
    for m in pl.COUNT_MEASURES:
        sums = tuple(int(v) for v in per[per.measure == m][["tp", "fp", "fn"]].sum())
        assert sums == counts(pooled, m), m
        assert sums == tuple(int(table.loc[m, c]) for c in ("tp", "fp", "fn")), m
    # n1 MDACE token exact: gold {0, 3, 12} vs pred "aa "[0,3) {0} + "aa bb"[15,20) {15, 18}
    n1 = per[(per.note_id == "n1") & (per.measure == "token_exact")].iloc[0]
    assert (n1.tp, n1.fp, n1.fn) == (1, 2, 2)
    # a note whose pairs get no prediction is kept with zero tp/fp
    only = pl.per_note_counts(gold, pred[pred.note_id == "n1"], DOCS)
    n2 = only[(only.note_id == "n2") & (only.measure == "span_exact")].iloc[0]
    assert (n2.tp, n2.fp, n2.fn, n2.n_pairs) == (0, 0, 2, 2)
    with pytest.raises(ValueError, match="eraser_token_macro"):
        pl.per_note_counts(gold, pred, DOCS, measures=("eraser_token_macro",))
    long = pl.pair_counts(gold, pred, DOCS)
    assert len(long) == 3 * len(pl.COUNT_MEASURES)


# note m3 = "diabetes mellitus type"; PLM-ICD-like word pieces with raw scores summing to 1:
# dia[0,3) .1, betes[3,8) .1, mell[9,13) .3, itus[13,17) .3, type[18,22) .2
# words (sum of their pieces): diabetes .2, mellitus .6, type .2
PIECES = pd.DataFrame({
    "note_id": "m3", "code": "E11", "source": "attention", "method": "attention", "model": "plm_icd",
    "unit": np.arange(5), "start": [0, 3, 9, 13, 18], "end": [3, 8, 13, 17, 22], "score": [0.1, 0.1, 0.3, 0.3, 0.2],
})
DOCS3 = pd.DataFrame({"note_id": ["m3"], "text": ["diabetes mellitus type"]})


def test_threshold_binarises_at_the_level_it_was_tuned_at():
    gold = spans(("m3", "E11", 0, 17))  # "diabetes mellitus"
    # tuned on words: > .15 selects all 3 words (tp 2, fp 1: F1 .8); > .25 only mellitus (F1 2/3)
    t = pl.tune_soft_threshold(PIECES, gold, DOCS3, grid=[0.15, 0.25])
    assert t == 0.15
    tuned = pl.soft_plausibility(PIECES, gold, DOCS3, threshold=t)
    assert (tuned["tp"], tuned["fp"], tuned["fn"]) == (2, 1, 0)
    words = pl.binarise(PIECES, threshold=t, docs=DOCS3)
    assert words[["start", "end"]].values.tolist() == [[0, 22]]
    res = pl.span_plausibility(gold, words, DOCS3)
    assert counts(res, "token_exact_overlap") == (2, 1, 0)  # the tuned selection exactly
    # per piece, .15 drops dia/betes (.1 each): "mellitus type" only
    pieces = pl.binarise(PIECES, threshold=t, docs=DOCS3, level="unit")
    assert pieces[["start", "end"]].values.tolist() == [[9, 22]]
    assert counts(pl.span_plausibility(gold, pieces, DOCS3), "token_exact_overlap") == (1, 1, 1)
    # > .25: mellitus (.6) at both levels
    assert pl.binarise(PIECES, threshold=0.25, docs=DOCS3)[["start", "end"]].values.tolist() == [[9, 17]]
    # max aggregation as tuned with agg="max": words .1, .3, .2 -> > .15 selects mellitus, type
    assert pl.binarise(PIECES, threshold=0.15, docs=DOCS3, agg="max")[["start", "end"]].values.tolist() == [[9, 22]]


def test_span_evaluation_gives_every_view_of_one_scoring():
    gold = spans(("n1", "A", 0, 5), ("n1", "A", 12, 14), ("n2", "B", 21, 23))
    pred = spans(("n1", "A", 0, 5), ("n1", "A", 15, 20), ("n2", "B", 18, 23))
    ev = pl.evaluate_spans(gold, pred, DOCS)
    assert (ev.n_notes, ev.n_pairs) == (2, 2)
    assert ev.measures() == pl.span_plausibility(gold, pred, DOCS)
    # n2 "bb ee"[18,23) vs gold "ee"[21,23): MDACE tokens {18, 21} vs {21} -> tp 1, fp 1
    per = ev.note_counts(("token_exact",)).set_index("note_id")
    assert tuple(per.loc["n2", ["tp", "fp", "fn"]]) == (1, 1, 0)
    # n1: gold {0, 3, 12}, pred {0, 3, 15, 18} -> tp 2, fp 2, fn 1; pooled: 3, 3, 1
    assert tuple(per.loc["n1", ["tp", "fp", "fn"]]) == (2, 2, 1)
    assert counts({"x": ev.pooled("token_exact")}, "x") == (3, 3, 1)
    assert ev.pair_counts().equals(pl.pair_counts(gold, pred, DOCS))


def test_note_tokens_computed_once_per_process_and_read_only():
    """Every ``Tokens`` over the same note reads one tokenisation (computed once), which nobody
    can change in place; the values are those of ``mdace_tokens`` / ``word_units``."""
    import pandas as pd

    from rationale_kit.core.text import mdace_tokens
    from rationale_kit.metrics.plausibility import Tokens

    docs = pd.DataFrame({"note_id": ["a"], "text": ["Pt has CHF, EF 35%; on lasix 40 mg."]})
    one, two = Tokens(docs), Tokens(docs)
    s1, e1, w1 = one.get("a")
    s2, e2, w2 = two.get("a")
    assert s1 is s2 and e1 is e2 and w1 is w2
    want = mdace_tokens(docs.text[0], max_number=10)
    assert s1.tolist() == [t[0] for t in want] and w1 == [t[2] for t in want]
    with pytest.raises(ValueError):
        s1[0] = 5
    ws, we, ww = Tokens(docs, unit="word").get("a")
    assert ww[:3] == ["pt", "has", "chf"] and ws is not s1


def test_iou_match_loops_equal_the_array_form():
    """The loop form used for a few ranges (``_iou_match_small``) gives the array form's counts,
    empty ranges and ties at the threshold included."""
    import random

    import numpy as np

    from rationale_kit.metrics import plausibility as P

    def array_form(gr, pr, iou):
        g = np.asarray(gr, dtype=np.int64).reshape(-1, 2)
        q = np.asarray(pr, dtype=np.int64).reshape(-1, 2)
        inter = np.clip(np.minimum(q[:, None, 1], g[None, :, 1]) - np.maximum(q[:, None, 0], g[None, :, 0]), 0, None)
        union = (q[:, None, 1] - q[:, None, 0]) + (g[None, :, 1] - g[None, :, 0]) - inter
        m = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        best = m.max(axis=1) if len(g) else np.zeros(len(q))
        return int((best >= iou).sum()), int((m >= iou).any(axis=0).sum()) if len(g) else 0

    rng = random.Random(0)
    n = 0
    for _ in range(3000):
        def rr():
            a = rng.randint(0, 20)
            return (a, a + rng.randint(0, 5))
        gr = sorted({rr() for _ in range(rng.randint(0, 5))})
        pr = sorted({rr() for _ in range(rng.randint(1, 6))})
        for iou in (0.0, 0.5, 1.0):
            assert P._iou_match_small(gr, pr, iou) == array_form(gr, pr, iou), (gr, pr, iou)
            n += 1
    assert P._iou_match_small([(0, 4)], [(0, 2), (0, 4), (5, 9)], 0.5) == (2, 1)  # IoU 0.5, 1, 0
    assert n == 9000
