"""The registered ``cinic10`` dataset: the image-classification family with CINIC-10's folders, ``valid/`` as the
validation split."""
from __future__ import annotations

import numpy as np

from pipeline.core.registry import DATASETS
from pipeline.datasets.cinic10 import config
from pipeline.datasets.cinic10.sources import CINIC10_FORMAT, FOLDERS
from pipeline.datasets.shared.base import TaskData
from pipeline.datasets.shared.image_classification import ImageClassification, generate_standin
from pipeline.datasets.shared.raw_images import RawImages


@DATASETS.register("cinic10")
class Cinic10(ImageClassification):
    """CINIC-10 (MAXL Table 1: ResNet-50, the whole training split). Validation images come from ``valid/``."""

    name = "cinic10"
    raw_format = CINIC10_FORMAT
    Config = config.Config
    ModelConfig = config.ModelConfig
    SplitConfig = config.SplitConfig
    default_split = {**ImageClassification.default_split, "train_fraction": 1.0}
    # The family's optimiser and schedule (App. B.3); 300 steps of 32 instead of 400 of 64, since ResNet-50 at 1/8
    # width costs ~4x the thin VGG-16 per image: MAXL then trains one seed of the stand-in in minutes on a CPU.
    default_train = {**ImageClassification.default_train, "steps": 300, "batch_size": 32}

    def standin(self, cfg: config.Config) -> RawImages:
        """The family's shapes, ``standin_valid_per_class`` of each class's training images moved to ``valid/``,
        classes renumbered in sorted-name order (CINIC-10's reader numbers the folders that way)."""
        train, valid = cfg.standin_train_per_class, cfg.standin_valid_per_class
        raw = generate_standin(cfg.model_copy(update={"standin_train_per_class": train + valid}))
        cls = raw.labels["class"]
        folder = np.where(raw.is_train, 0, 2)
        for c in range(cfg.standin_num_classes):  # the first `valid` training rows of each class (rows are shuffled)
            folder[np.flatnonzero(raw.is_train & (cls == c))[:valid]] = 1
        names = raw.names["class"]
        order = sorted(range(len(names)), key=names.__getitem__)
        rank = np.argsort(order)  # old class id -> its sorted position
        return RawImages(raw.images, folder == 0,
                         {"category": rank[cls].astype(np.int64), "folder": folder.astype(np.int64)},
                         {"category": [names[i] for i in order], "folder": list(FOLDERS)}, raw.subclass_labels)

    def validation_pool(self, data: TaskData) -> np.ndarray:
        """The images of ``valid/``."""
        return np.flatnonzero(np.asarray(data.meta["folder_labels"]) == FOLDERS.index("valid"))
