"""The CAML patching path of the faithfulness engine (mask perturbation, CPU): a masked unit
changes the convolution's pre-activations only at the ``k`` outputs that read it, so each row is
the note's cached pre-activations plus the changes of its masked units (:class:`_CamlNote`),
recomputed only where they reach (:func:`_local_rows`) or densely (:func:`_evaluate_incremental`);
neither the embedding nor the convolution runs again. Used only for an unmodified package CAML
(:func:`_caml_incremental_ok`). See docs/method/faithfulness.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from rationale_kit.metrics.faithfulness.generic import _package_model
from rationale_kit.metrics.faithfulness.units import _Note

if TYPE_CHECKING:
    from rationale_kit.metrics.faithfulness.tasks import _Job


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


def _evaluate_incremental(model, note: _Note, cache: "_CamlNote", jobs: list["_Job"], batch_size: int,
                          device, mask_id: int, *, local_fraction: float):
    """Probabilities of ``jobs`` (all of one note, mask perturbation) from the note's cached
    pre-activations; see docs/method/faithfulness.md. Rows whose perturbation reaches at most
    ``local_fraction`` of the outputs (counted from the nearer of the note and the fully masked
    note; the engine's ``_LOCAL_FRACTION``) are recomputed only there (:func:`_local_rows`); the others densely: ``pre' = pre +
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
    local = n_aff <= local_fraction * T
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
