"""Several processes (torchrun) as one run: which process this is, its shard of a batch, and the mean of a
gradient-like vector across processes.

Every process draws the same global batch from the same seeded stream and keeps its contiguous shard, so the
union of the shards is the single-process batch. W's step goes through DistributedDataParallel (``WStep``):
the whole objective of a batch (the method's losses of the network's outputs) is DDP's forward, so DDP's
hooks average W's gradient inside the backward. Parameters outside the network that W's optimiser also trains
(Uncertainty's log-variances, a generator's head) and the gradients of combiners that rewrite the trunk's
``.grad`` after the backward (GCS, MAOAL: DDP would average before the rewrite) are averaged by one all-reduce
after the backward instead (``average_gradients``). The
outer (φ) update cannot go through DDP's hooks: it differentiates twice with ``torch.autograd.grad`` on the
unwrapped network, which DDP never sees. Every vector it builds from data (∂L_A/∂W, ∂L_A/∂φ, each Hessian-
vector product of the Neumann series and of the power iteration, the mixed product) is a mean over samples,
hence linear in the batch; ``mean_across`` averages each across processes, so with equal shards the outer
update equals the single-process one on the union of the shards, to float rounding.
With one process (no process group) every function here is the identity.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Literal, Sequence

import torch
import torch.distributed as dist
from pydantic import Field
from torch import Tensor, nn

from pipeline.core.schema import StrictModel


class DistributedConfig(StrictModel):
    """``distributed``: one training run over several processes (torchrun), one per GPU."""

    processes: int = Field(1, ge=1, description="processes on this machine: > 1 launches the train stage with "
                                                "torchrun, one GPU each (CPU processes use gloo); several "
                                                "machines: see the README")
    parallel: Literal["batches", "seeds"] = Field(
        "batches", description="what the processes share: batches = every seed trained by all, each process a "
                               "shard of every batch (one run, faster); seeds = each process trains its own "
                               "seeds (seeds[rank::processes]) whole, results identical to one process")


# Whether this run's processes share its batches (``setup``): with ``parallel: seeds`` the process group exists
# (for barriers) but each process trains alone, so nothing is sharded or averaged.
_sharing_batches = True


def active() -> bool:
    """Whether several processes share each batch (shards, averaged gradients)."""
    return _sharing_batches and group_size() > 1


def group_size() -> int:
    """How many processes the run has (whatever they share)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def group_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Only this process writes outputs (models, metrics, live logs)."""
    return rank() == 0


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), known before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device, share_batches: bool = True) -> torch.device:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); each process takes the GPU of
    its local rank. ``share_batches``: whether the processes shard every batch (else each trains alone).
    Returns the device this process uses; a no-op outside torchrun."""
    global _sharing_batches
    _sharing_batches = share_batches
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def teardown() -> None:
    global _sharing_batches
    _sharing_batches = True
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: Tensor) -> Tensor:
    """This process's contiguous part of a global batch. Equal parts when the batch divides evenly (then the
    mean of the shards' mean losses is the batch's); otherwise the first parts hold one sample more."""
    n = world_size()
    if n == 1:
        return indices
    return torch.tensor_split(indices, n)[rank()]


class _Objective(nn.Module):
    """The network and the function that computes a batch's objective through it, as one module whose
    ``forward`` DDP can wrap (methods call the network's ``encode``/``decode``, not its ``forward``)."""

    def __init__(self, network: nn.Module, objective: Callable[[Any], Any]) -> None:
        super().__init__()
        self.network = network  # registered: DDP reduces (and first broadcasts) exactly its parameters
        self.objective = objective

    def forward(self, batch: Any) -> Any:
        return self.objective(batch)


class WStep:
    """W's forward for one lower step, ``objective(batch)``: through DistributedDataParallel when processes
    share batches and the combiner leaves ``.grad`` as the backward made it; else the plain call.
    ``unreduced(params)``: those of W's optimiser whose gradient DDP does not average, for
    ``average_gradients`` after the backward."""

    def __init__(self, network: nn.Module, objective: Callable[[Any], Any], rewrites_gradients: bool) -> None:
        self.objective = objective
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if active() and not rewrites_gradients:
            # find_unused_parameters: a generated task replaces the given auxiliaries' heads, which then take
            # no gradient; DDP must not wait for them.
            self.ddp = nn.parallel.DistributedDataParallel(_Objective(network, objective),
                                                           find_unused_parameters=True)
        self._reduced = {id(p) for p in network.parameters()} if self.ddp is not None else set()

    def __call__(self, batch: Any) -> Any:
        return self.objective(batch) if self.ddp is None else self.ddp(batch)

    def unreduced(self, params: Sequence[Tensor]) -> list[Tensor]:
        return [p for p in params if id(p) not in self._reduced]


def average_gradients(params: Sequence[Tensor]) -> None:
    """Each parameter's ``.grad`` replaced by its mean over processes, in one all-reduce: for the parameters
    W's optimiser trains that DDP does not reduce (``WStep.unreduced``)."""
    if not active():
        return
    with_grad = [p for p in params if p.grad is not None]
    for p, g in zip(with_grad, mean_across([p.grad for p in with_grad])):
        p.grad.copy_(g)


def broadcast_parameters(params: Sequence[Tensor]) -> None:
    """Every process starts from process 0's values (as DDP does when it wraps a network)."""
    if active():
        for p in params:
            dist.broadcast(p.data, src=0)


def barrier() -> None:
    if group_size() > 1:
        dist.barrier()


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
