"""Two ways of adding the rationale loss without paying for it in coding, besides the weighted sum
of :func:`~rationale_kit.training.train_model`: gradient surgery (:func:`train_surgery`) and a
two-stage scheme (:func:`train_two_stage`); and the random-masking fine-tuning that F-Fidelity
evaluates with (:func:`finetune_random_masking`). Small single-process loops (CPU budgets) over
the same batches, losses and teacher units as the main loop. See docs/method/training.md.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from rationale_kit.metrics.coding import label_matrix
from rationale_kit.models import LabelAttentionModel
from rationale_kit.training.loop import make_batches
from rationale_kit.training.losses import attention_rationale_loss, teacher_units


def project_conflicting(g: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PCGrad-style surgery of one gradient against another (flat vectors ``[P]``): when they
    conflict (``g · ref < 0``), ``g`` minus its component along ``ref``,
    ``g - (g · ref / |ref|^2) ref`` (then ``g · ref = 0``); otherwise ``g`` unchanged."""
    dot = torch.dot(g, ref)
    norm2 = torch.dot(ref, ref)
    if dot >= 0 or norm2 <= 0:
        return g
    return g - dot / norm2 * ref


def constraint_penalty(logits: torch.Tensor, reference: torch.Tensor, tol: float) -> torch.Tensor:
    """Mean squared excess of ``|logits - reference|`` over ``tol`` (``[B, L]`` each): 0 while every
    logit stays within ``tol`` of the coder's own."""
    return F.relu((logits - reference).abs() - tol).pow(2).mean()


def query_parameters(model: LabelAttentionModel) -> list[torch.nn.Parameter]:
    """The label-attention queries: one vector per label (CAML ``U``, the LAAT head's ``W2``)."""
    if hasattr(model, "U"):
        return [model.U.weight]
    if hasattr(model, "head") and hasattr(model.head, "W2"):
        return [model.head.W2.weight]
    raise ValueError(f"{type(model).__name__}: no label-attention query parameters (U or head.W2)")


@dataclass(frozen=True)
class _Notes:
    """Training notes encoded once: labels ``y [N, L]``, teacher units per note."""

    enc: list
    y: np.ndarray
    lengths: np.ndarray
    pairs: list


def _notes(model: LabelAttentionModel, docs: pd.DataFrame, targets: dict | None) -> _Notes:
    docs = docs.reset_index(drop=True)
    if not len(docs):
        raise ValueError("no training notes")
    enc = [model.tokenizer.encode(t) for t in docs.text]
    y = label_matrix(docs.codes, model.labels).astype(np.float32)
    return _Notes(enc, y, np.array([len(e) for e in enc]), teacher_units(model, docs, enc, targets))


def _batch(model: LabelAttentionModel, notes: _Notes, idx: np.ndarray, device, mask_fn=None):
    """Collated batch ``(ids, mask, y, rows, target)``; ``rows``/``target`` None without teacher
    pairs. ``mask_fn(ids, mask)`` may perturb the ids (random masking)."""
    ids, mask = model.collate([notes.enc[i] for i in idx])
    if mask_fn is not None:
        ids = mask_fn(ids, mask)
    ids, mask = ids.to(device), mask.to(device)
    y = torch.from_numpy(notes.y[idx]).to(device)
    rb, rl, tgt = [], [], []
    for r, i in enumerate(idx):
        for j, u in notes.pairs[i]:
            t = np.zeros(ids.shape[1], dtype=np.float32)
            t[u] = 1.0
            rb.append(r)
            rl.append(j)
            tgt.append(t)
    if not rb:
        return ids, mask, y, None, None
    rows = (torch.tensor(rb, device=device), torch.tensor(rl, device=device))
    return ids, mask, y, rows, torch.from_numpy(np.stack(tgt)).to(device)


