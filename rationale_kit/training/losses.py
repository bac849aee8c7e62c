"""The guided-learning rationale loss: teacher units of each (note, gold code) pair and the loss of
attention rows against them. See docs/method/training.md.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from rationale_kit.core.text import span_mask
from rationale_kit.models import Encoded, LabelAttentionModel


def teacher_units(
    model: LabelAttentionModel,
    docs: pd.DataFrame,
    encoded: Sequence[Encoded],
    targets: dict[tuple[str, str], list[tuple[int, int]]] | None,
) -> list[list[tuple[int, np.ndarray]]]:
    """For each document: ``(label index, teacher unit indices)`` of its gold codes that have
    teacher spans (``targets[(note_id, code)]``, character offsets) covering at least one of the
    model's units."""
    out: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(len(docs))]
    if not targets:
        return out
    index = model.label_index
    for i, (nid, codes) in enumerate(zip(docs["note_id"], docs["codes"])):
        for code in dict.fromkeys(codes):
            j = index.get(code)
            spans = targets.get((str(nid), code)) if j is not None else None
            if not spans:
                continue
            units = np.flatnonzero(span_mask(encoded[i].offsets, spans))
            if len(units):
                out[i].append((j, units))
    return out


def attention_rationale_loss(
    attention: torch.Tensor,
    target: torch.Tensor,
    kind: Literal["kl", "bce"] = "kl",
    log_attention: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rationale loss of attention rows ``[P, T]`` against teacher masks ``target [P, T]``.

    ``"kl"``: ``target`` is normalised to sum 1 per row (``m``) and the loss is
    ``sum_t m_t (log m_t - log a_t)`` (``log_attention`` if given, else ``log(attention)``).
    ``"bce"``: binary cross-entropy of the rescaled attention ``r_t = a_t n / (1 + a_t n)`` (``n``
    = the row's number of ``valid`` units, default all; ``r`` is 1/2 under uniform attention and
    tends to 1 on units given much more than their share) against the binary mask ``target > 0``,
    averaged over the valid units (computed from ``log a`` as a logit, so it never saturates).
    Returns the mean over the ``P`` rows.
    """
    target = target.float()
    if kind == "kl":
        m = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
        log_a = log_attention if log_attention is not None else torch.log(attention.clamp_min(1e-30))
        pos = m > 0
        terms = torch.where(pos, m * (torch.log(torch.where(pos, m, torch.ones_like(m))) - log_a), torch.zeros_like(m))
        return terms.sum(-1).mean()
    if kind == "bce":
        if valid is None:
            valid = torch.ones_like(target, dtype=torch.bool)
        valid = valid.to(torch.bool)
        log_a = log_attention if log_attention is not None else torch.log(attention.clamp_min(1e-30))
        n = valid.sum(-1, keepdim=True).clamp_min(1).float()
        # rescaled attention r = a n / (1 + a n), i.e. logit(r) = log a + log n: 1/2 for uniform
        # attention, -> 1 where the unit gets much more than its share, -> 0 where much less
        logit = torch.where(valid, log_a + torch.log(n), torch.zeros_like(log_a))
        bce = F.binary_cross_entropy_with_logits(logit, (target > 0).float(), reduction="none") * valid
        return (bce.sum(-1) / n.squeeze(-1)).mean()
    raise ValueError(f"rationale_loss must be 'kl' or 'bce', got {kind!r}")
