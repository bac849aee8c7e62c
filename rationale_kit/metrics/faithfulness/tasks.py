"""What the faithfulness engine perturbs and how its results come back, whatever path scores
them: the rationale table parsed into per-(note, code, group) payloads, the labels and pairs to
score, each pair's perturbations (:class:`_Task`, one per measure pair and control; :class:`_Job`,
one per perturbed input) with their random controls, the loop that hands the jobs to a path, and
the result table. See docs/method/faithfulness.md.
"""
from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rationale_kit.core.records import DataError
from rationale_kit.core.runtime import progress as progress_bar
from rationale_kit.core.text import span_mask
from rationale_kit.metrics.faithfulness import generic
from rationale_kit.metrics.faithfulness.measures import (
    OUTPUT_COLUMNS, discrete_slots, pair_values, ranking, scored_slots,
)
from rationale_kit.metrics.faithfulness.units import _Note, _overlap_max

if TYPE_CHECKING:
    from rationale_kit.metrics.faithfulness.engine import FaithfulnessSpec


@dataclass
class _Task:
    """One (note, code, rationale group, control): the perturbations of one measure pair."""

    note_id: str
    code: str
    label: int
    group: tuple
    control: str
    p: float
    n_units: int
    kind: str
    steps: list = field(default_factory=list)  # (measure, k, size) per slot
    probs: np.ndarray | None = None


@dataclass
class _Job:
    label: int
    removed: np.ndarray
    length: int
    task: _Task
    slot: int
    note: _Note


def _rng(seed: int, note_id: str, code: str, group: tuple) -> np.random.Generator:
    group = [g for g in group if g != _NA]  # a column only some concatenated tables have
    key = [zlib.crc32(s.encode("utf-8")) for s in (note_id, code, "\x1f".join(map(str, group)))]
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *key])


def _specs(spec: FaithfulnessSpec, payload: Any, note: _Note, rng: np.random.Generator) -> dict[str, list]:
    """(measure, k, selected elementary units, keep) per slot, for the rationale and the control."""
    n = note.n_elem
    if spec.kind == "discrete":
        sel = np.flatnonzero(span_mask(note.elem, payload)) if n else np.zeros(0, dtype=np.int64)
        rnd = np.sort(rng.choice(n, size=len(sel), replace=False)) if n else sel
        return {"rationale": discrete_slots(sel), "random": discrete_slots(rnd)}
    starts, ends, values = payload
    scores = _overlap_max(note.elem, np.stack([starts, ends], axis=1), values) if n else np.zeros(0)
    perm = rng.permutation(scores)
    return {control: scored_slots(spec.kind, ranking(sc), n, spec.aopc_k, spec.word_steps)
            for control, sc in (("rationale", scores), ("random", perm))}


_GROUP_COLS = (("source", "source"), ("method", "method"), ("model", "rationale_model"))
_NA = "\x00missing"


