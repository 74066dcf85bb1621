"""NYUv2: both real loaders on tiny hand-written files (the .npy layout and a MATLAB-v7.3-like HDF5 with its
mapping, splits and normals files), their errors, the official splits, loss-image normalisation, every
metric on a hand case, the SegNet, and the deterministic stand-in."""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from pipeline.datasets.nyuv2.config import Config, ModelConfig, SplitConfig
from pipeline.datasets.nyuv2.prepared import H5_NAME
from pipeline.datasets.nyuv2.sources import CLASS_NAMES, KINDS, NUM_CLASSES
from pipeline.datasets.shared.npy_layout import official_splits
from pipeline.datasets.nyuv2.standin import STANDIN_DIR, random_depth_field, render_standin_scene
from pipeline.datasets.nyuv2.task import TASK_NAMES, Nyuv2, pixel_losses
from pipeline.datasets.shared.aux_roles import AUX_ROLES_FILE
from pipeline.metrics.geometry import depth_error_sums, depth_scores, normal_angles, normal_scores
from pipeline.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.datasets.shared.base import DataError, TaskData
from pipeline.datasets.shared.base import reduce_pixels
from pipeline.core.io import write_manifest
from pipeline.core.registry import MODELS
from pipeline.datasets.shared.splits import check_disjoint

H, W = 8, 12  # the tiny fixtures' size


def prepare_and_load(out: Path, **cfg) -> tuple[Nyuv2, TaskData]:
    ds = Nyuv2()
    out.mkdir(parents=True, exist_ok=True)
    ds.prepare(Config(**cfg), out)
    return ds, ds.load(out)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------- (a) .npy layout


def write_npy_layout(root: Path, counts: dict[str, int]) -> SimpleNamespace:
    """Per sample a flat colour and a known label/depth/normal pattern; non-contiguous indices as in real dumps."""
    rng = np.random.default_rng(1)
    truth: dict[str, list] = {"image": [], "label": [], "depth": [], "normal": [], "ids": [], "is_train": []}
    for split, n in counts.items():
        for kind in KINDS:
            (root / split / kind).mkdir(parents=True)
        for k in range(n):
            index = 3 * k + (split == "val")
            image = np.full((H, W, 3), [0.1 * k, 0.5, 1.0 - 0.1 * k], dtype=np.float32)
            label = rng.integers(-1, 13, size=(H, W)).astype(np.float32)
            depth = rng.uniform(0.5, 5, size=(H, W, 1)).astype(np.float32)
            depth[0, 0] = 0  # invalid
            normal = unit(rng.normal(size=(H, W, 3))).astype(np.float32)
            normal[1, 1] = 0  # invalid
            for kind, arr in zip(KINDS, (image, label, depth, normal)):
                np.save(root / split / kind / f"{index}.npy", arr)
            for key, value in zip(("image", "label", "depth", "normal", "ids", "is_train"),
                                  (image, label, depth[..., 0], normal, index, split == "train")):
                truth[key].append(value)
    return SimpleNamespace(root=root, **{k: np.asarray(v) for k, v in truth.items()})


@pytest.fixture(scope="module")
def npy_layout(tmp_path_factory) -> SimpleNamespace:
    return write_npy_layout(tmp_path_factory.mktemp("npy") / "nyuv2", {"train": 4, "val": 3})


@pytest.fixture
def npy_copy(npy_layout, tmp_path) -> SimpleNamespace:
    root = tmp_path / "nyuv2"
    shutil.copytree(npy_layout.root, root)
    return SimpleNamespace(**{**vars(npy_layout), "root": root})


