"""Data-parallel context of a training run, set up from a launcher's environment (``torchrun``,
``accelerate launch``); a no-op in a single process. See docs/method/training.md.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from rationale_kit.core.runtime import pick_device


class Dist:
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
