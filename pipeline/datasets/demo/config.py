"""``datasets.demo`` params schemas: ``prepare`` (the generator's parameters) and ``model`` (DGCNN sizes); ``split``
is the default seeded random partition."""
from __future__ import annotations

from pydantic import Field

from pipeline.datasets.shared.regression import ROOT_DESCRIPTION
from pipeline.datasets.shared.sources import default_root
from pipeline.core.schema import StrictModel

NAME = "demo"
CATEGORIES = ("bump", "ridge", "saddle", "step")  # the surface families, one label group each


class Config(StrictModel):
    """``datasets.demo.prepare``: the generator's parameters (same values, same files)."""

    seed: int = Field(0, description="seed of the generator")
    grid: int = Field(12, ge=4, description="G: each surface is sampled on a G x G grid (G² points, raster order)")
    shapes_per_category: int = Field(60, ge=2, description="surfaces per family (4 families)")
    jitter: float = Field(0.02, ge=0, description="std of the Gaussian noise added to every coordinate")
    tilt: float = Field(0.15, ge=0, description="std of the random plane added to each surface's height")
    label_noise: float = Field(0.25, ge=0, le=1, description="fraction of points whose main-task part is redrawn "
                                                              "uniformly among its family's parts")
    harmful_std: float = Field(2.0, gt=0, description="std of the harmful auxiliary's random per-point targets")
    root: str = Field(default_root(NAME), description=ROOT_DESCRIPTION.format(name=NAME))

    def sample_count(self) -> tuple[int, str]:
        """The prepared dataset's size, known before preparing it, and the keys it follows from (for messages)."""
        count = len(CATEGORIES) * self.shapes_per_category
        return count, f"{count} surfaces: prepare.shapes_per_category = {self.shapes_per_category} × {len(CATEGORIES)} families"

    def known_label_groups(self) -> int:
        """ψ's groups for generated labels: the surface families."""
        return len(CATEGORIES)


class ModelConfig(StrictModel):
    """``datasets.demo.model``: the DGCNN's sizes (``dgcnn_multitask``) and the light PointNet label generator."""

    k: int = Field(8, ge=1, description="neighbours of the dynamic k-NN graph")
    width: int = Field(16, ge=1, description="EdgeConv channels; the per-point MLP is 4w, 4w, 2w")
    emb: int = Field(128, ge=1, description="global feature size")
    dropout: float = Field(0.0, ge=0, lt=1)
    generator_width: int = Field(16, ge=1, description="width of the light PointNet auxiliary label generator")
