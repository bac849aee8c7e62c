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
