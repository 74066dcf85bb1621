"""CINIC-10's image folders as distributed: ``train/``, ``valid/`` and ``test/``, each with one sub-folder per class
(``airplane`` ... ``truck``) of 32 x 32 PNGs (a few ImageNet-derived ones are greyscale: read as RGB). Class ids
are the sorted folder names, which is CIFAR-10's label order; the three folders must name the same classes. The
reader keeps the folder of every image as the labelling ``folder`` (train, valid, test), so the splits can use
``valid/`` as the validation split; the writer serves the stand-in and the tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.progress import counted
from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.fine_grained import read_subclasses, write_subclasses
from pipeline.datasets.shared.image_classification import RawFormat, check_labels
from pipeline.datasets.shared.images import read_rgb
from pipeline.datasets.shared.raw_images import RawImages
from pipeline.datasets.shared.standin_shapes import IMAGE_SIZE

FOLDERS = ("train", "valid", "test")  # the labelling ``folder``: 0, 1, 2
EXPECTED = "train/, valid/ and test/ of CINIC-10, each with one folder of PNGs per class"


def _class_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DataError(f"{folder} is missing (expected in a CINIC-10 folder: {EXPECTED})")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{folder} holds no class folders")
    return classes


def read_cinic10(root: Path) -> RawImages:
    """Every ``*.png`` of ``<folder>/<class>/`` in folder, class and file-name order, as RGB uint8 32 x 32 (other
    sizes are squashed); labellings ``category`` (the main task) and ``folder``; ``is_train`` is ``train/`` only."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (prepare.root must hold {EXPECTED})")
    classes = _class_folders(root / FOLDERS[0])
    files: list[tuple[str, int, int]] = []  # (path relative to root, class, folder)
    for f, name in enumerate(FOLDERS):
        found = _class_folders(root / name)
        if found != classes:
            raise DataError(f"{root / name}: class folders {found} differ from train/'s {classes}")
        for c, cls in enumerate(classes):
            pngs = sorted(p.name for p in (root / name / cls).glob("*.png"))
            if not pngs:
                raise DataError(f"{root / name / cls} holds no .png images")
            files += [(f"{name}/{cls}/{png}", c, f) for png in pngs]
    pixels = np.stack([read_rgb(root / rel, IMAGE_SIZE, f"{(root / rel).parent}")
                       for rel, _, _ in counted(files, "prepare cinic10: images read", len(files), "images")])
    folder = np.asarray([f for _, _, f in files], dtype=np.int64)
    raw = RawImages(pixels, folder == 0, {"category": np.asarray([c for _, c, _ in files], dtype=np.int64),
                                          "folder": folder},
                    {"category": classes, "folder": list(FOLDERS)}, read_subclasses(root, [rel for rel, _, _ in files]))
    return check_labels(raw, root)


def write_cinic10(root: Path, raw: RawImages) -> None:
    """CINIC-10's layout from ``raw`` (labellings ``category`` and ``folder``): ``<folder>/<class>/<folder>-<n>.png``.
    The class names must be sorted, since the reader numbers classes in folder-name order."""
    names = raw.names["category"]
    if names != sorted(names):
        raise ValueError(f"CINIC-10 numbers classes by sorted folder name; these names are not sorted: {names}")
    keys = []
    for i, (c, f) in enumerate(zip(raw.labels["category"], raw.labels["folder"])):
        key = f"{FOLDERS[f]}/{names[c]}/standin-{FOLDERS[f]}-{i:06d}.png"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw.images[i].transpose(1, 2, 0)).save(root / key, format="PNG")
        keys.append(key)
    for name in FOLDERS:  # every class folder exists, even one the data leaves empty (the reader then says so)
        for cls in names:
            (root / name / cls).mkdir(parents=True, exist_ok=True)
    write_subclasses(root, keys, raw.subclass_labels)


CINIC10_FORMAT = RawFormat(read_cinic10, write_cinic10, ("category", "folder"), "CINIC-10", EXPECTED)
