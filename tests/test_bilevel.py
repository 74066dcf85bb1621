"""The IFT hypergradient against closed forms on ridge regression with learned per-task weights."""
from __future__ import annotations

import pytest
import torch

from pipeline.core.registry import AUXNETS
from pipeline.methods.bilevel import BilevelConfig, HyperOptimizer, from_reference, neumann_hypergradient



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
    cfg = BilevelConfig(optimizer="sgd", lr=0.05, momentum=0.0, weight_decay=0.0, hyper_every=1,
                        neumann_steps=500, neumann_lr=_safe_lr((x, y, xa, ya, auxnet)))
    opt = HyperOptimizer(list(auxnet.parameters()), cfg, after_update=auxnet.project)
    opt.step(_train_loss(w_star, x, y, auxnet), _aux_loss(w_star, xa, ya), [w_star])
    after = _aux_loss(_inner_optimum(x, y, _weights(auxnet)), xa, ya)
    assert after < before
    assert (auxnet.net[0].weight >= 0).all()


def test_hyper_optimizer_clips_the_hypergradient_norm():
    """With ``max_hypergrad_norm`` the φ step is bounded whatever the hypergradient (a diverging Neumann
    series). The bound is in the reference's units, ‖g / α‖, so the IFT-unit step is α · max_norm · lr."""
    x, y, xa, ya, auxnet = _problem(1)
    w_star = _inner_optimum(x, y, _weights(auxnet)).requires_grad_(True)
    start = [p.detach().clone() for p in auxnet.parameters()]
    alpha = _safe_lr((x, y, xa, ya, auxnet))
    cfg = BilevelConfig(optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, hyper_every=1,
                        neumann_steps=50, neumann_lr=alpha, max_hypergrad_norm=1e-3)
    opt = HyperOptimizer(list(auxnet.parameters()), cfg)
    stats = opt.step(_train_loss(w_star, x, y, auxnet), _aux_loss(w_star, xa, ya), [w_star])
    moved = torch.sqrt(sum(((p.detach() - s) ** 2).sum() for p, s in zip(auxnet.parameters(), start)))
    assert stats.hypergrad_norm > alpha * 1e-3 and stats.clipped  # the logged norm is the unclipped one
    assert float(moved) == pytest.approx(alpha * 1e-3, rel=1e-4)


