"""AuxiLearn for combining given auxiliaries (§3.2): L_T = ℓ_main + g(ℓ; φ), φ learned on the aux set (§3.4)."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator
from torch import Tensor

from pipeline.auxnets import AUXNETS
from pipeline.bilevel import HyperOptimizer
from pipeline.config import StrictModel
from pipeline.datasets.base import reduce_pixels
from pipeline.methods import METHODS
from pipeline.methods.base import Method, StepContext


class AuxiLearnConfig(StrictModel):
    lr: float = Field(1e-2, gt=0, description="φ's SGD learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-5, ge=0)
    hyper_every: int = Field(20, ge=1, description="N: inner steps between φ updates")
    neumann_steps: int = Field(3, ge=0, description="J: terms of the truncated Neumann series")
    neumann_lr: float = Field(0.02, gt=0, description="α: Neumann step size, below 2/λ_max of ∇²_W L_T")
    aux_batch_size: int = Field(0, ge=0, description="0 = the whole auxiliary set")
    max_hypergrad_norm: float | None = Field(None, gt=0, description="clip φ's hypergradient norm; null = never")
    hidden_units: int = Field(10, ge=1)
    hidden_layers: int = Field(4, ge=1, description="hidden layers of deep_linear and nonlinear")
    init_weight: float = Field(1.0, ge=0, description="initial effective weight of every auxiliary")
    conv_layers: int = Field(4, ge=1, description="convolutions of the ConvNet auxiliary network (§5.3)")
    kernel_size: int = Field(3, ge=1, description="the ConvNet's kernel size (odd)")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd, so the loss image keeps its size")
        return v


class AuxiLearn(Method):
    uses_aux_set = True
    config_section = "auxilearn"
    Config = AuxiLearnConfig
    auxnet_kind: ClassVar[str]
    # "train" is the App. C.1 ablation: φ learned on the training set collapses toward STL.
    hyper_set: ClassVar[Literal["aux", "train"]] = "aux"

    def __init__(self, num_tasks: int, cfg: AuxiLearnConfig) -> None:
        super().__init__(num_tasks, cfg)
        self.auxnet = AUXNETS.get(self.auxnet_kind)(
            num_tasks,
            hidden_units=cfg.hidden_units,
            hidden_layers=cfg.hidden_layers,
            init_weight=cfg.init_weight,
            conv_layers=cfg.conv_layers,
            kernel_size=cfg.kernel_size,
        )
        self.hyper = HyperOptimizer(
            list(self.auxnet.parameters()),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            every=cfg.hyper_every,
            neumann_steps=cfg.neumann_steps,
            neumann_lr=cfg.neumann_lr,
            after_update=self.auxnet.project,
            max_norm=cfg.max_hypergrad_norm,
        )

    def training_loss(self, losses: Tensor) -> Tensor:
        return (reduce_pixels(losses)[:, 0] + self.auxnet(losses)).mean()

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        if not self.hyper.due(ctx.step):
            return {}
        train_loss = self.training_loss(ctx.train_losses())
        outer = ctx.aux_losses() if self.hyper_set == "aux" else ctx.train_losses()
        stats = self.hyper.step(train_loss, outer[:, 0].mean(), ctx.params)
        return {"hypergrad_norm": stats.hypergrad_norm, "outer_main_loss": stats.aux_loss}


for _kind in ("linear", "deep_linear", "nonlinear"):
    METHODS.add(f"auxilearn_{_kind}", type(f"AuxiLearn_{_kind}", (AuxiLearn,), {"auxnet_kind": _kind}))
# §5.3: a CNN over loss images, for datasets with dense (per-pixel) tasks.
METHODS.add("auxilearn_convnet", type("AuxiLearn_convnet", (AuxiLearn,), {"auxnet_kind": "convnet",
                                                                          "needs_loss_images": True}))

METHODS.add(
    "auxilearn_train_set",
    type("AuxiLearnTrainSet", (AuxiLearn,), {"auxnet_kind": "linear", "hyper_set": "train", "uses_aux_set": False}),
)
