"""CUB's splits (AuxiLearn App. B.1): K species labels per class from the official train split, the aux set
drawn from those, and the official test split halved into validation and test."""
from __future__ import annotations

import numpy as np

from pipeline.datasets.cub.config import SplitConfig


def k_shot_splits(labels: np.ndarray, is_train: np.ndarray, num_classes: int,
                  split_cfg: SplitConfig) -> dict[str, np.ndarray]:
    """Indices of train, aux, val, test and unlabelled, each sorted int64.

    As in AuxiLearn §5.2, every official training image is trained on (all attribute labels are available)
    but only K per class keep their species label: the rest form the ``unlabelled`` split.
    """
    rng = np.random.default_rng(split_cfg.seed)
    is_train = np.asarray(is_train, dtype=bool)
    official_train = np.flatnonzero(is_train)
    if split_cfg.k_shot == 0:
        labelled = official_train
    else:
        picks = []
        for c in range(num_classes):
            members = official_train[labels[official_train] == c]
            if len(members) < split_cfg.k_shot:
                raise ValueError(f"datasets.cub.split.k_shot = {split_cfg.k_shot}: class {c} has only "
                                 f"{len(members)} official training images")
            picks.append(rng.choice(members, size=split_cfg.k_shot, replace=False))
        labelled = np.concatenate(picks)
    if split_cfg.aux >= len(labelled):
        raise ValueError(f"datasets.cub.split.aux = {split_cfg.aux} leaves no training image out of the "
                         f"{len(labelled)} species-labelled ones (k_shot = {split_cfg.k_shot})")
    labelled = rng.permutation(labelled)
    aux = labelled[: split_cfg.aux]
    unlabelled = np.setdiff1d(official_train, labelled)
    train = np.setdiff1d(official_train, aux)
    test_pool = rng.permutation(np.flatnonzero(~is_train))
    half = len(test_pool) // 2
    val, test = test_pool[:half], test_pool[half:]
    return {k: np.sort(v).astype(np.int64) for k, v in
            {"train": train, "aux": aux, "val": val, "test": test, "unlabelled": unlabelled}.items()}
