"""Training of the coding models (METHOD.md sections 3 and 7).

:func:`train_model` trains a model from :mod:`rationale_kit.models` on a documents table
(``note_id, text, codes``):

- BCE with logits, AdamW, linear warm-up (``warmup_ratio`` of the optimiser steps) then linear
  decay to 0, gradient accumulation (``grad_accum``) and clipping (``clip_norm``);
- notes are encoded once up front; batches are bucketed by length (the shuffled notes are cut into
  pools of 50 batches, each pool sorted by length, the batches shuffled), seeded by ``(seed,
  epoch)``;
- mixed precision (``torch.autocast``, bf16 where supported, else fp16 with a gradient scaler) on
  CUDA only when ``train_cfg.amp``; the label attention stays float32 (see models);
- validation after every epoch: mAP (the early-stopping and best-checkpoint criterion, ``patience``
  epochs without improvement stop training) and micro-F1 at the threshold tuned on the same
  validation predictions (``val_micro_f1`` in the history: an optimistic monitor, not a test
  figure);
- the decision threshold is tuned on validation with the best model (grid of ``threshold_grid``
  points over [0, 1], maximise micro-F1) on float32 probabilities (no autocast: the precision of
  the test predictions it is applied to) and saved with the model into ``out_dir/model``;
- a checkpoint after every epoch (``out_dir/checkpoint.pt``: model, optimiser, scheduler, scaler,
  RNG states, history, early-stopping state) keyed on everything that determines the result (every
  model parameter, the training settings, note ids, texts and codes of the training and validation
  notes, the teacher targets, the architecture, the seed, and the caller's ``key``: e.g. the
  starting model's hash). Calling :func:`train_model` again with the same ``out_dir`` and the same
  key resumes after the last finished epoch; on CPU the result equals an uninterrupted run's. A
  checkpoint with another key (or an unreadable one) is moved aside to ``checkpoint.stale.pt`` and
  training starts over, saying so in one line;
- a non-finite loss stops training with :class:`NonFiniteLoss` naming the epoch and step.

Guided learning (multi-objective): ``L = BCE + lam * L_rationale``. For each (note, gold code) pair
of the batch with teacher spans in ``rationale_targets[(note_id, code)]``, the teacher mask over the
model's units (``text.span_mask`` on the unit offsets), normalised to sum 1, is compared with that
label's attention row: ``"kl"`` = KL(mask || attention) (from the log-softmax of the scores), or
``"bce"`` = binary cross-entropy of the rescaled attention ``r = a n / (1 + a n)`` (``n`` units in
the note: 1/2 under uniform attention) against the binary mask, averaged over the note's units
(see :func:`attention_rationale_loss`). The loss is the mean over the
batch's pairs; batches without pairs add 0. Pairs whose spans lie beyond the model's maximum length
are dropped. With ``lam = 0`` the rationale loss is still computed and logged (no gradient).

Data-parallel training on several GPUs: run the same script on every GPU with a launcher; the
process group is set up from the launcher's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``)
and the model is wrapped in ``DistributedDataParallel`` (NCCL on CUDA, gloo on CPU)::

    torchrun --nproc_per_node 4 train_script.py
    accelerate launch --multi_gpu --num_processes 4 train_script.py

Each process takes every ``world``-th batch of the same seeded batch list (the effective batch is
``batch_size * grad_accum * world``; the last ``len % world`` batches of an epoch are dropped),
validation runs on every process and rank 0's metrics decide, rank 0 writes the checkpoints and the
model. Without a launcher (``WORLD_SIZE`` unset or 1) nothing of this is active.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from rationale_kit.core.config import ModelParams, Train
from rationale_kit.metrics.coding import coding_report, label_matrix, mean_average_precision, tune_threshold
from rationale_kit.models import Encoded, LabelAttentionModel, save
from rationale_kit.core.runtime import pick_device, progress as progress_bar
from rationale_kit.core.text import span_mask

__all__ = [
    "HISTORY_COLUMNS", "NonFiniteLoss", "TrainResult", "attention_rationale_loss", "make_batches",
    "predict_probs", "rationale_pairs", "train_model",
]

HISTORY_COLUMNS = ["epoch", "train_loss", "coding_loss", "rationale_loss", "val_map", "val_micro_f1", "seconds"]
BUCKET_BATCHES = 50


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and the step."""


