"""The LAAT state reuse path of the faithfulness engine (mask perturbation, CPU): LAAT's BiLSTM is
two one-directional recurrences, so a masked input changes the forward states only from its first
changed position on and the backward states only up to its last; and an LSTM forgets: a few dozen
steps after the last changed position the perturbed states are again within float rounding of the
unperturbed ones. Each row therefore runs each direction only where its states differ from a base
(the note itself, or the fully masked note for inputs that keep little): from each changed
position until its states are back within ``_STATE_TOL`` of the base's (checked every
``_CHECK_EVERY`` steps), and takes the base's states everywhere else. The input projection of
every distinct id is computed once per call, the base's states and head projections once per note
(:class:`_LaatNote`, kept in the :class:`NoteCache`), and the label attention head reads only each
row's own label, recomputing only the positions whose states changed. Used only for the package's
unmodified LAAT (:func:`_laat_reuse_ok`). See docs/method/faithfulness.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from rationale_kit.metrics.faithfulness.generic import _package_model
from rationale_kit.metrics.faithfulness.units import _Note

if TYPE_CHECKING:
    from rationale_kit.metrics.faithfulness.cache import NoteCache
    from rationale_kit.metrics.faithfulness.tasks import _Job

#: A row's recurrence stops (its states are taken as the base's) once every hidden and cell value
#: is within this of the base's: the float32 rounding noise two computations of one LSTM carry.
_STATE_TOL = 1e-7
#: Steps between two convergence checks of the active rows (a row runs at most this many steps
#: longer than needed; values are unchanged).
_CHECK_EVERY = 8
#: Rows whose head is assembled at once (``rows x positions x projection`` values each).
_HEAD_ROWS = 16


def _laat_reuse_ok(model) -> bool:
    """True for the package's unmodified LAAT in eval mode whose computation this path
    reproduces: two one-layer, one-directional, batch-first float32 LSTMs with biases and no
    projection, float32 head."""
    if not _package_model(model, "LAAT", ("embed", "hidden", "_scores", "_reverse_index")):
        return False
    for lstm in (model.lstm_fwd, model.lstm_bwd):
        if (lstm.num_layers != 1 or lstm.bidirectional or not lstm.batch_first or not lstm.bias
                or getattr(lstm, "proj_size", 0) != 0 or lstm.weight_hh_l0.dtype != torch.float32):
            return False
    params = (model.embedding.weight, model.head.W1.weight, model.head.W2.weight, model.final.weight)
    return all(p.dtype == torch.float32 for p in params)


class _Dir:
    """One direction's LSTM weights, gates reordered to (input, forget, output, cell) so that one
    ``sigmoid`` covers the first three: ``WhhT [H, 4H]``, and the input projection of ids."""

    def __init__(self, model, lstm: torch.nn.LSTM):
        H = lstm.hidden_size
        perm = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
        perm = perm.to(lstm.weight_hh_l0.device)
        self.H = H
        self.WhhT = lstm.weight_hh_l0.index_select(0, perm).t().contiguous()
        self.Wih = lstm.weight_ih_l0.index_select(0, perm)
        self.b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).index_select(0, perm)
        self.emb = model.embedding.weight

    def gates_x(self, ids: torch.Tensor) -> torch.Tensor:
        """``[U, 4H]``: the input part of the gates of each id (``W_ih e + b_ih + b_hh``)."""
        return torch.addmm(self.b, self.emb.index_select(0, ids), self.Wih.t())


def _recur(d: _Dir, gx: torch.Tensor, X: np.ndarray, diff: np.ndarray, base_h: torch.Tensor,
           base_c: torch.Tensor, base_at: np.ndarray, forward: bool, tol: float, keep_c: bool = False):
    """One direction over rows ``X [R, T]`` (indices into ``gx [U, 4H]``): row r is recomputed
    from each position where ``diff[r, t]`` until its states are within ``tol`` of the base's
    (never when ``tol < 0``). ``base_h, base_c [S, H]``: base states, ``base_at[r] + j`` the row
    of the state before position ``j`` is read (forward: after ``j - 1``, row ``base_at + j``;
    backward: after ``j + 1``, row ``base_at + j + 1``). Returns the computed entries: rows
    ``[N]``, positions ``[N]``, hidden states ``[N, H]`` (and cell states when ``keep_c``)."""
    R, T = X.shape
    H = d.H
    active = np.zeros(R, dtype=bool)
    XT = np.ascontiguousarray(X.T)
    d_t, d_r = np.nonzero(np.ascontiguousarray(diff.T))  # (position, row) pairs by position
    starts = np.searchsorted(d_t, np.arange(T + 1))
    ent_r: list[np.ndarray] = []
    ent_t: list[int] = []
    ent_h: list[torch.Tensor] = []
    ent_c: list[torch.Tensor] = []
    idx = np.zeros(0, dtype=np.int64)  # active rows, in the order of hx, cx
    hx = cx = torch.zeros(0, H)
    since = 0
    for t in (range(T) if forward else range(T - 1, -1, -1)):
        lo, hi = starts[t], starts[t + 1]
        if hi > lo:
            cand = d_r[lo:hi]
            nr = cand[~active[cand]]
            if len(nr):
                prev = torch.from_numpy(base_at[nr] + (t if forward else t + 1))
                active[nr] = True
                idx = np.concatenate([idx, nr])
                hx = torch.cat([hx, base_h.index_select(0, prev)])
                cx = torch.cat([cx, base_c.index_select(0, prev)])
        if not len(idx):
            continue
        g = torch.addmm(gx.index_select(0, torch.from_numpy(XT[t][idx])), hx, d.WhhT)
        sg = g[:, : 3 * H].sigmoid_()
        cx = torch.addcmul(cx * sg[:, H: 2 * H], sg[:, :H], g[:, 3 * H:].tanh_())
        hx = sg[:, 2 * H:] * cx.tanh()
        ent_r.append(idx)
        ent_t.append(t)
        ent_h.append(hx)
        if keep_c:
            ent_c.append(cx)
        since += 1
        if tol >= 0 and since >= _CHECK_EVERY:
            since = 0
            at = torch.from_numpy(base_at[idx] + (t + 1 if forward else t))
            dev = torch.maximum((hx - base_h.index_select(0, at)).abs_().amax(1),
                                (cx - base_c.index_select(0, at)).abs_().amax(1))
            done = (dev <= tol).numpy()
            if done.any():
                active[idx[done]] = False
                keep = ~done
                idx = idx[keep]
                keep_t = torch.from_numpy(keep)
                hx, cx = hx[keep_t], cx[keep_t]
    rows = np.concatenate(ent_r) if ent_r else np.zeros(0, dtype=np.int64)
    pos = np.repeat(np.asarray(ent_t, dtype=np.int64), [len(r) for r in ent_r])
    hs = torch.cat(ent_h) if ent_h else torch.zeros(0, H)
    cs = (torch.cat(ent_c) if ent_c else torch.zeros(0, H)) if keep_c else None
    return rows, pos, hs, cs


class _LaatNote:
    """Per-note cache of the LAAT path: for the two bases (0: the note, 1: the fully masked note),
    the forward and backward states in the layout :func:`_recur` reads (``[2 * (T + 1), H]``,
    base b's state before position j at row ``b * (T + 1) + j`` forward, ``+ j + 1`` backward;
    zeros at the recurrence's start), and per base the head's projections ``P_f, P_b [2, T, P]``
    of each direction's states (``W1`` split by direction) and the states ``[2, T, H]`` themselves."""

    def __init__(self, model, ids: np.ndarray, mask_id: int, dirs: tuple[_Dir, _Dir]):
        T = self.T = len(ids)
        self.ids = ids
        self.mask_id = mask_id
        X_ids = np.stack([ids, np.full(T, mask_id, dtype=np.int64)])
        uniq, inv = np.unique(X_ids, return_inverse=True)
        X = inv.reshape(2, T)
        u_t = torch.as_tensor(uniq)
        zeros = torch.zeros(T + 1, dirs[0].H)  # the zero state before either direction starts
        at = np.zeros(2, dtype=np.int64)
        W1 = model.head.W1.weight.float()
        self.states = []  # per direction: (h table, c table) [2 * (T + 1), H]
        self.seq = []  # per direction: states [2, T, H]
        self.proj = []  # per direction: [2, T, P]
        for k, d in enumerate(dirs):
            rows, pos, hs, cs = _recur(d, d.gates_x(u_t), X, np.ones((2, T), dtype=bool), zeros, zeros, at,
                                       forward=k == 0, tol=-1.0, keep_c=True)
            seq_h = torch.zeros(2, T, d.H)
            seq_c = torch.zeros(2, T, d.H)
            seq_h[rows, pos] = hs
            seq_c[rows, pos] = cs
            z = torch.zeros(2, 1, d.H)
            if k == 0:  # before position j: after j - 1
                tab_h, tab_c = torch.cat([z, seq_h], 1), torch.cat([z, seq_c], 1)
            else:  # before position j going backward: after j + 1
                tab_h, tab_c = torch.cat([seq_h, z], 1), torch.cat([seq_c, z], 1)
            self.states.append((tab_h.reshape(-1, d.H), tab_c.reshape(-1, d.H)))
            self.seq.append(seq_h)
            w1 = W1[:, k * d.H: (k + 1) * d.H]
            self.proj.append(seq_h @ w1.t())

    def nbytes(self) -> int:
        ts = [t for pair in self.states for t in pair] + self.seq + self.proj
        return sum(t.numel() * t.element_size() for t in ts)


def _laat_dirs(model) -> tuple[_Dir, _Dir]:
    return _Dir(model, model.lstm_fwd), _Dir(model, model.lstm_bwd)


def _evaluate_laat(model, note: _Note, jobs: list["_Job"], device, mask_id: int, cache: "NoteCache"):
    """Probabilities of ``jobs`` (all of one note, mask perturbation) by the LAAT state reuse path
    (module docstring): each row's base is the note or the fully masked note, whichever differs
    from it at fewer positions."""
    dirs = _laat_dirs(model)
    entry = cache.laat_note(model, note, mask_id, dirs)
    T = note.n
    removed = np.stack([j.removed for j in jobs])  # [R, T]
    X_ids = np.where(removed, mask_id, note.ids[None, :])
    d_note = X_ids != note.ids[None, :]
    d_mask = X_ids != mask_id
    from_masked = d_mask.sum(1) < d_note.sum(1)
    diff = np.where(from_masked[:, None], d_mask, d_note)
    base = from_masked.astype(np.int64)
    uniq, inv = np.unique(np.append(note.ids, mask_id), return_inverse=True)
    X = np.searchsorted(uniq, X_ids)
    u_t = torch.as_tensor(uniq)
    R = len(jobs)
    out = []
    for k, d in enumerate(dirs):
        tab_h, tab_c = entry.states[k]
        out.append(_recur(d, d.gates_x(u_t), X, diff, tab_h, tab_c, base * (T + 1), forward=k == 0,
                          tol=_STATE_TOL))
    labels = np.fromiter((j.label for j in jobs), dtype=np.int64, count=R)
    uniq_lab, col = np.unique(labels, return_inverse=True)
    lab_t = torch.as_tensor(uniq_lab)
    w2 = model.head.W2.weight.float().index_select(0, lab_t)  # [L, P]
    wfin = model.final.weight.float().index_select(0, lab_t)  # [L, 2H]
    bias = model.final.bias.float().index_select(0, lab_t)
    W1 = model.head.W1.weight.float()
    H = dirs[0].H
    col_t = torch.as_tensor(col)
    base_t = torch.as_tensor(base)
    # per direction: base position logits [2, L, T]; entries' projections and position logits
    lpos_base, ent = [], []
    for k, (rows, pos, hs, _) in enumerate(out):
        w_k = wfin[:, k * H: (k + 1) * H]
        lpos_base.append(torch.einsum("btp,lp->blt", entry.seq[k], w_k))
        proj = hs @ W1[:, k * H: (k + 1) * H].t()
        lp = (hs * w_k.index_select(0, col_t.index_select(0, torch.from_numpy(rows)))).sum(-1)
        ent.append((rows, pos, proj, lp))
    for r0 in range(0, R, _HEAD_ROWS):
        r1 = min(R, r0 + _HEAD_ROWS)
        b_c, c_c = base_t[r0:r1], col_t[r0:r1]
        n = r1 - r0
        P = torch.zeros(n, T, W1.shape[0])
        lpos = torch.zeros(n, T)
        for k in range(2):
            pk = entry.proj[k].index_select(0, b_c)  # [n, T, P] (a copy)
            lk = lpos_base[k][b_c, c_c]  # [n, T] (a copy)
            rows, pos, proj, lp = ent[k]
            sel = np.flatnonzero((rows >= r0) & (rows < r1))
            if len(sel):
                flat = torch.from_numpy((rows[sel] - r0) * T + pos[sel])
                sel_t = torch.from_numpy(sel)
                pk.view(n * T, -1).index_copy_(0, flat, proj.index_select(0, sel_t))
                lk.view(-1).index_copy_(0, flat, lp.index_select(0, sel_t))
            P += pk
            lpos += lk
        z = P.tanh_()
        scores = torch.bmm(z, w2.index_select(0, c_c).unsqueeze(-1)).squeeze(-1)  # [n, T]
        att = torch.softmax(scores, dim=-1)
        logits = (att * lpos).sum(-1) + bias.index_select(0, c_c)
        for j, pr in zip(jobs[r0:r1], torch.sigmoid(logits.double()).numpy()):
            j.task.probs[j.slot] = pr
