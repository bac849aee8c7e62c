"""Notebook step functions: the profile switches that choose which models get which computation."""
import pandas as pd
import pytest
import torch

from rationale_kit.workbook.protocols.data import eval_docs
from rationale_kit.workbook.protocols.faithfulness import SIZE_MATCHED, faithfulness_tables
from rationale_kit.workbook.protocols.rationales import llm_rationales, llm_requests, model_rationales, run_entity_linking
from rationale_kit.workbook.protocols.train import coding_seed_spread, coding_table, fit_model, note_counts, seed_dirs
from rationale_kit.core.config import load_profile
from rationale_kit.models import build_model
from test_models import LABELS, TEXTS, W2V, word_params

torch.set_num_threads(1)


def _setup():
    torch.manual_seed(0)
    models = {n: build_model(n, word_params(n), LABELS, TEXTS, W2V, max_words=4000) for n in ("caml", "laat")}
    docs = pd.DataFrame({"note_id": ["a", "b"], "text": TEXTS[:2], "codes": [["I10"], ["E11.9"]], "split": ["test", "test"]})
    pairs = pd.DataFrame([{"model": m, "note_id": n, "code": c} for m in models for n, c in (("a", "I10"), ("b", "E11.9"))])
    return models, docs, pairs


def test_gradient_models_limits_the_gradient_rationales():
    models, docs, pairs = _setup()
    prof = load_profile("smoke", {"common": {"progress": False}, "rationales": {"gradient_models": ["laat"]}})
    soft, report = model_rationales(models, docs, pairs, prof)
    by = soft.groupby(["model", "source"]).size()
    assert ("caml", "attention") in by and ("laat", "attention") in by and ("laat", "gradient") in by
    assert ("caml", "gradient") not in by
    assert report["caml"]["gradient"].startswith("not computed")
    assert report["laat"]["gradient"] == prof.rationales.gradient_method


def test_faithfulness_models_chooses_the_scorers():
    models, docs, pairs = _setup()
    prof = load_profile("smoke", {"common": {"progress": False}, "faithfulness": {"models": ["caml"], "max_pairs": 2}})
    soft, _ = model_rationales(models, docs, pairs, prof)
    entity = pd.DataFrame({"note_id": ["a"], "code": ["I10"], "start": [0], "end": [5], "source": ["entity"]})
    table = faithfulness_tables(models, docs, {"entity": entity}, soft, prof)
    assert set(table.model) == {"caml"}


def test_faithfulness_scores_report_notes_only_with_a_size_matched_attention():
    from rationale_kit.metrics.evaluation import EvaluationDesign

    models, docs, pairs = _setup()
    prof = load_profile("smoke", {"common": {"progress": False}, "faithfulness": {"models": ["caml"], "code_set": "gold"}})
    soft, _ = model_rationales(models, docs, pairs, prof)
    entity = pd.DataFrame({"note_id": ["a", "b"], "code": ["I10", "E11.9"], "start": [0, 0], "end": [5, 5],
                           "source": ["entity (exact_code)"] * 2})
    design = EvaluationDesign(("a", "b"), ("b",), ("a",), 0.5)  # b is a tuning note: never scored
    table = faithfulness_tables(models, docs, {"entity (exact_code)": entity}, soft, prof, design=design)
    assert set(table.note_id) == {"a"}
    sm = table[(table.source == SIZE_MATCHED.name) & (table.control == "rationale") & table.k.isna()]
    ent = table[(table.source == "entity (exact_code)") & (table.control == "rationale") & table.k.isna()]
    # attention with k = the entity rationale's unit count removes as many units as the entity spans
    assert len(sm) and sm.rationale_size.iloc[0] == ent.rationale_size.iloc[0]


def test_few_shot_examples_when_every_document_is_annotated():
    # CodiEsp-like: every document has spans, the few-shot pool is part of the annotated training notes
    from types import SimpleNamespace

    docs = pd.DataFrame({
        "note_id": ["t1", "t2", "p1", "e1"], "text": ["fever and cough"] * 3 + ["cough again"],
        "codes": [["R05"], ["R05"], ["R05"], ["R05"]], "split": ["train", "train", "train", "test"],
        "annotated": [True] * 4, "fewshot": [False, False, True, False],
    })
    spans = pd.DataFrame({"note_id": ["t1", "t2", "p1", "e1"], "code": ["R05"] * 4, "start": [10, 10, 10, 0],
                          "end": [15, 15, 15, 5], "granularity": ["mention"] * 4, "source": ["human"] * 4})
    ds = SimpleNamespace(docs=docs, spans=spans, codes=pd.DataFrame({"code": ["R05"], "description": ["Cough"]}))
    prof = load_profile("smoke")
    reqs = llm_requests(ds, eval_docs(docs), 1, prof)
    assert [r.note_id for r in reqs] == ["e1"]
    # the example comes from the pool note (its context "fever and"), never from the evaluated note
    assert "fever and" in reqs[0].prompt.user and reqs[0].prompt.user.count("cough again") == 1