@dataclass(frozen=True)
class TrainResult:
    """The best model (with ``model.threshold`` set), the per-epoch ``history`` (columns
    :data:`HISTORY_COLUMNS`), the tuned ``threshold``, the validation metrics of the best model at
    that threshold, ``best_epoch`` (1-based), and ``timing`` of the epochs run by this call
    (``loop_seconds``, ``data_seconds`` (encoding excluded: batch selection, collation, copies),
    ``compute_seconds`` (forward, losses, backward, optimiser), ``val_seconds``, ``steps``,
    ``docs``, ``units``)."""

    model: LabelAttentionModel
    history: pd.DataFrame
    threshold: float
    val_metrics: dict
    best_epoch: int
    timing: dict = field(default_factory=dict)
    out_dir: Path | None = None


# --------------------------------------------------------------------------------------------
# distributed context
# --------------------------------------------------------------------------------------------
class _Dist:
    """Data-parallel context from a launcher's environment; a no-op in a single process."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0")) if self.world > 1 else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0")) if self.world > 1 else 0
        dev = torch.device(pick_device(device) if device in ("auto", "cuda") else device)
        if self.world > 1:
            import torch.distributed as td

            if dev.type == "cuda":
                torch.cuda.set_device(self.local_rank)
                dev = torch.device("cuda", self.local_rank)
            if not td.is_initialized():
                td.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        self.device = dev

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        if not self.active:
            return [obj]
        out: list = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def any_flag(self, flag: bool) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t)
        return bool(t.item() > 0)

    def shard(self, batches: list) -> list:
        if not self.active:
            return batches
        n = len(batches) // self.world * self.world
        if n == 0:
            raise ValueError(f"{len(batches)} batches cannot be shared by {self.world} processes")
        return batches[self.rank : n : self.world]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def make_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                 bucket_batches: int = BUCKET_BATCHES) -> list[np.ndarray]:
    """Length-bucketed batches: shuffle, cut into pools of ``bucket_batches`` batches, sort each
    pool by length (longest first), cut into batches, shuffle the batches."""
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    pool = batch_size * bucket_batches
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def _encode(model: LabelAttentionModel, texts: Iterable[str], enabled: bool, desc: str) -> list[Encoded]:
    texts = list(texts)
    return [model.tokenizer.encode(t) for t in progress_bar(texts, enabled=enabled and len(texts) > 200, desc=desc)]


def rationale_pairs(
    model: LabelAttentionModel,
    docs: pd.DataFrame,
    encoded: Sequence[Encoded],
    targets: dict[tuple[str, str], list[tuple[int, int]]] | None,
) -> list[list[tuple[int, np.ndarray]]]:
    """For each document: ``(label index, selected unit indices)`` of its gold codes that have
    teacher spans covering at least one of the model's units."""
    out: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(len(docs))]
    if not targets:
        return out
    index = model.label_index
    for i, (nid, codes) in enumerate(zip(docs["note_id"], docs["codes"])):
        for code in dict.fromkeys(codes):
            j = index.get(code)
            spans = targets.get((str(nid), code)) if j is not None else None
            if not spans:
                continue
            units = np.flatnonzero(span_mask(encoded[i].offsets, spans))
            if len(units):
                out[i].append((j, units))
    return out


