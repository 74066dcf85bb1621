#!/usr/bin/env python
"""MAXL's θ2 update: the project's second order and first order against the paper's algorithm (a report, not a
test).

On one network in one process, interleaved repeat by repeat (so load drift hits all alike), this times

  plain       one STL step of the primary network (forward, cross-entropy, backward, SGD step): the unit;
  reference   MAXL Alg. 1's θ2 meta-gradient as the paper writes it (``reference_meta_gradients`` below):
              copy the primary network, one virtual SGD step of its weights on ℓ_main + τ·ℓ_aux with
              ``create_graph``, the main loss (+ the entropy term) at the fast weights, backward to θ2;
  maxl        ``LookAheadUpdate.meta_gradients`` (method ``maxl``): the same gradient, its second-order term by
              one forward-mode pass and output-level gradients (see ``pipeline/methods/outer/lookahead.py``);
  maxl_first_order  ``FirstOrderLookAhead.meta_gradients``: the reference's finite-difference approximation;
  w_backward  MAXL's W step up to its optimiser step: the trainer's objective (``batch_objective``: the label
              network's labels, ℓ_main + τ·ℓ_gen) and its backward;
  maxl (step), maxl_first_order (step)  ``w_backward`` then the same meta-gradient with ``w_gradient=True``, as
              ``maxl_meta_batch: step`` runs it: ∇θ1 L_T is W's own gradient, so the θ2 update costs the
              difference to ``w_backward``;

and prints each one's time per step, its ratio to ``plain``, reference / maxl and reference / maxl_first_order
(targets: ≥ 1.5x and ≥ 4x) for both meta batches, a full MAXL training step's ratio to STL (W's step + θ2
update), and the largest difference between the reference's meta-gradient and maxl's, with and without W's
gradient reused (they must agree to float tolerance; ``tests/test_maxl_meta.py`` checks both in float64).

Network: the CIFAR-10 stand-in's primary network (``image_classifier`` with its default backbone, VGG-16 at
width 1/8, with the generated-task head) and its label generator, built by the pipeline from in-memory random
3x32x32 images (``--batch-size`` of them) with 10 classes; θ2 and W from fixed seeds.

Run from the repository root:  python bench/bench_maxl.py [--batch-size 32] [--repeats 7] [--threads 1]
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SEED = 0
WARMUP_ITERS = 2
REPEAT_SECONDS = 0.5
SPEED_TARGETS = {"maxl": 1.5, "maxl_first_order": 4.0}  # reference time / method time


def reference_meta_gradients(outer: Any, model: Any, batch: Any, loss_scale: Any, lr: float,
                             clock: dict[str, float] | None = None) -> tuple[Any, list]:
    """(meta objective, ∇θ2) by MAXL Alg. 1 as written: θ1⁺ = θ1 − α∇θ1(ℓ_main + τ·ℓ_aux) on a copy of the
    network, kept in the graph (create_graph), then ℓ_main(θ1⁺) + the θ2 terms, differentiated w.r.t. θ2.
    ``outer`` (a ``LookAheadUpdate``) supplies the losses, so both compute the same objective; the look-ahead
    is plain SGD with rate ``lr`` (no momentum, no weight decay: ``meta_gradients(..., optimizer=None)``)."""
    import torch
    from torch.func import functional_call

    from pipeline.methods.base import scale_losses
    from pipeline.methods.generators.labels import WithGeneratedHead

    tick = _Ticker(clock)
    labels = outer.labels
    fast = copy.deepcopy(WithGeneratedHead(model))  # the copy: its BN statistics move, not the model's
    named = [(k, p) for k, p in fast.named_parameters() if p.requires_grad]
    tick("copy of W")
    soft = labels.soft_labels(batch, track_hparams=True)
    tick("label network forward")
    inner = scale_losses(labels.losses_from_outputs(fast(batch.x), batch, soft), loss_scale, batch.labelled)
    tick("W forward at theta1")
    grads = torch.autograd.grad(inner.mean(0).sum(), [p for _, p in named], create_graph=True, allow_unused=True)
    tick("create_graph backward at theta1")
    fast_weights = {k: p if g is None else p - lr * g for (k, p), g in zip(named, grads)}
    after = labels.losses_from_outputs(functional_call(fast, fast_weights, (batch.x,)), batch, soft.detach())
    meta = after[:, 0].mean() + outer.theta2_terms(soft)
    tick("W forward at theta1+ (fast weights)")
    theta2 = list(labels.label_net.parameters())
    found = torch.autograd.grad(meta, theta2, allow_unused=True)
    tick("backward to theta2 (through both W graphs and the label network)")
    return meta.detach(), [torch.zeros_like(p) if g is None else g for g, p in zip(found, theta2)]


class _Ticker:
    """Adds the seconds since its last call to ``clock[label]`` (nothing when ``clock`` is None)."""

    def __init__(self, clock: dict[str, float] | None) -> None:
        self.clock, self.last = clock, time.perf_counter()

    def __call__(self, label: str) -> None:
        if self.clock is not None:
            now = time.perf_counter()
            self.clock[label] = self.clock.get(label, 0.0) + now - self.last
            self.last = now


def project_parts(outer: Any, model: Any, batch: Any, loss_scale: Any, clock: dict[str, float],
                  w_gradient: bool = False) -> None:
    """``meta_gradients`` of ``outer`` (maxl or maxl_first_order) in its three stages, each timed into ``clock``
    (``w_gradient``: W's ``.grad`` holds ∇θ1 L_T, as in ``maxl_meta_batch: step``)."""
    import torch

    tick = _Ticker(clock)
    if type(outer).__name__ == "FirstOrderLookAhead":
        outer.meta_gradients(model, batch, loss_scale, None, w_gradient)
        tick("all stages (first order)")
        return
    ahead = outer.lookahead_direction(model, batch, loss_scale, None, w_gradient)
    tick("label net forward; W forward+backward at theta1+" if w_gradient else
         "label net forward; W forward+backward at theta1 and at theta1+ (no graph kept)")
    coupling = outer.coupling(ahead, batch, loss_scale)
    tick("forward-mode pass along e (J_o e) + output-level gradient")
    torch.autograd.grad(outer.theta2_terms(ahead.soft) - coupling, list(outer.labels.label_net.parameters()),
                        allow_unused=True)
    tick("backward to theta2 (the label network only)")


def build(method: str, batch_size: int, dtype: Any = None) -> SimpleNamespace:
    """The CIFAR-10 stand-in's network with a generated head, ``method``'s roles, a batch and τ (in memory)."""
    import torch

    from pipeline.datasets.shared.base import TaskData
    from pipeline.methods.base import Batch, build_method
    from pipeline.methods.generators.labels import LabelsConfig
    from pipeline.core.registry import DATASETS
    from pipeline.core.schema import TrainConfig

    dataset = DATASETS.get("cifar10")()
    g = torch.Generator().manual_seed(SEED)
    n = batch_size
    targets = (torch.arange(n) % 10)[:, None].float()
    data = TaskData(torch.rand(n, 3, 32, 32, generator=g), targets, ["class"],
                    {"num_classes": 10, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    model_cfg = dataset.ModelConfig()
    sections = {"labels": LabelsConfig()}
    params = SimpleNamespace(method=method, device="cpu", seeds=[SEED], profile=SimpleNamespace(model=model_cfg),
                             train=TrainConfig(steps=10, batch_size=batch_size, optimizer="sgd", lr=0.1),
                             method_config=lambda section: sections[section])
    torch.manual_seed(SEED)
    roles = build_method(method, data.num_tasks, params, dataset, data)
    torch.manual_seed(SEED + 1)
    model = dataset.build_model(data, model_cfg, aux_outputs=roles.head_outputs())
    if dtype is not None:
        roles, model, data = roles.to(dtype), model.to(dtype), TaskData(data.inputs.to(dtype), data.targets.to(dtype),
                                                                       data.task_names, data.meta)
    batch = Batch(data.inputs, data.targets, torch.arange(n), torch.ones(n, dtype=torch.bool))
    scale = torch.tensor([1.0, 1.0], dtype=data.inputs.dtype)
    return SimpleNamespace(dataset=dataset, data=data, method=roles, model=model, batch=batch, scale=scale,
                           lr=params.train.lr)


@click.command()
@click.option("--batch-size", default=32, show_default=True, help="images per step")
@click.option("--repeats", default=7, show_default=True, help="timed repeats (median reported)")
@click.option("--threads", default=1, show_default=True, help="torch.set_num_threads")
def main(batch_size: int, repeats: int, threads: int) -> None:
    """Time MAXL's θ2 update (second order, first order) against the paper's algorithm, interleaved."""
    import torch
    import torch.nn.functional as F

    from pipeline.engine.training import batch_objective

    for name, value in (("--batch-size", batch_size), ("--repeats", repeats), ("--threads", threads)):
        if value < 1:
            raise click.BadParameter(f"{name} must be positive")
    torch.set_num_threads(threads)
    started = time.perf_counter()
    second, first = build("maxl", batch_size), build("maxl_first_order", batch_size)
    model, batch, scale, lr = second.model, second.batch, second.scale, second.lr
    outer2, outer1 = second.method.outer, first.method.outer
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)

    def plain() -> None:  # STL: the main head only
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model.decode(model.encode(batch.x))[0], batch.y[:, 0].long()).backward()
        optimizer.step()

    def w_backward(method: Any) -> None:  # MAXL's W step before its optimiser step, as train_run takes it
        optimizer.zero_grad(set_to_none=True)
        method.training_loss(batch_objective(method, model, second.dataset, batch, scale)[0]).backward()

    def with_w_gradient(method: Any) -> None:
        w_backward(method)
        method.outer.meta_gradients(model, batch, scale, None, w_gradient=True)

    steps = {
        "plain": plain,
        "reference": lambda: reference_meta_gradients(outer2, model, batch, scale, lr),
        "maxl": lambda: outer2.meta_gradients(model, batch, scale, None),
        "maxl_first_order": lambda: outer1.meta_gradients(model, batch, scale, None),
        "w_backward": lambda: w_backward(second.method),
        "maxl_step": lambda: with_w_gradient(second.method),
        "maxl_first_order_step": lambda: with_w_gradient(first.method),
    }
    # the same W for all: the meta-gradients are taken before any timed plain step moves it
    _, ref = steps["reference"]()
    _, ours = steps["maxl"]()
    _, fo = steps["maxl_first_order"]()
    w_backward(second.method)
    _, ours_step = outer2.meta_gradients(model, batch, scale, None, w_gradient=True)
    flat = {k: torch.cat([g.flatten() for g in v])
            for k, v in (("reference", ref), ("maxl", ours), ("fo", fo), ("step", ours_step))}
    diff = float((flat["maxl"] - flat["reference"]).abs().max())
    diff_step = float((flat["step"] - flat["reference"]).abs().max())
    scale_ref = float(flat["reference"].abs().max())
    fo_cos = float(F.cosine_similarity(flat["fo"], flat["reference"], dim=0))

    def timed(kind: str, iters: int) -> float:
        t0 = time.perf_counter()
        for _ in range(iters):
            steps[kind]()
        return (time.perf_counter() - t0) / iters

    iters = {}
    for kind in steps:
        for _ in range(WARMUP_ITERS):
            single = timed(kind, 1)
        iters[kind] = max(1, round(REPEAT_SECONDS / max(single, 1e-6)))
    samples: dict[str, list[float]] = {kind: [] for kind in steps}
    for _ in range(repeats):
        for kind in steps:
            samples[kind].append(timed(kind, iters[kind]))

    parts: dict[str, list[dict[str, float]]] = {"reference": [], "maxl": [], "maxl (step)": []}
    for _ in range(repeats):  # where the time goes, one call each per repeat
        clock: dict[str, float] = {}
        reference_meta_gradients(outer2, model, batch, scale, lr, clock)
        parts["reference"].append(clock)
        clock = {}
        project_parts(outer2, model, batch, scale, clock)
        parts["maxl"].append(clock)
        w_backward(second.method)
        clock = {}
        project_parts(outer2, model, batch, scale, clock, w_gradient=True)
        parts["maxl (step)"].append(clock)

    # the θ2 update with W's gradient reused costs what it adds to W's backward
    for kind in ("maxl_step", "maxl_first_order_step"):
        samples[kind] = [t - w for t, w in zip(samples[kind], samples["w_backward"])]

    def per_repeat(a: str, b: str) -> float:
        return statistics.median([x / y for x, y in zip(samples[a], samples[b])])

    n_w = sum(p.numel() for p in params)
    n_theta2 = sum(p.numel() for p in outer2.labels.label_net.parameters())
    click.echo("MAXL benchmark: theta2's meta-gradient, the paper's algorithm against the project's (nothing asserted)")
    click.echo(f"  torch {torch.__version__} | cpu | threads {torch.get_num_threads()} | seed {SEED} | batch {batch_size} "
               f"| 3x32x32, 10 classes | backbone "
               f"{second.dataset.ModelConfig().backbone} width {second.dataset.ModelConfig().resolved_width}")
    click.echo(f"  {n_w:,} parameters in W (with the generated head), {n_theta2:,} in theta2 (label generator)")
    click.echo(f"  time: median of {repeats} interleaved repeats; ratios = median of per-repeat ratios")
    click.echo(f"  {'measurement':<44}{'time/step':>12}{'x plain':>9}   iters/repeat")
    labels = {"plain": "plain step (STL)", "reference": "reference (paper's algorithm, create_graph)",
              "maxl": "maxl (second order, forward-mode term)", "maxl_first_order": "maxl_first_order (finite diff.)",
              "w_backward": "W's MAXL step before its update",
              "maxl_step": "maxl, meta batch step (added to W's step)",
              "maxl_first_order_step": "maxl_first_order, meta batch step (added)"}
    width = max(map(len, labels.values())) + 2
    for kind in steps:
        t = statistics.median(samples[kind])
        click.echo(f"  {labels[kind]:<{width}}{t * 1e3:>9.1f} ms{per_repeat(kind, 'plain'):8.2f}x   {iters[kind]}")
    for meta_batch, suffix in (("fresh (default)", ""), ("step", "_step")):
        click.echo(f"  maxl_meta_batch: {meta_batch}")
        for kind, target in SPEED_TARGETS.items():
            speedup = per_repeat("reference", kind + suffix)
            verdict = "meets target" if speedup >= target else "below target"
            click.echo(f"    speed-up reference / {kind}: {speedup:.2f}x   target >= {target:.1f}x: {verdict}")
    # a whole MAXL step: W's step (w_backward; its optimiser step is negligible) plus the θ2 update
    for kind in ("reference", "maxl", "maxl_first_order", "maxl_step", "maxl_first_order_step"):
        whole = statistics.median([(w + m) / p for p, w, m in zip(samples["plain"], samples["w_backward"],
                                                                    samples[kind])])
        click.echo(f"  MAXL training step with {kind} / STL step: {whole:.2f}x")
    plain_time = statistics.median(samples["plain"])
    for kind, calls in parts.items():
        click.echo(f"  where {kind}'s time goes (median of {repeats} single calls; x plain step):")
        for label in calls[0]:
            t = statistics.median([c[label] for c in calls])
            click.echo(f"    {label:<78}{t * 1e3:>9.1f} ms{t / plain_time:7.2f}x")
    click.echo(f"  max |maxl - reference| over theta2's gradient: {diff:.3g}, with W's gradient reused {diff_step:.3g} "
               f"(max |reference| {scale_ref:.3g}); cosine(maxl_first_order, reference) {fo_cos:.5f}")
    click.echo(f"total benchmark wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
