"""Several processes (torchrun) as one run: which process this is, its shard of a batch, and the mean of a
gradient-like vector across processes.

Every process draws the same global batch from the same seeded stream and keeps its contiguous shard, so the
union of the shards is the single-process batch. W's gradient is averaged by DistributedDataParallel. The
outer (φ) update cannot go through DDP's hooks: it differentiates twice with ``torch.autograd.grad`` on the
unwrapped network, which DDP never sees. Every vector it builds from data (∂L_A/∂W, ∂L_A/∂φ, each Hessian-
vector product of the Neumann series and of the power iteration, the mixed product) is a mean over samples,
hence linear in the batch; ``mean_across`` averages each across processes, so with equal shards the outer
update equals the single-process one on the union of the shards, to float rounding.
With one process (no process group) every function here is the identity.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Only this process writes outputs (models, metrics, live logs)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); each process takes the GPU of
    its local rank. Returns the device this process uses; a no-op outside torchrun."""
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: Tensor) -> Tensor:
    """This process's contiguous part of a global batch (equal parts: the batch size must divide evenly)."""
    n = world_size()
    if n == 1:
        return indices
    if len(indices) % n:
        raise ValueError(f"a batch of {len(indices)} cannot be split evenly over {n} processes: make the "
                         f"batch sizes multiples of {n}")
    part = len(indices) // n
    return indices[rank() * part:(rank() + 1) * part]


def mean_across(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The element-wise mean of each tensor over processes (one all-reduce of their concatenation)."""
    tensors = list(tensors)
    if not active() or not tensors:
        return tensors
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out
