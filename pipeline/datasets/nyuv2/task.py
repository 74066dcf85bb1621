"""NYUv2 as a ``Dataset``: 13-class semantic segmentation (main task) with depth and surface normals as
auxiliaries (AuxiLearn §5.3, App. B.2; the setup of Liu et al., 2019b).

Sources (``datasets.nyuv2.prepare.source``): ``preprocessed`` and ``official`` read the real formats at
``root`` (``sources.py``); ``standin`` (default) renders procedural rooms in the preprocessed layout
(``standin.py``). All end in one prepared file (``prepared.py``).

``TaskData``: inputs uint8 [N, 3, H, W] (``batch_transform`` scales them to [0, 1] floats, which the SegNet
takes as they are, as Liu et al. feed them: there is no input standardisation to carry); targets float
[N, 5, H, W] = (label, depth, normal x, y, z); tasks ``segmentation``, ``depth``, ``normal``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.core.registry import DATASETS, MODELS
from pipeline.datasets.nyuv2.config import NAME, Config, ModelConfig, SplitConfig
from pipeline.datasets.nyuv2.prepared import H5_NAME, read_prepared, write_prepared
from pipeline.datasets.nyuv2.sources import (CLASS_NAMES, EXPECTED, IGNORE, NUM_CLASSES, read_official,
                                             read_preprocessed)
from pipeline.datasets.nyuv2.standin import SOURCE_ATTR, STANDIN_AUX_ROLES, STANDIN_DIR, write_standin
from pipeline.datasets.shared.aux_roles import write_aux_roles
from pipeline.datasets.shared.base import LabelField, TaskData, reduce_pixels
from pipeline.datasets.shared.dense import DenseDataset
from pipeline.datasets.shared.npy_layout import loss_density
from pipeline.datasets.shared.sources import STANDIN, source_root
from pipeline.metrics.geometry import DepthErrors, NormalAngles
from pipeline.metrics.segmentation import ConfusionMatrix
from pipeline.models.base import MultiTaskNet

TASK_NAMES = ["segmentation", "depth", "normal"]
SOURCE_ATTRS = {"preprocessed": "NYUv2 (preprocessed .npy layout)", "official": "NYUv2 (official labelled .mat)"}


def pixel_losses(outputs: tuple[Tensor, Tensor, Tensor], targets: Tensor) -> Tensor:
    """[B, 3, H, W] loss images (see ``Nyuv2.per_task_losses``)."""
    seg, depth, normal = outputs
    label, gt_depth, gt_normal = targets[:, 0], targets[:, 1], targets[:, 2:5]
    ce = F.cross_entropy(seg, label.long().clamp_min(IGNORE), ignore_index=IGNORE, reduction="none")
    l1 = (depth[:, 0] - gt_depth).abs()
    cos = 1 - F.cosine_similarity(normal, gt_normal, dim=1)
    valid_normal = gt_normal.abs().sum(1) > 0
    return torch.stack([loss_density(ce, label >= 0), loss_density(l1, gt_depth > 0),
                        loss_density(cos, valid_normal)], dim=1)


@DATASETS.register(NAME)
class Nyuv2(DenseDataset):
    """NYUv2 (or its procedural stand-in): segmentation with depth and normal auxiliaries, per-pixel losses."""

    provides = frozenset({"auxiliaries", "loss_images", "task_labels"})

    name = NAME
    Config = Config
    SplitConfig = SplitConfig
    ModelConfig = ModelConfig
    task_names, num_classes, class_names = TASK_NAMES, NUM_CLASSES, list(CLASS_NAMES)
    read_prepared = staticmethod(read_prepared)
    default_split = {"seed": 0, "val_fraction": 0.1, "aux_fraction": 0.025}
    # Paper (App. B.2): Adam, lr 1e-4 for 200 epochs, halved after 100. On the 48 x 64 stand-in with the
    # default SegNet (width 16, 3 stages) that is far too slow; lr 1e-3 and 600 steps of 8 (~13 epochs of
    # the 369 train + aux images) take about a minute per seed of single-task training on a CPU and the
    # validation loss flattens near the end; the lr is halved half-way as in the paper.
    default_train = {"steps": 600, "batch_size": 8, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                     "lr_schedule": "halve_midway", "eval_every": 50}
    # No φ override: the old one (lr 1e-4 and a norm clip of 1, because one clipped SGD step zeroed the
    # ConvNet and a diverging Neumann series spiked) is not needed with methods.bilevel's scale-free optimiser,
    # the softplus-weighted ConvNet and the curvature-safe α. The ConvNet steps every layer at φ's rate: its
    # weights stay below 2 here, and validation main loss is 0.496 against 0.504 with layer_rate by_depth (0.399
    # against 0.411 on standin_seed 3; 3 seeds each), where its two weights end level.
    default_methods = {"auxilearn": {"layer_rate": "same"}}

    # -- files ---------------------------------------------------------------------------------

    def prepare(self, cfg: Config, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        size = cfg.resolved_image_size
        out_file = out_dir / H5_NAME
        if cfg.source == STANDIN:
            root = out_dir / STANDIN_DIR
            write_standin(root, cfg)
            count, samples = read_preprocessed(root, size)
            write_prepared(out_file, samples, count, size, {"source": SOURCE_ATTR})
            write_aux_roles(out_dir, dict(STANDIN_AUX_ROLES))
            return
        root = source_root(NAME, cfg.source, cfg.root, EXPECTED[cfg.source])
        attrs = {"source": SOURCE_ATTRS[cfg.source]}
        if cfg.source == "preprocessed":
            count, samples = read_preprocessed(root, size)
            write_prepared(out_file, samples, count, size, attrs)
        else:
            with read_official(root, cfg.mat_file, cfg.class_mapping_file, cfg.splits_file, cfg.normals_file,
                               size) as (count, samples):
                write_prepared(out_file, samples, count, size, attrs)

    # -- model, losses, metrics ----------------------------------------------------------------

    def build_model(self, data: TaskData, cfg: ModelConfig, aux_outputs: int = 0) -> MultiTaskNet:
        """The SegNet on [0, 1] images (no standardisation: none was ever applied to NYUv2's inputs)."""
        if aux_outputs:
            raise ValueError("nyuv2: generated auxiliary tasks are not supported (its auxiliaries are depth and "
                             "normals)")
        return MODELS.get("segnet")(num_classes=NUM_CLASSES, width=cfg.width, stages=cfg.stages)

    def per_task_losses(self, outputs: tuple[Tensor, Tensor, Tensor], targets: Tensor) -> Tensor:
        """[B, 3, H, W] loss images normalised as densities (see ``Dataset.per_task_losses``):
        0: cross-entropy (label -1 ignored); 1: L1 depth where depth > 0; 2: 1 - cosine where the normal is non-zero."""
        return pixel_losses(outputs, targets)

    def task_label_fields(self, data: TaskData) -> list[LabelField]:
        """Per pixel (DTG-AuxL's label generator, appendix §5.6): the class (−1 ignored), the depth (0 =
        missing), the normal's 3 components (all 0 = missing); a missing value reads as 0."""
        return [LabelField(data.task_names[0], NUM_CLASSES), LabelField(data.task_names[1], 0),
                LabelField(data.task_names[2], 0, size=3)]

    def task_labels(self, targets: Tensor) -> list[Tensor]:
        return [targets[:, 0].long(), targets[:, 1], targets[:, 2:5]]

    def metrics(self, model: nn.Module, data: TaskData, indices: Tensor) -> dict[str, float]:
        """``miou``/``pixel_acc`` (percent, confusion matrix over the whole set), depth abs/rel error over valid
        pixels, normal angle mean/median (degrees) and percent within 11.25/22.5/30 degrees, ``main_loss``."""
        seg_scores, depth_errors, normal_angles = ConfusionMatrix(NUM_CLASSES), DepthErrors(), NormalAngles()
        loss = 0.0
        for (seg, depth, normal), y in self.evaluation_outputs(model, data, indices, self.eval_chunk):
            seg_scores.update(seg, y[:, 0])
            depth_errors.update(depth, y[:, 1])
            normal_angles.update(normal, y[:, 2:5])
            loss += float(reduce_pixels(self.per_task_losses((seg, depth, normal), y))[:, 0].sum())
        return {**seg_scores.scores(), **depth_errors.scores(), **normal_angles.scores(),
                "main_loss": loss / len(indices)}
