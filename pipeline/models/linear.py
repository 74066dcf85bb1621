"""The linear model of the synthetic problems: one weight vector w shared by all tasks, no task heads."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.models import MODELS


@MODELS.register("shared_linear")
class SharedLinear(nn.Module):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        # Random start (from the run's seed) so that seeds differ even with full-batch training.
        self.weight = nn.Parameter(torch.randn(in_features))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight
