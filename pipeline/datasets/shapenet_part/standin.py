"""ShapeNet Part's procedural stand-in: shapes built from trimesh primitives (6 categories, 18 parts, one part per
group of primitives), sampled like the mesh source and written in the ``hdf5`` layout (format a) into
``<prepared>/raw_standin``, which the real hdf5 reader then ingests. It is NOT ShapeNet (6 categories, not 16)
and results on it say nothing about ShapeNet; it is small enough that a CPU trains a seed in minutes."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import trimesh

from pipeline.datasets.shapenet_part.config import STANDIN_CATEGORY_COUNT, ShapeNetPartConfig
from pipeline.datasets.shapenet_part.sources import (PartShapes, normalise_unit_sphere, sample_labelled_surface,
                                                     write_hdf5_release)

STANDIN_DIR = "raw_standin"  # inside the prepared folder
STANDIN_SOURCE = "stand-in (procedural, not ShapeNet Part)"  # the prepared file's ``source`` attribute

Primitive = tuple[trimesh.Trimesh, int]  # a mesh and its part index within the category


def _placed(mesh: trimesh.Trimesh, at: Sequence[float], rotation: np.ndarray | None = None) -> trimesh.Trimesh:
    """``mesh`` rotated (about its origin) and then moved to ``at``."""
    transform = np.eye(4)
    if rotation is not None:
        transform[:3, :3] = rotation
    transform[:3, 3] = at
    mesh.apply_transform(transform)
    return mesh


def _rot(axis: Sequence[float], angle: float) -> np.ndarray:
    return trimesh.transformations.rotation_matrix(angle, axis)[:3, :3]


def _box(size: Sequence[float], at: Sequence[float], rotation: np.ndarray | None = None) -> trimesh.Trimesh:
    return _placed(trimesh.creation.box(extents=size), at, rotation)


def _cylinder(radius: float, height: float, at: Sequence[float], rotation: np.ndarray | None = None
              ) -> trimesh.Trimesh:
    return _placed(trimesh.creation.cylinder(radius=radius, height=height, sections=16), at, rotation)


def _table(rng: np.random.Generator) -> list[Primitive]:
    """top, legs: a slab on four corner legs or one central pedestal."""
    w, d, t, h = rng.uniform(1.2, 2.0), rng.uniform(0.7, 1.3), rng.uniform(0.05, 0.12), rng.uniform(0.6, 1.0)
    out = [(_box((w, d, t), (0, 0, h)), 0)]
    if rng.random() < 0.25:
        out += [(_cylinder(rng.uniform(0.08, 0.15), h, (0, 0, h / 2)), 1),
                (_cylinder(rng.uniform(0.3, 0.45), 0.05, (0, 0, 0.025)), 1)]
    else:
        r, inset = rng.uniform(0.03, 0.07), rng.uniform(0.05, 0.15)
        for sx in (-1, 1):
            for sy in (-1, 1):
                out.append((_cylinder(r, h, (sx * (w / 2 - inset), sy * (d / 2 - inset), h / 2)), 1))
    return out


def _lamp(rng: np.random.Generator) -> list[Primitive]:
    """base, pole, shade."""
    base_h, pole_h = rng.uniform(0.04, 0.12), rng.uniform(0.8, 1.5)
    tilt = rng.uniform(-0.3, 0.3)
    top = np.array([np.sin(tilt) * pole_h, 0, base_h + np.cos(tilt) * pole_h])
    shade_h, shade_r = rng.uniform(0.25, 0.45), rng.uniform(0.2, 0.4)
    shade = trimesh.creation.cone(radius=shade_r, height=shade_h, sections=16)  # base at z=0, apex up
    return [(_cylinder(rng.uniform(0.2, 0.35), base_h, (0, 0, base_h / 2)), 0),
            (_cylinder(rng.uniform(0.02, 0.04), pole_h, top / 2 + [0, 0, base_h / 2], _rot((0, 1, 0), tilt)), 1),
            (_placed(shade, top - [0, 0, shade_h * 0.6]), 2)]


def _mug(rng: np.random.Generator) -> list[Primitive]:
    """body, handle."""
    r, h = rng.uniform(0.3, 0.45), rng.uniform(0.6, 1.0)
    major = rng.uniform(0.2, 0.3) * h / 0.8
    handle = trimesh.creation.torus(major_radius=major, minor_radius=rng.uniform(0.05, 0.08), major_sections=16,
                                    minor_sections=8)
    return [(_cylinder(r, h, (0, 0, h / 2)), 0),  # the handle's ring is centred outside the body: mostly visible
            (_placed(handle, (r + 0.6 * major, 0, h * rng.uniform(0.45, 0.55)), _rot((1, 0, 0), np.pi / 2)), 1)]


def _rocket(rng: np.random.Generator) -> list[Primitive]:
    """body, nose, fins."""
    r, h, nose = rng.uniform(0.12, 0.2), rng.uniform(1.2, 2.0), rng.uniform(0.3, 0.6)
    fins = int(rng.integers(3, 5))
    fin_h, fin_w = rng.uniform(0.3, 0.5), rng.uniform(0.15, 0.3)
    out = [(_cylinder(r, h, (0, 0, h / 2)), 0),
           (_placed(trimesh.creation.cone(radius=r, height=nose, sections=16), (0, 0, h)), 1)]
    for i in range(fins):
        angle = 2 * np.pi * i / fins
        out.append((_box((fin_w, 0.02, fin_h), (np.cos(angle) * (r + fin_w / 2), np.sin(angle) * (r + fin_w / 2),
                                                  fin_h / 2), _rot((0, 0, 1), angle)), 2))
    return out


def _airplane(rng: np.random.Generator) -> list[Primitive]:
    """fuselage, wings, tail, engines (along x, up is z)."""
    length, r = rng.uniform(1.6, 2.4), rng.uniform(0.1, 0.16)
    span, chord = rng.uniform(1.6, 2.6), rng.uniform(0.25, 0.45)
    wing_x = rng.uniform(-0.1, 0.15) * length
    fuselage = trimesh.creation.capsule(height=length, radius=r, count=[12, 12])
    out = [(_placed(fuselage, (0, 0, 0), _rot((0, 1, 0), np.pi / 2)), 0),
           (_box((chord, span, 0.03), (wing_x, 0, -r * 0.3)), 1),
           (_box((chord * 0.6, 0.03, rng.uniform(0.25, 0.4)), (-length / 2, 0, r + 0.12)), 2),
           (_box((chord * 0.5, span * rng.uniform(0.3, 0.45), 0.03), (-length / 2, 0, r * 0.5)), 2)]
    for side in (-1, 1):
        y = side * span * rng.uniform(0.2, 0.3)
        out.append((_cylinder(r * 0.6, chord * 1.2, (wing_x, y, -r * 0.3 - r * 0.7), _rot((0, 1, 0), np.pi / 2)), 3))
    return out


def _chair(rng: np.random.Generator) -> list[Primitive]:
    """seat, back, legs, arms (arms on half the chairs)."""
    w, d, seat_h, back_h = rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.0), rng.uniform(0.7, 0.9), rng.uniform(0.6, 1.0)
    lean = rng.uniform(0.0, 0.25)
    out = [(_box((w, d, 0.08), (0, 0, seat_h)), 0),
           (_box((w, 0.06, back_h), (0, d / 2 + np.sin(lean) * back_h / 2, seat_h + back_h / 2), _rot((1, 0, 0), lean)),
            1)]
    r = rng.uniform(0.03, 0.06)
    for sx in (-1, 1):
        for sy in (-1, 1):
            out.append((_cylinder(r, seat_h, (sx * (w / 2 - 0.06), sy * (d / 2 - 0.06), seat_h / 2)), 2))
    if rng.random() < 0.5:
        for sx in (-1, 1):
            out.append((_box((0.06, d * 0.8, 0.06), (sx * w / 2, 0, seat_h + rng.uniform(0.2, 0.3))), 3))
    return out


# name, synset-like id, part names, builder
STANDIN_CATEGORIES: tuple[tuple[str, str, tuple[str, ...], Callable[[np.random.Generator], list[Primitive]]], ...] = (
    ("Table", "90000001", ("top", "leg"), _table),
    ("Lamp", "90000002", ("base", "pole", "shade"), _lamp),
    ("Mug", "90000003", ("body", "handle"), _mug),
    ("Rocket", "90000004", ("body", "nose", "fin"), _rocket),
    ("Airplane", "90000005", ("fuselage", "wing", "tail", "engine"), _airplane),
    ("Chair", "90000006", ("seat", "back", "leg", "arm"), _chair),
)
if len(STANDIN_CATEGORIES) != STANDIN_CATEGORY_COUNT:  # the schema checks standin_categories against it
    raise RuntimeError("config.STANDIN_CATEGORY_COUNT must equal len(STANDIN_CATEGORIES)")
_Z_UP_TO_Y_UP = _rot((1, 0, 0), -np.pi / 2)  # ShapeNet's up axis is y


def standin_shape(category: int, rng: np.random.Generator, points: int) -> tuple[np.ndarray, np.ndarray]:
    """One stand-in shape: primitives jittered by ``rng``, turned a little about the up axis, sampled to
    ``points`` points by area (each point's part = its primitive's), centred and scaled into the unit sphere."""
    primitives = STANDIN_CATEGORIES[category][3](rng)
    mesh = trimesh.util.concatenate([m for m, _ in primitives])
    face_parts = np.concatenate([np.full(len(m.faces), p, dtype=np.int64) for m, p in primitives])
    turn = _rot((0, 0, 1), rng.uniform(-0.2, 0.2))
    mesh.apply_transform(np.vstack([np.hstack([_Z_UP_TO_Y_UP @ turn, np.zeros((3, 1))]), [0, 0, 0, 1]]))
    xyz, part, _ = sample_labelled_surface(mesh, face_parts, points, rng)
    lo, hi = xyz.min(0), xyz.max(0)
    centre = (lo + hi) / 2
    return normalise_unit_sphere(xyz, centre, float(np.linalg.norm(xyz - centre, axis=1).max())), part


def make_standin(cfg: ShapeNetPartConfig) -> PartShapes:
    """All stand-in shapes (deterministic from ``standin_seed``), each split's shapes in shuffled order."""
    rng = np.random.default_rng(cfg.standin_seed)
    cats = STANDIN_CATEGORIES[: cfg.standin_categories]
    offsets = np.cumsum([0] + [len(c[2]) for c in cats])
    part_category = np.concatenate([np.full(len(c[2]), k, dtype=np.int64) for k, c in enumerate(cats)])
    per_split = (cfg.standin_train, cfg.standin_val, cfg.standin_test)
    pts, labels, category, split = [], [], [], []
    for code, count in enumerate(per_split):
        order = rng.permutation(np.repeat(np.arange(len(cats)), count))
        for c in order.tolist():
            xyz, part = standin_shape(c, rng, cfg.points)
            pts.append(xyz)
            labels.append(part + offsets[c])
            category.append(c)
            split.append(code)
    return PartShapes(points=np.stack(pts), normals=None, labels=np.stack(labels),
                      category=np.asarray(category, dtype=np.int64), split=np.asarray(split, dtype=np.uint8),
                      shape_ids=[f"standin:{i}" for i in range(len(pts))], category_names=[c[0] for c in cats],
                      category_ids=[c[1] for c in cats], part_category=part_category)


def write_standin(cfg: ShapeNetPartConfig, folder: Path) -> None:
    """Generate the stand-in and write it in format (a) into ``folder``."""
    write_hdf5_release(Path(folder), make_standin(cfg))
