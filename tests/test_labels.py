"""Generated auxiliary tasks (MAXL, MAXL first-order, MAXL-F, Random, AuxiLearn's label generator) on a tiny
in-memory dataset: Mask SoftMax, focal loss, the look-ahead meta-gradient against finite differences, the
first-order meta-gradient against the exact one, MAXL's reference settings, the diagnostics' isolation, and
short training runs."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config.params import ParamsError, parse_params
from pipeline.core.schema import TrainConfig
from pipeline.datasets.shared.base import Dataset, TaskData
from pipeline.methods.base import build_method
from pipeline.methods.base import Batch, StepContext
from pipeline.methods.generators.labels import (LabelsConfig, block_entropy, focal_loss, hierarchy_mask, mask_softmax,
                                     negative_entropy)
from pipeline.models.base import MultiTaskNet
from pipeline.engine.training import train_run


class TinyNet(MultiTaskNet):
    def __init__(self, features: int, classes: int, aux_outputs: int, batch_norm: bool = False) -> None:
        super().__init__()
        norm = [nn.BatchNorm1d(8)] if batch_norm else []
        self.trunk = nn.Sequential(nn.Linear(features, 8), *norm, nn.Tanh())
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
    import pipeline.methods.bilevel as bilevel

    # AuxiLearn's outer-update settings live in methods.bilevel (BilevelConfig) once that section exists
    ift = {} if hasattr(bilevel, "BilevelConfig") else {"hyper_every": 5}
    cfg = LabelsConfig(**{"psi": 2, "diagnose_every": 10, "maxl_every": 5, **ift, **labels})
    sections = {"labels": cfg, "bilevel": bilevel.BilevelConfig(hyper_every=5) if not ift else None}
    return SimpleNamespace(method=method, device="cpu", seeds=[0], profile=SimpleNamespace(model=None), workers=0,
                           train=TrainConfig(steps=steps, batch_size=16, optimizer="sgd", lr=0.1, eval_every=10),
                           method_config=lambda section: sections[section])


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


def float64_setup(method_name: str, **labels):
    """A float64 Blobs problem: (method, model, batch, τ) for meta-gradient checks."""
    torch.manual_seed(0)
    ds = Blobs()
    data = ds.make()
    data = TaskData(data.inputs.double(), data.targets.double(), data.task_names, data.meta)
    _, method = bound(method_name, data, **labels)
    method.double()
    model = ds.build_model(data, None, aux_outputs=method.head_outputs()).double()
    batch = Batch(data.inputs[:24], data.targets[:24], torch.arange(24), torch.ones(24, dtype=torch.bool))
    scale = torch.tensor([1.0, 0.7], dtype=torch.float64)
    return method, model, batch, scale


def w_optimiser(model: nn.Module, momentum: float, **kw) -> torch.optim.SGD:
    """W's SGD after one real step (so a momentum buffer exists), its rate moved as a schedule would."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=momentum, **kw)
    x = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    main, aux = model.decode(model.encode(x))
    (main.square().mean() + aux.square().mean()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    for g in opt.param_groups:
        g["lr"] = 0.05
    return opt


META_CASES = {
    "reference": ({}, None),  # focal main loss, L2 as θ2's weight decay, W's plain SGD
    "paper_l1_dataset_loss": ({"maxl_penalty": "l1", "maxl_main_loss": "dataset"}, None),
    "w_momentum": ({"maxl_lookahead_momentum": True}, {"momentum": 0.9, "weight_decay": 1e-3}),
    "w_nesterov": ({"maxl_lookahead_momentum": True}, {"momentum": 0.8, "nesterov": True}),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_maxl_meta_gradient_matches_finite_differences(case):
    """∇θ2 of the look-ahead objective (second order through θ1⁺) against central differences, float64."""
    labels, opt_kw = META_CASES[case]
    method, model, batch, scale = float64_setup("maxl", **labels)
    opt = w_optimiser(model, **opt_kw) if opt_kw else None
    params = list(method.generator.label_net.parameters())
    grads = torch.autograd.grad(method.outer.meta_loss(model, batch, scale, opt), params)
    eps = 1e-6
    for p, g in zip(params, grads):
        for i in [0, p.numel() // 2, p.numel() - 1]:
            flat = p.data.view(-1)
            old = float(flat[i])
            flat[i] = old + eps
            up = float(method.outer.meta_loss(model, batch, scale, opt).detach())
            flat[i] = old - eps
            down = float(method.outer.meta_loss(model, batch, scale, opt).detach())
            flat[i] = old
            assert (up - down) / (2 * eps) == pytest.approx(float(g.view(-1)[i]), rel=1e-5, abs=1e-9)
    # the look-ahead term matters: without it (α → 0) the gradient is different
    method.outer.cfg = method.outer.cfg.model_copy(update={"lookahead_lr": 1e-12})
    plain = torch.autograd.grad(method.outer.meta_loss(model, batch, scale, opt), params)
    assert not all(torch.allclose(a, b) for a, b in zip(grads, plain))


@pytest.mark.parametrize("case", list(META_CASES))
def test_maxl_first_order_matches_the_exact_meta_gradient(case):
    """maxl_first_order's finite-difference Hessian-vector product against the exact second-order gradient."""
    labels, opt_kw = META_CASES[case]
    method, model, batch, scale = float64_setup("maxl_first_order", **labels)
    opt = w_optimiser(model, **opt_kw) if opt_kw else None
    exact_loss = method.outer.meta_loss(model, batch, scale, opt)  # Maxl's second-order objective, inherited
    exact = torch.autograd.grad(exact_loss, list(method.generator.label_net.parameters()))
    loss, approx = method.outer.meta_gradients(model, batch, scale, opt)
    assert float(loss) == pytest.approx(float(exact_loss.detach()), rel=1e-12)
    a, b = torch.cat([g.flatten() for g in approx]), torch.cat([g.flatten() for g in exact])
    assert float(F.cosine_similarity(a, b, dim=0)) > 0.999
    assert float((a - b).norm() / b.norm()) < 1e-3
    # and the look-ahead part is really there (not just the entropy term's direct gradient)
    direct = torch.autograd.grad(method.outer.theta2_terms(method.generator.soft_labels(batch, True)),
                                 list(method.generator.label_net.parameters()), allow_unused=True)
    d = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                   for g, p in zip(direct, method.generator.label_net.parameters())])
    assert float((a - d).norm()) > 10 * float((a - b).norm())


@pytest.mark.parametrize("opt_kw", [{"momentum": 0.0}, {"momentum": 0.9, "weight_decay": 1e-2},
                                    {"momentum": 0.9, "dampening": 0.3}, {"momentum": 0.8, "nesterov": True}])
@pytest.mark.parametrize("warm", [False, True])
def test_lookahead_is_one_step_of_w_optimiser(opt_kw, warm):
    """With maxl_lookahead_momentum, θ1⁺ is exactly what W's SGD would do with the same gradient."""
    method, model, batch, scale = float64_setup("maxl", maxl_lookahead_momentum=True)
    opt = w_optimiser(model, **opt_kw) if warm else torch.optim.SGD(model.parameters(), lr=0.05, **opt_kw)
    params = {k: p for k, p in model.named_parameters()}
    grads = tuple(torch.randn_like(p) for p in params.values())
    ahead = method.outer.lookahead(params, grads, method.outer.lookahead_rule(params, opt))
    for p, g in zip(params.values(), grads):
        p.grad = g.clone()
    opt.step()
    for k, p in params.items():
        assert torch.allclose(ahead[k], p.detach(), rtol=1e-12, atol=1e-14), k


def test_lookahead_rate_follows_w_schedule_unless_set():
    method, model, _, _ = float64_setup("maxl")
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    sched.step()
    rule = method.outer.lookahead_rule(params, opt)
    assert [r[0] for r in rule.values()] == pytest.approx([0.15] * len(rule))
    assert {r[1] for r in rule.values()} == {1e-3}
    assert {r[2] for r in rule.values()} == {1.0}  # momentum off by default (maxl_lookahead_momentum: false)
    assert {r[0] for r in method.outer.lookahead_rule(params, None).values()} == {0.1}  # train.lr without optimiser
    method.outer.cfg = method.outer.cfg.model_copy(update={"lookahead_lr": 0.02})
    assert {r[0] for r in method.outer.lookahead_rule(params, opt).values()} == {0.02}


def test_maxl_reference_defaults_and_switches():
    cfg = LabelsConfig()
    assert (cfg.maxl_main_loss, cfg.maxl_momentum, cfg.maxl_penalty, cfg.lr, cfg.weight_decay,
            cfg.maxl_lookahead_momentum, cfg.lookahead_lr) == ("focal", 0.0, "l2", 1e-3, 5e-4, False, None)
    data = Blobs().make()
    for name in ("maxl", "maxl_first_order"):
        _, m = bound(name, data)
        group = m.outer.optimizer.param_groups[0]
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-3, 0.0, 5e-4)
        assert m.generator.main_loss_kind == "focal"
    _, m = bound("maxl", data, maxl_penalty="l1", maxl_momentum=0.5)
    assert (m.outer.optimizer.param_groups[0]["weight_decay"], m.outer.optimizer.param_groups[0]["momentum"]) == (0.0, 0.5)
    l1 = sum(p.abs().sum() for p in m.generator.label_net.parameters())
    soft = torch.full((4, 6), 1 / 6)
    assert torch.allclose(m.outer.theta2_terms(soft), 0.2 * negative_entropy(soft) + 5e-4 * l1)
    _, m = bound("maxl", data)
    assert torch.allclose(m.outer.theta2_terms(soft), 0.2 * negative_entropy(soft))  # l2: in θ2's SGD instead


