"""The procedural stand-in of the 32 x 32 classification datasets (CIFAR-10, CIFAR-100, SVHN): shape
families as the main classes, each with hidden appearance sub-classes.

Every class holds ``subclasses`` **hidden sub-classes**, each a fixed appearance variant (foreground colour,
texture, background style and base orientation) that changes the image a lot, with random placement, scale,
rotation jitter, colour jitter, distractor blobs and pixel noise. Colours, textures and backgrounds are drawn
from palettes shared by all classes, so appearance alone does not give the class; a useful learned auxiliary
task has sub-structure to find. CIFAR-100's stand-in uses the shape as the fine label and pairs of related
shapes (``STANDIN_COARSE``) as the coarse label.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STANDIN_SHAPES = ("circle", "ring", "square", "diamond", "triangle", "star", "cross", "tee", "bar", "crescent")
STANDIN_COARSE = ("round", "quadrilateral", "pointed", "crossing", "elongated")  # shape k is in group k // 2
STANDIN_COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (45, 85, 225), "yellow": (230, 210, 40),
                   "magenta": (200, 50, 200), "cyan": (40, 200, 210), "white": (235, 235, 235),
                   "orange": (240, 140, 30)}
STANDIN_TEXTURES = ("solid", "stripes", "checker", "outline", "dots")
STANDIN_BACKGROUNDS = ("dark", "light", "tinted", "gradient")
STANDIN_ORIENTATIONS = (0.0, 90.0, 180.0, 270.0)  # a sub-class's base rotation, degrees
IMAGE_SIZE = 32  # the stand-in's images are IMAGE_SIZE x IMAGE_SIZE, like CIFAR's and SVHN's

_SS = 2  # supersampling factor (anti-aliased edges)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of ``shape`` in its own frame (radius 1, v pointing down the image)."""
    au, av = np.abs(u), np.abs(v)
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 1.0
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if shape == "square":
        return np.maximum(au, av) <= 0.8
    if shape == "diamond":
        return au / 0.6 + av / 1.05 <= 1.0
    if shape == "triangle":  # apex up at (0, -1), base at v = 0.7
        return (v <= 0.7) & (au <= 0.58 * (v + 1.0))
    if shape == "star":
        theta = np.arctan2(v, u) + np.pi / 2
        return np.sqrt(r2) <= 0.55 + 0.45 * np.cos(5 * theta)
    if shape == "cross":
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if shape == "tee":
        return ((au <= 1.0) & (v >= -1.0) & (v <= -0.45)) | ((au <= 0.28) & (av <= 1.0))
    if shape == "bar":
        return (au <= 1.05) & (av <= 0.33)
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.45) ** 2 + v * v >= 0.8**2)
    raise ValueError(f"unknown stand-in shape {shape!r}")


@dataclass(frozen=True)
class SubclassStyle:
    """A hidden sub-class: the fixed appearance of every image it generates (up to per-image jitter)."""

    colour: str
    texture: str
    background: str
    orientation: float


def standin_styles(num_classes: int, subclasses: int, rng: np.random.Generator) -> list[list[SubclassStyle]]:
    """Per class, ``subclasses`` styles with distinct colours and distinct textures (so variants look different)."""
    colours = list(STANDIN_COLOURS)
    styles = []
    for _ in range(num_classes):
        col = rng.permutation(len(colours))[:subclasses]
        tex = rng.permutation(len(STANDIN_TEXTURES))[:subclasses]
        bg = rng.integers(len(STANDIN_BACKGROUNDS), size=subclasses)
        ori = rng.integers(len(STANDIN_ORIENTATIONS), size=subclasses)
        styles.append([SubclassStyle(colours[c], STANDIN_TEXTURES[t], STANDIN_BACKGROUNDS[b], STANDIN_ORIENTATIONS[o])
                       for c, t, b, o in zip(col, tex, bg, ori)])
    return styles


