"""Monotone loss-combining networks (AuxiLearn §3.2, §5): Linear, Deep linear, Nonlinear and ConvNet.

All four are one network over the losses that differ only in depth, activation and layer type:
fully connected over the loss vector [B, T], or (ConvNet, §5.3) convolutional over the *loss image*
[B, T, H, W], one channel of per-pixel losses per task, whose per-pixel output is averaged over the
image. Monotone non-decreasing in every loss: weights are clipped to ≥ 0 after each update
(``project``) and the activations are non-decreasing. The main loss enters L_T = ℓ_main + g(ℓ; φ)
directly (the skip connection), so g only adds to it.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from pipeline.auxnets import AUXNETS

ACTIVATIONS = {"identity": nn.Identity, "softplus": nn.Softplus}


class MonotoneNet(nn.Module):
    """``kernel_size`` None: an MLP over [B, T]; an odd int: a CNN over loss images [B, T, H, W]."""

    def __init__(
        self,
        num_tasks: int,
        hidden: list[int],
        activation: Literal["identity", "softplus"] = "identity",
        init_weight: float = 1.0,
        kernel_size: int | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        sizes = [num_tasks, *hidden, 1]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if kernel_size is None:
                layers.append(nn.Linear(fan_in, fan_out, bias=bool(hidden)))
            else:
                layers.append(nn.Conv2d(fan_in, fan_out, kernel_size, padding=kernel_size // 2, bias=bool(hidden)))
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
        linears = [m for m in self.net if isinstance(m, (nn.Linear, nn.Conv2d))]
        with torch.no_grad():
            if len(linears) == 1 and self.kernel_size is None:  # plain linear: exactly [0, w, …, w]
                linears[0].weight.fill_(init_weight)  # (the main loss already has weight 1)
                linears[0].weight[0, 0] = 0.0
                return
            for layer in linears:
                layer.weight.abs_()
                if layer.bias is not None:
                    layer.bias.zero_()
            probe = torch.ones(1, num_tasks) if self.kernel_size is None else torch.ones(1, num_tasks, 8, 8)
            mean_aux = self.effective_weights(probe)[1:].mean()
            linears[-1].weight.mul_(init_weight / mean_aux.clamp_min(1e-12))

    def forward(self, losses: Tensor) -> Tensor:
        """[B, T] -> [B]; or loss images [B, T, H, W] -> per-pixel output averaged over the image, [B]."""
        if self.kernel_size is None:
            return self.net(losses * self.input_mask).squeeze(-1)
        if losses.dim() != 4:
            raise ValueError(f"the ConvNet auxiliary network needs loss images [B, T, H, W], got {tuple(losses.shape)}")
        return self.net(losses * self.input_mask.view(1, -1, 1, 1)).mean((1, 2, 3))

    @torch.no_grad()
    def project(self) -> None:
        """Clip negative weights so g stays monotone non-decreasing in every loss."""
        for m in self.net:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.clamp_(min=0.0)

    def effective_weights(self, losses: Tensor) -> Tensor:
        """Batch-mean ∂g/∂ℓ_j (summed over pixels for loss images): the task weights g applies at these losses."""
        with torch.enable_grad():
            x = losses.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self(x).sum(), x)
        return grad.transpose(0, 1).flatten(1).sum(1).detach() / len(x)


def _builder(activation: str, deep: bool, conv: bool = False):
    def build(num_tasks: int, *, hidden_units: int, hidden_layers: int, init_weight: float, conv_layers: int = 4,
              kernel_size: int = 3) -> MonotoneNet:
        if conv:
            hidden = [hidden_units] * (conv_layers - 1)  # conv_layers convolutions in all, the last to one channel
        else:
            hidden = [hidden_units] * hidden_layers if deep else []
        return MonotoneNet(num_tasks, hidden, activation, init_weight, kernel_size if conv else None)  # type: ignore[arg-type]

    return build


AUXNETS.add("linear", _builder("identity", deep=False))
AUXNETS.add("deep_linear", _builder("identity", deep=True))
AUXNETS.add("nonlinear", _builder("softplus", deep=True))
AUXNETS.add("convnet", _builder("softplus", deep=True, conv=True))