def _reference_alg2_trajectory(problem, lr, hpo_lr, clip, momentum, weight_decay, hyper_steps, inner_steps, j):
    """AuxiLearn Alg. 2 as published, written from the paper: p = v = ∇_W L_A; J times v −= α·H v, p += v;
    hypergradient −p·∇_φ∇_W L_T (the reference omits the leading α); φ by SGD-momentum with its norm clip."""
    x, y, xa, ya, auxnet = problem
    w = torch.zeros(D, requires_grad=True)
    params = list(auxnet.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    trajectory = []
    for _ in range(hyper_steps):
        for _ in range(inner_steps):  # W: plain gradient steps on L_T
            (g,) = torch.autograd.grad(_train_loss(w, x, y, auxnet), [w])
            w = (w - 0.05 * g).detach().requires_grad_(True)
        (v,) = torch.autograd.grad(_aux_loss(w, xa, ya), [w])
        (dtrain,) = torch.autograd.grad(_train_loss(w, x, y, auxnet), [w], create_graph=True)
        p = v.clone()
        for _ in range(j):
            (hv,) = torch.autograd.grad(dtrain, [w], grad_outputs=v, retain_graph=True)
            v = v - hpo_lr * hv
            p = p + v
        grads = torch.autograd.grad(dtrain, params, grad_outputs=p)
        opt.zero_grad()
        for param, g in zip(params, grads):
            param.grad = -g
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        auxnet.project()
        trajectory.append(torch.cat([q.detach().flatten() for q in params]).clone())
    return trajectory


def _engine_trajectory(problem, cfg, hyper_steps, inner_steps):
    x, y, xa, ya, auxnet = problem
    w = torch.zeros(D, requires_grad=True)
    opt = HyperOptimizer(list(auxnet.parameters()), cfg, after_update=auxnet.project)
    trajectory = []
    for _ in range(hyper_steps):
        for _ in range(inner_steps):
            (g,) = torch.autograd.grad(_train_loss(w, x, y, auxnet), [w])
            w = (w - 0.05 * g).detach().requires_grad_(True)
        opt.step(_train_loss(w, x, y, auxnet), _aux_loss(w, xa, ya), [w])
        trajectory.append(torch.cat([q.detach().flatten() for q in auxnet.parameters()]).clone())
    return trajectory


@pytest.mark.parametrize("clip", [1e9, 0.05])  # clip never binds / binds
def test_from_reference_reproduces_the_reference_phi_trajectory(clip):
    """The reference's settings mapped by ``from_reference`` give its φ trajectory step for step."""
    settings = dict(lr=0.1, hpo_lr=0.02, clip=clip, momentum=0.9, weight_decay=1e-3)
    reference = _reference_alg2_trajectory(_problem(3), **settings, hyper_steps=6, inner_steps=5, j=3)
    cfg = BilevelConfig(hyper_every=1, neumann_steps=3,
                        **from_reference(settings["lr"], settings["hpo_lr"], clip, settings["momentum"],
                                         settings["weight_decay"]))
    ours = _engine_trajectory(_problem(3), cfg, hyper_steps=6, inner_steps=5)
    assert len(ours) == 6
    moved = float(torch.linalg.vector_norm(reference[-1] - reference[0]))
    assert moved > 1e-3  # φ really moves, so the comparison means something
    for r, o in zip(reference, ours):
        assert torch.allclose(r, o, rtol=0, atol=1e-6), (r, o)


def _quadratic(eigenvalues, seed=0, phi=None):
    """L_T = ½ wᵀAw + φ·(c·w): ∇²_W L_T = A, with A's eigenvalues known (``phi``: a given φ, else a new 0)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g))
    a = q @ torch.diag(torch.tensor(eigenvalues)) @ q.T
    c = torch.randn(len(eigenvalues), generator=g)
    w = torch.randn(len(eigenvalues), generator=g, requires_grad=True)
    phi = torch.zeros(1, requires_grad=True) if phi is None else phi
    train = 0.5 * w @ a @ w + phi[0] * (c @ w)
    aux = ((w - 1) ** 2).sum()
    return train, aux, w, phi


def test_auto_neumann_lr_estimates_lambda_max_and_stays_convergent():
    eigenvalues = [40.0, 12.0, 5.0, 1.0, 0.3, 0.1]
    train, aux, w, phi = _quadratic(eigenvalues)
    cfg = BilevelConfig(optimizer="sgd", lr=1e-3, hyper_every=1, neumann_lr="auto", curvature_safety=0.5)
    opt = HyperOptimizer([phi], cfg)
    stats = opt.step(train, aux, [w])
    estimate = cfg.curvature_safety / stats.neumann_lr
    assert estimate == pytest.approx(max(eigenvalues), rel=0.1)
    assert stats.neumann_lr * max(eigenvalues) < 2
    assert stats.alpha_lambda == pytest.approx(cfg.curvature_safety, rel=1e-9)


def test_fixed_neumann_lr_beyond_curvature_warns_with_the_key():
    train, aux, w, phi = _quadratic([40.0, 1.0])
    opt = HyperOptimizer([phi], BilevelConfig(hyper_every=1, neumann_lr=0.1), key="methods.bilevel")
    with pytest.warns(UserWarning, match=r"methods\.bilevel\.neumann_lr .*α·λ̂_max = 4\.0"):
        stats = opt.step(train, aux, [w])
    assert stats.alpha_lambda == pytest.approx(4.0, rel=0.1)


def test_non_finite_hypergradient_names_the_key():
    train, aux, w, phi = _quadratic([4.0, 1.0])
    aux = aux * float("nan")
    opt = HyperOptimizer([phi], BilevelConfig(hyper_every=1, neumann_lr=0.1))
    with pytest.raises(FloatingPointError, match="methods.bilevel"):
        opt.step(train, aux, [w])


def _grown_curvature_steps(series_stop):
    """Three hyper steps of auto α: the first refreshes λ̂ (40); then ∇²_W L_T grows tenfold before the next
    scheduled refresh (every 5 hyper steps), so α = 0.5 / 40 meets a curvature of 400: α·λ = 5, where the
    series' terms grow by |1 − αλ| = 4 each. Returns each step's stats and the hypergradient a J-term series
    with α would give at step 2 for every J."""
    eigenvalues = [40.0, 38.0, 36.0, 1.0]
    cfg = BilevelConfig(optimizer="sgd", lr=1e-3, hyper_every=1, neumann_steps=3, curvature_every=5,
                        series_stop=series_stop)
    train, aux, w, phi = _quadratic(eigenvalues)
    opt = HyperOptimizer([phi], cfg)
    stats = [opt.step(train, aux, [w])]
    grown = [10 * e for e in eigenvalues]
    alpha = stats[0].neumann_lr
    by_terms = []
    for j in range(4):
        train, aux, w, _ = _quadratic(grown, phi=phi)
        by_terms.append(neumann_hypergradient(train, aux, [w], [phi], j, alpha)[0])
    for _ in range(2):
        train, aux, w, _ = _quadratic(grown, phi=phi)
        stats.append(opt.step(train, aux, [w]))
    return stats, by_terms, opt


def test_series_stop_ends_a_series_the_curvature_outgrew_and_refreshes_at_the_next_step():
    stats, by_terms, opt = _grown_curvature_steps(series_stop=1.0)
    first, grown, after = stats
    assert first.series_terms == 3 and first.alpha_lambda == pytest.approx(0.5, rel=1e-6)
    # step 2: no refresh was due; the first term's curvature already shows α·q ≥ 1, so the series is v alone:
    # exactly the J = 0 hypergradient, not the divergent 3-term one
    assert grown.alpha_lambda is None and grown.series_terms == 0
    assert grown.hypergrad_norm == pytest.approx(float(by_terms[0].norm()), rel=1e-9)
    assert float(by_terms[3].norm()) > 10 * grown.hypergrad_norm
    # step 3 refreshes out of schedule: the stale α against the new λ̂ (≈ 5), then a full series with α = 0.5 / 400
    assert after.alpha_lambda == pytest.approx(5.0, rel=0.05) and after.series_terms == 3
    assert after.neumann_lr == pytest.approx(0.5 / 400, rel=0.05)
    assert not opt.refresh_next


def test_series_stop_null_or_a_fixed_alpha_keeps_every_term():
    stats, by_terms, _ = _grown_curvature_steps(series_stop=None)
    assert [s.series_terms for s in stats] == [3, 3, 3]
    assert stats[1].hypergrad_norm == pytest.approx(float(by_terms[3].norm()), rel=1e-9)
    assert stats[2].alpha_lambda is None  # no refresh out of schedule
    train, aux, w, phi = _quadratic([40.0, 1.0])
    opt = HyperOptimizer([phi], BilevelConfig(hyper_every=1, neumann_lr=0.1, series_stop=1.0))
    with pytest.warns(UserWarning):  # α·λ̂ = 4: the reference's fixed α is the user's; its series is kept
        assert opt.step(train, aux, [w]).series_terms == 3


def test_a_pending_refresh_is_part_of_the_checkpointed_state():
    from pipeline.engine.checkpoint import load_role_state, role_state
    _, _, opt = _grown_curvature_steps(series_stop=1.0)
    opt.refresh_next = True
    state = role_state(opt)
    assert state["refresh_next"] == {"value": True}
    fresh = HyperOptimizer(opt.hparams, opt.cfg)
    load_role_state(fresh, state, torch.device("cpu"), "test")
    assert fresh.refresh_next


def test_diverging_neumann_series_names_neumann_lr_not_phi_lr():
    """A fixed α far beyond 2/λ_max: the series, not φ's rate, is named, with the bound to stay below."""
    train, aux, w, phi = _quadratic([4.0, 1.0])
    opt = HyperOptimizer([phi], BilevelConfig(hyper_every=1, neumann_lr=1e30, neumann_steps=12))  # > 1e308
    with pytest.warns(UserWarning), pytest.raises(FloatingPointError) as info:
        opt.step(train, aux, [w])
    message = str(info.value)
    assert "hyper step 1" in message and "Neumann series diverged" in message
    assert "lower methods.bilevel.neumann_lr (now 1e+30) (below 2/λ̂_max = 0.5" in message
    assert "methods.bilevel.lr " not in message and opt.hyper_steps == 0


def test_phi_rate_that_overflows_names_phi_lr():
    """float32 φ (as in training): a rate of 1e39 does not fit its type."""
    torch.set_default_dtype(torch.float32)  # the autouse fixture restores its own default afterwards
    train, aux, w, phi = _quadratic([4.0, 1.0])
    opt = HyperOptimizer([phi], BilevelConfig(hyper_every=1, neumann_lr=0.1, lr=1e39))
    with pytest.raises(FloatingPointError, match=r"lower methods\.bilevel\.lr \(now 1e\+39\)"):
        opt.step(train, aux, [w])


def test_non_finite_outer_loss_is_not_blamed_on_phi_settings():
    """L_A non-finite (the test above): the message says W or the data, not φ's rate or α."""
    train, aux, w, phi = _quadratic([4.0, 1.0])
    opt = HyperOptimizer([phi], BilevelConfig(hyper_every=1, neumann_lr=0.1))
    with pytest.raises(FloatingPointError) as info:
        opt.step(train, aux * float("nan"), [w])
    assert "outer loss L_A" in str(info.value) and ".neumann_lr" not in str(info.value)


# ---------------------------------------------------------------------------------------------- curvature batch


class _Trunked(torch.nn.Sequential):
    """Linear-tanh-linear-tanh trunk, then the task heads (one linear layer): the model interface's parameter roles."""

    def shared_parameters(self):
        return list(self[:4].parameters())

    def last_shared_parameters(self):
        return list(self[2].parameters())


def _net_problem(seed: int = 0, rows: int = 12, trunked: bool = False):
    """A tanh network with a main and K auxiliary outputs, per-sample per-task squared errors, a linear g(ℓ; φ).
    ``trunked``: one more hidden layer, with the model interface's trunk (``_Trunked``)."""
    torch.manual_seed(seed)
    net = (_Trunked(torch.nn.Linear(D, 6), torch.nn.Tanh(), torch.nn.Linear(6, 6), torch.nn.Tanh(),
                    torch.nn.Linear(6, K + 1)) if trunked
           else torch.nn.Sequential(torch.nn.Linear(D, 6), torch.nn.Tanh(), torch.nn.Linear(6, K + 1)))
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(rows, D, generator=g), torch.randn(rows, K + 1, generator=g)
    xa, ya = torch.randn(7, D, generator=g), torch.randn(7, generator=g)
    auxnet = AUXNETS.get("linear")(K + 1, hidden_units=1, hidden_layers=1, init_weight=0.7).double()
    return net, auxnet, (x, y), (xa, ya)


def _context(net, x, y, xa, ya):
    from pipeline.methods.base import Batch, StepContext
    from pipeline.methods.bilevel import directional_derivative

    params = list(net.parameters())
    batch = Batch(x, torch.arange(len(x)), torch.arange(len(x)), torch.ones(len(x), dtype=torch.bool))
    drawn = []

    def losses(b):
        return (net(b.x) - y[b.y]) ** 2

    def draw():
        drawn.append(1)
        return batch

    return StepContext(
        step=1, params=params, train_losses=lambda: losses(draw()),
        aux_losses=lambda: ((net(xa)[:, 0] - ya) ** 2)[:, None], train_batch=draw, batch_losses=losses,
        loss_slope=lambda b, w, d, f: directional_derivative(net, w, d, lambda: f(losses(b)))), drawn


class _Combine:
    """The method as the outer update sees it: L_T = mean(ℓ_main + g(ℓ; φ))."""

    def __init__(self, auxnet):
        self.auxnet = auxnet

    def training_loss(self, losses):
        return (losses[:, 0] + self.auxnet(losses)).mean()


def _hyper_step(curvature_batch: int, seed: int = 0, scope: str = "all", trunked: bool = False):
    """One hyper step of ImplicitOuterUpdate (SGD, lr 1, no momentum): the hypergradient is φ's change."""
    from pipeline.methods.outer.implicit import ImplicitOuterUpdate

    net, auxnet, (x, y), (xa, ya) = _net_problem(seed, trunked=trunked)
    (phi,) = auxnet.parameters()
    cfg = BilevelConfig(optimizer="sgd", lr=1.0, momentum=0.0, hyper_every=1, neumann_steps=3, neumann_lr=0.05,
                        curvature_batch=curvature_batch, implicit_scope=scope)
    outer = ImplicitOuterUpdate([phi], cfg)
    ctx, drawn = _context(net, x, y, xa, ya)
    ctx.model = net
    before = phi.detach().clone()
    outer.step(_Combine(auxnet), ctx)
    assert all(p.requires_grad for p in net.parameters())  # the scope's hold on W is released
    return before - phi.detach(), len(drawn)


def _reverse_hypergradient(curvature_rows: int, mixed_rows: int, seed: int = 0, top: bool = False):
    """−α ∇φ(∇W L_T[mixed rows] · Σ_j (I − αH[curvature rows])^j ∇W L_A), all in reverse mode (the reference).
    ``top``: W = the trunked network's last trunk layer and heads, the rest held fixed."""
    net, auxnet, (x, y), (xa, ya) = _net_problem(seed, trunked=top)
    (phi,) = auxnet.parameters()
    params, alpha = list(net[2:].parameters()) if top else list(net.parameters()), 0.05
    combine = _Combine(auxnet)
    v = torch.autograd.grad(((net(xa)[:, 0] - ya) ** 2).mean(), params)
    head = torch.autograd.grad(combine.training_loss((net(x[:curvature_rows]) - y[:curvature_rows]) ** 2), params,
                               create_graph=True)
    term, series = list(v), list(v)
    for _ in range(3):
        hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(head, term)), params, retain_graph=True)
        term = [t - alpha * h for t, h in zip(term, hv)]
        series = [s + t for s, t in zip(series, term)]
    whole = torch.autograd.grad(combine.training_loss((net(x[:mixed_rows]) - y[:mixed_rows]) ** 2), params,
                                create_graph=True)
    (mixed,) = torch.autograd.grad(sum((a * b).sum() for a, b in zip(whole, series)), [phi])
    return -alpha * mixed


