"""NYUv2: 13-class semantic segmentation (main task) with depth and surface normals as auxiliaries
(AuxiLearn §5.3, App. B.2; the setup of Liu et al., 2019b).

Three sources, one prepared layout:

* ``source: preprocessed`` reads the widely used ``.npy`` layout (Liu et al.'s preprocessed NYUv2):
  ``root/train/`` (795 images) and ``root/val/`` (the official 654 test images), each with
  ``image/``, ``label/``, ``depth/`` and ``normal/`` folders holding one ``<index>.npy`` per sample:
  image [H, W, 3] float in [0, 1] (or 0..255, or uint8), label [H, W] (-1 = ignore, 0..12),
  depth [H, W, 1] or [H, W] (0 = invalid), normal [H, W, 3] (all-zero = invalid).
* ``source: official`` reads the official ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5: ``images``
  (N, 3, W, H) uint8, ``labels`` (N, W, H) raw class ids 0..894 with 0 = unlabelled, ``depths`` (N, W, H)
  metres; h5py sees MATLAB's arrays transposed), plus

  - ``class_mapping_file``: the 894 raw classes -> 13 classes. ``.txt`` (whitespace-separated integers)
    or ``.npy``: entry k (k = 0, 1, ...) is the 13-class id of raw class k + 1, in 1..13, or 0 = ignore
    (the layout of ``classMapping13.labelIds`` in the toolbox's ``class13Mapping.mat``, which is also
    read directly, as is a ``.mat`` holding a single numeric array). Raw label 0 is always ignored.
  - ``splits_file``: the toolbox's ``splits.mat`` (``trainNdxs``/``testNdxs``, 1-based), or an ``.npz``
    with the same two 1-based arrays.
  - ``normals_file``: surface normals are NOT in the .mat and must be supplied: an ``.npy`` or
    ``.h5``/``.hdf5`` (dataset ``normals``) array [N, H', W', 3] in the .mat's image order, unit vectors in
    the camera frame, zero or NaN = invalid; resized (nearest) to ``image_size`` if H', W' differ.

  Images are resized bilinearly (antialiased) to ``image_size`` (default 288 x 384 as in App. B.2),
  labels, depth and normals by nearest neighbour.
* ``source: standin`` (default) renders small procedural RGB-D "rooms" (floor, walls, ceiling, with
  beds, tables, chairs, cabinets, sofas, TVs, books, balls, pictures and windows), writes them in the
  ``preprocessed`` layout under ``<out>/raw_standin`` and reads them with the same loader. It is NOT
  NYUv2; it exists so the pipeline runs end to end on a CPU in minutes, and so that a weighting method
  can be checked against auxiliaries whose worth is known by construction.

  Roles of the stand-in's auxiliaries (``aux_roles.json`` beside ``nyuv2.h5``, returned by ``load`` as
  ``TaskData.meta["aux_roles"]``; real NYUv2 has no roles):

  - ``normal``: **helpful**. The rendered surface normals of the scene's geometry (floor up, ceiling
    down, walls and box faces sideways), the same geometry that decides most classes.
  - ``depth``: **irrelevant**. NOT the rendered depth: a smooth random field (0.5-6 m, a random 3 x 4 grid
    bicubically upsampled; ``random_depth_field``) drawn from its own generator, unrelated to the scene and
    unpredictable from the image; only the Kinect-like holes (0 = invalid, shared with the normals) are
    the scene's. The stand-in's depth metrics therefore measure nothing but the field's spread.

  Irrelevant is not harmless under a plain sum: the field cannot be predicted, so its L1 loss stays near
  its starting value and its gradient keeps competing with segmentation (on short runs Equal loses about
  10 mIoU points to STL and to Equal without depth; numbers in the README).

Prepared result: one HDF5 file ``nyuv2.h5``: ``images`` uint8 [N, 3, H, W], ``labels`` int8 [N, H, W]
(-1 = ignore, 0..12), ``depth`` float32 [N, H, W] (0 = invalid), ``normals`` float32 [N, 3, H, W]
(unit vectors, all-zero = invalid), ``is_train`` uint8 [N] (official train split), ``sample_ids`` int64 [N]
(file index, or 0-based row of the .mat), attributes ``source`` and ``image_size``; for the stand-in
also ``aux_roles.json`` and the raw layout under ``raw_standin/``.

``TaskData``: inputs uint8 [N, 3, H, W] (``batch_transform`` scales them to [0, 1] floats); targets float
[N, 5, H, W] = (label, depth, normal x, y, z); tasks ``segmentation``, ``depth``, ``normal``.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import h5py
import numpy as np
import scipy.io
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from pipeline.schema import StrictModel
from pipeline.registry import DATASETS
from pipeline.datasets.base import DataError, Dataset, TaskData, reduce_pixels
from pipeline.datasets.cub import AUX_ROLES_FILE, read_aux_roles, write_aux_roles
from pipeline.registry import MODELS
from pipeline.models.base import MultiTaskNet

H5_NAME = "nyuv2.h5"
STANDIN_DIR = "raw_standin"
NUM_CLASSES = 13
IGNORE = -1
# Couprie et al. (2013)'s 13 classes, 0-based (the 13-class id minus one).
CLASS_NAMES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table",
               "tv", "wall", "window")
TASK_NAMES = ["segmentation", "depth", "normal"]
PREPROCESSED_SPLITS = (("train", True), ("val", False))  # folder, is official train
KINDS = ("image", "label", "depth", "normal")
REAL_IMAGE_SIZE = (288, 384)  # App. B.2
STANDIN_IMAGE_SIZE = (48, 64)
LOAD_CHUNK = 64  # samples per read in load()
EVAL_CHUNK = 16  # images per forward pass in evaluation (SegNet at 288 x 384 is memory hungry)
NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)

# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


class Nyuv2Config(StrictModel):
    """``datasets.nyuv2.prepare``: where the data come from and at what size they are stored."""

    source: Literal["standin", "preprocessed", "official"] = Field(
        "standin", description="standin: render the small procedural stand-in; preprocessed: the .npy folder "
        "layout at root (train/, val/); official: nyu_depth_v2_labeled.mat and companions at root")
    root: str | None = Field(None, description="folder of the data; required unless source is standin")
    image_size: tuple[int, int] | None = Field(
        None, description="(H, W) of the prepared images; default 288 x 384 for real data (App. B.2), "
        "48 x 64 for the stand-in")
    mat_file: str = Field("nyu_depth_v2_labeled.mat", description="official only: the labelled .mat (relative to root)")
    class_mapping_file: str = Field(
        "class13_mapping.txt", description="official only: raw class id (1-based) -> 13-class id (0 = ignore), "
        ".txt/.npy one integer per raw class, or class13Mapping.mat")
    splits_file: str = Field("splits.mat", description="official only: splits.mat (trainNdxs/testNdxs, 1-based) "
                             "or an .npz with those arrays")
    normals_file: str | None = Field(
        None, description="official only, required: surface normals [N, H, W, 3] as .npy or .h5 (dataset 'normals')")
    standin_train: int = Field(400, ge=2, description="stand-in only: official-train images (400: 40 val, 9 aux)")
    standin_test: int = Field(200, ge=1, description="stand-in only: official-test images")
    standin_seed: int = Field(0, description="stand-in only: seed of the renderer (same seed, same files)")

    @model_validator(mode="after")
    def _check(self) -> "Nyuv2Config":
        if self.source != "standin" and not self.root:
            raise ValueError(f"root is required when source is {self.source!r}: set datasets.nyuv2.prepare.root")
        if self.image_size is not None and min(self.image_size) < 2:
            raise ValueError(f"image_size {self.image_size}: both sides must be at least 2 pixels")
        return self

    @property
    def resolved_image_size(self) -> tuple[int, int]:
        if self.image_size is not None:
            return (int(self.image_size[0]), int(self.image_size[1]))
        return STANDIN_IMAGE_SIZE if self.source == "standin" else REAL_IMAGE_SIZE


class Nyuv2ModelConfig(StrictModel):
    """``datasets.nyuv2.model``: the SegNet's size (the paper's: width 64, stages 5)."""

    width: int = Field(16, ge=1, description="channels of the first stage (doubled per stage up to 8x)")
    stages: int = Field(3, ge=1, le=8, description="encoder/decoder stages (each halves the resolution)")


class Nyuv2SplitConfig(StrictModel):
    """``datasets.nyuv2.split``: official train/test; validation and aux sets carved from official train."""

    seed: int = Field(0, description="seed of the validation and aux draws")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="of official train to validation (79 of 795)")
    aux_fraction: float = Field(0.025, gt=0, lt=1, description="of the remaining train images to the aux set")


# ----------------------------------------------------------------------------------------------
# Samples and the prepared file
# ----------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One prepared sample: image uint8 [3, H, W], label int8 [H, W], depth float32 [H, W], normal float32 [3, H, W]."""

    image: np.ndarray
    label: np.ndarray
    depth: np.ndarray
    normal: np.ndarray


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


