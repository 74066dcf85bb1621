"""The implicit-function-theorem outer update (AuxiLearn §3.4): every ``hyper_every`` W steps, φ takes one step
of ``methods.bilevel``'s optimiser on the hypergradient of the main loss on the auxiliary set, through the
truncated Neumann series of ``pipeline.bilevel``. φ is whatever the combiner and the generator expose."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from torch import nn

from pipeline.bilevel import BilevelConfig, HyperOptimizer
from pipeline.datasets.base import reduce_pixels
from pipeline.faults import FaultKeys, Suspect
from pipeline.methods.base import OuterUpdate, StepContext

if TYPE_CHECKING:
    from pipeline.methods.base import Method


class ImplicitOuterUpdate(OuterUpdate):
    """``hyper_set``: "aux" (the paper), or "train" (App. C.1's ablation: φ learned on the training set)."""

    def __init__(self, hparams: list[nn.Parameter], cfg: BilevelConfig, after_update=None,
                 hyper_set: Literal["aux", "train"] = "aux") -> None:
        super().__init__()
        self.cfg = cfg
        self.hyper_set = hyper_set
        self.hyper = HyperOptimizer(hparams, cfg, after_update=after_update)

    def fault_suspects(self, keys: FaultKeys, step: int) -> list[Suspect]:
        """φ (the combiner's network and the generator's): moved only by its hyper steps."""
        return [Suspect(f"φ (trained by {self.hyper.key})", [h.detach() for h in self.hyper.hparams],
                        f"lower {keys.method('bilevel', 'lr')} (now {self.cfg.lr:g})")]

    def batch_sizes(self, train_batch_size: int) -> tuple[int, int]:
        return self.cfg.hyper_train_batch or train_batch_size, self.cfg.hyper_aux_batch

    def step(self, method: "Method", ctx: StepContext) -> dict[str, float]:
        if not self.hyper.due(ctx.step):
            return {}
        train_loss = method.training_loss(ctx.train_losses())
        outer = ctx.aux_losses() if self.hyper_set == "aux" else ctx.train_losses()
        return self.hyper.log(self.hyper.step(train_loss, reduce_pixels(outer)[:, 0].mean(), ctx.params))
