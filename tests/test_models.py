import os

import numpy as np
import pytest
import torch

import dataclasses

from rationale_kit.core.config import ModelParams, PLMICDParams, Word2Vec, params_for
from rationale_kit.models import MASK_ID, PAD_ID, Encoded, PLMICD, WordTokenizer, build_model, load, load_predictor, save

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

LABELS = ["J18.9", "E11.9", "S72.0", "I10"]
TEXTS = [
    "Pt admitted with community-acquired pneumonia; CXR: RLL consolidation. Started ceftriaxone 1 g.",
    "History of type 2 diabetes (HbA1c 7.5%), on metformin 500 mg BID. Hypertension controlled.",
    "Fall at home -> fracture of the femoral neck, ORIF on 3/4. Café-au-lait spots noted.",
    "No pneumonia. Diabetes denied. BP 150/90.",
    "Short.",
]


@dataclasses.dataclass(frozen=True)
class WordParams(ModelParams):
    """Test-only: one set of small sizes for CAML and LAAT (each model gets its own typed config)."""

    embed_dim: int = 12
    filters: int = 6
    kernel: int = 4
    hidden: int = 5
    projection: int = 7


WORD_PARAMS = WordParams(dropout=0.1)


def word_params(name: str, params: ModelParams = WORD_PARAMS) -> ModelParams:
    """The typed config of ``name`` ("caml" or "laat") with the sizes of ``params``."""
    return params_for(name, params, strict=False)
W2V = Word2Vec(dim=12, window=3, min_count=1, epochs=2)


