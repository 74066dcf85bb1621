"""The MNIST stand-in: synthetic handwritten-looking digits, 28 x 28 grayscale, white strokes on black, with hidden
sub-classes (writing styles) inside each digit, so a learned auxiliary task has structure to find, as in the
CIFAR stand-in.

Each digit is a few polylines (arcs sampled as points) in a glyph frame of height 2 (y pointing down). A hidden
sub-class is a fixed writing style (stroke thickness, slant and width of the glyph), distinct within a digit;
each image then adds its own jitter (scale, rotation, shift, a per-vertex wobble, thickness and ink) and pixel
noise. Strokes are drawn as anti-aliased capsules (distance to the nearest segment) on a 2x supersampled grid.
The stand-in is NOT MNIST: its numbers say nothing about MNIST.
"""
from __future__ import annotations

from itertools import product

import numpy as np

from pipeline.datasets.shared.raw_images import RawImages
from pipeline.core.progress import counted

SIZE = 28  # MNIST's images
BOX = 20.0  # MNIST's digits fit a 20 x 20 box centred in the image: the glyph frame's height in pixels
_SS = 2  # supersampling factor
THICKNESS = (1.5, 2.4, 3.4)  # stroke width, px: the style's first axis
SLANT = (-0.3, 0.0, 0.3)  # x += slant · (−y): right-leaning for positive
ASPECT = (0.75, 1.1)  # glyph width multiplier
STYLES = tuple(product(THICKNESS, SLANT, ASPECT))  # 18 writing styles to pick sub-classes from


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, k: int = 10) -> list[tuple[float, float]]:
    """Points of an elliptic arc from angle ``a0`` to ``a1`` degrees (0 = right, 90 = down)."""
    t = np.deg2rad(np.linspace(a0, a1, k))
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in t]


# Each digit: polylines in the glyph frame (x in about [-0.6, 0.6], y in [-1, 1], y down).
GLYPHS: tuple[list[list[tuple[float, float]]], ...] = (
    [_arc(0, 0, 0.55, 0.95, -90, 270, 16)],                                              # 0
    [[(-0.3, -0.65), (0.05, -1.0), (0.05, 1.0)]],                                        # 1
    [_arc(0, -0.45, 0.5, 0.5, -165, 30, 9) + [(-0.55, 1.0), (0.6, 1.0)]],                # 2
    [_arc(0, -0.5, 0.45, 0.47, -160, 90, 9), _arc(0, 0.47, 0.52, 0.52, -90, 160, 9)],   # 3
    [[(0.25, 1.0), (0.25, -1.0), (-0.55, 0.4), (0.6, 0.4)]],                             # 4
    [[(0.5, -1.0), (-0.4, -1.0), (-0.45, -0.1)] + _arc(0, 0.42, 0.52, 0.55, -120, 155, 9)],  # 5
    [[(0.4, -1.0), (-0.25, -0.35)] + _arc(0, 0.45, 0.5, 0.52, -150, 210, 14)],           # 6
    [[(-0.55, -1.0), (0.55, -1.0), (-0.15, 1.0)]],                                       # 7
    [_arc(0, -0.5, 0.4, 0.45, -90, 270, 12), _arc(0, 0.48, 0.5, 0.5, -90, 270, 12)],    # 8
    [_arc(0, -0.45, 0.48, 0.5, 0, 360, 14), [(0.48, -0.45), (0.3, 1.0)]],               # 9
)


def _segments(digit: int) -> np.ndarray:
    """[G, 2, 2]: the glyph's segments (start, end points)."""
    return np.array([(a, b) for line in GLYPHS[digit] for a, b in zip(line[:-1], line[1:])], dtype=np.float64)


def digit_styles(num_classes: int, subclasses: int, rng: np.random.Generator) -> np.ndarray:
    """[num_classes, subclasses] indices into ``STYLES``, distinct within each digit."""
    return np.stack([rng.permutation(len(STYLES))[:subclasses] for _ in range(num_classes)])


