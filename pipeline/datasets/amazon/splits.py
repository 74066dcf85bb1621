"""Amazon's splits: the prepared chronological periods as train / val / test, the aux set carved from the
training period."""
from __future__ import annotations

import numpy as np

from pipeline.datasets.amazon.config import SplitConfig


def chronological_splits(period: np.ndarray, cfg: SplitConfig) -> dict[str, np.ndarray]:
    """train / aux / val / test from the prepared periods (rows are in time order): val and test are periods 1
    and 2; the aux set is ``aux_fraction`` of the training period, a seeded draw or its latest rows."""
    train_period = np.flatnonzero(period == 0)
    size = int(round(cfg.aux_fraction * len(train_period)))
    if not 1 <= size < len(train_period):
        raise ValueError(f"datasets.amazon.split.aux_fraction = {cfg.aux_fraction} gives {size} aux rows of the "
                         f"{len(train_period)} in the training period (need at least 1 and one left to train)")
    if cfg.aux_from == "latest":
        aux = train_period[-size:]
    else:
        aux = np.random.default_rng(cfg.seed).choice(train_period, size=size, replace=False)
    out = {"train": np.setdiff1d(train_period, aux), "aux": aux,
           "val": np.flatnonzero(period == 1), "test": np.flatnonzero(period == 2)}
    return {k: np.sort(v).astype(np.int64) for k, v in out.items()}
