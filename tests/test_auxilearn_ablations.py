"""AuxiLearn's appendix ablations as params (App. C.2, C.5, C.6, C.7, C.10): each switch changes what it should."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.core.registry import AUXNETS, DATASETS
from pipeline.engine.training import train_run
from pipeline.methods.auxnets.polynomial import monomial_exponents, parse_term_key, term_key, term_name
from pipeline.methods.base import build_method

# A small demo run: 20 steps, φ every 5 steps (the default shapes, a fraction of the work).
DEMO_TRAIN = {"steps": 20, "batch_size": 8, "eval_every": 5, "log_every": 5, "checkpoint_every": 0}


def demo_run(tmp_path, method: str, auxilearn: dict | None = None, seed: int = 0):
    params = parse_params({"dataset": "demo", "method": method, "seeds": [seed],
                           "datasets": {"demo": {"train": DEMO_TRAIN, "methods": {"bilevel": {"hyper_every": 5}}}},
                           "methods": {"auxilearn": auxilearn or {}}})
    ds = DATASETS.get("demo")(params.profile.model)
    folder = tmp_path / "demo"
    if not folder.exists():
        ds.prepare(params.dataset_config, folder)
    data = ds.load(folder)
    splits = ds.make_splits(data, params.split)
    return params, train_run(ds, data, splits, params, seed, device=torch.device("cpu"))


# ---------------------------------------------------------------------------------------------- C.2 monotonicity

@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
def test_non_monotone_networks_keep_negative_weights(kind):
    """positive_weights none: project() leaves a negative weight, so g can reverse an auxiliary's gradient;
    clip (the paper's monotone networks) zeroes it."""
    for mode, survives in (("none", True), ("clip", False)):
        net = AUXNETS.get(kind)(3, positive_weights=mode)
        first = net.layers[0]
        with torch.no_grad():
            first.weight[..., 2] = -0.5  # auxiliary 2 (column 2): a negative weight after some φ step
        net.project()
        assert bool((first.weight[..., 2] < 0).all()) == survives
        weights = net.effective_weights(torch.ones(4, 3))
        assert bool(weights[2] < 0) == survives  # non-monotone: g decreases as that loss grows


def test_non_monotone_is_a_param_of_the_auxilearn_methods():
    params = parse_params({"dataset": "demo", "method": "auxilearn_nonlinear",
                           "methods": {"auxilearn": {"positive_weights": "none"}}})
    method = build_method("auxilearn_nonlinear", 3, params)
    assert method.combiner.auxnet.positive_weights == "none"
    assert not torch.nn.utils.parametrize.is_parametrized(method.combiner.auxnet.layers[0])  # no softplus either


# ------------------------------------------------------------------------------------- C.5 polynomial kernel

def test_polynomial_terms_are_every_monomial_up_to_the_degree():
    assert monomial_exponents(3, 2) == [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0, 0), (1, 1, 0), (1, 0, 1),
                                        (0, 2, 0), (0, 1, 1), (0, 0, 2)]
    assert len(monomial_exponents(3, 3)) == 19 and len(monomial_exponents(4, 1)) == 4
    assert term_name((2, 0, 0), ["seg", "depth", "normal"]) == "seg²"
    assert term_name((1, 1, 0), ["seg", "depth", "normal"]) == "seg·depth"
    assert parse_term_key(term_key((0, 2, 1))) == (0, 2, 1) and parse_term_key("hypergrad_norm") is None


def test_polynomial_network_is_linear_in_the_terms_and_starts_at_equal():
    params = parse_params({"dataset": "demo", "method": "auxilearn_polynomial",
                           "methods": {"auxilearn": {"degree": 3}}})
    method = build_method("auxilearn_polynomial", 3, params)
    net = method.combiner.auxnet
    assert len(net.exponents) == 19 and not net.main_skip
    losses = torch.tensor([[0.5, 2.0, 3.0], [1.0, 0.0, 4.0]])
    assert torch.allclose(method.training_loss(losses), losses.sum(1).mean())  # Equal at the start
    with torch.no_grad():
        net.weight.copy_(torch.arange(19, dtype=torch.float32))
    feats = torch.stack([torch.prod(losses ** torch.tensor(e, dtype=torch.float32), dim=1) for e in net.exponents], 1)
    assert torch.allclose(net(losses), feats @ net.weight)
    with torch.no_grad():
        net.weight[4] = -1.0
    net.project()
    assert net.weight[4] == 0  # clipped: monotone, as the paper's linear network


