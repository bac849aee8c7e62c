import random
import re
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from rationale_kit.rationales.alignment import NoteIndex, align_quote, align_quotes, aligned_to_spans, alignment_form, alignment_form_with_offsets, alignment_summary, threshold_sweep
from rationale_kit.core.records import SPAN_COLUMNS, DataError

NOTE = (
    "HPI:\n- Patient with  \u201cchest pain\u201d  radiating to left arm.\n"
    "2. Hypertension \u2013 poorly controlled\n"
    "\u2022 Diabetes\nNo fever. Chest pain again, painful."
)


def covered(r, text=NOTE):
    return text[r.start:r.end]


def test_alignment_form_offsets_point_to_raw_characters():
    norm, idx = alignment_form_with_offsets(NOTE)
    assert norm == (
        'hpi: patient with "chest pain" radiating to left arm. hypertension - poorly controlled '
        "diabetes no fever. chest pain again, painful."
    )
    assert len(idx) == len(norm)
    trans = {"\u201c": '"', "\u201d": '"', "\u2013": "-"}
    for i, c in enumerate(norm):
        raw = NOTE[idx[i]]
        assert c == trans.get(raw, raw.lower()) or (c == " " and raw.isspace())
    assert np.all(np.diff(idx) > 0)
    assert alignment_form_with_offsets("  \n ")[0] == "" and alignment_form_with_offsets("")[0] == ""
    # a character whose lower case is longer keeps the map consistent
    n2, i2 = alignment_form_with_offsets("A\u0130b")
    assert len(n2) == len(i2) and i2.tolist()[0] == 0 and i2.tolist()[-1] == 2


def test_alignment_form_equals_with_offsets():
    rng = random.Random(1)
    alphabet = list("aB1 -*.)(\n\t\u2013\u201c\u2022\u00a0x:;") + ["\u0130", "2. ", "\n- ", "\n(a) "]
    for _ in range(500):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert alignment_form(t) == alignment_form_with_offsets(t)[0], repr(t)


def test_exact_all_first_and_word_boundaries():
    rs = align_quote(NOTE, "chest pain")
    assert [r.method for r in rs] == ["exact", "exact"]
    assert [covered(r) for r in rs] == ["chest pain", "Chest pain"]
    assert all(r.score == 2.0 and r.reason is None for r in rs)
    first = align_quote(NOTE, "chest pain", occurrences="first")
    assert len(first) == 1 and first[0].start == rs[0].start
    # "pain" does not match inside "painful"
    assert [covered(r) for r in align_quote(NOTE, "pain")] == ["pain", "pain"]
    with pytest.raises(ValueError):
        align_quote(NOTE, "pain", occurrences="some")


def test_exact_through_normalisation():
    r = align_quote(NOTE, "HYPERTENSION - poorly\n controlled")
    assert [x.method for x in r] == ["exact"] and covered(r[0]) == "Hypertension \u2013 poorly controlled"
    # list numbering, bullets and line breaks are ignored; surrounding quotes/period stripped
    r = align_quote(NOTE, '"2. Hypertension"')
    assert covered(r[0]) == "Hypertension"
    r = align_quote(NOTE, "poorly controlled diabetes.")
    assert r[0].method == "exact" and covered(r[0]) == "poorly controlled\n\u2022 Diabetes"
    r = align_quote(NOTE, "\u201cChest pain\u201d radiating")
    assert r[0].method == "exact" and covered(r[0]) == "chest pain\u201d  radiating"


def test_fuzzy_scores_by_hand():
    note = "the patient reports mild chest pain since yesterday. chest pain radiating to left arm."
    # 8 quote tokens, window of 8 tokens with 7 shared: 7/8 + 7/8
    r = align_quote(note, "The patient reports SEVERE chest pain since yesterday")
    assert len(r) == 1 and r[0].method == "fuzzy" and r[0].score == pytest.approx(1.75)
    assert covered(r[0], note) == "the patient reports mild chest pain since yesterday"
    # extra quote word: window of 6 tokens, all shared: 6/6 + 6/7
    r = align_quote(note, "chest pain radiating to the left arm")
    assert r[0].method == "fuzzy" and r[0].score == pytest.approx(1 + 6 / 7)
    assert covered(r[0], note) == "chest pain radiating to left arm"
    # 5 tokens, 4 shared in a 5-token window: 1.6 -> below 1.7, accepted at 1.5
    q = "patient reports severe chest pain"
    r = align_quote(note, q)
    assert (r[0].method, r[0].reason, r[0].start) == ("unaligned", "below_threshold", None)
    assert r[0].score == pytest.approx(1.6)
    r = align_quote(note, q, threshold=1.5)
    assert r[0].method == "fuzzy" and covered(r[0], note) == "patient reports mild chest pain"