# --------------------------------------------------------------------------------------------
# fit_model: caps and checkpoint keys
# --------------------------------------------------------------------------------------------
def _fit_setup(tmp_path, **overrides):
    import numpy as np

    rng = np.random.default_rng(0)
    words = ["fever", "cough", "sugar", "pain", "bone", "x", "y", "z"]
    rows = []
    for i in range(40):
        codes = ["J18.9"] if i % 2 else ["E11.9"]
        rows.append({"note_id": f"n{i}", "text": " ".join(rng.choice(words, 12)) + (" pneumonia" if i % 2 else " diabetes"),
                     "codes": codes, "split": "train" if i < 30 else "val"})
    docs = pd.DataFrame(rows)
    base = {"common": {"progress": False, "seed": 3},
            "train": {"max_train_docs": 10, "word2vec": {"dim": 8, "epochs": 1, "min_count": 1},
                      "caml": {"embed_dim": 8, "filters": 4, "kernel": 3, "epochs": 1, "patience": 1}}}
    prof = load_profile("smoke", {**base, **overrides})
    return prof, docs


def test_guided_cap_replaces_the_training_cap(tmp_path):
    prof, docs = _fit_setup(tmp_path)
    res = fit_model("caml", prof, docs, ["E11.9", "J18.9"], tmp_path / "a")
    assert res.timing["docs"] == 10  # train.max_train_docs
    res = fit_model("caml", prof, docs, ["E11.9", "J18.9"], tmp_path / "b", max_train_docs=25)
    assert res.timing["docs"] == 25  # guided.max_train_docs = 25 is not cut back to 10


def test_student_retrains_when_its_starting_model_changes(tmp_path, capsys):
    prof, docs = _fit_setup(tmp_path)
    labels = ["E11.9", "J18.9"]
    fit_model("caml", prof, docs, labels, tmp_path / "t1")
    first = fit_model("caml", prof, docs, labels, tmp_path / "student", init_from=tmp_path / "t1" / "model")
    assert first.timing["steps"] > 0
    again = fit_model("caml", prof, docs, labels, tmp_path / "student", init_from=tmp_path / "t1" / "model")
    assert again.timing["steps"] == 0  # same key: reused
    other = load_profile("smoke", {"common": {"progress": False, "seed": 3}, "train": {
        "max_train_docs": 10, "word2vec": {"dim": 8, "epochs": 1, "min_count": 1},
        "caml": {"embed_dim": 8, "filters": 4, "kernel": 3, "epochs": 1, "patience": 1, "dropout": 0.7}}})
    fit_model("caml", other, docs, labels, tmp_path / "t2")  # another trained model
    capsys.readouterr()
    moved = fit_model("caml", prof, docs, labels, tmp_path / "student", init_from=tmp_path / "t2" / "model")
    assert moved.timing["steps"] > 0
    assert "key.init_from" in capsys.readouterr().out


def test_rationale_sources_switch_off_gradient_entity_and_teachers(tmp_path):
    models, docs, pairs = _setup()
    prof = load_profile("smoke", {"common": {"progress": False}, "rationales": {"sources": ["attention", "llm_zero"]}})
    soft, report = model_rationales(models, docs, pairs, prof)
    assert set(soft.source) == {"attention"}
    assert report["caml"]["gradient"] == "not computed (rationales.sources)"
    codes = pd.DataFrame({"code": ["I10", "E11.9"], "description": ["Essential hypertension", "Type 2 diabetes"]})
    spans, mentions = run_entity_linking(docs, pairs, codes, prof)
    assert len(spans) == 0 and len(mentions) == 0 and "start" in spans.columns
    quotes, calls = llm_rationales(None, docs, load_profile("smoke", {"rationales": {"sources": ["attention"]}}),
                                         tmp_path, {"llm_zero": 0, "llm_few": 1})
    assert len(quotes) == 0 and {"source", "note_id", "quote"} <= set(quotes.columns)


