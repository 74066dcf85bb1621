"""CUB-200-2011: bird species (main task) with 312 binary visual attributes as auxiliaries (AuxiLearn §5.2, App. B.1).

Two sources, one loader:

* ``source: path`` ingests the user's ``CUB_200_2011`` folder (the official text files and JPEGs).
* ``source: standin`` (default) first writes a procedurally generated **stand-in** in exactly the same
  layout (real JPEGs, the same text files) into ``<out>/raw_standin`` and then ingests that with the
  same loader. The stand-in is NOT CUB: its "species" are combinations of a drawn shape, colour,
  pattern and size on cluttered backgrounds, small enough that a CPU trains a seed in about a minute.
  It exists so the pipeline runs end to end without the 1.1 GB download, and so that a weighting
  method can be checked against auxiliaries whose worth is known by construction; results on it say
  nothing about birds.

Stand-in attributes and their roles (written to ``aux_roles.json`` beside ``cub.h5`` and returned by
``load`` as ``TaskData.meta["aux_roles"]``; real CUB has no roles). 36 attributes, in this order:

* **helpful** (16, columns 1-16 of the targets): ``has_shape::{circle,square,triangle,cross,diamond}``,
  ``has_primary_color::{red,green,blue,yellow,magenta,cyan}``, ``has_pattern::{solid,striped,spotted}``,
  ``has_size::{small,large}``: the species' own traits, visible in the image (the big object) and
  together determining the species; each label flipped with probability ``standin_attribute_noise``.
* **harmful** (14, columns 17-30): ``has_decoy_shape::{...}`` (5), ``has_decoy_color::{...}`` (6),
  ``has_decoy_pattern::{...}`` (3): the traits of a second, slightly smaller *decoy* object drawn in every
  image with a shape, colour and pattern chosen at random per image, independent of the species. They are
  visible, so a network can learn them, but they describe the wrong object in the same vocabulary as the
  species' traits: learning them is meant to pull the shared features toward a cue that says nothing
  about the species (label noise as for the helpful ones).
* **irrelevant** (6, columns 31-36): ``has_random_tag::{1..6}``: a fair coin per image, not drawn and
  unrelated to the image and the species.

The roles are by construction, not by measurement. With 5-shot species labels (the default split) and
the small CNN, short runs show Equal weighting of all 36 attributes ahead of STL, but NOT behind Equal
weighting of the 16 helpful ones (within seed noise): with one linear head per attribute on 256 pooled
features, the decoy and random-tag attributes cost this network nothing measurable (numbers in the
README). A report can still check whether φ ranks the helpful group above the others.

Prepared result: one HDF5 file ``cub.h5`` (images uint8 [N, 3, S, S], labels int64 [N] 0-based,
attributes uint8 [N, A], is_train uint8 [N], image_ids, image paths, class and attribute names, and
the per-channel mean/std of the official training images used for z-scoring); for the stand-in also
``aux_roles.json`` and the raw layout under ``raw_standin/``.

Splits (App. B.1): K images per class from the official train split carry the species label
(``k_shot``; 0 = all), the aux set (20 images in the paper) is taken from those, and the official
test split is halved into validation and test.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Literal, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pydantic import Field, model_validator
from torch import Tensor, nn

from pipeline.schema import StrictModel
from pipeline.registry import DATASETS
from pipeline.datasets.base import DataError, Dataset, TaskData
from pipeline.datasets.shared.images import ChannelNorm, random_crops
from pipeline.registry import MODELS
from pipeline.models.base import MultiTaskNet

H5_NAME = "cub.h5"
STANDIN_DIR = "raw_standin"
AUX_ROLES_FILE = "aux_roles.json"  # stand-ins only: {auxiliary task: role}, beside the prepared data
AUX_ROLES = ("helpful", "irrelevant", "harmful")
EVAL_CHUNK = 256  # images per forward pass in evaluation: bounded memory for ResNet-18 at 224 px
CROP_FRACTION = 224 / 256  # App. B.1: 256-px images, 224-px crops

# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


class CubConfig(StrictModel):
    """``datasets.cub.prepare``: where the images come from and how they are stored."""

    source: Literal["standin", "path"] = Field(
        "standin", description="standin: generate the small procedural stand-in; path: ingest the folder at root")
    root: str | None = Field(
        None, description="the CUB_200_2011 folder (with images.txt, images/, attributes/); required for source=path")
    image_size: int | None = Field(
        None, ge=16, description="images are resized to image_size x image_size; "
        "default 256 for the real data (App. B.1), 40 for the stand-in")
    standin_num_classes: int = Field(
        60, ge=2, description="stand-in only: number of species (distinct shape/colour/pattern/size combinations)")
    standin_images_per_class: int = Field(
        36, ge=2, description="stand-in only: images per species, half official-train and half official-test")
    standin_seed: int = Field(0, description="stand-in only: seed of the generator (same seed, same files)")
    standin_attribute_noise: float = Field(
        0.1, ge=0, lt=0.5, description="stand-in only: probability that each per-image attribute label is flipped")

    @model_validator(mode="after")
    def _check(self) -> "CubConfig":
        if self.source == "path" and not self.root:
            raise ValueError("root is required when source is 'path': set datasets.cub.prepare.root "
                             "to your CUB_200_2011 folder")
        if self.source == "standin" and self.standin_num_classes > len(STANDIN_SPECIES):
            raise ValueError(f"standin_num_classes = {self.standin_num_classes} exceeds the "
                             f"{len(STANDIN_SPECIES)} distinct stand-in species")
        return self

    @property
    def resolved_image_size(self) -> int:
        if self.image_size is not None:
            return self.image_size
        return 256 if self.source == "path" else 40


class CubModelConfig(StrictModel):
    """``datasets.cub.model``: the primary network (read by train, evaluate and report)."""

    backbone: Literal["small_cnn", "resnet18"] = Field(
        "small_cnn", description="primary network backbone: small_cnn (CPU-sized, for the stand-in) or resnet18")
    backbone_width: int = Field(32, ge=1, description="small_cnn only: channels of the first block (doubled per block)")
    pretrained_weights: str | None = Field(
        None, description="resnet18 only: local path of an ImageNet ResNet-18 state dict; never downloaded")

    @model_validator(mode="after")
    def _check(self) -> "CubModelConfig":
        if self.pretrained_weights and self.backbone != "resnet18":
            raise ValueError("pretrained_weights needs backbone: resnet18")
        return self


class CubSplitConfig(StrictModel):
    """``datasets.cub.split``: K-shot main-task labels, an aux set from them, the official test split halved."""

    seed: int = Field(0, description="seed of the K-shot sample, the aux set and the val/test halving")
    k_shot: int = Field(5, ge=0, description="species-labelled images per class from the official train split; 0 = all")
    aux: int = Field(20, ge=1, description="images moved from the (K-shot) training set to the auxiliary set")


# ----------------------------------------------------------------------------------------------
# Auxiliary roles of a stand-in (shared with the other stand-ins)
# ----------------------------------------------------------------------------------------------


def write_aux_roles(folder: Path, roles: dict[str, str]) -> None:
    """Write a stand-in's ``{auxiliary task: "helpful" | "irrelevant" | "harmful"}`` beside its prepared data.

    Only generated data has roles (its generator knows what each auxiliary is); real data never does, so
    ``load`` sets ``TaskData.meta["aux_roles"]`` only when this file is there.
    """
    unknown = sorted(set(roles.values()) - set(AUX_ROLES))
    if unknown:
        raise ValueError(f"unknown auxiliary roles {unknown}; known: {', '.join(AUX_ROLES)}")
    (Path(folder) / AUX_ROLES_FILE).write_text(json.dumps(roles, indent=1) + "\n")


def read_aux_roles(folder: Path, aux_names: Sequence[str]) -> dict[str, str] | None:
    """The roles written by ``write_aux_roles`` (None without the file), checked against the auxiliaries."""
    path = Path(folder) / AUX_ROLES_FILE
    if not path.is_file():
        return None
    try:
        roles = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(roles, dict) or set(roles) != set(aux_names) or not set(roles.values()) <= set(AUX_ROLES):
        raise DataError(f"{path}: expected one role ({', '.join(AUX_ROLES)}) for each auxiliary task "
                        f"{list(aux_names)[:5]}...")
    return {name: roles[name] for name in aux_names}


# ----------------------------------------------------------------------------------------------
# The CUB text files
# ----------------------------------------------------------------------------------------------


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
    if not path.is_file():
        raise DataError(f"{path} is missing (listed in images.txt)")
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale while still >= size (much faster)
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path} is not a readable image: {err}") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _image_path(root: Path, rel: str) -> Path:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise DataError(f"{root / 'images.txt'}: image path {rel!r} must stay inside {root / 'images'}")
    return root / "images" / Path(*parts)


def ingest_cub(root: Path | str, out_file: Path | str, image_size: int, attrs: dict[str, Any]) -> None:
    """Read a CUB layout and write the prepared HDF5 file (``attrs`` become file attributes)."""
    index = read_cub_index(root)
    n, s = len(index.image_ids), image_size
    text = h5py.string_dtype("utf-8")
    # Per-channel sums over the official training images, for z-scoring (images only, no labels: using
    # the whole official train split does not leak K-shot labels or any test image).
    total = np.zeros(3)
    total_sq = np.zeros(3)
    pixels = 0
    # track_times=False: no creation timestamps, so the same inputs give the same bytes (and hashes).
    with h5py.File(out_file, "w") as f:
        images = f.create_dataset("images", shape=(n, 3, s, s), dtype=np.uint8, track_times=False)
        for row, rel in enumerate(index.image_paths):
            arr = read_image(_image_path(index.root, rel), s)
            images[row] = arr
            if index.is_train[row]:
                flat = arr.reshape(3, -1).astype(np.float64) / 255.0
                total += flat.sum(1)
                total_sq += (flat**2).sum(1)
                pixels += flat.shape[1]
        if pixels == 0:
            raise DataError(f"{index.root / 'train_test_split.txt'}: no image is marked as a training image")
        mean = total / pixels
        std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 1e-12))

        def put(name: str, data: Any, dtype: Any = None) -> None:
            f.create_dataset(name, data=data, dtype=dtype, track_times=False)

        put("labels", index.labels, np.int64)
        put("attributes", index.attributes, np.uint8)
        put("is_train", index.is_train, np.uint8)
        put("image_ids", index.image_ids, np.int64)
        put("image_paths", index.image_paths, text)
        put("class_names", index.class_names, text)
        put("attribute_names", index.attribute_names, text)
        f.attrs["image_size"] = s
        f.attrs["mean"] = mean
        f.attrs["std"] = std
        for key, value in attrs.items():
            f.attrs[key] = "" if value is None else value


# ----------------------------------------------------------------------------------------------
# The stand-in generator
# ----------------------------------------------------------------------------------------------

STANDIN_SHAPES = ("circle", "square", "triangle", "cross", "diamond")
STANDIN_COLOURS = {"red": (215, 45, 40), "green": (40, 165, 60), "blue": (45, 80, 215),
                   "yellow": (225, 205, 45), "magenta": (195, 50, 195), "cyan": (40, 190, 205)}
STANDIN_PATTERNS = ("solid", "striped", "spotted")
STANDIN_SIZES = ("small", "large")
STANDIN_POSITIONS = ("left", "centre", "right")  # per image, not per species, and not an attribute
STANDIN_RANDOM_TAGS = 6  # irrelevant attributes: coin flips per image, never drawn
# Attribute groups in CUB's naming style (one-hot within a group before label noise), with their role as
# auxiliaries for the species (see the module docstring): the species' own visible traits help; the decoy's
# traits (a second, smaller shape drawn at random per image) harm; the random tags are irrelevant.
STANDIN_ATTRIBUTE_GROUPS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("has_shape", STANDIN_SHAPES, "helpful"),
    ("has_primary_color", tuple(STANDIN_COLOURS), "helpful"),
    ("has_pattern", STANDIN_PATTERNS, "helpful"),
    ("has_size", STANDIN_SIZES, "helpful"),
    ("has_decoy_shape", STANDIN_SHAPES, "harmful"),
    ("has_decoy_color", tuple(STANDIN_COLOURS), "harmful"),
    ("has_decoy_pattern", STANDIN_PATTERNS, "harmful"),
    ("has_random_tag", tuple(str(k) for k in range(1, STANDIN_RANDOM_TAGS + 1)), "irrelevant"),
)
STANDIN_ATTRIBUTES = [f"{group}::{value}" for group, values, _ in STANDIN_ATTRIBUTE_GROUPS for value in values]
STANDIN_AUX_ROLES = {f"{group}::{value}": role for group, values, role in STANDIN_ATTRIBUTE_GROUPS for value in values}
STANDIN_SPECIES = list(itertools.product(STANDIN_SHAPES, STANDIN_COLOURS, STANDIN_PATTERNS, STANDIN_SIZES))
_RAW_WIDTH, _RAW_HEIGHTS = 64, (48, 64)  # raw JPEGs vary in height, like photos, and are squashed on ingest
_SIZE_RADIUS = {"small": 0.17, "large": 0.28}  # object radius as a fraction of the shorter image side
_DECOY_RADIUS = 0.14  # the decoy is a little smaller than the small species


def _standin_background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Muted low-frequency colour noise plus pixel noise and a few palette-coloured clutter strokes."""
    coarse = rng.uniform(70, 170, size=(4, 4, 3)) * rng.uniform(0.7, 1.1, size=3)
    bg = np.asarray(Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC),
                    dtype=np.float64)
    img = Image.fromarray((bg + rng.normal(0, 10, size=bg.shape)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    palette = list(STANDIN_COLOURS.values())
    for _ in range(int(rng.integers(1, 4))):  # clutter in the species colours makes colour less trivial
        colour = tuple(int(v) for v in palette[int(rng.integers(len(palette)))])
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.uniform(-w / 3, w / 3), y0 + rng.uniform(-h / 3, h / 3)
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
    return img


def _shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices of ``shape`` (circle excepted) rotated by ``angle`` radians."""
    if shape == "square":
        base = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        base = [(x * 0.8, y * 0.8) for x, y in base]
    elif shape == "diamond":
        base = [(0, -1.1), (0.8, 0), (0, 1.1), (-0.8, 0)]
    elif shape == "triangle":
        base = [(0, -1.1), (1, 0.75), (-1, 0.75)]
    elif shape == "cross":
        t = 0.33
        base = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t),
                (-t, -t)]
    else:
        raise ValueError(shape)
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in base]


def _draw_shape(mask: Image.Image, shape: str, cx: float, cy: float, r: float, angle: float) -> None:
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_shape_points(shape, cx, cy, r, angle), fill=255)


def _fill(rng: np.random.Generator, colour: str, pattern: str, w: int, h: int) -> Image.Image:
    """A w x h fill of ``colour`` with ``pattern`` marks. Colour jitter: brightness and a per-channel shift,
    so "red" is a range of colours, not one RGB value."""
    base = np.asarray(STANDIN_COLOURS[colour], dtype=np.float64) * rng.uniform(0.75, 1.15) + rng.normal(0, 14, 3)
    fill = np.empty((h, w, 3))
    fill[:] = base
    if pattern != "solid":
        yy, xx = np.mgrid[0:h, 0:w]
        if pattern == "striped":
            theta = rng.uniform(0, np.pi)
            period = rng.uniform(5, 7)
            marks = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period) > 0.2
        else:
            period = rng.uniform(6, 8)
            ox, oy = rng.uniform(0, period, 2)
            marks = (((xx + ox) % period - period / 2) ** 2 + ((yy + oy) % period - period / 2) ** 2) < 2.2**2
        fill[marks] *= 0.35
    return Image.fromarray(fill.clip(0, 255).astype(np.uint8))


def _standin_image(rng: np.random.Generator, shape: str, colour: str, pattern: str, size: str,
                   position: str, decoy: tuple[str, str, str]) -> Image.Image:
    """The species' object (shape, colour, pattern, size) at ``position``, and a smaller decoy (its shape,
    colour and pattern drawn independently of the species) beside it, on a cluttered background."""
    w, h = _RAW_WIDTH, int(rng.integers(_RAW_HEIGHTS[0], _RAW_HEIGHTS[1] + 1))
    img = _standin_background(rng, w, h)
    side = min(w, h)
    r = side * _SIZE_RADIUS[size] * rng.uniform(0.85, 1.15)
    cx = w * {"left": 0.28, "centre": 0.5, "right": 0.72}[position] + rng.uniform(-0.06, 0.06) * w
    cy = h * 0.5 + rng.uniform(-0.15, 0.15) * h
    # The decoy: where it least overlaps the object (the farthest of a few random spots); the object is drawn last.
    rd = side * _DECOY_RADIUS * rng.uniform(0.9, 1.1)
    spots = np.stack([rng.uniform(rd, w - rd, 6), rng.uniform(rd, h - rd, 6)], 1)
    dx, dy = spots[int(np.argmax(np.hypot(spots[:, 0] - cx, spots[:, 1] - cy)))]
    for (shp, col, pat), x, y, radius in ((decoy, dx, dy, rd), ((shape, colour, pattern), cx, cy, r)):
        mask = Image.new("L", (w, h), 0)
        _draw_shape(mask, shp, x, y, radius, rng.uniform(-0.26, 0.26))
        img = Image.composite(_fill(rng, col, pat, w, h), img, mask)
    noisy = np.asarray(img, dtype=np.float64) + rng.normal(0, 8, size=(h, w, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def write_standin(root: Path, cfg: CubConfig) -> None:
    """Write the stand-in in CUB's layout: JPEGs under images/<class>/ and CUB's text files.

    Deterministic from ``cfg.standin_seed``: one generator draws everything in a fixed order, and
    PIL's JPEG encoder writes no timestamps, so the same settings give byte-identical files.
    """
    rng = np.random.default_rng(cfg.standin_seed)
    chosen = np.sort(rng.choice(len(STANDIN_SPECIES), size=cfg.standin_num_classes, replace=False))
    species = [STANDIN_SPECIES[i] for i in chosen]
    class_names = [f"{k + 1:03d}.{sz.title()}_{col.title()}_{pat.title()}_{shp.title()}"
                   for k, (shp, col, pat, sz) in enumerate(species)]
    col_of = {name: j for j, name in enumerate(STANDIN_ATTRIBUTES)}
    tags = np.asarray([j for j, name in enumerate(STANDIN_ATTRIBUTES) if STANDIN_AUX_ROLES[name] == "irrelevant"])
    paths, labels, is_train, attributes = [], [], [], []
    per_class = cfg.standin_images_per_class
    for k, (shp, col, pat, sz) in enumerate(species):
        folder = root / "images" / class_names[k]
        folder.mkdir(parents=True, exist_ok=True)
        train_flags = np.zeros(per_class, dtype=bool)
        train_flags[rng.permutation(per_class)[: per_class // 2]] = True
        for i in range(per_class):
            position = STANDIN_POSITIONS[int(rng.integers(len(STANDIN_POSITIONS)))]
            decoy = tuple(str(values[int(rng.integers(len(values)))])
                          for values in (STANDIN_SHAPES, tuple(STANDIN_COLOURS), STANDIN_PATTERNS))
            img = _standin_image(rng, shp, col, pat, sz, position, decoy)  # type: ignore[arg-type]
            rel = f"{class_names[k]}/{class_names[k][4:]}_{i + 1:04d}.jpg"
            img.save(root / "images" / rel, format="JPEG", quality=90)
            truth = np.zeros(len(STANDIN_ATTRIBUTES), dtype=np.uint8)
            for group, value in zip(("has_shape", "has_primary_color", "has_pattern", "has_size", "has_decoy_shape",
                                     "has_decoy_color", "has_decoy_pattern"), (shp, col, pat, sz, *decoy)):
                truth[col_of[f"{group}::{value}"]] = 1
            flips = rng.random(len(truth)) < cfg.standin_attribute_noise  # crowd-sourced-style label noise
            truth = truth ^ flips.astype(np.uint8)
            truth[tags] = rng.random(len(tags)) < 0.5  # irrelevant: a coin flip per image, nothing drawn
            paths.append(rel)
            labels.append(k)
            is_train.append(bool(train_flags[i]))
            attributes.append(truth)
    write_cub_text_files(root, class_names, STANDIN_ATTRIBUTES, paths, labels, is_train, np.stack(attributes))


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------


def _h5_text(values: Any) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


@DATASETS.register("cub")
class Cub(Dataset):
    """CUB-200-2011 (or its procedural stand-in): species classification with attribute auxiliaries.

    ``load`` also sets the z-score statistics used by ``batch_transform``: the per-channel mean/std of
    the official training images, computed in ``prepare`` and stored in cub.h5.
    """

    name = "cub"
    Config = CubConfig
    SplitConfig = CubSplitConfig
    ModelConfig = CubModelConfig
    default_split = {"seed": 0, "k_shot": 5, "aux": 20}
    # Adam, τ = 0.1 and weight decay from App. B.1's grid. On the default stand-in (small_cnn width 32,
    # 2 CPU cores) one seed takes about 35 s and the validation loss still improves near the last step;
    # 1000 steps of 32 at 5-shot are ~110 epochs of the 280 training images, near the paper's 100 epochs.
    default_train = {"steps": 1000, "batch_size": 32, "optimizer": "adam", "lr": 1e-3, "weight_decay": 5e-4,
                     "aux_loss_scale": 0.1, "eval_every": 50}
    # φ lr 1e-3, chosen on the stand-in's validation loss (mean over the linear and nonlinear networks, 3 seeds:
    # 1.637 vs 1.701 at 1e-2, where the nonlinear network's weights grew to ~10³ and training diverged).
    default_methods = {"bilevel": {"lr": 1e-3}}

    def __init__(self) -> None:
        self._norm: ChannelNorm | None = None

    # -- files ---------------------------------------------------------------------------------

    def prepare(self, cfg: CubConfig, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        if cfg.source == "standin":
            root = out_dir / STANDIN_DIR
            write_standin(root, cfg)
            write_aux_roles(out_dir, dict(STANDIN_AUX_ROLES))
            source = "stand-in (procedural, not CUB-200-2011)"
        else:
            root = Path(cfg.root).expanduser()  # type: ignore[arg-type]
            source = "CUB-200-2011"
        ingest_cub(root, out_dir / H5_NAME, cfg.resolved_image_size, {"source": source})

    def load(self, folder: Path) -> TaskData:
        path = Path(folder) / H5_NAME
        if not path.is_file():
            raise DataError(f"{path} is missing: run `dvc repro prepare@{self.name}`")
        need = ("images", "labels", "attributes", "is_train", "image_ids", "class_names", "attribute_names")
        try:
            with h5py.File(path, "r") as f:
                absent = [k for k in need if k not in f] + [k for k in ("mean", "std") if k not in f.attrs]
                if absent:
                    raise DataError(f"{path}: missing {', '.join(absent)}")
                images, labels, attributes = f["images"][...], f["labels"][...], f["attributes"][...]
                is_train, image_ids = f["is_train"][...], f["image_ids"][...]
                class_names, attribute_names = _h5_text(f["class_names"][...]), _h5_text(f["attribute_names"][...])
                mean, std = np.asarray(f.attrs["mean"], dtype=np.float64), np.asarray(f.attrs["std"], dtype=np.float64)
                attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        except OSError as err:
            raise DataError(f"{path} is not a readable HDF5 file: {err}") from None
        n = len(images)
        c, a = len(class_names), len(attribute_names)
        problems = []
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or images.dtype != np.uint8:
            problems.append(f"images should be uint8 [N, 3, S, S], got {images.dtype} {images.shape}")
        if labels.shape != (n,) or attributes.shape != (n, a) or is_train.shape != (n,) or image_ids.shape != (n,):
            problems.append(f"labels {labels.shape}, attributes {attributes.shape}, is_train {is_train.shape}, "
                            f"image_ids {image_ids.shape} do not match {n} images and {a} attribute names")
        elif n and (labels.min() < 0 or labels.max() >= c):
            problems.append(f"labels must lie in [0, {c})")
        elif attributes.size and attributes.max() > 1:
            problems.append("attributes must be 0/1")
        if ChannelNorm.problem(mean, std):
            problems.append(ChannelNorm.problem(mean, std))
        if problems:
            raise DataError(f"{path}: " + "; ".join(problems))

        self._norm = ChannelNorm(mean, std)
        targets = torch.cat([torch.from_numpy(labels).float()[:, None], torch.from_numpy(attributes).float()], 1)
        meta = {
            "source": attrs.get("source", ""),
            "num_classes": c,
            "num_attributes": a,
            "class_names": class_names,
            "is_train": is_train.astype(bool),
            "image_ids": image_ids,
            "image_size": int(images.shape[-1]),
            "mean": mean.tolist(),
            "std": std.tolist(),
        }
        roles = read_aux_roles(Path(folder), attribute_names)
        if roles is not None:
            meta["aux_roles"] = roles
        return TaskData(torch.from_numpy(images), targets, ["species", *attribute_names], meta)

    # -- splits --------------------------------------------------------------------------------

    def make_splits(self, data: TaskData, split_cfg: CubSplitConfig) -> dict[str, np.ndarray]:
        """K species labels per class from the official train split; aux drawn from those; test halved.

        As in AuxiLearn §5.2, every official training image is trained on (all attribute labels are
        available) but only K per class keep their species label: the rest form the ``unlabelled`` split.
        """
        rng = np.random.default_rng(split_cfg.seed)
        is_train = np.asarray(data.meta["is_train"], dtype=bool)
        labels = data.targets[:, 0].long().numpy()
        official_train = np.flatnonzero(is_train)
        if split_cfg.k_shot == 0:
            labelled = official_train
        else:
            picks = []
            for c in range(int(data.meta["num_classes"])):
                members = official_train[labels[official_train] == c]
                if len(members) < split_cfg.k_shot:
                    raise ValueError(f"datasets.cub.split.k_shot = {split_cfg.k_shot}: class {c} has only "
                                     f"{len(members)} official training images")
                picks.append(rng.choice(members, size=split_cfg.k_shot, replace=False))
            labelled = np.concatenate(picks)
        if split_cfg.aux >= len(labelled):
            raise ValueError(f"datasets.cub.split.aux = {split_cfg.aux} leaves no training image out of the "
                             f"{len(labelled)} species-labelled ones (k_shot = {split_cfg.k_shot})")
        labelled = rng.permutation(labelled)
        aux = labelled[: split_cfg.aux]
        unlabelled = np.setdiff1d(official_train, labelled)
        train = np.setdiff1d(official_train, aux)
        test_pool = rng.permutation(np.flatnonzero(~is_train))
        half = len(test_pool) // 2
        val, test = test_pool[:half], test_pool[half:]
        return {k: np.sort(v).astype(np.int64) for k, v in
                {"train": train, "aux": aux, "val": val, "test": test, "unlabelled": unlabelled}.items()}

    # -- model, losses, metrics ----------------------------------------------------------------

    def build_model(self, data: TaskData, cfg: CubModelConfig, aux_outputs: int = 0) -> MultiTaskNet:
        if aux_outputs:
            raise ValueError("cub: generated auxiliary tasks are not supported (its auxiliaries are the attributes)")
        return MODELS.get("image_multihead")(
            num_classes=int(data.meta["num_classes"]), num_attributes=data.num_tasks - 1,
            backbone=cfg.backbone, width=cfg.backbone_width, pretrained_weights=cfg.pretrained_weights)

    def batch_transform(self, x: Tensor, y: Tensor, train: bool,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """uint8 [B, 3, S, S] -> z-scored float [B, 3, s, s], s = round(S·224/256); targets unchanged.

        Training: a random s x s crop and a horizontal flip per image; the draws come from ``generator``
        on the CPU (so runs repeat on any device) and only the indexing runs on ``x``'s device.
        Evaluation: the centre crop.
        """
        if self._norm is None:
            raise RuntimeError("Cub.batch_transform needs the normalisation statistics: call load() first")
        _, _, h, w = x.shape
        crop = max(1, round(min(h, w) * CROP_FRACTION))
        if train:
            x = random_crops(x, crop, flip=True, generator=generator)
        else:
            top, left = (h - crop) // 2, (w - crop) // 2
            x = x[:, :, top: top + crop, left: left + crop]
        return self._norm(x), y

    def per_task_losses(self, outputs: tuple[Tensor, Tensor], targets: Tensor) -> Tensor:
        """Column 0: species cross-entropy; columns 1..A: binary cross-entropy of each attribute. [B, 1+A]."""
        species_logits, attribute_logits = outputs
        main = F.cross_entropy(species_logits, targets[:, 0].long(), reduction="none")
        aux = F.binary_cross_entropy_with_logits(attribute_logits, targets[:, 1:], reduction="none")
        return torch.cat([main[:, None], aux], dim=1)

    def _evaluate(self, model: nn.Module, data: TaskData, indices: Tensor) -> dict[str, float]:
        """Top-1/top-3 accuracy (percent) and mean species cross-entropy, in chunks, eval mode, no grad."""
        top1 = top3 = 0
        loss = 0.0
        for (logits, _), y in self.evaluation_outputs(model, data, indices, EVAL_CHUNK):
            labels = y[:, 0].long()
            best = logits.topk(min(3, logits.shape[1]), dim=1).indices
            top1 += int((best[:, 0] == labels).sum())
            top3 += int((best == labels[:, None]).any(1).sum())
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        n = len(indices)
        return {"top1": 100.0 * top1 / n, "top3": 100.0 * top3 / n, "main_loss": loss / n}

    def metrics(self, model: nn.Module, data: TaskData, indices: Tensor) -> dict[str, float]:
        """``top1``/``top3``: species accuracy in percent (as the paper's tables); ``main_loss``: mean cross-entropy."""
        return self._evaluate(model, data, indices)

    def main_loss(self, model: nn.Module, data: TaskData, indices: Tensor) -> float:
        """Validation main loss in chunks (the base class's single forward pass would not fit ResNet-18 on CUB)."""
        return self._evaluate(model, data, indices)["main_loss"]
