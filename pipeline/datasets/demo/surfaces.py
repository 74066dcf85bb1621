"""The demo's generator: height-field surfaces h(u, v) of four families sampled on a G x G grid in raster order.

Each surface is one point cloud of G² points (u, v, h(u, v)) plus Gaussian jitter, point ``i * G + j`` at grid
row i, column j, so any per-point quantity reshapes to a G x G image. Per point it gives:

- the clean part (three per family; global id = 3 · family + local part), defined on the clean surface:
  bump (a Gaussian bump): peak / slope / base by the height relative to its amplitude; ridge (a Gaussian ridge
  along a random line): crest / flank / base likewise; saddle (a·(α u'² − β v'²) in rotated axes): rise / neck /
  fall by the sign and size of the height; step (a tanh step across a random line): low / riser / high by the
  signed distance to the line. A random tilt plane (same for all parts) is added after the parts are set.
- ``labels``: the main task's annotation, the clean part with a fraction ``label_noise`` of points redrawn
  uniformly among the family's parts (noisy annotations, in every split alike).
- ``helpful``: the clean local part (0..2, the family left out): the same parts without the annotation noise,
  as toy2d's helpful task is the main task's function with less noise.
- ``variant``: per surface, whether its amplitude a (drawn in [0.4, 0.8]) is above 0.6: a human-definable finer
  class of each family ("tall bump" / "low bump", ...), MAXL's Human baseline's finer labels on this dataset.
- ``harmful``: a per-point target drawn at random, N(0, ``harmful_std``²), regressed with the squared error:
  nothing to learn, and at the default std its loss (≈ 4) dwarfs the main task's (≈ 1), so under equal
  weights its noise dominates the shared trunk's gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.datasets.demo.config import CATEGORIES, Config

PART_NAMES = {"bump": ("peak", "slope", "base"), "ridge": ("crest", "flank", "base"),
              "saddle": ("rise", "neck", "fall"), "step": ("low", "riser", "high")}
PARTS = 3  # parts per family; global part id = 3 * category + local part


@dataclass
class Surfaces:
    points: np.ndarray  # float32 [N, 3, G²]
    labels: np.ndarray  # int64 [N, G²] global part ids, with annotation noise
    helpful: np.ndarray  # int64 [N, G²] clean local part
    harmful: np.ndarray  # float32 [N, G²] noise
    category: np.ndarray  # int64 [N]
    variant: np.ndarray  # int64 [N] 1: tall (amplitude above TALL), 0: low


TALL = 0.6  # amplitude threshold of the ``variant`` finer class (the midpoint of the amplitude's range)
VARIANT_NAMES = ("low", "tall")


def _rotated(u: np.ndarray, v: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(theta), np.sin(theta)
    return c * u + s * v, -s * u + c * v


def _surface(family: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, float]:
    """Clean height [G, G], local part [G, G] and amplitude of one surface of ``family``."""
    a = rng.uniform(0.4, 0.8)
    if family in ("bump", "ridge"):
        s = rng.uniform(0.3, 0.5)
        if family == "bump":
            cu, cv = rng.uniform(-0.4, 0.4, size=2)
            dist2 = (u - cu) ** 2 + (v - cv) ** 2
        else:
            along, _ = _rotated(u, v, rng.uniform(0, np.pi))
            dist2 = (along - rng.uniform(-0.3, 0.3)) ** 2
        t = np.exp(-dist2 / (2 * s * s))
        part = np.where(t > 0.55, 0, np.where(t > 0.12, 1, 2))
        return a * t, part, a
    if family == "saddle":
        ru, rv = _rotated(u, v, rng.uniform(0, np.pi))
        t = rng.uniform(0.6, 1.4) * ru ** 2 - rng.uniform(0.6, 1.4) * rv ** 2
        part = np.where(t > 0.15, 0, np.where(t < -0.15, 2, 1))
        return a * t, part, a
    d, _ = _rotated(u, v, rng.uniform(0, 2 * np.pi))
    d = d - rng.uniform(-0.3, 0.3)
    w = rng.uniform(0.12, 0.25)
    part = np.where(d < -w, 0, np.where(d > w, 2, 1))
    return a * np.tanh(d / w), part, a


def generate(cfg: Config) -> Surfaces:
    """``cfg.shapes_per_category`` surfaces per family, in family order; deterministic given ``cfg``."""
    rng = np.random.default_rng(cfg.seed)
    g = cfg.grid
    axis = np.linspace(-1.0, 1.0, g)
    u, v = np.meshgrid(axis, axis, indexing="ij")  # point i * G + j is (axis[i], axis[j])
    points, labels, category, amplitude = [], [], [], []
    for c, family in enumerate(CATEGORIES):
        for _ in range(cfg.shapes_per_category):
            h, part, a = _surface(family, u, v, rng)
            amplitude.append(a)
            tilt = rng.normal(0, cfg.tilt, size=3)
            xyz = np.stack([u, v, h + tilt[0] + tilt[1] * u + tilt[2] * v]).reshape(3, -1)
            points.append(xyz + rng.normal(0, cfg.jitter, size=xyz.shape))
            labels.append(PARTS * c + part.reshape(-1))
            category.append(c)
    clean = np.asarray(labels, dtype=np.int64)
    cat = np.asarray(category, dtype=np.int64)
    local = clean - PARTS * cat[:, None]
    relabel = rng.random(clean.shape) < cfg.label_noise
    noisy = np.where(relabel, PARTS * cat[:, None] + rng.integers(0, PARTS, size=clean.shape), clean)
    harmful = rng.normal(0, cfg.harmful_std, size=clean.shape).astype(np.float32)
    variant = (np.asarray(amplitude) > TALL).astype(np.int64)
    return Surfaces(np.asarray(points, dtype=np.float32), noisy, local, harmful, cat, variant)
