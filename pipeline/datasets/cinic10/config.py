"""``datasets.cinic10`` in params.yaml: ``prepare`` (where the images come from, the stand-in's sizes), ``split``
(the validation images come from ``valid/``) and ``model`` (MAXL's ResNet-50, 1/8 width by default)."""
from __future__ import annotations

from pydantic import Field

from pipeline.datasets.shared.image_classification import ImageConfig, ImageSplitConfig, ResNet50ModelConfig
from pipeline.datasets.shared.sources import default_root


class ModelConfig(ResNet50ModelConfig):
    """``datasets.cinic10.model``: ResNet-50 with the 32-px stem (3x3 stride-1 first conv, no max-pool)."""


class SplitConfig(ImageSplitConfig):
    """``datasets.cinic10.split``: CINIC-10 ships its own validation split, so ``valid/`` is used as such: ``val``
    images are a seeded sample of ``valid/`` (never trained on), the training subset is ``train_fraction`` of
    ``train/`` (1 by default: MAXL trains on the whole training split), the aux set ``aux_fraction`` of that
    subset, and ``test/`` is the test split."""

    train_fraction: float = Field(1.0, gt=0, le=1, description="share of train/ used for training (MAXL: all)")
    val: int = Field(500, ge=1, description="validation images, a seeded sample of valid/ (at most all of it)")


class Config(ImageConfig):
    """``datasets.cinic10.prepare``: where the images come from (and the stand-in's settings).

    The stand-in is the family's shapes with hidden sub-classes written as PNGs in CINIC-10's layout, at a size
    that trains in minutes on a CPU (CINIC-10 itself has 9000 images per class in each of the three folders)."""

    dataset = "cinic10"

    root: str | None = Field(
        default_root("cinic10"), description="source=path: the folder holding train/, valid/ and test/, each with "
        "one sub-folder of PNGs per class (see data/raw/cinic10/README.md); unused by the stand-in")
    standin_train_per_class: int = Field(200, ge=1, description="stand-in only: images per class in train/")
    standin_valid_per_class: int = Field(50, ge=1, description="stand-in only: images per class in valid/")
    standin_test_per_class: int = Field(100, ge=1, description="stand-in only: images per class in test/")

    def known_label_groups(self) -> int | None:
        """The main classes (ψ's groups for generated labels), known before any data: the stand-in's shape
        classes, or CINIC-10's 10."""
        return self.standin_num_classes if self.source == "standin" else 10
