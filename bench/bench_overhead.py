#!/usr/bin/env python
"""Wall time and peak memory of AuxiLearn relative to plain single-task training (a report, not a test).

For a small MLP, a small CNN and a ResNet-18 (torchvision's; 3x32x32 inputs unless --image-size), each with a main classification
head and K = 5 auxiliary heads, this measures

  plain  one STL step: forward, main-task loss, backward, SGD step on W;
  inner  one AuxiLearn inner step: forward, per-sample per-task losses [B, 1+K],
         L_T = method.training_loss(losses) (via ``method.backward``), backward, SGD step on W;
  hyper  one hypergradient update, as the trainer runs it when it is due: ``method.after_step(ctx)``, i.e.
         ``ImplicitOuterUpdate.step``: a forward on a training batch (L_T) and one on an auxiliary batch
         (main loss), then ``HyperOptimizer.step`` (J-term Neumann IFT + φ's step). It is measured four ways: with
         the default hyper batch (``methods.bilevel.hyper_train_batch`` / ``hyper_aux_batch`` of
         ``BilevelConfig()``, or ``--hyper-batch``), with the full batch (B for both), with the full batch but
         the Neumann series' Hessian on ``--small-hyper-batch`` rows of it (``curvature_batch``; the mixed term
         then in forward mode on the whole batch) and with ``--small-hyper-batch`` for both batches;

and prints each one's ratio to ``plain`` from the same run, the amortised AuxiLearn overhead
(N·inner + hyper) / (N·plain) for N = hyper_every and J = neumann_steps of the method's config, the
peak-memory ratios next to the targets (time ≤ 1.15× STL, peak memory ≤ 1.5× STL), and where the hyper
step's time goes (its forwards, L_A's backward, the create-graph gradient, the curvature refresh, the
Neumann series, the mixed product, the rest).

Time: one fresh ``spawn`` subprocess per workload runs the measurements interleaved, repeat by
repeat (so drifting machine load hits all alike): each repeat times enough back-to-back steps to
last about 0.25 s with ``time.perf_counter``, after warm-up; reported are the median per-step time and
the median over repeats of the per-repeat ratio to ``plain``.
Peak memory: one more fresh ``spawn`` subprocess per measurement, so none sees another's allocations;
peak over a baseline read once the model, data, method and optimiser are built and one no-grad forward
has run (lazy library set-up is not charged to a step). A hyper step's peak is taken over curvature_every + 1
hyper steps, each after an inner step, so it covers a refresh of λ̂ from the stored eigenvector (the refresh that
steady-state training runs, not only the first, cold one):
  CPU   growth of ``ru_maxrss``. Its high-water mark is first reset to the current RSS through
        /proc/self/clear_refs where Linux allows it, so import-time peaks do not hide the step's, and
        the memory process runs with MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave RSS;
  CUDA  ``torch.cuda.max_memory_allocated`` over ``memory_allocated`` after ``reset_peak_memory_stats``.
The parent process imports neither torch nor the pipeline: a spawned child inherits its parent's
``ru_maxrss`` at fork time, so a heavy parent would mask the children's peaks.

Run from the repository root:  python bench/bench_overhead.py [--batch-size 128] [--threads 1]
"""
from __future__ import annotations

import copy
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
    "cnn": "CNN, 3x [conv3x3(32) + ReLU], max-pool after the first two, global avg-pool",
    "resnet18": "ResNet-18 (torchvision, BatchNorm, no pretrained weights), 512-d features",
}
# B per workload unless --batch-size is given: ResNet-18 on one CPU core takes ~0.3 s per step at 32 images.
DEFAULT_BATCH = {"mlp": 128, "cnn": 128, "resnet18": 32}
# The hyper step with the default hyper batch (BilevelConfig()), the full batch (B and the whole auxiliary set),
# the full batch with the curvature on --small-hyper-batch rows (curvature_batch) and a small hyper batch
# (--small-hyper-batch, the reference's range), each with the IFT over all of W, and the full and the small hyper
# batch with the IFT over the top of W only (implicit_scope: top); one that equals an earlier one is not re-run.
HYPERS = ("hyper_default", "hyper_full", "hyper_curvature", "hyper_small", "hyper_top", "hyper_small_top")
HYPER_LABELS = {"hyper_default": "default hyper batch", "hyper_full": "full batch",
                "hyper_curvature": "small curvature batch", "hyper_small": "small hyper batch",
                "hyper_top": "full batch, IFT over the top",
                "hyper_small_top": "small hyper batch, IFT over the top"}
