"""The linear model of the synthetic problems: one weight vector w shared by all tasks, no task heads."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.core.registry import MODELS
from pipeline.models.base import MultiTaskNet


@MODELS.register("shared_linear")
class SharedLinear(MultiTaskNet):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        # Random start (from the run's seed) so that seeds differ even with full-batch training.
        self.weight = nn.Parameter(torch.randn(in_features))

    def encode(self, x: Tensor) -> Tensor:
        return x @ self.weight

    def decode(self, z: Tensor) -> Tensor:
        return z  # every task predicts the same wᵀx

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [self.weight]