def write_prepared(out_file: Path, samples: Iterator[tuple[Sample, bool, int]], count: int,
                   size: tuple[int, int], attrs: dict[str, Any]) -> None:
    """Stream ``count`` (sample, is_train, sample_id) into ``nyuv2.h5`` (one chunk per image, no timestamps)."""
    h, w = size
    with h5py.File(out_file, "w") as f:
        def dataset(name: str, shape: tuple[int, ...], dtype: Any) -> h5py.Dataset:
            return f.create_dataset(name, shape=(count, *shape), dtype=dtype, chunks=(1, *shape), track_times=False)

        images = dataset("images", (3, h, w), np.uint8)
        labels = dataset("labels", (h, w), np.int8)
        depth = dataset("depth", (h, w), np.float32)
        normals = dataset("normals", (3, h, w), np.float32)
        is_train = np.zeros(count, np.uint8)
        ids = np.zeros(count, np.int64)
        row = -1
        for row, (sample, train, sample_id) in enumerate(samples):
            images[row], labels[row], depth[row], normals[row] = sample.image, sample.label, sample.depth, sample.normal
            is_train[row], ids[row] = train, sample_id
        if row + 1 != count:
            raise RuntimeError(f"write_prepared: expected {count} samples, got {row + 1}")
        f.create_dataset("is_train", data=is_train, track_times=False)
        f.create_dataset("sample_ids", data=ids, track_times=False)
        f.attrs["image_size"] = np.asarray(size, np.int64)
        for key, value in attrs.items():
            f.attrs[key] = "" if value is None else value


# ----------------------------------------------------------------------------------------------
# Source (a): the preprocessed .npy layout
# ----------------------------------------------------------------------------------------------


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path} is not a readable .npy array: {err}") from None
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path} does not hold a numeric array")
    return arr


