"""Faithfulness measures on hand-built models that implement the coding-model contract.

The additive model's logit for label l is the sum of per-token weights ``W[l, id]`` over the
unpadded positions (``mask_id`` and ``pad_id`` weigh 0), so p(x), p(x without R) and p(only R)
are computed here by hand. The "mean" variant divides by the number of positions, so masking
(length kept) and deleting (shorter input) differ.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from rationale_kit.metrics.faithfulness import MEASURES, NOTE_AOPC, OUTPUT_COLUMNS, faithfulness_discrete, faithfulness_loop, faithfulness_scored, summarise
from rationale_kit.core.records import DataError

torch.set_num_threads(1)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------------------------
# tiny contract-conforming models
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    ids: torch.Tensor
    offsets: torch.Tensor


@dataclass
class ModelOutput:
    logits: torch.Tensor
    attention: torch.Tensor


class Tokenizer:
    """Units: ``\\w+`` words and punctuation marks; with ``piece`` every word is split into pieces
    of ``piece`` characters (word pieces). Ids come from a fixed vocabulary (unknown -> 2)."""

    pad_id = 0
    mask_id = 1

    def __init__(self, vocab: dict[str, int], piece: int | None = None, max_len: int | None = None):
        self.vocab, self.piece, self.max_len = vocab, piece, max_len

    def units(self, text: str) -> list[tuple[int, int]]:
        out = []
        for m in re.finditer(r"\w+|[^\w\s]", text):
            s, e = m.span()
            if self.piece and m.group().isalnum():
                out += [(i, min(i + self.piece, e)) for i in range(s, e, self.piece)]
            else:
                out.append((s, e))
        return out[: self.max_len] if self.max_len else out

    def encode(self, text: str) -> Encoded:
        offs = self.units(text)
        ids = [self.vocab.get(text[s:e], 2) for s, e in offs]
        return Encoded(torch.tensor(ids, dtype=torch.long), torch.tensor(offs, dtype=torch.long).reshape(-1, 2))


class AdditiveModel(torch.nn.Module):
    def __init__(self, labels, tokenizer, W, mode="sum", bias=0.0, threshold=None):
        super().__init__()
        self.labels = list(labels)
        self.tokenizer = tokenizer
        self.W = torch.nn.Parameter(torch.as_tensor(W, dtype=torch.float64), requires_grad=False)
        self.bias = bias
        self.mode = mode
        self.calls: list = []  # label_idx of every forward call (None = all labels)
        self.rows: int = 0  # rows of input seen
        if threshold is not None:
            self.threshold = threshold

    def collate(self, encs):
        T = max(len(e.ids) for e in encs)
        ids = torch.full((len(encs), T), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encs), T), dtype=torch.bool)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = torch.as_tensor(e.ids)
            mask[i, : len(e.ids)] = True
        return ids, mask

    def forward(self, input_ids, attention_mask=None, label_idx=None):
        self.calls.append(None if label_idx is None else label_idx.tolist())
        self.rows += input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        W = self.W if label_idx is None else self.W[label_idx]  # [K, V]
        contrib = W[:, input_ids].permute(1, 0, 2) * attention_mask[:, None, :]  # [B, K, T]
        logits = contrib.sum(-1)
        if self.mode == "mean":
            logits = logits / attention_mask.sum(-1, keepdim=True)
        att = attention_mask[:, None, :].float().expand(-1, W.shape[0], -1)
        att = att / att.sum(-1, keepdim=True)
        return ModelOutput((logits + self.bias).float(), att)


def vocab_of(texts, piece=None):
    tok = Tokenizer({}, piece)
    words = sorted({t[s:e] for t in texts for s, e in tok.units(t)})
    return {w: i + 3 for i, w in enumerate(words)}


def make_model(texts, labels, weights: dict | None = None, piece=None, mode="sum", seed=0,
               default=None, mask_weight=0.0, **kw):
    """``weights[(label, token)] = w``; others ``default`` (random normal when None)."""
    vocab = vocab_of(texts, piece)
    V = len(vocab) + 3
    g = np.random.default_rng(seed)
    W = g.normal(0, 0.3, (len(labels), V)) if default is None else np.full((len(labels), V), float(default))
    for (lab, tokn), w in (weights or {}).items():
        W[labels.index(lab), vocab[tokn]] = w
    W[:, 0] = 0.0
    W[:, 1] = mask_weight
    return AdditiveModel(labels, Tokenizer(vocab, piece), W, mode=mode, **kw)


def docs_frame(texts, codes=None):
    return pd.DataFrame({
        "note_id": [f"n{i}" for i in range(len(texts))],
        "text": texts,
        "codes": codes or [[] for _ in texts],
        "split": "test",
    })


def spans(rows):
    return pd.DataFrame(rows, columns=["note_id", "code", "start", "end", "granularity", "source"])


def value(frame, measure, control="rationale", **eq):
    sel = frame[(frame.measure == measure) & (frame.control == control)]
    for c, v in eq.items():
        sel = sel[sel[c] == v] if not (isinstance(v, float) and np.isnan(v)) else sel[sel[c].isna()]
    assert len(sel) == 1, sel
    return float(sel.value.iloc[0])


# --------------------------------------------------------------------------------------------
# discrete rationales
# --------------------------------------------------------------------------------------------
TEXT = "alpha beta gamma delta eps"  # tokens a b c d e


def test_discrete_values_by_hand():
    w = {"alpha": 1.0, "beta": 2.0, "gamma": -0.5, "delta": 0.25, "eps": 0.5}
    model = make_model([TEXT], ["X"], {("X", k): v for k, v in w.items()}, default=0.0)
    docs = docs_frame([TEXT], [["X"]])
    rat = spans([("n0", "X", 6, 16, "", "llm")])  # "beta gamma"
    out = faithfulness_discrete(model, docs, rat, progress=False)
    assert list(out.columns[: len(OUTPUT_COLUMNS)]) == OUTPUT_COLUMNS
    p = sig(sum(w.values()))
    assert value(out, "comprehensiveness") == pytest.approx(p - sig(1.0 + 0.25 + 0.5), abs=1e-6)
    assert value(out, "sufficiency") == pytest.approx(p - sig(2.0 - 0.5), abs=1e-6)
    r = out[out.control == "rationale"].iloc[0]
    assert r.source == "llm" and r.unit == "token" and r.perturbation == "mask"
    assert r.code_set == "predicted" and r.rationale_size == 2 and r.n_units == 5 and np.isnan(r.k)
    assert r.p == pytest.approx(p)
    assert set(out.control) == {"rationale", "random"} and len(out) == 4


def test_random_control_same_size():
    # all weights 1: the logit counts the unmasked tokens, so values reveal the removed count
    texts = [" ".join(f"w{i}" for i in range(40))]
    model = make_model(texts, ["X"], default=1.0, bias=-30.0)
    docs = docs_frame(texts, [["X"]])
    rat = spans([("n0", "X", 0, 14, "", "entity")])  # w0..w4
    out = faithfulness_discrete(model, docs, rat, progress=False, seed=3)
    p = sig(10.0)
    for control in ("rationale", "random"):
        assert value(out, "comprehensiveness", control) == pytest.approx(p - sig(5.0), abs=1e-6)
        assert value(out, "sufficiency", control) == pytest.approx(p - sig(-25.0), abs=1e-6)
    assert (out["rationale_size"] == 5).all()
    # the seed changes the random draw but not its size; same seed, same draw
    again = faithfulness_discrete(model, docs, rat, progress=False, seed=3)
    pd.testing.assert_frame_equal(out, again)


def test_random_control_differs_from_rationale_and_depends_on_seed():
    texts = [" ".join(f"w{i}" for i in range(60))]
    g = np.random.default_rng(1)
    weights = {("X", f"w{i}"): float(g.normal()) for i in range(60)}
    model = make_model(texts, ["X"], weights)
    docs = docs_frame(texts, [["X"]])
    rat = spans([("n0", "X", 0, 20, "", "entity")])
    a = faithfulness_discrete(model, docs, rat, progress=False, seed=0, code_set="gold")
    b = faithfulness_discrete(model, docs, rat, progress=False, seed=1, code_set="gold")
    ra, rb = (value(x, "comprehensiveness", "random") for x in (a, b))
    assert ra != pytest.approx(rb)
    assert value(a, "comprehensiveness") == value(b, "comprehensiveness")


def test_mask_vs_delete():
    w = {"alpha": 1.0, "beta": 2.0, "gamma": -0.5, "delta": 0.25, "eps": 0.5}
    model = make_model([TEXT], ["X"], {("X", k): v for k, v in w.items()}, default=0.0, mode="mean")
    docs = docs_frame([TEXT], [["X"]])
    rat = spans([("n0", "X", 6, 16, "", "llm")])  # beta gamma
    m = faithfulness_discrete(model, docs, rat, perturbation="mask", code_set="gold", progress=False)
    d = faithfulness_discrete(model, docs, rat, perturbation="delete", code_set="gold", progress=False)
    p = sig(3.25 / 5)
    assert value(m, "comprehensiveness") == pytest.approx(p - sig(1.75 / 5), abs=1e-6)
    assert value(m, "sufficiency") == pytest.approx(p - sig(1.5 / 5), abs=1e-6)
    assert value(d, "comprehensiveness") == pytest.approx(p - sig(1.75 / 3), abs=1e-6)
    assert value(d, "sufficiency") == pytest.approx(p - sig(1.5 / 2), abs=1e-6)
    assert (d.perturbation == "delete").all() and (m.perturbation == "mask").all()


def test_mask_token_weight_matters_only_for_mask():
    w = {"alpha": 1.0, "beta": 2.0}
    model = make_model([TEXT], ["X"], {("X", k): v for k, v in w.items()}, default=0.0, mask_weight=-1.0)
    docs = docs_frame([TEXT], [["X"]])
    rat = spans([("n0", "X", 0, 5, "", "llm")])  # alpha
    m = faithfulness_discrete(model, docs, rat, code_set="gold", progress=False)
    d = faithfulness_discrete(model, docs, rat, code_set="gold", perturbation="delete", progress=False)
    assert value(m, "comprehensiveness") == pytest.approx(sig(3.0) - sig(2.0 - 1.0), abs=1e-6)
    assert value(d, "comprehensiveness") == pytest.approx(sig(3.0) - sig(2.0), abs=1e-6)
    assert value(m, "sufficiency") == pytest.approx(sig(3.0) - sig(1.0 - 4.0), abs=1e-6)
    assert value(d, "sufficiency") == pytest.approx(sig(3.0) - sig(1.0), abs=1e-6)


def test_delete_everything_feeds_one_mask_token():
    model = make_model([TEXT], ["X"], {("X", "alpha"): 1.0}, default=0.5, mask_weight=0.3)
    docs = docs_frame([TEXT], [["X"]])
    rat = spans([("n0", "X", 0, len(TEXT), "", "llm")])
    out = faithfulness_discrete(model, docs, rat, code_set="gold", perturbation="delete", progress=False)
    p = sig(1.0 + 4 * 0.5)
    assert value(out, "comprehensiveness") == pytest.approx(p - sig(0.3), abs=1e-6)
    assert value(out, "sufficiency") == pytest.approx(0.0, abs=1e-12)


def test_word_vs_token_units():
    text = "abcdef gh ijklmn"  # pieces of 3: abc def | gh | ijk lmn
    weights = {("X", "abc"): 1.0, ("X", "def"): 2.0, ("X", "gh"): 0.5, ("X", "ijk"): -1.0, ("X", "lmn"): 0.25}
    model = make_model([text], ["X"], weights, piece=3, default=0.0)
    docs = docs_frame([text], [["X"]])
    rat = spans([("n0", "X", 0, 2, "", "llm")])  # inside the first piece of "abcdef"
    tok = faithfulness_discrete(model, docs, rat, unit="token", code_set="gold", progress=False)
    wrd = faithfulness_discrete(model, docs, rat, unit="word", code_set="gold", progress=False)
    p = sig(2.75)
    assert value(tok, "comprehensiveness") == pytest.approx(p - sig(1.75), abs=1e-6)
    assert value(tok, "sufficiency") == pytest.approx(p - sig(1.0), abs=1e-6)
    assert value(wrd, "comprehensiveness") == pytest.approx(p - sig(-0.25), abs=1e-6)
    assert value(wrd, "sufficiency") == pytest.approx(p - sig(3.0), abs=1e-6)
    rt, rw = tok[tok.control == "rationale"].iloc[0], wrd[wrd.control == "rationale"].iloc[0]
    assert (rt["rationale_size"], rt.n_units, rt.unit) == (1, 5, "token")
    assert (rw["rationale_size"], rw.n_units, rw.unit) == (1, 3, "word")


def test_word_units_keep_only_removes_punctuation_too():
    text = "alpha , beta ."
    weights = {("X", "alpha"): 1.0, ("X", ","): 5.0, ("X", "beta"): 2.0, ("X", "."): 7.0}
    model = make_model([text], ["X"], weights, default=0.0)
    docs = docs_frame([text], [["X"]])
    rat = spans([("n0", "X", 0, 5, "", "llm")])
    out = faithfulness_discrete(model, docs, rat, unit="word", code_set="gold", progress=False)
    p = sig(15.0)
    assert value(out, "comprehensiveness") == pytest.approx(p - sig(14.0), abs=1e-6)
    assert value(out, "sufficiency") == pytest.approx(p - sig(1.0), abs=1e-6)


def test_code_set_predicted_vs_gold_and_unknown_codes():
    texts = ["alpha beta", "gamma delta"]
    labels = ["A", "B"]
    weights = {("A", "alpha"): 3.0, ("B", "alpha"): -3.0, ("A", "gamma"): -3.0, ("B", "gamma"): 3.0}
    model = make_model(texts, labels, weights, default=0.0)
    docs = docs_frame(texts, [["A", "B"], ["A"]])
    rat = spans([
        ("n0", "A", 0, 5, "", "llm"), ("n0", "B", 0, 5, "", "llm"),
        ("n1", "A", 0, 5, "", "llm"), ("n1", "B", 0, 5, "", "llm"), ("n1", "Z99", 0, 5, "", "llm"),
    ])
    with pytest.warns(UserWarning, match="not among the model's labels"):
        pred = faithfulness_discrete(model, docs, rat, progress=False)
    gold = faithfulness_discrete(model, docs, rat, code_set="gold", progress=False)  # Z99 not gold
    key = lambda f: sorted(set(zip(f.note_id, f.code)))
    assert key(pred) == [("n0", "A"), ("n1", "B")]
    assert key(gold) == [("n0", "A"), ("n0", "B"), ("n1", "A")]
    assert (pred.code_set == "predicted").all() and (gold.code_set == "gold").all()
    # an explicit threshold and an explicit gold mapping
    with pytest.warns(UserWarning):
        low = faithfulness_discrete(model, docs, rat, threshold=0.01, progress=False)
    assert len(key(low)) == 4
    g2 = faithfulness_discrete(model, docs, rat, code_set="gold", gold={"n1": ["B"]}, progress=False)
    assert key(g2) == [("n1", "B")]
    # the model's own threshold is used when none is given
    model.threshold = 0.999
    with pytest.warns(UserWarning):
        none = faithfulness_discrete(model, docs, rat, progress=False)
    assert len(none) == 0 and list(none.columns[: len(OUTPUT_COLUMNS)]) == OUTPUT_COLUMNS


def test_missing_empty_scores_every_pair():
    texts = ["alpha beta", "gamma delta"]
    model = make_model(texts, ["A", "B"], {("A", "alpha"): 1.0, ("B", "gamma"): 2.0}, default=0.0)
    docs = docs_frame(texts, [["A", "B"], ["B"]])
    rat = spans([("n0", "A", 0, 5, "", "entity")])
    out = faithfulness_discrete(model, docs, rat, code_set="gold", missing="empty", progress=False)
    assert sorted(set(zip(out.note_id, out.code))) == [("n0", "A"), ("n0", "B"), ("n1", "B")]
    e = out[(out.note_id == "n1") & (out.control == "rationale")]
    assert value(e, "comprehensiveness") == 0.0
    assert value(e, "sufficiency") == pytest.approx(sig(2.0) - sig(0.0), abs=1e-6)
    assert (e["rationale_size"] == 0).all()


def test_bad_input():
    model = make_model([TEXT], ["X"], default=0.0)
    docs = docs_frame([TEXT], [["X"]])
    with pytest.raises(DataError, match="unknown note_id"):
        faithfulness_discrete(model, docs, spans([("zz", "X", 0, 3, "", "llm")]), progress=False)
    with pytest.raises(DataError, match="missing column"):
        faithfulness_scored(model, docs, spans([("n0", "X", 0, 3, "", "llm")]), progress=False)
    with pytest.raises(ValueError, match="perturbation"):
        faithfulness_discrete(model, docs, spans([]), perturbation="zero", progress=False)


def test_truncated_notes_and_document_list():
    from rationale_kit.core.records import Document

    text = "alpha beta gamma delta eps"
    w = {"alpha": 1.0, "beta": 2.0, "gamma": -0.5, "delta": 0.25, "eps": 0.5}
    model = make_model([text], ["X"], {("X", k): v for k, v in w.items()}, default=0.0)
    model.tokenizer.max_len = 3  # the model sees alpha beta gamma
    docs = [Document("n0", text, ("X",), "test")]
    rat = spans([("n0", "X", 6, 10, "", "llm"), ("n0", "X", 17, 22, "", "llm")])  # beta, delta
    out = faithfulness_discrete(model, docs, rat, unit="word", progress=False)
    p = sig(2.5)
    assert value(out, "comprehensiveness") == pytest.approx(p - sig(0.5), abs=1e-6)
    assert value(out, "sufficiency") == pytest.approx(p - sig(2.0), abs=1e-6)
    assert set(out.n_units) == {3} and set(out.rationale_size) == {1}


# --------------------------------------------------------------------------------------------
# scored rationales
# --------------------------------------------------------------------------------------------
def score_table(model, docs, code, scores_by_note, source="attention"):
    rows = []
    for nid, text in zip(docs.note_id, docs.text):
        enc = model.tokenizer.encode(text)
        for u, ((s, e), sc) in enumerate(zip(enc.offsets.tolist(), scores_by_note[nid])):
            rows.append((nid, code, source, "attention", "tiny", u, s, e, float(sc)))
    return pd.DataFrame(rows, columns=["note_id", "code", "source", "method", "model", "unit", "start", "end", "score"])


def test_aopc_curve_known_ranking():
    n = 10
    texts = [" ".join(f"w{i}" for i in range(n))]
    w = np.array([0.5, -1.0, 2.0, 0.1, 1.5, -0.3, 0.7, 0.2, 1.1, -0.6])
    model = make_model(texts, ["X"], {("X", f"w{i}"): float(w[i]) for i in range(n)})
    docs = docs_frame(texts, [["X"]])
    scores = np.array([3, 9, 1, 5, 8, 0, 7, 2, 6, 4], dtype=float)  # ranking 1,4,6,8,3,9,0,7,2,5
    tab = score_table(model, docs, "X", {"n0": scores})
    ks = [1.0, 10.0, 20.0, 50.0]
    out = faithfulness_scored(model, docs, tab, aopc_k=ks, code_set="gold", progress=False)
    order = [1, 4, 6, 8, 3, 9, 0, 7, 2, 5]
    p = sig(w.sum())
    comp, suff = [], []
    for k, m in zip(ks, [1, 1, 2, 5]):  # ceil(k% of 10), at least 1
        top = order[:m]
        rest = [i for i in range(n) if i not in top]
        comp.append(p - sig(w[rest].sum()))
        suff.append(p - sig(w[top].sum()))
        assert value(out, "aopc_comp", k=k) == pytest.approx(comp[-1], abs=1e-6)
        assert value(out, "aopc_suff", k=k) == pytest.approx(suff[-1], abs=1e-6)
        row = out[(out.measure == "aopc_comp") & (out.k == k) & (out.control == "rationale")].iloc[0]
        assert row["rationale_size"] == m
    assert value(out, "aopc_comp", k=np.nan) == pytest.approx(np.mean(comp), abs=1e-6)
    assert value(out, "aopc_suff", k=np.nan) == pytest.approx(np.mean(suff), abs=1e-6)
    assert set(out.measure) == set(MEASURES["eraser"])
    r = out.iloc[0]
    assert (r.source, r.method, r.rationale_model, r.unit) == ("attention", "attention", "tiny", "token")
    # the random control ranks a permutation of the same scores: same sizes per k
    sizes = out.pivot_table(index=["measure", "k"], columns="control", values="rationale_size")
    assert (sizes["rationale"] == sizes["random"]).all()
    # without the curve: only aggregate rows
    agg = faithfulness_scored(model, docs, tab, aopc_k=ks, code_set="gold", curve=False, progress=False)
    assert agg.k.isna().all() and len(agg) == 4


def test_eraser_aopc_is_the_scripts_average_over_bins():
    # ERASER's metrics.py (_instances_aopc): drops p - p_k per instance and bin, then np.average over
    # the flattened [instances x bins] array: the mean over the |B| bins (no k = 0 bin), averaged
    # over instances. Two pairs, bins 10% and 50%, additive logits (sum of the kept words' weights):
    #   n0 "a1 a2 a3 a4", weights 2, 1, 0, -1, ranked a1 > a2 > a3 > a4; p = sig(2)
    #     10%: ceil(0.4) = 1 unit  -> comp sig(2) - sig(0),  suff sig(2) - sig(2) = 0
    #     50%: 2 units (a1, a2)     -> comp sig(2) - sig(-1), suff sig(2) - sig(3)
    #   n1 "b1 b2", weights 1, 0.5, ranked b2 > b1; p = sig(1.5)
    #     10% and 50%: 1 unit (b2) -> comp sig(1.5) - sig(1), suff sig(1.5) - sig(0.5)
    texts = ["a1 a2 a3 a4", "b1 b2"]
    w = {"a1": 2.0, "a2": 1.0, "a3": 0.0, "a4": -1.0, "b1": 1.0, "b2": 0.5}
    model = make_model(texts, ["X"], {("X", t): v for t, v in w.items()}, default=0.0)
    docs = docs_frame(texts, [["X"], ["X"]])
    tab = score_table(model, docs, "X", {"n0": [4, 3, 2, 1], "n1": [1, 2]})
    out = faithfulness_scored(model, docs, tab, aopc_k=[10.0, 50.0], code_set="gold", progress=False)
    comp = np.array([[sig(2) - sig(0), sig(2) - sig(-1)], [sig(1.5) - sig(1), sig(1.5) - sig(1)]])
    suff = np.array([[0.0, sig(2) - sig(3)], [sig(1.5) - sig(0.5), sig(1.5) - sig(0.5)]])
    agg = out[out.k.isna() & (out.control == "rationale")].set_index(["measure", "note_id"])["value"]
    for measure, drops in (("aopc_comp", comp), ("aopc_suff", suff)):
        # per pair: mean over the 2 bins (the paper's printed 1 / (|B| + 1) would divide by 3)
        assert agg[(measure, "n0")] == pytest.approx(drops[0].mean(), abs=1e-6)
        assert agg[(measure, "n1")] == pytest.approx(drops[1].mean(), abs=1e-6)
        assert agg[(measure, "n0")] != pytest.approx(drops[0].sum() / 3, abs=1e-3)
        # the table's summary (mean over pairs) is the script's flattened average
        s = summarise(out[out.k.isna()])
        row = s[(s.measure == measure) & (s.control == "rationale")]
        assert row["mean"].iloc[0] == pytest.approx(np.average(drops), abs=1e-6)


def test_scores_mapped_to_words_by_max():
    text = "abcdef gh ijklmn"  # pieces: abc def gh ijk lmn
    weights = {("X", "abc"): 1.0, ("X", "def"): 2.0, ("X", "gh"): 0.5, ("X", "ijk"): -1.0, ("X", "lmn"): 0.25}
    model = make_model([text], ["X"], weights, piece=3, default=0.0)
    docs = docs_frame([text], [["X"]])
    tab = score_table(model, docs, "X", {"n0": [0.1, 0.2, 0.3, 0.9, 0.05]})  # word scores .2 .3 .9
    out = faithfulness_scored(model, docs, tab, aopc_k=[34.0], unit="word", code_set="gold", progress=False)
    p = sig(2.75)
    # 34% of 3 words -> 2 words: ijklmn, gh
    assert value(out, "aopc_comp", k=34.0) == pytest.approx(p - sig(3.0), abs=1e-6)
    assert value(out, "aopc_suff", k=34.0) == pytest.approx(p - sig(-0.25), abs=1e-6)
    tok = faithfulness_scored(model, docs, tab, aopc_k=[40.0], unit="token", code_set="gold", progress=False)
    # 40% of 5 pieces -> ijk, gh
    assert value(tok, "aopc_comp", k=40.0) == pytest.approx(p - sig(3.25), abs=1e-6)


def test_edin_variant_steps():
    n = 37  # fewer words than 100: late steps remove / keep everything
    texts = [" ".join(f"w{i}" for i in range(n))]
    g = np.random.default_rng(5)
    w = g.normal(0, 0.4, n)
    model = make_model(texts, ["X"], {("X", f"w{i}"): float(w[i]) for i in range(n)})
    docs = docs_frame(texts, [["X"]])
    scores = g.permutation(n).astype(float)
    tab = score_table(model, docs, "X", {"n0": scores})
    out = faithfulness_scored(model, docs, tab, variant="edin", code_set="gold", progress=False)
    assert set(out.unit) == {"word"}
    order = list(np.argsort(-scores, kind="stable"))
    p = sig(w.sum())
    comp, suff = [], []
    for i in range(50):
        top = order[: min(2 * i, n)]
        comp.append((p - sig(w.sum() - w[top].sum())) / p)
        keep = order[: min(100 - 2 * i, n)]
        suff.append(max(0.0, p - sig(w[keep].sum())) / p)
        assert value(out, "edin_comp", k=float(2 * i)) == pytest.approx(comp[-1], abs=1e-6 / p)
        assert value(out, "edin_suff", k=float(100 - 2 * i)) == pytest.approx(suff[-1], abs=1e-6 / p)
    assert value(out, "edin_comp", k=np.nan) == pytest.approx(np.mean(comp), abs=1e-6 / p)
    assert value(out, "edin_suff", k=np.nan) == pytest.approx(np.mean(suff), abs=1e-6 / p)
    curve = out[(out.control == "rationale") & out.k.notna()]
    assert len(curve) == 100
    row = curve[(curve.measure == "edin_comp") & (curve.k == 60.0)].iloc[0]
    assert row["rationale_size"] == n  # capped at the note's words


# --------------------------------------------------------------------------------------------
# engine: agreement with the loop, batching, labels read
# --------------------------------------------------------------------------------------------
def corpus(n_notes=6, n_labels=12, seed=0):
    g = np.random.default_rng(seed)
    vocab = [f"t{i}" for i in range(40)]
    texts = [" ".join(g.choice(vocab, size=int(g.integers(15, 70)))) + " ." for _ in range(n_notes)]
    labels = [f"C{i}" for i in range(n_labels)]
    codes = [list(g.choice(labels, size=3, replace=False)) for _ in texts]
    docs = docs_frame(texts, codes)
    return g, texts, labels, docs


def random_spans(g, docs, labels, n_codes=4):
    """Spans of two sources for the note's gold codes and random other codes."""
    rows = []
    for nid, text, gold in zip(docs.note_id, docs.text, docs.codes):
        others = [c for c in g.choice(labels, size=n_codes, replace=False) if c not in gold]
        for code in list(gold[:2]) + others[: n_codes - 2]:
            for src in ("llm", "entity"):
                for _ in range(int(g.integers(1, 3))):
                    s = int(g.integers(0, len(text) - 5))
                    rows.append((nid, str(code), s, s + int(g.integers(1, 12)), "", src))
    return spans(rows)


