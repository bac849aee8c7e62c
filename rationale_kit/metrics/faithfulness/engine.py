"""Faithfulness engine: builds, batches and caches the perturbed inputs of each (note, code,
rationale) and runs the coding model on them (batched forward passes, the incremental CAML and
PLM-ICD paths, :class:`NoteCache`), then turns the probabilities into the measures of
:mod:`rationale_kit.metrics.faithfulness.measures`. :func:`faithfulness_loop` is the plain
reference (one forward pass per input). One run's definition is a :class:`FaithfulnessSpec`.
See docs/method/faithfulness.md.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from rationale_kit.core.records import DataError
from rationale_kit.core.runtime import progress as progress_bar
from rationale_kit.core.text import span_mask, word_units
from rationale_kit.metrics.faithfulness.measures import (
    MEASURES, OUTPUT_COLUMNS, discrete_slots, pair_values, ranking, scored_slots,
)

__all__ = [
    "FaithfulnessSpec", "NoteCache", "faithfulness_discrete", "faithfulness_scored", "faithfulness_loop",
]

_UNITS = ("token", "word")
_PERTURBATIONS = ("mask", "delete")
_CODE_SETS = ("predicted", "gold")


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
    control of the same size. ``docs``: documents table (or ``Document`` list). ``gold``: gold
    codes for ``code_set="gold"`` (mapping note_id -> codes, or a table with ``note_id`` and
    ``code`` / ``codes``); default: the documents' ``codes``. ``max_pairs`` keeps the first pairs
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
# units of one note
# --------------------------------------------------------------------------------------------
def _overlap_ranges(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each interval of ``a``, the range ``[lo, hi)`` of intervals of ``b`` that overlap it.
    ``b`` must be sorted and non-overlapping (checked by the caller)."""
    if len(a) == 0 or len(b) == 0:
        z = np.zeros(len(a), dtype=np.int64)
        return z, z.copy()
    lo = np.searchsorted(b[:, 1], a[:, 0], side="right")  # first b ending after a starts
    hi = np.searchsorted(b[:, 0], a[:, 1], side="left")  # first b starting at/after a's end
    return lo, np.maximum(hi, lo)


def _is_sorted_disjoint(off: np.ndarray) -> bool:
    if len(off) < 2:
        return True
    return bool(np.all(off[1:, 0] >= off[:-1, 1]) and np.all(off[:, 1] >= off[:, 0]))


def _range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``out[i] = max(values[lo[i]:hi[i]])``, ``-inf`` for empty ranges (vectorised)."""
    out = np.full(len(lo), -np.inf)
    counts = hi - lo
    total = int(counts.sum())
    if total == 0:
        return out
    tgt = np.repeat(np.arange(len(lo)), counts)
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    idx = starts + np.arange(total)
    np.maximum.at(out, tgt, values[idx])
    return out


def _overlap_max(targets: np.ndarray, src: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Max of ``values`` over the ``src`` intervals overlapping each ``targets`` interval."""
    order = np.lexsort((src[:, 1], src[:, 0]))
    src, values = src[order], values[order]
    if len(src) == len(targets) and np.array_equal(src, targets):
        return values.astype(np.float64)
    if _is_sorted_disjoint(src):
        lo, hi = _overlap_ranges(targets, src)
        return _range_max(values.astype(np.float64), lo, hi)
    out = np.full(len(targets), -np.inf)  # overlapping score rows: quadratic fallback
    for i, (s, e) in enumerate(targets):
        hit = (src[:, 0] < e) & (src[:, 1] > s)
        if hit.any():
            out[i] = values[hit].max()
    return out


@dataclass
class _Note:
    note_id: str
    enc: Any
    ids: np.ndarray  # int64 [n] model units
    offsets: np.ndarray  # int64 [n, 2]
    elem: np.ndarray  # offsets of the elementary units (model units or words)
    lo: np.ndarray | None = None  # word mode: model units [lo, hi) of each word
    hi: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_elem(self) -> int:
        return len(self.elem)

    def removal(self, sel: np.ndarray, keep: bool) -> np.ndarray:
        """Mask of the model units removed when ``sel`` (elementary indices) is removed
        (``keep=False``) or is all that is kept (``keep=True``)."""
        if self.lo is None:
            mask = np.zeros(self.n, dtype=bool)
            mask[sel] = True
        else:
            d = np.zeros(self.n + 1, dtype=np.int64)
            np.add.at(d, self.lo[sel], 1)
            np.add.at(d, self.hi[sel], -1)
            mask = np.cumsum(d[:-1]) > 0
        return ~mask if keep else mask


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _make_note(model: torch.nn.Module, note_id: str, text: str, unit: str) -> _Note:
    enc = model.tokenizer.encode(text)
    ids = _to_numpy(enc.ids).astype(np.int64).reshape(-1)
    offsets = _to_numpy(enc.offsets).astype(np.int64).reshape(-1, 2)
    if unit == "token":
        return _Note(note_id, enc, ids, offsets, offsets)
    words = word_units(text)
    if _is_sorted_disjoint(offsets):
        lo, hi = _overlap_ranges(words, offsets)
    else:  # pragma: no cover - tokenizers give ordered, disjoint offsets
        lo = np.zeros(len(words), dtype=np.int64)
        hi = np.zeros(len(words), dtype=np.int64)
        for i, (s, e) in enumerate(words):
            hit = np.flatnonzero((offsets[:, 0] < e) & (offsets[:, 1] > s))
            if len(hit):
                lo[i], hi[i] = hit.min(), hit.max() + 1
    seen = hi > lo
    return _Note(note_id, enc, ids, offsets, words[seen], lo[seen], hi[seen])


