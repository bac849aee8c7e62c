import os
import random

import numpy as np
import pandas as pd
import pytest
import torch

from rationale_kit.rationales.ner import B_TAG, I_TAG, O_TAG, NERConfig, NERModel, assign_codes, decode, load_ner, piece_labels, save_ner, train_ner, windows
from rationale_kit.core.records import SPAN_COLUMNS, merge_intervals

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

FILLER = ("patient admitted with cough and fever , seen by team on ward ; labs stable . "
          "denies pain . plan discharge home tomorrow after review of chest film").split()
KEYWORD = "hypertension"
WINDOW = 16


def _sentence(rng: random.Random) -> tuple[str, list[tuple[int, int]]]:
    """A sentence of filler words with 0-2 occurrences of the keyword; returns its keyword spans."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(8, 22))]
    for _ in range(rng.choice([0, 1, 1, 2])):
        words.insert(rng.randint(0, len(words)), rng.choice([KEYWORD, KEYWORD.capitalize()]))
    text, spans = "", []
    for w in words:
        if text:
            text += " "
        if w.lower() == KEYWORD:
            spans.append((len(text), len(text) + len(w)))
        text += w
    return text, spans


def _toy(n: int, seed: int, prefix: str):
    rng = random.Random(seed)
    docs, rows = [], []
    for i in range(n):
        text, spans = _sentence(rng)
        nid = f"{prefix}{i}"
        docs.append((nid, text))
        rows += [(nid, "I10", s, e, "", "llm_zero") for s, e in spans]
    return pd.DataFrame(docs, columns=["note_id", "text"]), pd.DataFrame(rows, columns=SPAN_COLUMNS)


def _tiny_encoder(path, sentences, window=WINDOW):
    """A randomly initialised 2-layer BERT with a WordPiece tokenizer trained on ``sentences``,
    saved as a local HF checkpoint."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # a small vocabulary, so that the keyword is split into several pieces
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    # the keyword is never seen whole, so that it is split into several pieces
    corpus = [t.lower().replace(KEYWORD, "hyper tension") for t in sentences] + ["hyperkalemia hypertensive tensions"] * 5
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
        cls_token="[CLS]", sep_token="[SEP]",
    )
    hf.save_pretrained(path)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(hf), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=window, pad_token_id=0,
    )
    BertModel(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def toy():
    train_docs, train_spans = _toy(120, 1, "tr")
    test_docs, test_spans = _toy(40, 2, "te")
    return train_docs, train_spans, test_docs, test_spans


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, toy):
    train_docs = toy[0]
    return _tiny_encoder(tmp_path_factory.mktemp("enc"), train_docs["text"].tolist())


def _cfg(encoder, **kw):
    base = dict(encoder_path=encoder, window=WINDOW, epochs=6, lr=3e-3, batch_size=8, seed=3)
    return NERConfig(**(base | kw))


