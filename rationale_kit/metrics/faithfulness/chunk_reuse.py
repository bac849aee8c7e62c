"""The chunk reuse path of the faithfulness engine (PLM-ICD, mask perturbation): the encoder
reads each chunk of ``chunk_size`` units on its own, so a perturbed row re-encodes only the chunks
it changes; the note's own chunks come from the :class:`NoteCache`, identical perturbed chunks are
encoded once per note and call, and the head (``model.attend``) runs on the assembled states.
Used only for the package's unmodified PLM-ICD (:func:`_chunk_reuse_ok`).
See docs/method/faithfulness.md.
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


def _chunk_reuse_ok(model) -> bool:
    """True for the package's PLM-ICD (``hidden`` not overridden) in eval mode: its encoder reads
    each chunk of ``chunk_size`` units on its own, so a chunk's hidden states depend only on that
    chunk's ids."""
    return _package_model(model, "PLMICD", ("embed", "hidden"))


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


def _chunk_bounds(model, note: _Note) -> list[tuple[int, int]]:
    """``[(start, end)]`` of the note's chunks of ``model.chunk_size`` units."""
    s = model.chunk_size
    return [(c, min(c + s, note.n)) for c in range(0, note.n, s)]


def _chunk_base_probs(model, notes: dict[str, _Note], needed, cache: "NoteCache", batch_size: int, device):
    """Full-note probabilities ``{note: {label: p}}`` of the ``needed`` labels (None: all) from the
    note's own chunk states kept in ``cache`` (:meth:`NoteCache.plm_base`, the states the perturbed
    rows reuse), so a note's chunks are encoded once for the base pass and every row of every call
    sharing the cache; the head (``model.attend``) reads only the needed labels. Empty notes take
    the batched forward pass (:func:`generic._base_probs`)."""
    from rationale_kit.metrics.faithfulness.generic import _base_probs

    empty = {nid: note for nid, note in notes.items() if note.n == 0}
    base = _base_probs(model, empty, needed, True, batch_size, device) if empty else {}
    for nid, note in notes.items():
        if note.n == 0:
            continue
        h = torch.cat(cache.plm_base(model, note, _chunk_bounds(model, note), batch_size, device))[None]
        want = needed[nid]
        labs = None if want is None else sorted(int(l) for l in want)
        idx = None if labs is None else torch.as_tensor(np.asarray(labs, dtype=np.int64), device=device)
        mask = torch.ones(1, note.n, dtype=torch.bool, device=device)
        pr = torch.sigmoid(model.attend(h, mask, idx).logits.double())[0].cpu().numpy()
        lab_list = range(len(pr)) if labs is None else labs
        base[nid] = {int(l): float(v) for l, v in zip(lab_list, pr)}
    return base


#: Perturbed chunks' hidden states one note keeps at once (bytes); beyond it the note's chunk
#: store starts again from the note's own chunks (values unchanged, only more encoding).
_CHUNK_STORE_BYTES = 256 * 2**20


def _evaluate_chunks(model, note: _Note, jobs: list["_Job"], batch_size: int, device, mask_id: int,
                     cache: "NoteCache", *, group_elements: int):
    """Probabilities of ``jobs`` (all of one note, mask perturbation), encoding each distinct
    chunk once: chunks a perturbation leaves as in the note reuse the note's hidden states (kept
    in ``cache`` across calls), and identical perturbed chunks (the all-mask chunk of every
    sufficiency input, chunks shared by nested top-k steps, by several pairs or sources of the
    note) are encoded once per note and call (up to ``_CHUNK_STORE_BYTES``); the all-mask chunk,
    the same in every note, once per length for every note and call sharing ``cache``
    (``cache.plm_shared``). The head
    (``model.attend``) then runs on the assembled states, reading only each row's own label.
    ``cache.chunk_stats`` counts the chunk look-ups and the chunks encoded. Rows are assembled in
    groups of at most ``group_elements`` hidden-state values (the engine's ``_CHUNK_ELEMENTS``)."""
    s, ids = model.chunk_size, note.ids
    bounds = _chunk_bounds(model, note)
    base = cache.plm_base(model, note, bounds, batch_size, device)
    known_base = {ids[a:b].tobytes(): h for (a, b), h in zip(bounds, base)}
    dim = base[0].shape[-1] if base else 1
    chunk_bytes = s * dim * 4
    group = max(1, min(4 * batch_size, group_elements // max(1, note.n * dim)))
    mask = torch.ones(1, note.n, dtype=torch.bool, device=device)
    known = dict(known_base)
    shared = cache.plm_shared  # chunks equal in every note: the all-mask chunk of each length
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
                    hit = shared.get(key)
                    if hit is not None:
                        known[key] = hit
                    else:
                        todo[key] = x[a:b]
                row_keys.append(key)
            keys.append(row_keys)
        stats["lookups"] += len(rows) * len(bounds)
        stats["encoded"] += len(todo)
        known.update(zip(todo, _encode_chunks(model, list(todo.values()), batch_size, device)))
        for key, seg in todo.items():
            if bool((seg == mask_id).all()):
                shared[key] = known[key]
        for b in range(0, len(rows), batch_size):
            part, part_keys = rows[b: b + batch_size], keys[b: b + batch_size]
            h = torch.stack([torch.cat([known[k] for k in rk]) for rk in part_keys])  # [R, T, D]
            labels = np.fromiter((j.label for j in part), dtype=np.int64, count=len(part))
            uniq, inv = np.unique(labels, return_inverse=True)
            out = model.attend(h, mask.expand(len(part), -1), torch.as_tensor(uniq, device=device))
            logits = out.logits[torch.arange(len(part), device=device), torch.as_tensor(inv, device=device)]
            for j, pr_ in zip(part, torch.sigmoid(logits.double()).cpu().numpy()):
                j.task.probs[j.slot] = pr_