def render_standin(classes: np.ndarray, subs: np.ndarray, styles: list[list[SubclassStyle]],
                   rng: np.random.Generator, noise: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Images uint8 [n, 3, size, size] of the given (class, sub-class) pairs; all randomness from ``rng``. The
    scene is laid out in 32-px units and sampled at ``size`` px (STL-10's stand-in: 96), so every size draws the
    same scenes from the same seed; only the pixel noise is per pixel."""
    n, s = len(classes), size * _SS
    # Per-image draws, in a fixed order (the same seed gives the same images).
    radius = rng.uniform(0.24, 0.36, n) * IMAGE_SIZE
    cx = rng.uniform(0.0, 1.0, n) * (IMAGE_SIZE - 1.6 * radius) + 0.8 * radius
    cy = rng.uniform(0.0, 1.0, n) * (IMAGE_SIZE - 1.6 * radius) + 0.8 * radius
    jitter = rng.uniform(-25, 25, n)
    fg_gain = rng.uniform(0.75, 1.15, n)
    fg_shift = rng.normal(0, 14, (n, 3))
    bg_base = rng.uniform(0, 1, (n, 3))
    grad_angle = rng.uniform(0, 2 * np.pi, n)
    tex_period = rng.uniform(4.0, 6.0, n)
    tex_angle = rng.uniform(0, np.pi, n)
    tex_phase = rng.uniform(0, 2 * np.pi, n)
    blob = rng.random(n) < 0.5
    blob_xy = rng.uniform(0, IMAGE_SIZE, (n, 2))
    blob_r = rng.uniform(2.0, 4.0, n)
    blob_colour = rng.uniform(30, 230, (n, 3))
    pixel_noise = rng.normal(0, noise, (n, 3, size, size)) if noise > 0 else 0.0

    style = [styles[c][k] for c, k in zip(classes, subs)]
    angle = np.deg2rad(np.array([st.orientation for st in style]) + jitter)
    coords = (np.arange(s) + 0.5) / _SS * (IMAGE_SIZE / size)  # supersampled pixel centres, in 32-px units
    x = coords[None, None, :] - cx[:, None, None]
    y = coords[None, :, None] - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (x * cos + y * sin) / radius[:, None, None]
    v = (-x * sin + y * cos) / radius[:, None, None]
    inside = np.zeros((n, s, s), dtype=bool)
    outline_core = np.zeros((n, s, s), dtype=bool)
    for c in np.unique(classes):
        rows = classes == c
        shape = STANDIN_SHAPES[c]
        inside[rows] = _shape_mask(shape, u[rows], v[rows])
        outline_core[rows] = _shape_mask(shape, u[rows] / 0.62, v[rows] / 0.62)

    # Texture: where the foreground colour is darkened (or, for "outline", only the rim is drawn).
    along = (x * np.cos(tex_angle)[:, None, None] + y * np.sin(tex_angle)[:, None, None])
    phase = 2 * np.pi / tex_period[:, None, None]
    stripes = np.sin(along * phase + tex_phase[:, None, None]) > 0.25
    checker = (np.floor(x / (tex_period[:, None, None] / 2)) + np.floor(y / (tex_period[:, None, None] / 2))) % 2 == 0
    dots = (np.cos(x * phase) + np.cos(y * phase)) > 1.0
    texture = np.array([st.texture for st in style])
    dark = np.zeros_like(inside)
    dark[texture == "stripes"] = stripes[texture == "stripes"]
    dark[texture == "checker"] = checker[texture == "checker"]
    dark[texture == "dots"] = dots[texture == "dots"]
    is_outline = texture == "outline"
    inside[is_outline] &= ~outline_core[is_outline]

    fg = np.array([STANDIN_COLOURS[st.colour] for st in style], dtype=np.float64) * fg_gain[:, None] + fg_shift
    background = np.array([st.background for st in style])
    bg = np.empty((n, 3))
    bg[background == "dark"] = 15 + 50 * bg_base[background == "dark"]
    bg[background == "light"] = 175 + 60 * bg_base[background == "light"]
    tinted = (background == "tinted") | (background == "gradient")
    bg[tinted] = 40 + 170 * bg_base[tinted]
    ramp = (x * np.cos(grad_angle)[:, None, None] + y * np.sin(grad_angle)[:, None, None]) / IMAGE_SIZE
    ramp = np.where((background == "gradient")[:, None, None], ramp, 0.0)
    canvas = bg[:, :, None, None] * (1.0 + 0.9 * ramp[:, None])  # [n, 3, s, s]
    blob_d2 = (x - blob_xy[:, 0, None, None]) ** 2 + (y - blob_xy[:, 1, None, None]) ** 2
    near_blob = blob_d2 <= blob_r[:, None, None] ** 2
    near_blob &= blob[:, None, None]
    canvas = np.where(near_blob[:, None], blob_colour[:, :, None, None], canvas)
    paint = fg[:, :, None, None] * np.where(dark, 0.35, 1.0)[:, None]
    canvas = np.where(inside[:, None], paint, canvas)
    small = canvas.reshape(n, 3, size, _SS, size, _SS).mean(axis=(3, 5))
    return np.clip(np.rint(small + pixel_noise), 0, 255).astype(np.uint8)
