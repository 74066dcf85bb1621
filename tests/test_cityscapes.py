"""Cityscapes (AuxiLearn App. C.8): Liu et al.'s .npy layout read from a hand-written fixture (pixels, the three
label maps, inverse depth, the train/val split), one clear error per bad folder, file or shape, the stand-in
through the real reader, the SegNet's heads and loss images, the params that run it, and a few training steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.datasets.cityscapes.config import Config, ModelConfig, SplitConfig
from pipeline.datasets.cityscapes.prepared import H5_NAME
from pipeline.datasets.cityscapes.sources import KINDS, read_preprocessed
from pipeline.datasets.cityscapes.standin import CATEGORY, DYNAMIC, write_standin
from pipeline.datasets.cityscapes.task import TASK_NAMES, Cityscapes
from pipeline.datasets.shared.base import DataError
from pipeline.engine.training import train_run

H, W = 8, 16  # the fixture's size (a 3-stage SegNet needs >= 8 pixels a side)


def sample_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One sample in the release's shapes: image [H, W, 3] in [0, 1], labels [H, W] with -1, depth [H, W, 1]."""
    label19 = rng.integers(-1, 19, size=(H, W)).astype(np.float32)
    return {"image": rng.random((H, W, 3)).astype(np.float32),
            "label_19": label19,
            "label_7": rng.integers(-1, 7, size=(H, W)).astype(np.float32),
            "label_2": rng.integers(-1, 2, size=(H, W)).astype(np.float32),
            "depth": np.where(rng.random((H, W, 1)) < 0.2, 0.0, rng.random((H, W, 1))).astype(np.float32)}


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, dict[tuple[str, int], dict[str, np.ndarray]]]:
    """train/ with indices 0..2, val/ with 0..1, every kind written by np.save as the release's files are."""
    root, rng, written = tmp_path / "raw", np.random.default_rng(3), {}
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            arrays = written[(split, i)] = sample_arrays(rng)
            for kind in KINDS:
                (root / split / kind).mkdir(parents=True, exist_ok=True)
                np.save(root / split / kind / f"{i}.npy", arrays[kind])
    return root, written


def prepare_and_load(layout_root: Path, out: Path, **prepare: object):
    ds = Cityscapes(ModelConfig())
    ds.prepare(Config(source="preprocessed", root=str(layout_root), **prepare), out)
    return ds, ds.load(out)


def test_the_layout_is_read_into_one_h5(layout, tmp_path):
    root, written = layout
    ds, data = prepare_and_load(root, tmp_path / "out")
    assert (tmp_path / "out" / H5_NAME).is_file()
    assert data.task_names == TASK_NAMES == ["segmentation", "segmentation_7", "segmentation_2", "depth"]
    assert data.inputs.shape == (5, 3, H, W) and data.inputs.dtype == torch.uint8
    assert data.targets.shape == (5, 4, H, W)
    assert data.meta["is_train"].tolist() == [True] * 3 + [False] * 2
    assert data.meta["sample_ids"].tolist() == [0, 1, 2, 0, 1]
    assert "aux_roles" not in data.meta  # real data has no roles
    for row, key in enumerate([("train", 0), ("train", 1), ("train", 2), ("val", 0), ("val", 1)]):
        arrays = written[key]
        expect_img = np.rint(arrays["image"].transpose(2, 0, 1) * 255)
        assert np.abs(data.inputs[row].numpy().astype(float) - expect_img).max() <= 1
        for k, kind in enumerate(("label_19", "label_7", "label_2")):
            assert np.array_equal(data.targets[row, k].numpy(), arrays[kind])
        assert np.allclose(data.targets[row, 3].numpy(), arrays["depth"][..., 0])


def test_the_layout_is_resized_on_request(layout, tmp_path):
    root, written = layout
    _, data = prepare_and_load(root, tmp_path / "out", image_size=(4, 8))
    assert data.inputs.shape == (5, 3, 4, 8) and data.targets.shape == (5, 4, 4, 8)
    labels = data.targets[:, 0].numpy()
    assert set(np.unique(labels)) <= set(np.unique(written[("train", 0)]["label_19"])) | set(range(-1, 19))
    assert (labels == np.rint(labels)).all()  # nearest neighbour: labels stay labels


@pytest.mark.parametrize("damage, message", [
    (lambda r: __import__("shutil").rmtree(r / "val" / "label_7"), r"val/label_7 is missing"),
    (lambda r: (r / "train" / "depth" / "2.npy").unlink(), r"train/depth: indices differ from .*train/image \(e\.g\. \[2\]"),
    (lambda r: np.save(r / "train" / "label_2" / "1.npy", np.zeros((H, W + 1), np.float32)),
     r"train/label_2/1\.npy: expected shape \(8, 16\) to match .*train/image/1\.npy, got \(8, 17\)"),
    (lambda r: np.save(r / "val" / "image" / "0.npy", np.zeros((3, H, W), np.float32)),
     r"val/image/0\.npy: expected an image \[H, W, 3\], got shape \(3, 8, 16\)"),
    (lambda r: np.save(r / "train" / "label_7" / "0.npy", np.full((H, W), 7, np.float32)),
     r"train/label_7/0\.npy: labels must be integers in -1\.\.6"),
    (lambda r: np.save(r / "train" / "depth" / "0.npy", -np.ones((H, W, 1), np.float32)),
     r"train/depth/0\.npy: depth must be >= 0"),
])
def test_bad_files_give_one_error_naming_them(layout, tmp_path, damage, message):
    root, _ = layout
    damage(root)
    with pytest.raises(DataError, match=message):
        prepare_and_load(root, tmp_path / "out")


