"""CUB-200-2011: bird species (main task) with 312 binary visual attributes as auxiliaries (AuxiLearn §5.2, App. B.1).

Two sources, one reader: ``source: path`` ingests the user's CUB_200_2011 folder (``root``, default
data/raw/cub); ``source: standin`` (default) first writes the procedural stand-in (``standin.py``) in the same
layout into ``<out>/raw_standin`` and ingests that. Splits (``splits.py``): K images per class from the official
train split carry the species label, the aux set is taken from those, the official test split is halved.
The network standardises its own input (``Standardized``, with the training images' statistics from cub.h5);
``batch_transform`` gives [0, 1] floats.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.datasets.shared.base import Dataset, LabelField, TaskData
from pipeline.datasets.cub.config import Config, ModelConfig, SplitConfig
from pipeline.datasets.cub.prepared import H5_NAME, read_prepared, write_prepared
from pipeline.datasets.cub.sources import EXPECTED, read_cub_index
from pipeline.datasets.cub.splits import k_shot_splits
from pipeline.datasets.cub.standin import STANDIN_AUX_ROLES, STANDIN_DIR, write_standin
from pipeline.datasets.shared.aux_roles import read_aux_roles, write_aux_roles
from pipeline.datasets.shared.images import random_crops
from pipeline.datasets.shared.sources import source_root
from pipeline.metrics.classification import TopKAccuracy
from pipeline.models.base import ChannelStandardize, MultiTaskNet, Standardized
from pipeline.models.vision import image_backbone
from pipeline.core.registry import DATASETS, MODELS

EVAL_CHUNK = 256  # images per forward pass in evaluation: bounded memory for ResNet-18 at 224 px
CROP_FRACTION = 224 / 256  # App. B.1: 256-px images, 224-px crops


def corrupt_attributes(attributes: np.ndarray, is_train: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """JTDS's noisy setting for the auxiliaries: a copy of the 0/1 attributes [N, A] in which each label of a
    training image (``is_train``) is flipped with probability ``ratio``, independently, from ``seed``. The
    validation and test images (official test split) keep theirs. (The JTDS code corrupts the species labels of
    the training images outside the aux set instead; this is the auxiliary-label version.)"""
    flips = np.random.default_rng(seed).random(attributes.shape) < ratio
    flips &= np.asarray(is_train, bool)[:, None]
    return np.where(flips, 1 - attributes, attributes).astype(attributes.dtype)


@DATASETS.register("cub")
class Cub(Dataset):
    """CUB-200-2011 (or its procedural stand-in): species classification with attribute auxiliaries."""

    # generated_labels: label learning (AuxiLearn Table 3's CUB 30-shot), the species as ψ's groups
    provides = frozenset({"auxiliaries", "task_labels", "generated_labels"})

    name = "cub"
    Config = Config
    SplitConfig = SplitConfig
    ModelConfig = ModelConfig
    default_split = {"seed": 0, "k_shot": 5, "aux": 20}
    # Adam, τ = 0.1 and weight decay from App. B.1's grid. On the default stand-in (small_cnn width 32,
    # 2 CPU cores) one seed takes about 35 s and the validation loss still improves near the last step;
    # 1000 steps of 32 at 5-shot are ~110 epochs of the 280 training images, near the paper's 100 epochs.
    default_train = {"steps": 1000, "batch_size": 32, "optimizer": "adam", "lr": 1e-3, "weight_decay": 5e-4,
                     "aux_loss_scale": 0.1, "eval_every": 50}
    # φ at the global rate (1e-2; the deep networks at 1e-2 / depth, methods.auxilearn.layer_rate). Until
    # 2026-12-03 CUB had its own 1e-3, where the linear network barely moved; validation main loss, 3 seeds:
    # linear 1.620 at 1e-2 against 1.658 at 1e-3, nonlinear 1.514 at 2e-3 against 1.592 at 1e-3.

    # -- files ---------------------------------------------------------------------------------

    def prepare(self, cfg: Config, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        if cfg.source == "standin":
            root = out_dir / STANDIN_DIR
            write_standin(root, cfg)
            write_aux_roles(out_dir, dict(STANDIN_AUX_ROLES))
            source = "stand-in (procedural, not CUB-200-2011)"
        else:
            root = source_root(self.name, cfg.source, cfg.root, EXPECTED)
            source = "CUB-200-2011"
        index = read_cub_index(root)
        attrs = {"source": source}
        if cfg.aux_label_noise > 0:
            index.attributes = corrupt_attributes(index.attributes, index.is_train, cfg.aux_label_noise,
                                                  cfg.aux_label_noise_seed)
            attrs.update(aux_label_noise=cfg.aux_label_noise, aux_label_noise_seed=cfg.aux_label_noise_seed)
        write_prepared(index, out_dir / H5_NAME, cfg.resolved_image_size, attrs)

    def load(self, folder: Path) -> TaskData:
        """cub.h5 as TaskData: targets [N, 1 + A] (species, then the attributes); ``meta`` holds the official
        train flags, the image ids, the class names, the normalisation statistics and (stand-in) the roles."""
        return self._task_data(folder, lazy=False)

    def open_rows(self, folder: Path) -> TaskData:
        """As ``load``, the images read on demand from cub.h5 (the targets, 1.3 KB an image, are read)."""
        return self._task_data(folder, lazy=True)

    def _task_data(self, folder: Path, lazy: bool) -> TaskData:
        p = read_prepared(folder, lazy=lazy)
        targets = torch.cat([torch.from_numpy(p.labels).float()[:, None], torch.from_numpy(p.attributes).float()], 1)
        meta = {
            "source": p.attrs.get("source", ""),
            "num_classes": len(p.class_names),
            "num_attributes": len(p.attribute_names),
            "class_names": p.class_names,
            "is_train": p.is_train.astype(bool),
            "image_ids": p.image_ids,
            "image_size": int(p.images.shape[-1]),
            "mean": p.mean.tolist(),
            "std": p.std.tolist(),
        }
        roles = read_aux_roles(Path(folder), p.attribute_names)
        if roles is not None:
            meta["aux_roles"] = roles
        images = p.images if lazy else torch.from_numpy(p.images)
        return TaskData(images, targets, ["species", *p.attribute_names], meta)

    # -- splits --------------------------------------------------------------------------------

    def make_splits(self, data: TaskData, split_cfg: SplitConfig) -> dict[str, np.ndarray]:
        """K species labels per class from the official train split; aux drawn from those; test halved."""
        return k_shot_splits(data.targets[:, 0].long().numpy(), data.meta["is_train"],
                             int(data.meta["num_classes"]), split_cfg)

    # -- model, losses, metrics ----------------------------------------------------------------

    def build_model(self, data: TaskData, cfg: ModelConfig, aux_outputs: int = 0) -> MultiTaskNet:
        """The image network behind a per-channel standardisation with the official training images' mean/std;
        ``aux_outputs``: a generated task's head beside the species and attribute heads (label learning)."""
        net = MODELS.get("image_multihead")(
            num_classes=int(data.meta["num_classes"]), num_attributes=data.num_tasks - 1,
            backbone=cfg.backbone, width=cfg.backbone_width, pretrained_weights=cfg.pretrained_weights,
            aux_outputs=aux_outputs)
        return Standardized(net, data.meta["mean"], data.meta["std"])

    # -- generated auxiliary tasks (label learning) ----------------------------------------------

    def label_groups(self, data: TaskData) -> int:
        """The species: each owns a block of ψ generated classes."""
        return int(data.meta["num_classes"])

    def label_group(self, targets: Tensor) -> Tensor:
        return targets[:, 0].long()

    def build_label_generator(self, data: TaskData, cfg: ModelConfig, num_aux_classes: int) -> nn.Module:
        """The primary network's backbone (its own weights; never the pretrained file: AuxiLearn's generator is
        trained from scratch) with one head of ``num_aux_classes`` logits, standardising its input alike."""
        backbone, features = image_backbone(cfg.backbone, cfg.backbone_width)
        return nn.Sequential(ChannelStandardize(data.meta["mean"], data.meta["std"]), backbone,
                             nn.Linear(features, num_aux_classes))

    def batch_transform(self, x: Tensor, y: Tensor, train: bool,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """uint8 [B, 3, S, S] -> float [B, 3, s, s] in [0, 1], s = round(S·224/256); targets unchanged.

        Training: a random s x s crop and a horizontal flip per image; the draws come from ``generator``
        on the CPU (so runs repeat on any device) and only the indexing runs on ``x``'s device.
        Evaluation: the centre crop.
        """
        _, _, h, w = x.shape
        crop = max(1, round(min(h, w) * CROP_FRACTION))
        if train:
            x = random_crops(x, crop, flip=True, generator=generator)
        else:
            top, left = (h - crop) // 2, (w - crop) // 2
            x = x[:, :, top: top + crop, left: left + crop]
        return x.float() / 255.0, y

    def per_task_losses(self, outputs: tuple[Tensor, Tensor], targets: Tensor) -> Tensor:
        """Column 0: species cross-entropy; columns 1..A: binary cross-entropy of each attribute. [B, 1+A]."""
        species_logits, attribute_logits = outputs
        main = F.cross_entropy(species_logits, targets[:, 0].long(), reduction="none")
        aux = F.binary_cross_entropy_with_logits(attribute_logits, targets[:, 1:], reduction="none")
        return torch.cat([main[:, None], aux], dim=1)

    def metrics(self, model: nn.Module, data: TaskData, indices: Tensor) -> dict[str, float]:
        """``top1``/``top3``: species accuracy in percent (as the paper's tables); ``main_loss``: mean cross-entropy.
        In chunks of ``EVAL_CHUNK`` images, eval mode, no gradients."""
        acc = TopKAccuracy(ks=(1, 3))
        for (logits, _), y in self.evaluation_outputs(model, data, indices, EVAL_CHUNK):
            acc.update(logits, y[:, 0])
        return {"top1": acc.accuracy(1), "top3": acc.accuracy(3), "main_loss": acc.mean_loss}

    def main_loss(self, model: nn.Module, data: TaskData, indices: Tensor) -> float:
        """Validation main loss in chunks (the base class's single forward pass would not fit ResNet-18 on CUB)."""
        return self.metrics(model, data, indices)["main_loss"]

    def task_label_fields(self, data: TaskData) -> list[LabelField]:
        """The species (C classes), then every attribute (binary)."""
        return [LabelField(data.task_names[0], int(data.meta["num_classes"])),
                *(LabelField(name, 2) for name in data.task_names[1:])]

    def task_labels(self, targets: Tensor) -> list[Tensor]:
        return [targets[:, j].long() for j in range(targets.shape[1])]
