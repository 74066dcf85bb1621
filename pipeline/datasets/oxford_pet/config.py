"""``datasets.oxford_pet`` in params.yaml: ``prepare`` (where the images come from, their size); ``model`` and
``split`` are the fine-grained family's."""
from __future__ import annotations

from pydantic import Field

from pipeline.datasets.shared.fine_grained import FineGrainedConfig, FineGrainedModelConfig, FineGrainedSplitConfig
from pipeline.datasets.shared.sources import default_root

ModelConfig = FineGrainedModelConfig
SplitConfig = FineGrainedSplitConfig


class Config(FineGrainedConfig):
    """``datasets.oxford_pet.prepare``: where the images come from, their size, and the stand-in's settings."""

    dataset = "oxford_pet"
    real_classes = 37

    root: str | None = Field(
        default_root("oxford_pet"), description="source=path: the folder holding annotations/ (list.txt, "
        "trainval.txt, test.txt) and images/ (see data/raw/oxford_pet/README.md); unused by the stand-in")
