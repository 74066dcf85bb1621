"""Steps per second of the training loop by ``train.log_every``, ``train.amp`` and ``train.checkpoint_every``,
each against the per-step logging of before (``log_every: 1``, no AMP, no checkpoints) measured in the same run.

On a CPU the host syncs that ``log_every`` removes cost little (no device to wait for); on a GPU they stall
the launch queue at every step, which is what this ratio shows there. bf16/fp16 help only where the hardware
has fast low-precision units (a GPU's tensor cores).

    python bench/bench_hot_loop.py toy2d auxilearn_linear --steps 200
    python bench/bench_hot_loop.py nyuv2 auxilearn_convnet --steps 40 --device cuda
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.engine.checkpoint import Checkpointer, checkpoint_path, fingerprint  # noqa: E402
from pipeline.config.params import parse_params  # noqa: E402
from pipeline.core.registry import DATASETS  # noqa: E402
from pipeline.engine.training import resolve_device, train_run  # noqa: E402

SETTINGS = (  # (label, train overrides, whether a checkpoint file is written)
    ("log_every 1 (before)", {"log_every": 1}, False),
    ("log_every 10", {"log_every": 10}, False),
    ("log_every 50", {"log_every": 50}, False),
    ("log_every 10, bf16", {"log_every": 10, "amp": "bf16"}, False),
    ("log_every 10, checkpoint_every 50", {"log_every": 10, "checkpoint_every": 50}, True),
)


@click.command()
@click.argument("dataset")
@click.argument("method")
@click.option("--steps", default=200, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--repeats", default=2, show_default=True, help="best of this many timed runs per setting")
def main(dataset: str, method: str, steps: int, device: str, threads: int, repeats: int) -> None:
    torch.set_num_threads(threads)
    base = parse_params({"dataset": dataset})
    ds = DATASETS.get(dataset)(base.profile.model)
    folder = Path(tempfile.mkdtemp(prefix=f"hot_{dataset}_"))
    ds.prepare(base.dataset_config, folder)
    data = ds.load(folder)
    splits = ds.make_splits(data, base.split)
    dev = resolve_device(device)
    warm = parse_params({"dataset": dataset, "method": method, "seeds": [0], "device": device,
                         "datasets": {dataset: {"train": {"steps": min(steps, 20)}}}})
    train_run(ds, data, splits, warm, 0, device=dev)  # lazy imports, allocator and kernel caches: not timed
    rates = {}
    for label, train, with_checkpoint in SETTINGS:
        params = parse_params({"dataset": dataset, "method": method, "seeds": [0], "device": device,
                               "datasets": {dataset: {"train": {"steps": steps, "eval_every": steps, **train}}}})
        best = float("inf")
        for _ in range(repeats):
            checkpoint = None
            if with_checkpoint:
                checkpoint = Checkpointer(checkpoint_path(0, tempfile.mkdtemp(prefix="hot_ck_")),
                                          params.train.checkpoint_every, fingerprint(params, 0, splits))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            train_run(ds, data, splits, params, 0, device=dev, checkpoint=checkpoint)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        rates[label] = steps / best
    baseline = rates[SETTINGS[0][0]]
    print(f"{dataset} {method}, {steps} steps on {dev}, {threads} thread(s), best of {repeats}:")
    for label, rate in rates.items():
        print(f"  {label:36s} {rate:8.1f} steps/s   × {rate / baseline:.2f}")


if __name__ == "__main__":
    main()
