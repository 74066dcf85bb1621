"""``datasets.toy2d.prepare`` in params.yaml: the generator's parameters (``split``, ``model``: the defaults)."""
from __future__ import annotations

from pydantic import Field, model_validator

from pipeline.datasets.shared.regression import ROOT_DESCRIPTION
from pipeline.datasets.shared.sources import default_root
from pipeline.core.schema import StrictModel


class Config(StrictModel):
    seed: int = 0
    num_samples: int = Field(1300, ge=4)
    # strict=False lets YAML's list in; the two items stay strict, finite floats
    w_main: tuple[float, float] = Field((1.0, 1.0), strict=False, description="w* of the main and helpful tasks")
    w_harmful: tuple[float, float] = Field((2.0, -4.0), strict=False, description="w of the harmful task")
    sigma_main: float = Field(3.0, gt=0, description="must exceed sigma_aux (paper §5.1)")
    sigma_aux: float = Field(1.0, gt=0)
    root: str = Field(default_root("toy2d"), description=ROOT_DESCRIPTION.format(name="toy2d"))

    @model_validator(mode="after")
    def _main_noisier(self) -> "Config":
        if self.sigma_main <= self.sigma_aux:
            raise ValueError("sigma_main must be larger than sigma_aux (paper §5.1)")
        return self
