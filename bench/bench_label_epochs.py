#!/usr/bin/env python
"""Wall time of a training epoch of MAXL against AuxiLearn's label generator (a report, not a test).

AuxiLearn §5.4 reports its label generator about 3× faster than MAXL: MAXL differentiates through a
one-step look-ahead of the primary network for every θ2 update (Alg. 1: one per training batch),
while AuxiLearn takes one IFT hypergradient step every N batches. Here the same prepared data and
params train ``stl``, ``maxl`` and ``auxilearn_labels`` in one process, interleaved round by round so
machine load drifts hit all alike; an epoch is one pass over each method's training set (the trainer
records its wall time, validation excluded). Printed: median epoch seconds and the ratios.

Run from the repository root:  python bench/bench_label_epochs.py [--dataset cifar10] [--epochs 2] [--rounds 3]
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

METHODS = ("stl", "maxl", "auxilearn_labels")


def prepared(dataset: str) -> tuple[Any, Any, dict[str, Any], int]:
    """The dataset's default preparation, loaded: (dataset, data, splits, training batch size)."""
    from pipeline.config.params import parse_params
    from pipeline.core.registry import DATASETS

    base = parse_params({"dataset": dataset})
    ds = DATASETS.get(dataset)()
    with tempfile.TemporaryDirectory() as folder:
        ds.prepare(base.dataset_config, Path(folder))
        data = ds.load(Path(folder))
    splits = ds.make_splits(data, base.split)
    return ds, data, splits, base.train.batch_size or len(splits["train"])


def epoch_params(dataset: str, method: str, splits: dict[str, Any], batch: int, epochs: int) -> Any:
    """The default params of ``method`` on ``dataset``, trained ``epochs`` passes over its training set
    (methods that learn from the aux set train on train only, the others on train ∪ aux)."""
    import numpy as np

    from pipeline.core.registry import METHODS as REGISTERED

    uses_aux = REGISTERED.get(method).uses_aux_set
    n_train = len(splits["train"]) + (0 if uses_aux else len(splits["aux"]))
    return steps_params(dataset, method, epochs * int(np.ceil(n_train / batch)))


def steps_params(dataset: str, method: str, steps: int) -> Any:
    """The default params of ``method`` on ``dataset`` for ``steps`` training steps, validated once at the end."""
    from pipeline.config.params import parse_params

    return parse_params({"dataset": dataset, "method": method,
                         "datasets": {dataset: {"train": {"steps": steps, "eval_every": steps}}}})


def epoch_seconds(dataset: str, methods: tuple[str, ...], epochs: int, rounds: int, device: str,
                  echo=click.echo) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Train each of ``methods`` ``epochs`` epochs per round on the dataset's default preparation, interleaved
    round by round; returns every epoch's wall seconds per method and the split sizes (train, batch)."""
    import torch

    from pipeline.engine.training import train_run

    ds, data, splits, batch = prepared(dataset)
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds):
        for method in methods:
            params = epoch_params(dataset, method, splits, batch, epochs)
            res = train_run(ds, data, splits, params, seed=r, device=torch.device(device))
            seconds[method] += res.history["epoch_seconds"]
            echo(f"round {r}: {method:17s} epochs {[round(s, 2) for s in res.history['epoch_seconds']]} s")
    return seconds, {"train": len(splits["train"]), "batch": batch}


def print_ratios(dataset: str, seconds: dict[str, list[float]], sizes: dict[str, int], device: str) -> dict[str, float]:
    """The median epoch per method and its ratio to the first method's (STL); returns the medians."""
    import torch

    med = {m: statistics.median(v) for m, v in seconds.items()}
    first = next(iter(med))
    click.echo(f"\n{dataset}, {sizes['train']} training samples, batch {sizes['batch']}, device {device}, "
               f"torch threads {torch.get_num_threads()}")
    click.echo(f"{'method':18s} {'epoch s (median)':>17s} {'× ' + first:>7s}")
    for m in med:
        click.echo(f"{m:18s} {med[m]:17.3f} {med[m] / med[first]:7.2f}")
    return med


@click.command()
@click.option("--dataset", default="cifar10", show_default=True)
@click.option("--epochs", default=2, show_default=True, help="epochs per method per round")
@click.option("--rounds", default=3, show_default=True)
@click.option("--threads", default=0, show_default=True, help="torch threads (0: torch's default)")
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda"]), show_default=True)
def main(dataset: str, epochs: int, rounds: int, threads: int, device: str) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    seconds, sizes = epoch_seconds(dataset, METHODS, epochs, rounds, device)
    med = print_ratios(dataset, seconds, sizes, device)
    click.echo(f"\nmaxl epoch / auxilearn_labels epoch = {med['maxl'] / med['auxilearn_labels']:.2f} "
               "(the paper reports AuxiLearn about 3× faster)")


if __name__ == "__main__":
    main()
