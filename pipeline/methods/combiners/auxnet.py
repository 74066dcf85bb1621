"""AuxiLearn's loss combiner (§3.2): L_T = ℓ_main + g(ℓ; φ) with the auxiliary network g (``pipeline/methods/auxnets``).
φ is trained by an outer update (``outer/implicit.py``); the methods are registered in ``methods/auxilearn.py``."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from torch import Tensor, nn

from pipeline.core.registry import AUXNETS
from pipeline.core.schema import StrictModel
from pipeline.datasets.shared.base import reduce_pixels
from pipeline.methods.base import LossCombiner


class AuxiLearnConfig(StrictModel):
    """``methods.auxilearn``: the auxiliary network g(ℓ; φ); its outer update is ``methods.bilevel``."""

    hidden_units: int = Field(10, ge=1)
    hidden_layers: int = Field(4, ge=1, description="hidden layers of deep_linear and nonlinear")
    init_weight: float = Field(1.0, ge=0, description="initial effective weight of every auxiliary (Equal's: 1)")
    calibrate_init: bool = Field(
        True, description="set the initial effective weights at the first batch's losses (else at losses of 1)")
    init_range: float | None = Field(
        None, gt=0, description="deep networks start from weights U[0, init_range]; null = 0.1 for the ConvNet "
                                "(the reference's init), 1.0 for the MLPs (softplus weights then move additively)")
    learn_main_weight: bool = Field(False, description="linear: learn the main task's weight too (reference NYUv2)")
    positive_weights: Literal["auto", "clip", "softplus", "none"] = Field(
        "auto", description="monotone by clipping weights at 0 (the paper) or softplus weights; auto = clip for "
                            "linear, softplus for the deeper networks (clipped small weights die under φ's steps); "
                            "none = unconstrained weights, a non-monotone g (App. C.2's ablation)")
    conv_channels: list[int] = Field(default_factory=lambda: [8, 16], min_length=1,
                                     description="hidden channels of the ConvNet auxiliary network (§5.3)")
    kernel_size: int = Field(3, ge=1, description="the ConvNet's kernel size (odd)")
    pool: int = Field(2, ge=1, description="the ConvNet's average pooling after each hidden convolution")
    retrain_with_fixed_phi: bool = Field(
        False, description="App. C.6: train once to find φ at the best validation step, then retrain W from the same "
                           "start with φ fixed there (no outer update); the retrained model is the result")
    degree: int = Field(2, ge=1, le=4, description="polynomial (auxilearn_polynomial, App. C.5): the highest total "
                        "degree of the monomials of the losses g weighs linearly")
    layer_rate: Literal["by_depth", "same"] = Field(
        "by_depth", description="φ's rate per layer of a network of D weight layers (deep linear and nonlinear: "
                                "hidden_layers + 1, ConvNet: len(conv_channels) + 1): by_depth = methods.bilevel.lr "
                                "/ D, as the D layers' relative steps add up in g's effective weights (at lr for "
                                "every layer they grew to 10^2-10^5 on the image stand-ins); same = lr for every "
                                "layer (the default before 2026-12-03)")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd, so the loss image keeps its size")
        return v

    @field_validator("conv_channels")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if min(v) < 1:
            raise ValueError("every channel count must be ≥ 1")
        return v


class AuxNetCombiner(LossCombiner):
    """L_T = mean_b [ℓ_main + g(ℓ; φ)] (g alone when the network carries the main term itself)."""

    def __init__(self, num_tasks: int, kind: str, calibrate: bool = True,
                 layer_rate: Literal["by_depth", "same"] = "by_depth", **auxnet_kwargs: Any) -> None:
        super().__init__(num_tasks)
        self.kind = kind
        self.needs_loss_images = kind == "convnet"  # §5.3: the ConvNet reads per-pixel loss images
        self.calibrate = calibrate
        self.layer_rate = layer_rate
        self.auxnet = AUXNETS.get(kind)(num_tasks, **auxnet_kwargs)

    @classmethod
    def from_config(cls, num_tasks: int, kind: str, cfg: AuxiLearnConfig) -> "AuxNetCombiner":
        """The auxiliary network of ``methods.auxilearn``."""
        return cls(num_tasks, kind, calibrate=cfg.calibrate_init, layer_rate=cfg.layer_rate, hidden_units=cfg.hidden_units,
                   hidden_layers=cfg.hidden_layers, init_weight=cfg.init_weight, conv_channels=cfg.conv_channels,
                   kernel_size=cfg.kernel_size, pool=cfg.pool, init_range=cfg.init_range,
                   learn_main_weight=cfg.learn_main_weight, positive_weights=cfg.positive_weights, degree=cfg.degree)

    def start(self, losses: Tensor) -> None:
        if self.calibrate:  # every auxiliary starts at init_weight at the losses this run sees (Equal's point)
            self.auxnet.calibrate(losses.detach())

    def hyper_parameters(self) -> list[nn.Parameter]:
        return list(self.auxnet.parameters())

    def hyper_parameter_groups(self) -> list[dict]:
        """One group; with ``layer_rate: by_depth`` its rate is lr / D for a network of D weight layers in series:
        g's effective weights are products over the layers, so each layer's relative step adds to theirs."""
        depth = getattr(self.auxnet, "depth", 1)
        return [{"params": self.hyper_parameters(), "lr_scale": 1.0 / depth if self.layer_rate == "by_depth" else 1.0}]

    def project(self) -> None:
        self.auxnet.project()

    def step_log(self) -> dict[str, Tensor]:
        """The polynomial network's weight per term after each step (App. C.5's Figure 8); nothing otherwise."""
        return self.auxnet.term_weights() if hasattr(self.auxnet, "term_weights") else {}

    def training_loss(self, losses: Tensor) -> Tensor:
        extra = self.auxnet(losses)
        return (reduce_pixels(losses)[:, 0] + extra).mean() if self.auxnet.main_skip else extra.mean()
