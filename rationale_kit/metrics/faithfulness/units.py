"""The units of one note for the faithfulness engine: the note's model units (ids, character
offsets) and elementary units (model units or words, :class:`_Note`), which model units a removal
touches, and the perturbed input of a removal (mask or delete). Pure numpy, plus the model's own
tokenizer and ``Encoded`` type. See docs/method/faithfulness.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rationale_kit.core.text import word_units


def _overlap_ranges(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each interval of ``a``, the range ``[lo, hi)`` of intervals of ``b`` that overlap it.
    ``b`` must be sorted and non-overlapping (checked by the caller)."""
    if len(a) == 0 or len(b) == 0:
        z = np.zeros(len(a), dtype=np.int64)
        return z, z.copy()
    lo = np.searchsorted(b[:, 1], a[:, 0], side="right")  # first b ending after a starts
    hi = np.searchsorted(b[:, 0], a[:, 1], side="left")  # first b starting at/after a's end
    return lo, np.maximum(hi, lo)


def _is_sorted_disjoint(off: np.ndarray) -> bool:
    if len(off) < 2:
        return True
    return bool(np.all(off[1:, 0] >= off[:-1, 1]) and np.all(off[:, 1] >= off[:, 0]))


def _range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``out[i] = max(values[lo[i]:hi[i]])``, ``-inf`` for empty ranges (vectorised)."""
    out = np.full(len(lo), -np.inf)
    counts = hi - lo
    total = int(counts.sum())
    if total == 0:
        return out
    tgt = np.repeat(np.arange(len(lo)), counts)
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    idx = starts + np.arange(total)
    np.maximum.at(out, tgt, values[idx])
    return out


def _overlap_max(targets: np.ndarray, src: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Max of ``values`` over the ``src`` intervals overlapping each ``targets`` interval."""
    order = np.lexsort((src[:, 1], src[:, 0]))
    src, values = src[order], values[order]
    if len(src) == len(targets) and np.array_equal(src, targets):
        return values.astype(np.float64)
    if _is_sorted_disjoint(src):
        lo, hi = _overlap_ranges(targets, src)
        return _range_max(values.astype(np.float64), lo, hi)
    out = np.full(len(targets), -np.inf)  # overlapping score rows: quadratic fallback
    for i, (s, e) in enumerate(targets):
        hit = (src[:, 0] < e) & (src[:, 1] > s)
        if hit.any():
            out[i] = values[hit].max()
    return out


@dataclass
class _Note:
    note_id: str
    enc: Any
    ids: np.ndarray  # int64 [n] model units
    offsets: np.ndarray  # int64 [n, 2]
    elem: np.ndarray  # offsets of the elementary units (model units or words)
    lo: np.ndarray | None = None  # word mode: model units [lo, hi) of each word
    hi: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_elem(self) -> int:
        return len(self.elem)

    def removal(self, sel: np.ndarray, keep: bool) -> np.ndarray:
        """Mask of the model units removed when ``sel`` (elementary indices) is removed
        (``keep=False``) or is all that is kept (``keep=True``)."""
        if self.lo is None:
            mask = np.zeros(self.n, dtype=bool)
            mask[sel] = True
        else:
            d = np.zeros(self.n + 1, dtype=np.int64)
            np.add.at(d, self.lo[sel], 1)
            np.add.at(d, self.hi[sel], -1)
            mask = np.cumsum(d[:-1]) > 0
        return ~mask if keep else mask


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _make_note(model: torch.nn.Module, note_id: str, text: str, unit: str) -> _Note:
    enc = model.tokenizer.encode(text)
    ids = _to_numpy(enc.ids).astype(np.int64).reshape(-1)
    offsets = _to_numpy(enc.offsets).astype(np.int64).reshape(-1, 2)
    if unit == "token":
        return _Note(note_id, enc, ids, offsets, offsets)
    words = word_units(text)
    if _is_sorted_disjoint(offsets):
        lo, hi = _overlap_ranges(words, offsets)
    else:  # pragma: no cover - tokenizers give ordered, disjoint offsets
        lo = np.zeros(len(words), dtype=np.int64)
        hi = np.zeros(len(words), dtype=np.int64)
        for i, (s, e) in enumerate(words):
            hit = np.flatnonzero((offsets[:, 0] < e) & (offsets[:, 1] > s))
            if len(hit):
                lo[i], hi[i] = hit.min(), hit.max() + 1
    seen = hi > lo
    return _Note(note_id, enc, ids, offsets, words[seen], lo[seen], hi[seen])


def _perturbed(note: _Note, removed: np.ndarray, perturbation: str, mask_id: int) -> Any:
    if perturbation == "mask":
        ids = note.ids.copy()
        ids[removed] = mask_id
        offsets = note.offsets
    else:
        keep = ~removed
        ids, offsets = note.ids[keep], note.offsets[keep]
        if len(ids) == 0:
            ids = np.asarray([mask_id], dtype=np.int64)
            offsets = np.zeros((1, 2), dtype=np.int64)
    return _encoded_like(note.enc, ids, offsets)


def _encoded_like(enc: Any, ids: np.ndarray, offsets: np.ndarray) -> Any:
    new_ids: Any = ids
    new_off: Any = offsets
    if isinstance(enc.ids, torch.Tensor):
        new_ids = torch.from_numpy(np.ascontiguousarray(ids))
    if isinstance(enc.offsets, torch.Tensor):
        new_off = torch.from_numpy(np.ascontiguousarray(offsets))
    if dataclasses.is_dataclass(enc):
        return dataclasses.replace(enc, ids=new_ids, offsets=new_off)
    return type(enc)(ids=new_ids, offsets=new_off)