# Where the hyper step's time goes: pipeline.methods.bilevel's functions, timed by wrappers in the timing process only.
PARTS = {
    "forwards": "2 forwards (L_T batch or its curvature rows, L_A batch)",
    "outer_grad": "L_A backward (dL_A/dphi, grad_W L_A)",
    "create_graph": "grad_W L_T with create_graph",
    "curvature": "curvature refresh (power iteration)",
    "series": "Neumann series (J vHp)",
    "mixed": "mixed product grad_phi(grad_W L_T . s) [+ forward mode]",
    "rest": "phi's step, checks, releases",
}


# ---------------------------------------------------------------------------------------------
# Child side: everything that touches torch is imported here, in the spawned process.
# ---------------------------------------------------------------------------------------------

def _build(workload: str, batch_size: int, aux_batch_size: int, device: Any, image_size: int = 32
           ) -> tuple[Any, ...]:
    import torch
    from torch import nn

    class MultiHead(nn.Module):
        def __init__(self, trunk: nn.Module, last_block: nn.Module, features: int) -> None:
            super().__init__()
            self.trunk, self.last_block = trunk, last_block  # the last block is reached by two paths
            self.heads = nn.ModuleList(nn.Linear(features, dim) for _, dim in TASKS)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            h = self.trunk(x)
            return [head(h) for head in self.heads]

        def shared_parameters(self) -> list[nn.Parameter]:
            return list(self.trunk.parameters())

        def last_shared_parameters(self) -> list[nn.Parameter]:  # implicit_scope: top
            return list(self.last_block.parameters())

    torch.manual_seed(SEED)  # before the trunk is built: its initial weights are part of the workload
    if workload == "mlp":
        input_shape: tuple[int, ...] = (64,)
        trunk = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        features, last_block = 128, trunk[2]
    elif workload == "resnet18":
        import torchvision

        input_shape = (3, image_size, image_size)
        trunk = torchvision.models.resnet18(weights=None)
        trunk.fc = nn.Identity()
        features, last_block = 512, trunk.layer4[-1]
    elif workload == "cnn":
        input_shape = (3, image_size, image_size)
        trunk = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        features, last_block = 32, trunk[6]
    else:
        raise ValueError(workload)

    model = MultiHead(trunk, last_block, features).to(device)
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


def peak_reader(torch: Any, device: Any) -> tuple[Any, str]:
    """Resets the peak-memory mark now; returns a reader of the peak's growth over the present (MiB) and how
    it is measured: CUDA ``max_memory_allocated`` over ``memory_allocated``, else the growth of ``ru_maxrss``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)

        def read_cuda() -> float:
            torch.cuda.synchronize(device)
            return (torch.cuda.max_memory_allocated(device) - base) / 2**20

        return read_cuda, "torch.cuda.max_memory_allocated"
    reset = _reset_rss_peak()
    base = _rss_kib()
    how = "ru_maxrss growth" + (" (high-water mark reset after setup)" if reset
                                else " (high-water mark could not be reset)")
    return (lambda: (_rss_kib() - base) / 1024), how


def _hyper_configs(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``methods.bilevel`` settings compared (see ``HYPERS``)."""
    from pipeline.methods.bilevel import BilevelConfig

    small = spec["small_hyper_batch"]
    return {"hyper_default": BilevelConfig(),
            "hyper_full": BilevelConfig(hyper_train_batch=spec["batch_size"], hyper_aux_batch=spec["aux_batch_size"],
                                        curvature_batch=0),
            "hyper_curvature": BilevelConfig(hyper_train_batch=spec["batch_size"],
                                             hyper_aux_batch=spec["aux_batch_size"], curvature_batch=small),
            "hyper_small": BilevelConfig(hyper_train_batch=small, hyper_aux_batch=small, curvature_batch=0),
            "hyper_top": BilevelConfig(hyper_train_batch=spec["batch_size"], hyper_aux_batch=spec["aux_batch_size"],
                                       curvature_batch=0, implicit_scope="top"),
            "hyper_small_top": BilevelConfig(hyper_train_batch=small, hyper_aux_batch=small, curvature_batch=0,
                                             implicit_scope="top")}


