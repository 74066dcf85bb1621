"""``datasets.stl10`` in params.yaml: ``prepare`` (where the images come from, the stand-in's settings) and ``model``
(VGG-16, the family's default, thinner on the stand-in); ``split`` is the image-classification family's."""
from __future__ import annotations

from pydantic import Field

from pipeline.datasets.shared.image_classification import ImageConfig, ImageModelConfig, ImageSplitConfig
from pipeline.datasets.shared.sources import default_root

SplitConfig = ImageSplitConfig


class Config(ImageConfig):
    """``datasets.stl10.prepare``: where the images come from (and the stand-in's settings)."""

    dataset = "stl10"

    root: str | None = Field(
        default_root("stl10"), description="source=path: the folder holding train_X.bin, train_y.bin, test_X.bin, "
        "test_y.bin and class_names.txt (the contents of stl10_binary; see data/raw/stl10/README.md); unused by the "
        "stand-in")
    standin_train_per_class: int = Field(
        100, ge=1, description="stand-in only: official-train images per class (96 x 96: 27 kB each)")
    standin_test_per_class: int = Field(50, ge=1, description="stand-in only: official-test images per class")

    def known_label_groups(self) -> int:
        """The main classes (ψ's groups for generated labels), known before any data: the stand-in's shape
        classes, or STL-10's 10."""
        return self.standin_num_classes if self.source == "standin" else 10


class ModelConfig(ImageModelConfig):
    """``datasets.stl10.model``: VGG-16 (MAXL's STL-10 network); ``width: null`` is 1/16 (4..32 channels) here, as
    96-px images cost 9 times a 32-px one: the stand-in then trains in CPU minutes. ``width: 1`` is the paper's."""

    standin_widths = {**ImageModelConfig.standin_widths, "vgg16": 0.0625}
