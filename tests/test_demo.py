"""demo: the embedded height-field dataset every method runs on (but the image-only Nearest Neighbour): shapes and
capabilities, the finer labels MAXL's Human reads, a deterministic prepare,
loss images that are the per-point losses on the grid, recorded auxiliary roles, and every registered method
building and taking a few steps on a tiny config."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.datasets.shared.base import DataError, reduce_pixels
from pipeline.datasets.demo.config import CATEGORIES, Config
from pipeline.datasets.demo.task import AUX_ROLES, TASK_NAMES, Demo
from pipeline.methods.base import build_method
from pipeline.core.registry import DATASETS, METHODS
from pipeline.engine.training import load_model, train_run

TINY = {"prepare": {"shapes_per_category": 5, "grid": 6},
        "split": {"aux": 2, "val": 4, "test": 4},
        "train": {"steps": 2, "eval_every": 2, "batch_size": 4},
        "model": {"width": 4, "emb": 8, "k": 4, "generator_width": 4}}


# Every method runs on demo except MAXL's Nearest Neighbour baseline, which embeds images with a pre-trained image
# backbone (CIFAR-100 only, as in the paper: tests/test_hierarchy.py).
IMAGE_ONLY_METHODS = {name for name, spec in METHODS.items() if "image_embeddings" in spec.requires}
DEMO_METHODS = [name for name in METHODS.names() if name not in IMAGE_ONLY_METHODS]


def tiny_params(method: str = "stl", **sections):
    demo = {k: {**v, **sections.get(k, {})} for k, v in TINY.items()}
    return parse_params({"dataset": "demo", "method": method, "seeds": [0], "datasets": {"demo": demo}})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    params = tiny_params()
    ds = DATASETS.get("demo")(params.profile.model)
    folder = tmp_path_factory.mktemp("demo")
    ds.prepare(params.dataset_config, folder)
    data = ds.load(folder)
    return ds, data, ds.make_splits(data, params.split), folder


def test_provides_what_every_method_requires():
    needed = set().union(*(spec.requires for name, spec in METHODS.items() if name in DEMO_METHODS))
    assert needed <= Demo.provides
    assert IMAGE_ONLY_METHODS == {"nearest_neighbour"} and "image_embeddings" not in Demo.provides
    assert Config().known_label_groups() == len(CATEGORIES)
    with pytest.raises(ValueError, match="image_embeddings.*datasets that fit: cifar100$"):
        parse_params({"dataset": "demo", "method": "nearest_neighbour"})


def test_finer_labels_are_family_and_amplitude_class(tiny):
    """MAXL's Human on demo: two finer classes per family (low and tall surfaces), each inside its family's block,
    both present in every family; the human method's one-hot targets sit in the sample's own block."""
    ds, data, _, _ = tiny
    finer, classes = ds.finer_labels(data)
    category = ds.label_group(data.targets)
    assert classes == 2 * len(CATEGORIES) and data.meta["finer_names"][:2] == ["bump/low", "bump/tall"]
    assert torch.equal(finer // 2, category)
    assert all(len(set(finer[category == c].tolist())) == 2 for c in range(len(CATEGORIES)))
    method = build_method("human", data.num_tasks, tiny_params("human"), ds, data)
    labels = method.generator
    assert labels.num_aux_classes == 2 * len(CATEGORIES)
    assert torch.equal(labels.fixed_class, finer)  # blocks of two in family order: the finer id is the class


def test_shapes_tasks_and_roles(tiny):
    ds, data, _, folder = tiny
    n, p = 5 * len(CATEGORIES), 36
    assert data.inputs.shape == (n, 3, p) and data.targets.shape == (n, 3 * p + 1)
    assert data.task_names == TASK_NAMES
    assert data.meta["aux_roles"] == AUX_ROLES == {"clean_parts": "helpful", "noise": "harmful"}
    assert (folder / "aux_roles.json").is_file()
    category = data.targets[:, -1].long()
    assert torch.equal(ds.label_group(data.targets), category) and ds.label_groups(data) == len(CATEGORIES)
    parts = data.targets[:, :p].long()
    assert torch.equal(parts // 3, category[:, None].expand(-1, p))  # every part belongs to its family
    # raster order: point i*G + j is at grid row i, column j (up to the jitter and the tilt of z)
    u, v = data.inputs[0, 0].view(6, 6), data.inputs[0, 1].view(6, 6)
    assert (u[1:] > u[:-1]).float().mean() > 0.9 and (v[:, 1:] > v[:, :-1]).float().mean() > 0.9


def test_prepare_is_deterministic_and_seeded(tmp_path):
    ds = Demo()
    cfg = Config(shapes_per_category=3, grid=5)
    for name, c in (("a", cfg), ("b", cfg), ("c", Config(shapes_per_category=3, grid=5, seed=1))):
        (tmp_path / name).mkdir()
        ds.prepare(c, tmp_path / name)
    a, b, c = (np.load(tmp_path / name / "data.npz") for name in "abc")
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key
    assert not np.array_equal(a["points"], c["points"])
    assert (tmp_path / "a" / "meta.json").read_bytes() == (tmp_path / "b" / "meta.json").read_bytes()


def test_the_tall_variant_is_the_taller_surface(tmp_path):
    """Without tilt and jitter a bump's peak and a step's plateau are at height ±a: the finer class says a > 0.6."""
    ds = Demo()
    ds.prepare(Config(shapes_per_category=30, grid=12, tilt=0.0, jitter=0.0), tmp_path)
    data = ds.load(tmp_path)
    finer, _ = ds.finer_labels(data)
    family = ds.label_group(data.targets)
    peak = data.inputs[:, 2].abs().amax(1)
    for name in ("bump", "step"):
        rows = family == CATEGORIES.index(name)
        tall = finer[rows] % 2 == 1
        assert 0 < tall.sum() < rows.sum()  # both classes occur
        assert ((peak[rows] > 0.6) == tall).float().mean() >= 0.9, name


def test_label_noise_keeps_the_helpful_task_clean(tmp_path):
    ds = Demo()
    ds.prepare(Config(shapes_per_category=4, grid=8, label_noise=0.0), tmp_path)
    data = ds.load(tmp_path)
    p = 64
    local = data.targets[:, :p] - 3 * data.targets[:, -1:]
    assert torch.equal(local, data.targets[:, p:2 * p])  # without noise the main parts are the clean ones


def test_loss_images_are_the_per_point_losses_on_the_grid(tiny):
    ds, data, _, _ = tiny
    model = ds.build_model(data, ds.model_cfg).eval()
    x, y = ds.batch_transform(data.inputs[:3], data.targets[:3], train=False)
    with torch.no_grad():
        out = model(x)
    images = ds.per_task_losses(out, y)
    assert images.shape == (3, len(TASK_NAMES), 6, 6)
    ce = torch.nn.functional.cross_entropy(out[0], y[:, :36].long(), reduction="none")  # [B, points]
    assert torch.allclose(images[:, 0].reshape(3, 36), ce)
    assert torch.allclose(images[1, 0, 2, 4], ce[1, 2 * 6 + 4])
    assert torch.allclose(images[:, 2].reshape(3, 36), (out[2][:, 0] - y[:, 72:108]) ** 2)
    assert torch.allclose(reduce_pixels(images)[:, 0], ce.mean(1))  # the spatial mean is the per-shape loss
    assert math.isclose(ds.main_loss(model, data, torch.arange(3)), float(ce.mean()), rel_tol=1e-5)


def test_metrics_and_display(tiny):
    ds, data, splits, _ = tiny
    model = ds.build_model(data, ds.model_cfg)
    scores = ds.metrics(model, data, torch.as_tensor(splits["test"]))
    assert list(scores)[0] == "instance_miou" and 0 <= scores["instance_miou"] <= 100
    rgb, label = ds.display(data.inputs[0], data.targets[0])
    assert rgb.shape == (6, 6, 3) and label.shape == (6, 6) and 0 <= rgb.min() <= rgb.max() <= 1


def test_a_broken_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="data.npz"):
        Demo().load(tmp_path)
    Demo().prepare(Config(shapes_per_category=2, grid=4), tmp_path)
    arrays = dict(np.load(tmp_path / "data.npz"))
    arrays["labels"] = arrays["labels"][:, :5]
    np.savez(tmp_path / "data.npz", **arrays)
    with pytest.raises(DataError, match="per-point arrays"):
        Demo().load(tmp_path)


@pytest.mark.parametrize("method", DEMO_METHODS)
def test_every_method_trains_on_demo(tiny, method):
    ds, data, splits, _ = tiny
    params = tiny_params(method)
    result = train_run(ds, data, splits, params, 0, torch.device("cpu"))
    assert result.history["step"][-1] == 2 and all(math.isfinite(v) for v in result.history["train_loss"])
    aux = build_method(method, data.num_tasks, params, ds, data).head_outputs()
    model = load_model(ds, data, result.model_state, params.profile.model, aux_outputs=aux)
    assert math.isfinite(ds.metrics(model, data, torch.as_tensor(splits["test"]))["instance_miou"])


def test_usefulness_analysis_runs_on_demo(tiny):
    from stages.usefulness.analysis import UsefulnessConfig, analyse

    ds, data, splits, _ = tiny
    params = tiny_params()
    cfg = UsefulnessConfig(batches=1, batch_size=8, cg_iters=3, head_steps=2, stl_steps=2)
    result = analyse(ds, data, splits, params.train, params.profile.model, cfg, [0])
    assert result.task_names == ["clean_parts", "noise"] and result.usefulness.shape == (1, 2)
    assert np.isfinite(result.usefulness).all()


@pytest.mark.parametrize("method", ["auxilearn_convnet", "maxl"])
def test_stage_chain_reports_on_demo(tmp_path, monkeypatch, method):
    """prepare, split, train, evaluate, report and usefulness without DVC on the tiny config: the report names the
    loss columns (the given tasks, or the main and the generated task) and draws loss images for given ones."""
    import yaml
    from click.testing import CliRunner

    from stages import evaluate, prepare, report, split, train, usefulness

    monkeypatch.chdir(tmp_path)
    params = {"dataset": "demo", "method": method, "seeds": [0], "datasets": {"demo": TINY},
              "usefulness": {"batches": 1, "batch_size": 8, "cg_iters": 3, "head_steps": 2, "stl_steps": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runner = CliRunner()
    for cmd, args in ((prepare.main, ["--dataset", "demo"]), (split.main, []), (train.main, []),
                      (evaluate.main, []), (report.main, []), (usefulness.main, [])):
        result = runner.invoke(cmd, args)
        assert result.exit_code == 0, result.output
    weights = tmp_path / "reports/live/seed_0/plots/metrics/train/weight"
    given = method == "auxilearn_convnet"
    assert sorted(p.stem for p in weights.glob("*.tsv")) == sorted(
        TASK_NAMES if given else ["part_segmentation", "generated"])
    assert (tmp_path / "reports/figures/loss_images.png").is_file() == given
    assert "harmful" in (tmp_path / "reports/usefulness.md").read_text()
