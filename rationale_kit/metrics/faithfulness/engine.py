"""Faithfulness engine: one run's definition (:class:`FaithfulnessSpec`), the public functions
(:func:`faithfulness_discrete`, :func:`faithfulness_scored`, :func:`faithfulness_loop`,
:func:`run_spec`) and the one dispatch (:func:`_route`) that picks how the perturbed inputs are
scored. The paths live beside it, each named after what it does:

- :mod:`~rationale_kit.metrics.faithfulness.generic`: batched forward passes, any model (and the
  reference loop's one pass per input);
- :mod:`~rationale_kit.metrics.faithfulness.caml_patch`: the CAML patching path (CPU);
- :mod:`~rationale_kit.metrics.faithfulness.chunk_reuse`: the PLM-ICD chunk reuse path;
- :mod:`~rationale_kit.metrics.faithfulness.lstm_reuse`: the LAAT state reuse path (CPU);
- :mod:`~rationale_kit.metrics.faithfulness.cache`: :class:`NoteCache`, the per-note work shared
  by calls;
- :mod:`~rationale_kit.metrics.faithfulness.units` and
  :mod:`~rationale_kit.metrics.faithfulness.tasks`: a note's units and perturbed inputs; the
  pairs, perturbations, random controls and result table every path shares.

The probabilities become the measures of :mod:`rationale_kit.metrics.faithfulness.measures`.
Documents and gold codes are converted once here, at the edge (:func:`as_documents`,
:func:`as_gold_codes`). See docs/method/faithfulness.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from rationale_kit.core.documents import as_documents, as_gold_codes
from rationale_kit.metrics.faithfulness.cache import NoteCache
from rationale_kit.metrics.faithfulness.caml_patch import _caml_base_probs, _caml_incremental_ok, _evaluate_incremental
from rationale_kit.metrics.faithfulness.chunk_reuse import _chunk_base_probs, _chunk_reuse_ok, _evaluate_chunks
from rationale_kit.metrics.faithfulness.generic import _base_probs
from rationale_kit.metrics.faithfulness.lstm_reuse import _laat_reuse_ok, _LaatEvaluator
from rationale_kit.metrics.faithfulness.measures import MEASURES
from rationale_kit.metrics.faithfulness.tasks import (
    _needed_labels, _parse_table, _perturb_all, _select_pairs, _to_frame,
)
from rationale_kit.metrics.faithfulness.units import _Note

__all__ = [
    "FaithfulnessSpec", "NoteCache", "faithfulness_discrete", "faithfulness_scored", "faithfulness_loop", "run_spec",
]

_UNITS = ("token", "word")
_PERTURBATIONS = ("mask", "delete")
_CODE_SETS = ("predicted", "gold")

#: CAML patching path: rows whose perturbation reaches at most this fraction of a note's outputs
#: take the local route (:func:`caml_patch._local_rows`); read by :func:`_route` at each call.
_LOCAL_FRACTION = 0.25
#: Chunk reuse path: hidden-state values (rows x positions x dimensions) assembled at once; read by
#: :func:`_route` at each call.
_CHUNK_ELEMENTS = 8_000_000


@dataclass(frozen=True)
class FaithfulnessSpec:
    """One faithfulness run: what is measured (``kind``, ``unit``, ``perturbation``, ``code_set``,
    ``missing``, ``threshold``, the bins ``aopc_k`` / ``word_steps``, ``curve``, ``max_pairs``,
    ``seed``, ``model_name``) and how (``engine``: batched engine or the reference loop,
    ``incremental``, ``batch_size``, ``progress``). ``unit``, ``perturbation`` and ``code_set`` are
    written into every result row; ``model_name`` (default: the model's name) into ``model``.
    Invalid values raise ``ValueError`` on construction."""

    kind: Literal["discrete", "eraser", "edin"] = "discrete"
    unit: Literal["token", "word"] | None = None  # None: "word" for edin, else "token"
    perturbation: Literal["mask", "delete"] = "mask"
    code_set: Literal["predicted", "gold"] = "predicted"
    missing: Literal["skip", "empty"] = "skip"
    threshold: Any = None  # scalar or per label; None: model.threshold, else 0.5
    aopc_k: Sequence[float] = (1.0, 5.0, 10.0, 20.0, 50.0)  # ERASER bins, percent of units
    word_steps: int = 50  # Edin steps
    curve: bool = True
    max_pairs: int | None = None
    seed: int = 0
    model_name: str | None = None
    engine: bool = True
    incremental: bool = True
    batch_size: int = 32
    progress: bool = True

    @classmethod
    def from_profile(cls, section: Any, kind: Literal["discrete", "eraser", "edin"], **run: Any) -> "FaithfulnessSpec":
        """The spec of one ``kind`` of run from a profile's ``faithfulness`` section: the one place
        where the section's keys become a spec (``unit``, or ``edin_unit`` for Edin;
        ``perturbation``, ``code_set``, ``batch_size``; ``missing`` for discrete rationales,
        ``aopc_k`` for ERASER, ``word_steps`` for Edin). The section's ``max_pairs`` is not the
        spec's (the workbook draws its sample of pairs itself, ``faithfulness.sample_seed``).
        ``run``: the run's own fields (``seed``, ``progress``, ``model_name``, ``threshold``...)."""
        fields = dict(kind=kind, unit=section.edin_unit if kind == "edin" else section.unit,
                      perturbation=section.perturbation, code_set=section.code_set, batch_size=section.batch_size)
        if kind == "discrete":
            fields["missing"] = section.missing
        elif kind == "eraser":
            fields["aopc_k"] = tuple(section.aopc_k)
        else:
            fields["word_steps"] = section.word_steps
        return cls(**{**fields, **run})

    def __post_init__(self) -> None:
        if self.kind not in MEASURES:
            raise ValueError(f"kind must be one of {list(MEASURES)}, got {self.kind!r}")
        if self.unit is None:
            object.__setattr__(self, "unit", "word" if self.kind == "edin" else "token")
        for name, allowed in (("unit", _UNITS), ("perturbation", _PERTURBATIONS),
                              ("code_set", _CODE_SETS), ("missing", ("skip", "empty"))):
            val = getattr(self, name)
            if val not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {val!r}")
        if self.missing == "empty" and self.kind != "discrete":
            raise ValueError("missing='empty' is only defined for discrete rationales")
        if self.batch_size < 1 or self.word_steps < 1 or not len(self.aopc_k):
            raise ValueError("batch_size and word_steps must be >= 1 and aopc_k non-empty")


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def faithfulness_discrete(
    model: torch.nn.Module,
    docs: Any,
    rationales: pd.DataFrame,
    threshold: float | None = None,
    unit: Literal["token", "word"] = "token",
    perturbation: Literal["mask", "delete"] = "mask",
    code_set: Literal["predicted", "gold"] = "predicted",
    gold: Any = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    *,
    missing: Literal["skip", "empty"] = "skip",
    model_name: str | None = None,
    max_pairs: int | None = None,
    incremental: bool = True,
    cache: "NoteCache | None" = None,
) -> pd.DataFrame:
    """Comprehensiveness and sufficiency of discrete rationales (span tables), with a random
    control of the same size. ``docs``: anything :func:`~rationale_kit.core.documents.as_documents`
    accepts (a documents table, ``Documents``, ``Document`` records). ``gold``: gold codes for
    ``code_set="gold"``, anything :func:`~rationale_kit.core.documents.as_gold_codes` accepts
    (mapping note_id -> codes, a table with ``note_id`` and ``code`` / ``codes``); default: the
    documents' ``codes``. ``max_pairs`` keeps the first pairs
    (documents order) of each rationale group. The model must already be on ``device``.
    ``incremental=False`` switches off the incremental paths. ``cache``: a
    :class:`NoteCache` shared by several calls with this model.
    See docs/method/faithfulness.md for the exact definitions."""
    spec = FaithfulnessSpec(
        kind="discrete", engine=True, threshold=threshold, unit=unit, perturbation=perturbation,
        code_set=code_set, batch_size=batch_size, seed=seed, progress=progress, missing=missing,
        model_name=model_name, max_pairs=max_pairs, incremental=incremental,
    )
    return _run(model, docs, rationales, spec, gold=gold, device=device, cache=cache)


