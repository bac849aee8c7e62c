"""Faithfulness measures that avoid out-of-distribution inputs (docs/method/faithfulness.md, which
cites the authors' repositories file by file):

- **Soft-NC / Soft-NS** (Zhao & Aletras 2023, code: github.com/casszhao/SoftFaith): instead of
  deleting the rationale's units, each element of a unit's input embedding is zeroed at random,
  kept with probability one minus its min-max normalised importance (comprehensiveness) or with
  that importance (sufficiency); the drop of the code's probability is normalised by the drop of
  an input whose every unit is the padding id, with the authors' epsilons
  (``src/common_code/metrics.py``: ``normalized_comprehensiveness_soft_``,
  ``normalized_sufficiency_soft_``).
- **F-Fidelity, probability form** (Zheng et al., ICLR 2025, code:
  github.com/AslanDing/Finetune-Fidelity): on a copy of the coder fine-tuned with random masking
  (:func:`rationale_kit.training.tradeoff.finetune_random_masking`), each unit of the rationale
  (FFid+) or of the rest (FFid-) is masked independently with probability
  ``min(alpha, beta * n / pool)`` (``code/evaluation_model.py``: ``ours_random_MoRF`` /
  ``ours_random_LeRF`` with ``use_max``); the authors score the label's correctness, this module
  the code's probability, hence the measure names ``ffid_plus_prob`` / ``ffid_minus_prob``.

The measures over probabilities are pure numpy functions; :func:`soft_scores` and
:func:`ffid_scores` run a model (torch imported on use).
"""
from __future__ import annotations

import zlib
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

#: The named measures of this module: the higher, the more comprehensive (``soft_nc``,
#: ``ffid_plus_prob``) or the more sufficient (``soft_ns``); ``ffid_minus_prob`` is a drop (lower =
#: more sufficient).
ROBUST_MEASURES = ("soft_nc", "soft_ns", "ffid_plus_prob", "ffid_minus_prob")
ROBUST_COLUMNS = ["note_id", "code", "source", "model", "measure", "value", "p", "p_zero", "n_units", "rationale_size"]

#: The authors' guards against a zero denominator (SoftFaith ``src/common_code/metrics.py``):
#: Soft-NS subtracts 1e-4 from ``S(x, 0)``; Soft-NC adds 1e-5 to ``S(x, 0)`` where ``1 - S(x, 0) == 0``.
SOFT_NS_EPS = 1e-4
SOFT_NC_EPS = 1e-5


def normalise_importance(scores: np.ndarray) -> np.ndarray:
    """Importance in [0, 1] as the authors' ``normal_importance(..., normalise=5)``: min-max over
    the note's units, ``(s - min) / (max - min)``; a constant vector (0/0 there, which their model
    wrapper turns into all zeros) gives all zeros. A span rationale's 0/1 mask with at least one
    0 is its own importance. Raises on NaN."""
    s = np.asarray(scores, dtype=float)
    if np.isnan(s).any():
        raise ValueError("importance has NaN entries")
    if not s.size:
        return s
    s = np.where(np.isneginf(s), -1.0, s)  # the authors set -inf (special / padding tokens) to -1
    lo, hi = s.min(), s.max()
    return (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)


def soft_keep(importance: np.ndarray, dim: int, rng: np.random.Generator, measure: str) -> np.ndarray:
    """A Bernoulli keep-mask ``[n, dim]`` over the embedding elements of ``n`` units: for
    ``"soft_nc"`` element ``(i, d)`` is kept with probability ``1 - importance_i`` (the rationale is
    softly removed), for ``"soft_ns"`` with probability ``importance_i`` (only it is softly kept)."""
    if measure not in ("soft_nc", "soft_ns"):
        raise ValueError(f"measure must be 'soft_nc' or 'soft_ns', got {measure!r}")
    p_keep = 1.0 - importance if measure == "soft_nc" else importance
    return rng.random((len(importance), dim)) < p_keep[:, None]


def _suff_zero(p: float, p_zero: float) -> float:
    """``S(x, 0) = 1 - max(0, p - p0)``: the sufficiency of the all-padding input."""
    return 1.0 - max(0.0, p - p_zero)


