"""Profiles: every shipped profile loads; bad keys and types are errors naming key and file."""
import pytest

from rationale_kit.core.config import PARAMS_DIR, ConfigError, load_profile


@pytest.mark.parametrize("name", ["default", "smoke", "codiesp", "mimic", "seeds", "codiesp_seeds"])
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
    f.write_text("base: null\ntrain:\n  plm_icd: {max_chunks: 3}\n")  # null: the built-in defaults, not default.yaml
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


# --------------------------------------------------------------------------------------------
# every setting does something; every default agrees
# --------------------------------------------------------------------------------------------
import dataclasses
import inspect
import json
import re
import typing
from pathlib import Path

from rationale_kit.core import config as C

ROOT = Path(C.__file__).resolve().parents[2]

NOT_YET_READ: set[tuple[str, str]] = set()  # every field is read
#: read by name rather than as an attribute: getattr(profile.train, name) for the model sections
READ_BY_NAME = {("Train", "caml"), ("Train", "laat"), ("Train", "plm_icd")}


def _sources() -> str:
    texts = [p.read_text(encoding="utf-8") for p in (ROOT / "rationale_kit").rglob("*.py") if p.name != "config.py"]
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        texts += ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    return "\n".join(texts)


def _sections(cls=C.Profile, seen=None):
    seen = set() if seen is None else seen
    if cls in seen:
        return
    seen.add(cls)
    yield cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _sections(hints[f.name], seen)


def test_every_config_field_is_read_somewhere():
    src = _sources()
    unread = []
    for cls in _sections():
        for f in dataclasses.fields(cls):
            if (cls.__name__, f.name) in NOT_YET_READ | READ_BY_NAME:
                continue
            if not re.search(rf"\.{re.escape(f.name)}\b|getattr\(\w+, \"{re.escape(f.name)}\"", src):
                unread.append(f"{cls.__name__}.{f.name}")
    assert unread == []
    for cls_name, name in READ_BY_NAME:
        assert "getattr(profile.train, name)" in src and name in C.Train.__dataclass_fields__


def test_removed_key_names_what_to_set_instead(tmp_path):
    f = tmp_path / "old.yaml"
    f.write_text("few_shot:\n  shots: [0, 5]\n")
    with pytest.raises(ConfigError, match=r"old.yaml.few_shot.shots: few_shot.shots was removed.*rationales.llm.shots_per_code"):
        load_profile(f)
    with pytest.raises(ConfigError, match="few_shot.shots was removed"):
        load_profile("smoke", {"few_shot": {"shots": [0, 1]}})
    with pytest.raises(ConfigError, match="plausibility.macro was removed"):
        load_profile("smoke", {"plausibility": {"macro": True}})
    f.write_text("rationales:\n  sources: [attention, entiti]\n")
    with pytest.raises(ConfigError, match=r"rationales.sources\[1\]: 'entiti' is not one of"):
        load_profile(f)


def test_every_default_agrees():
    """One gradient method default: the config's (functions read the same constant; notebook 03's
    text names it)."""
    from rationale_kit import rationales as R

    want = C.Rationales().gradient_method
    assert want == C.DEFAULT_GRADIENT_METHOD
    for fn in (R.gradient_rationales, R.explain_encoded):
        assert inspect.signature(fn).parameters["method"].default == want, fn.__name__
    nb = json.loads((ROOT / "notebooks" / "03_rationales.ipynb").read_text(encoding="utf-8"))
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    names = {"input_x_gradient": "input × gradient", "integrated_gradients": "integrated gradients",
             "attention_x_gradient": "attention × gradient"}
    assert f"{names[want]} by default" in text
    assert not [n for m, n in names.items() if m != want and f"{n} by default" in text]
    # NER formulation: the config default is the tagger's default
    from rationale_kit.rationales.ner import NERConfig

    assert C.Guided().ner_formulation == NERConfig().formulation


