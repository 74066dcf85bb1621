"""JTDS and MAOAL (DTG-AuxL's bilevel baselines): their weights' constraints, their upper gradients against finite
differences of a solved lower problem, and JTDS's claim that a sample with a corrupted auxiliary label gets a
lower weight than a clean one."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.methods.bilevel import BilevelConfig, TrainCurvature, neumann_hypergradient
from pipeline.datasets.shared.base import TaskData
from pipeline.datasets.cub.task import corrupt_attributes
from pipeline.methods.base import Batch, Method, SharedTrunk, StepContext
from pipeline.methods.jtds import JointScheduler, JTDSConfig, scheduler_objectives
from pipeline.methods.maoal import MAOALConfig, ModuleImportance, module_objectives
from pipeline.methods.trunk import sample_features, trunk_modules
from pipeline.models.base import MultiTaskNet
from pipeline.core.registry import METHODS
from tests.conftest import InMemoryDataset, check_against_finite_differences, solve_lower

IN, D = 3, 2


# ---------------------------------------------------------------------------------------- a tiny problem


class TinyNet(MultiTaskNet):
    """Trunk of two layers (z = tanh(B tanh(A x))), heads: main and two auxiliaries, each a scalar regression."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(IN, D), nn.Linear(D, D)
        self.heads = nn.ModuleList(nn.Linear(D, 1) for _ in range(3))

    def encode(self, x):
        return torch.tanh(self.b(torch.tanh(self.a(x))))

    def decode(self, z):
        return torch.cat([h(z) for h in self.heads], dim=1)

    def shared_parameters(self):
        return [*self.a.parameters(), *self.b.parameters()]

    def last_shared_parameters(self):
        return list(self.b.parameters())


class SharedHeadNet(TinyNet):
    """TinyNet whose tasks all read the main head (as toy2d's shared model): an auxiliary label then pulls the
    main prediction itself, so a corrupted one is harmful and a clean one (the main function) helpful."""

    def decode(self, z):
        return self.heads[0](z).expand(-1, 3)


class Tiny(InMemoryDataset):
    """Targets [main, aux1, aux2], squared errors. ``mu``: μ/2·‖W‖² on the main loss (a strongly convex lower
    problem for the finite-difference tests)."""

    name = "tiny"
    provides = frozenset({"auxiliaries"})

    def __init__(self, shared_head: bool = False) -> None:
        super().__init__()
        self.ridge: list[torch.Tensor] = []
        self.mu = 0.0
        self.shared_head = shared_head

    def build_model(self, data, cfg, aux_outputs=0):
        return SharedHeadNet() if self.shared_head else TinyNet()

    def per_task_losses(self, outputs, y):
        out = (outputs - y) ** 2
        if self.ridge:
            penalty = 0.5 * self.mu * sum((p ** 2).sum() for p in self.ridge)
            out = torch.cat([out[:, :1] + penalty, out[:, 1:]], dim=1)
        return out


def tiny_data(n: int, seed: int = 0) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    y = torch.stack([x[:, 0] - x[:, 1], x[:, 0] + 0.5 * torch.randn(n, generator=g), torch.randn(n, generator=g)], 1)
    return TaskData(x, y, ["main", "aux1", "aux2"])


def full_batch(data: TaskData) -> Batch:
    rows = torch.arange(len(data))
    return Batch(data.inputs, data.targets, rows, torch.ones(len(rows), dtype=torch.bool))


def build(name: str, cfg, data: TaskData, seed: int = 0, bilevel: BilevelConfig | None = None,
          shared_head: bool = False):
    ds = Tiny(shared_head)
    params = SimpleNamespace(profile=SimpleNamespace(model=None))
    torch.manual_seed(seed)
    method = Method(METHODS.get(name), data.num_tasks, cfg, bilevel or BilevelConfig(), ds, data, params)
    torch.manual_seed(seed + 100)
    return ds, method, ds.build_model(data, None)


def context(model, ds, lower: Batch, upper: Batch, step: int = 1) -> StepContext:
    def aux_losses():
        return ds.per_task_losses(model(upper.x), upper.y)
    return StepContext(step, [p for p in model.parameters()], lambda: None, aux_losses, model=model, dataset=ds,
                       train_batch=lambda: lower, loss_scale=None, batch=lower)


# ----------------------------------------------------------------------------------------------- shapes


