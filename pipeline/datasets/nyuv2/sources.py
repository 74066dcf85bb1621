"""NYUv2's real on-disk formats, read into validated samples (and the ``.npy`` layout's writer, which the
stand-in uses).

* The preprocessed ``.npy`` layout (Liu et al.'s preprocessed NYUv2): ``root/train/`` (795 images) and
  ``root/val/`` (the official 654 test images), each with ``image/``, ``label/``, ``depth/`` and ``normal/``
  folders holding one ``<index>.npy`` per sample: image [H, W, 3] float in [0, 1] (or 0..255, or uint8),
  label [H, W] (-1 = ignore, 0..12), depth [H, W, 1] or [H, W] (0 = invalid), normal [H, W, 3] (all-zero =
  invalid).
* The official ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5: ``images`` (N, 3, W, H) uint8, ``labels``
  (N, W, H) raw class ids 0..894 with 0 = unlabelled, ``depths`` (N, W, H) metres; h5py sees MATLAB's arrays
  transposed), plus

  - a class mapping: the 894 raw classes -> 13 classes. ``.txt`` (whitespace-separated integers) or ``.npy``:
    entry k (k = 0, 1, ...) is the 13-class id of raw class k + 1, in 1..13, or 0 = ignore (the layout of
    ``classMapping13.labelIds`` in the toolbox's ``class13Mapping.mat``, which is also read directly, as is a
    ``.mat`` holding a single numeric array). Raw label 0 is always ignored.
  - splits: the toolbox's ``splits.mat`` (``trainNdxs``/``testNdxs``, 1-based), or an ``.npz`` with the same
    two 1-based arrays.
  - surface normals, which are NOT in the .mat and must be supplied: an ``.npy`` or ``.h5``/``.hdf5``
    (dataset ``normals``) array [N, H', W', 3] in the .mat's image order, unit vectors in the camera frame,
    zero or NaN = invalid; resized (nearest) to the prepared size if H', W' differ.

Images are resized bilinearly (antialiased) to the prepared size, labels, depth and normals by nearest
neighbour.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np
import scipy.io

from pipeline.core import io
from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.npy_layout import load_npy, npy_index, resize, write_npy_sample  # noqa: F401 (re-exported)

NUM_CLASSES = 13
IGNORE = -1
# Couprie et al. (2013)'s 13 classes, 0-based (the 13-class id minus one).
CLASS_NAMES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table",
               "tv", "wall", "window")
KINDS = ("image", "label", "depth", "normal")
# What belongs in ``root`` for each real source (the message of ``source_root``'s errors).
EXPECTED = {
    "preprocessed": "train/ and val/, each with image/, label/, depth/ and normal/ folders of <index>.npy files",
    "official": "nyu_depth_v2_labeled.mat with its class mapping, splits and surface-normals files",
}

# ----------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One prepared sample: image uint8 [3, H, W], label int8 [H, W], depth float32 [H, W], normal float32 [3, H, W]."""

    image: np.ndarray
    label: np.ndarray
    depth: np.ndarray
    normal: np.ndarray


# (sample, is official train, sample id) in the prepared file's row order
Row = tuple[Sample, bool, int]