def random_scores(g, model, docs, labels, n_codes=3):
    """Scores for the note's first gold codes (up to ``n_codes - 1``) and one random code."""
    rows = []
    for nid, text, gold in zip(docs.note_id, docs.text, docs.codes):
        enc = model.tokenizer.encode(text)
        extra = [c for c in g.choice(labels, size=n_codes, replace=False) if c not in gold][:1]
        for code in list(gold[: n_codes - 1]) + extra:
            for u, (s, e) in enumerate(enc.offsets.tolist()):
                rows.append((nid, str(code), "attention", "attention", "tiny", u, s, e, float(g.random())))
    return pd.DataFrame(rows, columns=["note_id", "code", "source", "method", "model", "unit", "start", "end", "score"])


def assert_same(a, b, tol=1e-6):
    keys = ["note_id", "code", "source", "measure", "k", "control"]
    a = a.sort_values(keys, na_position="first").reset_index(drop=True)
    b = b.sort_values(keys, na_position="first").reset_index(drop=True)
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(a.drop(columns=["value", "p"]), b.drop(columns=["value", "p"]))
    assert np.abs(a.value.to_numpy() - b.value.to_numpy()).max() <= tol
    assert np.abs(a.p.to_numpy() - b.p.to_numpy()).max() <= tol