def test_jtds_weights_are_positive_per_sample_and_task_and_start_at_init_weight():
    sched = JointScheduler(3, 5, JTDSConfig(init_weight=1.0, feature_init=0.0, slope_init=0.0))
    g = torch.Generator().manual_seed(0)
    losses, feats = torch.rand(7, 3, generator=g) * 10, torch.randn(7, 5, generator=g)
    w = sched.weights(losses, feats)
    assert w.shape == (7, 3)
    assert torch.allclose(w, torch.ones(7, 3), atol=1e-6)  # zero feature map and slopes: the init weight
    with torch.no_grad():  # deep into every saturating region: still positive
        for p in sched.parameters():
            p.fill_(-3.0)
    assert (sched.weights(losses, feats) > 0).all()
    # the weight depends on the sample (feature and loss), not only on the task
    sched2 = JointScheduler(3, 5, JTDSConfig())
    w2 = sched2.weights(losses, feats)
    assert (w2 > 0).all() and w2[:, 1].std() > 0
    # the main task unweighted on request; a wrong feature size is refused by shape
    sched3 = JointScheduler(3, 5, JTDSConfig(weight_main=False))
    assert torch.equal(sched3.weights(losses, feats)[:, 0], torch.ones(7))
    with pytest.raises(ValueError, match=r"expected \(7, 5\)"):
        sched3.weights(losses, feats[:, :4])


def test_jtds_batch_normalisation_moves_weight_but_cannot_scale_the_step():
    """``normalise: batch`` (the default): however large φ makes the raw weights, the main task's average 1 over
    the batch and the auxiliaries' average init_weight; the ranking of samples and auxiliaries is the raw one.
    ``none`` lets the task prior scale every weight (the divergence seen on the CUB stand-in)."""
    g = torch.Generator().manual_seed(1)
    losses, feats = torch.rand(6, 4, generator=g) * 3, torch.randn(6, 5, generator=g)
    raw = JointScheduler(4, 5, JTDSConfig(normalise="none", init_weight=0.5))
    normed = JointScheduler(4, 5, JTDSConfig(init_weight=0.5))
    normed.load_state_dict(raw.state_dict())
    with torch.no_grad():
        for sched in (raw, normed):
            sched.prior.copy_(torch.tensor([40.0, 30.0, 2.0, -1.0]))
    w_raw, w = raw.weights(losses, feats), normed.weights(losses, feats)
    assert w_raw[:, 0].mean() > 10 and w_raw[:, 1:].mean() > 3  # unbounded: the prior scales them
    torch.testing.assert_close(w[:, 0].mean(), torch.tensor(1.0))
    torch.testing.assert_close(w[:, 1:].mean(), torch.tensor(0.5))
    assert torch.equal(w[:, 1:].flatten().argsort(), w_raw[:, 1:].flatten().argsort())  # the same ranking
    assert w[:, 1].mean() > 5 * w[:, 3].mean()  # the prior still moves weight between auxiliaries


def test_jtds_weight_falls_with_the_loss_when_the_slope_is_negative():
    sched = JointScheduler(2, 3, JTDSConfig())
    with torch.no_grad():
        sched.loss_slope.fill_(-2.0)
    losses = torch.tensor([[1.0, 0.1], [1.0, 0.5], [1.0, 5.0]])
    w = sched.weights(losses, torch.zeros(3, 3))
    assert w[0, 1] > w[1, 1] > w[2, 1]  # the normalised loss ranks the samples inside the batch


def test_sample_features_pool_every_representation_to_one_vector_per_sample():
    assert sample_features(torch.randn(5)).shape == (5, 1)
    assert sample_features(torch.randn(5, 3)).shape == (5, 3)
    z = torch.randn(5, 3, 4, 6)
    assert torch.allclose(sample_features(z), z.mean((2, 3)))


def test_trunk_modules_group_layers_by_depth():
    shapes = [torch.Size(s) for s in [(4, 3), (4,), (8, 4, 3), (8,), (8,), (2, 8), (2,)]]
    assert trunk_modules(shapes, 5) == [0, 0, 1, 1, 1, 2, 2]  # three layers: one module each
    assert trunk_modules(shapes, 2) == [0, 0, 0, 0, 0, 1, 1]
    assert trunk_modules([torch.Size([2])], 5) == [0]  # toy2d's one weight vector


