"""The base class of the coding models: an encoder giving hidden states and a label-wise attention
head computed in float32 (:class:`LabelAttentionModel`, :class:`ModelOutput`), plus the pieces the
models share (:func:`select_rows`, :class:`LAATHead`). See docs/method/models.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from rationale_kit.core.config import ModelParams
from rationale_kit.models.tokenizers import Encoded


@dataclass
class ModelOutput:
    """``logits [B, K]`` and ``attention [B, K, T]`` (both float32). ``log_attention`` (the
    log-softmax of the same scores, float32) is filled only when asked for: ``[B, K, T]`` with
    ``with_log_attention=True``, or ``[P, T]`` for the rows ``(b_idx, k_idx)`` when
    ``with_log_attention=(b_idx, k_idx)``. The rationale loss uses it for a stable KL."""

    logits: torch.Tensor
    attention: torch.Tensor
    log_attention: torch.Tensor | None = None


def select_rows(weight: torch.Tensor, label_idx: torch.Tensor | None) -> torch.Tensor:
    """The rows ``label_idx`` of a per-label ``weight [L, ...]`` (all rows when None)."""
    return weight if label_idx is None else weight.index_select(0, label_idx.to(weight.device))


class LabelAttentionModel(nn.Module):
    """Base class: an encoder giving ``H [B, T, D]`` and a label-wise attention head.

    Subclasses implement ``embed``, ``hidden(embeds, mask)`` and ``_scores(H32, label_idx)``
    (float32 scores ``[B, K, T]``); ``self.final`` (Linear ``D -> L``) holds ``w_l`` and ``b_l``.
    """

    name = "base"
    pad_multiple = 1

    def __init__(self, labels: Sequence[str], tokenizer: Any, params: ModelParams, max_words: int):
        super().__init__()
        if len(labels) == 0:
            raise ValueError("a coding model needs at least one label")
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        self.labels = list(labels)
        self.label_index = {c: i for i, c in enumerate(self.labels)}
        self.tokenizer = tokenizer
        self.params = params
        self.max_words = int(max_words)
        self.threshold: float | None = None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- batching ---------------------------------------------------------------------------
    def collate(self, encoded: Sequence[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids LongTensor [B, T], attention_mask BoolTensor [B, T])``, right padding; T is
        at least 1 and a multiple of ``pad_multiple`` (the chunk size for PLM-ICD)."""
        lengths = [len(e) for e in encoded]
        t = max(lengths, default=0)
        m = self.pad_multiple
        t = max(m, int(math.ceil(max(t, 1) / m)) * m)
        ids = np.full((len(encoded), t), self.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), t), dtype=bool)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = e.ids
            mask[i, : len(e)] = True
        return torch.from_numpy(ids), torch.from_numpy(mask)

    # --- the contract -----------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def hidden(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _scores(self, h: torch.Tensor, label_idx: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        label_idx: torch.Tensor | None = None,
        with_log_attention: bool | tuple[torch.Tensor, torch.Tensor] = False,
    ) -> ModelOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        return self.forward_from_embeddings(self.embed(input_ids), attention_mask, label_idx, with_log_attention)

    def forward_from_embeddings(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        label_idx: torch.Tensor | None = None,
        with_log_attention: bool | tuple[torch.Tensor, torch.Tensor] = False,
    ) -> ModelOutput:
        b, t = embeds.shape[:2]
        if attention_mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=embeds.device)
        else:
            mask = attention_mask.to(device=embeds.device, dtype=torch.bool)
        return self.attend(self.hidden(embeds, mask), mask, label_idx, with_log_attention)

    def attend(
        self,
        h: torch.Tensor,
        mask: torch.Tensor,
        label_idx: torch.Tensor | None = None,
        with_log_attention: bool | tuple[torch.Tensor, torch.Tensor] = False,
    ) -> ModelOutput:
        """The label-wise attention head on hidden states ``h [B, T, D]`` with ``mask [B, T]``
        (bool): attention ``[B, K, T]`` and logits ``[B, K]`` for ``label_idx`` (all labels when
        None). Always float32."""
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.float()
            scores = self._scores(h, label_idx)  # [B, K, T]
            keep = mask[:, None, :]
            scores = scores.masked_fill(~keep, torch.finfo(torch.float32).min)
            attention = torch.softmax(scores, dim=-1) * keep  # empty rows stay all zero
            log_attention = None
            if isinstance(with_log_attention, (tuple, list)):
                rows_b, rows_k = with_log_attention
                log_attention = torch.log_softmax(scores[rows_b, rows_k], dim=-1)
            elif with_log_attention:
                log_attention = torch.log_softmax(scores, dim=-1)
            v = torch.bmm(attention, h)  # [B, K, D]
            w = select_rows(self.final.weight, label_idx).float()
            bias = select_rows(self.final.bias, label_idx).float()
            logits = (v * w.unsqueeze(0)).sum(-1) + bias
        return ModelOutput(logits=logits, attention=attention, log_attention=log_attention)

    # --- persistence helpers ----------------------------------------------------------------
    def extra_config(self) -> dict:
        return {}



class LAATHead(nn.Module):
    """The LAAT label attention scores (shared by LAAT and PLM-ICD): Z = tanh(H W1); scores = Z W2
    (one row per label)."""

    def __init__(self, dim: int, projection: int, n_labels: int):
        super().__init__()
        self.W1 = nn.Linear(dim, projection, bias=False)
        self.W2 = nn.Linear(projection, n_labels, bias=False)
        nn.init.xavier_uniform_(self.W1.weight)
        nn.init.xavier_uniform_(self.W2.weight)

    def scores(self, h: torch.Tensor, label_idx: torch.Tensor | None) -> torch.Tensor:
        z = torch.tanh(torch.matmul(h, self.W1.weight.float().t()))  # [B, T, P]
        w2 = select_rows(self.W2.weight, label_idx).float()
        return torch.matmul(w2, z.transpose(1, 2))  # [B, K, T]