class _PartTimer:
    """Wraps pipeline.methods.bilevel's pieces of the hyper step so each call's time lands in ``self.parts``."""

    def __init__(self, sync: Any) -> None:
        import pipeline.methods.bilevel as bilevel

        self.sync = sync
        self.parts: dict[str, float] = {}
        bilevel._outer_gradients = self._wrap(bilevel._outer_gradients, "outer_grad")
        bilevel._series_hypergradient = self._wrap(bilevel._series_hypergradient, "mixed")
        curvature = bilevel.TrainCurvature
        curvature.__init__ = self._wrap(curvature.__init__, "create_graph")
        curvature.inverse_hvp = self._wrap(curvature.inverse_hvp, "series")
        bilevel.HyperOptimizer._refresh_curvature = self._wrap(bilevel.HyperOptimizer._refresh_curvature,
                                                               "curvature")

    def _wrap(self, fn: Any, part: str) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            self.parts[part] = self.parts.get(part, 0.0) + time.perf_counter() - t0
            return out
        return timed


def _setup(spec: dict[str, Any], part_timer: bool = False) -> dict[str, Any]:
    """Build model, data, methods and optimiser in this process; return the step callables and facts."""
    import torch

    from pipeline.core.registry import METHODS
    from pipeline.methods.base import Batch, StepContext
    from pipeline.methods.bilevel import directional_derivative
    from pipeline.methods.combiners.auxnet import AuxiLearnConfig

    torch.set_num_threads(spec["threads"])
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (only when _measure is called in-process)
        pass
    if spec["device"] == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no GPU")
    if spec["device"] == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    timer = _PartTimer(sync) if part_timer else None

    model, (x, ys), (x_aux, ys_aux) = _build(spec["workload"], spec["batch_size"], spec["aux_batch_size"], device,
                                             spec["image_size"])
    configs = _hyper_configs(spec)
    methods = {}
    for kind, bilevel in configs.items():
        torch.manual_seed(SEED + 2)  # the same φ in each
        methods[kind] = METHODS.get(METHOD_NAME)(len(TASKS), AuxiLearnConfig(), bilevel).to(device)
    method = methods["hyper_default"]  # the inner step's L_T
    params = [p for p in model.parameters() if p.requires_grad]
    # a small rate: the timed steps repeat one batch hundreds of times, and W must not diverge (ResNet-18 did at 0.01)
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    # (L_T batch, L_A batch) of each hyper step: a bilevel batch of 0 means B, resp. the whole auxiliary set
    sizes = {kind: m.outer_batch_sizes(spec["batch_size"]) for kind, m in methods.items()}
    sizes = {kind: (bt, ba or spec["aux_batch_size"], min(bt, configs[kind].curvature_batch or bt))
             for kind, (bt, ba) in sizes.items()}
    same = {kind: (*sizes[kind], configs[kind].implicit_scope) for kind in HYPERS}
    alias = {kind: next(k for k in HYPERS if same[k] == same[kind]) for kind in HYPERS}  # first equal one

    def plain() -> None:  # STL: forward, main-task loss, backward, SGD step
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x)[0], ys[0]).backward()
        optimizer.step()

    def inner() -> None:  # AuxiLearn inner step, as train_run does it
        optimizer.zero_grad(set_to_none=True)
        method.training_loss(_per_task_losses(model(x), ys)).backward()  # what AuxiLearn.backward does
        optimizer.step()

    def hyper_step(kind: str) -> Any:
        """``method.after_step`` at a due step, as train_run calls it; returns this call's parts (seconds)."""
        m, (bt, ba, _) = methods[kind], sizes[kind]
        parts: dict[str, float] = {}

        def forward(inputs: Any, targets: list[Any]) -> Any:
            sync()
            t0 = time.perf_counter()
            losses = _per_task_losses(model(inputs), targets)
            sync()
            parts["forwards"] = parts.get("forwards", 0.0) + time.perf_counter() - t0
            return losses

        rows = torch.arange(bt, device=device)
        batch = Batch(x[:bt], rows, rows, torch.ones(bt, dtype=torch.bool, device=device))

        def slope(b: Any, along: Any, direction: Any, objective: Any) -> Any:  # timed with the mixed product
            return directional_derivative(model, along, direction,
                                          lambda: objective(_per_task_losses(model(b.x), [y[b.index] for y in ys])))

        ctx = StepContext(m.outer.hyper.every, params, lambda: forward(x[:bt], [y[:bt] for y in ys]),
                          lambda: forward(x_aux[:ba], [y[:ba] for y in ys_aux]), model=model,
                          train_batch=lambda: batch, batch_losses=lambda b: forward(b.x, [y[b.index] for y in ys]),
                          loss_slope=slope)
        if timer is not None:
            timer.parts = parts
        sync()
        t0 = time.perf_counter()
        m.after_step(ctx)
        sync()
        parts["total"] = time.perf_counter() - t0
        parts["rest"] = parts["total"] - sum(v for k, v in parts.items() if k != "total")
        return parts

    # One no-grad forward, so that lazy library set-up (kernel selection, thread pools) is done before any
    # memory baseline and not charged to whichever step happens to run first.
    with torch.no_grad():
        model(x)
    # the same for forward-mode differentiation (the curvature batch's mixed term), on two samples: its first use
    # in a process sets up ~25 MiB of machinery once, which is not a step's cost
    directional_derivative(model, params, [torch.zeros_like(p) for p in params], lambda: model(x[:2])[0].sum())
    sync()
    gc.collect()

    facts = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "num_params": sum(p.numel() for p in params),
        "num_phi": sum(p.numel() for p in method.outer.hyper.hparams),
        "N": method.outer.hyper.every,
        "J": method.outer.hyper.neumann_steps,
        "curvature_every": configs["hyper_default"].curvature_every,
        "curvature": f"every {configs['hyper_default'].curvature_every} hyper steps, "
                     f"{configs['hyper_default'].curvature_iterations} power iterations",
        "sizes": sizes,
        "alias": alias,
        "kinds": ["plain", "inner", *(k for k in HYPERS if alias[k] == k)],
        "auxnet": f"{method.cfg.hidden_layers}x{method.cfg.hidden_units} softplus",
    }
    steps = {"plain": plain, "inner": inner, **{kind: (lambda k=kind: hyper_step(k)) for kind in HYPERS}}
    # W, its momentum and φ as set up: every timed repeat starts from them, so that hundreds of steps on one
    # batch of random labels cannot drive W to a curvature where the series diverges (the CNN did, at hyper
    # step 24 with λ̂ ≈ 5e3) and the repeats time the same state
    start = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "methods": {kind: m.state_dict() for kind, m in methods.items()}})

    def restart() -> None:
        model.load_state_dict(start["model"])
        optimizer.load_state_dict(start["optimizer"])
        for kind, m in methods.items():
            m.load_state_dict(start["methods"][kind])

    return dict(torch=torch, device=device, cuda=cuda, sync=sync, steps=steps, facts=facts, restart=restart)


