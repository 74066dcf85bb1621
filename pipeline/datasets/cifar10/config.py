"""``datasets.cifar10`` in params.yaml: ``prepare`` (where the images come from); ``model`` and ``split`` are
the image-classification family's."""
from __future__ import annotations

from pydantic import Field

from pipeline.datasets.shared.image_classification import ImageConfig, ImageModelConfig, ImageSplitConfig
from pipeline.datasets.shared.sources import default_root

ModelConfig = ImageModelConfig
SplitConfig = ImageSplitConfig


class Config(ImageConfig):
    """``datasets.cifar10.prepare``: where the images come from (and the stand-in's settings)."""

    dataset = "cifar10"

    root: str | None = Field(
        default_root("cifar10"), description="source=path: the folder holding data_batch_1..5, test_batch and "
        "batches.meta (the contents of cifar-10-batches-py; see data/raw/cifar10/README.md); unused by the stand-in")

    def known_label_groups(self) -> int | None:
        """The main classes (ψ's groups for generated labels), known before any data: the stand-in's shape
        classes, or CIFAR-10's 10."""
        return self.standin_num_classes if self.source == "standin" else 10
