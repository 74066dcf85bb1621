"""``datasets.mnist`` in params.yaml: ``prepare`` (where the digits come from, the stand-in's settings) and ``model``
(MAXL's small MNIST network by default); ``split`` is the image-classification family's."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.datasets.mnist.standin import STYLES
from pipeline.datasets.shared.image_classification import ImageConfig, ImageModelConfig, ImageSplitConfig
from pipeline.datasets.shared.sources import default_root

SplitConfig = ImageSplitConfig


class Config(ImageConfig):
    """``datasets.mnist.prepare``: where the digits come from (and the stand-in's settings)."""

    dataset = "mnist"

    root: str | None = Field(
        default_root("mnist"), description="source=path: the folder holding train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each plain or .gz (see "
        "data/raw/mnist/README.md); unused by the stand-in")
    standin_num_classes: int = Field(
        10, ge=2, le=10, description="stand-in only: digits drawn (0 .. n-1; the files always label 10 digits)")
    standin_subclasses: int = Field(
        4, ge=1, le=len(STYLES), description="stand-in only: hidden writing styles (thickness, slant, width) per digit")
    standin_train_per_class: int = Field(300, ge=1, description="stand-in only: official-train images per digit")
    standin_test_per_class: int = Field(100, ge=1, description="stand-in only: official-test images per digit")
    standin_noise: float = Field(10.0, ge=0, description="stand-in only: std of the Gaussian pixel noise (0-255)")

    def known_label_groups(self) -> int:
        """The main classes (ψ's groups for generated labels): the 10 digits, for the stand-in too (IDX labels are
        digits; a stand-in with fewer digits leaves the others empty)."""
        return 10


class ModelConfig(ImageModelConfig):
    """``datasets.mnist.model``: MAXL's MNIST row uses a small two-layer network (``mnist_net``)."""

    backbone: Literal["mnist_net", "vgg16", "convnet4", "resnet18"] = Field(
        "mnist_net", description="mnist_net (MAXL's 2-layer network: two conv blocks), convnet4, vgg16 or resnet18")
