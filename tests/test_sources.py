"""Typed rationale sources: one display-name function, parsing back, typed table columns."""
import pandas as pd
import pytest

from rationale_kit.core.sources import (
    ATTENTION, ENTITY_CATEGORY, ENTITY_EXACT, LLM_FEW, LLM_ZERO, RANDOM, Source, parse_source, source_name,
    with_source_columns,
)


@pytest.mark.parametrize("src, name", [
    (ENTITY_EXACT, "entity (exact_code)"), (ENTITY_CATEGORY, "entity (category)"), (LLM_ZERO, "llm_zero"),
    (LLM_FEW, "llm_few"), (RANDOM, "random"), (ATTENTION, "attention"), (ATTENTION.with_top_k(10), "attention (top-10)"),
    (Source("gradient", "threshold 0.120"), "gradient (threshold 0.120)"), (Source("human"), "human"),
])
def test_each_source_has_one_display_name_that_parses_back(src, name):
    assert source_name(src) == src.name == name
    assert parse_source(name) == src


def test_older_names_and_models():
    assert parse_source("attention top-10") == ATTENTION.with_top_k(10)  # saved tables of earlier runs
    assert ATTENTION.with_top_k(10).top_k == 10 and ENTITY_EXACT.top_k is None
    assert parse_source("attention (top-5)", model="laat") == Source("attention", "top-5", "laat")
    assert Source("attention", "top-5", "laat").name == "attention (top-5)"  # the model has its own column


@pytest.mark.parametrize("bad", ["entity (exact code)", "llm_many", "Attention", "spacy (x)", ""])
def test_a_misspelt_source_is_an_error_not_a_silent_miss(bad):
    with pytest.raises(ValueError):
        parse_source(bad)


def test_kind_and_variant_are_checked():
    with pytest.raises(ValueError, match="unknown rationale source kind"):
        Source("lime")
    with pytest.raises(ValueError, match="entity source variant"):
        Source("entity", "exact code")
    with pytest.raises(ValueError, match="llm source variant"):
        Source("llm", "one")


def test_tables_get_typed_columns_beside_the_display_name():
    t = pd.DataFrame({"source": ["entity", "entity", "llm_few", "attention (top-10)", "my label"],
                      "method": ["exact_code", "category", "", "", ""]})
    out = with_source_columns(t)
    assert list(out.source_kind) == ["entity", "entity", "llm", "attention", ""]
    assert list(out.source_variant) == ["exact_code", "category", "few", "top-10", ""]
    assert "source_kind" not in t  # the input is not changed
    assert with_source_columns(out) is out and with_source_columns(pd.DataFrame({"x": [1]})).columns.tolist() == ["x"]
