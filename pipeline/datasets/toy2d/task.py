"""The registered ``toy2d`` dataset and its generator: y_main = w*ᵀx + ε0, helpful y1 = w*ᵀx + ε1, harmful
y2 = w̃ᵀx + ε2, σ_main > σ_aux (§5.1). ``meta.json`` records the auxiliaries' roles (``aux_roles``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.datasets.shared.regression import SyntheticRegression
from pipeline.datasets.toy2d import config
from pipeline.core.registry import DATASETS


@DATASETS.register("toy2d")
class Toy2D(SyntheticRegression):
    """y_main = w*ᵀx + ε0, helpful y1 = w*ᵀx + ε1, harmful y2 = w̃ᵀx + ε2, σ_main > σ_aux (§5.1)."""

    name = "toy2d"
    Config = config.Config
    default_split = {"aux": 100, "val": 100, "test": 1000}
    default_train = {"steps": 2000, "lr": 0.01}

    def generate(self, cfg: config.Config, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        n = cfg.num_samples
        x = rng.normal(size=(n, 2))
        w_main, w_harm = np.asarray(cfg.w_main), np.asarray(cfg.w_harmful)
        y = np.stack(
            [
                x @ w_main + rng.normal(0, cfg.sigma_main, n),
                x @ w_main + rng.normal(0, cfg.sigma_aux, n),
                x @ w_harm + rng.normal(0, cfg.sigma_aux, n),
            ],
            axis=1,
        )
        meta = {"task_names": ["main", "helpful", "harmful"], "w_main": w_main.tolist(), "w_harmful": w_harm.tolist(),
                "aux_roles": {"helpful": "helpful", "harmful": "harmful"}}
        return x, y, meta
