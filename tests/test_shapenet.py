"""ShapeNet Part: the three ingest formats written as tiny real files (h5py / text / trimesh meshes) and read by
the real loaders, their errors, the splits, the IoU metric by hand, the point sampling transform, the models
and the deterministic stand-in."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from pipeline.datasets.shapenet_part import task
from pipeline.datasets.shapenet_part.config import ShapeNetModelConfig, ShapeNetPartConfig, ShapeNetSplitConfig
from pipeline.datasets.shapenet_part.prepared import H5_NAME
from pipeline.datasets.shapenet_part.sources import (CATEGORY_FILE, MESH_INDEX_FILE, PART_TABLE_FILE, SPLIT_NAMES,
                                                     TEXT_CATEGORY_FILE, read_hdf5_release)
from pipeline.datasets.shapenet_part.standin import STANDIN_DIR
from pipeline.datasets.shapenet_part.task import ShapeNetPart
from pipeline.metrics.pointclouds import miou_summary, part_mask, restricted_argmax, shape_ious
from pipeline.config.params import ParamsError, parse_params
from pipeline.datasets.shared.base import DataError, TaskData
from pipeline.core.registry import DATASETS
from pipeline.core.io import write_manifest
from pipeline.datasets.shared.splits import check_disjoint

# Two categories in the release's style: Cap owns global parts 0-1, Mug owns 2-4 (part 4 never used).
NAMES, IDS = ["Cap", "Mug"], ["02954340", "03797390"]
PART_TABLE = [["02954340", 1], ["02954340", 2], ["03797390", 1], ["03797390", 2], ["03797390", 3]]
P = 32


def prepare(tmp: Path, **cfg) -> tuple[ShapeNetPart, TaskData]:
    ds = ShapeNetPart()
    out = tmp / f"prepared_{len(list(tmp.glob('prepared_*')))}"
    out.mkdir(parents=True)
    ds.prepare(ShapeNetPartConfig(**cfg), out)
    return ds, ds.load(out)


def write_tables(folder: Path, category_file: str = CATEGORY_FILE) -> None:
    (folder / category_file).write_text("".join(f"{n}\t{i}\n" for n, i in zip(NAMES, IDS)))
    (folder / PART_TABLE_FILE).write_text(json.dumps(PART_TABLE))


# ---------------------------------------------------------------------------------------------- format (a)


def write_tiny_hdf5(root: Path) -> SimpleNamespace:
    """Two train files (listed by path, as some copies do), one val and one test file; coordinates encode
    (file, row, point) so the test can tell where every value landed."""
    folder = root / "hdf5_data"
    folder.mkdir(parents=True)
    write_tables(folder)
    rng = np.random.default_rng(0)
    layout = {"train": [3, 2], "val": [2], "test": [3]}
    expected = []
    for split, sizes in layout.items():
        names = []
        for i, n in enumerate(sizes):
            cat = rng.integers(0, 2, n)
            cat[0] = i % 2
            pid = np.where(cat[:, None] == 0, rng.integers(0, 2, (n, P)), rng.integers(2, 4, (n, P)))
            data = rng.normal(size=(n, P, 3)).astype(np.float32)
            name = f"ply_data_{split}{i}.h5"
            with h5py.File(folder / name, "w") as f:
                f["data"], f["label"], f["pid"] = data, cat[:, None].astype(np.uint8), pid.astype(np.uint8)
            names.append(f"data/hdf5_data/{name}" if split == "train" else name)
            expected += [(split, data[r], cat[r], pid[r]) for r in range(n)]
        (folder / f"{split}_hdf5_file_list.txt").write_text("\n".join(names) + "\n")
    return SimpleNamespace(root=root, folder=folder, expected=expected)


@pytest.fixture
def tiny_hdf5(tmp_path) -> SimpleNamespace:
    return write_tiny_hdf5(tmp_path / "shapenet_part_seg_hdf5_data")


def test_hdf5_release_lands_in_the_prepared_layout(tiny_hdf5, tmp_path):
    ds, data = prepare(tmp_path, source="hdf5", root=str(tiny_hdf5.root))  # the parent of hdf5_data/ works too
    n = len(tiny_hdf5.expected)
    assert data.inputs.shape == (n, 3, P) and data.inputs.dtype == torch.float32
    assert data.targets.shape == (n, P + 1) and data.task_names == ["part_segmentation"]
    for row, (split, pts, cat, pid) in enumerate(tiny_hdf5.expected):  # lists' order: train0, train1, val, test
        assert torch.equal(data.inputs[row], torch.from_numpy(pts).T)
        assert data.targets[row, P] == cat and torch.equal(data.targets[row, :P].long(), torch.from_numpy(pid))
        assert data.meta["official_split"][row] == SPLIT_NAMES.index(split)
    assert data.meta["category_names"] == NAMES and data.meta["category_ids"] == IDS
    assert data.meta["parts_per_category"] == [[0, 1], [2, 3, 4]]
    assert data.meta["num_parts"] == 5 and data.meta["num_categories"] == 2
    assert data.meta["shape_ids"][3] == "ply_data_train1.h5:0"
    assert ds.label_groups(data) == 2 and torch.equal(ds.label_group(data.targets[:4]), data.targets[:4, -1].long())


def test_hdf5_without_file_lists_globs_the_files(tiny_hdf5, tmp_path):
    for split in SPLIT_NAMES:
        (tiny_hdf5.folder / f"{split}_hdf5_file_list.txt").unlink()
    _, data = prepare(tmp_path, source="hdf5", root=str(tiny_hdf5.folder))
    assert len(data) == len(tiny_hdf5.expected)


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / CATEGORY_FILE).unlink(), "all_object_categories.txt is missing"),
    (lambda f: (f / PART_TABLE_FILE).unlink(), "overallid_to_catid_partid.json is missing"),
    (lambda f: (f / PART_TABLE_FILE).write_text('[["99999999", 1]]'), "category '99999999' is not in"),
    (lambda f: (f / "ply_data_val0.h5").unlink(), "val_hdf5_file_list.txt:1: ply_data_val0.h5 is missing"),
    (lambda f: (f / "ply_data_test0.h5").write_bytes(b"junk"), "ply_data_test0.h5 is not a readable HDF5"),
    (lambda f: _edit_h5(f / "ply_data_train1.h5", "pid", lambda a: np.full_like(a, 0)),  # its shape 0 is a Mug
     r"ply_data_train1.h5: shape 0: part ids \[0\] are not parts of category Mug"),
    (lambda f: _edit_h5(f / "ply_data_train0.h5", "label", lambda a: np.full_like(a, 7)),
     r"ply_data_train0.h5: category indices must lie in \[0, 2\)"),
    (lambda f: _edit_h5(f / "ply_data_val0.h5", "data", lambda a: a[:, :5]), "ply_data_val0.h5: expected data"),
    (lambda f: (f / "test_hdf5_file_list.txt").write_text("../../etc/passwd\n"), "must stay inside"),
])
def test_hdf5_errors_name_the_file(tiny_hdf5, tmp_path, damage, message):
    damage(tiny_hdf5.folder)
    with pytest.raises(DataError, match=message):
        prepare(tmp_path, source="hdf5", root=str(tiny_hdf5.folder))


def _edit_h5(path: Path, key: str, change) -> None:
    with h5py.File(path, "a") as f:
        value = change(f[key][...])
        del f[key]
        f[key] = value


# ---------------------------------------------------------------------------------------------- format (b)


def write_tiny_text(root: Path) -> SimpleNamespace:
    """Shapes of 20..50 points (fewer and more than P), written as 'x y z nx ny nz part' with float labels."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    write_tables(root, TEXT_CATEGORY_FILE)
    (root / PART_TABLE_FILE).unlink()  # the text release has no part table: derived from the labels
    (root / "train_test_split").mkdir(parents=True)
    shapes = {}
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        entries = []
        for i in range(count):
            c = i % 2
            synset, shape = IDS[c], f"{split}{i:02d}abc"
            n = int(rng.integers(20, 50))
            xyz = rng.normal(size=(n, 3))
            part = rng.integers(0, 2, n) + 2 * c
            table = np.column_stack([xyz, rng.normal(size=(n, 3)), part])
            (root / synset).mkdir(exist_ok=True)
            np.savetxt(root / synset / f"{shape}.txt", table, fmt="%.6f")
            entries.append(f"shape_data/{synset}/{shape}")
            shapes[f"{synset}/{shape}"] = (split, c, xyz, part)
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    return SimpleNamespace(root=root, shapes=shapes)