def test_focal_main_loss_for_maxl_only():
    ds = Blobs()
    data = ds.make()
    batch = Batch(data.inputs[:12], data.targets[:12], torch.arange(12), torch.ones(12, dtype=torch.bool))
    logits = torch.randn(12, 3)
    ce = ds.per_task_losses(logits, batch.y)
    y = batch.y[:, 0].long()
    p_y = torch.softmax(logits, 1)[torch.arange(12), y]
    for name in ("maxl", "maxl_first_order"):
        _, m = bound(name, data)
        assert torch.allclose(m.generator.main_losses(logits, batch.y), (1 - p_y[:, None]) ** 2 * ce, atol=1e-6)
        _, m = bound(name, data, focal_gamma=0.0)
        assert torch.allclose(m.generator.main_losses(logits, batch.y), ce, atol=1e-6)
        _, m = bound(name, data, maxl_main_loss="dataset")
        assert torch.equal(m.generator.main_losses(logits, batch.y), ce)
    for name in ("maxl_frozen", "random", "auxilearn_labels"):  # the others keep the dataset's loss, as STL
        _, m = bound(name, data)
        assert m.generator.main_loss_kind == "dataset" and torch.equal(m.generator.main_losses(logits, batch.y), ce)
    # per-point logits [B, C, N] against y[:, :N], averaged over the points
    _, m = bound("maxl", data)
    pts = torch.randn(5, 3, 7)
    labels = torch.randint(0, 3, (5, 7))
    y_pts = torch.cat([labels, torch.zeros(5, 1, dtype=torch.long)], 1).float()
    ce_pts = F.cross_entropy(pts, labels, reduction="none")
    want = ((1 - torch.exp(-ce_pts)) ** 2 * ce_pts).mean(1, keepdim=True)
    assert torch.allclose(m.generator.main_losses(pts, y_pts), want, atol=1e-6)


