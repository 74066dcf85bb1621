"""A method is three small roles, composed by its registry entry (``MethodSpec``):

- a **loss combiner** (``combiners/``): per-task losses [B, T] -> L_T and W's gradient; the effective task
  weights. Every method has one (STL and Equal are fixed weights; AuxiLearn's is the auxiliary network g(ℓ; φ)).
- an **outer update** (``outer/``): after W's step, updates the method's φ given W (or just before it, to
  reuse W's gradient); it declares the batch streams it needs. The IFT hyper step (AuxiLearn), MAXL's
  look-ahead, or none.
- a **task generator** (``generators/``): declares the head it needs on the primary network and adds the
  generated tasks' losses to the given ones (MAXL's labels, reconstruction); later also generated inputs.

The trainer owns the batch streams and the objective (τ-scaling, hidden main labels) and calls the method
through ``Method``'s few entry points. A ``Method`` is an ``nn.Module`` so that φ (in any role) is saved
with ``state_dict``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from pipeline.core.registry import METHODS


@dataclass
class SharedTrunk:
    """What gradient-based weighting methods may look at in ``backward``."""

    params: list[Tensor]  # parameters of the trunk shared by all tasks
    last_params: list[Tensor]  # the trunk's last layer (GradNorm)
    representation: Tensor  # z = encode(x) for this batch, still in the graph (MGDA-UB)


@dataclass
class Batch:
    x: Tensor  # inputs after the dataset's batch_transform
    y: Tensor  # targets, transformed alike
    index: Tensor  # each sample's row in the dataset (fixed per-sample choices, e.g. random auxiliary labels)
    labelled: Tensor  # whether each sample's main-task label may be used
    companion: int = 0  # the last rows come from a dataset pair's auxiliary stream (``shared/pair.py``); 0: none

    def head(self, rows: int) -> "Batch":
        """The first ``rows`` rows, primary and companion rows in the batch's proportion."""
        size = len(self.x)
        if rows >= size:
            return self
        primary = size - self.companion
        from_primary = min(primary, max(1, round(rows * primary / size))) if self.companion else rows
        from_companion = min(self.companion, rows - from_primary)
        keep = torch.cat([torch.arange(from_primary), primary + torch.arange(from_companion)]).to(self.x.device)
        return Batch(self.x[keep], self.y[keep], self.index[keep], self.labelled[keep], companion=from_companion)


@dataclass
class StepContext:
    """What an outer update may use around W's step (``OuterUpdate.before_w_step``, ``OuterUpdate.step``).
    Every batch source is its own seeded stream (W's, the outer update's, the diagnostics'), so an outer update
    or a diagnostic never changes which batches W sees."""

    step: int  # inner steps taken so far, counting from 1
    params: list[Tensor]  # the primary network's trainable parameters W
    train_losses: Callable[[], Tensor]  # scaled per-task losses [B, T] on a fresh outer training batch (φ in graph)
    aux_losses: Callable[[], Tensor]  # the same on a fresh batch of the auxiliary set
    model: Any = None  # the primary network (look-ahead updates call it functionally)
    dataset: Any = None
    train_batch: Callable[[], Batch] | None = None  # a fresh training batch from the outer update's stream
    loss_scale: Tensor | None = None  # τ per task, as applied to the training losses
    batch: Batch | None = None  # the batch of W's step (MAXL's meta update may reuse it)
    optimizer: Any = None  # W's optimiser (its current lr and momentum, for look-ahead steps)
    diagnostic_batch: Callable[[], Batch] | None = None  # a fresh training batch from the diagnostics' own stream
    batch_losses: Callable[[Batch], Tensor] | None = None  # ``train_losses`` of a given batch (checked alike)
    # ∇W f(batch_losses(batch)) · direction for a scalar f of the losses and W some of ``params`` (batch, W, direction,
    # f), by forward mode: no graph through W, φ kept
    loss_slope: Callable[[Batch, Sequence[Tensor], Sequence[Tensor], Callable[[Tensor], Tensor]], Tensor] | None = None


# ---------------------------------------------------------------------------------------------- the roles


