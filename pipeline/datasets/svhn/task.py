"""The registered ``svhn`` dataset: the image-classification family with SVHN's format, no flips."""
from __future__ import annotations

from pipeline.datasets.shared.image_classification import ImageClassification
from pipeline.datasets.svhn import config
from pipeline.datasets.svhn.sources import SVHN_FORMAT
from pipeline.core.registry import DATASETS


@DATASETS.register("svhn")
class Svhn(ImageClassification):
    """SVHN's cropped digits (AuxiLearn Table 3: 5 % of the training set, a 4-layer ConvNet); no flips."""

    name = "svhn"
    raw_format = SVHN_FORMAT
    flip = False
    Config = config.Config
    ModelConfig = config.ModelConfig
    SplitConfig = config.SplitConfig