def faithfulness_scored(
    model: torch.nn.Module,
    docs: Any,
    scores: pd.DataFrame,
    aopc_k: Sequence[float] = (1.0, 5.0, 10.0, 20.0, 50.0),
    variant: Literal["eraser", "edin"] = "eraser",
    threshold: float | None = None,
    unit: Literal["token", "word"] | None = None,
    perturbation: Literal["mask", "delete"] = "mask",
    code_set: Literal["predicted", "gold"] = "predicted",
    gold: Any = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    *,
    word_steps: int = 50,
    curve: bool = True,
    model_name: str | None = None,
    max_pairs: int | None = None,
    incremental: bool = True,
    cache: "NoteCache | None" = None,
) -> pd.DataFrame:
    """AOPC faithfulness of scored rationales (score tables): ERASER top-k% (``variant="eraser"``,
    measures ``aopc_comp``/``aopc_suff``) or the Edin et al. 2024 word-level variant
    (``variant="edin"``, measures ``edin_comp``/``edin_suff``), each with a random-permutation
    control. ``unit=None`` means ``"token"`` for ERASER and ``"word"`` for Edin. ``curve`` adds the
    per-k / per-step rows to the aggregate rows (``k`` NaN). Raw AOPC is not comparable across
    models (``NOTE_AOPC``). ``incremental=False`` switches off the incremental paths;
    ``cache``: a :class:`NoteCache` shared by several calls with this model.
    See docs/method/faithfulness.md for the exact steps."""
    if variant not in MEASURES or variant == "discrete":
        raise ValueError(f"variant must be 'eraser' or 'edin', got {variant!r}")
    spec = FaithfulnessSpec(
        kind=variant, engine=True, aopc_k=aopc_k, threshold=threshold, unit=unit,
        perturbation=perturbation, code_set=code_set, batch_size=batch_size, seed=seed,
        progress=progress, word_steps=word_steps, curve=curve, model_name=model_name,
        max_pairs=max_pairs, incremental=incremental,
    )
    return _run(model, docs, scores, spec, gold=gold, device=device, cache=cache)


