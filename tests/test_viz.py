"""The static renderer and the explorer's pure part (selection -> HTML), plus the widget shell."""
import re

import numpy as np
import pandas as pd
import pytest

from rationale_kit import viz

EVIL = "<script>alert(1)</script>"
# "chest pain" is 13..23; hyp(): "Hypertension", after the markup
TEXT = f"Patient with chest pain. {EVIL} Hypertension, poorly controlled. aa bb aa"
DOCS = pd.DataFrame({"note_id": ["n1", "n2"], "text": [TEXT, "aa bb cc dd"]})


def span_table(*rows, granularity=""):
    return pd.DataFrame([{"note_id": n, "code": c, "start": s, "end": e, "granularity": granularity} for n, c, s, e in rows],
                        columns=["note_id", "code", "start", "end", "granularity"])


def hyp():
    s = TEXT.index("Hypertension")
    return s, s + len("Hypertension")


GOLD = span_table(("n1", "I10", *hyp()), granularity="mention")
ENTITY = span_table(("n1", "I10", *hyp()), ("n1", "R07.9", 13, 23))
LLM = span_table(("n1", "I10", hyp()[0], hyp()[1] + 17), ("n2", "Z00", 0, 2))


def soft_table():
    rows = []
    for model, best in (("caml", hyp()), ("laat", (13, 23))):
        for unit, (s, e) in enumerate([(0, 7), (13, 23), hyp()]):
            rows.append(("n1", "I10", "attention", model, unit, s, e, 0.9 if (s, e) == best else 0.05))
    return pd.DataFrame(rows, columns=["note_id", "code", "source", "model", "unit", "start", "end", "score"])


FAITH = pd.DataFrame([
    # note_id, code, source, model, measure, k, value, control
    ("n1", "I10", "entity (exact_code)", "caml", "comprehensiveness", np.nan, 0.25, "rationale"),
    ("n1", "I10", "entity (exact_code)", "caml", "sufficiency", np.nan, 0.5, "rationale"),
    ("n1", "I10", "entity (exact_code)", "caml", "comprehensiveness", np.nan, 0.125, "random"),
    ("n1", "I10", "entity (exact_code)", "laat", "comprehensiveness", np.nan, 0.75, "rationale"),
    ("n1", "I10", "attention", "caml", "aopc_comp", 5.0, 0.9, "rationale"),  # a curve point: dropped
    ("n1", "I10", "attention", "caml", "aopc_comp", np.nan, 0.375, "rationale"),
    ("n1", "I10", "attention top-10", "caml", "comprehensiveness", np.nan, 0.0625, "rationale"),
], columns=["note_id", "code", "source", "model", "measure", "k", "value", "control"])


def data(measures=(FAITH,)):
    return viz.explorer_data(DOCS, GOLD, {"entity (exact_code)": ENTITY, "llm_few": LLM}, soft_table(), measures)


# --- render_note ------------------------------------------------------------------------------

def test_render_note_escapes_text_and_names():
    layers = [viz.Layer("gold <b>x</b>", "gold", (hyp(),), "#ffd54f", "mention"),
              viz.Layer(EVIL, "discrete", ((13, 23),), "#d32f2f")]
    out = viz.render_note(TEXT, layers, title=EVIL)
    assert "<script" not in out and "<b>x</b>" not in out
    assert out.count("&lt;script&gt;") == 3  # note text, layer name, title
    assert out.count("<mark") == 1 and out.count('class="rk-u"') == 1
    assert out.count('class="rk-legend-item"') == 2


# --- pair plausibility ------------------------------------------------------------------------

def test_pair_plausibility_hand_computed():
    gold = span_table(("n2", "Z00", 0, 5))  # tokens aa, bb
    pred = span_table(("n2", "Z00", 3, 8), ("n2", "OTHER", 0, 2))  # bb, cc; a pair without gold: ignored
    out = viz.pair_plausibility(gold, {"src": pred}, DOCS).set_index("measure")
    assert list(out.columns) == ["note_id", "code", "source", "model", "value"]
    assert set(out.code) == {"Z00"} and set(out.model) == {"-"}
    assert out.loc["plausibility (token F1)", "value"] == pytest.approx(0.5)
    assert out.loc["plausibility (PI token F1)", "value"] == pytest.approx(0.5)


def test_pair_plausibility_position_independent_tokens():
    # gold: the first "aa", prediction: the last one; no token overlap, same word
    a1, a2 = TEXT.index("aa"), TEXT.rindex("aa")
    out = viz.pair_plausibility(span_table(("n1", "X", a1, a1 + 2)), {"s": span_table(("n1", "X", a2, a2 + 2))},
                                DOCS, model="caml").set_index("measure")
    assert out.loc["plausibility (token F1)", "value"] == 0
    assert out.loc["plausibility (PI token F1)", "value"] == 1
    assert set(out.model) == {"caml"}


# --- measure tables ---------------------------------------------------------------------------

def test_aggregated_plausibility_table_is_refused():
    agg = pd.DataFrame({"source": ["a"], "measure": ["span_exact"], "f1": [0.5]})
    with pytest.raises(ValueError, match="pair_plausibility"):
        viz.explorer_data(DOCS, measures=[agg])


def test_f1_column_is_the_value_and_curve_points_are_dropped():
    t = pd.DataFrame({"note_id": ["n1"], "code": ["I10"], "source": ["x"], "measure": ["m"], "f1": [0.5]})
    d = viz.explorer_data(DOCS, measures=[t, FAITH])
    assert len(d.measures) == 1 + len(FAITH) - 1
    assert d.measures.set_index("source").loc["x", "value"] == 0.5