def render_digits(classes: np.ndarray, subs: np.ndarray, styles: np.ndarray, rng: np.random.Generator,
                  noise: float) -> np.ndarray:
    """Images uint8 [n, 1, 28, 28] of the given (digit, sub-class) pairs; all randomness from ``rng``."""
    n = len(classes)
    # Per-image draws, in a fixed order (the same seed gives the same images).
    scale = rng.uniform(0.85, 1.05, n) * BOX / 2  # px per glyph unit
    angle = np.deg2rad(rng.uniform(-10, 10, n))
    shift = rng.uniform(-1.5, 1.5, (n, 2))
    thick_gain = rng.uniform(0.85, 1.15, n)
    ink = rng.uniform(190, 255, n)
    pixel_noise = rng.normal(0, noise, (n, 1, SIZE, SIZE)) if noise > 0 else 0.0
    s = SIZE * _SS
    grid = (np.arange(s) + 0.5) / _SS  # supersampled pixel centres, px
    px = np.stack(np.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2).astype(np.float32)  # [P, 2] (x, y)
    out = np.zeros((n, s * s))
    for c in np.unique(classes):
        rows = np.flatnonzero(classes == c)
        seg = _segments(int(c))  # [G, 2, 2]
        wobble = rng.normal(0, 0.05, (len(rows),) + seg.shape)
        thick, slant, aspect = (np.array([STYLES[i][j] for i in styles[c, subs[rows]]]) for j in range(3))
        pts = seg[None] + wobble  # [r, G, 2, 2]
        x = (pts[..., 0] - slant[:, None, None] * pts[..., 1]) * aspect[:, None, None]
        y = pts[..., 1]
        cos, sin = np.cos(angle[rows])[:, None, None], np.sin(angle[rows])[:, None, None]
        k = scale[rows][:, None, None]
        # float32 from here: the distance field dominates the stand-in's preparation time.
        xr = ((x * cos - y * sin) * k + SIZE / 2 + shift[rows, 0, None, None]).astype(np.float32)
        yr = ((x * sin + y * cos) * k + SIZE / 2 + shift[rows, 1, None, None]).astype(np.float32)
        # Distance of every supersampled pixel to the nearest segment, coordinate by coordinate ([r, G, P]).
        ax, ay = xr[..., 0, None], yr[..., 0, None]
        dx, dy = xr[..., 1, None] - ax, yr[..., 1, None] - ay
        rx, ry = px[:, 0] - ax, px[:, 1] - ay
        t = np.clip((rx * dx + ry * dy) / np.maximum(dx * dx + dy * dy, 1e-9), 0, 1)
        dist = np.sqrt(((rx - t * dx) ** 2 + (ry - t * dy) ** 2).min(1))  # [r, P]
        half = thick[:, None] * thick_gain[rows][:, None] / 2
        out[rows] = np.clip(half - dist + 0.5, 0, 1) * ink[rows][:, None]  # a 1-px anti-aliased edge
    small = out.reshape(n, 1, SIZE, _SS, SIZE, _SS).mean(axis=(3, 5))
    return np.clip(np.rint(small + pixel_noise), 0, 255).astype(np.uint8)


def generate_digits(num_classes: int, subclasses: int, train_per_class: int, test_per_class: int, noise: float,
                    seed: int, chunk: int = 500) -> RawImages:
    """The stand-in in memory: per digit, ``train_per_class`` official-train then test images (mixed digits within
    each split, as the real files), the hidden sub-classes balanced within each digit and split."""
    rng = np.random.default_rng(seed)
    styles = digit_styles(num_classes, subclasses, rng)
    classes, subs, is_train = [], [], []
    for train, per_class in ((True, train_per_class), (False, test_per_class)):
        order = rng.permutation(num_classes * per_class)
        cls = np.repeat(np.arange(num_classes), per_class)
        sub = np.concatenate([rng.permutation(np.arange(per_class) % subclasses) for _ in range(num_classes)])
        classes.append(cls[order])
        subs.append(sub[order])
        is_train.append(np.full(len(order), train))
    cls, sub = np.concatenate(classes), np.concatenate(subs)
    starts = counted(range(0, len(cls), chunk), "prepare mnist: stand-in digits drawn", len(cls), "images",
                     size=lambda i: min(chunk, len(cls) - i))
    images = np.concatenate([render_digits(cls[i:i + chunk], sub[i:i + chunk], styles, rng, noise) for i in starts])
    return RawImages(images, np.concatenate(is_train), {"class": cls.astype(np.int64)},
                     {"class": [str(d) for d in range(10)]}, sub.astype(np.int64))
