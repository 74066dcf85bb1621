"""What the dense multi-task datasets in Liu et al.'s setup (NYUv2, Cityscapes) share as ``Dataset``s: a prepared
h5 file read whole or row by row, the official train/test split with validation and aux sets drawn from official
train, uint8 images fed as [0, 1] floats, and per-pixel loss images whose channel 0 is the main task, evaluated
in chunks. A dataset adds its files, its model, its loss images and its metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.datasets.shared.aux_roles import read_aux_roles
from pipeline.datasets.shared.base import Dataset, TaskData, reduce_pixels
from pipeline.datasets.shared.npy_layout import DensePrepared, official_splits


class DenseDataset(Dataset):
    """A dense dataset: set ``task_names`` (the main task first), ``num_classes`` and ``class_names`` (the main
    segmentation's), ``read_prepared`` (folder, stage, lazy) -> ``DensePrepared``, and the ``Dataset`` methods
    that remain (``prepare``, ``build_model``, ``per_task_losses``, ``metrics``)."""

    task_names: ClassVar[list[str]]
    num_classes: ClassVar[int]
    class_names: ClassVar[list[str]]
    read_prepared: ClassVar[Callable[..., DensePrepared]]
    eval_chunk: ClassVar[int] = 16  # images per forward pass in evaluation (a SegNet at full size is memory hungry)

    def load(self, folder: Path) -> TaskData:
        return self._task_data(folder, lazy=False)

    def open_rows(self, folder: Path) -> TaskData:
        """As ``load``, images and targets read on demand from the prepared file (real NYUv2's targets are 3.2 GB)."""
        return self._task_data(folder, lazy=True)

    def _task_data(self, folder: Path, lazy: bool) -> TaskData:
        prepared = self.read_prepared(folder, "prepare", lazy=lazy)
        meta: dict[str, Any] = {"source": prepared.source, "num_classes": self.num_classes,
                                "class_names": list(self.class_names), "is_train": prepared.is_train,
                                "sample_ids": prepared.sample_ids, "image_size": prepared.image_size}
        roles = read_aux_roles(Path(folder), self.task_names[1:])
        if roles is not None:
            meta["aux_roles"] = roles
        if lazy:
            return TaskData(prepared.images, prepared.targets, list(self.task_names), meta)
        return TaskData(torch.from_numpy(prepared.images), torch.from_numpy(prepared.targets),
                        list(self.task_names), meta)

    def make_splits(self, data: TaskData, split_cfg: Any) -> dict[str, np.ndarray]:
        return official_splits(data.meta["is_train"], split_cfg.seed, split_cfg.val_fraction, split_cfg.aux_fraction,
                               key=f"datasets.{self.name}.split")

    def batch_transform(self, x: Tensor, y: Tensor, train: bool,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """uint8 images -> floats in [0, 1] (as Liu et al. feed them: no standardisation); no augmentation,
        targets unchanged."""
        return (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()), y

    def display(self, x: Tensor, y: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """A transformed image [3, H, W] as RGB [H, W, 3] in [0, 1], and its main label map (-1 = ignored)."""
        return x.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), y[0].long().cpu().numpy()

    def main_loss(self, model: nn.Module, data: TaskData, indices: Tensor) -> float:
        """Mean per-sample loss of the main task (channel 0 of the loss images), in chunks."""
        total = sum(float(reduce_pixels(self.per_task_losses(out, y))[:, 0].sum())
                    for out, y in self.evaluation_outputs(model, data, indices, self.eval_chunk))
        return total / len(indices)
