"""Bring your own coder: a small model defined only here (not a LabelAttentionModel), adapted through
the documented :class:`rationale_kit.models.adapter.Coder` protocol, gets attention and gradient
rationales, the faithfulness engine (equal to the naive loop within 1e-6), plausibility against gold
spans and ``explain``; and a local Hugging Face sequence classifier through :class:`HFClassifierCoder`."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import rationale_kit as rk
from rationale_kit.metrics.faithfulness import faithfulness_discrete, faithfulness_loop, faithfulness_scored
from rationale_kit.metrics.plausibility import span_plausibility
from rationale_kit.models.adapter import AdaptedCoder, Coder, HFClassifierCoder, as_coder, is_coding_model
from rationale_kit.rationales import attention_rationales, gradient_rationales, soft_to_spans

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# a coder written elsewhere: words, an embedding, one attention query and one output vector per label
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Units:
    ids: np.ndarray
    offsets: np.ndarray


class WordUnits:
    pad_id, mask_id = 0, 1

    def __init__(self, vocab):
        self.vocab = vocab

    def encode(self, text):
        offs = [m.span() for m in re.finditer(r"\w+", text)]
        return Units(np.array([self.vocab.get(text[s:e].lower(), 2) for s, e in offs], dtype=np.int64),
                     np.array(offs, dtype=np.int64).reshape(-1, 2))


class TinyCoder(nn.Module):
    """logit_l = w_l . sum_t a_lt tanh(x_t) + b_l with a_l = softmax_t(q_l . tanh(x_t)) over the units."""

    has_attention = True
    name = "tiny"

    def __init__(self, labels, vocab, dim=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.labels = list(labels)
        self.tokenizer = WordUnits(vocab)
        self.emb = nn.Embedding(len(vocab) + 3, dim)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(len(vocab) + 3, dim, generator=g))
        self.q = nn.Parameter(torch.randn(len(labels), dim, generator=g))
        self.w = nn.Parameter(torch.randn(len(labels), dim, generator=g))
        self.b = nn.Parameter(torch.randn(len(labels), generator=g) * 0.3)
        self.threshold = 0.5

    def embed(self, input_ids):
        return self.emb(input_ids)

    def label_logits(self, embeds, attention_mask, label_idx):
        h = torch.tanh(embeds)
        s = torch.einsum("kd,btd->bkt", self.q[label_idx], h)
        s = s.masked_fill(~attention_mask[:, None, :], float("-inf"))
        a = torch.softmax(s, -1)
        logits = (torch.einsum("bkt,btd->bkd", a, h) * self.w[label_idx]).sum(-1) + self.b[label_idx]
        return logits, a


WORDS = [f"w{i}" for i in range(30)]
LABELS = [f"C{i}" for i in range(6)]


def corpus(n=5, seed=0):
    g = np.random.default_rng(seed)
    texts = [" ".join(g.choice(WORDS, size=int(g.integers(8, 30)))) + "." for _ in range(n)]
    codes = [list(g.choice(LABELS, size=2, replace=False)) for _ in texts]
    docs = pd.DataFrame({"note_id": [f"n{i}" for i in range(n)], "text": texts, "codes": codes, "split": "test"})
    return g, docs


@pytest.fixture()
def coder():
    return AdaptedCoder(TinyCoder(LABELS, {w: i + 3 for i, w in enumerate(WORDS)}))


def pairs_of(docs):
    return docs.explode("codes")[["note_id", "codes"]].rename(columns={"codes": "code"}).reset_index(drop=True)


def test_protocol_and_wrapping():
    raw = TinyCoder(LABELS, {w: i + 3 for i, w in enumerate(WORDS)})
    assert isinstance(raw, Coder) and not is_coding_model(raw)
    wrapped = as_coder(raw)
    assert isinstance(wrapped, AdaptedCoder) and as_coder(wrapped) is wrapped and is_coding_model(wrapped)
    assert wrapped.threshold == 0.5 and wrapped.name == "tiny" and wrapped.labels == LABELS
    assert any(p is raw.emb.weight for p in wrapped.parameters())  # .to() and .eval() reach the coder

    class NoEmbed:
        labels, tokenizer = LABELS, WordUnits({})

    with pytest.raises(TypeError, match="embed"):
        as_coder(NoEmbed())


def test_attention_and_gradients_by_hand(coder):
    _, docs = corpus()
    pairs = pairs_of(docs)
    att = attention_rationales(coder, docs, pairs).table
    grad = gradient_rationales(coder, docs, pairs, method="input_x_gradient").table
    axg = gradient_rationales(coder, docs, pairs, method="attention_x_gradient").table
    raw = coder.coder
    for nid, text, codes in zip(docs.note_id, docs.text, docs.codes):
        enc = raw.tokenizer.encode(text)
        for code in codes:
            k = torch.tensor([LABELS.index(code)])
            x = raw.embed(torch.as_tensor(enc.ids)[None]).detach().requires_grad_(True)
            logit, a = raw.label_logits(x, torch.ones(1, len(enc.ids), dtype=torch.bool), k)
            (g,) = torch.autograd.grad(logit.sum(), x)
            want_ixg = (x * g).sum(-1)[0].abs().detach().numpy()
            want_axg = (a[0, 0] * g[0].norm(dim=-1)).detach().numpy()
            sel = lambda t: t[(t.note_id == nid) & (t.code == code)].sort_values("unit")  # noqa: E731
            assert np.array_equal(sel(att)[["start", "end"]].to_numpy(), enc.offsets)
            assert np.allclose(sel(att).score, a[0, 0].detach().numpy(), atol=1e-6)
            assert np.allclose(sel(grad).score, want_ixg, atol=1e-6)
            assert np.allclose(sel(axg).score, want_axg, atol=1e-6)
    # integrated gradients: completeness (attributions sum to logit - baseline logit)
    ig = gradient_rationales(coder, docs, pairs.head(3), method="integrated_gradients", steps=32, absolute=False)
    assert (ig.diagnostics.rel_error < 1e-3).all()


@pytest.mark.parametrize("unit,perturbation", [("token", "mask"), ("word", "delete"), ("token", "delete")])
def test_faithfulness_engine_equals_loop(coder, unit, perturbation):
    g, docs = corpus(n=6, seed=3)
    pairs = pairs_of(docs)
    spans = []
    for nid, text, codes in zip(docs.note_id, docs.text, docs.codes):
        for code in codes:
            s = int(g.integers(0, len(text) - 6))
            spans.append((nid, code, s, s + int(g.integers(2, 9)), "", "mine"))
    spans = pd.DataFrame(spans, columns=["note_id", "code", "start", "end", "granularity", "source"])
    kw = dict(unit=unit, perturbation=perturbation, code_set="gold", seed=5, progress=False)
    fast = faithfulness_discrete(coder, docs, spans, batch_size=4, **kw)
    slow = faithfulness_loop(coder, docs, spans, kind="discrete", **kw)
    scores = gradient_rationales(coder, docs, pairs, method="input_x_gradient").table
    fast_s = faithfulness_scored(coder, docs, scores, variant="eraser", batch_size=7, **kw)
    slow_s = faithfulness_loop(coder, docs, scores, kind="eraser", **kw)
    for a, b in ((fast, slow), (fast_s, slow_s)):
        keys = ["note_id", "code", "source", "measure", "k", "control"]
        a = a.sort_values(keys, na_position="first").reset_index(drop=True)
        b = b.sort_values(keys, na_position="first").reset_index(drop=True)
        assert len(a) == len(b) > 0
        pd.testing.assert_frame_equal(a.drop(columns=["value", "p"]), b.drop(columns=["value", "p"]))
        assert np.abs(a.value.to_numpy() - b.value.to_numpy()).max() <= 1e-6
        assert np.abs(a.p.to_numpy() - b.p.to_numpy()).max() <= 1e-6


def test_plausibility_against_gold(coder):
    _, docs = corpus(n=4, seed=1)
    pairs = pairs_of(docs)
    att = attention_rationales(coder, docs, pairs).table
    top1 = soft_to_spans(att, topk=1)
    # gold = each pair's most attended word: perfect agreement; gold = another word: none
    gold = top1[["note_id", "code", "start", "end"]].assign(granularity="mention", source="human")
    res = span_plausibility(gold, top1, docs)
    assert res["token_exact"] == {"tp": len(pairs), "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    texts = dict(zip(docs.note_id, docs.text))
    other = []
    for r in gold.itertuples(index=False):
        words = [m.span() for m in re.finditer(r"\w+", texts[r.note_id])]
        s, e = next((s, e) for s, e in words if (s, e) != (r.start, r.end))
        other.append((r.note_id, r.code, s, e, "mention", "human"))
    other = pd.DataFrame(other, columns=gold.columns)
    res = span_plausibility(other, top1, docs)
    assert res["token_exact"]["tp"] == 0 and res["token_exact"]["f1"] == 0.0


def test_explain_with_own_coder(coder):
    _, docs = corpus(n=3, seed=2)
    ex = rk.explain(coder.coder, docs[["note_id", "text"]], sources=["attention", "gradient", "attention_x_gradient"],
                    codes={n: c for n, c in zip(docs.note_id, docs.codes)}, top_k=2)
    assert set(ex.scores.source) == {"attention", "gradient", "attention_x_gradient"}
    assert set(ex.scores.model) == {"tiny"} and len(ex.spans) > 0
    assert (ex.predictions.explained.sum()) == sum(len(c) for c in docs.codes)


# --------------------------------------------------------------------------------------------
# a Hugging Face multi-label sequence classifier from a local folder
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("hf")
    _, docs = corpus(n=8, seed=4)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(list(docs.text) * 3, trainers.WordPieceTrainer(
        vocab_size=60, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                 cls_token="[CLS]", sep_token="[SEP]")
    hf.save_pretrained(path)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(hf), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128, num_labels=len(LABELS),
                     problem_type="multi_label_classification", id2label=dict(enumerate(LABELS)),
                     label2id={c: i for i, c in enumerate(LABELS)}, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(cfg).save_pretrained(path)
    return path


def test_hf_classifier_coder(hf_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = HFClassifierCoder(hf_dir, max_units=100).eval()
    assert hf.labels == LABELS
    coder = as_coder(hf)
    _, docs = corpus(n=5, seed=6)
    ref = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    encs = [coder.tokenizer.encode(t) for t in docs.text]
    for text, enc in zip(docs.text, encs):  # units carry the characters they cover
        assert all(text[s:e].lower().replace("#", "") for s, e in enc.offsets)
    ids, mask = coder.collate(encs)  # padded batch == the classifier on [CLS] note [SEP], one at a time
    with torch.no_grad():
        got = coder(ids, mask).logits
        want = torch.cat([ref(**tok(t, return_tensors="pt")).logits for t in docs.text])
    assert torch.allclose(got, want, atol=1e-5)
    pairs = pairs_of(docs)
    grad = gradient_rationales(coder, docs, pairs, method="input_x_gradient").table
    assert len(grad) == sum(len(e.ids) * 2 for e in encs)
    kw = dict(unit="word", perturbation="mask", code_set="gold", seed=1, progress=False)
    fast = faithfulness_scored(coder, docs, grad, variant="eraser", batch_size=6, **kw)
    slow = faithfulness_loop(coder, docs, grad, kind="eraser", **kw)
    assert len(fast) == len(slow) > 0
    key = ["note_id", "code", "measure", "k", "control"]
    a, b = fast.sort_values(key).reset_index(drop=True), slow.sort_values(key).reset_index(drop=True)
    assert np.abs(a.value.to_numpy() - b.value.to_numpy()).max() <= 1e-5  # a transformer: float32 padding noise
    with pytest.raises(ValueError, match="no per-label attention"):
        rk.explain(hf, docs[["note_id", "text"]], sources=["attention"])
