"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, "Multi-task learning using uncertainty to
weigh losses for scene geometry and semantics").

Every task j (main included) has a learned log-variance s_j = log σ_j², trained jointly with W by W's
optimiser on

    L_T = Σ_j [ exp(−s_j) · mean_b ℓ_j + s_j ].

This is the paper's regression form ½·exp(−s)·ℓ + ½·s (their Eq. 7 with s = log σ²) multiplied by 2 for
every task, i.e. the same minimiser with the ½ dropped; the paper uses the same form for classification
losses as an approximation. For a fixed ℓ the minimiser is s = log ℓ, so the weight exp(−s) → 1/ℓ.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from pipeline.schema import StrictModel
from pipeline.methods.base import SharedTrunk, register
from pipeline.methods.combiners.weighted import weighting_method, WeightedSum


class UncertaintyConfig(StrictModel):
    init_log_variance: float = Field(0.0, description="initial s_j = log σ_j² of every task (0: weight 1)")


class Uncertainty(WeightedSum):
    def __init__(self, num_tasks: int, cfg: UncertaintyConfig | None = None) -> None:
        super().__init__(num_tasks, cfg)
        self.log_vars = nn.Parameter(torch.full((num_tasks,), float(self.cfg.init_log_variance)))

    def joint_parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]

    def training_loss(self, losses: Tensor) -> Tensor:
        """Σ_j exp(−s_j) · mean_b ℓ_j + s_j."""
        return (torch.exp(-self.log_vars) * losses.mean(0) + self.log_vars).sum()

    def backward(self, losses: Tensor, shared: SharedTrunk) -> Tensor:
        # Record exp(−s) before W's optimiser moves s, so task_weights reports the weights of this step.
        self.applied.copy_(torch.exp(-self.log_vars).detach())
        loss = self.training_loss(losses)
        loss.backward()
        return loss.detach()


register(weighting_method("uncertainty", Uncertainty, UncertaintyConfig, order=0, description=__doc__.splitlines()[0]))
