"""Findings (a) and (b) over several training seeds: the verdict rows resample seeds and notes
together (model-free sources pair with every seed) and give the spread across seeds. Tiny per-seed
tables, every expected value worked out by hand in the comments."""
import numpy as np
import pandas as pd
import pytest

from rationale_kit.core.config import load_profile
from rationale_kit.metrics import evaluation as E
from rationale_kit.workbook.protocols.faithfulness import attention_vs_entity, faithfulness_seed_spread
from rationale_kit.workbook.protocols.plausibility import plausibility_seed_spread, plausibility_verdicts

# two notes: percentile intervals (the hierarchical interval is one; these cases work out the
# percentile bootstrap over seeds and notes, not evaluation.seed_interval_method's default), min_notes off
PROF = load_profile("smoke", {"common": {"seeds": [1, 2]},
                              "evaluation": {"verdict_resamples": 2000, "min_notes": 0, "stability_seeds": 3,
                                             "seed_interval_method": "percentile"}})
BOOT = E.Bootstrap(200, 0, 0.95, "t", 0, 3, 2000)
PI = "token_position_independent"
ATT, ENT = "attention (top-10)", "entity (exact_code)"


def _counts(rows, **extra):
    return pd.DataFrame(rows, columns=E.COUNT_COLUMNS).assign(**extra)


# entity spans (model-free, no seed): n1 tp 2 fp 0 fn 0, n2 tp 1 fp 1 fn 1 -> pooled F1 6/8 = 0.75
ENTITY = _counts([("n1", "A", PI, 2, 0, 0), ("n2", "A", PI, 1, 1, 1)], source=ENT, model="-")
# top-10 attention of caml: seed 1 (the first, in the first seed's table) n1 1/1/1, n2 0/2/2 -> F1 2/8 = 0.25;
# seed 2 (a later seed) is the entity spans' twin -> F1 0.75
ATT_1 = _counts([("n1", "A", PI, 1, 1, 1), ("n2", "A", PI, 0, 2, 2)], source=ATT, model="caml")
ATT_2 = _counts([("n1", "A", PI, 2, 0, 0), ("n2", "A", PI, 1, 1, 1)], source=ATT, model="caml", seed=2)


def test_a_model_free_source_pairs_with_every_seed_and_the_interval_resamples_both():
    res = E.compare_counts(ENTITY, pd.concat([ATT_1.assign(seed=1), ATT_2], ignore_index=True), BOOT, measure=PI)
    # pooled over seeds: entity 0.75 (the same counts under each seed); attention tp 4, fp 4, fn 4 -> 0.5
    assert res["a"] == pytest.approx(0.75) and res["b"] == pytest.approx(0.5) and res["effect"] == pytest.approx(0.25)
    assert res["n_notes"] == 2 and res["n_pairs"] == 2 and res["interval_method"] == "hierarchical"
    # per seed: 0.75 - 0.25 = 0.5 and 0.75 - 0.75 = 0 -> sd sqrt(((0.5-0.25)^2 + (0-0.25)^2) / 1) = 0.3536
    assert res["seed_sd"] == pytest.approx(np.sqrt(0.125))
    # a resample drawing seed 2 twice gives 0 whatever the notes (p = 1/4 > 2.5%); seed 1 twice gives 0.5
    # on any notes (n1: 1 - 0.5, n2: 0.5 - 0), one of each 0.25 (n1 twice: 1 - 0.75; n2 twice: 0.5 - 0.25):
    # the resampled values are 0, 0.25, 0.5 with probabilities 1/4, 1/2, 1/4, so the 95% interval is [0, 0.5]
    assert res["lo"] == pytest.approx(0.0, abs=1e-12) and res["hi"] == pytest.approx(0.5)
    assert E.decide(res, "greater") == "inconclusive"
    # one seed only (the first): the notes-only interval, no spread; identical to the table without seed
    one = E.compare_counts(ENTITY, ATT_1.assign(seed=1), BOOT, measure=PI)
    none = E.compare_counts(ENTITY, ATT_1, BOOT, measure=PI)
    assert one["interval_method"] == none["interval_method"] == "t" and np.isnan(one["seed_sd"])
    assert (one["lo"], one["hi"], one["effect"]) == (none["lo"], none["hi"], none["effect"])


def test_finding_a_rows_use_the_later_seeds_counts():
    counts = pd.concat([ENTITY, ATT_1], ignore_index=True)
    v = plausibility_verdicts(counts, PROF, "toy", seed_counts=ATT_2)
    row = v[v.comparison == f"{ENT} > {ATT}"].iloc[0]
    # the row of the test above, the seeds named in its units
    assert row.effect == pytest.approx(0.25) and row.lo == pytest.approx(0.0, abs=1e-12) and row.hi == pytest.approx(0.5)
    assert row.seed_sd == pytest.approx(np.sqrt(0.125)) and row.interval_method == "hierarchical"
    assert "(2 training seeds)" in row.units and row.verdict == "inconclusive"
    # without the later seeds: the first seed's notes-only row (t interval), no spread
    alone = plausibility_verdicts(counts, PROF, "toy").iloc[0]
    assert alone.effect == pytest.approx(0.5) and np.isnan(alone.seed_sd) and alone.interval_method == "t"
    assert "training seeds" not in alone.units
    # the spread table: PI token F1 of the attention under seed 1 (0.25) and seed 2 (0.75)
    spread = plausibility_seed_spread(counts, ATT_2, 1).iloc[0]
    assert (spread.model, spread.source, spread.seeds, spread.n_pairs) == ("caml", ATT, 2, 2)
    assert spread["mean"] == pytest.approx(0.5) and spread["std"] == pytest.approx(np.sqrt(0.125))


