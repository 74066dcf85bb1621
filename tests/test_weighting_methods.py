"""Loss-weighting baselines (Uncertainty, DWA, GradNorm, GCS, MGDA): hand-computed answers, then one short run each."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.core.registry import DATASETS
from pipeline.methods.base import SharedTrunk
from pipeline.core.registry import METHODS
from pipeline.methods.combiners.dwa import dwa_weights
from pipeline.methods.combiners.mgda import frank_wolfe_min_norm, min_norm_two
from pipeline.models.linear import SharedLinear
from pipeline.engine.training import train_run

NEW_METHODS = ["uncertainty", "dwa", "gradnorm", "gcs", "mgda"]


def build(name: str, num_tasks: int, **cfg):
    """The method's loss combiner (a weighting baseline is a combiner and nothing else)."""
    cls = METHODS.get(name)
    return cls(num_tasks, cls.Config(**cfg)).combiner


def linear_losses(p: torch.Tensor, grads: list[list[float]], values: list[float]) -> torch.Tensor:
    """Per-sample losses [1, T] with ℓ_j = g_j·p + c_j: at p = 0 the values are c and the gradients g."""
    g = torch.tensor(grads)
    return (g @ p + torch.tensor(values)).unsqueeze(0)


def trunk(p: torch.Tensor, z: torch.Tensor | None = None) -> SharedTrunk:
    return SharedTrunk(params=[p], last_params=[p], representation=p if z is None else z)


# ---------------------------------------------------------------- Uncertainty

def test_uncertainty_loss_value_and_weights():
    m = build("uncertainty", 2)
    assert m.joint_parameters() == [m.log_vars]
    with torch.no_grad():
        m.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
    losses = torch.tensor([[2.0, 3.0], [4.0, 5.0]])  # batch means 3 and 4
    # exp(0)·3 + 0 + ½·4 + log 2
    assert m.training_loss(losses).item() == pytest.approx(5.0 + math.log(2.0))
    m.backward(losses.clone().requires_grad_(True), trunk(torch.zeros(1)))
    assert torch.allclose(m.task_weights(losses), torch.tensor([1.0, 0.5]))


def test_uncertainty_optimum_is_log_loss():
    m = build("uncertainty", 3)
    losses = torch.tensor([[0.5, 2.0, 7.0]])
    opt = torch.optim.Adam(m.joint_parameters(), lr=0.1)
    for _ in range(600):
        opt.zero_grad()
        m.training_loss(losses).backward()
        opt.step()
    assert torch.allclose(m.log_vars.detach(), torch.log(losses[0]), atol=1e-3)


# ---------------------------------------------------------------- DWA

def test_dwa_weights_by_hand():
    lam = dwa_weights(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0]), temperature=2.0)  # w = [0.5, 1]
    e1, e2 = math.exp(0.25), math.exp(0.5)
    assert torch.allclose(lam, torch.tensor([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)]))
    lam3 = dwa_weights(torch.tensor([1.0, 1.0, 3.0]), torch.tensor([1.0, 2.0, 1.0]), 2.0)  # w = [1, 0.5, 3]
    e = [math.exp(0.5), math.exp(0.25), math.exp(1.5)]
    assert torch.allclose(lam3, torch.tensor([3 * x / sum(e) for x in e]))
    assert float(lam3.sum()) == pytest.approx(3.0)


def test_dwa_rolls_epochs_of_period_steps():
    m = build("dwa", 2, temperature=2.0, period=2)
    # epoch 1: mean losses [2, 2]; epoch 2: [1, 2] (steps [1.5, 2] and [0.5, 2]); then λ = 2·softmax([.25, .5])
    per_step = [[2.0, 2.0], [2.0, 2.0], [1.5, 2.0], [0.5, 2.0], [1.0, 1.0], [1.0, 1.0]]
    applied = []
    for row in per_step:
        losses = torch.tensor([row], requires_grad=True)
        m.backward(losses, trunk(torch.zeros(1)))
        applied.append(m.task_weights(losses))
        assert torch.equal(losses.grad[0], applied[-1])  # the logged weights are the ones backpropagated
    for w in applied[:4]:
        assert torch.equal(w, torch.ones(2))  # λ = 1 during the first two epochs
    expected = dwa_weights(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0]), 2.0)
    assert torch.allclose(applied[4], expected) and torch.allclose(applied[5], expected)


