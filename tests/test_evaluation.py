"""The evaluation design: notes, run-on pairs, per-pair counts, paired comparisons, lambda chosen on
tuning notes, verdicts. Expected values are worked out by hand in the comments."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from rationale_kit.metrics import evaluation as E
from rationale_kit.workbook.protocols.data import tuning_ids
from rationale_kit.workbook.protocols.faithfulness import attention_vs_entity, common_pairs, faithfulness_summary
from rationale_kit.workbook.protocols.fewshot import few_shot_summary
from rationale_kit.workbook.protocols.guided import choose_lambda, sweep_counts, tradeoff
from rationale_kit.workbook.protocols.plausibility import plausibility_tables
from rationale_kit.workbook.protocols.rationales import record_run_on
from rationale_kit.core.config import ConfigError, load_profile, seeds
from rationale_kit.metrics import plausibility as P

BOOT = E.Bootstrap(n_resamples=200, seed=0)


def _docs(ids=("a", "b", "c"), split="test"):
    texts = {"a": "fever and cough today", "b": "chest pain at rest", "c": "cough with fever"}
    return pd.DataFrame({"note_id": list(ids), "text": [texts[i] for i in ids], "codes": [["R05"]] * len(ids),
                         "split": [split] * len(ids), "annotated": [True] * len(ids), "fewshot": [False] * len(ids)})


def _span(n, c, s, e, src="x"):
    return {"note_id": n, "code": c, "start": s, "end": e, "granularity": "", "source": src}


# gold: a "cough" [10, 15); b "pain" [6, 10); c "cough" [0, 5)
GOLD = pd.DataFrame([_span("a", "R05", 10, 15, "human"), _span("b", "R05", 6, 10, "human"), _span("c", "R05", 0, 5, "human")])


def test_design_splits_are_disjoint_deterministic_and_round_trip(tmp_path):
    docs = pd.concat([_docs(), _docs(("a",), "train").assign(note_id="t")], ignore_index=True)
    d = E.make_design(docs, 1 / 3)
    assert d.eval_ids == ("a", "b", "c")  # the training note is not an evaluation note
    assert len(d.tuning_ids) == 1 and set(d.tuning_ids) | set(d.report_ids) == {"a", "b", "c"}
    assert d.tuning_ids == E.make_design(docs, 1 / 3).tuning_ids
    assert set(d.tuning_ids) == tuning_ids(docs, 1 / 3)
    d = d.with_run_on(E.run_on_frame("llm_zero", [("a", "R05")]))
    d = d.with_run_on(E.run_on_frame("llm_zero", [("b", "R05")]))  # replaces the earlier group
    assert d.pairs("llm_zero") == {("b", "R05")} and d.pairs("entity (exact_code)") is None
    d.save(tmp_path)
    back = E.EvaluationDesign.load(tmp_path)
    assert back.report_ids == d.report_ids and back.pairs("llm_zero") == {("b", "R05")}
    with pytest.raises(ValueError, match="overlap"):
        E.EvaluationDesign(("a",), ("a",), ("a",), 0.5)


def test_report_notes_first_for_a_capped_source():
    docs = _docs()
    d = E.make_design(docs, 1 / 3)
    picked = E.pick_report_first(docs, d, 2)
    assert set(picked.note_id) == set(d.report_ids)  # the tuning note is never among the 2


def test_pair_counts_sum_to_mdace_measures():
    docs = _docs()
    # pred: a "and cough" [6, 15) (tokens and, cough: tp 1, fp 1); b nothing; c "with fever" [6, 16)
    # (tp 0, fp 2, fn 1); a pair without gold (a, R50) is ignored
    pred = pd.DataFrame([_span("a", "R05", 6, 15), _span("c", "R05", 6, 16), _span("a", "R50", 0, 5)])
    counts = E.pair_counts(GOLD, pred, docs)
    pi = counts[counts.measure == "token_position_independent"].set_index("note_id")
    assert pi.loc["a", ["tp", "fp", "fn"]].tolist() == [1, 1, 0]
    assert pi.loc["b", ["tp", "fp", "fn"]].tolist() == [0, 0, 1]
    assert pi.loc["c", ["tp", "fp", "fn"]].tolist() == [0, 2, 1]
    ref = P.mdace_measures(GOLD, pred, docs)
    for m, part in counts.groupby("measure"):
        assert part[["tp", "fp", "fn"]].sum().tolist() == [ref[m]["tp"], ref[m]["fp"], ref[m]["fn"]], m


def test_a_source_run_on_one_note_is_scored_on_that_note_only():
    docs = _docs()
    design = E.make_design(docs, 0.0).with_run_on(pd.concat([
        E.run_on_frame("llm_zero", [("a", "R05")]), E.run_on_frame("entity (exact_code)", [(n, "R05") for n in "abc"]),
        E.run_on_frame("random", [(n, "R05") for n in "abc"])]))
    ds = SimpleNamespace(docs=docs, spans=GOLD, name="toy")
    llm = pd.DataFrame([_span("a", "R05", 10, 15, "llm_zero")])  # perfect on a, never saw b or c
    entity = pd.DataFrame([_span("a", "R05", 10, 15, "entity"), _span("c", "R05", 0, 5, "entity")])
    soft = pd.DataFrame(columns=["note_id", "code", "source", "method", "model", "unit", "start", "end", "score"])
    preds = pd.DataFrame(columns=["note_id", "code", "prob", "pred", "is_gold", "model"])
    prof = load_profile("smoke", {"evaluation": {"min_notes": 0, "tuning_fraction": 0.0, "bootstrap_resamples": 200}})
    res = plausibility_tables(ds, {"llm_zero": llm, "entity (exact_code)": entity}, soft, preds, prof, design)
    row = lambda s: res.spans[(res.spans.source == s) & (res.spans.measure == "token_position_independent")
                              & (res.spans.granularity == "all") & (res.spans.code_set == "all")].iloc[0]
    llm_row = row("llm_zero")
    # scored on note a only: F1 1 (before the design: tp 1, fn 2 over three notes, F1 0.5)
    assert llm_row.f1 == 1.0 and llm_row.n_notes == 1 and llm_row.n_pairs == 1
    assert llm_row.n_pairs_eligible == 3 and llm_row.coverage == pytest.approx(1 / 3)
    assert llm_row.scored_on == "pairs it was run on"
    ent = row("entity (exact_code)")  # tp 2, fn 1: P 1, R 2/3, F1 0.8 on all three notes
    assert ent.f1 == pytest.approx(0.8) and ent.n_pairs == 3 and ent.scored_on == "all eligible pairs"
    assert ent.f1_lo <= ent.f1 <= ent.f1_hi
    # finding (a), LLM vs entity, on the pair both have (note a): 1 vs 1
    v = res.comparisons[res.comparisons.comparison == "llm_zero > entity (exact_code)"].iloc[0]
    assert v.n_pairs == 1 and v.a == 1.0 and v.b == 1.0 and v.effect == 0.0 and v.verdict == "inconclusive"


def test_paired_comparison_uses_the_intersection():
    # a has pairs (a), (b); b has (b), (c): compared on (b) only
    a = pd.DataFrame([("a", "X", "m", 5, 0, 0), ("b", "X", "m", 1, 1, 0)], columns=E.COUNT_COLUMNS)
    b = pd.DataFrame([("b", "X", "m", 0, 1, 1), ("c", "X", "m", 9, 0, 0)], columns=E.COUNT_COLUMNS)
    res = E.compare_counts(a, b, BOOT, measure="m")
    # on (b): a has tp 1, fp 1 -> F1 2/3; b has tp 0 -> F1 0
    assert res["n_pairs"] == 1 and res["n_notes"] == 1
    assert res["a"] == pytest.approx(2 / 3) and res["b"] == 0.0 and res["effect"] == pytest.approx(2 / 3)
    assert res["lo"] == res["hi"] == pytest.approx(2 / 3)  # one note: every resample is that note
    assert E.decide(res, "greater") == "holds" and E.decide(res, "less") == "does not hold"
    none = E.compare_counts(a[a.note_id == "a"], b[b.note_id == "c"], BOOT, measure="m")
    assert none["n_pairs"] == 0 and E.decide(none, "greater") == "inconclusive"


def test_paired_values_and_combined_verdicts():
    a = pd.DataFrame({"note_id": ["n1", "n1", "n2", "n3"], "code": ["A", "B", "A", "A"], "value": [0.5, 0.3, 0.4, 9.0]})
    b = pd.DataFrame({"note_id": ["n1", "n2", "n4"], "code": ["A", "A", "A"], "value": [0.1, 0.2, -9.0]})
    res = E.compare_values(a, b, BOOT)
    # common pairs (n1, A), (n2, A): means (0.5 + 0.4) / 2 = 0.45 and (0.1 + 0.2) / 2 = 0.15
    assert res["n_pairs"] == 2 and res["a"] == pytest.approx(0.45) and res["b"] == pytest.approx(0.15)
    # every note's difference is positive (0.4, 0.2): so is every resample's
    assert res["effect"] == pytest.approx(0.3) and 0.2 - 1e-9 <= res["lo"] <= res["hi"] <= 0.4 + 1e-9
    assert E.combine(["holds", "holds"]) == "holds"
    assert E.combine(["holds", "inconclusive"]) == "inconclusive"
    assert E.combine(["holds", "does not hold"]) == "does not hold" and E.combine([]) == "inconclusive"


def test_common_faithfulness_pairs_are_shared_and_capped():
    docs = pd.DataFrame({"note_id": ["n2", "n1"]})
    att = pd.DataFrame({"note_id": ["n1", "n1", "n2", "n2"], "code": ["A", "B", "A", "C"]})
    ent = pd.DataFrame({"note_id": ["n1", "n2", "n2"], "code": ["B", "A", "C"]})
    cand = {("n1", "A"), ("n1", "B"), ("n2", "A"), ("n2", "C")}
    # every source has (n1, B), (n2, A), (n2, C); note order of docs: n2 first
    assert common_pairs(cand, [att, ent], docs, None) == [("n2", "A"), ("n2", "C"), ("n1", "B")]
    assert common_pairs(cand - {("n2", "C")}, [att, ent], docs, 1) == [("n2", "A")]
    # a pair of a note outside docs (e.g. a tuning note) is never chosen
    assert common_pairs(cand, [att, ent], docs[docs.note_id == "n1"], None) == [("n1", "B")]
    # a seeded sample of 2 of the 3 common pairs, in note order, the same for the same seed
    pick = common_pairs(cand, [att, ent], docs, 2, seed=0)
    assert len(pick) == 2 and set(pick) < {("n2", "A"), ("n2", "C"), ("n1", "B")}
    assert pick == common_pairs(cand, [att, ent], docs, 2, seed=0)
    assert {tuple(common_pairs(cand, [att, ent], docs, 2, seed=s)) for s in range(20)} != {tuple(pick)}


def _agg(rows):
    return pd.DataFrame(rows, columns=["model", "source", "measure", "control", "note_id", "code", "value", "k"])


def test_faithfulness_summary_and_attention_vs_entity_on_common_pairs():
    prof = load_profile("smoke", {"evaluation": {"bootstrap_resamples": 200, "min_notes": 0, "interval_method": "percentile"}})
    # (two notes: the percentile interval spans the two note differences; the t interval would not exclude 0)
    att, ent = "attention (top-10)", "entity (exact_code)"
    rows = []
    for src, vals in ((att, {("n1", "A"): 0.6, ("n2", "A"): 0.4, ("n3", "A"): 0.9}), (ent, {("n1", "A"): 0.2, ("n2", "A"): 0.1})):
        for (n, c), v in vals.items():
            rows += [("caml", src, "comprehensiveness", "rationale", n, c, v, np.nan),
                     ("caml", src, "comprehensiveness", "random", n, c, v - 0.1, np.nan),
                     ("caml", src, "sufficiency", "rationale", n, c, 1 - v, np.nan),
                     ("caml", src, "sufficiency", "random", n, c, 1 - v, np.nan)]
    agg = _agg(rows)
    summary = faithfulness_summary(agg, prof)
    r = summary[(summary.source == att) & (summary.measure == "comprehensiveness")].iloc[0]
    # mean of 0.6, 0.4, 0.9 = 0.633..; difference to the control 0.1 on every pair
    assert r.n_pairs == 3 and r.n_notes == 3 and r.rationale == pytest.approx(1.9 / 3)
    assert r.difference == pytest.approx(0.1) and r.difference_lo == pytest.approx(0.1) and r.difference_hi == pytest.approx(0.1)
    assert 0.4 <= r.rationale_lo <= r.rationale <= r.rationale_hi <= 0.9
    v = attention_vs_entity(agg, 10, prof, "toy")
    comp = v[v.measure == "comprehensiveness"].iloc[0]
    # on the two common pairs: attention (0.6 + 0.4) / 2 = 0.5, entity 0.15 (n3 is left out)
    assert comp.n_pairs == 2 and comp.a == pytest.approx(0.5) and comp.b == pytest.approx(0.15) and comp.verdict == "holds"
    suff = v[v.measure == "sufficiency"].iloc[0]
    # sufficiency attention 0.5 vs entity 0.85: entity is more sufficient (lower): attention - entity < 0
    assert suff.effect == pytest.approx(-0.35) and suff.verdict == "does not hold"
    assert v[v.measure == "both"].verdict.iloc[0] == "does not hold"


def _counts(model, teacher, lam, seed, tp_by_note):
    rows = [(n, "X", "token_position_independent", tp, 4 - tp, 4 - tp) for n, tp in tp_by_note.items()]
    rows += [(n, "-", "coding", 2, 1, 1) for n in tp_by_note]
    return pd.DataFrame(rows, columns=E.COUNT_COLUMNS).assign(model=model, teacher=teacher, **{"lambda": lam}, seed=seed)


def test_lambda_is_chosen_on_tuning_notes_not_on_the_reported_ones():
    # t1 is the tuning note, r1 and r2 are reported. lambda 0.5 is best on t1 (tp 4 vs 1); lambda
    # 2.5 is best on the report notes (tp 4 vs 2): the arg-max of the reported numbers would be 2.5
    design = E.EvaluationDesign(("r1", "r2", "t1"), ("t1",), ("r1", "r2"), 1 / 3)
    counts = pd.concat([_counts("caml", "none", 0.0, 13, {"t1": 1, "r1": 1, "r2": 1}),
                        _counts("caml", "human", 0.5, 13, {"t1": 4, "r1": 2, "r2": 2}),
                        _counts("caml", "human", 2.5, 13, {"t1": 1, "r1": 4, "r2": 4})], ignore_index=True)
    lam, scores = choose_lambda(counts, "caml", "human", design.tuning_ids)
    assert lam == 0.5 and scores == {0.5: 1.0, 2.5: 0.25}
    f1 = lambda tp: tp / 4  # tp of 4 gold, 4 predicted
    sweep = pd.DataFrame([
        {"model": "caml", "teacher": "none", "lambda": 0.0, "seed": 13, "micro_f1": 0.6, "macro_f1": 0.5, "pi_token_f1": f1(1)},
        {"model": "caml", "teacher": "human", "lambda": 0.5, "seed": 13, "micro_f1": 0.55, "macro_f1": 0.5, "pi_token_f1": f1(2)},
        {"model": "caml", "teacher": "human", "lambda": 2.5, "seed": 13, "micro_f1": 0.5, "macro_f1": 0.5, "pi_token_f1": f1(4)}])
    prof = load_profile("smoke", {"evaluation": {"bootstrap_resamples": 200, "min_notes": 0}})
    table, verdicts = tradeoff(sweep, counts, design, prof, "toy")
    row = table.iloc[0]
    assert row["lambda (chosen on tuning notes)"] == 0.5 and row["lambda best on report notes"] == 2.5
    # reported at lambda 0.5 on r1, r2: F1 4/8 = 0.5 against the unguided 2/8 = 0.25; every note gains 0.25
    assert row["PI token F1 gain"] == pytest.approx(0.25) and row["gain lo"] == pytest.approx(0.25)
    assert row["n_notes"] == 2 and row["micro-F1 change"] == 0.0  # same coding counts
    assert verdicts.verdict.tolist() == ["holds", "inconclusive", "inconclusive"]


def test_few_shot_summary_scores_each_role_on_its_own_report_note_units(tmp_path):
    # teachers were run on note r1 only (pairs (r1, X), (r1, Y)); students were scored on r1, r2 and
    # the tuning note t1, which is never reported
    design = E.EvaluationDesign(("r1", "r2", "t1"), ("t1",), ("r1", "r2"), 1 / 3)
    tc = pd.DataFrame([("r1", "X", "token_position_independent", 1, 1, 1), ("r1", "Y", "token_position_independent", 0, 0, 2)],
                      columns=E.COUNT_COLUMNS)
    teacher_counts = pd.concat([tc.assign(source="llm_zero", model="-"),
                                tc.assign(tp=[2, 2], fn=[0, 0], source="llm_few", model="-")], ignore_index=True)
    rows = []
    for teacher, tp in (("llm_zero", 0), ("llm_few", 1)):
        d = tmp_path / teacher
        d.mkdir()
        pd.DataFrame([("r1", "X", "token_position_independent", tp, 1, 2 - tp), ("r2", "X", "token_position_independent", 5, 0, 0),
                      ("t1", "X", "token_position_independent", 9 * tp, 0, 0),
                      ("r1", "-", "coding", 1, 0, 0)], columns=E.COUNT_COLUMNS).to_parquet(d / "note_counts.parquet")
        rows.append({"model": "caml", "teacher": teacher, "lambda": 0.5, "seed": 13, "run_dir": str(d)})
    prof = load_profile("smoke", {"evaluation": {"bootstrap_resamples": 200, "min_notes": 0}})
    summary, verdicts = few_shot_summary(teacher_counts, pd.DataFrame(rows), prof, "toy", design)
    s = summary.set_index("role")
    # teacher: both pairs of r1; student: (r1, X) and (r2, X), not t1
    assert s.n_pairs.tolist() == [2, 2] and s.n_notes.tolist() == [1, 2]
    # teacher zero: tp 1, fp 1, fn 3 -> 2/6; few: tp 4, fp 1, fn 0 -> 8/9
    assert s.loc["teacher", "zero-shot"] == pytest.approx(1 / 3) and s.loc["teacher", "few-shot"] == pytest.approx(8 / 9)
    # student zero: tp 5, fp 1, fn 2 -> 10/13; few: tp 6, fp 1, fn 1 -> 12/14
    assert s.loc["student", "zero-shot"] == pytest.approx(10 / 13) and s.loc["student", "few-shot"] == pytest.approx(6 / 7)
    assert verdicts.finding.tolist() == ["d", "d", "d"]
    assert verdicts.units.iloc[0] == "report-note gold pairs both teachers were run on"
    assert verdicts.units.iloc[1] == "report-note gold pairs both students were scored on"
    # with min_notes 2 the teacher row (1 note) has too few notes; the combined row skips it and says so
    prof2 = load_profile("smoke", {"evaluation": {"bootstrap_resamples": 200, "min_notes": 2}})
    v2 = few_shot_summary(teacher_counts, pd.DataFrame(rows), prof2, "toy", design)[1]
    assert v2.verdict.iloc[0] == "too few notes" and v2.verdict.iloc[1] != "too few notes"
    assert v2.verdict.iloc[2] == E.combine([v2.verdict.iloc[1]]) and "skipped (too few notes)" in v2.units.iloc[2]


def test_evaluation_and_seeds_keys_are_validated(tmp_path):
    prof = load_profile("default")
    assert prof.evaluation.bootstrap_resamples == 1000 and seeds(prof) == [prof.common.seed]
    assert seeds(load_profile("smoke", {"common": {"seeds": [1, 2]}})) == [1, 2]
    with pytest.raises(ConfigError, match="common.seeds"):
        load_profile("smoke", {"common": {"seeds": [1, 1]}})
    with pytest.raises(ConfigError, match="bootstrap_resamples"):
        load_profile("smoke", {"evaluation": {"bootstrap_resamples": 0}})
    with pytest.raises(ConfigError, match="unknown key 'resamples'"):
        load_profile("smoke", {"evaluation": {"resamples": 10}})
    assert (prof.evaluation.interval_method, prof.evaluation.min_notes) == ("t", 10)
    with pytest.raises(ConfigError, match="interval_method"):
        load_profile("smoke", {"evaluation": {"interval_method": "wald"}})
    with pytest.raises(ConfigError, match="min_notes"):
        load_profile("smoke", {"evaluation": {"min_notes": -1}})
    with pytest.raises(ConfigError, match="stability_seeds"):
        load_profile("smoke", {"evaluation": {"stability_seeds": 0}})


def test_run_on_pairs_of_notebook_03_sources():
    docs = _docs()
    design = E.make_design(docs, 0.0)
    pairs = pd.DataFrame({"model": ["caml", "caml", "laat"], "note_id": ["a", "b", "a"], "code": ["R05", "R05", "R05"]})
    soft = pd.DataFrame({"model": ["caml", "laat", "laat"], "source": ["attention", "attention", "gradient"]})
    llm_docs = docs[docs.note_id == "c"].assign(codes=[["R05", "R50"]])
    d = record_run_on(design, pairs, soft, ["exact_code", "category"], llm_docs, ["llm_zero", "llm_few"])
    assert d.pairs("attention", "caml") == {("a", "R05"), ("b", "R05")}
    assert d.pairs("gradient", "laat") == {("a", "R05")} and d.pairs("gradient", "caml") is None
    assert d.pairs("entity (exact_code)") == d.pairs("random") == {("a", "R05"), ("b", "R05")}
    # an LLM teacher is run on every gold code of the notes sent to it
    assert d.pairs("llm_few") == {("c", "R05"), ("c", "R50")}
    cov = E.coverage_table(d, GOLD).set_index(["source", "model"])
    # eligible: the 3 gold pairs of the report notes; the LLM covers (c, R05) only
    assert cov.loc[("llm_zero", "-"), "pairs_run_on"] == 1 and cov.loc[("llm_zero", "-"), "pairs_eligible"] == 3
    assert cov.loc[("llm_zero", "-"), "scored_on"] == "subset (1 of 3 pairs)"


def test_threshold_effect_scores_each_teacher_on_its_pairs():
    from rationale_kit.rationales import alignment

    docs = _docs()
    design = E.make_design(docs, 0.0).with_run_on(E.run_on_frame("llm_zero", [("a", "R05")]))
    quotes = pd.DataFrame({"note_id": ["a"], "code": ["R05"], "quote": ["cough"], "source": ["llm_zero"], "status": ["ok"]})
    out = alignment.threshold_effect(SimpleNamespace(docs=docs, spans=GOLD), quotes, [2.0], design=design)
    # the exact quote "cough" of note a against the gold "cough" of a: F1 1 on 1 pair (not 0.5 over 3)
    assert out.pi_token_f1.tolist() == [1.0] and out.n_pairs.tolist() == [1]


def test_seeds_are_summed_for_intervals_and_spread_across_seeds(tmp_path):
    design = E.EvaluationDesign(("r1", "r2", "t1"), ("t1",), ("r1", "r2"), 1 / 3)
    rows = []
    # seed 1: the guided run gains 1 tp on each report note; seed 2: 3 tp. Unguided: 1 tp everywhere
    for seed, tp in ((1, 2), (2, 4)):
        for teacher, lam, t in (("none", 0.0, 1), ("human", 1.0, tp)):
            c = _counts("caml", teacher, lam, seed, {"t1": 2, "r1": t, "r2": t}).drop(columns=["model", "teacher", "lambda", "seed"])
            d = tmp_path / f"{teacher}_{seed}"
            d.mkdir()
            c.to_parquet(d / "note_counts.parquet")
            rows.append({"model": "caml", "teacher": teacher, "lambda": lam, "seed": seed, "micro_f1": 0.5,
                         "macro_f1": 0.5, "pi_token_f1": t / 4, "run_dir": str(d)})
    sweep = pd.DataFrame(rows)
    counts = sweep_counts(sweep)
    assert len(counts) == 4 * 6 and set(counts.seed) == {1, 2}
    prof = load_profile("smoke", {"evaluation": {"bootstrap_resamples": 200, "min_notes": 0,
                                                 "seed_interval_method": "percentile"}})
    row = tradeoff(sweep, counts, design, prof)[0].iloc[0]
    # pooled over seeds per report note: guided tp 2 + 4 = 6 of 8 -> 0.75; unguided 2 of 8 -> 0.25
    assert row["PI token F1 gain"] == pytest.approx(0.5) and row.seeds == 2
    # per seed: gains 0.25 and 0.75 -> mean 0.5, sample std 0.3536
    assert row["gain seed mean"] == pytest.approx(0.5) and row["gain seed std"] == pytest.approx(np.sqrt(0.125))
    # the verdict row resamples training seeds and notes together: notes are alike within a seed, so
    # the interval runs from both draws = seed 1 (gain 0.25) to both = seed 2 (0.75); seed_sd as above
    v = tradeoff(sweep, counts, design, prof)[1].iloc[0]
    assert v.interval_method == "hierarchical" and v.seed_sd == pytest.approx(np.sqrt(0.125))
    assert (v.lo, v.hi) == pytest.approx((0.25, 0.75)) and v.seed_agreement == 1.0 and v.verdict == "holds"
    # the profile's default (t_components): notes alike within a seed give V_note = 0; leaving seed 1
    # out gives 0.75, seed 2 out 0.25, so V_seed = 1/2 * 2 * 0.25^2 = 0.0625 and the half-width is
    # t(1 df, 0.975) * 0.25 = 12.706 * 0.25: two training seeds cannot show the gain
    prof_t = load_profile("smoke", {"evaluation": {"bootstrap_resamples": 200, "min_notes": 0}})
    vt = tradeoff(sweep, counts, design, prof_t)[1].iloc[0]
    assert vt.interval_method == "hierarchical t (components)" and vt.verdict == "inconclusive"
    assert (vt.lo, vt.hi) == pytest.approx((0.5 - 12.7062047 * 0.25, 0.5 + 12.7062047 * 0.25))