def test_curvature_batch_takes_the_hessian_on_its_rows_and_the_mixed_term_on_the_whole_batch():
    """With ``curvature_batch: 5`` of 12 rows the hypergradient is the reverse-mode formula with H on the first 5
    rows and ∇φ∇W L_T on all 12 (the forward-mode slope is exact); it differs from both single-batch steps, and
    the step draws one training batch, like the default."""
    split, draws = _hyper_step(5)
    torch.testing.assert_close(split, _reverse_hypergradient(5, 12), rtol=1e-10, atol=1e-13)
    assert draws == 1
    whole, _ = _hyper_step(0)
    torch.testing.assert_close(whole, _reverse_hypergradient(12, 12), rtol=1e-10, atol=1e-13)
    for other in (whole, _reverse_hypergradient(5, 5)):
        assert (split - other).abs().max() > 1e-6 * split.abs().max()
    # a curvature batch as large as the batch is the whole batch, through the one-graph path
    assert torch.equal(_hyper_step(12)[0], whole)


def test_implicit_scope_top_differentiates_through_the_trunks_last_layer_and_the_heads_only():
    """``implicit_scope: top``: the hypergradient is the reverse-mode formula with W = the last trunk layer and the
    heads (the first layer held fixed), with or without a curvature batch; it differs from the whole-W one, and
    every parameter requires grad again afterwards (``_hyper_step`` asserts it)."""
    top, _ = _hyper_step(0, scope="top", trunked=True)
    torch.testing.assert_close(top, _reverse_hypergradient(12, 12, top=True), rtol=1e-10, atol=1e-13)
    split, _ = _hyper_step(5, scope="top", trunked=True)
    torch.testing.assert_close(split, _reverse_hypergradient(5, 12, top=True), rtol=1e-10, atol=1e-13)
    whole, _ = _hyper_step(0, scope="all", trunked=True)
    assert (top - whole).abs().max() > 1e-3 * whole.abs().max()


