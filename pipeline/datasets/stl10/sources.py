"""STL-10's binary release (``stl10_binary``): ``train_X.bin``, ``train_y.bin``, ``test_X.bin``, ``test_y.bin`` and
``class_names.txt``; its reader and the writer of the stand-in.

How the layout is read: ``*_X.bin`` is raw uint8 with no header, 3·96·96 = 27648 bytes per image. Each image is
its three colour planes (R, G, B) one after the other, and each plane is stored **column-major**: the first 96
bytes are the first *column* (top to bottom), the next 96 the second column, and so on. Read as a C-order array
[N, 3, 96, 96] the last two axes are therefore (column, row), and swapping them gives the image planes
[N, 3, row, column] (the release's own reader does the same with a (0, 3, 2, 1) transpose to [N, row, col, 3]).
``*_y.bin`` holds one uint8 label per image in 1..10 (1 = the first line of ``class_names.txt``). Without
``class_names.txt`` the release's 10 names are used. ``unlabeled_X.bin`` and ``fold_indices.txt`` are not used.

The stand-in adds ``train_subclass.bin`` and ``test_subclass.bin`` (one uint8 hidden sub-class per image, absent
from real data), which the reader picks up when present.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.image_classification import RawFormat, check_labels
from pipeline.datasets.shared.raw_images import RawImages

STL_SIZE = 96
IMAGE_BYTES = 3 * STL_SIZE * STL_SIZE
SPLITS = {True: "train", False: "test"}
NAMES_FILE = "class_names.txt"
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
EXPECTED = "train_X.bin, train_y.bin, test_X.bin, test_y.bin (and class_names.txt) of stl10_binary"


def _required(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        raise DataError(f"{path} is missing (the folder must hold {EXPECTED})")
    return path


def read_stl10(root: Path) -> RawImages:
    """The binary release at ``root``: images uint8 [N, 3, 96, 96] (official train first), labels 0..C-1 (the
    files' 1..C), C = the lines of ``class_names.txt`` (10 without it)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (prepare.root must hold {EXPECTED})")
    files = {train: (_required(root, f"{s}_X.bin"), _required(root, f"{s}_y.bin")) for train, s in SPLITS.items()}
    names = list(STL10_CLASSES)
    if (root / NAMES_FILE).is_file():
        names = [line.strip() for line in (root / NAMES_FILE).read_text().splitlines() if line.strip()]
        if not names:
            raise DataError(f"{root / NAMES_FILE}: no class names")
    images, labels, is_train, subclasses = [], [], [], []
    for train, (x_path, y_path) in files.items():
        data = np.fromfile(x_path, dtype=np.uint8)
        if data.size % IMAGE_BYTES:
            raise DataError(f"{x_path}: {data.size} bytes is not a whole number of 3 x 96 x 96 images "
                            f"({IMAGE_BYTES} bytes each)")
        n = data.size // IMAGE_BYTES
        y = np.fromfile(y_path, dtype=np.uint8)
        if y.size != n:
            raise DataError(f"{y_path}: {y.size} labels for the {n} images of {x_path.name}")
        if n and (y.min() < 1 or y.max() > len(names)):
            raise DataError(f"{y_path}: labels must lie in 1..{len(names)} (one per class name), "
                            f"got {y.min()}..{y.max()}")
        # [N, 3, column, row] in the file -> [N, 3, row, column]
        images.append(np.ascontiguousarray(data.reshape(n, 3, STL_SIZE, STL_SIZE).transpose(0, 1, 3, 2)))
        labels.append(y.astype(np.int64) - 1)
        is_train.append(np.full(n, train))
        sub_path = root / f"{SPLITS[train]}_subclass.bin"
        if sub_path.is_file():  # the stand-in's hidden sub-classes (not in the real release)
            sub = np.fromfile(sub_path, dtype=np.uint8)
            if sub.size != n:
                raise DataError(f"{sub_path}: {sub.size} sub-classes for {n} images")
            subclasses.append(sub.astype(np.int64))
    if len(subclasses) == 1:
        raise DataError(f"{root}: a *_subclass.bin file exists for one split but not the other")
    raw = RawImages(np.concatenate(images), np.concatenate(is_train), {"class": np.concatenate(labels)},
                    {"class": names}, np.concatenate(subclasses) if subclasses else None)
    return check_labels(raw, root)


def write_stl10(root: Path, raw: RawImages) -> None:
    """The binary release's layout: planes stored column-major, labels 1..C, ``class_names.txt``."""
    if raw.images.shape[1:] != (3, STL_SIZE, STL_SIZE):
        raise ValueError(f"STL-10's binary format holds 3 x 96 x 96 images, got {raw.images.shape[1:]}")
    root.mkdir(parents=True, exist_ok=True)
    for train, split in SPLITS.items():
        rows = np.flatnonzero(raw.is_train == train)
        np.ascontiguousarray(raw.images[rows].transpose(0, 1, 3, 2)).tofile(root / f"{split}_X.bin")
        (raw.labels["class"][rows] + 1).astype(np.uint8).tofile(root / f"{split}_y.bin")
        if raw.subclass_labels is not None:
            raw.subclass_labels[rows].astype(np.uint8).tofile(root / f"{split}_subclass.bin")
    (root / NAMES_FILE).write_text("".join(f"{n}\n" for n in raw.names["class"]))


STL10_FORMAT = RawFormat(read_stl10, write_stl10, ("class",), "STL-10", EXPECTED)
