"""Notebook 09's machinery: gradient surgery, the two-stage constraint, the random-masking fine-tuning,
each on cases worked by hand; and the profile section."""
import os

import numpy as np
import pandas as pd
import pytest
import torch

from rationale_kit.core.config import ConfigError, Word2Vec, load_profile
from rationale_kit.metrics.faithfulness import robust as R
from rationale_kit.models import build_model
from rationale_kit.training import tradeoff as T
from test_models import WordParams, word_params

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

KEYS = {"J18.9": "pneumonia", "E11.9": "diabetes", "S72.0": "fracture"}
FILLER = [f"w{i}" for i in range(30)]
PARAMS = WordParams(embed_dim=8, filters=6, kernel=3, hidden=4, projection=4, dropout=0.0, lr=5e-2,
                     weight_decay=0.0, batch_size=8, epochs=1, patience=1)
W2V = Word2Vec(dim=8, window=3, min_count=1, epochs=1)


def _corpus(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        codes = [c for c in KEYS if rng.random() < 0.5]
        words = list(rng.choice(FILLER, size=int(rng.integers(10, 20))))
        for c in codes:
            words.insert(int(rng.integers(0, len(words) + 1)), KEYS[c])
        rows.append({"note_id": f"n{i}", "text": " ".join(words), "codes": codes})
    return pd.DataFrame(rows)


DOCS = _corpus(24, 1)


def _targets(docs):
    """Teacher spans: the keyword of each gold code."""
    out = {}
    for n, t, cs in zip(docs.note_id, docs.text, docs.codes):
        for c in cs:
            s = t.index(KEYS[c])
            out[(n, c)] = [(s, s + len(KEYS[c]))]
    return out


def _model(name="caml", seed=0):
    torch.manual_seed(seed)
    return build_model(name, word_params(name, PARAMS), list(KEYS), DOCS["text"], W2V).eval()


# --- gradient surgery -------------------------------------------------------------------------
def test_projection_of_conflicting_2d_gradients_by_hand():
    # g_rat = (-1, 1) against g_code = (1, 0): dot -1 < 0, so g - (-1 / 1) (1, 0) = (0, 1)
    g, ref = torch.tensor([-1.0, 1.0]), torch.tensor([1.0, 0.0])
    out = T.project_conflicting(g, ref)
    assert torch.allclose(out, torch.tensor([0.0, 1.0]))
    assert float(torch.dot(out, ref)) == pytest.approx(0.0)
    # (-2, 1) against (1, 1): dot -1, |ref|^2 2 -> (-2, 1) + 0.5 (1, 1) = (-1.5, 1.5)
    assert torch.allclose(T.project_conflicting(torch.tensor([-2.0, 1.0]), torch.tensor([1.0, 1.0])), torch.tensor([-1.5, 1.5]))


def test_projection_leaves_agreeing_or_orthogonal_gradients_alone():
    for g in ([1.0, 1.0], [0.0, 3.0]):
        g = torch.tensor(g)
        assert torch.equal(T.project_conflicting(g, torch.tensor([1.0, 0.0])), g)
    assert torch.equal(T.project_conflicting(torch.tensor([1.0, 2.0]), torch.zeros(2)), torch.tensor([1.0, 2.0]))


def test_surgery_trains_and_counts_conflicts():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    stats = T.train_surgery(model, DOCS, _targets(DOCS), 1.0, epochs=1, batch_size=8, seed=3)
    assert stats["steps"] == 3 and stats["rationale_steps"] == 3
    assert 0 <= stats["conflicts"] <= stats["rationale_steps"]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # without teacher spans it is plain coding training: no rationale step
    assert T.train_surgery(_model(), DOCS, None, 1.0, epochs=1, batch_size=8)["rationale_steps"] == 0


# --- two-stage ----------------------------------------------------------------------------------
def test_constraint_penalty_by_hand():
    logits = torch.tensor([[1.0, 0.0, -2.0]])
    ref = torch.zeros(1, 3)
    # excesses over 0.5: 0.5, 0, 1.5 -> squares 0.25, 0, 2.25 -> mean 2.5 / 3
    assert float(T.constraint_penalty(logits, ref, 0.5)) == pytest.approx(2.5 / 3)
    assert float(T.constraint_penalty(logits, ref, 2.0)) == 0.0


@pytest.mark.parametrize("name", ["caml", "laat"])
def test_two_stage_moves_only_the_queries_and_reports_the_constraint(name):
    model = _model(name)
    queries = {id(q) for q in T.query_parameters(model)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = T.train_two_stage(model, DOCS, _targets(DOCS), 0.5, epochs=2, lr=0.05, penalty=10.0, seed=1)
    assert stats["steps"] > 0 and 0.0 <= stats["within_tol"] <= 1.0
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (id(p) in queries), n
        assert p.requires_grad  # restored


def test_two_stage_with_a_huge_penalty_and_zero_steps_keeps_every_logit():
    model = _model()
    stats = T.train_two_stage(model, DOCS, _targets(DOCS), 0.0, epochs=1, lr=0.0, seed=1)
    assert stats["within_tol"] == 1.0  # lr 0: the logits are the coder's


def test_random_masks_stay_within_beta_and_finetuning_copies():
    rng = np.random.default_rng(0)
    ids = torch.arange(10, 30).reshape(2, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 5:] = False
    out = T.random_masks(ids, mask, 0.3, 2, rng)
    changed = out != ids
    assert changed[0].sum() <= 3 and changed[1].sum() <= 2 and not changed[1, 5:].any()
    assert (out[changed] == 2).all()
    model = _model()
    w = model.embedding.weight.detach().clone()
    ft = T.finetune_random_masking(model, DOCS, 0.2, epochs=1, lr=0.01)
    assert ft is not model and torch.equal(model.embedding.weight, w)
    assert not torch.equal(ft.embedding.weight, w)
    with pytest.raises(ValueError, match="beta"):
        T.finetune_random_masking(model, DOCS, 0.0)


# --- Soft-NC / Soft-NS and F-Fidelity: tests/test_robust_faithfulness.py (hand-worked against the
# authors' code) ----------------------------------------------------------------------------------


# --- the profile section ----------------------------------------------------------------------------
def test_open_questions_profile_section_and_plan():
    from rationale_kit.workbook.protocols.open_questions import plan

    assert load_profile("default").open_questions.scale == "reduced"
    assert load_profile("codiesp").open_questions.scale == "full"
    p = load_profile("smoke", {"open_questions": {"scale": "reduced", "surgery_lambdas": [0.1, 0.2, 0.3],
                                                  "fractions": [0.25, 0.5, 1.0]}, "guided": {"models": ["caml", "laat"]}})
    pl = plan(p)
    assert pl.models == ["caml"] and pl.surgery_lambdas == [0.1, 0.2] and pl.fractions == [0.25, 0.5, 1.0]
    assert pl.curve_notes == 10 and pl.faithfulness_pairs <= 20  # smoke's own cap, under reduced's 40
    assert plan(load_profile("smoke", {"open_questions": {"curve_notes": None}})).curve_notes == 40
    full = plan(load_profile("smoke", {"open_questions": {"scale": "full", "fractions": [0.25, 1.0], "curve_notes": None}, "guided": {"models": ["caml", "laat"]}}))
    assert full.fractions == [0.25, 1.0] and full.curve_notes is None and full.models == ["caml", "laat"]
    with pytest.raises(ConfigError, match="ffid_beta"):
        load_profile("smoke", {"open_questions": {"ffid_beta": 1.5}})
    with pytest.raises(ConfigError, match="open_questions"):
        load_profile("smoke", {"open_questions": {"nope": 1}})


# --- choices on the tuning notes and the no-cost verdict ----------------------------------------------
def _count_rows(method, setting, measure, tp, fp, fn, note="t1", code="A"):
    return {"note_id": note, "code": code if measure != "coding" else "-", "measure": measure, "tp": tp, "fp": fp, "fn": fn,
            "model": "caml", "method": method, "setting": setting}


def test_setting_chosen_on_tuning_notes_respects_the_coding_slack():
    from rationale_kit.workbook.protocols.open_questions import choose_setting

    pi = "token_position_independent"
    counts = pd.DataFrame([
        _count_rows("unguided", 0.0, "coding", 8, 2, 2), _count_rows("unguided", 0.0, pi, 1, 9, 9),
        _count_rows("surgery", 1.0, "coding", 8, 2, 2), _count_rows("surgery", 1.0, pi, 5, 5, 5),  # F1 0.8 / 0.5
        _count_rows("surgery", 2.0, "coding", 6, 4, 4), _count_rows("surgery", 2.0, pi, 9, 1, 1),  # F1 0.6 / 0.9
        # a report note that must not influence the choice
        _count_rows("surgery", 1.0, pi, 0, 50, 50, note="r1"), _count_rows("surgery", 2.0, "coding", 0, 50, 50, note="r1"),
    ])
    chosen, scores = choose_setting(counts, "caml", "surgery", {"t1"}, slack=0.0)
    assert chosen == 1.0
    assert scores.set_index("setting")["tuning PI token F1"].to_dict() == pytest.approx({1.0: 0.5, 2.0: 0.9})
    assert scores.eligible.tolist() == [True, False]
    assert choose_setting(counts, "caml", "surgery", {"t1"}, slack=0.25)[0] == 2.0  # 0.6 >= 0.8 - 0.25
    with pytest.raises(ValueError, match="no run"):
        choose_setting(counts, "caml", "two-stage", {"t1"})


@pytest.mark.parametrize("lo,hi,margin,verdict", [(-0.008, -0.002, 0.01, "holds"), (-0.008, -0.002, 0.0, "does not hold"),
                                                  (-0.05, 0.01, 0.01, "inconclusive"), (-0.05, -0.02, 0.01, "does not hold")])
def test_no_coding_cost_is_non_inferiority_at_the_margin(lo, hi, margin, verdict):
    from rationale_kit.workbook.protocols.open_questions import _no_cost_row

    code = {"a": 0.5, "b": 0.505, "effect": (lo + hi) / 2, "lo": lo, "hi": hi, "n_notes": 30, "n_pairs": 30}
    row = _no_cost_row(code, "x", "caml", "d", margin, "units")
    assert row["verdict"] == verdict
    assert (row["effect"], row["lo"], row["hi"]) == (code["effect"], lo, hi)  # the unshifted change is reported
    assert row["expect"] == f"> -{margin:g}" and row["finding"] == "q1"


def test_finding_b_re_tested_with_the_expected_signs():
    from rationale_kit.workbook.protocols.open_questions import robust_verdicts

    prof = load_profile("smoke")
    k = prof.rationales.topk
    values = {"soft_nc": (0.8, 0.2), "soft_ns": (0.3, 0.7), "ffid_plus_prob": (0.5, 0.1), "ffid_minus_prob": (0.1, 0.3)}
    rows = []
    for i in range(12):
        for m, (a, e) in values.items():
            rows.append((f"n{i}", "A", f"attention (top-{k})", "caml", m, a + 0.01 * (i % 3), 0.9, 0.1, 50, 5))
            rows.append((f"n{i}", "A", "entity (exact_code)", "caml", m, e, 0.9, 0.1, 50, 3))
    rows.append(("n99", "A", "entity (exact_code)", "caml", "soft_nc", float("nan"), 0.1, 0.2, 50, 3))  # undefined: dropped
    v = robust_verdicts(pd.DataFrame(rows, columns=R.ROBUST_COLUMNS), prof, "toy").set_index("measure")
    assert v.loc["soft_nc", "verdict"] == "holds" and v.loc["soft_nc", "n_pairs"] == 12
    assert v.loc["soft_nc", "effect"] == pytest.approx(0.61)  # 0.8 + mean(0, .01, .02) - 0.2
    assert v.loc["soft_ns", "verdict"] == "holds"  # entity keeps more: attention - entity < 0
    assert v.loc["Soft-NC/NS", "verdict"] == "holds"
    assert v.loc["ffid_plus_prob", "verdict"] == "holds" and v.loc["ffid_minus_prob", "verdict"] == "does not hold"
    assert v.loc["F-Fidelity (probability)", "verdict"] == "does not hold"


def test_two_stage_lowers_the_rationale_loss_within_a_loose_tolerance():
    model = _model()
    targets = _targets(DOCS)

    def rationale_loss(m):
        notes = T._notes(m, DOCS, targets)
        with torch.no_grad():
            ids, mask, y, rows, target = T._batch(m, notes, np.arange(len(DOCS)), "cpu")
            return float(T._losses(m, ids, mask, y, rows, target, "kl")[2])

    before = rationale_loss(model)
    stats = T.train_two_stage(model, DOCS, targets, 10.0, epochs=5, lr=0.05, seed=0)
    assert rationale_loss(model) < before - 0.05
    assert stats["within_tol"] == 1.0  # no logit moved by 10
