"""The trainer's shared mechanics: hidden main labels, the fair train ∪ aux rule, τ."""
import numpy as np
import torch

from tests.conftest import _prepared, make_params
from pipeline.engine.training import train_run


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


def test_outer_update_has_its_own_streams_and_hyper_batches(monkeypatch):
    """The hypergradient's L_T and L_A batches come from streams of their own (sizes hyper_train_batch,
    hyper_aux_batch), seeded apart from W's: W's batches are the same whatever the outer update draws."""
    from pipeline.engine import training

    made = []
    original = training.BatchStream.__init__

    def recording(self, data, indices, batch_size, generator, *args, **kwargs):
        original(self, data, indices, batch_size, generator, *args, **kwargs)
        made.append((self.batch_size, generator))

    monkeypatch.setattr(training.BatchStream, "__init__", recording)
    ds, data, splits = _prepared("toy2d")

    def run(hyper_aux_batch, hyper_every):
        made.clear()
        params = make_params(dataset="toy2d", method="auxilearn_linear", seeds=[0],
                             datasets={"toy2d": {"train": {"steps": 12, "batch_size": 16}}},
                             methods={"bilevel": {"hyper_train_batch": 8, "hyper_aux_batch": hyper_aux_batch,
                                                  "hyper_every": hyper_every, "lr": 1e-12}})
        result = train_run(ds, data, splits, params, 0, device=torch.device("cpu"))
        return result, list(made)

    result, streams = run(4, 1)
    (w_size, w_gen), (outer_size, outer_gen), (aux_size, aux_gen), (_, diag_gen) = streams
    assert (w_size, outer_size, aux_size) == (16, 8, 4)
    assert outer_gen is aux_gen and outer_gen is not w_gen and diag_gen not in (w_gen, outer_gen)
    # φ barely moves (lr 1e-12), so W's trajectory depends only on its own batches: drawing 12 outer batches
    # (hyper_every 1) or none (hyper_every 1000) must leave W's batches, hence W, unchanged.
    without_outer, _ = run(4, 1000)
    for k in result.model_state:
        assert torch.allclose(result.model_state[k], without_outer.model_state[k], atol=1e-6)


def test_select_by_validation_metric_keeps_the_best_metric_checkpoint():
    """select_by: val_metric keeps the model best on the dataset's main validation metric (lower MSE here)."""
    _, _, splits = _prepared("toy2d")
    run = _run(splits, "stl", select_by="val_metric", eval_every=5)
    assert len(run.history["val_main_metric"]) == len(run.history["val_step"]) == 10
    ds, data, _ = _prepared("toy2d")
    model = ds.build_model(data, make_params(dataset="toy2d").profile.model)
    model.load_state_dict(run.model_state)
    kept = next(iter(ds.metrics(model.eval(), data, torch.as_tensor(splits["val"])).items()))[1]
    assert kept == min(run.history["val_main_metric"])



def _phi_of_run(dataset: str, method: str, train: dict, bilevel: dict) -> dict[str, torch.Tensor]:
    """φ at the end of one short ``train_run`` (and, under ``initial.<key>``, at its start)."""
    from pipeline.engine.training import train_run
    from tests.conftest import _prepared, make_params

    ds, data, splits = _prepared(dataset)
    params = make_params(dataset=dataset, method=method, seeds=[0], datasets={dataset: {"train": train}},
                         methods={"bilevel": bilevel})
    result = train_run(ds, data, splits, params, 0, device=torch.device("cpu"))
    return {**result.method_state_final, **{f"initial.{k}": v for k, v in result.method_state_initial.items()}}


def _toy2d_run(curvature_batch: int) -> dict[str, torch.Tensor]:
    return _phi_of_run("toy2d", "auxilearn_nonlinear", {"steps": 30, "batch_size": 16, "eval_every": 10},
                       {"hyper_every": 5, "curvature_batch": curvature_batch})


def test_training_with_a_curvature_batch_is_deterministic_and_differs_only_below_the_batch():
    split, again, whole, as_large = _toy2d_run(4), _toy2d_run(4), _toy2d_run(0), _toy2d_run(16)
    phi = [k for k in split if not k.startswith("initial.")]
    assert all(torch.equal(split[k], again[k]) for k in split)  # same seed, same φ
    assert all(torch.equal(whole[k], as_large[k]) for k in whole)  # ≥ the batch: the one-graph path
    assert max(float((split[k] - split[f"initial.{k}"]).abs().max()) for k in phi) > 1e-3  # φ learned
    assert max(float((split[k] - whole[k]).abs().max()) for k in phi) > 1e-6  # the Hessian's rows changed


def _cub_run(scope: str) -> dict[str, torch.Tensor]:
    return _phi_of_run("cub", "auxilearn_linear", {"steps": 8, "batch_size": 4, "eval_every": 4},
                       {"hyper_every": 2, "implicit_scope": scope})


def test_training_with_the_implicit_scope_top_is_deterministic_learns_phi_and_differs_from_all_of_w():
    """A whole run on the CUB stand-in (a ConvNet trunk) with the IFT over the trunk's last block and the heads:
    the same seed gives the same φ, φ moves, and it moves otherwise than with the IFT over all of W."""
    top, again, whole = _cub_run("top"), _cub_run("top"), _cub_run("all")
    phi = [k for k in top if not k.startswith("initial.")]
    assert all(torch.equal(top[k], again[k]) for k in top)
    assert max(float((top[k] - top[f"initial.{k}"]).abs().max()) for k in phi) > 1e-3
    assert max(float((top[k] - whole[k]).abs().max()) for k in phi) > 1e-6
