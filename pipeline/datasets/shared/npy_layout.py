"""Liu et al.'s preprocessed ``.npy`` layout of dense multi-task datasets (MTAN's NYUv2 and Cityscapes releases):
``root/train/`` and ``root/val/``, each with one folder per kind (``image/``, ``label/``, ``depth/``, ...) holding
one ``<index>.npy`` per sample; and the dense per-pixel helpers those datasets share (resizing, loss densities,
their official-train/test split rule)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.core import io
from pipeline.core.progress import counted
from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.h5 import put, put_attrs
from pipeline.datasets.shared.rows import H5Rows

SPLIT_FOLDERS = (("train", True), ("val", False))  # folder, is official train


def resize(arr: np.ndarray, size: tuple[int, int], mode: Literal["bilinear", "nearest"]) -> np.ndarray:
    """[C, H, W] -> float32 [C, *size]; bilinear is antialiased (for downscaling photos)."""
    if tuple(arr.shape[-2:]) == tuple(size):
        return np.asarray(arr, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    if mode == "bilinear":
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    else:
        out = F.interpolate(t, size=size, mode="nearest-exact")
    return out[0].numpy()



def load_npy(path: Path) -> np.ndarray:
    try:
        arr = io.load_npy(path)  # refuses pickles and non-real dtypes (complex, strings)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path} is not a readable .npy array: {err}") from None
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path} does not hold a numeric array")
    return arr


def write_npy_sample(root: Path, split: str, index: int, arrays: dict[str, np.ndarray], kinds: Sequence[str]) -> None:
    """One sample into the layout: ``arrays[kind]`` for every kind of ``kinds``, in the layout's shapes
    (``np.save`` writes no timestamps: the same arrays give the same bytes)."""
    for kind in kinds:
        folder = root / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{index}.npy", arrays[kind], allow_pickle=False)


def npy_index(root: Path, kinds: Sequence[str], name: str) -> list[tuple[str, bool, int]]:
    """(split folder, is official train, index) of every sample, train first; every kind must have every index
    (``kinds[0]``'s). Errors name the missing folder or file and dataset ``name``'s ``prepare.root``."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (datasets.{name}.prepare.root must hold train/ and val/)")
    out = []
    for split, is_train in SPLIT_FOLDERS:
        ids: dict[str, set[int]] = {}
        for kind in kinds:
            folder = root / split / kind
            if not folder.is_dir():
                raise DataError(f"{folder} is missing (expected {split}/{{{','.join(kinds)}}}/<index>.npy)")
            found = set()
            for p in folder.glob("*.npy"):
                if not p.stem.isdigit():
                    raise DataError(f"{p}: file names must be <index>.npy with an integer index")
                found.add(int(p.stem))
            ids[kind] = found
        first = ids[kinds[0]]
        for kind in kinds[1:]:
            if ids[kind] != first:
                odd = sorted(ids[kind] ^ first)[:5]
                raise DataError(f"{root / split / kind}: indices differ from {root / split / kinds[0]} (e.g. {odd}: "
                                f"missing from one of them)")
        if not first:
            raise DataError(f"{root / split / kinds[0]} holds no <index>.npy files")
        out += [(split, is_train, i) for i in sorted(first)]
    return out


def loss_density(loss: Tensor, valid: Tensor) -> Tensor:
    """[B, H, W] per-pixel loss -> loss x (H·W / valid pixels of the sample), 0 where invalid or no pixel is valid."""
    pixels = valid[0].numel()
    count = valid.flatten(1).sum(1).clamp_min(1).to(loss.dtype)
    return torch.where(valid, loss * (pixels / count).view(-1, *([1] * (valid.dim() - 1))), torch.zeros_like(loss))


def official_splits(is_train: np.ndarray, seed: int, val_fraction: float, aux_fraction: float,
                    key: str = "datasets.nyuv2.split") -> dict[str, np.ndarray]:
    """App. B.2: floor(val_fraction x official train) to validation (79 of 795), floor(aux_fraction x the
    rest) to the aux set (17 of 716), the remaining official train images to train; test = official test
    (Cityscapes, App. C.8, the same). ``key``: the params section errors name."""
    is_train = np.asarray(is_train, dtype=bool)
    pool = np.random.default_rng(seed).permutation(np.flatnonzero(is_train))
    n_val = max(1, math.floor(val_fraction * len(pool) + 1e-9))
    n_aux = max(1, math.floor(aux_fraction * (len(pool) - n_val) + 1e-9))
    if n_val + n_aux >= len(pool):
        raise ValueError(f"{key}: {n_val} validation + {n_aux} aux images leave no training image "
                         f"out of {len(pool)} official training images")
    if not (~is_train).any():
        raise ValueError(f"{key}: no official test image")
    parts = {"val": pool[:n_val], "aux": pool[n_val:n_val + n_aux], "train": pool[n_val + n_aux:],
             "test": np.flatnonzero(~is_train)}
    return {k: np.sort(v).astype(np.int64) for k, v in parts.items()}


@dataclass
class DensePrepared:
    """A dense dataset's prepared file (NYUv2, Cityscapes): images uint8 [N, 3, H, W], per-pixel targets float32
    [N, T, H, W] (both ``H5Rows``, read on demand, from ``read_prepared(lazy=True)``), the official split, the
    source files' indices and the source."""

    images: np.ndarray | H5Rows
    targets: np.ndarray | H5Rows
    is_train: np.ndarray
    sample_ids: np.ndarray
    source: str

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.images.shape[2]), int(self.images.shape[3]))


def write_dense_prepared(out_file: Path, rows: Iterator[tuple[Any, bool, int]], count: int, size: tuple[int, int],
                         columns: Sequence[tuple[str, tuple[int, ...], Any]], attrs: dict[str, Any]) -> None:
    """Stream ``count`` rows (sample, is_train, sample_id) into ``out_file``: one HDF5 dataset per column (name,
    one sample's shape, dtype), filled from the sample's dataclass fields in order, one chunk per sample; then
    ``is_train``, ``sample_ids``, the ``image_size`` attribute and ``attrs``. No timestamps: the same rows give
    the same bytes."""
    with h5py.File(out_file, "w") as f:
        stored = [f.create_dataset(name, shape=(count, *shape), dtype=dtype, chunks=(1, *shape), track_times=False)
                  for name, shape, dtype in columns]
        is_train, ids = np.zeros(count, np.uint8), np.zeros(count, np.int64)
        row = -1
        for row, (sample, train, sample_id) in enumerate(counted(rows, f"prepare {Path(out_file).stem}: samples "
                                                                       "written", count, "samples")):
            for column, field in zip(stored, fields(sample), strict=True):
                column[row] = getattr(sample, field.name)
            is_train[row], ids[row] = train, sample_id
        if row + 1 != count:
            raise RuntimeError(f"write_prepared: expected {count} samples, got {row + 1}")
        put(f, "is_train", is_train)
        put(f, "sample_ids", ids)
        f.attrs["image_size"] = np.asarray(size, np.int64)
        put_attrs(f, attrs)