@pytest.mark.parametrize("unit,perturbation,code_set", [
    ("token", "mask", "gold"), ("word", "delete", "predicted"), ("token", "delete", "gold"),
    ("word", "mask", "predicted"),
])
def test_engine_equals_loop_discrete(unit, perturbation, code_set):
    g, texts, labels, docs = corpus(seed=1)
    model = make_model(texts, labels, piece=2, mode="mean", mask_weight=0.2, bias=0.3, seed=1)
    rat = random_spans(g, docs, labels)
    kw = dict(unit=unit, perturbation=perturbation, code_set=code_set, threshold=0.5, seed=7, progress=False)
    fast = faithfulness_discrete(model, docs, rat, batch_size=5, **kw)
    slow = faithfulness_loop(model, docs, rat, kind="discrete", **kw)
    assert_same(fast, slow)


@pytest.mark.parametrize("variant,unit,perturbation", [
    ("eraser", "token", "mask"), ("eraser", "word", "delete"), ("edin", "word", "mask"),
    ("edin", "token", "delete"),
])
def test_engine_equals_loop_scored(variant, unit, perturbation):
    g, texts, labels, docs = corpus(n_notes=4, seed=2)
    model = make_model(texts, labels, piece=2, mode="mean", mask_weight=-0.1, seed=2)
    tab = random_scores(g, model, docs, labels)
    kw = dict(unit=unit, perturbation=perturbation, code_set="gold", seed=3, progress=False)
    fast = faithfulness_scored(model, docs, tab, variant=variant, batch_size=16, **kw)
    slow = faithfulness_loop(model, docs, tab, kind=variant, **kw)
    assert_same(fast, slow)