def preprocessed_index(root: Path) -> list[tuple[str, bool, int]]:
    """(split folder, is official train, index) of every sample, train first; every kind must have every index."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (datasets.nyuv2.prepare.root must hold train/ and val/)")
    out = []
    for split, is_train in PREPROCESSED_SPLITS:
        ids: dict[str, set[int]] = {}
        for kind in KINDS:
            folder = root / split / kind
            if not folder.is_dir():
                raise DataError(f"{folder} is missing (expected {split}/{{{','.join(KINDS)}}}/<index>.npy)")
            found = set()
            for p in folder.glob("*.npy"):
                if not p.stem.isdigit():
                    raise DataError(f"{p}: file names must be <index>.npy with an integer index")
                found.add(int(p.stem))
            ids[kind] = found
        first = ids["image"]
        for kind in KINDS[1:]:
            if ids[kind] != first:
                odd = sorted(ids[kind] ^ first)[:5]
                raise DataError(f"{root / split / kind}: indices differ from {root / split / 'image'} (e.g. {odd})")
        if not first:
            raise DataError(f"{root / split / 'image'} holds no <index>.npy files")
        out += [(split, is_train, i) for i in sorted(first)]
    return out


def read_preprocessed_sample(root: Path, split: str, index: int, size: tuple[int, int]) -> Sample:
    """One sample of the .npy layout, checked for shape: image [H, W, 3], label [H, W], depth [H, W(, 1)],
    normal [H, W, 3]."""
    paths = {kind: root / split / kind / f"{index}.npy" for kind in KINDS}
    arrs = {kind: _load_npy(p) for kind, p in paths.items()}
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


def ingest_preprocessed(root: Path, out_file: Path, size: tuple[int, int], attrs: dict[str, Any]) -> None:
    index = preprocessed_index(root)
    samples = ((read_preprocessed_sample(root, split, i, size), train, i) for split, train, i in index)
    write_prepared(out_file, samples, len(index), size, attrs)


# ----------------------------------------------------------------------------------------------
# Source (b): the official labelled .mat with mapping, splits and user-supplied normals
# ----------------------------------------------------------------------------------------------


def read_class_mapping(path: Path) -> np.ndarray:
    """Lookup table raw id -> 0-based class (-1 = ignore), length 1 + number of raw classes (raw 0 -> -1)."""
    if not path.is_file():
        raise DataError(f"{path} is missing (datasets.nyuv2.prepare.class_mapping_file: raw class -> 13 classes)")
    try:
        if path.suffix == ".npy":
            values = _load_npy(path)
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


def _mat_arrays(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Numeric arrays from a .mat (v5 via scipy, v7.3 via h5py) or .npz file."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in names if k in npz.files}
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
    arrays = _mat_arrays(path, ("trainNdxs", "testNdxs"))
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
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{path} is not a readable .npy array: {err}") from None
        yield arr
    else:
        raise DataError(f"{path}: normals must be an .npy or .h5/.hdf5 file")


def _resolve(root: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def ingest_official(cfg: Nyuv2Config, out_file: Path, size: tuple[int, int], attrs: dict[str, Any]) -> None:
    """The official .mat (+ mapping, splits, normals) -> nyuv2.h5. The cheap files are checked first."""
    root = Path(cfg.root).expanduser()  # type: ignore[arg-type]
    if not cfg.normals_file:
        raise DataError("datasets.nyuv2.prepare.normals_file is not set: the official nyu_depth_v2_labeled.mat has "
                        "no surface normals, they must be supplied as an .npy/.h5 array [N, H, W, 3]")
    mat_path, normals_path = _resolve(root, cfg.mat_file), _resolve(root, cfg.normals_file)
    mapping_path = _resolve(root, cfg.class_mapping_file)
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
        flags = read_official_splits(_resolve(root, cfg.splits_file), n)
        rows = np.flatnonzero(flags >= 0)

        def samples() -> Iterator[tuple[Sample, bool, int]]:
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

        write_prepared(out_file, samples(), len(rows), size, attrs)


# ----------------------------------------------------------------------------------------------
# Source (c): the procedural stand-in, written in the preprocessed layout
# ----------------------------------------------------------------------------------------------

_C = {name: k for k, name in enumerate(CLASS_NAMES)}
# Base albedo per class (jittered per scene) and texture amplitude.
_PALETTE = {
    "bed": (0.86, 0.80, 0.70), "books": (0.7, 0.2, 0.2), "ceiling": (0.93, 0.93, 0.91), "chair": (0.45, 0.28, 0.16),
    "floor": (0.62, 0.46, 0.30), "furniture": (0.56, 0.42, 0.30), "objects": (0.2, 0.6, 0.3),
    "picture": (0.6, 0.3, 0.5), "sofa": (0.32, 0.36, 0.60), "table": (0.50, 0.34, 0.20), "tv": (0.07, 0.07, 0.09),
    "wall": (0.80, 0.78, 0.70), "window": (0.78, 0.88, 1.00),
}
# Free-standing boxes: class -> (width, height, depth) ranges in metres.
_BOX_KINDS = {
    "bed": ((1.4, 2.0), (0.4, 0.6), (1.8, 2.1)), "chair": ((0.4, 0.5), (0.8, 1.0), (0.4, 0.5)),
    "furniture": ((0.6, 1.2), (0.9, 2.0), (0.4, 0.6)), "sofa": ((1.5, 2.2), (0.7, 0.9), (0.8, 1.0)),
    "table": ((0.8, 1.4), (0.7, 0.8), (0.6, 1.0)),
}


@dataclass
class _Surface:
    """What a ray hit: class, albedo, texture (kind, frequency, amplitude, direction) and whether it glows."""

    cls: int
    albedo: np.ndarray
    texture: tuple[str, float, float, np.ndarray]
    emissive: bool = False


def _surface(rng: np.random.Generator, name: str) -> _Surface:
    base = np.asarray(_PALETTE[name])
    if name in ("books", "objects", "picture"):
        base = rng.uniform(0.1, 0.9, 3)  # colourful things: any colour
    albedo = np.clip(base * rng.uniform(0.8, 1.15) + rng.normal(0, 0.05, 3), 0.02, 1)
    kind = str(rng.choice(["plain", "stripes", "checker"], p=[0.4, 0.4, 0.2]))
    direction = rng.normal(size=3)
    texture = (kind, float(rng.uniform(4, 14)), float(rng.uniform(0.05, 0.25)), direction / np.linalg.norm(direction))
    return _Surface(_C[name], albedo, texture, emissive=name in ("window", "tv") and rng.random() < 0.5)


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


class _Tracer:
    """Nearest hit per ray: t, world normal and surface index, updated by each primitive in turn."""

    def __init__(self, origin: np.ndarray, dirs: np.ndarray) -> None:
        self.o, self.d = origin, dirs  # [3], [P, 3]
        p = len(dirs)
        self.t = np.full(p, np.inf)
        self.normal = np.zeros((p, 3))
        self.surface = np.full(p, -1)
        self.surfaces: list[_Surface] = []

    def _update(self, t: np.ndarray, normal: np.ndarray, surf: _Surface) -> None:
        closer = t < self.t
        self.t[closer] = t[closer]
        self.normal[closer] = normal[closer]
        self.surface[closer] = len(self.surfaces)
        self.surfaces.append(surf)

    def room(self, lo: np.ndarray, hi: np.ndarray, surfs: Sequence[_Surface]) -> None:
        """Inside of an axis-aligned box: one surface per face (x-, x+, y-, y+, z-, z+)."""
        d = np.where(np.abs(self.d) < 1e-12, 1e-12, self.d)
        for axis in range(3):
            for side, bound in enumerate((lo, hi)):
                t = (bound[axis] - self.o[axis]) / d[:, axis]
                t = np.where(t > 1e-6, t, np.inf)
                n = np.zeros_like(self.d)
                n[:, axis] = 1.0 if side == 0 else -1.0  # facing into the room
                self._update(t, n, surfs[2 * axis + side])

    def box(self, centre: np.ndarray, half: np.ndarray, yaw: float, surf: _Surface) -> None:
        """A box rotated by ``yaw`` about the vertical axis (slab method in its own frame)."""
        rot = _rot_y(yaw)
        o = (self.o - centre) @ rot  # row vectors: x @ R == R^T x
        d = self.d @ rot
        d = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1, t2 = (-half - o) / d, (half - o) / d
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        t_in, t_out = near.max(1), far.min(1)
        axis = near.argmax(1)
        hit = (t_in <= t_out) & (t_in > 1e-6)
        n_local = np.zeros_like(d)
        rows = np.arange(len(d))
        n_local[rows, axis] = -np.sign(d[rows, axis])
        self._update(np.where(hit, t_in, np.inf), n_local @ rot.T, surf)

    def sphere(self, centre: np.ndarray, radius: float, surf: _Surface) -> None:
        oc = self.o - centre
        a = (self.d**2).sum(1)
        b = self.d @ oc
        disc = b**2 - a * (oc @ oc - radius**2)
        t = (-b - np.sqrt(np.maximum(disc, 0))) / a
        t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
        hit_points = self.o + t[:, None] * self.d
        normal = np.nan_to_num((hit_points - centre) / radius)
        self._update(t, normal, surf)


def _blob(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """A random filled ellipse mask [H, W] of about ``scale`` of the image side."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(0.3, 1.0, 2) * scale * min(h, w)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def render_standin_scene(rng: np.random.Generator, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """One indoor-like RGB-D scene in the preprocessed layout's arrays.

    Returns image [H, W, 3] float32 in [0, 1], label [H, W] float32 (-1 = ignore), depth [H, W, 1] float32
    (camera z in metres, 0 = invalid) and normal [H, W, 3] float32 (camera frame: x right, y up, z forward;
    facing the camera; all-zero = invalid). Rays from a pinhole camera (58 deg horizontal field of view,
    like the Kinect) are intersected analytically with the room, boxes and spheres; RGB is albedo x
    texture x Lambertian light from a ceiling lamp, with colour cast and sensor noise.
    """
    h, w = size
    fx = (w / 2) / math.tan(math.radians(58) / 2)
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    d_cam = np.stack([(jj - (w - 1) / 2) / fx, -(ii - (h - 1) / 2) / fx, np.ones((h, w))], -1).reshape(-1, 3)
    cam_rot = _rot_y(rng.uniform(-0.35, 0.35)) @ _rot_x(rng.uniform(-0.05, 0.35))  # looking down
    left, right, depth_room, ceiling = rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.0), rng.uniform(3.5, 6.5), \
        rng.uniform(2.5, 3.0)
    origin = np.array([rng.uniform(-0.3, 0.3), rng.uniform(1.1, 1.6), 0.0])
    tracer = _Tracer(origin, d_cam @ cam_rot.T)

    wall = _surface(rng, "wall")
    lo, hi = np.array([-left, 0.0, -1.0]), np.array([right, ceiling, depth_room])
    tracer.room(lo, hi, [wall, wall, _surface(rng, "floor"), _surface(rng, "ceiling"), wall, wall])

    tops: list[tuple[np.ndarray, np.ndarray, float]] = []  # (centre of top face, half size, yaw) for books/TV/balls
    for _ in range(int(rng.integers(2, 6))):
        name = str(rng.choice(list(_BOX_KINDS)))
        (w0, w1), (h0, h1), (d0, d1) = _BOX_KINDS[name]
        half = np.array([rng.uniform(w0, w1), rng.uniform(h0, h1), rng.uniform(d0, d1)]) / 2
        x = rng.uniform(-left + 0.5, right - 0.5)
        z = rng.uniform(1.5, depth_room - 0.4)
        yaw = float(rng.uniform(-0.6, 0.6))
        surf = _surface(rng, name)
        if name == "table":  # a top slab and four legs
            top = np.array([half[0], 0.03, half[2]])
            tracer.box(np.array([x, 2 * half[1] - 0.03, z]), top, yaw, surf)
            for sx in (-1, 1):
                for sz in (-1, 1):
                    leg = _rot_y(yaw) @ np.array([sx * (half[0] - 0.05), 0, sz * (half[2] - 0.05)])
                    tracer.box(np.array([x + leg[0], half[1], z + leg[2]]), np.array([0.03, half[1], 0.03]), yaw, surf)
        else:
            tracer.box(np.array([x, half[1], z]), half, yaw, surf)
        if name in ("table", "furniture"):
            tops.append((np.array([x, 2 * half[1], z]), half, yaw))
    for centre, half, yaw in tops:  # things standing on tables and cabinets
        for _ in range(int(rng.integers(0, 3))):
            along = rng.uniform(-0.6, 0.6, 2) * half[[0, 2]]
            offset = _rot_y(yaw) @ np.array([along[0], 0, along[1]])
            kind = str(rng.choice(["books", "tv", "objects"]))
            if kind == "objects":
                r = rng.uniform(0.08, 0.2)
                tracer.sphere(centre + offset + np.array([0, r, 0]), r, _surface(rng, "objects"))
            else:
                size3 = np.array([0.8, 0.5, 0.06]) * rng.uniform(0.8, 1.3) if kind == "tv" \
                    else rng.uniform([0.15, 0.15, 0.12], [0.3, 0.3, 0.2])
                tracer.box(centre + offset + np.array([0, size3[1] / 2, 0]), size3 / 2, yaw, _surface(rng, kind))
    for _ in range(int(rng.integers(0, 3))):  # balls on the floor
        r = rng.uniform(0.15, 0.35)
        tracer.sphere(np.array([rng.uniform(-left + r, right - r), r, rng.uniform(1.2, depth_room - r)]), r,
                      _surface(rng, "objects"))

    hit = origin + tracer.t[:, None] * tracer.d
    labels = np.array([s.cls for s in tracer.surfaces])[tracer.surface]
    # Pictures, windows and wall-mounted TVs: rectangles on the walls (same geometry as the wall).
    for _ in range(int(rng.integers(1, 4))):
        kind = str(rng.choice(["picture", "window", "tv"], p=[0.5, 0.35, 0.15]))
        axis = int(rng.choice([0, 2]))  # a side wall (x) or the back wall (z)
        coord = (-left if rng.random() < 0.5 else right) if axis == 0 else depth_room
        other = 2 if axis == 0 else 0
        span = (1.0, depth_room - 0.5) if axis == 0 else (-left + 0.3, right - 0.3)
        u0 = rng.uniform(*span)
        half_u, v0 = rng.uniform(0.3, 0.8), rng.uniform(0.9, 1.6)
        half_v = rng.uniform(0.25, 0.6) if kind != "window" else rng.uniform(0.5, 0.8)
        on = (labels == _C["wall"]) & (np.abs(hit[:, axis] - coord) < 1e-6) & \
            (np.abs(hit[:, other] - u0) < half_u) & (np.abs(hit[:, 1] - v0) < half_v)
        surf = _surface(rng, kind)
        tracer.surface[on] = len(tracer.surfaces)
        tracer.surfaces.append(surf)
        labels[on] = surf.cls

    # Shading: albedo x texture x (ambient + diffuse from a lamp under the ceiling); windows and some TVs glow.
    light = np.array([rng.uniform(-left, right) * 0.5, ceiling - 0.2, rng.uniform(1.0, depth_room - 1)])
    to_light = light - hit
    to_light /= np.linalg.norm(to_light, axis=1, keepdims=True) + 1e-9
    diffuse = np.clip((tracer.normal * to_light).sum(1), 0, 1)
    rgb = np.zeros((len(hit), 3))
    for k, surf in enumerate(tracer.surfaces):
        m = tracer.surface == k
        if not m.any():
            continue
        kind, freq, amp, direction = surf.texture
        phase = hit[m] @ direction * freq
        tex = {"plain": np.zeros_like(phase), "stripes": np.sin(phase),
               "checker": np.sign(np.sin(hit[m, 0] * freq) * np.sin(hit[m, 2] * freq + hit[m, 1] * freq))}[kind]
        shade = 1.0 if surf.emissive else 0.35 + 0.65 * diffuse[m]
        rgb[m] = surf.albedo * (1 + amp * tex)[:, None] * np.asarray(shade).reshape(-1, 1)
    rgb = rgb * rng.uniform(0.75, 1.15) * rng.uniform(0.9, 1.1, 3) + rng.normal(0, 0.025, rgb.shape)

    depth = tracer.t.reshape(h, w)
    normal_cam = (tracer.normal @ cam_rot).reshape(h, w, 3)  # R^T n
    labels = labels.reshape(h, w).astype(np.float32)
    # Unlabelled pixels, as in NYUv2: some object boundaries and the odd blob; depth holes (Kinect) kill normals too.
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    unlabelled = (edge & (rng.random((h, w)) < 0.5)) | (_blob(rng, h, w, 0.15) if rng.random() < 0.5 else False)
    labels[unlabelled] = IGNORE
    holes = _blob(rng, h, w, 0.1) if rng.random() < 0.6 else np.zeros((h, w), bool)
    depth = np.where(holes, 0.0, depth)
    normal_cam[holes] = 0.0
    return {"image": np.clip(rgb.reshape(h, w, 3), 0, 1).astype(np.float32), "label": labels,
            "depth": depth[..., None].astype(np.float32), "normal": normal_cam.astype(np.float32)}


# Roles of the stand-in's auxiliaries (see the module docstring): the normals are the scene's geometry,
# which decides the classes; the written "depth" is a smooth random field, unrelated to the scene.
STANDIN_AUX_ROLES = {"depth": "irrelevant", "normal": "helpful"}


def random_depth_field(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A smooth random positive field [H, W] in metres (0.5..6), unrelated to any scene: uniform values on a
    coarse 3 x 4 grid, bicubically upsampled. It replaces the stand-in's depth (an irrelevant auxiliary)."""
    h, w = size
    coarse = torch.from_numpy(rng.uniform(1.0, 5.5, size=(1, 1, 3, 4)))
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0, 0].numpy()
    return np.clip(field, 0.5, 6.0).astype(np.float32)