def _tiny_encoder(path, sentences, chunk_size=16):
    """A randomly initialised 2-layer RoBERTa with a WordPiece tokenizer trained on ``sentences``,
    saved as a local HF checkpoint."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=150, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(sentences, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
        cls_token="[CLS]", sep_token="[SEP]",
    )
    hf.save_pretrained(path)
    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=len(hf), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=chunk_size + 4, pad_token_id=0,
        bos_token_id=2, eos_token_id=3,
    )
    RobertaModel(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return _tiny_encoder(tmp_path_factory.mktemp("enc"), TEXTS * 3)


def _build(name, tiny_encoder=None, **kw):
    torch.manual_seed(0)
    if name == "plm_icd":
        params = PLMICDParams(encoder_path=tiny_encoder, chunk_size=16, max_chunks=3, projection=7, **kw)
        return build_model("plm_icd", params, LABELS)
    return build_model(name, word_params(name), LABELS, TEXTS, W2V, max_words=4000)


MODELS = ["caml", "laat", "plm_icd"]


# ------------------------------------------------------------------------------------------
# tokenizers and offsets
# ------------------------------------------------------------------------------------------
def test_word_tokenizer_offsets_vocab_and_truncation():
    tok = WordTokenizer.build(TEXTS, min_count=1, max_words=4000)
    assert tok.vocab[:4] == ["<pad>", "<unk>", "<mask>", "<num>"]
    assert (tok.pad_id, tok.mask_id) == (PAD_ID, MASK_ID) == (0, 2)
    for text in TEXTS:
        enc = tok.encode(text)
        assert isinstance(enc, Encoded) and enc.ids.dtype == np.int64 and enc.offsets.shape == (len(enc), 2)
        for i, (s, e) in zip(enc.ids, enc.offsets):
            assert tok.vocab[i] == text[s:e].lower()
    # unknown words -> <unk>, numbers kept or mapped, offsets intact
    enc = tok.encode("Zebra 500 mg")
    assert enc.ids[0] == tok.unk_id and tok.vocab[enc.ids[1]] == "500"
    tok_num = WordTokenizer.build(TEXTS, min_count=1, numbers="num")
    enc = tok_num.encode("Zebra 500 mg")
    assert enc.ids[1] == tok_num.num_id and tuple(enc.offsets[1]) == (6, 9)
    # min_count and truncation
    tok2 = WordTokenizer.build(TEXTS, min_count=2)
    assert "pneumonia" in tok2.index and "ceftriaxone" not in tok2.index
    tok3 = WordTokenizer.build(TEXTS, min_count=1, max_words=3)
    assert len(tok3.encode(TEXTS[0])) == 3 and "ceftriaxone" not in tok3.index
    # a note's words are cached per process (by text, max_words, numbers): each call still gets
    # its own writable arrays, and the settings are part of the cache key
    a, b = tok.encode(TEXTS[0]), tok.encode(TEXTS[0])
    assert a.offsets is not b.offsets and a.offsets.flags.writeable
    a.offsets[0] = (-1, -1)
    assert tuple(tok.encode(TEXTS[0]).offsets[0]) != (-1, -1)
    assert len(tok3.encode(TEXTS[0])) == 3 and len(tok.encode(TEXTS[0])) > 3
    assert tok.encode("Zebra 500 mg").ids[1] != tok_num.num_id == tok_num.encode("Zebra 500 mg").ids[1]


def test_piece_tokenizer_offsets_and_chunking(tiny_encoder):
    model = _build("plm_icd", tiny_encoder)
    tok = model.tokenizer
    assert tok.mask_id != tok.pad_id
    text = TEXTS[2] + " " + TEXTS[0]
    enc = tok.encode(text)
    assert 0 < len(enc) <= 48
    pieces = tok.hf.convert_ids_to_tokens(enc.ids.tolist())
    for piece, (s, e) in zip(pieces, enc.offsets):
        if piece == "[UNK]":
            continue
        assert piece.removeprefix("##") == text[s:e].lower().replace("é", "e")
    # no special tokens anywhere
    assert not set(enc.ids.tolist()) & {tok.hf.cls_token_id, tok.hf.sep_token_id}
    # truncation at chunk_size * max_chunks
    long = " ".join(TEXTS * 10)
    assert len(tok.encode(long)) == 16 * 3
    # collate pads to whole chunks; position j of H is piece j of its chunk run alone
    encs = [tok.encode(long), tok.encode(TEXTS[4])]
    ids, mask = model.collate(encs)
    assert ids.shape == (2, 48) and mask.sum(1).tolist() == [48, len(encs[1])]
    model.eval()
    with torch.no_grad():
        h = model.hidden(model.embed(ids), mask)
        for c in range(3):
            chunk = ids[:1, c * 16 : (c + 1) * 16]
            ref = model.encoder(input_ids=chunk, attention_mask=torch.ones_like(chunk)).last_hidden_state
            torch.testing.assert_close(h[0, c * 16 : (c + 1) * 16], ref[0], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# the model contract
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_contract_shapes_attention_label_idx(name, tiny_encoder):
    model = _build(name, tiny_encoder).eval()
    assert model.labels == LABELS
    encs = [model.tokenizer.encode(t) for t in TEXTS]
    ids, mask = model.collate(encs)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    assert (ids[~mask] == model.tokenizer.pad_id).all()
    with torch.no_grad():
        out = model(ids, mask)
        b, t = ids.shape
        assert out.logits.shape == (b, len(LABELS)) and out.logits.dtype == torch.float32
        assert out.attention.shape == (b, len(LABELS), t) and out.attention.dtype == torch.float32
        sums = out.attention.sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums))
        assert (out.attention.masked_select(~mask[:, None, :].expand_as(out.attention)) == 0).all()
        # label subset = rows of the full output
        idx = torch.tensor([3, 1])
        sub = model(ids, mask, label_idx=idx)
        torch.testing.assert_close(sub.logits, out.logits[:, idx])
        torch.testing.assert_close(sub.attention, out.attention[:, idx])
        # embeddings path for gradient attribution
        emb = model.embed(ids)
        assert emb.shape[:2] == ids.shape
        again = model.forward_from_embeddings(emb, mask)
        torch.testing.assert_close(again.logits, out.logits)
        # a note alone gives the same output as inside a padded batch
        alone = model(*model.collate(encs[4:5]))
        torch.testing.assert_close(alone.logits, out.logits[4:5], atol=1e-5, rtol=1e-5)
        n = len(encs[4])
        torch.testing.assert_close(alone.attention[..., :n], out.attention[4:5, :, :n], atol=1e-5, rtol=1e-5)
    # gradients reach the embeddings (attribution)
    emb = model.embed(ids).detach().requires_grad_(True)
    model.forward_from_embeddings(emb, mask, label_idx=torch.tensor([0])).logits.sum().backward()
    assert emb.grad is not None and emb.grad[mask].abs().sum() > 0


@pytest.mark.parametrize("name", ["caml", "laat"])
def test_label_attention_float32_under_autocast(name):
    model = _build(name).eval()
    ids, mask = model.collate([model.tokenizer.encode(t) for t in TEXTS[:2]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask)
    assert out.logits.dtype == torch.float32 and out.attention.dtype == torch.float32
    assert torch.isfinite(out.attention).all()


def test_empty_note_gives_zero_attention():
    model = _build("caml").eval()
    ids, mask = model.collate([model.tokenizer.encode(""), model.tokenizer.encode(TEXTS[0])])
    with torch.no_grad():
        out = model(ids, mask)
    assert torch.isfinite(out.logits).all()
    assert out.attention[0].abs().sum() == 0


def test_word2vec_initialisation_is_deterministic():
    a, b = _build("caml"), _build("caml")
    torch.testing.assert_close(a.embedding.weight, b.embedding.weight)
    w = a.embedding.weight.detach()
    assert w[PAD_ID].abs().sum() == 0 and w[MASK_ID].abs().sum() == 0
    assert w[a.tokenizer.index["pneumonia"]].abs().sum() > 0
    with pytest.raises(ValueError, match="embed_dim"):
        build_model("caml", word_params("caml"), LABELS, TEXTS, Word2Vec(dim=8, min_count=1))
    with pytest.raises(ValueError, match="unknown model"):
        build_model("bert", WORD_PARAMS, LABELS, TEXTS)


# ------------------------------------------------------------------------------------------
# persistence and inference
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip(name, tiny_encoder, tmp_path):
    model = _build(name, tiny_encoder).eval()
    save(model, tmp_path / "m", threshold=0.37, extra={"note": "x", "score": np.float32(0.5)})
    loaded, info = load(tmp_path / "m")
    assert info["threshold"] == pytest.approx(0.37) and loaded.threshold == pytest.approx(0.37)
    assert info["extra"]["note"] == "x" and loaded.labels == LABELS and info["name"] == name
    assert not loaded.training
    for text in TEXTS:
        a, b = model.tokenizer.encode(text), loaded.tokenizer.encode(text)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.offsets, b.offsets)
    ids, mask = model.collate([model.tokenizer.encode(t) for t in TEXTS])
    with torch.no_grad():
        x, y = model(ids, mask), loaded(ids, mask)
    torch.testing.assert_close(x.logits, y.logits, atol=0, rtol=0)
    torch.testing.assert_close(x.attention, y.attention, atol=0, rtol=0)
    assert loaded.tokenizer.mask_id == model.tokenizer.mask_id
    if name == "plm_icd":
        assert isinstance(loaded, PLMICD) and loaded.chunk_size == 16


def test_predictor(tmp_path):
    model = _build("laat").eval()
    with torch.no_grad():
        model.final.bias.fill_(5.0)  # every code predicted
        model.final.bias[1] = -5.0
    save(model, tmp_path / "m", threshold=0.5)
    pred = load_predictor(tmp_path / "m")
    out = pred.predict(TEXTS[:2])
    assert len(out) == 2
    for text, res in zip(TEXTS[:2], out):
        assert set(res["probs"]) == set(LABELS)
        assert "E11.9" not in res["codes"] and set(res["codes"]) == {"J18.9", "S72.0", "I10"}
        for code in res["codes"]:
            units = res["attention"][code]
            assert sum(u["score"] for u in units) == pytest.approx(1.0, abs=1e-5)
            for u in units:
                assert text[u["start"]:u["end"]] == u["text"]
    top = pred.predict(TEXTS[0], top_k=3)[0]
    scores = [u["score"] for u in top["attention"]["I10"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert pred.predict(TEXTS[0], threshold=0.999)[0]["codes"] == []


def test_bundled_minilm_forward():
    params = PLMICDParams(chunk_size=16, max_chunks=2, projection=8)
    torch.manual_seed(0)
    model = build_model("plm_icd", params, LABELS).eval()
    assert model.tokenizer.mask_id == model.tokenizer.hf.mask_token_id
    enc = model.tokenizer.encode(TEXTS[1])
    assert len(enc) <= 32
    with torch.no_grad():
        out = model(*model.collate([enc]))
    assert out.logits.shape == (1, 4) and out.attention.shape == (1, 4, 32)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(1, 4))


def test_freeze_layers_and_head_lr_groups(tiny_encoder):
    from rationale_kit.training import param_groups

    model = _build("plm_icd", tiny_encoder, freeze_layers=1, lr=1e-4, head_lr=1e-2)
    enc = model.encoder
    assert not any(p.requires_grad for p in enc.embeddings.parameters())
    assert not any(p.requires_grad for p in enc.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in enc.encoder.layer[1].parameters())
    groups = param_groups(model, model.params)
    assert [g["lr"] for g in groups] == [1e-4, 1e-2]
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == n_trainable
    # gradients still reach the inputs (gradient attributions need them) and the trained layer
    ids, mask = model.collate([model.tokenizer.encode(TEXTS[0])])
    emb = model.embed(ids).detach().requires_grad_(True)
    model.forward_from_embeddings(emb, mask).logits.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert enc.encoder.layer[0].attention.self.query.weight.grad is None
    with pytest.raises(ValueError, match="freeze_layers"):
        _build("plm_icd", tiny_encoder, freeze_layers=5)


def test_save_weights_copes_with_shared_storage(tmp_path):
    # cuDNN packs an LSTM's weights into one buffer on CUDA; simulate it with views of one tensor
    from safetensors.torch import load_file

    from rationale_kit.models import save_weights

    buf = torch.arange(6, dtype=torch.float32)
    m = torch.nn.Module()
    m.a = torch.nn.Parameter(buf[:4])
    m.b = torch.nn.Parameter(buf[4:])
    save_weights(m, tmp_path / "w.safetensors")
    back = load_file(str(tmp_path / "w.safetensors"))
    assert back["a"].tolist() == [0, 1, 2, 3] and back["b"].tolist() == [4, 5]


def test_load_unknown_model_name_is_a_clear_error(tmp_path):
    import json

    model = _build("caml", None).eval()
    save(model, tmp_path / "m", threshold=0.5)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["name"] = "bert_icd"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"m/config.json: unknown model name 'bert_icd' \(known: caml, laat, plm_icd\)"):
        load(tmp_path / "m")