def fake_ctx(model, step_batch, fresh, diagnostic=None, optimizer=None, step=1):
    return StepContext(step, list(model.parameters()), lambda: None, lambda: None, model=model,
                       train_batch=fresh, loss_scale=torch.tensor([1.0, 1.0]), batch=step_batch,
                       optimizer=optimizer, diagnostic_batch=diagnostic)


@pytest.mark.parametrize("which", ["fresh", "step"])
def test_maxl_meta_batch_switch(which):
    """maxl_meta_batch: step reuses W's step (its batch ctx.batch and its gradient, before W's optimiser step);
    fresh draws from the outer stream after W's step."""
    ds = Blobs()
    data = ds.make()
    _, m = bound("maxl", data, maxl_meta_batch=which, diagnose_every=1000)
    model = ds.build_model(data, None, aux_outputs=m.head_outputs())
    a = Batch(data.inputs[:16], data.targets[:16], torch.arange(16), torch.ones(16, dtype=torch.bool))
    b = Batch(data.inputs[16:32], data.targets[16:32], torch.arange(16, 32), torch.ones(16, dtype=torch.bool))
    used, original = [], m.outer.meta_gradients
    m.outer.meta_gradients = lambda model, batch, *rest: used.append((batch, rest[-1])) or original(model, batch, *rest)
    m.outer.base_lr = 0.1
    losses = m.batch_losses(model, ds, a, False)[0].mean(0).sum()
    losses.backward()  # W's gradient, as W's step leaves it before its optimiser step
    before = m.before_w_step(fake_ctx(model, a, lambda: b, step=5))
    after = m.after_step(fake_ctx(model, a, lambda: b, step=5))
    assert ("meta_loss" in before, "meta_loss" in after) == ((True, False) if which == "step" else (False, True))
    assert used == [(a, True) if which == "step" else (b, False)]
    assert m.before_w_step(fake_ctx(model, a, lambda: b, step=6)) == {}  # maxl_every: 5