def test_polynomial_network_has_finite_second_derivatives_at_a_zero_loss():
    """A loss of exactly 0 (a masked task, e.g. a dataset pair's rows without that label) must not make the
    Hessian of L_T NaN: x ** 0 has derivative 0 · x⁻¹, which autograd's second pass turns into 0 · ∞."""
    net = build_method("auxilearn_polynomial", 3, parse_params({"dataset": "demo", "method": "auxilearn_polynomial"})
                       ).combiner.auxnet
    with torch.no_grad():
        net.weight.copy_(torch.linspace(0.5, 1.5, len(net.exponents)))
    losses = torch.tensor([[0.5, 0.0, 3.0], [0.0, 2.0, 0.0]], requires_grad=True)
    (gradient,) = torch.autograd.grad(net(losses).sum(), losses, create_graph=True)
    (curvature,) = torch.autograd.grad(gradient.sum(), losses)
    assert torch.isfinite(gradient).all() and torch.isfinite(curvature).all(), (gradient, curvature)
    # the exact derivatives of Σ_m φ_m Π_j ℓ_j^e_mj, e.g. ∂/∂ℓ₂ at (0, 2, 0): φ(ℓ₂) + 2·2·φ(ℓ₂²) + 0 + ...
    exact = torch.func.hessian(lambda x: sum(float(w) * torch.prod(torch.stack([x[j] ** e for j, e in enumerate(ex)
                                                                                  if e]))
                                             for w, ex in zip(net.weight, net.exponents)))(losses[1].detach())
    assert torch.allclose(curvature[1], exact.sum(0))


def test_polynomial_run_logs_a_weight_per_term(tmp_path):
    _, result = demo_run(tmp_path, "auxilearn_polynomial")
    logged = [e for e in result.history["method_log"] if any(parse_term_key(k) for k in e)]
    assert len(logged) == DEMO_TRAIN["steps"]  # every step
    assert {tuple(parse_term_key(k)) for k in logged[-1] if parse_term_key(k)} == set(monomial_exponents(3, 2))
    final = result.method_state_final["combiner.auxnet.weight"]
    assert torch.allclose(torch.tensor([float(logged[-1][term_key(e)]) for e in monomial_exponents(3, 2)]), final)
    assert (final[3:] != 0).any()  # the higher-order terms moved off 0: φ learned on them


# ------------------------------------------------------------------------------------- C.6 fixed φ, retrained

def test_retraining_with_fixed_phi_freezes_the_best_phi(tmp_path):
    _, search = demo_run(tmp_path, "auxilearn_linear")
    _, fixed = demo_run(tmp_path, "auxilearn_linear", {"retrain_with_fixed_phi": True})
    assert search.history["hyper_step"] and not fixed.history["hyper_step"]  # no outer update the second time
    assert fixed.history["fixed_phi_step"] == search.best_step > 0
    for key, value in search.method_state_best.items():  # φ of the first run's best step, unchanged throughout
        assert torch.equal(fixed.method_state_initial[key], value)
        assert torch.equal(fixed.method_state_final[key], value)
    assert not torch.equal(search.method_state_initial["combiner.auxnet.net.0.weight"],
                           search.method_state_final["combiner.auxnet.net.0.weight"])  # it did move while searching
    # W trained from the same start under a different loss: a different model
    assert any(not torch.equal(search.model_state[k], fixed.model_state[k]) for k in search.model_state)


