"""Learning new auxiliary tasks: MAXL, MAXL-F, Random and AuxiLearn's label generator (AuxiLearn §3.3, §5.4;
MAXL, Liu et al. 2019, Alg. 1).

Each method appends one *generated* auxiliary task to the dataset's main task: a classification over
K = Σ ψ[g] auxiliary classes, where every group g (a main class; for ShapeNet a category) owns its own
block of ψ[g] classes. A label generator g(x; θ2) (the dataset's ``build_label_generator``) gives soft
labels through Mask SoftMax (zero outside the sample's block), and the primary network's extra head
(``aux_outputs`` = K) is trained to predict them with the focal loss. The methods differ only in where
the labels come from and how θ2 learns:

- ``maxl``: θ2 follows the main loss after a one-step look-ahead of the primary network (second-order,
  through ``torch.func.functional_call``), plus the entropy term λ·Σ_k ȳ_k log ȳ_k and an L1 penalty.
- ``maxl_frozen`` (MAXL-F): the generator at its random initialisation, never updated.
- ``random``: a fixed random auxiliary class per sample, drawn uniformly inside its group's block.
- ``auxilearn_labels``: θ2 follows the IFT hypergradient of the main loss on the auxiliary set
  (``pipeline.bilevel``), optionally with a loss-combining network on (ℓ_main, ℓ_aux) (App. B.3).

The main task keeps the dataset's own loss (cross-entropy) for every method, STL included, so that
the comparison isolates the auxiliary task; only the generated task uses the focal loss.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.func import functional_call

from pipeline.auxnets import AUXNETS
from pipeline.bilevel import HyperOptimizer
from pipeline.config import StrictModel
from pipeline.datasets.base import reduce_pixels
from pipeline.methods import METHODS
from pipeline.methods.base import Batch, Method, StepContext


class LabelsConfig(StrictModel):
    """``methods.labels``: shared by maxl, maxl_frozen, random and auxilearn_labels, so they compare alike."""

    psi: int | list[int] = Field(5, description="ψ: auxiliary classes per group (one int: the same for all)")
    focal_gamma: float = Field(2.0, ge=0, description="γ of the focal loss on the generated task")
    lr: float = Field(1e-3, gt=0, description="θ2's SGD learning rate (MAXL and AuxiLearn)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, description="MAXL: L1 penalty on θ2; AuxiLearn: SGD weight decay")
    entropy_weight: float = Field(0.2, ge=0, description="λ of MAXL's entropy term")
    maxl_every: int = Field(1, ge=1, description="MAXL: inner steps between θ2 updates (Alg. 1: one per batch)")
    hyper_every: int = Field(5, ge=1, description="AuxiLearn: inner steps between θ2 updates (App. B.3: 5, 15, 25)")
    lookahead_lr: float | None = Field(None, gt=0, description="α of MAXL's look-ahead; null = train.lr")
    neumann_steps: int = Field(3, ge=0)
    neumann_lr: float = Field(0.02, gt=0)
    aux_batch_size: int = Field(0, ge=0, description="0 = the whole auxiliary set")
    combine: Literal["none", "linear", "nonlinear"] = Field(
        "none", description="auxilearn_labels: learn a loss-combining network too (App. B.3); none = ℓ_main + ℓ_aux")
    hidden_units: int = Field(10, ge=1)
    hidden_layers: int = Field(2, ge=1)
    diagnose_every: int = Field(25, ge=1, description="steps between label-entropy and gradient-cosine logs")

    @field_validator("psi")
    @classmethod
    def _positive(cls, v: int | list[int]) -> int | list[int]:
        if (v if isinstance(v, list) else [v]) and min(v if isinstance(v, list) else [v]) < 1:
            raise ValueError("every ψ[i] must be ≥ 1")
        if isinstance(v, list) and not v:
            raise ValueError("must not be empty")
        return v


def hierarchy_mask(psi: list[int]) -> Tensor:
    """Bool [G, K]: row g is True on group g's block of ψ[g] auxiliary classes (MAXL §3.3, M = B(y, ψ))."""
    ends = torch.tensor(psi).cumsum(0)
    starts = ends - torch.tensor(psi)
    k = torch.arange(int(ends[-1]))
    return (k >= starts[:, None]) & (k < ends[:, None])


def mask_softmax(logits: Tensor, groups: Tensor, mask: Tensor) -> Tensor:
    """Softmax over each sample's own block only: exactly 0 elsewhere, sums to 1 inside.

    ``logits`` [B, K, *points], ``groups`` [B] long, ``mask`` [G, K] from ``hierarchy_mask``.
    """
    keep = mask.to(logits.device)[groups].view(*groups.shape, mask.shape[1], *([1] * (logits.dim() - 2)))
    return torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=1)