def test_only_needed_labels_and_few_passes():
    g, texts, labels, docs = corpus(n_notes=5, n_labels=30, seed=3)
    model = make_model(texts, labels, seed=3)
    tab = random_scores(g, model, docs, labels, n_codes=3)
    gold = dict(zip(docs.note_id, docs.codes))
    needed = {labels.index(c) for n, c in zip(tab.note_id, tab.code) if c in gold[n]}
    assert {labels.index(c) for c in tab.code} - needed  # the table also scores non-gold codes
    model.calls.clear()
    model.rows = 0
    out = faithfulness_scored(model, docs, tab, code_set="gold", batch_size=32, progress=False)
    assert model.calls and all(c is not None for c in model.calls)
    assert all(set(c) <= needed and len(c) == len(set(c)) for c in model.calls)
    assert all(len(c) <= 32 for c in model.calls)
    # base pass + perturbations: 2 gold codes x 5 notes x 2 controls x 10 steps = 200 perturbed rows
    perturbed = model.rows - len(docs)
    assert perturbed <= 200
    assert len(model.calls) <= 1 + math.ceil(perturbed / 32) + 1
    # the loop reads every label, one row per call
    model.calls.clear()
    slow = faithfulness_loop(model, docs, tab, kind="eraser", code_set="gold", progress=False)
    assert all(c is None for c in model.calls) and len(model.calls) >= perturbed
    assert_same(out, slow)


