"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, "End-to-end multi-task learning with
attention", Eq. 7):

    λ_k(t) = K · exp(w_k(t−1)/T) / Σ_i exp(w_i(t−1)/T),    w_k(t−1) = L_k(t−1) / L_k(t−2),

with L_k(t) the mean loss of task k over epoch t, T the temperature and K the number of tasks (all of
them, main included, as in the original). λ = 1 during the first two epochs. Training here is step-based,
so an "epoch" is ``period`` consecutive steps; λ is constant within an epoch, as in the original code.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from pipeline.core.schema import StrictModel
from pipeline.methods.base import SharedTrunk, register
from pipeline.methods.combiners.weighted import weighting_method, WeightedSum


class DWAConfig(StrictModel):
    temperature: float = Field(2.0, gt=0, description="T of the softmax (2 on NYUv2; AuxiLearn grid {0.5, 2, 5})")
    period: int = Field(50, ge=1, description="training steps per 'epoch' over which task losses are averaged")


def dwa_weights(previous: Tensor, before_previous: Tensor, temperature: float) -> Tensor:
    """λ = K·softmax(w/T) with w = L(t−1)/L(t−2), from the epoch-mean losses of the last two epochs [K]."""
    # A task whose loss was already 0 has not slowed down: ratio 1 instead of 0/0.
    ratio = torch.where(before_previous > 0, previous / before_previous.clamp_min(1e-12), torch.ones_like(previous))
    return previous.numel() * torch.softmax(ratio / temperature, dim=0)


class DWA(WeightedSum):
    def __init__(self, num_tasks: int, cfg: DWAConfig | None = None) -> None:
        super().__init__(num_tasks, cfg)
        self.register_buffer("lambdas", torch.ones(num_tasks))  # λ for the current epoch
        self.register_buffer("running_sum", torch.zeros(num_tasks))  # Σ of per-step mean losses this epoch
        self.register_buffer("steps_in_epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_losses", torch.zeros(2, num_tasks))  # rows: L(t−2), L(t−1)
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))

    def backward(self, losses: Tensor, shared: SharedTrunk) -> Tensor:
        loss = self.apply_weights(losses, self.lambdas)
        self.record(losses.detach().mean(0))
        return loss

    def record(self, step_losses: Tensor) -> None:
        """Add one step's mean task losses [K]; at the end of an epoch, roll it and recompute λ."""
        self.running_sum += step_losses.to(self.running_sum.dtype)
        self.steps_in_epoch += 1
        if int(self.steps_in_epoch) < self.cfg.period:
            return
        self.epoch_losses = torch.stack([self.epoch_losses[1], self.running_sum / self.steps_in_epoch])
        self.running_sum.zero_()
        self.steps_in_epoch.zero_()
        self.epochs_done += 1
        if int(self.epochs_done) >= 2:
            self.lambdas = dwa_weights(self.epoch_losses[1], self.epoch_losses[0], self.cfg.temperature)


register(weighting_method("dwa", DWA, DWAConfig, order=1, description=__doc__.splitlines()[0]))