def _perturbed(note: _Note, removed: np.ndarray, perturbation: str, mask_id: int) -> Any:
    if perturbation == "mask":
        ids = note.ids.copy()
        ids[removed] = mask_id
        offsets = note.offsets
    else:
        keep = ~removed
        ids, offsets = note.ids[keep], note.offsets[keep]
        if len(ids) == 0:
            ids = np.asarray([mask_id], dtype=np.int64)
            offsets = np.zeros((1, 2), dtype=np.int64)
    return _encoded_like(note.enc, ids, offsets)


def _encoded_like(enc: Any, ids: np.ndarray, offsets: np.ndarray) -> Any:
    new_ids: Any = ids
    new_off: Any = offsets
    if isinstance(enc.ids, torch.Tensor):
        new_ids = torch.from_numpy(np.ascontiguousarray(ids))
    if isinstance(enc.offsets, torch.Tensor):
        new_off = torch.from_numpy(np.ascontiguousarray(offsets))
    if dataclasses.is_dataclass(enc):
        return dataclasses.replace(enc, ids=new_ids, offsets=new_off)
    return type(enc)(ids=new_ids, offsets=new_off)


# --------------------------------------------------------------------------------------------
# tasks and jobs
# --------------------------------------------------------------------------------------------
@dataclass
class _Task:
    """One (note, code, rationale group, control): the perturbations of one measure pair."""

    note_id: str
    code: str
    label: int
    group: tuple
    control: str
    p: float
    n_units: int
    kind: str
    steps: list = field(default_factory=list)  # (measure, k, size) per slot
    probs: np.ndarray | None = None


@dataclass
class _Job:
    label: int
    removed: np.ndarray
    length: int
    task: _Task
    slot: int
    note: _Note


def _rng(seed: int, note_id: str, code: str, group: tuple) -> np.random.Generator:
    group = [g for g in group if g != _NA]  # a column only some concatenated tables have
    key = [zlib.crc32(s.encode("utf-8")) for s in (note_id, code, "\x1f".join(map(str, group)))]
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *key])


def _specs(spec: FaithfulnessSpec, payload: Any, note: _Note, rng: np.random.Generator) -> dict[str, list]:
    """(measure, k, selected elementary units, keep) per slot, for the rationale and the control."""
    n = note.n_elem
    if spec.kind == "discrete":
        sel = np.flatnonzero(span_mask(note.elem, payload)) if n else np.zeros(0, dtype=np.int64)
        rnd = np.sort(rng.choice(n, size=len(sel), replace=False)) if n else sel
        return {"rationale": discrete_slots(sel), "random": discrete_slots(rnd)}
    starts, ends, values = payload
    scores = _overlap_max(note.elem, np.stack([starts, ends], axis=1), values) if n else np.zeros(0)
    perm = rng.permutation(scores)
    return {control: scored_slots(spec.kind, ranking(sc), n, spec.aopc_k, spec.word_steps)
            for control, sc in (("rationale", scores), ("random", perm))}


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def _doc_texts(docs: Any) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    if isinstance(docs, pd.DataFrame):
        if "note_id" not in docs.columns or "text" not in docs.columns:
            raise DataError("docs: need columns note_id and text")
        ids = docs["note_id"].astype(str).tolist()
        texts = dict(zip(ids, docs["text"].tolist()))
        codes = dict(zip(ids, (tuple(c) for c in docs["codes"]))) if "codes" in docs.columns else {}
        return texts, codes
    texts, codes = {}, {}
    for d in docs:
        texts[str(d.note_id)] = d.text
        codes[str(d.note_id)] = tuple(getattr(d, "codes", ()))
    return texts, codes


def _gold_map(gold: Any, doc_codes: dict[str, tuple[str, ...]]) -> dict[str, set[str]]:
    if gold is None:
        return {k: set(v) for k, v in doc_codes.items()}
    if isinstance(gold, pd.DataFrame):
        if "codes" in gold.columns:
            return {str(n): set(c) for n, c in zip(gold["note_id"], gold["codes"])}
        out: dict[str, set[str]] = {}
        for n, c in zip(gold["note_id"].astype(str), gold["code"].astype(str)):
            out.setdefault(n, set()).add(c)
        return out
    if isinstance(gold, Mapping):
        return {str(k): set(v) for k, v in gold.items()}
    raise TypeError("gold: expected None, a mapping note_id -> codes, or a table")


_GROUP_COLS = (("source", "source"), ("method", "method"), ("model", "rationale_model"))
_NA = "\x00missing"


def _parse_table(table: pd.DataFrame, kind: str, texts: dict[str, str]):
    need = ["note_id", "code", "start", "end"] + ([] if kind == "discrete" else ["score"])
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise DataError(f"{'span' if kind == 'discrete' else 'score'} table: missing column(s) {missing}")
    gcols = [c for c, _ in _GROUP_COLS if c in table.columns]
    out_cols = [o for c, o in _GROUP_COLS if c in table.columns]
    t = table.reset_index(drop=True)
    note_ids = t["note_id"].astype(str).to_numpy()
    unknown = sorted(set(note_ids) - set(texts))
    if unknown:
        raise DataError(f"rationale table: {len(unknown)} unknown note_id(s), e.g. {unknown[:3]}")
    codes = t["code"].astype(str).to_numpy()
    starts = t["start"].to_numpy(dtype=np.int64)
    ends = t["end"].to_numpy(dtype=np.int64)
    scores = t["score"].to_numpy(dtype=np.float64) if kind != "discrete" else None
    # a missing group value (a source table without that column, concatenated with one that has
    # it) stays missing in the output instead of becoming the string "nan"
    gvals = [t[c].astype(str).where(t[c].notna(), _NA).to_numpy() for c in gcols]
    payloads: dict[tuple[str, str], dict[tuple, Any]] = {}
    groups: dict[tuple, None] = {}
    # one integer key per (note, code, group) row; groups are visited in order of first appearance
    key = np.zeros(len(t), dtype=np.int64)
    for col in [note_ids, codes, *gvals]:
        codes_i, uniques = pd.factorize(col, sort=False)
        key = key * max(1, len(uniques)) + codes_i
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(len(first) + 1))
    for g in np.argsort(first, kind="stable"):
        idx = order[bounds[g]: bounds[g + 1]]
        i0 = first[g]
        nid, code, group = note_ids[i0], codes[i0], tuple(v[i0] for v in gvals)
        groups[group] = None
        if kind == "discrete":
            pay = list(zip(starts[idx].tolist(), ends[idx].tolist()))
        else:
            pay = (starts[idx], ends[idx], scores[idx])
        payloads.setdefault((nid, code), {})[group] = pay
    return payloads, list(groups), out_cols


