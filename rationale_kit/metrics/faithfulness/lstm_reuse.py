"""The LAAT state reuse path of the faithfulness engine (mask perturbation, CPU): LAAT's BiLSTM is
two one-directional recurrences, so a masked input changes the forward states only from its first
changed position on and the backward states only up to its last; and an LSTM forgets: a few dozen
steps after the last changed position the perturbed states are again within float rounding of the
unperturbed ones. Each row therefore runs each direction only where its states differ from a base
(the note itself, or the fully masked note for inputs that keep little): from each changed
position until its states are back within ``_STATE_TOL`` of the base's (rows join and leave every
``_CHECK_EVERY`` steps), and takes the base's states everywhere else. The input projection of
every distinct id is computed once per batch, the base's states and head projections once per note
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
#: Rows join (from their base's state, up to this many steps before their change) and converged
#: rows leave only every this many steps: fewer reshuffles of the active rows, a few more steps.
_CHECK_EVERY = 4
#: Rows whose head is assembled at once (``rows x positions x projection`` values each).
_HEAD_ROWS = 32


def _laat_reuse_ok(model) -> bool:
    """True for the package's unmodified LAAT in eval mode whose computation this path
    reproduces: two one-layer, one-directional, batch-first float32 LSTMs with biases and no
    projection, float32 head."""
    if not _package_model(model, "LAAT", ("embed", "hidden", "_scores", "_reverse_index")):
        return False
    from rationale_kit.models.label_attention import LAATHead

    if type(model.head) is not LAATHead:
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


def _recur(dirs: tuple[_Dir, _Dir], gx: list[torch.Tensor], X: np.ndarray, diff: np.ndarray, lengths: np.ndarray,
           base_h: list[torch.Tensor], base_c: list[torch.Tensor], base_at: np.ndarray, tol: float,
           keep_c: bool = False):
    """Both directions, each in its own step order (k = 0 forward, 1 backward over the reversed
    rows), side by side in one loop over steps. Direction k's rows ``X[k] [R, S]`` index
    ``gx[k] [U, 4H]``; row r has ``lengths[r]`` steps and is recomputed from each step where
    ``diff[k][r, s]`` until its states are within ``tol`` of its base's (never when
    ``tol < 0``). ``base_h[k], base_c[k] [., H]``: base states, row ``base_at[r] + s`` the state
    before step ``s`` (zeros before the first). Returns per direction the computed entries: rows
    ``[N]``, steps ``[N]``, hidden states ``[N, H]`` (and cell states when ``keep_c``)."""
    R, S = X.shape[1:]
    H = dirs[0].H
    active = np.zeros((2, R), dtype=bool)
    XT = [np.ascontiguousarray(X[k].T) for k in range(2)]
    ev = []  # per direction: (rows by step, step bounds)
    for k in range(2):
        d_t, d_r = np.nonzero(np.ascontiguousarray(diff[k].T))
        ev.append((d_r, np.searchsorted(d_t, np.arange(S + 1))))
    ends = np.zeros(S + 1, dtype=bool)
    ends[np.minimum(lengths, S)] = True
    ent: list[tuple[np.ndarray, np.ndarray, int, torch.Tensor, torch.Tensor | None]] = []
    idx = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)]  # active rows per direction
    hx = cx = torch.zeros(0, H)  # the forward rows' states, then the backward rows'

    def drop(keep: list[np.ndarray]):
        nonlocal hx, cx
        for k in range(2):
            active[k, idx[k][~keep[k]]] = False
            idx[k] = idx[k][keep[k]]
        keep_t = torch.from_numpy(np.concatenate(keep))
        hx, cx = hx[keep_t], cx[keep_t]

    J = _CHECK_EVERY
    for t in range(S):
        if t % J == 0:
            n0 = len(idx[0])
            if tol >= 0 and n0 + len(idx[1]):  # rows back within tol of their base stop
                at = [torch.from_numpy(base_at[idx[k]] + t) for k in range(2)]
                bh = torch.cat([base_h[k].index_select(0, at[k]) for k in range(2)])
                bc = torch.cat([base_c[k].index_select(0, at[k]) for k in range(2)])
                dev = torch.maximum((hx - bh).abs_().amax(1), (cx - bc).abs_().amax(1))
                done = (dev <= tol).numpy()
                if done.any():
                    drop([~done[:n0], ~done[n0:]])
            # rows changed within the next J steps start now, from their base's state (their
            # inputs before the change are the base's)
            new = []
            for k in range(2):
                d_r, starts = ev[k]
                cand = np.unique(d_r[starts[t]: starts[min(t + J, S)]])
                new.append(cand[~active[k, cand]])
            if len(new[0]) or len(new[1]):  # order kept: forward old, new, backward old, new
                n0 = len(idx[0])
                hs_, cs_ = [], []
                for k, old in enumerate((slice(0, n0), slice(n0, None))):
                    hs_.append(hx[old])
                    cs_.append(cx[old])
                    if len(new[k]):
                        prev = torch.from_numpy(base_at[new[k]] + t)
                        hs_.append(base_h[k].index_select(0, prev))
                        cs_.append(base_c[k].index_select(0, prev))
                        active[k, new[k]] = True
                        idx[k] = np.concatenate([idx[k], new[k]])
                hx, cx = torch.cat(hs_), torch.cat(cs_)
        if ends[t] and (len(idx[0]) or len(idx[1])):  # rows whose note has ended stop
            keep = [lengths[idx[k]] > t for k in range(2)]
            if not (keep[0].all() and keep[1].all()):
                drop(keep)
        n0, n1 = len(idx[0]), len(idx[1])
        if not n0 + n1:
            continue
        g = torch.empty(n0 + n1, 4 * H)
        for k, (a, b) in enumerate(((0, n0), (n0, n0 + n1))):
            if b > a:
                torch.addmm(gx[k].index_select(0, torch.from_numpy(XT[k][t][idx[k]])), hx[a:b], dirs[k].WhhT,
                            out=g[a:b])
        sg = g[:, : 3 * H].sigmoid_()
        cx = torch.addcmul(cx * sg[:, H: 2 * H], sg[:, :H], g[:, 3 * H:].tanh_())
        hx = sg[:, 2 * H:] * cx.tanh()
        ent.append((idx[0], idx[1], t, hx, cx if keep_c else None))
    out = []
    for k in range(2):
        rows = [e[k] for e in ent]
        sizes = [len(r) for r in rows]
        starts_k = [0 if k == 0 else len(e[0]) for e in ent]
        r_all = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        steps = np.repeat(np.asarray([e[2] for e in ent], dtype=np.int64), sizes)
        hs = torch.cat([e[3][a: a + m] for e, a, m in zip(ent, starts_k, sizes)]) if ent else torch.zeros(0, H)
        cs = None
        if keep_c:
            cs = torch.cat([e[4][a: a + m] for e, a, m in zip(ent, starts_k, sizes)]) if ent else torch.zeros(0, H)
        out.append((r_all, steps, hs, cs))
    return out


class _LaatNote:
    """Per-note cache of the LAAT path: for the two bases (0: the note, 1: the fully masked note)
    and each direction (0: forward, 1: backward, whose steps run from the note's end), the states
    in the layout :func:`_recur` reads (``[2 * (T + 1), H]``: base b's state before step s at row
    ``b * (T + 1) + s``, zeros before the first step), and per base the states at each position
    ``[2, T, H]`` with the head's projections ``[2, T, P]`` of each direction (``W1`` split)."""

    def __init__(self, ids: np.ndarray, mask_id: int, seqs: list[tuple[torch.Tensor, torch.Tensor]], W1: torch.Tensor):
        """``seqs``: per direction the hidden and cell states ``[2, T, H]`` of both bases, in
        the direction's step order (:func:`_laat_notes` computes them)."""
        self.T = len(ids)
        self.ids = ids
        self.mask_id = mask_id
        self.states = []  # per direction: (h table, c table) [2 * (T + 1), H]
        self.seq = []  # per direction: states at each position [2, T, H]
        self.proj = []  # per direction: [2, T, P]
        for k, (seq_h, seq_c) in enumerate(seqs):
            H = seq_h.shape[-1]
            z = torch.zeros(2, 1, H)
            self.states.append((torch.cat([z, seq_h], 1).reshape(-1, H), torch.cat([z, seq_c], 1).reshape(-1, H)))
            seq = seq_h if k == 0 else seq_h.flip(1)
            self.seq.append(seq)
            self.proj.append(seq @ W1[:, k * H: (k + 1) * H].t())

    def nbytes(self) -> int:
        ts = [t for pair in self.states for t in pair] + self.seq + self.proj
        return sum(t.numel() * t.element_size() for t in ts)


def _laat_dirs(model) -> tuple[_Dir, _Dir]:
    return _Dir(model, model.lstm_fwd), _Dir(model, model.lstm_bwd)


def _laat_notes(model, notes: list[_Note], mask_id: int, dirs: tuple[_Dir, _Dir]) -> list[_LaatNote]:
    """The :class:`_LaatNote` of each note, the recurrences of all notes and both bases run
    together (rows of different lengths share each step)."""
    n = len(notes)
    lengths = np.repeat(np.asarray([note.n for note in notes], dtype=np.int64), 2)
    S = int(lengths.max()) if n else 0
    uniq = np.unique(np.concatenate([note.ids for note in notes] + [np.asarray([mask_id])]))
    X = np.zeros((2, 2 * n, S), dtype=np.int64)
    diff = np.zeros((2, 2 * n, S), dtype=bool)
    m = np.searchsorted(uniq, mask_id)
    for i, note in enumerate(notes):
        T = note.n
        xi = np.searchsorted(uniq, note.ids)
        X[0, 2 * i, :T], X[1, 2 * i, :T] = xi, xi[::-1]
        X[:, 2 * i + 1, :T] = m
        diff[:, 2 * i: 2 * i + 2, :T] = True
    u_t = torch.as_tensor(uniq)
    H = dirs[0].H
    zeros = torch.zeros(S + 1, H)  # the zero state before either direction starts
    res = _recur(dirs, [d.gates_x(u_t) for d in dirs], X, diff, lengths, [zeros, zeros], [zeros, zeros],
                 np.zeros(2 * n, dtype=np.int64), tol=-1.0, keep_c=True)
    seqs = []
    for rows, steps, hs, cs in res:
        seq_h = torch.zeros(2 * n, S, H)
        seq_c = torch.zeros(2 * n, S, H)
        seq_h[rows, steps] = hs
        seq_c[rows, steps] = cs
        seqs.append((seq_h, seq_c))
    W1 = model.head.W1.weight.float()
    return [_LaatNote(note.ids, mask_id, [(h[2 * i: 2 * i + 2, : note.n], c[2 * i: 2 * i + 2, : note.n])
                                          for h, c in seqs], W1) for i, note in enumerate(notes)]


#: Perturbed rows the LAAT path gathers (over notes) before it runs them together: more rows per
#: recurrence step spread its fixed per-step cost.
_LAAT_ROWS = 2048


class _LaatEvaluator:
    """The engine's per-note evaluation for the LAAT path: gathers the notes' jobs and scores
    them together (:func:`_evaluate_many`) once ``_LAAT_ROWS`` rows are waiting, and at
    :meth:`flush`."""

    def __init__(self, model, device, mask_id: int, cache: "NoteCache"):
        self.model, self.device, self.mask_id, self.cache = model, device, mask_id, cache
        self.items: list[tuple[_Note, list]] = []
        self.rows = 0

    def __call__(self, note: _Note, jobs: list["_Job"]) -> None:
        self.items.append((note, list(jobs)))
        self.rows += len(jobs)
        if self.rows >= _LAAT_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.items:
            _evaluate_many(self.model, self.items, self.mask_id, self.cache)
        self.items, self.rows = [], 0


def _evaluate_many(model, items: list[tuple[_Note, list["_Job"]]], mask_id: int, cache: "NoteCache"):
    """Probabilities of the jobs of several notes (mask perturbation) by the LAAT state reuse
    path (module docstring): each row's base is its note or the fully masked note, whichever
    differs from it at fewer positions."""
    dirs = _laat_dirs(model)
    entries = cache.laat_notes(model, [note for note, _ in items], mask_id, dirs)
    jobs = [j for _, js in items for j in js]
    R = len(jobs)
    lengths = np.concatenate([np.full(len(js), note.n, dtype=np.int64) for note, js in items])
    S = int(lengths.max())
    uniq = np.unique(np.concatenate([note.ids for note, _ in items] + [np.asarray([mask_id])]))
    X = np.zeros((2, R, S), dtype=np.int64)  # per direction: gx rows of each step
    diff = np.zeros((2, R, S), dtype=bool)
    base = np.zeros(R, dtype=np.int64)
    base_at = np.zeros(R, dtype=np.int64)
    tabs: list[list[torch.Tensor]] = [[], [], [], []]  # fwd h, fwd c, bwd h, bwd c
    off, r = 0, 0
    for (note, js), entry in zip(items, entries):
        T, n = note.n, len(js)
        removed = np.stack([j.removed for j in js])
        x = np.where(removed, mask_id, note.ids[None, :])
        d_note, d_mask = x != note.ids[None, :], x != mask_id
        from_masked = d_mask.sum(1) < d_note.sum(1)
        dd = np.where(from_masked[:, None], d_mask, d_note)
        xi = np.searchsorted(uniq, x)
        X[0, r: r + n, :T], X[1, r: r + n, :T] = xi, xi[:, ::-1]
        diff[0, r: r + n, :T], diff[1, r: r + n, :T] = dd, dd[:, ::-1]
        base[r: r + n] = from_masked
        base_at[r: r + n] = off + from_masked * (T + 1)
        for k in range(2):
            tabs[2 * k].append(entry.states[k][0])
            tabs[2 * k + 1].append(entry.states[k][1])
        off += 2 * (T + 1)
        r += n
    u_t = torch.as_tensor(uniq)
    res = _recur(dirs, [d.gates_x(u_t) for d in dirs], X, diff, lengths, [torch.cat(tabs[0]), torch.cat(tabs[2])],
                 [torch.cat(tabs[1]), torch.cat(tabs[3])], base_at, tol=_STATE_TOL)
    out = []
    for k, (rows, steps, hs, _) in enumerate(res):
        pos = steps if k == 0 else lengths[rows] - 1 - steps
        order = np.argsort(rows, kind="stable")
        out.append((rows[order], pos[order], hs.index_select(0, torch.from_numpy(order))))
    W1 = model.head.W1.weight.float()
    H = dirs[0].H
    r = 0
    for (note, js), entry in zip(items, entries):
        n = len(js)
        labels = np.fromiter((j.label for j in js), dtype=np.int64, count=n)
        uniq_lab, col = np.unique(labels, return_inverse=True)
        lab_t = torch.as_tensor(uniq_lab)
        w2 = model.head.W2.weight.float().index_select(0, lab_t)  # [L, P]
        wfin = model.final.weight.float().index_select(0, lab_t)  # [L, 2H]
        bias = model.final.bias.float().index_select(0, lab_t)
        _head(entry, js, r, base[r: r + n], col, w2, wfin, bias, W1, H, out)
        r += n


def _head(entry: _LaatNote, js: list["_Job"], r_first: int, base: np.ndarray, col: np.ndarray, w2, wfin, bias,
          W1, H: int, out) -> None:
    """The label attention head for the rows ``r_first ..`` of one note (job order), reading
    only each row's own label: each row starts from its base's attention scores and position
    logits (``w_l . h_t``), recomputed only at the positions where the row recomputed a state
    (``out``: per direction the entries sorted by row)."""
    T, n = entry.T, len(js)
    col_t, base_t = torch.as_tensor(col), torch.as_tensor(base)
    w_dir = [wfin[:, k * H: (k + 1) * H] for k in range(2)]
    lpos_dir = [torch.einsum("btp,lp->blt", entry.seq[k], w_dir[k]) for k in range(2)]  # [2, L, T]
    scores_base = torch.einsum("btp,lp->blt", torch.tanh(entry.proj[0] + entry.proj[1]), w2)
    lpos_base = lpos_dir[0] + lpos_dir[1]
    proj_flat = [p.reshape(2 * T, -1) for p in entry.proj]
    lpos_flat = [lp.permute(0, 2, 1).reshape(2 * T, -1) for lp in lpos_dir]  # [(b, t), L]
    for a in range(0, n, _HEAD_ROWS):
        b = min(n, a + _HEAD_ROWS)
        b_c, c_c = base_t[a:b], col_t[a:b]
        scores = scores_base[b_c, c_c]  # [m, T] (copies)
        lpos = lpos_base[b_c, c_c]
        keys, hsel = [], []
        for k in range(2):
            rows, pos, hs = out[k]
            lo, hi = np.searchsorted(rows, [r_first + a, r_first + b])
            keys.append((rows[lo:hi] - r_first - a) * T + pos[lo:hi])
            hsel.append(hs[lo:hi])
        U = np.union1d(keys[0], keys[1])  # positions (row * T + t) where a state changed
        if len(U):
            u_row, u_pos = U // T, U % T
            src = torch.from_numpy(base[a:b][u_row] * T + u_pos)  # the base's row of each position
            cols = c_c.index_select(0, torch.from_numpy(u_row))
            P = torch.zeros(len(U), W1.shape[0])
            lp = torch.zeros(len(U))
            for k in range(2):
                pk = proj_flat[k].index_select(0, src)
                lk = lpos_flat[k].index_select(0, src).gather(1, cols[:, None]).squeeze(1)
                if len(keys[k]):
                    at = torch.from_numpy(np.searchsorted(U, keys[k]))
                    pk.index_copy_(0, at, hsel[k] @ W1[:, k * H: (k + 1) * H].t())
                    lk.index_copy_(0, at, (hsel[k] * w_dir[k].index_select(0, cols.index_select(0, at))).sum(-1))
                P += pk
                lp += lk
            U_t = torch.from_numpy(U)
            scores.view(-1).index_copy_(0, U_t, (P.tanh_() * w2.index_select(0, cols)).sum(-1))
            lpos.view(-1).index_copy_(0, U_t, lp)
        logits = (torch.softmax(scores, dim=-1) * lpos).sum(-1) + bias.index_select(0, c_c)
        for j, pr in zip(js[a:b], torch.sigmoid(logits.double()).numpy()):
            j.task.probs[j.slot] = pr
