"""The implicit-function-theorem outer update (AuxiLearn §3.4): every ``hyper_every`` W steps, φ takes one step
of ``methods.bilevel``'s optimiser on the hypergradient of the main loss on the auxiliary set, through the
truncated Neumann series of ``pipeline.methods.bilevel``. φ is whatever the combiner and the generator expose."""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Literal

from torch import Tensor, nn

from pipeline.methods.bilevel import BilevelConfig, HyperOptimizer, HyperParameters, Slope
from pipeline.datasets.shared.base import reduce_pixels
from pipeline.core import distributed
from pipeline.core.faults import FaultKeys, Suspect
from pipeline.methods.base import OuterUpdate, StepContext


@contextmanager
def held_fixed(params: list[Tensor]) -> Iterator[None]:
    """``params`` out of autograd for the block: forwards record no graph below the first op that reads a
    parameter still in scope, so backward passes (and the activations they keep) stop there."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def in_scope(model: nn.Module, params: list[Tensor], scope: Literal["all", "top"]) -> list[Tensor]:
    """The part of ``params`` (the model's W) the IFT differentiates through (``methods.bilevel.implicit_scope``):
    all of it, or the trunk's last block and the task heads."""
    if scope == "all":
        return list(params)
    shared = {id(p) for p in model.shared_parameters()}
    top = {id(p) for p in model.last_shared_parameters()}
    return [p for p in params if id(p) in top or id(p) not in shared]


if TYPE_CHECKING:
    from pipeline.methods.base import Method


# A method's own objectives for the hyper step: (L_T through φ, the outer loss, scalars to log). The outer loss
# may hold terms that depend on φ directly (their gradient is the hypergradient's direct term, e.g. DTG-AuxL's
# instance regularisation).
Objectives = Callable[["Method", StepContext], tuple[Tensor, Tensor, dict[str, float]]]


class ImplicitOuterUpdate(OuterUpdate):
    """``hyper_set``: "aux" (the paper), or "train" (App. C.1's ablation: φ learned on the training set).

    ``objectives`` replaces both losses with the method's own (``Objectives``); ``lower_params`` are lower-level
    parameters outside the primary network (a generator's own head) that count as part of W in the IFT;
    ``section``/``lr_key`` name the config keys in messages (default ``methods.bilevel.lr``)."""

    def __init__(self, hparams: HyperParameters, cfg: BilevelConfig, after_update=None,
                 hyper_set: Literal["aux", "train"] = "aux", objectives: Objectives | None = None,
                 lower_params: list[nn.Parameter] | None = None, section: str = "bilevel",
                 lr_key: str = "lr") -> None:
        super().__init__()
        if cfg.curvature_batch and (objectives is not None or lower_params):
            raise ValueError(f"methods.{section}.curvature_batch = {cfg.curvature_batch}: only methods whose L_T is "
                             f"their combiner's training loss (the AuxiLearn family) split the hyper step's batch; "
                             f"this method builds its own objectives: set it to 0")
        self.cfg = cfg
        self.hyper_set = hyper_set
        self.objectives = objectives
        self.lower_params = list(lower_params or [])
        self.section, self.lr_key = section, lr_key
        self.hyper = HyperOptimizer(hparams, cfg, after_update=after_update, key=f"methods.{section}")

    def fault_suspects(self, keys: FaultKeys, step: int) -> list[Suspect]:
        """φ (the combiner's network and the generator's): moved only by its hyper steps."""
        return [Suspect(f"φ (trained by {self.hyper.key})", [h.detach() for h in self.hyper.hparams],
                        f"lower {keys.method(self.section, self.lr_key)} (now {self.cfg.lr:g})")]

    def batch_sizes(self, train_batch_size: int) -> tuple[int, int]:
        return self.cfg.hyper_train_batch or train_batch_size, self.cfg.hyper_aux_batch

    def step(self, method: "Method", ctx: StepContext) -> dict[str, float]:
        if not self.hyper.due(ctx.step):
            return {}
        # W's step has consumed W.grad and the trainer sets it to None before the next backward: release it
        # now, so that the hyper step's W-sized vectors do not sit on top of a dead copy (peak memory).
        for p in ctx.params:
            p.grad = None
        scope = in_scope(ctx.model, ctx.params, self.cfg.implicit_scope)
        with held_fixed([p for p in ctx.params if id(p) not in {id(q) for q in scope}]):
            return self._step(method, ctx, scope)

    def _step(self, method: "Method", ctx: StepContext, params: list[Tensor]) -> dict[str, float]:
        slope = None
        if self.objectives is not None:
            train_loss, outer_loss, logs = self.objectives(method, ctx)
            if not isinstance(train_loss, Tensor) and len(train_loss) != len(params) + len(self.lower_params):
                raise ValueError(f"methods.{self.section}.implicit_scope = {self.cfg.implicit_scope}: method "
                                 f"{method.name}'s lower update is one direction per tensor of W; set it to all")
        else:
            train_loss, slope = self._train_objective(method, ctx, params)
            logs = {}
            outer = ctx.aux_losses() if self.hyper_set == "aux" else ctx.train_losses()
            outer_loss = reduce_pixels(outer)[:, 0].mean()
        # the default losses come from separate forwards on separate batches: L_A's graph can go early
        stats = self.hyper.step(train_loss, outer_loss, [*params, *self.lower_params],
                                shared_graph=self.objectives is not None, slope=slope)
        return {**self.hyper.log(stats), **logs}

    def _train_objective(self, method: "Method", ctx: StepContext, params: list[Tensor]
                         ) -> tuple[Tensor, Slope | None]:
        """L_T for the hyper step: on the whole outer training batch, or (``curvature_batch``) on its first rows
        for the curvature, with the mixed term's ∇W L_T · series on the whole batch in forward mode."""
        rows = self.cfg.curvature_batch  # 0, or a method without objectives or lower params (the constructor)
        if not rows:
            return method.training_loss(ctx.train_losses()), None
        batch = ctx.train_batch()
        local_rows = max(1, -(-rows // distributed.world_size()))  # each process holds its shard of the batch
        if local_rows >= len(batch.x):
            return method.training_loss(ctx.batch_losses(batch)), None
        train_loss = method.training_loss(ctx.batch_losses(batch.head(local_rows)))
        return train_loss, lambda series: ctx.loss_slope(batch, params, series, method.training_loss)
