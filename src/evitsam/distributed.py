"""One process or many (``torchrun``): process-group start-up and the collectives our workflows share.

Training and evaluation both run unchanged on one process or under ``torchrun``; everything they
need from ``torch.distributed`` is here, so neither has to care whether a group exists.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def init_distributed(device: str | torch.device | None = None) -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group when launched by ``torchrun``.

    ``device`` None picks CUDA when available. A CUDA device without an index becomes
    ``cuda:LOCAL_RANK`` (one GPU per process); the backend is NCCL for CUDA, gloo for CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}: {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was requested but CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank_and_world()[0], world, device


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_lists(items: list[Any], dst: int = 0) -> list[Any]:
    """Every rank's ``items`` concatenated in rank order on rank ``dst``; [] on the others.

    Only ``dst`` holds everything (a full COCO/LVIS run gathers millions of records).
    """
    rank, world = rank_and_world()
    if world == 1:
        return list(items)
    parts: list[list[Any] | None] | None = [None] * world if rank == dst else None
    dist.gather_object(items, parts, dst=dst)
    return [item for part in parts for item in part] if rank == dst else []


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a picklable object)."""
    _, world = rank_and_world()
    if world == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


class SharedCounter:
    """Hands out 0, 1, 2, ... once each across every process of the job: work taken as processes free up,
    not dealt in advance, so a process with harder inputs takes less of it. Under ``torchrun`` the counter is
    the process group's key-value store (atomic ``add``); ``key`` must be the same on every rank and new for
    each use. Without a process group it counts in this process."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._store = dist.distributed_c10d._get_default_store() if rank_and_world()[1] > 1 else None
        self._next = 0

    def take(self) -> int:
        if self._store is None:
            self._next += 1
            return self._next - 1
        return self._store.add(self.key, 1) - 1


def shutdown_distributed() -> None:
    """Leave the process group cleanly (after the last collective)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
