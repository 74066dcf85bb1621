"""``datasets.cifar100`` in params.yaml: ``prepare`` (where the images come from, which label is the main task);
``model`` and ``split`` are the image-classification family's."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.datasets.shared.image_classification import ImageConfig, ImageModelConfig, ImageSplitConfig
from pipeline.datasets.shared.sources import default_root

ModelConfig = ImageModelConfig
SplitConfig = ImageSplitConfig


class Config(ImageConfig):
    """``datasets.cifar100.prepare``: as the others, plus which CIFAR-100 label is the main task."""

    dataset = "cifar100"

    root: str | None = Field(
        default_root("cifar100"), description="source=path: the folder holding train, test and meta (the contents "
        "of cifar-100-python; see data/raw/cifar100/README.md); unused by "
        "the stand-in")
    main_label: Literal["fine", "coarse"] = Field(
        "fine", description="main task: the 100 fine classes or the 20 superclasses (the other is kept in meta)")

    def known_label_groups(self) -> int | None:
        """The main classes (ψ's groups for generated labels), known before any data: the stand-in's shapes
        (fine) or its shape groups (coarse: shape k is in group k // 2), or CIFAR-100's 100 fine / 20 coarse."""
        if self.source == "standin":
            k = self.standin_num_classes
            return k if self.main_label == "fine" else (k + 1) // 2
        return 100 if self.main_label == "fine" else 20