def test_fuzzy_all_and_first_occurrences():
    note = "Pt has acute chronic kidney failure. Later: acute-on chronic kidney failure noted."
    q = "acute on chronic renal kidney failure"  # not exact; token windows in both places
    rs = align_quote(note, q, threshold=1.5)
    assert {r.method for r in rs} == {"fuzzy"}
    assert len(rs) >= 1
    assert len(align_quote(note, q, threshold=1.5, occurrences="first")) == 1
    note2 = "acute kidney failure noted. x y z. acute kidney failure noted."
    rs = align_quote(note2, "acute renal kidney failure")  # 3/3 + 3/4 = 1.75, twice
    assert [r.method for r in rs] == ["fuzzy", "fuzzy"] and rs[0].end <= rs[1].start
    assert len(align_quote(note2, "acute renal kidney failure", occurrences="first")) == 1


def brute_best(note_tokens, q_tokens):
    m, best = len(q_tokens), 0.0
    qc = Counter(q_tokens)
    for i in range(len(note_tokens)):
        c = Counter()
        for j in range(i, len(note_tokens)):
            c[note_tokens[j]] += 1
            ov = sum(min(v, qc[t]) for t, v in c.items())
            best = max(best, ov / (j - i + 1) + ov / m)
    return best


@pytest.mark.parametrize("threshold", [1.5, 1.7, 2.0])
def test_fuzzy_matches_brute_force(threshold):
    rng = random.Random(int(threshold * 10))
    vocab = [f"w{i}" for i in range(12)]
    for _ in range(150):
        note_toks = [rng.choice(vocab) for _ in range(rng.randint(5, 60))]
        if rng.random() < 0.6:  # perturbed copy of a window
            i = rng.randrange(len(note_toks))
            q = note_toks[i:i + rng.randint(1, 12)]
            q = [rng.choice(vocab + ["zz"]) if rng.random() < 0.2 else t for t in q]
        else:
            q = [rng.choice(vocab + ["zz", "yy"]) for _ in range(rng.randint(1, 10))]
        idx = NoteIndex(" ".join(note_toks))
        score, found = idx.fuzzy(q, threshold)
        best = brute_best(note_toks, q)
        if best >= threshold - 1e-9:
            assert score == pytest.approx(best) and found
            # each returned window reaches the best score
            for s, e in found:
                w = re.findall(r"\w+", idx.text[s:e])
                ov = sum((Counter(w) & Counter(q)).values())
                assert ov / len(w) + ov / len(q) == pytest.approx(best)
        else:
            assert not found and score <= best + 1e-9


def test_split_on_ellipsis_and_separators():
    rs = align_quote(NOTE, "radiating to left arm ... no fever")
    assert [r.method for r in rs] == ["split_exact", "split_exact"]
    assert [covered(r) for r in rs] == ["radiating to left arm", "No fever"]
    assert rs[0].part == "radiating to left arm" and rs[0].quote == "radiating to left arm ... no fever"
    rs = align_quote(NOTE, "Diabetes; totally unrelated sentence here")
    assert [r.method for r in rs] == ["split_exact", "unaligned"]
    assert rs[1].part == "totally unrelated sentence here" and rs[1].reason == "no_overlap"
    rs = align_quote(NOTE, "left arm\u2026 diabetes")
    assert [covered(r) for r in rs] == ["left arm", "Diabetes"]
    # nothing aligns: one row for the whole quote
    rs = align_quote(NOTE, "foo bar; baz qux")
    assert len(rs) == 1 and rs[0].reason == "no_overlap" and rs[0].part == "foo bar; baz qux"


