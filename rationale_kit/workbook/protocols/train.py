"""Notebook 02's protocol: train a coding model with the profile's parameters, its predictions,
the coding table, and loading the trained models."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from rationale_kit.core.config import Profile


def fit_model(name: str, profile: Profile, docs: pd.DataFrame, labels: list[str], out_dir: Path,
              device: str = "cpu", rationale_targets: dict | None = None, lam: float = 0.0,
              loss: str = "kl", epochs: int | None = None, init_from: Path | None = None,
              max_train_docs: int | None = None):
    """Build (seeded) and train model ``name`` with the profile's parameters; resumable in
    ``out_dir``. ``init_from``: start from a saved model (a ``.../model`` folder) instead of a
    fresh one; ``max_train_docs`` replaces the profile's cap on training notes (``train.max_train_docs``
    and the model's own cap do not apply then). The checkpoint's key also holds what builds the
    starting model (the ``init_from`` model's hash, word2vec settings, ``data.max_words``) and the
    hash of the training code. Returns the :class:`~rationale_kit.training.TrainResult`; the best
    model is saved to ``out_dir / "model"``."""
    import dataclasses

    from rationale_kit import models, training

    params = getattr(profile.train, name)
    torch.manual_seed(profile.common.seed)
    train = docs[docs.split == "train"]
    cap = max_train_docs or params.max_train_docs or profile.train.max_train_docs
    if cap:
        train = train.head(cap)
    key = {"max_words": profile.data.max_words, "code": training_code_hash()}
    if init_from is not None:
        model, _ = models.load(init_from)
        key["init_from"] = saved_model_hash(init_from)
    else:
        w2v = profile.train.word2vec if name != "plm_icd" else None
        if w2v is not None and w2v.dim != params.embed_dim:
            w2v = type(w2v)(**{**w2v.__dict__, "dim": params.embed_dim})
        key["word2vec"] = dataclasses.asdict(w2v) if w2v is not None else None
        model = models.build_model(name, params, labels, train_texts=train.text, w2v=w2v,
                                   max_words=profile.data.max_words, seed=profile.common.seed)
    result = training.train_model(
        # the cap was applied above (train_model would cut again at train.max_train_docs)
        model, train, docs[docs.split == "val"], params, dataclasses.replace(profile.train, max_train_docs=None),
        out_dir, device=device, progress=profile.common.progress, rationale_targets=rationale_targets, lam=lam,
        rationale_loss=loss, epochs=epochs, seed=profile.common.seed, key=key,
    )
    models.save(result.model, Path(out_dir) / "model", threshold=result.threshold,
                extra={"best_epoch": result.best_epoch, "lam": lam, "loss": loss})
    return result


def saved_model_hash(folder: Path) -> str:
    """Hash of a saved model folder (its weights and configuration)."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(folder)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def training_code_hash() -> str:
    """Hash of the sources that determine a trained model (models, training, text units)."""
    pkg = Path(__file__).resolve().parents[2]  # rationale_kit/
    files = [*sorted((pkg / "models").rglob("*.py")), *sorted((pkg / "training").rglob("*.py")), pkg / "core" / "text.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def predictions(model, docs: pd.DataFrame, threshold: float, device: str = "cpu", batch_size: int = 16) -> pd.DataFrame:
    """Long table ``note_id, code, prob, pred, is_gold`` for every (note, label) of ``docs``."""
    from rationale_kit.training import predict_probs

    probs = predict_probs(model, docs, batch_size=batch_size, device=device)
    labels = np.array(model.labels)
    gold = [set(c) for c in docs.codes]
    rows = pd.DataFrame({
        "note_id": np.repeat(docs.note_id.to_numpy(), len(labels)),
        "code": np.tile(labels, len(docs)),
        "prob": probs.reshape(-1),
    })
    rows["pred"] = rows.prob > threshold
    rows["is_gold"] = [c in g for c, g in zip(rows.code, np.repeat(gold, len(labels)))]
    return rows


#: the coding measures whose mean and spread across seeds :func:`coding_seed_spread` reports
SEED_MEASURES = ("micro_f1", "macro_f1_mean", "map", "p@8", "r@15")


def seed_dirs(out_dir: Path, name: str, seeds: Sequence[int]) -> dict[int, Path]:
    """Where each training seed's run of model ``name`` lives: the first seed's in ``out_dir/name``
    (the model the rest of the series uses), every other in ``out_dir/<name>_seed<N>``."""
    return {s: Path(out_dir) / (name if i == 0 else f"{name}_seed{s}") for i, s in enumerate(seeds)}


def note_counts(y: np.ndarray, pred: np.ndarray, unseen: np.ndarray, note_ids: Sequence[str]) -> pd.DataFrame:
    """Per-note ``tp, fp, fn`` of the decisions ``pred [N, L]`` against ``y [N, L]``; the gold codes
    outside the label space (``unseen [N]``) are false negatives, as in micro-F1."""
    y, pred = y.astype(bool), pred.astype(bool)
    return pd.DataFrame({"tp": (y & pred).sum(1), "fp": (~y & pred).sum(1),
                         "fn": (y & ~pred).sum(1) + np.asarray(unseen)}, index=pd.Index(note_ids, name="note_id"))


def _with_interval(row: dict, y: np.ndarray, probs: np.ndarray, threshold: float, unseen: np.ndarray,
                   note_ids: Sequence[str], boot) -> dict:
    from rationale_kit.metrics.evaluation import interval

    iv = interval(note_counts(y, probs > threshold, unseen, note_ids), "f1", boot)
    return {**row, "micro_f1_lo": iv.lo, "micro_f1_hi": iv.hi, "notes": float(iv.n_notes)}


def coding_table(pred_frames: Mapping[str, pd.DataFrame], docs: pd.DataFrame, labels: list[str],
                 thresholds: Mapping[str, float], boot=None) -> pd.DataFrame:
    """The coding table on the test notes that carry their full code assignment (``full_codes``:
    on the MIMIC route the MIMIC-IV test documents, never MDACE's rationale evaluation documents):
    one row per model plus the frequency baseline.

    Test codes outside ``labels`` (no training document carries them) count as misses in micro
    recall/F1, R@k and R-precision; ``unseen_gold_share`` is their share of the gold occurrences
    (macro measures, mAP and AUC are over ``labels``). With ``boot`` (a
    :class:`~rationale_kit.metrics.evaluation.Bootstrap`), micro-F1 gets its percentile interval over
    the test notes (``micro_f1_lo``, ``micro_f1_hi``; counts summed over resampled notes) and
    ``notes`` their number."""
    from rationale_kit.data import coding_docs
    from rationale_kit.metrics import coding

    test = coding_docs(docs, "test")
    y = coding.label_matrix(test.codes, labels)
    unseen = coding.unseen_counts(test.codes, labels)
    rows = {}
    base = coding.frequency_baseline(docs.loc[docs.split == "train", "codes"], labels, len(test))
    val = coding_docs(docs, "val")
    base_val = coding.frequency_baseline(docs.loc[docs.split == "train", "codes"], labels, len(val))
    t_base, _ = coding.tune_threshold(coding.label_matrix(val.codes, labels), base_val)
    scored = {"frequency baseline": (base, t_base)}
    for name, frame in pred_frames.items():
        p = frame.pivot(index="note_id", columns="code", values="prob").reindex(index=test.note_id, columns=labels).to_numpy()
        scored[name] = (p, thresholds[name])
    for name, (p, t) in scored.items():
        rows[name] = coding.coding_report(y, p, t, unseen=unseen)
        if boot is not None:
            rows[name] = _with_interval(rows[name], y, p, t, unseen, list(test.note_id), boot)
    table = pd.DataFrame(rows).T
    keep = ["micro_f1", *(["micro_f1_lo", "micro_f1_hi"] if boot is not None else []), "micro_precision",
            "micro_recall", "macro_f1_mean", "macro_f1_harmonic", "p@5", "p@8", "r@8", "p@15", "r@15", "r_precision",
            "map", "micro_auc", "macro_auc", "threshold", "unseen_gold_share", *(["notes"] if boot is not None else [])]
    table = table[[k for k in keep if k in table.columns]]
    table["labels"] = float(len(labels))  # the label space (e.g. data.top_codes) beside every row
    return table.rename_axis("model")


def coding_seed_spread(tables: Mapping[int, pd.DataFrame], measures: Sequence[str] = SEED_MEASURES) -> pd.DataFrame:
    """Mean and sample standard deviation across training seeds of each model's coding measures.

    ``tables``: ``{seed: coding_table}`` (one :func:`coding_table` per seed; the first seed's has
    every model, a later seed's the models trained under it: ``train.seed_models``). Returns one row
    per model of the first table with ``seeds`` (the tables that have it) and ``<measure> mean`` /
    ``<measure> std`` (std NaN with one seed). The frequency baseline has no seed and is left out."""
    from rationale_kit.metrics.evaluation import seed_spread

    models_ = [m for m in next(iter(tables.values())).index if m != "frequency baseline"]
    rows = {}
    for m in models_:
        have = [t for t in tables.values() if m in t.index]
        row = {"seeds": float(len(have))}
        for measure in measures:
            mean, std = seed_spread([float(t.loc[m, measure]) for t in have])
            row[f"{measure} mean"], row[f"{measure} std"] = mean, std
        rows[m] = row
    return pd.DataFrame(rows).T.rename_axis("model")


def extra_seed_models(train_dir: Path, profile: Profile, names: Iterable[str] | None = None,
                      device: str = "cpu") -> dict:
    """The models notebook 02 trained under the seeds after the first (``{(name, seed): model}``,
    in eval mode; :func:`seed_dirs`): for each of ``names`` (default ``train.models``) the seeds of
    :func:`~rationale_kit.core.config.model_seeds` but the first. Empty with one seed."""
    from rationale_kit import models
    from rationale_kit.core.config import model_seeds

    out = {}
    for name in (names if names is not None else profile.train.models):
        seeds = model_seeds(profile, name)
        for seed, folder in list(seed_dirs(train_dir, name, seeds).items())[1:]:
            model, _ = models.load(Path(folder) / "model", device=device)
            model.eval()
            out[name, seed] = model
    return out


def load_models(train_dir: Path, names: Iterable[str], device: str = "cpu") -> dict:
    """Trained models saved by notebook 02 (``train_dir/<name>/model``), in eval mode."""
    from rationale_kit import models

    out = {}
    for name in names:
        model, info = models.load(Path(train_dir) / name / "model", device=device)
        model.eval()
        out[name] = model
    return out
