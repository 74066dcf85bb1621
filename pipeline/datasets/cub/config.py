"""``datasets.cub`` in params.yaml: ``prepare`` (where the images come from), ``model`` and ``split``."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.datasets.cub.standin import STANDIN_SPECIES
from pipeline.datasets.shared.sources import default_root, require_root
from pipeline.core.schema import StrictModel


class Config(StrictModel):
    """``datasets.cub.prepare``: where the images come from and how they are stored."""

    source: Literal["standin", "path"] = Field(
        "standin", description="standin: generate the small procedural stand-in; path: ingest the folder at root")
    root: str | None = Field(
        default_root("cub"), description="source=path: the folder holding the contents of CUB_200_2011 (images.txt, "
        "images/, attributes/, ...; see data/raw/cub/README.md); "
        "unused by the stand-in")
    image_size: int | None = Field(
        None, ge=16, description="images are resized to image_size x image_size; "
        "default 256 for the real data (App. B.1), 40 for the stand-in")
    standin_num_classes: int = Field(
        60, ge=2, description="stand-in only: number of species (distinct shape/colour/pattern/size combinations)")
    standin_images_per_class: int = Field(
        36, ge=2, description="stand-in only: images per species, half official-train and half official-test")
    standin_seed: int = Field(0, description="stand-in only: seed of the generator (same seed, same files)")
    standin_attribute_noise: float = Field(
        0.1, ge=0, lt=0.5, description="stand-in only: probability that each per-image attribute label is flipped")
    aux_label_noise: float = Field(
        0.0, ge=0, le=1, description="JTDS's noisy-label setting: each attribute label of an official-train image "
        "(so of the training split, never of validation or test) is flipped with this probability; 0 = unchanged")
    aux_label_noise_seed: int = Field(0, description="seed of aux_label_noise's flips")

    def known_label_groups(self) -> int:
        """The species (ψ's groups for generated labels), known before any data."""
        return self.standin_num_classes if self.source == "standin" else 200

    @model_validator(mode="after")
    def _check(self) -> "Config":
        require_root(self.source, self.root, self.model_fields_set, "cub", "your CUB_200_2011 folder")
        if self.source == "standin" and self.standin_num_classes > len(STANDIN_SPECIES):
            raise ValueError(f"standin_num_classes = {self.standin_num_classes} exceeds the "
                             f"{len(STANDIN_SPECIES)} distinct stand-in species")
        return self

    @property
    def resolved_image_size(self) -> int:
        if self.image_size is not None:
            return self.image_size
        return 256 if self.source == "path" else 40


class ModelConfig(StrictModel):
    """``datasets.cub.model``: the primary network (read by train, evaluate and report)."""

    backbone: Literal["small_cnn", "resnet18"] = Field(
        "small_cnn", description="primary network backbone: small_cnn (CPU-sized, for the stand-in) or resnet18")
    backbone_width: int = Field(32, ge=1, description="small_cnn only: channels of the first block (doubled per block)")
    pretrained_weights: str | None = Field(
        None, description="resnet18 only: local path of an ImageNet ResNet-18 state dict; never downloaded")

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.pretrained_weights and self.backbone != "resnet18":
            raise ValueError("pretrained_weights needs backbone: resnet18")
        return self


class SplitConfig(StrictModel):
    """``datasets.cub.split``: K-shot main-task labels, an aux set from them, the official test split halved."""

    seed: int = Field(0, description="seed of the K-shot sample, the aux set and the val/test halving")
    k_shot: int = Field(5, ge=0, description="species-labelled images per class from the official train split; 0 = all")
    aux: int = Field(20, ge=1, description="images moved from the (K-shot) training set to the auxiliary set")