@pytest.mark.parametrize("positive", ["relu", "softplus"])
def test_maoal_importances_are_nonnegative_per_auxiliary_and_module(positive):
    data = tiny_data(8)
    _, method, model = build("maoal", MAOALConfig(positive=positive, modules=5), data)
    comb: ModuleImportance = method.combiner
    assert comb.importance.shape == (2, 2)  # 2 auxiliaries × 2 trunk layers (modules capped at the layers)
    assert torch.allclose(comb.omega(), torch.ones(2, 2), atol=1e-6)
    with torch.no_grad():
        comb.importance.copy_(torch.tensor([[-3.0, 0.5], [2.0, -0.1]]))
    omega = comb.omega()
    assert (omega >= 0).all()
    if positive == "relu":
        assert omega[0, 0] == 0 and omega[1, 1] == 0
    else:
        assert (omega > 0).all()


def test_maoal_step_scales_each_auxiliary_gradient_per_module():
    data = tiny_data(8)
    ds, method, model = build("maoal", MAOALConfig(aux_scale="sum"), data)
    comb: ModuleImportance = method.combiner
    with torch.no_grad():
        comb.importance.copy_(torch.tensor([[0.0, 2.0], [1.0, 0.5]]))  # aux1 off on module 0 (layer a)
    batch = full_batch(data)
    z = model.encode(batch.x)
    losses = ds.per_task_losses(model.decode(z), batch.y)
    model.zero_grad(set_to_none=True)
    method.backward(losses, SharedTrunk(model.shared_parameters(), [], z))
    got = {name: p.grad.clone() for name, p in model.named_parameters()}

    def grad_of(task, name):
        p = dict(model.named_parameters())[name]
        return torch.autograd.grad(losses[:, task].mean(), p, retain_graph=True, allow_unused=True)[0]

    for name in ("a.weight", "b.weight"):
        m = 0 if name.startswith("a") else 1
        want = grad_of(0, name) + sum(comb.omega()[k, m] * grad_of(k + 1, name) for k in range(2))
        assert torch.allclose(got[name], want, atol=1e-6)
    # a head outside the trunk: its own task's plain gradient (c = 1 with aux_scale: sum)
    assert torch.allclose(got["heads.1.weight"], grad_of(1, "heads.1.weight"), atol=1e-6)
    # the reported weights: the mean importance over the modules
    assert torch.allclose(method.task_weights(losses), torch.tensor([1.0, 1.0, 0.75]), atol=1e-6)


def test_maoal_direction_is_the_same_per_task_or_per_module():
    """G by one backward per task (all of W: the trunk's 2 modules and the heads, 3 groups for 3 tasks) and by
    one per module (the trunk alone: 2 groups) agree on the trunk, graph and all."""
    data = tiny_data(8)
    ds, method, model = build("maoal", MAOALConfig(), data)
    comb: ModuleImportance = method.combiner
    with torch.no_grad():
        comb.importance.copy_(torch.tensor([[0.3, 2.0], [1.0, 0.5]]))
    batch = full_batch(data)
    losses = ds.per_task_losses(model(batch.x), batch.y)
    trunk = model.shared_parameters()
    per_task = comb.direction(losses, list(model.parameters()), trunk, create_graph=True)
    per_module = comb.direction(losses, trunk, trunk, create_graph=True)
    index = {id(p): i for i, p in enumerate(model.parameters())}
    for p, g in zip(trunk, per_module):
        torch.testing.assert_close(g, per_task[index[id(p)]])
    # both differentiable in θ, alike
    grads = [torch.autograd.grad(sum((g * g).sum() for g in d), comb.importance, retain_graph=True)[0]
             for d in (per_module, [per_task[index[id(p)]] for p in trunk])]
    torch.testing.assert_close(grads[0], grads[1])


# --------------------------------------------------------------------------- upper gradients vs finite differences


def _float64(test):
    def run():
        torch.set_default_dtype(torch.float64)
        try:
            test()
        finally:
            torch.set_default_dtype(torch.float32)
    run.__name__ = test.__name__
    return run