def focal_loss(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """−Σ_k y_k (1 − p_k)^γ log p_k (MAXL Eq. 1) with soft targets over dim 1, averaged over any
    further dims (points, pixels): [B, K, *] -> [B]. γ = 0 is the cross-entropy."""
    log_p = F.log_softmax(logits, dim=1)
    loss = -(targets * (1 - log_p.exp()) ** gamma * log_p).sum(1)
    return loss.flatten(1).mean(1) if loss.dim() > 1 else loss


def negative_entropy(soft_labels: Tensor) -> Tensor:
    """Σ_k ȳ_k log ȳ_k of the batch-mean label ȳ (MAXL §3.4): minimising it spreads labels over all classes."""
    mean = soft_labels.transpose(0, 1).flatten(1).mean(1)
    return (mean * torch.log(mean.clamp_min(1e-12))).sum()


def block_entropy(soft_labels: Tensor, groups: Tensor, mask: Tensor) -> list[float]:
    """Collapse diagnostic: per group present in the batch, the entropy of its mean auxiliary label within
    its block, divided by log ψ (1 = all classes used equally, 0 = collapsed to one class; ψ = 1: 1)."""
    out = []
    for g in groups.unique().tolist():
        block = mask[g].to(soft_labels.device)
        mean = soft_labels[groups == g][:, block].transpose(0, 1).flatten(1).mean(1)
        h = -(mean * torch.log(mean.clamp_min(1e-12))).sum()
        out.append(float(h / math.log(len(mean))) if len(mean) > 1 else 1.0)
    return out


class WithGeneratedHead(nn.Module):
    """``net``'s full output (main outputs, generated-task output), as a module for ``functional_call``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Any:
        return self.net.decode(self.net.encode(x))


class GeneratedLabels(Method):
    """Base of the four methods: the generated task, its loss, and the diagnostics."""

    config_section = "labels"
    Config = LabelsConfig
    generated_tasks = ("generated",)
    label_source: ClassVar[Literal["generator", "random"]] = "generator"
    learns_generator: ClassVar[bool] = False

    def bind(self, dataset: Any, data: Any, params: Any) -> None:
        groups = dataset.label_groups(data)
        psi = self.cfg.psi if isinstance(self.cfg.psi, list) else [self.cfg.psi] * groups
        if len(psi) != groups:
            raise ValueError(f"methods.labels.psi: {len(psi)} entries, but {dataset.name} has {groups} groups")
        self.register_buffer("mask", hierarchy_mask(psi))
        self.dataset = dataset
        self.lookahead_lr = self.cfg.lookahead_lr or params.train.lr
        if self.label_source == "generator":
            self.generator = dataset.build_label_generator(data, params.profile.model, self.num_aux_classes)
            if not self.learns_generator:
                self.generator.requires_grad_(False)
        else:  # one fixed class per dataset row, uniform inside its group's block (drawn from the run's seed)
            group = dataset.label_group(data.targets)
            start = torch.tensor([0, *psi]).cumsum(0)[:-1]
            offset = (torch.rand(len(data)) * torch.tensor(psi)[group]).long()
            self.register_buffer("fixed_class", start[group] + offset)

    @property
    def num_aux_classes(self) -> int:
        return int(self.mask.shape[1])

    def aux_outputs(self) -> int:
        return self.num_aux_classes

    def soft_labels(self, batch: Batch, track_hparams: bool = False) -> Tensor:
        """Auxiliary targets [B, K, *points] for a batch (θ2 in the graph only when ``track_hparams``)."""
        groups = self.dataset.label_group(batch.y)
        if self.label_source == "random":
            return F.one_hot(self.fixed_class[batch.index], self.num_aux_classes).float()
        self.generator.train(self.learns_generator)
        with torch.set_grad_enabled(track_hparams and self.learns_generator):
            return mask_softmax(self.generator(batch.x), groups, self.mask)

    def losses_from_outputs(self, outputs: tuple[Any, Tensor], batch: Batch, soft: Tensor) -> Tensor:
        """[B, 2]: the dataset's main loss and the focal loss of the aux head against ``soft``."""
        main_out, aux_out = outputs
        if soft.dim() == 2 and aux_out.dim() > 2:  # one label per sample, predicted at every point
            soft = soft.view(*soft.shape, *([1] * (aux_out.dim() - 2))).expand_as(aux_out)
        main = reduce_pixels(self.dataset.per_task_losses(main_out, batch.y))[:, :1]
        return torch.cat([main, focal_loss(aux_out, soft, self.cfg.focal_gamma)[:, None]], dim=1)

    def batch_losses(self, model: nn.Module, dataset: Any, batch: Batch, track_hparams: bool = False
                     ) -> tuple[Tensor, Tensor]:
        z = model.encode(batch.x)
        return self.losses_from_outputs(model.decode(z), batch, self.soft_labels(batch, track_hparams)), z

    def training_loss(self, losses: Tensor) -> Tensor:
        return losses.mean(0).sum()

    def diagnostics(self, ctx: StepContext) -> dict[str, Any]:
        """Label entropy per group (collapse) and cos(∇ℓ_aux, ∇ℓ_main) on the shared layers (MAXL Fig. 4)."""
        batch = ctx.train_batch()
        soft = self.soft_labels(batch).detach()
        model = ctx.model
        losses = self.losses_from_outputs(model.decode(model.encode(batch.x)), batch, soft)
        shared = model.shared_parameters()
        g_main = torch.autograd.grad(losses[:, 0].mean(), shared, retain_graph=True, allow_unused=True)
        g_aux = torch.autograd.grad(losses[:, 1].mean(), shared, allow_unused=True)
        flat = [torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, shared)])
                for gs in (g_main, g_aux)]
        entropy = block_entropy(soft, self.dataset.label_group(batch.y), self.mask)
        return {"grad_cosine": float(F.cosine_similarity(flat[0], flat[1], dim=0)),
                "label_entropy": float(sum(entropy) / len(entropy))}

    def after_step(self, ctx: StepContext) -> dict[str, Any]:
        logs = self.update_generator(ctx) if self.learns_generator and ctx.step % self.update_every == 0 else {}
        if ctx.step % self.cfg.diagnose_every == 0:
            logs.update(self.diagnostics(ctx))
        return logs

    def update_generator(self, ctx: StepContext) -> dict[str, Any]:
        return {}


