"""ShapeNet Part's prepared file ``shapenet_part.h5``, the one layout every source lands in: write, read, validate.

``points`` float32 [N, P, 3], ``normals`` float32 [N, P, 3] (text and mesh only), ``part_labels`` int16 [N, P]
(global part ids), ``category`` int64 [N], ``split`` uint8 [N] (0 train, 1 val, 2 test: the official split),
``shape_ids``, ``category_names``, ``category_ids`` and ``part_category`` int64 [num_parts] (the category owning
each global part id, -1 for none); attributes ``split_names`` and ``source``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.h5 import TEXT, file_attrs, open_prepared, put, put_attrs, text
from pipeline.datasets.shapenet_part.sources import SPLIT_NAMES, PartShapes, check_labels

H5_NAME = "shapenet_part.h5"


def write_prepared(shapes: PartShapes, path: Path, attrs: dict[str, Any]) -> None:
    """The one prepared layout every source lands in (no timestamps: same input, same bytes)."""
    with h5py.File(path, "w") as f:
        put(f, "points", shapes.points, np.float32)
        if shapes.normals is not None:
            put(f, "normals", shapes.normals, np.float32)
        put(f, "part_labels", shapes.labels, np.int16)
        put(f, "category", shapes.category, np.int64)
        put(f, "split", shapes.split, np.uint8)
        put(f, "shape_ids", shapes.shape_ids, TEXT)
        put(f, "category_names", shapes.category_names, TEXT)
        put(f, "category_ids", shapes.category_ids, TEXT)
        put(f, "part_category", shapes.part_category, np.int64)
        f.attrs["split_names"] = list(SPLIT_NAMES)
        put_attrs(f, attrs)



def read_prepared(path: Path) -> tuple[PartShapes, dict[str, Any]]:
    """Read and check ``shapenet_part.h5``; any inconsistency is a DataError naming the file."""
    need = ("points", "part_labels", "category", "split", "shape_ids", "category_names", "category_ids",
            "part_category")
    with open_prepared(path, "prepare") as f:
        absent = [k for k in need if k not in f]
        if absent:
            raise DataError(f"{path}: missing {', '.join(absent)}")
        points, labels = f["points"][...], f["part_labels"][...].astype(np.int64)
        category, split = f["category"][...].astype(np.int64), f["split"][...]
        normals = f["normals"][...] if "normals" in f else None
        shape_ids, names = text(f["shape_ids"][...]), text(f["category_names"][...])
        ids, part_category = text(f["category_ids"][...]), f["part_category"][...].astype(np.int64)
        attrs = file_attrs(f)
    n = len(points)
    if points.ndim != 3 or points.shape[2] != 3 or points.dtype != np.float32:
        raise DataError(f"{path}: points should be float32 [N, P, 3], got {points.dtype} {points.shape}")
    if labels.shape != points.shape[:2] or category.shape != (n,) or split.shape != (n,) or len(shape_ids) != n \
            or (normals is not None and normals.shape != points.shape):
        raise DataError(f"{path}: part_labels {labels.shape}, category {category.shape}, split {split.shape}, "
                        f"{len(shape_ids)} shape ids do not match points {points.shape}")
    if len(ids) != len(names) or (n and split.max() >= len(SPLIT_NAMES)):
        raise DataError(f"{path}: {len(names)} category names for {len(ids)} ids, or split codes beyond 0..2")
    check_labels(labels, category, part_category, names, str(path))
    shapes = PartShapes(points, normals, labels, category, split, shape_ids, names, ids, part_category)
    return shapes, attrs

