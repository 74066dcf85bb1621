"""Measure methods on a dataset without DVC: the README's result tables come from this script.

It runs what the `prepare`, `split`, `train` and `evaluate` stages run (the dataset's preparation with the
given overrides in a temporary folder, its splits, `train_run` per seed, `Dataset.metrics` on the test
split) and prints, per method and setting, the best validation main loss, the test metrics (mean, SEM over
seeds), the final effective task weights, how far they moved, the Spearman correlation of the auxiliaries'
weights with their index (many auxiliaries), α·λ̂ of the Neumann series, how often the clip bound and how
often ``series_stop`` ended a series early.

    python bench/measure_methods.py toy2d stl,equal,auxilearn_linear
    python bench/measure_methods.py cifar10 auxilearn_labels --grid '[{"methods": {"bilevel": {"lr": 0.001}}}]'
    python bench/measure_methods.py noisy_aux auxilearn_nonlinear --prepare '{"seed": 3, "sigma_aux": 0.5}'
    python bench/measure_methods.py oxford_pet stl,auxilearn_labels --split '{"k_shot": 15}'

One thread per process (`--threads`), so several can run side by side on a small machine.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.params import parse_params  # noqa: E402
from pipeline.core.registry import DATASETS  # noqa: E402
from pipeline.methods.base import build_method  # noqa: E402
from pipeline.engine.training import load_model, train_run  # noqa: E402
from pipeline.metrics.summary import mean_sem  # noqa: E402


def mean_sem_text(values: list[float], mean_format: str = ".4f", sem_format: str = ".4f") -> str:
    stats = mean_sem(values)
    return f"{stats['mean']:{mean_format}} ± {stats['sem']:{sem_format}}"


def prepared(params: Any) -> tuple[Any, Any, dict]:
    """What the `prepare` and `split` stages make for ``params.dataset``, in a temporary folder: (dataset, data,
    splits)."""
    ds = DATASETS.get(params.dataset)(params.profile.model)
    folder = Path(tempfile.mkdtemp(prefix=f"measure_{params.dataset}_"))
    ds.prepare(params.dataset_config, folder)
    data = ds.load(folder)
    return ds, data, ds.make_splits(data, params.split)


def trained(ds: Any, data: Any, splits: dict, params: Any, seed: int) -> tuple[Any, dict[str, float]]:
    """What the `train` and `evaluate` stages do for one seed: (``train_run``'s result, the test metrics)."""
    result = train_run(ds, data, splits, params, seed, device=torch.device("cpu"))
    aux = build_method(params.method, data.num_tasks, params, ds, data).head_outputs()
    model = load_model(ds, data, result.model_state, params.profile.model, aux_outputs=aux)
    return result, ds.metrics(model, data, torch.as_tensor(splits["test"]))


@click.command()
@click.argument("dataset")
@click.argument("methods")
@click.option("--grid", default="[{}]", help="JSON list of params overrides, one setting each")
@click.option("--prepare", "prepare", default="{}", help="JSON overrides of datasets.<dataset>.prepare")
@click.option("--split", "split", default="{}", help="JSON overrides of datasets.<dataset>.split (e.g. k_shot)")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--threads", default=1, show_default=True)
def main(dataset: str, methods: str, grid: str, prepare: str, split: str, seeds: str, threads: int) -> None:
    torch.set_num_threads(threads)
    prepare_overrides = json.loads(prepare)
    seed_list = [int(s) for s in seeds.split(",")]
    base = {"dataset": dataset, "datasets": {dataset: {"prepare": prepare_overrides, "split": json.loads(split)}}}
    params0 = parse_params({**base, "method": methods.split(",")[0]})  # the default method may not fit
    ds, data, splits = prepared(params0)
    for method in methods.split(","):
        for overrides in json.loads(grid):
            start = time.time()
            raw = json.loads(json.dumps(base))
            raw.update({k: v for k, v in overrides.items() if k != "datasets"}, method=method, seeds=seed_list)
            for name, section in overrides.get("datasets", {}).items():
                raw["datasets"].setdefault(name, {}).update(section)
            params = parse_params(raw)
            metrics, first, last, histories = [], [], [], []
            for seed in seed_list:
                result, test = trained(ds, data, splits, params, seed)
                metrics.append(test)
                first.append(result.history["weights"][0])
                last.append(result.history["weights"][-1])
                histories.append(result.history)
            w, w0 = np.asarray(last), np.asarray(first)
            tests = {k: mean_sem_text([m[k] for m in metrics]) for k in list(metrics[0])[:3]}
            val = np.mean([min(h["val_main_loss"]) for h in histories])
            line = (f"{method} {json.dumps(overrides)} val_main_loss={val:.4f} test={tests} "
                    f"final_weights={np.round(w.mean(0)[:8], 3).tolist()}")
            if w.shape[1] > 1:
                line += f" moved={np.abs(w - w0)[:, 1:].mean():.3f}"
            if w.shape[1] > 5:
                line += f" spearman={spearmanr(np.arange(w.shape[1] - 1), w.mean(0)[1:]).statistic:.3f}"
            logs = [e for h in histories for e in h["method_log"] if "hypergrad_norm" in e]
            products = [e["alpha_lambda"] for e in logs if "alpha_lambda" in e]
            if products:
                line += (f" alpha_lambda=[{min(products):.2f}, {max(products):.2f}]"
                         f" clipped={np.mean([e.get('clipped', 0.0) for e in logs]):.2f}")
            cut = [e["series_cut"] for e in logs if "series_cut" in e]
            if cut:
                line += f" series_cut={np.mean(cut):.2f}"
            click.echo(f"{line} [{time.time() - start:.0f} s]")


if __name__ == "__main__":
    main()
