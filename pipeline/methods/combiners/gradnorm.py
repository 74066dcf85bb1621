"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018, Algorithm 1).

Learned task weights w_i (main included, init 1). Each step, with L_i = mean_b ℓ_i:

* W receives ∇_W Σ_i w_i L_i (w treated as constants);
* G_i = ‖∇_{W_last} w_i L_i‖₂ on the trunk's last layer, Ḡ = mean_i G_i;
* L̃_i = L_i(t) / L_i(0) (L_i(0): the first step's losses), r_i = L̃_i / mean_j L̃_j;
* L_grad = Σ_i |G_i − Ḡ · r_i^α| with the target Ḡ · r_i^α a constant (Ḡ included);
* w takes one step of its own optimiser on ∇_w L_grad only, is clipped to ``min_weight`` and
  renormalised so that Σ_i w_i = T (the number of tasks).

Since ∇(w_i L_i) = w_i ∇L_i, G_i = w_i ‖∇L_i‖ exactly, so ∂L_grad/∂w_i = sign(G_i − target_i) ‖∇L_i‖ is
obtained without second-order autograd through the network.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from pipeline.core.faults import FaultKeys, Suspect, overflow_named
from pipeline.core.schema import StrictModel
from pipeline.methods.base import SharedTrunk, register
from pipeline.methods.combiners.weighted import weighting_method, WeightedSum, per_term_gradient_norms


class GradNormConfig(StrictModel):
    alpha: float = Field(1.5, ge=0, description="asymmetry α (1.5 on NYUv2; AuxiLearn grid {0.3, 0.8, 1.5})")
    lr: float = Field(0.025, gt=0, description="learning rate of the weights' own optimiser")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="optimiser of the task weights w")
    min_weight: float = Field(1e-3, gt=0, description="floor on every w_i, applied before renormalising")
    chunk_size: int = Field(32, ge=1, description="tasks whose last-layer gradients are held in memory at once")


class GradNorm(WeightedSum):
    def __init__(self, num_tasks: int, cfg: GradNormConfig | None = None) -> None:
        super().__init__(num_tasks, cfg)
        # Not in joint_parameters: w is trained only by its own optimiser on L_grad, never on L_T.
        self.weights = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.full((num_tasks,), float("nan")))  # L_i(0)
        # Built now (moving the module keeps its Parameter objects), so that a resumed run can load its state.
        self._optimizer: torch.optim.Optimizer | None = None
        self._weight_optimizer()
        self.last_grad_loss = float("nan")

    def _weight_optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            opt = torch.optim.Adam if self.cfg.optimizer == "adam" else torch.optim.SGD
            self._optimizer = opt([self.weights], lr=self.cfg.lr)
        return self._optimizer

    def grad_norm_loss(self, task_losses: Tensor, grad_norms: Tensor) -> Tensor:
        """L_grad(w) = Σ_i |w_i ‖∇L_i‖ − Ḡ r_i^α| with constant targets; differentiable in ``self.weights``."""
        g = self.weights * grad_norms
        ratios = task_losses / self.initial_losses.clamp_min(1e-12)
        r = ratios / ratios.mean().clamp_min(1e-12)
        target = (g.mean() * r**self.cfg.alpha).detach()
        return (g - target).abs().sum()

    def backward(self, losses: Tensor, shared: SharedTrunk) -> Tensor:
        task_losses = losses.mean(0)
        # L_i(0) at the first step, chosen on the device (no host synchronisation in the hot loop)
        first = torch.isnan(self.initial_losses)
        self.initial_losses.copy_(torch.where(first, task_losses.detach().to(self.initial_losses.dtype),
                                              self.initial_losses))
        grad_norms = per_term_gradient_norms(task_losses, shared.last_params, self.cfg.chunk_size)
        # W's update uses w(t), the weights before this step's update of w.
        loss = self.apply_weights(losses, self.weights.detach())

        opt = self._weight_optimizer()
        opt.zero_grad(set_to_none=True)
        grad_loss = self.grad_norm_loss(task_losses.detach(), grad_norms)
        grad_loss.backward()
        with overflow_named("GradNorm's step of its task weights", f"lower methods.gradnorm.lr (now {self.cfg.lr:g})"):
            opt.step()
        with torch.no_grad():
            w = self.weights.clamp_min(self.cfg.min_weight)
            self.weights.copy_(w * (self.num_tasks / w.sum()))
        self.last_grad_loss = grad_loss.detach()  # read by the trainer at its logged steps only
        return loss

    def step_log(self) -> dict[str, float | Tensor]:
        return {"gradnorm_loss": self.last_grad_loss}

    def fault_suspects(self, keys: FaultKeys, step: int) -> list[Suspect]:
        """w is moved only by its own optimiser (W's step at step t uses the w of step t − 1's update)."""
        return [Suspect("GradNorm's task weights w", [self.weights.detach()],
                        f"lower {keys.method('gradnorm', 'lr')} (now {self.cfg.lr:g})")]


register(weighting_method("gradnorm", GradNorm, GradNormConfig, order=2, description=__doc__.splitlines()[0]))
