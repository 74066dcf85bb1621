"""CUB-200-2011's on-disk format: the release's text files (``images.txt``, ``image_class_labels.txt``,
``train_test_split.txt``, ``classes.txt``, ``attributes.txt``, ``attributes/image_attribute_labels.txt``) and
its JPEGs under ``images/``. The reader parses and cross-checks them (a ``DataError`` names the file and line);
the writer of the text files serves the stand-in generator and the tests' hand-written layouts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.images import read_rgb

# What ``datasets.cub.prepare.root`` must hold for ``source: path`` (also in data/raw/cub/README.md).
EXPECTED = ("the contents of the CUB_200_2011 folder (images.txt, image_class_labels.txt, train_test_split.txt, "
            "classes.txt, attributes.txt, attributes/image_attribute_labels.txt and images/)")


def write_cub_text_files(root: Path, class_names: Sequence[str], attribute_names: Sequence[str],
                         image_paths: Sequence[str], labels: Sequence[int], is_train: Sequence[bool],
                         attributes: np.ndarray, certainties: np.ndarray | None = None) -> None:
    """Write CUB's index files for images already under ``root/images`` (ids 1-based, as in the release).

    ``labels`` are 0-based class indices, ``attributes`` a 0/1 array [N, A]; ``certainties`` (1-4,
    CUB's "not visible" … "definitely") default to 4. ``attributes.txt`` goes to the top level.
    """
    root = Path(root)
    attributes = np.asarray(attributes)
    n, a = attributes.shape
    if not (len(image_paths) == len(labels) == len(is_train) == n and a == len(attribute_names)):
        raise ValueError("image_paths, labels, is_train and attributes must describe the same images and attributes")
    certainties = np.full((n, a), 4) if certainties is None else np.asarray(certainties)
    (root / "attributes").mkdir(parents=True, exist_ok=True)

    def lines(rows: Any) -> str:
        return "".join(" ".join(str(v) for v in row) + "\n" for row in rows)

    (root / "images.txt").write_text(lines((i + 1, p) for i, p in enumerate(image_paths)))
    (root / "image_class_labels.txt").write_text(lines((i + 1, int(c) + 1) for i, c in enumerate(labels)))
    (root / "train_test_split.txt").write_text(lines((i + 1, int(bool(t))) for i, t in enumerate(is_train)))
    (root / "classes.txt").write_text(lines((c + 1, name) for c, name in enumerate(class_names)))
    (root / "attributes.txt").write_text(lines((j + 1, name) for j, name in enumerate(attribute_names)))
    (root / "attributes" / "image_attribute_labels.txt").write_text(lines(
        (i + 1, j + 1, int(attributes[i, j]), int(certainties[i, j]), "0.000") for i in range(n) for j in range(a)))


@dataclass
class CubIndex:
    """CUB's text files parsed and cross-checked; rows sorted by image id."""

    root: Path
    image_ids: np.ndarray  # [N] int64, as in images.txt
    image_paths: list[str]  # relative to root/images
    labels: np.ndarray  # [N] int64, 0-based (rank of the class id in classes.txt)
    is_train: np.ndarray  # [N] uint8
    attributes: np.ndarray  # [N, A] uint8
    class_names: list[str]
    attribute_names: list[str]


def _required(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path} is missing (expected in a CUB_200_2011 folder)")
    return path


def _rows(path: Path, min_fields: int, maxsplit: int = -1) -> Iterator[tuple[int, list[str]]]:
    """Stream (line number, tokens) of every non-blank line; fewer than ``min_fields`` tokens is an error.

    A generator, not a list: image_attribute_labels.txt has 3.7 million lines.
    """
    try:
        with open(_required(path), encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                parts = line.split(None, maxsplit) if maxsplit >= 0 else line.split()
                if not parts:
                    continue
                if len(parts) < min_fields:
                    raise DataError(f"{path}:{lineno}: expected at least {min_fields} fields, got {line.strip()!r}")
                yield lineno, parts
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text: {err}") from None


def _int(path: Path, lineno: int, token: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {token!r} is not an integer") from None


def _id_table(path: Path, value_is_int: bool) -> dict[int, Any]:
    """``<id> <value>`` files: a dict id -> value, duplicate ids refused."""
    table: dict[int, Any] = {}
    for lineno, parts in _rows(path, 2, maxsplit=1):
        key = _int(path, lineno, parts[0])
        value = parts[1].strip()
        if key in table:
            raise DataError(f"{path}:{lineno}: id {key} appears twice")
        table[key] = _int(path, lineno, value) if value_is_int else value
    return table


def _attribute_names_file(root: Path) -> Path:
    """The release ships attributes.txt beside the CUB_200_2011 folder (tarball top level); users move it around."""
    candidates = [root / "attributes.txt", root / "attributes" / "attributes.txt", root.parent / "attributes.txt"]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"{candidates[0]} is missing (also looked for {candidates[1]} and {candidates[2]})")


def read_cub_index(root: Path | str) -> CubIndex:
    """Parse and cross-check CUB's text files; every image id must appear in every per-image file."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (datasets.cub.prepare.root must be the CUB_200_2011 folder)")
    images_file = root / "images.txt"
    paths = _id_table(images_file, value_is_int=False)
    labels_file = root / "image_class_labels.txt"
    class_of = _id_table(labels_file, value_is_int=True)
    split_file = root / "train_test_split.txt"
    train_flag = _id_table(split_file, value_is_int=True)
    classes_file = root / "classes.txt"
    classes = _id_table(classes_file, value_is_int=False)
    attr_names_file = _attribute_names_file(root)
    attr_names = _id_table(attr_names_file, value_is_int=False)
    labels_path = _required(root / "attributes" / "image_attribute_labels.txt")

    ids = sorted(paths)
    if not ids:
        raise DataError(f"{images_file} lists no images")
    for path, table in ((labels_file, class_of), (split_file, train_flag)):
        if set(table) != set(paths):
            extra, missing = sorted(set(table) - set(paths))[:5], sorted(set(paths) - set(table))[:5]
            raise DataError(f"{path}: image ids do not match {images_file} (ids not in images.txt: {extra}, "
                            f"images without a line: {missing})")
    if set(train_flag.values()) - {0, 1}:
        raise DataError(f"{split_file}: is_training_image must be 0 or 1")
    class_ids = sorted(classes)
    class_row = {c: k for k, c in enumerate(class_ids)}
    unknown = sorted({c for c in class_of.values() if c not in class_row})
    if unknown:
        raise DataError(f"{labels_file}: class ids {unknown[:5]} are not in {classes_file}")
    attr_ids = sorted(attr_names)
    attr_col = {a: j for j, a in enumerate(attr_ids)}
    row_of = {i: r for r, i in enumerate(ids)}

    n, a = len(ids), len(attr_ids)
    attributes = np.zeros((n, a), dtype=np.uint8)
    seen = np.zeros((n, a), dtype=np.int32)
    # The release has a few lines with extra fields; only the first four (image, attribute, is_present,
    # certainty) are read, so those lines parse like the others.
    for lineno, parts in _rows(labels_path, 4):
        img, att, present = (_int(labels_path, lineno, t) for t in parts[:3])
        r, c = row_of.get(img), attr_col.get(att)
        if r is None:
            raise DataError(f"{labels_path}:{lineno}: image id {img} is not in {images_file}")
        if c is None:
            raise DataError(f"{labels_path}:{lineno}: attribute id {att} is not in {attr_names_file}")
        if present not in (0, 1):
            raise DataError(f"{labels_path}:{lineno}: is_present must be 0 or 1, got {present}")
        attributes[r, c] = present
        seen[r, c] += 1
    bad = np.argwhere(seen != 1)
    if len(bad):
        r, c = bad[0]
        what = "has no line" if seen[r, c] == 0 else "has several lines"
        raise DataError(f"{labels_path}: image {ids[r]} attribute {attr_ids[c]} {what} "
                        f"({len(bad)} image/attribute pairs are not listed exactly once)")

    return CubIndex(
        root=root,
        image_ids=np.asarray(ids, dtype=np.int64),
        image_paths=[paths[i] for i in ids],
        labels=np.asarray([class_row[class_of[i]] for i in ids], dtype=np.int64),
        is_train=np.asarray([train_flag[i] for i in ids], dtype=np.uint8),
        attributes=attributes,
        class_names=[classes[c] for c in class_ids],
        attribute_names=[attr_names[j] for j in attr_ids],
    )


def read_image(path: Path, size: int) -> np.ndarray:
    """An RGB image resized to size x size as uint8 [3, size, size]; an unreadable file is a DataError naming it."""
    return read_rgb(path, size, "images.txt")


def image_path(root: Path, rel: str) -> Path:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise DataError(f"{root / 'images.txt'}: image path {rel!r} must stay inside {root / 'images'}")
    return root / "images" / Path(*parts)
