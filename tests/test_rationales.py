"""Rationale representation and model rationales, on hand-computed examples and a tiny
contract-conforming coding model (docs/INTERFACES.md) written here."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from rationale_kit import rationales as R
from rationale_kit.core.records import SCORE_COLUMNS, DataError, Document

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# a tiny model following the coding-model contract
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    ids: torch.Tensor  # int64 [n]
    offsets: torch.Tensor  # int64 [n, 2]


class ModelOutput(NamedTuple):
    logits: torch.Tensor
    attention: torch.Tensor


class WordTokenizer:
    pad_id, mask_id = 0, 1

    def __init__(self, vocab):
        self.vocab = {w: i + 3 for i, w in enumerate(vocab)}  # 2 = unknown

    def encode(self, text: str) -> Encoded:
        ms = list(re.finditer(r"\w+", text))
        ids = [self.vocab.get(m.group().lower(), 2) for m in ms]
        return Encoded(torch.tensor(ids, dtype=torch.long),
                       torch.tensor([m.span() for m in ms], dtype=torch.long).reshape(-1, 2))


class TinyLabelAttention(nn.Module):
    """Embedding -> tanh projection -> per-label attention (LAAT-like) -> per-label logit."""

    def __init__(self, labels, vocab, dim=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.labels = list(labels)
        self.tokenizer = WordTokenizer(vocab)
        V, L = len(vocab) + 3, len(labels)
        self.emb = nn.Embedding(V, dim, padding_idx=0)
        self.proj = nn.Linear(dim, dim)
        self.u = nn.Parameter(torch.randn(L, dim, generator=g))
        self.w = nn.Parameter(torch.randn(L, dim, generator=g))
        self.b = nn.Parameter(torch.randn(L, generator=g) * 0.1)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(V, dim, generator=g))
            self.proj.weight.copy_(torch.randn(dim, dim, generator=g) * 0.7)

    def collate(self, encs):
        T = max(len(e.ids) for e in encs)
        ids = torch.zeros(len(encs), T, dtype=torch.long)
        mask = torch.zeros(len(encs), T, dtype=torch.bool)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = True
        return ids, mask

    def embed(self, input_ids):
        return self.emb(input_ids)

    def forward_from_embeddings(self, embeds, attention_mask=None, label_idx=None):
        h = torch.tanh(self.proj(embeds))
        u, w, b = (self.u, self.w, self.b) if label_idx is None else (
            self.u[label_idx], self.w[label_idx], self.b[label_idx])
        s = torch.einsum("bte,ke->bkt", h, u).float()
        if attention_mask is not None:
            s = s.masked_fill(~attention_mask[:, None, :], float("-inf"))
        a = torch.softmax(s, dim=-1)
        v = torch.einsum("bkt,bte->bke", a, h)
        return ModelOutput((v * w).sum(-1) + b, a)

    def forward(self, input_ids, attention_mask=None, label_idx=None):
        return self.forward_from_embeddings(self.embed(input_ids), attention_mask, label_idx)


VOCAB = "patient has type 2 diabetes mellitus and hypertension no pneumonia atrial fibrillation".split()
LABELS = ["E11.9", "I10", "J18.9", "I48.91"]
DOCS = pd.DataFrame(
    {
        "note_id": ["n1", "n2"],
        "text": ["Patient has type 2 diabetes mellitus and hypertension.",
                 "No pneumonia;  atrial fibrillation and\nhypertension noted today"],
        "codes": [["E11.9", "I10"], ["I48.91", "I10"]],
        "split": ["test", "test"],
    }
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyLabelAttention(LABELS, VOCAB)


# --------------------------------------------------------------------------------------------
# spans <-> units
# --------------------------------------------------------------------------------------------
TEXT = "Patient has type 2 diabetes."
WORDS = np.array([[0, 7], [8, 11], [12, 16], [17, 18], [19, 27]])


def test_to_token_mask_words_and_pieces():
    assert R.to_token_mask([(12, 27)], TEXT, WORDS).tolist() == [False, False, True, True, True]
    # one overlapping character is enough; several spans are united
    assert R.to_token_mask([(9, 10), (26, 28)], TEXT, WORDS).tolist() == [False, True, False, False, True]
    # word pieces: "Pat" "ient" "has"; a span on "ient" selects only that piece
    pieces = np.array([[0, 3], [3, 7], [8, 11]])
    assert R.to_token_mask([(4, 6)], TEXT, pieces).tolist() == [False, True, False]
    spans = pd.DataFrame({"note_id": ["a"], "code": ["E11.9"], "start": [0], "end": [3]})
    assert R.to_token_mask(spans, TEXT, pieces).tolist() == [True, False, False]
    with pytest.raises(DataError):
        R.to_token_mask([(20, 40)], TEXT, WORDS)


def test_to_word_units_spans_and_scores():
    text = "Hypertension 2019 and 3 cats"
    w = R.to_word_units(text, [(0, 5)])
    # MDACE tokens: numbers above 10 dropped -> hypertension, and, 3, cats
    assert w["token"].tolist() == ["hypertension", "and", "3", "cats"]
    assert w["value"].tolist() == [1.0, 0.0, 0.0, 0.0]
    pieces = np.array([[0, 5], [5, 12], [13, 17], [18, 21], [22, 23]])
    scores = np.array([0.2, 0.3, 0.05, 0.1, 0.35])
    w = R.to_word_units(text, offsets=pieces, scores=scores)
    assert np.allclose(w["value"], [0.5, 0.1, 0.35, 0.0])
    w = R.to_word_units(text, offsets=pieces, scores=scores, reduce="max")
    assert np.allclose(w["value"], [0.3, 0.1, 0.35, 0.0])


def _soft(scores, offsets, note="n", code="C", source="attention", method="attention", model="m"):
    n = len(scores)
    return pd.DataFrame({"note_id": note, "code": code, "source": source, "method": method,
                         "model": model, "unit": np.arange(n), "start": offsets[:, 0],
                         "end": offsets[:, 1], "score": scores})


def test_soft_to_spans_topk_and_threshold():
    offs = np.array([[0, 3], [4, 8], [9, 12], [13, 15], [16, 20], [21, 24]])
    table = _soft(np.array([0.1, 0.3, 0.25, 0.05, 0.2, 0.1]), offs)
    top = R.soft_to_spans(table, topk=3)
    assert top[["start", "end"]].values.tolist() == [[4, 12], [16, 20]]  # units 1-2 merged, 4
    assert set(top["method"]) == {"topk"} and set(top["source"]) == {"attention"}
    assert set(top["soft_method"]) == {"attention"}
    assert np.allclose(top["score"], [0.55, 0.2])
    thr = R.soft_to_spans(table, threshold=0.15)
    assert thr[["start", "end"]].values.tolist() == [[4, 12], [16, 20]]
    assert R.soft_to_spans(table, threshold=0.22)[["start", "end"]].values.tolist() == [[4, 12]]
    # scores not summing to one are normalised first: doubling changes nothing
    thr2 = R.soft_to_spans(table.assign(score=table["score"] * 2), threshold=0.22)
    assert thr2[["start", "end"]].values.tolist() == [[4, 12]]
    two = pd.concat([table, table.assign(code="D")])
    assert len(R.soft_to_spans(two, topk=1)) == 2
    with pytest.raises(ValueError):
        R.soft_to_spans(table)


def test_jsonl_roundtrip_keeps_method_and_model(tmp_path):
    docs = DOCS
    spans = pd.DataFrame({"note_id": ["n1"], "code": ["I10"], "start": [41], "end": [53],
                          "granularity": [""], "source": ["entity"], "method": ["exact_code"],
                          "model": ["entity_linker"]})
    path = tmp_path / "s.jsonl"
    R.spans_to_jsonl(spans, path, docs)
    back = R.spans_from_jsonl(path, docs)
    assert back.to_dict("records") == spans.to_dict("records")
    assert '"text": "hypertension"' in path.read_text()


def _pyarrow_ok():
    try:
        import pyarrow  # noqa: F401
        return True
    except Exception:
        return False


def test_table_column_check():
    with pytest.raises(DataError, match="missing"):
        R.table_kind(pd.DataFrame({"note_id": ["a"], "code": ["b"]}))
    assert R.table_kind(_soft(np.array([1.0]), np.array([[0, 1]]))) == "soft"


@pytest.mark.skipif(not _pyarrow_ok(), reason="pyarrow does not import in this environment")
def test_save_load_table(tmp_path):
    t = _soft(np.array([0.5, 0.5]), np.array([[0, 2], [3, 4]]))
    R.save_table(t, tmp_path / "a.parquet")
    back = R.load_table(tmp_path / "a.parquet", kind="soft")
    pd.testing.assert_frame_equal(back, t.astype({"unit": "int64", "start": "int64", "end": "int64"}))
    with pytest.raises(DataError):
        R.save_table(pd.DataFrame({"x": [1]}), tmp_path / "b.parquet")


# --------------------------------------------------------------------------------------------
# code sets
# --------------------------------------------------------------------------------------------
def test_codes_for_rationales():
    preds = pd.DataFrame({"note_id": ["n1", "n1", "n2", "zz"], "code": ["E11.9", "J18.9", "I10", "I10"],
                          "prob": [0.9, 0.7, 0.2, 0.9], "pred": [True, True, False, True]})
    both = R.codes_for_rationales(DOCS, preds, "both")
    assert both[["note_id", "code", "is_gold", "is_predicted"]].values.tolist() == [
        ["n1", "E11.9", True, True], ["n1", "I10", True, False], ["n1", "J18.9", False, True],
        ["n2", "I10", True, False], ["n2", "I48.91", True, False]]
    assert R.codes_for_rationales(DOCS, preds, "predicted")["code"].tolist() == ["E11.9", "J18.9"]
    gold = R.codes_for_rationales(DOCS, preds, "gold")
    assert len(gold) == 4 and gold.loc[gold.code == "I10", "prob"].fillna(-1).tolist() == [-1, 0.2]
    docs = [Document("n1", "x", ("A00",), "test")]
    assert R.codes_for_rationales(docs, None, "gold")["code"].tolist() == ["A00"]


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------
def test_attention_rationales_rows_offsets_and_missing(model):
    pairs = pd.DataFrame({"note_id": ["n1", "n1", "n2", "n2", "n2"],
                          "code": ["E11.9", "I10", "I48.91", "I10", "Z99.9"]})
    with pytest.warns(UserWarning, match="do not have|does not have"):
        res = R.attention_rationales(model, DOCS, pairs, model_name="tiny", batch_size=2)
    table = res.table
    assert list(table.columns) == SCORE_COLUMNS
    assert res.n_missing == 1 and res.missing.values.tolist() == [["n2", "Z99.9"]]
    sums = table.groupby(["note_id", "code"])["score"].sum()
    assert len(sums) == 4 and np.allclose(sums, 1.0, atol=1e-5)
    texts = dict(zip(DOCS.note_id, DOCS.text))
    for r in table.itertuples():
        assert re.fullmatch(r"\w+", texts[r.note_id][r.start:r.end])
    n1 = table[(table.note_id == "n1") & (table.code == "I10")]
    assert n1["unit"].tolist() == list(range(8))
    assert (n1.start.tolist(), n1.end.tolist()) == ([0, 8, 12, 17, 19, 28, 37, 41],
                                                     [7, 11, 16, 18, 27, 36, 40, 53])
    # the same numbers as one note alone with one label (padding and label batching are neutral)
    enc = model.tokenizer.encode(texts["n1"])
    ids, mask = model.collate([enc])
    with torch.no_grad():
        att = model(ids, mask, label_idx=torch.tensor([1])).attention[0, 0].numpy()
    assert np.allclose(n1["score"].to_numpy(), att, atol=1e-6)
    assert set(table["source"]) == {"attention"} and set(table["model"]) == {"tiny"}


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------
def test_integrated_gradients_completeness(model):
    pairs = pd.DataFrame({"note_id": ["n1", "n1", "n2", "n2"], "code": ["E11.9", "I10", "I48.91", "J18.9"]})
    res = R.gradient_rationales(model, DOCS, pairs, method="integrated_gradients", steps=16,
                                code_batch=3, absolute=False)
    d = res.diagnostics
    assert len(d) == 4
    assert (d["rel_error"] < 0.01).all(), d
    sums = res.table.groupby(["note_id", "code"])["score"].sum()
    for r in d.itertuples():
        assert abs(sums[(r.note_id, r.code)] - (r.logit - r.baseline_logit)) <= 0.01 * abs(r.logit - r.baseline_logit)
    # the real logits
    enc = model.tokenizer.encode(DOCS.text[0])
    ids, mask = model.collate([enc])
    with torch.no_grad():
        lg = model(ids, mask).logits[0]
    row = d[(d.note_id == "n1") & (d.code == "I10")].iloc[0]
    assert abs(row.logit - lg[1].item()) < 1e-5


def test_input_x_gradient_matches_single_code_autograd(model):
    pairs = pd.DataFrame({"note_id": ["n2"] * 3, "code": ["I48.91", "I10", "J18.9"]})
    res = R.gradient_rationales(model, DOCS, pairs, method="input_x_gradient", code_batch=3)
    enc = model.tokenizer.encode(DOCS.text[1])
    ids, mask = model.collate([enc])
    x = model.embed(ids).detach().requires_grad_(True)
    logit = model.forward_from_embeddings(x, mask, label_idx=torch.tensor([1])).logits[0, 0]
    (g,) = torch.autograd.grad(logit, x)
    expected = (x * g).sum(-1).abs()[0].detach().numpy()
    got = res.table[res.table.code == "I10"].sort_values("unit")["score"].to_numpy()
    assert np.allclose(got, expected, atol=1e-6)
    axg = R.gradient_rationales(model, DOCS, pairs, method="attention_x_gradient", code_batch=2).table
    assert len(axg) == 3 * len(enc.ids) and (axg["score"] >= 0).all()
    assert set(axg["method"]) == {"attention_x_gradient"} and set(axg["source"]) == {"gradient"}


def test_word_unit_scores_keep_mass(model):
    pairs = pd.DataFrame({"note_id": ["n1"], "code": ["I10"]})
    table = R.attention_rationales(model, DOCS, pairs).table
    words = R.word_unit_scores(table, DOCS)
    assert np.isclose(words["score"].sum(), 1.0, atol=1e-5)
    assert len(words) == len(R.to_word_units(DOCS.text[0], [])) == 8


def test_pair_rows_table_matches_one_frame_per_pair():
    """The soft rows gathered as arrays give the table that one DataFrame per pair gave: same
    columns, dtypes, order and values; a pair with no units adds no row; no pair: the typed empty
    table."""
    from rationale_kit.rationales.model import _PairRows
    from rationale_kit.rationales.tables import soft_table

    pairs = [("n1", "A", np.array([[0, 3], [4, 9]]), np.array([0.25, 0.75], dtype=np.float32)),
             ("n1", "B", np.zeros((0, 2), dtype=np.int64), np.array([], dtype=np.float32)),
             ("n2", "A", np.array([[1, 2], [2, 5], [6, 7]]), np.array([0.5, 0.125, 0.375]))]
    rows = _PairRows()
    by_hand = []
    for nid, code, off, sc in pairs:
        rows.add(nid, code, "attention", "attention", "caml", off, sc)
        n = len(sc)
        if n == 0:
            continue
        by_hand.append(pd.DataFrame({"note_id": [nid] * n, "code": [code] * n, "source": ["attention"] * n,
                                     "method": ["attention"] * n, "model": ["caml"] * n,
                                     "unit": np.arange(n, dtype=np.int64), "start": off[:, 0], "end": off[:, 1],
                                     "score": np.asarray(sc, dtype=np.float64)}))
    got = rows.table()
    pd.testing.assert_frame_equal(got, soft_table(by_hand))
    assert list(got.unit) == [0, 1, 0, 1, 2] and list(got.start) == [0, 4, 1, 2, 6]
    pd.testing.assert_frame_equal(_PairRows().table(), soft_table([]))
    with pytest.raises(ValueError, match=r"\(n1, A\): 1 scores for 2 unit offsets"):
        _PairRows().add("n1", "A", "attention", "attention", "caml", np.array([[0, 3], [4, 9]]), [0.5])


def test_soft_to_spans_equals_a_per_pair_reference():
    """``soft_to_spans`` (arrays, one pass) against the definition written per pair: top-k by
    score then position, threshold on the clipped, normalised scores, runs of consecutive units
    merged; ties, negative scores, unsorted units and pairs in first-appearance order included."""
    import numpy as np
    import pandas as pd

    from rationale_kit.rationales import soft_to_spans

    rng = np.random.default_rng(5)
    rows = []
    for p in range(40):
        n = int(rng.integers(1, 25))
        units = rng.permutation(n)
        sc = rng.choice([-0.2, 0.0, 0.1, 0.1, 0.3, 0.7], size=n) if p % 3 else rng.normal(size=n)
        for u, s in zip(units, sc):
            rows.append({"note_id": f"n{p % 7}", "code": f"C{p}", "source": "attention", "method": "m", "model": "x",
                         "unit": int(u), "start": int(u) * 4, "end": int(u) * 4 + 3, "score": float(s)})
    soft = pd.DataFrame(rows).sample(frac=1.0, random_state=2).reset_index(drop=True)

    def reference(table, topk=None, threshold=None):
        out = []
        for (nid, code, source, smethod, model), g in table.groupby(["note_id", "code", "source", "method", "model"], sort=False):
            g = g.sort_values("unit", kind="stable")
            u, s = g.unit.to_numpy(), g.score.to_numpy()
            pos = np.clip(s, 0, None)
            norm = pos / pos.sum() if pos.sum() > 0 else np.zeros_like(pos)
            sel = np.zeros(len(g), bool)
            if topk is not None:
                sel[np.lexsort((u, -s))[:topk]] = True
            else:
                sel = norm > threshold
            idx = list(np.flatnonzero(sel))
            runs = []
            for k in idx:
                if runs and u[k] == u[runs[-1][-1]] + 1:
                    runs[-1].append(k)
                else:
                    runs.append([k])
            for r in runs:
                out.append((nid, code, int(g.start.to_numpy()[r].min()), int(g.end.to_numpy()[r].max()), float(norm[r].sum())))
        return out

    for kw in (dict(topk=1), dict(topk=3), dict(topk=50), dict(threshold=0.05), dict(threshold=0.0), dict(threshold=0.9)):
        got = soft_to_spans(soft, **kw)
        assert list(zip(got.note_id, got.code, got.start, got.end, got.score)) == reference(soft, **kw), kw
        assert (got.method == ("topk" if "topk" in kw else "threshold")).all()
    assert soft_to_spans(soft.iloc[:0], topk=2).empty