# --------------------------------------------------------------------------------------------
# forward passes
# --------------------------------------------------------------------------------------------
def _logits(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    return out[0] if logits is None else logits


def _forward_probs(model, encs: list, labels: Sequence[int] | None, device, gather: np.ndarray | None):
    """Probabilities ``[B, K]`` for ``labels`` (all labels when None), or ``[B]`` when ``gather``
    gives one label per row (labels then must be the sorted distinct labels)."""
    input_ids, attn = model.collate(encs)
    input_ids = input_ids.to(device)
    attn = attn.to(device) if attn is not None else None
    label_idx = None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device)
    logits = _logits(model(input_ids, attention_mask=attn, label_idx=label_idx)).float()
    if gather is not None:
        logits = logits[torch.arange(len(encs), device=logits.device), torch.as_tensor(gather, device=logits.device)]
    return torch.sigmoid(logits.double()).cpu().numpy()


def _evaluate_batched(model, jobs: list[_Job], batch_size: int, device, perturbation: str, mask_id: int):
    jobs.sort(key=lambda j: -j.length)  # stable: one note's jobs stay together
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b: b + batch_size]
        encs = [_perturbed(j.note, j.removed, perturbation, mask_id) for j in chunk]
        labels = np.fromiter((j.label for j in chunk), dtype=np.int64, count=len(chunk))
        uniq, inv = np.unique(labels, return_inverse=True)
        probs = _forward_probs(model, encs, uniq, device, inv)
        for j, pr in zip(chunk, probs):
            j.task.probs[j.slot] = pr


def _evaluate_single(model, jobs: list[_Job], device, perturbation: str, mask_id: int):
    for j in jobs:
        enc = _perturbed(j.note, j.removed, perturbation, mask_id)
        j.task.probs[j.slot] = _forward_probs(model, [enc], None, device, None)[0, j.label]


# --------------------------------------------------------------------------------------------
# incremental path (CAML, mask perturbation)
# --------------------------------------------------------------------------------------------
def _package_model(model, name: str, own: Sequence[str]) -> bool:
    """True when ``model`` is in eval mode and an instance of ``rationale_kit.models.<name>`` that
    overrides none of ``own`` (methods of that class) nor ``forward``, ``forward_from_embeddings`` or
    ``attend`` of the base class: an incremental path reproduces exactly that computation."""
    try:
        from rationale_kit import models as M
    except Exception:  # pragma: no cover - the models module needs optional packages
        return False
    ref, base = getattr(M, name), M.LabelAttentionModel
    if not isinstance(model, ref) or model.training:
        return False
    cls = type(model)
    return (all(getattr(cls, m) is getattr(ref, m) for m in own)
            and all(getattr(cls, m) is getattr(base, m) for m in ("forward", "forward_from_embeddings", "attend")))