def test_source_name_clash_is_refused():
    with pytest.raises(ValueError, match="attention"):
        viz.explorer_data(DOCS, discrete={"attention": ENTITY}, soft=soft_table())


def test_pair_measures_select_model_sources_and_controls():
    d = data([FAITH, viz.pair_plausibility(GOLD, {"entity (exact_code)": ENTITY}, DOCS)])
    wide = viz.pair_measures(d, "n1", "I10", ["entity (exact_code)", "attention"], "caml")
    assert list(wide.index) == ["entity (exact_code)", "entity (exact_code) · random control",
                                "attention", "attention top-10"]
    assert list(wide.columns[:3]) == ["plausibility (token F1)", "plausibility (PI token F1)", "comprehensiveness"]
    assert wide.loc["entity (exact_code)", "comprehensiveness"] == 0.25  # caml's, not laat's 0.75
    assert wide.loc["entity (exact_code)", "plausibility (token F1)"] == 1.0  # model "-": always shown
    assert wide.loc["attention", "aopc_comp"] == 0.375
    assert viz.pair_measures(d, "n1", "I10", ["llm_few"], "caml").empty


# --- selection -> HTML ------------------------------------------------------------------------

def test_lists_of_notes_codes_sources_models():
    d = data()
    assert viz.explorer_notes(d) == ["n1", "n2"]
    assert viz.explorer_codes(d, "n1") == ["I10", "R07.9"]
    assert viz.explorer_sources(d) == ["entity (exact_code)", "llm_few", "attention"]
    assert viz.explorer_models(d) == ["caml", "laat"]


def test_selection_html_draws_the_chosen_layers_escaped():
    d = data()
    out = viz.selection_html(d, "n1", "I10", ["entity (exact_code)", "attention"], "caml", whole_note=True)
    assert "<script" not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    legend = re.findall(r'class="rk-legend-item"[^>]*>.*?</span> (.*?) \(\d+\)</span>', out)
    assert legend == ["gold: mention", "entity (exact_code)", "attention (caml)"]
    assert out.count("<mark") == 1  # the gold mention
    assert out.count('class="rk-u"') == 1  # one discrete source, one span on this pair
    assert "rgba(21,101,192,0.75)" in out  # caml's best unit is fully shaded
    assert "rk-pair-measures" in out and "0.250" in out and "0.750" not in out


def test_selection_html_follows_model_and_sources():
    d = data()
    laat = viz.selection_html(d, "n1", "I10", ["attention"], "laat", whole_note=True)
    assert "attention (laat)" in laat and "attention (caml)" not in laat
    assert "0.750" in viz.selection_html(d, "n1", "I10", ["entity (exact_code)"], "laat")
    none = viz.selection_html(d, "n1", "I10", [], "caml")
    assert 'class="rk-u"' not in none and "no per-pair measures" in none


def test_selection_html_window_and_whole_note():
    long = DOCS.assign(text=DOCS.text.where(DOCS.note_id != "n2", "x " * 2000 + "aa bb"))
    d = viz.explorer_data(long, span_table(("n2", "Z00", 4000, 4002)))
    short, whole = viz.selection_html(d, "n2", "Z00", margin=10), viz.selection_html(d, "n2", "Z00", whole_note=True)
    assert len(short) < 1000 < len(whole)


def test_selection_html_escapes_malicious_names():
    d = viz.explorer_data(DOCS, GOLD, {EVIL: ENTITY}, measures=[
        pd.DataFrame({"note_id": ["n1"], "code": ["I10"], "source": [EVIL], "measure": [EVIL], "value": [1.0]})])
    out = viz.selection_html(d, "n1", "I10", [EVIL])
    assert "<script" not in out and out.count("&lt;script&gt;") >= 3


# --- the widget shell -------------------------------------------------------------------------

def test_explorer_redraws_one_output_in_place():
    pytest.importorskip("ipywidgets")
    box = viz.explorer(DOCS, GOLD, {"entity (exact_code)": ENTITY, "llm_few": LLM}, soft_table(), [FAITH])
    c = box.controls
    out = c["output"]
    assert c["note"].value == "n1" and c["code"].value == "I10" and c["model"].value == "caml"
    assert list(c["sources"].value) == ["entity (exact_code)", "llm_few", "attention"]
    assert "attention (caml)" in out.value
    c["model"].value = "laat"
    assert "attention (laat)" in out.value and c["output"] is out
    c["note"].value = "n2"
    assert c["code"].options == ("Z00",) and "n2 · Z00" in out.value
    assert sum(1 for w in box.children if w is out) == 1


def test_explorer_starts_at_the_given_selection_from_prepared_data():
    pytest.importorskip("ipywidgets")
    box = viz.explorer(data(), sources=["llm_few"], note_id="n1", code="R07.9", model="laat")
    c = box.controls
    assert (c["note"].value, c["code"].value, c["model"].value) == ("n1", "R07.9", "laat")
    assert c["output"].value == viz.selection_html(data(), "n1", "R07.9", ["llm_few"], "laat")
    c["whole_note"].value = True
    assert c["output"].value == viz.selection_html(data(), "n1", "R07.9", ["llm_few"], "laat", whole_note=True)


def test_styled_table_escapes_labels_and_text():
    evil = "<img src=x onerror=alert(1)>"
    frame = pd.DataFrame({"f1": [0.12345, float("nan")], "note": [evil, "ok"]},
                         index=pd.Index([evil, "caml"], name="model"))
    frame.columns = pd.Index(["f1", "<b>note</b>"])
    out = viz.styled_table(frame).to_html()
    assert "<img" not in out and "<b>" not in out
    assert out.count("&lt;img src=x onerror=alert(1)&gt;") == 2 and "&lt;b&gt;note&lt;/b&gt;" in out
    assert "0.123" in out and "0.12345" not in out
