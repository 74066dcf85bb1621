#!/usr/bin/env python
"""Throughput of the trimesh sampling stage of ShapeNet Part's prepare (a report, not a test).

Prints shapes per second for

  standin build+sample  ``standin_shape``: build one stand-in shape from trimesh primitives (jittered),
                        concatenate, sample ``--points`` points by area with their parts, normalise;
  sample only           ``sample_labelled_surface`` on the same meshes already built (the sampling alone);
  mesh from disk <ext>  ``read_mesh_folder``: for each listed mesh, trimesh loads the file, reads its
                        ``.faces.npy`` sidecar, samples ``--points`` points and normalises (format c).

The meshes on disk are the stand-in's, exported by trimesh once before timing. Each row is the median
of ``--repeats`` timed passes over ``--shapes`` shapes (``time.perf_counter``), after one untimed pass.

Run from the repository root:  python bench/bench_sampling.py [--shapes 120] [--points 2048]
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import click
import numpy as np
import trimesh

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pipeline.datasets.shapenet_part import sources, standin  # noqa: E402


def standin_meshes(count: int, seed: int) -> list[tuple[trimesh.Trimesh, np.ndarray, int]]:
    """``count`` stand-in meshes (cycling through the categories) with per-face global part ids."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0] + [len(cat[2]) for cat in standin.STANDIN_CATEGORIES])  # global part ids
    out = []
    for i in range(count):
        c = i % len(standin.STANDIN_CATEGORIES)
        primitives = standin.STANDIN_CATEGORIES[c][3](rng)
        mesh = trimesh.util.concatenate([m for m, _ in primitives])
        faces = np.concatenate([np.full(len(m.faces), p + offsets[c], dtype=np.int64) for m, p in primitives])
        out.append((mesh, faces, c))
    return out


def write_mesh_folder(root: Path, meshes: list[tuple[trimesh.Trimesh, np.ndarray, int]], ext: str) -> None:
    """The format-(c) layout: meshes, ``.faces.npy`` sidecars and ``shapes.csv``."""
    root.mkdir(parents=True)
    rows = ["file,category,split"]
    for i, (mesh, faces, c) in enumerate(meshes):
        mesh.export(root / f"shape{i}{ext}")
        np.save(root / f"shape{i}.faces.npy", faces)
        rows.append(f"shape{i}{ext},{standin.STANDIN_CATEGORIES[c][0]},train")
    (root / sources.MESH_INDEX_FILE).write_text("\n".join(rows) + "\n")


def median_rate(work: Callable[[], None], shapes: int, repeats: int) -> tuple[float, float]:
    """(median shapes/s, median seconds per pass) over ``repeats`` timed passes after a warm-up pass."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return shapes / seconds, seconds


@click.command()
@click.option("--shapes", default=120, show_default=True, help="shapes per timed pass")
@click.option("--points", default=2048, show_default=True, help="points sampled per shape")
@click.option("--repeats", default=3, show_default=True, help="timed passes (the median is printed)")
@click.option("--ext", "exts", multiple=True, default=(".ply", ".obj"), show_default=True,
              help="mesh formats to time from disk (repeatable)")
def main(shapes: int, points: int, repeats: int, exts: tuple[str, ...]) -> None:
    meshes = standin_meshes(shapes, seed=0)
    faces_per_shape = np.mean([len(m.faces) for m, _, _ in meshes])
    print(f"ShapeNet Part sampling throughput: {shapes} shapes x {points} points, median of {repeats} passes "
          f"(stand-in meshes: {faces_per_shape:.0f} faces on average)")
    rows: list[tuple[str, float, float]] = []

    def build_and_sample() -> None:
        rng = np.random.default_rng(1)
        for i in range(shapes):
            standin.standin_shape(i % len(standin.STANDIN_CATEGORIES), rng, points)

    def sample_only() -> None:
        rng = np.random.default_rng(1)
        for mesh, faces, _ in meshes:
            sources.sample_labelled_surface(mesh, faces, points, rng)

    rows.append(("standin build+sample", *median_rate(build_and_sample, shapes, repeats)))
    rows.append(("sample only (in memory)", *median_rate(sample_only, shapes, repeats)))
    with tempfile.TemporaryDirectory() as tmp:
        for ext in exts:
            root = Path(tmp) / ext.lstrip(".")
            write_mesh_folder(root, meshes, ext)
            rows.append((f"mesh from disk {ext}",
                         *median_rate(lambda: sources.read_mesh_folder(root, points, 0, True), shapes, repeats)))
    width = max(len(r[0]) for r in rows)
    print(f"{'stage':<{width}}  {'shapes/s':>10}  {'s/pass':>8}")
    for name, rate, seconds in rows:
        print(f"{name:<{width}}  {rate:>10.1f}  {seconds:>8.3f}")


if __name__ == "__main__":
    main()