def test_the_step_meta_batch_runs_between_ws_backward_and_ws_update(monkeypatch):
    """In training, ``maxl_meta_batch: step`` updates θ2 where W's step has its gradient and has not moved W:
    the hook sees the W that the previous step left, with a gradient, and θ2 moves; the same seed, the same run."""
    from pipeline.methods.outer.lookahead import LookAheadUpdate

    ds = Blobs()
    data = ds.make()
    seen: dict[str, list] = {"before": [], "after": []}
    before_hook, after_hook = LookAheadUpdate.before_w_step, LookAheadUpdate.step

    def before(self, method, ctx):
        seen["before"].append((ctx.step, [p.detach().clone() for p in ctx.params],
                               all(p.grad is not None for p in ctx.params)))
        return before_hook(self, method, ctx)

    def after(self, method, ctx):
        seen["after"].append((ctx.step, [p.detach().clone() for p in ctx.params]))
        return after_hook(self, method, ctx)

    monkeypatch.setattr(LookAheadUpdate, "before_w_step", before)
    monkeypatch.setattr(LookAheadUpdate, "step", after)
    runs = [train_run(ds, data, splits_for(len(data)), fake_params("maxl", maxl_meta_batch="step"), seed=0,
                      device=torch.device("cpu")) for _ in range(2)]
    res = runs[0]
    assert [e["step"] for e in res.history["method_log"] if "meta_loss" in e] == [5, 10, 15, 20, 25, 30]
    before5 = next(w for step, w, graded in seen["before"] if step == 5 and graded)
    after4 = next(w for step, w in seen["after"] if step == 4)
    after5 = next(w for step, w in seen["after"] if step == 5)
    assert all(torch.equal(a, b) for a, b in zip(before5, after4))
    assert not all(torch.equal(a, b) for a, b in zip(before5, after5))
    generator = [k for k in res.method_state_final if k.startswith("generator.label_net.")]
    assert any(not torch.equal(res.method_state_initial[k], res.method_state_final[k]) for k in generator)
    assert all(torch.equal(res.method_state_final[k], runs[1].method_state_final[k]) for k in generator)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_the_step_meta_batch_under_mixed_precision(amp, monkeypatch):
    """θ2's update inside W's step reads W's gradient after fp16's scaler has unscaled it (so its look-ahead is
    the step W takes), and waits on a step the scaler skips (non-finite gradient)."""
    from pipeline.methods.outer.lookahead import LookAheadUpdate

    ds = Blobs()
    data = ds.make()
    params = fake_params("maxl", steps=10, maxl_meta_batch="step")
    params.train = params.train.model_copy(update={"amp": amp})
    seen, hook = [], LookAheadUpdate.before_w_step

    def spy(self, method, ctx):
        if ctx.step == 10:  # a step the scaler will skip: θ2 must not move on it
            ctx.params[0].grad[0, 0] = float("inf")
        logs = hook(self, method, ctx)
        seen.append((ctx.step, max(float(p.grad.abs().max()) for p in ctx.params if p.grad is not None), dict(logs)))
        return logs

    monkeypatch.setattr(LookAheadUpdate, "before_w_step", spy)
    res = train_run(ds, data, splits_for(len(data)), params, seed=0, device=torch.device("cpu"))
    assert [e["step"] for e in res.history["method_log"] if "meta_loss" in e] == [5]
    assert seen[4][1] < 1e3  # unscaled: fp16's scale factor (65536 at the start) is not in W's gradient
    assert seen[9][2] == {}
    generator = [k for k in res.method_state_final if k.startswith("generator.label_net.")]
    assert any(not torch.equal(res.method_state_initial[k], res.method_state_final[k]) for k in generator)


