"""Monotone loss-combining networks (AuxiLearn §3.2, §5): Linear, Deep linear and Nonlinear.

All three are one fully-connected network over the loss vector that differ only in depth and
activation. Monotone non-decreasing in every loss: weights are clipped to ≥ 0 after each update
(``project``) and the activations are non-decreasing. The main loss enters L_T = ℓ_main + g(ℓ; φ)
directly (the skip connection), so g only adds to it.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from pipeline.auxnets import AUXNETS

ACTIVATIONS = {"identity": nn.Identity, "softplus": nn.Softplus}


class MonotoneMLP(nn.Module):
    def __init__(
        self,
        num_tasks: int,
        hidden: list[int],
        activation: Literal["identity", "softplus"] = "identity",
        init_weight: float = 1.0,
    ) -> None:
        super().__init__()
        sizes = [num_tasks, *hidden, 1]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out, bias=bool(hidden)))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        # Linear: a combination of the auxiliary losses only (the main loss keeps weight 1 via the skip);
        # deeper networks see every loss so they can model interactions with the main task.
        mask = torch.ones(num_tasks)
        if not hidden:
            mask[0] = 0.0
        self.register_buffer("input_mask", mask)
        self._init(num_tasks, init_weight)

    def _init(self, num_tasks: int, init_weight: float) -> None:
        """Start from (about) equal weighting: every auxiliary's effective weight ∂g/∂ℓ_j ≈ init_weight."""
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            if len(linears) == 1:  # plain linear: exactly [0, w, …, w] (the main loss already has weight 1)
                linears[0].weight.fill_(init_weight)
                linears[0].weight[0, 0] = 0.0
                return
            for layer in linears:
                layer.weight.abs_()
                if layer.bias is not None:
                    layer.bias.zero_()
            mean_aux = self.effective_weights(torch.ones(1, num_tasks))[1:].mean()
            linears[-1].weight.mul_(init_weight / mean_aux.clamp_min(1e-12))

    def forward(self, losses: Tensor) -> Tensor:
        return self.net(losses * self.input_mask).squeeze(-1)

    @torch.no_grad()
    def project(self) -> None:
        """Clip negative weights so g stays monotone non-decreasing in every loss."""
        for m in self.net:
            if isinstance(m, nn.Linear):
                m.weight.clamp_(min=0.0)

    def effective_weights(self, losses: Tensor) -> Tensor:
        """Batch-mean ∂g/∂ℓ_j: the task weights this network applies at these losses."""
        with torch.enable_grad():
            x = losses.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self(x).sum(), x)
        return grad.mean(0).detach()


def _builder(activation: str, deep: bool):
    def build(num_tasks: int, *, hidden_units: int, hidden_layers: int, init_weight: float) -> MonotoneMLP:
        return MonotoneMLP(num_tasks, [hidden_units] * hidden_layers if deep else [], activation, init_weight)  # type: ignore[arg-type]

    return build


AUXNETS.add("linear", _builder("identity", deep=False))
AUXNETS.add("deep_linear", _builder("identity", deep=True))
AUXNETS.add("nonlinear", _builder("softplus", deep=True))
