"""SVHN's cropped-digit files ``train_32x32.mat`` / ``test_32x32.mat`` (MATLAB v5: X uint8 (32, 32, 3, N), y
(N, 1) in 1..10 where 10 is the digit 0), read with ``scipy.io.loadmat``; and the writer of the stand-in, which
adds ``class_names`` and the hidden ``subclass`` (not in the real files)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.image_classification import IMAGE_SIZE, RawFormat, check_labels
from pipeline.datasets.shared.matfile import read_mat, write_mat
from pipeline.datasets.shared.raw_images import RawImages

SVHN_FILES = {True: "train_32x32.mat", False: "test_32x32.mat"}
EXPECTED = "train_32x32.mat and test_32x32.mat"


def read_svhn(root: Path) -> RawImages:
    """SVHN's cropped digits: X uint8 (32, 32, 3, N), y (N, 1) in 1..10 where 10 is the digit 0."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (prepare.root must hold train_32x32.mat and test_32x32.mat)")
    images, labels, is_train, subclasses, names = [], [], [], [], [str(d) for d in range(10)]
    for train, fname in SVHN_FILES.items():
        path = root / fname
        mat = read_mat(path)
        if "X" not in mat or "y" not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise DataError(f"{path}: expected variables X and y, found {found}")
        x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise DataError(f"{path}: X should be uint8 (32, 32, 3, N), got {x.dtype} {x.shape}")
        if y.shape != (x.shape[3],):
            raise DataError(f"{path}: y has {y.size} labels for {x.shape[3]} images")
        if len(y) and (y.min() < 1 or y.max() > 10):
            raise DataError(f"{path}: labels must lie in 1..10 (10 is the digit 0), got {y.min()}..{y.max()}")
        images.append(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))  # (H, W, C, N) -> (N, C, H, W)
        labels.append(y.astype(np.int64) % 10)
        is_train.append(np.full(len(y), train))
        if "subclass" in mat:  # the stand-in's hidden sub-classes (not in the real files)
            subclasses.append(np.asarray(mat["subclass"], dtype=np.int64).reshape(-1))
        if "class_names" in mat:  # the stand-in names its shapes (the real files have digits only)
            names = [str(s).strip() for s in np.atleast_1d(mat["class_names"]).ravel()]
    if subclasses and len(subclasses) != 2:
        raise DataError(f"{root}: subclass appears in one .mat file but not the other")
    raw = RawImages(np.concatenate(images), np.concatenate(is_train), {"class": np.concatenate(labels)},
                    {"class": names}, np.concatenate(subclasses) if subclasses else None)
    return check_labels(raw, root)


def write_svhn(root: Path, raw: RawImages) -> None:
    """SVHN's layout: X (32, 32, 3, N) uint8 and y (N, 1) with 10 for the digit (class) 0."""
    root.mkdir(parents=True, exist_ok=True)
    for train, fname in SVHN_FILES.items():
        rows = np.flatnonzero(raw.is_train == train)
        labels = raw.labels["class"][rows]
        variables: dict[str, Any] = {
            "X": np.ascontiguousarray(raw.images[rows].transpose(2, 3, 1, 0)),
            "y": np.where(labels == 0, 10, labels).astype(np.uint8)[:, None],
            "class_names": np.array(raw.names["class"]),  # a MATLAB char matrix (rows space-padded)
        }
        if raw.subclass_labels is not None:
            variables["subclass"] = raw.subclass_labels[rows].astype(np.uint8)[:, None]
        write_mat(root / fname, variables)


SVHN_FORMAT = RawFormat(read_svhn, write_svhn, ("class",), "SVHN", EXPECTED)
