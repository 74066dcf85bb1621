"""The schema bases every plugin builds its ``params.yaml`` sections on. Imports nothing of the project,
so a method or dataset never imports the assembler (``pipeline.config``) that imports the registries."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Unknown keys are errors, so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamsError(ValueError):
    """A bad ``params.yaml``; the message names the offending key."""


class SplitConfig(StrictModel):
    """The default ``datasets.<name>.split``: a seeded random partition; the rest of the data is train."""

    seed: int = 0
    aux: int = Field(20, ge=1, description="samples pre-allocated from the training data for the auxiliary set")
    val: int = Field(200, ge=1)
    test: int = Field(1000, ge=1)


class TrainConfig(StrictModel):
    steps: int = Field(500, ge=1)
    batch_size: int = Field(0, ge=0, description="0 = full batch")
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    lr_schedule: Literal["constant", "halve_midway", "cosine"] = Field(
        "constant", description="halve_midway: App. B.2 (NYUv2); cosine: App. B.3 (CIFAR, SVHN)")
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    aux_loss_scale: float = Field(1.0, gt=0, description="τ: every auxiliary loss is multiplied by it (App. B.1)")
    eval_every: int = Field(25, ge=1, description="steps between validation checks (best-on-validation model kept)")
    select_by: Literal["val_loss", "val_metric"] = Field(
        "val_loss", description="which model to keep: lowest validation main loss, or best validation main metric "
                                "(the dataset's first metric: mIoU, accuracy; as the reference trainers do)")
