"""The registered ``stanford_cars`` dataset: the fine-grained image-classification family with the Cars devkit's
format."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.registry import DATASETS
from pipeline.datasets.shared.fine_grained import FineGrainedClassification
from pipeline.datasets.shared.raw_images import RawImages
from pipeline.datasets.stanford_cars import config
from pipeline.datasets.stanford_cars.sources import CARS_FORMAT, read_cars


@DATASETS.register("stanford_cars")
class StanfordCars(FineGrainedClassification):
    """Stanford Cars (AuxiLearn Table 3: ~30 images per class, ResNet-18 from scratch). After the paper's 30 %
    validation hold-out the real classes keep ~29 training images on average (24..68 before), so the split
    defaults to ``short_classes: all``: classes with fewer than ``k_shot`` train on what they have."""

    name = "stanford_cars"
    raw_format = CARS_FORMAT
    Config = config.Config
    ModelConfig = config.ModelConfig
    SplitConfig = config.SplitConfig
    default_split = {**FineGrainedClassification.default_split, "short_classes": "all"}

    def read_raw(self, cfg: config.Config, root: Path) -> RawImages:
        return read_cars(root, cfg.image_size, cfg.crop_to_bbox)
