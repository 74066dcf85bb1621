#!/usr/bin/env python
"""Wall time and peak memory of AuxiLearn relative to plain single-task training (a report, not a test).

For a small MLP and a small CNN, each with a main classification head and K = 5 auxiliary heads,
this measures

  plain  one STL step: forward, main-task loss, backward, SGD step on W;
  inner  one AuxiLearn inner step: forward, per-sample per-task losses [B, 1+K],
         L_T = method.training_loss(losses) (via ``method.backward``), backward, SGD step on W;
  hyper  one hypergradient update, as ``AuxiLearn.after_step`` does it when it is due: a forward on a
         training batch (L_T) and one on an auxiliary batch (main loss), then
         ``HyperOptimizer.step(train_loss, aux_loss, params)`` (J-term Neumann IFT + SGD on φ);

and prints each one's ratio to ``plain`` from the same run, the amortised AuxiLearn overhead
(N·inner + hyper) / (N·plain) for N = hyper_every and J = neumann_steps of the method's config, and
the peak-memory ratios, next to the targets (time ≤ 1.15× STL, peak memory ≤ 1.5× STL).

Every measurement runs in fresh ``spawn`` subprocesses: one for its time, one for its peak memory
(so neither sees another's allocations). Time is the median over ``--repeats`` repeats of the mean
per-step ``time.perf_counter`` time, after warm-up. Peak memory is taken over a baseline read once the
model, data, method and optimiser are built (and one no-grad forward has run, so lazy library set-up
is not charged to a step):
  CPU   growth of ``ru_maxrss``. Its high-water mark is first reset to the current RSS through
        /proc/self/clear_refs where Linux allows it, so import-time peaks do not hide the step's, and
        the memory process runs with MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave RSS;
  CUDA  ``torch.cuda.max_memory_allocated`` over ``memory_allocated`` after ``reset_peak_memory_stats``.
The parent process imports neither torch nor the pipeline: a spawned child inherits its parent's
``ru_maxrss`` at fork time, so a heavy parent would mask the children's peaks.

Run from the repository root:  python bench/bench_overhead.py [--batch-size 128] [--threads 1]
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import click

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # spawned children inherit sys.path, so they find ``pipeline`` too

SEED = 0
NUM_AUX = 5  # K
METHOD_NAME = "auxilearn_nonlinear"
TIME_TARGET = 1.15  # amortised AuxiLearn time / STL time
MEMORY_TARGET = 1.5  # AuxiLearn peak memory / STL peak memory
WARMUP_ITERS = 3
REPEAT_SECONDS = 0.25  # each timed repeat runs enough iterations to last about this long
# Memory processes only: glibc serves every block ≥ 64 KiB by mmap and unmaps it on free, so RSS follows
# the live tensors instead of what malloc keeps cached (which made equal workloads differ by ~15 MiB).
# It slows allocation down, so timing runs in separate processes with the default allocator.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}

# Task 0 is the main task; auxiliaries alternate regression (MSE) and 4-way classification.
TASKS: list[tuple[str, int]] = [("cls", 10)] + [("reg", 1) if k % 2 == 0 else ("cls", 4) for k in range(NUM_AUX)]

WORKLOADS = {
    "mlp": "MLP 64 -> 128 -> 128 (ReLU)",
    "cnn": "CNN 3x32x32, 3x [conv3x3(32) + ReLU], max-pool after the first two, global avg-pool",
}
KINDS = ("plain", "inner", "hyper")


# ---------------------------------------------------------------------------------------------
# Child side: everything that touches torch is imported here, in the spawned process.
# ---------------------------------------------------------------------------------------------

def _build(workload: str, batch_size: int, aux_batch_size: int, device: Any) -> tuple[Any, ...]:
    import torch
    from torch import nn

    class MultiHead(nn.Module):
        def __init__(self, trunk: nn.Module, features: int) -> None:
            super().__init__()
            self.trunk = trunk
            self.heads = nn.ModuleList(nn.Linear(features, dim) for _, dim in TASKS)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            h = self.trunk(x)
            return [head(h) for head in self.heads]

    if workload == "mlp":
        input_shape: tuple[int, ...] = (64,)
        trunk = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        features = 128
    elif workload == "cnn":
        input_shape = (3, 32, 32)
        trunk = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        features = 32
    else:
        raise ValueError(workload)

    torch.manual_seed(SEED)
    model = MultiHead(trunk, features).to(device)
    gen = torch.Generator().manual_seed(SEED + 1)

    def batch(n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = torch.randn(n, *input_shape, generator=gen)
        ys = [torch.randint(dim, (n,), generator=gen) if kind == "cls" else torch.randn(n, generator=gen)
              for kind, dim in TASKS]
        return x.to(device), [y.to(device) for y in ys]

    return model, batch(batch_size), batch(aux_batch_size)


def _per_task_losses(outputs: list[Any], targets: list[Any]) -> Any:
    """Per-sample per-task losses [B, 1+K]; column 0 is the main task."""
    import torch
    import torch.nn.functional as F

    cols = [F.cross_entropy(out, y, reduction="none") if kind == "cls" else (out.squeeze(-1) - y) ** 2
            for (kind, _), out, y in zip(TASKS, outputs, targets)]
    return torch.stack(cols, dim=1)


def _rss_kib() -> int:
    """ru_maxrss in KiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def _reset_rss_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from pipeline.methods import METHODS
    from pipeline.methods.auxilearn import AuxiLearnConfig

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    device = torch.device("cuda" if spec["device"] == "auto" and torch.cuda.is_available()
                          else "cpu" if spec["device"] == "auto" else spec["device"])
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    model, (x, ys), (x_aux, ys_aux) = _build(spec["workload"], spec["batch_size"], spec["aux_batch_size"], device)
    method = METHODS.get(METHOD_NAME)(len(TASKS), AuxiLearnConfig()).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def plain_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x)[0], ys[0])
        loss.backward()
        optimizer.step()

    def inner_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        method.backward(_per_task_losses(model(x), ys))  # L_T = method.training_loss(losses); backward
        optimizer.step()

    def hyper_forwards() -> tuple[Any, Any]:  # what AuxiLearn.after_step builds before HyperOptimizer.step
        train_loss = method.training_loss(_per_task_losses(model(x), ys))
        aux_loss = _per_task_losses(model(x_aux), ys_aux)[:, 0].mean()
        return train_loss, aux_loss

    def hyper_step() -> tuple[float, float]:
        t0 = time.perf_counter()
        train_loss, aux_loss = hyper_forwards()
        sync()
        t1 = time.perf_counter()
        method.hyper.step(train_loss, aux_loss, params)
        sync()
        return t1 - t0, time.perf_counter() - t1

    # Baseline: model, data, method and optimiser built; one no-grad forward so that lazy library set-up
    # (kernel selection, thread pools) is not charged to whichever measurement happens to run first.
    with torch.no_grad():
        model(x)
    sync()
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        mem_how = "torch.cuda.max_memory_allocated"
    else:
        reset = _reset_rss_peak()
        base = _rss_kib()
        mem_how = "ru_maxrss growth" + (" (high-water mark reset after setup)" if reset else " (no reset possible)")

    kind = spec["kind"]
    if kind == "hyper":
        inner_step()  # training state at a hyper step: W.grad and W's momentum exist, as in train_run

    def one() -> float:
        if kind == "hyper":
            return sum(hyper_step())
        sync()
        t0 = time.perf_counter()
        (plain_step if kind == "plain" else inner_step)()
        sync()
        return time.perf_counter() - t0

    for _ in range(WARMUP_ITERS):
        single = one()

    result: dict[str, Any] = {"mode": spec["mode"]}
    if spec["mode"] == "memory":
        if cuda:
            result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            result["peak_mib"] = (_rss_kib() - base) / 1024
        result["mem_how"] = mem_how
    else:
        iters = max(1, min(2000, round(REPEAT_SECONDS / max(single, 1e-6))))
        totals, forwards, steps = [], [], []
        for _ in range(spec["repeats"]):
            gc.collect()
            if kind == "hyper":
                parts = [hyper_step() for _ in range(iters)]
                forwards.append(sum(p[0] for p in parts) / iters)
                steps.append(sum(p[1] for p in parts) / iters)
                totals.append(forwards[-1] + steps[-1])
            else:
                sync()
                t0 = time.perf_counter()
                for _ in range(iters):
                    (plain_step if kind == "plain" else inner_step)()
                sync()
                totals.append((time.perf_counter() - t0) / iters)
        result.update(time=statistics.median(totals), iters=iters)
        if kind == "hyper":
            result.update(forwards=statistics.median(forwards), step=statistics.median(steps))

    result.update({
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "num_params": sum(p.numel() for p in params),
        "num_phi": sum(p.numel() for p in method.hyper.hparams),
        "N": method.hyper.every,
        "J": method.hyper.neumann_steps,
        "auxnet": f"{method.cfg.hidden_layers}x{method.cfg.hidden_units} softplus",
    })
    return result