def test_forward_mode_slope_equals_reverse_through_batchnorm_and_updates_running_stats_alike():
    from pipeline.methods.bilevel import directional_derivative

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    phi = torch.tensor([1.0, 0.4, -0.3], requires_grad=True)
    x, y = torch.randn(6, 2, 5, 5), torch.randint(0, 3, (6,))
    params = list(net.parameters())
    direction = [torch.randn_like(p) for p in params]

    def objective():
        out = net(x)
        return torch.nn.functional.cross_entropy(out, y) * phi[0] + (out.pow(2).mean(0) * phi).sum()

    stats = net[1].running_mean.clone()
    slope = directional_derivative(net, params, direction, objective)
    after_slope = net[1].running_mean.clone()
    net[1].running_mean.copy_(stats)
    gradient = torch.autograd.grad(objective(), params, create_graph=True)
    assert torch.equal(net[1].running_mean, after_slope)  # one forward's update either way
    reverse = sum((g * d).sum() for g, d in zip(gradient, direction))
    torch.testing.assert_close(slope, reverse, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(slope, phi)[0], torch.autograd.grad(reverse, phi)[0],
                               rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in params)  # nothing accumulated into W


def test_batch_head_keeps_the_companion_rows_in_proportion():
    from pipeline.methods.base import Batch

    rows = torch.arange(12)
    batch = Batch(rows.float()[:, None], rows, rows, rows < 12, companion=4)
    head = batch.head(6)
    assert head.index.tolist() == [0, 1, 2, 3, 8, 9] and head.companion == 2
    assert Batch(rows.float()[:, None], rows, rows, rows < 12).head(5).index.tolist() == [0, 1, 2, 3, 4]
    assert batch.head(12) is batch