def test_fixed_phi_is_refused_where_it_is_not_a_key():
    with pytest.raises(ValueError, match="retrain_with_fixed_phi"):
        parse_params({"dataset": "demo", "method": "stl", "methods": {"uncertainty": {"retrain_with_fixed_phi": True}}})


# ----------------------------------------------------------------------------------------- C.7 full CUB

def test_fully_supervised_cub_is_k_shot_zero():
    """k_shot 0: every official training image keeps its species label (no unlabelled split), Table 5's setting."""
    from pipeline.datasets.cub.splits import k_shot_splits

    params = parse_params({"dataset": "cub", "method": "auxilearn_nonlinear", "datasets": {"cub": {"split": {"k_shot": 0, "aux": 4}}}})
    labels = np.repeat(np.arange(4), 10)
    is_train = np.tile(np.r_[np.ones(7, bool), np.zeros(3, bool)], 4)
    full = k_shot_splits(labels, is_train, 4, params.split)
    few = k_shot_splits(labels, is_train, 4, params.split.model_copy(update={"k_shot": 5}))
    assert len(full["unlabelled"]) == 0 and len(few["unlabelled"]) == 28 - 20
    assert np.array_equal(np.sort(np.r_[full["train"], full["aux"]]), np.flatnonzero(is_train))


# ------------------------------------------------------------------------------ C.10 CIFAR-10 at 10/15/100 %

def cifar_like(per_class=(60, 30, 10), test: int = 20):
    """Official-train images of 3 classes with unequal counts, then ``test`` official-test images."""
    from pipeline.datasets.shared.base import TaskData

    labels = np.r_[np.concatenate([np.full(n, c) for c, n in enumerate(per_class)]), np.zeros(test, np.int64)]
    is_train = np.r_[np.ones(sum(per_class), bool), np.zeros(test, bool)]
    return TaskData(torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8),
                    torch.as_tensor(labels, dtype=torch.float32)[:, None], ["class"],
                    {"num_classes": 3, "is_train": is_train}), labels


@pytest.mark.parametrize("fraction", [0.1, 0.15, 1.0])
def test_cifar_fraction_is_seeded_and_stratified(fraction):
    cifar = DATASETS.get("cifar10")()
    data, labels = cifar_like()
    cfg = cifar.SplitConfig(seed=1, train_fraction=fraction, aux_fraction=0.1, val=5, stratified=True)
    s = cifar.make_splits(data, cfg)
    used = np.r_[s["train"], s["aux"]]
    assert len(np.unique(np.r_[used, s["val"], s["test"]])) == len(used) + len(s["val"]) + len(s["test"])
    assert len(s["val"]) == 5 and np.array_equal(s["test"], np.arange(100, 120))
    counts = np.bincount(labels[used], minlength=3)
    if fraction == 1.0:  # all of it: every official training image not drawn for validation
        assert np.array_equal(np.sort(np.r_[used, s["val"]]), np.arange(100))
    else:  # each class's share, rounded: e.g. 15 % of (60, 30, 10) = (9, 4, 2)
        assert np.array_equal(counts, np.round(fraction * np.array([60, 30, 10])).astype(int))
    again = cifar.make_splits(data, cfg)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    other = cifar.make_splits(data, cfg.model_copy(update={"seed": 2}))
    assert not np.array_equal(s["train"], other["train"])


def test_unstratified_fraction_ignores_the_classes():
    cifar = DATASETS.get("cifar10")()
    data, labels = cifar_like(per_class=(30, 30, 10))
    shares = [np.bincount(labels[np.r_[s["train"], s["aux"]]], minlength=3)
              for s in (cifar.make_splits(data, cifar.SplitConfig(seed=seed, train_fraction=0.2, aux_fraction=0.1,
                                                                   val=5, stratified=strat))
                        for seed in range(6) for strat in (False, True))]
    assert all(np.array_equal(c, [6, 6, 2]) for c in shares[1::2])  # stratified: always round(0.2 x n_c)
    assert any(not np.array_equal(c, [6, 6, 2]) for c in shares[0::2])  # the whole split's 20 %: drifts
