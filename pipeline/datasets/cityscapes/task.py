"""Cityscapes as a ``Dataset`` (AuxiLearn App. C.8, the data of Liu et al. 2019): 19-class semantic segmentation
(main task) with 7-class and 2-class segmentation and depth as auxiliaries, per-pixel losses, on a SegNet.

Sources (``datasets.cityscapes.prepare.source``): ``preprocessed`` reads Liu et al.'s ``.npy`` layout at ``root``
(``sources.py``); ``standin`` (default) draws procedural streets in that layout (``standin.py``). Both end in one
prepared file (``prepared.py``). Splits as App. C.8: 10% of train/ to validation, 2.5% of the rest to the aux
set, val/ as the test set.

``TaskData``: inputs uint8 [N, 3, H, W] (``batch_transform`` scales them to [0, 1]); targets float
[N, 4, H, W] = (label_19, label_7, label_2, depth); tasks ``segmentation``, ``segmentation_7``,
``segmentation_2``, ``depth``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.core.registry import DATASETS, MODELS
from pipeline.datasets.cityscapes.config import NAME, Config, ModelConfig, SplitConfig
from pipeline.datasets.cityscapes.prepared import CLASSES, H5_NAME, read_prepared, write_prepared
from pipeline.datasets.cityscapes.sources import CLASS_NAMES, EXPECTED, IGNORE, read_preprocessed
from pipeline.datasets.cityscapes.standin import SOURCE_ATTR, STANDIN_AUX_ROLES, STANDIN_DIR, write_standin
from pipeline.datasets.shared.aux_roles import write_aux_roles
from pipeline.datasets.shared.base import TaskData, reduce_pixels
from pipeline.datasets.shared.dense import DenseDataset
from pipeline.datasets.shared.npy_layout import loss_density
from pipeline.datasets.shared.sources import STANDIN, source_root
from pipeline.metrics.geometry import DepthErrors
from pipeline.metrics.segmentation import ConfusionMatrix
from pipeline.models.base import MultiTaskNet

TASK_NAMES = ["segmentation", "segmentation_7", "segmentation_2", "depth"]
SOURCE_ATTRS = {"preprocessed": "Cityscapes (Liu et al.'s preprocessed .npy layout)"}


def pixel_losses(outputs: tuple[Tensor, ...], targets: Tensor) -> Tensor:
    """[B, 4, H, W] loss images: cross-entropy of the 19-, 7- and 2-class maps (-1 ignored) and L1 depth on
    valid pixels (depth > 0), each normalised as a density over its valid pixels (``shared.npy_layout.loss_density``)."""
    *logits, depth = outputs
    images = []
    for k, out in enumerate(logits):
        label = targets[:, k]
        ce = F.cross_entropy(out, label.long().clamp_min(IGNORE), ignore_index=IGNORE, reduction="none")
        images.append(loss_density(ce, label >= 0))
    gt_depth = targets[:, 3]
    images.append(loss_density((depth[:, 0] - gt_depth).abs(), gt_depth > 0))
    return torch.stack(images, dim=1)


@DATASETS.register(NAME)
class Cityscapes(DenseDataset):
    """Cityscapes (or its procedural stand-in): 19-class segmentation with coarser segmentations and depth."""

    provides = frozenset({"auxiliaries", "loss_images"})

    name = NAME
    Config = Config
    SplitConfig = SplitConfig
    ModelConfig = ModelConfig
    task_names, num_classes, class_names = TASK_NAMES, CLASSES[0], list(CLASS_NAMES)
    read_prepared = staticmethod(read_prepared)
    default_split = {"seed": 0, "val_fraction": 0.1, "aux_fraction": 0.025}
    # Paper (App. C.8): Adam, lr 1e-4, 150 epochs, halved after 100. On the 32 x 64 stand-in (240 train/
    # images) lr 1e-3 and 300 steps of 8 (~11 epochs) with the rate halved half-way, as NYUv2's defaults.
    default_train = {"steps": 300, "batch_size": 8, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                     "lr_schedule": "halve_midway", "eval_every": 50}
    default_methods: dict = {}

    def prepare(self, cfg: Config, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.source == STANDIN:
            root, attrs = out_dir / STANDIN_DIR, {"source": SOURCE_ATTR}
            write_standin(root, cfg)
            write_aux_roles(out_dir, dict(STANDIN_AUX_ROLES))
        else:
            root, attrs = source_root(NAME, cfg.source, cfg.root, EXPECTED), {"source": SOURCE_ATTRS[cfg.source]}
        size = (int(cfg.image_size[0]), int(cfg.image_size[1])) if cfg.image_size is not None else None
        count, size, samples = read_preprocessed(root, size)
        write_prepared(out_dir / H5_NAME, samples, count, size, attrs)

    def build_model(self, data: TaskData, cfg: ModelConfig, aux_outputs: int = 0) -> MultiTaskNet:
        """The SegNet with 19-, 7- and 2-class heads and a depth head, on [0, 1] images."""
        if aux_outputs:
            raise ValueError("cityscapes: generated auxiliary tasks are not supported (its auxiliaries are given)")
        return MODELS.get("segnet")(num_classes=CLASSES[0], width=cfg.width, stages=cfg.stages,
                                    aux_classes=CLASSES[1:], normals=False)

    def per_task_losses(self, outputs: tuple[Tensor, ...], targets: Tensor) -> Tensor:
        """[B, 4, H, W] loss images (see ``pixel_losses``)."""
        return pixel_losses(outputs, targets)

    def metrics(self, model: nn.Module, data: TaskData, indices: Tensor) -> dict[str, float]:
        """``miou``/``pixel_acc`` of the 19 classes (percent, over the whole set; Table 6's), the same of the 7-
        and 2-class auxiliaries, depth absolute/relative error over valid pixels, ``main_loss``."""
        scores = [ConfusionMatrix(c) for c in CLASSES]
        depth_errors, loss = DepthErrors(), 0.0
        for out, y in self.evaluation_outputs(model, data, indices, self.eval_chunk):
            for k, cm in enumerate(scores):
                cm.update(out[k], y[:, k])
            depth_errors.update(out[3], y[:, 3])
            loss += float(reduce_pixels(self.per_task_losses(out, y))[:, 0].sum())
        aux = {f"{name}_{c}": v for cm, c in zip(scores[1:], CLASSES[1:]) for name, v in cm.scores().items()}
        return {**scores[0].scores(), **aux, **depth_errors.scores(), "main_loss": loss / len(indices)}
