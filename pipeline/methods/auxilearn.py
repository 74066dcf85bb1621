"""AuxiLearn for combining given auxiliaries (§3.2): L_T = ℓ_main + g(ℓ; φ), φ learned on the aux set (§3.4)."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator
from torch import Tensor

from pipeline.registry import AUXNETS
from pipeline.bilevel import BilevelConfig, HyperOptimizer
from pipeline.schema import StrictModel
from pipeline.datasets.base import reduce_pixels
from pipeline.registry import METHODS
from pipeline.methods.base import Method, StepContext


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
    positive_weights: Literal["auto", "clip", "softplus"] = Field(
        "auto", description="monotone by clipping weights at 0 (the paper) or softplus weights; auto = clip for "
                            "linear, softplus for the deeper networks (clipped small weights die under φ's steps)")
    conv_channels: list[int] = Field(default_factory=lambda: [8, 16], min_length=1,
                                     description="hidden channels of the ConvNet auxiliary network (§5.3)")
    kernel_size: int = Field(3, ge=1, description="the ConvNet's kernel size (odd)")
    pool: int = Field(2, ge=1, description="the ConvNet's average pooling after each hidden convolution")

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


class AuxiLearn(Method):
    uses_aux_set = True
    uses_bilevel = True
    config_section = "auxilearn"
    Config = AuxiLearnConfig
    auxnet_kind: ClassVar[str]
    # "train" is the App. C.1 ablation: φ learned on the training set collapses toward STL.
    hyper_set: ClassVar[Literal["aux", "train"]] = "aux"

    def __init__(self, num_tasks: int, cfg: AuxiLearnConfig | None = None, bilevel: BilevelConfig | None = None
                 ) -> None:
        super().__init__(num_tasks, cfg, bilevel)
        cfg = self.cfg
        self.auxnet = AUXNETS.get(self.auxnet_kind)(
            num_tasks,
            hidden_units=cfg.hidden_units,
            hidden_layers=cfg.hidden_layers,
            init_weight=cfg.init_weight,
            conv_channels=cfg.conv_channels,
            kernel_size=cfg.kernel_size,
            pool=cfg.pool,
            init_range=cfg.init_range,
            learn_main_weight=cfg.learn_main_weight,
            positive_weights=cfg.positive_weights,
        )
        self.hyper = HyperOptimizer(list(self.auxnet.parameters()), self.bilevel_cfg, after_update=self.auxnet.project)

    def start(self, losses: Tensor) -> None:
        if self.cfg.calibrate_init:
            self.auxnet.calibrate(losses.detach())

    def training_loss(self, losses: Tensor) -> Tensor:
        extra = self.auxnet(losses)
        return (reduce_pixels(losses)[:, 0] + extra).mean() if self.auxnet.main_skip else extra.mean()

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        if not self.hyper.due(ctx.step):
            return {}
        train_loss = self.training_loss(ctx.train_losses())
        outer = ctx.aux_losses() if self.hyper_set == "aux" else ctx.train_losses()
        return self.hyper.log(self.hyper.step(train_loss, reduce_pixels(outer)[:, 0].mean(), ctx.params))


for _kind in ("linear", "deep_linear", "nonlinear"):
    METHODS.add(f"auxilearn_{_kind}", type(f"AuxiLearn_{_kind}", (AuxiLearn,), {"auxnet_kind": _kind}))
# §5.3: a CNN over loss images, for datasets with dense (per-pixel) tasks.
METHODS.add("auxilearn_convnet", type("AuxiLearn_convnet", (AuxiLearn,), {"auxnet_kind": "convnet",
                                                                          "needs_loss_images": True}))

METHODS.add(
    "auxilearn_train_set",
    type("AuxiLearnTrainSet", (AuxiLearn,), {"auxnet_kind": "linear", "hyper_set": "train", "uses_aux_set": False}),
)