@_float64
def test_jtds_upper_gradient_matches_finite_differences():
    """W*(φ) minimises L_T = mean_b Σ_t w_bt(φ) ℓ_bt(W) + ridge, the scheduler's inputs (features, normalised
    losses) read at W*(φ0) as the method reads them detached; the engine's hypergradient through
    ``scheduler_objectives`` against central differences of L_A(W*(φ))."""
    data, upper = tiny_data(6), full_batch(tiny_data(5, seed=1))
    ds, method, model = build("jtds", JTDSConfig(feature_init=0.5, slope_init=0.5), data)
    method.double()
    model.double()
    theta = list(model.parameters())
    ds.ridge, ds.mu = theta, 3.0
    lower = full_batch(data)
    sched: JointScheduler = method.combiner
    phi = sched.hyper_parameters()

    def frozen_inputs():
        with torch.no_grad():
            z = model.encode(lower.x)
            return ds.per_task_losses(model.decode(z), lower.y), sample_features(z)

    def lower_loss(inputs):
        losses = ds.per_task_losses(model(lower.x), lower.y)
        return (sched.weights(inputs[0], inputs[1]) * losses).sum(1).mean()

    solve_lower(lambda: torch.autograd.grad(lower_loss(frozen_inputs()), theta, create_graph=True), theta)
    inputs = frozen_inputs()  # at W*(φ0): what the method reads
    for _ in range(6):  # the inputs move with W*: iterate to the fixed point where they are W*'s own
        solve_lower(lambda: torch.autograd.grad(lower_loss(inputs), theta, create_graph=True), theta)
        inputs = frozen_inputs()
    solve_lower(lambda: torch.autograd.grad(lower_loss(inputs), theta, create_graph=True), theta)

    train_loss, outer, logs = scheduler_objectives(method, context(model, ds, lower, upper))
    assert logs["weight_min"] > 0
    assert float(train_loss.detach()) == pytest.approx(float(lower_loss(inputs).detach()), rel=1e-9)
    lam, _ = TrainCurvature(train_loss, theta).top_eigenvalue([torch.ones_like(p) for p in theta], 60)
    grads = neumann_hypergradient(train_loss, outer, theta, phi, 300, 0.9 / lam)

    def solve():
        solve_lower(lambda: torch.autograd.grad(lower_loss(inputs), theta, create_graph=True), theta)

    def upper_value():
        return float(ds.per_task_losses(model(upper.x), upper.y)[:, 0].mean().detach())

    check_against_finite_differences(phi, theta, solve, upper_value, grads)


@_float64
def test_maoal_upper_gradient_matches_finite_differences():
    """W*(θ) solves G(W, θ) = 0 (module-wise scaled gradients + ridge; no scalar loss has G as its gradient);
    the engine's IFT hypergradient with G handed in (``module_objectives``) against central differences."""
    data, upper = tiny_data(6), full_batch(tiny_data(5, seed=1))
    ds, method, model = build("maoal", MAOALConfig(positive="softplus"), data)
    method.double()
    model.double()
    comb: ModuleImportance = method.combiner
    with torch.no_grad():
        comb.importance.copy_(torch.tensor([[0.3, 1.5], [-0.5, 0.8]]))
    theta = list(model.parameters())
    # a small ridge: a larger one pulls the trunk to its degenerate stationary point A = B = 0, where no
    # auxiliary gradient reaches the trunk and θ has no effect
    ds.ridge, ds.mu = theta, 1.0
    lower = full_batch(data)
    ctx = context(model, ds, lower, upper)

    def direction(create_graph=True):
        losses = ds.per_task_losses(model(lower.x), lower.y)
        return comb.direction(losses, theta, model.shared_parameters(), create_graph=create_graph)

    for _ in range(200):  # W's own dynamics (W ← W − η·G) first, then Newton to the fixed point
        step = direction(False)
        with torch.no_grad():
            for p, gi in zip(theta, step):
                p -= 0.15 * gi
    solve_lower(direction, theta)
    g, outer, _ = module_objectives(method, ctx)
    assert isinstance(g, list) and len(g) == len(theta)
    # G is not a gradient field: its Jacobian is not symmetric (else a scalar loss would do)
    flat = torch.cat([x.reshape(-1) for x in g])
    jac = torch.stack([torch.cat([h.reshape(-1) for h in torch.autograd.grad(gi, theta, retain_graph=True)])
                       for gi in flat])
    assert float((jac - jac.T).abs().max()) > 1e-3
    lam, _ = TrainCurvature(g, theta).top_eigenvalue([torch.ones_like(p) for p in theta], 60)
    grads = neumann_hypergradient(g, outer, theta, comb.hyper_parameters(), 400, 0.9 / lam)

    def upper_value():
        return float(ds.per_task_losses(model(upper.x), upper.y)[:, 0].mean().detach())

    check_against_finite_differences(comb.hyper_parameters(), theta, lambda: solve_lower(direction, theta), upper_value,
                                     grads)


# ------------------------------------------------------------------ JTDS's claim: corrupted labels weigh less


