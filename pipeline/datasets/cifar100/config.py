"""``datasets.cifar100`` in params.yaml: ``prepare`` (where the images come from, which level of MAXL's 4-level
hierarchy is the main task and which finer one the human-defined auxiliary); ``model`` and ``split`` are the
image-classification family's."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.datasets.cifar100.hierarchy import LEVELS, finer_level, level_counts
from pipeline.datasets.shared.image_classification import ImageConfig, ImageModelConfig, ImageSplitConfig
from pipeline.datasets.shared.sources import default_root

ModelConfig = ImageModelConfig
SplitConfig = ImageSplitConfig

Level = Literal["domain", "group", "coarse", "fine"]


class Config(ImageConfig):
    """``datasets.cifar100.prepare``: as the others, plus the primary and auxiliary levels of the hierarchy."""

    dataset = "cifar100"

    root: str | None = Field(
        default_root("cifar100"), description="source=path: the folder holding train, test and meta (the contents "
        "of cifar-100-python; see data/raw/cifar100/README.md); unused by "
        "the stand-in")
    primary_level: Level = Field(
        "fine", description="main task: a level of MAXL's 4-level hierarchy, coarsest first: domain (3 classes), "
        "group (10), coarse (the 20 superclasses), fine (the 100 classes); the stand-in: 2, 3, 5, 10")
    auxiliary_level: Level | None = Field(
        None, description="the human-defined finer labelling (method human, nearest_neighbour; ψ's default "
        "total): a level finer than primary_level; null = the next finer one (none when primary_level is fine)")

    @model_validator(mode="before")
    @classmethod
    def _replaced_key(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "main_label" in raw:
            raise ValueError(f"main_label was replaced by primary_level (one of {', '.join(LEVELS)}): write "
                             f"primary_level: {raw['main_label']} instead")
        return raw

    @model_validator(mode="after")
    def _finer(self) -> "Config":
        if self.auxiliary_level is not None and LEVELS.index(self.auxiliary_level) <= LEVELS.index(self.primary_level):
            finer = LEVELS[LEVELS.index(self.primary_level) + 1:]
            raise ValueError(f"auxiliary_level {self.auxiliary_level} must be finer than primary_level "
                             f"{self.primary_level} (one of: {', '.join(finer) or 'none, fine is the finest'})")
        return self

    @property
    def auxiliary(self) -> str | None:
        """The auxiliary level in effect (``auxiliary_level`` or the next finer than the primary; None: none)."""
        return finer_level(self.primary_level, self.auxiliary_level)

    def level_counts(self) -> dict[str, int]:
        return level_counts(self.source == "standin", self.standin_num_classes)

    def known_label_groups(self) -> int | None:
        """The main classes (ψ's groups for generated labels), known before any data: the primary level's count."""
        return self.level_counts()[self.primary_level]

    def lacks(self, needs: frozenset[str]) -> str | None:
        """Why these settings cannot give what a method ``needs`` (None: they can): ``finer_labels`` needs a
        level finer than the primary."""
        if "finer_labels" in needs and self.auxiliary is None:
            return (f"datasets.cifar100.prepare.primary_level is {self.primary_level}, the finest level, so there is "
                    f"no finer labelling: set primary_level to coarse, group or domain")
        return None
