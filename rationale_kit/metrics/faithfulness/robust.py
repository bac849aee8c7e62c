"""Faithfulness measures that avoid out-of-distribution inputs (docs/method/faithfulness.md):

- **Soft-NC / Soft-NS** (Zhao & Aletras 2023): instead of deleting the rationale's units, each
  element of a unit's input embedding is zeroed at random in proportion to its importance
  (comprehensiveness) or to one minus it (sufficiency), and the drop in the code's probability is
  normalised by the drop an all-zero input gives (Carton et al. 2020's NC / NS).
- **F-Fidelity** (Zheng et al., ICLR 2025): on a copy of the coder fine-tuned with random masking
  (:func:`rationale_kit.training.tradeoff.finetune_random_masking`), at most a fraction ``beta`` of
  the note's units is masked, drawn at random from the rationale (FFid+) or from the rest (FFid-).

The measures over probabilities are pure numpy functions; :func:`soft_scores` and
:func:`ffid_scores` run a model (torch imported on use).
"""
from __future__ import annotations

import math
import zlib
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

#: The named measures of this module: the higher, the more comprehensive (``soft_nc``,
#: ``ffid_plus``) or the more sufficient (``soft_ns``); ``ffid_minus`` is a drop (lower = more sufficient).
ROBUST_MEASURES = ("soft_nc", "soft_ns", "ffid_plus", "ffid_minus")
ROBUST_COLUMNS = ["note_id", "code", "source", "model", "measure", "value", "p", "p_zero", "n_units", "rationale_size"]


def normalise_importance(scores: np.ndarray) -> np.ndarray:
    """Importance in [0, 1]: negative scores count as 0, the rest divided by the largest (all
    zero when nothing is positive). A span rationale's 0/1 mask is its own importance."""
    s = np.clip(np.nan_to_num(np.asarray(scores, dtype=float)), 0.0, None)
    top = s.max() if s.size else 0.0
    return s / top if top > 0 else s


def soft_keep(importance: np.ndarray, dim: int, rng: np.random.Generator, measure: str) -> np.ndarray:
    """A Bernoulli keep-mask ``[n, dim]`` over the embedding elements of ``n`` units: for
    ``"soft_nc"`` element ``(i, d)`` is kept with probability ``1 - importance_i`` (the rationale is
    softly removed), for ``"soft_ns"`` with probability ``importance_i`` (only it is softly kept)."""
    if measure not in ("soft_nc", "soft_ns"):
        raise ValueError(f"measure must be 'soft_nc' or 'soft_ns', got {measure!r}")
    p_keep = 1.0 - importance if measure == "soft_nc" else importance
    return rng.random((len(importance), dim)) < p_keep[:, None]


def soft_nc(p: float, p_perturbed: float, p_zero: float) -> float:
    """Normalised comprehensiveness ``max(0, p - p') / max(0, p - p0)`` clipped to [0, 1]: the drop
    of the code's probability when the rationale is (softly) removed, over the drop for an all-zero
    input (``1 - S(x, 0)``); NaN when the all-zero input does not lower the probability."""
    den = max(0.0, p - p_zero)
    if den <= 0:
        return float("nan")
    return float(min(1.0, max(0.0, p - p_perturbed) / den))


def soft_ns(p: float, p_perturbed: float, p_zero: float) -> float:
    """Normalised sufficiency ``(S(x, x') - S(x, 0)) / (1 - S(x, 0))`` with ``S(x, x') = 1 - max(0,
    p - p')``, i.e. ``(max(0, p - p0) - max(0, p - p')) / max(0, p - p0)``, clipped to [0, 1]:
    1 when keeping (softly) only the rationale loses nothing, 0 when it loses as much as an empty
    input; NaN when the all-zero input does not lower the probability."""
    den = max(0.0, p - p_zero)
    if den <= 0:
        return float("nan")
    return float(min(1.0, max(0.0, (den - max(0.0, p - p_perturbed)) / den)))


