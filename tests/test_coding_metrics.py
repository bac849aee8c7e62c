import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from rationale_kit.metrics import coding


def _random(seed: int, n: int = 40, l: int = 12, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, l)) < 0.2).astype(int)
    y[:, -1] = 0  # a code absent from the split
    probs = rng.random((n, l))
    if ties:
        probs = np.round(probs, 1)
    return y, probs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_against_sklearn(seed):
    y, probs = _random(seed)
    pred = (probs > 0.6).astype(int)
    out = coding.precision_recall_f1(y, pred)
    assert out["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
    assert out["micro_precision"] == pytest.approx(precision_score(y, pred, average="micro", zero_division=0))
    assert out["micro_recall"] == pytest.approx(recall_score(y, pred, average="micro", zero_division=0))
    present = y.sum(0) > 0
    assert out["n_codes_present"] == present.sum()
    assert out["macro_f1_mean"] == pytest.approx(
        f1_score(y[:, present], pred[:, present], average="macro", zero_division=0)
    )
    mp = precision_score(y, pred, average="macro", zero_division=0)
    mr = recall_score(y, pred, average="macro", zero_division=0)
    assert out["macro_precision"] == pytest.approx(mp)
    assert out["macro_recall"] == pytest.approx(mr)
    assert out["macro_f1_harmonic"] == pytest.approx(2 * mp * mr / (mp + mr))


@pytest.mark.parametrize("ties", [False, True])
def test_map_and_auc_against_sklearn(ties):
    y, probs = _random(3, ties=ties)
    cols = [j for j in range(y.shape[1]) if y[:, j].any()]
    ref_map = np.mean([average_precision_score(y[:, j], probs[:, j]) for j in cols])
    assert coding.mean_average_precision(y, probs) == pytest.approx(ref_map)
    auc = coding.roc_auc(y, probs)
    ref_macro = np.mean([roc_auc_score(y[:, j], probs[:, j]) for j in cols])
    assert auc["macro_auc"] == pytest.approx(ref_macro)
    assert auc["micro_auc"] == pytest.approx(roc_auc_score(y.ravel(), probs.ravel()))


def test_hand_computed_small_case():
    y = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
    p = np.array([[0.9, 0.8, 0.1, 0.0], [0.2, 0.7, 0.6, 0.1], [0.3, 0.4, 0.2, 0.5]])
    # P@1: doc0 top = code0 (hit), doc1 top = code1 (hit), doc2 top = code3 (miss) -> 2/3
    assert coding.precision_at_k(y, p, 1) == pytest.approx(2 / 3)
    # R@2: doc0 {0,1} -> 1/2; doc1 {1,2} -> 1/1; doc2 {3,1} -> 1/2 -> mean 2/3
    assert coding.recall_at_k(y, p, 2) == pytest.approx((0.5 + 1 + 0.5) / 3)
    # P@2 = hits/2: 1, 1, 1 -> 0.5
    assert coding.precision_at_k(y, p, 2) == pytest.approx(0.5)
    # R-precision: doc0 R=2 top2 {0,1}: 1/2; doc1 R=1 top1 {1}: 1; doc2 R=2 top2 {3,1}: 1/2
    assert coding.r_precision(y, p) == pytest.approx(2 / 3)
    # AP code0: scores 0.9(+) 0.3(+) 0.2(-): ranks 1, 2 -> AP = 1
    # AP code1: 0.8(-) 0.7(+) 0.4(+): precision at hits 1/2, 2/3 -> (1/2 + 2/3) / 2
    # AP code2: 0.6(-) 0.2(-) 0.1(+): 1/3 ; code3 has no positive: excluded
    expected = (1 + (0.5 + 2 / 3) / 2 + 1 / 3) / 3
    assert coding.mean_average_precision(y, p) == pytest.approx(expected)
    # at threshold 0.5: pred = [[1,1,0,0],[0,1,1,0],[0,0,0,0]] -> tp 2, fp 2, fn 3
    rep = coding.coding_report(y, p, 0.5, ks=(1, 2))
    assert rep["micro_precision"] == pytest.approx(0.5)
    assert rep["micro_recall"] == pytest.approx(2 / 5)
    assert rep["micro_f1"] == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    # per code F1: code0 tp1 fn1 -> 2/3; code1 tp1 fp1 fn1 -> 1/2; code2 fp1 fn1 -> 0; code3
    # has no positive and is left out of the mean
    assert rep["macro_f1_mean"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # macro P over all codes: 1, 1/2, 0, 0 -> 0.375; macro R: 1/2, 1/2, 0, 0 -> 0.25
    assert rep["macro_f1_harmonic"] == pytest.approx(2 * 0.375 * 0.25 / 0.625)
    for key in ["p@1", "r@2", "map", "micro_auc", "macro_auc", "r_precision", "threshold"]:
        assert key in rep


def test_tune_threshold_matches_brute_force():
    y, probs = _random(5, n=60)
    t, f = coding.tune_threshold(y, probs, grid=21)
    grid = np.linspace(0, 1, 21)
    scores = [f1_score(y.ravel(), (probs.ravel() > g).astype(int), zero_division=0) for g in grid]
    assert f == pytest.approx(max(scores))
    assert t == pytest.approx(grid[int(np.argmax(scores))])
    # a perfectly separable case is found exactly
    y2 = np.array([[1, 0], [0, 1]])
    p2 = np.array([[0.8, 0.3], [0.35, 0.9]])
    t2, f2 = coding.tune_threshold(y2, p2, grid=11)
    assert f2 == 1.0 and 0.35 <= t2 < 0.8


def test_threshold_on_grid_values_is_strict():
    y = np.array([[1, 0]])
    p = np.array([[0.5, 0.5]])
    # p > 0.5 is false: at t = 0.5 nothing is predicted; the best is t < 0.5 with F1 = 2/3
    t, f = coding.tune_threshold(y, p, grid=11)
    assert t < 0.5 and f == pytest.approx(2 / 3)


def test_frequency_baseline_and_label_matrix():
    labels = ["A", "B", "C"]
    train = [["A", "B"], ["A"], ["A", "X"], []]
    probs = coding.frequency_baseline(train, labels, n_docs=2)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs[0], [0.75, 0.25, 0.0])
    y = coding.label_matrix([["A"], ["C", "Z"]], labels)
    np.testing.assert_array_equal(y, [[1, 0, 0], [0, 0, 1]])
    rep = coding.coding_report(y, probs, 0.5, ks=(1,))
    assert rep["p@1"] == pytest.approx(0.5)


def test_degenerate_inputs():
    y = np.zeros((3, 2), dtype=int)
    p = np.full((3, 2), 0.3)
    rep = coding.coding_report(y, p, 0.5)
    assert rep["micro_f1"] == 0.0 and np.isnan(rep["map"]) and np.isnan(rep["macro_auc"])
    with pytest.raises(ValueError):
        coding.coding_report(np.zeros((2, 2)), np.zeros((2, 3)), 0.5)


def test_unseen_gold_codes_are_misses():
    """A model that predicts exactly the gold codes it knows must not get micro-F1 1.0 when some
    gold codes are outside the label space (issue #15: CodiEsp's unseen test codes)."""
    labels = ["A", "B", "C"]
    gold = [["A", "X"], ["B"], ["C", "Y", "Z"]]  # X, Y, Z: no training document carries them
    unseen = coding.unseen_counts(gold, labels)
    assert unseen.tolist() == [1, 0, 2]
    y = coding.label_matrix(gold, labels)
    probs = y.astype(float) * 0.9 + 0.05  # exactly the known gold codes above 0.5
    old = coding.coding_report(y, probs, 0.5)
    assert old["micro_f1"] == 1.0 and old["unseen_gold"] == 0  # what dropping them reported
    rep = coding.coding_report(y, probs, 0.5, unseen=unseen)
    # TP 3, FP 0, FN 0 inside the label space + 3 unseen: P = 1, R = 3/6, F1 = 2/3
    assert rep["micro_precision"] == 1.0
    assert rep["micro_recall"] == pytest.approx(0.5)
    assert rep["micro_f1"] == pytest.approx(2 / 3)
    assert rep["unseen_gold"] == 3 and rep["unseen_gold_share"] == pytest.approx(0.5)
    # R@k and R-precision count them in each document's gold total: doc 1 1/2, doc 2 1/1, doc 3 1/3
    assert rep["r@5"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    # R-precision: R = 2, 1, 3 (capped at L = 3): hits 1, 1, 1
    assert rep["r_precision"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    # macro measures stay over the label space
    assert rep["macro_f1_mean"] == 1.0 and rep["p@5"] == old["p@5"]
    with pytest.raises(ValueError, match="one non-negative count per document"):
        coding.coding_report(y, probs, 0.5, unseen=[1, 2])


def test_coding_table_reports_unseen_share():
    import pandas as pd

    from rationale_kit.workbook.protocols.data import label_space
    from rationale_kit.workbook.protocols.train import coding_table

    docs = pd.DataFrame({
        "note_id": ["t1", "t2", "v1", "s1", "s2"],
        "codes": [["A"], ["B", "A"], ["A"], ["A", "Q"], ["B"]],
        "split": ["train", "train", "val", "test", "test"],
    })
    labels = label_space(docs)
    assert labels == ["A", "B"]
    perfect = pd.DataFrame({"note_id": ["s1", "s1", "s2", "s2"], "code": ["A", "B", "A", "B"],
                            "prob": [0.9, 0.1, 0.1, 0.9]})
    table = coding_table({"perfect": perfect}, docs, labels, {"perfect": 0.5})
    # 2 known gold codes found, Q (unseen) missed: P 1, R 2/3, F1 0.8; Q is 1 of 3 gold occurrences
    assert table.loc["perfect", "micro_f1"] == pytest.approx(0.8)
    assert table.loc["perfect", "unseen_gold_share"] == pytest.approx(1 / 3)
    assert table.loc["frequency baseline", "unseen_gold_share"] == pytest.approx(1 / 3)
