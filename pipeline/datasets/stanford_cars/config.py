"""``datasets.stanford_cars`` in params.yaml: ``prepare`` (where the images come from, their size, the bounding-box
crop); ``model`` and ``split`` are the fine-grained family's."""
from __future__ import annotations

from pydantic import Field

from pipeline.datasets.shared.fine_grained import FineGrainedConfig, FineGrainedModelConfig, FineGrainedSplitConfig
from pipeline.datasets.shared.sources import default_root

ModelConfig = FineGrainedModelConfig
SplitConfig = FineGrainedSplitConfig


class Config(FineGrainedConfig):
    """``datasets.stanford_cars.prepare``: where the images come from, their size, the crop, the stand-in."""

    dataset = "stanford_cars"
    real_classes = 196

    root: str | None = Field(
        default_root("stanford_cars"), description="source=path: the folder holding devkit/ (cars_meta.mat, "
        "cars_train_annos.mat), cars_test_annos_withlabels.mat, cars_train/ and cars_test/ (see "
        "data/raw/stanford_cars/README.md); unused by the stand-in")
    crop_to_bbox: bool = Field(
        False, description="crop each image to its annotated bounding box before resizing; AuxiLearn does not "
        "mention the boxes, so the default (false) uses the whole image")
