"""Train / aux / val / test index files: disjoint, deterministic from ``split.seed``.

The aux set is pre-allocated from the training data (AuxiLearn §5); methods that do not learn from
it train on train ∪ aux. An optional ``unlabelled`` file lists training samples whose main-task label
is hidden (semi-supervised K-shot, AuxiLearn §5.2): they are trained on the auxiliary tasks only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.io import atomic_path

SPLITS = ("train", "aux", "val", "test")
UNLABELLED = "unlabelled"  # optional: a subset of train without the main-task label
COMPANION = "companion"  # optional: a dataset pair's auxiliary-dataset rows (``pipeline.datasets.shared.pair``)
OPTIONAL = (UNLABELLED, COMPANION)


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
    for i in splits.get(COMPANION, np.zeros(0, np.int64)).tolist():
        if i in seen:
            raise ValueError(f"sample {i} is in both the {seen[i]} and the {COMPANION} split")


def save_splits(folder: Path, splits: dict[str, np.ndarray]) -> None:
    check_disjoint(splits)
    for name in (*SPLITS, *OPTIONAL):
        if name not in splits:
            continue
        with atomic_path(folder / f"{name}.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, splits[name], allow_pickle=False)


def _load_index_file(path: Path, num_samples: int | None) -> np.ndarray:
    """One split file: a 1-D array of integer sample indices in ``[0, num_samples)``; else ``ValueError``
    naming the file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npy file ({err}): run `dvc repro split`") from None
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{path} has dtype {arr.dtype}; split indices must be integers "
                         "(hand-edited? run `dvc repro split`)")
    if arr.ndim != 1:
        raise ValueError(f"{path} has shape {arr.shape}; a split is a 1-D array of sample indices")
    if arr.size:
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or (num_samples is not None and high >= num_samples):
            bad = low if low < 0 else high
            bound = f"[0, {num_samples})" if num_samples is not None else "non-negative"
            raise ValueError(f"{path}: index {bad} is out of range (sample indices must be {bound}, the "
                             "prepared data's size): run `dvc repro split`")
    return arr.astype(np.int64, copy=False)


def check_files_disjoint(folder: Path, splits: dict[str, np.ndarray]) -> None:
    """Like :func:`check_disjoint`, but the message names both files (what a reader of hand-edited files needs)."""
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            shared = np.intersect1d(splits[a], splits[b])
            if shared.size:
                raise ValueError(f"{folder / f'{a}.npy'} and {folder / f'{b}.npy'} share {shared.size} sample(s) "
                                 f"(e.g. {int(shared[0])}); the splits must be disjoint: run `dvc repro split`")
    companion = splits.get(COMPANION)
    if companion is not None:
        for name in SPLITS:
            shared = np.intersect1d(splits[name], companion)
            if shared.size:
                raise ValueError(f"{folder / f'{name}.npy'} and {folder / f'{COMPANION}.npy'} share {shared.size} "
                                 f"sample(s) (e.g. {int(shared[0])}); the auxiliary stream may not draw them: run "
                                 "`dvc repro split`")
    hidden = splits.get(UNLABELLED)
    if hidden is not None and not np.isin(hidden, splits["train"]).all():
        raise ValueError(f"{folder / f'{UNLABELLED}.npy'} lists samples outside {folder / 'train.npy'}; the "
                         "unlabelled split must be a subset of the train split")


def load_splits(folder: Path, num_samples: int | None = None) -> dict[str, np.ndarray]:
    """Read and check the split files: integer 1-D indices, in range of ``num_samples`` (when given), disjoint.
    A violation raises ``ValueError`` naming the file(s)."""
    out = {}
    for name in SPLITS:
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `dvc repro split`")
        out[name] = _load_index_file(path, num_samples)
    for name in OPTIONAL:
        if (folder / f"{name}.npy").is_file():
            out[name] = _load_index_file(folder / f"{name}.npy", num_samples)
    check_files_disjoint(folder, out)
    return out