@pytest.mark.parametrize("change, shown", [
    ({"data": {"max_words": 3000}}, "key.max_words: 4000 -> 3000"),
    ({"train": {"word2vec": {"window": 2}}}, "key.word2vec.window: 3 -> 2"),
    ({"train": {"amp": False}}, "train_cfg.amp: True -> False"),
    ({"train": {"caml": {"dropout": 0.6}}}, "params.dropout: 0.2 -> 0.6"),
])
def test_any_setting_of_the_model_restarts_a_finished_checkpoint(tmp_path, capsys, change, shown):
    import json as _json

    _, docs = _fit_setup(tmp_path)
    labels = ["E11.9", "J18.9"]
    base = {"common": {"progress": False, "seed": 3}, "data": {"max_words": 4000},
            "train": {"max_train_docs": 10, "word2vec": {"dim": 8, "epochs": 1, "min_count": 1, "window": 3},
                      "caml": {"embed_dim": 8, "filters": 4, "kernel": 3, "epochs": 1, "patience": 1}}}
    fit_model("caml", load_profile("smoke", base), docs, labels, tmp_path / "m2")

    def merge(a, b):
        return {k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v for k, v in {**a, **b}.items()}

    capsys.readouterr()
    res = fit_model("caml", load_profile("smoke", merge(base, change)), docs, labels, tmp_path / "m2")
    out = capsys.readouterr().out
    assert res.timing["steps"] > 0 and "starting over" in out and shown in out, out
    saved = _json.loads((tmp_path / "m2" / "model" / "config.json").read_text())
    if "caml" in change.get("train", {}):
        assert saved["params"]["dropout"] == 0.6  # the saved config and the weights agree


# --------------------------------------------------------------------------------------------
# notebook 02: the coding table's interval over notes, and the spread across training seeds
# --------------------------------------------------------------------------------------------
def test_note_counts_count_unseen_gold_as_false_negatives():
    import numpy as np

    y = np.array([[1, 0, 1], [0, 1, 0]])
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    counts = note_counts(y, pred, np.array([2, 0]), ["a", "b"])
    # note a: tp 1 (code 0), fp 1 (code 1), fn 1 (code 2) + 2 unseen; note b: tp 1
    assert counts.to_dict("index") == {"a": {"tp": 1, "fp": 1, "fn": 3}, "b": {"tp": 1, "fp": 0, "fn": 0}}


def test_coding_table_interval_brackets_micro_f1_and_the_seed_spread_is_mean_and_sample_std():
    from rationale_kit.metrics.evaluation import Bootstrap

    labels = ["A", "B"]
    docs = pd.DataFrame({"note_id": [f"n{i}" for i in range(8)],
                         "codes": [["A"], ["B"], ["A", "B"], ["A"], ["A"], ["B"], ["A"], ["B"]],
                         "split": ["train", "train", "val", "val", "test", "test", "test", "test"]})
    test = docs[docs.split == "test"]
    probs = {"A": [0.9, 0.2, 0.6, 0.7], "B": [0.1, 0.8, 0.3, 0.4]}  # > 0.5: A on n4, n6, n7; B on n5
    pred = pd.DataFrame([{"note_id": n, "code": c, "prob": probs[c][i]} for i, n in enumerate(test.note_id) for c in labels])
    table = coding_table({"m": pred}, docs, labels, {"m": 0.5}, boot=Bootstrap(200, 0, 0.95))
    # gold: n4 A, n5 B, n6 A, n7 B -> tp 3 (n4 A, n5 B, n6 A), fp 1 (n7 A), fn 1 (n7 B): F1 = 6 / 8
    assert table.loc["m", "micro_f1"] == pytest.approx(0.75)
    assert table.loc["m", "micro_f1_lo"] <= 0.75 <= table.loc["m", "micro_f1_hi"]
    assert table.loc["m", "notes"] == 4 and "micro_f1_lo" in table.columns
    assert "micro_f1_lo" not in coding_table({"m": pred}, docs, labels, {"m": 0.5}).columns  # no boot: as before
    other = table.copy()
    other.loc["m", "micro_f1"] = 0.55
    spread = coding_seed_spread({1: table, 2: other}, measures=("micro_f1",))
    assert list(spread.index) == ["m"]  # the frequency baseline has no seed
    assert spread.loc["m", "seeds"] == 2
    assert spread.loc["m", "micro_f1 mean"] == pytest.approx(0.65)
    assert spread.loc["m", "micro_f1 std"] == pytest.approx(0.1414213562, rel=1e-6)  # sqrt(0.02)


def test_seed_dirs_keep_the_first_seed_where_the_series_reads_it(tmp_path):
    assert seed_dirs(tmp_path, "caml", [13, 7]) == {13: tmp_path / "caml", 7: tmp_path / "caml_seed7"}


