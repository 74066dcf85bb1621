"""Learning new auxiliary tasks: MAXL, MAXL-F, Random and AuxiLearn's label generator (AuxiLearn §3.3, §5.4;
MAXL, Liu et al. 2019, Alg. 1).

Each method appends one *generated* auxiliary task to the dataset's main task: a classification over
K = Σ ψ[g] auxiliary classes, where every group g (a main class; for ShapeNet a category) owns its own
block of ψ[g] classes. A label generator g(x; θ2) (the dataset's ``build_label_generator``) gives soft
labels through Mask SoftMax (zero outside the sample's block), and the primary network's extra head
(``aux_outputs`` = K) is trained to predict them with the focal loss. The methods differ only in where
the labels come from and how θ2 learns:

- ``maxl``: θ2 follows the main loss after a one-step look-ahead of the primary network (second-order,
  through ``torch.func.functional_call``), plus the entropy term λ·Σ_k ȳ_k log ȳ_k and a penalty on θ2.
- ``maxl_first_order``: the same objective, with the second-order term (the mixed Hessian-vector
  product) replaced by the central finite difference the MAXL authors ship (after DARTS, ε = 0.01/‖d‖).
- ``maxl_frozen`` (MAXL-F): the generator at its random initialisation, never updated.
- ``random``: a fixed random auxiliary class per sample, drawn uniformly inside its group's block.
- ``auxilearn_labels``: θ2 follows the IFT hypergradient of the main loss on the auxiliary set
  (``pipeline.methods.bilevel``), optionally with a loss-combining network on (ℓ_main, ℓ_aux) (App. B.3).

MAXL's defaults follow its authors' reference code (github.com/lorenmt/maxl, ``model_vgg_maxl.py`` and
``model_vgg_maxl_firstorder.py``), each switchable in ``methods.labels``:

- ``maxl_main_loss: focal``: the reference trains the main task with the focal loss too (γ = focal_gamma,
  its ``model_fit``), in W's step and in the meta objective. This applies to ``maxl`` and
  ``maxl_first_order`` only; every other method (STL, MAXL-F, Random, AuxiLearn) keeps the dataset's own
  main loss (cross-entropy), so that they compare with STL on the auxiliary task alone. Note the
  reference's single-task baseline is trained with the focal loss as well: for a comparison with ``stl``
  that isolates the auxiliary task, set ``maxl_main_loss: dataset``. Validation, model selection and the
  test metrics use the dataset's loss for every method.
- θ2's optimiser: SGD, ``lr`` 1e-3, no momentum (``maxl_momentum: 0``), and the penalty
  ``maxl_penalty: l2`` = SGD weight decay ``weight_decay`` (5e-4), as the reference; the paper's text
  says L1 (``maxl_penalty: l1``: weight_decay·Σ|θ2| added to the meta objective).
- the look-ahead step θ1⁺ = θ1 − α·(∇ℓ + wd·θ1) uses W's optimiser's current learning rate (its
  schedule) and weight decay, as the first-order reference does; ``maxl_lookahead_momentum: true`` adds
  the optimiser's momentum buffer the way ``torch.optim.SGD`` would (the first-order reference always
  does; its second-order script's W optimiser has no momentum). ``lookahead_lr`` overrides α.
- the meta batch (``maxl_meta_batch``): the reference alternates a whole epoch of W steps with a whole
  epoch of θ2 steps over a freshly shuffled pass of the training set, so a θ2 step never reuses the batch
  W just stepped on; ``fresh`` (default) draws it from the outer update's own stream (an independent
  shuffle of the training set), ``step`` reuses the batch W just stepped on. ``maxl_every`` interleaves
  θ2 steps with W's steps instead of alternating whole epochs.
- the first-order reference drops the entropy term's gradient (it overwrites θ2's gradient with the
  finite-difference term); here its direct gradient is kept, so λ means the same in both methods.

"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from pipeline.core.schema import StrictModel
from pipeline.datasets.shared.base import reduce_pixels
from pipeline.methods.base import Batch, StepContext, TaskGenerator


class LabelsConfig(StrictModel):
    """``methods.labels``: shared by maxl, maxl_frozen, random and auxilearn_labels, so they compare alike."""

    psi: int | list[int] = Field(5, description="ψ: auxiliary classes per group (one int: the same for all)")
    focal_gamma: float = Field(2.0, ge=0, description="γ of the focal loss on the generated task")
    lr: float = Field(1e-3, gt=0, description="θ2's SGD learning rate (MAXL and AuxiLearn)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(
        5e-4, ge=0, description="θ2's penalty: MAXL as maxl_penalty says; AuxiLearn: SGD weight decay")
    entropy_weight: float = Field(0.2, ge=0, description="λ of MAXL's entropy term")
    maxl_every: int = Field(1, ge=1, description="MAXL: inner steps between θ2 updates (Alg. 1: one per batch)")
    maxl_main_loss: Literal["focal", "dataset"] = Field(
        "focal", description="maxl, maxl_first_order: main-task loss in W's step and the meta objective "
                             "(focal, γ = focal_gamma, as the reference; dataset = the dataset's loss, as STL)")
    maxl_momentum: float = Field(0.0, ge=0, lt=1, description="MAXL: momentum of θ2's SGD (reference: none)")
    maxl_penalty: Literal["l2", "l1"] = Field(
        "l2", description="MAXL: weight_decay as SGD weight decay (l2, the reference code) or an L1 term (the paper)")
    maxl_lookahead_momentum: bool = Field(
        False, description="MAXL: the look-ahead step adds W's optimiser's momentum buffer, as torch's SGD would")
    maxl_meta_batch: Literal["fresh", "step"] = Field(
        "fresh", description="MAXL: θ2's batch: a fresh one from the outer stream (the reference's separate "
                             "pass over the training set) or the batch W just stepped on")
    maxl_fd_epsilon: float = Field(
        0.01, gt=0, description="maxl_first_order: finite-difference step ε = maxl_fd_epsilon / ‖d‖ (DARTS: 0.01)")
    lookahead_lr: float | None = Field(
        None, gt=0, description="α of MAXL's look-ahead; null = W's optimiser's current learning rate")
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


class GeneratedLabels(TaskGenerator):
    """The generated task (MAXL §3.3): a classification over K = Σ ψ[g] auxiliary classes whose soft labels come
    from a label network θ2 (``label_source: generator``) or a fixed random class per sample (``random``); its
    loss, and the collapse and gradient diagnostics. θ2 learns only when an outer update trains it (``learns``)."""

    generated_tasks = ("generated",)

    def __init__(self, cfg: LabelsConfig, dataset: Any, data: Any, params: Any,
                 label_source: Literal["generator", "random"] = "generator", learns: bool = False,
                 main_loss_kind: Literal["focal", "dataset"] = "dataset") -> None:
        super().__init__()
        self.cfg = cfg
        self.label_source = label_source
        self.learns_generator = learns
        self.report_sections = ("soft_labels",) if label_source == "generator" else ()
        # The main task's training loss: the dataset's own (as STL) unless a method says otherwise (MAXL).
        self.main_loss_kind = main_loss_kind
        groups = dataset.label_groups(data)
        psi = cfg.psi if isinstance(cfg.psi, list) else [cfg.psi] * groups
        if len(psi) != groups:
            raise ValueError(f"methods.labels.psi: {len(psi)} entries, but {dataset.name} has {groups} groups")
        self.register_buffer("mask", hierarchy_mask(psi))
        self.dataset = dataset
        if label_source == "generator":
            self.label_net = dataset.build_label_generator(data, params.profile.model, self.num_aux_classes)
            if not learns:
                self.label_net.requires_grad_(False)
        else:  # one fixed class per dataset row, uniform inside its group's block (drawn from the method's seed)
            group = dataset.label_group(data.targets)
            start = torch.tensor([0, *psi]).cumsum(0)[:-1]
            offset = (torch.rand(len(data)) * torch.tensor(psi)[group]).long()
            self.register_buffer("fixed_class", start[group] + offset)

    @property
    def num_aux_classes(self) -> int:
        return int(self.mask.shape[1])

    def head_outputs(self) -> int:
        return self.num_aux_classes

    def hyper_parameters(self) -> list[nn.Parameter]:
        return list(self.label_net.parameters()) if self.learns_generator else []

    def soft_labels(self, batch: Batch, track_hparams: bool = False, train_mode: bool | None = None) -> Tensor:
        """Auxiliary targets [B, K, *points] for a batch (θ2 in the graph only when ``track_hparams``).

        ``train_mode``: the generator's mode for this call (None: training mode for a generator that learns,
        evaluation mode for a frozen one)."""
        groups = self.dataset.label_group(batch.y)
        if self.label_source == "random":
            return F.one_hot(self.fixed_class[batch.index], self.num_aux_classes).float()
        self.label_net.train(self.learns_generator if train_mode is None else train_mode)
        with torch.set_grad_enabled(track_hparams and self.learns_generator):
            return mask_softmax(self.label_net(batch.x), groups, self.mask)

    def main_losses(self, main_out: Any, y: Tensor) -> Tensor:
        """[B, 1]: the main task's loss per sample, as ``main_loss_kind`` says.

        ``focal``: −(1 − p_y)^γ log p_y (the reference's ``model_fit`` on the main task), for class logits
        [B, C] against ``y[:, 0]`` or per-point logits [B, C, N] against ``y[:, :N]`` (averaged over points,
        as the dataset's cross-entropy); γ = 0 gives the dataset's cross-entropy back."""
        if self.main_loss_kind == "dataset":
            return reduce_pixels(self.dataset.per_task_losses(main_out, y))[:, :1]
        if isinstance(main_out, (tuple, list)):  # a dataset with given auxiliaries too: the main task's comes first
            main_out = main_out[0]
        labels = (y[:, 0] if main_out.dim() == 2 else y[:, :main_out.shape[2]]).long()
        log_pt = F.log_softmax(main_out, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
        loss = -(1 - log_pt.exp()) ** self.cfg.focal_gamma * log_pt
        return (loss.flatten(1).mean(1) if loss.dim() > 1 else loss)[:, None]

    def losses_from_outputs(self, outputs: tuple[Any, Tensor], batch: Batch, soft: Tensor) -> Tensor:
        """[B, 2]: the main loss (``main_losses``) and the focal loss of the aux head against ``soft``."""
        main_out, aux_out = outputs
        if soft.dim() == 2 and aux_out.dim() > 2:  # one label per sample, predicted at every point
            soft = soft.view(*soft.shape, *([1] * (aux_out.dim() - 2))).expand_as(aux_out)
        main = self.main_losses(main_out, batch.y)
        return torch.cat([main, focal_loss(aux_out, soft, self.cfg.focal_gamma)[:, None]], dim=1)

    def batch_losses(self, model: nn.Module, dataset: Any, batch: Batch, track_hparams: bool = False
                     ) -> tuple[Tensor, Tensor]:
        z = model.encode(batch.x)
        return self.losses_from_outputs(model.decode(z), batch, self.soft_labels(batch, track_hparams)), z

    def diagnostics(self, ctx: StepContext) -> dict[str, Any]:
        """Label entropy per group (collapse) and cos(∇ℓ_aux, ∇ℓ_main) on the shared layers (MAXL Fig. 4).

        Observation only: a batch from the diagnostics' own stream, the primary network and the generator in
        evaluation mode (no BatchNorm statistics move, no dropout draws), every module's mode restored after."""
        batch = ctx.diagnostic_batch()
        model = ctx.model
        modules = [*model.modules(), *(self.label_net.modules() if self.label_source == "generator" else ())]
        modes = [(m, m.training) for m in modules]
        try:
            model.eval()
            soft = self.soft_labels(batch, train_mode=False).detach()
            losses = self.losses_from_outputs(model.decode(model.encode(batch.x)), batch, soft)
            shared = model.shared_parameters()
            g_main = torch.autograd.grad(losses[:, 0].mean(), shared, retain_graph=True, allow_unused=True)
            g_aux = torch.autograd.grad(losses[:, 1].mean(), shared, allow_unused=True)
        finally:
            for m, mode in modes:
                m.training = mode
        flat = [torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, shared)])
                for gs in (g_main, g_aux)]
        entropy = block_entropy(soft, self.dataset.label_group(batch.y), self.mask)
        return {"grad_cosine": float(F.cosine_similarity(flat[0], flat[1], dim=0)),
                "label_entropy": float(sum(entropy) / len(entropy))}

    def step_log(self, ctx: StepContext) -> dict[str, Any]:
        return self.diagnostics(ctx) if ctx.step % self.cfg.diagnose_every == 0 else {}