def attention_rationale_loss(
    attention: torch.Tensor,
    target: torch.Tensor,
    kind: Literal["kl", "bce"] = "kl",
    log_attention: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rationale loss of attention rows ``[P, T]`` against teacher masks ``target [P, T]``.

    ``"kl"``: ``target`` is normalised to sum 1 per row (``m``) and the loss is
    ``sum_t m_t (log m_t - log a_t)`` (``log_attention`` if given, else ``log(attention)``).
    ``"bce"``: binary cross-entropy of the rescaled attention ``r_t = a_t n / (1 + a_t n)`` (``n``
    = the row's number of ``valid`` units, default all; ``r`` is 1/2 under uniform attention and
    tends to 1 on units given much more than their share) against the binary mask ``target > 0``,
    averaged over the valid units (computed from ``log a`` as a logit, so it never saturates).
    Returns the mean over the ``P`` rows.
    """
    target = target.float()
    if kind == "kl":
        m = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
        log_a = log_attention if log_attention is not None else torch.log(attention.clamp_min(1e-30))
        pos = m > 0
        terms = torch.where(pos, m * (torch.log(torch.where(pos, m, torch.ones_like(m))) - log_a), torch.zeros_like(m))
        return terms.sum(-1).mean()
    if kind == "bce":
        if valid is None:
            valid = torch.ones_like(target, dtype=torch.bool)
        valid = valid.to(torch.bool)
        log_a = log_attention if log_attention is not None else torch.log(attention.clamp_min(1e-30))
        n = valid.sum(-1, keepdim=True).clamp_min(1).float()
        # rescaled attention r = a n / (1 + a n), i.e. logit(r) = log a + log n: 1/2 for uniform
        # attention, -> 1 where the unit gets much more than its share, -> 0 where much less
        logit = torch.where(valid, log_a + torch.log(n), torch.zeros_like(log_a))
        bce = F.binary_cross_entropy_with_logits(logit, (target > 0).float(), reduction="none") * valid
        return (bce.sum(-1) / n.squeeze(-1)).mean()
    raise ValueError(f"rationale_loss must be 'kl' or 'bce', got {kind!r}")


def param_groups(model: torch.nn.Module, params) -> list[dict]:
    """AdamW groups: a pretrained ``encoder`` at ``params.lr``, everything else at ``params.head_lr``
    (default ``lr``); frozen parameters are left out."""
    enc, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (enc if name.startswith("encoder.") else rest).append(p)
    head_lr = params.head_lr if params.head_lr is not None else params.lr
    return [g for g in ({"params": enc, "lr": params.lr}, {"params": rest, "lr": head_lr}) if g["params"]]


def _schedule(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _unwrap(model: torch.nn.Module) -> LabelAttentionModel:
    return getattr(model, "module", model)  # type: ignore[return-value]


def _docs_hash(docs: pd.DataFrame) -> str:
    """Note ids, codes and texts (in order)."""
    h = hashlib.sha256()
    for nid, codes, text in zip(docs["note_id"], docs["codes"], docs["text"]):
        h.update(f"{nid}\t{','.join(codes)}\t{len(str(text))}\n".encode())
        h.update(hashlib.sha256(str(text).encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()[:16]


def _plain(value: Any) -> Any:
    """JSON-like form of a config value (for checkpoint keys)."""
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _use_amp(train_cfg: Train, device: torch.device) -> bool:
    """Mixed precision is used for training on CUDA only."""
    return bool(train_cfg.amp) and device.type == "cuda"


def _targets_hash(targets: dict | None) -> str:
    if not targets:
        return ""
    h = hashlib.sha256()
    for key in sorted(targets):
        h.update(f"{key}\t{sorted(targets[key])}\n".encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def _predict_encoded(model: LabelAttentionModel, encoded: Sequence[Encoded], batch_size: int,
                     device: torch.device, amp_dtype: torch.dtype | None = None) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = np.zeros((len(encoded), model.num_labels), dtype=np.float32)
    order = np.argsort([-len(e) for e in encoded], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = model.collate([encoded[i] for i in idx])
        ctx = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            logits = model(ids.to(device), mask.to(device)).logits
        out[idx] = torch.sigmoid(logits.float()).cpu().numpy()
    model.train(was_training)
    return out


def predict_probs(
    model: LabelAttentionModel,
    docs: pd.DataFrame | Sequence[str],
    batch_size: int = 16,
    device: str = "cpu",
    amp: bool = False,
) -> np.ndarray:
    """Probabilities ``[N, L]`` (float32) of ``model`` for the notes of ``docs`` (a table with a
    ``text`` column, or a list of texts), in their order. ``amp`` uses autocast on CUDA."""
    texts = list(docs["text"]) if isinstance(docs, pd.DataFrame) else list(docs)
    dev = torch.device(pick_device(device) if device == "auto" else device)
    model.to(dev)
    encoded = [model.tokenizer.encode(t) for t in texts]
    amp_dtype = _amp_dtype(dev) if amp else None
    return _predict_encoded(model, encoded, batch_size, dev, amp_dtype)


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _key_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["params.dropout: 0.0 -> 0.9", ...]``: the entries of two checkpoint keys that differ."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _key_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a} -> {b}")
    return out


def _matching_checkpoint(path: Path, fingerprint: dict, n_epochs: int, dist: "_Dist", show: bool) -> dict | None:
    """The checkpoint at ``path`` when its key equals ``fingerprint`` (a finished data-parallel run
    is also reused by a single process); otherwise ``None`` after moving it (and the best model of
    that run) aside, with one line saying why."""
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        old = ckpt["fingerprint"]
        done = ckpt["state"].get("stopped") or ckpt["state"].get("epoch", 0) >= n_epochs
        diff = _key_diff(old, fingerprint)
        if diff and done and all(d.startswith("world:") for d in diff):
            # a finished data-parallel run (torchrun/accelerate) reused by one process: nothing is
            # trained again, so the process count does not matter
            diff = []
        why = "its key differs: " + "; ".join(diff[:4]) + (f"; +{len(diff) - 4} more" if len(diff) > 4 else "")
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is replaced, never trusted
        ckpt, diff, why = None, ["unreadable"], f"it is unreadable ({type(exc).__name__}: {exc})"
    if not diff:
        return ckpt
    dist.barrier()
    if dist.main:
        os.replace(path, path.with_name("checkpoint.stale.pt"))
        (path.parent / "best_model.pt").unlink(missing_ok=True)
    dist.barrier()
    if show:
        print(f"{path}: starting over, {why} (the old checkpoint is kept as checkpoint.stale.pt)")
    return None


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def train_model(
    model: LabelAttentionModel,
    train_docs: pd.DataFrame,
    val_docs: pd.DataFrame,
    params: ModelParams,
    train_cfg: Train,
    out_dir: str | os.PathLike,
    device: str = "cpu",
    progress: bool = True,
    rationale_targets: dict[tuple[str, str], list[tuple[int, int]]] | None = None,
    lam: float = 0.0,
    rationale_loss: Literal["kl", "bce"] = "kl",
    epochs: int | None = None,
    *,
    seed: int = 13,
    callback: Callable[[dict], None] | None = None,
    key: dict | None = None,
) -> TrainResult:
    """Train ``model`` (see the module docstring); returns a :class:`TrainResult`.

    ``epochs`` overrides ``params.epochs``; ``seed`` seeds python/numpy/torch at the start of a new
    run and the batch order of each epoch; ``callback`` (optional) is called with
    ``{"event": "step" | "epoch", "epoch", "step", "loss", ...}`` after every batch and epoch;
    ``key`` (JSON-like) adds what else determines the result to the checkpoint's key (the starting
    model, the vocabulary settings, ...).
    """
    if rationale_loss not in ("kl", "bce"):
        raise ValueError(f"rationale_loss must be 'kl' or 'bce', got {rationale_loss!r}")
    for name, frame in (("train_docs", train_docs), ("val_docs", val_docs)):
        missing = [c for c in ("note_id", "text", "codes") if c not in frame.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {missing}")
    if len(val_docs) == 0 or len(train_docs) == 0:
        raise ValueError("train_model needs non-empty train_docs and val_docs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dist = _Dist(device)
    dev = dist.device
    show = progress and dist.main
    n_epochs = int(epochs if epochs is not None else params.epochs)
    if train_cfg.max_train_docs is not None:
        train_docs = train_docs.iloc[: train_cfg.max_train_docs]
    train_docs = train_docs.reset_index(drop=True)
    val_docs = val_docs.reset_index(drop=True)

    labels = model.labels
    y_train = label_matrix(train_docs["codes"], labels).astype(np.float32)
    y_val = label_matrix(val_docs["codes"], labels)
    enc_train = _encode(model, train_docs["text"], show, f"encode {model.name} train")
    enc_val = _encode(model, val_docs["text"], show, f"encode {model.name} val")
    lengths = np.array([len(e) for e in enc_train])
    pairs = rationale_pairs(model, train_docs, enc_train, rationale_targets)
    use_rationales = any(pairs)

    model.to(dev)
    use_amp = _use_amp(train_cfg, dev)
    amp_dtype = _amp_dtype(dev) if use_amp else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    optimizer = torch.optim.AdamW(param_groups(model, params), lr=params.lr, weight_decay=params.weight_decay)
    n_batches = len(dist.shard(list(range(int(math.ceil(len(enc_train) / params.batch_size))))))
    accum = max(1, int(params.grad_accum))
    steps_per_epoch = int(math.ceil(n_batches / accum))
    total_steps = steps_per_epoch * n_epochs
    warmup = int(round(train_cfg.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(warmup, total_steps))

    fingerprint = {
        "model": model.name, "labels": hashlib.sha256("\n".join(labels).encode()).hexdigest()[:16],
        "train": _docs_hash(train_docs), "val": _docs_hash(val_docs), "epochs": n_epochs,
        "params": _plain(params), "grad_accum": accum,
        "train_cfg": {k: _plain(getattr(train_cfg, k)) for k in ("warmup_ratio", "clip_norm", "amp", "threshold_grid")},
        "amp_dtype": str(amp_dtype), "seed": seed, "lam": float(lam), "rationale_loss": rationale_loss,
        "targets": _targets_hash(rationale_targets), "world": dist.world,
        # the architecture and vocabulary: a checkpoint of another code version is not resumed
        "shapes": hashlib.sha256(repr(sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())).encode()).hexdigest()[:16],
        "key": _plain(key or {}),
    }
    ckpt_path = out_dir / "checkpoint.pt"
    best_path = out_dir / "best_model.pt"
    state = {"epoch": 0, "history": [], "best_score": None, "best_epoch": 0, "bad_epochs": 0, "stopped": False}
    ckpt = _matching_checkpoint(ckpt_path, fingerprint, n_epochs, dist, show=dist.main)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt["rng"]
        _set_rng_state(rng[dist.rank] if len(rng) == dist.world else rng[0])
        state = ckpt["state"]
        if show:
            print(f"{ckpt_path}: resuming after epoch {state['epoch']} of {n_epochs}" +
                  (" (finished: nothing to train)" if state["stopped"] or state["epoch"] >= n_epochs else ""))
    else:
        random.seed(seed + dist.rank)
        np.random.seed(seed + dist.rank)
        torch.manual_seed(seed + dist.rank)
    net = dist.wrap(model)

    timing = {"loop_seconds": 0.0, "data_seconds": 0.0, "compute_seconds": 0.0, "val_seconds": 0.0,
              "steps": 0, "docs": 0, "units": 0}
    want_log = use_rationales
    for epoch in range(state["epoch"] + 1, n_epochs + 1):
        if state["stopped"]:
            break
        t_epoch = time.perf_counter()
        model.train()
        batches = dist.shard(make_batches(lengths, params.batch_size, np.random.default_rng([seed, epoch])))
        sums = {"loss": 0.0, "coding": 0.0, "rationale": 0.0, "n": 0, "n_rat": 0}
        bar = progress_bar(batches, enabled=show, desc=f"{model.name} epoch {epoch}/{n_epochs}")
        optimizer.zero_grad(set_to_none=True)
        t_loop = time.perf_counter()
        for step, batch in enumerate(bar, 1):
            t0 = time.perf_counter()
            group_start = (step - 1) // accum * accum
            group_size = min(accum, len(batches) - group_start)
            last_in_group = step - group_start == group_size
            ids, mask = model.collate([enc_train[i] for i in batch])
            ids = ids.to(dev, non_blocking=True)
            mask = mask.to(dev, non_blocking=True)
            y = torch.from_numpy(y_train[batch]).to(dev, non_blocking=True)
            rows = None
            if use_rationales:
                rb, rl, units = [], [], []
                for r, i in enumerate(batch):
                    for j, u in pairs[i]:
                        rb.append(r)
                        rl.append(j)
                        units.append(u)
                if rb:
                    tgt = np.zeros((len(rb), ids.shape[1]), dtype=np.float32)
                    for p, u in enumerate(units):
                        tgt[p, u] = 1.0
                    rows = (torch.tensor(rb, device=dev), torch.tensor(rl, device=dev))
                    target = torch.from_numpy(tgt).to(dev, non_blocking=True)
            t1 = time.perf_counter()
            timing["data_seconds"] += t1 - t0
            sync = (contextlib.nullcontext() if (last_in_group or not dist.active) else net.no_sync())
            with sync:
                amp_ctx = torch.autocast(dev.type, dtype=amp_dtype) if use_amp else contextlib.nullcontext()
                with amp_ctx:
                    out = net(ids, mask, None, rows if (rows is not None and want_log) else False)
                coding = F.binary_cross_entropy_with_logits(out.logits.float(), y)
                loss = coding
                rat = None
                if rows is not None:
                    with (contextlib.nullcontext() if lam > 0 else torch.no_grad()):
                        att = out.attention[rows[0], rows[1]]
                        valid = mask[rows[0]]
                        rat = attention_rationale_loss(att, target, rationale_loss, out.log_attention, valid)
                    if lam > 0:
                        loss = coding + lam * rat
                loss_value = float(loss.detach())
                bad = not math.isfinite(loss_value)
                if dist.any_flag(bad):
                    raise NonFiniteLoss(
                        f"{model.name}: non-finite training loss ({loss_value}) at epoch {epoch}, step "
                        f"{step} of {len(batches)} (coding loss {float(coding.detach())}); try a lower "
                        "learning rate, amp: false, or check the inputs"
                    )
                backward = loss / group_size
                if scaler is not None:
                    scaler.scale(backward).backward()
                else:
                    backward.backward()
            if last_in_group:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if train_cfg.clip_norm and train_cfg.clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.clip_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            timing["compute_seconds"] += time.perf_counter() - t1
            timing["steps"] += 1
            timing["docs"] += len(batch)
            timing["units"] += int(lengths[batch].sum())
            sums["loss"] += loss_value
            sums["coding"] += float(coding.detach())
            sums["n"] += 1
            if rat is not None:
                sums["rationale"] += float(rat.detach())
                sums["n_rat"] += 1
            if show and step % 10 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.4f}", refresh=False)
            if callback is not None:
                callback({"event": "step", "epoch": epoch, "step": step, "loss": loss_value})
        timing["loop_seconds"] += time.perf_counter() - t_loop
        if hasattr(bar, "close"):
            bar.close()

        t_val = time.perf_counter()
        val_probs = _predict_encoded(model, enc_val, max(1, params.batch_size * 2), dev, amp_dtype)
        val_map = mean_average_precision(y_val, val_probs)
        _, val_f1 = tune_threshold(y_val, val_probs, train_cfg.threshold_grid)
        val_map, val_f1 = dist.broadcast((val_map, val_f1))
        timing["val_seconds"] += time.perf_counter() - t_val
        row = {
            "epoch": epoch,
            "train_loss": sums["loss"] / max(1, sums["n"]),
            "coding_loss": sums["coding"] / max(1, sums["n"]),
            "rationale_loss": sums["rationale"] / sums["n_rat"] if sums["n_rat"] else float("nan"),
            "val_map": val_map,
            "val_micro_f1": val_f1,
            "seconds": time.perf_counter() - t_epoch,
        }
        state["history"].append(row)
        score = val_map if math.isfinite(val_map) else None
        improved = state["best_score"] is None or (score is not None and score > state["best_score"])
        if improved:
            state["best_score"] = score if score is not None else state["best_score"]
            state["best_epoch"] = epoch
            state["bad_epochs"] = 0
            if dist.main:
                _atomic_save(model.state_dict(), best_path)
        else:
            state["bad_epochs"] += 1
            if state["bad_epochs"] >= params.patience:
                state["stopped"] = True
        state["epoch"] = epoch
        rng = dist.gather(_rng_state())
        if dist.main:
            _atomic_save(
                {
                    "fingerprint": fingerprint,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": rng,
                    "state": state,
                },
                ckpt_path,
            )
            pd.DataFrame(state["history"], columns=HISTORY_COLUMNS).to_csv(out_dir / "history.csv", index=False)
        dist.barrier()
        if callback is not None:
            callback({"event": "epoch", "epoch": epoch, **row})
        if show:
            print(
                f"{model.name} epoch {epoch}: loss {row['train_loss']:.4f} val mAP {val_map:.4f} "
                f"val micro-F1 {val_f1:.4f} ({row['seconds']:.0f}s)"
                + (" - early stop" if state["stopped"] else "")
            )

    # best model, threshold, final save
    if best_path.exists():
        model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True))
    model.to(dev)
    # float32, as the test predictions the threshold is applied to (bf16 probabilities differ)
    val_probs = _predict_encoded(model, enc_val, max(1, params.batch_size * 2), dev, None)
    threshold, _ = tune_threshold(y_val, val_probs, train_cfg.threshold_grid)
    threshold = dist.broadcast(threshold)
    val_metrics = coding_report(y_val, val_probs, threshold)
    model.threshold = threshold
    model.eval()
    history = pd.DataFrame(state["history"], columns=HISTORY_COLUMNS)
    if dist.main:
        save(model, out_dir / "model", threshold=threshold,
             extra={"best_epoch": state["best_epoch"], "val_metrics": val_metrics,
                    "history": history.drop(columns="seconds").to_dict("records"),
                    "lam": float(lam), "rationale_loss": rationale_loss, "seed": seed})
    dist.barrier()
    return TrainResult(model=model, history=history, threshold=threshold, val_metrics=val_metrics,
                       best_epoch=int(state["best_epoch"]), timing=timing, out_dir=out_dir)