def _measure_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of ``spec["kind"]`` over the post-setup baseline (run in a fresh process)."""
    env = _setup(spec)
    read_peak, how = peak_reader(env["torch"], env["device"])
    kind, steps = spec["kind"], env["steps"]
    if kind in HYPERS:
        # each after an inner step, as in train_run (W.grad and W's momentum buffers exist), and through one
        # curvature refresh from the stored eigenvector: the refresh of steady-state training, not only the
        # first (cold) one
        for _ in range(env["facts"]["curvature_every"] + 1):
            steps["inner"]()
            steps[kind]()
    else:
        for _ in range(WARMUP_ITERS):
            steps[kind]()
    env["sync"]()
    return {**env["facts"], "peak_mib": read_peak(), "mem_how": how}


def _measure_time(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-step time of each kind, interleaved repeat by repeat so that load drift hits all alike."""
    env = _setup(spec, part_timer=True)
    sync, steps = env["sync"], env["steps"]

    def timed(kind: str, iters: int) -> dict[str, float]:
        """Mean seconds per step over ``iters`` steps ({"total": ...}; a hyper step also has its parts)."""
        if kind in HYPERS:
            calls = [steps[kind]() for _ in range(iters)]
            return {k: sum(c.get(k, 0.0) for c in calls) / iters for k in ("total", *PARTS)}
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            steps[kind]()
        sync()
        return {"total": (time.perf_counter() - t0) / iters}

    iters = {}
    kinds = env["facts"]["kinds"]
    for kind in kinds:  # hyper always follows an inner step, as in training
        env["restart"]()
        for _ in range(WARMUP_ITERS):
            single = timed(kind, 1)["total"]
        iters[kind] = max(1, min(2000, round(REPEAT_SECONDS / max(single, 1e-6))))
        if kind in HYPERS:  # whole curvature-refresh cycles, so the refresh is amortised as in training
            cycle = env["facts"]["curvature_every"]
            iters[kind] = cycle * max(1, round(iters[kind] / cycle))
    samples: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for _ in range(spec["repeats"]):
        env["restart"]()  # untimed
        for kind in kinds:
            gc.collect()
            if kind not in HYPERS:
                # One untimed step first: after the previous hyper update freed its memory, the first step
                # pays page faults that steady-state training does not. A hyper update, which in training
                # always follows inner steps, is timed cold, as it runs there.
                steps[kind]()
            samples[kind].append(timed(kind, iters[kind]))
    return {**env["facts"], "iters": iters, "samples": samples}