def faithfulness_loop(
    model: torch.nn.Module,
    docs: Any,
    table: pd.DataFrame,
    kind: Literal["discrete", "eraser", "edin"] = "discrete",
    **kwargs: Any,
) -> pd.DataFrame:
    """Reference implementation: the same measures as :func:`faithfulness_discrete`
    (``kind="discrete"``) or :func:`faithfulness_scored` (``kind="eraser"|"edin"``), computed with
    one full forward pass (all labels, batch of one) per note and per (note, code, step).
    Accepts the same keyword arguments (``batch_size`` is ignored). Slow; for checks only."""
    if kind not in MEASURES:
        raise ValueError(f"kind must be one of {list(MEASURES)}, got {kind!r}")
    kwargs.pop("batch_size", None)
    kwargs.pop("incremental", None)
    kwargs.pop("cache", None)
    if "variant" in kwargs:
        v = kwargs.pop("variant")
        if kind != "discrete" and v != kind:
            raise ValueError(f"kind={kind!r} but variant={v!r}")
    gold, device = kwargs.pop("gold", None), kwargs.pop("device", "cpu")
    spec = FaithfulnessSpec(kind=kind, engine=False, **kwargs)
    return _run(model, docs, table, spec, gold=gold, device=device)

# --------------------------------------------------------------------------------------------
# driver and dispatch
# --------------------------------------------------------------------------------------------
def run_spec(model, docs, table, spec: FaithfulnessSpec, *, gold: Any = None, device: Any = "cpu",
             cache: "NoteCache | None" = None) -> pd.DataFrame:
    """The result table of ``spec`` (e.g. :meth:`FaithfulnessSpec.from_profile`) for ``model`` on
    ``docs`` and a span (``kind="discrete"``) or score table; the keyword functions above build
    their spec and call this."""
    return _run(model, docs, table, spec, gold=gold, device=device, cache=cache)