def test_batch_gathers_each_rows_own_label():
    # two codes of one note with opposite weights land in the same batch
    text = "alpha beta gamma delta"
    model = make_model([text], ["A", "B", "C"], {("A", "alpha"): 2.0, ("B", "alpha"): -2.0,
                                                 ("A", "beta"): 1.0, ("B", "beta"): 3.0}, default=0.0)
    docs = docs_frame([text], [["A", "B"]])
    rat = spans([("n0", "A", 0, 5, "", "llm"), ("n0", "B", 6, 10, "", "llm")])
    model.calls.clear()
    out = faithfulness_discrete(model, docs, rat, code_set="gold", progress=False)
    assert model.calls == [[0, 1], [0, 1]]  # base pass, then one batch of all perturbations
    ra = out[(out.code == "A") & (out.control == "rationale")]
    rb = out[(out.code == "B") & (out.control == "rationale")]
    assert value(ra, "comprehensiveness") == pytest.approx(sig(3.0) - sig(1.0), abs=1e-6)
    assert value(rb, "comprehensiveness") == pytest.approx(sig(1.0) - sig(-2.0), abs=1e-6)


# --------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------
def test_summarise_and_note():
    g, texts, labels, docs = corpus(seed=4)
    model = make_model(texts, labels, seed=4)
    rat = random_spans(g, docs, labels)
    out = faithfulness_discrete(model, docs, rat, code_set="gold", progress=False, model_name="tiny")
    s = summarise(out)
    assert {"source", "model", "measure", "control", "mean", "n"} <= set(s.columns)
    for (src, meas, ctl), grp in out.groupby(["source", "measure", "control"]):
        row = s[(s.source == src) & (s.measure == meas) & (s.control == ctl)]
        assert row["mean"].iloc[0] == pytest.approx(grp.value.mean())
        assert row["n"].iloc[0] == len(grp)
    assert (s.model == "tiny").all()
    w = summarise(out, wide=True)
    assert np.allclose(w["difference"], w["rationale"] - w["random"])
    assert "not comparable across models" in NOTE_AOPC and "NAOPC" in NOTE_AOPC


def test_engine_equals_loop_on_project_models():
    """The engine and the loop agree on the package's CAML and LAAT (tiny sizes), both units and
    both perturbations: padding, batching and label gathering do not change the values."""
    models = pytest.importorskip("rationale_kit.models")
    from rationale_kit.core.config import CAMLParams, LAATParams

    g, texts, labels, docs = corpus(n_notes=4, n_labels=10, seed=5)
    rat = random_spans(g, docs, labels, n_codes=3)
    sizes = {"caml": CAMLParams(embed_dim=8, filters=6, kernel=3, dropout=0.0),
             "laat": LAATParams(embed_dim=8, hidden=8, projection=8, dropout=0.0)}
    for name in ("caml", "laat"):
        torch.manual_seed(0)
        model = models.build_model(name, sizes[name], labels, train_texts=texts)
        for unit, perturbation in (("token", "mask"), ("word", "delete")):
            kw = dict(unit=unit, perturbation=perturbation, code_set="gold", progress=False)
            fast = faithfulness_discrete(model, docs, rat, batch_size=4, **kw)
            slow = faithfulness_loop(model, docs, rat, **kw)
            assert_same(fast, slow)
        tab = random_scores(g, model, docs, labels)
        fast = faithfulness_scored(model, docs, tab, code_set="gold", batch_size=8, progress=False)
        slow = faithfulness_loop(model, docs, tab, kind="eraser", code_set="gold", progress=False)
        assert_same(fast, slow)


# --------------------------------------------------------------------------------------------
# incremental CAML path (mask perturbation)
# --------------------------------------------------------------------------------------------
def _tiny_caml(texts, labels, kernel, seed=0):
    models = pytest.importorskip("rationale_kit.models")
    from rationale_kit.core.config import CAMLParams

    torch.manual_seed(seed)
    params = CAMLParams(embed_dim=8, filters=6, kernel=kernel, dropout=0.3)
    model = models.build_model("caml", params, labels, texts, w2v=None)
    with torch.no_grad():  # a non-zero mask embedding, so masked units still feed the convolution
        model.embedding.weight[model.tokenizer.mask_id].normal_()
    return model


def _edge_corpus(seed):
    g, texts, labels, docs = corpus(n_notes=5, n_labels=8, seed=seed)
    texts = texts[:4] + ["t1 t2 ."]  # shorter than the largest kernels
    docs = docs_frame(texts, [list(c) for c in docs.codes])
    rows = []
    for nid, text, gold in zip(docs.note_id, docs.text, docs.codes):
        for i, code in enumerate(gold[:2]):
            if i == 0:  # spans touching the note's start and its end (the zero-padded edges)
                rows += [(nid, str(code), 0, 5, "", "llm"), (nid, str(code), len(text) - 6, len(text), "", "llm")]
            else:
                s = int(g.integers(0, max(1, len(text) - 12)))
                rows.append((nid, str(code), s, s + 10, "", "llm"))
            rows.append((nid, str(code), 0, 2, "", "entity"))
            rows.append((nid, str(code), max(0, len(text) - 3), len(text), "", "entity"))
    return g, texts, labels, docs, spans(rows)


class _Calls:
    def __init__(self, model):
        self.rows = 0
        self.handle = model.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.rows += args[0].shape[0]


@pytest.fixture(params=["dense", "local", "mixed"])
def caml_route(request, monkeypatch):
    """Every row through the dense route, every row through the local one, or the default split."""
    import rationale_kit.metrics.faithfulness.engine as F

    fraction = {"dense": -1.0, "local": 2.0, "mixed": F._LOCAL_FRACTION}[request.param]
    monkeypatch.setattr(F, "_LOCAL_FRACTION", fraction)
    return request.param


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 7, 10])
def test_caml_incremental_equals_loop_discrete(kernel, caml_route):
    g, texts, labels, docs, rat = _edge_corpus(seed=6)
    model = _tiny_caml(texts, labels, kernel)
    for unit in ("token", "word"):
        kw = dict(unit=unit, perturbation="mask", code_set="gold", seed=2, progress=False)
        calls = _Calls(model)
        inc = faithfulness_discrete(model, docs, rat, batch_size=3, **kw)
        calls.handle.remove()
        assert calls.rows == 0  # the model's forward never runs (base from the cached pre-activations)
        calls = _Calls(model)
        plain = faithfulness_discrete(model, docs, rat, batch_size=3, incremental=False, **kw)
        calls.handle.remove()
        assert calls.rows > len(docs)
        slow = faithfulness_loop(model, docs, rat, kind="discrete", **kw)
        assert_same(inc, slow)
        assert_same(plain, slow)
        assert_same(inc, plain)
        assert (inc.value.abs() > 1e-4).any()  # the perturbations do move the probabilities


@pytest.mark.parametrize("variant,kernel,unit", [
    ("eraser", 3, "token"), ("eraser", 4, "word"), ("edin", 5, "word"), ("edin", 6, "token"),
])
def test_caml_incremental_equals_loop_scored(variant, kernel, unit, caml_route):
    g, texts, labels, docs, _ = _edge_corpus(seed=7)
    model = _tiny_caml(texts, labels, kernel, seed=1)
    tab = random_scores(g, model, docs, labels)
    kw = dict(unit=unit, perturbation="mask", code_set="gold", seed=4, progress=False, word_steps=8)
    calls = _Calls(model)
    inc = faithfulness_scored(model, docs, tab, variant=variant, batch_size=7, **kw)
    calls.handle.remove()
    assert calls.rows == 0
    plain = faithfulness_scored(model, docs, tab, variant=variant, batch_size=7, incremental=False, **kw)
    slow = faithfulness_loop(model, docs, tab, kind=variant, **kw)
    assert_same(inc, slow)
    assert_same(plain, slow)
    assert (inc.value.abs() > 1e-4).any()