def test_diagnostics_observe_only():
    """Diagnostics: the diagnostics' own batch, eval mode, BatchNorm statistics untouched, modes restored."""
    ds = Blobs()
    data = ds.make()
    _, m = bound("maxl_frozen", data)
    model = TinyNet(4, 3, m.head_outputs(), batch_norm=True)
    model.train()
    model.main.eval()  # a mixed mode must come back as it was
    m.generator.label_net.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen_modes = []
    diag = Batch(data.inputs[:16], data.targets[:16], torch.arange(16), torch.ones(16, dtype=torch.bool))

    def diagnostic_batch():
        return diag

    hook = model.trunk.register_forward_hook(lambda mod, i, o: seen_modes.append(mod.training))
    out = m.generator.diagnostics(fake_ctx(model, None, lambda: pytest.fail("train_batch used"), diagnostic_batch))
    hook.remove()
    assert seen_modes == [False]
    assert 0 <= out["label_entropy"] <= 1 + 1e-6 and -1 <= out["grad_cosine"] <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and model.trunk.training and not model.main.training
    assert m.generator.label_net.training


def test_random_labels_are_fixed_per_sample_and_inside_the_block():
    data = Blobs().make()
    _, method = bound("random", data)
    batch = Batch(data.inputs[:30], data.targets[:30], torch.arange(30), torch.ones(30, dtype=torch.bool))
    a, b = method.generator.soft_labels(batch), method.generator.soft_labels(batch)
    assert torch.equal(a, b) and torch.equal(a.sum(1), torch.ones(30))
    groups = data.targets[:30, 0].long()
    assert (a * ~method.generator.mask[groups]).sum() == 0
    assert len(method.generator.fixed_class.unique()) == 6  # every class of the balanced hierarchy is used


@pytest.mark.parametrize("name", ["maxl", "maxl_first_order", "maxl_frozen", "random", "auxilearn_labels"])
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
    generator = [k for k in res.method_state_final if k.startswith("generator.label_net.")]
    moved = any(not torch.equal(res.method_state_initial[k], res.method_state_final[k]) for k in generator)
    assert moved == (name in ("maxl", "maxl_first_order", "auxilearn_labels"))
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
    # params validation refuses the pair before any work, naming the datasets that fit
    with pytest.raises(ParamsError, match="method maxl needs a dataset with generated_labels.*fit: cifar10"):
        parse_params({"method": "maxl", "dataset": "toy2d"})
    # and the method itself refuses a dataset without label groups, if built around the validation
    toy = parse_params({"method": "maxl", "dataset": "cifar10"})
    from tests.conftest import _prepared
    ds, toy_data, _ = _prepared("toy2d")
    with pytest.raises(ValueError, match="toy2d does not support generated auxiliary tasks"):
        build_method("maxl", toy_data.num_tasks, toy, ds, toy_data)


CIFAR_TINY = {"prepare": {"standin_train_per_class": 12, "standin_test_per_class": 2},
              "split": {"train_fraction": 0.5, "val": 8}, "model": {"width": 0.0625},
              "train": {"steps": 4, "batch_size": 4, "eval_every": 2}}


def test_diagnostics_leave_training_bit_identical(tmp_path, method="maxl"):
    """A diagnostic every step and none at all give the same network, generator and BN statistics, bit for
    bit: the diagnostics draw from their own stream, run in eval mode and restore every module's mode."""
    from pipeline.core.registry import DATASETS

    def params(every: int):
        return parse_params({"dataset": "cifar10", "method": method, "seeds": [0],
                             "datasets": {"cifar10": CIFAR_TINY},
                             "methods": {"labels": {"psi": 2, "diagnose_every": every, "maxl_every": 1}}})

    ds = DATASETS.get("cifar10")()
    ds.prepare(params(1).dataset_config, tmp_path)
    data = ds.load(tmp_path)
    splits = ds.make_splits(data, params(1).split)
    runs = {every: train_run(ds, data, splits, params(every), 0, device=torch.device("cpu")) for every in (1, 1000)}
    assert [e["step"] for e in runs[1].history["method_log"] if "grad_cosine" in e] == [1, 2, 3, 4]
    assert not any("grad_cosine" in e for e in runs[1000].history["method_log"])
    for state in ("model_state", "method_state_final"):
        a, b = getattr(runs[1], state), getattr(runs[1000], state)
        assert a.keys() == b.keys() and any("running_mean" in k for k in a)  # BatchNorm on both networks
        for k in a:
            assert torch.equal(a[k], b[k]), (state, k)
    assert runs[1].history["train_loss"] == runs[1000].history["train_loss"]