def _caml_incremental_ok(model) -> bool:
    """True for an unmodified ``rationale_kit.models.CAML`` in eval mode whose computation the
    incremental path reproduces: float32 weights, stride/dilation 1, one group, zero padding done
    by the model (the convolution itself unpadded), no dropout active."""
    if not _package_model(model, "CAML", ("embed", "hidden", "_scores")):
        return False
    conv = model.conv
    if (tuple(conv.stride) != (1,) or tuple(conv.dilation) != (1,) or conv.groups != 1
            or conv.bias is None or getattr(conv, "padding_mode", "zeros") != "zeros"
            or (isinstance(conv.padding, str) or tuple(conv.padding) != (0,))):
        return False
    k = conv.kernel_size[0]
    if tuple(model.padding) != ((k - 1) // 2, k - 1 - (k - 1) // 2):
        return False
    none = torch.zeros(0, dtype=torch.long, device=conv.weight.device)  # the rows keep their dtype
    params = (model.embedding.weight, conv.weight, conv.bias, *model.label_parameters(none))
    return all(p.dtype == torch.float32 for p in params)


def _caml_pre(model, ids: np.ndarray, device) -> torch.Tensor:
    """The convolution's pre-activations ``[T, F]`` (float32) of one note, by the model's own
    embedding and ``conv`` (what its forward pass computes before the ``tanh``)."""
    ids_t = torch.as_tensor(ids, dtype=torch.long, device=device)
    x = model.embedding.weight.index_select(0, ids_t).t().unsqueeze(0)  # [1, E, T]
    return model.conv(torch.nn.functional.pad(x, model.padding))[0].t().contiguous()


def _caml_head(model, pre: torch.Tensor, labels: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Logits ``[R]`` (float32) of rows with pre-activations ``pre [R, T, F]`` (float32), row r
    read for label ``labels[r]``: ``tanh``, label attention, ``w_l . v + b_l`` as in the model.
    ``inplace`` overwrites ``pre`` with the hidden states."""
    h = pre.tanh_() if inplace else torch.tanh(pre)
    u, w, b = model.label_parameters(labels)  # [R, F], [R, F], [R]
    uw = torch.stack([u, w], dim=-1).float()  # [R, F, 2]
    sg = torch.einsum("rtf,rfc->rtc", h, uw)  # [R, T, 2]: attention scores, per-position logits
    att = torch.softmax(sg[..., 0], dim=-1)
    return (att * sg[..., 1]).sum(-1) + b.float()


def _caml_base_probs(model, pres: dict[str, torch.Tensor], needed, device) -> dict[str, dict[int, float]]:
    """Full-note probabilities from the cached pre-activations (no second convolution)."""
    base = {}
    for nid, pre in pres.items():
        labs = list(range(model.num_labels)) if needed[nid] is None else needed[nid]
        lab = torch.as_tensor(np.asarray(labs, dtype=np.int64), device=device)
        pr = torch.sigmoid(_caml_head(model, pre.unsqueeze(0).expand(len(labs), *pre.shape), lab).double())
        base[nid] = dict(zip((int(l) for l in labs), pr.cpu().numpy().tolist()))
    return base


class _CamlNote:
    """Per-note cache of the incremental CAML path: ``pre [T, F]`` (float32, :func:`_caml_pre`)
    and ``Q [T, k, F]`` (float32): ``Q[t, j]`` is the change of output ``t``'s pre-activation
    when the unit it reads through tap ``j`` (unit ``t + j - pad_left``) is replaced by
    ``mask_id``, i.e. ``W_j (e_mask - e_unit)``; zero outside the note and for units that already
    are ``mask_id``. ``Q`` is computed once per distinct id of the note."""

    def __init__(self, model, ids: np.ndarray, pre: torch.Tensor, mask_id: int, device):
        conv = model.conv
        k = self.k = conv.kernel_size[0]
        pl = self.pad_left = model.padding[0]
        T = self.T = len(ids)
        self.pre = pre
        self.mask_id = mask_id
        emb = model.embedding.weight
        n_f, n_e = conv.weight.shape[:2]
        uniq, inv = np.unique(ids, return_inverse=True)
        uniq_t = torch.as_tensor(uniq, dtype=torch.long, device=device)
        delta = emb[mask_id].unsqueeze(0) - emb.index_select(0, uniq_t)  # [U, E]
        wk = conv.weight.permute(1, 2, 0).reshape(n_e, k * n_f)  # [E, k*F]
        per_id = (delta @ wk).view(len(uniq) * k, n_f)  # row u*k + j: tap j's change for id u
        unit = np.arange(T)[:, None] + np.arange(k)[None, :] - pl  # [T, k] unit read by tap j
        inside = (unit >= 0) & (unit < T)
        rows = inv.reshape(-1)[np.clip(unit, 0, max(T - 1, 0))] * k + np.arange(k)[None, :]
        q = torch.empty(T, k + 1, n_f, dtype=torch.float32, device=device)
        q[:, :k] = per_id.index_select(0, torch.as_tensor(rows.reshape(-1), device=device)).view(T, k, n_f)
        if not inside.all():  # taps reading the zero padding
            q[:, :k][torch.as_tensor(~inside, device=device)] = 0.0
        q[:, k] = pre  # an extra tap, always on: the products below add the base pre-activations
        self.Q = q
        self._masked: torch.Tensor | None = None

    @property
    def pre_masked(self) -> torch.Tensor:
        """Pre-activations ``[T, F]`` of the fully masked note (every unit ``mask_id``)."""
        if self._masked is None:
            self._masked = self.pre + self.Q[:, : self.k].sum(1)
        return self._masked

    def shifted(self, removed: np.ndarray) -> np.ndarray:
        """``[T, R, k + 1]`` float32: 1 where the unit that output ``t`` reads through tap ``j``
        is removed in row ``r``; the last column (the base tap) is 1."""
        R, T, k, pl = len(removed), self.T, self.k, self.pad_left
        padded = np.zeros((R, T + k - 1), dtype=np.float32)
        padded[:, pl: pl + T] = removed
        out = np.empty((T, R, k + 1), dtype=np.float32)
        out[:, :, :k] = np.lib.stride_tricks.sliding_window_view(padded, k, axis=1).transpose(1, 0, 2)
        out[:, :, k] = 1.0
        return out


#: Rows of one incremental step are limited so that ``T * rows * F`` stays below this many values.
_INCREMENTAL_ELEMENTS = 2_000_000


def _evaluate_incremental(model, note: _Note, cache: "_CamlNote", jobs: list[_Job], batch_size: int,
                          device, mask_id: int):
    """Probabilities of ``jobs`` (all of one note, mask perturbation) from the note's cached
    pre-activations; see docs/method/faithfulness.md. Rows whose perturbation reaches at most
    ``_LOCAL_FRACTION`` of the outputs (counted from the nearer of the note and the fully masked
    note) are recomputed only there (:func:`_local_rows`); the others densely: ``pre' = pre +
    sum_j shift_j(removed) Q_j`` (one batched product over positions), then the head
    (:func:`_caml_head`). Neither the embedding nor the convolution runs again."""
    T, k, pl = cache.T, cache.k, cache.pad_left
    n_f = cache.pre.shape[-1]
    removed = np.stack([j.removed for j in jobs])  # [N, T]
    real = note.ids != mask_id  # units whose masking changes the input
    d0, d1 = removed & real, ~removed & real  # differs from the note / from the fully masked note
    from_masked = d1.sum(1) < d0.sum(1)
    diff = np.where(from_masked[:, None], d1, d0)
    # output t reads units t - pl .. t - pl + k - 1: it is affected when any of them differs
    csum = np.zeros((len(jobs), T + 1), dtype=np.int64)
    np.cumsum(diff, axis=1, out=csum[:, 1:])
    t = np.arange(T)
    affected = csum[:, np.clip(t - pl + k, 0, T)] - csum[:, np.clip(t - pl, 0, T)] > 0  # [N, T]
    n_aff = affected.sum(1)
    local = n_aff <= _LOCAL_FRACTION * T
    if local.any():
        sel = np.flatnonzero(local)
        _local_rows(model, cache, [jobs[i] for i in sel], diff[sel], from_masked[sel], affected[sel],
                    n_aff[sel], batch_size, device)
    dense = np.flatnonzero(~local)
    step = max(1, min(batch_size, _INCREMENTAL_ELEMENTS // max(1, T * n_f)))
    for b in range(0, len(dense), step):
        rows = dense[b: b + step]
        chunk = [jobs[i] for i in rows]
        lab = torch.as_tensor(np.fromiter((j.label for j in chunk), dtype=np.int64, count=len(chunk)), device=device)
        shifted = torch.as_tensor(cache.shifted(removed[rows]), device=device)  # [T, R, k + 1]
        rows_pre = torch.bmm(shifted, cache.Q).transpose(0, 1)  # [R, T, F]
        probs = torch.sigmoid(_caml_head(model, rows_pre, lab, inplace=True).double()).cpu().numpy()
        for j, pr_ in zip(chunk, probs):
            j.task.probs[j.slot] = pr_


#: Rows whose perturbation reaches at most this fraction of a note's outputs take the local route.
_LOCAL_FRACTION = 0.25


def _local_rows(model, cache: _CamlNote, jobs: list[_Job], diff: np.ndarray, from_masked: np.ndarray,
                affected: np.ndarray, n_aff: np.ndarray, batch_size: int, device):
    """Rows recomputed only at their affected outputs (``[R, A]``, padded): ``pre'`` there is the
    base's (the note's, or the fully masked note's) plus the taps of the differing units (minus
    them when unmasking, from the fully masked note); every other position keeps the base's
    attention score and per-position logit (``w_l . h_t``), computed once per (base, label)."""
    T, k, pl = cache.T, cache.k, cache.pad_left
    n_f = cache.pre.shape[-1]
    q = cache.Q[:, :k]  # [T, k, F]
    pres = torch.stack([cache.pre, cache.pre_masked]).view(2 * T, n_f)  # the note; the fully masked note
    labels = sorted({j.label for j in jobs})
    col = {l: i for i, l in enumerate(labels)}
    n_lab = len(labels)
    lab_t = torch.as_tensor(labels, device=device)
    u, w, bias = model.label_parameters(lab_t)  # [L, F], [L, F], [L]
    uw = torch.cat([u, w]).float()
    sg_base = (uw @ torch.tanh(pres).t()).view(2 * n_lab, 2, T).transpose(0, 1).reshape(2 * 2 * n_lab, T)
    # row b * 2L + c: base b's attention scores (c < L) or per-position logits (c >= L) of label c
    padded = np.zeros((len(jobs), T + k - 1), dtype=np.float32)
    padded[:, pl: pl + T] = diff
    padded *= np.where(from_masked, -1.0, 1.0).astype(np.float32)[:, None]  # unmasking undoes Q
    order = np.argsort(n_aff, kind="stable")  # rows of similar size share a padded batch
    for b in range(0, len(order), batch_size):
        rows = order[b: b + batch_size]
        R, A = len(rows), max(1, int(n_aff[rows].max()))
        idx = np.zeros((R, A), dtype=np.int64)  # affected outputs, padded with output 0 (weight 0)
        valid = np.zeros((R, A), dtype=bool)
        for r, i in enumerate(rows):
            pos = np.flatnonzero(affected[i])
            idx[r, : len(pos)] = pos
            valid[r, : len(pos)] = True
        taps = np.take_along_axis(padded[rows], (idx[:, :, None] + np.arange(k)).reshape(R, -1), axis=1)
        taps = torch.as_tensor(taps.reshape(R, A, k) * valid[:, :, None], device=device)
        base = torch.as_tensor(from_masked[rows].astype(np.int64), device=device)
        idx_t = torch.as_tensor(idx, device=device)
        q_g = q.index_select(0, idx_t.reshape(-1)).view(R, A, k, n_f)
        pre_g = pres.index_select(0, (base[:, None] * T + idx_t).reshape(-1)).view(R, A, n_f)
        h = torch.tanh(pre_g + torch.einsum("rak,rakf->raf", taps, q_g))  # [R, A, F]
        c = torch.as_tensor([col[jobs[i].label] for i in rows], device=device)
        u_w = torch.stack([uw[c], uw[n_lab + c]], dim=-1)  # [R, F, 2]
        sg_new = torch.einsum("raf,rfc->rca", h, u_w)  # [R, 2, A]
        pick = torch.stack([base * 2 * n_lab + c, base * 2 * n_lab + n_lab + c], dim=1)  # [R, 2]
        sg = sg_base.index_select(0, pick.reshape(-1)).view(R, 2, T)
        r_i, a_i = np.nonzero(valid)
        r_t, a_t = torch.as_tensor(r_i, device=device), torch.as_tensor(a_i, device=device)
        sg[r_t, :, idx_t[r_t, a_t]] = sg_new[r_t, :, a_t]
        att = torch.softmax(sg[:, 0], dim=-1)
        logits = (att * sg[:, 1]).sum(-1) + bias.index_select(0, c).float()
        for i, pr_ in zip(rows, torch.sigmoid(logits.double()).cpu().numpy()):
            jobs[i].task.probs[jobs[i].slot] = pr_


# --------------------------------------------------------------------------------------------
# chunk reuse (PLM-ICD, mask perturbation)
# --------------------------------------------------------------------------------------------
def _chunk_reuse_ok(model) -> bool:
    """True for the package's PLM-ICD (``hidden`` not overridden) in eval mode: its encoder reads
    each chunk of ``chunk_size`` units on its own, so a chunk's hidden states depend only on that
    chunk's ids."""
    return _package_model(model, "PLMICD", ("embed", "hidden"))


#: Hidden-state values (rows x positions x dimensions) assembled at once by the chunk path.
_CHUNK_ELEMENTS = 8_000_000


def _encode_chunks(model, segments: list[np.ndarray], batch_size: int, device) -> list[torch.Tensor]:
    """Hidden states ``[len, D]`` (float32) of each id segment (at most ``chunk_size`` long),
    each encoded as one chunk by the model's own ``collate``, ``embed`` and ``hidden``."""
    from rationale_kit.models import Encoded

    out = []
    for b in range(0, len(segments), batch_size):
        part = segments[b: b + batch_size]
        ids, mask = model.collate([Encoded(seg, np.zeros((len(seg), 2), dtype=np.int64)) for seg in part])
        h = model.hidden(model.embed(ids.to(device)), mask.to(device)).float()  # [n, chunk_size, D]
        out.extend(h[i, : len(seg)] for i, seg in enumerate(part))
    return out


#: Perturbed chunks' hidden states one note keeps at once (bytes); beyond it the note's chunk
#: store starts again from the note's own chunks (values unchanged, only more encoding).
_CHUNK_STORE_BYTES = 256 * 2**20


def _evaluate_chunks(model, note: _Note, jobs: list[_Job], batch_size: int, device, mask_id: int,
                     cache: "NoteCache | None" = None):
    """Probabilities of ``jobs`` (all of one note, mask perturbation), encoding each distinct
    chunk once: chunks a perturbation leaves as in the note reuse the note's hidden states (kept
    in ``cache`` across calls), and identical perturbed chunks (the all-mask chunk of every
    sufficiency input, chunks shared by nested top-k steps, by several pairs or sources of the
    note) are encoded once per note and call (up to ``_CHUNK_STORE_BYTES``). The head
    (``model.attend``) then runs on the assembled states, reading only each row's own label.
    ``cache.chunk_stats`` counts the chunk look-ups and the chunks encoded."""
    s, ids = model.chunk_size, note.ids
    bounds = [(c, min(c + s, note.n)) for c in range(0, note.n, s)]
    if cache is None:
        cache = NoteCache(max_bytes=0)
    base = cache.plm_base(model, note, bounds, batch_size, device)
    known_base = {ids[a:b].tobytes(): h for (a, b), h in zip(bounds, base)}
    dim = base[0].shape[-1] if base else 1
    chunk_bytes = s * dim * 4
    group = max(1, min(4 * batch_size, _CHUNK_ELEMENTS // max(1, note.n * dim)))
    mask = torch.ones(1, note.n, dtype=torch.bool, device=device)
    known = dict(known_base)
    stats = cache.chunk_stats
    for g in range(0, len(jobs), group):
        rows = jobs[g: g + group]
        if (len(known) - len(known_base)) * chunk_bytes > _CHUNK_STORE_BYTES:
            known = dict(known_base)
        keys: list[list[bytes]] = []
        todo: dict[bytes, np.ndarray] = {}
        for j in rows:
            x = ids.copy()
            x[j.removed] = mask_id
            row_keys = []
            for a, b in bounds:
                key = x[a:b].tobytes()
                if key not in known and key not in todo:
                    todo[key] = x[a:b]
                row_keys.append(key)
            keys.append(row_keys)
        stats["lookups"] += len(rows) * len(bounds)
        stats["encoded"] += len(todo)
        known.update(zip(todo, _encode_chunks(model, list(todo.values()), batch_size, device)))
        for b in range(0, len(rows), batch_size):
            part, part_keys = rows[b: b + batch_size], keys[b: b + batch_size]
            h = torch.stack([torch.cat([known[k] for k in rk]) for rk in part_keys])  # [R, T, D]
            labels = np.fromiter((j.label for j in part), dtype=np.int64, count=len(part))
            uniq, inv = np.unique(labels, return_inverse=True)
            out = model.attend(h, mask.expand(len(part), -1), torch.as_tensor(uniq, device=device))
            logits = out.logits[torch.arange(len(part), device=device), torch.as_tensor(inv, device=device)]
            for j, pr_ in zip(part, torch.sigmoid(logits.double()).cpu().numpy()):
                j.task.probs[j.slot] = pr_


# --------------------------------------------------------------------------------------------
# per-note work shared across calls
# --------------------------------------------------------------------------------------------
class NoteCache:
    """Per-note work that several engine calls with the same model share: each note's units (per
    unit kind), on the incremental CAML path its pre-activations and tap changes, on the PLM-ICD
    chunk path the hidden states of the note's own chunks (``chunk_stats``: chunk look-ups of
    perturbed rows and chunks encoded, so ``1 - encoded / lookups`` is the hit rate). Pass one
    instance as ``cache=`` to every call that scores with one model (``steps.faithfulness_tables``
    does: discrete, ERASER and Edin calls then encode each note once). It empties itself when used
    with another model or device, or after the model's parameters changed (storage or in-place
    version). ``max_bytes`` bounds the tap changes and chunk states kept (least recently used
    dropped first); the units and pre-activations are small and always kept."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = int(max_bytes)
        self._key: tuple | None = None
        self._notes: dict[tuple[str, str], tuple[str, _Note]] = {}
        self._pre: dict[str, tuple[np.ndarray, torch.Tensor]] = {}
        self._caml: "OrderedDict[str, tuple[_CamlNote, int]]" = OrderedDict()  # entry, bytes
        self._plm: "OrderedDict[str, tuple[tuple[np.ndarray, list[torch.Tensor]], int]]" = OrderedDict()
        self._bytes = 0
        self.chunk_stats = {"lookups": 0, "encoded": 0}  # PLM-ICD chunk path, over this cache's life

    def _bind(self, model, device) -> None:
        key = (id(model), str(device), tuple((p.data_ptr(), p._version) for p in model.parameters()))
        if key != self._key:
            self._notes.clear()
            self._pre.clear()
            self._caml.clear()
            self._plm.clear()
            self._bytes = 0
            self._key = key

    def note(self, model, note_id: str, text: str, unit: str) -> _Note:
        hit = self._notes.get((note_id, unit))
        if hit is not None and hit[0] == text:
            return hit[1]
        note = _make_note(model, note_id, text, unit)
        self._notes[(note_id, unit)] = (text, note)
        return note

    def caml_pre(self, model, note: _Note, device) -> torch.Tensor:
        hit = self._pre.get(note.note_id)
        if hit is not None and np.array_equal(hit[0], note.ids):
            return hit[1]
        pre = _caml_pre(model, note.ids, device)
        self._pre[note.note_id] = (note.ids, pre)
        return pre

    def _keep(self, store: OrderedDict, key: str, entry: Any, size: int) -> None:
        """Keep ``entry`` under ``key`` within ``max_bytes`` (least recently used dropped first)."""
        if size > self.max_bytes:
            return
        store[key] = (entry, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            for st in (self._caml, self._plm):  # the older kind first: CAML and PLM-ICD never mix
                if st:
                    _, (_, old) = st.popitem(last=False)
                    self._bytes -= old
                    break

    def plm_base(self, model, note: _Note, bounds: list[tuple[int, int]], batch_size: int, device) -> list[torch.Tensor]:
        """Hidden states ``[len, D]`` of each chunk of the note itself (PLM-ICD chunk path),
        encoded once for every call that shares this cache."""
        hit = self._plm.get(note.note_id)
        if hit is not None and np.array_equal(hit[0][0], note.ids):
            self._plm.move_to_end(note.note_id)
            return hit[0][1]
        base = _encode_chunks(model, [note.ids[a:b] for a, b in bounds], batch_size, device)
        self.chunk_stats["encoded"] += len(base)
        self._keep(self._plm, note.note_id, (note.ids, base), sum(h.numel() * h.element_size() for h in base))
        return base

    def caml_note(self, model, note: _Note, pre: torch.Tensor, mask_id: int, device) -> "_CamlNote":
        hit = self._caml.get(note.note_id)
        hit = hit[0] if hit is not None else None
        if hit is not None and hit.pre is pre and hit.mask_id == mask_id:
            self._caml.move_to_end(note.note_id)
            return hit
        entry = _CamlNote(model, note.ids, pre, mask_id, device)
        self._keep(self._caml, note.note_id, entry, entry.Q.numel() * entry.Q.element_size())
        return entry


# --------------------------------------------------------------------------------------------
# driver
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

    texts, doc_codes = _doc_texts(docs)
    payloads, groups, group_out_cols = _parse_table(table, spec.kind, texts)
    gold_map = _gold_map(gold, doc_codes) if spec.code_set == "gold" else None
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


def _needed_labels(texts, payloads, gold_map, label_of, missing: str):
    """The notes to score (documents order) and, per note, the labels whose full-note probability
    is needed (None: all labels)."""
    table_codes: dict[str, set[str]] = {}
    for nid, code in payloads:
        table_codes.setdefault(nid, set()).add(code)
    note_order = [n for n in texts if (n in table_codes or missing == "empty")]
    unknown_codes: set[str] = set()
    needed: dict[str, list[int] | None] = {}
    for nid in note_order:
        if missing == "empty":
            cand = set(gold_map.get(nid, set())) if gold_map is not None else None
        else:
            cand = table_codes[nid]
            if gold_map is not None:
                cand = cand & gold_map.get(nid, set())
        if cand is None:
            needed[nid] = None
            continue
        unknown_codes |= {c for c in cand if c not in label_of}
        needed[nid] = sorted(label_of[c] for c in cand if c in label_of)
    if unknown_codes:  # stacklevel: the caller of the public function
        warnings.warn(f"faithfulness: {len(unknown_codes)} code(s) not among the model's labels are "
                      f"skipped (e.g. {sorted(unknown_codes)[:3]})", stacklevel=4)
    note_order = [n for n in note_order if needed[n] is None or needed[n]]
    return note_order, needed


def _route(model, notes: dict[str, _Note], needed, cache: "NoteCache", spec: FaithfulnessSpec, device,
           mask_id: int):
    """Full-note probabilities and the per-note evaluation of an incremental path (None: batched
    forward passes)."""
    fast = spec.engine and spec.incremental and spec.perturbation == "mask"
    # CAML's patching runs on a CPU only: on a GPU batched forward passes are faster, and
    # cuDNN's TF32 convolutions move the model's own values by ~1e-4 from an exact patch
    if fast and torch.device(device).type == "cpu" and _caml_incremental_ok(model):
        pres = {nid: cache.caml_pre(model, note, device) for nid, note in notes.items()}
        base = _caml_base_probs(model, pres, needed, device)
        return base, lambda note, jobs: _evaluate_incremental(
            model, note, cache.caml_note(model, note, pres[note.note_id], mask_id, device), jobs,
            spec.batch_size, device, mask_id)
    base = _base_probs(model, notes, needed, spec.engine, spec.batch_size, device)
    if fast and _chunk_reuse_ok(model):
        return base, lambda note, jobs: _evaluate_chunks(model, note, jobs, spec.batch_size, device, mask_id,
                                                          cache)
    return base, None


def _base_probs(model, notes: dict[str, _Note], needed, engine: bool, batch_size: int, device):
    base: dict[str, dict[int, float]] = {}
    if not engine:
        for nid, note in notes.items():
            pr = _forward_probs(model, [note.enc], None, device, None)[0]
            lab = range(len(pr)) if needed[nid] is None else needed[nid]
            base[nid] = {int(l): float(pr[l]) for l in lab}
        return base
    order = sorted(notes, key=lambda n: -notes[n].n)
    for b in range(0, len(order), batch_size):
        chunk = order[b: b + batch_size]
        if any(needed[n] is None for n in chunk):
            labs = None
        else:
            labs = sorted(set().union(*(needed[n] for n in chunk)))
        pr = _forward_probs(model, [notes[n].enc for n in chunk], labs, device, None)
        lab_list = list(range(pr.shape[1])) if labs is None else labs
        col = {l: i for i, l in enumerate(lab_list)}
        for n, row in zip(chunk, pr):
            want = range(pr.shape[1]) if needed[n] is None else needed[n]
            base[n] = {int(l): float(row[col[l]]) for l in want}
    return base


def _select_pairs(note_order, base, payloads, groups, label_of, labels, thr, gold_map, spec: FaithfulnessSpec):
    """Per note: list of (code, label, group, payload, p) to score."""
    per_note: dict[str, list] = {}
    counts: dict[tuple, int] = {}
    for nid in note_order:
        items = []
        if spec.code_set == "predicted":
            codes = [labels[l] for l, p in base[nid].items() if p > thr[l]]
        else:
            codes = [labels[l] for l in base[nid]]
        codes = [c for c in codes if gold_map is None or c in gold_map.get(nid, set())]
        for code in sorted(codes, key=lambda c: label_of[c]):
            pays = payloads.get((nid, code), {})
            for group in groups:
                if group in pays:
                    pay = pays[group]
                elif spec.missing == "empty":
                    pay = []
                else:
                    continue
                if spec.max_pairs is not None:
                    if counts.get(group, 0) >= spec.max_pairs:
                        continue
                    counts[group] = counts.get(group, 0) + 1
                l = label_of[code]
                items.append((code, l, group, pay, base[nid][l]))
        if items:
            per_note[nid] = items
    return per_note


def _perturb_all(model, notes, per_note, spec: FaithfulnessSpec, device, mask_id: int,
                 evaluate=None) -> list[_Task]:
    tasks: list[_Task] = []
    buffer: list[_Job] = []
    batch_size, perturbation = spec.batch_size, spec.perturbation
    flush = max(batch_size * 8, 64)
    bar = progress_bar(total=len(per_note), enabled=spec.progress, desc=f"faithfulness ({spec.kind})")
    try:
        for nid, items in per_note.items():
            note = notes[nid]
            for code, label, group, pay, p in items:
                specs = _specs(spec, pay, note, _rng(spec.seed, nid, code, group))
                for control, slots in specs.items():
                    task = _Task(nid, code, label, group, control, p, note.n_elem, spec.kind,
                                 probs=np.full(len(slots), np.nan))
                    for slot, (measure, k, sel, keep) in enumerate(slots):
                        task.steps.append((measure, k, len(sel)))
                        removed = note.removal(sel, keep)
                        n_removed = int(removed.sum())
                        if n_removed == 0:
                            task.probs[slot] = p
                            continue
                        length = note.n if perturbation == "mask" else max(1, note.n - n_removed)
                        buffer.append(_Job(label, removed, length, task, slot, note))
                    tasks.append(task)
            if evaluate is not None:
                if buffer:
                    evaluate(note, buffer)
                buffer = []
            elif spec.engine:
                if len(buffer) >= flush:
                    cut = len(buffer) - len(buffer) % batch_size
                    buffer.sort(key=lambda j: -j.length)
                    head, buffer = buffer[:cut], buffer[cut:]
                    _evaluate_batched(model, head, batch_size, device, perturbation, mask_id)
            else:
                _evaluate_single(model, buffer, device, perturbation, mask_id)
                buffer = []
            bar.update(1)
        if buffer:
            _evaluate_batched(model, buffer, batch_size, device, perturbation, mask_id)
    finally:
        bar.close()
    return tasks


def _to_frame(tasks: list[_Task], spec: FaithfulnessSpec, name: str, group_out_cols) -> pd.DataFrame:
    # per task: its rows' measure, k, value and size; task-level columns are repeated afterwards
    measures: list[str] = []
    ks: list[float] = []
    values: list[np.ndarray] = []
    sizes: list[float] = []
    n_rows = np.zeros(len(tasks), dtype=np.int64)
    for i, t in enumerate(tasks):
        m, k, v, s = pair_values(spec.kind, t.p, t.probs, t.steps, spec.curve)
        measures += m
        ks += k
        values += v
        sizes += s
        n_rows[i] = len(m)

    def rep(get, dtype=object):
        return np.repeat(np.asarray([get(t) for t in tasks], dtype=dtype), n_rows)

    cols = {
        "note_id": rep(lambda t: t.note_id), "code": rep(lambda t: t.code),
        "measure": np.asarray(measures, dtype=object), "k": np.asarray(ks, dtype=np.float64),
        "value": np.concatenate(values) if values else np.zeros(0),
        "control": rep(lambda t: t.control), "p": rep(lambda t: t.p, np.float64),
        "rationale_size": np.asarray(sizes, dtype=np.float64), "n_units": rep(lambda t: t.n_units, np.int64),
    }
    frame = pd.DataFrame(cols)
    gframe = {}
    for i, col in enumerate(group_out_cols):
        gframe[col] = rep(lambda t, i=i: None if t.group[i] == _NA else t.group[i])
    if "source" not in gframe:
        gframe["source"] = ["rationale"] * len(frame)
    for col, vals in gframe.items():
        frame[col] = vals if len(frame) else pd.Series([], dtype=frame["measure"].dtype)
    frame["model"] = name
    frame["unit"] = spec.unit
    frame["perturbation"] = spec.perturbation
    frame["code_set"] = spec.code_set
    frame = frame.astype({"k": "float64", "value": "float64", "p": "float64", "rationale_size": "float64",
                          "n_units": "int64"})
    extra = [c for c in ("method", "rationale_model") if c in frame.columns]
    return frame[OUTPUT_COLUMNS + extra].reset_index(drop=True)
