"""Cityscapes' stand-in: small procedural street scenes (road, sidewalk, terrain, buildings, walls, fences, trees,
poles with signs and lights, cars, trucks, buses, trams, two-wheelers, pedestrians and riders under a sky),
written in Liu et al.'s ``.npy`` layout under ``<out>/raw_standin`` and read back by the real reader. It is NOT
Cityscapes; it exists so the pipeline runs end to end on a CPU in minutes.

The 7-class labels are the 19 classes' Cityscapes categories (flat, construction, object, nature, sky, human,
vehicle); the 2-class labels are this stand-in's own choice, static scene (0) against humans and vehicles (1).
Depth is the scene's inverse depth (0 in the sky and under the ego-vehicle strip = invalid, as in the release).
All three auxiliaries are therefore **helpful** by construction (``aux_roles.json``): the coarse labels are
functions of the main labels, and depth is the geometry that places every object.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.datasets.cityscapes.config import Config
from pipeline.datasets.cityscapes.sources import CLASS_NAMES, IGNORE, write_sample

STANDIN_DIR = "raw_standin"
SOURCE_ATTR = "stand-in (procedural streets, not Cityscapes)"
STANDIN_AUX_ROLES = {"segmentation_7": "helpful", "segmentation_2": "helpful", "depth": "helpful"}

_C = {name: k for k, name in enumerate(CLASS_NAMES)}
# class -> category (the 7-class label) and -> dynamic (the stand-in's 2-class label)
CATEGORY = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6], np.int64)
DYNAMIC = (CATEGORY >= 5).astype(np.int64)
_PALETTE = np.array([
    (0.50, 0.25, 0.50), (0.90, 0.40, 0.85), (0.40, 0.40, 0.40), (0.55, 0.55, 0.65), (0.70, 0.60, 0.60),
    (0.60, 0.60, 0.60), (0.95, 0.65, 0.15), (0.85, 0.85, 0.05), (0.40, 0.55, 0.15), (0.60, 0.95, 0.60),
    (0.30, 0.50, 0.70), (0.85, 0.10, 0.25), (0.95, 0.05, 0.05), (0.05, 0.05, 0.55), (0.05, 0.05, 0.30),
    (0.05, 0.25, 0.40), (0.05, 0.30, 0.40), (0.05, 0.05, 0.90), (0.45, 0.05, 0.15)])
# Movable objects: class -> (width, height) as fractions of the image height at the bottom row, and draw odds.
_OBJECTS = {"car": (0.9, 0.45, 8), "truck": (1.1, 0.7, 2), "bus": (1.4, 0.8, 1.5), "train": (1.8, 0.8, 0.5),
            "motorcycle": (0.35, 0.35, 1), "bicycle": (0.3, 0.3, 1), "person": (0.15, 0.5, 5), "rider": (0.2, 0.55, 1)}


def render_street(rng: np.random.Generator, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """One scene in the layout's shapes: image [H, W, 3] in [0, 1], label_19/7/2 [H, W], depth [H, W, 1]."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    horizon = h * rng.uniform(0.38, 0.5)
    below = np.clip((yy - horizon) / (h - horizon), 0, 1)  # 0 at the horizon, 1 at the bottom row
    label = np.full((h, w), _C["sky"], np.int64)
    disparity = np.zeros((h, w))
    ground = yy >= horizon
    disparity[ground] = 0.02 + below[ground]
    centre = w * rng.uniform(0.35, 0.65)
    road_half = w * (0.04 + below * rng.uniform(0.45, 0.7))
    walk = road_half + w * (0.01 + below * rng.uniform(0.1, 0.25))
    off = np.abs(xx - centre)
    label[ground] = np.where(off < road_half, _C["road"], np.where(off < walk, _C["sidewalk"], _C["terrain"]))[ground]
    # Facades left and right of the road, behind everything on the ground.
    x = 0
    while x < w:
        seg = int(rng.integers(max(2, w // 10), max(3, w // 4)))
        top = horizon - h * rng.uniform(0.1, 0.45)
        kind = _C["building"] if rng.random() < 0.8 else _C["wall"]
        cols = (xx >= x) & (xx < x + seg)
        m = cols & (yy >= top) & (yy < horizon + 1) & (np.abs(xx - centre) > w * 0.06)
        label[m], disparity[m] = kind, 0.02
        x += seg
    for _ in range(int(rng.integers(1, 4))):  # trees, in front of the facades
        cx, cy = rng.uniform(0, w), horizon - h * rng.uniform(0.0, 0.25)
        rx, ry = w * rng.uniform(0.04, 0.1), h * rng.uniform(0.06, 0.15)
        m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        label[m], disparity[m] = _C["vegetation"], 0.05
    if rng.random() < 0.5:  # a fence along one sidewalk
        side = 1 if rng.random() < 0.5 else -1
        m = (side * (xx - centre) > walk) & (yy > horizon) & (yy < horizon + h * 0.08 + below * h * 0.2)
        label[m], disparity[m] = _C["fence"], 0.03 + below[m]
    # Poles with a sign or a light, then vehicles and people, far to near (painter's order).
    things = [("pole", None)] * int(rng.integers(0, 3))
    names = list(_OBJECTS)
    odds = np.array([_OBJECTS[n][2] for n in names])
    things += [(str(rng.choice(names, p=odds / odds.sum())), None) for _ in range(int(rng.integers(2, 7)))]
    bases = np.sort(rng.uniform(horizon + 1, h, size=len(things)))
    for (name, _), base in zip(things, bases):
        s = (base - horizon) / (h - horizon)
        d = 0.02 + s
        if name == "pole":
            half = w * 0.01 + 0.5
            cx = centre + (1 if rng.random() < 0.5 else -1) * (w * (0.04 + s * 0.6) + w * 0.03)
            top = base - h * (0.15 + 0.6 * s)
            m = (np.abs(xx - cx) < half) & (yy <= base) & (yy >= top)
            label[m], disparity[m] = _C["pole"], d
            head = _C["traffic sign"] if rng.random() < 0.6 else _C["traffic light"]
            m = (np.abs(xx - cx) < half * 3) & (yy >= top - h * 0.05 * (0.3 + s)) & (yy < top + h * 0.04 * (0.3 + s))
            label[m], disparity[m] = head, d
            continue
        bw, bh, _ = _OBJECTS[name]
        cx = centre + rng.uniform(-1, 1) * (w * (0.04 + s * 0.5))
        half_w, height = 0.5 * bw * h * (0.15 + s), bh * h * (0.15 + s)
        m = (np.abs(xx - cx) < half_w) & (yy <= base) & (yy >= base - height)
        if name in ("person", "rider"):  # rounder silhouettes
            m &= ((xx - cx) / max(half_w, 0.5)) ** 2 + ((yy - (base - height / 2)) / max(height / 2, 0.5)) ** 2 < 1.2
        label[m], disparity[m] = _C[name], d
    # The image: class colour x texture x light, per-scene tint and noise.
    albedo = _PALETTE[label] * rng.uniform(0.85, 1.15, size=(len(_PALETTE), 3))[label]
    texture = 1 + 0.08 * np.sin(xx * rng.uniform(0.5, 2.0) + yy * rng.uniform(0.2, 1.0))[..., None]
    light = rng.uniform(0.7, 1.2) * (0.85 + 0.15 * below[..., None])
    image = np.clip(albedo * texture * light + rng.normal(0, 0.03, (h, w, 3)), 0, 1)
    # Unlabelled pixels: the ego-vehicle strip at the bottom and some object boundaries.
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    ignore = (edge & (rng.random((h, w)) < 0.3)) | (yy >= h - max(1, round(h * rng.uniform(0.0, 0.08))))
    depth = np.where(ignore & (yy >= h - h * 0.08), 0.0, disparity)
    out = {"image": image.astype(np.float32), "depth": depth[..., None].astype(np.float32)}
    for kind, lut in (("label_19", None), ("label_7", CATEGORY), ("label_2", DYNAMIC)):
        lab = label if lut is None else lut[label]
        out[kind] = np.where(ignore, IGNORE, lab).astype(np.float32)
    return out


def write_standin(root: Path, cfg: Config) -> None:
    """Draw the stand-in into ``root/{train,val}/{image,label_19,label_7,label_2,depth}/<index>.npy``;
    deterministic from ``cfg.standin_seed`` (one generator, scenes in order; ``np.save`` writes no timestamps)."""
    rng = np.random.default_rng(cfg.standin_seed)
    size = (int(cfg.standin_size[0]), int(cfg.standin_size[1]))
    for split, count in (("train", cfg.standin_train), ("val", cfg.standin_test)):
        for i in range(count):
            write_sample(root, split, i, render_street(rng, size))