def test_preprocessed_layout_is_read_into_one_h5(npy_layout, tmp_path):
    ds, data = prepare_and_load(tmp_path / "out", source="preprocessed", root=str(npy_layout.root), image_size=(H, W))
    n = len(npy_layout.ids)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [H5_NAME]
    assert data.inputs.shape == (n, 3, H, W) and data.inputs.dtype == torch.uint8
    assert data.targets.shape == (n, 5, H, W) and data.targets.dtype == torch.float32
    assert data.task_names == ["segmentation", "depth", "normal"]
    # train rows first, then val (= official test), each by index
    assert data.meta["sample_ids"].tolist() == [0, 3, 6, 9, 1, 4, 7]
    assert data.meta["is_train"].tolist() == [True] * 4 + [False] * 3
    expected_rgb = np.rint(npy_layout.image[:, 0, 0] * 255)
    assert np.array_equal(data.inputs[:, :, 0, 0].numpy(), expected_rgb)  # floats in [0, 1] -> 0..255
    assert np.array_equal(data.targets[:, 0].numpy(), npy_layout.label)  # -1 kept as ignore
    assert np.allclose(data.targets[:, 1].numpy(), npy_layout.depth)
    assert np.allclose(data.targets[:, 2:].permute(0, 2, 3, 1).numpy(), npy_layout.normal, atol=1e-6)
    assert (data.targets[:, 2:, 1, 1] == 0).all() and (data.targets[:, 1, 0, 0] == 0).all()
    assert data.meta["image_size"] == (H, W)
    assert "aux_roles" not in data.meta  # real data: no roles
    x, y = ds.batch_transform(data.inputs[:2], data.targets[:2], train=True)
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y is not None


def test_preprocessed_layout_is_resized_on_request(npy_layout, tmp_path):
    _, data = prepare_and_load(tmp_path / "out", source="preprocessed", root=str(npy_layout.root), image_size=(4, 6))
    assert data.inputs.shape[2:] == (4, 6) and data.targets.shape[2:] == (4, 6)
    labels = data.targets[:, 0]
    assert set(labels.unique().tolist()) <= set(range(-1, 13))  # nearest: no blended labels
    normals = data.targets[:, 2:]
    norm = normals.norm(dim=1)
    assert torch.allclose(norm[norm > 0], torch.ones(1), atol=1e-5)


@pytest.mark.parametrize("damage", ["corrupt", "shape", "missing", "label"])
def test_malformed_npy_file_is_named(npy_copy, tmp_path, damage):
    target = npy_copy.root / "val" / "depth" / "4.npy"
    if damage == "corrupt":
        target.write_bytes(b"not a numpy file")
    elif damage == "shape":
        np.save(target, np.ones((H + 1, W, 1), np.float32))
    elif damage == "missing":
        target.unlink()
        target = target.parent
    else:
        target = npy_copy.root / "val" / "label" / "4.npy"
        np.save(target, np.full((H, W), 13.0, np.float32))
    with pytest.raises(DataError, match=str(target)):
        prepare_and_load(tmp_path / "out", source="preprocessed", root=str(npy_copy.root), image_size=(H, W))


def test_config_needs_root_for_real_sources_and_defaults_sizes():
    with pytest.raises(ValidationError, match="root is required"):
        Config(source="official", root=None)
    assert Config().resolved_image_size == (48, 64)
    assert Config(source="preprocessed", root="x").resolved_image_size == (288, 384)
    assert Config(source="preprocessed", root="x", image_size=[30, 40]).resolved_image_size == (30, 40)


# ---------------------------------------------------------------------------------------------- (b) official .mat

MAT_H, MAT_W, MAT_N = 6, 10, 5
RAW_CLASSES = 20


