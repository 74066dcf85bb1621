"""NYUv2's split rule: the official train/test split, with validation and aux sets drawn from official train."""
from __future__ import annotations

import math

import numpy as np


def official_splits(is_train: np.ndarray, seed: int, val_fraction: float, aux_fraction: float
                    ) -> dict[str, np.ndarray]:
    """App. B.2: floor(val_fraction x official train) to validation (79 of 795), floor(aux_fraction x the
    rest) to the aux set (17 of 716), the remaining official train images to train; test = official test."""
    is_train = np.asarray(is_train, dtype=bool)
    pool = np.random.default_rng(seed).permutation(np.flatnonzero(is_train))
    n_val = max(1, math.floor(val_fraction * len(pool) + 1e-9))
    n_aux = max(1, math.floor(aux_fraction * (len(pool) - n_val) + 1e-9))
    if n_val + n_aux >= len(pool):
        raise ValueError(f"datasets.nyuv2.split: {n_val} validation + {n_aux} aux images leave no training image "
                         f"out of {len(pool)} official training images")
    if not (~is_train).any():
        raise ValueError("datasets.nyuv2.split: no official test image")
    parts = {"val": pool[:n_val], "aux": pool[n_val:n_val + n_aux], "train": pool[n_val + n_aux:],
             "test": np.flatnonzero(~is_train)}
    return {k: np.sort(v).astype(np.int64) for k, v in parts.items()}