def write_standin(root: Path, cfg: Nyuv2Config) -> None:
    """Render the stand-in into ``root/{train,val}/{image,label,depth,normal}/<index>.npy``.

    The written depth is NOT the rendered depth: it is ``random_depth_field`` (from its own generator, so the
    scenes are the same as with the true depth), with the rendered depth's holes (0 = invalid) kept.
    Deterministic from ``cfg.standin_seed``: one generator draws every scene in order, and ``np.save``
    writes no timestamps, so the same settings give byte-identical files.
    """
    rng = np.random.default_rng(cfg.standin_seed)
    field_rng = np.random.default_rng([cfg.standin_seed, 1])
    size = cfg.resolved_image_size
    for split, count in (("train", cfg.standin_train), ("val", cfg.standin_test)):
        for kind in KINDS:
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            scene = render_standin_scene(rng, size)
            true_depth = scene["depth"]
            scene["depth"] = np.where(true_depth > 0, random_depth_field(field_rng, size)[..., None], 0.0
                                      ).astype(np.float32)
            for kind, arr in scene.items():
                np.save(root / split / kind / f"{i}.npy", arr, allow_pickle=False)


# ----------------------------------------------------------------------------------------------
# Splits, losses and metrics as plain functions (tested on hand cases)
# ----------------------------------------------------------------------------------------------