def _faith(seed=None):
    """Comprehensiveness of caml's top-10 attention and entity spans under one seed's model, with
    random controls 0.1 below each value. Seed 1: attention n1 0.5, n2 0.3; entity 0.2, 0.2.
    Seed 2: attention 0.7, 0.1; entity 0.1, 0.1."""
    vals = {1: {ATT: (0.5, 0.3), ENT: (0.2, 0.2)}, 2: {ATT: (0.7, 0.1), ENT: (0.1, 0.1)}}[seed or 1]
    rows = []
    for src, (v1, v2) in vals.items():
        for n, v in (("n1", v1), ("n2", v2)):
            rows += [("caml", src, "comprehensiveness", "rationale", n, "A", v, np.nan),
                     ("caml", src, "comprehensiveness", "random", n, "A", v - 0.1, np.nan)]
    out = pd.DataFrame(rows, columns=["model", "source", "measure", "control", "note_id", "code", "value", "k"])
    return out if seed is None else out.assign(seed=seed)


def test_finding_b_rows_resample_seeds_and_notes_on_the_pairs_every_seed_has():
    v = attention_vs_entity(_faith(), 10, PROF, "toy", seed_rows=_faith(2))
    raw = v[(v.control == "raw") & (v.measure == "comprehensiveness")].iloc[0]
    # attention 0.4 under both seeds, entity 0.2 and 0.1: a 0.4, b 0.15, effect 0.25; per seed 0.2 and 0.3
    assert raw.a == pytest.approx(0.4) and raw.b == pytest.approx(0.15) and raw.effect == pytest.approx(0.25)
    assert raw.seed_sd == pytest.approx(np.sqrt(0.005)) and raw.interval_method == "hierarchical"
    assert raw.n_notes == 2 and raw.n_pairs == 2 and "2 training seeds" in raw.units
    # (seed, note) differences: seed 1 n1 0.3, n2 0.1; seed 2 n1 0.6, n2 0.0. Seed 2 and n2 twice
    # (p = 1/16 > 2.5%) gives 0, seed 2 and n1 twice 0.6, nothing lies outside: the interval is [0, 0.6]
    assert raw.lo == pytest.approx(0.0, abs=1e-12) and raw.hi == pytest.approx(0.6)
    assert raw.verdict == "inconclusive"
    # each minus its random control: 0.1 for both sources on every pair under every seed -> 0 everywhere
    mr = v[(v.control == "minus_random") & (v.measure == "comprehensiveness")].iloc[0]
    assert mr.a == pytest.approx(0.1) and mr.b == pytest.approx(0.1) and mr.interval_method == "hierarchical"
    assert abs(mr.effect) < 1e-12 and abs(mr.lo) < 1e-12 and abs(mr.hi) < 1e-12 and abs(mr.seed_sd) < 1e-12
    # one seed: the rows of the first seed alone, unchanged by the seed machinery
    first = attention_vs_entity(_faith(), 10, PROF, "toy")
    f = first[(first.control == "raw") & (first.measure == "comprehensiveness")].iloc[0]
    assert f.effect == pytest.approx(0.2) and np.isnan(f.seed_sd) and f.interval_method == "t"
    # a pair a later seed lacks is left out for every seed: (n2, A) missing under seed 2 -> only n1
    part = _faith(2)
    short = attention_vs_entity(_faith(), 10, PROF, "toy", seed_rows=part[part.note_id == "n1"])
    s = short[(short.control == "raw") & (short.measure == "comprehensiveness")].iloc[0]
    # n1 only: seed 1 0.5 - 0.2 = 0.3, seed 2 0.7 - 0.1 = 0.6
    assert s.n_pairs == 1 and s.effect == pytest.approx(0.45) and s.seed_sd == pytest.approx(np.std([0.3, 0.6], ddof=1))


def test_faithfulness_seed_spread_gives_each_sources_mean_and_sd_across_seeds():
    t = faithfulness_seed_spread(_faith(), _faith(2), 1)
    att = t[(t.source == ATT) & (t.value == "rationale")].iloc[0]
    # attention's mean comprehensiveness is 0.4 under both seeds: sd 0
    assert att.seeds == 2 and att["mean"] == pytest.approx(0.4) and att["std"] == pytest.approx(0.0) and att.n_pairs == 2
    ent = t[(t.source == ENT) & (t.value == "rationale")].iloc[0]
    assert ent["mean"] == pytest.approx(0.15) and ent["std"] == pytest.approx(np.std([0.2, 0.1], ddof=1))
    diff = t[(t.source == ENT) & (t.value == "difference")].iloc[0]
    assert diff["mean"] == pytest.approx(0.1) and diff["std"] == pytest.approx(0.0, abs=1e-12)
