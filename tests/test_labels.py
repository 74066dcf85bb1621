"""Generated auxiliary tasks (MAXL, MAXL-F, Random, AuxiLearn's label generator) on a tiny in-memory dataset:
Mask SoftMax, focal loss, the look-ahead meta-gradient against finite differences, and short training runs."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import TrainConfig, parse_params
from pipeline.datasets.base import Dataset, TaskData
from pipeline.methods import build_method
from pipeline.methods.base import Batch
from pipeline.methods.labels import (LabelsConfig, block_entropy, focal_loss, hierarchy_mask, mask_softmax,
                                     negative_entropy)
from pipeline.models.base import MultiTaskNet
from pipeline.training import train_run


class TinyNet(MultiTaskNet):
    def __init__(self, features: int, classes: int, aux_outputs: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(features, 8), nn.Tanh())
        self.main = nn.Linear(8, classes)
        self.aux = nn.Linear(8, aux_outputs) if aux_outputs else None
        self.has_generated_head = bool(aux_outputs)

    def encode(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def decode(self, z: Tensor):
        return self.main(z) if self.aux is None else (self.main(z), self.aux(z))

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def last_shared_parameters(self):
        return list(self.trunk.parameters())


class Blobs(Dataset):
    """3 Gaussian blobs in 4-d, each with 2 hidden sub-blobs: a dataset supporting generated tasks."""

    name = "blobs"
    Config = LabelsConfig  # unused

    def prepare(self, cfg, out_dir):  # pragma: no cover - in memory only
        raise NotImplementedError

    def load(self, folder):  # pragma: no cover
        raise NotImplementedError

    def make(self, n: int = 90, seed: int = 0) -> TaskData:
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 3
        sub = (torch.arange(n) // 3) % 2
        x = torch.randn(n, 4, generator=g) * 0.5 + F.one_hot(labels, 4).float() * 2 + sub[:, None] * 0.7
        return TaskData(x, labels[:, None].float(), ["class"], {"num_classes": 3})

    def build_model(self, data, cfg, aux_outputs=0):
        return TinyNet(4, 3, aux_outputs)

    def per_task_losses(self, outputs, targets):
        return F.cross_entropy(outputs, targets[:, 0].long(), reduction="none")[:, None]

    def metrics(self, model, data, indices):
        with torch.no_grad():
            out = model(data.inputs[indices])
        return {"accuracy": float((out.argmax(1) == data.targets[indices, 0].long()).float().mean())}

    def label_groups(self, data):
        return 3

    def label_group(self, targets):
        return targets[:, 0].long()

    def build_label_generator(self, data, cfg, num_aux_classes):
        return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, num_aux_classes))


def fake_params(method: str, steps: int = 30, **labels) -> SimpleNamespace:
    cfg = LabelsConfig(**{"psi": 2, "diagnose_every": 10, "maxl_every": 5, "hyper_every": 5, **labels})
    return SimpleNamespace(method=method, device="cpu", seeds=[0], profile=SimpleNamespace(model=None),
                           train=TrainConfig(steps=steps, batch_size=16, optimizer="sgd", lr=0.1, eval_every=10),
                           method_config=lambda section: cfg)


def splits_for(n: int) -> dict[str, np.ndarray]:
    idx = np.arange(n)
    return {"train": idx[:60], "aux": idx[60:69], "val": idx[69:80], "test": idx[80:]}


def test_mask_softmax_is_zero_outside_the_block_and_sums_to_one_inside():
    mask = hierarchy_mask([2, 3, 1])
    assert mask.tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]]
    logits = torch.randn(6, 6, 5)  # per point too: [B, K, N]
    groups = torch.tensor([0, 1, 2, 1, 0, 2])
    probs = mask_softmax(logits, groups, mask)
    for b, g in enumerate(groups):
        assert (probs[b, ~mask[g]] == 0).all()
        assert torch.allclose(probs[b, mask[g]].sum(0), torch.ones(5))
        assert (probs[b, mask[g]] > 0).all()
    per_sample = mask_softmax(logits[:, :, 0], groups, mask)
    assert torch.allclose(per_sample, probs[:, :, 0])


def test_focal_loss_matches_a_hand_value():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = [0.25, 0.75]
    assert torch.allclose(focal_loss(logits, torch.tensor([[0.0, 1.0]]), 2.0), torch.tensor([0.25**2 * -math.log(0.75)]))
    soft = torch.tensor([[0.5, 0.5]])  # soft target: both terms
    hand = 0.5 * 0.75**2 * -math.log(0.25) + 0.5 * 0.25**2 * -math.log(0.75)
    assert torch.allclose(focal_loss(logits, soft, 2.0), torch.tensor([hand]))
    assert torch.allclose(focal_loss(logits, soft, 0.0), -(soft * F.log_softmax(logits, 1)).sum(1))


def test_entropy_terms():
    uniform = torch.full((4, 3), 1 / 3)
    collapsed = F.one_hot(torch.zeros(4, dtype=torch.long), 3).float()
    assert torch.allclose(negative_entropy(uniform), torch.tensor(-math.log(3)))
    assert negative_entropy(collapsed).abs() < 1e-6
    mask = hierarchy_mask([3])
    assert block_entropy(uniform, torch.zeros(4, dtype=torch.long), mask) == pytest.approx([1.0])
    assert block_entropy(collapsed, torch.zeros(4, dtype=torch.long), mask) == pytest.approx([0.0], abs=1e-6)


def bound(method: str, data: TaskData, **labels):
    ds = Blobs()
    m = build_method(method, data.num_tasks, fake_params(method, **labels), ds, data)
    return ds, m


def test_maxl_meta_gradient_matches_finite_differences():
    """∇θ2 of the look-ahead objective (second order through θ1⁺) against central differences, float64."""
    torch.manual_seed(0)
    ds = Blobs()
    data = ds.make()
    data = TaskData(data.inputs.double(), data.targets.double(), data.task_names, data.meta)
    _, method = bound("maxl", data)
    method.double()
    model = ds.build_model(data, None, aux_outputs=method.aux_outputs()).double()
    batch = Batch(data.inputs[:24], data.targets[:24], torch.arange(24), torch.ones(24, dtype=torch.bool))
    scale = torch.tensor([1.0, 0.7], dtype=torch.float64)
    params = list(method.generator.parameters())
    grads = torch.autograd.grad(method.meta_loss(model, batch, scale), params)
    eps = 1e-6
    for p, g in zip(params, grads):
        for i in [0, p.numel() // 2, p.numel() - 1]:
            flat = p.data.view(-1)
            old = float(flat[i])
            flat[i] = old + eps
            up = float(method.meta_loss(model, batch, scale).detach())
            flat[i] = old - eps
            down = float(method.meta_loss(model, batch, scale).detach())
            flat[i] = old
            assert (up - down) / (2 * eps) == pytest.approx(float(g.view(-1)[i]), rel=1e-5, abs=1e-9)
    # the look-ahead term matters: without it (α → 0) the gradient is different
    method.lookahead_lr = 1e-12
    plain = torch.autograd.grad(method.meta_loss(model, batch, scale), params)
    assert not all(torch.allclose(a, b) for a, b in zip(grads, plain))


def test_random_labels_are_fixed_per_sample_and_inside_the_block():
    data = Blobs().make()
    _, method = bound("random", data)
    batch = Batch(data.inputs[:30], data.targets[:30], torch.arange(30), torch.ones(30, dtype=torch.bool))
    a, b = method.soft_labels(batch), method.soft_labels(batch)
    assert torch.equal(a, b) and torch.equal(a.sum(1), torch.ones(30))
    groups = data.targets[:30, 0].long()
    assert (a * ~method.mask[groups]).sum() == 0
    assert len(method.fixed_class.unique()) == 6  # every class of the balanced hierarchy is used


@pytest.mark.parametrize("name", ["maxl", "maxl_frozen", "random", "auxilearn_labels"])
def test_training_runs_and_only_learning_methods_move_the_generator(name):
    ds = Blobs()
    data = ds.make()
    torch.manual_seed(0)
    res = train_run(ds, data, splits_for(len(data)), fake_params(name), seed=0, device=torch.device("cpu"))
    assert np.isfinite(res.history["train_loss"]).all()
    logs = res.history["method_log"]
    diag = [e for e in logs if "grad_cosine" in e]
    assert [e["step"] for e in diag] == [10, 20, 30]
    assert all(-1 <= e["grad_cosine"] <= 1 and 0 <= e["label_entropy"] <= 1 + 1e-6 for e in diag)
    generator = [k for k in res.method_state_final if k.startswith("generator.")]
    moved = any(not torch.equal(res.method_state_initial[k], res.method_state_final[k]) for k in generator)
    assert moved == (name in ("maxl", "auxilearn_labels"))
    assert (name == "random") == (not generator)
    if name == "auxilearn_labels":
        assert res.history["hyper_step"] == [5, 10, 15, 20, 25, 30]


def test_auxilearn_labels_with_a_combining_network():
    ds = Blobs()
    data = ds.make()
    res = train_run(ds, data, splits_for(len(data)), fake_params("auxilearn_labels", combine="nonlinear"), 0,
                    device=torch.device("cpu"))
    combiner = [k for k in res.method_state_final if k.startswith("combiner.")]
    assert combiner and any(not torch.equal(res.method_state_initial[k], res.method_state_final[k]) for k in combiner)


def test_psi_must_match_the_groups_and_datasets_must_support_generation():
    data = Blobs().make()
    with pytest.raises(ValueError, match="methods.labels.psi: 2 entries, but blobs has 3 groups"):
        bound("maxl", data, psi=[2, 2])
    with pytest.raises(Exception, match="psi"):
        parse_params({"methods": {"labels": {"psi": 0}}})
    toy = parse_params({"method": "maxl", "dataset": "toy2d"})
    from tests.conftest import _prepared
    ds, toy_data, _ = _prepared("toy2d")
    with pytest.raises(ValueError, match="toy2d does not support generated auxiliary tasks"):
        build_method("maxl", toy_data.num_tasks, toy, ds, toy_data)