def test_caml_incremental_only_for_mask_and_eval_caml():
    g, texts, labels, docs, rat = _edge_corpus(seed=8)
    model = _tiny_caml(texts, labels, 4)
    model.train()  # the engine evaluates in eval mode and restores the mode afterwards
    kw = dict(unit="token", code_set="gold", progress=False)
    calls = _Calls(model)
    out = faithfulness_discrete(model, docs, rat, perturbation="mask", **kw)
    assert calls.rows == 0 and model.training
    calls.rows = 0
    dele = faithfulness_discrete(model, docs, rat, perturbation="delete", **kw)
    calls.handle.remove()
    assert calls.rows > len(docs)  # deletion changes the length: batched forward passes
    assert_same(dele, faithfulness_loop(model, docs, rat, perturbation="delete", **kw))
    model.eval()
    assert_same(out, faithfulness_loop(model, docs, rat, perturbation="mask", **kw))


def test_sources_scored_together_equal_sources_scored_apart():
    """One call over a concatenation of source tables gives each source's rows of separate calls;
    a group column that only some tables have stays missing (not the string 'nan')."""
    g, texts, labels, docs, rat = _edge_corpus(seed=9)
    model = _tiny_caml(texts, labels, 3)
    kw = dict(unit="token", perturbation="mask", code_set="gold", seed=1, progress=False)
    a = rat[rat.source == "llm"].drop(columns=["source"]).assign(source="llm")
    b = rat[rat.source == "entity"].assign(method="exact_code")
    together = faithfulness_discrete(model, docs, pd.concat([a, b], ignore_index=True), **kw)
    apart = pd.concat([faithfulness_discrete(model, docs, a, **kw), faithfulness_discrete(model, docs, b, **kw)],
                      ignore_index=True)
    assert together["method"].isna().sum() == (together.source == "llm").sum() > 0
    assert set(together.loc[together.source == "entity", "method"]) == {"exact_code"}
    assert_same(together.drop(columns=["method"]), apart.drop(columns=["method"]))


# --------------------------------------------------------------------------------------------
# chunk reuse (PLM-ICD, mask perturbation)
# --------------------------------------------------------------------------------------------
class _EncoderRows:
    """Counts the chunks the PLM-ICD encoder reads."""

    def __init__(self, model):
        self.rows = 0
        self.handle = model.encoder.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        self.rows += kwargs["inputs_embeds"].shape[0]


@pytest.fixture(scope="module")
def tiny_plm(tmp_path_factory):
    pytest.importorskip("transformers")
    from test_models import _tiny_encoder

    from rationale_kit.core.config import PLMICDParams
    from rationale_kit.models import build_model

    g, texts, labels, docs = corpus(n_notes=4, n_labels=6, seed=11)
    path = _tiny_encoder(tmp_path_factory.mktemp("plm"), texts * 2, chunk_size=8)
    torch.manual_seed(3)
    model = build_model("plm_icd", PLMICDParams(encoder_path=path, chunk_size=8, max_chunks=6, projection=5), labels)
    return g, labels, docs, model.eval()


def _three_runs(model, docs, table, kind, kw, batch_size, word_steps, counter):
    """The engine with its incremental path, without it, and the loop on ``table`` (``kind``:
    discrete, or a scored variant with ``word_steps``); returns the three tables and the model
    rows ``counter`` (a forward hook with ``rows`` and ``handle``) saw in each engine run."""
    kw = dict(kw) if kind == "discrete" else {**kw, "word_steps": word_steps}
    if kind == "discrete":
        run = lambda inc: faithfulness_discrete(model, docs, table, batch_size=batch_size, incremental=inc, **kw)  # noqa: E731
    else:
        run = lambda inc: faithfulness_scored(model, docs, table, variant=kind, batch_size=batch_size,  # noqa: E731
                                              incremental=inc, **kw)
    reuse = run(True)
    reuse_rows, counter.rows = counter.rows, 0
    plain = run(False)
    plain_rows = counter.rows
    counter.handle.remove()
    return reuse, plain, faithfulness_loop(model, docs, table, kind=kind, **kw), reuse_rows, plain_rows


@pytest.mark.parametrize("kind", ["discrete", "eraser", "edin"])
def test_plm_chunk_reuse_equals_loop(tiny_plm, kind):
    g, labels, docs, model = tiny_plm
    kw = dict(unit="token", perturbation="mask", code_set="gold", seed=5, progress=False)
    table = random_spans(g, docs, labels) if kind == "discrete" else random_scores(g, model, docs, labels)
    reuse, plain, slow, reuse_rows, plain_rows = _three_runs(model, docs, table, kind, kw, 4, 5, _EncoderRows(model))
    assert_same(reuse, slow, tol=2e-6)
    assert_same(plain, slow, tol=2e-6)
    assert (reuse.value.abs() > 1e-4).any()
    assert reuse_rows < plain_rows  # unchanged and repeated chunks are not encoded again


def test_note_cache_shared_across_calls_and_invalidated_by_training():
    from rationale_kit.metrics.faithfulness import NoteCache

    g, texts, labels, docs, rat = _edge_corpus(seed=12)
    model = _tiny_caml(texts, labels, 3)
    tab = random_scores(g, model, docs, labels)
    kw = dict(unit="token", perturbation="mask", code_set="gold", seed=3, progress=False)
    cache = NoteCache()
    first = faithfulness_discrete(model, docs, rat, cache=cache, **kw)
    assert cache._notes and cache._caml  # filled by the first call
    second = faithfulness_scored(model, docs, tab, cache=cache, **kw)
    assert_same(first, faithfulness_discrete(model, docs, rat, **kw), tol=0)
    assert_same(second, faithfulness_scored(model, docs, tab, **kw), tol=0)
    with torch.no_grad():  # an in-place update, as an optimiser step makes
        model.conv.weight.mul_(1.5)
    after = faithfulness_discrete(model, docs, rat, cache=cache, **kw)
    assert_same(after, faithfulness_loop(model, docs, rat, **kw))
    assert np.abs(after.value.to_numpy() - first.sort_index().value.to_numpy()).max() > 1e-4
    small = NoteCache(max_bytes=1)  # nothing fits: every call recomputes, results unchanged
    assert_same(faithfulness_discrete(model, docs, rat, cache=small, **kw), after, tol=0)
    assert not small._caml


# --------------------------------------------------------------------------------------------
# finding (b): size-controlled comparisons
def test_attention_size_matched_takes_as_many_units_as_the_entity_rationale():
    from rationale_kit.workbook.protocols.faithfulness import attention_size_matched_spans

    soft = pd.DataFrame({"note_id": ["n1"] * 5 + ["n2"] * 2, "code": ["A"] * 7, "source": "attention", "method": "attention",
                         "model": "caml", "unit": [0, 1, 2, 3, 4, 0, 1], "start": [0, 5, 10, 15, 20, 0, 5],
                         "end": [4, 9, 14, 19, 24, 4, 9], "score": [0.1, 0.5, 0.05, 0.3, 0.05, 0.6, 0.4]})
    entity = pd.DataFrame({"note_id": ["n1"], "code": ["A"], "start": [5], "end": [12]})
    out = attention_size_matched_spans(soft, "caml", entity)
    # the entity span [5, 12) covers units 1 and 2: k = 2, the two best units are 1 (0.5) and 3 (0.3);
    # n2 has no entity rationale and is left out
    assert out[["note_id", "start", "end", "k"]].values.tolist() == [["n1", 5, 9, 2], ["n1", 15, 19, 2]]


