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
- ``human`` (MAXL's Human baseline): the sample's human-defined finer class (``Dataset.finer_labels``: CIFAR-100's
  next finer level), with ψ the human tree (``generators/hierarchy.py``), as a fixed one-hot target.
- ``nearest_neighbour`` (MAXL's Nearest Neighbour baseline): soft labels softmax(−‖e(x) − c_k‖²) over the
  sample's block, c_k the mean embedding of a seeded 10% of class k's training images (which keep their
  human-defined labels), e(·) a pre-trained network from a local file (``nn_weights``) that MAXL's look-ahead
  then refines on the primary task (the prototypes re-embedded by the current network at every call).
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
  shuffle of the training set), ``step`` reuses W's step: θ2's look-ahead starts from the W that W's step
  starts from, on its batch, with its gradient ∇θ1 L_T (one forward and backward of W fewer per θ2 step:
  ``bench/bench_maxl.py``). ``maxl_every`` interleaves θ2 steps with W's steps instead of alternating
  whole epochs.
- the first-order reference drops the entropy term's gradient (it overwrites θ2's gradient with the
  finite-difference term); here its direct gradient is kept, so λ means the same in both methods.

"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from pipeline.core.schema import StrictModel
from pipeline.datasets.shared.base import reduce_pixels
from pipeline.methods.base import Batch, StepContext, TaskGenerator
from pipeline.methods.generators.hierarchy import (human_hierarchy, load_embedding_weights, prototype_logits,
                                                   prototype_rows, resolve_psi)


class LabelsConfig(StrictModel):
    """``methods.labels``: shared by maxl, maxl_frozen, random, human, nearest_neighbour and auxilearn_labels, so
    they compare alike."""

    psi: int | list[int] | None = Field(
        None, description="ψ: auxiliary classes per group (one int: the same for all); null = the dataset's "
        "hierarchy where it has a finer labelling (its classes shared out evenly over the main classes, the "
        "remainder to randomly drawn ones, as MAXL §4.3), else 5. human and nearest_neighbour always use the "
        "human-defined hierarchy")
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
                             "pass over the training set), or W's own (step: reuses W's gradient, cheaper)")
    maxl_fd_epsilon: float = Field(
        0.01, gt=0, description="maxl_first_order: finite-difference step ε = maxl_fd_epsilon / ‖d‖ (DARTS: 0.01)")
    lookahead_lr: float | None = Field(
        None, gt=0, description="α of MAXL's look-ahead; null = W's optimiser's current learning rate")
    combine: Literal["none", "linear", "nonlinear"] = Field(
        "none", description="auxilearn_labels: learn a loss-combining network too (App. B.3); none = ℓ_main + ℓ_aux")
    hidden_units: int = Field(10, ge=1)
    hidden_layers: int = Field(2, ge=1)
    diagnose_every: int = Field(25, ge=1, description="steps between label-entropy and gradient-cosine logs")
    nn_weights: str | None = Field(
        None, description="nearest_neighbour: a local file holding the pre-trained embedding network, a state dict "
        "of the dataset's backbone (keys as in its model.pt under net.backbone., or bare); never downloaded")
    nn_fraction: float = Field(
        0.1, gt=0, le=1, description="nearest_neighbour: share of each finer class's training images whose "
        "human-defined labels make the prototypes (MAXL: 10%)")
    nn_seed: int = Field(0, description="nearest_neighbour: seed of the prototype images' draw")

    @field_validator("psi")
    @classmethod
    def _positive(cls, v: int | list[int] | None) -> int | list[int] | None:
        if v is None:
            return v
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


LabelSource = Literal["generator", "random", "human", "nearest_neighbour"]
NETWORK_SOURCES = ("generator", "nearest_neighbour")  # label sources with a network θ2


