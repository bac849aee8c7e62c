"""Bring your own coder: the protocol a coding model trained elsewhere implements so that the
workbook's gradient rationales, faithfulness engine, plausibility and ``explain`` run on it
(:class:`Coder`, :class:`UnitTokenizer`), the wrapper that gives it the package's coding-model
contract (:class:`AdaptedCoder`, :func:`as_coder`), and one ready adapter for a local Hugging Face
multi-label sequence classifier (:class:`HFClassifierCoder`). See docs/method/explain.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

from rationale_kit.models.label_attention import ModelOutput
from rationale_kit.models.tokenizers import Encoded

__all__ = ["AdaptedCoder", "Coder", "HFClassifierCoder", "UnitTokenizer", "as_coder", "is_coding_model"]


@runtime_checkable
class UnitTokenizer(Protocol):
    """Cuts a raw note into the coder's units.

    ``encode(text)`` returns an object with ``ids`` (int ``[n]``) and ``offsets`` (int ``[n, 2]``,
    half-open character ranges into ``text``, in text order, not overlapping), e.g.
    :class:`rationale_kit.models.Encoded`; special tokens the coder adds (``[CLS]``...) are not
    units: the coder adds them inside :meth:`Coder.label_logits`. ``mask_id``: the id that replaces
    a removed unit (faithfulness "mask", integrated-gradients baseline); ``pad_id``: padding."""

    mask_id: int
    pad_id: int

    def encode(self, text: str) -> Any: ...


@runtime_checkable
class Coder(Protocol):
    """What a coding model provides to be explained and evaluated here.

    * ``labels``: the codes, one per output row (dotted ICD-10 codes, as in the data);
    * ``tokenizer``: a :class:`UnitTokenizer`;
    * ``embed(input_ids [B, T] long) -> [B, T, E] float``: the input embeddings of the units
      (gradients are taken with respect to them);
    * ``label_logits(embeds [B, T, E], attention_mask [B, T] bool, label_idx [K] long)``: the
      logits ``[B, K]`` of the labels ``label_idx`` (rows of ``labels``), differentiable in
      ``embeds``; a padded position (mask False) must not change the result. A coder with
      per-label attention over the units returns ``(logits [B, K], attention [B, K, T])`` and sets
      ``has_attention = True``.

    Optional attributes: ``threshold`` (decision threshold, default 0.5), ``name``,
    ``has_attention`` (default False). Being a ``torch.nn.Module`` lets ``.to(device)`` and
    ``.eval()`` reach the weights."""

    labels: Sequence[str]
    tokenizer: UnitTokenizer

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def label_logits(self, embeds: torch.Tensor, attention_mask: torch.Tensor, label_idx: torch.Tensor) -> Any: ...


_CONTRACT = ("labels", "tokenizer", "collate", "embed", "forward_from_embeddings")


def is_coding_model(obj: Any) -> bool:
    """True for an object with the package's coding-model contract (``labels``, ``tokenizer``,
    ``collate``, ``embed``, ``forward_from_embeddings``, callable as ``model(ids, mask,
    label_idx=)``): a :class:`~rationale_kit.models.LabelAttentionModel` or an :class:`AdaptedCoder`."""
    return all(hasattr(obj, a) for a in _CONTRACT) and callable(obj)


class AdaptedCoder(nn.Module):
    """A :class:`Coder` with the package's coding-model contract (``docs/INTERFACES.md``):
    ``collate``, ``embed``, ``forward(input_ids, attention_mask, label_idx) -> ModelOutput`` and
    ``forward_from_embeddings``; ``attention`` is None unless the coder has attention."""

    def __init__(self, coder: Any):
        super().__init__()
        missing = [a for a in ("labels", "tokenizer", "embed", "label_logits") if not hasattr(coder, a)]
        missing += [f"tokenizer.{a}" for a in ("encode", "mask_id", "pad_id")
                    if hasattr(coder, "tokenizer") and not hasattr(coder.tokenizer, a)]
        if missing:
            raise TypeError(f"{type(coder).__name__} is not a Coder: it lacks {missing} (see rationale_kit.models.adapter.Coder)")
        labels = list(coder.labels)
        if not labels or len(set(labels)) != len(labels):
            raise ValueError("a coder needs unique labels (at least one)")
        if isinstance(coder, nn.Module):
            self.coder = coder
        else:
            object.__setattr__(self, "coder", coder)  # not a module: kept as a plain attribute
        self.labels = labels
        self.label_index = {c: i for i, c in enumerate(labels)}
        self.tokenizer = coder.tokenizer
        self.threshold = getattr(coder, "threshold", None)
        self.name = str(getattr(coder, "name", None) or type(coder).__name__.lower())
        self.has_attention = bool(getattr(coder, "has_attention", False))

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def collate(self, encoded: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids [B, T] long, attention_mask [B, T] bool)``, right padding with ``pad_id``."""
        ids_list = [np.asarray(e.ids.cpu() if isinstance(e.ids, torch.Tensor) else e.ids, dtype=np.int64).reshape(-1)
                    for e in encoded]
        t = max([len(i) for i in ids_list] + [1])
        ids = np.full((len(ids_list), t), int(self.tokenizer.pad_id), dtype=np.int64)
        mask = np.zeros((len(ids_list), t), dtype=bool)
        for b, i in enumerate(ids_list):
            ids[b, :len(i)] = i
            mask[b, :len(i)] = True
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.coder.embed(input_ids)

    def forward_from_embeddings(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                                label_idx: torch.Tensor | None = None, **_: Any) -> ModelOutput:
        b, t = embeds.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(b, t, dtype=torch.bool, device=embeds.device)
        mask = attention_mask.to(device=embeds.device, dtype=torch.bool)
        if label_idx is None:
            label_idx = torch.arange(self.num_labels, device=embeds.device)
        out = self.coder.label_logits(embeds, mask, label_idx.to(embeds.device))
        logits, attention = (out if isinstance(out, (tuple, list)) else (out, None))[:2]
        k = int(label_idx.numel())
        if tuple(logits.shape) != (b, k):
            raise ValueError(f"{self.name}.label_logits returned logits of shape {tuple(logits.shape)}, expected {(b, k)}")
        if attention is not None and tuple(attention.shape) != (b, k, t):
            raise ValueError(f"{self.name}.label_logits returned attention of shape {tuple(attention.shape)}, expected {(b, k, t)}")
        return ModelOutput(logits=logits.float(), attention=None if attention is None else attention.float())  # type: ignore[arg-type]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                label_idx: torch.Tensor | None = None, **_: Any) -> ModelOutput:
        return self.forward_from_embeddings(self.embed(input_ids), attention_mask, label_idx)


