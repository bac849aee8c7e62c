"""Frozen encoder layers computed once (``FrozenPrefix``, PLM-ICD's ``frozen_cache``)."""
from __future__ import annotations

import pytest
import torch

from test_models import TEXTS, _tiny_encoder


@pytest.fixture(scope="module")
def plm(tmp_path_factory):
    pytest.importorskip("transformers")
    from rationale_kit.core.config import PLMICDParams
    from rationale_kit.models import build_model

    path = _tiny_encoder(tmp_path_factory.mktemp("enc"), TEXTS * 3, chunk_size=8)

    def make(freeze: int):
        torch.manual_seed(0)
        return build_model("plm_icd", PLMICDParams(encoder_path=path, chunk_size=8, max_chunks=3, projection=6,
                                                  freeze_layers=freeze), ["A", "B", "C"])
    return make


def _batch(model):
    encs = [model.tokenizer.encode(t) for t in TEXTS[:3]]
    ids, mask = model.collate(encs)
    return ids, mask


def test_eval_outputs_unchanged_and_each_chunk_computed_once(plm):
    model = plm(1).eval()
    ids, mask = _batch(model)
    with torch.no_grad():
        plain = model(ids, attention_mask=mask).logits
        with model.frozen_cache() as prefix:
            first = model(ids, attention_mask=mask).logits
            n_chunks = prefix.misses
            again = model(ids, attention_mask=mask).logits
            assert prefix.misses == n_chunks and prefix.hits == n_chunks  # the second pass reads the store
        assert model._prefix is None  # emptied on leaving
    assert n_chunks == int(mask.reshape(-1, 8).any(1).sum())  # one per non-empty chunk
    assert torch.allclose(first, plain, atol=1e-6) and torch.equal(first, again)


def test_training_no_dropout_in_frozen_layers_gradients_above(plm):
    """In train mode the frozen embeddings and layer run in eval mode (no dropout), the trainable
    layer keeps its dropout, and gradients reach the trainable layer but not the frozen one."""
    model = plm(1).train()
    ids, mask = _batch(model)
    with model.frozen_cache():
        torch.manual_seed(5)
        out = model(ids, attention_mask=mask).logits
    # by hand: frozen part in eval mode, then the last layer in train mode with the same RNG state
    enc = model.encoder
    enc.embeddings.eval()
    enc.encoder.layer[0].eval()
    torch.manual_seed(5)
    ref = model(ids, attention_mask=mask).logits
    enc.train()
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()
    assert enc.encoder.layer[1].attention.self.query.weight.grad is not None
    assert enc.encoder.layer[0].attention.self.query.weight.grad is None
    torch.manual_seed(6)
    with model.frozen_cache():
        other = model(ids, attention_mask=mask).logits
    assert not torch.allclose(other, out)  # dropout still acts in the trainable layer


def test_no_frozen_layers_is_a_no_op_and_bad_counts_refused(plm):
    from rationale_kit.models import FrozenPrefix

    model = plm(0)
    with model.frozen_cache() as prefix:
        assert prefix is None and model._prefix is None
    with pytest.raises(ValueError, match="layers"):
        FrozenPrefix(model.encoder, 3)


def test_padding_does_not_change_the_key(plm):
    """A row padded to another length in another batch is served from the store; its real
    positions equal a fresh computation."""
    from rationale_kit.models import FrozenPrefix

    model = plm(1).eval()
    ids, mask = _batch(model)
    ids, mask = ids[:, :8].clone(), mask[:, :8].clone()  # the tiny encoder reads 8 positions
    ids[0, 5:], mask[0, 5:] = model.tokenizer.pad_id, False  # row 0: 5 real pieces, padded
    prefix = FrozenPrefix(model.encoder, 1)
    with torch.no_grad():
        full = prefix(mask, input_ids=ids)
        n = int(mask[0].sum())
        alone = prefix(mask[:1, :n], input_ids=ids[:1, :n])
        ref = model.encoder(input_ids=ids[:1, :n], attention_mask=mask[:1, :n].long()).last_hidden_state
    assert prefix.hits == 1 and prefix.misses == len(ids)
    assert torch.allclose(alone, ref, atol=1e-5)
    assert torch.allclose(full[0, :n], ref[0], atol=1e-5)


def test_train_model_uses_it_and_the_checkpoint_key_records_it(tmp_path):
    """``train_model`` trains PLM-ICD with its frozen layer computed once (the frozen weights do
    not move, the store is emptied afterwards) and its checkpoint key says so."""
    pytest.importorskip("transformers")
    import numpy as np

    from test_training import CFG, KEYS, TRAIN, VAL

    from rationale_kit.core.config import PLMICDParams
    from rationale_kit.models import build_model
    from rationale_kit.training import train_model

    path = _tiny_encoder(tmp_path / "enc", list(TRAIN["text"]), chunk_size=16)
    params = PLMICDParams(encoder_path=path, chunk_size=16, max_chunks=1, projection=8, lr=5e-3, weight_decay=0.0,
                         batch_size=8, epochs=2, patience=2, freeze_layers=1)
    torch.manual_seed(0)
    model = build_model("plm_icd", params, list(KEYS))
    frozen_before = model.encoder.encoder.layer[0].attention.self.query.weight.detach().clone()
    trainable_before = model.encoder.encoder.layer[1].attention.self.query.weight.detach().clone()
    res = train_model(model, TRAIN, VAL, params, CFG, tmp_path / "out", progress=False)
    assert len(res.history) == 2 and np.isfinite(res.history["train_loss"]).all()
    assert torch.equal(model.encoder.encoder.layer[0].attention.self.query.weight, frozen_before)
    assert not torch.equal(model.encoder.encoder.layer[1].attention.self.query.weight, trainable_before)
    assert model._prefix is None
    ckpt = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=False)
    assert ckpt["fingerprint"]["frozen_layers"]["n"] == 1