class LossCombiner(nn.Module):
    """Role 1: per-sample per-task losses [B, T] (column 0 the main task) -> L_T and ∇_W L_T.

    ``needs_loss_images``: the combiner gets loss images [B, T, H, W] (density-normalised, see
    ``Dataset.per_task_losses``) instead of their spatial means [B, T].
    ``rewrites_gradients``: ``backward`` replaces the trunk's ``.grad`` after its backward (GCS, MAOAL). With
    several processes DistributedDataParallel averages gradients inside the backward, before such a rewrite,
    so these combiners' gradients are averaged after ``backward`` instead (``core.distributed.WStep``).
    """

    needs_loss_images: ClassVar[bool] = False
    rewrites_gradients: ClassVar[bool] = False

    def __init__(self, num_tasks: int, cfg: Any = None) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.cfg = cfg

    def start(self, losses: Tensor) -> None:
        """Called once with the first training batch's scaled losses, before W's first step (calibration)."""

    def joint_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by W's own optimiser on L_T (e.g. Uncertainty's log-variances)."""
        return []

    def hyper_parameters(self) -> list[nn.Parameter]:
        """φ that an outer update trains (AuxiLearn's auxiliary network)."""
        return []

    def hyper_parameter_groups(self) -> list[dict]:
        """``hyper_parameters`` as optimiser groups; a group's ``lr_scale`` multiplies φ's rate (default 1)."""
        return [{"params": self.hyper_parameters()}]

    def project(self) -> None:
        """Called after every outer step on φ (e.g. clip to the monotone set)."""

    def training_loss(self, losses: Tensor) -> Tensor:
        """L_T for a batch: a scalar built from the per-sample per-task losses."""
        raise NotImplementedError

    def backward(self, losses: Tensor, shared: SharedTrunk) -> Tensor:
        """Accumulate ∇W L_T into the primary network's ``.grad``; returns L_T (detached). The default
        differentiates ``training_loss``; gradient-based combiners override this."""
        loss = self.training_loss(losses)
        loss.backward()
        return loss.detach()

    def step_log(self) -> dict[str, float]:
        """Scalars to log after W's step (e.g. GradNorm's own loss)."""
        return {}

    def task_weights(self, losses: Tensor) -> Tensor:
        """Effective weight of each task, ∂L_T/∂ℓ_j summed over the batch (1 for the main task under STL)."""
        with torch.enable_grad():
            x = losses.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.training_loss(x), x)
        return grad.transpose(0, 1).flatten(1).sum(1).detach()  # summed over samples (and pixels)


class TaskGenerator(nn.Module):
    """Role 3: tasks the method generates itself. They replace the dataset's given auxiliaries: the loss
    columns are the main task's, then the generated ones (``generated_tasks``)."""

    generated_tasks: ClassVar[tuple[str, ...]] = ()
    # Report sections this generator can fill (e.g. "soft_labels": MAXL's Figure 4 of its learned labels).
    report_sections: tuple[str, ...] = ()

    def head_outputs(self) -> int:
        """Channels of the extra head the primary network needs (0: none)."""
        return 0

    def batch_losses(self, model: nn.Module, dataset: Any, batch: Batch, track_hparams: bool = False
                     ) -> tuple[Tensor, Tensor]:
        """Unscaled per-sample per-task losses of a batch (the main task, then the generated ones) and z.
        ``track_hparams``: keep φ (e.g. a label generator) in the graph, for hypergradients."""
        raise NotImplementedError

    def hyper_parameters(self) -> list[nn.Parameter]:
        """φ of the generator that an outer update trains (empty: fixed)."""
        return []

    def joint_parameters(self) -> list[nn.Parameter]:
        """Lower-level parameters the generator owns, trained by W's optimiser on L_T (e.g. DTG-AuxL's head of
        the generated task on generated features, which the dataset's network has no place for)."""
        return []

    def loss_names(self, task_names: Sequence[str]) -> list[str]:
        """Names of the loss columns ``batch_losses`` returns: by default the main task, then the generated ones
        (they replace the given auxiliaries); a generator that keeps given auxiliaries says which."""
        return [task_names[0], *self.generated_tasks]

    def step_log(self, ctx: StepContext) -> dict[str, float]:
        """Scalars to log after W's step (observation only: the diagnostics' own stream)."""
        return {}


class OuterUpdate:
    """Role 2: the update of φ after W's step, given W (or, in ``before_w_step``, just before W's optimiser
    step, given W's gradient). ``NoOuterUpdate`` for methods without an outer level.
    Not a module: φ lives in the combiner or the generator (saved with the method); an outer update holds only
    its optimiser's state."""

    def batch_sizes(self, train_batch_size: int) -> tuple[int, int]:
        """Batch sizes of the outer update's training and auxiliary streams (0 = the whole split)."""
        return train_batch_size, 0

    def step(self, method: "Method", ctx: StepContext) -> dict[str, float]:
        """Update φ if due; returns scalars to log (empty when nothing happened)."""
        return {}

    def before_w_step(self, method: "Method", ctx: StepContext) -> dict[str, float]:
        """Called between W's backward and W's optimiser step, with W, its gradient (``.grad``) and the
        optimiser's state as W's step will use them: an update that reuses W's step (MAXL's look-ahead on W's
        own batch) runs here instead of in ``step``. It must not change W or its gradient."""
        return {}


class NoOuterUpdate(OuterUpdate):
    """W's step is all there is."""


