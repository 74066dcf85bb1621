"""The primary-network protocol: f(x; W) = decode(encode(x)), a shared trunk followed by task heads.

Methods that act on gradients (GradNorm, GCS, MGDA) need to see the trunk: its parameters, its last
layer, and the shared representation z of the current batch.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from torch import Tensor, nn


class MultiTaskNet(nn.Module):
    # Set by models built with ``aux_outputs > 0``: ``decode`` then returns (outputs, generated-task output),
    # while ``forward`` keeps returning only what the dataset's losses and metrics expect.
    has_generated_head: bool = False

    def encode(self, x: Tensor) -> Tensor:
        """The shared representation z."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Any:
        """Task outputs from z (whatever the dataset's ``per_task_losses`` expects)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Any:
        out = self.decode(self.encode(x))
        return out[0] if self.has_generated_head else out

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters used by every task (the trunk)."""
        raise NotImplementedError

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The trunk's last layer, where GradNorm measures per-task gradient norms."""
        raise NotImplementedError


class ChannelStandardize(nn.Module):
    """(x − mean) / std per channel for images given as floats in [0, 1]; the statistics are buffers, saved
    with the network, so the network carries its input normalisation (no dataset state set at load time)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return ((x - self.mean) / self.std).contiguous()


class Standardized(MultiTaskNet):
    """``net`` with ``ChannelStandardize`` in front of its trunk; every other part is ``net``'s own."""

    def __init__(self, net: MultiTaskNet, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.standardize = ChannelStandardize(mean, std)
        self.net = net
        self.has_generated_head = net.has_generated_head

    def encode(self, x: Tensor) -> Tensor:
        return self.net.encode(self.standardize(x))

    def decode(self, z: Tensor) -> Any:
        return self.net.decode(z)

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.net.shared_parameters()

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return self.net.last_shared_parameters()