def official_splits(is_train: np.ndarray, seed: int, val_fraction: float, aux_fraction: float
                    ) -> dict[str, np.ndarray]:
    """App. B.2: floor(val_fraction x official train) to validation (79 of 795), floor(aux_fraction x the
    rest) to the aux set (17 of 716), the remaining official train images to train; test = official test."""
    is_train = np.asarray(is_train, dtype=bool)
    pool = np.random.default_rng(seed).permutation(np.flatnonzero(is_train))
    n_val = max(1, math.floor(val_fraction * len(pool) + 1e-9))
    n_aux = max(1, math.floor(aux_fraction * (len(pool) - n_val) + 1e-9))
    if n_val + n_aux >= len(pool):
        raise ValueError(f"datasets.nyuv2.split: {n_val} validation + {n_aux} aux images leave no training image "
                         f"out of {len(pool)} official training images")
    if not (~is_train).any():
        raise ValueError("datasets.nyuv2.split: no official test image")
    parts = {"val": pool[:n_val], "aux": pool[n_val:n_val + n_aux], "train": pool[n_val + n_aux:],
             "test": np.flatnonzero(~is_train)}
    return {k: np.sort(v).astype(np.int64) for k, v in parts.items()}


def loss_density(loss: Tensor, valid: Tensor) -> Tensor:
    """[B, H, W] per-pixel loss -> loss x (H·W / valid pixels of the sample), 0 where invalid or no pixel is valid."""
    pixels = valid[0].numel()
    count = valid.flatten(1).sum(1).clamp_min(1).to(loss.dtype)
    return torch.where(valid, loss * (pixels / count).view(-1, *([1] * (valid.dim() - 1))), torch.zeros_like(loss))


