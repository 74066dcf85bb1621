"""JTDS (Chen et al., ICML 2022, "Auxiliary Learning with Joint Task and Data Scheduling"): a scheduler φ gives
every (sample, task) pair its own positive weight, learned on the auxiliary set's main loss by the implicit
(IFT/Neumann) hypergradient of the project's one bilevel engine (``outer/implicit.py``, ``methods.bilevel``).

The weight, as the authors' code (github forchchch/JTDS, ``MonoJoint``; [C] in dtg-auxl-method-notes.md §9)
forms it from the task, the sample's feature f_b and its loss normalised over the batch ℓ̃_bt:

    w_bt = softplus(u_t · f_b + v_t) · sigmoid(a_t · ℓ̃_bt + c_t) · softplus(p_t)

u_t (a row of one linear map: the task's feature embedding), v_t, a_t, c_t and the task prior p_t are φ. f_b and
ℓ̃ are detached (the scheduler reads them; W's gradient flows only through the weighted losses), so
L_T = mean_b Σ_t w_bt ℓ_bt and its W-gradient Σ w_bt ∇ℓ_bt. The main task is weighted per sample too (as [C];
``weight_main: false`` keeps it at 1), which lets the scheduler down-weight samples with noisy labels. No
monotonicity in the loss is imposed: a_t's sign is learned (a noisy auxiliary label has a large loss, so its
weight falls when a_t < 0). Initial weights are ``init_weight`` for every pair at f·u = 0 and ℓ̃ = 0 (Equal's
point by default; the reference code starts at 0.455).
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pipeline.datasets.shared.base import reduce_pixels
from pipeline.methods.base import LossCombiner, Method, MethodSpec, Roles, SharedTrunk, StepContext, register
from pipeline.methods.base import scale_losses
from pipeline.methods.outer.implicit import ImplicitOuterUpdate
from pipeline.methods.trunk import probe_trunk, sample_features
from pipeline.core.schema import StrictModel


class JTDSConfig(StrictModel):
    """``methods.jtds``: the joint task and data scheduler; its outer update is ``methods.bilevel``."""

    init_weight: float = Field(1.0, gt=0, description="initial weight of every (sample, task) pair (Equal's 1; the "
                                                      "reference code's start is 0.455)")
    feature_init: float = Field(0.05, ge=0, description="the feature map's weights start U[-r, r] ([C]: 0.05)")
    slope_init: float = Field(0.05, ge=0, description="the loss slopes a_t start U[0, r] ([C]: 0.05)")
    weight_main: bool = Field(True, description="weight the main task per sample too ([C]); false = main weight 1")
    norm_eps: float = Field(1e-6, gt=0, description="ε of the per-task loss normalisation (ℓ − mean) / (std + ε)")
    normalise: Literal["batch", "none"] = Field(
        "batch", description="batch: the main task's weights average 1 over the batch and the auxiliaries' "
        "average init_weight over the batch and the auxiliary tasks, so φ moves weight between samples and "
        "between auxiliaries but cannot scale the step nor the auxiliaries' total (our reading [R]: the raw "
        "weights diverged on the CUB stand-in; dividing by the main task's mean alone let the auxiliaries' "
        "weights reach 10^5 on demo); none: the raw weights, as the reference code")


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class JointScheduler(LossCombiner):
    """L_T = mean_b Σ_t w_bt ℓ_bt with the JTDS weights w [B, T] of each sample's feature and normalised losses."""

    def __init__(self, num_tasks: int, feature_dim: int, cfg: JTDSConfig | None = None) -> None:
        cfg = cfg or JTDSConfig()
        super().__init__(num_tasks, cfg)
        self.feature_dim = feature_dim
        self.features = nn.Linear(feature_dim, num_tasks)
        nn.init.uniform_(self.features.weight, -cfg.feature_init, cfg.feature_init)
        nn.init.zeros_(self.features.bias)
        self.loss_slope = nn.Parameter(cfg.slope_init * torch.rand(num_tasks))
        self.loss_bias = nn.Parameter(torch.zeros(num_tasks))
        # softplus(0) · sigmoid(0) · softplus(p) = init_weight
        self.prior = nn.Parameter(torch.full((num_tasks,), _inverse_softplus(cfg.init_weight / (math.log(2) * 0.5))))
        # the last training batch's mean feature: stands in for a sample's feature in ``training_loss`` (task
        # weights and reports see losses only)
        self.register_buffer("mean_feature", torch.zeros(feature_dim))

    def hyper_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def normalised(self, losses: Tensor) -> Tensor:
        """ℓ̃: every task's losses standardised over the batch (detached; a batch of one is all zeros)."""
        losses = losses.detach()
        if len(losses) < 2:
            return torch.zeros_like(losses)
        return (losses - losses.mean(0, keepdim=True)) / (losses.std(0, keepdim=True) + self.cfg.norm_eps)

    def weights(self, losses: Tensor, features: Tensor) -> Tensor:
        """w [B, T] > 0 from the per-sample losses [B, T] and features [B, feature_dim] (φ in the graph)."""
        if features.shape != (len(losses), self.feature_dim):
            raise ValueError(f"JTDS scheduler: features of shape {tuple(features.shape)}, expected "
                             f"({len(losses)}, {self.feature_dim})")
        by_feature = F.softplus(self.features(features.detach()))
        by_loss = torch.sigmoid(self.loss_slope * self.normalised(losses) + self.loss_bias)
        w = by_feature * by_loss * F.softplus(self.prior)
        main, aux = w[:, :1], w[:, 1:]
        if not self.cfg.weight_main:
            main = torch.ones_like(main)
        elif self.cfg.normalise == "batch":
            main = main / main.mean()
        if self.cfg.normalise == "batch" and aux.numel():
            aux = aux * (self.cfg.init_weight / aux.mean())
        return torch.cat([main, aux], dim=1)

    def weighted_loss(self, losses: Tensor, z: Tensor) -> Tensor:
        """L_T of a batch with its representation z; differentiable in W (through ℓ) and φ (through w)."""
        return (self.weights(losses, sample_features(z)) * losses).sum(1).mean()

    def backward(self, losses: Tensor, shared: SharedTrunk) -> Tensor:
        features = sample_features(shared.representation.detach())
        self.mean_feature.copy_(features.mean(0))
        loss = (self.weights(losses, features).detach() * losses).sum(1).mean()
        loss.backward()
        return loss.detach()

    def training_loss(self, losses: Tensor) -> Tensor:
        """L_T with the last training batch's mean feature for every sample (no features here)."""
        features = self.mean_feature.expand(len(losses), -1)
        return (self.weights(losses, features) * losses).sum(1).mean()