@pytest.fixture
def tiny_text(tmp_path) -> SimpleNamespace:
    return write_tiny_text(tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal")


def test_text_release_is_resampled_and_labelled(tiny_text, tmp_path):
    _, data = prepare(tmp_path, source="text", root=str(tiny_text.root), points=P, seed=3)
    assert data.inputs.shape == (8, 3, P) and data.meta["shape_ids"] == list(tiny_text.shapes)
    for row, (split, c, xyz, part) in enumerate(tiny_text.shapes.values()):
        pts = data.inputs[row].T.double().numpy()
        # every sampled point is one of the shape's points, with that point's label (6-digit text precision)
        dist = np.abs(pts[:, None, :] - xyz[None]).max(2)
        nearest = dist.argmin(1)
        assert dist.min(1).max() < 1e-5
        assert np.array_equal(data.targets[row, :P].long().numpy(), part[nearest])
        if len(xyz) >= P:
            assert len(set(nearest.tolist())) == P  # without replacement when there are enough points
        else:
            assert len(set(nearest.tolist())) == len(xyz)  # every point kept, the rest drawn again
        assert data.targets[row, P] == c and data.meta["official_split"][row] == SPLIT_NAMES.index(split)
    assert data.meta["parts_per_category"] == [[0, 1], [2, 3]]  # derived from the labels
    with h5py.File(tmp_path / "prepared_0" / H5_NAME) as f:
        assert f["normals"].shape == (8, P, 3)
    _, again = prepare(tmp_path, source="text", root=str(tiny_text.root), points=P, seed=3)
    _, other = prepare(tmp_path, source="text", root=str(tiny_text.root), points=P, seed=4)
    assert torch.equal(data.inputs, again.inputs) and not torch.equal(data.inputs, other.inputs)


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / IDS[1] / "test01abc.txt").unlink(), "test01abc.txt is missing"),
    (lambda r: (r / IDS[0] / "train00abc.txt").write_text("1 2 3\n"), r"train00abc.txt: expected lines"),
    (lambda r: (r / IDS[0] / "val00abc.txt").write_text("1 2 3 0 0 1 0.5\n"), "val00abc.txt: the part column"),
    (lambda r: (r / "train_test_split" / "shuffled_val_file_list.json").write_text("{"),
     "shuffled_val_file_list.json is not valid JSON"),
    (lambda r: (r / "train_test_split" / "shuffled_test_file_list.json").write_text('["shape_data/1/x"]'),
     "entry 'shape_data/1/x' is not"),
    (lambda r: (r / TEXT_CATEGORY_FILE).write_text("Cap\n"), r"synsetoffset2category.txt:1: expected"),
])
def test_text_errors_name_the_file(tiny_text, tmp_path, damage, message):
    damage(tiny_text.root)
    with pytest.raises(DataError, match=message):
        prepare(tmp_path, source="text", root=str(tiny_text.root), points=P)