def clean_normals(normal: np.ndarray) -> np.ndarray:
    """[3, H, W] -> unit vectors; NaN or (near-)zero vectors become all-zero (invalid)."""
    normal = np.nan_to_num(np.asarray(normal, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    norm = np.linalg.norm(normal, axis=0, keepdims=True)
    return np.where(norm > 1e-3, normal / np.maximum(norm, 1e-3), 0.0).astype(np.float32)


def make_sample(image: np.ndarray, label: np.ndarray, depth: np.ndarray, normal: np.ndarray,
                size: tuple[int, int], where: dict[str, str]) -> Sample:
    """Channel-first arrays at any size -> a validated Sample at ``size``; ``where[kind]`` names each array's
    source (file) in errors, kinds as in ``KINDS``.

    ``image``: [3, H, W] uint8, or float in [0, 1] (scaled by 255) or in 0..255; ``label`` [H, W] -1..12;
    ``depth`` [H, W] (NaN -> 0 = invalid); ``normal`` [3, H, W].
    """
    if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
        raise DataError(f"{where['image']}: the image is not finite numbers")
    img = image.astype(np.float32)
    if image.dtype != np.uint8 and img.max(initial=0) <= 1.0 + 1e-6:
        img = img * 255.0
    img = np.clip(np.rint(resize(img, size, "bilinear")), 0, 255).astype(np.uint8)
    lab = np.asarray(label, dtype=np.float64)
    if not np.isfinite(lab).all() or (lab != np.rint(lab)).any() or lab.min(initial=0) < IGNORE \
            or lab.max(initial=0) >= NUM_CLASSES:
        raise DataError(f"{where['label']}: labels must be integers in -1..{NUM_CLASSES - 1} (-1 = ignore)")
    lab = np.rint(resize(lab[None], size, "nearest")[0]).astype(np.int8)
    dep = np.nan_to_num(np.asarray(depth, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if dep.min(initial=0) < 0:
        raise DataError(f"{where['depth']}: depth must be >= 0 (0 = invalid)")
    dep = resize(dep[None], size, "nearest")[0]
    nor = clean_normals(resize(clean_normals(normal), size, "nearest"))
    return Sample(img, lab, dep, nor)


# ----------------------------------------------------------------------------------------------
# The preprocessed .npy layout
# ----------------------------------------------------------------------------------------------


def write_preprocessed_sample(root: Path, split: str, index: int, arrays: dict[str, np.ndarray]) -> None:
    """One sample into NYUv2's .npy layout (every kind of ``KINDS``)."""
    write_npy_sample(root, split, index, arrays, KINDS)


def preprocessed_index(root: Path) -> list[tuple[str, bool, int]]:
    """(split folder, is official train, index) of every sample of NYUv2's layout, train first."""
    return npy_index(root, KINDS, "nyuv2")


def read_preprocessed_sample(root: Path, split: str, index: int, size: tuple[int, int]) -> Sample:
    """One sample of the .npy layout, checked for shape: image [H, W, 3], label [H, W], depth [H, W(, 1)],
    normal [H, W, 3]."""
    paths = {kind: root / split / kind / f"{index}.npy" for kind in KINDS}
    arrs = {kind: load_npy(p) for kind, p in paths.items()}
    image = arrs["image"]
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"{paths['image']}: expected an image [H, W, 3], got shape {image.shape}")
    hw = image.shape[:2]
    depth = arrs["depth"]
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    expected = {"label": (hw, arrs["label"]), "depth": (hw, depth), "normal": ((*hw, 3), arrs["normal"])}
    for kind, (shape, arr) in expected.items():
        if arr.shape != tuple(shape):
            raise DataError(f"{paths[kind]}: expected shape {tuple(shape)} to match {paths['image']}, got {arr.shape}")
    return make_sample(image.transpose(2, 0, 1), arrs["label"], depth, arrs["normal"].transpose(2, 0, 1),
                       size, {kind: str(p) for kind, p in paths.items()})


def read_preprocessed(root: Path, size: tuple[int, int]) -> tuple[int, Iterator[Row]]:
    """How many samples the layout at ``root`` holds, and a lazy iterator over them (train first)."""
    index = preprocessed_index(root)
    return len(index), ((read_preprocessed_sample(root, split, i, size), train, i) for split, train, i in index)


# ----------------------------------------------------------------------------------------------
# The official labelled .mat with mapping, splits and user-supplied normals
# ----------------------------------------------------------------------------------------------


def read_class_mapping(path: Path) -> np.ndarray:
    """Lookup table raw id -> 0-based class (-1 = ignore), length 1 + number of raw classes (raw 0 -> -1)."""
    if not path.is_file():
        raise DataError(f"{path} is missing (datasets.nyuv2.prepare.class_mapping_file: raw class -> 13 classes)")
    try:
        if path.suffix == ".npy":
            values = load_npy(path)
        elif path.suffix == ".mat":
            mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
            if "classMapping13" in mat:
                values = np.asarray(mat["classMapping13"].labelIds)
            else:
                arrays = [v for k, v in mat.items() if not k.startswith("__") and isinstance(v, np.ndarray)
                          and np.issubdtype(v.dtype, np.number)]
                if len(arrays) != 1:
                    raise DataError(f"{path}: expected classMapping13.labelIds or exactly one numeric array, "
                                    f"found {len(arrays)}")
                values = arrays[0]
        else:
            values = np.asarray(path.read_text(encoding="utf-8").split(), dtype=np.float64)
    except (ValueError, OSError, NotImplementedError, AttributeError, UnicodeDecodeError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path} is not a readable class mapping (integers 0..13, one per raw class): {err}") from None
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or (values != np.rint(values)).any() or values.min() < 0 or values.max() > NUM_CLASSES:
        raise DataError(f"{path}: the mapping must list integers in 0..{NUM_CLASSES} (0 = ignore), one per raw class")
    return np.concatenate([[0], values]).astype(np.int64) - 1


def mat_arrays(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Numeric arrays from a .mat (v5 via scipy, v7.3 via h5py) or .npz file."""
    try:
        if path.suffix == ".npz":
            arrays = io.load_npz(path)
            return {k: arrays[k] for k in names if k in arrays}
        try:
            mat = scipy.io.loadmat(path)
            return {k: np.asarray(mat[k]) for k in names if k in mat}
        except NotImplementedError:  # MATLAB v7.3
            with h5py.File(path, "r") as f:
                return {k: f[k][...] for k in names if k in f}
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path} is not a readable .mat/.npz file: {err}") from None


def read_official_splits(path: Path, num_images: int) -> np.ndarray:
    """is_train [num_images] with -1 for images in neither split; indices in the file are 1-based."""
    if not path.is_file():
        raise DataError(f"{path} is missing (datasets.nyuv2.prepare.splits_file: trainNdxs/testNdxs, 1-based)")
    arrays = mat_arrays(path, ("trainNdxs", "testNdxs"))
    if set(arrays) != {"trainNdxs", "testNdxs"}:
        raise DataError(f"{path}: needs arrays trainNdxs and testNdxs (1-based image indices)")
    flags = np.full(num_images, -1, np.int64)
    for name, value in (("trainNdxs", 1), ("testNdxs", 0)):
        idx = np.asarray(arrays[name], dtype=np.float64).ravel()
        if (idx != np.rint(idx)).any() or idx.min(initial=1) < 1 or idx.max(initial=1) > num_images:
            raise DataError(f"{path}: {name} must hold 1-based indices in 1..{num_images}")
        idx = idx.astype(np.int64) - 1
        if (flags[idx] != -1).any() or len(np.unique(idx)) != len(idx):
            raise DataError(f"{path}: an image is listed twice in trainNdxs/testNdxs")
        flags[idx] = value
    return flags


@contextlib.contextmanager
def open_normals(path: Path) -> Iterator[Any]:
    """The normals array [N, H, W, 3] (memory-mapped .npy or an open HDF5 dataset ``normals``)."""
    if not path.is_file():
        raise DataError(f"{path} is missing (datasets.nyuv2.prepare.normals_file): NYUv2's .mat has no surface "
                        f"normals, they must be supplied as an .npy/.h5 array [N, H, W, 3]")
    if path.suffix in (".h5", ".hdf5"):
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise DataError(f"{path} is not a readable HDF5 file: {err}") from None
        with f:
            if "normals" not in f or not isinstance(f["normals"], h5py.Dataset):
                raise DataError(f"{path}: needs a dataset named 'normals' [N, H, W, 3]")
            yield f["normals"]
    elif path.suffix == ".npy":
        try:
            arr = io.load_npy(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise DataError(f"{path} is not a readable .npy array: {err}") from None
        yield arr
    else:
        raise DataError(f"{path}: normals must be an .npy or .h5/.hdf5 file")


def resolve(root: Path, name: str) -> Path:
    """``name`` if absolute, else relative to ``root``."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


@contextlib.contextmanager
def read_official(root: Path, mat_file: str, class_mapping_file: str, splits_file: str, normals_file: str | None,
                  size: tuple[int, int]) -> Iterator[tuple[int, Iterator[Row]]]:
    """The official .mat (+ mapping, splits, normals; names relative to ``root`` unless absolute): how many
    images are in either split, and a lazy iterator over them in the .mat's order, valid while the context
    is open. The cheap files are checked first."""
    if not normals_file:
        raise DataError("datasets.nyuv2.prepare.normals_file is not set: the official nyu_depth_v2_labeled.mat has "
                        "no surface normals, they must be supplied as an .npy/.h5 array [N, H, W, 3]")
    mat_path, normals_path = resolve(root, mat_file), resolve(root, normals_file)
    mapping_path = resolve(root, class_mapping_file)
    lut = read_class_mapping(mapping_path)
    if not mat_path.is_file():
        raise DataError(f"{mat_path} is missing (datasets.nyuv2.prepare.mat_file)")
    try:
        mat = h5py.File(mat_path, "r")
    except OSError as err:
        raise DataError(f"{mat_path} is not a MATLAB v7.3 (HDF5) file: {err}") from None
    with mat, open_normals(normals_path) as normals:
        missing = [k for k in ("images", "labels", "depths") if k not in mat]
        if missing:
            raise DataError(f"{mat_path}: missing {', '.join(missing)}")
        images, labels, depths = mat["images"], mat["labels"], mat["depths"]
        n = images.shape[0]
        if images.ndim != 4 or images.shape[1] != 3 or labels.shape != (n, *images.shape[2:]) \
                or depths.shape != labels.shape:
            raise DataError(f"{mat_path}: expected images (N, 3, W, H), labels and depths (N, W, H), got "
                            f"{images.shape}, {labels.shape}, {depths.shape}")
        if normals.ndim != 4 or normals.shape[0] != n or normals.shape[3] != 3:
            raise DataError(f"{normals_path}: expected normals [{n}, H, W, 3] (one per image of {mat_path}), "
                            f"got {normals.shape}")
        flags = read_official_splits(resolve(root, splits_file), n)
        rows = np.flatnonzero(flags >= 0)

        def samples() -> Iterator[Row]:
            for i in rows:
                raw = np.asarray(labels[i]).T.astype(np.int64)  # MATLAB stores H x W; h5py reads it as W x H
                if raw.min() < 0 or raw.max() >= len(lut):
                    raise DataError(f"{mat_path}: image {i + 1} has raw label {raw.max()} but {mapping_path} "
                                    f"covers raw ids 1..{len(lut) - 1} only")
                where = {kind: f"{mat_path} image {i + 1}" for kind in KINDS}
                where["normal"] = f"{normals_path} row {i}"
                sample = make_sample(np.asarray(images[i]).transpose(0, 2, 1), lut[raw], np.asarray(depths[i]).T,
                                     np.asarray(normals[i], dtype=np.float32).transpose(2, 0, 1), size, where)
                yield sample, bool(flags[i]), int(i)

        yield len(rows), samples()