def test_a_warm_curvature_refresh_runs_in_the_stored_eigenvectors_storage_with_the_same_roundings():
    """The power iteration normalises each H·v into v's own storage (one W-sized vector fewer at the refresh's
    peak) and H·v hands v to autograd as ∇W L_T's gradient (no product tensor): both bit for bit the
    out-of-place iteration on ∇W L_T · v; a warm refresh reuses the stored eigenvector's storage."""
    from pipeline.methods.bilevel import TrainCurvature

    net, auxnet, (x, y), _ = _net_problem()
    params = list(net.parameters())
    curvature = TrainCurvature(_Combine(auxnet).training_loss((net(x) - y) ** 2), params)
    start = [torch.randn_like(p) for p in params]

    v = [s.clone() for s in start]  # the reference: out of place, H·v as ∇W(∇W L_T · v)
    scale = torch.sqrt(sum((s ** 2).sum() for s in v))
    v = [s / scale for s in v]
    for _ in range(5):
        hv = torch.autograd.grad(sum((g * s).sum() for g, s in zip(curvature.gradient, v)), params, retain_graph=True)
        estimate = sum((a * b).sum() for a, b in zip(v, hv))
        size = torch.sqrt(sum((h ** 2).sum() for h in hv))
        v = [h / size for h in hv]

    kept = [s.clone() for s in start]
    lam, vector = curvature.top_eigenvalue(kept, 5)  # the caller's start is left as it was
    assert all(torch.equal(a, b) for a, b in zip(kept, start))
    assert lam == abs(float(estimate)) and all(torch.equal(a, b) for a, b in zip(vector, v))
    owned = [s.clone() for s in start]
    lam_owned, vector_owned = curvature.top_eigenvalue(owned, 5, overwrite=True)
    assert lam_owned == lam and all(torch.equal(a, b) for a, b in zip(vector_owned, v))
    assert [a.data_ptr() for a in vector_owned] == [b.data_ptr() for b in owned]

    (phi,) = auxnet.parameters()  # HyperOptimizer: every refresh after the first runs in the same storage
    opt = HyperOptimizer([phi], BilevelConfig(optimizer="sgd", lr=1e-3, hyper_every=1, curvature_every=1))
    pointers = []
    for _ in range(3):
        opt.step(_Combine(auxnet).training_loss((net(x) - y) ** 2), ((net(x)[:, 0] - y[:, 0]) ** 2).mean(), params)
        pointers.append([e.data_ptr() for e in opt._eigenvector])
    assert pointers[1] == pointers[2]


