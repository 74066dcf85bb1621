"""DTG-AuxL (Chen et al., NeurIPS 2023): the registered method ``dtg_auxl``.

Roles: the task generator ``DTGGenerator`` (joint feature + label generator φ, the generated task's head),
the combiner ``DTGWeights`` (L_t = L_p + Σ w_k L_ak + w_g L_g, softplus weights in φ), and the project's one
implicit outer update (``outer/implicit.ImplicitOuterUpdate`` on ``pipeline.methods.bilevel``'s engine) with DTG's own
objectives (Alg. 1):

- every N = ``hyper_every`` lower steps, the upper loss is the primary loss on the next batch of
  D'_p = reorder(D_p): the trainer's outer stream, an independent seeded shuffle of the same training set W
  trains on (no validation or auxiliary-set data: DTG does not use the aux set, so, as every method that does
  not, it trains on train ∪ aux and D'_p covers exactly that);
- the implicit gradient −∇θL_p·(∇²θL_t)⁻¹·∇φ∇θL_t by the truncated Neumann series (n terms, each
  Hessian-vector product scaled by α, [C]) with L_t on the lower step's batch b_τ and its pairing π;
- plus the explicit gradient of λ·R(φ) on that generated batch (instance regularisation). The engine returns
  the IFT value α·Σ(I − αH)^j v (→ dL_p/dφ); Alg. 1's p = Σ(I − αH)^j v has no leading α, so the regulariser
  enters the engine's outer loss as α·λ·R: the step direction is then exactly Alg. 1's g (Adam does not see
  the common factor α) and the clip (on ‖g/α‖) bounds Alg. 1's ‖g‖ as the authors' code does.
"""
from __future__ import annotations

from typing import Any

from pipeline.methods.bilevel import BilevelConfig
from pipeline.datasets.shared.base import reduce_pixels
from pipeline.methods.base import Method, MethodSpec, Roles, StepContext, register, scale_losses
from pipeline.methods.dtg.config import DTGConfig
from pipeline.methods.dtg.generator import DTGGenerator, DTGWeights
from pipeline.methods.outer.implicit import ImplicitOuterUpdate


def upper_config(cfg: DTGConfig, lower_lr: float) -> BilevelConfig:
    """The engine's settings for DTG's upper level: Adam, N, n, α (default the lower learning rate), the clip."""
    return BilevelConfig(optimizer="adam", lr=cfg.upper_lr, hyper_every=cfg.hyper_every,
                         neumann_steps=cfg.neumann_steps, neumann_lr=cfg.neumann_lr or lower_lr,
                         max_hypergrad_norm=cfg.max_hypergrad_norm, hyper_train_batch=cfg.upper_batch,
                         curvature_every=10, curvature_iterations=4)


def primary_loss(method: Method, ctx: StepContext) -> tuple[Any, Any]:
    """L_p on the next batch of D'_p (the outer stream): the mean over samples whose main label is known."""
    batch = ctx.train_batch()
    model, dataset = ctx.model, ctx.dataset
    losses = reduce_pixels(dataset.per_task_losses(model.decode(model.encode(batch.x)), batch.y))[:, :1]
    return scale_losses(losses, None, batch.labelled)[:, 0].mean(), batch


def dtg_objectives(method: Method, ctx: StepContext) -> tuple[Any, Any, dict[str, float]]:
    """(L_t(θ, φ) on b_τ, L_p on b'_p + α·λ·R(φ) on b_g,τ, logs) for the engine's hyper step."""
    gen: DTGGenerator = method.generator
    cfg: DTGConfig = gen.cfg
    if cfg.hessian_batch == "lower":
        batch = ctx.batch
        perm = gen.pairing_for(batch)
    else:
        batch = ctx.train_batch()
        perm = gen.new_pairing(batch)
    losses, _, generated = gen.losses(ctx.model, ctx.dataset, batch, perm, track_hparams=True)
    train_loss = method.training_loss(scale_losses(reduce_pixels(losses), ctx.loss_scale, batch.labelled))
    outer, _ = primary_loss(method, ctx)
    logs = {"upper_primary_loss": float(outer.detach())}
    if cfg.instance_reg and cfg.reg_weight > 0:
        reg = gen.regulariser(generated)
        alpha = float(method.outer.hyper.neumann_lr)
        outer = outer + alpha * cfg.reg_weight * reg
        logs["instance_reg"] = float(reg.detach())
    return train_loss, outer, logs


def build(num_tasks: int, cfg: DTGConfig, bilevel: Any, dataset: Any, data: Any, params: Any) -> Roles:
    generator = DTGGenerator(cfg, dataset, data, params)
    combiner = DTGWeights(1 + len(generator.aux_columns) + len(generator.generated_tasks), cfg.learn_weights)
    lower_lr = float(params.train.lr) if params is not None else 1e-3
    outer = ImplicitOuterUpdate(generator.hyper_parameters() + combiner.hyper_parameters(),
                                upper_config(cfg, lower_lr), objectives=dtg_objectives,
                                lower_params=generator.joint_parameters(), section="dtg", lr_key="upper_lr")
    return Roles(combiner, outer, generator)


register(MethodSpec("dtg_auxl", build, group="generated", order=5, Config=DTGConfig, config_section="dtg",
                    needs_data=True, requires=frozenset({"auxiliaries", "task_labels"}),
                    description="DTG-AuxL: joint feature and label generation, φ by the implicit gradient of the "
                                "primary loss on a reordered training set"))
