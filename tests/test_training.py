"""The trainer's shared mechanics: hidden main labels, the fair train ∪ aux rule, τ."""
import numpy as np
import torch

from tests.conftest import _prepared, make_params
from pipeline.training import train_run


def _run(splits, method="stl", **train):
    ds, data, _ = _prepared("toy2d")
    params = make_params(dataset="toy2d", method=method, seeds=[0],
                         datasets={"toy2d": {"train": {"steps": 50, **train}}})
    return train_run(ds, data, splits, params, 0, device=torch.device("cpu"))


def test_hidden_main_labels_contribute_nothing():
    """STL on train with some labels hidden == STL on the labelled samples alone (full batch)."""
    _, _, splits = _prepared("toy2d")
    hidden = splits["train"][::2]
    with_hidden = _run({**splits, "unlabelled": hidden})
    labelled_only = _run({**splits, "train": np.setdiff1d(splits["train"], hidden)})
    for k in with_hidden.model_state:
        assert torch.allclose(with_hidden.model_state[k], labelled_only.model_state[k], atol=1e-6)
    assert not torch.allclose(with_hidden.model_state["weight"], _run(splits).model_state["weight"])


def test_methods_without_aux_set_train_on_train_and_aux():
    """STL sees the aux samples too (fair comparison): only the union train ∪ aux matters to it."""
    _, _, splits = _prepared("toy2d")
    union = np.concatenate([splits["train"], splits["aux"]])
    moved = {**splits, "train": np.sort(union[1:]), "aux": union[:1]}
    assert torch.allclose(_run(splits).model_state["weight"], _run(moved).model_state["weight"], atol=1e-6)


def test_aux_loss_scale_multiplies_auxiliary_losses_only():
    scaled, plain = _run(_prepared("toy2d")[2], "equal", aux_loss_scale=0.5), _run(_prepared("toy2d")[2], "equal")
    assert scaled.history["main_loss"][0] == plain.history["main_loss"][0]
    assert scaled.history["train_loss"][0] < plain.history["train_loss"][0]
