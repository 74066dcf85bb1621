"""``datasets.shapenet_part`` params schemas: ``prepare`` (where the shapes come from), ``model`` (DGCNN sizes and the
training-time point sampling) and ``split`` (K shapes per category)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.datasets.shared.sources import STANDIN, default_root, require_root
from pipeline.core.schema import StrictModel

NAME = "shapenet_part"
STANDIN_CATEGORY_COUNT = 6  # len(standin.STANDIN_CATEGORIES), checked there (the schema does not import trimesh)


class ShapeNetPartConfig(StrictModel):
    """``datasets.shapenet_part.prepare``: where the shapes come from and how they are sampled."""

    source: Literal["standin", "hdf5", "text", "mesh"] = Field(
        "standin", description="standin: generate the procedural stand-in; hdf5 / text / mesh: ingest root")
    root: str | None = Field(default_root(NAME), description="the release folder (hdf5_data/, the v0_normal folder, "
                                                             "or a mesh folder with shapes.csv); see its README.md; "
                                                             "must be given when source is not standin")
    points: int = Field(2048, ge=16, description="points per shape for text, mesh and standin (hdf5 keeps its own)")
    seed: int = Field(0, description="seed of the text resampling and the mesh surface sampling")
    normalize: bool = Field(True, description="mesh only: centre each shape and scale it into the unit sphere")
    standin_categories: int = Field(6, ge=2, description="stand-in only: number of categories (at most 6)")
    standin_train: int = Field(40, ge=1, description="stand-in only: official-train shapes per category")
    standin_val: int = Field(8, ge=1, description="stand-in only: official-val shapes per category")
    standin_test: int = Field(12, ge=1, description="stand-in only: official-test shapes per category")
    standin_seed: int = Field(0, description="stand-in only: seed of the generator (same seed, same files)")

    @model_validator(mode="after")
    def _check(self) -> "ShapeNetPartConfig":
        require_root(self.source, self.root, self.model_fields_set, NAME, "the ShapeNet Part release folder")
        if self.standin_categories > STANDIN_CATEGORY_COUNT:
            raise ValueError(f"standin_categories = {self.standin_categories} exceeds the "
                             f"{STANDIN_CATEGORY_COUNT} stand-in categories")
        return self

    def known_label_groups(self) -> int | None:
        """The object categories (ψ's groups for generated labels) when known before any data: the stand-in's;
        a real release's come from its folder (checked when training starts)."""
        return self.standin_categories if self.source == STANDIN else None


# The ModelConfig fields ``batch_transform`` reads: the dataset must be built with the config the model is.
SAMPLING_FIELDS = ("train_points", "augment_scale", "augment_jitter")


class ShapeNetModelConfig(StrictModel):
    """``datasets.shapenet_part.model``: DGCNN sizes and the training-time point sampling.

    The defaults are CPU-sized for the stand-in; the original DGCNN is k=20, width=64, emb=1024, dropout=0.5.
    ``train_points`` and the augmentation live here (not in ``prepare``) because they change what the
    network sees while training, not the prepared data: ``ShapeNetPart(model_cfg)`` is built with this config
    and its ``batch_transform`` reads them.
    """

    k: int = Field(10, ge=1, description="neighbours of the dynamic k-NN graph (20 in DGCNN)")
    width: int = Field(16, ge=1, description="EdgeConv channels (64 in DGCNN); the per-point MLP is 4w, 4w, 2w")
    emb: int = Field(128, ge=1, description="global feature size (1024 in DGCNN)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in the per-point MLP (0.5 in DGCNN)")
    train_points: int = Field(1024, ge=1, description="points sampled per shape (uniformly, without replacement) "
                                                     "for each training batch; evaluation uses all points")
    augment_scale: float = Field(0.2, ge=0, lt=1, description="training: per-axis scale drawn from U(1-s, 1+s)")
    augment_jitter: float = Field(0.01, ge=0, description="training: Gaussian jitter std, clipped at 3 std")
    generator_width: int = Field(32, ge=1, description="width of the light PointNet auxiliary label generator")


class ShapeNetSplitConfig(StrictModel):
    """``datasets.shapenet_part.split``: K shapes per category to train on, a few for the aux set, official val/test."""

    seed: int = Field(0, description="seed of the per-category draws")
    train_per_category: int = Field(30, ge=0, description="official-train shapes per category in train; "
                                                         "0 = every one not in the aux set")
    aux_per_category: int = Field(2, ge=1, description="official-train shapes per category in the aux set")
    val_per_category: int = Field(0, ge=0, description="cap on official-val shapes per category; 0 = all")
