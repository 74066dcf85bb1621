"""MAOAL (Chen et al., NeurIPS 2022, "Module-Aware Optimization for Auxiliary Learning"): a learned non-negative
importance ω_km per (auxiliary loss k, module m of the trunk) scales that auxiliary's gradient on that module.
W's update direction is

    G_p = ∇_p ℓ_main + c · Σ_k ω_k,m(p) ∇_p ℓ_k     (p a trunk parameter in module m(p))
    G_p = ∇_p ℓ_main + c · Σ_k ∇_p ℓ_k              (p outside the trunk: the task heads)

with ω = relu(θ) ([C], the authors' code, github forchchch/MAOAL; ``positive: softplus`` for a weight that cannot
die at 0), c = 1/K ([C]'s 1/K; ``aux_scale: sum`` gives c = 1) and θ initialised at ``init_importance`` (1).

**The upper gradient.** G is not the gradient of one scalar loss (a module's gradient mixes the auxiliaries with
its own weights, so ∂G/∂W is not symmetric). The lower level's solution is a fixed point G(W*(θ), θ) = 0, so the
IFT gives dL_A/dθ = −(∂G/∂θ)ᵀ (∂G/∂W)⁻ᵀ ∇_W L_A: the project's one engine (``pipeline.methods.bilevel``) computes it
when handed G itself (built with ``create_graph``) in place of L_T: vector-Jacobian products of G replace the
Hessian-vector products in the Neumann series, the mixed term is the vector-Jacobian product of G with θ. This is
the IFT with the modified lower objective, as [C] does (its ``train_grads``); L_A is the main loss on the
auxiliary set, and θ's step is ``methods.bilevel``'s ([C]: Adam, lr 1e-2: ``methods.bilevel.optimizer: adam``).

**Modules.** The trunk's parameters (``shared_parameters()``, in depth order) are grouped into layers (one per
tensor of ≥ 2 dimensions, with the 1-D tensors after it) and the layers into ``modules`` contiguous groups
([C] uses 5 for its ConvNet-4: the four convolutions and the rest; ``modules`` larger than the trunk's layer count
gives one module per layer).

**Cost.** W's step takes the uniform backward plus min(T, M) backwards through the trunk: one per task, or
(module m's part of G being the gradient of the one scalar Σ_t c_tm ℓ_t) one per module, whichever is fewer.
"""
from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pipeline.datasets.shared.base import reduce_pixels
from pipeline.methods.base import LossCombiner, Method, MethodSpec, Roles, SharedTrunk, StepContext, register
from pipeline.methods.base import scale_losses
from pipeline.methods.outer.implicit import ImplicitOuterUpdate
from pipeline.methods.trunk import probe_trunk, trunk_modules
from pipeline.core.schema import StrictModel


class MAOALConfig(StrictModel):
    """``methods.maoal``: the per-(auxiliary, module) importances; their outer update is ``methods.bilevel``."""

    modules: int = Field(5, ge=1, description="modules of the trunk (contiguous groups of its layers; [C]: 5)")
    init_importance: float = Field(1.0, gt=0, description="initial importance of every (auxiliary, module) pair")
    positive: Literal["relu", "softplus"] = Field(
        "relu", description="ω = relu(θ) ([C]: a pair can be switched off for good) or softplus (never exactly 0)")
    aux_scale: Literal["mean", "sum"] = Field(
        "mean", description="c: the auxiliaries' gradients averaged (1/K, [C]) or summed (1, Equal's)")


def _inverse_softplus(y: float) -> float:
    return float(torch.log(torch.expm1(torch.tensor(y, dtype=torch.float64))))


