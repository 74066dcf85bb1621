"""The registered ``cifar100`` dataset: the image-classification family with CIFAR-100's format and a choice
of main label; the other label level is a given auxiliary task (DTG-AuxL's CIFAR-100 scenario, appendix §4.2:
the 100 fine classes as the primary task, the 20 coarse classes as the auxiliary)."""
from __future__ import annotations

from pipeline.datasets.cifar100 import config
from pipeline.datasets.cifar100.sources import CIFAR100_FORMAT, LABEL_KEYS
from pipeline.datasets.shared.image_classification import ImageClassification
from pipeline.core.registry import DATASETS


@DATASETS.register("cifar100")
class Cifar100(ImageClassification):
    """CIFAR-100 with ``main_label`` fine (default) or coarse; the other level is the given auxiliary task
    (its own head and cross-entropy; methods that generate their auxiliary task read the main column only)."""

    name = "cifar100"
    raw_format = CIFAR100_FORMAT
    Config = config.Config
    ModelConfig = config.ModelConfig
    SplitConfig = config.SplitConfig
    provides = ImageClassification.provides | {"auxiliaries", "task_labels"}

    def main_labelling(self, cfg: config.Config) -> str:
        return cfg.main_label

    def given_auxiliaries(self, meta: dict) -> list[str]:
        """The label level that is not the main task (the prepared file's ``main_label``)."""
        return [level for level in LABEL_KEYS if level != meta.get("main_label")][:1]