def as_coder(model: Any) -> Any:
    """``model`` itself when it already has the coding-model contract (the workbook's models),
    else an :class:`AdaptedCoder` around a :class:`Coder`; a ``TypeError`` names what is missing."""
    if is_coding_model(model):
        return model
    return AdaptedCoder(model)


# --------------------------------------------------------------------------------------------
# a ready adapter: a local Hugging Face multi-label sequence classifier
# --------------------------------------------------------------------------------------------
class _HFUnits:
    """A fast Hugging Face tokenizer as a :class:`UnitTokenizer`: word pieces without special
    tokens, at most ``max_units``; the mask id is the tokenizer's ``[MASK]`` (else ``[UNK]``)."""

    def __init__(self, hf: Any, max_units: int):
        if not getattr(hf, "is_fast", False):
            raise ValueError("HFClassifierCoder needs a fast tokenizer (character offsets)")
        self.hf = hf
        self.max_units = int(max_units)
        self.pad_id = int(hf.pad_token_id if hf.pad_token_id is not None else 0)
        mask = hf.mask_token_id if hf.mask_token_id is not None else hf.unk_token_id
        self.mask_id = int(mask if mask is not None else self.pad_id)

    def encode(self, text: str) -> Encoded:
        enc = self.hf(text, add_special_tokens=False, return_offsets_mapping=True, truncation=True,
                      max_length=self.max_units)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        keep = offsets[:, 1] > offsets[:, 0]  # pieces with no characters (none in practice) are no units
        return Encoded(np.asarray(enc["input_ids"], dtype=np.int64)[keep], offsets[keep])


class HFClassifierCoder(nn.Module):
    """A Hugging Face ``AutoModelForSequenceClassification`` checkpoint (multi-label: one sigmoid
    logit per code) read from a local folder, as a :class:`Coder`.

    The units are the note's word pieces (at most ``max_units``); ``label_logits`` puts the
    classifier's ``[CLS]`` before and ``[SEP]`` right after each note's last unit, as in training.
    ``labels``: the codes in output order (default: the checkpoint's ``id2label``). The model is
    read with ``local_files_only`` (no network). It has no per-label attention."""

    has_attention = False

    def __init__(self, path: str | Path, labels: Sequence[str] | None = None, max_units: int = 510,
                 threshold: float | None = None):
        super().__init__()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such checkpoint folder")
        self.hf = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        n = int(self.hf.config.num_labels)
        if labels is None:
            labels = [self.hf.config.id2label[i] for i in range(n)]
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for a classifier with {n} outputs")
        self.labels = [str(c) for c in labels]
        self.tokenizer = _HFUnits(tok, max_units)
        self.cls_id = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        self.sep_id = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        self.threshold = threshold
        self.name = path.name

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf.get_input_embeddings()(input_ids)

    def label_logits(self, embeds: torch.Tensor, attention_mask: torch.Tensor, label_idx: torch.Tensor) -> torch.Tensor:
        b, t, _ = embeds.shape
        dev = embeds.device
        n = attention_mask.long().sum(1)  # units per row (right padding)
        parts, mask = [embeds], attention_mask.bool()
        if self.cls_id is not None:
            cls = self.embed(torch.full((b, 1), int(self.cls_id), dtype=torch.long, device=dev)).to(embeds.dtype)
            parts.insert(0, cls)
            mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=dev), mask], 1)
        x = torch.cat(parts + [torch.zeros_like(embeds[:, :1])], 1)
        mask = torch.cat([mask, torch.zeros(b, 1, dtype=torch.bool, device=dev)], 1)
        if self.sep_id is not None:  # [SEP] right after each note's last unit (a padded slot)
            pos = n + (1 if self.cls_id is not None else 0)
            sep = self.embed(torch.full((1,), int(self.sep_id), dtype=torch.long, device=dev))[0].to(embeds.dtype)
            rows = torch.arange(b, device=dev)
            put = torch.zeros(b, x.shape[1], 1, dtype=embeds.dtype, device=dev)
            put[rows, pos] = 1.0
            x = x * (1 - put) + put * sep
            mask = mask.clone()
            mask[rows, pos] = True
        logits = self.hf(inputs_embeds=x, attention_mask=mask.long()).logits  # [B, L]
        return logits.index_select(1, label_idx)