def soft_nc(p: float, p_perturbed: float, p_zero: float) -> float:
    """Soft-NC of one draw, as ``normalized_comprehensiveness_soft_``: ``C = max(0, p - p')`` over
    ``1 - S(x, 0)`` (``S(x, 0)`` raised by 1e-5 where that is 0), ``max(0, .)``, clipped to [0, 1].
    When the all-padding input does not lower ``p`` the denominator is ``-1e-5`` and the value 0."""
    s0 = _suff_zero(p, p_zero)
    if 1.0 - s0 == 0.0:
        s0 += SOFT_NC_EPS
    return float(np.clip(max(0.0, max(0.0, p - p_perturbed) / (1.0 - s0)), 0.0, 1.0))


def soft_ns(p: float, p_perturbed: float, p_zero: float) -> float:
    """Soft-NS of one draw, as ``normalized_sufficiency_soft_``: ``S(x, x') = 1 - max(0, p - p')``,
    ``S0 = S(x, 0) - 1e-4``, ``max(0, (S(x, x') - S0) / (1 - S0))`` clipped to [0, 1]."""
    s0 = _suff_zero(p, p_zero) - SOFT_NS_EPS
    s = 1.0 - max(0.0, p - p_perturbed)
    return float(np.clip(max(0.0, (s - s0) / (1.0 - s0)), 0.0, 1.0))


def ffid_ratio(pool: int, n: int, alpha: float, beta: float) -> float:
    """F-Fidelity's removal probability per unit of a pool of ``pool`` units in a note of ``n``
    (``ours_random_MoRF`` / ``ours_random_LeRF`` with ``use_max``): ``alpha``, lowered to
    ``beta * n / pool`` when ``pool * alpha > beta * n``, so that on average at most ``beta`` of the
    note is removed."""
    return beta * n / pool if pool * alpha > beta * n else alpha


def ffid_removals(support: np.ndarray, alpha: float, beta: float, samples: int, rng: np.random.Generator,
                  plus: bool) -> list[np.ndarray]:
    """F-Fidelity's stochastic removals over ``n`` units with the explanation ``support [n]``
    (bool): ``samples`` sets, each unit of the pool (the explanation for ``plus``, FFid+; the rest
    for FFid-) in a set independently with probability :func:`ffid_ratio` (a set may be empty: the
    unchanged note). An empty pool gives ``samples`` empty sets."""
    support = np.asarray(support, dtype=bool)
    pool = np.flatnonzero(support if plus else ~support)
    if not len(pool):
        return [pool.copy() for _ in range(samples)]
    ratio = ffid_ratio(len(pool), len(support), alpha, beta)
    # the authors keep a unit where a uniform draw exceeds the ratio: removed where it does not
    return [pool[~(rng.random(len(pool)) > ratio)] for _ in range(samples)]


def ffid(p: float, p_removed: Sequence[float]) -> float:
    """``p - mean(p_removed)``: the mean drop of the code's probability over the removals (NaN
    without removals); the authors' ``acc(x) - mean(acc(x - removal))`` with probabilities."""
    return float(p - np.mean(p_removed)) if len(p_removed) else float("nan")


def pair_rng(seed: int, note_id: str, code: str, tag: str) -> np.random.Generator:
    """The generator of one pair's draws (``tag``: the source; ``"ffid:" + source`` for F-Fidelity)."""
    return np.random.default_rng([seed, zlib.crc32(f"{note_id}\x00{code}\x00{tag}".encode())])


def _probs(model, embeds, mask, label: int):
    import torch

    with torch.no_grad():
        out = model.forward_from_embeddings(embeds, mask, torch.tensor([label], device=embeds.device))
    return torch.sigmoid(out.logits[:, 0].float()).cpu().numpy()


