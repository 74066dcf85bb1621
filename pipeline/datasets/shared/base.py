"""The dataset protocol: every dataset prepares its files, loads them, and defines its tasks' losses and metrics."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor, nn

from pipeline.core.schema import SplitConfig as RandomSplitConfig
from pipeline.core.schema import StrictModel


class NoModelConfig(StrictModel):
    """``datasets.<name>.model`` of a dataset whose primary network has no settings."""
from pipeline.models.base import MultiTaskNet
from pipeline.datasets.shared.splits import random_splits


@dataclass(frozen=True)
class LabelField:
    """One task's label as a method may read it per sample (or per point/pixel): ``classes`` > 0 for class
    ids (a long tensor; negative = unknown), 0 for real values. See ``Dataset.task_label_fields``."""

    name: str
    classes: int
    size: int = 1  # real values only: channels per sample or point (NYUv2's normals: 3)


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file."""


@dataclass
class TaskData:
    """All samples of a dataset in memory: ``targets[:, 0]`` is the main task, the rest are auxiliaries."""

    inputs: Tensor
    targets: Tensor
    task_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)


class Dataset(ABC):
    """One entry of ``DATASETS``. ``Config`` is its ``datasets.<name>.prepare`` section in params.yaml."""

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    # Defaults of ``datasets.<name>.split`` and ``datasets.<name>.train`` (see ``pipeline.config.params``).
    SplitConfig: ClassVar[type[BaseModel]] = RandomSplitConfig  # schema of datasets.<name>.split
    ModelConfig: ClassVar[type[BaseModel]] = NoModelConfig  # schema of datasets.<name>.model
    default_split: ClassVar[dict[str, Any]] = {}
    default_train: ClassVar[dict[str, Any]] = {}
    # Per-dataset overrides of method hyperparameters, {section: {key: value}} (e.g. φ's learning rate).
    default_methods: ClassVar[dict[str, dict[str, Any]]] = {}
    # Defaults of the ``usefulness`` section for this dataset (its analysis' cost depends on the model); keys the
    # user writes under ``usefulness`` win.
    default_usefulness: ClassVar[dict[str, Any]] = {}
    # What the dataset offers methods (``MethodSpec.requires`` names what a method needs): "auxiliaries" (given
    # auxiliary tasks), "loss_images" (dense tasks with per-pixel losses), "generated_labels" (label groups and a
    # label network for generated tasks), "point_clouds" (inputs [N, 3, points]), "task_labels" (each task's label
    # per sample or per point, ``task_label_fields``/``task_labels``: generators that read labels, DTG-AuxL),
    # "finer_labels" (a human-defined label per sample, finer than the label groups: MAXL's Human), "image_embeddings"
    # (an image label generator whose backbone a pre-trained state dict fits: MAXL's Nearest Neighbour).
    provides: ClassVar[frozenset[str]] = frozenset()
    # Set when the auxiliaries' index means something (the report then correlates weights with it).
    auxiliary_order: ClassVar[str | None] = None

    def __init__(self, model_cfg: Any = None) -> None:
        # datasets.<name>.model, given at construction: what batch_transform may read (e.g. ShapeNet's point
        # sampling and augmentation), never state set later by load or build_model.
        self.model_cfg = model_cfg if model_cfg is not None else self.ModelConfig()

    @abstractmethod
    def prepare(self, cfg: Any, out_dir: Path) -> None:
        """Generate or ingest the dataset into ``out_dir`` (an empty folder)."""

    @abstractmethod
    def load(self, folder: Path) -> TaskData:
        """Read a prepared folder; raise ``DataError`` naming the file if it is missing or malformed."""

    @abstractmethod
    def build_model(self, data: TaskData, cfg: Any, aux_outputs: int = 0) -> MultiTaskNet:
        """The primary network f(x; W); ``cfg`` is this dataset's ``ModelConfig``.

        ``aux_outputs > 0`` (methods that generate their own auxiliary task, see ``methods/labels.py``)
        adds one more head on z: ``decode`` then returns ``(outputs, aux_out)`` where ``outputs`` is what
        it returns without the head and ``aux_out`` has ``aux_outputs`` channels in dim 1, per sample
        ([B, K]) or per element of the main task's output ([B, K, N points], [B, K, H, W]).
        Datasets that do not support generated tasks raise ``ValueError`` for ``aux_outputs > 0``.
        """

    @abstractmethod
    def per_task_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-sample, per-task losses: [B, T] (column 0: main task), or [B, T, *pixels] for dense tasks.

        Dense tasks return a *loss image* normalised as a density: the per-pixel loss times
        (pixels / valid pixels) of that sample and task, and 0 where the pixel is invalid, so that the
        spatial mean (``reduce_pixels``) is the per-sample loss averaged over the valid pixels.
        """

    @abstractmethod
    def metrics(self, model: nn.Module, data: TaskData, indices: Tensor) -> dict[str, float]:
        """Test metrics of the main task on ``data`` restricted to ``indices``."""

    def open_rows(self, folder: Path) -> TaskData:
        """``load``'s TaskData with the large arrays left in the prepared file: ``inputs`` (and ``targets`` where
        they are large) are ``pipeline.datasets.shared.rows.H5Rows``, read row by row on demand, so that training
        streams batches through a ``DataLoader`` and evaluation reads chunks (``data_loading: stream``). Rows
        read this way equal ``load``'s. Default: not offered (the dataset is small: ``load`` it)."""
        raise ValueError(f"dataset {self.name} has no file-backed reader: use data_loading: memory")

    @classmethod
    def streams(cls) -> bool:
        """Whether the dataset offers ``open_rows``."""
        return cls.open_rows is not Dataset.open_rows

    def make_splits(self, data: TaskData, split_cfg: Any) -> dict[str, np.ndarray]:
        """Default: a seeded random partition. Datasets with official splits override this."""
        return random_splits(len(data), split_cfg.aux, split_cfg.val, split_cfg.test, split_cfg.seed)

    def batch_transform(self, x: Tensor, y: Tensor, train: bool,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Per-batch transform of inputs and targets together (augmentation when ``train``, e.g. a crop
        or a subset of points, which must pick the same elements of both), else the evaluation
        transform. Random draws come from ``generator``. Default: none."""
        return x, y

    def evaluation_outputs(self, model: nn.Module, data: TaskData, indices: Tensor, chunk: int = 64
                           ) -> Iterator[tuple[Any, Tensor]]:
        """(model outputs, targets) over ``indices`` in chunks of ``chunk`` samples on the model's device,
        after the evaluation transform, in eval mode without gradients; the model's mode is restored."""
        was_training = model.training
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else data.inputs.device
        indices = torch.as_tensor(indices).to(data.inputs.device)
        if len(indices) == 0:
            raise ValueError("metrics need at least one sample")
        try:
            with torch.no_grad():
                for part in indices.split(chunk):
                    x, y = self.batch_transform(data.inputs[part].to(device), data.targets[part].to(device),
                                                train=False)
                    yield model(x), y
        finally:
            model.train(was_training)

    def main_loss(self, model: nn.Module, data: TaskData, indices: Tensor) -> float:
        with torch.no_grad():
            x, y = self.batch_transform(data.inputs[indices], data.targets[indices], train=False)
            return float(reduce_pixels(self.per_task_losses(model(x), y))[:, 0].mean())

    def display(self, x: Tensor, y: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Dense datasets: one transformed sample as an RGB image [H, W, 3] in [0, 1] and its main-task
        label map [H, W] (negative = ignored), for the report's loss-image figure."""
        raise ValueError(f"dataset {self.name} has no per-pixel display")

    # -- generated auxiliary tasks (MAXL, AuxiLearn's label generator): optional --------------------

    def label_groups(self, data: TaskData) -> int:
        """How many groups own a block of ψ auxiliary classes (the main classes; ShapeNet: the categories)."""
        raise ValueError(f"dataset {self.name} does not support generated auxiliary tasks")

    def label_group(self, targets: Tensor) -> Tensor:
        """The group of each sample, a LongTensor [B] in [0, label_groups)."""
        raise ValueError(f"dataset {self.name} does not support generated auxiliary tasks")

    def build_label_generator(self, data: TaskData, cfg: Any, num_aux_classes: int) -> nn.Module:
        """A network x -> auxiliary-class logits shaped like ``build_model``'s ``aux_out``."""
        raise ValueError(f"dataset {self.name} does not support generated auxiliary tasks")

    def finer_labels(self, data: TaskData) -> tuple[Tensor, int]:
        """Declared by "finer_labels": each row's human-defined label at a level finer than the main task's
        (MAXL's Human and Nearest Neighbour baselines), a LongTensor [N], and the number of those classes."""
        raise ValueError(f"dataset {self.name} has no finer human-defined labelling")

    # -- task labels as inputs (DTG-AuxL's label generator): optional, declared by "task_labels" --------

    def task_label_fields(self, data: TaskData) -> list[LabelField]:
        """One ``LabelField`` per task, in ``data.task_names`` order (the main task first)."""
        raise ValueError(f"dataset {self.name} does not expose its task labels")

    def task_labels(self, targets: Tensor) -> list[Tensor]:
        """Each task's label for a batch of (transformed) targets, in ``task_label_fields`` order: [B] per
        sample, or [B, *points] per element of the main task's output (the same points for every task); a real
        label of ``size`` > 1 is [B, size] or [B, size, *points]."""
        raise ValueError(f"dataset {self.name} does not expose its task labels")


def reduce_pixels(losses: Tensor) -> Tensor:
    """[B, T, *pixels] loss images -> [B, T] per-sample losses (the identity on [B, T])."""
    return losses.flatten(2).mean(2) if losses.dim() > 2 else losses
