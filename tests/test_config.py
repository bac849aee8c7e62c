"""Profiles: every shipped profile loads; bad keys and types are errors naming key and file."""
import pytest

from rationale_kit.config import PARAMS_DIR, ConfigError, load_profile


@pytest.mark.parametrize("name", ["default", "smoke", "codiesp", "mimic"])
def test_shipped_profiles_load(name):
    prof = load_profile(name)
    assert prof.name == name
    assert prof.train.models


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("common:\n  seed: 1\ntrain:\n  caml: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_profile(f)
    assert "lrr" in str(err.value) and "bad.yaml" in str(err.value) and "train.caml" in str(err.value)


def test_unknown_section(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("trian:\n  models: [caml]\n")
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_profile(f)


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("common: {seed: 'x'}", "common.seed: expected an integer"),
        ("common: {device: tpu}", "common.device: 'tpu' is not one of"),
        ("alignment: {threshold: yes}", "alignment.threshold: expected a number"),
        ("train: {models: caml}", "train.models: expected a list"),
        ("common: {progress: 1}", "common.progress: expected true/false"),
    ],
)
def test_type_errors(tmp_path, yaml_text, fragment):
    f = tmp_path / "p.yaml"
    f.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_profile(f)


def test_partial_model_section_keeps_model_defaults(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("train:\n  plm_icd: {max_chunks: 3}\n")
    prof = load_profile(f)
    assert prof.train.plm_icd.max_chunks == 3
    assert prof.train.plm_icd.lr == pytest.approx(5e-5)  # PLM-ICD's own default, not the generic one
    assert prof.train.caml.lr == pytest.approx(5e-3)


def test_overrides_apply_on_top_and_are_validated():
    prof = load_profile("smoke", {"alignment": {"threshold": 1.5}, "train": {"caml": {"epochs": 1}}})
    assert prof.alignment.threshold == 1.5
    assert prof.train.caml.epochs == 1
    assert prof.train.caml.filters == load_profile("smoke").train.caml.filters  # untouched keys kept
    with pytest.raises(ConfigError, match="overrides"):
        load_profile("smoke", {"alignment": {"treshold": 1.5}})


def test_missing_profile_lists_available():
    with pytest.raises(ConfigError, match="available"):
        load_profile("nope")
    assert (PARAMS_DIR / "default.yaml").exists()