def write_official(root: Path, normals_format: str = "npy") -> SimpleNamespace:
    """A MATLAB v7.3-like file: HDF5 with a 512-byte user block and MATLAB's transposed arrays."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, size=(MAT_N, MAT_H, MAT_W, 3), dtype=np.uint8)  # MATLAB's H x W x 3 per image
    raw = rng.integers(0, RAW_CLASSES + 1, size=(MAT_N, MAT_H, MAT_W)).astype(np.uint16)
    depths = rng.uniform(0.7, 9.0, size=(MAT_N, MAT_H, MAT_W)).astype(np.float32)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w", userblock_size=512) as f:
        f.create_dataset("images", data=images.transpose(0, 3, 2, 1))  # (N, 3, W, H) as h5py sees MATLAB's array
        f.create_dataset("labels", data=raw.transpose(0, 2, 1))
        f.create_dataset("depths", data=depths.transpose(0, 2, 1))
        for name in ("images", "labels", "depths"):
            f[name].attrs["MATLAB_class"] = np.bytes_("uint8" if name == "images" else "double")
    with open(root / "nyu_depth_v2_labeled.mat", "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 1 00:00:00 2024 HDF5 schema 1.00 .")
    mapping = rng.integers(0, 14, size=RAW_CLASSES)  # raw id k+1 -> 13-class id (0 = ignore)
    (root / "class13_mapping.txt").write_text(" ".join(map(str, mapping)) + "\n")
    train, test = np.array([[1], [3], [4]]), np.array([[5], [2]])  # 1-based column vectors, as in splits.mat
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": train, "testNdxs": test})
    normals = unit(rng.normal(size=(MAT_N, MAT_H, MAT_W, 3))).astype(np.float32)
    normals[:, 0, 0] = np.nan  # invalid
    if normals_format == "npy":
        np.save(root / "normals.npy", normals)
    else:
        with h5py.File(root / "normals.h5", "w") as f:
            f.create_dataset("normals", data=normals)
    lut = np.concatenate([[-1], mapping - 1])
    return SimpleNamespace(root=root, images=images, labels=lut[raw], depths=depths, normals=normals,
                           normals_file=f"normals.{'npy' if normals_format == 'npy' else 'h5'}")


def official_cfg(off: SimpleNamespace, **kw) -> dict:
    return {"source": "official", "root": str(off.root), "image_size": (MAT_H, MAT_W),
            "normals_file": off.normals_file, **kw}


@pytest.mark.parametrize("normals_format", ["npy", "h5"])
def test_official_mat_is_read_with_mapping_splits_and_normals(tmp_path, normals_format):
    off = write_official(tmp_path / "raw", normals_format)
    ds, data = prepare_and_load(tmp_path / "out", **official_cfg(off))
    assert data.meta["sample_ids"].tolist() == [0, 1, 2, 3, 4]  # 1-based trainNdxs/testNdxs -> rows
    assert data.meta["is_train"].tolist() == [True, False, True, True, False]
    # MATLAB's H x W orientation is restored: pixel (r, c) is where MATLAB put it
    assert np.array_equal(data.inputs.permute(0, 2, 3, 1).numpy(), off.images)
    assert np.array_equal(data.targets[:, 0].numpy(), off.labels)  # mapped to 0..12, raw 0 and class 0 -> -1
    assert (data.targets[:, 0] == -1).any()
    assert np.allclose(data.targets[:, 1].numpy(), off.depths)
    normals = data.targets[:, 2:].permute(0, 2, 3, 1).numpy()
    assert (normals[:, 0, 0] == 0).all()  # NaN -> invalid
    assert np.allclose(normals[:, 1:], off.normals[:, 1:], atol=1e-6)
    assert "aux_roles" not in data.meta and sorted(p.name for p in (tmp_path / "out").iterdir()) == [H5_NAME]


def test_official_resizes_to_image_size_and_drops_unlisted_images(tmp_path):
    off = write_official(tmp_path / "raw")
    scipy.io.savemat(off.root / "splits_subset.mat", {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2]])})
    cfg = official_cfg(off, image_size=(3, 5), splits_file="splits_subset.mat")
    _, data = prepare_and_load(tmp_path / "out", **cfg)
    assert data.inputs.shape == (3, 3, 3, 5) and data.targets.shape == (3, 5, 3, 5)
    assert data.meta["sample_ids"].tolist() == [0, 1, 2]
    assert set(data.targets[:, 0].unique().tolist()) <= set(range(-1, 13))


@pytest.mark.parametrize("mapping_format", ["npy", "mat_struct", "mat_array"])
def test_official_accepts_npz_splits_and_other_mapping_files(tmp_path, mapping_format):
    off = write_official(tmp_path / "raw")
    np.savez(off.root / "splits.npz", trainNdxs=np.array([1, 2, 3, 4]), testNdxs=np.array([5]))
    mapping = np.asarray((off.root / "class13_mapping.txt").read_text().split(), dtype=np.int64)
    if mapping_format == "npy":
        name = "map.npy"
        np.save(off.root / name, mapping)
    else:  # the toolbox's class13Mapping.mat (a struct) or a .mat with one array
        name = "map.mat"
        content = {"classMapping13": {"labelIds": mapping[None].astype(float), "className": np.array(["a", "b"])}} \
            if mapping_format == "mat_struct" else {"m": mapping[:, None]}
        scipy.io.savemat(off.root / name, content)
    _, data = prepare_and_load(tmp_path / "out", **official_cfg(off, splits_file="splits.npz", class_mapping_file=name))
    assert data.meta["is_train"].tolist() == [True] * 4 + [False]
    assert np.array_equal(data.targets[:, 0].numpy(), off.labels)


def test_missing_normals_are_a_clear_error(tmp_path):
    off = write_official(tmp_path / "raw")
    with pytest.raises(DataError, match="normals_file is not set.*must be supplied"):
        prepare_and_load(tmp_path / "out", **official_cfg(off, normals_file=None))
    missing = off.root / "no_normals.npy"
    with pytest.raises(DataError, match=f"{missing} is missing.*must be supplied"):
        prepare_and_load(tmp_path / "out2", **official_cfg(off, normals_file=str(missing)))


@pytest.mark.parametrize("damage", ["mat_not_hdf5", "mat_missing_labels", "mapping_values", "mapping_short",
                                    "splits_range", "normals_count"])
def test_malformed_official_file_is_named(tmp_path, damage):
    off = write_official(tmp_path / "raw")
    mat, named = off.root / "nyu_depth_v2_labeled.mat", off.root / "nyu_depth_v2_labeled.mat"
    if damage == "mat_not_hdf5":
        scipy.io.savemat(mat, {"images": np.zeros((2, 2))})  # a v5 .mat, not v7.3
    elif damage == "mat_missing_labels":
        with h5py.File(mat, "a") as f:
            del f["labels"]
    elif damage == "mapping_values":
        named = off.root / "class13_mapping.txt"
        named.write_text("1 2 14\n")
    elif damage == "mapping_short":  # raw ids beyond the mapping: both files are named
        (off.root / "class13_mapping.txt").write_text("1 2 3\n")
    elif damage == "splits_range":
        named = off.root / "splits.mat"
        scipy.io.savemat(named, {"trainNdxs": np.array([[0], [1]]), "testNdxs": np.array([[2]])})
    else:
        named = off.root / "normals.npy"
        np.save(named, np.zeros((MAT_N - 1, MAT_H, MAT_W, 3), np.float32))
    with pytest.raises(DataError, match=str(named)):
        prepare_and_load(tmp_path / "out", **official_cfg(off))


def test_malformed_prepared_file_is_named(npy_layout, tmp_path):
    out = tmp_path / "out"
    prepare_and_load(out, source="preprocessed", root=str(npy_layout.root), image_size=(H, W))
    with h5py.File(out / H5_NAME, "a") as f:
        del f["normals"]
    with pytest.raises(DataError, match=f"{out / H5_NAME}: missing normals"):
        Nyuv2().load(out)
    (out / H5_NAME).write_bytes(b"junk")
    with pytest.raises(DataError, match=str(out / H5_NAME)):
        Nyuv2().load(out)


# ---------------------------------------------------------------------------------------------- splits


def test_official_split_sizes_795_654():
    is_train = np.r_[np.ones(795, bool), np.zeros(654, bool)]
    splits = official_splits(is_train, seed=0, val_fraction=0.1, aux_fraction=0.025)
    assert {k: len(v) for k, v in splits.items()} == {"val": 79, "aux": 17, "train": 699, "test": 654}
    check_disjoint(splits)
    assert all(v.dtype == np.int64 and np.all(np.diff(v) > 0) for v in splits.values())
    assert np.array_equal(np.sort(np.concatenate([splits["train"], splits["val"], splits["aux"]])), np.arange(795))
    assert np.array_equal(splits["test"], np.arange(795, 1449))
    again = official_splits(is_train, 0, 0.1, 0.025)
    other = official_splits(is_train, 1, 0.1, 0.025)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    assert not np.array_equal(splits["val"], other["val"])
    data = TaskData(torch.zeros(len(is_train), 1), torch.zeros(len(is_train), 1), ["s"], {"is_train": is_train})
    via_dataset = Nyuv2().make_splits(data, SplitConfig())
    assert all(np.array_equal(splits[k], via_dataset[k]) for k in splits)
    with pytest.raises(ValueError, match="no training image"):
        official_splits(np.r_[np.ones(2, bool), np.zeros(2, bool)], 0, 0.1, 0.1)


# ---------------------------------------------------------------------------------------------- losses


def random_batch(b: int = 3, h: int = 5, w: int = 7, seed: int = 0) -> tuple[tuple, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seg = torch.randn(b, 13, h, w, generator=g)
    depth = torch.randn(b, 1, h, w, generator=g)
    normal = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    label = torch.randint(-1, 13, (b, h, w), generator=g).float()
    gt_depth = torch.rand(b, h, w, generator=g) * 4 * (torch.rand(b, h, w, generator=g) > 0.3)
    gt_normal = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1) * (torch.rand(b, 1, h, w, generator=g) > 0.2)
    label[-1], gt_depth[-1], gt_normal[-1] = -1, 0, 0  # a sample without any valid pixel
    return (seg, depth, normal), torch.cat([label[:, None], gt_depth[:, None], gt_normal], 1)


def test_loss_images_are_densities_over_valid_pixels():
    outputs, targets = random_batch()
    seg, depth, normal = outputs
    losses = Nyuv2().per_task_losses(outputs, targets)
    assert losses.shape == (3, 3, 5, 7)
    label, gt_depth, gt_normal = targets[:, 0], targets[:, 1], targets[:, 2:]
    valid = [label >= 0, gt_depth > 0, gt_normal.abs().sum(1) > 0]
    per_pixel = [F.cross_entropy(seg, label.long().clamp_min(0), reduction="none"), (depth[:, 0] - gt_depth).abs(),
                 1 - (normal * gt_normal).sum(1)]
    per_sample = reduce_pixels(losses)
    for t in range(3):
        assert (losses[:, t][~valid[t]] == 0).all()
        for b in range(2):
            assert valid[t][b].any()
            assert torch.allclose(per_sample[b, t], per_pixel[t][b][valid[t][b]].mean(), atol=1e-5)
    assert (losses[-1] == 0).all()  # no valid pixel: all zeros, no NaN
    seg.requires_grad_(True)
    pixel_losses((seg, depth, normal), targets).sum().backward()
    assert torch.isfinite(seg.grad).all()


# ---------------------------------------------------------------------------------------------- metrics (hand cases)


def test_segmentation_metrics_by_hand():
    gt = torch.tensor([[[0, 1], [1, -1]]])
    pred = torch.tensor([[[0, 1], [0, 2]]])  # class 2 predicted only on an ignored pixel: not counted
    cm = confusion_matrix(pred, gt, NUM_CLASSES)
    assert cm[0, 0] == 1 and cm[1, 1] == 1 and cm[1, 0] == 1 and cm.sum() == 3
    scores = segmentation_scores(cm)
    # IoU(0) = 1 / (2 + 1 - 1) = 0.5, IoU(1) = 1 / (1 + 2 - 1) = 0.5; classes 2..12 absent everywhere
    assert scores["miou"] == pytest.approx(50.0)
    assert scores["pixel_acc"] == pytest.approx(200 / 3)
    # a class present only in the prediction lowers the mean
    scores = segmentation_scores(confusion_matrix(torch.tensor([[0, 3]]), torch.tensor([[0, 0]]), NUM_CLASSES))
    assert scores["miou"] == pytest.approx(25.0) and scores["pixel_acc"] == pytest.approx(50.0)


def test_depth_metrics_by_hand():
    gt = torch.tensor([[[1.0, 2.0], [0.0, 4.0]]])
    pred = torch.tensor([[[[2.0, 2.0], [5.0, 3.0]]]])  # [B, 1, H, W]; the gt-0 pixel is invalid
    scores = depth_scores(depth_error_sums(pred, gt))
    assert scores["depth_abs_err"] == pytest.approx(2 / 3)
    assert scores["depth_rel_err"] == pytest.approx((1 + 0 + 0.25) / 3)


def test_normal_metrics_by_hand():
    def vec(deg: float) -> list[float]:
        return [math.sin(math.radians(deg)), 0.0, math.cos(math.radians(deg))]

    gt = torch.tensor([[0, 0, 1.0]] * 4 + [[0, 0, 0.0]]).T.reshape(1, 3, 1, 5)
    pred = torch.tensor([vec(0), vec(20), vec(45), vec(90), vec(10)]).T.reshape(1, 3, 1, 5)
    angles = normal_angles(pred, gt)
    assert torch.allclose(angles, torch.tensor([0.0, 20.0, 45.0, 90.0], dtype=torch.float64), atol=1e-4)
    scores = normal_scores(angles)
    assert scores["normal_mean_deg"] == pytest.approx(38.75, abs=1e-4)
    assert scores["normal_median_deg"] == pytest.approx(32.5, abs=1e-4)
    assert scores["normal_within_11.25"] == pytest.approx(25.0)
    assert scores["normal_within_22.5"] == pytest.approx(50.0)
    assert scores["normal_within_30"] == pytest.approx(50.0)


class FixedOutputs(nn.Module):
    """Returns stored outputs for the samples it is given (identified by their first pixel)."""

    def __init__(self, outputs: tuple, inputs: torch.Tensor) -> None:
        super().__init__()
        self.outputs, self.keys = outputs, inputs[:, 0, 0, 0].tolist()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple:
        rows = [self.keys.index(float(v)) for v in (x[:, 0, 0, 0] * 255).round()]
        return tuple(o[rows] for o in self.outputs)


def test_metrics_accumulate_over_chunks(monkeypatch):
    outputs, targets = random_batch(b=5, seed=3)
    inputs = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 5, 7).contiguous()
    data = TaskData(inputs, targets, list(TASK_NAMES), {})
    ds, model = Nyuv2(), FixedOutputs(outputs, inputs)
    idx = torch.tensor([0, 2, 3, 4])
    seg, depth, normal = (o[idx] for o in outputs)
    y = targets[idx]
    expected = {**segmentation_scores(confusion_matrix(seg.argmax(1), y[:, 0], NUM_CLASSES)),
                **depth_scores(depth_error_sums(depth, y[:, 1])),
                **normal_scores(normal_angles(normal, y[:, 2:])),
                "main_loss": float(reduce_pixels(ds.per_task_losses((seg, depth, normal), y))[:, 0].mean())}
    monkeypatch.setattr(Nyuv2, "eval_chunk", 3)  # 2 chunks: the confusion matrix spans both
    got = ds.metrics(model, data, idx)
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-5), k
    assert ds.main_loss(model, data, idx) == pytest.approx(expected["main_loss"], rel=1e-5)


# ---------------------------------------------------------------------------------------------- model


def test_segnet_shapes_and_parameter_groups():
    torch.manual_seed(0)
    ds = Nyuv2()
    data = TaskData(torch.zeros(1, 3, 10, 14, dtype=torch.uint8), torch.zeros(1, 5, 10, 14), TASK_NAMES, {})
    model = ds.build_model(data, ModelConfig(width=4, stages=2))
    assert isinstance(model, MODELS.get("segnet"))
    x = torch.rand(2, 3, 10, 14)  # 10 -> 5 -> 2: odd sizes unpool exactly
    z = model.encode(x)
    assert z.shape == (2, 4, 10, 14)
    seg, depth, normal = model.decode(z)
    assert seg.shape == (2, 13, 10, 14) and depth.shape == (2, 1, 10, 14) and normal.shape == (2, 3, 10, 14)
    assert torch.allclose(normal.norm(dim=1), torch.ones(1), atol=1e-5)
    shared = {id(p) for p in model.shared_parameters()}
    last = model.last_shared_parameters()
    assert last and {id(p) for p in last} <= shared
    head_ids = {id(p) for p in model.seg_head.parameters()}
    assert not head_ids & shared
    assert len(shared) + sum(1 for _ in model.seg_head.parameters()) * 3 == sum(1 for _ in model.parameters())
    # the last shared block is what produces z
    model.zero_grad()
    z.sum().backward()
    assert all(p.grad is not None for p in last)
    with pytest.raises(ValueError, match="not supported"):
        ds.build_model(data, ModelConfig(), aux_outputs=4)
    with pytest.raises(ValueError, match="at least 8 pixels"):
        MODELS.get("segnet")(width=2, stages=3).encode(torch.rand(1, 3, 6, 16))


# ---------------------------------------------------------------------------------------------- stand-in


def test_standin_is_deterministic_and_in_the_npy_layout(tmp_path):
    small = {"standin_train": 3, "standin_test": 2, "image_size": (16, 24)}
    _, data = prepare_and_load(tmp_path / "a", **small)
    prepare_and_load(tmp_path / "b", **small)
    prepare_and_load(tmp_path / "c", **small, standin_seed=1)
    hashes = write_manifest(tmp_path / "a")
    assert hashes == write_manifest(tmp_path / "b")
    assert write_manifest(tmp_path / "c")[H5_NAME] != hashes[H5_NAME]
    raw = tmp_path / "a" / STANDIN_DIR
    for split, n in (("train", 3), ("val", 2)):
        for kind, shape in zip(KINDS, ((16, 24, 3), (16, 24), (16, 24, 1), (16, 24, 3))):
            files = sorted(p.name for p in (raw / split / kind).iterdir())
            assert files == [f"{i}.npy" for i in range(n)]
            assert np.load(raw / split / kind / "0.npy").shape == shape
    # the same files through the preprocessed source give the same tensors, but no roles (real format)
    _, again = prepare_and_load(tmp_path / "d", source="preprocessed", root=str(raw), image_size=(16, 24))
    assert torch.equal(again.inputs, data.inputs) and torch.equal(again.targets, data.targets)
    assert data.meta["is_train"].tolist() == [True] * 3 + [False] * 2
    assert data.meta["aux_roles"] == {"depth": "irrelevant", "normal": "helpful"} and "aux_roles" not in again.meta
    assert AUX_ROLES_FILE in hashes


def test_standin_depth_is_a_random_field_and_the_normals_are_the_scene(tmp_path):
    """The written depth comes from its own generator (unrelated to the scene), with the scene's holes; image,
    label and normals are the rendered scene's."""
    size = (16, 24)
    prepare_and_load(tmp_path / "a", standin_train=4, standin_test=1, image_size=size, standin_seed=3)
    raw = tmp_path / "a" / STANDIN_DIR / "train"
    scenes, fields = np.random.default_rng(3), np.random.default_rng([3, 1])
    correlations = []
    for i in range(4):
        scene = render_standin_scene(scenes, size)
        field = random_depth_field(fields, size)
        for kind in ("image", "label", "normal"):
            assert np.array_equal(np.load(raw / kind / f"{i}.npy"), scene[kind]), kind
        written, true = np.load(raw / "depth" / f"{i}.npy")[..., 0], scene["depth"][..., 0]
        valid = true > 0
        assert np.array_equal(written > 0, valid)  # Kinect-like holes kept (and shared with the normals)
        assert np.allclose(written[valid], field[valid]) and not np.allclose(written[valid], true[valid])
        correlations.append(np.corrcoef(written[valid], true[valid])[0, 1])
    assert abs(np.mean(correlations)) < 0.4, correlations


