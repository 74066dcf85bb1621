"""``pipeline.core.functional.call_with``: torch's functional_call, safe for shared submodules and tied tensors."""
import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from torch import nn
from torch.func import functional_call

from pipeline.core.functional import call_with
from pipeline.methods.bilevel import directional_derivative


class _SharedPath(nn.Module):
    """One block reached by two paths (``block`` and ``top``), as a model that keeps a handle on its last block."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(3, 3)
        self.top = self.block
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.top(torch.tanh(self.block(x)))))


class _Tied(nn.Module):
    """One Parameter in two modules (weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.dec = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x)))


def _substitutes(model):
    return {name: p.detach() * 2 for name, p in model.named_parameters()}


@pytest.mark.parametrize("Model", [_SharedPath, _Tied])
def test_call_with_uses_the_values_everywhere_and_leaves_the_parameters_in_place(Model):
    torch.manual_seed(0)
    model, x = Model(), torch.randn(4, 3)
    before = {name: p for name, p in model.named_parameters()}
    values = _substitutes(model)
    got = call_with(model, values, (x,))
    with torch.no_grad():  # the reference: the model itself with its parameters doubled in place
        for p in model.parameters():
            p.mul_(2)
        want = model(x)
        for p in model.parameters():
            p.div_(2)
    torch.testing.assert_close(got, want)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())


def test_torchs_own_call_still_corrupts_a_shared_path_which_is_why_call_with_exists():
    """If torch fixes pytorch/pytorch#164759 this fails, and ``call_with`` can become ``functional_call`` again."""
    model = _SharedPath()
    weight = model.block.weight
    functional_call(model, _substitutes(model), (torch.randn(2, 3),))
    assert model.block.weight is not weight


def test_a_forward_mode_slope_through_a_shared_path_equals_reverse_and_keeps_w():
    torch.manual_seed(1)
    model, x = _SharedPath().double(), torch.randn(5, 3, dtype=torch.float64)
    params = list(model.parameters())
    direction = [torch.randn_like(p) for p in params]
    slope = directional_derivative(model, params, direction, lambda: model(x).pow(2).sum())
    gradient = torch.autograd.grad(model(x).pow(2).sum(), params)
    torch.testing.assert_close(slope, sum((g * d).sum() for g, d in zip(gradient, direction)))
    assert [p for p in model.parameters()] == params and all(isinstance(p, nn.Parameter) for p in params)


def test_call_with_names_an_unknown_key_and_takes_dual_values():
    with pytest.raises(KeyError, match="nope"):
        call_with(_Tied(), {"nope": torch.zeros(1)}, (torch.randn(1, 3),))
    with forward_ad.dual_level():  # a dual value is just another value
        model = _Tied()
        w = model.enc.weight
        dual = forward_ad.make_dual(w.detach(), torch.ones_like(w))
        out = call_with(model, {"enc.weight": dual}, (torch.ones(1, 3),))
        assert forward_ad.unpack_dual(out).tangent is not None
    assert model.enc.weight is w


def test_call_with_is_functional_call_to_the_bit_where_nothing_is_shared():
    """The models the workbench ships reach each block by one path: there call_with changes no number."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))
    x = torch.randn(5, 2, 5, 5)
    values = {**_substitutes(model), **{name: b.clone() for name, b in model.named_buffers()}}
    assert torch.equal(call_with(model, values, (x,)), functional_call(model, values, (x,)))
