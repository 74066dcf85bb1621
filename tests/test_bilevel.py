"""The IFT hypergradient against closed forms on ridge regression with learned per-task weights."""
from __future__ import annotations

import pytest
import torch

from pipeline.auxnets import AUXNETS
from pipeline.bilevel import HyperOptimizer, neumann_hypergradient



@pytest.fixture(autouse=True)
def float64():
    """Closed forms are compared to 1e-4: use double precision here only."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)

N, D, K, LAM = 60, 4, 3, 0.1


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    w_true = torch.randn(D, generator=g)
    y = x @ w_true + torch.randn(N, K + 1, generator=g).T * torch.tensor([1.0, 0.3, 0.8, 2.0])[:, None]
    xa = torch.randn(20, D, generator=g)
    ya = xa @ w_true + 0.5 * torch.randn(20, generator=g)
    auxnet = AUXNETS.get("linear")(K + 1, hidden_units=1, hidden_layers=1, init_weight=0.7).double()
    return x, y.T, xa, ya, auxnet


def _losses(w, x, y):
    return (x @ w)[:, None].sub(y) ** 2  # [N, K+1]


def _train_loss(w, x, y, auxnet):
    losses = _losses(w, x, y)
    return (losses[:, 0] + auxnet(losses)).mean() + LAM * (w**2).sum()


def _aux_loss(w, xa, ya):
    return ((xa @ w - ya) ** 2).mean()


def _inner_optimum(x, y, task_weights):
    """argmin_w Σ_t c_t mean_i (x_i·w − y_it)² + λ|w|², in closed form."""
    a = x.T @ x / N
    lhs = task_weights.sum() * a + LAM * torch.eye(D)
    rhs = x.T @ (y * task_weights).sum(1) / N
    return torch.linalg.solve(lhs, rhs)


def _weights(auxnet):
    w = auxnet.net[0].weight.detach()[0] * auxnet.input_mask
    return torch.cat([torch.ones(1), torch.zeros(K)]) + w


def _engine_hypergrad(neumann_steps, neumann_lr, seed=0):
    x, y, xa, ya, auxnet = _problem(seed)
    w_star = _inner_optimum(x, y, _weights(auxnet)).requires_grad_(True)
    (phi,) = auxnet.parameters()
    (hg,) = neumann_hypergradient(_train_loss(w_star, x, y, auxnet), _aux_loss(w_star, xa, ya), [w_star], [phi],
                                  neumann_steps, neumann_lr)
    return hg[0, 1:], (x, y, xa, ya, auxnet)


def _finite_difference(problem, eps=1e-6):
    x, y, xa, ya, auxnet = problem
    base = _weights(auxnet)
    grads = []
    for j in range(1, K + 1):
        up, down = base.clone(), base.clone()
        up[j] += eps
        down[j] -= eps
        grads.append((_aux_loss(_inner_optimum(x, y, up), xa, ya) - _aux_loss(_inner_optimum(x, y, down), xa, ya))
                     / (2 * eps))
    return torch.stack(grads)


def _exact_ift(problem):
    """−∇_w L_A · H⁻¹ · ∂_φ ∇_w L_T with the Hessian formed explicitly (only this test forms it)."""
    x, y, xa, ya, auxnet = problem
    w = _inner_optimum(x, y, _weights(auxnet))
    hess = torch.autograd.functional.hessian(lambda v: _train_loss(v, x, y, auxnet), w)
    grad_a = torch.autograd.functional.jacobian(lambda v: _aux_loss(v, xa, ya), w)
    mixed = torch.stack([2 * x.T @ (x @ w - y[:, j]) / N for j in range(1, K + 1)], dim=1)  # [D, K]
    return -grad_a @ torch.linalg.solve(hess, mixed)


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _safe_lr(problem):
    x, y, _, _, auxnet = problem
    a = x.T @ x / N
    lam_max = float(torch.linalg.eigvalsh(2 * (_weights(auxnet).sum() * a + LAM * torch.eye(D)))[-1])
    return 1.0 / lam_max


def test_closed_forms_agree():
    _, problem = _engine_hypergrad(1, 0.01)
    fd, exact = _finite_difference(problem), _exact_ift(problem)
    assert torch.allclose(fd, exact, rtol=1e-5, atol=1e-8)


def test_neumann_converges_to_exact_as_j_grows():
    _, problem = _engine_hypergrad(1, 0.01)
    exact, lr = _exact_ift(problem), _safe_lr(problem)
    errors, cosines = [], []
    for j in (0, 2, 8, 32, 128, 512):
        hg, _ = _engine_hypergrad(j, lr)
        errors.append(float(torch.linalg.vector_norm(hg - exact) / torch.linalg.vector_norm(exact)))
        cosines.append(_cos(hg, exact))
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])), errors
    assert cosines[4] > 0.99, cosines  # J = 128
    assert errors[-1] < 1e-3, errors


def test_engine_matches_finite_difference_at_inner_optimum():
    _, problem = _engine_hypergrad(1, 0.01)
    hg, _ = _engine_hypergrad(2000, _safe_lr(problem))
    fd = _finite_difference(problem)
    assert torch.allclose(hg, fd, rtol=1e-4, atol=1e-8), (hg, fd)


def test_hyper_optimizer_descends_aux_loss_and_projects():
    """One φ step along the hypergradient lowers L_A(W*(φ)) and keeps the weights non-negative."""
    x, y, xa, ya, auxnet = _problem(1)
    before = _aux_loss(_inner_optimum(x, y, _weights(auxnet)), xa, ya)
    w_star = _inner_optimum(x, y, _weights(auxnet)).requires_grad_(True)
    opt = HyperOptimizer(list(auxnet.parameters()), lr=0.05, momentum=0.0, weight_decay=0.0, every=1,
                         neumann_steps=500, neumann_lr=_safe_lr((x, y, xa, ya, auxnet)), after_update=auxnet.project)
    opt.step(_train_loss(w_star, x, y, auxnet), _aux_loss(w_star, xa, ya), [w_star])
    after = _aux_loss(_inner_optimum(x, y, _weights(auxnet)), xa, ya)
    assert after < before
    assert (auxnet.net[0].weight >= 0).all()


def test_hyper_optimizer_clips_the_hypergradient_norm():
    """With ``max_norm`` the φ step is bounded whatever the hypergradient (a diverging Neumann series)."""
    x, y, xa, ya, auxnet = _problem(1)
    w_star = _inner_optimum(x, y, _weights(auxnet)).requires_grad_(True)
    start = [p.detach().clone() for p in auxnet.parameters()]
    opt = HyperOptimizer(list(auxnet.parameters()), lr=1.0, momentum=0.0, weight_decay=0.0, every=1,
                         neumann_steps=50, neumann_lr=_safe_lr((x, y, xa, ya, auxnet)), max_norm=1e-3)
    stats = opt.step(_train_loss(w_star, x, y, auxnet), _aux_loss(w_star, xa, ya), [w_star])
    moved = torch.sqrt(sum(((p.detach() - s) ** 2).sum() for p, s in zip(auxnet.parameters(), start)))
    assert stats.hypergrad_norm > 1e-3  # the logged norm is the unclipped one
    assert float(moved) == pytest.approx(1e-3, rel=1e-4)