def scale_losses(losses: Tensor, scale: Tensor | None, labelled: Tensor | None = None) -> Tensor:
    """The objective's one rule for a batch's per-task losses [B, T] (or loss images [B, T, *pixels]): every
    auxiliary multiplied by τ (``scale``, App. B.1), and the main loss only where the main label is known
    (batch mean over the labelled samples). Used by W's step, the outer updates (MAXL's look-ahead too) and
    the report alike."""
    if scale is not None:
        losses = losses * scale.view(1, -1, *([1] * (losses.dim() - 2)))
    if labelled is not None:  # no `labelled.all()` test: a host sync per batch; all labelled gives × 1.0 exactly
        keep = labelled.to(losses.dtype) * (len(labelled) / labelled.sum().clamp_min(1))
        keep = keep.view(-1, *([1] * (losses.dim() - 2)))
        losses = torch.cat([(losses[:, 0] * keep)[:, None], losses[:, 1:]], dim=1)
    return losses


def default_batch_losses(model: nn.Module, dataset: Any, batch: Batch) -> tuple[Tensor, Tensor]:
    """The dataset's given tasks only: its per-task losses of the network's outputs, and z."""
    z = model.encode(batch.x)
    return dataset.per_task_losses(model.decode(z), batch.y), z


# --------------------------------------------------------------------------------------- the composition


@dataclass(frozen=True)
class Roles:
    """What one registry entry builds: each role from the method's config section (and the data)."""

    combiner: LossCombiner
    outer: OuterUpdate
    generator: TaskGenerator | None


# The comparison's and the report's order of method groups (the papers' tables).
GROUP_ORDER = ("single_task", "fixed", "weighting", "auxilearn", "generated", "self_supervised")


