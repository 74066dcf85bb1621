"""Stanford Cars' on-disk format (the devkit): ``devkit/cars_meta.mat`` (``class_names``, a 1 x 196 cell array),
``devkit/cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat`` (``annotations``, a 1 x N struct array with
fields ``bbox_x1``, ``bbox_y1``, ``bbox_x2``, ``bbox_y2`` (1-based, inclusive pixel bounds), ``class`` (1..196) and
``fname``), and the JPEGs ``cars_train/<fname>``, ``cars_test/<fname>``. MATLAB v5 files, read with
``scipy.io.loadmat``. The reader cross-checks them (a ``DataError`` names the file and the annotation); the
writer serves the stand-in and the tests."""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core.progress import counted
from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.fine_grained import read_subclasses, write_subclasses
from pipeline.datasets.shared.image_classification import RawFormat, check_labels
from pipeline.datasets.shared.images import read_rgb
from pipeline.datasets.shared.matfile import read_mat, write_mat
from pipeline.datasets.shared.raw_images import RawImages

EXPECTED = ("devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, cars_train/ and "
            "cars_test/ of Stanford Cars")
META = "devkit/cars_meta.mat"
ANNOTATIONS = {True: "devkit/cars_train_annos.mat", False: "cars_test_annos_withlabels.mat"}
IMAGE_FOLDERS = {True: "cars_train", False: "cars_test"}
FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
STANDIN_MARGIN = (8, 16)  # the stand-in pastes each image at a seeded offset up to (rows, columns) in a larger canvas


def _annotations_path(root: Path, train: bool) -> Path:
    """The annotation file; the labelled test file is also accepted inside devkit/, where some copies keep it."""
    path = root / ANNOTATIONS[train]
    alternative = root / "devkit" / ANNOTATIONS[train]
    return alternative if not train and not path.is_file() and alternative.is_file() else path


def _annotations(path: Path, num_classes: int) -> list[tuple[str, int, tuple[int, int, int, int]]]:
    """(fname, 0-based class, (x1, y1, x2, y2) 1-based) per annotation of ``path``."""
    mat = read_mat(path, squeeze_me=True)
    if "annotations" not in mat:
        raise DataError(f"{path}: expected the variable annotations, found "
                        f"{sorted(k for k in mat if not k.startswith('__'))}")
    records = np.atleast_1d(mat["annotations"])
    missing = [f for f in FIELDS if f not in (records.dtype.names or ())]
    if missing:
        raise DataError(f"{path}: annotations lacks the field(s) {', '.join(missing)} (has "
                        f"{', '.join(records.dtype.names or ()) or 'no fields: not a struct array'})")
    rows = []
    for i, rec in enumerate(records):
        where = f"{path}: annotation {i + 1}"
        try:
            x1, y1, x2, y2, cls = (int(np.asarray(rec[f]).item()) for f in FIELDS[:5])
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: bbox_* and class must be single integers ({err})") from None
        fname = str(np.asarray(rec["fname"]).item()) if np.asarray(rec["fname"]).size == 1 else ""
        parts = PurePosixPath(fname).parts
        if len(parts) != 1 or fname in ("", ".", ".."):
            raise DataError(f"{where}: fname {fname!r} must be a file name in the image folder")
        if not 1 <= cls <= num_classes:
            raise DataError(f"{where}: class {cls} is outside 1..{num_classes} (the class_names of {META})")
        if not (1 <= x1 <= x2 and 1 <= y1 <= y2):
            raise DataError(f"{where}: bounding box ({x1}, {y1}, {x2}, {y2}) needs 1 <= x1 <= x2, 1 <= y1 <= y2")
        rows.append((fname, cls - 1, (x1, y1, x2, y2)))
    return rows


def read_cars(root: Path, image_size: int = 32, crop_to_bbox: bool = False) -> RawImages:
    """The training and labelled test images, cropped to their boxes when ``crop_to_bbox``, squashed to
    ``image_size``; the labelling ``class`` (0-based) named by cars_meta.mat."""
    root = Path(root)
    meta_path = root / META
    meta = read_mat(meta_path, squeeze_me=True)
    if "class_names" not in meta:
        raise DataError(f"{meta_path}: expected the variable class_names, found "
                        f"{sorted(k for k in meta if not k.startswith('__'))}")
    names = [str(n).strip() for n in np.atleast_1d(meta["class_names"]).ravel()]
    entries = []
    for train in (True, False):
        path = _annotations_path(root, train)
        entries += [(train, path, fname, cls, box) for fname, cls, box in _annotations(path, len(names))]
    pixels = np.stack([
        read_rgb(root / IMAGE_FOLDERS[train] / fname, image_size, str(path),
                 box=(box[0] - 1, box[1] - 1, box[2], box[3]) if crop_to_bbox else None)
        for train, path, fname, _, box in counted(entries, "prepare stanford_cars: images read", len(entries),
                                                  "images")])
    keys = [f"{IMAGE_FOLDERS[train]}/{fname}" for train, _, fname, _, _ in entries]
    raw = RawImages(pixels, np.asarray([e[0] for e in entries], dtype=bool),
                    {"class": np.asarray([e[3] for e in entries], dtype=np.int64)}, {"class": names},
                    read_subclasses(root, keys))
    return check_labels(raw, root)


def _struct_array(rows: list[dict[str, Any]]) -> np.ndarray:
    """A 1 x N MATLAB struct array with the devkit's fields, in its order."""
    out = np.empty((1, len(rows)), dtype=[(f, object) for f in FIELDS])
    for i, row in enumerate(rows):
        out[0, i] = tuple(row[f] for f in FIELDS)
    return out


def write_cars(root: Path, raw: RawImages) -> None:
    """The devkit layout from ``raw``: each image pasted at an offset into a larger noisy canvas (its bounding box
    is where it lies), ``<folder>/<5-digit n>.jpg``, the two annotation files and cars_meta.mat. The offsets are
    drawn from a fixed seed (the images' own randomness is the stand-in's)."""
    rng = np.random.default_rng(0)
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.empty((1, len(raw.names["class"])), dtype=object)
    names[0, :] = raw.names["class"]
    write_mat(root / META, {"class_names": names})
    keys, order = [], []
    for train in (True, False):
        folder = root / IMAGE_FOLDERS[train]
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for n, i in enumerate(np.flatnonzero(raw.is_train == train), 1):
            _, h, w = raw.images[i].shape
            oy, ox = (int(rng.integers(0, m + 1)) for m in STANDIN_MARGIN)
            canvas = rng.integers(90, 166, size=(h + STANDIN_MARGIN[0], w + STANDIN_MARGIN[1], 3)).astype(np.uint8)
            canvas[oy:oy + h, ox:ox + w] = raw.images[i].transpose(1, 2, 0)
            fname = f"{n:05d}.jpg"
            Image.fromarray(canvas).save(folder / fname, format="JPEG", quality=95)
            rows.append({"bbox_x1": ox + 1, "bbox_y1": oy + 1, "bbox_x2": ox + w, "bbox_y2": oy + h,
                         "class": int(raw.labels["class"][i]) + 1, "fname": fname})
            keys.append(f"{IMAGE_FOLDERS[train]}/{fname}")
            order.append(i)
        write_mat(root / ANNOTATIONS[train], {"annotations": _struct_array(rows)})
    write_subclasses(root, keys, None if raw.subclass_labels is None else raw.subclass_labels[order])


CARS_FORMAT = RawFormat(read_cars, write_cars, ("class",), "Stanford Cars", EXPECTED)
