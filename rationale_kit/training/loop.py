"""The training loop of the coding models (:func:`train_model`): BCE plus the guided-learning
rationale loss, AdamW with warm-up and linear decay, length-bucketed batches, mixed precision on
CUDA, validation and early stopping after every epoch, resumable checkpoints and data-parallel
training under a launcher. See docs/method/training.md.
"""
from __future__ import annotations

import contextlib
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
from rationale_kit.core.runtime import progress as progress_bar
from rationale_kit.metrics.coding import coding_report, label_matrix, mean_average_precision, tune_threshold
from rationale_kit.models import Encoded, LabelAttentionModel, save
from rationale_kit.training.checkpoints import (
    atomic_save, checkpoint_contents, docs_hash, labels_hash, matching_checkpoint, plain, restore_checkpoint,
    rng_state, shapes_hash, targets_hash,
)
from rationale_kit.training.distributed import Dist
from rationale_kit.training.losses import attention_rationale_loss, teacher_units
from rationale_kit.training.predict import amp_dtype, predict_encoded

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
# batches and optimiser
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


def _use_amp(train_cfg: Train, device: torch.device) -> bool:
    """Mixed precision is used for training on CUDA only."""
    return bool(train_cfg.amp) and device.type == "cuda"


def _encode(model: LabelAttentionModel, texts: Iterable[str], enabled: bool, desc: str) -> list[Encoded]:
    texts = list(texts)
    return [model.tokenizer.encode(t) for t in progress_bar(texts, enabled=enabled and len(texts) > 200, desc=desc)]


# --------------------------------------------------------------------------------------------
# the parts of a run
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    """What :func:`train_model` was asked for, besides the model and the notes."""

    params: ModelParams
    train_cfg: Train
    out_dir: Path
    n_epochs: int
    seed: int
    lam: float
    rationale_loss: str
    targets: dict | None
    key: dict | None
    show: bool
    callback: Callable[[dict], None] | None

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best_model.pt"


@dataclass(frozen=True)
class _Data:
    """The notes of a run, encoded once: labels ``y_*`` ``[N, L]``, units per training note
    ``lengths [N]`` and the teacher units of each training note (``pairs``)."""

    train_docs: pd.DataFrame
    val_docs: pd.DataFrame
    y_train: np.ndarray
    y_val: np.ndarray
    enc_train: list[Encoded]
    enc_val: list[Encoded]
    lengths: np.ndarray
    pairs: list[list[tuple[int, np.ndarray]]]

    @property
    def use_rationales(self) -> bool:
        return any(self.pairs)


@dataclass(frozen=True)
class _Optim:
    """Optimiser, schedule and mixed precision of a run."""

    use_amp: bool
    amp_dtype: torch.dtype | None
    scaler: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    accum: int


@dataclass(frozen=True)
class _Run:
    """One call of :func:`train_model`; ``state`` (epoch, history, early stopping) and ``timing``
    are updated in place."""

    model: LabelAttentionModel
    net: torch.nn.Module
    dist: Dist
    spec: _Spec
    data: _Data
    opt: _Optim
    fingerprint: dict
    state: dict
    timing: dict


@dataclass(frozen=True)
class _Batch:
    """A collated batch on the device; ``rows`` ``(batch rows, label indices)`` and ``target``
    ``[P, T]`` are the teacher pairs (None when the batch has none)."""

    ids: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor
    rows: tuple[torch.Tensor, torch.Tensor] | None
    target: torch.Tensor | None


