"""The CUB stand-in: a procedurally generated dataset written in exactly CUB-200-2011's layout (real JPEGs, the
same text files), so the same reader ingests it. It is NOT CUB: its "species" are combinations of a drawn
shape, colour, pattern and size on cluttered backgrounds, small enough that a CPU trains a seed in about a
minute. It exists so the pipeline runs end to end without the 1.1 GB download, and so that a weighting method
can be checked against auxiliaries whose worth is known by construction; results on it say nothing about birds.

Stand-in attributes and their roles (written to ``aux_roles.json`` beside ``cub.h5`` and returned by ``load``
as ``TaskData.meta["aux_roles"]``; real CUB has no roles). 36 attributes, in this order:

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
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw

from pipeline.datasets.cub.sources import write_cub_text_files



class StandinSettings(Protocol):
    """What the generator reads of ``datasets.cub.prepare`` (``config.Config``)."""

    standin_seed: int
    standin_num_classes: int
    standin_images_per_class: int
    standin_attribute_noise: float

STANDIN_DIR = "raw_standin"  # where ``prepare`` writes the stand-in's raw layout, inside the prepared folder
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


def write_standin(root: Path, cfg: StandinSettings) -> None:
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
