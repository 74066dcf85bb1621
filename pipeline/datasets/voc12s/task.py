"""The registered ``voc12s`` dataset: the image-classification family with PASCAL VOC 2012's folder, one label per
image (``sources.main_object``), 96-px images."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.registry import DATASETS
from pipeline.datasets.shared.image_classification import ImageClassification
from pipeline.datasets.shared.raw_images import RawImages
from pipeline.datasets.voc12s import config
from pipeline.datasets.voc12s.sources import VOC_FORMAT, read_voc
from pipeline.datasets.voc12s.standin import generate_voc_standin


@DATASETS.register("voc12s")
class Voc12s(ImageClassification):
    """PASCAL-VOC12S (MAXL Table 1: VOC 2012 at 96 x 96, ResNet-50): train on the ``*_train`` lists, test on
    ``*_val``. Training crops: padding 12 px (CIFAR's 4 px at 32, scaled to 96) and flips."""

    name = "voc12s"
    raw_format = VOC_FORMAT
    crop_padding = 12
    Config = config.Config
    ModelConfig = config.ModelConfig
    SplitConfig = config.SplitConfig
    default_split = {**ImageClassification.default_split, "train_fraction": 0.8, "val": 100}
    # The family's optimiser and schedule (App. B.3); 300 steps of 32 instead of 400 of 64, since ResNet-50 at 1/8
    # width costs ~4x the thin VGG-16 per image: MAXL then trains one seed of the stand-in in minutes on a CPU.
    default_train = {**ImageClassification.default_train, "steps": 300, "batch_size": 32}

    def standin(self, cfg: config.Config) -> RawImages:
        return generate_voc_standin(cfg)

    def read_raw(self, cfg: config.Config, root: Path) -> RawImages:
        return read_voc(root, cfg.image_size)
