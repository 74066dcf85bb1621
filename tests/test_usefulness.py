"""AuxiLearn Prop. 1 usefulness scores: closed forms, retraining, the synthetic problems and the stage."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from pipeline.config.params import parse_params
from stages.usefulness.analysis import (UsefulnessConfig, analyse, auc, conjugate_gradient, gauss_newton_operator, hvp_operator,
                                 main_parameters, role_separation, score_batch, spearman, summarise)
from tests.conftest import _prepared

EXACT = UsefulnessConfig(damping=0.0, cg_iters=200, cg_tol=1e-13, batches=1, batch_size=0)


# -- a linear-regression problem where (∇²L_T)⁻¹ is exact ----------------------------------------------------

def _regression(seed: int = 0, n: int = 80, d: int = 5):
    """Main task y0 = xᵀw + noise; auxiliaries: a less noisy copy (helpful), another weight vector (harmful),
    pure noise, and a biased copy. Float64 throughout."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5
    xa = torch.randn(40, d, generator=g, dtype=torch.float64) + 0.5
    noise = lambda m, s: s * torch.randn(m, generator=g, dtype=torch.float64)  # noqa: E731
    y = torch.stack([x @ w + noise(n, 2.0), x @ w + noise(n, 0.3), x @ (w + 2 * torch.randn(d, generator=g, dtype=torch.float64)) + noise(n, 0.3),
                     noise(n, 1.0), x @ w + 1.0 + noise(n, 0.3)], 1)
    ya = xa @ w + noise(40, 2.0)
    return x, y, xa, ya


def _weighted_fit(x, y, j, phi):
    """argmin_w mean (xw − y0)² + φ mean (xw − y_j)², in closed form."""
    a = x.T @ x
    return torch.linalg.solve((1 + phi) * a, x.T @ (y[:, 0] + phi * y[:, j]))


def _aux_loss(w, xa, ya):
    return float(((xa @ w - ya) ** 2).mean())


def _scores(x, y, xa, ya, cfg=EXACT):
    w = nn.Parameter(_weighted_fit(x, y, 1, 0.0))
    pred = x @ w
    losses = (pred[:, None] - y).pow(2).mean(0)
    aux = ((xa @ w - ya) ** 2).mean()
    main_of_outputs = lambda leaves: (leaves[0] - y[:, 0]).pow(2).mean()  # noqa: E731
    return w.detach(), score_batch(losses, aux, [w], [w], cfg, ([pred], main_of_outputs))


def test_score_equals_closed_form_and_predicts_retraining():
    x, y, xa, ya = _regression()
    w, out = _scores(x, y, xa, ya)
    n = len(x)
    hessian = 2 * x.T @ x / n
    grad_aux_set = 2 * xa.T @ (xa @ w - ya) / len(xa)
    for j in range(1, y.shape[1]):
        grad_j = 2 * x.T @ (x @ w - y[:, j]) / n
        closed = float(torch.linalg.solve(hessian, grad_aux_set) @ grad_j)  # −dL_A/dφ_j
        assert out.usefulness[j - 1] == pytest.approx(closed, rel=1e-6, abs=1e-9)
        # retrain with a small weight on auxiliary j: L_A falls iff the score is positive, by ε·score
        eps = 1e-6
        change = _aux_loss(_weighted_fit(x, y, j, eps), xa, ya) - _aux_loss(_weighted_fit(x, y, j, 0.0), xa, ya)
        assert np.sign(change) == -np.sign(out.usefulness[j - 1])
        assert -change / eps == pytest.approx(out.usefulness[j - 1], rel=1e-3)
    assert out.info.relative_residual < 1e-10 and not out.info.negative_curvature
    assert out.usefulness[0] > 0 > out.usefulness[1]  # on this draw: helpful copy positive, other weights negative


