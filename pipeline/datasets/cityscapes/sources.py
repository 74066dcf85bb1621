"""Cityscapes' preprocessed ``.npy`` layout (Liu et al. 2019, MTAN's release used by AuxiLearn App. C.8), read
into validated samples, and its writer (which the stand-in uses).

``root/train/`` (2975 images) and ``root/val/`` (500, the test split), each with one ``<index>.npy`` per sample
in ``image/``, ``label_19/``, ``label_7/``, ``label_2/`` and ``depth/``: image [H, W, 3] float in [0, 1] (or
0..255, or uint8); label_k [H, W] with values -1 (ignore) or 0..k-1; depth [H, W, 1] or [H, W], Liu et al.'s
inverse depth, >= 0 with 0 = invalid (NaN is read as invalid). The public loaders of this release
(e.g. Liu et al.'s ``Cityscapes`` dataset classes) move the image's last axis to the front and the depth's
likewise, which is the layout checked here. The release is 128 x 256 (or 256 x 512); any H x W is read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.npy_layout import load_npy, npy_index, resize, write_npy_sample

NAME = "cityscapes"
IGNORE = -1
LABEL_KINDS = {"label_19": 19, "label_7": 7, "label_2": 2}  # folder -> number of classes; label_19 is the main task
KINDS = ("image", *LABEL_KINDS, "depth")
EXPECTED = "train/ and val/, each with image/, label_19/, label_7/, label_2/ and depth/ folders of <index>.npy files"
# The 19 evaluated classes (Cityscapes' trainIds 0..18) and the 7 categories (void is ignored).
CLASS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle")
CATEGORY_NAMES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")


@dataclass
class Sample:
    """One prepared sample: image uint8 [3, H, W], labels int8 [3, H, W] (19-, 7-, 2-class), depth float32 [H, W]."""

    image: np.ndarray
    labels: np.ndarray
    depth: np.ndarray


Row = tuple[Sample, bool, int]  # (sample, is in train/, file index)


def make_sample(arrays: dict[str, np.ndarray], size: tuple[int, int] | None, where: dict[str, str]) -> Sample:
    """The layout's arrays of one sample (``KINDS``; shapes already checked to agree) -> a validated Sample,
    resized to ``size`` (None: as stored). ``where[kind]`` names each array's file in errors."""
    image = arrays["image"]
    if not np.isfinite(image).all():
        raise DataError(f"{where['image']}: the image is not finite numbers")
    img = image.astype(np.float32).transpose(2, 0, 1)
    if image.dtype != np.uint8 and img.max(initial=0) <= 1.0 + 1e-6:
        img = img * 255.0
    size = size or tuple(img.shape[1:])
    img = np.clip(np.rint(resize(img, size, "bilinear")), 0, 255).astype(np.uint8)
    labels = []
    for kind, classes in LABEL_KINDS.items():
        lab = np.asarray(arrays[kind], dtype=np.float64)
        if not np.isfinite(lab).all() or (lab != np.rint(lab)).any() or lab.min(initial=0) < IGNORE \
                or lab.max(initial=0) >= classes:
            raise DataError(f"{where[kind]}: labels must be integers in -1..{classes - 1} (-1 = ignore)")
        labels.append(lab)
    labs = np.rint(resize(np.stack(labels), size, "nearest")).astype(np.int8)
    dep = np.nan_to_num(np.asarray(arrays["depth"], dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if dep.min(initial=0) < 0:
        raise DataError(f"{where['depth']}: depth must be >= 0 (0 = invalid)")
    return Sample(img, labs, resize(dep[None], size, "nearest")[0])


def read_sample(root: Path, split: str, index: int, size: tuple[int, int] | None) -> Sample:
    """One sample of the layout, checked for shape: image [H, W, 3], label_k [H, W], depth [H, W(, 1)]."""
    paths = {kind: root / split / kind / f"{index}.npy" for kind in KINDS}
    arrs = {kind: load_npy(p) for kind, p in paths.items()}
    image = arrs["image"]
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"{paths['image']}: expected an image [H, W, 3], got shape {image.shape}")
    hw = image.shape[:2]
    if arrs["depth"].ndim == 3 and arrs["depth"].shape[2] == 1:
        arrs["depth"] = arrs["depth"][..., 0]
    for kind in KINDS[1:]:
        if arrs[kind].shape != hw:
            raise DataError(f"{paths[kind]}: expected shape {hw} to match {paths['image']}, got {arrs[kind].shape}")
    return make_sample(arrs, size, {kind: str(p) for kind, p in paths.items()})


def read_preprocessed(root: Path, size: tuple[int, int] | None) -> tuple[int, tuple[int, int], Iterator[Row]]:
    """How many samples the layout at ``root`` holds, their prepared size (``size``, or the first image's), and
    a lazy iterator over them (train/ first). Folders and indices are checked before any image is read."""
    index = npy_index(root, KINDS, NAME)
    if size is None:
        split, _, first = index[0]
        shape = load_npy(root / split / "image" / f"{first}.npy").shape
        size = (int(shape[0]), int(shape[1]))
    rows = ((read_sample(root, split, i, size), train, i) for split, train, i in index)
    return len(index), size, rows


def write_sample(root: Path, split: str, index: int, arrays: dict[str, np.ndarray]) -> None:
    """One sample into the layout (``arrays[kind]`` for every kind of ``KINDS``, in the layout's shapes)."""
    write_npy_sample(root, split, index, arrays, KINDS)
