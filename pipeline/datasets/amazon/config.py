"""``datasets.amazon`` in params.yaml: ``prepare`` (which subset, where the review files are, the CTR label, the
stand-in's generator), ``split`` (the aux set carved from the training period) and ``model`` (AutoInt's sizes)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.core.schema import StrictModel
from pipeline.datasets.shared.sources import default_root, require_root

NAME = "amazon"


class Config(StrictModel):
    """``datasets.amazon.prepare``: the review log (real files or the stand-in), the chronological periods, the
    CTR auxiliary."""

    source: Literal["standin", "path"] = Field(
        "standin", description="standin: generate the synthetic review log in the real format; path: ingest the "
                               "review and metadata files at root")
    subset: Literal["toys", "movies"] = Field(
        "toys", description="which Amazon category: toys (Toys_and_Games) or movies (Movies_and_TV); picks the "
                            "files at root (see data/raw/amazon/README.md) and names the stand-in's categories")
    root: str | None = Field(default_root(NAME), description="source=path: the folder holding the review and "
                                                            "metadata JSON-lines files (plain or .gz)")
    reviews_file: str | None = Field(
        None, description="source=path: the reviews file's name in root; null = the first present of the subset's "
                          "public names (reviews_Toys_and_Games_5.json(.gz), Toys_and_Games_5.json(.gz), ...)")
    metadata_file: str | None = Field(
        None, description="source=path: the metadata file's name in root; null = meta_<Category>.json(.gz)")
    category_level: int = Field(
        1, ge=0, description="the item category = this level of the item's first category path (0 = the root, "
                             "e.g. 'Toys & Games'; 1 = the next, e.g. 'Games'); a shorter path gives its last entry")
    train_fraction: float = Field(0.8, gt=0, lt=1, description="the earliest reviews in time: the training period")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="the next reviews: validation; the rest (latest) test")
    ctr_threshold: float = Field(3.0, description="CTR auxiliary: click = rating > ctr_threshold ([A §4.3]: 3)")
    ctr_flip: float = Field(
        0.0, ge=0, le=0.5, description="probability of flipping each CTR label (any source): 0 = the paper's "
                                       "auxiliary; 0.5 = a coin flip independent of the rating (deliberately "
                                       "unhelpful)")
    ctr_flip_seed: int = Field(0, description="seed of the CTR flips")
    # -- the stand-in (source: standin) --
    standin_seed: int = Field(0, description="stand-in only: seed of the generator (same seed, same files)")
    standin_users: int = Field(200, ge=2, description="stand-in only: users")
    standin_items: int = Field(150, ge=2, description="stand-in only: items")
    standin_categories: int = Field(8, ge=1, description="stand-in only: item categories")
    standin_reviews: int = Field(12000, ge=20, description="stand-in only: reviews (distinct user-item pairs)")
    standin_dim: int = Field(4, ge=1, description="stand-in only: size of the users' and items' latent vectors")
    standin_category_affinity: float = Field(
        0.7, ge=0, description="stand-in only: scale of each user's affinity to each category")
    standin_noise: float = Field(0.4, ge=0, description="stand-in only: std of the rating noise (latent scale)")

    @model_validator(mode="after")
    def _check(self) -> "Config":
        require_root(self.source, self.root, self.model_fields_set, NAME, "the Amazon review and metadata files")
        if self.train_fraction + self.val_fraction >= 1:
            raise ValueError(f"train_fraction + val_fraction = {self.train_fraction + self.val_fraction} leaves no "
                             "test period")
        if self.source == "standin" and self.standin_reviews > self.standin_users * self.standin_items:
            raise ValueError(f"standin_reviews = {self.standin_reviews} exceeds the {self.standin_users} x "
                             f"{self.standin_items} distinct user-item pairs")
        return self


class SplitConfig(StrictModel):
    """``datasets.amazon.split``: train / val / test are the prepared chronological periods; the aux set (for the
    methods that learn φ on one, AuxiLearn) is carved from the training period."""

    seed: int = Field(0, description="seed of the aux set's draw (aux_from: random)")
    aux_fraction: float = Field(0.05, gt=0, lt=1, description="share of the training period moved to the aux set")
    aux_from: Literal["random", "latest"] = Field(
        "random", description="random: a seeded draw from the training period (as every dataset here); latest: its "
                              "most recent reviews (the closest in time to validation)")


class ModelConfig(StrictModel):
    """``datasets.amazon.model``: AutoInt over the fields user ID, item ID, item category."""

    embed_dim: int = Field(8, ge=1, description="embedding size of every field")
    layers: int = Field(2, ge=1, description="interacting layers (multi-head self-attention over the fields)")
    heads: int = Field(2, ge=1, description="attention heads per interacting layer")
    head_dim: int = Field(4, ge=1, description="d': attention size per head (a layer outputs heads × d' per field)")
    head_layers: Literal[1, 2] = Field(1, description="layers of each task head ([A §4.3]: {1, 2})")
