"""DTG-AuxL's scenarios beyond CUB, demo and amazon: CIFAR-100 with its coarse classes as the given auxiliary
(shared input, the shuffle pairing), and dataset pairs (different input: CIFAR-10 with CIFAR-100, Pet with CUB):
the pair's loader on fixtures in the real formats, its splits and its two batch streams, and the generator's
shapes in each scenario."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.core.registry import DATASETS
from pipeline.datasets.shared.pair import resize_images
from pipeline.datasets.shared.splits import check_disjoint, load_splits, save_splits
from pipeline.engine import training
from pipeline.engine.training import join_batches, train_run
from pipeline.methods.base import Batch, build_method
from pipeline.methods.dtg.generator import companion_pairing
from tests.test_cifar import write_tiny_cifar10, write_tiny_cifar100

TINY_MODEL = {"backbone": "convnet4", "width": 0.0625}


def params_for(name: str, method: str, **sections) -> object:
    raw = {"dataset": name, "method": method, "seeds": [0], "datasets": {name: {"model": TINY_MODEL, **sections}},
           "methods": {"dtg": {"hyper_every": 2}, "bilevel": {"hyper_every": 2}}}
    return parse_params(raw)


# ------------------------------------------------------------------------------------- CIFAR-100, shared input


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("c100")
    raw = write_tiny_cifar100(tmp / "raw")
    ds = DATASETS.get("cifar100")()
    (tmp / "prepared").mkdir()
    ds.prepare(ds.Config(source="path", root=str(raw.root)), tmp / "prepared")
    return ds, ds.load(tmp / "prepared"), raw


def batch_of(data, rows) -> Batch:
    rows = torch.as_tensor(rows)
    return Batch(data.inputs[rows].float() / 255, data.targets[rows], rows, torch.ones(len(rows), dtype=torch.bool))


def test_cifar100_exposes_the_coarse_classes_as_the_given_auxiliary(cifar100):
    ds, data, raw = cifar100
    assert data.task_names == ["class", "coarse"] and data.meta["given_classes"] == [20]
    assert np.array_equal(data.targets[:, 0].numpy(), raw.fine) and np.array_equal(data.targets[:, 1].numpy(), raw.coarse)
    assert {"auxiliaries", "task_labels"} <= ds.provides
    fields = ds.task_label_fields(data)
    assert [(f.name, f.classes) for f in fields] == [("class", 100), ("coarse", 20)]
    model = ds.build_model(data, ds.ModelConfig(**TINY_MODEL))
    out = model(torch.rand(3, 3, 32, 32))
    assert [o.shape for o in out] == [(3, 100), (3, 20)]
    losses = ds.per_task_losses(out, data.targets[:3])
    expected = torch.nn.functional.cross_entropy(out[1], data.targets[:3, 1].long(), reduction="none")
    assert losses.shape == (3, 2) and torch.allclose(losses[:, 1], expected)


def test_cifar100_with_coarse_main_gets_the_fine_auxiliary(tmp_path):
    raw = write_tiny_cifar100(tmp_path / "raw")
    ds = DATASETS.get("cifar100")()
    (tmp_path / "prepared").mkdir()
    ds.prepare(ds.Config(source="path", root=str(raw.root), primary_level="coarse"), tmp_path / "prepared")
    data = ds.load(tmp_path / "prepared")
    assert data.task_names == ["class", "fine"] and data.meta["given_classes"] == [100]
    assert np.array_equal(data.targets[:, 1].numpy(), raw.fine)


def test_dtg_generator_shapes_and_shuffle_pairing_on_cifar100(cifar100):
    ds, data, _ = cifar100
    params = params_for("cifar100", "dtg_auxl")
    torch.manual_seed(0)
    method = build_method("dtg_auxl", data.num_tasks, params, ds, data)
    gen = method.generator
    model = ds.build_model(data, params.profile.model)
    batch = batch_of(data, [0, 1, 2, 3])
    losses, z = method.batch_losses(model, ds, batch)
    perm = gen.pairing_for(batch)
    assert sorted(perm.tolist()) == [0, 1, 2, 3]  # a shuffle of the batch (shared input)
    generated = gen.generate(z, ds, batch, perm)
    assert losses.shape == (4, 3)  # fine, coarse, generated
    assert generated.label.shape == (4, 100) and generated.feature.shape == z.shape
    assert torch.allclose(generated.label.sum(1), torch.ones(4))
    # the same method seed gives the same pairings; the partner's coarse label reaches the row it is paired with
    fresh = []
    for _ in range(2):
        torch.manual_seed(0)
        fresh.append(build_method("dtg_auxl", data.num_tasks, params, ds, data).generator)
    drawn = [[g.new_pairing(batch) for _ in range(3)] for g in fresh]
    assert all(torch.equal(a, b) for a, b in zip(*drawn)) and not torch.equal(drawn[0][0], drawn[0][1])
    perm = torch.tensor([1, 0, 3, 2])
    changed = batch.y.clone()
    changed[3, 1] = (changed[3, 1] + 1) % 20  # row 3's coarse label: row 2's partner
    with torch.no_grad():
        a = gen.generate(z, ds, batch, perm).scores
        b = gen.generate(z, ds, Batch(batch.x, changed, batch.index, batch.labelled), perm).scores
    moved = (a - b).abs().sum(1) > 0
    assert moved.tolist() == [False, False, True, True]  # row 3 (its own label) and row 2 (its partner's)


# ------------------------------------------------------------------------------- dataset pairs, different input


@pytest.fixture(scope="module")
def cifar_pair(tmp_path_factory):
    """CIFAR-10 (10 train + 3 test) and CIFAR-100 (4 train + 2 test) fixtures in their real formats."""
    tmp = tmp_path_factory.mktemp("pair")
    c10, c100 = write_tiny_cifar10(tmp / "raw" / "primary"), write_tiny_cifar100(tmp / "raw" / "auxiliary")
    ds = DATASETS.get("cifar10_cifar100")()
    cfg = ds.Config(primary={"source": "path", "root": str(c10.root)},
                    auxiliary={"source": "path", "root": str(c100.root)})
    ds.prepare(cfg, tmp / "prepared")
    return ds, ds.load(tmp / "prepared"), c10, c100


PAIR_SPLIT = {"train_fraction": 0.6, "aux_fraction": 0.2, "val": 2}


def pair_splits(ds, data, **split):
    return ds.make_splits(data, ds.SplitConfig(**{**PAIR_SPLIT, **split}))


def test_pair_loader_joins_both_datasets_in_the_real_formats(cifar_pair):
    ds, data, c10, c100 = cifar_pair
    n_p = len(c10.labels)
    assert len(data) == n_p + len(c100.fine) and data.meta["pair_rows"] == n_p
    assert np.array_equal(data.inputs[:n_p].numpy(), c10.images)
    assert np.array_equal(data.inputs[n_p:].numpy(), c100.images)
    assert np.array_equal(data.targets[:n_p, 0].numpy(), c10.labels) and (data.targets[:n_p, 1] == -1).all()
    assert np.array_equal(data.targets[n_p:, 1].numpy(), c100.fine) and (data.targets[n_p:, 0] == -1).all()
    assert data.task_names == ["class", "cifar100"] and data.meta["given_classes"] == [100]
    assert data.meta["num_classes"] == 10 and len(data.meta["is_train"]) == n_p


def test_pair_splits_take_the_primarys_and_only_the_auxiliary_training_pool(cifar_pair, tmp_path):
    ds, data, c10, c100 = cifar_pair
    n_p = len(c10.labels)
    splits = pair_splits(ds, data)
    primary_only = ds.primary_dataset.make_splits(ds, data, ds.SplitConfig(**PAIR_SPLIT))
    for key in ("train", "aux", "val", "test"):
        assert np.array_equal(splits[key], primary_only[key]) and (splits[key] < n_p).all()
    assert splits["companion"].tolist() == [n_p + i for i in range(4)]  # CIFAR-100's official train, never its test
    check_disjoint(splits)
    save_splits(tmp_path, splits)
    assert np.array_equal(load_splits(tmp_path, len(data))["companion"], splits["companion"])
    half = pair_splits(ds, data, auxiliary_fraction=0.5)["companion"]
    assert len(half) == 2 and np.isin(half, splits["companion"]).all()
    assert np.array_equal(half, pair_splits(ds, data, auxiliary_fraction=0.5)["companion"])  # seeded
    bad = dict(splits, companion=np.append(splits["companion"], splits["val"][0]))
    with pytest.raises(ValueError, match="companion"):
        check_disjoint(bad)
    np.save(tmp_path / "companion.npy", bad["companion"])
    with pytest.raises(ValueError, match="companion.npy"):
        load_splits(tmp_path, len(data))


def test_pair_losses_are_each_datasets_batch_mean(cifar_pair):
    ds, data, c10, _ = cifar_pair
    n_p = len(c10.labels)
    model = ds.build_model(data, ds.ModelConfig(**TINY_MODEL))
    rows = [0, 1, 2, n_p, n_p + 1]
    x, y = ds.batch_transform(data.inputs[rows], data.targets[rows], train=False)
    out = model(x)
    losses = ds.per_task_losses(out, y)
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(losses[:, 0].mean(), ce(out[0][:3], y[:3, 0].long()))
    assert torch.allclose(losses[:, 1].mean(), ce(out[1][3:], y[3:, 1].long()))
    assert (losses[3:, 0] == 0).all() and (losses[:3, 1] == 0).all()


def run_recording(ds, data, splits, method, monkeypatch, steps=3, seed=0):
    joined = []

    def spy(first, second):
        joined.append((first.index.clone(), second.index.clone()))
        return join_batches(first, second)

    monkeypatch.setattr(training, "join_batches", spy)
    params = params_for("cifar10_cifar100", method, split=PAIR_SPLIT, methods={"bilevel": {"hyper_every": 2}},
                        train={"steps": steps, "batch_size": 2, "eval_every": steps})
    result = train_run(ds, data, splits, params, seed, torch.device("cpu"))
    return joined, result


def test_pair_streams_one_batch_of_each_per_step_deterministic_never_val_or_test(cifar_pair, monkeypatch):
    ds, data, _, _ = cifar_pair
    splits = pair_splits(ds, data)
    joined, result = run_recording(ds, data, splits, "dtg_auxl", monkeypatch)
    assert len(joined) == 3 + len(result.history["hyper_step"])  # every lower step, and the upper step's D'_p batch
    train_rows = np.concatenate([splits["train"], splits["aux"]])  # dtg_auxl trains on train ∪ aux
    for primary, auxiliary in joined:
        assert len(primary) == 2 and len(auxiliary) == 2
        assert np.isin(primary.numpy(), train_rows).all()
        assert np.isin(auxiliary.numpy(), splits["companion"]).all()
        held_out = np.concatenate([splits["val"], splits["test"]])
        assert not np.isin(auxiliary.numpy(), held_out).any()
    assert all(np.isfinite(result.history["train_loss"]))
    again, _ = run_recording(ds, data, splits, "dtg_auxl", monkeypatch)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(joined, again))
    other, _ = run_recording(ds, data, splits, "dtg_auxl", monkeypatch, seed=1)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(joined, other))
    stl, _ = run_recording(ds, data, splits, "stl", monkeypatch)
    assert stl == []  # no given auxiliary used: the primary's batches only


def test_the_outer_updates_training_batches_carry_an_auxiliary_batch_too(cifar_pair, monkeypatch):
    """AuxiLearn's hypergradient reads ∇_W of the auxiliary loss on its training batch: without the auxiliary
    dataset's rows there it would be 0 and φ's auxiliary weight could never move."""
    ds, data, _, _ = cifar_pair
    splits = pair_splits(ds, data)
    joined, result = run_recording(ds, data, splits, "auxilearn_linear", monkeypatch, steps=4)
    assert len(joined) > 4  # W's 4 steps and the outer update's batches
    assert all(np.isin(a.numpy(), splits["companion"]).all() for _, a in joined)
    weights = result.history["weights"]
    assert weights[0][1] != weights[-1][1]


def test_dtg_generator_shapes_on_a_pair_batch(cifar_pair):
    ds, data, c10, _ = cifar_pair
    n_p = len(c10.labels)
    params = params_for("cifar10_cifar100", "dtg_auxl")
    method = build_method("dtg_auxl", data.num_tasks, params, ds, data)
    gen = method.generator
    model = ds.build_model(data, params.profile.model)
    first, second = batch_of(data, [0, 1, 2]), batch_of(data, [n_p, n_p + 1])
    batch = join_batches(first, second)
    assert batch.companion == 2 and len(batch.x) == 5
    losses, z = method.batch_losses(model, ds, batch)
    perm = gen.pairing_for(batch)
    assert perm.tolist() == [3, 4, 3] and torch.equal(perm, companion_pairing(5, 2))
    generated = gen.generate(z, ds, batch, perm)
    assert generated.label.shape == (3, 10) and generated.feature.shape == (3, z.shape[1])
    assert losses.shape == (5, 3) and (losses[3:, 2] == 0).all()
    soft_ce = -(generated.label * torch.log_softmax(gen.head(generated.feature), 1)).sum(1)
    assert torch.allclose(losses[:, 2].mean(), soft_ce.mean())  # the batch mean = the primary rows' mean
    # the primary row's generated label reads its partner's CIFAR-100 label
    changed = batch.y.clone()
    changed[4, 1] = (changed[4, 1] + 1) % 100
    with torch.no_grad():
        a = gen.generate(z, ds, batch, perm).scores
        b = gen.generate(z, ds, Batch(batch.x, changed, batch.index, batch.labelled, 2), perm).scores
    assert ((a - b).abs().sum(1) > 0).tolist() == [False, True, False]


def test_companion_pairing_refuses_a_batch_without_both_datasets():
    with pytest.raises(ValueError, match="primary and auxiliary rows"):
        companion_pairing(4, 4)


def test_resize_images_to_the_primarys_size():
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    out = resize_images(images, 32)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.uint8
    flat = torch.full((1, 3, 40, 40), 77, dtype=torch.uint8)
    assert (resize_images(flat, 32) == 77).all()
    assert resize_images(images, 40) is images


def test_pet_cub_standins_meet_at_pets_size(tmp_path):
    """Both stand-ins written in their real formats (Pet's JPEGs and text files, CUB's folder), read back by their
    own readers, CUB's 40-px images resized to Pet's 32 px; the shuffled auxiliary keeps the labels' counts."""
    name = "pet_cub"
    cfg = {"primary": {"standin_num_classes": 3, "standin_train_per_class": 14, "standin_test_per_class": 2},
           "auxiliary": {"standin_num_classes": 3, "standin_images_per_class": 4}}
    params = parse_params({"dataset": name, "method": "dtg_auxl",
                           "datasets": {name: {"prepare": cfg, "split": {"k_shot": 4}}}})
    ds = DATASETS.get(name)()
    ds.prepare(params.dataset_config, tmp_path / "given")
    data = ds.load(tmp_path / "given")
    n_p = data.meta["pair_rows"]
    assert n_p == 3 * 16 and len(data) == n_p + 12 and data.inputs.shape[1:] == (3, 32, 32)
    assert data.meta["given_classes"] == [3] and data.task_names[1] == "cub"
    splits = ds.make_splits(data, params.split)
    assert (splits["companion"] >= n_p).all() and len(splits["companion"]) == 6  # CUB's official train half
    shuffled = parse_params({"dataset": name, "method": "dtg_auxl", "datasets": {name: {"prepare": {
        **cfg, "auxiliary_labels": "shuffled"}}}})
    ds.prepare(shuffled.dataset_config, tmp_path / "shuffled")
    other = ds.load(tmp_path / "shuffled")
    assert torch.equal(other.inputs, data.inputs)
    a, b = data.targets[n_p:, 1], other.targets[n_p:, 1]
    assert not torch.equal(a, b) and torch.equal(a.sort().values, b.sort().values)


