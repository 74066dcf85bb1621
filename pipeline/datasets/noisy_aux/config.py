"""``datasets.noisy_aux.prepare`` in params.yaml: the generator's parameters (``split``, ``model``: the defaults)."""
from __future__ import annotations

from pydantic import Field

from pipeline.datasets.shared.regression import ROOT_DESCRIPTION
from pipeline.datasets.shared.sources import default_root
from pipeline.core.schema import StrictModel


class Config(StrictModel):
    seed: int = 0
    num_samples: int = Field(1300, ge=4)
    dim: int = Field(10, ge=1)
    num_aux: int = Field(100, ge=1)
    input_mean: float = Field(1.0, description="mean of every input feature; non-zero makes |ε| a bias the model feels")
    sigma_main: float = Field(1.0, gt=0)
    sigma_aux: float = Field(0.3, gt=0, description="ε_j ~ N(0, j·sigma_aux²)")
    root: str = Field(default_root("noisy_aux"), description=ROOT_DESCRIPTION.format(name="noisy_aux"))
