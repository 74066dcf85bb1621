"""Cityscapes' prepared file ``cityscapes.h5``: written from validated samples, read back and checked.

``images`` uint8 [N, 3, H, W], ``labels`` int8 [N, 3, H, W] (19-, 7-, 2-class; -1 = ignore), ``depth`` float32
[N, H, W] (0 = invalid), ``is_train`` uint8 [N] (from train/), ``sample_ids`` int64 [N] (file index), attributes
``source`` and ``image_size``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.datasets.cityscapes.sources import IGNORE, LABEL_KINDS, Row
from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.h5 import file_attrs, open_prepared
from pipeline.datasets.shared.npy_layout import DensePrepared, write_dense_prepared
from pipeline.datasets.shared.rows import H5Rows

H5_NAME = "cityscapes.h5"
LOAD_CHUNK = 64
NEED = ("images", "labels", "depth", "is_train", "sample_ids")
CLASSES = tuple(LABEL_KINDS.values())  # (19, 7, 2)


@dataclass
class Prepared(DensePrepared):
    """The prepared file: ``targets`` float32 [N, 4, H, W] = (label_19, label_7, label_2, depth), or both
    ``H5Rows`` from ``read_prepared(lazy=True)``."""


def write_prepared(out_file: Path, samples: Iterator[Row], count: int, size: tuple[int, int],
                   attrs: dict[str, Any]) -> None:
    """Stream ``count`` (sample, is_train, sample_id) into ``cityscapes.h5`` (one chunk per image, no timestamps)."""
    h, w = size
    write_dense_prepared(out_file, samples, count, size,
                         [("images", (3, h, w), np.uint8), ("labels", (3, h, w), np.int8),
                          ("depth", (h, w), np.float32)], attrs)


def stack_targets(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """(labels [B, 3, H, W], depth [B, H, W]) -> float32 targets [B, 4, H, W]."""
    labels, depth = arrays
    out = np.empty((len(labels), 4, *labels.shape[2:]), np.float32)
    out[:, :3], out[:, 3] = labels, depth
    return out


def read_prepared(folder: Path, stage: str = "prepare", lazy: bool = False) -> Prepared:
    """``folder/cityscapes.h5``, checked for its datasets, shapes, dtypes and label ranges; ``DataError`` naming
    the file. ``lazy``: images and targets stay in the file (``H5Rows``); ranges are still checked by chunks."""
    path = Path(folder) / H5_NAME
    with open_prepared(path, stage) as f:
        absent = [k for k in NEED if k not in f]
        if absent:
            raise DataError(f"{path}: missing {', '.join(absent)}")
        stored, labels, depth = f["images"], f["labels"], f["depth"]
        is_train, sample_ids = f["is_train"][...], f["sample_ids"][...]
        n = len(stored)
        if stored.ndim != 4 or stored.shape[1] != 3 or stored.dtype != np.uint8:
            raise DataError(f"{path}: images should be uint8 [N, 3, H, W], got {stored.dtype} {stored.shape}")
        hw = stored.shape[2:]
        if labels.shape != (n, 3, *hw) or depth.shape != (n, *hw) or is_train.shape != (n,) \
                or sample_ids.shape != (n,):
            raise DataError(f"{path}: labels {labels.shape}, depth {depth.shape}, is_train {is_train.shape}, "
                            f"sample_ids {sample_ids.shape} do not match images {stored.shape}")
        images = None if lazy else stored[...]
        targets = None if lazy else np.empty((n, 4, *hw), np.float32)
        top = np.array(CLASSES).reshape(1, 3, 1, 1)
        for start in range(0, n, LOAD_CHUNK):
            rows = slice(start, start + LOAD_CHUNK)
            lab = labels[rows]
            if lab.min(initial=0) < IGNORE or (lab >= top).any():
                raise DataError(f"{path}: labels must lie in -1..18, -1..6 and -1..1")
            if targets is not None:
                targets[rows] = stack_targets((lab, depth[rows]))
        source = file_attrs(f).get("source", "")
    if lazy:
        images, targets = H5Rows(path, ("images",)), H5Rows(path, ("labels", "depth"), stack_targets)
    return Prepared(images, targets, is_train.astype(bool), sample_ids, source)
