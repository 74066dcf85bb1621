"""The registered ``cifar100`` dataset: the image-classification family with CIFAR-100's format and a choice
of main label."""
from __future__ import annotations

from pipeline.datasets.cifar100 import config
from pipeline.datasets.cifar100.sources import CIFAR100_FORMAT
from pipeline.datasets.shared.image_classification import ImageClassification
from pipeline.core.registry import DATASETS


@DATASETS.register("cifar100")
class Cifar100(ImageClassification):
    """CIFAR-100 with ``main_label`` fine (default) or coarse; both labellings stay in ``meta``."""

    name = "cifar100"
    raw_format = CIFAR100_FORMAT
    Config = config.Config
    ModelConfig = config.ModelConfig
    SplitConfig = config.SplitConfig

    def main_labelling(self, cfg: config.Config) -> str:
        return cfg.main_label