def _losses(model, ids, mask, y, rows, target, kind: str):
    out = model(ids, mask, None, rows if rows is not None else False)
    coding = F.binary_cross_entropy_with_logits(out.logits.float(), y)
    rat = None
    if rows is not None:
        rat = attention_rationale_loss(out.attention[rows[0], rows[1]], target, kind, out.log_attention, mask[rows[0]])
    return out, coding, rat


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def _assign(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
    i = 0
    for p in params:
        n = p.numel()
        p.grad = flat[i:i + n].view_as(p).clone()
        i += n


def train_surgery(model: LabelAttentionModel, docs: pd.DataFrame, targets: dict | None, lam: float, *,
                  epochs: int = 1, lr: float = 1e-3, batch_size: int = 8, kind: str = "kl", clip_norm: float = 5.0,
                  seed: int = 13, device: str = "cpu") -> dict:
    """Train ``model`` in place on ``docs`` (``note_id, text, codes``) with
    ``g = g_coding + lam * project_conflicting(g_rationale, g_coding)`` per batch (AdamW): the
    rationale gradient loses its component against the coding gradient when they conflict.
    Returns ``{"steps", "rationale_steps", "conflicts"}`` (batches with teacher pairs, and those
    whose gradients conflicted)."""
    torch.manual_seed(seed)
    model.to(device).train()
    notes = _notes(model, docs, targets)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    stats = {"steps": 0, "rationale_steps": 0, "conflicts": 0}
    for epoch in range(1, epochs + 1):
        for idx in make_batches(notes.lengths, batch_size, np.random.default_rng([seed, epoch])):
            ids, mask, y, rows, target = _batch(model, notes, idx, device)
            _, coding, rat = _losses(model, ids, mask, y, rows, target, kind)
            g_code = _flat(torch.autograd.grad(coding, params, retain_graph=rat is not None, allow_unused=True), params)
            g = g_code
            if rat is not None and lam > 0:
                g_rat = _flat(torch.autograd.grad(rat, params, allow_unused=True), params)
                stats["rationale_steps"] += 1
                stats["conflicts"] += int(torch.dot(g_rat, g_code) < 0)
                g = g_code + lam * project_conflicting(g_rat, g_code)
            if not torch.isfinite(g).all():
                raise FloatingPointError(f"train_surgery: non-finite gradient at epoch {epoch}, step {stats['steps'] + 1}")
            _assign(g, params)
            if clip_norm:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            stats["steps"] += 1
    model.eval()
    return stats


def train_two_stage(model: LabelAttentionModel, docs: pd.DataFrame, targets: dict | None, tol: float, *,
                    epochs: int = 1, lr: float = 1e-2, batch_size: int = 8, kind: str = "kl", penalty: float = 10.0,
                    seed: int = 13, device: str = "cpu") -> dict:
    """Stage 2 of the two-stage scheme, in place: ``model`` is the trained coder (stage 1); only its
    label-attention queries (:func:`query_parameters`) move, minimising
    ``L_rationale + penalty * constraint_penalty(logits, coder logits, tol)``, the coder's logits
    on the same batch (a frozen copy, no dropout) being the reference. Returns ``{"steps",
    "within_tol"}``: the share of (training note, label) logits within ``tol`` of the coder's
    after training."""
    torch.manual_seed(seed)
    model.to(device)
    coder = copy.deepcopy(model).eval()
    for p in coder.parameters():
        p.requires_grad_(False)
    queries = query_parameters(model)
    keep = {id(q) for q in queries}
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    model.eval()  # no dropout: the constraint compares like with like
    notes = _notes(model, docs, targets)
    opt = torch.optim.AdamW(queries, lr=lr, weight_decay=0.0)
    steps = 0
    try:
        for epoch in range(1, epochs + 1):
            for idx in make_batches(notes.lengths, batch_size, np.random.default_rng([seed, epoch])):
                ids, mask, y, rows, target = _batch(model, notes, idx, device)
                if rows is None:
                    continue
                out, _, rat = _losses(model, ids, mask, y, rows, target, kind)
                with torch.no_grad():
                    ref = coder(ids, mask).logits.float()
                loss = rat + penalty * constraint_penalty(out.logits.float(), ref, tol)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
        within, total = 0, 0
        with torch.no_grad():
            for idx in make_batches(notes.lengths, batch_size, np.random.default_rng([seed, 0])):
                ids, mask, *_ = _batch(model, notes, idx, device)
                d = (model(ids, mask).logits.float() - coder(ids, mask).logits.float()).abs()
                within += int((d <= tol + 1e-6).sum())
                total += d.numel()
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
    model.eval()
    return {"steps": steps, "within_tol": within / max(1, total)}


def random_masks(ids: torch.Tensor, mask: torch.Tensor, beta: float, mask_id: int, rng: np.random.Generator) -> torch.Tensor:
    """F-Fidelity's fine-tuning perturbation (the authors' ``RandomPixelRemoval`` in
    ``code/train_model.py`` of github.com/AslanDing/Finetune-Fidelity): per note, ``int(beta * n)``
    of its ``n`` units (``mask [B, T]``), drawn uniformly without replacement, replaced by ``mask_id``."""
    ids = ids.clone()
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        m = int(beta * n)
        if m:
            ids[b, torch.from_numpy(rng.choice(n, size=m, replace=False))] = mask_id
    return ids


def finetune_random_masking(model: LabelAttentionModel, docs: pd.DataFrame, beta: float, *, epochs: int = 1,
                            lr: float = 1e-3, batch_size: int = 8, seed: int = 13, device: str = "cpu") -> LabelAttentionModel:
    """F-Fidelity's explanation-agnostic fine-tuning: a COPY of ``model`` trained with the coding
    loss on ``docs`` whose units are randomly masked (:func:`random_masks`, ``int(beta * n)`` of each
    note), so that the removals of the evaluation stay in its training distribution."""
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    torch.manual_seed(seed)
    ft = copy.deepcopy(model).to(device).train()
    notes = _notes(ft, docs, None)
    params = [p for p in ft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    rng = np.random.default_rng([seed, 99])
    mask_id = int(ft.tokenizer.mask_id)
    for epoch in range(1, epochs + 1):
        for idx in make_batches(notes.lengths, batch_size, np.random.default_rng([seed, epoch])):
            ids, mask, y, _, _ = _batch(ft, notes, idx, device, lambda i, m: random_masks(i, m, beta, mask_id, rng))
            loss = F.binary_cross_entropy_with_logits(ft(ids, mask).logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return ft.eval()
