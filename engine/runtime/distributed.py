"""Multi-process training: torchrun's environment, or ``--nproc N`` on one machine.

Every rank trains on its own random batches; DistributedDataParallel averages the gradients,
so all ranks hold the same weights. Rank 0 alone writes logs and checkpoints. Backend: NCCL
on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    owned: bool = False  # this process group was created by us (so we also destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def local_device(device: torch.device) -> torch.device:
    """On CUDA under torchrun, each process takes the GPU numbered by its LOCAL_RANK."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def setup(device: torch.device, *, backend: str | None = None, timeout: timedelta | None = None) -> DistInfo:
    """Join the process group that torchrun (or ``launch``) described in the environment.

    ``backend`` defaults to NCCL on CUDA and gloo otherwise; ``timeout`` bounds how long a
    collective (e.g. a barrier) waits for the slowest rank (torch's default when None).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), False)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, **({"timeout": timeout} if timeout is not None else {}))
    return DistInfo(dist.get_rank(), dist.get_world_size(), True)


def teardown(info: DistInfo) -> None:
    if info.owned and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather_counts(value: int, info: DistInfo) -> list[int]:
    """Every rank's ``value`` (e.g. images seen), on every rank."""
    if info.world <= 1:
        return [value]
    t = torch.tensor([value], dtype=torch.long)
    out = [torch.zeros_like(t) for _ in range(info.world)]
    dist.all_gather(out, t)
    return [int(x) for x in out]


class HeadsOnly(nn.Module):
    """What DDP wraps: the trainable part, fed with cached backbone features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, feats):
        out = self.model.forward_from_features(feats)  # a plain tuple: DDP must see every tensor
        return tuple(out.categories), tuple(out.kernels), out.mask_features, out.strides, tuple(out.embeddings)


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    heads = HeadsOnly(model)
    if info.world <= 1:
        return heads
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(heads, device_ids=ids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, fn: Callable, args: tuple, kwargs: dict) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    fn(*args, **kwargs)


def launch(fn: Callable, nproc: int, *args, **kwargs) -> None:
    """Run ``fn(*args, **kwargs)`` in ``nproc`` processes on this machine (loopback only)."""
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(nproc, free_port(), fn, args, kwargs), nprocs=nproc, join=True,
                       start_method="spawn")