def test_text_part_table_and_label_check(tiny_text, tmp_path):
    (tiny_text.root / PART_TABLE_FILE).write_text(json.dumps(PART_TABLE))  # optional: defines 5 parts
    _, data = prepare(tmp_path, source="text", root=str(tiny_text.root), points=P)
    assert data.meta["num_parts"] == 5 and data.meta["parts_per_category"] == [[0, 1], [2, 3, 4]]
    path = tiny_text.root / IDS[1] / "train01abc.txt"
    path.write_text(path.read_text().replace(" 2.000000\n", " 0.000000\n", 1))  # a Mug point labelled a Cap part
    with pytest.raises(DataError, match=re.escape(f"{path}: shape 0: part ids [0] are not parts of category Mug")):
        prepare(tmp_path, source="text", root=str(tiny_text.root), points=P)


# ---------------------------------------------------------------------------------------------- format (c)


def two_box_mesh(gap: float) -> tuple[trimesh.Trimesh, np.ndarray]:
    """A lower box (part a) and an upper box (part b), 12 faces each, as one mesh with per-face labels."""
    low = trimesh.creation.box(extents=(1, 1, 1))
    high = trimesh.creation.box(extents=(1, 1, 1))
    high.apply_translation((0, 0, 1 + gap))
    return trimesh.util.concatenate([low, high]), np.repeat([0, 1], 12)


