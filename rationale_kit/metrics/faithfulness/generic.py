"""The generic path of the faithfulness engine, valid for any coding model: full-note
probabilities and perturbed inputs scored by batched forward passes (rows sorted by length, one
label read per row through the model's ``label_idx``), or one full forward pass per input for the
reference loop (``engine=False``). Also :func:`_package_model`, the test the fast paths use to
know that a model computes exactly what they reproduce. See docs/method/faithfulness.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from rationale_kit.metrics.faithfulness.units import _Note, _perturbed

if TYPE_CHECKING:
    from rationale_kit.metrics.faithfulness.tasks import _Job


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


def _base_probs(model, notes: dict[str, _Note], needed, engine: bool, batch_size: int, device):
    """Full-note probabilities ``{note: {label: p}}`` of the ``needed`` labels (None: all), by
    batched forward passes (notes sorted by length) or, for the loop (``engine=False``), one full
    pass per note."""
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
