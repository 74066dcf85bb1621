"""ShapeNet Part's real on-disk formats: readers of the three releases, and the writer of format (a) that the
stand-in and the test fixtures use. Every reader returns a checked ``PartShapes``; every error names the file.

* ``source: hdf5``: the release used by PointNet/DGCNN (``hdf5_data/``): ``ply_data_{train,val,test}*.h5``
  (``data`` [N, 2048, 3] float32, ``label`` [N, 1] uint8 category, ``pid`` [N, 2048] uint8 global part
  id), the lists ``{train,val,test}_hdf5_file_list.txt`` (when a list is absent, ``ply_data_<split>*.h5``
  is globbed), the category table ``all_object_categories.txt`` (``Airplane 02691156``; line order =
  category index) and the part table ``overallid_to_catid_partid.json`` (``[catid, partid]`` per global
  part id). ``root`` is that folder or its parent.
* ``source: text``: ``shapenetcore_partanno_segmentation_benchmark_v0_normal``: ``<synset>/<shape>.txt``
  with lines ``x y z nx ny nz part`` (part = global part id), ``synsetoffset2category.txt`` and
  ``train_test_split/shuffled_{train,val,test}_file_list.json`` (entries ``shape_data/<synset>/<shape>``).
  Each shape is resampled to ``points`` points (seeded; with replacement only when it has fewer).
* ``source: mesh``: meshes trimesh reads (.obj/.ply/.off/.stl) listed in ``shapes.csv`` (header
  ``file,category,split``; ``file`` relative to root, ``split`` one of train/val/test). Each mesh
  ``<stem>.<ext>`` has a sidecar ``<stem>.faces.npy`` or ``<stem>.faces.txt``: one global part id per face,
  in the order trimesh reads the faces (``force="mesh", process=False``). ``points`` points are sampled
  on the surface (``trimesh.sample.sample_surface``, seeded, area-weighted); a point's part is its face's
  label and its normal its face's normal. With ``normalize`` each shape is centred on its bounding box
  and scaled into the unit sphere (the released data already is).

For ``text`` and ``mesh``, the category order comes from the category file (``synsetoffset2category.txt``;
for mesh an optional ``all_object_categories.txt``, else the sorted category names) and the part table from
``overallid_to_catid_partid.json`` when present in root, else from the data (each category owns the part
ids its shapes use; a part id used by two categories is an error).
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import h5py
import numpy as np
import trimesh

from pipeline.core import io
from pipeline.datasets.shared.base import DataError

SPLIT_NAMES = ("train", "val", "test")
CATEGORY_FILE = "all_object_categories.txt"
PART_TABLE_FILE = "overallid_to_catid_partid.json"
TEXT_CATEGORY_FILE = "synsetoffset2category.txt"
MESH_INDEX_FILE = "shapes.csv"
MESH_SUFFIXES = (".obj", ".ply", ".off", ".stl")
FACE_LABEL_SUFFIXES = (".faces.npy", ".faces.txt")
# What ``root`` must hold for each real source (the DataError of ``source_root`` and data/raw/shapenet_part/README.md).
EXPECTED = {
    "hdf5": "the hdf5_data folder of the PointNet/DGCNN release (ply_data_*.h5, all_object_categories.txt, "
            "overallid_to_catid_partid.json) or its parent",
    "text": "shapenetcore_partanno_segmentation_benchmark_v0_normal (<synset>/<shape>.txt, synsetoffset2category.txt, "
            "train_test_split/)",
    "mesh": "meshes listed in shapes.csv (file,category,split) with .faces.npy or .faces.txt per-face part labels",
}


# ----------------------------------------------------------------------------------------------
# The in-memory form every reader returns
# ----------------------------------------------------------------------------------------------


@dataclass
class PartShapes:
    """Shapes from any source, checked: every label belongs to its shape's category."""

    points: np.ndarray  # [N, P, 3] float32
    normals: np.ndarray | None  # [N, P, 3] float32
    labels: np.ndarray  # [N, P] int64 global part ids
    category: np.ndarray  # [N] int64
    split: np.ndarray  # [N] uint8: index into SPLIT_NAMES
    shape_ids: list[str]
    category_names: list[str]
    category_ids: list[str]
    part_category: np.ndarray  # [num_parts] int64: owning category, -1 for none

    @property
    def parts_per_category(self) -> list[list[int]]:
        return [np.flatnonzero(self.part_category == c).tolist() for c in range(len(self.category_names))]


