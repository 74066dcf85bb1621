"""``datasets.svhn`` in params.yaml: ``prepare`` (where the images come from) and ``model`` (AuxiLearn's SVHN
network by default); ``split`` is the image-classification family's."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.datasets.shared.image_classification import ImageConfig, ImageModelConfig, ImageSplitConfig
from pipeline.datasets.shared.sources import default_root

SplitConfig = ImageSplitConfig


class Config(ImageConfig):
    """``datasets.svhn.prepare``: where the images come from (and the stand-in's settings)."""

    dataset = "svhn"

    root: str | None = Field(
        default_root("svhn"), description="source=path: the folder holding train_32x32.mat and test_32x32.mat "
        "(see data/raw/svhn/README.md); unused by the stand-in")

    def known_label_groups(self) -> int | None:
        """The main classes (ψ's groups for generated labels), known before any data: the stand-in's shape
        classes, or SVHN's 10 digits."""
        return self.standin_num_classes if self.source == "standin" else 10


class ModelConfig(ImageModelConfig):
    """``datasets.svhn.model``: AuxiLearn's SVHN experiment uses a 4-layer ConvNet."""

    backbone: Literal["vgg16", "convnet4", "resnet18"] = Field(
        "convnet4", description="convnet4 (the paper's SVHN backbone), vgg16 or resnet18")
