"""DVC stage `evaluate`: test and validation metrics per seed, and their mean and SEM, to reports/metrics.json.

The validation metrics (on ``splits["val"]``, the split that picked each seed's best model) let
`python -m pipeline.compare --select best-val` choose among experiments without looking at the test set;
``main_metric`` names the dataset's main metric (the first one its ``metrics`` returns), which that selection
ranks by (direction: ``pipeline.metrics.higher_is_better``). metrics.json is written with sorted keys, so
the order of the names inside ``test``/``val`` does not tell which one is the main metric.
"""
import click
import torch

from pipeline.cli import stage
from pipeline.experiment import load_experiment, load_run
from pipeline.io import write_json
from pipeline.metrics.summary import aggregate
from pipeline.paths import METRICS


@click.command()
@stage
def main(params) -> None:
    exp = load_experiment(params)
    test = torch.as_tensor(exp.splits["test"])
    val = torch.as_tensor(exp.splits["val"])
    per_seed, per_seed_val = {}, {}
    for seed in params.seeds:
        run = load_run(exp, params, seed)
        per_seed[seed] = exp.dataset.metrics(run.model, exp.data, test)
        per_seed_val[seed] = exp.dataset.metrics(run.model, exp.data, val)
    summary = aggregate(per_seed)
    val_summary = aggregate(per_seed_val)
    write_json(METRICS, {
        "method": params.method,
        "dataset": params.dataset,
        "main_metric": next(iter(val_summary)),
        "test": summary,
        "val": val_summary,
        "per_seed": {f"seed_{s}": m for s, m in per_seed.items()},
    })
    click.echo("test " + ", ".join(f"{k} = {v['mean']:.4f} ± {v['sem']:.4f}" for k, v in summary.items()))
    click.echo("val  " + ", ".join(f"{k} = {v['mean']:.4f} ± {v['sem']:.4f}" for k, v in val_summary.items()))


if __name__ == "__main__":
    main()
