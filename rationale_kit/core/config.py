"""Profiles: ``params/<profile>.yaml``, validated against typed dataclasses.

A profile has one ``common`` section and one section per notebook. An unknown or misspelt key is
an error naming the key and the file; values are type-checked. ``overrides`` (a nested dict, as
given in a notebook's ``parameters`` cell) are applied on top of the file and validated the same way.

Each dataclass field's comment is its documentation; defaults here are the documented defaults.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from rationale_kit.core.runtime import ROOT

PARAMS_DIR = ROOT / "params"


class ConfigError(ValueError):
    """A profile is invalid; the message names the file and the key."""


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Common:
    seed: int = 13  # seeds python, numpy and torch
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    threads: int = 2  # torch intra-op threads on CPU
    dataset: Literal["embedded", "codiesp", "mimic"] = "embedded"
    artifacts_dir: str = "artifacts"  # artifacts/<profile>/<NN_name>/
    figures_dir: str = "figures"
    progress: bool = True  # progress bars (tqdm.auto: widgets in JupyterLab, text under papermill)
    # training seeds of the experiments that repeat over seeds (notebook 02's coding models, 07's
    # sweep and the students of 08): tables give the mean and spread across seeds; None = [seed]
    seeds: Optional[list[int]] = None


@dataclass(frozen=True)
class EmbeddedCorpus:
    n_train: int = 1200
    n_val: int = 200
    n_test: int = 200  # every test note is human-annotated (the evaluation set)
    n_fewshot_pool: int = 150  # annotated training notes reserved for few-shot prompts
    n_codes: int = 60  # how many of the lexicon's codes are used
    min_words: int = 200
    max_words: int = 3200
    codes_per_note_mean: float = 5.0
    no_evidence_rate: float = 0.05  # share of assigned codes with no textual evidence
    indirect_rate: float = 0.15  # share of codes evidenced only indirectly (meds, labs)
    distractor_rate: float = 0.6  # expected negated / family / ruled-out mentions per note
    typo_rate: float = 0.02  # share of evidence mentions with a typo
    fewshot_per_code: int = 5  # evidenced few-shot notes each code gets in the pool (rarest first)
    lexicon_path: Optional[str] = None  # custom lexicon (folder or YAML); None = the packaged one


@dataclass(frozen=True)
class Data:
    embedded: EmbeddedCorpus = field(default_factory=EmbeddedCorpus)
    codiesp_dir: Optional[str] = None  # or env RK_CODIESP_DIR; default ../shared/data/codiesp_v4
    codiesp_language: Literal["es", "en"] = "es"
    # MIMIC-IV: either mimic_dir (a folder holding both hosp/ and note/) or both mimic_hosp_dir and
    # mimic_note_dir (the two PhysioNet projects); setting mimic_dir and either of the others is an error
    mimic_dir: Optional[str] = None
    mimic_hosp_dir: Optional[str] = None  # MIMIC-IV hosp/ (diagnoses_icd, procedures_icd[, d_icd_*])
    mimic_note_dir: Optional[str] = None  # MIMIC-IV-Note note/ (discharge.csv.gz)
    mimic_split_file: Optional[str] = None  # Edin et al. 2023 feather split (_id = hadm_id, split); None = patient split
    mimic_min_code_count: int = 10
    # MDACE's data/ folder as released (Inpatient/ICD-10 used; Profee and ICD-9 copies skipped, counted).
    # Its offsets refer to MIMIC-III notes: needs mimic3_noteevents
    mdace_dir: Optional[str] = None
    mimic3_noteevents: Optional[str] = None  # MIMIC-III NOTEEVENTS.csv or .csv.gz: the text of MDACE's notes
    # MDACE's splits/Inpatient folder (MDace-ev-{train,val,test}.csv); None = <mdace_dir>/../splits/Inpatient
    mdace_splits_dir: Optional[str] = None
    # The MDACE rules (docs/method/data.md): a preset, "project" (the defaults below) or "edin" (Edin
    # et al. 2024's choices); each mdace_* option left null takes the preset's value
    mdace_preset: Literal["project", "edin"] = "project"
    # which admissions tune and which are reported: "mdace" = MDACE's evidence splits (test reported,
    # train/val tuning; both presets), "hashed" = all evaluated, evaluation.tuning_fraction tunes
    mdace_split: Optional[Literal["mdace", "hashed"]] = None
    # discharge summaries used as documents: "reports" (every Report; project), "discharge" (addenda
    # too; edin), "first_report" (one per admission)
    mdace_notes: Optional[Literal["reports", "discharge", "first_report"]] = None
    # evidence evaluated: "cm_pcs" (diagnoses and procedures; project) or "cm" (diagnoses; edin)
    mdace_code_systems: Optional[Literal["cm_pcs", "cm"]] = None
    # codes MDACE codes are mapped to: "all" ICD-10 codes of MIMIC-IV's hosp tables (both presets) or
    # the codes of the "kept" MIMIC-IV documents
    mdace_known_codes: Optional[Literal["all", "kept"]] = None
    mdace_map_per_system: Optional[bool] = None  # CM maps to CM codes, PCS to PCS (both presets: true)
    # span edges: "edges" strips all punctuation/whitespace at both ends (project); "edin" = Edin et
    # al. 2024's one-character rule verbatim (looks at text[end], the character after the span); "none"
    mdace_trim: Optional[Literal["edges", "edin", "none"]] = None
    # MDACE codes no MIMIC-IV training document carries (after version mapping): "keep" them as gold
    # codes (misses for every model) with their spans (project), or "drop" them and their spans (edin)
    mdace_unseen_codes: Optional[Literal["keep", "drop"]] = None
    # spans starting after the first max_words words, where models cut the note: "keep" (project) or
    # "drop" (edin: spans past the input cut skipped)
    mdace_beyond_cut: Optional[Literal["keep", "drop"]] = None
    spans_jsonl: Optional[str] = None  # human spans in the project's JSONL format
    max_words: int = 4000  # notes are cut here before modelling
    # keep only the N codes carried by the most training documents (ties: code order), like the
    # MIMIC "top-50" setups: other codes and their spans are removed from every split (counted and
    # stated in notebook 01's report and notebook 02's table); None = every code
    top_codes: Optional[int] = None
    credentialed: bool = False  # set for MIMIC: marks documents as credentialed data
    fewshot_pool: int = 100  # CodiEsp/MIMIC: annotated training notes reserved for few-shot prompts


@dataclass(frozen=True)
class ModelParams:
    """What training reads for every model family; each family's typed config adds its own
    architecture (:class:`CAMLParams`, :class:`LAATParams`, :class:`PLMICDParams`)."""

    dropout: float = 0.2
    head_lr: Optional[float] = None  # learning rate of the non-encoder parameters; None = lr
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 8
    grad_accum: int = 1
    epochs: int = 20
    patience: int = 6
    max_train_docs: Optional[int] = None  # train this model on the first N training notes only


@dataclass(frozen=True)
class CAMLParams(ModelParams):
    embed_dim: int = 100  # word2vec size
    filters: int = 50  # convolution filters
    kernel: int = 10  # convolution width


@dataclass(frozen=True)
class LAATParams(ModelParams):
    embed_dim: int = 100  # word2vec size
    hidden: int = 512  # BiLSTM size per direction
    projection: int = 512  # attention projection


@dataclass(frozen=True)
class PLMICDParams(ModelParams):
    encoder_path: Optional[str] = None  # local Hugging Face checkpoint; None = bundled MiniLM
    chunk_size: int = 128  # chunk length in tokens
    max_chunks: int = 32  # chunks kept per note
    freeze_layers: int = 0  # freeze the embeddings and the first N encoder layers (0 = fine-tune all)
    projection: int = 512  # attention projection


#: The typed config of each model family (``train.<name>`` in a profile).
PARAMS_BY_MODEL: dict[str, type] = {"caml": CAMLParams, "laat": LAATParams, "plm_icd": PLMICDParams}


def params_for(name: str, values: Any = None, strict: bool = True) -> ModelParams:
    """The typed config of model family ``name`` from a mapping or another config's fields
    (``values``). ``strict``: a key the family does not have is an error naming it; otherwise it is
    left out (reading a model saved by an older version, or one setting shared by several families)."""
    if name not in PARAMS_BY_MODEL:
        raise ConfigError(f"unknown model {name!r} (one of {sorted(PARAMS_BY_MODEL)})")
    cls = PARAMS_BY_MODEL[name]
    if isinstance(values, cls) and type(values) is cls:
        return values
    if dataclasses.is_dataclass(values):
        values = dataclasses.asdict(values)
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown and strict:
        raise ConfigError(f"train.{name}: unknown key(s) {unknown} for {cls.__name__} (allowed: {sorted(known)})")
    return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class Word2Vec:
    dim: int = 100
    window: int = 5
    min_count: int = 2
    epochs: int = 5


@dataclass(frozen=True)
class Train:
    models: list[str] = field(default_factory=lambda: ["caml", "laat", "plm_icd"])
    caml: CAMLParams = field(
        default_factory=lambda: CAMLParams(dropout=0.2, lr=5e-3, weight_decay=1e-3, batch_size=8)
    )
    laat: LAATParams = field(
        default_factory=lambda: LAATParams(dropout=0.3, lr=1e-3, weight_decay=1e-3, batch_size=8)
    )
    plm_icd: PLMICDParams = field(
        default_factory=lambda: PLMICDParams(lr=5e-5, weight_decay=0.0, batch_size=8, grad_accum=2)
    )
    word2vec: Word2Vec = field(default_factory=Word2Vec)
    warmup_ratio: float = 0.1
    clip_norm: float = 1.0
    amp: bool = True  # mixed precision on GPU only; label attention stays float32
    threshold_grid: int = 101  # decision thresholds tried on validation, over [0, 1]
    max_train_docs: Optional[int] = None  # cap for quick runs
    # with several common.seeds: the models trained under every seed, whose attention and gradient
    # rationales (03), faithfulness (05) and plausibility (06) are then computed per seed for the
    # verdicts of findings (a) and (b) (docs/method/uncertainty.md); the other models of
    # train.models are trained and explained under the first seed only. None = every model
    seed_models: Optional[list[str]] = None


@dataclass(frozen=True)
class LLM:
    # which LLM writes the quotes: local (transformers, on this machine), gemini (Gemini API or,
    # with vertexai, Vertex AI), openai (any OpenAI-compatible chat-completions server: vLLM, SGLang,
    # Ollama, llama.cpp server, TGI, Azure OpenAI...), replay (answers recorded earlier)
    backend: Literal["local", "gemini", "openai", "replay"] = "local"
    model: str = "gemini-2.0-flash"  # model name of the gemini or openai backend
    local_path: Optional[str] = None  # local causal LM; None = bundled SmolLM2-135M-Instruct
    replay_file: Optional[str] = None  # recorded responses for the replay backend
    prompt_version: str = "v1"
    shots_per_code: int = 5
    # few-shot examples: each human span with this many characters of context on each side (cut at
    # white space), not the note around it; applies to every backend (docs/method/llm.md)
    example_context_chars: int = 60
    concurrency: int = 8  # requests in flight (gemini, openai); the local backend runs local_batch_size at a time
    max_retries: int = 5
    timeout_s: float = 60.0
    max_new_tokens: int = 512  # local answer budget (tokens)
    temperature: float = 0.0
    # send documents of a credentialed data set (data.credentialed or common.dataset mimic) to a remote
    # backend (gemini, vertex, or openai without local_endpoint): only after checking that the set-up
    # meets the PhysioNet data use agreement (no retention, no human review, provider agreement)
    allow_remote_credentialed_data: bool = False
    base_url: Optional[str] = None  # gemini: another endpoint (a proxy, a test server); openai: the server, e.g. http://localhost:8000/v1
    max_output_tokens: int = 8192  # gemini and openai answer budget (tokens)
    vertexai: bool = False  # gemini through Vertex AI (credentials from the environment: application-default credentials)
    project: Optional[str] = None  # Vertex AI: Google Cloud project id
    location: Optional[str] = None  # Vertex AI: region, e.g. europe-west4 (or global)
    # openai: the server runs on this machine or on the user's own network, so it is not a remote
    # third party (never guessed from the URL); credentialed notes may then go to it
    local_endpoint: bool = False
    # openai: how the answer schema is asked for: json_schema (response_format json_schema; vLLM,
    # Ollama, OpenAI), json_object (JSON mode without a schema), none (the prompt alone)
    response_format: Literal["json_schema", "json_object", "none"] = "json_schema"
    # openai: the request field of the answer budget: max_tokens (vLLM, Ollama, llama.cpp, TGI) or
    # max_completion_tokens (OpenAI and Azure OpenAI, where max_tokens is deprecated and o-series
    # reasoning models reject it)
    output_token_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    backoff_base_s: float = 1.0  # retry back-off: base * 2**attempt, with jitter, capped below
    backoff_max_s: float = 60.0
    requests_per_minute: Optional[float] = None  # client-side rate limit (None = none)
    max_note_chars: Optional[int] = None  # cut notes in prompts (None = whole note)
    record_file: Optional[str] = None  # also write every answer to this replay file
    price_per_million_in: float = 0.10  # USD per million input tokens: cost estimate and dry run (check current list prices)
    price_per_million_out: float = 0.40  # USD per million output tokens
    local_batch_size: int = 1  # local backend: prompts generated together (left-padded batches)
    local_structured: bool = True  # local backend: write the JSON around the model's quotes (guided decoding)
    local_verbatim: bool = True  # local backend, structured: each quote token must keep the quote a substring of the note
    local_device: Literal["auto", "cpu", "cuda"] = "auto"  # local backend: auto = cuda when available
    # local backend: the dtype of the model's weights and activations. bfloat16 reads prompts ~3x
    # faster on CPUs with AMX or AVX512 (much slower on CPUs without); its answers differ slightly
    # from float32's, so the dtype used is part of the cache key; auto = bfloat16 where the
    # hardware supports it (torch's oneDNN check, or a bfloat16 GPU), else float32 (docs/method/llm.md)
    local_dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    max_answer_chars: int = 100_000  # an answer longer than this is not parsed (outcome failed); bounds memory and rows
    max_quotes_per_code: int = 20  # quotes kept per code of one answer (the rest dropped and counted)


RATIONALE_SOURCES = ("attention", "gradient", "entity", "llm_zero", "llm_few")
#: the gradient method used when none is given (config, rationales.gradient_rationales, models.explain_encoded)
DEFAULT_GRADIENT_METHOD = "input_x_gradient"


@dataclass(frozen=True)
class Rationales:
    # sources computed in 03 (attention is always computed: top-k attention, 05 and 07 build on it);
    # without "gradient" no model gets gradient rationales, without "entity" the entity linker is not
    # run (e.g. CodiEsp: its lexicon is English), an absent llm_* teacher is not asked
    sources: list[Literal["attention", "gradient", "entity", "llm_zero", "llm_few"]] = field(
        default_factory=lambda: list(RATIONALE_SOURCES))
    code_set: Literal["gold", "predicted", "both"] = "both"
    topk: int = 10  # units kept when binarising soft rationales by top-k
    llm: LLM = field(default_factory=LLM)
    max_llm_notes: Optional[int] = None  # cap of notes sent to the LLM (None = all annotated)
    train_notes_for_teacher: int = 300  # training notes given LLM rationales for notebook 07
    # input x gradient costs one backward pass per batch of codes; integrated gradients ig_steps times that
    gradient_method: Literal["attention_x_gradient", "input_x_gradient", "integrated_gradients"] = DEFAULT_GRADIENT_METHOD
    ig_steps: int = 16  # integrated-gradients quadrature points (32 is safer for PLM-ICD)
    gradient_models: Optional[list[str]] = None  # models given gradient rationales (None = every model)
    attention_batch_size: int = 8
    entity_fuzzy_threshold: float = 0.8  # char-3gram cosine for fuzzy entity candidates
    entity_negation_window: int = 8  # tokens a negation trigger reaches
    entity_filter_historical: bool = False  # also drop "history of"/resolved mentions


@dataclass(frozen=True)
class Alignment:
    threshold: float = 1.7  # token precision + token recall in [0, 2]
    thresholds_shown: list[float] = field(default_factory=lambda: [1.5, 1.7, 2.0])
    occurrences: Literal["all", "first"] = "all"


@dataclass(frozen=True)
class Faithfulness:
    unit: Literal["token", "word"] = "token"
    perturbation: Literal["mask", "delete"] = "mask"
    code_set: Literal["predicted", "gold"] = "predicted"
    aopc_k: list[float] = field(default_factory=lambda: [1.0, 5.0, 10.0, 20.0, 50.0])
    word_steps: int = 50  # Edin 2024: steps of 2 words up to 100 (fewer steps: a shorter curve, cheaper)
    edin_unit: Literal["token", "word"] = "word"  # unit of the Edin et al. 2024 variant
    missing: Literal["skip", "empty"] = "skip"  # pairs without a rationale: skipped or scored empty
    models: Optional[list[str]] = None  # the coding models that score (None = every trained model)
    batch_size: int = 32
    max_pairs: Optional[int] = None  # pairs per model: a seeded sample (sample_seed) of the report-note pairs
    sample_seed: int = 0  # seed of that sample (numpy default_rng; docs/method/faithfulness.md)


@dataclass(frozen=True)
class Plausibility:
    threshold_grid_max: float = 0.1
    threshold_grid_steps: int = 51
    topk: list[int] = field(default_factory=lambda: [5, 10, 20])


@dataclass(frozen=True)
class Guided:
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.5, 1.0, 2.5, 5.0])
    loss: Literal["kl", "bce"] = "kl"
    models: list[str] = field(default_factory=lambda: ["caml", "laat", "plm_icd"])
    teachers: list[str] = field(default_factory=lambda: ["llm_zero", "llm_few", "human"])
    epochs: Optional[int] = None  # None = the model's own epochs
    # "scratch" trains each student from random initialisation (as the paper does); "trained" starts
    # from the notebook-02 model and fine-tunes it with the multi-objective loss (cheaper: CPU budgets)
    init: Literal["scratch", "trained"] = "scratch"
    # students (and their notebook-07/08 reruns) see the first N training notes; it replaces
    # train.max_train_docs and the model's own cap for them (None = those caps apply)
    max_train_docs: Optional[int] = None
    ner_train_sizes: list[int] = field(default_factory=lambda: [100, 300, 1000])
    ner_epochs: int = 3
    ner_formulation: Literal["code_agnostic"] = "code_agnostic"  # the tagger's formulation; why not code-conditioned: rationale_kit/rationales/ner.py
    ner_max_windows_per_note: Optional[int] = None  # windows with rationale first, then random ones
    ner_eval_notes: Optional[int] = None  # score the tagger on the first N evaluation notes (None = all)
    ner_teacher: str = "llm_few"  # whose aligned spans the NER tagger learns from (falls back to the first teacher)
    ner_lr: float = 5e-5
    ner_head_lr: Optional[float] = None  # None = ner_lr
    ner_freeze_layers: int = 0  # freeze the tagger's embeddings and first N encoder layers


@dataclass(frozen=True)
class FewShot:
    # the two teachers compared are notebook 03's llm_zero (0 shots) and llm_few
    # (rationales.llm.shots_per_code examples per code)
    student_model: str = "laat"
    lam: float = 1.0


@dataclass(frozen=True)
class OpenQuestions:
    """Notebook 09: the questions the paper leaves open (docs/method/open_questions.md)."""

    # "reduced": the first guided model only, the first two values of each setting grid, at most
    # 20 faithfulness pairs and a learning curve over at most 40 training notes (the default
    # series' budget); "full": everything below as given (the CodiEsp profile)
    scale: Literal["reduced", "full"] = "full"
    models: Optional[list[str]] = None  # None = guided.models
    teacher: str = "human"  # whose aligned spans the trade-off methods and the learning curve learn from
    surgery_lambdas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.5])
    surgery_lr: Optional[float] = None  # None = the model's own lr (train.<model>.lr), as notebook 07's students
    two_stage_tolerances: list[float] = field(default_factory=lambda: [0.1, 0.5, 1.0])
    two_stage_lr: float = 1e-2
    two_stage_penalty: float = 10.0  # weight of the squared excess of the logits over the tolerance
    epochs: Optional[int] = None  # epochs of surgery / stage 2 (None = guided.epochs, else 1)
    batch_size: Optional[int] = None  # None = the model's own batch size
    # settings are chosen on the tuning notes: the best PI token F1 among those whose tuning micro-F1
    # is at most coding_slack below the unguided student's (else the best PI token F1)
    coding_slack: float = 0.0
    # "without a coding cost" holds when the micro-F1 change's interval lies above -coding_margin
    coding_margin: float = 0.01
    faithfulness_pairs: int = 40  # pairs of finding (b) re-scored under the new measures
    soft_samples: int = 10  # Bernoulli masks per pair and measure, scores averaged (Soft-NC / Soft-NS; authors: 1)
    ffid_beta: float = 0.1  # F-Fidelity: share of a note masked in fine-tuning, the most masked on average in evaluation
    ffid_alpha: float = 0.5  # F-Fidelity: removal probability per unit of the pool (lowered to keep within beta)
    ffid_samples: int = 10  # random removals per pair and measure (authors: 50)
    ffid_epochs: int = 1  # random-masking fine-tuning epochs
    ffid_lr: float = 1e-3
    thresholds: list[float] = field(default_factory=lambda: [1.5, 1.7, 2.0])  # finding (a) at each (+ the tuned one)
    threshold_grid: list[float] = field(default_factory=lambda: [1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0])
    fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])  # of the training notes with teacher spans
    curve_notes: Optional[int] = None  # the curve's 100%: at most this many of those notes (None = all; reduced: 40)


@dataclass(frozen=True)
class Evaluation:
    tuning_fraction: float = 0.25  # share of the evaluation notes kept for tuning (never reported)
    bootstrap_resamples: int = 1000  # notes resampled with replacement, per interval
    seed: int = 0  # seed of the bootstrap's resampling weights
    level: float = 0.95  # interval coverage (percentile intervals)
    # verdict intervals (docs/method/uncertainty.md; defaults from benchmarks/coverage.py's table):
    # percentile | bca | studentized | t (estimate +- t quantile x jackknife standard error; the
    # only one within 0.02 of 95% coverage from 4 notes up; percentile needs ~50 notes)
    interval_method: Literal["percentile", "bca", "studentized", "t"] = "t"
    min_notes: int = 10  # a verdict row on fewer common notes says "too few notes" (combined rows skip it)
    # verdict intervals over several common.seeds (training seeds x notes; benchmarks/coverage.py
    # --hierarchical): percentile (the bootstrap over seeds and notes; rows say "hierarchical") | t
    # (two-way jackknife over notes and seeds, Satterthwaite df; "hierarchical t") | t_components
    # (each jackknife component widened by its own t quantile, N - 1 and S - 1 df;
    # "hierarchical t (components)": the only one not below 0.93 from 10 notes up)
    seed_interval_method: Literal["percentile", "t", "t_components"] = "t_components"
    verdict_resamples: int = 2000  # resamples per verdict interval (bootstrap_resamples: descriptive intervals)
    stability_seeds: int = 20  # bootstrap seeds per verdict row: seed_agreement and mc_error


@dataclass(frozen=True)
class Profile:
    common: Common = field(default_factory=Common)
    data: Data = field(default_factory=Data)
    train: Train = field(default_factory=Train)
    rationales: Rationales = field(default_factory=Rationales)
    alignment: Alignment = field(default_factory=Alignment)
    faithfulness: Faithfulness = field(default_factory=Faithfulness)
    plausibility: Plausibility = field(default_factory=Plausibility)
    guided: Guided = field(default_factory=Guided)
    few_shot: FewShot = field(default_factory=FewShot)
    open_questions: OpenQuestions = field(default_factory=OpenQuestions)
    evaluation: Evaluation = field(default_factory=Evaluation)
    name: str = "default"


#: keys that were removed, with what to do instead (an old profile that sets one gets this error)
REMOVED_KEYS = {
    ("FewShot", "shots"): "few_shot.shots was removed: the zero-shot teacher uses 0 examples and the "
                           "few-shot teacher rationales.llm.shots_per_code examples per code; set that instead",
    ("Plausibility", "macro"): "plausibility.macro was removed: notebook 06 always reports both the pooled "
                               "(micro) measures and the per-pair average (eraser_token_macro); delete the key",
}


# --------------------------------------------------------------------------------------------
# loading and validation
# --------------------------------------------------------------------------------------------
def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, values: dict, where: str, base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            removed = REMOVED_KEYS.get((cls.__name__, key))
            if removed:
                raise ConfigError(f"{where}.{key}: {removed}")
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {sorted(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if base is not None:
            current = getattr(base, f.name)
        elif f.default_factory is not dataclasses.MISSING:
            current = f.default_factory()
        else:
            current = None if f.default is dataclasses.MISSING else f.default
        if f.name not in values:
            if base is not None:
                kwargs[f.name] = current
            continue
        v = values[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(v, dict):
            sub_base = current if current is not None else hints[f.name]()
            kwargs[f.name] = _build(hints[f.name], v, f"{where}.{f.name}", sub_base)
        else:
            kwargs[f.name] = _check_type(v, hints[f.name], f"{where}.{f.name}")
    return cls(**kwargs)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def _read_yaml(path: Path) -> dict:
    """The mapping of a profile file; every problem (missing, a folder, unreadable, not UTF-8,
    invalid YAML, not a mapping) is a :class:`ConfigError` naming the file."""
    if not path.exists():
        available = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))
        raise ConfigError(f"profile file {path} not found (available: {available})")
    if path.is_dir():
        raise ConfigError(f"profile {path} is a folder, not a YAML file")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def _merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, mappings merged key by key (lists and values replaced)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_profile(profile: str | os.PathLike = "default", overrides: dict | None = None) -> Profile:
    """Load ``params/<profile>.yaml`` (or a path), apply ``overrides``, validate, return a Profile.

    A profile file may inherit another with its top-level ``base`` key (a profile name such as
    ``default``, or a path relative to the file): its keys then override those of the base,
    section by section (``base: default`` for a small profile of one's own, e.g. only the
    ``rationales.llm`` settings of a server). Without ``base`` (or with ``null``) the keys it does
    not set take the built-in defaults of this module, as the complete profiles of ``params/`` do;
    inheriting by default would silently change a copy of ``smoke.yaml`` kept elsewhere."""
    path = Path(profile)
    if not path.suffix:
        path = PARAMS_DIR / f"{profile}.yaml"
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{path}: base must be a profile name or path, or null, got {base!r}")
        bpath = Path(base) if Path(base).suffix else PARAMS_DIR / f"{base}.yaml"
        if not bpath.is_absolute() and Path(base).suffix:
            bpath = path.parent / bpath
        if bpath.resolve() == path.resolve():
            raise ConfigError(f"{path}: base names the profile itself")
        braw = _read_yaml(bpath)
        if "base" in braw:
            raise ConfigError(f"{bpath}: a base profile cannot have a base itself (named by {path})")
        braw.pop("name", None)
        raw = _merge(braw, raw)
    raw = {**raw, "name": raw.get("name", path.stem)}
    where = str(path)
    prof = _build(Profile, raw, where)
    if overrides:
        if not isinstance(overrides, dict):
            raise ConfigError("overrides: expected a mapping of sections")
        prof = _build(Profile, overrides, f"{where} (overrides)", prof)
    _validate(prof, where)
    return prof


def _validate(prof: Profile, where: str) -> None:
    """Range checks the types cannot express."""
    ev = prof.evaluation
    if ev.bootstrap_resamples < 1:
        raise ConfigError(f"{where}: evaluation.bootstrap_resamples must be >= 1, got {ev.bootstrap_resamples}")
    for key in ("verdict_resamples", "stability_seeds"):
        if getattr(ev, key) < 1:
            raise ConfigError(f"{where}: evaluation.{key} must be >= 1, got {getattr(ev, key)}")
    if ev.min_notes < 0:
        raise ConfigError(f"{where}: evaluation.min_notes must be >= 0, got {ev.min_notes}")
    if prof.rationales.llm.example_context_chars < 0:
        raise ConfigError(f"{where}: rationales.llm.example_context_chars must be >= 0, "
                          f"got {prof.rationales.llm.example_context_chars}")
    if not 0.0 < ev.level < 1.0:
        raise ConfigError(f"{where}: evaluation.level must be in (0, 1), got {ev.level}")
    if not 0.0 <= ev.tuning_fraction < 1.0:
        raise ConfigError(f"{where}: evaluation.tuning_fraction must be in [0, 1), got {ev.tuning_fraction}")
    oq = prof.open_questions
    if not 0.0 < oq.ffid_beta <= 1.0:
        raise ConfigError(f"{where}: open_questions.ffid_beta must be in (0, 1], got {oq.ffid_beta}")
    if not 0.0 < oq.ffid_alpha <= 1.0:
        raise ConfigError(f"{where}: open_questions.ffid_alpha must be in (0, 1], got {oq.ffid_alpha}")
    if not oq.fractions or any(not 0.0 < f <= 1.0 for f in oq.fractions):
        raise ConfigError(f"{where}: open_questions.fractions must be in (0, 1], got {oq.fractions}")
    if oq.coding_margin < 0 or oq.coding_slack < 0:
        raise ConfigError(f"{where}: open_questions.coding_margin and coding_slack must be >= 0")
    for key in ("thresholds", "threshold_grid", "surgery_lambdas", "two_stage_tolerances"):
        values = getattr(oq, key)
        if not values or any(not v > 0 for v in values):
            raise ConfigError(f"{where}: open_questions.{key} must be a non-empty list of numbers > 0, got {values}")
    for key in ("faithfulness_pairs", "soft_samples", "ffid_samples", "ffid_epochs", "epochs", "batch_size", "curve_notes"):
        v = getattr(oq, key)
        if v is not None and v < 1:
            raise ConfigError(f"{where}: open_questions.{key} must be >= 1, got {v}")
    seeds = prof.common.seeds
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"{where}: common.seeds must be a non-empty list of distinct integers, got {seeds}")
    sm = prof.train.seed_models
    if sm is not None:
        unknown = [m for m in sm if m not in prof.train.models]
        if unknown:
            raise ConfigError(f"{where}: train.seed_models names {unknown[0]!r}, which is not in train.models "
                              f"{list(prof.train.models)}")
        if len(set(sm)) != len(sm):
            raise ConfigError(f"{where}: train.seed_models must list distinct models, got {sm}")


def seeds(profile: Profile) -> list[int]:
    """The training seeds: ``common.seeds``, else ``[common.seed]``."""
    return list(profile.common.seeds) if profile.common.seeds else [profile.common.seed]


def model_seeds(profile: Profile, model: str) -> list[int]:
    """The training seeds of coding model ``model`` (notebooks 02-06): every seed of :func:`seeds`
    when ``train.seed_models`` is None or names it, else the first seed only."""
    all_ = seeds(profile)
    sm = profile.train.seed_models
    return all_ if sm is None or model in sm else all_[:1]


def to_dict(profile: Profile) -> dict:
    return dataclasses.asdict(profile)