def _run(model, docs, table, spec: FaithfulnessSpec, *, gold: Any = None, device: Any = "cpu",
         cache: "NoteCache | None" = None) -> pd.DataFrame:
    """The result table of ``spec`` for ``model`` on ``docs`` and a span / score ``table``."""
    mask_id = int(model.tokenizer.mask_id)
    labels = list(model.labels)
    label_of = {c: i for i, c in enumerate(labels)}
    threshold = spec.threshold
    if threshold is None:
        threshold = getattr(model, "threshold", None)
        threshold = 0.5 if threshold is None else threshold
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(labels),))
    name = spec.model_name or getattr(model, "name", None) or type(model).__name__.lower()

    texts = as_documents(docs)  # the edge: from here on one Documents and one GoldCodes
    payloads, groups, group_out_cols = _parse_table(table, spec.kind, texts)
    gold_map = as_gold_codes(gold, texts) if spec.code_set == "gold" else None
    note_order, needed = _needed_labels(texts, payloads, gold_map, label_of, spec.missing)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if cache is None or not spec.engine:
                cache = NoteCache(max_bytes=0)  # nothing kept beyond this call
            cache._bind(model, device)
            notes = {nid: cache.note(model, nid, texts[nid], spec.unit) for nid in note_order}
            base, evaluate = _route(model, notes, needed, cache, spec, device, mask_id)
            tasks_by_group = _select_pairs(note_order, base, payloads, groups, label_of, labels, thr,
                                           gold_map, spec)
            rows = _perturb_all(model, notes, tasks_by_group, spec, device, mask_id, evaluate)
    finally:
        model.train(was_training)
    return _to_frame(rows, spec, name, group_out_cols)


def _route(model, notes: dict[str, _Note], needed, cache: "NoteCache", spec: FaithfulnessSpec, device,
           mask_id: int):
    """The one dispatch: full-note probabilities and the per-note evaluation of the path that
    scores the perturbed inputs. CAML patching (:mod:`caml_patch`) for an unmodified package CAML
    on a CPU, chunk reuse (:mod:`chunk_reuse`) for the package's PLM-ICD, LAAT state reuse
    (:mod:`lstm_reuse`) for the package's unmodified LAAT on a CPU, all only for the
    engine's incremental mask runs; otherwise None: batched forward passes (:mod:`generic`; one
    pass per input for the reference loop)."""
    fast = spec.engine and spec.incremental and spec.perturbation == "mask"
    # CAML's patching runs on a CPU only: on a GPU batched forward passes are faster, and
    # cuDNN's TF32 convolutions move the model's own values by ~1e-4 from an exact patch
    if fast and torch.device(device).type == "cpu" and _caml_incremental_ok(model):
        pres = {nid: cache.caml_pre(model, note, device) for nid, note in notes.items()}
        base = _caml_base_probs(model, pres, needed, device)
        return base, lambda note, jobs: _evaluate_incremental(
            model, note, cache.caml_note(model, note, pres[note.note_id], mask_id, device), jobs,
            spec.batch_size, device, mask_id, local_fraction=_LOCAL_FRACTION)
    # the LAAT path's step-by-step recurrence pays off on a CPU; on a GPU batched passes are faster
    if fast and torch.device(device).type == "cpu" and _laat_reuse_ok(model):
        return _base_probs(model, notes, needed, spec.engine, spec.batch_size, device), \
            _LaatEvaluator(model, device, mask_id, cache)
    if fast and _chunk_reuse_ok(model):
        # the full notes' probabilities from the chunk states the perturbed rows reuse (NoteCache)
        base = _chunk_base_probs(model, notes, needed, cache, spec.batch_size, device)
        return base, lambda note, jobs: _evaluate_chunks(model, note, jobs, spec.batch_size, device, mask_id,
                                                          cache, group_elements=_CHUNK_ELEMENTS)
    return _base_probs(model, notes, needed, spec.engine, spec.batch_size, device), None
