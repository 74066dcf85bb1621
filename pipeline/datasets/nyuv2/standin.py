"""NYUv2's stand-in: small procedural RGB-D "rooms" (floor, walls, ceiling, with beds, tables, chairs, cabinets,
sofas, TVs, books, balls, pictures and windows), written in the preprocessed ``.npy`` layout under
``<out>/raw_standin`` and read back by the same reader as real data. It is NOT NYUv2; it exists so the
pipeline runs end to end on a CPU in minutes, and so that a weighting method can be checked against
auxiliaries whose worth is known by construction.

Roles of the stand-in's auxiliaries (``aux_roles.json`` beside ``nyuv2.h5``, returned by ``load`` as
``TaskData.meta["aux_roles"]``; real NYUv2 has no roles):

- ``normal``: **helpful**. The rendered surface normals of the scene's geometry (floor up, ceiling down,
  walls and box faces sideways), the same geometry that decides most classes.
- ``depth``: **irrelevant**. NOT the rendered depth: a smooth random field (0.5-6 m, a random 3 x 4 grid
  bicubically upsampled; ``random_depth_field``) drawn from its own generator, unrelated to the scene and
  unpredictable from the image; only the Kinect-like holes (0 = invalid, shared with the normals) are the
  scene's. The stand-in's depth metrics therefore measure nothing but the field's spread.

Irrelevant is not harmless under a plain sum: the field cannot be predicted, so its L1 loss stays near its
starting value and its gradient keeps competing with segmentation (on short runs Equal loses about 10 mIoU
points to STL and to Equal without depth; numbers in the README).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.datasets.nyuv2.config import Config
from pipeline.datasets.nyuv2.sources import CLASS_NAMES, IGNORE, write_preprocessed_sample

STANDIN_DIR = "raw_standin"  # the stand-in's .npy layout, beside the prepared file
SOURCE_ATTR = "stand-in (procedural rooms, not NYUv2)"  # the prepared file's ``source`` attribute

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


def write_standin(root: Path, cfg: Config) -> None:
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
        for i in range(count):
            scene = render_standin_scene(rng, size)
            true_depth = scene["depth"]
            scene["depth"] = np.where(true_depth > 0, random_depth_field(field_rng, size)[..., None], 0.0
                                      ).astype(np.float32)
            write_preprocessed_sample(root, split, i, scene)
