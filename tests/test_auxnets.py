"""Auxiliary networks: registry, starting weights, monotonicity after projection."""
import pytest
import torch

from pipeline.auxnets import AUXNETS

KINDS = ["linear", "deep_linear", "nonlinear"]


def build(kind, tasks=4, init_weight=1.0):
    return AUXNETS.get(kind)(tasks, hidden_units=10, hidden_layers=4, init_weight=init_weight)


@pytest.mark.parametrize("kind", KINDS)
def test_starts_near_equal_weighting(kind):
    net = build(kind, init_weight=0.5)
    w = net.effective_weights(torch.ones(8, 4))
    assert torch.allclose(w[1:].mean(), torch.tensor(0.5), rtol=1e-4)
    if kind == "linear":
        assert torch.allclose(w, torch.tensor([0.0, 0.5, 0.5, 0.5]))


@pytest.mark.parametrize("kind", KINDS)
def test_projection_makes_network_monotone(kind):
    torch.manual_seed(0)
    net = build(kind)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))  # push some weights negative
    net.project()
    losses = torch.rand(256, 4) * 5
    grads = torch.stack([net.effective_weights(losses[i : i + 1]) for i in range(len(losses))])
    assert (grads >= -1e-7).all()
    # and increasing any one loss never lowers g
    bumped = losses.clone()
    bumped[:, 2] += 1.0
    assert (net(bumped) >= net(losses) - 1e-6).all()


def test_linear_ignores_main_loss_input():
    net = build("linear")
    a, b = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[9.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(net(a), net(b))


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(KeyError, match="deep_linear"):
        AUXNETS.get("resnet")
