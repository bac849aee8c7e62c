"""Probabilities of a coding model for many notes, in batches sorted by length, optionally under
autocast on CUDA.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from rationale_kit.core.runtime import pick_device
from rationale_kit.models import Encoded, LabelAttentionModel


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device``: bf16 where CUDA supports it, else fp16; None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@torch.no_grad()
def predict_encoded(model: LabelAttentionModel, encoded: Sequence[Encoded], batch_size: int,
                    device: torch.device, amp_dtype: torch.dtype | None = None) -> np.ndarray:
    """Probabilities ``[N, L]`` (float32) of already encoded notes, in their order; under autocast
    with ``amp_dtype`` when given. The model's training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    out = np.zeros((len(encoded), model.num_labels), dtype=np.float32)
    order = np.argsort([-len(e) for e in encoded], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = model.collate([encoded[i] for i in idx])
        ctx = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            logits = model(ids.to(device), mask.to(device)).logits
        out[idx] = torch.sigmoid(logits.float()).cpu().numpy()
    model.train(was_training)
    return out


def predict_probs(
    model: LabelAttentionModel,
    docs: pd.DataFrame | Sequence[str],
    batch_size: int = 16,
    device: str = "cpu",
    amp: bool = False,
) -> np.ndarray:
    """Probabilities ``[N, L]`` (float32) of ``model`` for the notes of ``docs`` (a table with a
    ``text`` column, or a list of texts), in their order. ``amp`` uses autocast on CUDA."""
    texts = list(docs["text"]) if isinstance(docs, pd.DataFrame) else list(docs)
    dev = torch.device(pick_device(device) if device == "auto" else device)
    model.to(dev)
    encoded = [model.tokenizer.encode(t) for t in texts]
    dtype = amp_dtype(dev) if amp else None
    return predict_encoded(model, encoded, batch_size, dev, dtype)
