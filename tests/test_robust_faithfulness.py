"""Soft-NC / Soft-NS and F-Fidelity (rationale_kit.metrics.faithfulness.robust) against the authors'
computations, worked by hand (docs/method/faithfulness.md names each file and function):

- Soft-NC / Soft-NS: github.com/casszhao/SoftFaith, ``src/common_code/metrics.py``
  (``normalized_comprehensiveness_soft_``, ``normalized_sufficiency_soft_``, ``normal_importance``);
- F-Fidelity: github.com/AslanDing/Finetune-Fidelity, ``code/evaluation_model.py``
  (``ours_random_MoRF`` / ``ours_random_LeRF`` with ``use_max``) and ``code/train_model.py``
  (``RandomPixelRemoval``)."""
import os

import numpy as np
import pytest
import torch

from rationale_kit.metrics.faithfulness import robust as R
from rationale_kit.models.tokenizers import PAD_ID
from rationale_kit.training import tradeoff as T
from test_open_questions import DOCS, _model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


# --- Soft-NC / Soft-NS: the normalisation ------------------------------------------------------------
def test_soft_nc_by_hand():
    # p 0.9, all-padding input p0 0.1: S(x, 0) = 1 - max(0, 0.9 - 0.1) = 0.2, 1 - S(x, 0) = 0.8
    # p' 0.5: C = 0.4 -> 0.4 / 0.8 = 0.5
    assert R.soft_nc(0.9, 0.5, 0.1) == pytest.approx(0.5, abs=1e-12)
    # p' 0.95 above p: C = max(0, -0.05) = 0 -> 0
    assert R.soft_nc(0.9, 0.95, 0.1) == 0.0
    # p' 0: C = 0.9 -> 0.9 / 0.8 = 1.125, clipped to 1
    assert R.soft_nc(0.9, 0.0, 0.1) == 1.0
    # p 0.3 <= p0 0.4: S(x, 0) = 1, so 1 - S(x, 0) == 0 and S(x, 0) += 1e-5;
    # C = max(0, 0.3 - 0.1) = 0.2 -> 0.2 / (1 - 1.00001) = -20000 -> max(0, .) = 0
    assert R.soft_nc(0.3, 0.1, 0.4) == 0.0
    # p 0.6 = p0 0.6: the same guard; C 0 -> 0 / -1e-5 = -0 -> 0
    assert R.soft_nc(0.6, 0.6, 0.6) == 0.0


def test_soft_ns_by_hand():
    # p 0.9, p0 0.1: S(x, 0) = 0.2, minus the authors' 1e-4 -> 0.1999
    # p' 0.5: S(x, x') = 1 - 0.4 = 0.6 -> (0.6 - 0.1999) / (1 - 0.1999) = 0.4001 / 0.8001
    assert R.soft_ns(0.9, 0.5, 0.1) == pytest.approx(0.4001 / 0.8001, abs=1e-12)
    assert R.soft_ns(0.9, 0.5, 0.1) != pytest.approx(0.5, abs=1e-6)  # the epsilon is there
    # p' 0.95 above p: S(x, x') = 1 -> 0.8001 / 0.8001 = 1
    assert R.soft_ns(0.9, 0.95, 0.1) == pytest.approx(1.0, abs=1e-12)
    # p' 0: S(x, x') = 0.1 -> (0.1 - 0.1999) / 0.8001 < 0 -> 0
    assert R.soft_ns(0.9, 0.0, 0.1) == 0.0
    # p 0.3 <= p0 0.4: S(x, 0) = 1 -> 0.9999; p' 0.3 (nothing lost): (1 - 0.9999) / (1 - 0.9999) = 1
    assert R.soft_ns(0.3, 0.3, 0.4) == pytest.approx(1.0, abs=1e-12)
    # p' 0.29995: S(x, x') = 0.99995 -> (0.99995 - 0.9999) / 0.0001 = 0.5
    assert R.soft_ns(0.3, 0.29995, 0.4) == pytest.approx(0.5, abs=1e-6)
    # p' 0.1: S(x, x') = 0.8 -> (0.8 - 0.9999) / 0.0001 < 0 -> 0
    assert R.soft_ns(0.3, 0.1, 0.4) == 0.0