def test_neumann_and_damping():
    x, y, xa, ya = _regression(seed=1)
    _, cg = _scores(x, y, xa, ya)
    lam_max = float(torch.linalg.eigvalsh(2 * x.T @ x / len(x)).max())
    _, neumann = _scores(x, y, xa, ya, EXACT.model_copy(update={"solver": "neumann", "neumann_lr": 1 / lam_max,
                                                                  "neumann_steps": 3000}))
    np.testing.assert_allclose(neumann.usefulness, cg.usefulness, rtol=1e-6)
    _, gauss_newton = _scores(x, y, xa, ya, EXACT.model_copy(update={"curvature": "gauss_newton"}))
    np.testing.assert_allclose(gauss_newton.usefulness, cg.usefulness, rtol=1e-6)  # squared error, linear: GN = H
    _, damped = _scores(x, y, xa, ya, EXACT.model_copy(update={"damping": 1e3}))
    # huge damping: (H + λI)⁻¹ ≈ I/λ, the score becomes ⟨∇L_A, ∇ℓ_j⟩ / λ
    w = _weighted_fit(x, y, 1, 0.0)
    grad_aux_set = 2 * xa.T @ (xa @ w - ya) / len(xa)
    plain = np.array([float(grad_aux_set @ (2 * x.T @ (x @ w - y[:, j]) / len(x))) / 1e3 for j in range(1, 5)])
    np.testing.assert_allclose(damped.usefulness, plain, rtol=0.05)