class ModuleImportance(LossCombiner):
    """W's step along G (module-wise scaled auxiliary gradients); θ [K, M] are the raw importances."""

    rewrites_gradients = True  # the trunk's .grad is replaced by G after the backward

    def __init__(self, num_tasks: int, module_of: Sequence[int], cfg: MAOALConfig | None = None) -> None:
        cfg = cfg or MAOALConfig()
        super().__init__(num_tasks, cfg)
        if num_tasks < 2:
            raise ValueError("MAOAL needs at least one auxiliary task")
        self.num_modules = max(module_of) + 1
        # module of each trunk parameter tensor, in shared_parameters() order
        self.register_buffer("module_of", torch.as_tensor(list(module_of), dtype=torch.long))
        init = cfg.init_importance if cfg.positive == "relu" else _inverse_softplus(cfg.init_importance)
        self.importance = nn.Parameter(torch.full((num_tasks - 1, self.num_modules), float(init)))
        self.scale = 1.0 / (num_tasks - 1) if cfg.aux_scale == "mean" else 1.0

    def hyper_parameters(self) -> list[nn.Parameter]:
        return [self.importance]

    def omega(self) -> Tensor:
        """ω [K, M] ≥ 0: the importance of each auxiliary on each module."""
        return F.relu(self.importance) if self.cfg.positive == "relu" else F.softplus(self.importance)

    def coefficients(self, params: Sequence[Tensor], shared: Sequence[Tensor]) -> list[Tensor]:
        """Per parameter of ``params``, the weight [T] of each task's gradient in G (φ in the graph)."""
        if len(shared) != len(self.module_of):
            raise ValueError(f"MAOAL: the trunk has {len(shared)} parameter tensors, its modules were built for "
                             f"{len(self.module_of)}")
        module = {id(p): int(m) for p, m in zip(shared, self.module_of.tolist())}
        omega = self.omega() * self.scale
        outside = torch.cat([omega.new_ones(1), omega.new_full((self.num_tasks - 1,), self.scale)])
        columns = [torch.cat([omega.new_ones(1), omega[:, m]]) for m in range(self.num_modules)]
        return [columns[module[id(p)]] if id(p) in module else outside for p in params]

    def direction(self, losses: Tensor, params: Sequence[Tensor], shared: Sequence[Tensor],
                  create_graph: bool = False) -> list[Tensor]:
        """G for ``params`` from the batch's per-task losses [B, T]: one gradient per task, combined per module."""
        # G is linear in the per-task gradients, so it takes whichever is fewer backwards: one per task
        # (combined per module), or one per module of the scalar Σ_t c_tm ℓ_t (and one for the parameters
        # outside the trunk). The same G either way; on CUB's 37 tasks and 5 modules, 5 backwards, not 37.
        task_losses = losses.mean(0)
        coefs = self.coefficients(params, shared)
        groups: dict[int, list[int]] = {}  # parameters sharing one coefficient vector (a module, or the rest)
        for i, c in enumerate(coefs):
            groups.setdefault(id(c), []).append(i)
        if self.num_tasks <= len(groups):
            out = [torch.zeros_like(p) for p in params]
            for t in range(self.num_tasks):
                grads = torch.autograd.grad(task_losses[t], list(params), retain_graph=True, allow_unused=True,
                                            create_graph=create_graph)
                out = [o if g is None else o + c[t] * g for o, g, c in zip(out, grads, coefs)]
            return out
        out: list[Tensor | None] = [None] * len(params)
        for members in groups.values():
            combined = (coefs[members[0]] * task_losses).sum()
            grads = torch.autograd.grad(combined, [params[i] for i in members], retain_graph=True,
                                        allow_unused=True, create_graph=create_graph)
            for i, g in zip(members, grads):
                out[i] = torch.zeros_like(params[i]) if g is None else g
        return out

    def backward(self, losses: Tensor, shared: SharedTrunk) -> Tensor:
        # the heads (and any parameter outside the trunk) take the uniform c-weighted gradient by one backward;
        # the trunk's gradients are then replaced by the module-wise ones
        loss = self.uniform_loss(losses)
        loss.backward(retain_graph=True)
        trunk = [p for p in shared.params if p.requires_grad]
        for p, g in zip(trunk, self.direction(losses, trunk, shared.params)):
            p.grad = g.detach()
        return loss.detach()

    def uniform_loss(self, losses: Tensor) -> Tensor:
        """ℓ_main + c·Σ_k ℓ_k (the objective of the parameters outside the trunk)."""
        return losses[:, 0].mean() + self.scale * losses[:, 1:].mean(0).sum()

    def training_loss(self, losses: Tensor) -> Tensor:
        """ℓ_main + c·Σ_k ω̄_k ℓ_k with ω̄_k the auxiliary's mean importance over the modules: the effective
        task weights reported (W's step follows G, not this loss's gradient)."""
        weights = torch.cat([losses.new_ones(1), self.scale * self.omega().mean(1)])
        return (losses.mean(0) * weights).sum()

    def step_log(self) -> dict[str, float]:
        omega = self.omega().detach()
        return {f"importance_module_{m}": float(omega[:, m].mean()) for m in range(self.num_modules)}


def module_objectives(method: Method, ctx: StepContext) -> tuple[list[Tensor], Tensor, dict[str, float]]:
    """(G(W, θ) on a fresh outer training batch, built with ``create_graph``; the main loss on the auxiliary
    set; logs) for the engine's hyper step: the IFT of the lower fixed point G = 0."""
    batch = ctx.train_batch()
    losses, _ = method.batch_losses(ctx.model, ctx.dataset, batch, track_hparams=True)
    losses = scale_losses(reduce_pixels(losses), ctx.loss_scale, batch.labelled)
    combiner: ModuleImportance = method.combiner
    direction = combiner.direction(losses, ctx.params, ctx.model.shared_parameters(), create_graph=True)
    outer = reduce_pixels(ctx.aux_losses())[:, 0].mean()
    return direction, outer, {}


def build(num_tasks: int, cfg: MAOALConfig, bilevel: Any, dataset: Any, data: Any, params: Any) -> Roles:
    model, _ = probe_trunk(dataset, data, params)
    modules = trunk_modules([p.shape for p in model.shared_parameters()], cfg.modules)
    combiner = ModuleImportance(num_tasks, modules, cfg)
    outer = ImplicitOuterUpdate(combiner.hyper_parameters(), bilevel, objectives=module_objectives)
    return Roles(combiner, outer, None)


register(MethodSpec("maoal", build, group="auxilearn", order=6, Config=MAOALConfig, config_section="maoal",
                    uses_bilevel=True, uses_aux_set=True, needs_data=True, requires=frozenset({"auxiliaries"}),
                    needs_whole_w=True,
                    description="MAOAL: a learned importance per (auxiliary, trunk module) scaling that auxiliary's "
                                "gradient on the module, by the IFT of the modified lower update"))
