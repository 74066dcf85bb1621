"""The method protocol: how a training step turns per-task losses into an update of W (and of φ, if any).

A method is an ``nn.Module`` so that its auxiliary parameters φ (if any) are saved with ``state_dict``.
Per step the trainer asks the method for the batch's losses (``batch_losses``: by default the dataset's
given tasks; methods that generate an auxiliary task add its loss as a column), calls
``backward(losses, shared)`` with per-sample, per-task losses [B, T] (column 0 is the main task; loss
images [B, T, H, W] for methods with ``needs_loss_images``) and a view of the shared trunk, steps W's
optimiser, then calls ``after_step(ctx)`` where bilevel methods update φ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from pipeline.registry import METHODS


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


@dataclass
class StepContext:
    """What a method's outer update may use after W's step. Every batch source is its own seeded stream
    (W's, the outer update's, the diagnostics'), so an outer update or a diagnostic never changes which
    batches W sees."""

    step: int  # inner steps taken so far, counting from 1
    params: list[Tensor]  # the primary network's trainable parameters W
    train_losses: Callable[[], Tensor]  # scaled per-task losses [B, T] on a fresh outer training batch (φ in graph)
    aux_losses: Callable[[], Tensor]  # the same on a fresh batch of the auxiliary set
    model: Any = None  # the primary network (look-ahead methods call it functionally)
    dataset: Any = None
    train_batch: Callable[[], Batch] | None = None  # a fresh training batch from the outer update's stream
    loss_scale: Tensor | None = None  # τ per task, as applied to the training losses
    batch: Batch | None = None  # the batch W's step just used (MAXL's meta update reuses it, as its reference does)
    optimizer: Any = None  # W's optimiser (its current lr and momentum, for look-ahead steps)
    diagnostic_batch: Callable[[], Batch] | None = None  # a fresh training batch from the diagnostics' own stream


class Method(nn.Module):
    """Base class of every entry in ``METHODS``.

    ``uses_aux_set``: methods that do not learn from the auxiliary set train on train ∪ aux instead
    (AuxiLearn §5: the comparison stays fair). ``config_section`` names this method's section under
    ``methods`` in params.yaml and ``Config`` its schema (``None``: no hyperparameters).
    """

    uses_aux_set: ClassVar[bool] = False
    config_section: ClassVar[str | None] = None
    Config: ClassVar[type[BaseModel] | None] = None
    # True: ``backward``/``training_loss`` get loss images [B, T, H, W] (density-normalised, see
    # ``Dataset.per_task_losses``) instead of their spatial means [B, T].
    needs_loss_images: ClassVar[bool] = False
    # Loss columns this method appends to the dataset's given tasks (generated auxiliaries).
    generated_tasks: ClassVar[tuple[str, ...]] = ()
    # True: φ is trained by the IFT outer update, configured by the shared ``methods.bilevel`` section.
    uses_bilevel: ClassVar[bool] = False

    def __init__(self, num_tasks: int, cfg: Any = None, bilevel: Any = None) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        # A method built without its section (e.g. in a test) gets its schema's defaults.
        self.cfg = self.Config() if cfg is None and self.Config is not None else cfg
        if self.uses_bilevel:
            from pipeline.bilevel import BilevelConfig

            self.bilevel_cfg = bilevel if bilevel is not None else BilevelConfig()

    def bind(self, dataset: Any, data: Any, params: Any) -> None:
        """Called once the dataset is known, before training or loading a state (label generators are built here)."""

    def aux_outputs(self) -> int:
        """Channels of the extra head this method needs on the primary network (0: none)."""
        return 0

    def batch_losses(self, model: nn.Module, dataset: Any, batch: Batch, track_hparams: bool = False
                     ) -> tuple[Tensor, Tensor]:
        """Unscaled per-sample per-task losses of a batch and the shared representation z.

        ``track_hparams``: keep φ (e.g. a label generator) in the graph, for hypergradients.
        """
        z = model.encode(batch.x)
        return dataset.per_task_losses(model.decode(z), batch.y), z

    def start(self, losses: Tensor) -> None:
        """Called once with the first training batch's scaled losses, before W's first step (calibration)."""

    def outer_batch_sizes(self, train_batch_size: int) -> tuple[int, int]:
        """Batch sizes of the outer update's training and auxiliary streams (0 = the whole split)."""
        if self.uses_bilevel:
            return self.bilevel_cfg.hyper_train_batch or train_batch_size, self.bilevel_cfg.hyper_aux_batch
        return train_batch_size, 0

    def joint_parameters(self) -> list[nn.Parameter]:
        """Method parameters trained by W's own optimiser on L_T (e.g. Uncertainty's log-variances)."""
        return []

    def training_loss(self, losses: Tensor) -> Tensor:
        """L_T for a batch: a scalar built from the per-sample per-task losses [B, T]."""
        raise NotImplementedError

    def backward(self, losses: Tensor, shared: SharedTrunk) -> Tensor:
        """Accumulate ∇W L_T into the primary network's ``.grad``; returns L_T (detached).

        The default differentiates ``training_loss``; gradient-based methods override this.
        """
        loss = self.training_loss(losses)
        loss.backward()
        return loss.detach()

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        """Called after every W update; returns scalars to log (empty when nothing happened)."""
        return {}

    def task_weights(self, losses: Tensor) -> Tensor:
        """Effective weight of each task, ∂L_T/∂ℓ_j summed over the batch (1 for the main task under STL)."""
        with torch.enable_grad():
            x = losses.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.training_loss(x), x)
        return grad.transpose(0, 1).flatten(1).sum(1).detach()  # summed over samples (and pixels)


class FixedWeights(Method):
    """L_T = Σ_j w_j · mean_b ℓ_j with constant weights (STL: main only; Equal: all ones)."""

    def __init__(self, num_tasks: int, cfg: Any = None, *, aux_weight: float) -> None:
        super().__init__(num_tasks, cfg)
        weights = torch.full((num_tasks,), aux_weight)
        weights[0] = 1.0
        self.register_buffer("weights", weights)

    def training_loss(self, losses: Tensor) -> Tensor:
        return (losses.mean(0) * self.weights).sum()


def method_config_sections() -> dict[str, type[BaseModel]]:
    """``methods.<section>`` schemas of params.yaml, one per method family."""
    from pipeline.bilevel import BilevelConfig

    sections: dict[str, type[BaseModel]] = {}
    for name in METHODS:
        cls = METHODS.get(name)
        if cls.config_section is not None and cls.Config is not None:
            sections[cls.config_section] = cls.Config
        if cls.uses_bilevel:
            sections["bilevel"] = BilevelConfig
    return sections


def build_method(name: str, num_given_tasks: int, params, dataset=None, data=None) -> Method:
    """The method ``name`` for a dataset with ``num_given_tasks`` tasks (plus any it generates itself),
    bound to ``dataset``/``data`` when given (methods that build networks from the data need them)."""
    cls = METHODS.get(name)
    cfg = params.method_config(cls.config_section) if cls.config_section else None
    bilevel = params.method_config("bilevel") if cls.uses_bilevel else None
    num_tasks = num_given_tasks + len(cls.generated_tasks)
    method = cls(num_tasks, cfg, bilevel) if cls.uses_bilevel else cls(num_tasks, cfg)
    if dataset is not None:
        method.bind(dataset, data, params)
    return method
