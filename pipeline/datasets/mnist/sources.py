"""MNIST's IDX files, as users have them: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or gzipped (the same name plus ``.gz``).

The IDX format (LeCun et al.): a big-endian header, then the data in C order. The header's first 4 bytes are the
magic number: two zero bytes, a type byte (0x08 = unsigned byte, the only type MNIST uses) and the number of
dimensions, so images have magic 2051 (0x00000803: ubyte, 3 dims) and labels 2049 (0x00000801: ubyte, 1 dim);
then one big-endian int32 per dimension (images: n, rows, columns; labels: n); then n·rows·columns (n) bytes.

The stand-in adds ``train-subclasses-idx1-ubyte.gz`` and ``t10k-subclasses-idx1-ubyte.gz`` (label files of the
hidden sub-class of each image, absent from real data), which the reader picks up when present.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.image_classification import RawFormat, check_labels
from pipeline.datasets.shared.raw_images import RawImages

PREFIX = {True: "train", False: "t10k"}  # the official split -> the files' prefix
IMAGES, LABELS, SUBCLASSES = "images-idx3-ubyte", "labels-idx1-ubyte", "subclasses-idx1-ubyte"
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
UBYTE = 0x08
DIGITS = [str(d) for d in range(10)]
EXPECTED = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte "
            "(each plain or .gz)")


def find_idx(root: Path, name: str, required: bool = True) -> Path | None:
    """``root/name`` or ``root/name.gz`` (the plain file when both exist); DataError naming the file when neither
    does and it is ``required``."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if required:
        raise DataError(f"{root}: {name} is missing (expected {name} or {name}.gz; the folder must hold {EXPECTED})")
    return None


def read_idx(path: Path, magic: int, ndim_rest: int) -> np.ndarray:
    """The uint8 array of an IDX file whose magic number must be ``magic`` (2051 images, 2049 labels), with
    ``1 + ndim_rest`` dimensions; DataError naming the file for a bad header or a wrong length."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from exc
    kind = "images" if magic == IMAGE_MAGIC else "labels"
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: IDX magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x}) for "
                        f"MNIST {kind}: unsigned bytes in {1 + ndim_rest} dimension(s)")
    header = 4 + 4 * (1 + ndim_rest)
    if len(data) < header:
        raise DataError(f"{path}: header cut short ({len(data)} bytes, the dimensions need {header})")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(1 + ndim_rest))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise DataError(f"{path}: the header says {kind} of shape {dims}, i.e. {expected} bytes, the file has "
                        f"{len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8, 1 or 3 dimensions) as an IDX file, gzipped (with a zero time stamp, so the same array
    gives the same bytes) when ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UBYTE, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def read_mnist(root: Path) -> RawImages:
    """The four IDX files (plain or .gz) at ``root``: images uint8 [N, 1, S, S] (official train first), labels
    the digits 0..9; every file is found before any is read, so a missing one is the first error."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (prepare.root must hold {EXPECTED})")
    paths = {train: (find_idx(root, f"{p}-{IMAGES}"), find_idx(root, f"{p}-{LABELS}")) for train, p in PREFIX.items()}
    images, labels, is_train, subclasses = [], [], [], []
    for train, (image_path, label_path) in paths.items():
        x, y = read_idx(image_path, IMAGE_MAGIC, 2), read_idx(label_path, LABEL_MAGIC, 0)
        if x.shape[1] != x.shape[2]:
            raise DataError(f"{image_path}: images must be square, got {x.shape[1]} x {x.shape[2]}")
        if images and x.shape[1:] != images[0].shape[2:]:
            raise DataError(f"{image_path}: {x.shape[1]} x {x.shape[2]} images, the training images are "
                            f"{images[0].shape[2]} x {images[0].shape[3]}")
        if len(y) != len(x):
            raise DataError(f"{label_path}: {len(y)} labels for the {len(x)} images of {image_path.name}")
        if len(y) and y.max() > 9:
            raise DataError(f"{label_path}: labels must be digits 0..9, got up to {y.max()}")
        images.append(x[:, None])
        labels.append(y.astype(np.int64))
        is_train.append(np.full(len(y), train))
        sub_path = find_idx(root, f"{PREFIX[train]}-{SUBCLASSES}", required=False)
        if sub_path is not None:  # the stand-in's hidden sub-classes (not in the real files)
            sub = read_idx(sub_path, LABEL_MAGIC, 0)
            if len(sub) != len(x):
                raise DataError(f"{sub_path}: {len(sub)} sub-classes for {len(x)} images")
            subclasses.append(sub.astype(np.int64))
    if len(subclasses) == 1:
        raise DataError(f"{root}: a {SUBCLASSES} file exists for one split but not the other")
    raw = RawImages(np.concatenate(images), np.concatenate(is_train), {"class": np.concatenate(labels)},
                    {"class": list(DIGITS)}, np.concatenate(subclasses) if subclasses else None)
    return check_labels(raw, root)


def write_mnist(root: Path, raw: RawImages) -> None:
    """The four gzipped IDX files (and the stand-in's sub-class files); ``raw.images`` uint8 [N, 1, S, S]."""
    root.mkdir(parents=True, exist_ok=True)
    for train, prefix in PREFIX.items():
        rows = np.flatnonzero(raw.is_train == train)
        write_idx(root / f"{prefix}-{IMAGES}.gz", raw.images[rows, 0])
        write_idx(root / f"{prefix}-{LABELS}.gz", raw.labels["class"][rows])
        if raw.subclass_labels is not None:
            write_idx(root / f"{prefix}-{SUBCLASSES}.gz", raw.subclass_labels[rows])


MNIST_FORMAT = RawFormat(read_mnist, write_mnist, ("class",), "MNIST", EXPECTED)
