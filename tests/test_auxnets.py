"""Auxiliary networks: registry, starting weights, monotonicity after projection."""
import pytest
import torch

from pipeline.core.registry import AUXNETS

KINDS = ["linear", "deep_linear", "nonlinear", "convnet"]


def build(kind, tasks=4, init_weight=1.0):
    return AUXNETS.get(kind)(tasks, hidden_units=10, hidden_layers=4, init_weight=init_weight,
                             conv_channels=(8, 16), kernel_size=3)


def random_losses(kind, n, tasks=4):
    """Per-sample losses [n, T], or loss images [n, T, 6, 5] for the ConvNet."""
    return torch.rand(n, tasks) * 5 if kind != "convnet" else torch.rand(n, tasks, 6, 5) * 5


@pytest.mark.parametrize("kind", KINDS)
def test_starts_near_equal_weighting(kind):
    net = build(kind, init_weight=0.5)
    w = net.effective_weights(torch.ones(8, 4) if kind != "convnet" else torch.ones(8, 4, 8, 8))
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
    losses = random_losses(kind, 64 if kind == "convnet" else 256)
    if kind == "convnet":  # per pixel: the gradient of g w.r.t. every pixel of every loss channel
        x = losses.clone().requires_grad_(True)
        (grads,) = torch.autograd.grad(net(x).sum(), x)
    else:
        grads = torch.stack([net.effective_weights(losses[i : i + 1]) for i in range(len(losses))])
    assert (grads >= -1e-7).all()
    # and increasing any one loss never lowers g
    bumped = losses.clone()
    bumped[:, 2] += 1.0
    assert (net(bumped) >= net(losses) - 1e-6).all()


def test_convnet_sees_space_and_needs_loss_images():
    """The ConvNet's output depends on where a loss sits in the image (not only on its mean), so it can
    weight pixels by their neighbourhood; and a loss vector is refused with the shape named."""
    torch.manual_seed(0)
    net = build("convnet")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.rand_like(p))
    net.project()
    corner, spread = torch.zeros(1, 4, 6, 6), torch.zeros(1, 4, 6, 6)
    corner[0, 1, :2, :2] = 9.0  # same total auxiliary loss, concentrated vs spread out
    spread[0, 1, ::2, ::2] = 4.0
    assert corner.sum() == spread.sum()
    assert not torch.allclose(net(corner), net(spread))
    with pytest.raises(ValueError, match=r"loss images \[B, T, H, W\]"):
        net(torch.rand(3, 4))


def test_linear_ignores_main_loss_input():
    net = build("linear")
    a, b = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[9.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(net(a), net(b))


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(KeyError, match="deep_linear"):
        AUXNETS.get("resnet")


@pytest.mark.parametrize("kind", KINDS)
def test_calibration_starts_every_task_at_equal_weight_at_the_runs_losses(kind):
    """At the first batch's losses (far from 1, and different per task) every auxiliary's effective weight
    is init_weight and g adds nothing to the main task's weight (Equal's weighting)."""
    torch.manual_seed(0)
    net = build(kind, init_weight=1.0)
    scale = torch.tensor([2.0, 0.03, 7.0, 0.4])
    losses = random_losses(kind, 16) * (scale if kind != "convnet" else scale.view(1, -1, 1, 1))
    net.calibrate(losses)
    w = net.effective_weights(losses)
    assert torch.allclose(w[1:], torch.ones(3), rtol=1e-3), w
    assert abs(float(w[0])) < 1e-3  # softplus weights start at 1e-6 where a clipped one starts at 0


def test_deep_linear_has_no_biases_and_linear_can_learn_the_main_weight():
    assert all(m.bias is None for m in build("deep_linear").layers)
    net = AUXNETS.get("linear")(3, learn_main_weight=True)
    assert not net.main_skip
    assert torch.allclose(net.effective_weights(torch.rand(5, 3)), torch.ones(3))


def test_convnet_is_the_reference_shape_and_every_layer_gets_gradient():
    """3×3 convolutions to 8 and 16 channels with average pooling, a 1×1 output convolution, U[0, 0.1]
    init; the hypergradient reaches the first layers in proportion to their size (none is starved)."""
    torch.manual_seed(0)
    net = build("convnet")
    convs = net.layers
    assert [c.out_channels for c in convs] == [8, 16, 1]
    assert [c.kernel_size for c in convs] == [(3, 3), (3, 3), (1, 1)]
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in net.net)
    losses = random_losses("convnet", 4)
    net.calibrate(losses)
    weights = [p for name, p in net.named_parameters() if "weight" in name]  # raw (softplus) parameters
    assert len(weights) == 3
    grads = torch.autograd.grad(net(losses).sum(), weights)
    relative = [float(g.norm() / w.detach().norm()) for g, w in zip(grads, weights)]
    assert min(relative) > 1e-2 * max(relative), relative


@pytest.mark.parametrize("kind,depth", [("linear", 1), ("nonlinear", 5), ("deep_linear", 5), ("convnet", 3)])
def test_a_deep_network_steps_each_layer_at_the_rate_over_its_depth(kind, depth):
    """layer_rate by_depth (the default): each of D layers at methods.bilevel.lr / D; same: every layer at lr.
    The first normalised step moves every φ entry by exactly that ratio."""
    from pipeline.methods.bilevel import BilevelConfig, HyperOptimizer
    from pipeline.methods.combiners.auxnet import AuxiLearnConfig, AuxNetCombiner

    cfg = BilevelConfig(lr=0.01)
    moves = {}
    for rate in ("by_depth", "same"):
        torch.manual_seed(0)
        combiner = AuxNetCombiner.from_config(3, kind, AuxiLearnConfig(layer_rate=rate))
        hyper = HyperOptimizer(combiner.hyper_parameter_groups(), cfg)
        assert [g["lr"] for g in hyper.optimizer.param_groups] == pytest.approx([0.01 / depth if rate == "by_depth" else 0.01])
        assert combiner.auxnet.depth == depth
        before = [p.detach().clone() for p in hyper.hparams]
        for p in hyper.hparams:
            p.grad = torch.ones_like(p)
        hyper.optimizer.step()
        moves[rate] = torch.cat([(p.detach() - b).flatten() for p, b in zip(hyper.hparams, before)])
    assert moves["same"].abs().min() > 0
    torch.testing.assert_close(moves["by_depth"], moves["same"] / depth)