@METHODS.register("maxl")
class Maxl(GeneratedLabels):
    learns_generator = True

    @property
    def update_every(self) -> int:
        return self.cfg.maxl_every

    def bind(self, dataset: Any, data: Any, params: Any) -> None:
        super().bind(dataset, data, params)
        self.optimizer = torch.optim.SGD(self.generator.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum)

    def meta_loss(self, model: nn.Module, batch: Batch, loss_scale: Tensor) -> Tensor:
        """Alg. 1's meta objective: the main loss after one look-ahead SGD step on ℓ_main + τ·ℓ_aux,
        plus λ·Σ ȳ log ȳ and the L1 penalty; differentiable w.r.t. θ2 (second order through θ1⁺)."""
        full = WithGeneratedHead(model)
        params = dict(full.named_parameters())
        buffers = {k: v.clone() for k, v in full.named_buffers()}  # the look-ahead must not move BN statistics
        soft = self.soft_labels(batch, track_hparams=True)
        losses = self.losses_from_outputs(functional_call(full, {**params, **buffers}, (batch.x,)), batch, soft)
        inner = (losses * loss_scale).mean(0).sum()
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True, allow_unused=True)
        ahead = {k: p if g is None else p - self.lookahead_lr * g for (k, p), g in zip(params.items(), grads)}
        main_after = self.losses_from_outputs(functional_call(full, {**ahead, **buffers}, (batch.x,)), batch,
                                              soft.detach())[:, 0].mean()
        l1 = sum(p.abs().sum() for p in self.generator.parameters())
        return main_after + self.cfg.entropy_weight * negative_entropy(soft) + self.cfg.weight_decay * l1

    def update_generator(self, ctx: StepContext) -> dict[str, Any]:
        loss = self.meta_loss(ctx.model, ctx.train_batch(), ctx.loss_scale)
        params = list(self.generator.parameters())
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        self.optimizer.step()
        return {"meta_loss": float(loss.detach())}


@METHODS.register("auxilearn_labels")
class AuxiLearnLabels(GeneratedLabels):
    uses_aux_set = True
    learns_generator = True

    @property
    def update_every(self) -> int:
        return self.cfg.hyper_every

    def bind(self, dataset: Any, data: Any, params: Any) -> None:
        super().bind(dataset, data, params)
        hparams = list(self.generator.parameters())
        self.combiner = None
        if self.cfg.combine != "none":
            self.combiner = AUXNETS.get(self.cfg.combine)(
                self.num_tasks, hidden_units=self.cfg.hidden_units, hidden_layers=self.cfg.hidden_layers,
                init_weight=1.0)
            hparams += list(self.combiner.parameters())
        self.hyper = HyperOptimizer(hparams, lr=self.cfg.lr, momentum=self.cfg.momentum,
                                    weight_decay=self.cfg.weight_decay, every=self.cfg.hyper_every,
                                    neumann_steps=self.cfg.neumann_steps, neumann_lr=self.cfg.neumann_lr,
                                    after_update=self.combiner.project if self.combiner is not None else None)

    def training_loss(self, losses: Tensor) -> Tensor:
        if self.combiner is None:
            return losses.mean(0).sum()
        return (losses[:, 0] + self.combiner(losses)).mean()

    def update_generator(self, ctx: StepContext) -> dict[str, Any]:
        stats = self.hyper.step(self.training_loss(ctx.train_losses()), ctx.aux_losses()[:, 0].mean(), ctx.params)
        return {"hypergrad_norm": stats.hypergrad_norm, "outer_main_loss": stats.aux_loss}


METHODS.add("maxl_frozen", type("MaxlFrozen", (GeneratedLabels,), {}))
METHODS.add("random", type("RandomLabels", (GeneratedLabels,), {"label_source": "random"}))