def test_a_profile_path_inherits_with_base(tmp_path):
    """``base: default`` makes a profile file default.yaml plus its own keys (section by section);
    without base a file keeps the built-in defaults (a copy of a shipped profile behaves the same)."""
    default = load_profile("default")
    f = tmp_path / "mine.yaml"
    f.write_text("base: default\nrationales:\n  llm: {backend: openai, base_url: 'http://localhost:8080/v1', concurrency: 1}\n")
    prof = load_profile(f)
    assert prof.name == "mine" and prof.rationales.llm.backend == "openai" and prof.rationales.llm.concurrency == 1
    assert prof.alignment.threshold == default.alignment.threshold == 1.7  # from default.yaml, not the built-in value
    assert prof.rationales.llm.max_new_tokens == default.rationales.llm.max_new_tokens == 160
    assert prof.data == default.data and prof.train == default.train
    f.write_text("base: smoke\ncommon: {seed: 99}\n")
    prof = load_profile(f)
    assert prof.common.seed == 99 and prof.train == load_profile("smoke").train
    import yaml

    (tmp_path / "copy.yaml").write_text((PARAMS_DIR / "smoke.yaml").read_text())
    copy = load_profile(tmp_path / "copy.yaml")
    assert dataclasses.replace(copy, name="smoke") == load_profile("smoke")  # no base: nothing inherited
    assert yaml.safe_load(f.read_text())["base"] == "smoke"
    f.write_text("base: 7\n")
    with pytest.raises(ConfigError, match="base must be a profile name"):
        load_profile(f)
    f.write_text("base: nope\n")
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        load_profile(f)


def test_each_model_family_has_its_own_typed_config():
    from rationale_kit.core.config import CAMLParams, LAATParams, PLMICDParams, params_for

    p = load_profile("default")
    assert type(p.train.caml) is CAMLParams and type(p.train.laat) is LAATParams
    assert type(p.train.plm_icd) is PLMICDParams and p.train.plm_icd.freeze_layers == 5
    assert not hasattr(p.train.caml, "hidden") and not hasattr(p.train.plm_icd, "filters")
    with pytest.raises(ConfigError, match=r"train\.caml: unknown key 'hidden'"):
        load_profile("default", {"train": {"caml": {"hidden": 64}}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['chunk_size'\] for LAATParams"):
        params_for("laat", {"hidden": 8, "chunk_size": 16})
    assert params_for("laat", {"hidden": 8, "chunk_size": 16}, strict=False) == LAATParams(hidden=8)


@pytest.mark.parametrize("bad, key", [({"thresholds": [-1.0]}, "thresholds"), ({"threshold_grid": []}, "threshold_grid"),
                                      ({"surgery_lambdas": [0.0]}, "surgery_lambdas"), ({"soft_samples": 0}, "soft_samples"),
                                      ({"curve_notes": 0}, "curve_notes"), ({"two_stage_tolerances": [-0.1]}, "two_stage_tolerances")])
def test_open_questions_settings_out_of_range_are_refused_naming_the_key(bad, key):
    with pytest.raises(ConfigError, match=rf"open_questions\.{key} must be"):
        load_profile("smoke", {"open_questions": bad})


def test_seed_models_are_validated_and_pick_each_models_seeds(tmp_path):
    """train.seed_models: the models trained (and explained) under every seed; a misspelt key or a
    model outside train.models is an error naming it."""
    from rationale_kit.core.config import model_seeds, seeds

    prof = load_profile("smoke", {"common": {"seeds": [7, 8, 9]}, "train": {"seed_models": ["caml"]}})
    assert model_seeds(prof, "caml") == [7, 8, 9] and model_seeds(prof, "laat") == [7]
    every = load_profile("smoke", {"common": {"seeds": [7, 8]}})
    assert every.train.seed_models is None and model_seeds(every, "plm_icd") == seeds(every) == [7, 8]
    assert model_seeds(load_profile("smoke"), "caml") == [7]  # one seed: common.seed
    with pytest.raises(ConfigError, match=r"train.seed_models names 'bert', which is not in train.models"):
        load_profile("smoke", {"train": {"seed_models": ["caml", "bert"]}})
    with pytest.raises(ConfigError, match="distinct"):
        load_profile("smoke", {"train": {"seed_models": ["caml", "caml"]}})
    f = tmp_path / "p.yaml"
    f.write_text("base: smoke\ntrain:\n  seed_model: [caml]\n")
    with pytest.raises(ConfigError, match=r"p.yaml.train: unknown key 'seed_model'"):
        load_profile(f)


def test_seeds_profile_is_the_default_series_with_three_seeds_for_the_compared_models():
    from rationale_kit.core.config import model_seeds

    prof, default = load_profile("seeds"), load_profile("default")
    assert len(prof.common.seeds) == 3 and prof.common.seeds[0] == default.common.seed
    assert prof.train.models == default.train.models and prof.data == default.data
    for m in prof.train.seed_models:
        assert model_seeds(prof, m) == prof.common.seeds
