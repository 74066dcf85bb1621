"""The registered ``cifar10`` dataset: the image-classification family with CIFAR-10's format."""
from __future__ import annotations

from pipeline.datasets.cifar10 import config
from pipeline.datasets.cifar10.sources import CIFAR10_FORMAT
from pipeline.datasets.shared.image_classification import ImageClassification
from pipeline.core.registry import DATASETS


@DATASETS.register("cifar10")
class Cifar10(ImageClassification):
    """CIFAR-10 (AuxiLearn Table 3: 5 % of the training set, VGG-16)."""

    name = "cifar10"
    raw_format = CIFAR10_FORMAT
    Config = config.Config
    ModelConfig = config.ModelConfig
    SplitConfig = config.SplitConfig
