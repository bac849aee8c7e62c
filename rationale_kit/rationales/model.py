"""Rationales read from a coding model: label-wise attention and gradient attributions, as soft
tables (:data:`records.SCORE_COLUMNS`), for the (note, code) pairs :func:`codes_for_rationales`
picks. Models follow the coding-model contract of ``docs/INTERFACES.md``. See
docs/method/rationales.md for the methods.
"""
from __future__ import annotations

import warnings
from typing import Literal, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

from rationale_kit.core import runtime
from rationale_kit.core.config import DEFAULT_GRADIENT_METHOD
from rationale_kit.core.documents import as_documents, as_gold_codes
from rationale_kit.core.records import DataError
from rationale_kit.rationales.tables import check_columns, soft_table

GradientMethod = Literal["attention_x_gradient", "input_x_gradient", "integrated_gradients"]


class SoftResult(NamedTuple):
    """What the model-rationale functions return.

    ``table``: soft rationale table (SCORE_COLUMNS). ``n_missing``: requested (note, code) pairs
    whose code is not among ``model.labels`` (warned about, not silently dropped); ``missing``:
    those pairs. ``diagnostics``: per-pair extras (integrated gradients: completeness check).
    """

    table: pd.DataFrame
    n_missing: int
    missing: pd.DataFrame
    diagnostics: Optional[pd.DataFrame] = None


# --------------------------------------------------------------------------------------------
# code sets
# --------------------------------------------------------------------------------------------
def codes_for_rationales(
    docs,
    predictions: Optional[pd.DataFrame] = None,
    code_set: Literal["gold", "predicted", "both"] = "both",
) -> pd.DataFrame:
    """The (note, code) pairs to explain: gold codes, predicted codes (``pred`` true) or their
    union, for the notes of ``docs``. Columns ``note_id, code, is_gold, is_predicted, prob``
    (``prob`` NaN where the predictions lack the pair)."""
    if code_set not in ("gold", "predicted", "both"):
        raise ValueError(f"code_set must be gold, predicted or both, got {code_set!r}")
    gold = as_gold_codes(None, as_documents(docs))  # the documents' own codes
    gold_pairs = {(n, c) for n, cs in gold.items() for c in cs}
    pred_pairs: set[tuple[str, str]] = set()
    prob: dict[tuple[str, str], float] = {}
    if predictions is not None and len(predictions):
        check_columns(predictions, ["note_id", "code", "pred"], "predictions")
        p = predictions[predictions["note_id"].astype(str).isin(gold)]
        for r in p.itertuples(index=False):
            key = (str(r.note_id), str(r.code))
            if "prob" in p.columns:
                prob[key] = float(r.prob)
            if bool(r.pred):
                pred_pairs.add(key)
    elif code_set != "gold":
        raise ValueError(f"code_set={code_set!r} needs predictions")
    pairs = {"gold": gold_pairs, "predicted": pred_pairs, "both": gold_pairs | pred_pairs}[code_set]
    rows = sorted(pairs)
    return pd.DataFrame(
        {
            "note_id": [n for n, _ in rows],
            "code": [c for _, c in rows],
            "is_gold": [p in gold_pairs for p in rows],
            "is_predicted": [p in pred_pairs for p in rows],
            "prob": [prob.get(p, np.nan) for p in rows],
        },
        columns=["note_id", "code", "is_gold", "is_predicted", "prob"],
    )


# --------------------------------------------------------------------------------------------
# model rationales
# --------------------------------------------------------------------------------------------
def _plan(model, docs, codes_per_note: pd.DataFrame):
    """Per note: ``[(code, label_row)]``; and the pairs whose code the model lacks."""
    texts = as_documents(docs)
    check_columns(codes_per_note, ["note_id", "code"], "codes_per_note")
    row_of = {c: i for i, c in enumerate(model.labels)}
    pairs = codes_per_note[["note_id", "code"]].astype(str).drop_duplicates()
    unknown_notes = sorted(set(pairs["note_id"]) - set(texts))
    if unknown_notes:
        raise DataError(f"codes_per_note: unknown note_id(s) {unknown_notes[:5]}")
    known = pairs["code"].isin(row_of)
    missing = pairs[~known].reset_index(drop=True)
    if len(missing):
        warnings.warn(
            f"{len(missing)} (note, code) pair(s) ask for codes the model does not have "
            f"({missing['code'].nunique()} distinct, e.g. {sorted(missing['code'].unique())[:5]}); "
            "they get no model rationale",
            stacklevel=3,
        )
    plan: dict[str, list[tuple[str, int]]] = {}
    for nid, code in pairs[known].itertuples(index=False):
        plan.setdefault(nid, []).append((code, row_of[code]))
    return texts, plan, missing