# ---------------------------------------------------------------- GradNorm

def test_gradnorm_first_update_by_hand_adam():
    """‖∇ℓ_0‖ = 3, ‖∇ℓ_1‖ = 1 at step 0: r = 1, Ḡ = 2, ∂L_grad/∂w = [+3, −1]; Adam's first step is ∓lr."""
    m = build("gradnorm", 2, alpha=1.5, lr=0.025, optimizer="adam")
    p = torch.zeros(2, requires_grad=True)
    losses = linear_losses(p, [[3.0, 0.0], [0.0, 1.0]], [2.0, 1.0])
    m.backward(losses, trunk(p))
    assert torch.equal(m.task_weights(losses), torch.ones(2))  # W used w(0) = 1
    assert torch.allclose(p.grad, torch.tensor([3.0, 1.0]))
    w = m.weights.detach()
    assert torch.allclose(w, torch.tensor([0.975, 1.025]), atol=1e-6)
    assert float(w.sum()) == pytest.approx(2.0)  # the task with the smaller gradient norm gains weight
    assert torch.equal(m.initial_losses, torch.tensor([2.0, 1.0]))


def test_gradnorm_sgd_update_and_renormalisation():
    m = build("gradnorm", 2, lr=0.025, optimizer="sgd")
    p = torch.zeros(2, requires_grad=True)
    m.backward(linear_losses(p, [[3.0, 0.0], [0.0, 1.0]], [2.0, 1.0]), trunk(p))
    # w = [1 − 3·0.025, 1 + 0.025] = [0.925, 1.025], sum 1.95 → × 2/1.95
    assert torch.allclose(m.weights.detach(), torch.tensor([0.925, 1.025]) * (2 / 1.95))


def test_gradnorm_slower_task_gains_weight():
    """Equal gradient norms; task 1's loss stays while task 0's halves: r = [2/3, 4/3] → w_1 up."""
    m = build("gradnorm", 2, alpha=1.5, lr=0.025, optimizer="sgd")
    grads = [[1.0, 0.0], [0.0, 1.0]]
    p = torch.zeros(2, requires_grad=True)
    m.backward(linear_losses(p, grads, [1.0, 1.0]), trunk(p))
    assert torch.equal(m.weights.detach(), torch.ones(2))  # G_i = Ḡ = target: L_grad = 0
    p.grad = None
    m.backward(linear_losses(p, grads, [0.5, 1.0]), trunk(p))
    # G = [1, 1], targets [(2/3)^1.5, (4/3)^1.5] = [0.54, 1.54]: ∂L_grad/∂w = [+1, −1]
    assert torch.allclose(m.weights.detach(), torch.tensor([0.975, 1.025]))
    assert float(m.weights.detach().sum()) == pytest.approx(2.0)


# ---------------------------------------------------------------- GCS