def test_attention_vs_entity_raw_minus_random_and_size_matched():
    from rationale_kit.core.config import load_profile
    from rationale_kit.workbook.protocols.faithfulness import SIZE_MATCHED, attention_vs_entity

    prof = load_profile("smoke", {"evaluation": {"bootstrap_resamples": 200, "min_notes": 0}})
    att, ent, sm = "attention (top-10)", "entity (exact_code)", SIZE_MATCHED.name
    comp = {att: ({"n1": 0.6, "n2": 0.4}, {"n1": 0.5, "n2": 0.1}), ent: ({"n1": 0.2, "n2": 0.1}, {"n1": 0.15, "n2": 0.05}),
            sm: ({"n1": 0.3, "n2": 0.2}, {"n1": 0.2, "n2": 0.2})}
    rows = []
    for src, (rat, rnd) in comp.items():
        for n in rat:
            rows += [("caml", src, "comprehensiveness", "rationale", n, "A", rat[n], np.nan),
                     ("caml", src, "comprehensiveness", "random", n, "A", rnd[n], np.nan),
                     ("caml", src, "sufficiency", "rationale", n, "A", 1 - rat[n], np.nan),
                     ("caml", src, "sufficiency", "random", n, "A", 1 - rnd[n], np.nan)]
    agg = pd.DataFrame(rows, columns=["model", "source", "measure", "control", "note_id", "code", "value", "k"])
    v = attention_vs_entity(agg, 10, prof, "toy")
    c = v[v.measure == "comprehensiveness"].set_index("control")
    assert list(c.index) == ["raw", "minus_random", "size_matched"]
    # raw: (0.6 + 0.4) / 2 - (0.2 + 0.1) / 2 = 0.35
    assert c.loc["raw", "effect"] == pytest.approx(0.35)
    # minus random: attention (0.1 + 0.3) / 2 = 0.2, entity (0.05 + 0.05) / 2 = 0.05
    assert c.loc["minus_random", "a"] == pytest.approx(0.2) and c.loc["minus_random", "effect"] == pytest.approx(0.15)
    # size matched: (0.3 + 0.2) / 2 - 0.15 = 0.1
    assert c.loc["size_matched", "a"] == pytest.approx(0.25) and c.loc["size_matched", "effect"] == pytest.approx(0.1)
    both = v[v.measure == "both"]
    assert both.control.tolist() == ["raw", "minus_random", "size_matched"] and both.units.str.startswith("combined").all()
    assert v.interval_method.iloc[0] == prof.evaluation.interval_method and 0 <= v.seed_agreement.iloc[0] <= 1


def _plm_loop_reference(tiny_plm):
    """Random spans and scores of the tiny PLM-ICD's notes, the settings, and the loop's discrete
    and ERASER tables for them: what the chunk-store tests compare the engine with."""
    g, labels, docs, model = tiny_plm
    table = random_spans(g, docs, labels)
    scores = random_scores(g, model, docs, labels)
    kw = dict(unit="token", perturbation="mask", code_set="gold", seed=5, progress=False)
    return (table, scores, kw, faithfulness_loop(model, docs, table, kind="discrete", **kw),
            faithfulness_loop(model, docs, scores, kind="eraser", **kw))