def _check_inputs(train_docs: pd.DataFrame, val_docs: pd.DataFrame, rationale_loss: str) -> None:
    if rationale_loss not in ("kl", "bce"):
        raise ValueError(f"rationale_loss must be 'kl' or 'bce', got {rationale_loss!r}")
    for name, frame in (("train_docs", train_docs), ("val_docs", val_docs)):
        missing = [c for c in ("note_id", "text", "codes") if c not in frame.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {missing}")
    if len(val_docs) == 0 or len(train_docs) == 0:
        raise ValueError("train_model needs non-empty train_docs and val_docs")


def _prepare_data(model: LabelAttentionModel, train_docs: pd.DataFrame, val_docs: pd.DataFrame,
                  spec: _Spec) -> _Data:
    if spec.train_cfg.max_train_docs is not None:
        train_docs = train_docs.iloc[: spec.train_cfg.max_train_docs]
    train_docs = train_docs.reset_index(drop=True)
    val_docs = val_docs.reset_index(drop=True)
    labels = model.labels
    y_train = label_matrix(train_docs["codes"], labels).astype(np.float32)
    y_val = label_matrix(val_docs["codes"], labels)
    enc_train = _encode(model, train_docs["text"], spec.show, f"encode {model.name} train")
    enc_val = _encode(model, val_docs["text"], spec.show, f"encode {model.name} val")
    lengths = np.array([len(e) for e in enc_train])
    pairs = teacher_units(model, train_docs, enc_train, spec.targets)
    return _Data(train_docs, val_docs, y_train, y_val, enc_train, enc_val, lengths, pairs)


def _optimisation(model: LabelAttentionModel, spec: _Spec, dist: Dist, n_train: int) -> _Optim:
    params = spec.params
    use_amp = _use_amp(spec.train_cfg, dist.device)
    dtype = amp_dtype(dist.device) if use_amp else None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    optimizer = torch.optim.AdamW(param_groups(model, params), lr=params.lr, weight_decay=params.weight_decay)
    n_batches = len(dist.shard(list(range(int(math.ceil(n_train / params.batch_size))))))
    accum = max(1, int(params.grad_accum))
    steps_per_epoch = int(math.ceil(n_batches / accum))
    total_steps = steps_per_epoch * spec.n_epochs
    warmup = int(round(spec.train_cfg.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(warmup, total_steps))
    return _Optim(use_amp, dtype, scaler, optimizer, scheduler, accum)


def _fingerprint(model: LabelAttentionModel, data: _Data, spec: _Spec, opt: _Optim, world: int) -> dict:
    """The checkpoint's key: everything that determines the result."""
    return {
        "model": model.name, "labels": labels_hash(model.labels),
        "train": docs_hash(data.train_docs), "val": docs_hash(data.val_docs), "epochs": spec.n_epochs,
        "params": plain(spec.params), "grad_accum": opt.accum,
        "train_cfg": {k: plain(getattr(spec.train_cfg, k)) for k in ("warmup_ratio", "clip_norm", "amp", "threshold_grid")},
        "amp_dtype": str(opt.amp_dtype), "seed": spec.seed, "lam": float(spec.lam),
        "rationale_loss": spec.rationale_loss, "targets": targets_hash(spec.targets), "world": world,
        # the architecture and vocabulary: a checkpoint of another code version is not resumed
        "shapes": shapes_hash(model),
        "key": plain(spec.key or {}),
    } | ({"frozen_layers": {"n": int(model.freeze_layers), "mode": "eval, computed once (FrozenPrefix)"}}
         if getattr(model, "freeze_layers", 0) else {})


def _start_or_resume(model: LabelAttentionModel, spec: _Spec, opt: _Optim, dist: Dist, fingerprint: dict) -> dict:
    """The loop state of a matching checkpoint (model, optimiser and RNG restored), else a fresh
    state with the global RNGs seeded by ``seed + rank``."""
    state = {"epoch": 0, "history": [], "best_score": None, "best_epoch": 0, "bad_epochs": 0, "stopped": False}
    ckpt = matching_checkpoint(spec.ckpt_path, fingerprint, spec.n_epochs, dist, show=dist.main)
    if ckpt is not None:
        state = restore_checkpoint(ckpt, model, opt.optimizer, opt.scheduler, opt.scaler, dist)
        if spec.show:
            print(f"{spec.ckpt_path}: resuming after epoch {state['epoch']} of {spec.n_epochs}" +
                  (" (finished: nothing to train)" if state["stopped"] or state["epoch"] >= spec.n_epochs else ""))
    else:
        random.seed(spec.seed + dist.rank)
        np.random.seed(spec.seed + dist.rank)
        torch.manual_seed(spec.seed + dist.rank)
    return state


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
    """Train ``model`` (see docs/method/training.md); returns a :class:`TrainResult`.

    ``epochs`` overrides ``params.epochs``; ``seed`` seeds python/numpy/torch at the start of a new
    run and the batch order of each epoch; ``callback`` (optional) is called with
    ``{"event": "step" | "epoch", "epoch", "step", "loss", ...}`` after every batch and epoch;
    ``key`` (JSON-like) adds what else determines the result to the checkpoint's key (the starting
    model, the vocabulary settings, ...).
    """
    _check_inputs(train_docs, val_docs, rationale_loss)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dist = Dist(device)
    spec = _Spec(params, train_cfg, out_dir, int(epochs if epochs is not None else params.epochs), seed, lam,
                 rationale_loss, rationale_targets, key, progress and dist.main, callback)
    data = _prepare_data(model, train_docs, val_docs, spec)
    model.to(dist.device)
    opt = _optimisation(model, spec, dist, len(data.enc_train))
    fingerprint = _fingerprint(model, data, spec, opt, dist.world)
    state = _start_or_resume(model, spec, opt, dist, fingerprint)
    timing = {"loop_seconds": 0.0, "data_seconds": 0.0, "compute_seconds": 0.0, "val_seconds": 0.0,
              "steps": 0, "docs": 0, "units": 0}
    run = _Run(model, dist.wrap(model), dist, spec, data, opt, fingerprint, state, timing)
    # frozen encoder layers (PLM-ICD's freeze_layers): computed once per chunk for all epochs
    frozen = getattr(model, "frozen_cache", None)
    with frozen() if frozen is not None else contextlib.nullcontext():
        for epoch in range(state["epoch"] + 1, spec.n_epochs + 1):
            if state["stopped"]:
                break
            t_epoch = time.perf_counter()
            sums = _train_epoch(run, epoch)
            row = _validate(run, epoch, sums, t_epoch)
            _end_epoch(run, epoch, row)
    return _finish(run)


def _train_epoch(run: _Run, epoch: int) -> dict:
    """One pass over the training batches; returns the sums of the losses (``loss``, ``coding``,
    ``rationale``) and the numbers of batches (``n``, ``n_rat``)."""
    model, spec, data, opt, timing = run.model, run.spec, run.data, run.opt, run.timing
    model.train()
    batches = run.dist.shard(make_batches(data.lengths, spec.params.batch_size, np.random.default_rng([spec.seed, epoch])))
    sums = {"loss": 0.0, "coding": 0.0, "rationale": 0.0, "n": 0, "n_rat": 0}
    bar = progress_bar(batches, enabled=spec.show, desc=f"{model.name} epoch {epoch}/{spec.n_epochs}")
    opt.optimizer.zero_grad(set_to_none=True)
    t_loop = time.perf_counter()
    for step, batch in enumerate(bar, 1):
        t0 = time.perf_counter()
        group_start = (step - 1) // opt.accum * opt.accum
        group_size = min(opt.accum, len(batches) - group_start)
        last_in_group = step - group_start == group_size
        b = _collate_batch(run, batch)
        t1 = time.perf_counter()
        timing["data_seconds"] += t1 - t0
        loss_value, coding, rat = _forward_backward(run, b, group_size, last_in_group, (epoch, step, len(batches)))
        if last_in_group:
            _optimizer_step(run)
        timing["compute_seconds"] += time.perf_counter() - t1
        timing["steps"] += 1
        timing["docs"] += len(batch)
        timing["units"] += int(data.lengths[batch].sum())
        sums["loss"] += loss_value
        sums["coding"] += float(coding.detach())
        sums["n"] += 1
        if rat is not None:
            sums["rationale"] += float(rat.detach())
            sums["n_rat"] += 1
        if spec.show and step % 10 == 0:
            bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.4f}", refresh=False)
        if spec.callback is not None:
            spec.callback({"event": "step", "epoch": epoch, "step": step, "loss": loss_value})
    timing["loop_seconds"] += time.perf_counter() - t_loop
    if hasattr(bar, "close"):
        bar.close()
    return sums


def _collate_batch(run: _Run, batch: np.ndarray) -> _Batch:
    """The notes ``batch`` (indices into the training notes) on the device, with the binary teacher
    masks of their (note, gold code) pairs."""
    model, data, dev = run.model, run.data, run.dist.device
    ids, mask = model.collate([data.enc_train[i] for i in batch])
    ids = ids.to(dev, non_blocking=True)
    mask = mask.to(dev, non_blocking=True)
    y = torch.from_numpy(data.y_train[batch]).to(dev, non_blocking=True)
    rows = target = None
    if data.use_rationales:
        rb, rl, units = [], [], []
        for r, i in enumerate(batch):
            for j, u in data.pairs[i]:
                rb.append(r)
                rl.append(j)
                units.append(u)
        if rb:
            tgt = np.zeros((len(rb), ids.shape[1]), dtype=np.float32)
            for p, u in enumerate(units):
                tgt[p, u] = 1.0
            rows = (torch.tensor(rb, device=dev), torch.tensor(rl, device=dev))
            target = torch.from_numpy(tgt).to(dev, non_blocking=True)
    return _Batch(ids, mask, y, rows, target)


def _forward_backward(run: _Run, b: _Batch, group_size: int, last_in_group: bool,
                      where: tuple[int, int, int]) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """Forward pass, losses and backward pass of one batch (gradients synchronised across
    processes only on the last batch of an accumulation group); returns ``(loss value, coding
    loss, rationale loss or None)``. ``where`` is ``(epoch, step, steps in the epoch)``."""
    net, spec, opt, dist = run.net, run.spec, run.opt, run.dist
    sync = (contextlib.nullcontext() if (last_in_group or not dist.active) else net.no_sync())
    with sync:
        amp_ctx = torch.autocast(dist.device.type, dtype=opt.amp_dtype) if opt.use_amp else contextlib.nullcontext()
        with amp_ctx:
            out = net(b.ids, b.mask, None, b.rows if b.rows is not None else False)
        coding = F.binary_cross_entropy_with_logits(out.logits.float(), b.y)
        loss = coding
        rat = None
        if b.rows is not None:
            with (contextlib.nullcontext() if spec.lam > 0 else torch.no_grad()):
                att = out.attention[b.rows[0], b.rows[1]]
                valid = b.mask[b.rows[0]]
                rat = attention_rationale_loss(att, b.target, spec.rationale_loss, out.log_attention, valid)
            if spec.lam > 0:
                loss = coding + spec.lam * rat
        loss_value = float(loss.detach())
        bad = not math.isfinite(loss_value)
        if dist.any_flag(bad):
            epoch, step, n_steps = where
            raise NonFiniteLoss(
                f"{run.model.name}: non-finite training loss ({loss_value}) at epoch {epoch}, step "
                f"{step} of {n_steps} (coding loss {float(coding.detach())}); try a lower "
                "learning rate, amp: false, or check the inputs"
            )
        backward = loss / group_size
        if opt.scaler is not None:
            opt.scaler.scale(backward).backward()
        else:
            backward.backward()
    return loss_value, coding, rat


def _optimizer_step(run: _Run) -> None:
    """Unscale, clip, step the optimiser and the schedule, clear the gradients."""
    opt, clip_norm = run.opt, run.spec.train_cfg.clip_norm
    if opt.scaler is not None:
        opt.scaler.unscale_(opt.optimizer)
    if clip_norm and clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip_norm)
    if opt.scaler is not None:
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
    else:
        opt.optimizer.step()
    opt.scheduler.step()
    opt.optimizer.zero_grad(set_to_none=True)