# ----------------------------------------------------------------------- NYUv2, per-pixel label generation


def tiny_nyuv2(n: int = 6, h: int = 8, w: int = 12, seed: int = 0):
    """In-memory NYUv2-shaped data: targets [N, 5, H, W] = class (−1 ignored), depth (0 missing), unit normals."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, 13, (n, h, w), generator=g).float()
    depth = torch.rand(n, h, w, generator=g) * (torch.rand(n, h, w, generator=g) > 0.2)
    normal = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
    targets = torch.cat([labels[:, None], depth[:, None], normal], dim=1)
    from pipeline.datasets.shared.base import TaskData
    meta = {"num_classes": 13, "is_train": np.ones(n, bool)}
    return TaskData(torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8), targets,
                    ["segmentation", "depth", "normal"], meta)


def test_dtg_per_pixel_label_generation_on_nyuv2_shapes():
    data = tiny_nyuv2()
    params = parse_params({"dataset": "nyuv2", "method": "dtg_auxl",
                           "datasets": {"nyuv2": {"model": {"width": 4, "stages": 2}}}})
    ds = DATASETS.get("nyuv2")(params.profile.model)
    assert [(f.classes, f.size) for f in ds.task_label_fields(data)] == [(13, 1), (0, 1), (0, 3)]
    method = build_method("dtg_auxl", data.num_tasks, params, ds, data)
    gen = method.generator
    assert gen.dense and gen.num_classes == 13
    assert [f.size for f in gen.label_generator.fields] == [1, 1, 3, 1, 1, 3]  # own, then the partner's
    model = ds.build_model(data, params.profile.model)
    x, y = ds.batch_transform(data.inputs[:4], data.targets[:4], train=True)
    batch = Batch(x, y, torch.arange(4), torch.ones(4, dtype=torch.bool))
    losses, z = method.batch_losses(model, ds, batch)
    generated = gen.generate(z, ds, batch, gen.pairing_for(batch))
    rows = 4 * 8 * 12
    assert generated.label.shape == (rows, 13) and generated.feature.shape == (rows, z.shape[1])
    assert generated.loss.shape == (4, 8, 12)  # a per-pixel label map of the primary's shape
    assert losses.shape == (4, 4, 8, 12)  # segmentation, depth, normal, generated loss images
    ignored = (y[:, 0] < 0).reshape(-1)
    assert (generated.bias[ignored] == 0).all() and torch.allclose(generated.bias[~ignored].sum(1), torch.ones(1))
    # the partner pixel's normal reaches that pixel's generated label only
    perm = torch.tensor([1, 0, 3, 2])
    changed = y.clone()
    changed[1, 2:5, 3, 4] = -changed[1, 2:5, 3, 4]
    with torch.no_grad():
        a = gen.generate(z, ds, batch, perm).scores.view(4, 8, 12, 13)
        b = gen.generate(z, ds, Batch(x, changed, batch.index, batch.labelled), perm).scores.view(4, 8, 12, 13)
    moved = (a - b).abs().sum(-1) > 0
    assert moved.sum() == 2 and moved[0, 3, 4] and moved[1, 3, 4]


def test_dtg_runs_hyper_steps_on_nyuv2_per_pixel():
    data = tiny_nyuv2(n=8)
    params = parse_params({"dataset": "nyuv2", "method": "dtg_auxl", "seeds": [0], "methods": {"dtg": {"hyper_every": 2}},
                           "datasets": {"nyuv2": {"model": {"width": 4, "stages": 2},
                                                  "train": {"steps": 4, "batch_size": 2, "eval_every": 4}}}})
    ds = DATASETS.get("nyuv2")(params.profile.model)
    splits = {"train": np.arange(4), "aux": np.array([4]), "val": np.array([5, 6]), "test": np.array([7])}
    result = train_run(ds, data, splits, params, 0, torch.device("cpu"))
    assert result.history["hyper_step"] == [2, 4] and all(np.isfinite(result.history["hypergrad_norm"]))
    assert not torch.equal(result.method_state_initial["combiner.omega"], result.method_state_final["combiner.omega"])