def write_tiny_meshes(root: Path) -> SimpleNamespace:
    """Real mesh files exported by trimesh (.obj, .ply, .stl, .off) with .faces.txt / .faces.npy sidecars."""
    root.mkdir(parents=True)
    rows, expected = ["file,category,split"], []
    for i, (suffix, split) in enumerate([(".obj", "train"), (".ply", "train"), (".stl", "val"), (".off", "test")]):
        c = i % 2
        mesh, faces = two_box_mesh(gap=0.5 + i)
        rel = f"{NAMES[c].lower()}/shape{i}{suffix}"
        (root / rel).parent.mkdir(exist_ok=True)
        mesh.export(root / rel)
        labels = faces + 2 * c
        stem = (root / rel).with_suffix("")
        if i % 2:
            np.save(stem.with_name(stem.name + ".faces.npy"), labels)
        else:
            np.savetxt(stem.with_name(stem.name + ".faces.txt"), labels, fmt="%d")
        rows.append(f"{rel},{NAMES[c]},{split}")
        expected.append((rel, c, split, 0.5 + i))
    (root / MESH_INDEX_FILE).write_text("\n".join(rows) + "\n")
    return SimpleNamespace(root=root, expected=expected)


@pytest.fixture
def tiny_meshes(tmp_path) -> SimpleNamespace:
    return write_tiny_meshes(tmp_path / "meshes")


def test_meshes_are_sampled_with_face_labels(tiny_meshes, tmp_path):
    _, raw = prepare(tmp_path, source="mesh", root=str(tiny_meshes.root), points=64, normalize=False)
    assert raw.inputs.shape == (4, 3, 64) and raw.meta["category_names"] == NAMES  # sorted names, no table
    for row, (rel, c, split, gap) in enumerate(tiny_meshes.expected):
        z = raw.inputs[row, 2]
        part = raw.targets[row, :64].long() - 2 * c
        # the lower box spans z in [-0.5, 0.5], the upper one [0.5 + gap, 1.5 + gap]: a point's label is its box's
        assert torch.equal(part, (z > 0.5 + gap / 2).long())
        assert 0 < part.sum() < 64  # both parts sampled (equal areas)
        assert raw.targets[row, 64] == c and raw.meta["shape_ids"][row] == rel
        assert raw.meta["official_split"][row] == SPLIT_NAMES.index(split)
    _, unit = prepare(tmp_path, source="mesh", root=str(tiny_meshes.root), points=64)
    radius = unit.inputs.norm(dim=1).max(dim=1).values
    assert (radius <= 1 + 1e-5).all() and (radius > 0.8).all()
    _, again = prepare(tmp_path, source="mesh", root=str(tiny_meshes.root), points=64)
    assert torch.equal(unit.inputs, again.inputs) and torch.equal(unit.targets, again.targets)


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "cap/shape0.faces.txt").unlink(),
     r"shape0.faces.npy is missing \(the per-face part labels of .*shape0.obj"),
    (lambda r: (r / "cap/shape0.faces.txt").write_text("0\n1\n"), "shape0.faces.txt: 2 labels for the 24 faces"),
    (lambda r: np.save(r / "mug/shape1.faces.npy", np.full(24, 0.5)), "shape1.faces.npy: face labels must be"),
    (lambda r: (r / "mug/shape3.off").write_text("garbage"), "shape3.off"),
    (lambda r: (r / "cap/shape2.stl").unlink(), "shape2.stl is missing"),
    (lambda r: (r / MESH_INDEX_FILE).write_text("file,category,split\ncap/shape0.obj,Cap,holdout\n"),
     "shapes.csv:2: split must be one of"),
    (lambda r: (r / MESH_INDEX_FILE).write_text("path,cat\nx,y\n"), "shapes.csv: expected a header"),
])
def test_mesh_errors_name_the_file(tiny_meshes, tmp_path, damage, message):
    damage(tiny_meshes.root)
    with pytest.raises(DataError, match=message):
        prepare(tmp_path, source="mesh", root=str(tiny_meshes.root), points=16)


