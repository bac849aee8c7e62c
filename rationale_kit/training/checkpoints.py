"""Resumable training: the key of a run (fingerprints of everything that determines the result),
finding a checkpoint with the same key, atomic saves and the RNG states. See
docs/method/training.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rationale_kit.training.distributed import Dist


def rng_state() -> dict:
    """The python, numpy, torch (and CUDA) global RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore states taken by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` into a temporary file, then renamed over ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def docs_hash(docs: pd.DataFrame) -> str:
    """Note ids, codes and texts (in order)."""
    h = hashlib.sha256()
    for nid, codes, text in zip(docs["note_id"], docs["codes"], docs["text"]):
        h.update(f"{nid}\t{','.join(codes)}\t{len(str(text))}\n".encode())
        h.update(hashlib.sha256(str(text).encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()[:16]


def plain(value: Any) -> Any:
    """JSON-like form of a config value (for checkpoint keys)."""
    if dataclasses.is_dataclass(value):
        return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def targets_hash(targets: dict | None) -> str:
    """The teacher spans of every (note, code) key, in key order ('' without targets)."""
    if not targets:
        return ""
    h = hashlib.sha256()
    for key in sorted(targets):
        h.update(f"{key}\t{sorted(targets[key])}\n".encode())
    return h.hexdigest()[:16]


def labels_hash(labels: list[str]) -> str:
    """The model's labels, in order."""
    return hashlib.sha256("\n".join(labels).encode()).hexdigest()[:16]


def shapes_hash(model: torch.nn.Module) -> str:
    """The names and shapes of the model's state: the architecture and the vocabulary size."""
    return hashlib.sha256(repr(sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())).encode()).hexdigest()[:16]


def checkpoint_contents(fingerprint: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, scaler: Any, rng: list[dict], state: dict) -> dict:
    """What ``checkpoint.pt`` holds after an epoch: the run's key, the model, optimiser, scheduler
    and gradient-scaler states, the RNG states of every process and the loop ``state`` (epoch,
    history, early-stopping state)."""
    return {
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
        "state": state,
    }


def restore_checkpoint(ckpt: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                       scaler: Any, dist: Dist) -> dict:
    """Load a checkpoint of :func:`checkpoint_contents` into the run (this process's RNG states, or
    rank 0's when the process count differs); returns the loop state."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]
    set_rng_state(rng[dist.rank] if len(rng) == dist.world else rng[0])
    return ckpt["state"]


def key_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["params.dropout: 0.0 -> 0.9", ...]``: the entries of two checkpoint keys that differ."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += key_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a} -> {b}")
    return out


def matching_checkpoint(path: Path, fingerprint: dict, n_epochs: int, dist: Dist, show: bool) -> dict | None:
    """The checkpoint at ``path`` when its key equals ``fingerprint`` (a finished data-parallel run
    is also reused by a single process); otherwise ``None`` after moving it (and the best model of
    that run) aside, with one line saying why."""
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        old = ckpt["fingerprint"]
        done = ckpt["state"].get("stopped") or ckpt["state"].get("epoch", 0) >= n_epochs
        diff = key_diff(old, fingerprint)
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