def soft_scores(model, texts: dict, rationales: Iterable[tuple[str, str, str, np.ndarray]], *, model_name: str,
                samples: int = 1, seed: int = 13, device="cpu") -> pd.DataFrame:
    """Soft-NC and Soft-NS of each rationale ``(note_id, code, source, importance [n units])``
    under ``model`` (a label-attention model, eval mode): ``samples`` Bernoulli masks of the input
    embeddings per measure (seeded per pair and source), each scored by :func:`soft_nc` /
    :func:`soft_ns` and the scores averaged (``samples=1``: the authors' single draw). ``p`` is the
    code's probability on the note, ``p_zero`` on the note with every unit the padding id (the
    authors' baseline: every input id 0). Columns :data:`ROBUST_COLUMNS`."""
    import torch

    model.eval()
    pad_id = int(model.tokenizer.pad_id)
    rows = []
    for note_id, code, source, imp in rationales:
        enc = model.tokenizer.encode(texts[note_id])
        ids, mask = model.collate([enc])
        ids, mask = ids.to(device), mask.to(device)
        label = model.labels.index(code)
        if len(imp) != len(enc):
            raise ValueError(f"{note_id}/{code}/{source}: importance over {len(imp)} units, the note has {len(enc)}")
        imp = normalise_importance(np.asarray(imp, dtype=float))
        with torch.no_grad():
            e = model.embed(ids)  # [1, T, D]
            e0 = model.embed(torch.full_like(ids, pad_id))
        p = float(_probs(model, e, mask, label)[0])
        p0 = float(_probs(model, e0, mask, label)[0])
        rng = pair_rng(seed, note_id, code, source)
        for measure, fn in (("soft_nc", soft_nc), ("soft_ns", soft_ns)):
            keep = np.stack([soft_keep(imp, e.shape[-1], rng, measure) for _ in range(samples)])  # [S, n, D]
            full = np.ones((samples, e.shape[1], e.shape[2]), dtype=bool)
            full[:, : len(imp)] = keep
            pert = e.expand(samples, -1, -1) * torch.from_numpy(full).to(e.device, e.dtype)
            pp = _probs(model, pert, mask.expand(samples, -1), label)  # [S]
            value = float(np.mean([fn(p, float(q), p0) for q in pp]))
            rows.append((note_id, code, source, model_name, measure, value, p, p0, len(imp), int((imp > 0).sum())))
    return pd.DataFrame(rows, columns=ROBUST_COLUMNS)


def ffid_scores(model, texts: dict, rationales: Iterable[tuple[str, str, str, np.ndarray]], *, model_name: str,
                alpha: float = 0.5, beta: float = 0.1, samples: int = 50, seed: int = 13, device="cpu") -> pd.DataFrame:
    """FFid+ and FFid- in probability form (``ffid_plus_prob`` / ``ffid_minus_prob``) of each
    rationale ``(note_id, code, source, importance [n units])`` (its support, importance > 0, is the
    explanation) under ``model``, the random-masking fine-tuned copy: the mean drop of the code's
    probability over :func:`ffid_removals` (units replaced by the tokenizer's mask id; the authors'
    defaults ``alpha`` 0.5, ``beta`` 0.1, 50 samples). Columns :data:`ROBUST_COLUMNS` (``p_zero`` NaN)."""
    import torch

    model.eval()
    mask_id = int(model.tokenizer.mask_id)
    rows = []
    for note_id, code, source, imp in rationales:
        enc = model.tokenizer.encode(texts[note_id])
        ids, mask = model.collate([enc])
        ids, mask = ids.to(device), mask.to(device)
        label = torch.tensor([model.labels.index(code)], device=device)
        support = np.asarray(imp, dtype=float) > 0
        if len(support) != len(enc):
            raise ValueError(f"{note_id}/{code}/{source}: importance over {len(support)} units, the note has {len(enc)}")
        with torch.no_grad():
            p = float(torch.sigmoid(model(ids, mask, label).logits[0, 0].float()))
        rng = pair_rng(seed, note_id, code, "ffid:" + source)
        for measure, plus in (("ffid_plus_prob", True), ("ffid_minus_prob", False)):
            removals = ffid_removals(support, alpha, beta, samples, rng, plus)
            probs = []
            if removals:
                batch = ids.expand(len(removals), -1).clone()
                for s, r in enumerate(removals):
                    batch[s, torch.from_numpy(r).to(device)] = mask_id
                with torch.no_grad():
                    probs = torch.sigmoid(model(batch, mask.expand(len(removals), -1), label).logits[:, 0].float()).cpu().numpy()
            rows.append((note_id, code, source, model_name, measure, ffid(p, probs), p, float("nan"), len(support), int(support.sum())))
    return pd.DataFrame(rows, columns=ROBUST_COLUMNS)