def _required(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path} is missing (expected in {what})")
    return path


def _inside(root: Path, rel: str, listed_in: Path) -> Path:
    """``root / rel`` for a relative path that stays inside ``root`` (no absolute paths, no ``..``)."""
    p = PurePosixPath(rel.replace("\\", "/"))
    if not p.parts or p.is_absolute() or ".." in p.parts:
        raise DataError(f"{listed_in}: path {rel!r} must stay inside {root}")
    return root / Path(*p.parts)


def _text_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text: {err}") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_category_table(path: Path) -> tuple[list[str], list[str]]:
    """``<Name> <id>`` lines (all_object_categories.txt, synsetoffset2category.txt) -> (names, ids) in file order."""
    names, ids = [], []
    for lineno, line in _text_lines(_required(path, "the dataset folder")):
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected '<category name> <id>', got {line!r}")
        if parts[0] in names or parts[1] in ids:
            raise DataError(f"{path}:{lineno}: category {parts[0]} / {parts[1]} appears twice")
        names.append(parts[0])
        ids.append(parts[1])
    if not names:
        raise DataError(f"{path} lists no categories")
    return names, ids


def read_part_table(path: Path, category_names: Sequence[str], category_ids: Sequence[str]) -> np.ndarray:
    """overallid_to_catid_partid.json (``[catid, partid]`` per global part id) -> owning category per part id.

    ``catid`` is matched against the category ids (synsets), then the names.
    """
    try:
        table = json.loads(_required(path, "the dataset folder").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(table, list) or not table:
        raise DataError(f"{path}: expected a non-empty list of [catid, partid] pairs")
    lookup = {**{str(n): c for c, n in enumerate(category_names)}, **{str(i): c for c, i in enumerate(category_ids)}}
    owner = np.empty(len(table), dtype=np.int64)
    for gid, entry in enumerate(table):
        if not (isinstance(entry, list) and len(entry) == 2):
            raise DataError(f"{path}: entry {gid} should be [catid, partid], got {entry!r}")
        if str(entry[0]) not in lookup:
            raise DataError(f"{path}: entry {gid}: category {entry[0]!r} is not in the category table")
        owner[gid] = lookup[str(entry[0])]
    return owner


def derive_part_table(labels: Sequence[np.ndarray], category: np.ndarray, category_names: Sequence[str],
                      where: Path) -> np.ndarray:
    """Without a part table: each category owns the part ids its shapes use (an id in two categories is an error)."""
    num_parts = 1 + max((int(lab.max()) for lab in labels if lab.size), default=-1)
    owner = np.full(num_parts, -1, dtype=np.int64)
    for lab, c in zip(labels, category):
        for gid in np.unique(lab).tolist():
            if owner[gid] not in (-1, c):
                raise DataError(f"{where}: part id {gid} is used by categories {category_names[owner[gid]]} and "
                                f"{category_names[c]}; add {PART_TABLE_FILE} or fix the labels")
            owner[gid] = c
    return owner


def check_labels(labels: np.ndarray, category: np.ndarray, part_category: np.ndarray,
                 category_names: Sequence[str], where: str) -> None:
    """Every point's part id must exist and belong to its shape's category (``where`` names the file)."""
    labels, category = np.asarray(labels), np.asarray(category)
    if labels.size and (labels.min() < 0 or labels.max() >= len(part_category)):
        raise DataError(f"{where}: part ids must lie in [0, {len(part_category)}), got {labels.min()}..{labels.max()}")
    if category.size and (category.min() < 0 or category.max() >= len(category_names)):
        raise DataError(f"{where}: category indices must lie in [0, {len(category_names)}), "
                        f"got {category.min()}..{category.max()}")
    wrong = part_category[labels] != category[:, None]
    if wrong.any():
        row = int(np.argwhere(wrong.any(1))[0, 0])
        bad = sorted(set(labels[row][wrong[row]].tolist()))
        raise DataError(f"{where}: shape {row}: part ids {bad} are not parts of category "
                        f"{category_names[category[row]]}")


def resample_indices(count: int, points: int, rng: np.random.Generator) -> np.ndarray:
    """``points`` indices into ``count`` points: a subset without replacement, or every point plus extra draws."""
    if count >= points:
        return np.sort(rng.choice(count, size=points, replace=False))
    return np.concatenate([np.arange(count), rng.choice(count, size=points - count, replace=True)])


def shape_rng(seed: int, index: int) -> np.random.Generator:
    """An independent generator per shape, so one shape's draws do not depend on the others."""
    return np.random.default_rng([seed, index])


# ----------------------------------------------------------------------------------------------
# Format (a): the PointNet/DGCNN HDF5 release
# ----------------------------------------------------------------------------------------------


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _hdf5_folder(root: Path) -> Path:
    for folder in (root, root / "hdf5_data"):
        if (folder / CATEGORY_FILE).is_file():
            return folder
    raise DataError(f"{root / CATEGORY_FILE} is missing (also looked in {root / 'hdf5_data'}): "
                    "root must be the hdf5_data folder of the ShapeNet part HDF5 release")


def hdf5_split_files(folder: Path, split: str) -> list[Path]:
    """The split's files from ``<split>_hdf5_file_list.txt`` (entries are names or paths ending in the name),
    else ``ply_data_<split>*.h5``."""
    listing = folder / f"{split}_hdf5_file_list.txt"
    if listing.is_file():
        files = []
        for lineno, entry in _text_lines(listing):
            path = _inside(folder, entry, listing)
            if not path.is_file():
                path = folder / PurePosixPath(entry.replace("\\", "/")).name
            if not path.is_file():
                raise DataError(f"{listing}:{lineno}: {entry} is missing (looked for {path})")
            files.append(path)
        return files
    files = sorted(folder.glob(f"ply_data_{split}*.h5"), key=_natural_key)
    if not files:
        raise DataError(f"{listing} is missing and no ply_data_{split}*.h5 file is in {folder}")
    return files


def _read_ply_h5(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        with h5py.File(path, "r") as f:
            absent = [k for k in ("data", "label", "pid") if k not in f]
            if absent:
                raise DataError(f"{path}: missing dataset(s) {', '.join(absent)} (expected data, label, pid)")
            data, label, pid = f["data"][...], f["label"][...], f["pid"][...]
    except OSError as err:
        raise DataError(f"{path} is not a readable HDF5 file: {err}") from None
    n = len(data)
    if label.ndim == 2 and label.shape[1] == 1:
        label = label[:, 0]
    if data.ndim != 3 or data.shape[2] != 3 or label.shape != (n,) or pid.shape != data.shape[:2]:
        raise DataError(f"{path}: expected data [N, P, 3], label [N, 1] and pid [N, P], got data {data.shape}, "
                        f"label {label.shape}, pid {pid.shape}")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: data holds non-finite coordinates")
    return data.astype(np.float32), label.astype(np.int64), pid.astype(np.int64)


def read_hdf5_release(root: Path | str) -> PartShapes:
    """Read the ShapeNet part HDF5 release (format a); every file is checked against the two tables."""
    folder = _hdf5_folder(Path(root))
    names, ids = read_category_table(folder / CATEGORY_FILE)
    part_category = read_part_table(folder / PART_TABLE_FILE, names, ids)
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    split, shape_ids = [], []
    for code, split_name in enumerate(SPLIT_NAMES):
        for path in hdf5_split_files(folder, split_name):
            data, label, pid = _read_ply_h5(path)
            if chunks and data.shape[1] != chunks[0][0].shape[1]:
                raise DataError(f"{path}: {data.shape[1]} points per shape, but earlier files have "
                                f"{chunks[0][0].shape[1]}")
            check_labels(pid, label, part_category, names, str(path))
            chunks.append((data, label, pid))
            split += [code] * len(data)
            shape_ids += [f"{path.name}:{i}" for i in range(len(data))]
    if not shape_ids:
        raise DataError(f"{folder}: the file lists name no shapes")
    return PartShapes(points=np.concatenate([c[0] for c in chunks]), normals=None,
                      labels=np.concatenate([c[2] for c in chunks]), category=np.concatenate([c[1] for c in chunks]),
                      split=np.asarray(split, dtype=np.uint8), shape_ids=shape_ids, category_names=names,
                      category_ids=ids, part_category=part_category)


def write_hdf5_release(folder: Path, shapes: PartShapes, shapes_per_file: int = 2048) -> None:
    """Write ``shapes`` in format (a): ``ply_data_<split><i>.h5`` files, their lists and the two tables."""
    folder.mkdir(parents=True, exist_ok=True)
    for code, split_name in enumerate(SPLIT_NAMES):
        rows = np.flatnonzero(shapes.split == code)
        names = []
        for i, start in enumerate(range(0, len(rows), shapes_per_file)):
            chunk = rows[start: start + shapes_per_file]
            name = f"ply_data_{split_name}{i}.h5"
            with h5py.File(folder / name, "w") as f:
                f.create_dataset("data", data=shapes.points[chunk].astype(np.float32), track_times=False)
                f.create_dataset("label", data=shapes.category[chunk, None].astype(np.uint8), track_times=False)
                f.create_dataset("pid", data=shapes.labels[chunk].astype(np.uint8), track_times=False)
            names.append(name)
        (folder / f"{split_name}_hdf5_file_list.txt").write_text("".join(f"{n}\n" for n in names))
    (folder / CATEGORY_FILE).write_text(
        "".join(f"{n}\t{i}\n" for n, i in zip(shapes.category_names, shapes.category_ids)))
    counters = [0] * len(shapes.category_names)
    table = []
    for c in shapes.part_category.tolist():
        counters[c] += 1
        table.append([shapes.category_ids[c], counters[c]])  # partid is 1-based within the category
    (folder / PART_TABLE_FILE).write_text(json.dumps(table))


# ----------------------------------------------------------------------------------------------
# Format (b): the per-shape text release
# ----------------------------------------------------------------------------------------------


def _optional_part_table(root: Path, labels: Sequence[np.ndarray], category: np.ndarray, names: Sequence[str],
                         ids: Sequence[str], where: Path) -> np.ndarray:
    if (root / PART_TABLE_FILE).is_file():
        return read_part_table(root / PART_TABLE_FILE, names, ids)
    return derive_part_table(labels, category, names, where)


def _stack(points: list[np.ndarray], normals: list[np.ndarray] | None, labels: list[np.ndarray],
           category: list[int], split: list[int], shape_ids: list[str], names: list[str], ids: list[str],
           part_category: np.ndarray, where: str) -> PartShapes:
    if not shape_ids:
        raise DataError(f"{where}: no shapes listed")
    return PartShapes(points=np.stack(points).astype(np.float32),
                        normals=None if normals is None else np.stack(normals).astype(np.float32),
                        labels=np.stack(labels).astype(np.int64), category=np.asarray(category, dtype=np.int64),
                        split=np.asarray(split, dtype=np.uint8), shape_ids=shape_ids, category_names=names,
                        category_ids=ids, part_category=part_category)


def read_text_shape(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``x y z nx ny nz part`` file -> (points [n, 3], normals [n, 3], part ids [n])."""
    if not path.is_file():
        raise DataError(f"{path} is missing (listed in the split files)")
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise DataError(f"{path}: not a table of numbers: {err}") from None
    if table.shape[0] == 0 or table.shape[1] != 7:
        raise DataError(f"{path}: expected lines 'x y z nx ny nz part', got a table of shape {table.shape}")
    if not np.isfinite(table).all():
        raise DataError(f"{path}: non-finite values")
    part = table[:, 6]
    if (part != np.round(part)).any() or part.min() < 0:
        raise DataError(f"{path}: the part column must hold non-negative integers")
    return table[:, :3], table[:, 3:6], part.astype(np.int64)


def read_text_release(root: Path | str, points: int, seed: int) -> PartShapes:
    """Read the text release (format b), resampling every shape to ``points`` points."""
    root = Path(root)
    names, ids = read_category_table(root / TEXT_CATEGORY_FILE)
    cat_of = {i: c for c, i in enumerate(ids)}
    pts, nrm, labels, category, split, shape_ids = [], [], [], [], [], []
    owner: dict[str, tuple[int, Path]] = {}
    for code, split_name in enumerate(SPLIT_NAMES):
        listing = _required(root / "train_test_split" / f"shuffled_{split_name}_file_list.json", "the text release")
        try:
            entries = json.loads(listing.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{listing} is not valid JSON: {err}") from None
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise DataError(f"{listing}: expected a list of 'shape_data/<synset>/<shape>' strings")
        for entry in entries:
            parts = PurePosixPath(entry).parts
            if len(parts) < 2 or parts[-2] not in cat_of:
                raise DataError(f"{listing}: entry {entry!r} is not 'shape_data/<synset>/<shape>' with a synset "
                                f"from {root / TEXT_CATEGORY_FILE}")
            key = f"{parts[-2]}/{parts[-1]}"
            if key in owner:
                raise DataError(f"{listing}: shape {key} is also listed in {owner[key][1]}")
            owner[key] = (code, listing)
            path = _inside(root, f"{key}.txt", listing)
            xyz, normal, part = read_text_shape(path)
            keep = resample_indices(len(xyz), points, shape_rng(seed, len(shape_ids)))
            pts.append(xyz[keep])
            nrm.append(normal[keep])
            labels.append(part[keep])
            category.append(cat_of[parts[-2]])
            split.append(code)
            shape_ids.append(key)
    cats = np.asarray(category, dtype=np.int64)
    part_category = _optional_part_table(root, labels, cats, names, ids, root)
    for lab, c, key in zip(labels, cats, shape_ids):
        check_labels(lab[None], c[None], part_category, names, str(root / f"{key}.txt"))
    return _stack(pts, nrm, labels, category, split, shape_ids, names, ids, part_category, str(root))


# ----------------------------------------------------------------------------------------------
# Format (c): meshes with per-face part labels
# ----------------------------------------------------------------------------------------------


def face_label_path(mesh_path: Path) -> Path:
    """The sidecar of ``<stem>.<ext>``: ``<stem>.faces.npy`` or ``<stem>.faces.txt`` (the first that exists)."""
    stem = mesh_path.with_suffix("")
    candidates = [stem.with_name(stem.name + s) for s in FACE_LABEL_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"{candidates[0]} is missing (the per-face part labels of {mesh_path}; "
                    f"{candidates[1].name} is also accepted)")


def read_face_labels(path: Path) -> np.ndarray:
    """One global part id per face: a 1-d integer .npy (no pickles) or whitespace-separated integers."""
    try:
        if path.suffix == ".npy":
            values = io.load_npy(path)  # refuses pickles and non-real dtypes
        else:
            values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: unreadable face labels: {err}") from None
    values = np.asarray(values).reshape(-1)
    if values.size == 0 or not np.isfinite(values.astype(np.float64)).all() or (values != np.round(values)).any() \
            or values.min() < 0:
        raise DataError(f"{path}: face labels must be non-negative integers, one per face")
    return values.astype(np.int64)


def load_mesh(path: Path) -> trimesh.Trimesh:
    """A triangle mesh with its faces in file order (``process=False``: no merging or reordering)."""
    if not path.is_file():
        raise DataError(f"{path} is missing (listed in {MESH_INDEX_FILE})")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise DataError(f"{path}: unsupported mesh format (use one of {', '.join(MESH_SUFFIXES)})")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as err:  # trimesh raises many types for bad files
        raise DataError(f"{path} is not a readable mesh: {err}") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise DataError(f"{path}: no triangle faces")
    return mesh


def sample_labelled_surface(mesh: trimesh.Trimesh, face_labels: np.ndarray, count: int,
                            seed: int | np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` area-weighted surface points of ``mesh`` -> (points, part ids from their faces, face normals)."""
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return (np.asarray(points, dtype=np.float32), face_labels[faces],
            np.asarray(mesh.face_normals[faces], dtype=np.float32))


def normalise_unit_sphere(points: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return ((points - centre) / max(radius, 1e-12)).astype(np.float32)


def read_mesh_folder(root: Path | str, points: int, seed: int, normalize: bool) -> PartShapes:
    """Read format (c): ``shapes.csv`` + meshes + per-face label sidecars, sampled to ``points`` points each."""
    root = Path(root)
    index = _required(root / MESH_INDEX_FILE, "the mesh folder")
    try:
        with open(index, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{index}: not a readable CSV file: {err}") from None
    if not rows or not {"file", "category", "split"} <= set(rows[0]):
        raise DataError(f"{index}: expected a header 'file,category,split' and at least one row")
    if (root / CATEGORY_FILE).is_file():
        names, ids = read_category_table(root / CATEGORY_FILE)
    else:
        names = sorted({r["category"].strip() for r in rows})
        ids = list(names)
    lookup = {**{n: c for c, n in enumerate(names)}, **{i: c for c, i in enumerate(ids)}}
    pts, nrm, labels, category, split, shape_ids = [], [], [], [], [], []
    for lineno, row in enumerate(rows, 2):
        rel, cat, split_name = ((row.get(k) or "").strip() for k in ("file", "category", "split"))
        if cat not in lookup:
            raise DataError(f"{index}:{lineno}: category {cat!r} is not in {root / CATEGORY_FILE}")
        if split_name not in SPLIT_NAMES:
            raise DataError(f"{index}:{lineno}: split must be one of {', '.join(SPLIT_NAMES)}, got {split_name!r}")
        path = _inside(root, rel, index)
        mesh = load_mesh(path)
        label_file = face_label_path(path)
        face_labels = read_face_labels(label_file)
        if len(face_labels) != len(mesh.faces):
            raise DataError(f"{label_file}: {len(face_labels)} labels for the {len(mesh.faces)} faces of {path}")
        xyz, part, normal = sample_labelled_surface(mesh, face_labels, points, shape_rng(seed, len(shape_ids)))
        if normalize:
            lo, hi = mesh.bounds
            centre = (lo + hi) / 2
            xyz = normalise_unit_sphere(xyz, centre, float(np.linalg.norm(mesh.vertices - centre, axis=1).max()))
        pts.append(xyz)
        nrm.append(normal)
        labels.append(part)
        category.append(lookup[cat])
        split.append(SPLIT_NAMES.index(split_name))
        shape_ids.append(rel)
    cats = np.asarray(category, dtype=np.int64)
    part_category = _optional_part_table(root, labels, cats, names, ids, index)
    for lab, c, rel in zip(labels, cats, shape_ids):
        check_labels(lab[None], c[None], part_category, names, str(face_label_path(root / rel)))
    return _stack(pts, nrm, labels, category, split, shape_ids, names, ids, part_category, str(index))