# ---------------------------------------------------------------------------------------------
# Parent side: stdlib + click only.
# ---------------------------------------------------------------------------------------------

def _run_fresh(fn: Any, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """``fn(spec)`` in a new spawned interpreter, with ``env`` added to its environment."""
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with mp.get_context("spawn").Pool(1) as pool:
            return pool.apply(fn, (spec,))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _verdict(value: float, target: float) -> str:
    return f"target <= {target:.2f}x: " + ("meets target" if value <= target else "above target")


def _report(workload: str, timing: dict[str, Any] | None, memory: dict[str, dict[str, Any]]) -> None:
    """Print one workload's table. Ratios are medians over repeats of the per-repeat ratio to plain.
    ``timing`` None (``--memory-only``): the memory columns and ratios alone."""
    facts = timing or memory["plain"]
    alias = facts["alias"]
    if timing is not None:
        samples, iters, n = timing["samples"], timing["iters"], timing["N"]
        totals = {kind: [s["total"] for s in values] for kind, values in samples.items()}
        plain, inner = totals["plain"], totals["inner"]
    plain_mem = memory["plain"]["peak_mib"]

    def ratio(values: list[float]) -> float:
        return _median([v / p for v, p in zip(values, plain)])

    def mem_cols(kind: str) -> str:
        peak = memory[kind]["peak_mib"]
        rel = f"{peak / plain_mem:8.2f}x" if plain_mem > 0 else "     n/a"
        return f"{peak:10.2f} MiB{rel}"

    def batches(kind: str) -> str:
        bt, ba, curvature = facts["sizes"][kind]
        rows = f" (curvature on {curvature} rows)" if curvature < bt else ""
        return f"L_T batch {bt}{rows}, L_A batch {ba}"

    def label(kind: str) -> str:
        if kind in ("plain", "inner"):
            return {"plain": "plain step (STL)", "inner": "AuxiLearn inner step"}[kind]
        same = [HYPER_LABELS[k] for k in HYPERS if alias[k] == kind]
        return "hyper step, " + " = ".join(same)

    click.echo("")
    click.echo(f"[{workload}] {WORKLOADS[workload]}")
    click.echo(f"  {facts['num_params']:,} parameters in W, {facts['num_phi']:,} in phi; "
               + "; ".join(f"{HYPER_LABELS[k]}: {batches(k)}" for k in HYPERS))
    if timing is None:
        click.echo(f"  {'measurement':<58}{'peak mem':>14}{'x plain':>9}")
        for kind in facts["kinds"]:
            click.echo(f"  {label(kind):<58}{mem_cols(kind)}")
    else:
        click.echo(f"  {'measurement':<58}{'time/step':>12}{'x plain':>9}{'peak mem':>14}{'x plain':>9}   iters/repeat")
        for kind in facts["kinds"]:
            click.echo(f"  {label(kind):<58}{_ms(_median(totals[kind])):>12}{ratio(totals[kind]):8.2f}x"
                       f"{mem_cols(kind)}   {iters[kind]}")
            if kind in HYPERS:  # where the hyper step's time goes (curvature refresh amortised over its cycle)
                for part, text in PARTS.items():
                    values = [s[part] for s in samples[kind]]
                    click.echo(f"    {text:<56}{_ms(_median(values)):>12}{ratio(values):8.2f}x")
    for kind in HYPERS:
        what, measured = HYPER_LABELS[kind], alias[kind]
        if timing is not None:
            amortised = _median([(n * i + h) / (n * p) for p, i, h in zip(plain, inner, totals[measured])])
            click.echo(f"  amortised time (N*inner + hyper) / (N*plain), N={n}, J={timing['J']}, {what} "
                       f"({batches(kind)}): {amortised:.3f}x   {_verdict(amortised, TIME_TARGET)}")
        if plain_mem > 0:
            mem = max(memory["inner"]["peak_mib"], memory[measured]["peak_mib"]) / plain_mem
            click.echo(f"  peak memory max(inner, hyper) / plain, {what}: {mem:.2f}x   {_verdict(mem, MEMORY_TARGET)}")
        else:
            click.echo(f"  peak memory ratio, {what}: n/a (the plain step showed no measurable growth)")


@click.command()
@click.option("--batch-size", default=None, type=int,
              help="training batch size B [default: mlp 128, cnn 128, resnet18 32]")
@click.option("--aux-batch-size", default=None, type=int,
              help="size of the auxiliary set the hyper step draws from [default: B]")
@click.option("--small-hyper-batch", default=16, show_default=True,
              help="L_T and L_A batch of the 'small hyper batch' rows (the reference uses 2-16 images), and the "
                   "curvature rows of the 'small curvature batch' rows")
@click.option("--image-size", default=32, show_default=True,
              help="side of the cnn's and resnet18's square inputs (ResNet-18 is parameter-bound at 32, "
                   "activation-bound at 224)")
@click.option("--repeats", default=7, show_default=True, help="timed repeats (median reported)")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--threads", default=1, show_default=True, help="torch.set_num_threads in every measurement")
@click.option("--workload", "workloads", multiple=True, type=click.Choice(list(WORKLOADS)),
              help="run only this workload (repeatable) [default: all]")
@click.option("--memory-only", is_flag=True,
              help="peak memory only (no timing: minutes less on a large network; memory does not move with load)")
def main(batch_size: int | None, aux_batch_size: int | None, small_hyper_batch: int, image_size: int, repeats: int,
         device: str, threads: int, workloads: tuple[str, ...], memory_only: bool) -> None:
    """Time and peak memory of STL vs AuxiLearn inner and hypergradient steps, with ratios."""
    for name, value in (("--batch-size", batch_size or 1), ("--repeats", repeats), ("--threads", threads),
                        ("--aux-batch-size", aux_batch_size or 1), ("--small-hyper-batch", small_hyper_batch),
                        ("--image-size", image_size)):
        if value < 1:
            raise click.BadParameter(f"{name} must be positive")
    started = time.perf_counter()
    for index, workload in enumerate(workloads or tuple(WORKLOADS)):
        b = batch_size or DEFAULT_BATCH[workload]
        if small_hyper_batch > min(b, aux_batch_size or b):
            raise click.BadParameter(f"--small-hyper-batch {small_hyper_batch} exceeds {workload}'s batch B = {b} "
                                     f"or auxiliary set {aux_batch_size or b}")
        spec = dict(workload=workload, batch_size=b, aux_batch_size=aux_batch_size or b,
                    small_hyper_batch=small_hyper_batch, image_size=image_size,
                    repeats=repeats, device=device, threads=threads)
        try:
            timing = None if memory_only else _run_fresh(_measure_time, spec)
            memory = {"plain": _run_fresh(_measure_memory, {**spec, "kind": "plain"}, MEMORY_ENV)}
            memory.update({kind: _run_fresh(_measure_memory, {**spec, "kind": kind}, MEMORY_ENV)
                           for kind in memory["plain"]["kinds"][1:]})
        except RuntimeError as err:
            raise click.ClickException(str(err)) from err
        if index == 0:
            facts = timing or memory["plain"]
            click.echo("AuxiLearn overhead benchmark (a report: nothing is asserted)")
            click.echo(f"  torch {facts['torch']} | device {facts['device']} | threads {facts['threads']} | "
                       f"seed {SEED}")
            click.echo(f"  method {METHOD_NAME} (auxnet {facts['auxnet']}) | K={NUM_AUX} auxiliaries | "
                       f"N=hyper_every={facts['N']} | J=neumann_steps={facts['J']} | curvature refresh "
                       f"{facts['curvature']}")
            click.echo("  tasks: main " + "".join(map(str, TASKS[0])) + ", aux "
                       + ", ".join(f"{k}{d}" if k == "cls" else k for k, d in TASKS[1:]))
            if timing is not None:
                click.echo(f"  time: median of {repeats} interleaved repeats in one process; "
                           "x plain = median of the per-repeat ratios; hyper rows average whole curvature cycles")
            click.echo(f"  peak memory: {memory['plain']['mem_how']} over the post-setup baseline, "
                       "one fresh process per measurement")
        size = f", inputs 3x{image_size}x{image_size}" if workload != "mlp" else ""
        click.echo(f"  [{workload}] batch B = {spec['batch_size']}, auxiliary set {spec['aux_batch_size']}{size}")
        _report(workload, timing, memory)
    click.echo("")
    click.echo(f"total benchmark wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
