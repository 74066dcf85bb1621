"""``datasets.cityscapes``'s params schemas: ``prepare`` (where the data come from, at what size), ``model`` (the
SegNet's size) and ``split`` (validation and aux draws from the training folder, App. C.8)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.core.schema import StrictModel
from pipeline.datasets.shared.sources import STANDIN, default_root, require_root

NAME = "cityscapes"
STANDIN_IMAGE_SIZE = (32, 64)  # the stand-in's stored size: 128 x 256 costs 16x the CPU time per step


class Config(StrictModel):
    """``datasets.cityscapes.prepare``: where the data come from and at what size they are stored."""

    source: Literal["standin", "preprocessed"] = Field(
        STANDIN, description="standin: draw the small procedural street stand-in; preprocessed: Liu et al.'s "
        ".npy layout at root (train/, val/ with image/, label_19/, label_7/, label_2/, depth/)")
    root: str | None = Field(
        default_root(NAME), description="folder of the raw data: data/raw/cityscapes, the folder dvc.yaml tracks "
        "(see its README.md)")
    image_size: tuple[int, int] | None = Field(
        None, strict=False, description="(H, W) of the prepared images; default: the size the files hold "
        "(128 x 256 in Liu et al.'s release, App. C.8); labels and depth are resized by nearest neighbour")
    standin_size: tuple[int, int] = Field(
        STANDIN_IMAGE_SIZE, strict=False, description="stand-in only: (H, W) of the written .npy files")
    standin_train: int = Field(240, ge=2, description="stand-in only: train/ images (240: 24 val, 5 aux)")
    standin_test: int = Field(80, ge=1, description="stand-in only: val/ images (the test split)")
    standin_seed: int = Field(0, description="stand-in only: seed of the street generator (same seed, same files)")

    @model_validator(mode="after")
    def _check(self) -> "Config":
        require_root(self.source, self.root, self.model_fields_set, NAME, "the Cityscapes .npy folders")
        for key, size in (("image_size", self.image_size), ("standin_size", self.standin_size)):
            if size is not None and min(size) < 2:
                raise ValueError(f"{key} {size}: both sides must be at least 2 pixels")
        return self


class ModelConfig(StrictModel):
    """``datasets.cityscapes.model``: the SegNet's size (the paper's: width 64, stages 5)."""

    width: int = Field(16, ge=1, description="channels of the first stage (doubled per stage up to 8x)")
    stages: int = Field(3, ge=1, le=8, description="encoder/decoder stages (each halves the resolution)")


class SplitConfig(StrictModel):
    """``datasets.cityscapes.split``: train/ is split into train, validation and aux; val/ is the test set."""

    seed: int = Field(0, description="seed of the validation and aux draws")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="of train/ to validation (App. C.8: 10%)")
    aux_fraction: float = Field(0.025, gt=0, lt=1, description="of the remaining train/ images to the aux set (2.5%)")