# ---------------------------------------------------------------------------------------------
# Parent side: stdlib + click only.
# ---------------------------------------------------------------------------------------------

def _run_fresh(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """``_measure(spec)`` in a new spawned interpreter, with ``env`` added to its environment."""
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with mp.get_context("spawn").Pool(1) as pool:
            return pool.apply(_measure, (spec,))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f} ms"


def _verdict(value: float, target: float) -> str:
    return "meets target" if value <= target else "above target"


@click.command()
@click.option("--batch-size", default=128, show_default=True, help="training batch size B")
@click.option("--aux-batch-size", default=None, type=int, help="auxiliary-set batch of the hyper step [default: B]")
@click.option("--repeats", default=7, show_default=True, help="timed repeats per measurement (median reported)")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--threads", default=1, show_default=True, help="torch.set_num_threads in every measurement")
@click.option("--workload", "workloads", multiple=True, type=click.Choice(list(WORKLOADS)),
              help="restrict to these workloads [default: all]")
def main(batch_size: int, aux_batch_size: int | None, repeats: int, device: str, threads: int,
         workloads: tuple[str, ...]) -> None:
    """Time and peak memory of STL vs AuxiLearn inner and hypergradient steps, with ratios."""
    if batch_size < 1 or repeats < 1 or threads < 1:
        raise click.BadParameter("--batch-size, --repeats and --threads must be positive")
    aux_batch_size = aux_batch_size or batch_size
    started = time.perf_counter()
    header_done = False
    for workload in workloads or tuple(WORKLOADS):
        res = {}
        for kind in KINDS:
            spec = dict(workload=workload, kind=kind, batch_size=batch_size, aux_batch_size=aux_batch_size,
                        repeats=repeats, device=device, threads=threads)
            timed = _run_fresh({**spec, "mode": "time"})
            res[kind] = {**timed, **_run_fresh({**spec, "mode": "memory"}, MEMORY_ENV)}
        info = res["plain"]
        if not header_done:
            header_done = True
            click.echo("AuxiLearn overhead benchmark (report only, nothing is asserted)")
            click.echo(f"  torch {info['torch']} | device {info['device']} | threads {info['threads']} | "
                       f"batch {batch_size} (aux batch {aux_batch_size}) | repeats {repeats} (median) | seed {SEED}")
            click.echo(f"  method {METHOD_NAME} (auxnet {info['auxnet']}) | K={NUM_AUX} auxiliaries | "
                       f"N=hyper_every={info['N']} | J=neumann_steps={info['J']}")
            click.echo(f"  tasks: main {TASKS[0][0]}{TASKS[0][1]}, aux "
                       + ", ".join(f"{k}{d}" if k == "cls" else "reg" for k, d in TASKS[1:]))
            click.echo(f"  peak memory: {info['mem_how']} over the post-setup baseline, one fresh process each")
        click.echo("")
        click.echo(f"[{workload}] {WORKLOADS[workload]}; {info['num_params']:,} params W, "
                   f"{info['num_phi']:,} params phi")
        click.echo(f"  {'measurement':<34}{'time/step':>12}{'x plain':>9}{'peak mem':>14}{'x plain':>9}   iters")
        plain_t, plain_m = res["plain"]["time"], res["plain"]["peak_mib"]

        def mem_ratio(m: float) -> str:
            return f"{m / plain_m:8.2f}x" if plain_m > 0 else "     n/a"

        rows = [("plain step (STL)", "plain"), ("AuxiLearn inner step", "inner"),
                ("hypergradient update (total)", "hyper")]
        for label, kind in rows:
            r = res[kind]
            click.echo(f"  {label:<34}{_ms(r['time']):>12}{r['time'] / plain_t:8.2f}x"
                       f"{r['peak_mib']:>10.2f} MiB{mem_ratio(r['peak_mib'])}   {r['iters']}")
        h = res["hyper"]
        click.echo(f"    {'of which 2 forwards (train+aux)':<32}{_ms(h['forwards']):>12}{h['forwards'] / plain_t:8.2f}x")
        click.echo(f"    {'of which HyperOptimizer.step':<32}{_ms(h['step']):>12}{h['step'] / plain_t:8.2f}x")

        n = info["N"]
        inner_t, hyper_t = res["inner"]["time"], h["time"]
        amortised = (n * inner_t + hyper_t) / (n * plain_t)
        amortised_step_only = (n * inner_t + h["step"]) / (n * plain_t)
        aux_peak = max(res["inner"]["peak_mib"], h["peak_mib"])
        click.echo(f"  amortised time (N*inner + hyper) / (N*plain), N={n}, J={info['J']}: "
                   f"{amortised:.3f}x   target <= {TIME_TARGET}x: {_verdict(amortised, TIME_TARGET)}")
        click.echo(f"    (counting only HyperOptimizer.step, not its forwards: {amortised_step_only:.3f}x)")
        if plain_m > 0:
            mem = aux_peak / plain_m
            click.echo(f"  peak memory max(inner, hyper) / plain: {mem:.2f}x   "
                       f"target <= {MEMORY_TARGET}x: {_verdict(mem, MEMORY_TARGET)}")
        else:
            click.echo("  peak memory ratio: n/a (plain step showed no measurable growth)")
    click.echo("")
    click.echo(f"total benchmark wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