def test_missing_root_and_prepared_file(tmp_path):
    with pytest.raises(ValueError, match="root is required when source is 'mesh'"):
        ShapeNetPartConfig(source="mesh", root=None)
    with pytest.raises(DataError, match="is not a folder"):
        prepare(tmp_path, source="hdf5", root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="shapenet_part.h5 is missing"):
        ShapeNetPart().load(tmp_path)


def test_malformed_prepared_file_is_named(tiny_hdf5, tmp_path):
    ds, _ = prepare(tmp_path, source="hdf5", root=str(tiny_hdf5.root))
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(tmp_path / "prepared_0" / H5_NAME, bad / H5_NAME)
    _edit_h5(bad / H5_NAME, "category", lambda a: a[:-1])
    with pytest.raises(DataError, match=f"{bad / H5_NAME}: part_labels"):
        ds.load(bad)
    (bad / H5_NAME).write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        ds.load(bad)


# ---------------------------------------------------------------------------------------------- splits


def fake_data(per_category=(40, 40, 40), val=(5, 6, 7), test=(3, 3, 3)) -> TaskData:
    category, official = [], []
    for c in range(3):
        category += [c] * (per_category[c] + val[c] + test[c])
        official += [0] * per_category[c] + [1] * val[c] + [2] * test[c]
    perm = np.random.default_rng(0).permutation(len(category))  # interleaved, like the release
    category, official = np.asarray(category)[perm], np.asarray(official)[perm]
    targets = torch.zeros(len(category), 5)
    targets[:, -1] = torch.from_numpy(category).float()
    return TaskData(torch.zeros(len(category), 3, 4), targets, ["part_segmentation"],
                    {"official_split": official, "category_names": ["a", "b", "c"]})


def split(data: TaskData, **cfg):
    return ShapeNetPart().make_splits(data, ShapeNetSplitConfig(**cfg))


def test_k_shot_splits_per_category():
    data = fake_data()
    cat, official = data.targets[:, -1].long().numpy(), data.meta["official_split"]
    s = split(data, seed=2)
    check_disjoint(s)
    assert np.bincount(cat[s["train"]]).tolist() == [30, 30, 30] and np.bincount(cat[s["aux"]]).tolist() == [2, 2, 2]
    assert (official[s["train"]] == 0).all() and (official[s["aux"]] == 0).all()
    assert np.array_equal(s["val"], np.flatnonzero(official == 1))
    assert np.array_equal(s["test"], np.flatnonzero(official == 2))
    assert all(v.dtype == np.int64 and np.array_equal(v, np.sort(v)) for v in s.values())
    assert all(np.array_equal(s[k], split(data, seed=2)[k]) for k in s)
    assert not np.array_equal(s["train"], split(data, seed=3)["train"])
    capped = split(data, val_per_category=5)
    assert np.bincount(cat[capped["val"]]).tolist() == [5, 5, 5]
    everything = split(data, train_per_category=0, aux_per_category=1)
    assert len(everything["train"]) == 117 and len(everything["aux"]) == 3
    with pytest.raises(ValueError, match="category a has 40 official training shapes, fewer than"):
        split(data, train_per_category=39)
    with pytest.raises(ValueError, match="no official val split"):
        split(fake_data(val=(0, 0, 0)))


