#!/usr/bin/env python
"""Hessian-vector products three ways: reverse-over-reverse (the engine's) against forward-over-reverse and
finite differences of the gradient (a report).

The hyper step's memory at 224×224 is mostly ∇W L_T's create-graph graph, kept for the J Neumann terms. A
forward-over-reverse product (``torch.func.jvp`` of ``torch.func.grad``) keeps no graph between products, so
it might need less; a finite difference needs only plain backwards. This measures all three on
``bench_overhead.py``'s ResNet-18 with its K = 5 auxiliary heads and the equal-weight training loss L_T:

  reverse     the engine's ``TrainCurvature``: ∇W L_T with ``create_graph``, then J products ``hvp(v)``, each a
              backward through the retained graph;
  forward     J products ``jvp(grad(L_T), W, v)``, each a forward with dual tensors and a backward;
  difference  (∇W L_T(W + εv) − ∇W L_T(W)) / ε: ∇W L_T(W) once, then one plain forward and backward per product;
              ε = 2·√(machine ε)·(1 + ‖W‖)/‖v‖ (the usual rule for a one-sided difference) unless ``--epsilon``.

BatchNorm uses batch statistics without updating running ones in both (a transform may not mutate them).
Time: the faster of two calls of the whole J products, in the process that measured memory, after one STL
warm-up step. Memory: one fresh spawned process per mode, ``ru_maxrss`` growth over the state after warm-up
(``bench_overhead.peak_reader``). Each mode's product is compared with the engine's (relative difference of the last one).
``--dtype float64`` runs everything in double precision, to tell rounding from the loss's own shape. Run from
the repository root:
``OMP_NUM_THREADS=2 python bench/bench_hvp_modes.py --image-size 224 --rows 16 --threads 2``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.bench_overhead import MEMORY_ENV, _run_fresh  # noqa: E402  (stdlib + click only on import)

MODES = ("reverse", "forward", "difference")


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Child side: build, warm up, then time and measure J products in ``spec['mode']``."""
    import torch
    from torch.func import functional_call, grad, jvp

    from bench.bench_overhead import _build, _per_task_losses, peak_reader
    from pipeline.methods.bilevel import TrainCurvature

    torch.set_num_threads(spec["threads"])
    device = torch.device("cpu")
    model, (x, ys), _ = _build("resnet18", spec["rows"], spec["rows"], device, image_size=spec["image_size"])
    dtype = getattr(torch, spec["dtype"])
    model, x = model.to(dtype), x.to(dtype)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x)[0], ys[0]).backward()
    optimizer.step()  # W's momentum exists, as in training
    optimizer.zero_grad(set_to_none=True)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = None
    names = [name for name, _ in model.named_parameters()]
    params = list(model.parameters())
    buffers = dict(model.named_buffers())
    generator = torch.Generator().manual_seed(1)
    vector = [torch.randn(p.shape, generator=generator).to(dtype) for p in params]

    def train_loss(out: list[Any]) -> Any:
        return _per_task_losses(out, ys).mean(0).mean()

    def reverse() -> list[Any]:
        curvature = TrainCurvature(train_loss(model(x)), params)
        for _ in range(spec["neumann_steps"]):
            product = curvature.hvp(vector)
        return product

    def loss_of(weights: dict[str, Any]) -> Any:
        return train_loss(functional_call(model, (weights, buffers), (x,)))

    def forward() -> list[Any]:
        primal = {name: p.detach() for name, p in zip(names, params)}
        tangent = dict(zip(names, vector))
        for _ in range(spec["neumann_steps"]):
            _, product = jvp(grad(loss_of), (primal,), (tangent,))
        return [product[name] for name in names]

    used: dict[str, float] = {}  # the finite difference's ε, for the report

    def difference() -> list[Any]:
        # (∇L_T(W + εv) − ∇L_T(W)) / ε: one plain backward per product, no graph kept between them
        base = [g.detach() for g in torch.autograd.grad(train_loss(model(x)), params)]
        scale = torch.sqrt(sum((p.detach() ** 2).sum() for p in params))
        size = torch.sqrt(sum((v ** 2).sum() for v in vector))
        eps = used["epsilon"] = spec["epsilon"] or float(2 * torch.finfo(dtype).eps ** 0.5 * (1 + scale) / size)
        for _ in range(spec["neumann_steps"]):
            shifted = {name: (p.detach() + eps * v).requires_grad_() for name, p, v in zip(names, params, vector)}
            moved = torch.autograd.grad(loss_of(shifted), list(shifted.values()))
            product = [(m - b) / eps for m, b in zip(moved, base)]
            del shifted, moved
        return product

    run = {"reverse": reverse, "forward": forward, "difference": difference}[spec["mode"]]
    read_peak, how = peak_reader(torch, device)
    start = time.perf_counter()
    product = run()
    first = time.perf_counter() - start
    peak = read_peak()
    start = time.perf_counter()
    run()
    second = time.perf_counter() - start
    return {"seconds": min(first, second), "peak_mib": peak, "how": how,
            "product": [p.double() for p in product], "parameters": sum(p.numel() for p in params),
            **used}


@click.command()
@click.option("--image-size", default=224, show_default=True, help="side of the square inputs")
@click.option("--rows", default=16, show_default=True, help="rows of L_T's batch (the hyper step's curvature rows)")
@click.option("--neumann-steps", default=3, show_default=True, help="J: products per measurement")
@click.option("--threads", default=1, show_default=True, help="torch.set_num_threads")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=None,
              help="the finite difference's step along v (default: 2·√(machine ε)·(1 + ‖W‖)/‖v‖)")
def main(image_size: int, rows: int, neumann_steps: int, threads: int, dtype: str, epsilon: float | None) -> None:
    """Time and peak memory of J Hessian-vector products: reverse-over-reverse, forward-over-reverse and
    finite differences."""
    spec = {"image_size": image_size, "rows": rows, "neumann_steps": neumann_steps, "threads": threads,
            "dtype": dtype, "epsilon": epsilon}
    results = {mode: _run_fresh(_measure, {**spec, "mode": mode}, MEMORY_ENV) for mode in MODES}
    reverse = results["reverse"]
    scale = sum(float((a ** 2).sum()) for a in reverse["product"]) ** 0.5
    print(f"ResNet-18 ({reverse['parameters']:,} parameters in W), K = 5 auxiliary heads, inputs 3x{image_size}x"
          f"{image_size}, {rows} rows, J = {neumann_steps} products, {threads} thread(s), {dtype}; memory: "
          f"{reverse['how']}")
    print(f"  {'mode':<10}{'time (J products)':>20}{'x reverse':>12}{'peak memory':>16}{'x reverse':>12}")
    for mode in MODES:
        r = results[mode]
        print(f"  {mode:<10}{r['seconds']:>18.3f} s{r['seconds'] / reverse['seconds']:>11.2f}x"
              f"{r['peak_mib']:>12.1f} MiB{r['peak_mib'] / reverse['peak_mib']:>11.2f}x")
    for mode in MODES[1:]:
        other = results[mode]["product"]
        difference = sum(float(((a - b) ** 2).sum()) for a, b in zip(reverse["product"], other)) ** 0.5
        step = f" (ε = {results[mode]['epsilon']:.3g})" if mode == "difference" else ""
        print(f"  products agree: ||{mode} - reverse|| / ||reverse|| = {difference / scale:.2e}{step}")


if __name__ == "__main__":
    main()