def test_missing_root_and_empty_root_are_named(tmp_path):
    with pytest.raises(DataError, match=r"datasets\.cityscapes\.prepare\.root = .*nowhere: not a folder"):
        prepare_and_load(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("placeholder")
    with pytest.raises(DataError, match=r"holds no data yet"):
        prepare_and_load(tmp_path / "empty", tmp_path / "out")


def test_standin_round_trips_through_the_real_reader(tmp_path):
    cfg = Config(standin_train=6, standin_test=3, standin_size=(16, 32))
    write_standin(tmp_path / "raw", cfg)
    count, size, rows = read_preprocessed(tmp_path / "raw", None)
    assert (count, size) == (9, (16, 32))
    rows = list(rows)
    for sample, is_train, index in rows:  # what the reader gives back is what was written
        split = "train" if is_train else "val"
        for k, kind in enumerate(("label_19", "label_7", "label_2")):
            assert np.array_equal(sample.labels[k], np.load(tmp_path / "raw" / split / kind / f"{index}.npy"))
        assert np.array_equal(sample.depth, np.load(tmp_path / "raw" / split / "depth" / f"{index}.npy")[..., 0])
    # the coarse labels are the categories / dynamic flags of the 19 classes, ignore kept
    labels = np.stack([s.labels for s, _, _ in rows]).astype(np.int64)
    main, seven, two = labels[:, 0], labels[:, 1], labels[:, 2]
    valid = main >= 0
    assert np.array_equal(seven[valid], CATEGORY[main[valid]]) and np.array_equal(two[valid], DYNAMIC[main[valid]])
    assert (seven[~valid] == -1).all() and (two[~valid] == -1).all()
    assert len(np.unique(main[valid])) >= 8  # a street: many classes per handful of scenes
    # deterministic: the same seed writes the same bytes
    write_standin(tmp_path / "again", cfg)
    for p in (tmp_path / "raw").rglob("*.npy"):
        assert p.read_bytes() == (tmp_path / "again" / p.relative_to(tmp_path / "raw")).read_bytes()


def test_prepared_standin_fits_the_model_and_the_losses(tmp_path):
    params = parse_params({"dataset": "cityscapes", "method": "auxilearn_convnet",
                           "datasets": {"cityscapes": {"prepare": {"standin_train": 20, "standin_test": 4}}}})
    ds = Cityscapes(params.profile.model)
    ds.prepare(params.dataset_config, tmp_path)
    data = ds.load(tmp_path)
    assert data.inputs.shape == (24, 3, 32, 64) and data.targets.shape == (24, 4, 32, 64)
    assert set(data.meta["aux_roles"].values()) == {"helpful"}
    splits = ds.make_splits(data, SplitConfig())
    assert {k: len(v) for k, v in splits.items()} == {"val": 2, "aux": 1, "train": 17, "test": 4}
    net = ds.build_model(data, params.profile.model)
    x, y = ds.batch_transform(data.inputs[:2], data.targets[:2], train=True)
    out = net.decode(net.encode(x))
    assert [tuple(o.shape) for o in out] == [(2, 19, 32, 64), (2, 7, 32, 64), (2, 2, 32, 64), (2, 1, 32, 64)]
    losses = ds.per_task_losses(out, y)
    assert losses.shape == (2, 4, 32, 64) and torch.isfinite(losses).all()
    assert (losses[:, 0][y[:, 0] < 0] == 0).all() and (losses[:, 3][y[:, 3] == 0] == 0).all()
    metrics = ds.metrics(net.eval(), data, torch.as_tensor(splits["test"]))
    assert list(metrics)[:2] == ["miou", "pixel_acc"] and {"miou_7", "miou_2", "depth_abs_err"} <= set(metrics)


@pytest.mark.parametrize("method", ["auxilearn_convnet", "auxilearn_nonlinear", "stl", "equal", "uncertainty", "dwa",
                                    "gradnorm", "gcs", "mgda"])
def test_the_papers_methods_fit_cityscapes(method):
    assert parse_params({"dataset": "cityscapes", "method": method}).dataset == "cityscapes"


def test_label_learning_methods_are_refused():
    with pytest.raises(ValueError, match=r"method maxl needs a dataset with generated_labels.*cityscapes"):
        parse_params({"dataset": "cityscapes", "method": "maxl"})


def test_auxilearn_convnet_trains_a_few_steps(tmp_path):
    params = parse_params({
        "dataset": "cityscapes", "method": "auxilearn_convnet", "seeds": [0],
        "datasets": {"cityscapes": {"prepare": {"standin_train": 24, "standin_test": 4, "standin_size": [16, 32]},
                                    "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "log_every": 1},
                                    "model": {"width": 4, "stages": 2},
                                    "methods": {"bilevel": {"hyper_every": 2}}}}})
    ds = Cityscapes(params.profile.model)
    ds.prepare(params.dataset_config, tmp_path)
    data = ds.load(tmp_path)
    result = train_run(ds, data, ds.make_splits(data, params.split), params, 0, device=torch.device("cpu"))
    assert result.history["hyper_step"] == [2, 4]
    assert np.isfinite(result.history["val_main_loss"]).all()
    assert len(result.history["weights"][-1]) == 4  # a weight per task, the main one first


def test_rows_read_on_demand_equal_the_loaded_ones(layout, tmp_path):
    """data_loading: stream reads rows from cityscapes.h5; they are the rows load() holds."""
    root, _ = layout
    ds, data = prepare_and_load(root, tmp_path / "out")
    rows = ds.open_rows(tmp_path / "out")
    assert rows.inputs.shape == data.inputs.shape and rows.targets.shape == data.targets.shape
    pick = [4, 0, 2]
    assert torch.equal(rows.inputs[pick], data.inputs[pick]) and torch.equal(rows.targets[pick], data.targets[pick])
