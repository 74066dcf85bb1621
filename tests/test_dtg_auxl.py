"""DTG-AuxL (``pipeline/methods/dtg``): generator shapes (per sample and per point), the implicit gradient through
the generator against finite differences, the shuffle pairing and the reorder stream D'_p, each ablation switch,
and a few training steps on tiny cub and demo runs with the mode-collapse diagnostics in the history."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.methods.bilevel import TrainCurvature, neumann_hypergradient
from pipeline.config.params import parse_params
from pipeline.datasets.shared.base import LabelField, TaskData
from pipeline.methods.base import Batch, Method, StepContext
from pipeline.methods.dtg.config import DTGConfig
from pipeline.methods.dtg.generator import Generated, LinearTerm, NonlinearTerm, collapse_diagnostics, shuffle_pairing
from tests.conftest import InMemoryDataset, check_against_finite_differences, solve_lower
from pipeline.methods.dtg.method import dtg_objectives
from pipeline.models.base import MultiTaskNet
from pipeline.core.registry import DATASETS, METHODS
from pipeline.engine.training import BatchStream, stream_generator, train_run

C, D, IN, POINTS = 3, 4, 3, 5


# --------------------------------------------------------------------------------- a tiny problem


class TinyNet(MultiTaskNet):
    """z = tanh(A x) (per sample, or per point with 1x1 convolutions); heads: main (C), binary aux, real aux."""

    def __init__(self, dense: bool) -> None:
        super().__init__()
        layer = (lambda i, o: nn.Conv1d(i, o, 1)) if dense else nn.Linear
        self.enc, self.main, self.binary, self.real = layer(IN, D), layer(D, C), layer(D, 1), layer(D, 1)

    def encode(self, x):
        return torch.tanh(self.enc(x))

    def decode(self, z):
        return self.main(z), self.binary(z), self.real(z)

    def shared_parameters(self):
        return list(self.enc.parameters())

    def last_shared_parameters(self):
        return list(self.enc.parameters())


class Tiny(InMemoryDataset):
    """Targets per sample [class, binary, real] or per point [classes | binaries | reals] (N points each).
    ``ridge``: μ/2·‖θ‖² added to the main loss of every sample (a strongly convex lower problem for the FD test)."""

    name = "tiny"
    Config = DTGConfig  # unused
    provides = frozenset({"auxiliaries", "task_labels"})

    def __init__(self, dense: bool = False) -> None:
        super().__init__()
        self.dense = dense
        self.ridge: list[torch.Tensor] = []
        self.mu = 0.0

    def build_model(self, data, cfg, aux_outputs=0):
        return TinyNet(self.dense)

    def task_label_fields(self, data):
        return [LabelField("main", C), LabelField("binary", 2), LabelField("real", 0)]

    def task_labels(self, y):
        if not self.dense:
            return [y[:, 0].long(), y[:, 1].long(), y[:, 2]]
        return [y[:, :POINTS].long(), y[:, POINTS:2 * POINTS].long(), y[:, 2 * POINTS:]]

    def per_task_losses(self, outputs, y):
        main, binary, real = outputs
        labels = self.task_labels(y)
        losses = [F.cross_entropy(main, labels[0], reduction="none"),
                  F.binary_cross_entropy_with_logits(binary[:, 0], labels[1].to(binary.dtype), reduction="none"),
                  (real[:, 0] - labels[2]) ** 2]
        out = torch.stack(losses, dim=1)
        if self.ridge:
            penalty = 0.5 * self.mu * sum((p ** 2).sum() for p in self.ridge)
            out = torch.cat([out[:, :1] + penalty, out[:, 1:]], dim=1)
        return out


def tiny_data(n: int, dense: bool, seed: int = 0) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    shape = (n, IN, POINTS) if dense else (n, IN)
    x = torch.randn(*shape, generator=g)
    per = (n, POINTS) if dense else (n, 1)
    y = torch.cat([torch.randint(0, C, per, generator=g).float(), torch.randint(0, 2, per, generator=g).float(),
                   torch.randn(*per, generator=g)], dim=1)
    return TaskData(x, y, ["main", "binary", "real"])


def build(cfg: DTGConfig | None = None, dense: bool = False, n: int = 6, lr: float = 0.1, seed: int = 0):
    ds, data = Tiny(dense), tiny_data(n, dense)
    params = SimpleNamespace(profile=SimpleNamespace(model=None), train=SimpleNamespace(lr=lr))
    torch.manual_seed(seed)
    method = Method(METHODS.get("dtg_auxl"), data.num_tasks, cfg or DTGConfig(), None, ds, data, params)
    model = ds.build_model(data, None)
    return ds, data, method, model


def full_batch(data: TaskData, rows=None) -> Batch:
    rows = torch.arange(len(data)) if rows is None else torch.as_tensor(rows)
    return Batch(data.inputs[rows], data.targets[rows], rows, torch.ones(len(rows), dtype=torch.bool))


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("dense", [False, True])
def test_generator_shapes_per_sample_and_per_point(dense):
    ds, data, method, model = build(dense=dense)
    gen = method.generator
    assert gen.dense == dense and gen.feature_size == D and gen.num_classes == C
    batch = full_batch(data)
    losses, z = method.batch_losses(model, ds, batch)
    rows = len(data) * (POINTS if dense else 1)
    generated = gen.generate(z, ds, batch, gen.last_pairing[1])
    assert generated.feature.shape == (rows, D) and generated.label.shape == (rows, C)
    assert generated.scores.shape == (rows, C)
    assert torch.allclose(generated.label.sum(1), torch.ones(rows))
    assert generated.loss.shape == ((len(data), POINTS) if dense else (len(data),))
    # main, binary, real, generated; per point the dataset's loss images, the generated one on the same points
    assert losses.shape == ((len(data), 4, POINTS) if dense else (len(data), 4))
    if dense:
        assert torch.allclose(losses[:, 3], generated.loss)
    assert method.loss_names(data.task_names) == ["main", "binary", "real", "generated"]
    assert method.head_outputs() == 0  # the generated head is the generator's own (θ, in W's optimiser)
    assert {id(p) for p in gen.head.parameters()} <= {id(p) for p in method.joint_parameters()}


def test_generated_label_bias_and_forms():
    ds, data, method, model = build(DTGConfig(beta=5.0))
    batch = full_batch(data)
    z = model.encode(batch.x)
    gen = method.generator.generate(z, ds, batch, torch.arange(len(data)))
    y = batch.y[:, 0].long()
    assert torch.equal(gen.bias, F.one_hot(y, C).float())
    assert torch.allclose(gen.label, torch.softmax(gen.scores + 5.0 * gen.bias, 1))
    _, _, mean_method, _ = build(DTGConfig(label_form="mean"))
    g2 = mean_method.generator.generate(z, ds, batch, torch.arange(len(data)))
    assert torch.allclose(g2.label, (g2.bias + torch.softmax(g2.scores, 1)) / 2)
    # a hidden main label: no bias, the unknown index in the label generator
    hidden = Batch(batch.x, batch.y, batch.index, torch.tensor([False] + [True] * (len(data) - 1)))
    g3 = method.generator.generate(z, ds, hidden, torch.arange(len(data)))
    assert g3.bias[0].sum() == 0 and g3.bias[1:].sum() == len(data) - 1


# ------------------------------------------------------------------------ implicit gradient vs finite differences


@pytest.mark.parametrize("instance_reg", [False, True])
def test_implicit_gradient_through_the_generator_matches_finite_differences(instance_reg):
    torch.set_default_dtype(torch.float64)
    try:
        cfg = DTGConfig(hyper_every=1, neumann_lr=0.05, instance_reg=instance_reg, reg_weight=2.0,
                        max_hypergrad_norm=None)
        ds, data, method, model = build(cfg, n=6)
        method.double()
        gen = method.generator
        theta = [*model.parameters(), *gen.head.parameters()]
        ds.ridge, ds.mu = theta, 3.0  # a strongly convex lower problem: θ*(φ) is well defined
        lower = full_batch(data, [0, 1, 2, 3, 4, 5])
        perm = torch.tensor([3, 0, 5, 1, 2, 4])
        gen.last_pairing = (lower.index.clone(), perm)
        other = tiny_data(4, False, seed=1)
        upper = full_batch(other)  # the D'_p batch
        phi = method.outer.hyper.hparams

        def ctx():
            def refuse():
                raise AssertionError("DTG draws neither the aux set nor the outer training losses")
            return StepContext(1, list(model.parameters()), refuse, refuse, model=model, dataset=ds,
                               train_batch=lambda: upper, loss_scale=None, batch=lower)

        def lower_loss():
            return dtg_objectives(method, ctx())[0]

        def upper_value():
            return float(dtg_objectives(method, ctx())[1].detach())

        def solve():
            solve_lower(lambda: torch.autograd.grad(lower_loss(), theta, create_graph=True), theta, tol=1e-11)

        solve()
        train_loss, outer, _ = dtg_objectives(method, ctx())
        lam, _ = TrainCurvature(train_loss, theta).top_eigenvalue([torch.ones_like(p) for p in theta], 50)
        alpha = 0.5 / lam
        grads = neumann_hypergradient(train_loss, outer, theta, phi, 600, alpha)
        check_against_finite_differences(phi, theta, solve, upper_value, grads, floor=1e-4, abs_tol=1e-7)
    finally:
        torch.set_default_dtype(torch.float32)


# ----------------------------------------------------------------------------- pairing and the reorder stream


def test_shuffle_pairing_is_a_seeded_deterministic_permutation():
    a = shuffle_pairing(16, torch.Generator().manual_seed(3))
    assert sorted(a.tolist()) == list(range(16))
    assert torch.equal(a, shuffle_pairing(16, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, shuffle_pairing(16, torch.Generator().manual_seed(4)))
    # the generator's stream: seeded by the method's seed (the trainer builds the method under it)
    ds, data, m1, _ = build(seed=5)
    _, _, m2, _ = build(seed=5)
    _, _, m3, _ = build(seed=6)
    batch = full_batch(data)
    p1 = [m1.generator.new_pairing(batch) for _ in range(3)]
    p2 = [m2.generator.new_pairing(batch) for _ in range(3)]
    p3 = [m3.generator.new_pairing(batch) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(p1, p2)) and not all(torch.equal(a, b) for a, b in zip(p1, p3))
    assert not torch.equal(p1[0], p1[1])  # a new π every batch
    assert torch.equal(m1.generator.pairing_for(batch), p1[-1])  # the upper step reuses the lower step's π


def test_reorder_stream_is_independent_seeded_and_covers_the_training_set():
    data = tiny_data(40, False)
    train = np.arange(3, 35)

    def rows(role, seed, steps=4):
        stream = BatchStream(data, train, 8, stream_generator(seed, role), torch.device("cpu"))
        return [stream.next()[2] for _ in range(steps)]

    upper, lower = rows("outer", 0), rows("weights", 0)
    assert sorted(torch.cat(upper).tolist()) == train.tolist()  # one epoch of D'_p covers the training set once
    assert all(torch.equal(a, b) for a, b in zip(upper, rows("outer", 0)))  # seeded
    assert not all(torch.equal(a, b) for a, b in zip(upper, rows("outer", 1)))
    assert not all(torch.equal(a, b) for a, b in zip(upper, lower))  # not W's order

    # the upper step draws D'_p from the outer stream only: one batch per step, never the aux set
    ds, data, method, model = build(DTGConfig(hyper_every=1))
    lower_batch = full_batch(data, [0, 1, 2])
    method.batch_losses(model, ds, lower_batch)
    drawn = []

    def refuse():
        raise AssertionError("DTG must not draw the aux set or the generic outer losses")

    ctx = StepContext(1, list(model.parameters()), refuse, refuse, model=model, dataset=ds,
                      train_batch=lambda: drawn.append(1) or full_batch(data, [3, 4, 5]), batch=lower_batch)
    logs = method.after_step(ctx)
    assert drawn == [1] and "hypergrad_norm" in logs and math.isfinite(logs["upper_primary_loss"])


def test_fresh_hessian_batch_draws_its_own_batch():
    ds, data, method, model = build(DTGConfig(hyper_every=1, hessian_batch="fresh"))
    drawn = []
    ctx = StepContext(1, list(model.parameters()), None, None, model=model, dataset=ds,
                      train_batch=lambda: drawn.append(1) or full_batch(data, [len(drawn) % 6, 4, 5]))
    assert math.isfinite(method.after_step(ctx)["hypergrad_norm"]) and drawn == [1, 1]


def test_collapse_diagnostics():
    scores = torch.tensor([[0.0, 9.0, 0.0]] * 4)  # the learnable part: one peak for every input
    bias = F.one_hot(torch.tensor([0, 1, 2, 0]), 3).float()
    collapsed = Generated(torch.zeros(4, 2), torch.softmax(scores + 20 * bias, 1), scores, bias, torch.zeros(4))
    d = collapse_diagnostics(collapsed)
    assert d["dtg_score_classes"] == 1 and d["dtg_score_entropy"] < 0.01
    assert d["dtg_label_classes"] == 3 and d["dtg_label_entropy"] == pytest.approx(
        float(-(torch.tensor([0.5, 0.25, 0.25]) * torch.tensor([0.5, 0.25, 0.25]).log()).sum()), abs=1e-3)


# ------------------------------------------------------------------------------------------------ ablations


def _names(method):
    return {k: tuple(v.shape) for k, v in method.state_dict().items()}


def test_without_aux_labels_the_label_generator_ignores_them():
    for use, invariant in ((True, False), (False, True)):
        ds, data, method, model = build(DTGConfig(use_aux_labels=use))
        batch = full_batch(data)
        changed = batch.y.clone()
        changed[:, 1] = 1 - changed[:, 1]
        changed[:, 2] = changed[:, 2] + 3.0
        z = model.encode(batch.x)
        perm = torch.arange(len(data)).roll(1)
        a = method.generator.generate(z, ds, batch, perm)
        b = method.generator.generate(z, ds, Batch(batch.x, changed, batch.index, batch.labelled), perm)
        assert torch.equal(a.scores, b.scores) == invariant and torch.equal(a.label, b.label) == invariant
    # nothing else changes: the feature generator and the head are the same modules
    base, off = _names(build()[2]), _names(build(DTGConfig(use_aux_labels=False))[2])
    same = lambda names: {k: v for k, v in names.items() if not k.startswith("generator.label_generator")}
    assert same(base) == same(off)


def test_without_data_generation_there_is_no_feature_generator():
    ds, data, method, model = build(DTGConfig(generate_data=False))
    gen = method.generator
    assert gen.feature_generator is None
    base = build()[2]
    removed = set(_names(base)) - set(_names(method))
    assert removed and all(k.startswith(("generator.feature_generator", "generator.label_generator")) for k in removed)
    assert any(k.startswith("generator.feature_generator") for k in removed)
    assert not any(k.startswith("generator.feature_generator") for k in _names(method))
    ids = {id(p) for p in method.outer.hyper.hparams}
    assert ids == {id(p) for p in gen.label_generator.parameters()} | {id(method.combiner.omega)}
    batch = full_batch(data)
    z = model.encode(batch.x)
    out = gen.generate(z, ds, batch, torch.arange(len(data)).roll(1))
    assert torch.equal(out.feature, z)  # the primary input's own feature, relabelled
    # its labels only: the label generator reads (main, binary, real) of the sample, not of its pair
    assert len(gen.label_generator.fields) == 3 and len(base.generator.label_generator.fields) == 6


def test_without_instance_regularisation_the_explicit_term_is_gone():
    for reg in (True, False):
        ds, data, method, model = build(DTGConfig(instance_reg=reg))
        batch = full_batch(data, [0, 1, 2])
        method.batch_losses(model, ds, batch)
        ctx = StepContext(1, list(model.parameters()), None, None, model=model, dataset=ds,
                          train_batch=lambda: full_batch(data, [3, 4, 5]), batch=batch)
        _, outer, logs = dtg_objectives(method, ctx)
        direct = torch.autograd.grad(outer, method.outer.hyper.hparams, allow_unused=True)
        has_direct = any(g is not None and bool(g.abs().sum() > 0) for g in direct)
        assert has_direct == reg and ("instance_reg" in logs) == reg


def test_diversity_regulariser_is_the_negative_entropy_of_the_mean_scores():
    ds, data, method, model = build(DTGConfig(reg_kind="diversity"))
    batch = full_batch(data)
    gen = method.generator.generate(model.encode(batch.x), ds, batch, torch.arange(len(data)))
    mean = torch.softmax(gen.scores, 1).mean(0)
    assert float(method.generator.regulariser(gen).detach()) == pytest.approx(float((mean * mean.log()).sum().detach()))


@pytest.mark.parametrize("terms,linear,nonlinear", [("linear_mlp", 1, 1), ("mlp", 0, 1), ("mlp_mlp", 0, 2)])
def test_terms_switch(terms, linear, nonlinear):
    _, _, method, _ = build(DTGConfig(terms=terms))
    for net in (method.generator.label_generator, method.generator.feature_generator):
        kinds = [type(t) for t in net.terms]
        assert kinds.count(LinearTerm) == linear and kinds.count(NonlinearTerm) == nonlinear


def test_transformer_nonlinear_term_runs_the_hyper_step():
    ds, data, method, model = build(DTGConfig(nonlinear="transformer", hyper_every=1))
    assert all(t.kind == "transformer" for t in method.generator.label_generator.terms if isinstance(t, NonlinearTerm))
    base = {k for k in _names(build()[2]) if ".terms.1." not in k}
    assert {k for k in _names(method) if ".terms.1." not in k} == base  # only the nonlinear term differs
    batch = full_batch(data, [0, 1, 2])
    method.batch_losses(model, ds, batch)
    before = [p.detach().clone() for p in method.outer.hyper.hparams]
    ctx = StepContext(1, list(model.parameters()), None, None, model=model, dataset=ds,
                      train_batch=lambda: full_batch(data, [3, 4, 5]), batch=batch)
    logs = method.after_step(ctx)
    assert math.isfinite(logs["hypergrad_norm"])
    assert any(not torch.equal(a, b) for a, b in zip(before, method.outer.hyper.hparams))


def test_fixed_weights_switch():
    _, _, method, _ = build(DTGConfig(learn_weights=False))
    assert method.combiner.hyper_parameters() == []
    assert torch.allclose(method.combiner.weights(), torch.ones(3))
    losses = torch.rand(4, 4)
    assert float(method.training_loss(losses)) == pytest.approx(float(losses.mean(0).sum()))


def test_selected_auxiliaries_by_name():
    _, data, method, _ = build(DTGConfig(auxiliaries=["real"]))
    assert method.loss_names(data.task_names) == ["main", "real", "generated"] and method.num_tasks == 3
    with pytest.raises(ValueError, match="not auxiliaries"):
        build(DTGConfig(auxiliaries=["nope"]))


# ------------------------------------------------------------------------------------- short training runs


def _tiny_run(name: str, tmp_path: Path, raw: dict):
    params = parse_params({"dataset": name, "method": "dtg_auxl", "seeds": [0], "datasets": {name: raw},
                           "methods": {"dtg": {"hyper_every": 2}}})
    ds = DATASETS.get(name)(params.profile.model)
    ds.prepare(params.dataset_config, tmp_path)
    data = ds.load(tmp_path)
    return train_run(ds, data, ds.make_splits(data, params.split), params, 0, torch.device("cpu"))


DIAGNOSTICS = {"dtg_label_classes", "dtg_label_entropy", "dtg_score_classes", "dtg_score_entropy"}


@pytest.mark.parametrize("name,raw", [
    ("cub", {"prepare": {"image_size": 16, "standin_num_classes": 4, "standin_images_per_class": 6},
             "split": {"k_shot": 2, "aux": 2}, "train": {"steps": 4, "eval_every": 4, "batch_size": 4},
             "model": {"backbone_width": 4}}),
    ("demo", {"prepare": {"shapes_per_category": 5, "grid": 6}, "split": {"aux": 2, "val": 4, "test": 4},
              "train": {"steps": 4, "eval_every": 4, "batch_size": 4},
              "model": {"width": 4, "emb": 8, "k": 4, "generator_width": 4}}),
])
def test_a_few_steps_move_phi_with_finite_losses_and_diagnostics(name, raw, tmp_path):
    result = _tiny_run(name, tmp_path, raw)
    h = result.history
    assert h["hyper_step"] == [2, 4] and all(math.isfinite(v) for v in h["hypergrad_norm"])
    assert all(math.isfinite(v) for v in h["train_loss"])
    moved = [k for k, v in result.method_state_initial.items()
             if k.startswith("generator.label_generator") and not torch.equal(v, result.method_state_final[k])]
    assert moved and any(k.startswith("generator.feature_generator") and
                         not torch.equal(v, result.method_state_final[k])
                         for k, v in result.method_state_initial.items())
    assert not torch.equal(result.method_state_initial["combiner.omega"], result.method_state_final["combiner.omega"])
    logs = [entry for entry in h["method_log"]]
    assert [e["step"] for e in logs if DIAGNOSTICS <= set(e)] == [1, 2, 3, 4]  # every batch
    for e in logs:
        assert 1 <= e["dtg_label_classes"] and e["dtg_label_entropy"] >= 0
    assert all(len(w) == len(h["weights"][0]) for w in h["weights"])
