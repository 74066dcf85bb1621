#!/usr/bin/env python
"""Cost of DTG-AuxL and its bilevel baselines against STL, in the manner of its Table A1 (a report, not a test):
time and peak memory of training ``dtg_auxl`` (the joint generator, an IFT step every N), ``jtds`` (one weighted
backward per step, an IFT step every N) and ``maoal`` (one backward per task through the trunk per step, an IFT
step of the modified lower update every N), beside ``auxilearn_linear`` and ``maxl``, on the dataset's defaults.

Time: the median wall time of a training epoch, the methods trained in one process and interleaved round by
round (``bench_label_epochs.epoch_seconds``), validation excluded.
Memory: per method, one fresh ``spawn`` subprocess (so none sees another's allocations) loads the data, trains
the method a few steps (lazy library set-up and first-call allocations are not charged to it), then records
the peak of ``--epochs`` epochs of training from scratch (as long as a timed round, so that the same outer steps
happen: their count is printed) over a baseline read just before it: on the CPU the growth of
``ru_maxrss`` after its high-water mark is reset (``/proc/self/clear_refs``, as ``bench_overhead.py``; the
process runs with MALLOC_MMAP_THRESHOLD_=65536 so freed tensors leave RSS), on CUDA
``torch.cuda.max_memory_allocated`` over ``memory_allocated``. The peak covers everything the run allocates:
W, its gradient and optimiser state, the method's own parameters and their optimiser, the activations and the
outer step's vectors. The memory runs go first, while this process has not imported torch (a spawned child
starts with its parent's ``ru_maxrss``).

Printed: median epoch seconds, peak MiB, and both ratios to the first method's (STL).

Run from the repository root:  python bench/bench_dtg_baselines.py [--dataset demo] [--epochs 2] [--rounds 3]
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_label_epochs import epoch_params, epoch_seconds, prepared, print_ratios, steps_params  # noqa: E402
from bench_overhead import _run_fresh, peak_reader  # noqa: E402

WARMUP_STEPS = 3


def peak_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory (MiB) of ``spec["epochs"]`` epochs of training ``spec["method"]`` from scratch, and the number
    of outer steps taken (run in a fresh process)."""
    import torch

    from pipeline.engine.training import train_run

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    ds, data, splits, batch = prepared(spec["dataset"])
    params = epoch_params(spec["dataset"], spec["method"], splits, batch, spec["epochs"])
    train_run(ds, data, splits, steps_params(spec["dataset"], spec["method"], WARMUP_STEPS), seed=0, device=device)
    read_peak, _ = peak_reader(torch, device)
    res = train_run(ds, data, splits, params, seed=0, device=device)
    outer_steps = sum(1 for e in res.history["method_log"] if "hypergrad_norm" in e or "meta_loss" in e)
    return {"peak_mib": read_peak(), "outer_steps": outer_steps}


@click.command()
@click.option("--dataset", default="demo", show_default=True)
@click.option("--methods", default="stl,auxilearn_linear,maxl,dtg_auxl,jtds,maoal", show_default=True,
              help="comma-separated; the first is the baseline of the ratios")
@click.option("--epochs", default=2, show_default=True, help="epochs per method per round")
@click.option("--rounds", default=3, show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch threads (0: torch's default)")
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda"]), show_default=True)
def main(dataset: str, methods: str, epochs: int, rounds: int, threads: int, device: str) -> None:
    names = tuple(methods.split(","))
    memory, outer = {}, {}
    for method in names:  # before this process imports torch
        spec = {"dataset": dataset, "method": method, "threads": threads, "device": device, "epochs": epochs}
        found = _run_fresh(peak_memory, spec, {"MALLOC_MMAP_THRESHOLD_": "65536"})
        memory[method], outer[method] = found["peak_mib"], found["outer_steps"]
        click.echo(f"memory: {method:17s} peak {memory[method]:8.1f} MiB, {outer[method]} outer steps")

    import torch

    if threads:
        torch.set_num_threads(threads)
    seconds, sizes = epoch_seconds(dataset, names, epochs, rounds, device)
    print_ratios(dataset, seconds, sizes, device)
    first = names[0]
    click.echo(f"\n{'method':18s} {'peak MiB':>9s} {'× ' + first:>7s} {'outer steps':>12s}   "
               f"({epochs} epochs from scratch, a fresh process each)")
    for m in names:
        click.echo(f"{m:18s} {memory[m]:9.1f} {memory[m] / memory[first]:7.2f} {outer[m]:12d}")


if __name__ == "__main__":
    main()