# ---------------------------------------------------------------------------------------------- metric


MASK = part_mask([[0, 1], [2, 3, 4]], 5)


def test_iou_by_hand_with_the_absent_part_rule():
    labels = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 3, 3], [2, 2, 3, 2]])
    category = torch.tensor([0, 1, 1])
    ious = shape_ious(pred, labels, category, MASK)
    # shape 0: part0 1/2, part1 2/3; shape 1: parts 2, 3 exact and part 4 absent in both -> 1;
    # shape 2: part2 3/4, part3 0/1, part4 absent -> 1
    expected = torch.tensor([(1 / 2 + 2 / 3) / 2, 1.0, (3 / 4 + 0 + 1) / 3], dtype=torch.float64)
    assert torch.allclose(ious, expected)
    summary = miou_summary(ious, category, ["Cap", "Mug"])
    assert summary["instance_miou"] == pytest.approx(100 * expected.mean().item())
    assert summary["miou/Cap"] == pytest.approx(100 * expected[0].item())
    assert summary["miou/Mug"] == pytest.approx(100 * expected[1:].mean().item())
    assert summary["class_miou"] == pytest.approx((summary["miou/Cap"] + summary["miou/Mug"]) / 2)
    assert "miou/Other" not in miou_summary(ious, category, ["Cap", "Mug", "Other"])  # absent category: skipped


def test_restricted_argmax_ignores_other_categories_parts():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [9.0, 9.0], [0.0, 0.0], [0.0, 0.0]]])  # [1, 5, 2]
    assert restricted_argmax(logits, torch.tensor([0]), MASK).tolist() == [[1, 0]]
    assert restricted_argmax(logits, torch.tensor([1]), MASK).tolist() == [[2, 2]]


class FixedLogits(torch.nn.Module):
    """Returns the given logit tables in turn (one per evaluation chunk), whatever the points."""

    def __init__(self, tables: list[torch.Tensor]) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.tables, self.modes = iter(tables), []

    def forward(self, x):
        self.modes.append(self.training)
        table = next(self.tables)
        assert len(table) == len(x)
        return table * self.scale


def test_metrics_on_a_known_model(tiny_hdf5, tmp_path, monkeypatch):
    ds, data = prepare(tmp_path, source="hdf5", root=str(tiny_hdf5.root))
    monkeypatch.setattr(task, "EVAL_CHUNK", 2)
    category = data.targets[:, P].long()
    idx = torch.cat([torch.nonzero(category == 0)[:, 0][:2], torch.nonzero(category == 1)[:, 0][:1]])
    labels, category = data.targets[idx, :P].long(), category[idx]
    logits = F.one_hot(labels, 5).permute(0, 2, 1).float() * 4
    logits[:, 4, 0] = 5.0  # part 4 (a Mug part no shape uses) wins the unrestricted argmax on every first point
    model = FixedLogits([logits[:2], logits[2:]])
    model.train()
    out = ds.metrics(model, data, idx)
    # Cap shapes cannot predict part 4: perfect; the Mug shape loses its first point to part 4, whose IoU is 0
    assert out["miou/Cap"] == pytest.approx(100.0)
    first_part = labels[2, 0].item()
    own = (labels[2] == first_part).sum().item()
    mug = (1 - 1 / own + 1 + 0) / 3 if own < P else None
    assert mug is not None and out["miou/Mug"] == pytest.approx(100 * mug)
    assert out["instance_miou"] == pytest.approx((200 + 100 * mug) / 3)
    assert out["class_miou"] == pytest.approx((100 + 100 * mug) / 2)
    ce = F.cross_entropy(logits, labels, reduction="none").mean(1).mean()
    assert out["main_loss"] == pytest.approx(float(ce), rel=1e-5)
    assert model.modes == [False, False] and model.training  # eval mode, in chunks, mode restored