def _parse_table(table: pd.DataFrame, kind: str, texts: dict[str, str]):
    need = ["note_id", "code", "start", "end"] + ([] if kind == "discrete" else ["score"])
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise DataError(f"{'span' if kind == 'discrete' else 'score'} table: missing column(s) {missing}")
    gcols = [c for c, _ in _GROUP_COLS if c in table.columns]
    out_cols = [o for c, o in _GROUP_COLS if c in table.columns]
    t = table.reset_index(drop=True)
    note_ids = t["note_id"].astype(str).to_numpy()
    unknown = sorted(set(note_ids) - set(texts))
    if unknown:
        raise DataError(f"rationale table: {len(unknown)} unknown note_id(s), e.g. {unknown[:3]}")
    codes = t["code"].astype(str).to_numpy()
    starts = t["start"].to_numpy(dtype=np.int64)
    ends = t["end"].to_numpy(dtype=np.int64)
    scores = t["score"].to_numpy(dtype=np.float64) if kind != "discrete" else None
    # a missing group value (a source table without that column, concatenated with one that has
    # it) stays missing in the output instead of becoming the string "nan"
    gvals = [t[c].astype(str).where(t[c].notna(), _NA).to_numpy() for c in gcols]
    payloads: dict[tuple[str, str], dict[tuple, Any]] = {}
    groups: dict[tuple, None] = {}
    # one integer key per (note, code, group) row; groups are visited in order of first appearance
    key = np.zeros(len(t), dtype=np.int64)
    for col in [note_ids, codes, *gvals]:
        codes_i, uniques = pd.factorize(col, sort=False)
        key = key * max(1, len(uniques)) + codes_i
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(len(first) + 1))
    for g in np.argsort(first, kind="stable"):
        idx = order[bounds[g]: bounds[g + 1]]
        i0 = first[g]
        nid, code, group = note_ids[i0], codes[i0], tuple(v[i0] for v in gvals)
        groups[group] = None
        if kind == "discrete":
            pay = list(zip(starts[idx].tolist(), ends[idx].tolist()))
        else:
            pay = (starts[idx], ends[idx], scores[idx])
        payloads.setdefault((nid, code), {})[group] = pay
    return payloads, list(groups), out_cols


def _needed_labels(texts, payloads, gold_map, label_of, missing: str):
    """The notes to score (documents order) and, per note, the labels whose full-note probability
    is needed (None: all labels)."""
    table_codes: dict[str, set[str]] = {}
    for nid, code in payloads:
        table_codes.setdefault(nid, set()).add(code)
    note_order = [n for n in texts if (n in table_codes or missing == "empty")]
    unknown_codes: set[str] = set()
    needed: dict[str, list[int] | None] = {}
    for nid in note_order:
        if missing == "empty":
            cand = set(gold_map.get(nid, set())) if gold_map is not None else None
        else:
            cand = table_codes[nid]
            if gold_map is not None:
                cand = cand & gold_map.get(nid, set())
        if cand is None:
            needed[nid] = None
            continue
        unknown_codes |= {c for c in cand if c not in label_of}
        needed[nid] = sorted(label_of[c] for c in cand if c in label_of)
    if unknown_codes:  # stacklevel: the caller of the public function
        warnings.warn(f"faithfulness: {len(unknown_codes)} code(s) not among the model's labels are "
                      f"skipped (e.g. {sorted(unknown_codes)[:3]})", stacklevel=4)
    note_order = [n for n in note_order if needed[n] is None or needed[n]]
    return note_order, needed


def _select_pairs(note_order, base, payloads, groups, label_of, labels, thr, gold_map, spec: FaithfulnessSpec):
    """Per note: list of (code, label, group, payload, p) to score."""
    per_note: dict[str, list] = {}
    counts: dict[tuple, int] = {}
    for nid in note_order:
        items = []
        if spec.code_set == "predicted":
            codes = [labels[l] for l, p in base[nid].items() if p > thr[l]]
        else:
            codes = [labels[l] for l in base[nid]]
        codes = [c for c in codes if gold_map is None or c in gold_map.get(nid, set())]
        for code in sorted(codes, key=lambda c: label_of[c]):
            pays = payloads.get((nid, code), {})
            for group in groups:
                if group in pays:
                    pay = pays[group]
                elif spec.missing == "empty":
                    pay = []
                else:
                    continue
                if spec.max_pairs is not None:
                    if counts.get(group, 0) >= spec.max_pairs:
                        continue
                    counts[group] = counts.get(group, 0) + 1
                l = label_of[code]
                items.append((code, l, group, pay, base[nid][l]))
        if items:
            per_note[nid] = items
    return per_note