def test_hvp_and_cg_on_a_small_network_match_the_explicit_hessian():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 3, generator=g, dtype=torch.float64), torch.randn(30, 2, generator=g, dtype=torch.float64)
    theta = nn.Parameter(0.5 * torch.randn(3 * 4 + 4 * 2, generator=g, dtype=torch.float64))

    def loss(t):
        hidden = torch.tanh(x @ t[:12].view(3, 4))
        return ((hidden @ t[12:].view(4, 2) - y) ** 2).mean()

    hessian = torch.autograd.functional.hessian(loss, theta.detach())
    matvec, grad = hvp_operator(loss(theta), [theta], damping=0.5)
    v = torch.randn(20, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(matvec(v).numpy(), ((hessian + 0.5 * torch.eye(20)) @ v).numpy(), rtol=1e-10)
    b = torch.randn(20, generator=g, dtype=torch.float64)
    solution, info = conjugate_gradient(matvec, b, iters=200, tol=1e-12)
    expected = torch.linalg.solve(hessian + 0.5 * torch.eye(20), b)
    if not info.negative_curvature:
        np.testing.assert_allclose(solution.numpy(), expected.numpy(), rtol=1e-6, atol=1e-9)
    assert torch.allclose(grad, torch.autograd.functional.jacobian(loss, theta.detach()))


def test_gauss_newton_product_matches_explicit_jacobians():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.randint(0, 4, (20,), generator=g)
    theta = nn.Parameter(torch.randn(3 * 5 + 5 * 4, generator=g, dtype=torch.float64))
    net = lambda t: torch.tanh(x @ t[:15].view(3, 5)) @ t[15:].view(5, 4)  # noqa: E731
    ce = lambda logits: nn.functional.cross_entropy(logits.view(20, 4), y)  # noqa: E731
    matvec = gauss_newton_operator([net(theta)], lambda leaves: ce(leaves[0]), [theta], damping=0.1)
    jac = torch.autograd.functional.jacobian(net, theta.detach()).reshape(80, 35)
    out_hessian = torch.autograd.functional.hessian(ce, net(theta.detach()).reshape(-1))
    v = torch.randn(35, generator=g, dtype=torch.float64)
    expected = jac.T @ out_hessian @ jac @ v + 0.1 * v
    np.testing.assert_allclose(matvec(v).numpy(), expected.numpy(), rtol=1e-9, atol=1e-12)


def test_negative_curvature_stops_cg():
    a = torch.diag(torch.tensor([1.0, -2.0], dtype=torch.float64))
    x, info = conjugate_gradient(lambda v: a @ v, torch.tensor([0.0, 1.0], dtype=torch.float64), 10, 1e-12)
    assert info.negative_curvature and torch.allclose(x, torch.tensor([0.0, 0.5], dtype=torch.float64))


def test_auxiliary_heads_are_outside_w():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.main, self.aux = nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(4, 1)

    net = TwoHeads()
    z = net.trunk(torch.randn(5, 3))
    losses = torch.cat([net.main(z), net.aux(z)], 1).pow(2).mean(0)  # as datasets concatenate per-task losses
    inside, heads = main_parameters(net, losses[0])  # the aux head gets a zero gradient, not none
    assert {id(p) for p in inside} == {id(p) for p in [*net.trunk.parameters(), *net.main.parameters()]}
    assert {id(p) for p in heads} == {id(p) for p in net.aux.parameters()}


def test_role_separation_metrics():
    assert auc(np.array([3.0, 2.0]), np.array([1.0, 2.0])) == pytest.approx(0.875)
    sep = role_separation(np.array([2.0, 0.1, -1.0, -3.0]), ["a", "b", "c", "d"],
                          {"a": "helpful", "b": "irrelevant", "c": "harmful", "d": "harmful"})
    assert sep["auc_helpful_vs_harmful"] == 1.0 and sep["spearman_with_role"] > 0.9
    assert sep["by_role"]["harmful"] == {"mean": -2.0, "count": 2}
    assert np.isnan(spearman(np.ones(3), np.arange(3.0)))


# -- the synthetic problems, through the whole analysis (STL training included) ---------------------------------

def _retrained_usefulness(data, splits, j, eps=1e-4):
    """−ΔL_A/ε from retraining the shared linear model in closed form with weight ε on auxiliary j."""
    x = data.inputs[torch.as_tensor(splits["train"])].double()
    y = data.targets[torch.as_tensor(splits["train"])].double()
    xa = data.inputs[torch.as_tensor(splits["aux"])].double()
    ya = data.targets[torch.as_tensor(splits["aux"]), 0].double()
    base = _aux_loss(_weighted_fit(x, y, j, 0.0), xa, ya)
    return -(_aux_loss(_weighted_fit(x, y, j, eps), xa, ya) - base) / eps


def _analyse(name, seeds, **cfg):
    params = parse_params({"dataset": name})
    dataset, data, splits = _prepared(name)
    return data, splits, analyse(dataset, data, splits, params.train, params.profile.model,
                                 UsefulnessConfig(**cfg), seeds)


def test_toy2d_helpful_positive_harmful_negative_over_three_seeds():
    """The default toy2d draw (what `dvc repro usefulness` scores), seeds 0, 1, 2, default batches (8 × 64 of the
    100 training samples). The sign of an auxiliary's *first-order* effect depends on the data draw (the harmful
    one lowers L_A at a small weight on some draws; see the report of issue 18): this pins the default draw, and
    the next test checks the score against retraining."""
    data, splits, result = _analyse("toy2d", [0, 1, 2], stl_steps=1000)
    per_seed = result.usefulness.reshape(3, -1, 2).mean(1)
    helpful, harmful = data.task_names.index("helpful") - 1, data.task_names.index("harmful") - 1
    assert (per_seed[:, helpful] > 0).all() and (per_seed[:, harmful] < 0).all()
    summary = summarise(result, data.meta.get("aux_roles"), ordered=False)
    if data.meta.get("aux_roles"):
        assert summary["prop1"]["auc_helpful_vs_harmful"] == 1.0


def test_toy2d_whole_batch_score_is_the_retrained_effect():
    for curvature in ("hessian", "gauss_newton"):
        data, splits, result = _analyse("toy2d", [0], batches=1, batch_size=0, stl_steps=1000, curvature=curvature)
        for j in (1, 2):
            assert result.usefulness[0, j - 1] == pytest.approx(_retrained_usefulness(data, splits, j), rel=0.02)
        assert result.whole_training_set


def test_noisy_aux_scores_match_retraining():
    """Every auxiliary's score agrees with retraining; the index correlation is therefore what retraining says
    (on the default draw it is positive: STL under-predicts on the aux set and the noisy, upward-biased
    auxiliaries push predictions up; see the report of issue 18)."""
    data, splits, result = _analyse("noisy_aux", [0], batches=1, batch_size=0, stl_steps=4000)
    scores = result.usefulness.mean(0)
    retrained = np.array([_retrained_usefulness(data, splits, j) for j in range(1, data.num_tasks)])
    assert spearman(scores, retrained) > 0.99
    np.testing.assert_allclose(scores, retrained, rtol=0.05, atol=0.01 * np.abs(retrained).max())
    index = np.arange(1, len(scores) + 1)
    assert spearman(index, scores) == pytest.approx(spearman(index, retrained), abs=0.02)
    summary = summarise(result, None, ordered=True)
    assert summary["prop1"]["spearman_with_index"] == pytest.approx(spearman(index, scores))


# -- another base point: the derivative at φ = φ0·1 (usefulness.base_weight) ------------------------------------

def _multi_fit(x, y, phis):
    """argmin_w mean (xw − y0)² + Σ_j φ_j mean (xw − y_j)², in closed form (φ: one weight per auxiliary)."""
    phis = torch.as_tensor(phis, dtype=x.dtype)
    return torch.linalg.solve((1 + phis.sum()) * x.T @ x, x.T @ (y[:, 0] + y[:, 1:] @ phis))


def test_base_weight_zero_is_the_default_and_reproduces_prop1():
    """base_weight 0 (the default) runs exactly the φ → 0 analysis: scores of the default toy2d draw measured
    before the option existed (seed 0, 300 STL steps, 2 batches of 64), and a tiny φ0 (the other code path:
    joint training, Hessian of L_T) is continuous with it."""
    assert UsefulnessConfig().base_weight == 0.0
    assert parse_params({"dataset": "toy2d"}).usefulness.base_weight == 0.0
    with pytest.raises(ValueError):
        UsefulnessConfig(base_weight=-0.1)
    _, _, zero = _analyse("toy2d", [0], stl_steps=300, batches=2, base_weight=0.0)
    np.testing.assert_allclose(zero.usefulness.ravel(), [0.3037883937, -1.6161878109, 0.0356573723, -1.689011097],
                               rtol=1e-5)
    _, _, tiny = _analyse("toy2d", [0], stl_steps=300, batches=2, base_weight=1e-9)
    np.testing.assert_allclose(tiny.usefulness, zero.usefulness, rtol=1e-4)


@pytest.mark.parametrize("phi0", [0.3, 1.0])
def test_base_weight_score_equals_weighted_least_squares_closed_form(phi0):
    """At φ = φ0·1 the score is −dL_A/dφ_j of the weighted least squares (differentiating its normal equations,
    not the IFT formula), to 1e-6 in float64, with either curvature; its sign says whether raising φ_j a little
    above φ0 lowers L_A (retraining)."""
    x, y, xa, ya = _regression()
    k, n = y.shape[1] - 1, len(x)
    w = nn.Parameter(_multi_fit(x, y, [phi0] * k))
    pred = x @ w
    losses = (pred[:, None] - y).pow(2).mean(0)
    aux = ((xa @ w - ya) ** 2).mean()
    objective = lambda leaves: (leaves[0][:, None] - y).pow(2).mean(0) @ torch.tensor([1.0] + [phi0] * k, dtype=y.dtype)  # noqa: E731
    out = score_batch(losses, aux, [w], [w], EXACT, ([pred], objective), aux_weight=phi0)
    gauss_newton = score_batch((x @ w)[:, None].sub(y).pow(2).mean(0), ((xa @ w - ya) ** 2).mean(), [w], [w],
                               EXACT.model_copy(update={"curvature": "gauss_newton"}), ([x @ w], objective),
                               aux_weight=phi0)
    w = w.detach()
    m = (1 + k * phi0) * x.T @ x / n
    grad_aux_set = 2 * xa.T @ (xa @ w - ya) / len(xa)
    base = _aux_loss(w, xa, ya)
    for j in range(1, k + 1):
        dw = torch.linalg.solve(m, x.T @ y[:, j] / n - x.T @ x @ w / n)  # d/dφ_j of (1 + Σφ) A w = xᵀ(y0 + Σ φ y)/n
        closed = -float(grad_aux_set @ dw)
        assert out.usefulness[j - 1] == pytest.approx(closed, rel=1e-6, abs=1e-9)
        assert gauss_newton.usefulness[j - 1] == pytest.approx(closed, rel=1e-6, abs=1e-9)
        eps = 1e-6
        phis = [phi0] * k
        phis[j - 1] += eps
        change = _aux_loss(_multi_fit(x, y, phis), xa, ya) - base
        assert np.sign(change) == -np.sign(out.usefulness[j - 1])
        assert -change / eps == pytest.approx(out.usefulness[j - 1], rel=1e-3)
    assert out.info.relative_residual < 1e-10 and not out.info.negative_curvature
    # the base point matters: the φ → 0 scores are different numbers
    _, at_zero = _scores(x, y, xa, ya)
    assert not np.allclose(at_zero.usefulness, out.usefulness, rtol=1e-2)


class _HeadsDataset:
    """A stand-in dataset whose network has a trunk, a main head and a separate head for two auxiliaries."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.main, self.aux = nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(4, 2)

        def encode(self, x):
            return torch.tanh(self.trunk(x))

        def decode(self, z):
            return torch.cat([self.main(z), self.aux(z)], 1)

        def forward(self, x):
            return self.decode(self.encode(x))

        def shared_parameters(self):
            return list(self.trunk.parameters())

    def build_model(self, data, cfg=None):
        return self.Net().double()

    def batch_transform(self, x, y, train, generator=None):
        return x, y

    def per_task_losses(self, outputs, targets):
        return (outputs - targets) ** 2


def test_base_weight_trains_and_scores_the_auxiliary_heads_too():
    """At φ0 > 0, W is everything L_T trains (the auxiliary head included, trained jointly, no frozen-trunk fit),
    and the score is ⟨(H_T + λI)⁻¹ ∇_W L_A, ∇_W ℓ_j⟩ with H_T the explicit Hessian of L_T over all of W."""
    from types import SimpleNamespace

    from pipeline.config.params import TrainConfig
    from pipeline.datasets.shared.base import TaskData
    from stages.usefulness.analysis import train_main_task

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = torch.stack([x.sum(1), x[:, 0], x[:, 1] - x[:, 2]], 1) + 0.3 * torch.randn(60, 3, generator=g, dtype=torch.float64)
    data = TaskData(x, y, ["main", "a", "b"])
    splits = {"train": np.arange(40), "aux": np.arange(40, 60)}
    ds, train_cfg = _HeadsDataset(), TrainConfig(steps=300, lr=0.05, optimizer="adam")
    _, _, heads_at_zero = train_main_task(ds, data, splits, train_cfg, None, 0, 10, torch.device("cpu"))
    assert len(heads_at_zero) == 2  # at φ → 0 the aux head is outside W
    model, params, heads = train_main_task(ds, data, splits, train_cfg, None, 0, 300, torch.device("cpu"), 0.5)
    assert heads == [] and len(params) == 6
    torch.manual_seed(0)  # the initialisation train_main_task starts from (seed 0)
    init = _HeadsDataset.Net().double()
    assert not torch.equal(init.aux.weight, model.aux.weight)  # trained jointly on L_T

    # the analysis retrains the same model (seed 0, 300 steps: deterministic) and scores it
    cfg = UsefulnessConfig(damping=1.0, cg_iters=500, cg_tol=1e-13, batches=1, batch_size=0, base_weight=0.5)
    result = analyse(ds, data, splits, train_cfg, None, cfg, [0])
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def losses_at(t, xs, ys):
        chunks = dict(zip(names, (c.view(s) for c, s in zip(t.split([int(np.prod(s)) for s in shapes]), shapes))))
        out = torch.func.functional_call(model, chunks, (xs,))
        return ((out - ys) ** 2).mean(0)

    xt, yt, xa, ya = x[:40], y[:40], x[40:], y[40:]
    objective = lambda t: losses_at(t, xt, yt) @ torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64)  # noqa: E731
    hessian = torch.autograd.functional.hessian(objective, theta)
    grad_aux_set = torch.autograd.functional.jacobian(lambda t: losses_at(t, xa, ya)[0], theta)
    v = torch.linalg.solve(hessian + torch.eye(len(theta), dtype=torch.float64), grad_aux_set)
    for j in (1, 2):
        grad_j = torch.autograd.functional.jacobian(lambda t: losses_at(t, xt, yt)[j], theta)
        assert result.usefulness[0, j - 1] == pytest.approx(float(v @ grad_j), rel=1e-6, abs=1e-10)
    assert not any(s.negative_curvature for s in result.solves)


def _retrained_at(data, splits, j, phi0, eps=1e-5):
    """−dL_A/dφ_j at φ = φ0·1 from retraining the shared linear model in closed form (central difference)."""
    x = data.inputs[torch.as_tensor(splits["train"])].double()
    y = data.targets[torch.as_tensor(splits["train"])].double()
    xa = data.inputs[torch.as_tensor(splits["aux"])].double()
    ya = data.targets[torch.as_tensor(splits["aux"]), 0].double()
    up, down = [phi0] * (y.shape[1] - 1), [phi0] * (y.shape[1] - 1)
    up[j - 1] += eps
    down[j - 1] -= eps
    return -(_aux_loss(_multi_fit(x, y, up), xa, ya) - _aux_loss(_multi_fit(x, y, down), xa, ya)) / (2 * eps)


def test_toy2d_base_weight_one_matches_retraining_and_separates_roles():
    """At Equal's point (φ0 = 1; toy2d's τ = 1): the whole-batch score is the retrained derivative, and over
    seeds 0, 1, 2 at the default batches the helpful auxiliary is to be turned up, the harmful one down."""
    data, splits, result = _analyse("toy2d", [0], batches=1, batch_size=0, stl_steps=1000, base_weight=1.0)
    for j in (1, 2):
        assert result.usefulness[0, j - 1] == pytest.approx(_retrained_at(data, splits, j, 1.0), rel=0.02)
    data, splits, result = _analyse("toy2d", [0, 1, 2], stl_steps=1000, base_weight=1.0)
    per_seed = result.usefulness.reshape(3, -1, 2).mean(1)
    helpful, harmful = data.task_names.index("helpful") - 1, data.task_names.index("harmful") - 1
    assert (per_seed[:, helpful] > 0).all() and (per_seed[:, harmful] < 0).all()


def test_noisy_aux_base_weight_one_reverses_the_ranking():
    """φ → 0 ranks the noisy auxiliaries as helpful (Spearman(index, score) ≈ +0.79 on the default draw, see
    test_noisy_aux_scores_match_retraining); at Equal's point (φ0 = 1, i.e. φ0·τ = 0.01 on the raw losses) the
    score is the retrained derivative there and the ranking reverses (measured −0.957), as App. C.3's learned
    weights do."""
    data, splits, result = _analyse("noisy_aux", [0], batches=1, batch_size=0, stl_steps=4000, base_weight=1.0)
    scores = result.usefulness.mean(0)
    tau = parse_params({"dataset": "noisy_aux"}).train.aux_loss_scale
    retrained = np.array([_retrained_at(data, splits, j, tau) for j in range(1, data.num_tasks)])
    np.testing.assert_allclose(scores, retrained, rtol=0.05, atol=0.01 * np.abs(retrained).max())
    index = np.arange(1, len(scores) + 1)
    assert spearman(index, scores) < -0.9
    assert summarise(result, None, ordered=True)["prop1"]["spearman_with_index"] < -0.9


def test_report_states_the_base_point():
    from stages.usefulness.analysis import markdown_report

    data, _, result = _analyse("toy2d", [0], stl_steps=100, batches=1, base_weight=0.5)
    cfg = UsefulnessConfig(stl_steps=100, batches=1, base_weight=0.5)
    text = markdown_report(result, summarise(result, data.meta.get("aux_roles"), ordered=False),
                           data.meta.get("aux_roles"), cfg, "toy2d")
    assert "at φ = 0.5·1" in text and "ℓ_main + 0.5·τ·Σ_j ℓ_j" in text and "STL main loss" not in text
    text = markdown_report(result, summarise(result, None, ordered=False), None, cfg.model_copy(update={"base_weight": 0.0}),
                           "toy2d")
    assert "at φ = 0, the main task trained alone" in text


def test_stage_writes_table_plot_and_metrics(tmp_path, monkeypatch):
    from stages import prepare, split, usefulness

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dataset": "toy2d", "seeds": [0, 1],
                                                          "datasets": {"toy2d": {"train": {"steps": 300}}}}))
    runner = CliRunner()
    for cmd, args in ((prepare.main, ["--dataset", "toy2d"]), (split.main, []), (usefulness.main, [])):
        result = runner.invoke(cmd, args)
        assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "reports/usefulness.json").read_text())
    assert metrics["dataset"] == "toy2d" and metrics["num_aux"] == 2 and metrics["draws"] == 2 * UsefulnessConfig().batches
    assert metrics["prop1"]["top"] == "helpful"
    table = (tmp_path / "reports/usefulness.md").read_text()
    assert "| 1 | helpful |" in table and "| 2 | harmful |" in table
    assert (tmp_path / "reports/usefulness.png").stat().st_size > 1000
    assert (tmp_path / "reports/usefulness.csv").read_text().startswith("auxiliary,role,prop1_mean,prop1_sem,cosine_mean")


def test_stage_says_not_applicable_for_a_dataset_without_given_auxiliaries(tmp_path, monkeypatch):
    """cifar10 and the other label-learning datasets have no given auxiliaries: the stage completes (so `dvc exp
    run -S dataset=cifar10 -S method=maxl` does) and every output says why there is nothing to rank."""
    from stages import prepare, split, usefulness

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dataset": "cifar10", "method": "maxl", "seeds": [0], "datasets": {
        "cifar10": {"prepare": {"standin_train_per_class": 80, "standin_test_per_class": 10}}}}))
    runner = CliRunner()
    for cmd, args in ((prepare.main, ["--dataset", "cifar10"]), (split.main, []), (usefulness.main, [])):
        result = runner.invoke(cmd, args)
        assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "reports/usefulness.json").read_text()) == {
        "dataset": "cifar10", "num_aux": 0, "applicable": False}
    assert "no given auxiliary tasks" in (tmp_path / "reports/usefulness.md").read_text()
    assert (tmp_path / "reports/usefulness.png").stat().st_size > 1000
    assert (tmp_path / "reports/usefulness.csv").read_text().count("\n") == 1
