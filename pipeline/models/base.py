"""The primary-network protocol: f(x; W) = decode(encode(x)), a shared trunk followed by task heads.

Methods that act on gradients (GradNorm, GCS, MGDA) need to see the trunk: its parameters, its last
layer, and the shared representation z of the current batch.
"""
from __future__ import annotations

from typing import Any

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