def _model_device(model, device):
    import torch

    if device is not None:
        return torch.device(device)
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class _PairRows:
    """The soft rows of many pairs, gathered as arrays and made into one table at the end (a
    DataFrame per pair cost about a quarter of a guided student's evaluation)."""

    _KEYS = ("note_id", "code", "source", "method", "model")

    def __init__(self) -> None:
        self.keys: list[tuple] = []
        self.offsets: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []

    def add(self, nid, code, source, method, model_name, offsets, scores) -> None:
        """One pair: ``offsets [n, 2]`` character offsets and ``scores [n]`` of its ``n`` units."""
        scores = np.asarray(scores, dtype=np.float64)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        if len(offsets) != len(scores):  # the rows are concatenated: a mismatch would shift later pairs
            raise ValueError(f"({nid}, {code}): {len(scores)} scores for {len(offsets)} unit offsets")
        self.keys.append((nid, code, source, method, model_name, len(scores)))
        self.offsets.append(offsets)
        self.scores.append(scores)

    def table(self) -> pd.DataFrame:
        if not self.keys:
            return soft_table([])
        n = np.array([k[-1] for k in self.keys], dtype=np.int64)
        cols = {c: np.repeat(np.array([k[i] for k in self.keys], dtype=object), n) for i, c in enumerate(self._KEYS)}
        off = np.concatenate(self.offsets)
        cols |= {"unit": np.concatenate([np.arange(m, dtype=np.int64) for m in n]),
                 "start": off[:, 0], "end": off[:, 1], "score": np.concatenate(self.scores)}
        return soft_table([pd.DataFrame(cols)])


def _name(model, model_name):
    return model_name or getattr(model, "name", None) or type(model).__name__.lower()


def attention_rationales(
    model,
    docs,
    codes_per_note: pd.DataFrame,
    source: str = "attention",
    model_name: Optional[str] = None,
    batch_size: int = 8,
    device=None,
    progress: bool = False,
    method: str = "attention",
) -> SoftResult:
    """Label-wise attention of ``model`` as soft rationales of the requested pairs.

    Each note is encoded once; a batch of notes goes through one forward with ``label_idx`` =
    the union of the batch's requested codes; the attention row of (note, code) over the note's
    ``n`` units is one pair's rationale (scores sum to 1 by the model contract; not
    renormalised). Pairs whose code is not in ``model.labels`` are counted in ``n_missing``.
    """
    import torch

    texts, plan, missing = _plan(model, docs, codes_per_note)
    dev = _model_device(model, device)
    name = _name(model, model_name)
    was_training = model.training
    model.eval()
    collected = _PairRows()
    notes = list(plan)
    try:
        with torch.no_grad():
            batches = range(0, len(notes), batch_size)
            for b0 in runtime.progress(batches, progress, total=len(batches), desc=f"attention {name}"):
                batch = notes[b0:b0 + batch_size]
                encs = [model.tokenizer.encode(texts[nid]) for nid in batch]
                rows = sorted({r for nid in batch for _, r in plan[nid]})
                pos = {r: k for k, r in enumerate(rows)}
                ids, mask = model.collate(encs)
                out = model(ids.to(dev), mask.to(dev),
                            label_idx=torch.as_tensor(rows, dtype=torch.long, device=dev))
                att = out.attention.float().cpu().numpy()
                for bi, (nid, enc) in enumerate(zip(batch, encs)):
                    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
                    n = len(offsets)
                    for code, r in plan[nid]:
                        collected.add(nid, code, source, method, name, offsets, att[bi, pos[r], :n])
    finally:
        model.train(was_training)
    return SoftResult(collected.table(), len(missing), missing)