def pixel_losses(outputs: tuple[Tensor, Tensor, Tensor], targets: Tensor) -> Tensor:
    """[B, 3, H, W] loss images (see ``Nyuv2.per_task_losses``)."""
    seg, depth, normal = outputs
    label, gt_depth, gt_normal = targets[:, 0], targets[:, 1], targets[:, 2:5]
    ce = F.cross_entropy(seg, label.long().clamp_min(IGNORE), ignore_index=IGNORE, reduction="none")
    l1 = (depth[:, 0] - gt_depth).abs()
    cos = 1 - F.cosine_similarity(normal, gt_normal, dim=1)
    valid_normal = gt_normal.abs().sum(1) > 0
    return torch.stack([loss_density(ce, label >= 0), loss_density(l1, gt_depth > 0),
                        loss_density(cos, valid_normal)], dim=1)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """int64 [C, C], rows = ground truth, columns = prediction; target < 0 (ignore) is skipped."""
    keep = target >= 0
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes).cpu()


def segmentation_scores(cm: Tensor) -> dict[str, float]:
    """``miou``: mean IoU (percent) over classes present in ground truth or prediction; ``pixel_acc`` (percent)."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    total = cm.sum()
    return {"miou": float(100 * (tp[present] / union[present]).mean()) if present.any() else 0.0,
            "pixel_acc": float(100 * tp.sum() / total) if total > 0 else 0.0}


def depth_error_sums(pred: Tensor, target: Tensor) -> Tensor:
    """[3] float64: sum |d - d*|, sum |d - d*| / d*, number of valid pixels (d* > 0).
    ``pred`` [B, 1, H, W] or [B, H, W], ``target`` [B, H, W]."""
    pred = pred.reshape(target.shape)
    valid = target > 0
    err = (pred[valid] - target[valid]).abs().double()
    return torch.stack([err.sum(), (err / target[valid].double()).sum(), valid.sum().double()]).cpu()


def depth_scores(sums: Tensor) -> dict[str, float]:
    count = float(sums[2])
    return {"depth_abs_err": float(sums[0]) / count if count else math.nan,
            "depth_rel_err": float(sums[1]) / count if count else math.nan}


def normal_angles(pred: Tensor, target: Tensor) -> Tensor:
    """Angles in degrees between [B, 3, H, W] normals at pixels whose ground truth is non-zero (a flat CPU tensor)."""
    valid = target.abs().sum(1) > 0
    cos = F.cosine_similarity(pred, target, dim=1)[valid].clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos.double())).cpu()


def normal_scores(angles: Tensor) -> dict[str, float]:
    """Mean and median angle (degrees) and percent of pixels within 11.25, 22.5 and 30 degrees."""
    a = angles.double().numpy()
    if a.size == 0:
        return {"normal_mean_deg": math.nan, "normal_median_deg": math.nan,
                **{f"normal_within_{t:g}": math.nan for t in NORMAL_THRESHOLDS}}
    return {"normal_mean_deg": float(a.mean()), "normal_median_deg": float(np.median(a)),
            **{f"normal_within_{t:g}": float(100 * (a < t).mean()) for t in NORMAL_THRESHOLDS}}


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------


def _h5_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@DATASETS.register("nyuv2")
class Nyuv2(Dataset):
    """NYUv2 (or its procedural stand-in): segmentation with depth and normal auxiliaries, per-pixel losses."""

    name = "nyuv2"
    Config = Nyuv2Config
    SplitConfig = Nyuv2SplitConfig
    ModelConfig = Nyuv2ModelConfig
    default_split = {"seed": 0, "val_fraction": 0.1, "aux_fraction": 0.025}
    # Paper (App. B.2): Adam, lr 1e-4 for 200 epochs, halved after 100. On the 48 x 64 stand-in with the
    # default SegNet (width 16, 3 stages) that is far too slow; lr 1e-3 and 600 steps of 8 (~13 epochs of
    # the 369 train + aux images) take about a minute per seed of single-task training on a CPU and the
    # validation loss flattens near the end; the lr is halved half-way as in the paper.
    default_train = {"steps": 600, "batch_size": 8, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                     "lr_schedule": "halve_midway", "eval_every": 50}
    # No φ override: the old one (lr 1e-4 and a norm clip of 1, because one clipped SGD step zeroed the
    # ConvNet and a diverging Neumann series spiked) is not needed with methods.bilevel's scale-free optimiser,
    # the softplus-weighted ConvNet and the curvature-safe α.
    default_methods: dict = {}

    # -- files ---------------------------------------------------------------------------------

    def prepare(self, cfg: Nyuv2Config, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        size = cfg.resolved_image_size
        out_file = out_dir / H5_NAME
        if cfg.source == "standin":
            root = out_dir / STANDIN_DIR
            write_standin(root, cfg)
            ingest_preprocessed(root, out_file, size, {"source": "stand-in (procedural rooms, not NYUv2)"})
            write_aux_roles(out_dir, dict(STANDIN_AUX_ROLES))
        elif cfg.source == "preprocessed":
            ingest_preprocessed(Path(cfg.root).expanduser(), out_file, size,  # type: ignore[arg-type]
                                {"source": "NYUv2 (preprocessed .npy layout)"})
        else:
            ingest_official(cfg, out_file, size, {"source": "NYUv2 (official labelled .mat)"})

    def load(self, folder: Path) -> TaskData:
        path = Path(folder) / H5_NAME
        if not path.is_file():
            raise DataError(f"{path} is missing: run `dvc repro prepare@{self.name}`")
        need = ("images", "labels", "depth", "normals", "is_train", "sample_ids")
        try:
            with h5py.File(path, "r") as f:
                absent = [k for k in need if k not in f]
                if absent:
                    raise DataError(f"{path}: missing {', '.join(absent)}")
                images, is_train, sample_ids = f["images"][...], f["is_train"][...], f["sample_ids"][...]
                source = _h5_text(f.attrs.get("source", ""))
                n = len(images)
                if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
                    raise DataError(f"{path}: images should be uint8 [N, 3, H, W], got {images.dtype} {images.shape}")
                hw = images.shape[2:]
                labels, depth, normals = f["labels"], f["depth"], f["normals"]
                if labels.shape != (n, *hw) or depth.shape != (n, *hw) or normals.shape != (n, 3, *hw) \
                        or is_train.shape != (n,) or sample_ids.shape != (n,):
                    raise DataError(f"{path}: labels {labels.shape}, depth {depth.shape}, normals {normals.shape}, "
                                    f"is_train {is_train.shape}, sample_ids {sample_ids.shape} do not match images "
                                    f"{images.shape}")
                # Filled in slices straight from the file: real NYUv2 targets are 3.2 GB as float32, and
                # whole-array copies would double that.
                targets = np.empty((n, 5, *hw), np.float32)
                for start in range(0, n, LOAD_CHUNK):
                    rows = slice(start, start + LOAD_CHUNK)
                    lab = labels[rows]
                    if lab.min() < IGNORE or lab.max() >= NUM_CLASSES:
                        raise DataError(f"{path}: labels must lie in -1..{NUM_CLASSES - 1}")
                    targets[rows, 0], targets[rows, 1], targets[rows, 2:5] = lab, depth[rows], normals[rows]
        except OSError as err:
            raise DataError(f"{path} is not a readable HDF5 file: {err}") from None
        targets = torch.from_numpy(targets)
        meta = {"source": source, "num_classes": NUM_CLASSES, "class_names": list(CLASS_NAMES),
                "is_train": is_train.astype(bool), "sample_ids": sample_ids, "image_size": tuple(int(s) for s in hw)}
        roles = read_aux_roles(Path(folder), TASK_NAMES[1:])
        if roles is not None:
            meta["aux_roles"] = roles
        return TaskData(torch.from_numpy(images), targets, list(TASK_NAMES), meta)

    def make_splits(self, data: TaskData, split_cfg: Nyuv2SplitConfig) -> dict[str, np.ndarray]:
        return official_splits(data.meta["is_train"], split_cfg.seed, split_cfg.val_fraction, split_cfg.aux_fraction)

    # -- model, losses, metrics ----------------------------------------------------------------

    def build_model(self, data: TaskData, cfg: Nyuv2ModelConfig, aux_outputs: int = 0) -> MultiTaskNet:
        if aux_outputs:
            raise ValueError("nyuv2: generated auxiliary tasks are not supported (its auxiliaries are depth and "
                             "normals)")
        return MODELS.get("segnet")(num_classes=NUM_CLASSES, width=cfg.width, stages=cfg.stages)

    def batch_transform(self, x: Tensor, y: Tensor, train: bool,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """uint8 images -> floats in [0, 1] (as Liu et al. feed them); no augmentation, targets unchanged."""
        return (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()), y

    def display(self, x: Tensor, y: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """A transformed image [3, H, W] as RGB [H, W, 3] in [0, 1], and its label map (-1 = ignored)."""
        return x.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), y[0].long().cpu().numpy()

    def per_task_losses(self, outputs: tuple[Tensor, Tensor, Tensor], targets: Tensor) -> Tensor:
        """[B, 3, H, W] loss images normalised as densities (see ``Dataset.per_task_losses``):
        0: cross-entropy (label -1 ignored); 1: L1 depth where depth > 0; 2: 1 - cosine where the normal is non-zero."""
        return pixel_losses(outputs, targets)

    def main_loss(self, model: nn.Module, data: TaskData, indices: Tensor) -> float:
        """Mean per-sample segmentation loss, in chunks."""
        total = sum(float(reduce_pixels(self.per_task_losses(out, y))[:, 0].sum())
                    for out, y in self.evaluation_outputs(model, data, indices, EVAL_CHUNK))
        return total / len(indices)

    def metrics(self, model: nn.Module, data: TaskData, indices: Tensor) -> dict[str, float]:
        """``miou``/``pixel_acc`` (percent, confusion matrix over the whole set), depth abs/rel error over valid
        pixels, normal angle mean/median (degrees) and percent within 11.25/22.5/30 degrees, ``main_loss``."""
        cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
        depth_sums = torch.zeros(3, dtype=torch.float64)
        angles, loss = [], 0.0
        for (seg, depth, normal), y in self.evaluation_outputs(model, data, indices, EVAL_CHUNK):
            cm += confusion_matrix(seg.argmax(1), y[:, 0])
            depth_sums += depth_error_sums(depth, y[:, 1])
            angles.append(normal_angles(normal, y[:, 2:5]).float())
            loss += float(reduce_pixels(self.per_task_losses((seg, depth, normal), y))[:, 0].sum())
        return {**segmentation_scores(cm), **depth_scores(depth_sums), **normal_scores(torch.cat(angles)),
                "main_loss": loss / len(indices)}