def test_standin_scene_geometry():
    scene = render_standin_scene(np.random.default_rng(5), (24, 32))
    label, depth, normal = scene["label"], scene["depth"][..., 0], scene["normal"]
    assert scene["image"].dtype == np.float32 and 0 <= scene["image"].min() and scene["image"].max() <= 1
    assert (label == -1).any() and len(np.unique(label[label >= 0])) >= 4
    assert set(np.unique(label[label >= 0]).astype(int)) <= set(range(13))
    valid = depth > 0
    assert valid.mean() > 0.8 and np.array_equal(valid, np.abs(normal).sum(-1) > 0)
    assert np.allclose(np.linalg.norm(normal[valid], axis=-1), 1, atol=1e-5)
    # floor normals point up-ish in the camera frame and face the camera (negative z towards it)
    floor = label == CLASS_NAMES.index("floor")
    assert floor.any() and (normal[floor & valid][:, 1] > 0.8).all()
    fx = 16 / math.tan(math.radians(29))
    jj, ii = np.meshgrid(np.arange(32), np.arange(24))
    rays = np.stack([(jj - 15.5) / fx, -(ii - 11.5) / fx, np.ones_like(jj, dtype=float)], -1)
    assert ((normal * rays).sum(-1)[valid] < 1e-6).all()


def test_complex_arrays_in_the_preprocessed_layout_are_refused(tmp_path):
    """A complex .npy would lose its imaginary part silently: refused, naming the file."""
    from pipeline.datasets.nyuv2.sources import load_npy

    path = tmp_path / "0.npy"
    np.save(path, np.ones((4, 4), dtype=np.complex64))
    with pytest.raises(DataError, match=r"0\.npy.*complex"):
        load_npy(path)