def _gl_nodes(steps: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(steps)
    return (x + 1.0) / 2.0, w / 2.0


def explain_encoded(
    model,
    enc,
    label_rows: Sequence[int],
    method: GradientMethod = DEFAULT_GRADIENT_METHOD,
    steps: int = 16,
    device=None,
) -> dict:
    """Gradient attributions of one encoded note for the codes at ``label_rows`` (one batch).

    Returns ``{"scores": [K, n] signed attributions (IG, input x gradient) or attention x grad
    norm, "logits": [K], "baseline_logits": [K] (IG only)}`` as numpy arrays. The model is used
    as is (call ``model.eval()`` first to switch dropout off).
    """
    import torch

    dev = _model_device(model, device)
    K = len(label_rows)
    n = len(enc.ids)
    ids, mask = model.collate([enc])
    ids, mask = ids.to(dev), mask.to(dev)
    T = ids.shape[1]
    label_idx = torch.as_tensor(list(label_rows), dtype=torch.long, device=dev)
    maskK = mask.expand(K, T)
    diag = torch.arange(K, device=dev)
    with torch.no_grad():
        x = model.embed(ids).float()  # [1, T, E]

    def grads(inp: torch.Tensor, want_attention: bool = False):
        inp = inp.expand(K, -1, -1).clone().requires_grad_(True)
        out = model.forward_from_embeddings(inp, maskK, label_idx=label_idx)
        logits = out.logits[diag, diag]
        (g,) = torch.autograd.grad(logits.sum(), inp)
        att = out.attention[diag, diag].detach() if want_attention else None
        return g.detach(), logits.detach(), att

    result: dict = {}
    if method == "input_x_gradient":
        g, logits, _ = grads(x)
        result["scores"] = (x * g).sum(-1)[:, :n]
        result["logits"] = logits
    elif method == "attention_x_gradient":
        g, logits, att = grads(x, want_attention=True)
        result["scores"] = (att.float() * g.norm(dim=-1))[:, :n]
        result["logits"] = logits
    elif method == "integrated_gradients":
        base_ids = ids.clone()
        base_ids[0, :n] = int(model.tokenizer.mask_id)
        with torch.no_grad():
            xb = model.embed(base_ids).float()
        alphas, weights = _gl_nodes(steps)
        total = torch.zeros(K, T, x.shape[-1], device=dev)
        for a, w in zip(alphas, weights):
            g, _, _ = grads(xb + float(a) * (x - xb))
            total += float(w) * g
        attr = ((x - xb) * total).sum(-1)  # [K, T]; zero at padding (same ids)
        with torch.no_grad():
            lx = model.forward_from_embeddings(x.expand(K, -1, -1), maskK, label_idx=label_idx).logits[diag, diag]
            lb = model.forward_from_embeddings(xb.expand(K, -1, -1), maskK, label_idx=label_idx).logits[diag, diag]
        result["scores"] = attr[:, :n]
        result["logits"] = lx
        result["baseline_logits"] = lb
        result["attribution_sum"] = attr.sum(-1)
    else:
        raise ValueError(
            f"unknown gradient method {method!r} (attention_x_gradient, input_x_gradient, "
            "integrated_gradients)"
        )
    return {k: v.float().cpu().numpy() for k, v in result.items()}


def gradient_rationales(
    model,
    docs,
    codes_per_note: pd.DataFrame,
    method: GradientMethod = DEFAULT_GRADIENT_METHOD,
    steps: int = 16,
    source: str = "gradient",
    model_name: Optional[str] = None,
    code_batch: int = 8,
    device=None,
    progress: bool = False,
    absolute: bool = True,
) -> SoftResult:
    """Gradient-based soft rationales of the requested pairs (the three methods:
    docs/method/rationales.md). The codes of a note are explained together, ``code_batch`` at a time (memory
    grows with ``code_batch`` x units x embedding size). ``absolute``: store ``|attribution|``
    (input x gradient and IG; attention x gradient is non-negative anyway). ``diagnostics`` (IG):
    ``note_id, code, logit, baseline_logit, attribution_sum, delta = attribution_sum - (logit -
    baseline_logit), rel_error = |delta| / max(|logit - baseline_logit|, 1e-6)``."""
    texts, plan, missing = _plan(model, docs, codes_per_note)
    name = _name(model, model_name)
    was_training = model.training
    model.eval()
    collected, diag_rows = _PairRows(), []
    try:
        for nid in runtime.progress(list(plan), progress, total=len(plan), desc=f"{method} {name}"):
            enc = model.tokenizer.encode(texts[nid])
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            items = plan[nid]
            for c0 in range(0, len(items), code_batch):
                chunk = items[c0:c0 + code_batch]
                res = explain_encoded(model, enc, [r for _, r in chunk], method, steps, device)
                for k, (code, _r) in enumerate(chunk):
                    sc = res["scores"][k]
                    if absolute:
                        sc = np.abs(sc)
                    collected.add(nid, code, source, method, name, offsets, sc)
                    if method == "integrated_gradients":
                        lx, lb = float(res["logits"][k]), float(res["baseline_logits"][k])
                        s = float(res["attribution_sum"][k])
                        diag_rows.append({
                            "note_id": nid, "code": code, "logit": lx, "baseline_logit": lb,
                            "attribution_sum": s, "delta": s - (lx - lb),
                            "rel_error": abs(s - (lx - lb)) / max(abs(lx - lb), 1e-6),
                        })
    finally:
        model.train(was_training)
    diagnostics = pd.DataFrame(diag_rows) if method == "integrated_gradients" else None
    return SoftResult(collected.table(), len(missing), missing, diagnostics)