@pytest.fixture(scope="module")
def trained(encoder, toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    model = train_ner(toy[0], toy[1], _cfg(encoder), out_dir=out, progress=False)
    return model, out


def _f1(pred: set, gold: set) -> float:
    tp = len(pred & gold)
    return 2 * tp / max(1, len(pred) + len(gold))


# ------------------------------------------------------------------------------------------
# labels, windows, offsets
# ------------------------------------------------------------------------------------------
def test_merge_intervals_and_windows():
    assert merge_intervals([(5, 9), (0, 3), (8, 12), (12, 14), (20, 20)]) == [(0, 3), (5, 14)]
    assert windows(0, 4) == []
    assert windows(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert windows(8, 4) == [(0, 4), (4, 8)]


def test_piece_labels_hand_checked():
    text = "the high BP hypertension is new"
    offsets = np.array([[0, 3], [4, 8], [9, 11], [12, 17], [17, 24], [25, 27], [28, 31]])
    # pieces: the | high | BP | hyper | ##tension | is | new
    # two teacher spans (different codes) that touch: "high BP" and "hypertension" -> merged
    labels = piece_labels(offsets, [(4, 11), (11, 24)])
    assert labels.tolist() == [O_TAG, B_TAG, I_TAG, I_TAG, I_TAG, O_TAG, O_TAG]
    # not touching (a space between): two spans
    labels = piece_labels(offsets, [(4, 11), (12, 24)])
    assert labels.tolist() == [O_TAG, B_TAG, I_TAG, B_TAG, I_TAG, O_TAG, O_TAG]
    # separate spans -> two B; a span starting inside a piece still marks that piece
    labels = piece_labels(offsets, [(4, 8), (14, 20), (28, 31)])
    assert labels.tolist() == [O_TAG, B_TAG, O_TAG, B_TAG, I_TAG, O_TAG, B_TAG]
    assert text[offsets[3, 0]:offsets[4, 1]] == "hypertension"
    assert piece_labels(offsets, []).tolist() == [O_TAG] * 7
    assert piece_labels(np.zeros((0, 2)), [(0, 3)]).tolist() == []


def test_real_tokenizer_offsets_and_labels(encoder):
    from rationale_kit.models import load_encoder, load_hf_tokenizer

    model = NERModel(load_encoder(encoder, from_config_only=True), load_hf_tokenizer(encoder), NERConfig(encoder_path=encoder, window=WINDOW))
    text = "Café  patient with Hypertension;\nplan: home."
    enc = model.tokenizer.encode(text)
    assert len(enc) > 0
    for s, e in enc.offsets:  # each piece's offsets index the raw text
        assert 0 <= s < e <= len(text)
        assert text[s:e].strip() == text[s:e] and text[s:e]
    start = text.index("Hypertension")
    labels = piece_labels(enc.offsets, [(start, start + len("Hypertension"))])
    inside = [j for j in range(len(enc)) if labels[j] != O_TAG]
    assert labels[inside[0]] == B_TAG and all(labels[j] == I_TAG for j in inside[1:])
    assert inside == list(range(inside[0], inside[-1] + 1))
    assert text[enc.offsets[inside[0], 0]:enc.offsets[inside[-1], 1]] == "Hypertension"
    assert len(inside) >= 2  # the keyword is split into several word pieces by the small vocabulary


def test_decode():
    offsets = np.array([[0, 3], [4, 8], [9, 11], [12, 17], [17, 24], [25, 27]])
    p = np.array([
        [0.9, 0.05, 0.05],
        [0.1, 0.8, 0.1],   # B
        [0.2, 0.1, 0.7],   # I
        [0.3, 0.6, 0.1],   # B: new span
        [0.4, 0.1, 0.5],   # I
        [0.1, 0.1, 0.8],   # I after I
    ])
    spans = decode(offsets, p)
    assert [(s, e) for s, e, _ in spans] == [(4, 11), (12, 27)]
    assert spans[0][2] == pytest.approx((0.9 + 0.8) / 2)
    assert spans[1][2] == pytest.approx((0.7 + 0.6 + 0.9) / 3)
    # a leading I starts a span; threshold mode
    assert [(s, e) for s, e, _ in decode(offsets[:2], np.array([[0.2, 0.1, 0.7], [0.9, 0, 0.1]]))] == [(0, 3)]
    assert [(s, e) for s, e, _ in decode(offsets, p, threshold=0.65)] == [(4, 11), (12, 17), (25, 27)]


# ------------------------------------------------------------------------------------------
# training on the toy task
# ------------------------------------------------------------------------------------------
def test_learns_keyword(trained, toy):
    model, _ = trained
    test_docs, test_spans = toy[2], toy[3]
    pred = model.predict_spans(test_docs, batch_size=7)
    assert list(pred.columns) == ["note_id", "start", "end", "score"]
    assert ((pred["score"] > 0) & (pred["score"] <= 1)).all()
    texts = dict(zip(test_docs["note_id"], test_docs["text"]))
    for r in pred.itertuples():
        assert 0 <= r.start < r.end <= len(texts[r.note_id])
    gold = {(r.note_id, r.start, r.end) for r in test_spans.itertuples()}
    got = {(r.note_id, r.start, r.end) for r in pred.itertuples()}
    assert len(gold) > 20
    f1 = _f1(got, gold)
    assert f1 > 0.8, f1
    # the predicted offsets cut out the keyword from the raw text
    hits = [texts[n][s:e] for n, s, e in got & gold]
    assert all(h.lower() == KEYWORD for h in hits)
    assert model.info["history"][-1]["loss"] < model.info["history"][0]["loss"]


def test_assign_codes(trained, toy):
    model, _ = trained
    docs = toy[2].head(6)
    spans = model.predict_spans(docs)
    codes = pd.DataFrame({"note_id": ["te0", "te0", "te1", "te2", "zz"], "code": ["I10", "E11.9", "I10", "J18.9", "I10"]})
    out = assign_codes(spans, codes)
    assert list(out.columns) == SPAN_COLUMNS + ["score"]
    assert (out["source"] == "ner").all() and (out["granularity"] == "").all()
    for nid in ("te0", "te1", "te2"):
        n_spans = int((spans["note_id"] == nid).sum())
        want = {"te0": 2, "te1": 1, "te2": 1}[nid]
        assert int((out["note_id"] == nid).sum()) == n_spans * want
    assert set(out["note_id"]) <= {"te0", "te1", "te2"}
    sub = assign_codes(spans, codes, codes=["I10"])
    assert set(sub["code"]) <= {"I10"}
    # list-column form (documents table style)
    lists = pd.DataFrame({"note_id": ["te0", "te1"], "codes": [["I10", "E11.9"], []]})
    via_lists = assign_codes(spans, lists)
    assert len(via_lists) == 2 * int((spans["note_id"] == "te0").sum())
    # hand-made spans
    hand = pd.DataFrame({"note_id": ["a", "a", "b"], "start": [0, 5, 1], "end": [3, 9, 2], "score": [0.9, 0.6, 0.7]})
    out = assign_codes(hand, pd.DataFrame({"note_id": ["a", "a"], "code": ["X", "Y"]}))
    assert out[["note_id", "code", "start", "end"]].values.tolist() == [
        ["a", "X", 0, 3], ["a", "X", 5, 9], ["a", "Y", 0, 3], ["a", "Y", 5, 9]]


def test_save_load_round_trip(trained, toy, tmp_path):
    model, _ = trained
    docs = toy[2].head(8)
    before = model.predict_spans(docs)
    save_ner(model, tmp_path / "m")
    back = load_ner(tmp_path / "m")
    assert back.cfg == model.cfg
    after = back.predict_spans(docs)
    pd.testing.assert_frame_equal(before, after)
    for a, b in zip(model.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_reuse_and_determinism(trained, toy, encoder, monkeypatch):
    model, out = trained
    # same data and config: loaded, not retrained
    import rationale_kit.rationales.ner as ner

    def boom(*a, **k):
        raise AssertionError("retrained")

    monkeypatch.setattr(ner, "_training_windows", boom)
    again = train_ner(toy[0], toy[1], _cfg(encoder), out_dir=out, progress=False)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(AssertionError, match="retrained"):  # other config -> retrain
        train_ner(toy[0], toy[1], _cfg(encoder, epochs=1), out_dir=out, progress=False)
    with pytest.raises(AssertionError, match="retrained"):  # other data -> retrain
        train_ner(toy[0].head(50), toy[1], _cfg(encoder), out_dir=out, progress=False)
    with pytest.raises(AssertionError, match="retrained"):  # same ids and spans, other texts -> retrain
        train_ner(toy[0].assign(text=toy[0].text.str.upper()), toy[1], _cfg(encoder), out_dir=out, progress=True)
    monkeypatch.undo()
    # same seed -> bitwise the same weights (small run)
    sub_docs = toy[0].head(30)
    cfg = _cfg(encoder, epochs=1, max_windows_per_note=1)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    m1 = train_ner(sub_docs, toy[1], cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    m2 = train_ner(sub_docs, toy[1], cfg, progress=False)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert m1.info["n_windows"] == 30
    m3 = train_ner(sub_docs, toy[1], _cfg(encoder, epochs=1, max_windows_per_note=1, seed=4), progress=False)
    assert not torch.equal(m1.head.weight, m3.head.weight)


def test_bad_inputs(encoder, toy):
    with pytest.raises(ValueError, match="code-conditioned formulation is not offered"):
        _cfg(encoder, formulation="code_conditioned")
    with pytest.raises(ValueError):
        NERConfig(window=0)
    with pytest.raises(ValueError, match="window"):
        train_ner(toy[0], toy[1], _cfg(encoder, window=WINDOW + 1), progress=False)
    bad = toy[1].copy()
    bad.loc[bad.index[0], "end"] = 10_000
    from rationale_kit.core.records import DataError

    with pytest.raises(DataError):
        train_ner(toy[0], bad, _cfg(encoder), progress=False)


def test_empty_texts(trained):
    model, _ = trained
    docs = pd.DataFrame({"note_id": ["e", "f"], "text": ["", "   "]})
    out = model.predict_spans(docs)
    assert len(out) == 0 and list(out.columns) == ["note_id", "start", "end", "score"]


def test_freeze_layers_keeps_lower_layers_and_trains_the_head(encoder, toy):
    from transformers import AutoModel

    start = AutoModel.from_pretrained(encoder)
    model = train_ner(toy[0], toy[1], _cfg(encoder, epochs=1, freeze_layers=1, head_lr=1e-2), progress=False)
    frozen = model.encoder.encoder.layer[0].attention.self.query.weight
    assert torch.equal(frozen, start.encoder.layer[0].attention.self.query.weight)
    assert not torch.equal(model.encoder.encoder.layer[1].attention.self.query.weight,
                           start.encoder.layer[1].attention.self.query.weight)


def test_taggers_share_their_frozen_layers_with_identical_probabilities(encoder, toy):
    """Two taggers freezing the same layer of one encoder tag through one ``PrefixStore``: the
    second reads every window's frozen states from the first (no window is encoded again), and the
    probabilities equal tagging without the store, bit for bit. A tagger of other frozen weights
    is refused the store (counted) and still tags correctly."""
    import numpy as np

    from rationale_kit.rationales.ner import PrefixStore

    test_docs = toy[2]
    a = train_ner(toy[0].head(20), toy[1], _cfg(encoder, epochs=1, freeze_layers=1), progress=False)
    b = train_ner(toy[0].head(40), toy[1], _cfg(encoder, epochs=1, freeze_layers=1, seed=4), progress=False)
    texts = test_docs["text"].tolist()
    store = PrefixStore()
    sizes = []
    for tagger in (a, b):
        plain = tagger.tag_probs(texts, batch_size=8)
        shared = tagger.tag_probs(texts, batch_size=8, prefix_store=store)
        assert all(np.array_equal(p, q) and np.array_equal(o, r) for (o, p), (r, q) in zip(plain, shared))
        assert tagger._prefix is None  # the tagger is left as it was
        sizes.append(len(store.rows))
    n_rows = sizes[0]
    assert n_rows > 0 and sizes == [n_rows, n_rows] and store.refused == 0  # b found every window
    other = train_ner(toy[0].head(20), toy[1], _cfg(encoder, epochs=1, freeze_layers=1), progress=False)
    with torch.no_grad():
        other.encoder.encoder.layer[0].output.dense.weight.mul_(1.5)  # other frozen weights
    plain = other.tag_probs(texts, batch_size=8)
    shared = other.tag_probs(texts, batch_size=8, prefix_store=store)
    assert store.refused == 1 and len(store.rows) == n_rows
    assert all(np.array_equal(p, q) for (_, p), (_, q) in zip(plain, shared))
    spans = b.predict_spans(test_docs, prefix_store=store)
    assert spans.equals(b.predict_spans(test_docs))