def gcs_on_shared_linear(y: list[float], **cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """SharedLinear at w = 0 on x = [1, 0]: ℓ_j = (0 − y_j)², ∇_w ℓ_j = (−2 y_j, 0)."""
    model = SharedLinear(2)
    with torch.no_grad():
        model.weight.zero_()
    z = model.encode(torch.tensor([[1.0, 0.0]]))
    losses = (model.decode(z).unsqueeze(1) - torch.tensor([y])) ** 2
    m = build("gcs", len(y), **cfg)
    m.backward(losses, SharedTrunk(model.shared_parameters(), model.last_shared_parameters(), z))
    return model.weight.grad, m.task_weights(losses)


def test_gcs_drops_opposing_auxiliary_per_task():
    # ∇ℓ_main = (−2, 0); aux 1 (y = −1): (2, 0) opposes; aux 2 (y = 2): (−4, 0) agrees
    grad, weights = gcs_on_shared_linear([1.0, -1.0, 2.0], group_auxiliaries=False)
    assert torch.equal(grad, torch.tensor([-6.0, 0.0]))
    assert torch.equal(weights, torch.tensor([1.0, 0.0, 1.0]))


def test_gcs_grouped_auxiliaries_share_one_test():
    grad, weights = gcs_on_shared_linear([1.0, -1.0, 2.0])  # Σ aux gradient (−2, 0) agrees: all kept
    assert torch.equal(grad, torch.tensor([-4.0, 0.0]))
    assert torch.equal(weights, torch.ones(3))
    grad, weights = gcs_on_shared_linear([1.0, -3.0, 2.0])  # Σ aux gradient (6 − 4, 0) = (2, 0) opposes
    assert torch.equal(grad, torch.tensor([-2.0, 0.0]))  # exactly ∇ℓ_main
    assert torch.equal(weights, torch.tensor([1.0, 0.0, 0.0]))


@pytest.mark.parametrize("variant", ["unweighted", "weighted"])
def test_gcs_gates_trunk_only_and_accumulates(variant):
    """Trunk p with g = (1,0), (1,1), (−1,0); heads h_j with ∂ℓ_j/∂h_j = 1 get the plain gradient."""
    p = torch.zeros(2, requires_grad=True)
    h = torch.zeros(3, requires_grad=True)
    losses = linear_losses(p, [[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]], [1.0, 1.0, 1.0]) + h
    p.grad = torch.tensor([10.0, 10.0])  # already accumulated: must be kept, not overwritten or doubled
    m = build("gcs", 3, variant=variant, group_auxiliaries=False)
    m.backward(losses, trunk(p))
    gate = 1.0 if variant == "unweighted" else 1 / math.sqrt(2)  # cos((1,0), (1,1)); cos with (−1,0) = −1
    assert torch.allclose(p.grad, torch.tensor([10.0 + 1 + gate, 10.0 + gate]))
    assert torch.equal(h.grad, torch.ones(3))
    assert torch.allclose(m.task_weights(losses), torch.tensor([1.0, gate, 0.0]))


# ---------------------------------------------------------------- MGDA

def solve(vectors: list[list[float]]) -> torch.Tensor:
    g = torch.tensor(vectors, dtype=torch.float64)
    return frank_wolfe_min_norm(g @ g.T)


def test_min_norm_two_closed_form():
    assert float(min_norm_two(1.0, 0.0, 1.0)) == pytest.approx(0.5)  # (1,0), (0,1)
    # (1,0), (−1,1): γ = (2 − (−1)) / (1 + 2 + 2) = 3/5 → point (0.2, 0.4), orthogonal to (2, −1)
    assert float(min_norm_two(1.0, -1.0, 2.0)) == pytest.approx(0.6)
    assert float(min_norm_two(1.0, 1.0, 2.0)) == 1.0  # (1,0), (1,1): (1,0) is already the min-norm point
    assert float(min_norm_two(2.0, 1.0, 1.0)) == 0.0  # (1,1), (1,0)
    assert float(min_norm_two(1.0, 1.0, 1.0)) == 1.0  # identical vectors: no 0/0


def test_frank_wolfe_min_norm_by_hand():
    assert torch.allclose(solve([[1, 0], [0, 1]]), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.allclose(solve([[1, 0], [-1, 1]]), torch.tensor([0.6, 0.4], dtype=torch.float64))
    # (1,0) vs (2,1): g1·g2 = 2 ≥ ‖g1‖² → g1 itself
    assert torch.allclose(solve([[1, 0], [2, 1]]), torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(solve([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), torch.full((3,), 1 / 3, dtype=torch.float64))
    # (1,0), (0,1), (1,1): the min-norm point (½,½) of the hull is reached with α_3 = 0
    assert torch.allclose(solve([[1, 0], [0, 1], [1, 1]]), torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    # no pair holds the answer: (1,0), (−½,√3/2), (−½,−√3/2) enclose the origin, min norm 0 at α = ⅓ each
    g = [[1, 0], [-0.5, math.sqrt(3) / 2], [-0.5, -math.sqrt(3) / 2]]
    alpha = solve(g)
    assert float(torch.linalg.vector_norm(alpha @ torch.tensor(g, dtype=torch.float64))) < 1e-6
    assert torch.allclose(alpha, torch.full((3,), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("upper_bound", [True, False])
def test_mgda_backward(upper_bound):
    """g = (1,0), (0,2): with l2 normalisation the solver sees orthonormal vectors → α = ½, applied to raw ℓ."""
    p = torch.zeros(2, requires_grad=True)
    z = p * 1.0  # the representation: ∇_z ℓ_j = ∇_p ℓ_j = g_j
    losses = linear_losses(z, [[1.0, 0.0], [0.0, 2.0]], [1.0, 1.0])
    m = build("mgda", 2, upper_bound=upper_bound, normalization="l2")
    m.backward(losses, trunk(p, z))
    assert torch.allclose(m.task_weights(losses), torch.tensor([0.5, 0.5]))
    assert torch.allclose(p.grad, torch.tensor([0.5, 1.0]))


@pytest.mark.parametrize("normalization", ["loss", "loss+"])
def test_mgda_loss_normalisation(normalization):
    """Orthonormal g with ℓ = (1, 2): the solver sees (1,0), (0,½) → α = (0.2, 0.8)."""
    p = torch.zeros(2, requires_grad=True)
    losses = linear_losses(p, [[1.0, 0.0], [0.0, 1.0]], [1.0, 2.0])
    m = build("mgda", 2, upper_bound=False, normalization=normalization)
    m.backward(losses, trunk(p))
    assert torch.allclose(m.task_weights(losses), torch.tensor([0.2, 0.8]))
    assert torch.allclose(p.grad, torch.tensor([0.2, 0.8]))


# ---------------------------------------------------------------- all of them

@pytest.mark.parametrize("name", NEW_METHODS)
def test_default_config_and_protocol(name):
    cls = METHODS.get(name)
    assert cls.config_section == name and cls.uses_aux_set is False
    for field_name, field in cls.Config.model_fields.items():
        assert field.description, f"{name}.{field_name} has no description"
    method = cls(3, cls.Config())
    assert method.task_weights(torch.ones(4, 3)).shape == (3,)


@pytest.fixture(scope="module")
def toy2d(tmp_path_factory):
    params = parse_params({"dataset": "toy2d"})
    ds = DATASETS.get("toy2d")()
    folder = tmp_path_factory.mktemp("toy2d")
    ds.prepare(params.dataset_config, folder)
    data = ds.load(folder)
    return ds, data, ds.make_splits(data, params.split)


@pytest.mark.parametrize("name", NEW_METHODS)
def test_train_run(toy2d, name):
    ds, data, splits = toy2d
    methods = {"dwa": {"period": 5}}  # let DWA leave its two warm-up epochs within 30 steps
    params = parse_params({"dataset": "toy2d", "method": name, "seeds": [0], "methods": methods,
                           "datasets": {"toy2d": {"train": {"steps": 30, "eval_every": 10}}}})
    history = train_run(ds, data, splits, params, 0, device=torch.device("cpu")).history
    assert history["step"] == [1, 10, 20, 30] and len(history["train_loss"]) == 4  # train.log_every 10
    assert all(math.isfinite(v) for v in history["train_loss"] + history["val_main_loss"])
    weights = history["weights"][-1]
    assert len(weights) == 3 and all(math.isfinite(w) for w in weights)
    if name in ("dwa", "gradnorm"):
        assert sum(weights) == pytest.approx(3.0, rel=1e-5)
    if name == "mgda":
        assert sum(weights) == pytest.approx(1.0, rel=1e-5) and min(weights) >= 0
