"""The prepared file ``cub.h5``: written from a parsed CUB layout, read back and validated (a ``DataError`` names it).

Contents: images uint8 [N, 3, S, S], labels int64 [N] 0-based, attributes uint8 [N, A], is_train uint8 [N],
image_ids, image paths, class and attribute names; file attributes ``image_size``, ``source`` and the
per-channel ``mean``/``std`` (of [0, 1] pixels) of the official training images, which the network's input
standardisation uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.h5 import TEXT, file_attrs, open_prepared, put, put_attrs, text
from pipeline.datasets.shared.rows import H5Rows
from pipeline.datasets.cub.sources import CubIndex, image_path, read_image
from pipeline.core.progress import counted

H5_NAME = "cub.h5"
_ARRAYS = ("images", "labels", "attributes", "is_train", "image_ids", "class_names", "attribute_names")


def write_prepared(index: CubIndex, out_file: Path | str, image_size: int, attrs: dict[str, Any]) -> None:
    """Read ``index``'s images (resized to ``image_size``) and write the prepared HDF5 file; ``attrs`` become
    file attributes. Images are read and written one at a time, so the real data never sits in memory."""
    n, s = len(index.image_ids), image_size
    # Per-channel sums over the official training images, for z-scoring (images only, no labels: using
    # the whole official train split does not leak K-shot labels or any test image).
    total = np.zeros(3)
    total_sq = np.zeros(3)
    pixels = 0
    # track_times=False: no creation timestamps, so the same inputs give the same bytes (and hashes).
    with h5py.File(out_file, "w") as f:
        images = f.create_dataset("images", shape=(n, 3, s, s), dtype=np.uint8, track_times=False)  # filled by rows
        for row, rel in enumerate(counted(index.image_paths, "prepare cub: images read", n, "images")):
            arr = read_image(image_path(index.root, rel), s)
            images[row] = arr
            if index.is_train[row]:
                flat = arr.reshape(3, -1).astype(np.float64) / 255.0
                total += flat.sum(1)
                total_sq += (flat**2).sum(1)
                pixels += flat.shape[1]
        if pixels == 0:
            raise DataError(f"{index.root / 'train_test_split.txt'}: no image is marked as a training image")
        mean = total / pixels
        std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 1e-12))

        put(f, "labels", index.labels, np.int64)
        put(f, "attributes", index.attributes, np.uint8)
        put(f, "is_train", index.is_train, np.uint8)
        put(f, "image_ids", index.image_ids, np.int64)
        put(f, "image_paths", index.image_paths, TEXT)
        put(f, "class_names", index.class_names, TEXT)
        put(f, "attribute_names", index.attribute_names, TEXT)
        f.attrs["image_size"] = s
        f.attrs["mean"] = mean
        f.attrs["std"] = std
        put_attrs(f, attrs)


@dataclass
class PreparedCub:
    """``cub.h5`` in memory, checked for consistency."""

    images: np.ndarray | H5Rows  # uint8 [N, 3, S, S]; H5Rows: read on demand (``read_prepared(lazy=True)``)
    labels: np.ndarray  # int64 [N], 0-based
    attributes: np.ndarray  # uint8 [N, A], 0/1
    is_train: np.ndarray  # uint8 [N]
    image_ids: np.ndarray  # int64 [N]
    class_names: list[str]
    attribute_names: list[str]
    mean: np.ndarray  # float64 [3], of [0, 1] pixels
    std: np.ndarray  # float64 [3]
    attrs: dict[str, Any]  # every file attribute (source, image_size, ...)



def _stats_problem(mean: np.ndarray, std: np.ndarray) -> str | None:
    if mean.shape != (3,) or std.shape != (3,) or not (std > 0).all():
        return "mean/std attributes must be 3 per-channel values with std > 0"
    return None


def read_prepared(folder: Path | str, lazy: bool = False) -> PreparedCub:
    """Read and validate ``<folder>/cub.h5``; any problem is a ``DataError`` naming the file. ``lazy``: the
    images stay in the file (``H5Rows``; real CUB's are 2.2 GB at 256 px), everything else is read."""
    path = Path(folder) / H5_NAME
    with open_prepared(path, "prepare") as f:
        absent = [k for k in _ARRAYS if k not in f] + [k for k in ("mean", "std") if k not in f.attrs]
        if absent:
            raise DataError(f"{path}: missing {', '.join(absent)}")
        stored = f["images"]
        shape, dtype = stored.shape, stored.dtype  # checked below, whether or not the images are read
        images = None if lazy else stored[...]
        labels, attributes = f["labels"][...], f["attributes"][...]
        is_train, image_ids = f["is_train"][...], f["image_ids"][...]
        class_names, attribute_names = text(f["class_names"][...]), text(f["attribute_names"][...])
        mean, std = np.asarray(f.attrs["mean"], dtype=np.float64), np.asarray(f.attrs["std"], dtype=np.float64)
        attrs = file_attrs(f)
    n = shape[0] if shape else 0
    c, a = len(class_names), len(attribute_names)
    problems = []
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or dtype != np.uint8:
        problems.append(f"images should be uint8 [N, 3, S, S], got {dtype} {shape}")
    if labels.shape != (n,) or attributes.shape != (n, a) or is_train.shape != (n,) or image_ids.shape != (n,):
        problems.append(f"labels {labels.shape}, attributes {attributes.shape}, is_train {is_train.shape}, "
                        f"image_ids {image_ids.shape} do not match {n} images and {a} attribute names")
    elif n and (labels.min() < 0 or labels.max() >= c):
        problems.append(f"labels must lie in [0, {c})")
    elif attributes.size and attributes.max() > 1:
        problems.append("attributes must be 0/1")
    stats = _stats_problem(mean, std)
    if stats:
        problems.append(stats)
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems))
    if lazy:
        images = H5Rows(path, ("images",))
    return PreparedCub(images, labels, attributes, is_train, image_ids, class_names, attribute_names, mean, std, attrs)
