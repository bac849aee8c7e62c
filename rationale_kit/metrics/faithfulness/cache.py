"""The per-note work several faithfulness engine calls with one model share (:class:`NoteCache`):
each note's units, the CAML path's pre-activations and tap changes, the PLM-ICD path's hidden
states of the note's own chunks. See docs/method/faithfulness.md.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from rationale_kit.metrics.faithfulness.caml_patch import _caml_pre, _CamlNote
from rationale_kit.metrics.faithfulness.chunk_reuse import _encode_chunks
from rationale_kit.metrics.faithfulness.lstm_reuse import _LaatNote, _laat_notes
from rationale_kit.metrics.faithfulness.units import _make_note, _Note

__all__ = ["NoteCache"]


class NoteCache:
    """Per-note work that several engine calls with the same model share: each note's units (per
    unit kind), on the incremental CAML path its pre-activations and tap changes, on the PLM-ICD
    chunk path the hidden states of the note's own chunks (``chunk_stats``: chunk look-ups of
    perturbed rows and chunks encoded, so ``1 - encoded / lookups`` is the hit rate). Pass one
    instance as ``cache=`` to every call that scores with one model
    (``protocols.faithfulness.faithfulness_tables`` does: discrete, ERASER and Edin calls then
    encode each note once). It empties itself when used
    with another model or device, or after the model's parameters changed (storage or in-place
    version). ``max_bytes`` bounds the tap changes and chunk states kept (least recently used
    dropped first); the units and pre-activations are small and always kept."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = int(max_bytes)
        self._key: tuple | None = None
        self._notes: dict[tuple[str, str], tuple[str, _Note]] = {}
        self._pre: dict[str, tuple[np.ndarray, torch.Tensor]] = {}
        self._caml: "OrderedDict[str, tuple[_CamlNote, int]]" = OrderedDict()  # entry, bytes
        self._plm: "OrderedDict[str, tuple[tuple[np.ndarray, list[torch.Tensor]], int]]" = OrderedDict()
        self._laat: "OrderedDict[str, tuple[_LaatNote, int]]" = OrderedDict()
        self._bytes = 0
        #: PLM-ICD chunk path: hidden states ``[len, D]`` of chunks that are the same in every note
        #: (the all-mask chunk of each length), keyed by the chunk's ids (bytes)
        self.plm_shared: dict[bytes, torch.Tensor] = {}
        self.chunk_stats = {"lookups": 0, "encoded": 0}  # PLM-ICD chunk path, over this cache's life

    def _bind(self, model, device) -> None:
        key = (id(model), str(device), tuple((p.data_ptr(), p._version) for p in model.parameters()))
        if key != self._key:
            self._notes.clear()
            self._pre.clear()
            self._caml.clear()
            self._plm.clear()
            self.plm_shared.clear()
            self._laat.clear()
            self._bytes = 0
            self._key = key

    def note(self, model, note_id: str, text: str, unit: str) -> _Note:
        hit = self._notes.get((note_id, unit))
        if hit is not None and hit[0] == text:
            return hit[1]
        note = _make_note(model, note_id, text, unit)
        self._notes[(note_id, unit)] = (text, note)
        return note

    def caml_pre(self, model, note: _Note, device) -> torch.Tensor:
        hit = self._pre.get(note.note_id)
        if hit is not None and np.array_equal(hit[0], note.ids):
            return hit[1]
        pre = _caml_pre(model, note.ids, device)
        self._pre[note.note_id] = (note.ids, pre)
        return pre

    def _keep(self, store: OrderedDict, key: str, entry: Any, size: int) -> None:
        """Keep ``entry`` under ``key`` within ``max_bytes`` (least recently used dropped first)."""
        if size > self.max_bytes:
            return
        store[key] = (entry, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            for st in (self._caml, self._plm, self._laat):  # the older kind first: the models never mix
                if st:
                    _, (_, old) = st.popitem(last=False)
                    self._bytes -= old
                    break

    def plm_base(self, model, note: _Note, bounds: list[tuple[int, int]], batch_size: int, device) -> list[torch.Tensor]:
        """Hidden states ``[len, D]`` of each chunk of the note itself (PLM-ICD chunk path),
        encoded once for every call that shares this cache."""
        hit = self._plm.get(note.note_id)
        if hit is not None and np.array_equal(hit[0][0], note.ids):
            self._plm.move_to_end(note.note_id)
            return hit[0][1]
        base = _encode_chunks(model, [note.ids[a:b] for a, b in bounds], batch_size, device)
        self.chunk_stats["encoded"] += len(base)
        self._keep(self._plm, note.note_id, (note.ids, base), sum(h.numel() * h.element_size() for h in base))
        return base

    def caml_note(self, model, note: _Note, pre: torch.Tensor, mask_id: int, device) -> "_CamlNote":
        hit = self._caml.get(note.note_id)
        hit = hit[0] if hit is not None else None
        if hit is not None and hit.pre is pre and hit.mask_id == mask_id:
            self._caml.move_to_end(note.note_id)
            return hit
        entry = _CamlNote(model, note.ids, pre, mask_id, device)
        self._keep(self._caml, note.note_id, entry, entry.Q.numel() * entry.Q.element_size())
        return entry

    def laat_notes(self, model, notes: list[_Note], mask_id: int, dirs) -> list[_LaatNote]:
        """The LAAT path's states of each note and of the fully masked note (:class:`_LaatNote`),
        computed once for every call that shares this cache (the missing ones together)."""
        out: dict[int, _LaatNote] = {}
        for i, note in enumerate(notes):
            hit = self._laat.get(note.note_id)
            hit = hit[0] if hit is not None else None
            if hit is not None and hit.mask_id == mask_id and np.array_equal(hit.ids, note.ids):
                self._laat.move_to_end(note.note_id)
                out[i] = hit
        todo = [i for i in range(len(notes)) if i not in out]
        for i, entry in zip(todo, _laat_notes(model, [notes[i] for i in todo], mask_id, dirs) if todo else []):
            self._keep(self._laat, notes[i].note_id, entry, entry.nbytes())
            out[i] = entry
        return [out[i] for i in range(len(notes))]