def test_unaligned_reasons():
    for q in ["", "...", "  ", None]:
        [r] = align_quote(NOTE, q)
        assert (r.method, r.reason, r.start, r.end, r.score) == ("unaligned", "empty", None, None, 0.0)
    [r] = align_quote(NOTE, "ketoacidosis")
    assert r.reason == "no_overlap" and r.score == 0.0 and not r.aligned
    [r] = align_quote(NOTE, "severe chest pain with shortness of breath")
    assert r.reason == "below_threshold" and 0 < r.score < 1.7
    [r] = align_quote("", "chest pain")
    assert r.reason == "no_overlap"


def test_align_quotes_frame():
    docs = pd.DataFrame({"note_id": ["a", "b"], "text": [NOTE, "Acute kidney injury."]})
    quotes = pd.DataFrame({
        "note_id": ["a", "a", "b", "b", "a"],
        "code": ["R07.9", "I10", "N17.9", "N17.9", "E11"],
        "quote": ["chest pain", "hypertension poorly controlled", "acute kidney injury", "sepsis", "left arm ... no fever"],
        "model": ["m1"] * 5,
    })
    out = align_quotes(docs, quotes)
    assert list(out.columns[:4]) == ["note_id", "code", "quote", "model"]
    assert out["quote_row"].tolist() == [0, 0, 1, 2, 3, 4, 4]
    assert out["method"].tolist() == ["exact", "exact", "fuzzy", "exact", "unaligned", "split_exact", "split_exact"]
    assert str(out["start"].dtype) == "Int64"
    un = out[out.method == "unaligned"].iloc[0]
    assert pd.isna(un.start) and pd.isna(un.end) and un.reason == "no_overlap"
    assert out.loc[out.method == "exact", "reason"].isna().all()
    spans = aligned_to_spans(out, "llm_zero")
    assert list(spans.columns[:6]) == SPAN_COLUMNS and {"score", "method"} <= set(spans.columns)
    assert len(spans) == 6 and (spans.source == "llm_zero").all() and spans.start.dtype == "int64"
    dup = aligned_to_spans(pd.concat([out, out]), "x")
    assert len(dup) == 6
    s = alignment_summary(out)
    assert s["n_quotes"] == 5 and s["n_aligned"] == 4 and s["n_unaligned"] == 1
    assert s["alignment_rate"] == pytest.approx(0.8) and s["unaligned_rate"] == pytest.approx(0.2)
    assert s["by_method"]["exact"]["quotes"] == 2 and s["by_method"]["fuzzy"]["quotes"] == 1
    assert s["by_method"]["split_exact"]["quotes"] == 1 and s["unaligned_by_reason"]["no_overlap"]["quotes"] == 1
    assert s["n_spans"] == 6
    sweep = threshold_sweep(docs, quotes, [1.5, 2.0])
    assert sweep["threshold"].tolist() == [1.5, 2.0]
    assert sweep.loc[0, "alignment_rate"] >= sweep.loc[1, "alignment_rate"]


def test_align_quotes_errors_and_empty():
    docs = pd.DataFrame({"note_id": ["a"], "text": [NOTE]})
    with pytest.raises(DataError, match="unknown note_id 'zz'"):
        align_quotes(docs, pd.DataFrame({"note_id": ["zz"], "code": ["X"], "quote": ["q"]}))
    empty = align_quotes(docs, pd.DataFrame({"note_id": [], "code": [], "quote": []}))
    assert len(empty) == 0
    assert alignment_summary(empty)["alignment_rate"] == 0.0
    assert len(aligned_to_spans(empty, "x")) == 0


def test_long_note_is_fast():
    rng = random.Random(0)
    vocab = [f"term{i}" for i in range(800)] + ["the", "of", "and", "with", "patient", "no"] * 40
    words = [rng.choice(vocab) for _ in range(5000)]
    text = " ".join(words)
    idx = NoteIndex(text)
    quotes = []
    for _ in range(300):
        i = rng.randrange(4900)
        q = words[i:i + rng.randint(3, 30)]
        q = [rng.choice(vocab) if rng.random() < 0.15 else w for w in q]
        quotes.append(" ".join(q))
    t0 = time.perf_counter()
    res = [idx.align(q) for q in quotes]
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, elapsed
    assert sum(r[0].aligned for r in res) > 150