# --- Soft-NC / Soft-NS: importance and masks ----------------------------------------------------------
def test_importance_is_min_max_normalised_by_hand():
    # min -1, max 2: (s + 1) / 3 -> 1, 1/3, 0, 2/3 (normal_importance(..., normalise=5))
    assert np.allclose(R.normalise_importance(np.array([2.0, 0.0, -1.0, 1.0])), [1.0, 1 / 3, 0.0, 2 / 3])
    # -inf (the authors' special / padding tokens) counts as -1: [-1, 0, 2] -> 0, 1/3, 1
    assert np.allclose(R.normalise_importance(np.array([-np.inf, 0.0, 2.0])), [0.0, 1 / 3, 1.0])
    # a span mask with a 0 is its own importance; top-k attention with zeros elsewhere: divided by its max
    assert np.array_equal(R.normalise_importance(np.array([1.0, 1.0, 0.0])), [1.0, 1.0, 0.0])
    assert np.allclose(R.normalise_importance(np.array([0.2, 0.0, 0.4])), [0.5, 0.0, 1.0])
    # constant: 0 / 0 in min-max, which the authors' model wrapper turns into all zeros
    assert np.array_equal(R.normalise_importance(np.full(3, 0.7)), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        R.normalise_importance(np.array([0.1, np.nan]))


def test_soft_masks_keep_in_the_papers_direction():
    rng = np.random.default_rng(0)
    imp = np.array([1.0, 0.0, 0.5])
    nc = R.soft_keep(imp, 4000, rng, "soft_nc")  # kept with 1 - importance
    ns = R.soft_keep(imp, 4000, rng, "soft_ns")  # kept with importance
    assert not nc[0].any() and nc[1].all() and ns[0].all() and not ns[1].any()
    assert nc[2].mean() == pytest.approx(0.5, abs=0.03) and ns[2].mean() == pytest.approx(0.5, abs=0.03)
    # the draw: element kept where a uniform draw is below the keep probability
    u = np.random.default_rng(7).random((3, 5))
    assert np.array_equal(R.soft_keep(imp, 5, np.random.default_rng(7), "soft_ns"), u < imp[:, None])
    with pytest.raises(ValueError):
        R.soft_keep(imp, 2, rng, "soft_x")


def _prob(model, embeds, label):
    with torch.no_grad():
        out = model.forward_from_embeddings(embeds, None, torch.tensor([label]))
    return torch.sigmoid(out.logits[:, 0].float()).numpy()


def _pair(model):
    note = DOCS[DOCS.codes.map(len) > 0].iloc[0]
    return note.note_id, note.codes[0], note.text


def test_soft_scores_of_a_span_mask_by_hand():
    # a 0/1 mask is deterministic: Soft-NC zeroes exactly the span's embeddings (keep 1 - 1 = 0, others
    # keep 1), Soft-NS zeroes exactly the rest; p0 is the note with every unit the padding id, whose
    # CAML embedding is the zero vector. The values follow from three probabilities and the formulas.
    model = _model()
    n, c, text = _pair(model)
    enc = model.tokenizer.encode(text)
    k, label = len(enc), model.labels.index(c)
    assert torch.count_nonzero(model.embed(torch.tensor([PAD_ID]))) == 0
    imp = np.zeros(k)
    imp[:3] = 1.0
    out = R.soft_scores(model, {n: text}, [(n, c, "first3", imp)], model_name="caml", samples=2, seed=0)
    got = out.set_index("measure")
    with torch.no_grad():
        e = model.embed(torch.as_tensor(enc.ids)[None])
    p = float(_prob(model, e, label)[0])
    p0 = float(_prob(model, torch.zeros_like(e), label)[0])
    keep_rest, keep_span = e.clone(), e.clone()
    keep_rest[0, :3] = 0.0
    keep_span[0, 3:] = 0.0
    p_nc, p_ns = float(_prob(model, keep_rest, label)[0]), float(_prob(model, keep_span, label)[0])
    s0 = 1 - max(0.0, p - p0)
    nc = min(1.0, max(0.0, max(0.0, p - p_nc) / ((1 - s0) if 1 - s0 != 0 else -1e-5)))
    ns = min(1.0, max(0.0, ((1 - max(0.0, p - p_ns)) - (s0 - 1e-4)) / (1 - (s0 - 1e-4))))
    assert got.value["soft_nc"] == pytest.approx(nc, abs=1e-5)
    assert got.value["soft_ns"] == pytest.approx(ns, abs=1e-5)
    assert got.p["soft_nc"] == pytest.approx(p, abs=1e-6) and got.p_zero["soft_nc"] == pytest.approx(p0, abs=1e-6)
    assert (got.rationale_size == 3).all() and (got.n_units == k).all()


def test_soft_scores_average_the_authors_score_over_draws_by_hand():
    # importance 0.5 on every other unit: the keep masks are random; redraw them from the same seeded
    # generator (NC first, S masks of [n, D], then NS), score each draw with the formula, average.
    model = _model()
    n, c, text = _pair(model)
    enc = model.tokenizer.encode(text)
    k, label = len(enc), model.labels.index(c)
    imp = np.where(np.arange(k) % 2 == 0, 1.0, 0.5)
    imp[1] = 0.0  # min 0, max 1: the importance is itself
    out = R.soft_scores(model, {n: text}, [(n, c, "mixed", imp)], model_name="caml", samples=3, seed=4).set_index("measure")
    with torch.no_grad():
        e = model.embed(torch.as_tensor(enc.ids)[None])
    p = float(_prob(model, e, label)[0])
    p0 = float(_prob(model, torch.zeros_like(e), label)[0])
    rng = R.pair_rng(4, n, c, "mixed")
    for measure, keep_p, fn in (("soft_nc", 1 - imp, R.soft_nc), ("soft_ns", imp, R.soft_ns)):
        draws = [rng.random((k, e.shape[-1])) < keep_p[:, None] for _ in range(3)]
        scores = [fn(p, float(_prob(model, e * torch.from_numpy(m)[None].float(), label)[0]), p0) for m in draws]
        assert out.value[measure] == pytest.approx(float(np.mean(scores)), abs=1e-5)


def test_soft_scores_of_constant_importance_by_hand():
    # constant importance (nothing, or everything) is all zeros after min-max (the authors' 0/0 rule):
    # NC keeps every element (keep 1 - 0): p' = p, NC = 0; NS keeps none: p' = p0, so
    # S(x, x') = S(x, 0) and NS = 1e-4 / (1 - S(x, 0) + 1e-4) = 1e-4 / (max(0, p - p0) + 1e-4)
    model = _model()
    n, c, text = _pair(model)
    k = len(model.tokenizer.encode(text))
    out = R.soft_scores(model, {n: text}, [(n, c, "none", np.zeros(k)), (n, c, "all", np.ones(k))],
                        model_name="caml", samples=2, seed=0)
    for source in ("none", "all"):
        v = out[out.source == source].set_index("measure")
        p, p0 = v.p["soft_nc"], v.p_zero["soft_nc"]
        assert v.value["soft_nc"] == pytest.approx(0.0, abs=1e-5)
        # the batch of masked copies vs the single padding input agree to ~1e-7 in probability
        assert v.value["soft_ns"] == pytest.approx(1e-4 / (max(0.0, p - p0) + 1e-4), abs=2e-3)
        assert v.rationale_size["soft_nc"] == 0


def test_soft_scores_reject_a_wrong_length():
    model = _model()
    n, c, text = _pair(model)
    k = len(model.tokenizer.encode(text))
    with pytest.raises(ValueError, match="units"):
        R.soft_scores(model, {n: text}, [(n, c, "bad", np.ones(k + 1))], model_name="caml")


# --- F-Fidelity -------------------------------------------------------------------------------------
def test_ffid_ratio_by_hand():
    # n 10, alpha 0.5, beta 0.1: a 2-unit rationale, 2 * 0.5 = 1 <= 0.1 * 10 = 1 -> alpha 0.5
    assert R.ffid_ratio(2, 10, 0.5, 0.1) == 0.5
    # its 8-unit complement: 8 * 0.5 = 4 > 1 -> 0.1 * 10 / 8 = 0.125 (one unit on average)
    assert R.ffid_ratio(8, 10, 0.5, 0.1) == pytest.approx(0.125)
    # n 40, 30-unit pool, alpha 0.5, beta 0.1: 15 > 4 -> 4 / 30
    assert R.ffid_ratio(30, 40, 0.5, 0.1) == pytest.approx(4 / 30)


def test_ffid_removals_by_hand():
    support = np.array([True, True] + [False] * 8)
    plus = R.ffid_removals(support, 0.5, 0.1, 6, np.random.default_rng(0), True)
    u = np.random.default_rng(0).random((6, 2))  # the same draws: unit i of {0, 1} goes where u <= 0.5
    assert [list(r) for r in plus] == [list(np.flatnonzero(row <= 0.5)) for row in u]
    minus = R.ffid_removals(support, 0.5, 0.1, 6, np.random.default_rng(1), False)
    u = np.random.default_rng(1).random((6, 8))  # from {2..9}, where u <= 0.125
    assert [list(r) for r in minus] == [list(2 + np.flatnonzero(row <= 0.125)) for row in u]
    # on average ratio * pool units: 0.125 * 8 = 1 = beta * n
    many = R.ffid_removals(support, 0.5, 0.1, 4000, np.random.default_rng(2), False)
    assert np.mean([len(r) for r in many]) == pytest.approx(1.0, abs=0.06)
    # an empty pool: every sample is the unchanged note
    empty = R.ffid_removals(np.zeros(4, bool), 0.5, 0.1, 3, np.random.default_rng(0), True)
    assert len(empty) == 3 and all(len(r) == 0 for r in empty)
    assert R.ffid(0.8, [0.6, 0.4]) == pytest.approx(0.3)


def test_ffid_scores_by_hand():
    model = _model()
    n, c, text = _pair(model)
    enc = model.tokenizer.encode(text)
    k = len(enc)
    imp = np.zeros(k)
    imp[:3] = 1.0
    out = R.ffid_scores(model, {n: text}, [(n, c, "first3", imp)], model_name="caml", alpha=0.5, beta=0.2,
                        samples=5, seed=5).set_index("measure")
    lab = torch.tensor([model.labels.index(c)])
    prob = lambda ids: float(torch.sigmoid(model(torch.as_tensor(ids)[None], None, lab).logits[0, 0]))
    rng = R.pair_rng(5, n, c, "ffid:first3")
    with torch.no_grad():
        p = prob(enc.ids)
        for measure, pool in (("ffid_plus_prob", np.arange(3)), ("ffid_minus_prob", np.arange(3, k))):
            # pool 3: 1.5 <= 0.2 k (k >= 10) -> 0.5; the rest: (k - 3) * 0.5 > 0.2 k -> 0.2 k / (k - 3)
            ratio = 0.5 if len(pool) * 0.5 <= 0.2 * k else 0.2 * k / len(pool)
            drops = []
            for _ in range(5):
                gone = pool[rng.random(len(pool)) <= ratio]
                drops.append(p - prob(np.where(np.isin(np.arange(k), gone), model.tokenizer.mask_id, enc.ids)))
            assert out.value[measure] == pytest.approx(float(np.mean(drops)), abs=1e-6)
    with pytest.raises(ValueError, match="units"):
        R.ffid_scores(model, {n: text}, [(n, c, "bad", np.ones(k + 1))], model_name="caml")


def test_random_masking_for_finetuning_masks_int_beta_n_by_hand():
    # RandomPixelRemoval: int(beta * n) units, uniformly without replacement
    ids = torch.arange(10, 30).reshape(2, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 5:] = False
    out = T.random_masks(ids, mask, 0.3, 2, np.random.default_rng(0))
    changed = out != ids
    # row 0: int(0.3 * 10) = 3; row 1 (5 units): int(1.5) = 1, never in its padding
    assert changed[0].sum() == 3 and changed[1].sum() == 1 and not changed[1, 5:].any()
    assert (out[changed] == 2).all()
    # the same generator gives the same positions: choice(10, 3) then choice(5, 1)
    rng = np.random.default_rng(0)
    first, second = set(rng.choice(10, size=3, replace=False)), set(rng.choice(5, size=1, replace=False))
    assert set(np.flatnonzero(changed[0].numpy())) == first and set(np.flatnonzero(changed[1].numpy())) == second
    # int(0.05 * 10) = 0: nothing masked
    assert torch.equal(T.random_masks(ids, mask, 0.05, 2, np.random.default_rng(0)), ids)
