#!/usr/bin/env python
"""How much direction the IFT hypergradient keeps when its batches shrink (a report, not a test).

AuxiLearn's hyper step costs about a dozen backward-sized passes over its two batches (L_T on a training
batch, L_A on an auxiliary batch), so its cost scales with ``methods.bilevel.hyper_train_batch`` /
``hyper_aux_batch``; the authors' reference computes it on 2-16 images. This measures what a smaller batch
does to the hypergradient's direction:

1. the CNN workload of ``bench_overhead.py`` (3 conv layers, K = 5 auxiliary heads) is trained for
   ``--warmup-steps`` AuxiLearn inner steps on data labelled by a random teacher network of the same shape
   (so the tasks are learnable and related through the teacher's trunk);
2. at that (W, φ), the reference hypergradient uses the whole training pool for L_T and the whole auxiliary
   pool for L_A (``--train-pool``, ``--aux-pool``), with α = c / λ̂_max of the full-batch ∇²_W L_T and
   J = ``neumann_steps`` of ``BilevelConfig()``;
3. for each batch size b, ``--draws`` hypergradients on random batches of b training and b auxiliary
   samples (the same α and J) are compared with it by cosine: the mean and the minimum over draws, and the
   cosine of their mean (φ's optimiser has momentum 0.9, so its step follows an average of ~10 hyper steps;
   the mean of the draws is an upper bound of that effect, as W moves between hyper steps);
4. each hyper step's time (the pipeline's ``neumann_hypergradient``, both forwards included) is reported next
   to the full-batch one, median over the draws;
5. the same for ``curvature_batch`` = b alone: the Hessian of the Neumann series on b random training samples,
   L_A and the mixed term ∇φ∇W L_T · series on the full pools (the mixed term in forward mode, as the hyper
   step runs it), so the loss of direction that comes from the sub-sampled curvature is seen on its own;
6. on the full pools, the hypergradient with the IFT over the top of W only (``implicit_scope: top``: the last
   conv layer and the heads, the rest held out of autograd, α = c / λ̂_max of that block's Hessian).

Run from the repository root:  python bench/bench_hyper_batch.py [--draws 10] [--threads 1]
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import click

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SEED = 0


@click.command()
@click.option("--train-pool", default=512, show_default=True, help="training samples of the full-batch L_T")
@click.option("--aux-pool", default=128, show_default=True, help="auxiliary samples of the full-batch L_A")
@click.option("--sizes", default="2,4,8,16,32,64,128", show_default=True, help="hyper batch sizes b")
@click.option("--draws", default=10, show_default=True, help="random batches per size")
@click.option("--warmup-steps", default=100, show_default=True, help="inner steps before the measurement")
@click.option("--threads", default=1, show_default=True, help="torch.set_num_threads")
@click.option("--method", "method_name", default="auxilearn_nonlinear", show_default=True,
              type=click.Choice(["auxilearn_linear", "auxilearn_deep_linear", "auxilearn_nonlinear"]))
def main(train_pool: int, aux_pool: int, sizes: str, draws: int, warmup_steps: int, threads: int,
         method_name: str) -> None:
    """Cosine of small-batch hypergradients with the full-batch one, and their time."""
    import torch
    import torch.nn.functional as F

    from bench.bench_overhead import TASKS, _build, _per_task_losses
    from pipeline.methods.bilevel import BilevelConfig, TrainCurvature, directional_derivative, neumann_hypergradient
    from pipeline.methods.combiners.auxnet import AuxiLearnConfig
    from pipeline.methods.outer.implicit import held_fixed, in_scope
    from pipeline.core.registry import METHODS

    try:
        batch_sizes = sorted({int(b) for b in sizes.split(",")})
    except ValueError:
        raise click.BadParameter(f"--sizes must be comma-separated integers, got {sizes!r}") from None
    for name, value in (("--train-pool", train_pool), ("--aux-pool", aux_pool), ("--draws", draws),
                        ("--threads", threads), ("--sizes", min(batch_sizes))):
        if value < 1:
            raise click.BadParameter(f"{name} must be positive")
    if max(batch_sizes) > min(train_pool, aux_pool):
        raise click.BadParameter(f"--sizes: {max(batch_sizes)} exceeds a pool (train {train_pool}, aux {aux_pool})")
    torch.set_num_threads(threads)
    started = time.perf_counter()
    device = torch.device("cpu")

    # Data: inputs from _build's generator, targets from a random teacher of the same architecture.
    model, (x, _), (x_aux, _) = _build("cnn", train_pool, aux_pool, device)
    with torch.random.fork_rng():
        teacher, _, _ = _build("cnn", 1, 1, device)
        torch.manual_seed(SEED + 10)  # _build seeds every model with SEED: the teacher gets its own weights
        for module in teacher.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    @torch.no_grad()
    def labels(inputs: torch.Tensor) -> list[torch.Tensor]:
        # standardised per output, so that every class occurs and regression targets have unit variance
        outs = [(out - out.mean(0)) / out.std(0).clamp_min(1e-12) for out in teacher(inputs)]
        return [out.argmax(1) if kind == "cls" else out.squeeze(-1) for (kind, _), out in zip(TASKS, outs)]

    ys, ys_aux = labels(x), labels(x_aux)
    bilevel = BilevelConfig()
    torch.manual_seed(SEED + 2)
    method = METHODS.get(method_name)(len(TASKS), AuxiLearnConfig(), bilevel)
    params = [p for p in model.parameters() if p.requires_grad]
    phi = method.outer.hyper.hparams
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(SEED + 3)
    for step in range(warmup_steps):
        idx = torch.randint(train_pool, (64,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        step_losses = _per_task_losses(model(x[idx]), [y[idx] for y in ys])
        if step == 0:  # as train_run: φ calibrated at the first batch's losses
            method.start(step_losses.detach())
        method.training_loss(step_losses).backward()
        optimizer.step()
    with torch.no_grad():
        main_acc = float((model(x_aux)[0].argmax(1) == ys_aux[0]).float().mean())

    def losses(idx: torch.Tensor, idx_aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        train_loss = method.training_loss(_per_task_losses(model(x[idx]), [y[idx] for y in ys]))
        aux_loss = F.cross_entropy(model(x_aux[idx_aux])[0], ys_aux[0][idx_aux])
        return train_loss, aux_loss

    def hypergradient(idx: torch.Tensor, idx_aux: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        train_loss, aux_loss = losses(idx, idx_aux)
        grads = neumann_hypergradient(train_loss, aux_loss, params, phi, bilevel.neumann_steps, alpha)
        return torch.cat([g.flatten() for g in grads]), time.perf_counter() - t0

    def curvature_hypergradient(idx: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
        """The Hessian on ``idx``, L_A and the mixed term on the whole pools (``curvature_batch``)."""
        t0 = time.perf_counter()
        head_loss, aux_loss = losses(idx, everything_aux)

        def slope(direction: list[torch.Tensor]) -> torch.Tensor:
            return directional_derivative(model, params, direction, lambda: method.training_loss(
                _per_task_losses(model(x), ys)))

        grads = neumann_hypergradient(head_loss, aux_loss, params, phi, bilevel.neumann_steps, alpha, slope)
        return torch.cat([g.flatten() for g in grads]), time.perf_counter() - t0

    everything, everything_aux = torch.arange(train_pool), torch.arange(aux_pool)
    train_loss, _ = losses(everything, everything_aux)
    lam, _ = TrainCurvature(train_loss, params).top_eigenvalue([torch.ones_like(p) for p in params],
                                                                2 * bilevel.curvature_iterations)
    del train_loss
    alpha = bilevel.curvature_safety / lam
    full, full_time = hypergradient(everything, everything_aux, alpha)

    click.echo("Hyper-batch benchmark: cosine of the hypergradient on b + b samples with the full-batch one")
    click.echo(f"  torch {torch.__version__} | cpu | threads {torch.get_num_threads()} | seed {SEED} | "
               f"method {method_name}, J = {bilevel.neumann_steps}, alpha = {bilevel.curvature_safety} / "
               f"lambda_max(full) = {alpha:.4g}")
    click.echo(f"  CNN workload of bench_overhead.py, teacher labels; W after {warmup_steps} inner steps "
               f"(main accuracy on the auxiliary pool {main_acc:.2f}); full batch: L_T on {train_pool}, "
               f"L_A on {aux_pool} samples, hypergradient norm {float(full.norm()):.3g}, {full_time * 1e3:.0f} ms")
    click.echo(f"  {'b':>5}{'mean cos':>10}{'min cos':>10}{f'cos(mean of {draws})':>20}{'time/step':>12}"
               f"{'x full':>8}")
    def table(draw: Callable[[int], tuple[torch.Tensor, float]]) -> None:
        for b in batch_sizes:
            cosines, times, vectors = [], [], []
            for _ in range(draws):
                g, seconds = draw(b)
                cosines.append(float(F.cosine_similarity(g, full, dim=0)))
                times.append(seconds)
                vectors.append(g)
            mean_cos = float(F.cosine_similarity(torch.stack(vectors).mean(0), full, dim=0))
            t = statistics.median(times)
            click.echo(f"  {b:>5}{statistics.mean(cosines):>10.3f}{min(cosines):>10.3f}{mean_cos:>20.3f}"
                       f"{t * 1e3:>10.0f} ms{t / full_time:>7.2f}x")

    table(lambda b: hypergradient(torch.randperm(train_pool, generator=gen)[:b],
                                  torch.randperm(aux_pool, generator=gen)[:b], alpha))
    click.echo(f"  curvature_batch = b: the Hessian on b training samples; L_A and the mixed term on the full pools")
    table(lambda b: curvature_hypergradient(torch.randperm(train_pool, generator=gen)[:b], alpha))

    top = in_scope(model, params, "top")
    with held_fixed([p for p in params if id(p) not in {id(q) for q in top}]):
        train_loss, _ = losses(everything, everything_aux)
        lam_top, _ = TrainCurvature(train_loss, top).top_eigenvalue([torch.ones_like(p) for p in top],
                                                                     2 * bilevel.curvature_iterations)
        del train_loss
        t0 = time.perf_counter()
        train_loss, aux_loss = losses(everything, everything_aux)
        grads = neumann_hypergradient(train_loss, aux_loss, top, phi, bilevel.neumann_steps,
                                      bilevel.curvature_safety / lam_top)
        top_time = time.perf_counter() - t0
    cosine = float(F.cosine_similarity(torch.cat([g.flatten() for g in grads]), full, dim=0))
    click.echo(f"  implicit_scope = top on the full pools (IFT over the last conv layer and the heads, "
               f"{sum(p.numel() for p in top):,} of {sum(p.numel() for p in params):,} parameters): cosine "
               f"{cosine:.3f}, {top_time * 1e3:.0f} ms ({top_time / full_time:.2f}x full)")
    click.echo(f"total benchmark wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