def test_each_hessian_vector_product_is_freed_before_the_next_one_is_taken():
    """The power iteration and the Neumann series hold one H·v at a time: the previous one is gone (no reference
    left) when the next product starts, so it does not sit beside it at the peak."""
    import gc
    import weakref

    from pipeline.methods.bilevel import TrainCurvature

    net, auxnet, (x, y), _ = _net_problem()
    params = list(net.parameters())
    curvature = TrainCurvature(_Combine(auxnet).training_loss((net(x) - y) ** 2), params)
    product, previous, calls = curvature.hvp, [], []

    def watched(v):
        gc.collect()
        calls.append(all(ref() is None for ref in previous))
        out = product(v)
        previous[:] = [weakref.ref(h) for h in out]
        return out

    curvature.hvp = watched
    curvature.top_eigenvalue([torch.randn_like(p) for p in params], 4)
    curvature.inverse_hvp([torch.randn_like(p) for p in params], 3, 0.1, stop_rate=1.9)
    assert len(calls) == 7 and all(calls)


def test_the_series_runs_on_the_gradients_graph_after_its_values_are_freed_with_the_same_numbers():
    """release_values keeps only where ∇W L_T enters the graph: its W-sized values are freed (no reference
    left), and H·v, the series and the mixed product are bit for bit those computed with the values held."""
    import gc
    import weakref

    from pipeline.methods.bilevel import TrainCurvature

    net, auxnet, (x, y), _ = _net_problem()
    params, (phi,) = list(net.parameters()), list(auxnet.parameters())
    v = [torch.randn_like(p) for p in params]

    held = TrainCurvature(_Combine(auxnet).training_loss((net(x) - y) ** 2), params)
    series_held, _ = held.inverse_hvp(v, 3, 0.1)
    mixed_held = held.vjp(series_held, [phi], retain_graph=True)

    released = TrainCurvature(_Combine(auxnet).training_loss((net(x) - y) ** 2), params)
    values = [weakref.ref(g) for g in released.gradient]
    released.release_values()
    gc.collect()
    assert released.gradient is None and all(ref() is None for ref in values)
    series, _ = released.inverse_hvp(v, 3, 0.1)
    mixed = released.vjp(series, [phi])
    assert all(torch.equal(a, b) for a, b in zip(series, series_held))
    assert torch.equal(mixed[0], mixed_held[0]) and mixed[0].abs().sum() > 0


def test_a_series_stop_at_or_below_the_curvature_safety_is_refused_naming_both_keys():
    from pipeline.config.params import ParamsError, parse_params
    with pytest.raises(ParamsError, match=r"methods\.bilevel: series_stop = 0\.4 must exceed curvature_safety = 0\.5"):
        parse_params({"method": "auxilearn_linear", "methods": {"bilevel": {"series_stop": 0.4}}})
    assert parse_params({"method": "auxilearn_linear", "methods": {"bilevel": {"series_stop": None}}})