@dataclass(frozen=True)
class MethodSpec:
    """A registry entry: how to build the method's roles, and what the rest of the workbench reads about it.

    ``build(num_given_tasks, cfg, bilevel, dataset, data, params)`` returns its ``Roles``; ``Config`` is the
    schema of its ``methods.<config_section>``; ``uses_bilevel``: it reads the shared ``methods.bilevel``.
    ``uses_aux_set``: methods that do not learn from the auxiliary set train on train ∪ aux instead (AuxiLearn
    §5: the comparison stays fair). ``group``/``order``: its place in comparisons (``GROUP_ORDER``).
    ``needs_data``: its roles are built from the dataset (generators), so it cannot be built without one.
    ``requires``: what the dataset must provide (``Dataset.provides``); ``fits`` says whether a dataset does.
    ``check``: called with the method's section (dataset overrides applied) when params.yaml is validated; raises
    ValueError naming the key. ``splits_hyper_batch``: its L_T in the hyper step is the combiner's training loss,
    so ``methods.bilevel.curvature_batch`` can split that batch (methods with their own objectives cannot).
    ``needs_whole_w``: its φ acts on every trunk module separately, so its hypergradient needs the IFT over all of W
    (``methods.bilevel.implicit_scope: all``).
    """

    name: str
    build: Callable[..., Roles]
    group: str
    order: int = 0
    Config: type[BaseModel] | None = None
    config_section: str | None = None
    uses_bilevel: bool = False
    uses_aux_set: bool = False
    needs_data: bool = False
    requires: frozenset[str] = frozenset()
    description: str = ""
    check: Callable[[Any], None] | None = None  # validates its config before any work (e.g. a file exists)
    splits_hyper_batch: bool = False
    needs_whole_w: bool = False

    def __post_init__(self) -> None:
        if self.group not in GROUP_ORDER:
            raise ValueError(f"method {self.name}: group {self.group!r} is not one of {GROUP_ORDER}")

    def __call__(self, num_tasks: int, cfg: Any = None, bilevel: Any = None) -> "Method":
        """The method for ``num_tasks`` given tasks without a dataset (methods that need data refuse)."""
        return Method(self, num_tasks, cfg, bilevel)

    def missing(self, dataset: Any) -> frozenset[str]:
        """What ``dataset`` (a ``Dataset`` class or instance) lacks of this method's ``requires``."""
        return self.requires - dataset.provides

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return GROUP_ORDER.index(self.group), self.order, self.name


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to ``METHODS`` under its name."""
    METHODS.add(spec.name, spec)
    return spec


class Method(nn.Module):
    """One method's roles, as the trainer, the evaluation and the report use them."""

    def __init__(self, spec: MethodSpec, num_given_tasks: int, cfg: Any = None, bilevel: Any = None,
                 dataset: Any = None, data: Any = None, params: Any = None) -> None:
        super().__init__()
        if spec.needs_data and dataset is None:
            raise ValueError(f"method {spec.name} builds its roles from the data: pass dataset and data")
        self.spec = spec
        # A method built without its section (e.g. in a test) gets its schema's defaults.
        self.cfg = spec.Config() if cfg is None and spec.Config is not None else cfg
        if spec.uses_bilevel and bilevel is None:
            from pipeline.methods.bilevel import BilevelConfig

            bilevel = BilevelConfig()
        self.bilevel_cfg = bilevel
        roles = spec.build(num_given_tasks, self.cfg, bilevel, dataset, data, params)
        self.combiner = roles.combiner
        self.outer = roles.outer
        self.generator = roles.generator

    # -- what the rest of the workbench reads ------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def uses_aux_set(self) -> bool:
        return self.spec.uses_aux_set

    @property
    def num_tasks(self) -> int:
        return self.combiner.num_tasks

    @property
    def needs_loss_images(self) -> bool:
        return self.combiner.needs_loss_images

    @property
    def rewrites_gradients(self) -> bool:
        return self.combiner.rewrites_gradients

    @property
    def generated_tasks(self) -> tuple[str, ...]:
        return self.generator.generated_tasks if self.generator is not None else ()

    def loss_names(self, task_names: Sequence[str]) -> list[str]:
        """The names of the loss columns for a dataset's ``task_names``: those, or with a generator the main
        task and the generated ones (they replace the given auxiliaries)."""
        return self.generator.loss_names(task_names) if self.generator is not None else list(task_names)

    def head_outputs(self) -> int:
        """Channels of the extra head the primary network needs (0: none)."""
        return self.generator.head_outputs() if self.generator is not None else 0

    @property
    def report_sections(self) -> tuple[str, ...]:
        """The method-specific report sections its roles declare."""
        return self.generator.report_sections if self.generator is not None else ()

    # -- one training step -------------------------------------------------------------------------------

    def batch_losses(self, model: nn.Module, dataset: Any, batch: Batch, track_hparams: bool = False
                     ) -> tuple[Tensor, Tensor]:
        """Unscaled per-sample per-task losses of a batch (given, then generated tasks) and z."""
        if self.generator is None:
            return default_batch_losses(model, dataset, batch)
        return self.generator.batch_losses(model, dataset, batch, track_hparams)

    def start(self, losses: Tensor) -> None:
        self.combiner.start(losses)

    def joint_parameters(self) -> list[nn.Parameter]:
        own = self.generator.joint_parameters() if self.generator is not None else []
        return self.combiner.joint_parameters() + own

    def outer_batch_sizes(self, train_batch_size: int) -> tuple[int, int]:
        return self.outer.batch_sizes(train_batch_size)

    def training_loss(self, losses: Tensor) -> Tensor:
        return self.combiner.training_loss(losses)

    def backward(self, losses: Tensor, shared: SharedTrunk) -> Tensor:
        return self.combiner.backward(losses, shared)

    def task_weights(self, losses: Tensor) -> Tensor:
        return self.combiner.task_weights(losses)

    def before_w_step(self, ctx: StepContext) -> dict[str, Any]:
        """Between W's backward and its optimiser step: the outer update's part that reuses W's step."""
        return self.outer.before_w_step(self, ctx)

    def after_step(self, ctx: StepContext) -> dict[str, Any]:
        """After every W update: the combiner's log, the outer update, the generator's diagnostics."""
        logs: dict[str, Any] = dict(self.combiner.step_log())
        logs.update(self.outer.step(self, ctx))
        if self.generator is not None:
            logs.update(self.generator.step_log(ctx))
        return logs


def method_config_sections() -> dict[str, type[BaseModel]]:
    """``methods.<section>`` schemas of params.yaml, one per method family (and ``bilevel`` if any uses it)."""
    from pipeline.methods.bilevel import BilevelConfig

    sections: dict[str, type[BaseModel]] = {}
    for _, spec in METHODS.items():
        if spec.config_section is not None and spec.Config is not None:
            sections[spec.config_section] = spec.Config
        if spec.uses_bilevel:
            sections["bilevel"] = BilevelConfig
    return sections


def method_order() -> list[str]:
    """Every registered method in the papers' table order (from each entry's ``group`` and ``order``)."""
    return [name for name, _ in sorted(METHODS.items(), key=lambda item: item[1].sort_key)]


def build_method(name: str, num_given_tasks: int, params: Any, dataset: Any = None, data: Any = None) -> Method:
    """The method ``name`` for a dataset with ``num_given_tasks`` tasks (plus any it generates itself), its
    roles built from ``dataset``/``data`` when given (generators build networks from the data)."""
    spec: MethodSpec = METHODS.get(name)
    cfg = params.method_config(spec.config_section) if spec.config_section else None
    bilevel = params.method_config("bilevel") if spec.uses_bilevel else None
    return Method(spec, num_given_tasks, cfg, bilevel, dataset, data, params)