def _perturb_all(model, notes, per_note, spec: FaithfulnessSpec, device, mask_id: int,
                 evaluate=None) -> list[_Task]:
    tasks: list[_Task] = []
    buffer: list[_Job] = []
    batch_size, perturbation = spec.batch_size, spec.perturbation
    flush = max(batch_size * 8, 64)
    bar = progress_bar(total=len(per_note), enabled=spec.progress, desc=f"faithfulness ({spec.kind})")
    try:
        for nid, items in per_note.items():
            note = notes[nid]
            for code, label, group, pay, p in items:
                specs = _specs(spec, pay, note, _rng(spec.seed, nid, code, group))
                for control, slots in specs.items():
                    task = _Task(nid, code, label, group, control, p, note.n_elem, spec.kind,
                                 probs=np.full(len(slots), np.nan))
                    for slot, (measure, k, sel, keep) in enumerate(slots):
                        task.steps.append((measure, k, len(sel)))
                        removed = note.removal(sel, keep)
                        n_removed = int(removed.sum())
                        if n_removed == 0:
                            task.probs[slot] = p
                            continue
                        length = note.n if perturbation == "mask" else max(1, note.n - n_removed)
                        buffer.append(_Job(label, removed, length, task, slot, note))
                    tasks.append(task)
            if evaluate is not None:
                if buffer:
                    evaluate(note, buffer)
                buffer = []
            elif spec.engine:
                if len(buffer) >= flush:
                    cut = len(buffer) - len(buffer) % batch_size
                    buffer.sort(key=lambda j: -j.length)
                    head, buffer = buffer[:cut], buffer[cut:]
                    generic._evaluate_batched(model, head, batch_size, device, perturbation, mask_id)
            else:
                generic._evaluate_single(model, buffer, device, perturbation, mask_id)
                buffer = []
            bar.update(1)
        if evaluate is not None and hasattr(evaluate, "flush"):  # a path that gathers notes
            evaluate.flush()
        if buffer:
            generic._evaluate_batched(model, buffer, batch_size, device, perturbation, mask_id)
    finally:
        bar.close()
    return tasks


def _to_frame(tasks: list[_Task], spec: FaithfulnessSpec, name: str, group_out_cols) -> pd.DataFrame:
    # per task: its rows' measure, k, value and size; task-level columns are repeated afterwards
    measures: list[str] = []
    ks: list[float] = []
    values: list[np.ndarray] = []
    sizes: list[float] = []
    n_rows = np.zeros(len(tasks), dtype=np.int64)
    for i, t in enumerate(tasks):
        m, k, v, s = pair_values(spec.kind, t.p, t.probs, t.steps, spec.curve)
        measures += m
        ks += k
        values += v
        sizes += s
        n_rows[i] = len(m)

    def rep(get, dtype=object):
        return np.repeat(np.asarray([get(t) for t in tasks], dtype=dtype), n_rows)

    cols = {
        "note_id": rep(lambda t: t.note_id), "code": rep(lambda t: t.code),
        "measure": np.asarray(measures, dtype=object), "k": np.asarray(ks, dtype=np.float64),
        "value": np.concatenate(values) if values else np.zeros(0),
        "control": rep(lambda t: t.control), "p": rep(lambda t: t.p, np.float64),
        "rationale_size": np.asarray(sizes, dtype=np.float64), "n_units": rep(lambda t: t.n_units, np.int64),
    }
    frame = pd.DataFrame(cols)
    gframe = {}
    for i, col in enumerate(group_out_cols):
        gframe[col] = rep(lambda t, i=i: None if t.group[i] == _NA else t.group[i])
    if "source" not in gframe:
        gframe["source"] = ["rationale"] * len(frame)
    for col, vals in gframe.items():
        frame[col] = vals if len(frame) else pd.Series([], dtype=frame["measure"].dtype)
    frame["model"] = name
    frame["unit"] = spec.unit
    frame["perturbation"] = spec.perturbation
    frame["code_set"] = spec.code_set
    frame = frame.astype({"k": "float64", "value": "float64", "p": "float64", "rationale_size": "float64",
                          "n_units": "int64"})
    extra = [c for c in ("method", "rationale_model") if c in frame.columns]
    return frame[OUTPUT_COLUMNS + extra].reset_index(drop=True)