def _validate(run: _Run, epoch: int, sums: dict, t_epoch: float) -> dict:
    """Validation mAP and micro-F1 (at the threshold tuned on the same predictions), rank 0's
    figures for every process; returns the epoch's history row."""
    spec, data = run.spec, run.data
    t_val = time.perf_counter()
    val_probs = predict_encoded(run.model, data.enc_val, max(1, spec.params.batch_size * 2), run.dist.device,
                                run.opt.amp_dtype)
    val_map = mean_average_precision(data.y_val, val_probs)
    _, val_f1 = tune_threshold(data.y_val, val_probs, spec.train_cfg.threshold_grid)
    val_map, val_f1 = run.dist.broadcast((val_map, val_f1))
    run.timing["val_seconds"] += time.perf_counter() - t_val
    return {
        "epoch": epoch,
        "train_loss": sums["loss"] / max(1, sums["n"]),
        "coding_loss": sums["coding"] / max(1, sums["n"]),
        "rationale_loss": sums["rationale"] / sums["n_rat"] if sums["n_rat"] else float("nan"),
        "val_map": val_map,
        "val_micro_f1": val_f1,
        "seconds": time.perf_counter() - t_epoch,
    }


def _end_epoch(run: _Run, epoch: int, row: dict) -> None:
    """Early-stopping bookkeeping, the best model and the checkpoint (rank 0), the epoch callback
    and the epoch's line."""
    model, spec, state, dist = run.model, run.spec, run.state, run.dist
    state["history"].append(row)
    val_map = row["val_map"]
    score = val_map if math.isfinite(val_map) else None
    improved = state["best_score"] is None or (score is not None and score > state["best_score"])
    if improved:
        state["best_score"] = score if score is not None else state["best_score"]
        state["best_epoch"] = epoch
        state["bad_epochs"] = 0
        if dist.main:
            atomic_save(model.state_dict(), spec.best_path)
    else:
        state["bad_epochs"] += 1
        if state["bad_epochs"] >= spec.params.patience:
            state["stopped"] = True
    state["epoch"] = epoch
    rng = dist.gather(rng_state())
    if dist.main:
        opt = run.opt
        atomic_save(checkpoint_contents(run.fingerprint, model, opt.optimizer, opt.scheduler, opt.scaler, rng, state),
                    spec.ckpt_path)
        pd.DataFrame(state["history"], columns=HISTORY_COLUMNS).to_csv(spec.out_dir / "history.csv", index=False)
    dist.barrier()
    if spec.callback is not None:
        spec.callback({"event": "epoch", "epoch": epoch, **row})
    if spec.show:
        print(
            f"{model.name} epoch {epoch}: loss {row['train_loss']:.4f} val mAP {val_map:.4f} "
            f"val micro-F1 {row['val_micro_f1']:.4f} ({row['seconds']:.0f}s)"
            + (" - early stop" if state["stopped"] else "")
        )


