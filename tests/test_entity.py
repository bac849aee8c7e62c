"""Entity linking to ICD-10-CM (offline KB from simple-icd-10-cm + the project lexicon),
context filters and entity-level rationale spans, on handwritten sentences."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import simple_icd_10_cm as cm

from rationale_kit.rationales import entity as E

CODES = ["E11.9", "E11.65", "I10", "I48.91", "J18.9", "C50.919", "N18.30", "I50.9", "I26.99"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kb")


@pytest.fixture(scope="module")
def linker(cache_dir):
    t0 = time.perf_counter()
    lk = E.EntityLinker(CODES, kb_cache_dir=cache_dir, fuzzy_threshold=0.8)
    seconds = time.perf_counter() - t0
    print(f"\nKB + index build: {seconds:.2f} s ({lk.summary()})")
    assert seconds < 30
    return lk


def _codes(mentions, kept=True):
    return {(m.text, m.code) for m in mentions if m.kept == kept}


def test_lexicon_codes_are_valid_icd10cm():
    lex = E.load_abbreviations()
    assert len(lex["abbreviations"]) >= 16
    for entry in lex["abbreviations"] + lex["synonyms"]:
        for code in entry["codes"]:
            assert cm.is_valid_item(code), (entry["forms"], code)
    forms = {f for e in lex["abbreviations"] for f in e["forms"]}
    assert {"HTN", "T2DM", "DM2", "AFib", "CKD", "CHF", "HFrEF", "COPD", "AKI", "UTI", "GERD", "OSA",
            "CAD", "DVT", "PE", "MI"} <= forms


def test_alias_variants():
    assert E.alias_variants("Essential (primary) hypertension")[0] == [
        "Essential (primary) hypertension", "Essential hypertension", "Essential primary hypertension"]
    assert "primary hypertension" in E.alias_variants("hypertension (arterial) (primary)")[0]
    assert "Gastroesophageal reflux disease" in E.alias_variants(
        "Gastro-esophageal reflux disease without esophagitis")[0]
    assert "Pneumonia" in E.alias_variants("Pneumonia, unspecified organism")[0]
    assert "atrial fibrillation" in E.alias_variants("Unspecified atrial fibrillation")[0]
    assert "Type 2 diabetes mellitus" in E.alias_variants("Type 2 diabetes mellitus without complications")[0]
    assert E.alias_variants("Heart failure with reduced ejection fraction [HFrEF]")[1] == ["HFrEF"]


def test_kb_and_index_use_scispacy(linker, cache_dir):
    from scispacy.candidate_generation import CandidateGenerator, LinkerPaths
    from scispacy.linking_utils import KnowledgeBase

    assert isinstance(linker.kb, KnowledgeBase) and isinstance(linker.candidate_generator, CandidateGenerator)
    assert "type 2 diabetes mellitus" in linker.kb.alias_to_cuis
    assert {"E11.9", "E11"} <= linker.kb.alias_to_cuis["type 2 diabetes mellitus"]
    assert LinkerPaths.from_directory(str(linker.cache_path)).is_locally_cached()
    again = E.EntityLinker(CODES, kb_cache_dir=cache_dir)
    assert again.index_from_cache and again.cache_path == linker.cache_path


def test_links_diagnoses_and_abbreviations(linker):
    text = ("67 yo woman with type 2 diabetes mellitus and HTN, on warfarin for atrial fibrillation.\n"
            "Diabetes: T2DM, A1c 8.1.")
    ms = linker.link(text)
    for m in ms:
        assert text[m.start:m.end] == m.text
    found = _codes(ms)
    assert ("type 2 diabetes mellitus", "E11.9") in found
    assert ("HTN", "I10") in found
    assert ("atrial fibrillation", "I48.91") in found
    assert ("T2DM", "E11.9") in found
    by = {(m.text, m.code): m for m in ms}
    assert by[("HTN", "I10")].match == "abbreviation" and by[("atrial fibrillation", "I48.91")].match == "exact"
    # the longest match wins: no separate mention for "diabetes mellitus" inside the longer one
    assert not any(m.text == "diabetes mellitus" for m in ms)


def test_case_sensitive_abbreviation_and_fuzzy(linker, cache_dir):
    ms = linker.link("CTA positive for PE. Will check pe again.")
    assert {m.text for m in ms} == {"PE"} and "I26.99" in {m.code for m in ms}
    ms = linker.link("History notable for atrial fibrilation.")
    fz = [m for m in ms if m.code == "I48.91"]
    assert fz and fz[0].match == "fuzzy" and fz[0].text == "atrial fibrilation" and 0.8 <= fz[0].score < 1
    strict = E.EntityLinker(CODES, kb_cache_dir=cache_dir, fuzzy_threshold=0.95)
    assert not [m for m in strict.link("History notable for atrial fibrilation.") if m.code == "I48.91"]


def test_negation_filters_with_reasons(linker):
    ms = linker.link("CXR: no evidence of pneumonia. Pneumonia was ruled out on CT.")
    pna = [m for m in ms if m.code == "J18.9"]
    assert len(pna) == 2 and all(m.negated and m.filtered_reason == "negated" for m in pna)
    ms = linker.link("Denies chest pain but has pneumonia and HTN.")
    assert ("pneumonia", "J18.9") in _codes(ms) and ("HTN", "I10") in _codes(ms)
    ms = linker.link("Pneumonia cannot be ruled out.")  # pseudo-trigger: not a negation
    assert ("Pneumonia", "J18.9") in _codes(ms)


def test_family_history_filtered_with_reason(linker):
    ms = linker.link("Her mother had breast cancer. Patient has HTN.")
    bc = [m for m in ms if m.text == "breast cancer"]
    assert bc and all(m.family and m.filtered_reason == "family" for m in bc)
    assert ("HTN", "I10") in _codes(ms)
    text = "Family History:\nBreast cancer in aunt at 50; HTN.\nSocial History:\nLives with CHF? no. Has HTN."
    ms = linker.link(text)
    fam = {(m.text, m.filtered_reason) for m in ms if m.start < text.index("Social")}
    assert fam == {("Breast cancer", "family"), ("HTN", "family")}
    assert ("HTN", "I10") in _codes([m for m in ms if m.start > text.index("Social")])


def test_entity_rationales_exact_and_category(linker):
    docs = pd.DataFrame({"note_id": ["a", "b"],
                         "text": ["Known T2DM with hyperglycemia. No pneumonia.",
                                  "Her mother had breast cancer; she has HTN."],
                         "codes": [["E11.65", "J18.9"], ["I10", "C50.919"]], "split": ["test", "test"]})
    pairs = pd.DataFrame({"note_id": ["a", "a", "a", "b", "b"],
                          "code": ["E11.65", "E11.9", "J18.9", "I10", "C50.919"]})
    spans = E.entity_rationales(docs, pairs, linker)
    texts = dict(zip(docs.note_id, docs.text))
    for r in spans.itertuples():
        assert texts[r.note_id][r.start:r.end] == r.mention
    got = {(r.note_id, r.code, r.method, r.mention) for r in spans.itertuples()}
    assert ("a", "E11.9", "exact_code", "T2DM") in got
    assert ("a", "E11.9", "category", "T2DM") in got
    assert ("a", "E11.65", "category", "T2DM") in got
    assert ("a", "E11.65", "exact_code", "T2DM") not in got
    assert ("b", "I10", "exact_code", "HTN") in got
    assert not any(r[1] in ("J18.9", "C50.919") for r in got)  # negated / family: no rationale
    assert set(spans["source"]) == {"entity"} and spans.attrs["codes_not_in_kb"] == 0
    mentions = E.link_documents(docs, linker)
    reasons = mentions.groupby("filtered_reason").size().to_dict()
    assert reasons.get("negated", 0) >= 1 and reasons.get("family", 0) >= 1
    full = E.entity_rationales(docs, pairs, linker, mentions=mentions, include_filtered=True)
    assert {"negated", "family"} <= set(full["filtered_reason"])
    with pytest.warns(UserWarning, match="not in the linker"):
        E.entity_rationales(docs, pd.DataFrame({"note_id": ["a"], "code": ["K35.80"]}), linker)


def test_negation_word_inside_a_mention_does_not_negate_the_next(linker):
    """ICD titles often hold "without": it belongs to the title, not to the next mention."""
    ms = linker.link("Type 2 diabetes mellitus without complications and essential hypertension.")
    by_code = {m.code: m for m in ms}
    assert by_code["E11.9"].text == "Type 2 diabetes mellitus without complications"
    assert not by_code["I10"].negated and by_code["I10"].kept and by_code["I10"].text == "essential hypertension"
    # a real negation before the next mention still counts
    ms = linker.link("Type 2 diabetes mellitus without complications; no essential hypertension.")
    assert {m.code: m.negated for m in ms} == {"E11.9": False, "I10": True}


def test_rationale_rows_keep_the_mention_order_of_a_per_pair_filter():
    """``entity_rationales`` from precomputed mentions equals filtering the mentions per pair and
    method (the reference below): same rows, and of two equal spans linked to different codes of
    one category, the first mention is the one kept."""
    import random

    from rationale_kit.rationales.entity.kb import kb_code, three_char_prefix

    rng = random.Random(3)
    codes = ["I10", "I11.9", "I12.0", "E11.9", "E11.65", "N18.3"]
    rows = []
    for n in range(6):
        for _ in range(rng.randint(0, 12)):
            s = rng.randint(0, 40)
            rows.append({"note_id": f"n{n}", "start": s, "end": s + rng.randint(1, 6), "text": "x",
                         "code": kb_code(rng.choice(codes)), "score": rng.choice([0.5, 1.0]),
                         "match": rng.choice(["exact", "fuzzy"]), "negated": False, "family": False,
                         "historical": False, "filtered_reason": rng.choice(["", "", "negated"]), "alias": "x"})
    first = {**rows[0], "code": kb_code("E11.9"), "filtered_reason": "", "match": "first"}
    rows = [first, {**first, "code": kb_code("E11.65"), "match": "second"}] + rows[1:]  # one span, two codes of E11
    mentions = pd.DataFrame(rows, columns=E.MENTION_COLUMNS)
    docs = {f"n{n}": "y" * 60 for n in range(7)}
    pairs = pd.DataFrame([(f"n{n}", c) for n in range(7) for c in codes], columns=["note_id", "code"])
    got = E.entity_rationales(docs, pairs, mentions=mentions)

    kept = mentions[mentions.filtered_reason == ""].assign(cat=lambda m: m.code.map(three_char_prefix))
    ref = []
    for nid, code in pairs.itertuples(index=False):
        g = kept[kept.note_id == nid]
        for method in ("exact_code", "category"):
            sel = g[g.code == kb_code(code)] if method == "exact_code" else g[g.cat == three_char_prefix(kb_code(code))]
            ref += [(nid, code, method, r.start, r.end, r.score, r.match, r.code) for r in sel.itertuples()]
    ref = (pd.DataFrame(ref, columns=["note_id", "code", "method", "start", "end", "score", "match", "linked_code"])
           .sort_values(["note_id", "code", "method", "start", "end", "score"], ascending=[True] * 5 + [False])
           .drop_duplicates(["note_id", "code", "method", "start", "end"]).reset_index(drop=True))
    cols = ["note_id", "code", "method", "start", "end", "score", "match", "linked_code"]
    assert len(ref) > 20
    twin = got[(got.note_id == first["note_id"]) & (got.start == first["start"]) & (got.end == first["end"])
               & (got.method == "category") & got.code.isin(["E11.9", "E11.65"])]
    assert len(twin) == 2 and set(twin.match) == {"first"}  # the first mention wins for both codes
    pd.testing.assert_frame_equal(got[cols].reset_index(drop=True), ref, check_dtype=False)
