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

from pipeline.core.faults import FaultKeys, Suspect
from pipeline.core.schema import StrictModel
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

    def fault_suspects(self, keys: FaultKeys, step: int) -> list[Suspect]:
        """s and exp(−s): at step 1 they are as ``init_log_variance`` set them; later W's optimiser moved s."""
        init = keys.method("uncertainty", "init_log_variance")
        if step <= 1:
            hint = f"set {init} to a moderate value (now {self.cfg.init_log_variance:g}; |s| ≲ 80 in float32)"
        else:
            hint = f"{keys.optimiser()} (s is trained with W), or start s nearer 0 ({init})"
        s = self.log_vars.detach()
        return [Suspect("Uncertainty's log-variances s (or the term Σ_j s_j of L_T)", [s, s.sum()], hint),
                Suspect("Uncertainty's task weights exp(−s)", [torch.exp(-s)], hint)]

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