def scheduler_objectives(method: Method, ctx: StepContext) -> tuple[Tensor, Tensor, dict[str, float]]:
    """(L_T on a fresh outer training batch with the scheduler's weights, the main loss on the auxiliary set,
    logs) for the engine's hyper step. The per-sample features are z of that batch, which ``training_loss``
    (losses only) cannot see."""
    batch = ctx.train_batch()
    losses, z = method.batch_losses(ctx.model, ctx.dataset, batch, track_hparams=True)
    losses = scale_losses(reduce_pixels(losses), ctx.loss_scale, batch.labelled)
    scheduler: JointScheduler = method.combiner
    w = scheduler.weights(losses, sample_features(z))
    train_loss = (w * losses).sum(1).mean()
    outer = reduce_pixels(ctx.aux_losses())[:, 0].mean()
    logs = {"weight_min": float(w.detach().min()), "weight_max": float(w.detach().max())}
    return train_loss, outer, logs


def build(num_tasks: int, cfg: JTDSConfig, bilevel: Any, dataset: Any, data: Any, params: Any) -> Roles:
    _, z = probe_trunk(dataset, data, params)
    combiner = JointScheduler(num_tasks, sample_features(z).shape[1], cfg)
    outer = ImplicitOuterUpdate(combiner.hyper_parameters(), bilevel, objectives=scheduler_objectives)
    return Roles(combiner, outer, None)


register(MethodSpec("jtds", build, group="auxilearn", order=5, Config=JTDSConfig, config_section="jtds",
                    uses_bilevel=True, uses_aux_set=True, needs_data=True, requires=frozenset({"auxiliaries"}),
                    description="JTDS: a weight per (sample, task) from the task, the sample's feature and its "
                                "normalised loss, learned by IFT hypergradients on the auxiliary set"))
