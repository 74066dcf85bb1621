"""Every new dataset with the methods its issue names, through the real trainer on a small stand-in:
NYUv2 with loss images (auxilearn_convnet), ShapeNet Part with a generated per-point task and the
reconstruction baselines, CIFAR-10 with the label methods; and the report figures they feed."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.core.registry import DATASETS
from pipeline.engine.experiment import Experiment, TrainedRun
from stages.report.figures import generated_labels, loss_image_figure, pixel_weights, plot_soft_labels
from pipeline.engine.training import load_method, load_model, train_run

SMALL = {
    "nyuv2": {"prepare": {"standin_train": 40, "standin_test": 6, "image_size": [24, 32]},
              "model": {"width": 8, "stages": 2}},
    "shapenet_part": {"prepare": {"standin_train": 8, "standin_val": 2, "standin_test": 2, "points": 256},
                      "model": {"width": 8, "emb": 32, "k": 6, "train_points": 128, "generator_width": 8},
                      "split": {"train_per_category": 5, "aux_per_category": 2}},
    "cifar10": {"prepare": {"standin_train_per_class": 60, "standin_test_per_class": 5},
                "split": {"train_fraction": 0.5, "val": 20}, "model": {"width": 0.0625}},
}


def small_params(dataset: str, method: str, steps: int = 6, **extra) -> object:
    profile = {**SMALL[dataset], "train": {"steps": steps, "batch_size": 4, "eval_every": 3}}
    return parse_params({"dataset": dataset, "method": method, "seeds": [0], "datasets": {dataset: profile},
                         "methods": {"labels": {"diagnose_every": 3, "maxl_every": 2},
                                     "bilevel": {"hyper_every": 3}}, **extra})


@functools.lru_cache(maxsize=None)
def prepared(dataset: str):
    params = small_params(dataset, "stl")
    ds = DATASETS.get(dataset)(params.profile.model)
    folder = Path(tempfile.mkdtemp(prefix=f"e2e_{dataset}_"))
    ds.prepare(params.dataset_config, folder)
    data = ds.load(folder)
    return ds, data, ds.make_splits(data, params.split)


def trained(dataset: str, method: str) -> tuple[Experiment, TrainedRun, object]:
    ds, data, splits = prepared(dataset)
    params = small_params(dataset, method)
    res = train_run(ds, data, splits, params, 0, device=torch.device("cpu"))
    final = load_method(method, ds, data, params, res.method_state_final)
    model = load_model(ds, data, res.model_state, params.profile.model, aux_outputs=final.head_outputs())
    initial = load_method(method, ds, data, params, res.method_state_initial)
    return Experiment(ds, data, splits), TrainedRun(0, model, initial, final, res.history), params


@pytest.mark.parametrize("method", ["stl", "equal", "uncertainty", "dwa", "gradnorm", "gcs", "mgda", "auxilearn_linear",
                                    "auxilearn_deep_linear", "auxilearn_nonlinear", "auxilearn_convnet"])
def test_nyuv2_methods_train_and_evaluate(method):
    exp, run, _ = trained("nyuv2", method)
    metrics = exp.dataset.metrics(run.model, exp.data, torch.as_tensor(exp.splits["test"]))
    assert set(metrics) >= {"miou", "pixel_acc", "depth_abs_err", "depth_rel_err", "normal_mean_deg",
                            "normal_median_deg", "normal_within_11.25", "normal_within_22.5", "normal_within_30"}
    assert all(np.isfinite(v) for v in metrics.values())
    if method == "auxilearn_convnet":
        assert run.history["hyper_step"]  # φ of the ConvNet was updated from loss images


def test_loss_image_figure_and_pixel_weights(tmp_path):
    exp, run, params = trained("nyuv2", "auxilearn_convnet")
    path = tmp_path / "fig.png"
    loss_image_figure(exp, run, params, path, count=2)
    assert path.stat().st_size > 10_000
    # STL weighs every pixel of the main loss by 1 and the auxiliaries by 0: Σ_j ∂L_T/∂ℓ_j ≡ 1
    stl = trained("nyuv2", "stl")[1].method_final
    losses = torch.rand(2, 3, 5, 6)
    assert torch.allclose(pixel_weights(stl, losses), torch.ones(2, 5, 6))
    # the ConvNet's pixel weights vary over the image
    assert pixel_weights(run.method_final, losses).std() > 0


@pytest.mark.parametrize("method", ["stl", "auxilearn_labels", "dae", "rs"])
def test_shapenet_methods_train_and_evaluate(method):
    exp, run, _ = trained("shapenet_part", method)
    metrics = exp.dataset.metrics(run.model, exp.data, torch.as_tensor(exp.splits["test"]))
    assert 0 <= metrics["instance_miou"] <= 100 and 0 <= metrics["class_miou"] <= 100
    assert any(k.startswith("miou/") for k in metrics)
    if method == "auxilearn_labels":
        soft, groups, _ = generated_labels(exp, run)
        assert soft.shape[1] == 6 * exp.dataset.label_groups(exp.data)  # 6 auxiliary classes per category


@pytest.mark.parametrize("method", ["random", "maxl_frozen", "maxl", "auxilearn_labels"])
def test_cifar_label_methods_and_figure4(method, tmp_path):
    exp, run, _ = trained("cifar10", method)
    metrics = exp.dataset.metrics(run.model, exp.data, torch.as_tensor(exp.splits["test"]))
    assert 0 <= metrics["accuracy"] <= 100
    assert [e["step"] for e in run.history["method_log"] if "grad_cosine" in e] == [3, 6]
    if method != "random":
        soft, groups, rows = generated_labels(exp, run)
        hidden = np.asarray(exp.data.meta["subclass_labels"])[rows]
        nmi = plot_soft_labels(soft, groups, run.method_final.generator.mask.numpy(), exp.data.meta["class_names"], hidden,
                               tmp_path / "soft.png")
        assert (tmp_path / "soft.png").stat().st_size > 10_000 and all(0 <= v <= 1 for v in nmi.values())