def corrupted_problem(seed: int, n: int = 96, ratio: float = 0.3) -> tuple[TaskData, TaskData, np.ndarray]:
    """Main y = xᵀβ + noise; aux1 is the same function (helpful), except on a seeded ``ratio`` of the training
    samples, whose aux1 label is replaced by a large random value; aux2 is pure noise. The aux set is clean."""
    g = torch.Generator().manual_seed(seed)
    beta = torch.tensor([1.0, -1.0, 0.5])

    def sample(m):
        x = torch.randn(m, IN, generator=g)
        f = x @ beta
        return x, f, torch.stack([f + 0.1 * torch.randn(m, generator=g), f, torch.randn(m, generator=g)], 1)

    x, f, y = sample(n)
    corrupted = (torch.rand(n, generator=g) < ratio).numpy()
    y[torch.as_tensor(corrupted), 1] = 4.0 * torch.randn(int(corrupted.sum()), generator=g)
    xa, _, ya = sample(32)
    return TaskData(x, y, ["main", "aux1", "aux2"]), TaskData(xa, ya, ["main", "aux1", "aux2"]), corrupted


@pytest.mark.parametrize("seed", [0, 1])
def test_jtds_gives_corrupted_auxiliary_labels_a_lower_weight(seed):
    train, aux, corrupted = corrupted_problem(seed)
    bilevel = BilevelConfig(lr=0.05, hyper_every=5)
    ds, method, model = build("jtds", JTDSConfig(), train, seed=seed, bilevel=bilevel, shared_head=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(seed)

    def batch_of(data, size):
        rows = torch.randperm(len(data), generator=g)[:size]
        return Batch(data.inputs[rows], data.targets[rows], rows, torch.ones(size, dtype=torch.bool))

    for step in range(1, 201):
        batch = batch_of(train, 32)
        z = model.encode(batch.x)
        losses = ds.per_task_losses(model.decode(z), batch.y)
        opt.zero_grad(set_to_none=True)
        method.backward(losses, SharedTrunk(model.shared_parameters(), [], z))
        opt.step()
        ctx = context(model, ds, batch_of(train, 32), full_batch(aux), step)
        method.after_step(ctx)
    with torch.no_grad():
        everything = full_batch(train)
        z = model.encode(everything.x)
        w = method.combiner.weights(ds.per_task_losses(model.decode(z), everything.y), sample_features(z))
    bad, good = float(w[corrupted, 1].mean()), float(w[~corrupted, 1].mean())
    assert bad < 0.8 * good, (bad, good)


def test_cub_aux_label_noise_flips_training_attributes_only_at_the_ratio():
    rng = np.random.default_rng(0)
    attributes = rng.integers(0, 2, (400, 30)).astype(np.uint8)
    is_train = np.arange(400) % 2 == 0
    noisy = corrupt_attributes(attributes, is_train.astype(np.uint8), 0.2, seed=3)
    assert noisy.dtype == attributes.dtype and set(np.unique(noisy)) <= {0, 1}
    assert np.array_equal(noisy[~is_train], attributes[~is_train])  # validation/test images untouched
    flipped = (noisy[is_train] != attributes[is_train]).mean()
    assert 0.18 < flipped < 0.22
    assert np.array_equal(noisy, corrupt_attributes(attributes, is_train, 0.2, seed=3))  # seeded
    assert not np.array_equal(noisy, corrupt_attributes(attributes, is_train, 0.2, seed=4))
    assert np.array_equal(corrupt_attributes(attributes, is_train, 0.0, seed=3), attributes)


def test_cub_prepare_corrupts_the_training_images_attributes_only(tmp_path):
    from pipeline.config.params import parse_params
    from pipeline.core.registry import DATASETS

    def prepared(folder, **prepare):
        settings = {"image_size": 16, "standin_num_classes": 4, "standin_images_per_class": 8, **prepare}
        params = parse_params({"dataset": "cub", "datasets": {"cub": {"prepare": settings}}})
        ds = DATASETS.get("cub")()
        (tmp_path / folder).mkdir()
        ds.prepare(params.dataset_config, tmp_path / folder)
        return ds.load(tmp_path / folder)

    clean, noisy = prepared("clean"), prepared("noisy", aux_label_noise=0.5, aux_label_noise_seed=1)
    train = torch.as_tensor(clean.meta["is_train"])
    assert torch.equal(noisy.inputs, clean.inputs) and torch.equal(noisy.targets[:, 0], clean.targets[:, 0])
    assert torch.equal(noisy.targets[~train], clean.targets[~train])  # official test: validation and test
    flipped = (noisy.targets[train, 1:] != clean.targets[train, 1:]).float().mean()
    assert 0.35 < float(flipped) < 0.65
    with pytest.raises(Exception, match="aux_label_noise"):
        parse_params({"dataset": "cub", "datasets": {"cub": {"prepare": {"aux_label_noise": 1.5}}}})
