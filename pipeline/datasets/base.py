"""The dataset protocol: every dataset prepares its files, loads them, and defines its tasks' losses and metrics."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor, nn

from pipeline.config import SplitConfig as RandomSplitConfig
from pipeline.config import StrictModel


class NoModelConfig(StrictModel):
    """``datasets.<name>.model`` of a dataset whose primary network has no settings."""
from pipeline.models.base import MultiTaskNet
from pipeline.splits import random_splits


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
    # Defaults of ``datasets.<name>.split`` and ``datasets.<name>.train`` (see ``pipeline.config``).
    SplitConfig: ClassVar[type[BaseModel]] = RandomSplitConfig  # schema of datasets.<name>.split
    ModelConfig: ClassVar[type[BaseModel]] = NoModelConfig  # schema of datasets.<name>.model
    default_split: ClassVar[dict[str, Any]] = {}
    default_train: ClassVar[dict[str, Any]] = {}
    # Set when the auxiliaries' index means something (the report then correlates weights with it).
    auxiliary_order: ClassVar[str | None] = None

    @abstractmethod
    def prepare(self, cfg: Any, out_dir: Path) -> None:
        """Generate or ingest the dataset into ``out_dir`` (an empty folder)."""

    @abstractmethod
    def load(self, folder: Path) -> TaskData:
        """Read a prepared folder; raise ``DataError`` naming the file if it is missing or malformed."""

    @abstractmethod
    def build_model(self, data: TaskData, cfg: Any) -> MultiTaskNet:
        """The primary network f(x; W); ``cfg`` is this dataset's ``ModelConfig``."""

    @abstractmethod
    def per_task_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-sample, per-task losses of shape [batch, num_tasks] (column 0: main task)."""

    @abstractmethod
    def metrics(self, model: nn.Module, data: TaskData, indices: Tensor) -> dict[str, float]:
        """Test metrics of the main task on ``data`` restricted to ``indices``."""

    def make_splits(self, data: TaskData, split_cfg: Any) -> dict[str, np.ndarray]:
        """Default: a seeded random partition. Datasets with official splits override this."""
        return random_splits(len(data), split_cfg.aux, split_cfg.val, split_cfg.test, split_cfg.seed)

    def batch_transform(self, x: Tensor, train: bool, generator: torch.Generator | None = None) -> Tensor:
        """Per-batch input transform: augmentation when ``train``, else the evaluation transform. Default: none."""
        return x

    def main_loss(self, model: nn.Module, data: TaskData, indices: Tensor) -> float:
        with torch.no_grad():
            out = model(self.batch_transform(data.inputs[indices], train=False))
            return float(self.per_task_losses(out, data.targets[indices])[:, 0].mean())