# ---------------------------------------------------------------------------------------------- transforms, losses


def test_batch_transform_subsamples_points_and_labels_together():
    ds = ShapeNetPart(ShapeNetModelConfig(train_points=10, augment_scale=0.0, augment_jitter=0.0))
    b, n = 4, 50
    x = torch.arange(b * 3 * n, dtype=torch.float32).view(b, 3, n)
    y = torch.cat([x[:, 0] * 7, torch.tensor([[3.0], [1.0], [0.0], [2.0]])], dim=1)  # label = 7 * x-coordinate
    xs, ys = ds.batch_transform(x, y, train=True, generator=torch.Generator().manual_seed(0))
    assert xs.shape == (4, 3, 10) and ys.shape == (4, 11)
    assert torch.equal(ys[:, :10], xs[:, 0] * 7) and torch.equal(ys[:, 10], y[:, -1])
    for i in range(b):
        cols = ((xs[i, 0] - x[i, 0, 0]).long())
        assert len(set(cols.tolist())) == 10 and torch.equal(xs[i], x[i][:, cols])  # distinct columns of its own shape
    again = ds.batch_transform(x, y, train=True, generator=torch.Generator().manual_seed(0))
    other = ds.batch_transform(x, y, train=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again[0], xs) and not torch.equal(other[0], xs)
    ev = ds.batch_transform(x, y, train=False)
    assert ev[0] is not None and torch.equal(ev[0], x) and torch.equal(ev[1], y)
    ds = ShapeNetPart(ShapeNetModelConfig(train_points=10, augment_scale=0.2, augment_jitter=0.01))
    aug, ya = ds.batch_transform(x, y, train=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ya, ys) and not torch.equal(aug, xs)  # same points, moved
    scale = (aug * xs).sum(2) / (xs * xs).sum(2)  # least-squares per-axis scale: U(0.8, 1.2) up to the jitter
    assert ((scale > 0.79) & (scale < 1.21)).all() and not torch.allclose(scale, torch.ones_like(scale))


def test_per_task_losses_is_the_unmasked_per_shape_mean():
    ds = ShapeNetPart()
    logits = torch.randn(3, 5, 7)
    targets = torch.cat([torch.randint(0, 5, (3, 7)).float(), torch.tensor([[0.0], [1.0], [1.0]])], dim=1)
    losses = ds.per_task_losses(logits, targets)
    assert losses.shape == (3, 1)
    expected = -F.log_softmax(logits, 1).gather(1, targets[:, None, :7].long())[:, 0].mean(1)
    assert torch.allclose(losses[:, 0], expected, atol=1e-6)
    assert torch.equal(ds.per_task_losses((logits, torch.randn(3, 4, 7)), targets), losses)


# ---------------------------------------------------------------------------------------------- models


def test_dgcnn_and_pointnet_shapes_and_trunk():
    ds = ShapeNetPart()
    data = fake_data()
    data.meta.update(num_parts=7, num_categories=3)
    cfg = ShapeNetModelConfig(k=5, width=8, emb=16, generator_width=8)
    x = torch.randn(2, 3, 40)
    model = ds.build_model(data, cfg)
    assert model(x).shape == (2, 7, 40) and model.encode(x).shape == (2, 16, 40)
    with_aux = ds.build_model(data, cfg, aux_outputs=18)
    main, aux = with_aux.decode(with_aux.encode(x))
    assert torch.equal(with_aux(x), main)
    assert main.shape == (2, 7, 40) and aux.shape == (2, 18, 40)
    shared = {id(p) for p in with_aux.shared_parameters()}
    assert not shared & {id(p) for p in [*with_aux.part_head.parameters(), *with_aux.aux_head.parameters()]}
    assert {id(p) for p in with_aux.last_shared_parameters()} <= shared
    assert len(shared) + 4 == len(list(with_aux.parameters()))
    generator = ds.build_label_generator(data, cfg, num_aux_classes=18)
    assert generator(x).shape == (2, 18, 40)
    # the k-NN graph is dynamic but permutation-equivariant: permuting points permutes the outputs
    model.eval()
    perm = torch.randperm(40)
    assert torch.allclose(model(x)[:, :, perm], model(x[:, :, perm]), atol=1e-5)