class GeneratedLabels(TaskGenerator):
    """The generated task (MAXL §3.3): a classification over K = Σ ψ[g] auxiliary classes whose soft labels come
    from a label network θ2 (``label_source: generator``), a fixed random class per sample (``random``), the
    human-defined finer class (``human``, ψ the human hierarchy) or the nearest prototype of the human-defined
    finer classes in a pre-trained embedding θ2 (``nearest_neighbour``); its loss, and the collapse and gradient
    diagnostics. θ2 learns only when an outer update trains it (``learns``)."""

    generated_tasks = ("generated",)

    def __init__(self, cfg: LabelsConfig, dataset: Any, data: Any, params: Any,
                 label_source: LabelSource = "generator", learns: bool = False,
                 main_loss_kind: Literal["focal", "dataset"] = "dataset") -> None:
        super().__init__()
        self.cfg = cfg
        self.label_source = label_source
        self.learns_generator = learns
        self.report_sections = ("soft_labels",) if label_source in NETWORK_SOURCES else ()
        # The main task's training loss: the dataset's own (as STL) unless a method says otherwise (MAXL).
        self.main_loss_kind = main_loss_kind
        groups = dataset.label_groups(data)
        group = dataset.label_group(data.targets)
        if label_source in ("human", "nearest_neighbour"):  # the human-defined tree fixes ψ and the targets
            finer, finer_classes = dataset.finer_labels(data)
            psi, block_class = human_hierarchy(group, finer, groups, finer_classes)
            human_class = block_class[finer]
        else:
            psi = resolve_psi(cfg.psi, dataset, data, groups)
        if len(psi) != groups:
            raise ValueError(f"methods.labels.psi: {len(psi)} entries, but {dataset.name} has {groups} groups")
        self.register_buffer("mask", hierarchy_mask(psi))
        self.dataset = dataset
        if label_source == "generator":
            self.label_net = dataset.build_label_generator(data, params.profile.model, self.num_aux_classes)
        elif label_source == "nearest_neighbour":
            self._build_prototypes(dataset, data, params, finer, human_class)
        elif label_source == "human":  # each row's finer class, placed in its main class's block
            self.register_buffer("fixed_class", human_class)
        else:  # one fixed class per dataset row, uniform inside its group's block (drawn from the method's seed)
            start = torch.tensor([0, *psi]).cumsum(0)[:-1]
            offset = (torch.rand(len(data)) * torch.tensor(psi)[group]).long()
            self.register_buffer("fixed_class", start[group] + offset)
        if label_source in NETWORK_SOURCES and not learns:
            self.label_net.requires_grad_(False)

    def _build_prototypes(self, dataset: Any, data: Any, params: Any, finer: Tensor, human_class: Tensor) -> None:
        """MAXL's Nearest Neighbour baseline: the embedding network θ2 (the label generator's architecture without
        its head, initialised from ``nn_weights``), a seeded ``nn_fraction`` of each finer class's training rows
        as prototype images (their human-defined labels kept as their own targets), as buffers not saved with
        the method (rebuilt from the data and the splits)."""
        key = "methods.labels.nn_weights"
        if not self.cfg.nn_weights:
            raise ValueError(f"{key}: nearest_neighbour needs the pre-trained embedding network's weights file")
        net = dataset.build_label_generator(data, params.profile.model, 1)
        net.net.head = nn.Identity()  # x -> standardised -> backbone features: the embedding
        load_embedding_weights(net.net.backbone, self.cfg.nn_weights, key)
        self.label_net = net
        splits = dataset.make_splits(data, params.split)  # the split stage's indices: a pure function of the seed
        train_rows = np.concatenate([splits["train"], splits["aux"]])  # what methods without an aux set train on
        rows = prototype_rows(finer.numpy(), np.sort(train_rows), self.cfg.nn_fraction, self.cfg.nn_seed)
        x, _ = dataset.batch_transform(torch.as_tensor(data.inputs[torch.as_tensor(rows)]),
                                       data.targets[rows], train=False)
        known = torch.full((len(data),), -1, dtype=torch.long)
        known[rows] = human_class[rows]
        self.register_buffer("proto_x", x, persistent=False)
        self.register_buffer("proto_class", human_class[rows], persistent=False)
        self.register_buffer("known_class", known, persistent=False)

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
        if self.label_source in ("random", "human"):
            return F.one_hot(self.fixed_class[batch.index], self.num_aux_classes).float()
        self.label_net.train(self.learns_generator if train_mode is None else train_mode)
        with torch.set_grad_enabled(track_hparams and self.learns_generator):
            if self.label_source == "generator":
                return mask_softmax(self.label_net(batch.x), groups, self.mask)
            # Nearest Neighbour: the prototypes re-embedded by the current θ2, so θ2's update moves them too
            logits = prototype_logits(self.label_net(batch.x), self.label_net(self.proto_x), self.proto_class,
                                      self.num_aux_classes)
            soft = mask_softmax(logits, groups, self.mask)
            known = self.known_class[batch.index]  # the prototype images keep their human-defined labels
            one_hot = F.one_hot(known.clamp_min(0), self.num_aux_classes).to(soft.dtype)
            return torch.where((known >= 0)[:, None], one_hot, soft)

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
        modules = [*model.modules(), *(self.label_net.modules() if self.label_source in NETWORK_SOURCES else ())]
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
