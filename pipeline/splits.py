"""Train / aux / val / test index files: disjoint, deterministic from ``split.seed``.

The aux set is pre-allocated from the training data (AuxiLearn §5); methods that do not learn from
it train on train ∪ aux. An optional ``unlabelled`` file lists training samples whose main-task label
is hidden (semi-supervised K-shot, AuxiLearn §5.2): they are trained on the auxiliary tasks only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.io import atomic_path

SPLITS = ("train", "aux", "val", "test")
UNLABELLED = "unlabelled"  # optional: a subset of train without the main-task label


def random_splits(num_samples: int, aux: int, val: int, test: int, seed: int) -> dict[str, np.ndarray]:
    held_out = aux + val + test
    if held_out >= num_samples:
        raise ValueError(f"split: aux + val + test = {held_out} leaves no training data out of {num_samples} samples")
    perm = np.random.default_rng(seed).permutation(num_samples)
    bounds = np.cumsum([test, val, aux])
    test_idx, val_idx, aux_idx, train_idx = np.split(perm, bounds)
    return {name: np.sort(idx).astype(np.int64) for name, idx in
            zip(("test", "val", "aux", "train"), (test_idx, val_idx, aux_idx, train_idx))}


def check_disjoint(splits: dict[str, np.ndarray]) -> None:
    seen: dict[int, str] = {}
    for name in SPLITS:
        for i in splits[name].tolist():
            if i in seen:
                raise ValueError(f"sample {i} is in both the {seen[i]} and the {name} split")
            seen[i] = name
    hidden = splits.get(UNLABELLED)
    if hidden is not None and not np.isin(hidden, splits["train"]).all():
        raise ValueError("the unlabelled split must be a subset of the train split")


def save_splits(folder: Path, splits: dict[str, np.ndarray]) -> None:
    check_disjoint(splits)
    for name in (*SPLITS, UNLABELLED):
        if name not in splits:
            continue
        with atomic_path(folder / f"{name}.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, splits[name], allow_pickle=False)


def load_splits(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for name in SPLITS:
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `dvc repro split`")
        out[name] = np.load(path, allow_pickle=False)
    if (folder / f"{UNLABELLED}.npy").is_file():
        out[UNLABELLED] = np.load(folder / f"{UNLABELLED}.npy", allow_pickle=False)
    return out