def test_edge_features_by_hand():
    from pipeline.models.pointcloud import edge_features

    x = torch.tensor([[[0.0, 1.0, 5.0]]])  # 1-d points 0, 1, 5
    e = edge_features(x, k=2)  # [1, 2, 3, 2]: (x_j - x_i, x_i) over each point's 2 nearest (itself first)
    assert e.shape == (1, 2, 3, 2)
    assert e[0, 0].tolist() == [[0.0, 1.0], [0.0, -1.0], [0.0, -4.0]] and e[0, 1].tolist() == [[0, 0], [1, 1], [5, 5]]


# ---------------------------------------------------------------------------------------------- stand-in


def test_standin_is_deterministic_and_written_in_the_hdf5_layout(tmp_path):
    cfg = dict(points=64, standin_categories=3, standin_train=3, standin_val=1, standin_test=2, standin_seed=5)
    _, data = prepare(tmp_path, **cfg)
    prepare(tmp_path, **cfg)
    hashes = write_manifest(tmp_path / "prepared_0")
    assert hashes == write_manifest(tmp_path / "prepared_1")
    raw = tmp_path / "prepared_0" / STANDIN_DIR
    assert {f"{STANDIN_DIR}/ply_data_{s}0.h5" for s in SPLIT_NAMES} <= set(hashes)
    again = read_hdf5_release(raw)  # the real format-(a) reader reads the raw stand-in
    assert torch.equal(torch.from_numpy(again.labels).float(), data.targets[:, :64])
    _, other = prepare(tmp_path, **{**cfg, "standin_seed": 6})
    assert not torch.equal(other.inputs, data.inputs)
    assert data.meta["category_names"] == ["Table", "Lamp", "Mug"] and "stand-in" in data.meta["source"]
    assert data.meta["parts_per_category"] == [[0, 1], [2, 3, 4], [5, 6]]
    assert np.bincount(data.meta["official_split"]).tolist() == [9, 3, 6]
    radius = data.inputs.norm(dim=1).max(dim=1).values
    assert torch.allclose(radius, torch.ones_like(radius), atol=1e-5)  # unit sphere
    for c, parts in enumerate(data.meta["parts_per_category"]):  # every part of every category appears
        used = data.targets[data.targets[:, -1] == c, :64].long().unique().tolist()
        assert used == parts


def test_params_profile():
    params = parse_params({"dataset": "shapenet_part", "method": "stl", "datasets": {"shapenet_part": {"split": {"seed": 4}}}})
    assert params.split.train_per_category == 30 and params.split.seed == 4
    assert params.profile.model.train_points == 1024 and params.train.optimizer == "adam"
    with pytest.raises(ParamsError, match="root is required when source is 'hdf5'"):
        parse_params({"datasets": {"shapenet_part": {"prepare": {"source": "hdf5", "root": None}}}})
    assert "shapenet_part" in DATASETS


def test_complex_face_labels_are_refused(tmp_path):
    from pipeline.datasets.shapenet_part.sources import read_face_labels

    path = tmp_path / "shape.faces.npy"
    np.save(path, np.ones(6, dtype=np.complex128))
    with pytest.raises(DataError, match=r"shape\.faces\.npy.*complex"):
        read_face_labels(path)
