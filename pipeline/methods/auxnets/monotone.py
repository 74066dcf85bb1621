"""Monotone loss-combining networks (AuxiLearn §3.2, §5): Linear, Deep linear, Nonlinear and ConvNet.

All four are one network over the losses that differ only in depth, activation and layer type:
fully connected over the loss vector [B, T], or (ConvNet, §5.3) convolutional over the *loss image*
[B, T, H, W], one channel of per-pixel losses per task, whose per-pixel output is averaged over the
image. Monotone non-decreasing in every loss: weights are clipped to ≥ 0 after each update
(``project``) and the activations (and average pooling) are non-decreasing. The main loss enters
L_T = ℓ_main + g(ℓ; φ) directly (the skip connection), so g only adds to it; the linear network can
instead learn the main task's weight too (``learn_main_weight``, as the reference NYUv2 trainer does).

Where they start: at Equal's weighting, every auxiliary's effective weight ∂g/∂ℓ_j = ``init_weight``
and the main task's 1. ``calibrate`` sets that at the losses a run actually sees (its first batch),
by rescaling the first layer's input columns until the batch-mean effective weights match; before it
is called the networks are calibrated at losses of 1. The deep networks start from non-negative random
weights (U[0, ``init_range``]; 0.1 for the ConvNet as the reference) so every layer has gradient to learn
from; the ConvNet is 3×3 convolutions with average pooling and a 1×1 output convolution. The deep
networks keep positive weights through softplus instead of clipping (``positive_weights``): a clipped
small weight dies under φ's first steps and g becomes constant. ``positive_weights="none"`` drops the
constraint (App. C.2's non-monotone networks): weights start as above but may turn negative, so g can reverse
an auxiliary's gradient.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from pipeline.core.registry import AUXNETS

ACTIVATIONS = {"identity": nn.Identity, "softplus": nn.Softplus}
SMALLEST_WEIGHT = 1e-6  # a softplus-parametrised weight set to 0 starts here instead (its raw value is finite)


class SoftplusPositive(nn.Module):
    """weight = softplus(raw): positive without clipping, so no step can zero a layer for good (a clipped
    deep network whose weights are small next to φ's step size dies: g becomes constant forever)."""

    def forward(self, raw: Tensor) -> Tensor:
        return F.softplus(raw)

    def right_inverse(self, weight: Tensor) -> Tensor:
        w = weight.clamp_min(SMALLEST_WEIGHT)
        return w + torch.log(-torch.expm1(-w))


class MonotoneNet(nn.Module):
    """``kernel_size`` None: an MLP over [B, T]; an odd int: a CNN over loss images [B, T, H, W]."""

    def __init__(
        self,
        num_tasks: int,
        hidden: list[int],
        activation: Literal["identity", "softplus"] = "identity",
        init_weight: float = 1.0,
        kernel_size: int | None = None,
        *,
        bias: bool = True,
        pool: int = 1,
        init_range: float = 0.1,
        learn_main_weight: bool = False,
        positive_weights: Literal["clip", "softplus", "none"] = "clip",
    ) -> None:
        super().__init__()
        if learn_main_weight and hidden:
            raise ValueError("learn_main_weight applies to the linear auxiliary network only")
        self.kernel_size = kernel_size
        self.learn_main_weight = learn_main_weight
        self.init_weight = init_weight
        sizes = [num_tasks, *hidden, 1]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            use_bias = bias and bool(hidden)
            if kernel_size is None:
                layers.append(nn.Linear(fan_in, fan_out, bias=use_bias))
            else:
                k = 1 if last and hidden else kernel_size  # the reference's 1×1 output convolution
                layers.append(nn.Conv2d(fan_in, fan_out, k, padding=k // 2, bias=use_bias))
            if not last:
                layers.append(ACTIVATIONS[activation]())
                if kernel_size is not None and pool > 1:
                    layers.append(nn.AvgPool2d(pool, ceil_mode=True))
        self.net = nn.Sequential(*layers)
        # The main loss reaches L_T through the skip connection; a linear g that learns the main weight sees
        # it, the deeper networks see it (to model interactions) but start with zero weight on it.
        mask = torch.ones(num_tasks)
        if not hidden and not learn_main_weight:
            mask[0] = 0.0
        self.register_buffer("input_mask", mask)
        self._init(num_tasks, init_range)
        self.positive_weights = positive_weights
        if positive_weights == "softplus":
            for layer in self.layers:
                parametrize.register_parametrization(layer, "weight", SoftplusPositive())

    @property
    def layers(self) -> list[nn.Module]:
        return [m for m in self.net if isinstance(m, (nn.Linear, nn.Conv2d))]

    @property
    def depth(self) -> int:
        """Weight layers in series (1 for the linear network)."""
        return len(self.layers)

    @property
    def main_skip(self) -> bool:
        """Whether L_T adds ℓ_main itself (otherwise g carries the main task's learned weight)."""
        return not self.learn_main_weight

    def _init(self, num_tasks: int, init_range: float) -> None:
        layers = self.layers
        with torch.no_grad():
            if len(layers) == 1 and self.kernel_size is None:  # plain linear: exactly [0 or 1, w, …, w]
                layers[0].weight.fill_(self.init_weight)
                layers[0].weight[0, 0] = 1.0 if self.learn_main_weight else 0.0
                return
            for layer in layers:
                layer.weight.uniform_(0.0, init_range)
                if layer.bias is not None:
                    layer.bias.zero_()
            layers[0].weight[:, 0] = 0.0  # main effective weight starts at 1 (the skip alone)
        probe = torch.ones(2, num_tasks) if self.kernel_size is None else torch.ones(2, num_tasks, 8, 8)
        self.calibrate(probe)

    @torch.no_grad()
    def calibrate(self, losses: Tensor, iterations: int = 50, tolerance: float = 1e-4) -> None:
        """Rescale the first layer's input columns so every auxiliary's batch-mean effective weight at
        ``losses`` is ``init_weight`` (exact in one pass for the linear networks; a few for softplus)."""
        first = self.layers[0]
        if len(self.layers) == 1 and self.kernel_size is None:
            return  # the linear network's weights are its effective weights already
        for _ in range(iterations):
            weights = self.effective_weights(losses)[1:]
            alive = weights > 0
            if not alive.any():
                return
            ratio = torch.where(alive, self.init_weight / weights.clamp_min(1e-30), torch.ones_like(weights))
            scaled = first.weight.clone()
            scaled[:, 1:] *= ratio.view(1, -1, *([1] * (scaled.dim() - 2)))
            if parametrize.is_parametrized(first, "weight"):
                first.weight = scaled  # through SoftplusPositive.right_inverse
            else:
                first.weight.copy_(scaled)
            if (ratio - 1).abs().max() < tolerance:
                return

    def forward(self, losses: Tensor) -> Tensor:
        """[B, T] -> [B]; or loss images [B, T, H, W] -> per-pixel output averaged over the image, [B]."""
        if self.kernel_size is None:
            return self.net(losses * self.input_mask).squeeze(-1)
        if losses.dim() != 4:
            raise ValueError(f"the ConvNet auxiliary network needs loss images [B, T, H, W], got {tuple(losses.shape)}")
        return self.net(losses * self.input_mask.view(1, -1, 1, 1)).mean((1, 2, 3))

    @torch.no_grad()
    def project(self) -> None:
        """Clip negative weights so g stays monotone non-decreasing in every loss (softplus weights are
        positive by construction; ``none`` leaves them free)."""
        if self.positive_weights == "clip":
            for m in self.layers:
                m.weight.clamp_(min=0.0)

    def effective_weights(self, losses: Tensor) -> Tensor:
        """Batch-mean ∂g/∂ℓ_j (summed over pixels for loss images): the task weights g applies at these losses."""
        with torch.enable_grad():
            x = losses.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self(x).sum(), x)
        return grad.transpose(0, 1).flatten(1).sum(1).detach() / len(x)


def _builder(activation: str, deep: bool, conv: bool = False):
    def build(num_tasks: int, *, hidden_units: int = 10, hidden_layers: int = 4, init_weight: float = 1.0,
              conv_channels: tuple[int, ...] | list[int] = (8, 16), kernel_size: int = 3, pool: int = 2,
              init_range: float | None = None, learn_main_weight: bool = False,
              positive_weights: str = "auto", degree: int = 2) -> MonotoneNet:
        # (``degree`` belongs to the polynomial network, auxnets/polynomial.py.)
        # The ConvNet starts as the reference's (U[0, 0.1]); the MLPs from U[0, 1], where softplus weights
        # move additively (from U[0, 0.1] every layer shrinks together and the auxiliaries fall alike).
        init_range = init_range if init_range is not None else (0.1 if conv else 1.0)
        # auto: the linear network clips (its weights are O(1), φ's steps are small beside them); deeper ones
        # use softplus weights, which small U[0, init_range] weights need to survive φ's first steps.
        positivity = positive_weights if positive_weights != "auto" else ("softplus" if deep else "clip")
        if conv:
            return MonotoneNet(num_tasks, list(conv_channels), activation, init_weight, kernel_size,  # type: ignore[arg-type]
                               pool=pool, init_range=init_range, positive_weights=positivity)  # type: ignore[arg-type]
        hidden = [hidden_units] * hidden_layers if deep else []
        # Deep linear: no biases (a constant added to L_T changes nothing of W's gradient).
        return MonotoneNet(num_tasks, hidden, activation, init_weight, None, bias=activation != "identity",  # type: ignore[arg-type]
                           init_range=init_range, learn_main_weight=learn_main_weight and not deep,
                           positive_weights=positivity)  # type: ignore[arg-type]

    return build


AUXNETS.add("linear", _builder("identity", deep=False))
AUXNETS.add("deep_linear", _builder("identity", deep=True))
AUXNETS.add("nonlinear", _builder("softplus", deep=True))
AUXNETS.add("convnet", _builder("softplus", deep=True, conv=True))