def ffid_removals(support: np.ndarray, beta: float, samples: int, rng: np.random.Generator,
                  plus: bool) -> list[np.ndarray]:
    """F-Fidelity's stochastic removals over ``n`` units with the rationale ``support [n]`` (bool):
    ``samples`` random sets of ``min(ceil(beta * n), pool size)`` units drawn without replacement
    from the rationale (``plus``, FFid+) or from the units outside it (FFid-); none when the pool
    is empty."""
    support = np.asarray(support, dtype=bool)
    pool = np.flatnonzero(support if plus else ~support)
    if not len(pool):
        return []
    m = min(len(pool), max(1, int(math.ceil(beta * len(support) - 1e-9))))
    return [np.sort(rng.choice(pool, size=m, replace=False)) for _ in range(samples)]


def ffid(p: float, p_removed: Sequence[float]) -> float:
    """``p - mean(p_removed)``: the mean drop of the code's probability over the removals (NaN
    without removals)."""
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
                samples: int = 10, seed: int = 13, device="cpu") -> pd.DataFrame:
    """Soft-NC and Soft-NS of each rationale ``(note_id, code, source, importance [n units])``
    under ``model`` (a label-attention model, eval mode): ``samples`` Bernoulli masks of the input
    embeddings per measure (seeded per pair and source), the probabilities averaged before the
    normalisation (``p`` the note's, ``p_zero`` the all-zero input's). Columns :data:`ROBUST_COLUMNS`."""
    import torch

    model.eval()
    rows = []
    for note_id, code, source, imp in rationales:
        enc = model.tokenizer.encode(texts[note_id])
        ids, mask = model.collate([enc])
        ids, mask = ids.to(device), mask.to(device)
        label = model.labels.index(code)
        with torch.no_grad():
            e = model.embed(ids)  # [1, T, D]
        imp = normalise_importance(np.asarray(imp, dtype=float))
        if len(imp) != len(enc):
            raise ValueError(f"{note_id}/{code}/{source}: importance over {len(imp)} units, the note has {len(enc)}")
        p = float(_probs(model, e, mask, label)[0])
        p0 = float(_probs(model, torch.zeros_like(e), mask, label)[0])
        rng = pair_rng(seed, note_id, code, source)
        for measure, fn in (("soft_nc", soft_nc), ("soft_ns", soft_ns)):
            keep = np.stack([soft_keep(imp, e.shape[-1], rng, measure) for _ in range(samples)])  # [S, n, D]
            full = np.ones((samples, e.shape[1], e.shape[2]), dtype=bool)
            full[:, : len(imp)] = keep
            pert = e.expand(samples, -1, -1) * torch.from_numpy(full).to(e.device, e.dtype)
            pp = float(_probs(model, pert, mask.expand(samples, -1), label).mean())
            rows.append((note_id, code, source, model_name, measure, fn(p, pp, p0), p, p0, len(imp), int((imp > 0).sum())))
    return pd.DataFrame(rows, columns=ROBUST_COLUMNS)


def ffid_scores(model, texts: dict, rationales: Iterable[tuple[str, str, str, np.ndarray]], *, model_name: str,
                beta: float = 0.1, samples: int = 10, seed: int = 13, device="cpu") -> pd.DataFrame:
    """FFid+ and FFid- of each rationale ``(note_id, code, source, importance [n units])`` (its
    support, importance > 0, is the explanation) under ``model``, the random-masking fine-tuned
    copy: the mean drop of the code's probability over :func:`ffid_removals` (units replaced by
    the tokenizer's mask id). Columns :data:`ROBUST_COLUMNS` (``p_zero`` NaN)."""
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
        for measure, plus in (("ffid_plus", True), ("ffid_minus", False)):
            removals = ffid_removals(support, beta, samples, rng, plus)
            probs = []
            if removals:
                batch = ids.expand(len(removals), -1).clone()
                for s, r in enumerate(removals):
                    batch[s, torch.from_numpy(r).to(device)] = mask_id
                with torch.no_grad():
                    probs = torch.sigmoid(model(batch, mask.expand(len(removals), -1), label).logits[:, 0].float()).cpu().numpy()
            rows.append((note_id, code, source, model_name, measure, ffid(p, probs), p, float("nan"), len(support), int(support.sum())))
    return pd.DataFrame(rows, columns=ROBUST_COLUMNS)