def test_plm_chunk_store_shared_by_pairs_and_calls(tiny_plm):
    """The PLM-ICD chunk path keeps the note's own chunks in the ``NoteCache`` (encoded once for
    the calls sharing it) and every distinct perturbed chunk once per note and call, across
    groups of rows: values equal the loop within 1e-6 whatever the group size, and a second
    call with the same cache encodes no base chunk again."""
    import rationale_kit.metrics.faithfulness.engine as F
    from rationale_kit.metrics.faithfulness import NoteCache

    g, labels, docs, model = tiny_plm
    table, scores, kw, slow_d, slow_e = _plm_loop_reference(tiny_plm)
    n_chunks = sum(-(-min(len(model.tokenizer.encode(t).ids), 48) // 8) for t in docs.text)
    for elements in (F._CHUNK_ELEMENTS, 1):  # one group per note; one row per group
        old = F._CHUNK_ELEMENTS
        F._CHUNK_ELEMENTS = elements
        try:
            cache = NoteCache()
            enc = _EncoderRows(model)
            d = faithfulness_discrete(model, docs, table, batch_size=4, cache=cache, **kw)
            first = enc.rows
            base_encoded = cache.chunk_stats["encoded"]
            e = faithfulness_scored(model, docs, scores, batch_size=4, cache=cache, **kw)
            enc.handle.remove()
        finally:
            F._CHUNK_ELEMENTS = old
        assert_same(d, slow_d, tol=1e-6)
        assert_same(e, slow_e, tol=1e-6)
        st = cache.chunk_stats
        assert 0 < st["encoded"] < st["lookups"] + n_chunks
        assert len(cache._plm) == len(docs)  # the note's own chunks, kept for the next call
        # the chunks the encoder read: the notes' base passes (one per call), the notes' own chunks
        # once, then only the perturbed chunks not seen before
        assert first <= base_encoded + n_chunks
        assert enc.rows - first <= (st["encoded"] - base_encoded) + n_chunks


def test_plm_base_pass_and_all_mask_chunk_come_from_the_cache(tiny_plm, monkeypatch):
    """With a shared ``NoteCache`` the PLM-ICD path encodes nothing but chunk segments: the full
    notes' probabilities come from the cached chunk states (no separate base pass), each note's own
    chunks are encoded once over both calls, and the all-mask chunk (the same in every note) once
    per length over all notes and calls; values equal the loop within 1e-6."""
    from rationale_kit.metrics.faithfulness import NoteCache, cache as cache_mod, chunk_reuse

    g, labels, docs, model = tiny_plm
    table, scores, kw, slow_d, slow_e = _plm_loop_reference(tiny_plm)
    segments: list[bytes] = []
    original = chunk_reuse._encode_chunks

    def recording(model_, segs, *args, **kwargs):
        segments.extend(np.asarray(x).tobytes() for x in segs)
        return original(model_, segs, *args, **kwargs)

    monkeypatch.setattr(chunk_reuse, "_encode_chunks", recording)
    monkeypatch.setattr(cache_mod, "_encode_chunks", recording)
    cache = NoteCache()
    enc = _EncoderRows(model)
    d = faithfulness_discrete(model, docs, table, batch_size=4, cache=cache, **kw)
    e = faithfulness_scored(model, docs, scores, batch_size=4, cache=cache, **kw)
    enc.handle.remove()
    assert_same(d, slow_d, tol=1e-6)
    assert_same(e, slow_e, tol=1e-6)
    assert enc.rows == len(segments) == cache.chunk_stats["encoded"]  # no base forward pass
    mask_id = int(model.tokenizer.mask_id)
    all_mask = [k for k in segments if (np.frombuffer(k, dtype=np.int64) == mask_id).all()]
    assert all_mask and len(all_mask) == len(set(all_mask))  # once per length over notes and calls
    assert set(all_mask) == set(cache.plm_shared)
    s = model.chunk_size
    for text in docs.text:
        ids = np.asarray(model.tokenizer.encode(text).ids, dtype=np.int64)[: s * model.max_chunks]
        for a in range(0, len(ids), s):
            assert segments.count(ids[a: a + s].tobytes()) == 1  # the note's own chunk, encoded once


def _bench_module(name: str = "faithfulness"):
    """benchmarks/<name>.py as a module."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_counts_the_chunks_the_engine_and_the_loop_encode(tiny_plm):
    """benchmarks/faithfulness.py's ``plm_chunk_counts`` counts chunks without running the encoder:
    its counts equal the encoder rows of the real engine and loop runs on the same workload, and
    the perfect store encodes no more than the engine, the engine fewer than the loop."""
    from rationale_kit.metrics.faithfulness import NoteCache

    bench = _bench_module()
    _, labels, docs, model = tiny_plm
    docs = docs.assign(text=[t + " " + t for t in docs.text])  # longer than a random span (60 chars)
    gold = dict(zip(docs.note_id, docs.codes))
    c = bench.plm_chunk_counts(model, docs, gold, np.random.default_rng(1), len(docs))
    assert c["pairs"] == len(docs) and c["floor"] <= c["engine"] < c["loop"]

    one = {n: list(gold[n][:1]) for n in docs.note_id}  # the same workload, really encoded
    jobs = bench.workload(model, docs, one, np.random.default_rng(1), "notebook")
    kw = dict(code_set="gold", gold=one, progress=False, seed=0)
    enc = _EncoderRows(model)
    cache = NoteCache()
    for fn, _, table, args in jobs:
        fn(model, docs, table, batch_size=bench.BATCH, cache=cache, **args, **kw)
    engine_rows, enc.rows = enc.rows, 0
    for _, kind, table, args in jobs:
        faithfulness_loop(model, docs, table, kind=kind, **args, **kw)
    enc.handle.remove()
    assert (engine_rows, enc.rows) == (c["engine"], c["loop"])


def test_the_profile_section_becomes_a_spec_in_one_place():
    from rationale_kit.core.config import load_profile
    from rationale_kit.metrics.faithfulness import FaithfulnessSpec

    f = load_profile("default").faithfulness
    d, e, w = (FaithfulnessSpec.from_profile(f, k, seed=3, model_name="caml") for k in ("discrete", "eraser", "edin"))
    assert (d.kind, d.unit, d.perturbation, d.code_set, d.missing, d.batch_size) == ("discrete", f.unit, f.perturbation,
                                                                                     f.code_set, f.missing, f.batch_size)
    assert e.aopc_k == tuple(f.aopc_k) and e.unit == f.unit and w.unit == f.edin_unit and w.word_steps == f.word_steps
    assert d.seed == 3 and d.model_name == "caml" and d.max_pairs is None  # the workbook samples pairs itself
    # one set of defaults: the spec and the keyword functions both use the incremental paths
    assert FaithfulnessSpec().incremental is True


# --------------------------------------------------------------------------------------------
# LAAT state reuse (mask perturbation, CPU)
# --------------------------------------------------------------------------------------------
def _tiny_laat(texts, labels, seed=0):
    models = pytest.importorskip("rationale_kit.models")
    from rationale_kit.core.config import LAATParams

    torch.manual_seed(seed)
    model = models.build_model("laat", LAATParams(embed_dim=8, hidden=6, projection=5, dropout=0.2), labels,
                               train_texts=texts)
    with torch.no_grad():  # a non-zero mask embedding, so masked units still feed the LSTMs
        model.embedding.weight[model.tokenizer.mask_id].normal_()
    return model.eval()


@pytest.mark.parametrize("kind", ["discrete", "eraser", "edin"])
def test_laat_state_reuse_equals_loop(kind, monkeypatch):
    """The LAAT path (notes of different lengths, spans at the edges, mask) equals the loop and the
    batched forward passes (which pad the shorter notes) within 1e-6; deletion takes the batched
    path and equals the loop too. Edin's rows run in several batches of notes."""
    from rationale_kit.metrics.faithfulness import lstm_reuse

    if kind == "edin":
        monkeypatch.setattr(lstm_reuse, "_LAAT_ROWS", 7)

    g, texts, labels, docs, rat = _edge_corpus(seed=12)
    model = _tiny_laat(texts, labels)
    assert lstm_reuse._laat_reuse_ok(model)
    for unit, perturbation in (("token", "mask"), ("word", "mask"), ("token", "delete")):
        kw = dict(unit=unit, perturbation=perturbation, code_set="gold", seed=3, progress=False)
        table = rat if kind == "discrete" else random_scores(g, model, docs, labels)
        reuse, plain, slow, reuse_rows, plain_rows = _three_runs(model, docs, table, kind, kw, 3, 6, _Calls(model))
        assert_same(reuse, slow, tol=1e-6)
        assert_same(plain, slow, tol=1e-6)
        assert (reuse.value.abs() > 1e-4).any()  # the perturbations do move the probabilities
        if perturbation == "mask":
            assert reuse_rows <= len(docs) < plain_rows  # only the full notes run the model
        else:
            assert reuse_rows == plain_rows


def test_benchmark_counts_the_laat_steps_and_times_a_step():
    """benchmarks/faithfulness.py's ``StepCounter`` counts the steps the LAAT path computes for its
    perturbed rows, by hand: one row of 12 steps changed at step 5 of the forward direction joins
    at step 4 (its group of 4) and, with a tolerance every state meets, leaves at the check of
    step 8: 4 steps computed of 2 x 12; the notes' own recurrences (tolerance < 0) are not counted.
    ``lstm_step_costs`` times both recurrences."""
    from rationale_kit.metrics.faithfulness import lstm_reuse

    bench = _bench_module()
    _, texts, labels, _, _ = _edge_corpus(seed=12)
    model = _tiny_laat(texts, labels)
    dirs = lstm_reuse._laat_dirs(model)
    S, H = 12, dirs[0].H
    with torch.no_grad():
        gx = [d.gates_x(torch.arange(5)) for d in dirs]
    X = np.zeros((2, 1, S), dtype=np.int64)
    diff = np.zeros((2, 1, S), dtype=bool)
    diff[0, 0, 5] = True
    zeros = torch.zeros(S + 1, H)
    args = (dirs, gx, X, diff, np.array([S]), [zeros, zeros], [zeros, zeros], np.zeros(1, dtype=np.int64))
    counter = bench.StepCounter()
    try:
        with torch.no_grad():
            out = lstm_reuse._recur(*args, tol=1e9)
            lstm_reuse._recur(*args, tol=-1.0)  # a base's own recurrence: not counted
    finally:
        counter.remove()
    assert lstm_reuse._recur is counter.orig
    assert out[0][1].tolist() == [4, 5, 6, 7] and len(out[1][0]) == 0
    assert (counter.computed, counter.full) == (4, 24)
    path_us, lstm_us = bench.lstm_step_costs(model, rows=8, steps=4, reps=1)
    assert path_us > 0 and lstm_us > 0


def test_notebook_benchmark_pairs_each_engine_call_of_notebook_05_with_the_loop(smoke_series):
    """benchmarks/faithfulness_notebook.py on the shared smoke run: notebook 05's three engine calls
    for CAML, each timed and paired with the loop on the same rows (values within float32 noise),
    and ``faithfulness.run_spec`` is itself again afterwards."""
    from rationale_kit.metrics import faithfulness

    smoke_series.require("04_alignment")
    bench = _bench_module("faithfulness_notebook")
    orig = faithfulness.run_spec
    calls = bench.main(["--profile", "smoke", "--artifacts", str(smoke_series.artifacts), "--models", "caml",
                        "--batched"])
    assert faithfulness.run_spec is orig
    assert sorted(calls.kind) == ["discrete", "edin", "eraser"] and set(calls.model) == {"caml"}
    assert (calls.rows > 0).all() and (calls[["engine_s", "loop_s", "batched_s"]] >= 0).all().all()
    assert (calls.max_abs_diff < 1e-4).all() and (calls.batched_max_abs_diff < 1e-4).all()
    assert calls.lstm_steps_computed.isna().all()  # no LAAT path for CAML


def test_laat_state_reuse_only_for_the_package_laat_in_eval_mode():
    from rationale_kit.metrics.faithfulness import lstm_reuse

    g, texts, labels, docs, _ = _edge_corpus(seed=13)
    model = _tiny_laat(texts, labels)
    model.train()
    assert not lstm_reuse._laat_reuse_ok(model)
    model.eval()

    class Changed(type(model)):
        def hidden(self, embeds, mask):
            return super().hidden(embeds, mask) * 2

    model.__class__ = Changed
    assert not lstm_reuse._laat_reuse_ok(model)
    model.__class__ = Changed.__mro__[1]
    assert lstm_reuse._laat_reuse_ok(model)
    model.head = torch.nn.Module()  # a replaced head: not the computation the path reproduces
    assert not lstm_reuse._laat_reuse_ok(model)
