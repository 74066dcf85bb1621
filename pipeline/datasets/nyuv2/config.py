"""``datasets.nyuv2``'s params schemas: ``prepare`` (where the data come from, at what size), ``model`` (the
SegNet's size) and ``split`` (validation and aux draws from official train)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.datasets.shared.sources import STANDIN, default_root, require_root
from pipeline.core.schema import StrictModel

NAME = "nyuv2"
REAL_IMAGE_SIZE = (288, 384)  # App. B.2
STANDIN_IMAGE_SIZE = (48, 64)


class Config(StrictModel):
    """``datasets.nyuv2.prepare``: where the data come from and at what size they are stored."""

    source: Literal["standin", "preprocessed", "official"] = Field(
        STANDIN, description="standin: render the small procedural stand-in; preprocessed: the .npy folder "
        "layout at root (train/, val/); official: nyu_depth_v2_labeled.mat and companions at root")
    root: str | None = Field(
        default_root(NAME), description="folder of the raw data: data/raw/nyuv2, the folder dvc.yaml tracks (see its README.md)")
    image_size: tuple[int, int] | None = Field(
        None, strict=False, description="(H, W) of the prepared images; default 288 x 384 for real data (App. B.2), "
        "48 x 64 for the stand-in")
    mat_file: str = Field("nyu_depth_v2_labeled.mat", description="official only: the labelled .mat (relative to root)")
    class_mapping_file: str = Field(
        "class13_mapping.txt", description="official only: raw class id (1-based) -> 13-class id (0 = ignore), "
        ".txt/.npy one integer per raw class, or class13Mapping.mat")
    splits_file: str = Field("splits.mat", description="official only: splits.mat (trainNdxs/testNdxs, 1-based) "
                             "or an .npz with those arrays")
    normals_file: str | None = Field(
        None, description="official only, required: surface normals [N, H, W, 3] as .npy or .h5 (dataset 'normals')")
    standin_train: int = Field(400, ge=2, description="stand-in only: official-train images (400: 40 val, 9 aux)")
    standin_test: int = Field(200, ge=1, description="stand-in only: official-test images")
    standin_seed: int = Field(0, description="stand-in only: seed of the renderer (same seed, same files)")

    @model_validator(mode="after")
    def _check(self) -> "Config":
        require_root(self.source, self.root, self.model_fields_set, NAME, "the NYUv2 files of that source")
        if self.image_size is not None and min(self.image_size) < 2:
            raise ValueError(f"image_size {self.image_size}: both sides must be at least 2 pixels")
        return self

    @property
    def resolved_image_size(self) -> tuple[int, int]:
        if self.image_size is not None:
            return (int(self.image_size[0]), int(self.image_size[1]))
        return STANDIN_IMAGE_SIZE if self.source == STANDIN else REAL_IMAGE_SIZE


class ModelConfig(StrictModel):
    """``datasets.nyuv2.model``: the SegNet's size (the paper's: width 64, stages 5)."""

    width: int = Field(16, ge=1, description="channels of the first stage (doubled per stage up to 8x)")
    stages: int = Field(3, ge=1, le=8, description="encoder/decoder stages (each halves the resolution)")


class SplitConfig(StrictModel):
    """``datasets.nyuv2.split``: official train/test; validation and aux sets carved from official train."""

    seed: int = Field(0, description="seed of the validation and aux draws")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="of official train to validation (79 of 795)")
    aux_fraction: float = Field(0.025, gt=0, lt=1, description="of the remaining train images to the aux set")