def test_a_later_seed_is_explained_and_scored_on_the_first_seeds_pairs():
    """The later seeds' steps (03: seed_rationales, 05: faithfulness_seed_tables) on the first
    seed's pairs: a 'later seed' that is the first seed's model itself reproduces the first seed's
    attention and finding (b)'s values exactly, on the same pairs, with nothing else scored."""
    import copy

    from rationale_kit.workbook.protocols.faithfulness import compared_sources, faithfulness_seed_tables, seed_sources
    from rationale_kit.workbook.protocols.rationales import seed_rationales

    models, docs, pairs = _setup()
    prof = load_profile("smoke", {"common": {"progress": False, "seeds": [7, 8]},
                                  "faithfulness": {"models": ["caml"], "code_set": "gold"}})
    soft, _ = model_rationales(models, docs, pairs, prof)
    twin = copy.deepcopy(models["caml"])
    soft_seeds = seed_rationales({("caml", 8): twin}, docs, pairs, prof)
    assert set(soft_seeds.seed) == {8} and set(soft_seeds.model) == {"caml"}
    first_att = soft[(soft.model == "caml")].reset_index(drop=True)
    pd.testing.assert_frame_equal(soft_seeds.drop(columns="seed").reset_index(drop=True), first_att)
    entity = pd.DataFrame({"note_id": ["a", "b"], "code": ["I10", "E11.9"], "start": [0, 0], "end": [5, 5],
                           "source": ["entity (exact_code)"] * 2})
    discrete = {"entity (exact_code)": entity, "llm_zero": entity.assign(source="llm_zero")}
    table = faithfulness_tables({"caml": models["caml"]}, docs, discrete, soft, prof)
    # the first seed scored one of the two pairs only (say): the later seed must score that one
    att = compared_sources(prof.rationales.topk)[0].name
    first = table[~((table.note_id == "b") & (table.source == att))]
    rows = faithfulness_seed_tables({("caml", 8): twin}, docs, discrete, soft_seeds, first, prof)
    assert set(rows.seed) == {8} and set(rows.source) == set(seed_sources(prof.rationales.topk))  # no LLM, no curves
    assert set(zip(rows.note_id, rows.code)) == {("a", "I10")} and rows.k.isna().all()
    key = ["source", "measure", "control", "note_id", "code"]
    mine = rows.set_index(key).value.sort_index()
    theirs = table[(table.note_id == "a") & table.k.isna()].set_index(key).value.reindex(mine.index)
    pd.testing.assert_series_equal(mine, theirs)


def test_the_faithfulness_sample_draws_from_pairs_every_training_seed_scores():
    """With later training seeds, the sample is drawn among the pairs in the code set of every
    later seed's model (seed_code_set_pairs), so each sampled pair is scored under every seed."""
    import copy

    from rationale_kit.workbook.protocols.faithfulness import seed_code_set_pairs

    models, docs, pairs = _setup()
    models = {"caml": models["caml"]}
    models["caml"].threshold = 0.0  # the first seed's model predicts every label
    prof = load_profile("smoke", {"common": {"progress": False}, "faithfulness": {"models": ["caml"]}})
    soft, _ = model_rationales(models, docs, pairs, prof)
    entity = pd.DataFrame({"note_id": ["a", "b"], "code": ["I10", "E11.9"], "start": [0, 0], "end": [5, 5],
                           "source": ["entity (exact_code)"] * 2})
    every, none = copy.deepcopy(models["caml"]), copy.deepcopy(models["caml"])
    none.threshold = 1.0  # a later seed's model that predicts nothing (p > 1 never holds)
    all_pairs = {(n, c) for n in ("a", "b") for c in models["caml"].labels}
    assert seed_code_set_pairs({("caml", 8): every}, docs, "predicted") == {"caml": all_pairs}
    # the pairs of every later seed: the intersection over seeds
    assert seed_code_set_pairs({("caml", 8): every, ("caml", 9): none}, docs, "predicted") == {"caml": set()}
    # gold codes are the same under every seed; no seed: no restriction
    assert seed_code_set_pairs({("caml", 8): none}, docs, "gold") == {"caml": {("a", "I10"), ("b", "E11.9")}}
    assert seed_code_set_pairs({}, docs, "predicted") == {}
    disc = {"entity (exact_code)": entity}
    ent_pairs = lambda t: set(zip(*[t[(t.source == "entity (exact_code)") & t.k.isna()][c] for c in ("note_id", "code")]))
    base = faithfulness_tables(models, docs, disc, soft, prof)
    assert ent_pairs(base) == {("a", "I10"), ("b", "E11.9")}
    # a later seed that scores every pair changes nothing; one that scores (a, I10) only narrows the sample to it
    same = faithfulness_tables(models, docs, disc, soft, prof, every_seed={"caml": all_pairs})
    pd.testing.assert_frame_equal(same, base)
    narrowed = faithfulness_tables(models, docs, disc, soft, prof, every_seed={"caml": {("a", "I10")}})
    assert ent_pairs(narrowed) == {("a", "I10")} and set(narrowed.note_id) == {"a"}
