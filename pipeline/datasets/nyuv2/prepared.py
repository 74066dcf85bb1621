"""NYUv2's prepared file ``nyuv2.h5``: written from validated samples, read back and checked.

``images`` uint8 [N, 3, H, W], ``labels`` int8 [N, H, W] (-1 = ignore, 0..12), ``depth`` float32 [N, H, W]
(0 = invalid), ``normals`` float32 [N, 3, H, W] (unit vectors, all-zero = invalid), ``is_train`` uint8 [N]
(official train split), ``sample_ids`` int64 [N] (file index, or 0-based row of the .mat), attributes
``source`` and ``image_size``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.h5 import file_attrs, open_prepared
from pipeline.datasets.shared.npy_layout import DensePrepared, write_dense_prepared
from pipeline.datasets.shared.rows import H5Rows
from pipeline.datasets.nyuv2.sources import IGNORE, NUM_CLASSES, Row

H5_NAME = "nyuv2.h5"
LOAD_CHUNK = 64  # samples per read in read_prepared()
NEED = ("images", "labels", "depth", "normals", "is_train", "sample_ids")


@dataclass
class Prepared(DensePrepared):
    """The prepared file in memory: ``targets`` float32 [N, 5, H, W] = (label, depth, normal x, y, z); both
    ``H5Rows`` (read on demand) from ``read_prepared(lazy=True)``."""


def write_prepared(out_file: Path, samples: Iterator[Row], count: int, size: tuple[int, int],
                   attrs: dict[str, Any]) -> None:
    """Stream ``count`` (sample, is_train, sample_id) into ``nyuv2.h5`` (one chunk per image, no timestamps)."""
    h, w = size
    write_dense_prepared(out_file, samples, count, size,
                         [("images", (3, h, w), np.uint8), ("labels", (h, w), np.int8), ("depth", (h, w), np.float32),
                          ("normals", (3, h, w), np.float32)], attrs)


def read_prepared(folder: Path, stage: str = "prepare", lazy: bool = False) -> Prepared:
    """``folder/nyuv2.h5``, checked for its datasets, shapes, dtypes and label range; ``DataError`` naming the
    file (and the ``stage`` that makes it, when it is missing). ``lazy``: images and targets stay in the file
    (``H5Rows``); the label range is still checked over every row, a chunk at a time."""
    path = Path(folder) / H5_NAME
    with open_prepared(path, stage) as f:
        absent = [k for k in NEED if k not in f]
        if absent:
            raise DataError(f"{path}: missing {', '.join(absent)}")
        stored, is_train, sample_ids = f["images"], f["is_train"][...], f["sample_ids"][...]
        source = file_attrs(f).get("source", "")
        n = len(stored)
        if stored.ndim != 4 or stored.shape[1] != 3 or stored.dtype != np.uint8:
            raise DataError(f"{path}: images should be uint8 [N, 3, H, W], got {stored.dtype} {stored.shape}")
        hw = stored.shape[2:]
        labels, depth, normals = f["labels"], f["depth"], f["normals"]
        if labels.shape != (n, *hw) or depth.shape != (n, *hw) or normals.shape != (n, 3, *hw) \
                or is_train.shape != (n,) or sample_ids.shape != (n,):
            raise DataError(f"{path}: labels {labels.shape}, depth {depth.shape}, normals {normals.shape}, "
                            f"is_train {is_train.shape}, sample_ids {sample_ids.shape} do not match images "
                            f"{stored.shape}")
        images = None if lazy else stored[...]
        # Filled in slices straight from the file: real NYUv2 targets are 3.2 GB as float32, and
        # whole-array copies would double that.
        targets = None if lazy else np.empty((n, 5, *hw), np.float32)
        for start in range(0, n, LOAD_CHUNK):
            rows = slice(start, start + LOAD_CHUNK)
            lab = labels[rows]
            if lab.min() < IGNORE or lab.max() >= NUM_CLASSES:
                raise DataError(f"{path}: labels must lie in -1..{NUM_CLASSES - 1}")
            if targets is not None:
                targets[rows] = stack_targets((lab, depth[rows], normals[rows]))
    if lazy:
        images, targets = H5Rows(path, ("images",)), H5Rows(path, ("labels", "depth", "normals"), stack_targets)
    return Prepared(images, targets, is_train.astype(bool), sample_ids, source)


def stack_targets(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """(labels [B, H, W], depth [B, H, W], normals [B, 3, H, W]) -> float32 targets [B, 5, H, W]."""
    labels, depth, normals = arrays
    out = np.empty((len(labels), 5, *labels.shape[1:]), np.float32)
    out[:, 0], out[:, 1], out[:, 2:5] = labels, depth, normals
    return out