def _finish(run: _Run) -> TrainResult:
    """The best model, its threshold tuned on float32 validation probabilities, the final save."""
    model, spec, data, dist, state = run.model, run.spec, run.data, run.dist, run.state
    if spec.best_path.exists():
        model.load_state_dict(torch.load(spec.best_path, map_location="cpu", weights_only=True))
    model.to(dist.device)
    # float32, as the test predictions the threshold is applied to (bf16 probabilities differ)
    val_probs = predict_encoded(model, data.enc_val, max(1, spec.params.batch_size * 2), dist.device, None)
    threshold, _ = tune_threshold(data.y_val, val_probs, spec.train_cfg.threshold_grid)
    threshold = dist.broadcast(threshold)
    val_metrics = coding_report(data.y_val, val_probs, threshold)
    model.threshold = threshold
    model.eval()
    history = pd.DataFrame(state["history"], columns=HISTORY_COLUMNS)
    if dist.main:
        save(model, spec.out_dir / "model", threshold=threshold,
             extra={"best_epoch": state["best_epoch"], "val_metrics": val_metrics,
                    "history": history.drop(columns="seconds").to_dict("records"),
                    "lam": float(spec.lam), "rationale_loss": spec.rationale_loss, "seed": spec.seed})
    dist.barrier()
    return TrainResult(model=model, history=history, threshold=threshold, val_metrics=val_metrics,
                       best_epoch=int(state["best_epoch"]), timing=run.timing, out_dir=spec.out_dir)
