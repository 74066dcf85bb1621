"""MAXL's second-order meta-gradient (forward-mode coupling term, no double backward) against the paper's
algorithm as written (``bench/bench_maxl.py``'s ``reference_meta_gradients``: copy W, a virtual SGD step with
create_graph, the meta objective at the fast weights, backward to θ2) and against the one-graph objective
``meta_loss``, in float64 on a tiny network; and the first-order variant's single label-network backward against
its finite-difference definition."""
from __future__ import annotations

import pytest
import torch

from bench.bench_maxl import reference_meta_gradients
from pipeline.engine.training import batch_objective
from tests.test_labels import META_CASES, Blobs, TinyNet, float64_setup, w_optimiser


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("labels", [{}, {"maxl_penalty": "l1", "maxl_main_loss": "dataset"}])
def test_second_order_equals_the_papers_algorithm(batch_norm, labels):
    method, model, batch, scale = float64_setup("maxl", **labels)
    if batch_norm:  # BN in training mode: batch statistics couple the samples in both passes
        torch.manual_seed(1)
        model = TinyNet(4, 3, method.head_outputs(), batch_norm=True).double().train()
    outer = method.outer
    loss, ours = outer.meta_gradients(model, batch, scale, None)
    ref_loss, ref = reference_meta_gradients(outer, model, batch, scale, outer.base_lr)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-12)
    a, b = _flat(ours), _flat(ref)
    assert float(b.norm()) > 0
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), float((a - b).abs().max())
    # the look-ahead term is a real part of it: the entropy term's gradient alone is far from it
    direct = torch.autograd.grad(outer.theta2_terms(method.generator.soft_labels(batch, True)),
                                 list(method.generator.label_net.parameters()), allow_unused=True)
    d = _flat([torch.zeros_like(p) if g is None else g
               for g, p in zip(direct, method.generator.label_net.parameters())])
    assert float((b - d).norm()) > 1e-3 * float(b.norm())


@pytest.mark.parametrize("case", list(META_CASES))
def test_second_order_equals_the_one_graph_objective(case):
    """With W's optimiser in the look-ahead (its rate, weight decay, momentum buffer, Nesterov)."""
    labels, opt_kw = META_CASES[case]
    method, model, batch, scale = float64_setup("maxl", **labels)
    opt = w_optimiser(model, **opt_kw) if opt_kw else None
    exact_loss = method.outer.meta_loss(model, batch, scale, opt)
    exact = torch.autograd.grad(exact_loss, list(method.generator.label_net.parameters()))
    loss, ours = method.outer.meta_gradients(model, batch, scale, opt)
    assert float(loss) == pytest.approx(float(exact_loss.detach()), rel=1e-12)
    assert torch.allclose(_flat(ours), _flat(exact), rtol=1e-9, atol=1e-12)


def test_first_order_is_the_central_difference_of_the_theta2_gradient():
    """The first order's pull at the soft labels, backpropagated once, equals ∇θ2 L_T(θ1 + εd) − ∇θ2 L_T(θ1 − εd)
    over 2ε taken through the label network twice (its definition), plus the direct term."""
    method, model, batch, scale = float64_setup("maxl_first_order")
    outer = method.outer
    theta2 = list(method.generator.label_net.parameters())
    _, ours = outer.meta_gradients(model, batch, scale, None)
    ahead = outer.lookahead_direction(model, batch, scale, None)
    eps = outer.cfg.maxl_fd_epsilon / torch.sqrt(sum((v * v).sum() for v in ahead.e.values()))
    sides = []
    for sign in (1.0, -1.0):
        shifted = {k: p + sign * eps * ahead.e[k] for k, p in ahead.current.items()}
        inner = outer._inner(outer._losses_at(ahead.full, shifted, ahead.buffers, batch, ahead.soft), scale,
                             batch.labelled)
        sides.append(torch.autograd.grad(inner, theta2, retain_graph=True))
    direct = torch.autograd.grad(outer.theta2_terms(ahead.soft), theta2, allow_unused=True)
    expected = [(torch.zeros_like(p) if g is None else g) - (up - down) / (2 * eps)
                for g, p, up, down in zip(direct, theta2, *sides)]
    assert torch.allclose(_flat(ours), _flat(expected), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["maxl", "maxl_first_order"])
@pytest.mark.parametrize("case", list(META_CASES))
def test_reusing_ws_gradient_gives_the_same_meta_gradient(name, case):
    """``maxl_meta_batch: step`` takes ∇θ1 L_T from W's step: W's ``.grad`` after the trainer's objective
    (``batch_objective``, the combiner's L_T) and backward gives the meta-gradient computed from scratch."""
    labels, opt_kw = META_CASES[case]
    method, model, batch, scale = float64_setup(name, **labels)
    opt = w_optimiser(model, **opt_kw) if opt_kw else None
    loss, fresh = method.outer.meta_gradients(model, batch, scale, opt)
    model.zero_grad(set_to_none=True)
    losses, _ = batch_objective(method, model, Blobs(), batch, scale)
    method.training_loss(losses).backward()
    shared_loss, shared = method.outer.meta_gradients(model, batch, scale, opt, w_gradient=True)
    assert float(shared_loss) == pytest.approx(float(loss), rel=1e-12)
    assert torch.allclose(_flat(shared), _flat(fresh), rtol=1e-9, atol=1e-12)
    model.zero_grad(set_to_none=True)  # and it is W's gradient that is read: without it, the look-ahead stands still
    _, still = method.outer.meta_gradients(model, batch, scale, opt, w_gradient=True)
    assert not torch.allclose(_flat(still), _flat(fresh), rtol=1e-6)
