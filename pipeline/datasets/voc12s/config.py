"""``datasets.voc12s`` in params.yaml: ``prepare`` (where the images come from, their size, the stand-in),
``split`` (validation held out of the ``*_train`` images) and ``model`` (MAXL's ResNet-50, 1/8 width by default,
ImageNet stem for 96-px images)."""
from __future__ import annotations

from pydantic import Field

from pipeline.datasets.shared.image_classification import ImageConfig, ImageSplitConfig, ResNet50ModelConfig
from pipeline.datasets.shared.sources import default_root
from pipeline.datasets.shared.standin_shapes import STANDIN_SHAPES

REAL_CLASSES = 20


class ModelConfig(ResNet50ModelConfig):
    """``datasets.voc12s.model``: ResNet-50 with the ImageNet stem (7x7 stride-2 conv and max-pool) by default,
    which takes the 96-px images to 24 px before the first stage."""

    small_stem: bool = Field(False, description="resnet18/resnet50: 3x3 stride-1 first conv and no max-pool (for 32-px "
                             "inputs); false (default here): the ImageNet stem")


class SplitConfig(ImageSplitConfig):
    """``datasets.voc12s.split``: the training pool is the ``*_train`` lists (VOC 2012's ``train``), the test set
    the ``*_val`` lists (VOC's ``val``, whose labels are public); validation is held out of the training pool."""

    train_fraction: float = Field(
        0.8, gt=0, le=1, description="share of the *_train images used for training; validation comes from the rest")
    val: int = Field(100, ge=1, description="validation images, from the *_train images outside the training subset")


class Config(ImageConfig):
    """``datasets.voc12s.prepare``: where the images come from, their size, and the stand-in's settings."""

    dataset = "voc12s"

    root: str | None = Field(
        default_root("voc12s"), description="source=path: the folder holding VOCdevkit/VOC2012/ (or VOC2012's "
        "contents: ImageSets/Main, Annotations, JPEGImages; see data/raw/voc12s/README.md); unused by the stand-in")
    image_size: int = Field(96, ge=16, description="images are squashed to image_size x image_size (MAXL: 96)")
    standin_num_classes: int = Field(10, ge=2, le=len(STANDIN_SHAPES), description="stand-in only: shape classes")
    standin_train_per_class: int = Field(50, ge=1, description="stand-in only: images per main class in *_train")
    standin_test_per_class: int = Field(25, ge=1, description="stand-in only: images per main class in *_val")
    standin_max_objects: int = Field(
        3, ge=1, le=6, description="stand-in only: at most this many non-difficult objects per image (the labelled "
        "one the largest)")
    standin_difficult: float = Field(
        0.25, ge=0, le=1, description="stand-in only: share of images with a faint 'difficult' object drawn larger "
        "than the labelled one (the labelling rule skips it)")

    def known_label_groups(self) -> int | None:
        """The main classes (ψ's groups for generated labels), known before any data: the stand-in's shape
        classes, or VOC's 20."""
        return self.standin_num_classes if self.source == "standin" else REAL_CLASSES
